/*
 * bench_engine_daemon.c - kvprefix-bench engine (b) and (c), through a kvprefixd
 * running a model: (b) the TTFT of a 2,050-token prompt whose first 2,000 tokens are
 * cached against the same length cold, back to back; (c) 16 distinct 2,000-token
 * prefixes, requests interleaved over them, each with a unique 10-50-token suffix:
 * the token hit rate and the TTFT of hits and misses.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_engine.h"
#include "trace.h"
#include "util.h"

/* ---- (b): TTFT cached vs cold through the daemon ----------------------------------- */

/* The medians and ratios of the repetitions in res. */
static void ttft_summarize(struct eng_ttft *res)
{
	double a[8];

	memcpy(a, res->cached_us, sizeof(a));
	res->cached_med_us = bench_median(a, (size_t)res->reps);
	memcpy(a, res->cold_us, sizeof(a));
	res->cold_med_us = bench_median(a, (size_t)res->reps);
	memcpy(a, res->prefix_us, sizeof(a));
	res->prefix_med_us = bench_median(a, (size_t)res->reps);
	res->ratio_of_medians = res->cold_med_us / res->cached_med_us;
	/* each repetition's pair ran back to back, on the same machine state */
	for (int r = 0; r < res->reps; r++)
		a[r] = res->cold_us[r] / res->cached_us[r];
	res->ratio = bench_median(a, (size_t)res->reps);
}

/* Repetition r: the prefix alone, then prefix + suffix (cached), then another prefix +
 * the same suffix (cold). */
static int ttft_rep(struct kvp_client *c, uint32_t vocab, uint32_t want, int r,
		    struct eng_ttft *res)
{
	const uint32_t n = TTFT_PREFIX + TTFT_SUFFIX;
	uint32_t p[TTFT_PREFIX + TTFT_SUFFIX];
	struct kvp_usage u;

	/* the prefix alone, so that its 2,000 tokens (full blocks) are cached */
	bench_rand_tokens(p, TTFT_PREFIX, 0x1000 + (uint64_t)r, vocab);
	bench_rand_tokens(p + TTFT_PREFIX, TTFT_SUFFIX, 0x2000 + (uint64_t)r, vocab);
	if (bench_generate(PROG " engine", c, p, TTFT_PREFIX, 1, NULL, &u, "prefix") < 0)
		return -1;
	res->prefix_us[r] = (double)u.ttft_us;
	/* the same prefix and a suffix: only the suffix is computed */
	if (bench_generate(PROG " engine", c, p, n, 1, NULL, &u, "cached prompt") < 0)
		return -1;
	res->cached_us[r] = (double)u.ttft_us;
	res->cached_tokens[r] = u.cached_tokens;
	if (u.cached_tokens < want)
		res->cached_ok = false;
	/* a new random prefix, the same suffix: nothing is cached */
	bench_rand_tokens(p, TTFT_PREFIX, 0x3000 + (uint64_t)r, vocab);
	if (bench_generate(PROG " engine", c, p, n, 1, NULL, &u, "cold prompt") < 0)
		return -1;
	res->cold_us[r] = (double)u.ttft_us;
	res->cold_cached_tokens[r] = u.cached_tokens;
	fprintf(stderr, "engine: TTFT %u tokens: cached %u tokens %.1f ms, cold (%u "
		"cached) %.1f ms: %.1fx\n", n, res->cached_tokens[r],
		res->cached_us[r] / 1e3, res->cold_cached_tokens[r], res->cold_us[r] / 1e3,
		res->cold_us[r] / res->cached_us[r]);
	return 0;
}

int bench_ttft(struct kvp_client *c, uint32_t vocab, uint32_t block, bool quick,
	       struct eng_ttft *res)
{
	uint32_t warm[256 + TTFT_SUFFIX];
	struct kvp_usage u;

	memset(res, 0, sizeof(*res));
	res->reps = quick ? 3 : 5;
	res->prompt = TTFT_PREFIX + TTFT_SUFFIX;
	res->prefix = TTFT_PREFIX;
	res->cached_ok = true;
	/* warm-up: both kinds of request once (the first of a kind after the daemon
	 * started runs slower: pages of the pool and of the engine touched first) */
	bench_rand_tokens(warm, 256 + TTFT_SUFFIX, 0x77A2, vocab);
	if (bench_generate(PROG " engine", c, warm, 256, 1, NULL, &u, "warm-up") < 0 ||
	    bench_generate(PROG " engine", c, warm, 256 + TTFT_SUFFIX, 1, NULL, &u,
			   "warm-up") < 0)
		return -1;
	for (int r = 0; r < res->reps; r++)
		if (ttft_rep(c, vocab, TTFT_PREFIX / block * block, r, res) < 0)
			return -1;
	ttft_summarize(res);
	return 0;
}

/* ---- (c): many shared prefixes, interleaved ---------------------------------------- */

/* One number of the daemon's STATS; NAN when it cannot be had. */
static double stats_number(struct kvp_client *c, const char *key)
{
	char *js = NULL;
	double v;
	cJSON *o;

	if (kvp_client_stats(c, &js) < 0)
		return NAN;
	o = cJSON_Parse(js);
	v = o ? bench_json_number(o, key) : NAN;
	cJSON_Delete(o);
	free(js);
	return v;
}

/* Where the TTFTs of (c) go, by whether the request hit. */
struct work_ttfts {
	double *hit, *miss;       /* requests each */
};

/* Request i of (c): prefix i % WORK_PREFIXES and a suffix of its own. */
static int work_request(struct kvp_client *c, uint32_t vocab, uint32_t block,
			const uint32_t *prefixes, uint32_t *p, uint32_t i,
			struct work_ttfts *t, struct eng_work *res)
{
	const uint32_t pl = TTFT_PREFIX, k = i % WORK_PREFIXES;
	uint32_t sl = 10 + (uint32_t)(kvp_splitmix64(0x6000 + i) % 41);   /* 10..50 */
	struct kvp_usage u;
	char what[48];
	bool is_hit;

	memcpy(p, prefixes + (size_t)k * pl, pl * sizeof(uint32_t));
	bench_rand_tokens(p + pl, sl, 0x7000 + i, vocab);
	snprintf(what, sizeof(what), "request %u", i + 1);
	if (bench_generate(PROG " engine", c, p, pl + sl, WORK_MAX_NEW, NULL, &u, what) < 0)
		return -1;
	res->prompt_tokens += u.prompt_tokens;
	res->cached_tokens += u.cached_tokens;
	is_hit = u.cached_tokens + block >= pl;   /* cached >= 2000 - block */
	if (i >= WORK_PREFIXES) {
		res->after_first++;
		res->after_first_hit += is_hit;
	}
	if (is_hit)
		t->hit[res->n_hit++] = (double)u.ttft_us;
	else
		t->miss[res->n_miss++] = (double)u.ttft_us;
	return 0;
}

int bench_workload(struct kvp_client *c, uint32_t vocab, uint32_t block, uint32_t requests,
		   struct eng_work *res)
{
	const uint32_t pl = TTFT_PREFIX, maxs = 50;
	uint32_t *prefixes = malloc((size_t)WORK_PREFIXES * pl * sizeof(uint32_t));
	uint32_t *p = malloc((pl + maxs) * sizeof(uint32_t));
	struct work_ttfts t = {
		.hit = calloc(requests, sizeof(double)),
		.miss = calloc(requests, sizeof(double)),
	};
	uint64_t t0;
	int ret = -1;

	memset(res, 0, sizeof(*res));
	res->requests = requests;
	res->prefixes = WORK_PREFIXES;
	res->prefix = pl;
	if (!prefixes || !p || !t.hit || !t.miss) {
		fprintf(stderr, PROG " engine: out of memory\n");
		goto out;
	}
	for (uint32_t k = 0; k < WORK_PREFIXES; k++)
		bench_rand_tokens(prefixes + (size_t)k * pl, pl, 0x5000 + k, vocab);
	t0 = kvp_tool_now_ns();
	for (uint32_t i = 0; i < requests; i++) {
		if (work_request(c, vocab, block, prefixes, p, i, &t, res) < 0)
			goto out;
		if ((i + 1) % 25 == 0 || i + 1 == requests)
			fprintf(stderr, "engine: workload %u/%u requests, hit rate %.3f, %.1f s\n",
				i + 1, requests,
				(double)res->cached_tokens / (double)res->prompt_tokens,
				(double)(kvp_tool_now_ns() - t0) / 1e9);
	}
	res->elapsed_s = (double)(kvp_tool_now_ns() - t0) / 1e9;
	res->hit_rate = (double)res->cached_tokens / (double)res->prompt_tokens;
	res->hit_mean_us = bench_mean(t.hit, res->n_hit);
	res->hit_p99_us = bench_p99(t.hit, res->n_hit);
	res->miss_mean_us = bench_mean(t.miss, res->n_miss);
	res->miss_p99_us = bench_p99(t.miss, res->n_miss);
	res->evictions = stats_number(c, "evictions");
	ret = 0;
out:
	free(t.miss);
	free(t.hit);
	free(p);
	free(prefixes);
	return ret;
}
