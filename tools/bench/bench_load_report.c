/*
 * bench_load_report.c - the report of kvprefix-bench load: a table of the requests by
 * kind (count, errors, mean, p50, p99, max), the errors by status, the hit rates, the
 * daemon's RSS and its pool once the clients were gone; then the same as one JSON line
 * (requests, errors, errors_by_status, requests_per_s, p50_us, p99_us, kinds, rss_*_kb,
 * blocks_pinned, pool_invariant_ok, ...).
 */
#include <inttypes.h>
#include <stdio.h>

#include "bench.h"
#include "bench_load.h"

/* The table's per-kind rows and the errors by status. */
static void print_load_kinds(const struct load_totals *t)
{
	printf("  %-10s %10s %7s %10s %10s %10s %10s\n", "kind", "count", "errors", "mean",
	       "p50", "p99", "max");
	for (unsigned k = 0; k < LK_N; k++) {
		const struct load_hist *h = &t->kinds[k];

		if (!t->count[k])
			continue;
		printf("  %-10s %10" PRIu64 " %7" PRIu64 " %7.1f us %7.1f us %7.1f us %7.1f us\n",
		       load_kind_name[k], t->count[k], t->kind_err[k],
		       (double)h->sum_ns / (double)h->n / 1e3, load_hist_quantile_us(h, 0.5),
		       load_hist_quantile_us(h, 0.99), (double)h->max_ns / 1e3);
	}
	printf("  %-10s %10" PRIu64 " %7" PRIu64 " %10s %7.1f us %7.1f us %7.1f us\n", "all",
	       t->requests, t->errors, "", load_hist_quantile_us(&t->all, 0.5),
	       load_hist_quantile_us(&t->all, 0.99), (double)t->all.max_ns / 1e3);
	printf("\n  %.0f requests/s; %" PRIu64 " errors", (double)t->requests / t->elapsed,
	       t->errors);
	for (unsigned s = 0, first = 1; s < LOAD_ERR_SLOTS; s++)
		if (t->by_status[s]) {
			printf("%s%s %" PRIu64, first ? ": " : ", ", load_err_name(s),
			       t->by_status[s]);
			first = 0;
		}
	printf("%s\n", t->reconnects ? " (clients reconnected)" : "");
}

void print_load(const struct load_opts *o, const struct load_shared *sh,
		const struct kvp_server_info *info, const struct load_totals *t,
		const struct load_daemon_report *rep)
{
	const struct load_dstats *ds1 = &rep->ds1;

	printf("kvprefix-bench load: %" PRIu64 " clients, %.1f s, %s daemon (pid %d), seed %"
	       PRIu64 "\n", o->clients, t->elapsed, info->index_only ? "index-only" : "engine",
	       (int)rep->pid, o->seed);
	printf("  mix lookup=%u (half pinned) insert=%u generate=%u stats=%u; prompts %u "
	       "tokens (%u shared), generate %u (max_new %u)\n\n", sh->weight[LM_LOOKUP],
	       sh->weight[LM_INSERT], sh->weight[LM_GENERATE], sh->weight[LM_STATS],
	       sh->prompt_tokens, sh->prefix_tokens, sh->gen_prompt_tokens, sh->max_new);
	print_load_kinds(t);
	if (t->first_error)
		printf("  first error: %s\n", t->first_error);
	if (t->qt)
		printf("  lookup hit rate %.3f (%" PRIu64 " of %" PRIu64 " tokens)\n",
		       (double)t->ht / (double)t->qt, t->ht, t->qt);
	if (t->gp)
		printf("  generate: %" PRIu64 " of %" PRIu64 " prompt tokens cached (%.3f), %"
		       PRIu64 " tokens generated\n", t->gc, t->gp, (double)t->gc / (double)t->gp,
		       t->gt);
	printf("  daemon RSS %ld kB at the start, %ld kB at the end (%+ld kB), %ld kB peak "
	       "(of the samples), VmHWM %ld kB\n", rep->rss_start, rep->rss_end,
	       rep->rss_start >= 0 && rep->rss_end >= 0 ? rep->rss_end - rep->rss_start : 0,
	       rep->rss_peak, rep->hwm);
	if (rep->dstats_ok)
		printf("  daemon after the clients left (%.0f ms): blocks %.0f total, %.0f free, "
		       "%.0f cached, %.0f pinned (%s), leases %.0f, pool %s\n\n", rep->settle_ms,
		       ds1->blocks_total, ds1->blocks_free, ds1->blocks_cached, ds1->blocks_pinned,
		       ds1->blocks_pinned == 0 ? "ok" : "SHOULD BE 0", ds1->leases_active,
		       rep->invariant_ok ? "adds up" : "DOES NOT ADD UP");
	fflush(stdout);
}

static cJSON *load_kind_json(const struct load_hist *h, uint64_t count, uint64_t errors)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "count", (double)count);
	cJSON_AddNumberToObject(o, "errors", (double)errors);
	cJSON_AddNumberToObject(o, "mean_us", h->n ? (double)h->sum_ns / (double)h->n / 1e3 : 0);
	cJSON_AddNumberToObject(o, "p50_us", load_hist_quantile_us(h, 0.50));
	cJSON_AddNumberToObject(o, "p99_us", load_hist_quantile_us(h, 0.99));
	cJSON_AddNumberToObject(o, "p999_us", load_hist_quantile_us(h, 0.999));
	cJSON_AddNumberToObject(o, "max_us", (double)h->max_ns / 1e3);
	return o;
}

static void json_add_kb(cJSON *o, const char *key, long kb)
{
	if (kb >= 0)
		cJSON_AddNumberToObject(o, key, (double)kb);
	else
		cJSON_AddNullToObject(o, key);
}

/* The mix, the errors by status and the kinds' latencies into o. false when out of
 * memory. */
static bool json_load_requests(cJSON *o, const struct load_shared *sh,
			       const struct load_totals *t)
{
	cJSON *j = cJSON_AddObjectToObject(o, "mix");

	if (!j)
		return false;
	for (unsigned m = 0; m < LM_N; m++)
		cJSON_AddNumberToObject(j, load_mix_name[m], sh->weight[m]);
	cJSON_AddNumberToObject(o, "prompt_tokens", sh->prompt_tokens);
	cJSON_AddNumberToObject(o, "gen_prompt_tokens", sh->gen_prompt_tokens);
	cJSON_AddNumberToObject(o, "max_new", sh->max_new);
	cJSON_AddNumberToObject(o, "vocab", sh->vocab);
	cJSON_AddNumberToObject(o, "requests", (double)t->requests);
	cJSON_AddNumberToObject(o, "errors", (double)t->errors);
	j = cJSON_AddObjectToObject(o, "errors_by_status");
	if (!j)
		return false;
	for (unsigned s = 0; s < LOAD_ERR_SLOTS; s++)
		if (t->by_status[s])
			cJSON_AddNumberToObject(j, load_err_name(s), (double)t->by_status[s]);
	if (t->first_error)
		cJSON_AddStringToObject(o, "first_error", t->first_error);
	cJSON_AddNumberToObject(o, "reconnects", (double)t->reconnects);
	cJSON_AddNumberToObject(o, "requests_per_s", (double)t->requests / t->elapsed);
	cJSON_AddNumberToObject(o, "p50_us", load_hist_quantile_us(&t->all, 0.5));
	cJSON_AddNumberToObject(o, "p99_us", load_hist_quantile_us(&t->all, 0.99));
	cJSON_AddNumberToObject(o, "p999_us", load_hist_quantile_us(&t->all, 0.999));
	cJSON_AddNumberToObject(o, "max_us", (double)t->all.max_ns / 1e3);
	j = cJSON_AddObjectToObject(o, "kinds");
	if (!j)
		return false;
	for (unsigned k = 0; k < LK_N; k++) {
		cJSON *kj;

		if (!t->count[k])
			continue;
		kj = load_kind_json(&t->kinds[k], t->count[k], t->kind_err[k]);
		if (!kj || !cJSON_AddItemToObject(j, load_kind_name[k], kj)) {
			cJSON_Delete(kj);
			return false;
		}
	}
	return true;
}

/* The tokens, the daemon's RSS and its counters once the clients were gone, into o. */
static void json_load_daemon(cJSON *o, const struct load_totals *t,
			     const struct load_daemon_report *rep)
{
	const struct load_dstats *ds0 = &rep->ds0, *ds1 = &rep->ds1;

	cJSON_AddNumberToObject(o, "lookup_query_tokens", (double)t->qt);
	cJSON_AddNumberToObject(o, "lookup_hit_tokens", (double)t->ht);
	cJSON_AddNumberToObject(o, "lookup_hit_rate", t->qt ? (double)t->ht / (double)t->qt : 0);
	cJSON_AddNumberToObject(o, "generate_prompt_tokens", (double)t->gp);
	cJSON_AddNumberToObject(o, "generate_cached_tokens", (double)t->gc);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)t->gt);
	cJSON_AddNumberToObject(o, "daemon_pid", (double)rep->pid);
	json_add_kb(o, "rss_start_kb", rep->rss_start);
	json_add_kb(o, "rss_end_kb", rep->rss_end);
	json_add_kb(o, "rss_peak_kb", rep->rss_peak);
	json_add_kb(o, "vmhwm_kb", rep->hwm);
	if (rep->rss_start >= 0 && rep->rss_end >= 0)
		cJSON_AddNumberToObject(o, "rss_growth_kb", (double)(rep->rss_end - rep->rss_start));
	if (rep->dstats_ok) {
		cJSON_AddNumberToObject(o, "settle_ms", rep->settle_ms);
		cJSON_AddNumberToObject(o, "connections_end", ds1->connections);
		cJSON_AddNumberToObject(o, "blocks_total", ds1->blocks_total);
		cJSON_AddNumberToObject(o, "blocks_free", ds1->blocks_free);
		cJSON_AddNumberToObject(o, "blocks_cached", ds1->blocks_cached);
		cJSON_AddNumberToObject(o, "blocks_pinned", ds1->blocks_pinned);
		cJSON_AddNumberToObject(o, "leases_active", ds1->leases_active);
		cJSON_AddNumberToObject(o, "evictions", ds1->evictions - ds0->evictions);
		cJSON_AddNumberToObject(o, "daemon_errors", ds1->errors - ds0->errors);
		cJSON_AddNumberToObject(o, "daemon_requests", ds1->requests - ds0->requests);
	}
	cJSON_AddBoolToObject(o, "pool_invariant_ok", rep->invariant_ok);
}

bool json_load(const struct load_opts *opt, const struct load_shared *sh,
	       const struct kvp_server_info *info, const struct load_totals *t,
	       const struct load_daemon_report *rep)
{
	cJSON *o = cJSON_CreateObject();
	bool built = o != NULL;

	if (built) {
		cJSON_AddStringToObject(o, "mode", info->index_only ? "index-only" : "engine");
		cJSON_AddNumberToObject(o, "clients", (double)opt->clients);
		cJSON_AddNumberToObject(o, "duration_s", opt->duration);
		cJSON_AddNumberToObject(o, "elapsed_s", t->elapsed);
		cJSON_AddNumberToObject(o, "seed", (double)opt->seed);
		built = json_load_requests(o, sh, t);
	}
	if (built)
		json_load_daemon(o, t, rep);
	return bench_json_finish("load", o, built);
}
