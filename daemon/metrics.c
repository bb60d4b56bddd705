/*
 * metrics.c - the Prometheus text renderer and the evhttp server behind
 * --metrics-listen. The counters are kvp_stats.h's; their layout (histogram buckets,
 * the namespace table) is drawn in stats.c.
 *
 * The HTTP side is libevent's evhttp on the daemon's own event_base: a scrape runs in
 * the loop thread between client frames, so it reads every counter without locks. A
 * page is a few KiB (bounded by the namespace cap), built in one go.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>

#include "kvp_log.h"
#include "kvp_metrics.h"
#include "kvp_proto.h"
#include "kvp_status.h"
#include "kvp_unix_listen.h"
#include "kvp_utf8.h"

#define met_zalloc(n) calloc(1, (n))
#define met_free(p) free(p)

#define HTTP_TIMEOUT_S 10
#define HTTP_MAX_HEADERS 8192
#define HTTP_MAX_BODY 4096

/* ---- the text format ------------------------------------------------------- */

/* The renderer's output: every call is a no-op after the first failure. */
struct emit {
	struct evbuffer *out;
	int err;
};

static void emitf(struct emit *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emitf(struct emit *e, const char *fmt, ...)
{
	va_list ap;

	if (e->err)
		return;
	va_start(ap, fmt);
	if (evbuffer_add_vprintf(e->out, fmt, ap) < 0)
		e->err = KVP_ENOMEM;
	va_end(ap);
}

int kvp_metrics_escape_label(struct evbuffer *out, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str), run = 0;

	/* copy runs of plain bytes in one go; escape or replace the rest */
	for (size_t i = 0; i < n;) {
		const char *rep = NULL;
		size_t k = kvp_utf8_seq(s + i, n - i);

		if (k == 0)
			rep = "\xef\xbf\xbd";
		else if (s[i] == '\\')
			rep = "\\\\";
		else if (s[i] == '"')
			rep = "\\\"";
		else if (s[i] == '\n')
			rep = "\\n";
		if (!rep) {
			i += k;
			run += k;
			continue;
		}
		if ((run && evbuffer_add(out, s + i - run, run) != 0) ||
		    evbuffer_add(out, rep, strlen(rep)) != 0)
			return KVP_ENOMEM;
		run = 0;
		i += k ? k : 1;
	}
	if (run && evbuffer_add(out, s + n - run, run) != 0)
		return KVP_ENOMEM;
	return KVP_OK;
}

static void emit_label(struct emit *e, const char *s)
{
	if (!e->err && kvp_metrics_escape_label(e->out, s) != 0)
		e->err = KVP_ENOMEM;
}

static void family(struct emit *e, const char *name, const char *type, const char *help)
{
	emitf(e, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u64(struct emit *e, const char *name, uint64_t v)
{
	emitf(e, "%s %" PRIu64 "\n", name, v);
}

static void counter(struct emit *e, const char *name, const char *help, uint64_t v)
{
	family(e, name, "counter", help);
	sample_u64(e, name, v);
}

static void gauge(struct emit *e, const char *name, const char *help, double v)
{
	family(e, name, "gauge", help);
	if (v == floor(v) && fabs(v) < 1e15)
		emitf(e, "%s %.0f\n", name, v);
	else
		emitf(e, "%s %.9g\n", name, v);
}

/* Prometheus float: shortest that reads back the same. */
static void fmt_float(char *buf, size_t cap, double v)
{
	for (int prec = 6; prec <= 17; prec++) {
		snprintf(buf, cap, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

/* One histogram's series; labels is "" or `key="value",` (with its trailing comma). */
static void hist_series(struct emit *e, const char *name, const char *labels,
			const struct kvp_hist *h)
{
	uint64_t cum = 0;
	char le[48], sum[48];

	for (uint32_t i = 0; i < h->n_bounds; i++) {
		cum += h->buckets[i];
		fmt_float(le, sizeof(le), h->bounds_us[i] / 1e6);
		emitf(e, "%s_bucket{%sle=\"%s\"} %" PRIu64 "\n", name, labels, le, cum);
	}
	cum += h->buckets[h->n_bounds];
	emitf(e, "%s_bucket{%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, cum);
	snprintf(sum, sizeof(sum), "%.9g", h->sum_us / 1e6);
	if (labels[0]) {
		/* drop the trailing comma for _sum and _count */
		int n = (int)strlen(labels) - 1;
		emitf(e, "%s_sum{%.*s} %s\n%s_count{%.*s} %" PRIu64 "\n", name, n, labels, sum,
		      name, n, labels, h->count);
	} else {
		emitf(e, "%s_sum %s\n%s_count %" PRIu64 "\n", name, sum, name, h->count);
	}
}

/* The namespace labels of entry i of t, or of "other" when i == t->n; extra (a label
 * with its leading comma, or "") after them. */
static void ns_labels(struct emit *e, const struct kvp_ns_stats_table *t, uint32_t i,
		      const char *extra)
{
	if (i == t->n) {
		emitf(e, "{namespace=\"other\",tenant=\"\",adapter=\"\"%s}", extra);
		return;
	}
	emitf(e, "{namespace=\"%" PRIu32 ":", t->e[i].tenant);
	emit_label(e, t->e[i].adapter);
	emitf(e, "\",tenant=\"%" PRIu32 "\",adapter=\"", t->e[i].tenant);
	emit_label(e, t->e[i].adapter);
	emitf(e, "\"%s}", extra);
}

static void ns_family(struct emit *e, const struct kvp_ns_stats_table *t, const char *name,
		      const char *help, size_t field)
{
	family(e, name, "counter", help);
	for (uint32_t i = 0; i <= t->n; i++) {
		const struct kvp_ns_counters *c = i < t->n ? &t->e[i].c : &t->other;
		uint64_t v;

		memcpy(&v, (const char *)c + field, sizeof(v));
		emitf(e, "%s", name);
		ns_labels(e, t, i, "");
		emitf(e, " %" PRIu64 "\n", v);
	}
}

/* Query tokens not served, by cause: the daemon's (t NULL) or by namespace. */
static void miss_family(struct emit *e, const uint64_t *totals,
			const struct kvp_ns_stats_table *t)
{
	const char *name = t ? "kvprefix_namespace_miss_tokens_total" : "kvprefix_miss_tokens_total";
	char extra[48];

	family(e, name, "counter", t ? "Query tokens not served from the cache, by namespace "
		       "and cause (docs/eviction.md)" : "Query tokens not served from the cache, by "
		       "cause: new, evicted_pool, evicted_quota, evicted_admin, other_namespace, "
		       "partial (docs/eviction.md)");
	for (int f = KVP_FATE_CACHED + 1; f < KVP_FATE_N; f++) {
		snprintf(extra, sizeof(extra), ",cause=\"%s\"", kvp_fate_name((enum kvp_fate)f));
		if (!t) {
			emitf(e, "%s{%s} %" PRIu64 "\n", name, extra + 1, totals[f]);
			continue;
		}
		for (uint32_t i = 0; i <= t->n; i++) {
			const struct kvp_ns_counters *c = i < t->n ? &t->e[i].c : &t->other;

			emitf(e, "%s", name);
			ns_labels(e, t, i, extra);
			emitf(e, " %" PRIu64 "\n", c->fate_tokens[f]);
		}
	}
}

/* What pools 2x and 4x as large would have served, and what the estimate costs. */
static void larger_pool_series(struct emit *e, const struct kvp_stats_totals *tt, size_t bytes)
{
	static const uint32_t mult[KVP_CACHE_GHOST_N] = KVP_CACHE_GHOST_MULTIPLES;

	family(e, "kvprefix_larger_pool_hit_tokens_total", "counter",
	       "Query tokens a pool of `pool` times the capacity would have served (estimate; "
	       "hit rate if larger = this / query tokens)");
	for (int k = 0; k < KVP_CACHE_GHOST_N; k++)
		emitf(e, "kvprefix_larger_pool_hit_tokens_total{pool=\"%ux\"} %" PRIu64 "\n",
		      mult[k], tt->hit_tokens + tt->ghost_tokens[k]);
	gauge(e, "kvprefix_diagnostics_bytes",
	      "Memory of the miss diagnostics and the larger-pool estimate", (double)bytes);
}

/* The engine scheduler's series: sequences by state, steps, rows per step (a histogram
 * of powers of two), preemptions, queue time. */
static void sched_series(struct emit *e, const struct kvp_sched_stats *sc)
{
	uint64_t cum = 0;

	family(e, "kvprefix_sequences", "gauge", "Generations in the engine by state");
	emitf(e, "kvprefix_sequences{state=\"running\"} %" PRIu32 "\n",
	      sc->running - sc->parked);
	emitf(e, "kvprefix_sequences{state=\"parked\"} %" PRIu32 "\n", sc->parked);
	emitf(e, "kvprefix_sequences{state=\"waiting\"} %" PRIu32 "\n", sc->waiting);
	family(e, "kvprefix_step_rows", "histogram",
	       "Rows (decode tokens and prompt positions) of each batched engine step");
	for (int i = 0; i < KVP_SCHED_HIST_BUCKETS - 1; i++) {
		cum += sc->rows_hist[i];
		emitf(e, "kvprefix_step_rows_bucket{le=\"%u\"} %" PRIu64 "\n", 1u << i, cum);
	}
	cum += sc->rows_hist[KVP_SCHED_HIST_BUCKETS - 1];
	emitf(e, "kvprefix_step_rows_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
	emitf(e, "kvprefix_step_rows_sum %" PRIu64 "\nkvprefix_step_rows_count %" PRIu64 "\n",
	      sc->step_rows, sc->steps);
	counter(e, "kvprefix_step_sequences_total",
		"Sequences over all engine steps (divided by steps: the mean batch)",
		sc->step_seqs);
	counter(e, "kvprefix_admitted_total", "Generations admitted to the engine",
		sc->admitted);
	family(e, "kvprefix_queue_seconds_total", "counter",
	       "Time generations waited for a place (--max-seqs), summed");
	emitf(e, "kvprefix_queue_seconds_total %.6f\n", (double)sc->queue_us / 1e6);
	counter(e, "kvprefix_preemptions_total",
		"Generations whose blocks were given back so that others could go on",
		sc->preempted);
	counter(e, "kvprefix_recomputes_total",
		"Preempted generations taken up again, their uncached positions recomputed",
		sc->recomputes);
}

/* A tier's values of the series below (NA: not its own business). */
#define TIER_NA UINT64_MAX
enum { TIER_SERIES = 10 };

static void slots_values(const struct kvp_disk_stats *d, uint64_t promotions, uint64_t promoted,
			 uint64_t v[TIER_SERIES])
{
	const uint64_t x[TIER_SERIES] = { d->used, d->slots, d->used * d->slot_bytes, d->writes,
					   promotions, promoted, d->dropped, d->evictions,
					   d->verify_failures, d->read_errors + d->write_errors };

	memcpy(v, x, sizeof(x));
}

/* KV events published (--kv-events) and the fleet index (--kv-events-sub). */
static void events_series(struct emit *e, const struct kvp_events_view *v)
{
	if (v->present) {
		counter(e, "kvprefix_kv_events_batches_total", "KV event batches published",
			v->batches);
		counter(e, "kvprefix_kv_events_total", "KV events published", v->events);
		counter(e, "kvprefix_kv_events_dropped_total",
			"KV event batches lost before they were sent", v->dropped);
		counter(e, "kvprefix_kv_events_replays_total",
			"Replay requests served on the replay socket", v->replays);
	}
	if (v->fleet_present) {
		gauge(e, "kvprefix_fleet_instances", "Engines the fleet index follows",
		      (double)v->instances);
		gauge(e, "kvprefix_fleet_blocks", "Blocks the fleet index holds, all engines",
		      (double)v->fleet_blocks);
		counter(e, "kvprefix_fleet_events_applied_total",
			"Events of other engines applied to the fleet index", v->fleet_events);
		counter(e, "kvprefix_fleet_events_malformed_total",
			"Event batches or events skipped: malformed or unusable", v->fleet_malformed);
		counter(e, "kvprefix_fleet_gaps_total", "Gaps seen in an engine's sequence numbers",
			v->fleet_gaps);
		counter(e, "kvprefix_fleet_replays_total", "Replays asked of engines to fill gaps",
			v->fleet_replays);
	}
}

/* The tiers' series, labelled tier="host", "disk" or "redis". */
static void tier_series(struct emit *e, const struct kvp_tier_view *t)
{
	static const struct {
		const char *name, *type, *help;
	} s[TIER_SERIES] = {
		{ "kvprefix_tier_blocks", "gauge", "Blocks a tier below the pool holds" },
		{ "kvprefix_tier_capacity_blocks", "gauge", "Blocks a tier below the pool can hold" },
		{ "kvprefix_tier_bytes", "gauge", "Bytes of the blocks a tier holds" },
		{ "kvprefix_tier_demotions_total", "counter",
		  "Blocks written to a tier (as they left the pool; Redis: as they were computed)" },
		{ "kvprefix_tier_promotions_total", "counter",
		  "Generations that read blocks back from a tier (Redis: asked it)" },
		{ "kvprefix_tier_promoted_blocks_total", "counter",
		  "Blocks read back from a tier instead of recomputed" },
		{ "kvprefix_tier_dropped_total", "counter",
		  "Blocks not written to a tier: its queue was full, or it was down" },
		{ "kvprefix_tier_evictions_total", "counter", "Blocks a tier dropped to make room" },
		{ "kvprefix_tier_verify_failures_total", "counter",
		  "Blocks read back that were not the block asked for (a miss)" },
		{ "kvprefix_tier_io_errors_total", "counter", "Reads, writes or connections that failed" },
	};
	const char *const names[3] = { "host", "disk", "redis" };
	const bool present[3] = { t->host_present, t->present, t->redis_present };
	const struct kvp_redis_stats *r = &t->redis;
	uint64_t v[3][TIER_SERIES];
	const uint64_t rv[TIER_SERIES] = { TIER_NA, TIER_NA, TIER_NA, r->writes, t->redis_promotions,
					   t->redis_promoted_blocks, r->dropped, TIER_NA,
					   r->verify_failures, r->errors };

	slots_values(&t->host, t->host_promotions, t->host_promoted_blocks, v[0]);
	slots_values(&t->disk, t->promotions, t->promoted_blocks, v[1]);
	memcpy(v[2], rv, sizeof(rv));
	for (size_t i = 0; i < TIER_SERIES; i++) {
		bool any = false;

		for (int k = 0; k < 3; k++)
			any = any || (present[k] && v[k][i] != TIER_NA);
		if (!any)
			continue;
		family(e, s[i].name, s[i].type, s[i].help);
		for (int k = 0; k < 3; k++)
			if (present[k] && v[k][i] != TIER_NA)
				emitf(e, "%s{tier=\"%s\"} %" PRIu64 "\n", s[i].name, names[k], v[k][i]);
	}
	if (t->redis_present) {
		gauge(e, "kvprefix_redis_connected", "Whether the Redis tier's connection is up",
		      r->connected);
		counter(e, "kvprefix_redis_round_trips_total",
			"Pipelined fetches from Redis (one per prompt)", r->fetches);
		family(e, "kvprefix_redis_fetch_seconds_total", "counter",
		       "Time of the fetches from Redis, summed");
		emitf(e, "kvprefix_redis_fetch_seconds_total %.6f\n", (double)r->fetch_us / 1e6);
	}
}

int kvp_metrics_render(const struct kvp_metrics_view *v, struct evbuffer *out)
{
	struct emit e = { .out = out };
	const struct kvp_cache_stats *st = &v->cache;
	const struct kvp_stats_totals *tt = &v->totals;

	family(&e, "kvprefix_info", "gauge", "kvprefixd build and mode (value is always 1)");
	emitf(&e, "kvprefix_info{version=\"");
	emit_label(&e, v->version ? v->version : "");
	emitf(&e, "\",mode=\"");
	emit_label(&e, v->mode ? v->mode : "");
	emitf(&e, "\",name=\"");
	emit_label(&e, v->name ? v->name : "");
	emitf(&e, "\"} 1\n");
	gauge(&e, "kvprefix_uptime_seconds", "Seconds since the daemon started", v->uptime_s);

	family(&e, "kvprefix_queries_total", "counter",
	       "Prompts matched against the cache: LOOKUP requests and GENERATE prompts");
	emitf(&e, "kvprefix_queries_total{kind=\"lookup\"} %" PRIu64 "\n", tt->lookups);
	emitf(&e, "kvprefix_queries_total{kind=\"generate\"} %" PRIu64 "\n", tt->generations);
	family(&e, "kvprefix_query_hits_total", "counter",
	       "Queries that matched at least one cached block");
	emitf(&e, "kvprefix_query_hits_total{kind=\"lookup\"} %" PRIu64 "\n", tt->lookup_hits);
	emitf(&e, "kvprefix_query_hits_total{kind=\"generate\"} %" PRIu64 "\n",
	      tt->generation_hits);
	counter(&e, "kvprefix_query_tokens_total", "Tokens of every query", tt->query_tokens);
	counter(&e, "kvprefix_hit_tokens_total",
		"Query tokens served from the cache (hit rate = hit / query tokens)", tt->hit_tokens);
	miss_family(&e, tt->fate_tokens, NULL);
	larger_pool_series(&e, tt, st->diag_bytes);
	counter(&e, "kvprefix_computed_tokens_total",
		"Positions whose KV the engine computed (prompt not cached, and generated)",
		tt->computed_tokens);
	counter(&e, "kvprefix_generated_tokens_total", "Tokens generated", tt->generated_tokens);
	counter(&e, "kvprefix_generations_done_total", "Generations finished, however they ended",
		tt->generations_done);
	counter(&e, "kvprefix_inserts_total", "INSERT requests", tt->inserts);
	counter(&e, "kvprefix_insert_tokens_total", "Tokens of INSERT requests", tt->insert_tokens);
	counter(&e, "kvprefix_inserted_blocks_total", "Blocks added to the cache",
		st->inserted_blocks);
	counter(&e, "kvprefix_insert_full_total",
		"Inserts and generations cut short by a pool full of pinned blocks", st->insert_full);
	counter(&e, "kvprefix_evictions_total", "Cached blocks evicted to make room",
		st->evictions);
	counter(&e, "kvprefix_leases_total", "Leases granted", st->leases_total);
	counter(&e, "kvprefix_errors_total", "ERROR frames sent", tt->errors);
	counter(&e, "kvprefix_connections_total", "Client connections accepted",
		tt->connections_total);

	if (v->req) {
		family(&e, "kvprefix_requests_total", "counter",
		       "Requests by frame type and outcome (ok, or the error code sent)");
		for (unsigned t = 0; t < KVP_REQ_NTYPES; t++) {
			for (unsigned k = 0; k < KVP_REQ_NOUTCOMES; k++) {
				uint64_t n = v->req->n[t][k];

				/* ok always (so rate() starts at 0); errors once they happen */
				if (k && !n)
					continue;
				if (!k && t == KVP_REQ_OTHER && !n)
					continue;
				emitf(&e, "kvprefix_requests_total{type=\"%s\",outcome=\"%s\"} %" PRIu64
				      "\n", kvp_req_type_name(t),
				      kvp_req_outcome_name(k), n);
			}
		}
	}

	family(&e, "kvprefix_pool_blocks", "gauge", "Pool blocks by state");
	emitf(&e, "kvprefix_pool_blocks{state=\"free\"} %" PRIu32 "\n", st->pool.free);
	emitf(&e, "kvprefix_pool_blocks{state=\"cached\"} %" PRIu32 "\n", st->pool.cached);
	emitf(&e, "kvprefix_pool_blocks{state=\"pinned\"} %" PRIu32 "\n", st->pool.referenced);
	gauge(&e, "kvprefix_pool_capacity_blocks", "Blocks in the pool", (double)st->pool.total);
	gauge(&e, "kvprefix_tree_nodes", "Nodes of the prefix tree", (double)st->tree_nodes);
	gauge(&e, "kvprefix_leases_active", "Leases held by clients", (double)st->leases_active);
	gauge(&e, "kvprefix_keeps_active", "Prefixes kept by INSERT or GENERATE with KEEP",
	      (double)st->keeps_active);
	family(&e, "kvprefix_keeps_ended_total", "counter",
	       "Keeps ended: at their time (expired), or early because nothing else could make "
	       "room (given_up)");
	emitf(&e, "kvprefix_keeps_ended_total{how=\"expired\"} %" PRIu64 "\n", st->keeps_expired);
	emitf(&e, "kvprefix_keeps_ended_total{how=\"given_up\"} %" PRIu64 "\n", st->keeps_given_up);
	gauge(&e, "kvprefix_connections", "Client connections open", (double)v->connections);
	gauge(&e, "kvprefix_generations_active", "Generations submitted and not done",
	      (double)v->generations_active);

	if (v->sched.present)
		sched_series(&e, &v->sched);
	if (v->tier.present || v->tier.host_present || v->tier.redis_present)
		tier_series(&e, &v->tier);
	events_series(&e, &v->events);
	if (v->ns) {
		const struct kvp_ns_stats_table *t = v->ns;

		gauge(&e, "kvprefix_namespaces_tracked",
		      "Namespaces (tenant, adapter) with their own series; the rest are \"other\"",
		      (double)t->n);
		ns_family(&e, t, "kvprefix_namespace_requests_total",
			  "LOOKUP, INSERT and GENERATE requests served, by namespace",
			  offsetof(struct kvp_ns_counters, requests));
		ns_family(&e, t, "kvprefix_namespace_queries_total", "Queries by namespace",
			  offsetof(struct kvp_ns_counters, queries));
		ns_family(&e, t, "kvprefix_namespace_query_tokens_total",
			  "Query tokens by namespace", offsetof(struct kvp_ns_counters, query_tokens));
		ns_family(&e, t, "kvprefix_namespace_hit_tokens_total",
			  "Query tokens served from the cache, by namespace",
			  offsetof(struct kvp_ns_counters, hit_tokens));
		ns_family(&e, t, "kvprefix_namespace_computed_tokens_total",
			  "Positions the engine computed, by namespace",
			  offsetof(struct kvp_ns_counters, computed_tokens));
		ns_family(&e, t, "kvprefix_namespace_generated_tokens_total",
			  "Tokens generated, by namespace",
			  offsetof(struct kvp_ns_counters, generated_tokens));
		miss_family(&e, NULL, t);
	}

	if (v->ttft) {
		family(&e, "kvprefix_ttft_seconds", "histogram",
		       "Time to first token of generations, from request to first token");
		hist_series(&e, "kvprefix_ttft_seconds", "", v->ttft);
	}
	if (v->lookup || v->insert) {
		family(&e, "kvprefix_lookup_duration_seconds", "histogram",
		       "Time spent in the index per LOOKUP (op=lookup) and INSERT (op=insert)");
		if (v->lookup)
			hist_series(&e, "kvprefix_lookup_duration_seconds", "op=\"lookup\",", v->lookup);
		if (v->insert)
			hist_series(&e, "kvprefix_lookup_duration_seconds", "op=\"insert\",", v->insert);
	}
	if (e.err) {
		size_t len = evbuffer_get_length(out);

		evbuffer_drain(out, len);   /* never a page with series missing */
		return e.err;
	}
	return KVP_OK;
}

/* ---- the HTTP server ------------------------------------------------------- */

struct kvp_metrics {
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	void (*render)(void *arg, struct evbuffer *out);
	void *arg;
	int port;                                        /* TCP port bound, 0 for Unix */
	struct kvp_unix_file file;                       /* the socket file we made, if Unix */
};

static void reply_text(struct evhttp_request *req, int code, const char *reason,
		       const char *text)
{
	struct evbuffer *b = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; charset=utf-8");
	if (b)
		evbuffer_add(b, text, strlen(text));
	evhttp_send_reply(req, code, reason, b);
	if (b)
		evbuffer_free(b);
}

static void http_cb(struct evhttp_request *req, void *arg)
{
	struct kvp_metrics *m = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evbuffer *body;

	if (!path || strcmp(path, "/metrics") != 0) {
		reply_text(req, HTTP_NOTFOUND, "Not Found", "404 not found: try /metrics\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "405 method not allowed: GET /metrics\n");
		return;
	}
	body = evbuffer_new();
	if (body)
		m->render(m->arg, body);
	if (!body || evbuffer_get_length(body) == 0) {
		kvp_warn("metrics: out of memory rendering /metrics");
		if (body)
			evbuffer_free(body);
		reply_text(req, HTTP_INTERNAL, "Internal Server Error", "500 out of memory\n");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	if (cmd == EVHTTP_REQ_HEAD) {
		/* evhttp would send the body after a HEAD too: send only its length */
		char len[32];

		snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", len);
		evhttp_send_reply(req, HTTP_OK, "OK", NULL);
	} else {
		evhttp_send_reply(req, HTTP_OK, "OK", body);
	}
	evbuffer_free(body);
}

/* "HOST:PORT", "[V6]:PORT" or ":PORT" into host and port. 0 or KVP_EINVAL. */
static int parse_host_port(const char *s, char *host, size_t cap, uint16_t *port)
{
	const char *colon, *h = s;
	size_t hlen;
	char *end;
	unsigned long p;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || close[1] != ':')
			return KVP_EINVAL;
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || memchr(s, ':', (size_t)(colon - s)))
			return KVP_EINVAL;   /* no port, or an unbracketed IPv6 address */
		hlen = (size_t)(colon - s);
	}
	if (hlen + 1 > cap)
		return KVP_EINVAL;
	if (hlen == 0 && s[0] != '[')
		snprintf(host, cap, "127.0.0.1");   /* ":PORT": this machine only; name a host to
						       serve others */
	else if (hlen == 0)
		return KVP_EINVAL;
	else {
		memcpy(host, h, hlen);
		host[hlen] = '\0';
	}
	if (colon[1] < '0' || colon[1] > '9')
		return KVP_EINVAL;
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (errno || *end || p > 65535)
		return KVP_EINVAL;
	*port = (uint16_t)p;
	return KVP_OK;
}

int kvp_metrics_start(struct event_base *base, const char *listen_on,
		      void (*render)(void *arg, struct evbuffer *out), void *arg,
		      struct kvp_metrics **out)
{
	struct kvp_metrics *m;
	char host[256];
	uint16_t port = 0;
	int rc = KVP_EIO;

	*out = NULL;
	if (!listen_on || !listen_on[0] || !render)
		return KVP_EINVAL;
	if (!strchr(listen_on, '/') &&
	    parse_host_port(listen_on, host, sizeof(host), &port) != 0) {
		kvp_err("--metrics-listen '%s': want HOST:PORT, [IPV6]:PORT or a Unix socket path "
			"(with a '/')", listen_on);
		return KVP_EINVAL;
	}
	m = met_zalloc(sizeof(*m));
	if (!m) {
		kvp_err("metrics: out of memory starting the HTTP server");
		return KVP_ENOMEM;
	}
	m->render = render;
	m->arg = arg;
	m->http = evhttp_new(base);
	if (!m->http) {
		rc = KVP_ENOMEM;
		goto out_free;
	}
	evhttp_set_timeout(m->http, HTTP_TIMEOUT_S);
	evhttp_set_max_headers_size(m->http, HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(m->http, HTTP_MAX_BODY);
	/* every method reaches http_cb, which answers 405 itself (with Allow) */
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
				   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
				   EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(m->http, http_cb, m);

	if (strchr(listen_on, '/')) {
		int fd;

		rc = kvp_unix_listen(listen_on, 0660, 64, "metrics: ", "something", &fd, &m->file);
		if (rc)
			goto out_free;
		rc = KVP_EIO;
		m->bound = evhttp_accept_socket_with_handle(m->http, fd);
		if (!m->bound) {
			kvp_err("metrics: cannot serve on %s", listen_on);
			close(fd);
			goto out_free;
		}
		kvp_info("metrics: serving /metrics on %s", listen_on);
	} else {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char addr[INET6_ADDRSTRLEN] = "?";

		errno = 0;
		m->bound = evhttp_bind_socket_with_handle(m->http, host, port);
		if (!m->bound) {
			kvp_err("metrics: cannot listen on %s: %s", listen_on,
				errno ? strerror(errno) : "cannot resolve or bind the address");
			goto out_free;
		}
		if (getsockname(evhttp_bound_socket_get_fd(m->bound), (struct sockaddr *)&ss,
				&sl) == 0) {
			if (ss.ss_family == AF_INET6) {
				const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
				inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
				m->port = ntohs(s6->sin6_port);
			} else if (ss.ss_family == AF_INET) {
				const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
				inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
				m->port = ntohs(s4->sin_port);
			}
		}
		kvp_info("metrics: serving /metrics on %s%s%s:%d",
			 strchr(addr, ':') ? "[" : "", addr, strchr(addr, ':') ? "]" : "", m->port);
	}
	*out = m;
	return KVP_OK;

out_free:
	if (rc == KVP_ENOMEM)
		kvp_err("metrics: out of memory starting the HTTP server");
	kvp_metrics_free(m);
	return rc;
}

void kvp_metrics_free(struct kvp_metrics *m)
{
	if (!m)
		return;
	if (m->http)
		evhttp_free(m->http);   /* closes the listener and every connection */
	kvp_unix_unlink(&m->file, "metrics: ");
	met_free(m);
}
