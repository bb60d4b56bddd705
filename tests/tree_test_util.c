/*
 * tree_test_util.c - helpers the files of test_tree and test_tree_collide share: the
 * table's notion of equal keys, the seeded generator, creating and checking a tree, and
 * a callback that collects removed block ids. Declared in tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>

#include "kvp_index.h"
#include "tree_test_util.h"

/* ---- helpers ----------------------------------------------------------------------- */

#ifdef KVP_TEST_COLLIDE
#define TEST_HASH_BITS 6        /* KVP_TREE_TEST_HASH_BITS of kvp_index_collide */
#define TEST_KEY_MASK ((UINT64_C(1) << TEST_HASH_BITS) - 1)
#endif

/* Do two keys look equal to the tree's table (all 128 bits, or 6 in the collide build)? */
bool tt_table_equal(struct kvp_key a, struct kvp_key b)
{
#ifdef KVP_TEST_COLLIDE
	return ((a.lo ^ b.lo) & TEST_KEY_MASK) == 0;
#else
	return kvp_key_eq(a, b);
#endif
}

static uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1Dull;
}

uint32_t tt_rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)((rng_next(r) >> 11) % n);
}

struct kvp_tree *tt_new_tree(uint32_t b)
{
	struct kvp_tree *t = NULL;

	cr_assert_eq(kvp_tree_create(b, &t), 0);
	cr_assert_not_null(t);
	return t;
}

void tt_check_tree(const struct kvp_tree *t)
{
	cr_assert_eq(kvp_tree_check(t), 0, "kvp_tree_check failed");
}

/* A removal callback: v[0] counts the ids appended after it. */
void tt_collect_id(void *arg, uint32_t id)
{
	uint32_t *v = arg;

	v[++v[0]] = id;
}
