/*
 * kvp_metrics.h - what kvprefixd counts beyond the cache's own counters, and the
 * Prometheus text exposition of it all at /metrics.
 *
 *   event loop thread only ─────────────────────────────────────────────────────────
 *   handle_tokens / handle_generate / gen_req_finish
 *        │ kvp_hist_observe (µs)   kvp_ns_stats_get(uid, adapter) → counters++
 *        ▼                         kvp_req_count(frame type, status)
 *   struct server { hists, kvp_ns_stats_table, kvp_req_counts }
 *        │
 *   GET /metrics ──evhttp──▶ render(arg, out) ── fills a kvp_metrics_view ──▶
 *                            kvp_metrics_render(view, out): "# HELP / # TYPE" + samples
 *
 * Histograms: fixed upper bounds ("le") in microseconds, one count per bucket; they are
 * exposed the Prometheus way (cumulative _bucket{le=...} in seconds, +Inf, _sum,
 * _count).
 *
 * Namespaces: a namespace is a tenant (the client's uid) plus an adapter string. The
 * first KVP_NS_TRACKED_MAX namespaces seen get their own entry for the daemon's life;
 * every later one is counted in the single "other" entry, so the label set stays
 * bounded whatever clients send. Adapter strings are client bytes: one that is not
 * printable UTF-8 (invalid, or with control characters) is counted in "other" too, so
 * tracked names are shown as they are and their labels never collide; the renderer
 * escapes \\ \" \n (and would replace invalid UTF-8 with U+FFFD).
 *
 * Threading: none of this locks. Everything is called from the event loop thread.
 * Memory: the counting functions never allocate; the renderer and the HTTP server
 * allocate through libevent and report KVP_ENOMEM.
 */
#ifndef KVP_METRICS_H
#define KVP_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cache.h"

struct evbuffer;
struct event_base;
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
/* "ok", or the status' enum name without the KVP_ prefix ("ETOOBIG"). Never NULL. */
const char *kvp_metrics_outcome_name(int status);

/* CLOCK_MONOTONIC in nanoseconds, for timing what the histograms observe. */
uint64_t kvp_metrics_clock_ns(void);

/* ---- exposition ------------------------------------------------------------ */

/* Everything one /metrics page shows; the pointers are only read during the call. */
struct kvp_metrics_view {
	const char *version, *mode, *name;
	double uptime_s;
	struct kvp_cache_stats cache;
	uint64_t computed_tokens, generated_tokens, generations_done;
	uint32_t generations_active;
	uint64_t errors, connections_total;
	uint32_t connections;
	const struct kvp_ns_stats_table *ns;
	const struct kvp_req_counts *req;
	const struct kvp_hist *ttft, *lookup, *insert;   /* any may be NULL: not shown */
};

/* Append the Prometheus text format (version 0.0.4) of v to out. 0, or KVP_ENOMEM with
 * out emptied (so that the caller answers 500, never a truncated page). */
int kvp_metrics_render(const struct kvp_metrics_view *v, struct evbuffer *out);

/* Append label value s escaped for the text format (\\ \" \n; invalid UTF-8 becomes
 * U+FFFD). 0 or KVP_ENOMEM. */
int kvp_metrics_escape_label(struct evbuffer *out, const char *s);

/* Add to a STATS object: "namespaces" (top 10 by requests, "other" included when it
 * has any: namespace, tenant, adapter, requests, queries, query_tokens, hit_tokens,
 * hit_rate), "namespaces_tracked", and "ttft_us_p50", "ttft_us_p99", "lookup_us_p99"
 * (null while the histogram is empty). Allocation failures leave keys out. */
void kvp_metrics_stats_json(struct cJSON *o, const struct kvp_ns_stats_table *t,
			    const struct kvp_hist *ttft, const struct kvp_hist *lookup);

/* ---- the HTTP server ------------------------------------------------------- */

struct kvp_metrics;

/*
 * Serve GET (and HEAD) /metrics on base: 404 for any other path, 405 (with Allow) for
 * another method on /metrics, 500 when render leaves the buffer empty. listen is
 * "HOST:PORT" ("[v6addr]:PORT"; an empty host is 0.0.0.0; port 0 takes a free one and
 * the log says which) or, when it contains a '/', a Unix socket path: a stale socket
 * file there is replaced, a live one or any other file is an error, and the file is
 * created with mode 0660 and removed by kvp_metrics_free. render(arg, out) appends the
 * page to out; it runs on the loop thread inside the request callback.
 * 0, KVP_EINVAL (listen malformed), KVP_EIO (socket, bind, listen; logged), KVP_ENOMEM.
 * Only the event loop thread calls any of this.
 */
int kvp_metrics_start(struct event_base *base, const char *listen,
		      void (*render)(void *arg, struct evbuffer *out), void *arg,
		      struct kvp_metrics **out);
/* Stop serving, close every HTTP connection, remove the Unix socket file (only if it is
 * still the one we bound). Before event_base_free. NULL is fine. */
void kvp_metrics_free(struct kvp_metrics *m);

#endif
