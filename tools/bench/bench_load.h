/*
 * bench_load.h - kvprefix-bench load: what the command (bench_load.c), its report
 * (bench_load_report.c) and its client threads (bench_load_client.c) share.
 *
 * N client threads, each with its own connection, issue a seeded random mix of LOOKUP
 * (half of them pinned: the lease is held for a few requests, then RELEASEd), INSERT
 * (index-only daemons), GENERATE (engine daemons) and STATS for S seconds.
 *
 * Prompts: --prefixes shared prefixes (3/4 of the prompt) + one of --suffixes suffixes
 * per prefix (the rest), so that prefixes hit, whole prompts hit once they were seen,
 * and the distinct suffix blocks (8 x 4096 x 8 = 262,144 by default) roughly fill the
 * default pool. GENERATE prompts are the first --gen-prompt-tokens of the same
 * prompts (the same shape), so LOOKUPs hit what the engine cached.
 *
 *   thread i:  connect + HELLO | barrier | loop until S s: pick kind, time it, bucket it
 *   main:      barrier | every second: requests/s, errors, the daemon's RSS | join
 *              | STATS until the clients' connections are gone | report
 *
 * Latencies go into per-thread, per-kind log-bucket histograms (32 sub-buckets per
 * power of two: ~3% resolution), allocated once with the thread: no allocation per
 * request on the bench's side.
 *
 * Threads: main writes struct load_shared before the clients start and only reads a
 * worker's live_* counters while it runs; everything else of a worker is its own
 * until main has joined it.
 */
#ifndef KVP_BENCH_LOAD_H
#define KVP_BENCH_LOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvprefix.h"

#define LOAD_CLIENTS_MAX 1000u
#define LOAD_DURATION_MAX_S 86400.0
#define LOAD_LEASES_HELD 4u           /* a client's pinned leases before it releases */
#define LOAD_SETTLE_MS 5000           /* waiting for the daemon to see the clients go */
#define LOAD_CONNECT_RETRY_MS 100
#define LOAD_VOCAB_DEFAULT 32000u
#define LOAD_ERR_SLOTS 18             /* -status 0..16, then one for a failed check */
#define LOAD_ERR_CHECK (LOAD_ERR_SLOTS - 1)

#define HIST_SUB_BITS 5u
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64u - HIST_SUB_BITS + 1u) * HIST_SUB)

enum load_kind { LK_LOOKUP, LK_PIN, LK_RELEASE, LK_INSERT, LK_GENERATE, LK_STATS, LK_N };
extern const char *const load_kind_name[LK_N];

/* What --mix weighs: a LOOKUP is pinned (and later released) half of the time. */
enum load_mix { LM_LOOKUP, LM_INSERT, LM_GENERATE, LM_STATS, LM_N };
extern const char *const load_mix_name[LM_N];

/* Latencies in ns: exact below HIST_SUB, then HIST_SUB buckets per power of two. */
struct load_hist {
	uint64_t b[HIST_BUCKETS];
	uint64_t n, sum_ns, max_ns;
};

/* What every client reads; written by main before the threads start. */
struct load_shared {
	const char *sock;
	double duration_s;
	uint32_t weight[LM_N], weight_sum;
	uint32_t prompt_tokens, prefix_tokens;          /* LOOKUP / INSERT prompts */
	uint32_t gen_prompt_tokens, gen_prefix_tokens;  /* GENERATE prompts */
	uint32_t n_prefixes, n_suffixes, vocab, max_new, timeout_ms;
	uint64_t seed;
	const uint32_t *prefixes;    /* n_prefixes x prefix_tokens */
	/* start: every client connects, then waits for go (1: run, -1: give up) */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t ready;
	int go;
};

struct load_lease {
	uint64_t id;
	uint32_t n_blocks;
};

struct load_worker {
	/* read by the progress loop while the thread runs: on a line of their own */
	_Alignas(64) _Atomic uint64_t live_requests;
	_Atomic uint64_t live_errors;
	_Alignas(64) pthread_t th;
	uint32_t idx;
	struct load_shared *sh;
	struct kvp_client *c;
	uint64_t rng;
	uint32_t *prompt;            /* room for max(prompt_tokens, gen_prompt_tokens) */
	struct load_lease leases[LOAD_LEASES_HELD];
	uint32_t n_leases;
	uint64_t requests, errors, reconnects;
	uint64_t count[LK_N], kind_errors[LK_N];
	uint64_t err_by_status[LOAD_ERR_SLOTS];
	uint64_t query_tokens, hit_tokens;              /* LOOKUP */
	uint64_t gen_prompt, gen_cached, gen_tokens;    /* GENERATE */
	uint32_t gen_bad_tokens;                        /* set by the token callback */
	char first_error[256];
	struct load_hist hist[LK_N];
};

/* The command line. */
struct load_opts {
	const char *sock, *mix, *model;
	uint64_t clients, max_new, prompt, gen_prompt, prefixes, suffixes, seed, vocab;
	uint64_t timeout_ms, threads;
	double duration;
};

/* The daemon's counters that load reports. */
struct load_dstats {
	double connections, generations_active, blocks_total, blocks_free, blocks_cached,
		blocks_pinned, leases_active, errors, evictions, requests;
};

/* The daemon's side: its pid, RSS and counters before and after the clients. */
struct load_daemon_report {
	pid_t pid;
	long rss_start, rss_end, rss_peak, hwm;     /* kB; -1 unknown */
	struct load_dstats ds0, ds1;                /* before; once the clients are gone */
	bool dstats_ok, invariant_ok;
	double settle_ms;                           /* from the clients' end to ds1 */
};

/* The clients' counters and histograms added up. */
struct load_totals {
	uint64_t count[LK_N], kind_err[LK_N], by_status[LOAD_ERR_SLOTS];
	uint64_t requests, errors, reconnects;
	uint64_t qt, ht;             /* LOOKUP: query and hit tokens */
	uint64_t gp, gc, gt;         /* GENERATE: prompt, cached and generated tokens */
	const char *first_error;     /* a worker's, NULL if none */
	double elapsed;
	struct load_hist kinds[LK_N], all;
};

/* Add src's counts to dst. */
void load_hist_merge(struct load_hist *dst, const struct load_hist *src);
/* Quantile q in microseconds: the middle of the bucket holding rank ceil(q * n), at
 * most the largest value seen. 0 when empty. */
double load_hist_quantile_us(const struct load_hist *h, double q);

/* The name of an error slot of err_by_status: a kvp_strerror text or "failed check". */
const char *load_err_name(unsigned slot);

/* The table on stdout. */
void print_load(const struct load_opts *o, const struct load_shared *sh,
		const struct kvp_server_info *info, const struct load_totals *t,
		const struct load_daemon_report *rep);
/* The JSON line; false (message printed) when out of memory or it could not be
 * printed. */
bool json_load(const struct load_opts *opt, const struct load_shared *sh,
	       const struct kvp_server_info *info, const struct load_totals *t,
	       const struct load_daemon_report *rep);

/* The client thread (pthread_create's start routine); arg is its struct load_worker,
 * idx, sh, rng and prompt filled in. Connects, waits for sh->go, runs until
 * sh->duration_s have passed, releases its leases and closes. */
void *load_worker_main(void *arg);

#endif
