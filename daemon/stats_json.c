/*
 * stats_json.c - the STATS reply: the daemon's counters (kvp_stats.h), the cache's
 * and the pool's as one JSON object, the keys docs/protocol.md lists for STATS.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "kvp_stats.h"

#define STATS_TOP_NAMESPACES 10

/* ---- namespaces and percentiles ---------------------------------------------- */

void kvp_stats_json_misses(struct cJSON *o, const uint64_t *fate_tokens, bool root_view)
{
	cJSON *m = cJSON_AddObjectToObject(o, "misses");

	if (!m)
		return;
	for (int f = KVP_FATE_CACHED + 1; f < KVP_FATE_N; f++) {
		uint64_t v = fate_tokens[f];

		if (f == KVP_FATE_OTHER_NS && !root_view)
			continue;   /* another tenant's blocks: counted as new below */
		if (f == KVP_FATE_NEW && !root_view)
			v += fate_tokens[KVP_FATE_OTHER_NS];
		cJSON_AddNumberToObject(m, kvp_fate_name((enum kvp_fate)f), (double)v);
	}
}

static void add_num_or_null(cJSON *o, const char *key, double v)
{
	if (isnan(v))
		cJSON_AddNullToObject(o, key);
	else
		cJSON_AddNumberToObject(o, key, v);
}

void kvp_stats_json_detail(struct cJSON *o, const struct kvp_ns_stats_table *t,
			   const struct kvp_hist *ttft, const struct kvp_hist *lookup,
			   const uint32_t *tenant)
{
	const struct kvp_ns_counters *top[STATS_TOP_NAMESPACES];
	size_t n_top = 0;
	uint32_t tracked = 0;
	cJSON *arr;

	/* top by requests: a partial insertion sort over at most 33 entries */
	for (uint32_t i = 0; i <= t->n; i++) {
		const struct kvp_ns_counters *c = i < t->n ? &t->e[i].c : &t->other;
		size_t j;

		if (tenant && (c == &t->other || t->e[i].tenant != *tenant))
			continue;   /* another tenant's, or mixed: not this client's to see */
		if (c != &t->other)
			tracked++;
		if (c == &t->other && c->requests == 0 && c->queries == 0)
			continue;
		if (n_top == STATS_TOP_NAMESPACES && c->requests <= top[n_top - 1]->requests)
			continue;
		if (n_top < STATS_TOP_NAMESPACES)
			n_top++;
		for (j = n_top - 1; j > 0 && top[j - 1]->requests < c->requests; j--)
			top[j] = top[j - 1];
		top[j] = c;
	}
	arr = cJSON_AddArrayToObject(o, "namespaces");
	for (size_t i = 0; arr && i < n_top; i++) {
		const struct kvp_ns_counters *c = top[i];
		cJSON *x = cJSON_CreateObject();
		char ns[KVP_NS_ADAPTER_MAX + 16];

		if (!x)
			break;
		if (c == &t->other) {
			cJSON_AddStringToObject(x, "namespace", "other");
			cJSON_AddNullToObject(x, "tenant");
			cJSON_AddNullToObject(x, "adapter");
		} else {
			const struct kvp_ns_entry *e =
				(const struct kvp_ns_entry *)((const char *)c -
							      offsetof(struct kvp_ns_entry, c));
			snprintf(ns, sizeof(ns), "%" PRIu32 ":%s", e->tenant, e->adapter);
			cJSON_AddStringToObject(x, "namespace", ns);
			cJSON_AddNumberToObject(x, "tenant", e->tenant);
			cJSON_AddStringToObject(x, "adapter", e->adapter);
		}
		cJSON_AddNumberToObject(x, "requests", (double)c->requests);
		cJSON_AddNumberToObject(x, "queries", (double)c->queries);
		cJSON_AddNumberToObject(x, "query_tokens", (double)c->query_tokens);
		cJSON_AddNumberToObject(x, "hit_tokens", (double)c->hit_tokens);
		cJSON_AddNumberToObject(x, "hit_rate", c->query_tokens ?
					(double)c->hit_tokens / (double)c->query_tokens : 0.0);
		kvp_stats_json_misses(x, c->fate_tokens, tenant == NULL);
		cJSON_AddItemToArray(arr, x);
	}
	cJSON_AddNumberToObject(o, "namespaces_tracked", tracked);
	add_num_or_null(o, "ttft_us_p50", ttft ? kvp_hist_quantile_us(ttft, 0.5) : NAN);
	add_num_or_null(o, "ttft_us_p99", ttft ? kvp_hist_quantile_us(ttft, 0.99) : NAN);
	add_num_or_null(o, "lookup_us_p99", lookup ? kvp_hist_quantile_us(lookup, 0.99) : NAN);
}

/* ---- the reply ---------------------------------------------------------------- */

/* Request counters and rates. */
static void add_requests(cJSON *o, const struct kvp_stats_totals *t,
			 const struct kvp_stats_view *v)
{
	uint64_t queries = t->lookups + t->generations;

	cJSON_AddNumberToObject(o, "requests", (double)(t->lookups + t->inserts + t->generations));
	cJSON_AddNumberToObject(o, "lookups", (double)t->lookups);
	cJSON_AddNumberToObject(o, "lookup_hits", (double)t->lookup_hits);
	cJSON_AddNumberToObject(o, "generations", (double)t->generations);
	cJSON_AddNumberToObject(o, "generation_hits", (double)t->generation_hits);
	cJSON_AddNumberToObject(o, "generations_done", (double)t->generations_done);
	cJSON_AddNumberToObject(o, "generations_active", v->generations_active);
	cJSON_AddNumberToObject(o, "computed_tokens", (double)t->computed_tokens);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)t->generated_tokens);
	cJSON_AddNumberToObject(o, "request_hit_rate", queries ?
				(double)(t->lookup_hits + t->generation_hits) / (double)queries :
				0.0);
	cJSON_AddNumberToObject(o, "inserts", (double)t->inserts);
	cJSON_AddNumberToObject(o, "query_tokens", (double)t->query_tokens);
	cJSON_AddNumberToObject(o, "hit_tokens", (double)t->hit_tokens);
	cJSON_AddNumberToObject(o, "hit_rate", t->query_tokens ?
				(double)t->hit_tokens / (double)t->query_tokens : 0.0);
	cJSON_AddNumberToObject(o, "insert_tokens", (double)t->insert_tokens);
	kvp_stats_json_misses(o, t->fate_tokens, v->tenant == NULL);
	cJSON_AddNumberToObject(o, "hit_rate_if_2x", t->query_tokens ?
				(double)(t->hit_tokens + t->ghost_tokens[0]) / (double)t->query_tokens :
				0.0);
	cJSON_AddNumberToObject(o, "hit_rate_if_4x", t->query_tokens ?
				(double)(t->hit_tokens + t->ghost_tokens[1]) / (double)t->query_tokens :
				0.0);
}

/* What the cache did, and the pool's blocks by state. */
static void add_cache(cJSON *o, const struct kvp_stats_totals *t, const struct kvp_cache_stats *st)
{
	cJSON_AddNumberToObject(o, "inserted_blocks", (double)st->inserted_blocks);
	cJSON_AddNumberToObject(o, "insert_full", (double)st->insert_full);
	cJSON_AddNumberToObject(o, "evictions", (double)st->evictions);
	cJSON_AddNumberToObject(o, "quota_evictions", (double)st->quota_evictions);
	cJSON_AddNumberToObject(o, "quota_refusals", (double)st->quota_refusals);
	cJSON_AddNumberToObject(o, "admin_requests", (double)t->admin_requests);
	cJSON_AddNumberToObject(o, "blocks_total", st->pool.total);
	cJSON_AddNumberToObject(o, "blocks_free", st->pool.free);
	cJSON_AddNumberToObject(o, "blocks_cached", st->pool.cached);
	cJSON_AddNumberToObject(o, "blocks_pinned", st->pool.referenced);
	cJSON_AddNumberToObject(o, "tree_nodes", (double)st->tree_nodes);
	cJSON_AddNumberToObject(o, "diagnostics_bytes", (double)st->diag_bytes);
	cJSON_AddNumberToObject(o, "leases_active", (double)st->leases_active);
	cJSON_AddNumberToObject(o, "keeps_active", (double)st->keeps_active);
	cJSON_AddNumberToObject(o, "keeps_expired", (double)st->keeps_expired);
	cJSON_AddNumberToObject(o, "keeps_given_up", (double)st->keeps_given_up);
}

/* "scheduler": the engine's batched steps (engine mode only). */
static void add_sched(cJSON *o, const struct kvp_sched_stats *sc)
{
	cJSON *x = cJSON_AddObjectToObject(o, "scheduler"), *h;

	if (!x)
		return;
	cJSON_AddNumberToObject(x, "running", sc->running);
	cJSON_AddNumberToObject(x, "waiting", sc->waiting);
	cJSON_AddNumberToObject(x, "parked", sc->parked);
	cJSON_AddNumberToObject(x, "steps", (double)sc->steps);
	cJSON_AddNumberToObject(x, "step_rows", (double)sc->step_rows);
	cJSON_AddNumberToObject(x, "step_seqs", (double)sc->step_seqs);
	cJSON_AddNumberToObject(x, "rows_per_step_mean",
				sc->steps ? (double)sc->step_rows / (double)sc->steps : 0);
	cJSON_AddNumberToObject(x, "seqs_per_step_mean",
				sc->steps ? (double)sc->step_seqs / (double)sc->steps : 0);
	if ((h = cJSON_AddArrayToObject(x, "rows_per_step_hist")))
		for (int i = 0; i < KVP_SCHED_HIST_BUCKETS; i++)
			cJSON_AddItemToArray(h, cJSON_CreateNumber((double)sc->rows_hist[i]));
	cJSON_AddNumberToObject(x, "admitted", (double)sc->admitted);
	cJSON_AddNumberToObject(x, "queue_us_mean",
				sc->admitted ? (double)sc->queue_us / (double)sc->admitted : 0);
	cJSON_AddNumberToObject(x, "preempted", (double)sc->preempted);
	cJSON_AddNumberToObject(x, "recomputes", (double)sc->recomputes);
}

/* tiers.redis (with --redis only). */
static void add_redis(cJSON *x, const struct kvp_tier_view *t)
{
	const struct kvp_redis_stats *r = &t->redis;
	cJSON *k = cJSON_AddObjectToObject(x, "redis");

	if (!k)
		return;
	cJSON_AddBoolToObject(k, "connected", r->connected);
	cJSON_AddNumberToObject(k, "writes", (double)r->writes);
	cJSON_AddNumberToObject(k, "write_bytes", (double)r->write_bytes);
	cJSON_AddNumberToObject(k, "dropped", (double)r->dropped);
	cJSON_AddNumberToObject(k, "round_trips", (double)r->fetches);
	cJSON_AddNumberToObject(k, "fetch_us_mean",
				r->fetches ? (double)r->fetch_us / (double)r->fetches : 0);
	cJSON_AddNumberToObject(k, "hits", (double)r->hits);
	cJSON_AddNumberToObject(k, "hit_bytes", (double)r->hit_bytes);
	cJSON_AddNumberToObject(k, "promotions", (double)t->redis_promotions);
	cJSON_AddNumberToObject(k, "promoted_blocks", (double)t->redis_promoted_blocks);
	cJSON_AddNumberToObject(k, "verify_failures", (double)r->verify_failures);
	cJSON_AddNumberToObject(k, "errors", (double)r->errors);
}

/* tiers.<name>: a tier of slots (the disk, or the host RAM tier). */
static void add_slots_tier(cJSON *x, const char *name, const struct kvp_disk_stats *d,
			   uint64_t promotions, uint64_t promoted)
{
	cJSON *k = cJSON_AddObjectToObject(x, name);

	if (!k)
		return;
	cJSON_AddNumberToObject(k, "blocks", (double)d->used);
	cJSON_AddNumberToObject(k, "capacity_blocks", (double)d->slots);
	cJSON_AddNumberToObject(k, "bytes", (double)(d->used * d->slot_bytes));
	cJSON_AddNumberToObject(k, "capacity_bytes", (double)(d->slots * d->slot_bytes));
	cJSON_AddNumberToObject(k, "demotions", (double)d->writes);
	cJSON_AddNumberToObject(k, "demotion_bytes", (double)d->write_bytes);
	cJSON_AddNumberToObject(k, "dropped", (double)d->dropped);
	cJSON_AddNumberToObject(k, "evictions", (double)d->evictions);
	cJSON_AddNumberToObject(k, "promotions", (double)promotions);
	cJSON_AddNumberToObject(k, "promoted_blocks", (double)promoted);
	cJSON_AddNumberToObject(k, "promotion_bytes", (double)d->read_bytes);
	cJSON_AddNumberToObject(k, "verify_failures", (double)d->verify_failures);
	cJSON_AddNumberToObject(k, "read_errors", (double)d->read_errors);
	cJSON_AddNumberToObject(k, "write_errors", (double)d->write_errors);
	cJSON_AddNumberToObject(k, "warm_blocks", (double)d->warm_blocks);
}

/* "kv_events" (with --kv-events) and "fleet" (with --kv-events-sub). */
static void add_events(cJSON *o, const struct kvp_events_view *e)
{
	if (e->present) {
		cJSON *x = cJSON_AddObjectToObject(o, "kv_events");

		cJSON_AddNumberToObject(x, "batches", (double)e->batches);
		cJSON_AddNumberToObject(x, "events", (double)e->events);
		cJSON_AddNumberToObject(x, "sent", (double)e->sent);
		cJSON_AddNumberToObject(x, "dropped", (double)e->dropped);
		cJSON_AddNumberToObject(x, "lost_events", (double)e->lost_events);
		cJSON_AddNumberToObject(x, "replays", (double)e->replays);
		cJSON_AddNumberToObject(x, "replayed", (double)e->replayed);
		cJSON_AddNumberToObject(x, "next_seq", (double)e->next_seq);
	}
	if (e->fleet_present) {
		cJSON *x = cJSON_AddObjectToObject(o, "fleet");

		cJSON_AddNumberToObject(x, "instances", e->instances);
		cJSON_AddNumberToObject(x, "blocks", (double)e->fleet_blocks);
		cJSON_AddNumberToObject(x, "batches", (double)e->fleet_batches);
		cJSON_AddNumberToObject(x, "events", (double)e->fleet_events);
		cJSON_AddNumberToObject(x, "malformed", (double)e->fleet_malformed);
		cJSON_AddNumberToObject(x, "gaps", (double)e->fleet_gaps);
		cJSON_AddNumberToObject(x, "replays", (double)e->fleet_replays);
		cJSON_AddNumberToObject(x, "replayed", (double)e->fleet_replayed);
	}
}

/* "tiers": {"host": ..., "disk": ..., "redis": ...}, each with its option only. */
static void add_tiers(cJSON *o, const struct kvp_tier_view *t)
{
	cJSON *x = cJSON_AddObjectToObject(o, "tiers");

	if (!x)
		return;
	if (t->host_present)
		add_slots_tier(x, "host", &t->host, t->host_promotions, t->host_promoted_blocks);
	if (t->present)
		add_slots_tier(x, "disk", &t->disk, t->promotions, t->promoted_blocks);
	if (t->redis_present)
		add_redis(x, t);
}

char *kvp_stats_json(const struct kvp_stats *s, const struct kvp_stats_view *v)
{
	cJSON *o = cJSON_CreateObject();
	char *txt;

	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "version", v->version);
	cJSON_AddStringToObject(o, "mode", v->mode);
	cJSON_AddStringToObject(o, "name", v->name);
	cJSON_AddNumberToObject(o, "block_tokens", v->block_tokens);
	cJSON_AddNumberToObject(o, "uptime_s", v->uptime_s);
	add_requests(o, &s->t, v);
	add_cache(o, &s->t, &v->cache);
	if (v->sched.present)
		add_sched(o, &v->sched);
	if (v->tier.present || v->tier.host_present || v->tier.redis_present)
		add_tiers(o, &v->tier);
	add_events(o, &v->events);
	cJSON_AddNumberToObject(o, "connections", v->connections);
	cJSON_AddNumberToObject(o, "connections_total", (double)s->t.connections_total);
	cJSON_AddNumberToObject(o, "errors", (double)s->t.errors);
	kvp_stats_json_detail(o, &s->ns, &s->ttft, &s->lookup, v->tenant);
	txt = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return txt;
}
