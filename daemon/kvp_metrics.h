/*
 * kvp_metrics.h - the Prometheus text exposition of kvprefixd's counters at /metrics,
 * and the HTTP server behind --metrics-listen.
 *
 *   event loop thread only ─────────────────────────────────────────────────────────
 *   GET /metrics ──evhttp──▶ render(arg, out) ── fills a kvp_metrics_view from
 *                            struct kvp_stats and the cache ──▶
 *                            kvp_metrics_render(view, out): "# HELP / # TYPE" + samples
 *
 * The counters themselves are kvp_stats.h's (one owner); this module only shows them.
 * Namespace labels are the tracked adapter names, escaped (\\ \" \n; invalid UTF-8
 * would become U+FFFD, but the namespace table never tracks such a name).
 *
 * Threading: the event loop thread only. Memory: the renderer and the HTTP server
 * allocate through libevent and report KVP_ENOMEM.
 */
#ifndef KVP_METRICS_H
#define KVP_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cache.h"
#include "kvp_stats.h"

struct evbuffer;
struct event_base;

/* ---- exposition ------------------------------------------------------------ */

/* Everything one /metrics page shows; the pointers are only read during the call. */
struct kvp_metrics_view {
	const char *version, *mode, *name;
	double uptime_s;
	struct kvp_stats_totals totals;
	struct kvp_cache_stats cache;
	uint32_t generations_active;
	uint32_t connections;
	struct kvp_sched_stats sched;   /* shown when present */
	struct kvp_tier_view tier;      /* shown when present */
	struct kvp_events_view events;  /* shown when present */
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

/* ---- the HTTP server ------------------------------------------------------- */

struct kvp_metrics;

/*
 * Serve GET (and HEAD) /metrics on base: 404 for any other path, 405 (with Allow) for
 * another method on /metrics, 500 when render leaves the buffer empty. listen is
 * "HOST:PORT" ("[v6addr]:PORT"; an empty host is 127.0.0.1, this machine only; port 0
 * takes a free one and the log says which) or, when it contains a '/', a Unix socket path: a stale socket
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
