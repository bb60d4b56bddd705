/*
 * cache_keep.c - keeps (kvp_cache_keep, kvp_cache_expire) with a clock the test sets:
 * kept blocks outlast blocks nobody keeps, go at their time, are given up lowest
 * priority first when nothing else can make room (in the pool, or within a tenant's
 * quota), and a prefix kept again keeps one keep, later and higher.
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

static struct kvp_cache *keep_cache(uint32_t cap, uint32_t quota)
{
	struct kvp_cache_config cfg = {
		.block_tokens = B, .capacity_blocks = cap, .max_tokens = 256,
		.max_leases = 4, .tenant_quota = quota,
	};
	struct kvp_cache *c = NULL;

	cr_assert_eq(kvp_cache_create(&cfg, &c), 0);
	return c;
}

/* Two blocks of prompt seed, inserted. */
static const uint32_t *put(struct kvp_cache *c, struct kvp_key root, uint32_t seed)
{
	static uint32_t tok[16][8];
	struct kvp_cache_result res;
	uint32_t ids[2];

	for (uint32_t i = 0; i < 8; i++)
		tok[seed][i] = seed * 100u + i;
	cr_assert_eq(kvp_cache_insert(c, root, root, tok[seed], 8, 0, false, ids, &res), 0);
	cr_assert_eq(kvp_cache_check(c), 0);
	return tok[seed];
}

static uint32_t cached(struct kvp_cache *c, struct kvp_key root, const uint32_t *tok)
{
	struct kvp_cache_result res;
	uint32_t ids[2];

	cr_assert_eq(kvp_cache_lookup(c, root, tok, 8, 0, false, ids, &res), 0);
	return res.matched_tokens;
}

static void keep(struct kvp_cache *c, struct kvp_key root, const uint32_t *tok,
		 uint64_t until, uint32_t prio)
{
	uint32_t kept;

	cr_assert_eq(kvp_cache_keep(c, root, root, tok, 8, until, prio, &kept), 0);
	cr_assert_eq(kept, 2);
	cr_assert_eq(kvp_cache_check(c), 0);
}

static struct kvp_cache_stats stats(const struct kvp_cache *c)
{
	struct kvp_cache_stats st;

	kvp_cache_get_stats(c, &st);
	return st;
}

Test(keep, outlasts_the_rest_until_its_time)
{
	struct kvp_cache *c = keep_cache(4, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	const uint32_t *a = put(c, root, 1);

	keep(c, root, a, 1000, 0);
	put(c, root, 2);
	put(c, root, 3);            /* room from b, although a is older */
	cr_assert_eq(cached(c, root, a), 8);
	cr_assert_eq(kvp_cache_expire(c, 999), 0);
	cr_assert_eq(stats(c).keeps_active, 1);
	cr_assert_eq(kvp_cache_expire(c, 1000), 1);
	cr_assert_eq(stats(c).keeps_active, 0);
	cr_assert_eq(stats(c).keeps_expired, 1);
	cr_assert_eq(kvp_cache_check(c), 0);
	put(c, root, 4);
	put(c, root, 5);            /* a is just another block now */
	cr_assert_eq(cached(c, root, a), 0);
	cr_assert_eq(stats(c).keeps_given_up, 0);
	kvp_cache_destroy(c);
}

Test(keep, lowest_priority_is_given_up_first)
{
	struct kvp_cache *c = keep_cache(6, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	const uint32_t *a = put(c, root, 1), *b = put(c, root, 2), *d = put(c, root, 3);

	keep(c, root, a, 500, 7);
	keep(c, root, b, 900, 2);   /* the lowest */
	keep(c, root, d, 100, 7);
	keep(c, root, put(c, root, 4), 900, 9);   /* nothing but kept blocks: b goes */
	cr_assert_eq(cached(c, root, b), 0);
	cr_assert_eq(cached(c, root, a), 8);
	cr_assert_eq(cached(c, root, d), 8);
	put(c, root, 5);            /* then d: priority 7 like a, but expiring first */
	cr_assert_eq(cached(c, root, d), 0);
	cr_assert_eq(cached(c, root, a), 8);
	cr_assert_eq(stats(c).keeps_given_up, 2);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(keep, kept_again_is_one_keep_later_and_higher)
{
	struct kvp_cache *c = keep_cache(8, 0);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	const uint32_t *a = put(c, root, 1);
	uint32_t kept;

	keep(c, root, a, 100, 1);
	keep(c, root, a, 50, 3);    /* earlier: the keep stays until 100 */
	cr_assert_eq(stats(c).keeps_active, 1);
	cr_assert_eq(stats(c).keeps_made, 1);
	cr_assert_eq(kvp_cache_expire(c, 60), 0);
	/* a shorter prefix is a keep of its own */
	cr_assert_eq(kvp_cache_keep(c, root, root, a, 4, 70, 0, &kept), 0);
	cr_assert_eq(kept, 1);
	cr_assert_eq(stats(c).keeps_active, 2);
	cr_assert_eq(kvp_cache_expire(c, 100), 2);
	/* nothing cached: nothing kept */
	cr_assert_eq(kvp_cache_keep(c, kvp_ns_root("m", 2, NULL), root, a, 8, 10, 0, &kept), 0);
	cr_assert_eq(kept, 0);
	cr_assert_eq(stats(c).keeps_active, 0);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

Test(keep, within_the_tenant_quota)
{
	struct kvp_cache *c = keep_cache(16, 4);
	struct kvp_key x = kvp_ns_root("m", 1, NULL), y = kvp_ns_root("m", 2, NULL);
	const uint32_t *ya = put(c, y, 9);
	const uint32_t *a = put(c, x, 1), *b = put(c, x, 2);

	keep(c, y, ya, 1000, 0);    /* another tenant's keep, the lowest priority */
	keep(c, x, a, 1000, 5);
	keep(c, x, b, 1000, 6);
	put(c, x, 3);               /* x at its quota, all kept: its own lowest goes */
	cr_assert_eq(cached(c, x, a), 0);
	cr_assert_eq(cached(c, x, b), 8);
	cr_assert_eq(cached(c, y, ya), 8, "another tenant's keep is not x's to give up");
	cr_assert_eq(stats(c).keeps_given_up, 1);
	cr_assert_eq(stats(c).keeps_active, 2);
	cr_assert_leq(kvp_cache_group_blocks(c, x), 4);
	cr_assert_eq(kvp_cache_check(c), 0);
	kvp_cache_destroy(c);
}

struct listed {
	uint32_t n;
	struct kvp_cache_keep_info k[4];
	uint32_t tokens[4][8];
};

static void list_keep(void *arg, const struct kvp_cache_keep_info *k)
{
	struct listed *l = arg;

	cr_assert_lt(l->n, 4);
	cr_assert_eq(k->n_tokens, 8);
	l->k[l->n] = *k;
	memcpy(l->tokens[l->n], k->tokens, sizeof(l->tokens[0]));
	l->n++;
}

/* kvp_cache_keeps lists each keep once, with what a restart needs to make it again. */
Test(keep, listed_with_their_time_and_priority)
{
	struct kvp_cache *c = keep_cache(16, 0);
	const struct kvp_key r1 = { 1, 2 }, r2 = { 3, 4 };
	const uint32_t *a = put(c, r1, 1), *b = put(c, r2, 2);
	struct listed l = { 0 };

	keep(c, r1, a, 5000, 7);
	keep(c, r2, b, 9000, 3);
	keep(c, r1, a, 6000, 2);   /* kept again: one keep, until 6000, priority 7 */
	cr_assert_eq(kvp_cache_keeps(c, list_keep, &l), 0);
	cr_assert_eq(l.n, 2);
	for (uint32_t i = 0; i < 2; i++) {
		const bool first = kvp_key_eq(l.k[i].root, r1);

		cr_assert(first || kvp_key_eq(l.k[i].root, r2));
		cr_assert(kvp_key_eq(l.k[i].group, l.k[i].root));
		cr_assert_eq(l.k[i].until_ms, first ? 6000u : 9000u);
		cr_assert_eq(l.k[i].priority, first ? 7u : 3u);
		cr_assert_arr_eq(l.tokens[i], first ? a : b, 8 * sizeof(uint32_t));
	}
	cr_assert_eq(kvp_cache_expire(c, 6000), 1);
	l.n = 0;
	cr_assert_eq(kvp_cache_keeps(c, list_keep, &l), 0);
	cr_assert_eq(l.n, 1, "an ended keep is still listed");
	kvp_cache_destroy(c);
}
