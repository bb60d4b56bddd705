/*
 * cache_diag.c - the miss diagnostics (kvp_cache_miss, kvp_cache_explain): each fate a
 * block can have, the age of an evicted block, the tokens of a query adding up, and an
 * explain that touches nothing.
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cache.h"
#include "kvp_index.h"

#define B 4u

static struct kvp_cache *diag_cache(uint32_t cap, uint32_t quota)
{
	struct kvp_cache_config cfg = {
		.block_tokens = B, .capacity_blocks = cap, .max_tokens = 256,
		.max_leases = 4, .tenant_quota = quota,
	};
	struct kvp_cache *c = NULL;

	cr_assert_eq(kvp_cache_create(&cfg, &c), 0);
	return c;
}

static void prompt(uint32_t *tok, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		tok[i] = seed * 1000u + (uint32_t)i;
}

static void insert(struct kvp_cache *c, struct kvp_key root, const uint32_t *tok, size_t n)
{
	struct kvp_cache_result res;
	uint32_t ids[64];

	cr_assert_eq(kvp_cache_insert(c, root, root, tok, n, 0, false, ids, &res), 0);
}

static struct kvp_cache_miss query(struct kvp_cache *c, struct kvp_key root, const uint32_t *tok,
				   size_t n)
{
	struct kvp_cache_result res;
	uint32_t ids[64], sum = 0;

	cr_assert_eq(kvp_cache_lookup(c, root, tok, n, 0, false, ids, &res), 0);
	for (int f = 0; f < KVP_FATE_N; f++)
		sum += res.miss.tokens[f];
	cr_assert_eq(sum, n, "the fates add up to %u tokens, not %zu", sum, n);
	cr_assert_eq(res.miss.tokens[KVP_FATE_CACHED], res.matched_tokens);
	return res.miss;
}

/* Every block of tok explained as fate, and the count of them. */
static void expect_explained(struct kvp_cache *c, struct kvp_key root, const uint32_t *tok,
			     size_t n, enum kvp_fate fate, size_t from)
{
	uint8_t fates[65];
	uint64_t ages[65];
	size_t got;

	cr_assert_eq(kvp_cache_explain(c, root, tok, n, fates, ages, &got), 0);
	cr_assert_eq(got, (n + B - 1) / B);
	for (size_t i = from; i < n / B; i++)
		cr_expect_eq(fates[i], fate, "block %zu: %s, not %s", i, kvp_fate_name(fates[i]),
			     kvp_fate_name(fate));
}

Test(diag, never_seen_is_new_and_a_tail_is_partial)
{
	struct kvp_cache *c = diag_cache(8, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t tok[18];
	struct kvp_cache_miss m;

	prompt(tok, 18, 1);
	m = query(c, root, tok, 18);
	cr_assert_eq(m.tokens[KVP_FATE_NEW], 16);
	cr_assert_eq(m.tokens[KVP_FATE_PARTIAL], 2);
	insert(c, root, tok, 18);
	m = query(c, root, tok, 18);
	cr_assert_eq(m.tokens[KVP_FATE_CACHED], 16);
	cr_assert_eq(m.tokens[KVP_FATE_PARTIAL], 2);
	cr_assert_eq(m.ghost_tokens[0] + m.ghost_tokens[1], 0);
	expect_explained(c, root, tok, 16, KVP_FATE_CACHED, 0);
	kvp_cache_destroy(c);
}

Test(diag, evicted_for_room_with_its_age_and_the_larger_pools)
{
	struct kvp_cache *c = diag_cache(4, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t a[16], b[16];
	uint8_t fates[5];
	uint64_t ages[5];
	size_t got;
	struct kvp_cache_miss m;

	prompt(a, 16, 1);
	prompt(b, 16, 2);
	insert(c, root, a, 16);
	insert(c, root, b, 16);   /* a's four blocks go, leaf first */
	cr_assert_eq(kvp_cache_explain(c, root, a, 16, fates, ages, &got), 0);
	cr_assert_eq(got, 4);
	for (size_t i = 0; i < 4; i++) {
		cr_expect_eq(fates[i], KVP_FATE_POOL);
		/* a[3] went first, three more after it; a[0] last */
		cr_expect_eq(ages[i], i, "block %zu: age %llu", i, (unsigned long long)ages[i]);
	}
	m = query(c, root, a, 16);
	cr_assert_eq(m.tokens[KVP_FATE_POOL], 16);
	/* a pool of 8 or 16 blocks would have held a whole */
	cr_assert_eq(m.ghost_tokens[0], 16);
	cr_assert_eq(m.ghost_tokens[1], 16);
	kvp_cache_destroy(c);
}

Test(diag, a_larger_pool_is_not_enough_for_an_old_eviction)
{
	struct kvp_cache *c = diag_cache(4, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t tok[16];
	struct kvp_cache_miss m;

	prompt(tok, 8, 1);
	insert(c, root, tok, 8);   /* 2 blocks */
	for (uint32_t s = 2; s < 2 + 4; s++) {   /* 16 more blocks go through the pool */
		uint32_t other[16];

		prompt(other, 16, s);
		insert(c, root, other, 16);
	}
	m = query(c, root, tok, 8);
	cr_assert_eq(m.tokens[KVP_FATE_POOL], 8);
	/* 14 evictions after the prompt's: not within a pool of 8 (4 more), within 16 (12
	 * more) for its first block only, which went last */
	cr_expect_eq(m.ghost_tokens[0], 0);
	cr_expect_eq(m.ghost_tokens[1], 0, "ghost 4x %u", m.ghost_tokens[1]);
	kvp_cache_destroy(c);
}

Test(diag, evicted_by_the_quota)
{
	struct kvp_cache *c = diag_cache(16, 2);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t a[8], b[8];
	struct kvp_cache_miss m;

	prompt(a, 8, 1);
	prompt(b, 8, 2);
	insert(c, root, a, 8);
	insert(c, root, b, 8);   /* at its quota: a's blocks are recycled */
	m = query(c, root, a, 8);
	cr_assert_eq(m.tokens[KVP_FATE_QUOTA], 8);
	cr_assert_eq(m.ghost_tokens[0], 0, "a larger pool does not lift a quota");
	expect_explained(c, root, a, 8, KVP_FATE_QUOTA, 0);
	kvp_cache_destroy(c);
}

Test(diag, cleared_by_an_administrator)
{
	struct kvp_cache *c = diag_cache(16, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t a[12];
	uint32_t evicted;
	struct kvp_cache_miss m;

	prompt(a, 12, 1);
	insert(c, root, a, 12);
	cr_assert_eq(kvp_cache_evict_prefix(c, root, a, 8, &evicted), 0);
	cr_assert_eq(evicted, 3);   /* under block 1, then block 1 and block 0 */
	m = query(c, root, a, 12);
	cr_assert_eq(m.tokens[KVP_FATE_ADMIN], 12);
	insert(c, root, a, 12);
	cr_assert_eq(kvp_cache_clear(c, &root), 3);
	expect_explained(c, root, a, 12, KVP_FATE_ADMIN, 0);
	kvp_cache_destroy(c);
}

Test(diag, the_same_tokens_in_another_namespace)
{
	struct kvp_cache *c = diag_cache(16, 0);
	struct kvp_key mine = kvp_ns_root("m", 1, NULL), theirs = kvp_ns_root("m", 2, NULL);
	uint32_t a[12], b[12];
	struct kvp_cache_miss m;

	prompt(a, 12, 1);
	insert(c, theirs, a, 12);
	m = query(c, mine, a, 12);
	cr_assert_eq(m.tokens[KVP_FATE_OTHER_NS], 12);
	expect_explained(c, mine, a, 12, KVP_FATE_OTHER_NS, 0);
	/* the same last block after another prefix is not the same block */
	memcpy(b, a, sizeof(b));
	b[0] ^= 1;
	m = query(c, mine, b, 12);
	cr_assert_eq(m.tokens[KVP_FATE_NEW], 12);
	/* once theirs is gone, it is new again */
	cr_assert_eq(kvp_cache_clear(c, &theirs), 3);
	m = query(c, mine, a, 12);
	cr_assert_eq(m.tokens[KVP_FATE_NEW], 12);
	kvp_cache_destroy(c);
}

Test(diag, explain_touches_nothing)
{
	struct kvp_cache *c = diag_cache(2, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t a[4], b[4], x[4];
	uint8_t fates[2];
	uint64_t ages[2];
	size_t got;
	struct kvp_cache_miss m;

	prompt(a, 4, 1);
	prompt(b, 4, 2);
	prompt(x, 4, 3);
	insert(c, root, a, 4);
	insert(c, root, b, 4);
	/* a is the least recently used; an explain of it must not change that */
	cr_assert_eq(kvp_cache_explain(c, root, a, 4, fates, ages, &got), 0);
	cr_assert_eq(fates[0], KVP_FATE_CACHED);
	insert(c, root, x, 4);
	m = query(c, root, a, 4);
	cr_assert_eq(m.tokens[KVP_FATE_POOL], 4, "the explain kept a from going");
	m = query(c, root, b, 4);
	cr_assert_eq(m.tokens[KVP_FATE_CACHED], 4);
	kvp_cache_destroy(c);
}

Test(diag, a_sequence_is_diagnosed_at_its_match)
{
	struct kvp_cache *c = diag_cache(8, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	uint32_t a[10];
	struct kvp_seq seq;

	cr_assert_eq(kvp_cache_attach_memory(c, 16), 0);
	prompt(a, 10, 1);
	insert(c, root, a, 4);
	cr_assert_eq(kvp_cache_seq_begin(c, root, root, a, 10, 12, &seq), 0);
	cr_assert_eq(seq.miss.tokens[KVP_FATE_CACHED], 4);
	cr_assert_eq(seq.miss.tokens[KVP_FATE_NEW], 4);
	cr_assert_eq(seq.miss.tokens[KVP_FATE_PARTIAL], 2);
	kvp_cache_seq_end(c, &seq, a, 0);
	kvp_cache_destroy(c);
}

Test(diag, names_and_memory)
{
	struct kvp_cache *c = diag_cache(1000, 0);

	cr_assert_str_eq(kvp_fate_name(KVP_FATE_POOL), "evicted_pool");
	cr_assert_str_eq(kvp_fate_name(KVP_FATE_OTHER_NS), "other_namespace");
	cr_assert_str_eq(kvp_fate_name(KVP_FATE_N), "?");
	/* a few hundred bytes a pool block, no more */
	cr_assert_gt(kvp_cache_diag_bytes(c), 1000u * 100u);
	cr_assert_lt(kvp_cache_diag_bytes(c), 1000u * 300u);
	kvp_cache_destroy(c);
}
