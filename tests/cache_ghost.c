/*
 * cache_ghost.c - the "hit rate if the pool were 2x / 4x larger" estimate against the
 * truth: the shared trace replayed through a cache of capacity C, its estimates for 2C
 * and 4C set beside replays through caches of 2C and 4C. 1-token blocks whose token is
 * the trace's block id (as kvprefix-bench replay --offline does), a LOOKUP then an
 * INSERT a request, as the daemon's replay does.
 *
 * Tolerance: the estimate and the truth differ by at most KVP_GHOST_TOLERANCE_* of the
 * input tokens (docs/eviction.md states them and the figures): under LRU the estimate
 * is exact but for departures forgotten; REUSE is not a stack policy, so a larger pool
 * under it keeps other blocks than the ones a smaller pool evicted last.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvp_cache.h"
#include "trace.h"

#define KVP_GHOST_TOLERANCE_LRU 0.005
#define KVP_GHOST_TOLERANCE_REUSE 0.02

struct replayed {
	uint64_t hit, ghost[KVP_CACHE_GHOST_N], total;
};

static void replay(const struct kvp_trace *tr, uint32_t cap, int policy, struct replayed *out)
{
	struct kvp_cache_config cfg = {
		.block_tokens = 1, .capacity_blocks = cap, .max_tokens = 1u << 16,
		.max_leases = 1, .eviction = policy,
	};
	struct kvp_key root = kvp_ns_root("trace", 0, NULL);
	uint32_t *tok = malloc(cfg.max_tokens * sizeof(uint32_t));
	uint32_t *ids = malloc(cfg.max_tokens * sizeof(uint32_t));
	struct kvp_cache *c = NULL;
	struct kvp_cache_result res;

	cr_assert(tok && ids);
	cr_assert_eq(kvp_cache_create(&cfg, &c), 0);
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < tr->n_reqs; i++) {
		const struct kvp_trace_req *r = &tr->reqs[i];
		uint32_t nb = r->input_length / KVP_TRACE_BLOCK;

		cr_assert_leq(nb, cfg.max_tokens);
		for (uint32_t b = 0; b < nb; b++)
			tok[b] = (uint32_t)tr->hash_ids[r->hash_off + b];
		cr_assert_eq(kvp_cache_lookup(c, root, tok, nb, 0, false, ids, &res), 0);
		out->hit += (uint64_t)res.matched_tokens * KVP_TRACE_BLOCK;
		for (int k = 0; k < KVP_CACHE_GHOST_N; k++)
			out->ghost[k] += (uint64_t)res.miss.ghost_tokens[k] * KVP_TRACE_BLOCK;
		cr_assert_eq(kvp_cache_insert(c, root, root, tok, nb, 0, false, ids, &res), 0);
		out->total += r->input_length;
	}
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
	free(tok);
	free(ids);
}

static void estimate_vs_truth(uint32_t cap, int policy)
{
	static const uint32_t mult[KVP_CACHE_GHOST_N] = KVP_CACHE_GHOST_MULTIPLES;
	const double tol = policy == KVP_EVICT_LRU ? KVP_GHOST_TOLERANCE_LRU
						   : KVP_GHOST_TOLERANCE_REUSE;
	struct kvp_trace tr;
	struct replayed base, big;
	char err[256];

	if (access(KVP_TRACE_FILE, R_OK) != 0)
		cr_skip("trace file %s is missing: %s", KVP_TRACE_FILE, strerror(errno));
	cr_assert_eq(kvp_trace_load(KVP_TRACE_FILE, 0, &tr, err, sizeof(err)), 0, "%s", err);
	replay(&tr, cap, policy, &base);
	for (int k = 0; k < KVP_CACHE_GHOST_N; k++) {
		double est, truth;

		replay(&tr, cap * mult[k], policy, &big);
		est = (double)(base.hit + base.ghost[k]) / (double)base.total;
		truth = (double)big.hit / (double)big.total;
		cr_log_info("capacity %u, policy %d: hit %.4f; at %ux estimated %.4f, replayed %.4f",
			    cap, policy, (double)base.hit / (double)base.total, mult[k], est, truth);
		cr_expect(est <= truth + tol && est >= truth - tol,
			  "capacity %u x%u: estimated %.4f, replayed %.4f", cap, mult[k], est, truth);
		cr_expect_gt(base.ghost[k], 0, "the estimate adds nothing at x%u", mult[k]);
	}
	kvp_trace_free(&tr);
}

Test(ghost, estimate_matches_a_larger_pool_lru)
{
	for (uint32_t cap = 500; cap <= 8000; cap *= 4)
		estimate_vs_truth(cap, KVP_EVICT_LRU);
	estimate_vs_truth(5859, KVP_EVICT_LRU);
}

Test(ghost, estimate_matches_a_larger_pool_reuse)
{
	estimate_vs_truth(5859, KVP_EVICT_REUSE);
}
