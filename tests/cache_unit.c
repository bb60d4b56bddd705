/*
 * cache_unit.c - the cache (kvp_cache_*) case by case: chunking, block sizes 1 and 4096,
 * pinned blocks and a full pool, argument errors, the tenant quota, the
 * administrative clear, evict, pin and unpin, and sequences (growing, publishing their
 * prompt's blocks while they run).
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cache.h"
#include "kvp_index.h"

/* ---- cache unit tests ---------------------------------------------------------------------- */

static struct kvp_cache *new_cache(uint32_t b, uint32_t cap, uint32_t max_tokens)
{
	struct kvp_cache_config cfg = {
		.block_tokens = b, .capacity_blocks = cap, .max_tokens = max_tokens,
		.max_leases = 2,
	};
	struct kvp_cache *c = NULL;

	cr_assert_eq(kvp_cache_create(&cfg, &c), 0);
	return c;
}

Test(cache, chunking_only_full_blocks)
{
	struct kvp_cache *c = new_cache(16, 8, 256);
	struct kvp_key root = kvp_ns_root("m", 0, NULL);
	uint32_t tok[64], ids[4];
	struct kvp_cache_result res;

	for (uint32_t i = 0; i < 64; i++)
		tok[i] = i;
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 15, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 0);
	cr_assert_eq(res.matched_tokens, 0);
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 40, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 2);
	cr_assert_eq(res.matched_tokens, 32);
	cr_assert_eq(res.n_blocks, 2);
	cr_assert_eq(res.prompt_tokens, 40);
	cr_assert_eq(kvp_cache_lookup(c, root, tok, 47, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 32);
	cr_assert_eq(kvp_cache_lookup(c, root, tok, 64, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 32);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(cache, block_sizes_1_and_4096)
{
	struct kvp_cache *c1 = new_cache(1, 64, 100), *cb = new_cache(4096, 4, 3 * 4096 + 7);
	struct kvp_key root = kvp_ns_root("m", 0, NULL);
	uint32_t *tok = malloc((3 * 4096 + 7) * sizeof(*tok)), ids[100];
	struct kvp_cache_result res;

	cr_assert_not_null(tok);
	for (uint32_t i = 0; i < 3 * 4096 + 7; i++)
		tok[i] = i % 1000;
	cr_assert_eq(kvp_cache_insert(c1, root, root, tok, 50, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 50);
	cr_assert_eq(kvp_cache_lookup(c1, root, tok, 100, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 50);
	cr_assert_eq(kvp_cache_check(c1), 0);
	cr_assert_eq(kvp_cache_insert(cb, root, root, tok, 3 * 4096 + 7, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 3);
	cr_assert_eq(res.matched_tokens, 3 * 4096);
	cr_assert_eq(kvp_cache_lookup(cb, root, tok, 2 * 4096 + 5, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 2 * 4096);
	cr_assert_eq(kvp_cache_check(cb), 0);
	kvp_cache_destroy(c1);
	kvp_cache_destroy(cb);
	free(tok);
}

Test(cache, pinned_blocks_survive_and_full_pool_stops_insert)
{
	/* 4 blocks. Pin a 3-block prompt, then insert another 3-block prompt: one block
	 * fits, then nothing is evictable and the insert stops early. */
	struct kvp_cache *c = new_cache(2, 4, 64);
	struct kvp_key root = kvp_ns_root("m", 0, NULL);
	const uint32_t a[6] = { 1, 1, 2, 2, 3, 3 }, b[6] = { 7, 7, 8, 8, 9, 9 };
	uint32_t ids[3], n;
	struct kvp_cache_result res, pinned;
	struct kvp_cache_stats st;

	cr_assert_eq(kvp_cache_insert(c, root, root, a, 6, 5, true, ids, &pinned), 0);
	cr_assert_neq(pinned.lease, 0);
	cr_assert_eq(kvp_cache_insert(c, root, root, b, 6, 0, false, ids, &res), 0);
	cr_assert(res.pool_full);
	cr_assert_eq(res.new_blocks, 1);
	cr_assert_eq(res.matched_tokens, 2);
	cr_assert_eq(kvp_cache_check(c), 0);
	cr_assert_eq(kvp_cache_lookup(c, root, a, 6, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 6, "pinned prefix still cached");
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.referenced, 3);
	cr_assert_eq(st.pool.cached, 1);
	cr_assert_eq(st.insert_full, 1);
	cr_assert_eq(kvp_cache_release(c, 5, pinned.lease, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(kvp_cache_insert(c, root, root, b, 6, 0, false, ids, &res), 0);
	cr_assert(!res.pool_full);
	cr_assert_eq(res.matched_tokens, 6);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(cache, argument_errors)
{
	struct kvp_cache *c = new_cache(2, 8, 8);
	struct kvp_key root = kvp_ns_root("m", 0, NULL);
	const uint32_t tok[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
	uint32_t ids[5];
	struct kvp_cache_result res;

	cr_assert_eq(kvp_cache_lookup(c, root, tok, 10, 0, false, ids, &res), KVP_ETOOBIG);
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 10, 0, false, ids, &res), KVP_ETOOBIG);
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 8, 0, true, ids, &res), KVP_EINVAL);
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 8, 3, true, ids, &res), 0);
	cr_assert_eq(kvp_cache_lookup(c, root, tok, 8, 3, true, ids, &res), 0);
	cr_assert_eq(kvp_cache_lookup(c, root, tok, 8, 3, true, ids, &res), KVP_EBUSY);
	cr_assert_eq(kvp_cache_release(c, 4, res.lease, NULL), KVP_ENOTFOUND);
	cr_assert_eq(kvp_cache_release_owner(c, 3), 2);
	cr_assert_eq(kvp_cache_release_owner(c, 3), 0);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

/* ---- tenant quota and administration ------------------------------------------------ */

/* n distinct blocks (b tokens each) for namespace tag `who`, prompt number `k`. */
static void fill_prompt(uint32_t *tok, uint32_t n_tokens, uint32_t who, uint32_t k)
{
	for (uint32_t i = 0; i < n_tokens; i++)
		tok[i] = who * 1000000u + k * 1000u + i;
}

/* Blocks of namespace root still cached among prompts 0..n-1 of `who` (one block each). */
static uint32_t cached_of(struct kvp_cache *c, struct kvp_key root, uint32_t who, uint32_t n,
			  uint32_t b)
{
	uint32_t tok[64], ids[16], hits = 0;
	struct kvp_cache_result res;
	struct kvp_cache_stats st;

	kvp_cache_get_stats(c, &st);
	for (uint32_t k = 0; k < n; k++) {
		fill_prompt(tok, b, who, k);
		cr_assert_eq(kvp_cache_lookup(c, root, tok, b, 0, false, ids, &res), 0);
		hits += res.n_blocks;
	}
	return hits;
}

/* One tenant floods the pool: with a quota it recycles its own blocks and the other
 * tenant keeps everything; without one (the control) the other tenant loses blocks. */
static uint32_t flood(uint32_t quota, uint32_t *a_held, uint64_t *quota_evictions)
{
	const uint32_t b = 4, cap = 64;
	struct kvp_cache *c = new_cache(b, cap, 64);
	struct kvp_key ra = kvp_ns_root("m", 1000, NULL), rb = kvp_ns_root("m", 1001, NULL);
	uint32_t tok[4], ids[1], kept;
	struct kvp_cache_result res;
	struct kvp_cache_stats st;

	kvp_cache_set_tenant_quota(c, quota);
	for (uint32_t k = 0; k < 20; k++) {          /* tenant B: 20 blocks */
		fill_prompt(tok, b, 2, k);
		cr_assert_eq(kvp_cache_insert(c, rb, rb, tok, b, 0, false, ids, &res), 0);
		cr_assert_eq(res.new_blocks, 1);
	}
	for (uint32_t k = 0; k < 500; k++) {         /* tenant A: 500 blocks */
		fill_prompt(tok, b, 1, k);
		cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, b, 0, false, ids, &res), 0);
		cr_assert_eq(res.new_blocks, 1, "insert %u of tenant A refused", k);
		if (quota)
			cr_assert_leq(kvp_cache_ns_blocks(c, ra), quota);
		cr_assert_eq(kvp_cache_check(c), 0);
	}
	kept = cached_of(c, rb, 2, 20, b);
	*a_held = (uint32_t)kvp_cache_ns_blocks(c, ra);
	kvp_cache_get_stats(c, &st);
	*quota_evictions = st.quota_evictions;
	kvp_cache_destroy(c);
	return kept;
}

Test(cache, tenant_quota_keeps_other_tenants_blocks)
{
	uint32_t held;
	uint64_t qev;

	cr_assert_eq(flood(32, &held, &qev), 20, "tenant B lost blocks under a quota");
	cr_assert_eq(held, 32, "tenant A holds %u blocks, quota 32", held);
	cr_assert_gt(qev, 400);
	/* the control: without a quota the flood takes B's blocks */
	cr_assert_lt(flood(0, &held, &qev), 20);
	cr_assert_eq(qev, 0);
}

Test(cache, tenant_quota_with_own_blocks_pinned_refuses)
{
	/* A at its quota of 3 with all three pinned: a 4th block is refused (insert stops,
	 * a sequence gets EFULL with quota_full), and B's blocks are not touched although
	 * they are evictable. (B itself stops at 3: the block it would give up for its 4th
	 * is the parent the insert is extending.) */
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 16, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	uint32_t tok[8], ids[4];
	struct kvp_cache_result res, pin;
	struct kvp_cache_stats st;
	struct kvp_seq seq;

	kvp_cache_set_tenant_quota(c, 3);
	fill_prompt(tok, 8, 2, 0);
	cr_assert_eq(kvp_cache_insert(c, rb, rb, tok, 8, 0, false, ids, &res), 0);
	cr_assert(res.quota_full, "B's own 4th block is over the quota too");
	cr_assert_eq(res.new_blocks, 3);
	fill_prompt(tok, 6, 1, 0);
	cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, 6, 7, true, ids, &pin), 0);
	cr_assert_eq(pin.new_blocks, 3);
	fill_prompt(tok, 2, 1, 1);
	cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, 2, 0, false, ids, &res), 0);
	cr_assert(res.quota_full && res.pool_full);
	cr_assert_eq(res.new_blocks, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 2, 4, &seq), KVP_EFULL);
	cr_assert(seq.quota_full);
	cr_assert_eq(cached_of(c, rb, 2, 1, 8), 3, "B's 3 blocks must stay");
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.quota_refusals, 3);
	cr_assert_eq(st.evictions, 0);
	/* unpinned, A recycles its own */
	cr_assert_eq(kvp_cache_release(c, 7, pin.lease, NULL), 0);
	cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, 2, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 1);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 3);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(cache, tenant_quota_counts_every_running_sequence)
{
	/* Two generations of A at once under a quota of 4: the 4 blocks the first holds
	 * until it ends count when the second asks, so the second is refused instead of
	 * taking B's blocks; once the first has ended, the second recycles A's own. */
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 8, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	uint32_t tb[8], t1[8], t2[8], ids[4];
	struct kvp_cache_result res;
	struct kvp_seq s1, s2;

	kvp_cache_set_tenant_quota(c, 4);
	fill_prompt(tb, 8, 2, 0);
	cr_assert_eq(kvp_cache_insert(c, rb, rb, tb, 8, 0, false, ids, &res), 0);
	cr_assert_eq(res.new_blocks, 4);
	fill_prompt(t1, 8, 1, 0);
	fill_prompt(t2, 8, 1, 1);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, t1, 8, 8, &s1), 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, t2, 8, 8, &s2), KVP_EFULL,
		     "A's second sequence took blocks past its quota");
	cr_assert(s2.quota_full);
	cr_assert_eq(cached_of(c, rb, 2, 1, 8), 4, "B's 4 blocks must stay");
	kvp_cache_seq_end(c, &s1, t1, 8);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 4);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, t2, 8, 8, &s2), 0);
	kvp_cache_seq_end(c, &s2, t2, 8);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 4);
	cr_assert_eq(cached_of(c, rb, 2, 1, 8), 4);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(cache, tenant_quota_request_over_the_quota_gives_up_nothing)
{
	/* A sequence that needs more blocks than the whole quota can never run: it is
	 * refused before the namespace gives up any of its cached blocks for it. */
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 16, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL);
	uint32_t tok[16], ids[8];
	struct kvp_cache_result res;
	struct kvp_cache_stats st;
	struct kvp_seq seq;

	kvp_cache_set_tenant_quota(c, 4);
	for (uint32_t k = 0; k < 4; k++) {
		fill_prompt(tok, b, 1, k);
		cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, b, 0, false, ids, &res), 0);
	}
	fill_prompt(tok, 16, 1, 9);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 8, 10, &seq), KVP_EFULL);
	cr_assert(seq.quota_full);
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.evictions, 0, "gave up %llu blocks for a request that cannot fit",
		     (unsigned long long)st.evictions);
	cr_assert_eq(cached_of(c, ra, 1, 4, b), 4);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(cache, tenant_quota_lowered_shrinks_the_namespace)
{
	/* A holds 16 blocks; the quota drops to 8: each block A takes from then on costs it
	 * two of its own until it is down to the quota, where it stays. */
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 64, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL);
	uint32_t tok[2], ids[1];
	struct kvp_cache_result res;

	kvp_cache_set_tenant_quota(c, 16);
	for (uint32_t k = 0; k < 16; k++) {
		fill_prompt(tok, b, 1, k);
		cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, b, 0, false, ids, &res), 0);
	}
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 16);
	kvp_cache_set_tenant_quota(c, 8);
	for (uint32_t k = 16; k < 32; k++) {
		fill_prompt(tok, b, 1, k);
		cr_assert_eq(kvp_cache_insert(c, ra, ra, tok, b, 0, false, ids, &res), 0);
		cr_assert_eq(res.new_blocks, 1);
		cr_assert_eq(kvp_cache_ns_blocks(c, ra), k < 24 ? 31 - k : 8,
			     "after insert %u: A holds %zu", k, kvp_cache_ns_blocks(c, ra));
		cr_assert_eq(kvp_cache_check(c), 0);
	}
	kvp_cache_destroy(c);
}

Test(cache, admin_clear_evict_pin_unpin)
{
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 32, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	/* a tree in A: x = 10 11 | 12 13 | 14 15, y = 10 11 | 12 13 | 20 21 | 22 23,
	 * z = 10 11 | 30 31 */
	const uint32_t x[6] = { 10, 11, 12, 13, 14, 15 }, y[8] = { 10, 11, 12, 13, 20, 21, 22, 23 };
	const uint32_t z[4] = { 10, 11, 30, 31 };
	uint32_t ids[8], n, tok[8];
	struct kvp_cache_result res;

	cr_assert_eq(kvp_cache_insert(c, ra, ra, x, 6, 0, false, ids, &res), 0);
	cr_assert_eq(kvp_cache_insert(c, ra, ra, y, 8, 0, false, ids, &res), 0);
	cr_assert_eq(kvp_cache_insert(c, ra, ra, z, 4, 0, false, ids, &res), 0);
	fill_prompt(tok, 8, 2, 0);
	cr_assert_eq(kvp_cache_insert(c, rb, rb, tok, 8, 0, false, ids, &res), 0);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 6);

	/* PIN x's prefix twice (10 11 | 12 13): it outlives any connection's release */
	cr_assert_eq(kvp_cache_admin_pin(c, ra, x, 4, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(kvp_cache_admin_pin(c, ra, x, 4, &n), 0);
	cr_assert_eq(kvp_cache_release_owner(c, KVP_CACHE_ADMIN_OWNER - 1), 0);
	cr_assert_eq(kvp_cache_check(c), 0);

	/* EVICT 10 11 | 12 13: everything under 12 13 goes (x's 14 15, y's 20 21 | 22 23);
	 * 12 13 and 10 11 are pinned, and z keeps 10 11 anyway */
	cr_assert_eq(kvp_cache_evict_prefix(c, ra, x, 4, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(kvp_cache_lookup(c, ra, x, 6, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 4);
	cr_assert_eq(kvp_cache_lookup(c, ra, z, 4, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 4);

	/* CLEAR A: z's 30 31 goes; the pinned 10 11 | 12 13 stay; B untouched */
	cr_assert_eq(kvp_cache_clear(c, &ra), 1);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 2);
	cr_assert_eq(kvp_cache_ns_blocks(c, rb), 4);
	cr_assert_eq(kvp_cache_check(c), 0);

	/* UNPIN: two pins, two unpins, then ENOTFOUND; a prefix never pinned: ENOTFOUND */
	cr_assert_eq(kvp_cache_admin_unpin(c, ra, z, 4, &n), KVP_ENOTFOUND);
	cr_assert_eq(kvp_cache_admin_unpin(c, ra, x, 4, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(kvp_cache_clear(c, &ra), 0, "still pinned once");
	cr_assert_eq(kvp_cache_admin_unpin(c, ra, x, 6, &n), 0, "a longer prompt names it too");
	cr_assert_eq(kvp_cache_admin_unpin(c, ra, x, 4, &n), KVP_ENOTFOUND);

	/* EVICT of the whole prefix now takes both blocks; CLEAR of all takes B's */
	cr_assert_eq(kvp_cache_evict_prefix(c, ra, x, 4, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(kvp_cache_ns_blocks(c, ra), 0);
	cr_assert_eq(kvp_cache_clear(c, NULL), 4);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

/* ---- sequences that grow ---------------------------------------------------------------- */

/* A generation takes the blocks of its prompt at begin and one more as each fills: a
 * pool that cannot give one stops it with EFULL and the sequence keeps what it had,
 * whole; what it computed is cached at the end as if it had had them all up front. */
Test(cache, sequence_grows_block_by_block)
{
	const uint32_t b = 4;
	struct kvp_cache *c = new_cache(b, 6, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	uint32_t tok[64], other[16], ids[8];
	struct kvp_cache_result res;
	struct kvp_cache_stats st;
	struct kvp_seq seq, s2;

	cr_assert_eq(kvp_cache_attach_memory(c, 64), 0);
	fill_prompt(tok, 64, 1, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 6, 6, &seq), 0);
	cr_assert_eq(seq.n_blocks, 2, "the prompt's blocks only");
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.free, 4);
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 8), 0, "already covered");
	cr_assert_eq(seq.n_blocks, 2);
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 9), 0);
	cr_assert_eq(seq.n_blocks, 3);
	cr_assert_not_null(seq.block_data[2]);
	/* another sequence holds the other 3 blocks: the pool has nothing left */
	fill_prompt(other, 12, 2, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, rb, rb, other, 12, 12, &s2), 0);
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 13), KVP_EFULL);
	cr_assert(!seq.quota_full);
	cr_assert_eq(seq.n_blocks, 3, "a failed grow keeps the sequence as it was");
	kvp_cache_seq_end(c, &s2, other, 12);
	/* the other's blocks are cached now, unpinned: evictable for the grow */
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 16), 0);
	cr_assert_eq(seq.n_blocks, 4);
	kvp_cache_seq_end(c, &seq, tok, 16);
	cr_assert_eq(kvp_cache_lookup(c, ra, tok, 16, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 16, "every block it computed is cached");
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

/* Growing under a tenant quota: past the quota the grow is refused as a begin would be,
 * and never takes another tenant's blocks. */
Test(cache, sequence_grows_within_its_tenant_quota)
{
	const uint32_t b = 2;
	struct kvp_cache *c = new_cache(b, 8, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	uint32_t tb[8], ta[16], ids[4];
	struct kvp_cache_result res;
	struct kvp_seq seq;

	kvp_cache_set_tenant_quota(c, 4);
	fill_prompt(tb, 8, 2, 0);
	cr_assert_eq(kvp_cache_insert(c, rb, rb, tb, 8, 0, false, ids, &res), 0);
	fill_prompt(ta, 16, 1, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, ta, 4, 4, &seq), 0);
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 8), 0);
	cr_assert_eq(seq.n_blocks, 4);
	cr_assert_eq(kvp_cache_seq_grow(c, &seq, 10), KVP_EFULL);
	cr_assert(seq.quota_full);
	cr_assert_eq(cached_of(c, rb, 2, 1, 8), 4, "B's blocks must stay");
	kvp_cache_seq_end(c, &seq, ta, 8);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

/* A running sequence registers its prompt's full blocks before it ends: another
 * sequence matches them at once, they stay pinned until both end, nothing is
 * evicted from under the first, and the pool and tree add up all along. */
Test(cache, sequence_publishes_its_prompt_blocks_while_it_runs)
{
	const uint32_t b = 4;
	struct kvp_cache *c = new_cache(b, 12, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL);
	uint32_t tok[64], ids[8];
	struct kvp_cache_result res;
	struct kvp_cache_stats st;
	struct kvp_seq a, f;

	cr_assert_eq(kvp_cache_attach_memory(c, 64), 0);
	fill_prompt(tok, 64, 1, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 10, 10, &a), 0);
	cr_assert_eq(a.matched_blocks, 0);
	/* positions 0..9 computed: blocks 0 and 1 are full */
	cr_assert_eq(kvp_cache_seq_publish(c, &a, tok, 10), 2);
	cr_assert_eq(a.matched_blocks, 2);
	cr_assert_eq(kvp_cache_seq_publish(c, &a, tok, 10), 0, "once is enough");
	cr_assert_eq(kvp_cache_lookup(c, ra, tok, 12, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 8, "another request sees them now");
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.referenced, 3, "still pinned by the running sequence");
	/* a follower matches them and takes its own blocks for the rest */
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 12, 12, &f), 0);
	cr_assert_eq(f.matched_blocks, 2);
	cr_assert_eq(f.block_data[0], a.block_data[0], "the same KV bytes, not a copy");
	/* the first grows and ends; its published blocks stay for the follower */
	cr_assert_eq(kvp_cache_seq_grow(c, &a, 16), 0);
	kvp_cache_seq_end(c, &a, tok, 16);
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.referenced, 3, "the follower's pins and its own block");
	kvp_cache_seq_end(c, &f, tok, 12);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.referenced, 0);
	cr_assert_eq(st.pool.free + st.pool.cached, st.pool.total);
	cr_assert_eq(kvp_cache_lookup(c, ra, tok, 16, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 16);
	kvp_cache_destroy(c);
}

/* Two sequences compute the same uncached prompt side by side: the first to publish
 * registers it, the other's publish stops at the block already there (its own copy is
 * freed at its end), and the pool and tree add up afterwards. */
Test(cache, publishing_a_block_another_registered_first)
{
	const uint32_t b = 4;
	struct kvp_cache *c = new_cache(b, 12, 64);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL);
	uint32_t tok[16], ids[8];
	struct kvp_cache_result res;
	struct kvp_cache_stats st;
	struct kvp_seq a, x;

	cr_assert_eq(kvp_cache_attach_memory(c, 64), 0);
	fill_prompt(tok, 16, 3, 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 8, 8, &a), 0);
	cr_assert_eq(kvp_cache_seq_begin(c, ra, ra, tok, 8, 8, &x), 0);
	cr_assert_eq(x.matched_blocks, 0, "nothing registered yet");
	cr_assert_eq(kvp_cache_seq_publish(c, &a, tok, 8), 2);
	cr_assert_eq(kvp_cache_seq_publish(c, &x, tok, 8), 0, "already registered by a");
	cr_assert_eq(x.matched_blocks, 0);
	kvp_cache_seq_end(c, &x, tok, 8);
	kvp_cache_seq_end(c, &a, tok, 8);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_get_stats(c, &st);
	cr_assert_eq(st.pool.referenced, 0);
	cr_assert_eq(st.pool.cached, 2, "one copy of each block stays");
	cr_assert_eq(st.pool.free + st.pool.cached, st.pool.total);
	cr_assert_eq(kvp_cache_lookup(c, ra, tok, 8, 0, false, ids, &res), 0);
	cr_assert_eq(res.matched_tokens, 8);
	kvp_cache_destroy(c);
}

/* ---- a lower tier's hooks ------------------------------------------------------------- */

struct demoted_log {
	struct kvp_cache_block_info b[64];
	uint32_t tokens[64][4];
	int n;
};

static void record_demote(void *arg, const struct kvp_cache_block_info *b)
{
	struct demoted_log *l = arg;

	cr_assert_lt(l->n, 64);
	l->b[l->n] = *b;
	memcpy(l->tokens[l->n], b->tokens, sizeof(l->tokens[0]));
	l->b[l->n].tokens = l->tokens[l->n];
	l->n++;
}

/* Evictions to make room hand each block to the demote hook, leaf first, with the key,
 * parent and root a lower tier needs (the key is the chain's); an administrator's
 * clear does not; demote_some takes the rest out in batches. */
Test(cache, demote_hook_sees_what_leaves_the_pool)
{
	struct kvp_cache *c = new_cache(4, 4, 64);
	struct kvp_key root = kvp_ns_root("m", 3, "a"), keys[4];
	struct demoted_log log = { .n = 0 };
	struct kvp_cache_result res;
	uint32_t tok[16], other[16], ids[4];

	for (uint32_t i = 0; i < 16; i++) {
		tok[i] = i;
		other[i] = 100 + i;
	}
	kvp_chain_keys(root, tok, 4, 4, keys);
	kvp_cache_set_demote(c, record_demote, &log);
	cr_assert_eq(kvp_cache_insert(c, root, root, tok, 16, 0, false, ids, &res), 0);
	cr_assert_eq(log.n, 0);
	/* two blocks of another prompt: the first's two deepest leave, deepest first */
	cr_assert_eq(kvp_cache_insert(c, root, root, other, 8, 0, false, ids, &res), 0);
	cr_assert_eq(log.n, 2);
	for (int i = 0; i < 2; i++) {
		const int blk = 3 - i;

		cr_assert(kvp_key_eq(log.b[i].key, keys[blk]), "demoted %d: not block %d's key", i, blk);
		cr_assert(kvp_key_eq(log.b[i].parent, keys[blk - 1]));
		cr_assert(kvp_key_eq(log.b[i].root, root));
		cr_assert_arr_eq(log.tokens[i], tok + 4 * blk, sizeof(log.tokens[0]));
	}
	/* an administrator's clear is no demotion */
	cr_assert_eq(kvp_cache_evict_prefix(c, root, other, 8, &(uint32_t){ 0 }), 0);
	cr_assert_eq(log.n, 2);
	/* the rest, one at a time: block 1, then block 0 whose parent is the root */
	cr_assert_eq(kvp_cache_demote_some(c, 1), 1);
	cr_assert_eq(kvp_cache_demote_some(c, 5), 1);
	cr_assert_eq(kvp_cache_demote_some(c, 5), 0);
	cr_assert_eq(log.n, 4);
	cr_assert(kvp_key_eq(log.b[3].key, keys[0]) && kvp_key_eq(log.b[3].parent, root));
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

struct pin_list {
	struct kvp_key root, group;
	size_t n;
	int count;
};

static void record_pin(void *arg, struct kvp_key root, struct kvp_key group,
		       const uint32_t *tokens, size_t n)
{
	struct pin_list *p = arg;

	p->root = root;
	p->group = group;
	p->n = n;
	p->count++;
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(tokens[i], i, "pinned token %zu", i);
}

/* The admin pins as a stop saves them, and dropping them all. */
Test(cache, admin_pins_listed_and_dropped)
{
	struct kvp_cache *c = new_cache(4, 8, 64);
	struct kvp_key root = kvp_ns_root("m", 3, "a"), group = kvp_ns_root("m", 3, NULL);
	struct pin_list p = { .count = 0 };
	struct kvp_cache_result res;
	uint32_t tok[16], ids[4], pinned = 0;

	for (uint32_t i = 0; i < 16; i++)
		tok[i] = i;
	cr_assert_eq(kvp_cache_insert(c, root, group, tok, 16, 0, false, ids, &res), 0);
	cr_assert_eq(kvp_cache_admin_pin(c, root, tok, 12, &pinned), 0);
	cr_assert_eq(pinned, 3);
	cr_assert_eq(kvp_cache_admin_pins(c, record_pin, &p), 0);
	cr_assert_eq(p.count, 1);
	cr_assert_eq(p.n, 12);
	cr_assert(kvp_key_eq(p.root, root) && kvp_key_eq(p.group, group), "root or group lost");
	cr_assert_eq(kvp_cache_admin_unpin_all(c), 1);
	cr_assert_eq(kvp_cache_admin_unpin_all(c), 0);
	p.count = 0;
	cr_assert_eq(kvp_cache_admin_pins(c, record_pin, &p), 0);
	cr_assert_eq(p.count, 0);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}
