/*
 * bench_load_client.c - the client threads of kvprefix-bench load: each on its own
 * connection, a seeded random mix of LOOKUP (half pinned, the leases RELEASEd a few
 * requests later), INSERT, GENERATE and STATS until the duration has passed, every
 * request's latency in a per-kind log-bucket histogram and every error counted by its
 * status (bench_load.h). Reconnects when the daemon drops the connection.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_load.h"
#include "trace.h"
#include "util.h"

const char *const load_kind_name[LK_N] = {
	"lookup", "lookup_pin", "release", "insert", "generate", "stats",
};
const char *const load_mix_name[LM_N] = { "lookup", "insert", "generate", "stats" };

/* ---- latency histograms -------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return (msb - HIST_SUB_BITS + 1u) * HIST_SUB +
	       (unsigned)((v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1u));
}

/* The smallest value of bucket i, and its width. */
static void hist_bucket(unsigned i, uint64_t *lo, uint64_t *width)
{
	unsigned e = i / HIST_SUB, s = i % HIST_SUB;

	if (e == 0) {
		*lo = i;
		*width = 1;
		return;
	}
	*lo = (uint64_t)(HIST_SUB + s) << (e - 1u);
	*width = (uint64_t)1 << (e - 1u);
}

static inline void hist_add(struct load_hist *h, uint64_t ns)
{
	h->b[hist_index(ns)]++;
	h->n++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

void load_hist_merge(struct load_hist *dst, const struct load_hist *src)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->n += src->n;
	dst->sum_ns += src->sum_ns;
	if (src->max_ns > dst->max_ns)
		dst->max_ns = src->max_ns;
}

/* Quantile q in microseconds: the middle of the bucket holding rank ceil(q * n), at
 * most the largest value seen. 0 when empty. */
double load_hist_quantile_us(const struct load_hist *h, double q)
{
	uint64_t rank, cum = 0, lo, w;
	double v;

	if (!h->n)
		return 0;
	rank = (uint64_t)ceil(q * (double)h->n);
	if (rank < 1)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		cum += h->b[i];
		if (cum < rank)
			continue;
		hist_bucket(i, &lo, &w);
		v = (double)lo + (double)(w - 1) / 2;
		if (v > (double)h->max_ns)
			v = (double)h->max_ns;
		return v / 1e3;
	}
	return (double)h->max_ns / 1e3;
}

/* ---- one client ---------------------------------------------------------------- */

static uint64_t load_rand(struct load_worker *w)
{
	/* xorshift64* */
	uint64_t x = w->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	w->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Count a failed call (status < 0) or a failed check (status 0, why set). */
static void load_error(struct load_worker *w, enum load_kind k, int status, const char *why)
{
	unsigned slot = status < 0 && -status < LOAD_ERR_CHECK ? (unsigned)-status
							       : LOAD_ERR_CHECK;

	w->errors++;
	if (k < LK_N)
		w->kind_errors[k]++;
	w->err_by_status[slot]++;
	atomic_store_explicit(&w->live_errors, w->errors, memory_order_relaxed);
	if (!w->first_error[0])
		snprintf(w->first_error, sizeof(w->first_error), "client %u, %s: %s%s%s",
			 w->idx, k < LK_N ? load_kind_name[k] : "connect",
			 status < 0 ? kvp_strerror(status) : why,
			 w->c && status < 0 && kvp_client_error(w->c)[0] ? ": " : "",
			 w->c && status < 0 ? kvp_client_error(w->c) : "");
}

const char *load_err_name(unsigned slot)
{
	return slot == LOAD_ERR_CHECK ? "failed check" : kvp_strerror(-(int)slot);
}

/* Statuses after which a client cannot be used any more (kvprefix.h). */
static bool load_fatal(int rc)
{
	return rc == KVP_ECLOSED || rc == KVP_EIO || rc == KVP_EPROTO || rc == KVP_ENOMEM;
}

static int load_connect(struct load_worker *w)
{
	struct kvp_server_info info;
	int rc;

	rc = kvp_client_connect(w->sh->sock, &w->c);
	if (rc == 0)
		rc = kvp_client_hello(w->c, NULL, NULL, &info);
	if (rc == 0)
		rc = kvp_client_set_timeout_ms(w->c, w->sh->timeout_ms);
	if (rc < 0) {
		load_error(w, LK_N, rc, NULL);
		kvp_client_close(w->c);
		w->c = NULL;
	}
	return rc;
}

/* n tokens of prompt (prefix p, suffix s) into out: prefix p's first prefix_n tokens,
 * then n - prefix_n suffix tokens, a pure function of (seed, p, s). bench_rand_tokens
 * keeps the low 32 bits of its seed: (p << 24) + s is distinct for p < 256, s < 2^24 (the
 * limits of --prefixes and --suffixes). */
static void load_prompt(const struct load_shared *sh, uint32_t p, uint32_t s, uint32_t *out,
			uint32_t n, uint32_t prefix_n)
{
	memcpy(out, sh->prefixes + (size_t)p * sh->prefix_tokens, prefix_n * sizeof(uint32_t));
	bench_rand_tokens(out + prefix_n, n - prefix_n,
			  kvp_splitmix64(sh->seed ^ 0x5EED5u) + ((uint64_t)p << 24) + s, sh->vocab);
}

struct load_gen_check {
	uint32_t vocab, bad, n;
};

static void load_gen_cb(void *arg, const uint32_t *tokens, uint32_t n)
{
	struct load_gen_check *g = arg;

	for (uint32_t i = 0; i < n; i++)
		g->bad += tokens[i] >= g->vocab;
	g->n += n;
}

/* Release the oldest held lease. */
static int load_release_one(struct load_worker *w)
{
	struct load_lease l = w->leases[0];
	uint32_t got = 0;
	int rc;

	memmove(w->leases, w->leases + 1, (w->n_leases - 1) * sizeof(w->leases[0]));
	w->n_leases--;
	rc = kvp_client_release(w->c, l.id, &got);
	if (rc == 0 && got != l.n_blocks) {
		load_error(w, LK_RELEASE, 0, "a lease released a different number of blocks "
			   "than it pinned");
		return 0;
	}
	return rc;
}

/* A LOOKUP, pinned half of the time; a lease it returns is held. */
static int load_lookup(struct load_worker *w, uint32_t p, uint32_t s, enum load_kind *k)
{
	const struct load_shared *sh = w->sh;
	bool pin = load_rand(w) & 1;
	struct kvp_match mt;
	int rc;

	*k = pin ? LK_PIN : LK_LOOKUP;
	load_prompt(sh, p, s, w->prompt, sh->prompt_tokens, sh->prefix_tokens);
	rc = kvp_client_lookup(w->c, w->prompt, sh->prompt_tokens, pin ? KVP_LOOKUP_PIN : 0,
			       &mt);
	if (rc < 0)
		return rc;
	w->query_tokens += sh->prompt_tokens;
	w->hit_tokens += mt.matched_tokens;
	/* docs/protocol.md §8: a lease exactly when PIN was given and a block matched */
	if ((mt.lease != 0) != (pin && mt.n_blocks > 0))
		load_error(w, *k, 0, "a LOOKUP's lease does not match its PIN flag and blocks");
	if (mt.lease) {
		w->leases[w->n_leases].id = mt.lease;
		w->leases[w->n_leases].n_blocks = mt.n_blocks;
		w->n_leases++;
	}
	return 0;
}

/* A greedy GENERATE; its tokens and usage are checked against the request. */
static int load_generate(struct load_worker *w, uint32_t p, uint32_t s)
{
	const struct load_shared *sh = w->sh;
	struct kvp_generate_params gp;
	struct load_gen_check g = { .vocab = sh->vocab };
	struct kvp_usage u;
	int rc;

	load_prompt(sh, p, s, w->prompt, sh->gen_prompt_tokens, sh->gen_prefix_tokens);
	kvp_generate_params_init(&gp);
	gp.max_new = sh->max_new;
	rc = kvp_client_generate(w->c, w->prompt, sh->gen_prompt_tokens, &gp, load_gen_cb, &g,
				 &u);
	if (rc < 0)
		return rc;
	w->gen_prompt += u.prompt_tokens;
	w->gen_cached += u.cached_tokens;
	w->gen_tokens += g.n;
	if (g.bad || g.n != u.generated_tokens || u.generated_tokens > sh->max_new ||
	    u.prompt_tokens != sh->gen_prompt_tokens)
		load_error(w, LK_GENERATE, 0, "a generation's tokens or usage do not add up");
	return 0;
}

/* One request of kind *k (LK_LOOKUP may turn into LK_PIN); its status. */
static int load_one(struct load_worker *w, enum load_mix m, enum load_kind *k)
{
	const struct load_shared *sh = w->sh;
	uint32_t p = (uint32_t)(load_rand(w) % sh->n_prefixes);
	uint32_t s = (uint32_t)(load_rand(w) % sh->n_suffixes);
	struct kvp_match mt;
	char *js = NULL;
	int rc;

	switch (m) {
	case LM_LOOKUP:
		return load_lookup(w, p, s, k);
	case LM_INSERT:
		*k = LK_INSERT;
		load_prompt(sh, p, s, w->prompt, sh->prompt_tokens, sh->prefix_tokens);
		return kvp_client_insert(w->c, w->prompt, sh->prompt_tokens, 0, &mt);
	case LM_GENERATE:
		*k = LK_GENERATE;
		return load_generate(w, p, s);
	case LM_STATS:
	default:
		*k = LK_STATS;
		rc = kvp_client_stats(w->c, &js);
		free(js);
		return rc;
	}
}

static enum load_mix load_pick(struct load_worker *w)
{
	uint32_t r = (uint32_t)(load_rand(w) % w->sh->weight_sum);
	unsigned m = 0;

	while (r >= w->sh->weight[m]) {
		r -= w->sh->weight[m];
		m++;
	}
	return (enum load_mix)m;
}

static void load_record(struct load_worker *w, enum load_kind k, int rc, uint64_t ns)
{
	w->requests++;
	w->count[k]++;
	hist_add(&w->hist[k], ns);
	if (rc < 0)
		load_error(w, k, rc, NULL);
	atomic_store_explicit(&w->live_requests, w->requests, memory_order_relaxed);
}

/* Connect, say so, and wait for main's go. false: give up (main could not start
 * every client). */
static bool load_wait_go(struct load_worker *w)
{
	int go;

	load_connect(w);
	pthread_mutex_lock(&w->sh->mu);
	w->sh->ready++;
	pthread_cond_broadcast(&w->sh->cv);
	while (!w->sh->go)
		pthread_cond_wait(&w->sh->cv, &w->sh->mu);
	go = w->sh->go;
	pthread_mutex_unlock(&w->sh->mu);
	return go > 0;
}

/* Time one release of the oldest lease. */
static int load_timed_release(struct load_worker *w)
{
	uint64_t t0 = kvp_tool_now_ns();
	int rc = load_release_one(w);

	load_record(w, LK_RELEASE, rc, kvp_tool_now_ns() - t0);
	return rc;
}

void *load_worker_main(void *arg)
{
	struct load_worker *w = arg;
	uint64_t deadline;
	int rc;

	if (!load_wait_go(w)) {
		kvp_client_close(w->c);
		w->c = NULL;
		return NULL;
	}
	deadline = kvp_tool_now_ns() + (uint64_t)(w->sh->duration_s * 1e9);
	while (kvp_tool_now_ns() < deadline) {
		enum load_kind k;
		uint64_t t0;

		if (!w->c) {
			bench_sleep_ms(LOAD_CONNECT_RETRY_MS);
			if (load_connect(w) == 0)
				w->reconnects++;
			continue;
		}
		t0 = kvp_tool_now_ns();
		rc = load_one(w, load_pick(w), &k);
		load_record(w, k, rc, kvp_tool_now_ns() - t0);
		while (rc == 0 && w->n_leases == LOAD_LEASES_HELD)
			rc = load_timed_release(w);
		if (load_fatal(rc)) {
			/* the daemon released this connection's leases when it went */
			kvp_client_close(w->c);
			w->c = NULL;
			w->n_leases = 0;
		}
	}
	while (w->c && w->n_leases)
		if (load_fatal(load_timed_release(w)))
			break;
	kvp_client_close(w->c);
	w->c = NULL;
	return NULL;
}
