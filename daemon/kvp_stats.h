/*
 * kvp_stats.h - what kvprefixd counts about its clients, with one owner: the request
 * handlers report what happened (kvp_stats_lookup, _insert, _generation_begin/_end,
 * _request, _error), and STATS, /metrics and systemd's STATUS= read struct kvp_stats.
 *
 *   handlers (loop thread) ──report──▶ struct kvp_stats ◀──read── STATS (stats_json.c)
 *                                       totals                     /metrics (metrics.c)
 *                                       per-namespace table        STATUS= (lifecycle.c)
 *                                       histograms, outcomes
 *
 * The cache counts what it did (evictions, quota, leases, pool blocks:
 * kvp_cache_get_stats); this module counts what clients asked and got: queries, hit
 * tokens, requests by type and outcome, computed and generated tokens, latency. A
 * lookup the daemon makes for itself (an ADMIN PIN) is reported by no one, so it never
 * moves a hit rate.
 *
 * Histograms: fixed upper bounds ("le") in microseconds, one count per bucket; exposed
 * the Prometheus way (cumulative _bucket{le=...} in seconds, +Inf, _sum, _count).
 *
 * Namespaces: a namespace is a tenant (the client's uid) plus an adapter string. The
 * first KVP_NS_TRACKED_MAX namespaces seen get their own entry for the daemon's life;
 * every later one is counted in the single "other" entry, so the label set stays
 * bounded whatever clients send. Adapter strings are client bytes: one that is not
 * printable UTF-8 (invalid, or with control characters) is counted in "other" too, so
 * tracked names are shown as they are and their labels never collide.
 *
 * Threading: none of this locks; only the event loop thread calls it. Memory: nothing
 * here allocates but the STATS JSON builder (cJSON), whose failures leave keys out.
 */
#ifndef KVP_STATS_H
#define KVP_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cache.h"
#include "kvp_disk.h"
#include "kvp_redis.h"

struct cJSON;

/* ---- histograms ------------------------------------------------------------ */

#define KVP_HIST_MAX_BOUNDS 24

struct kvp_hist {
	const double *bounds_us;                    /* (n_bounds) ascending "le" bounds, µs */
	uint32_t n_bounds;
	uint64_t buckets[KVP_HIST_MAX_BOUNDS + 1];  /* per bucket, not cumulative; last: +Inf */
	uint64_t count;
	double sum_us;
};

enum kvp_hist_kind {
	KVP_HIST_LATENCY,   /* 1 µs .. 1 s: index lookups and inserts */
	KVP_HIST_TTFT,      /* 0.25 ms .. 60 s: time to first token */
};

/* Empty histogram with the bounds of kind. */
void kvp_hist_init(struct kvp_hist *h, enum kvp_hist_kind kind);
/* Empty histogram with the caller's bounds (ascending, 1..KVP_HIST_MAX_BOUNDS of them,
 * static storage). KVP_EINVAL otherwise (h left empty with no bounds: one +Inf bucket). */
int kvp_hist_init_bounds(struct kvp_hist *h, const double *bounds_us, uint32_t n_bounds);
/* Count one value (a value equal to a bound falls in that bound's bucket). */
void kvp_hist_observe(struct kvp_hist *h, double us);
/* Estimate the q-quantile (0..1) in µs as Prometheus' histogram_quantile does: linear
 * within the bucket, the highest finite bound for the +Inf bucket. NAN when empty. */
double kvp_hist_quantile_us(const struct kvp_hist *h, double q);

/* ---- namespaces ------------------------------------------------------------ */

#define KVP_NS_TRACKED_MAX 32
#define KVP_NS_ADAPTER_MAX 255

struct kvp_ns_counters {
	uint64_t requests;          /* LOOKUP, INSERT and GENERATE requests served */
	uint64_t queries;           /* LOOKUPs and GENERATE prompts matched against the cache */
	uint64_t query_tokens;
	uint64_t hit_tokens;
	uint64_t computed_tokens;   /* prompt and generated positions the engine computed */
	uint64_t generated_tokens;
	uint64_t fate_tokens[KVP_FATE_N];   /* query tokens by fate (kvp_cache_miss) */
};

struct kvp_ns_entry {
	uint32_t tenant;
	char adapter[KVP_NS_ADAPTER_MAX + 1];
	struct kvp_ns_counters c;
};

/* Zero-initialised ({0}) is an empty, valid table. */
struct kvp_ns_stats_table {
	uint32_t n;                              /* tracked entries in use */
	uint64_t overflowed;                     /* kvp_ns_stats_get calls that gave "other" */
	struct kvp_ns_entry e[KVP_NS_TRACKED_MAX];
	struct kvp_ns_counters other;
};

/* The counters of (tenant, adapter), adding an entry while fewer than
 * KVP_NS_TRACKED_MAX are tracked and adapter is printable UTF-8, else the "other"
 * counters. Never NULL; the pointer stays valid for the table's life. An adapter
 * longer than KVP_NS_ADAPTER_MAX bytes is keyed by its first KVP_NS_ADAPTER_MAX.
 * O(KVP_NS_TRACKED_MAX + adapter length), no allocation. */
struct kvp_ns_counters *kvp_ns_stats_get(struct kvp_ns_stats_table *t, uint32_t tenant,
					 const char *adapter);
/* True when c is the table's "other" counters. */
bool kvp_ns_stats_is_other(const struct kvp_ns_stats_table *t, const struct kvp_ns_counters *c);

/* ---- requests by type and outcome ------------------------------------------ */

enum kvp_req_type {
	KVP_REQ_HELLO, KVP_REQ_LOOKUP, KVP_REQ_INSERT, KVP_REQ_RELEASE, KVP_REQ_STATS,
	KVP_REQ_GENERATE, KVP_REQ_PING, KVP_REQ_OTHER,
	KVP_REQ_NTYPES
};

/* Outcome 0 is "ok"; outcome k (1..KVP_REQ_NSTATUS) is status -k; the last one counts
 * statuses this build does not know. */
#define KVP_REQ_NSTATUS 16
#define KVP_REQ_NOUTCOMES (KVP_REQ_NSTATUS + 2)

struct kvp_req_counts {
	uint64_t n[KVP_REQ_NTYPES][KVP_REQ_NOUTCOMES];
};

/* Count one request of protocol frame type frame_type (KVP_T_*) that ended with status
 * (0: ok, or the negative status its ERROR carried). */
void kvp_req_count(struct kvp_req_counts *rc, uint8_t frame_type, int status);
/* "hello", "lookup", ... "other". Never NULL. */
const char *kvp_req_type_name(enum kvp_req_type t);
/* The outcome name of slot k (0 .. KVP_REQ_NOUTCOMES-1): "ok", "ETOOBIG", ...,
 * "EUNKNOWN" for the last. Never NULL. */
const char *kvp_req_outcome_name(unsigned k);

/* ---- the daemon's counters ------------------------------------------------------- */

struct kvp_stats_totals {
	uint64_t lookups;           /* LOOKUP requests answered */
	uint64_t lookup_hits;       /* of those, matching at least one block */
	uint64_t generations;       /* GENERATE requests started */
	uint64_t generation_hits;   /* of those, with at least one cached block */
	uint64_t query_tokens;      /* tokens of LOOKUPs and GENERATE prompts */
	uint64_t hit_tokens;        /* of those, served from the cache */
	uint64_t fate_tokens[KVP_FATE_N];   /* of those, by fate (kvp_cache_miss) */
	uint64_t ghost_tokens[KVP_CACHE_GHOST_N];   /* more a pool 2x, 4x would have hit */
	uint64_t inserts;           /* INSERT requests answered */
	uint64_t insert_tokens;
	uint64_t generations_done;  /* generations finished, however they ended */
	uint64_t computed_tokens;   /* prompt positions the engine ran */
	uint64_t generated_tokens;
	uint64_t errors;            /* ERROR frames sent */
	uint64_t admin_requests;    /* ADMIN requests from an allowed peer */
	uint64_t connections_total; /* connections accepted */
};

struct kvp_stats {
	struct kvp_stats_totals t;
	struct kvp_ns_stats_table ns;
	struct kvp_hist ttft, lookup, insert;
	struct kvp_req_counts req;
};

/* A namespace as the counters know it: the client's uid and its adapter. */
struct kvp_stats_ns {
	uint32_t tenant;
	const char *adapter;
};

/* Empty counters, the histograms with their bounds. */
void kvp_stats_init(struct kvp_stats *s);

/* A LOOKUP answered: query_tokens asked, hit_tokens of them cached, the query
 * diagnosed in miss. */
void kvp_stats_lookup(struct kvp_stats *s, struct kvp_stats_ns ns, uint32_t query_tokens,
		      uint32_t hit_tokens, const struct kvp_cache_miss *miss);
/* An INSERT answered with tokens tokens. */
void kvp_stats_insert(struct kvp_stats *s, struct kvp_stats_ns ns, uint32_t tokens);
/* Time spent in the index by a LOOKUP or INSERT, answered or not. */
void kvp_stats_index_latency(struct kvp_stats *s, bool insert, double us);
/* A GENERATE started: prompt_tokens, hit_tokens of them cached, the prompt diagnosed
 * in miss. Returns its namespace's counters, for kvp_stats_generation_end. */
struct kvp_ns_counters *kvp_stats_generation_begin(struct kvp_stats *s, struct kvp_stats_ns ns,
						   uint32_t prompt_tokens, uint32_t hit_tokens,
						   const struct kvp_cache_miss *miss);
/* A generation ended with status (0 or why it stopped early): computed prompt
 * positions, generated tokens, and its TTFT when it succeeded. Counts the GENERATE
 * request's outcome too. */
void kvp_stats_generation_end(struct kvp_stats *s, struct kvp_ns_counters *ns, int status,
			      uint32_t computed, uint32_t generated, uint64_t ttft_us);
/* A request of frame type type ended with status (0 or the status its ERROR carried).
 * A GENERATE that started is counted by kvp_stats_generation_end instead. */
void kvp_stats_request(struct kvp_stats *s, uint8_t type, int status);
/* An ERROR frame sent, whatever caused it. */
void kvp_stats_error(struct kvp_stats *s);
/* Hit rate over every query so far (0 before the first). */
double kvp_stats_hit_rate(const struct kvp_stats *s);

/* ---- the engine's scheduler (kept by daemon/gen.c) ----------------------------------- */

#define KVP_SCHED_HIST_BUCKETS 11      /* rows per step: <= 1, 2, 4, .. 512, more */
struct kvp_sched_stats {
	bool present;                /* an engine runs (not index-only) */
	uint32_t running;            /* generations admitted, not done (parked included) */
	uint32_t waiting;            /* submitted, not admitted yet (--max-seqs) */
	uint32_t parked;             /* waiting for blocks, or preempted */
	uint64_t steps;              /* batched forwards run */
	uint64_t step_rows;          /* rows over all steps */
	uint64_t step_seqs;          /* sequences over all steps */
	uint64_t rows_hist[KVP_SCHED_HIST_BUCKETS];   /* steps by rows: bucket i, <= 2^i */
	uint64_t admitted;           /* generations admitted */
	uint64_t queue_us;           /* their time from submit to admission, summed */
	uint64_t preempted;          /* generations whose blocks were given back for others */
	uint64_t recomputes;         /* preempted ones taken up again */
};

/* ---- the tiers below the pool ---------------------------------------------------- */

/* The disk tier as STATS and /metrics show it (present only with --disk-cache). */
struct kvp_tier_view {
	bool present;               /* the disk tier */
	struct kvp_disk_stats disk;
	uint64_t promotions;        /* GENERATEs that read blocks back from the disk */
	uint64_t promoted_blocks;   /* blocks read back from the disk and registered */
	bool host_present;          /* the host RAM tier */
	struct kvp_disk_stats host;
	uint64_t host_promotions, host_promoted_blocks;
	bool redis_present;         /* the Redis tier */
	struct kvp_redis_stats redis;
	uint64_t redis_promotions;  /* GENERATEs that asked Redis for blocks */
	uint64_t redis_promoted_blocks;
};

/* ---- KV events and the fleet index (docs/kv-events.md) ------------------------------- */

struct kvp_events_view {
	bool present;               /* --kv-events */
	uint64_t batches, events;   /* batches published, events in them */
	uint64_t sent;              /* batches sent on the PUB socket */
	uint64_t dropped;           /* batches lost before they were sent */
	uint64_t lost_events;       /* events lost to memory */
	uint64_t replays;           /* replay requests served */
	uint64_t replayed;          /* batches sent in them */
	uint64_t next_seq;          /* the next batch's sequence number */
	bool fleet_present;         /* --kv-events-sub */
	uint32_t instances;         /* engines indexed */
	uint64_t fleet_blocks;      /* blocks indexed, all engines */
	uint64_t fleet_batches;     /* batches applied */
	uint64_t fleet_events;      /* events applied */
	uint64_t fleet_malformed;   /* batches or events skipped: malformed, or unusable */
	uint64_t fleet_gaps;        /* sequence gaps seen */
	uint64_t fleet_replays;     /* replays asked for */
	uint64_t fleet_replayed;    /* batches recovered through them */
};

/* ---- STATS (stats_json.c) -------------------------------------------------------- */

/* What a STATS reply shows beside the counters. */
struct kvp_stats_view {
	const char *version, *mode, *name;
	const uint32_t *tenant;     /* namespaces of this tenant only; NULL: every one */
	uint32_t block_tokens;
	double uptime_s;
	uint32_t generations_active;
	uint32_t connections;
	struct kvp_cache_stats cache;
	struct kvp_sched_stats sched;
	struct kvp_tier_view tier;
	struct kvp_events_view events;
};

/* The STATS reply (docs/protocol.md): a JSON object as compact text, to free with
 * cJSON_free; NULL when out of memory. The totals are global; with v->tenant set, the
 * per-namespace detail shows that tenant's namespaces only (and no "other" entry,
 * which mixes tenants). */
char *kvp_stats_json(const struct kvp_stats *s, const struct kvp_stats_view *v);
/* Add to a STATS object: "namespaces" (top 10 by requests, "other" included when it
 * has any: namespace, tenant, adapter, requests, queries, query_tokens, hit_tokens,
 * hit_rate, misses), "namespaces_tracked", and "ttft_us_p50", "ttft_us_p99", "lookup_us_p99"
 * (null while the histogram is empty). With tenant set, only that tenant's tracked
 * namespaces are listed and counted. Allocation failures leave keys out. */
void kvp_stats_json_detail(struct cJSON *o, const struct kvp_ns_stats_table *t,
			   const struct kvp_hist *ttft, const struct kvp_hist *lookup,
			   const uint32_t *tenant);
/* Add "misses": query tokens not served by fate (new, evicted_pool, evicted_quota,
 * evicted_admin, partial, and other_namespace for root_view only; otherwise those
 * count as new: another tenant's blocks are not for a tenant to learn of). */
void kvp_stats_json_misses(struct cJSON *o, const uint64_t *fate_tokens, bool root_view);

#endif
