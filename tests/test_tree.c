/*
 * test_tree.c - the radix tree (kvp_tree_*) and the cache on top of it (kvp_cache_*).
 *
 * Built twice (tests/CMakeLists.txt):
 *   test_tree          over the real index;
 *   test_tree_collide  KVP_TEST_COLLIDE=1, over an index built with
 *                      KVP_TREE_TEST_HASH_BITS=6: the table compares only 6 bits of each
 *                      key, so nearly every probe meets colliding nodes and verification
 *                      (parent, root, tokens) is all that stands between it and a wrong hit.
 *
 * Because a probe walks the whole bucket past nodes that fail verification, a collision
 * costs time, never a miss; so both builds hold the cache to the same exact model, and
 * the collide build additionally counts the collisions it met (they must be many) and
 * checks, separately and first, that no reported match is anything but a cached prefix.
 *
 * The differential tests compare against a trivial model: a flat array of cached
 * blocks (namespace, parent, tokens, pins, children, last-use tick), matched by linear
 * scan, evicting the least recently used unpinned leaf by a linear minimum. After every
 * operation the real structure's own checker runs, and the counters are compared.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cache.h"
#include "kvp_index.h"

#ifdef KVP_TEST_COLLIDE
#define TEST_HASH_BITS 6        /* KVP_TREE_TEST_HASH_BITS of kvp_index_collide */
#define TEST_KEY_MASK ((UINT64_C(1) << TEST_HASH_BITS) - 1)
#endif

/* Do two keys look equal to the tree's table (all 128 bits, or 6 in the collide build)? */
static bool table_equal(struct kvp_key a, struct kvp_key b)
{
#ifdef KVP_TEST_COLLIDE
	return ((a.lo ^ b.lo) & TEST_KEY_MASK) == 0;
#else
	return kvp_key_eq(a, b);
#endif
}

/* ---- helpers ----------------------------------------------------------------------- */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)((rng_next(r) >> 11) % n);
}

static struct kvp_tree *new_tree(uint32_t b)
{
	struct kvp_tree *t = NULL;

	cr_assert_eq(kvp_tree_create(b, &t), 0);
	cr_assert_not_null(t);
	return t;
}

/* Cache the full blocks of tokens under root: match, then insert the rest, giving
 * block ids from *next_id on. Returns the number of blocks now cached; path[] gets
 * the nodes. */
static size_t tree_put(struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens,
		       size_t n_tokens, uint32_t *next_id, struct kvp_tree_node **path)
{
	uint32_t b = kvp_tree_block_tokens(t);
	size_t nb = n_tokens / b, m = kvp_tree_match(t, root, tokens, n_tokens, path, nb);
	struct kvp_key key = m ? kvp_tree_node_key(path[m - 1]) : root;

	for (size_t i = m; i < nb; i++) {
		struct kvp_tree_node *n = NULL;

		key = kvp_block_key(key, tokens + i * b, b);
		cr_assert_eq(kvp_tree_insert(t, root, i ? path[i - 1] : NULL, key, tokens + i * b,
					     (*next_id)++, &n), 0, "insert block %zu", i);
		path[i] = n;
	}
	return nb;
}

static void check_tree(const struct kvp_tree *t)
{
	cr_assert_eq(kvp_tree_check(t), 0, "kvp_tree_check failed");
}

/* ---- counting allocator with failure injection -------------------------------------- */

static long alloc_live;          /* allocations not yet freed */
static long alloc_fail_in = -1;  /* fail the allocation this many calls from now */
static size_t alloc_fail_min;    /* or: fail every allocation of at least this size */

static void *test_alloc(size_t n)
{
	if (alloc_fail_in == 0 || (alloc_fail_min && n >= alloc_fail_min)) {
		alloc_fail_in = -1;
		return NULL;
	}
	if (alloc_fail_in > 0)
		alloc_fail_in--;
	alloc_live++;
	return malloc(n);
}

static void test_free(void *p)
{
	if (p)
		alloc_live--;
	free(p);
}

/* ---- create / chunking / block sizes -------------------------------------------------- */

Test(tree, create_rejects_bad_block_sizes)
{
	struct kvp_tree *t = (struct kvp_tree *)&t;

	cr_assert_eq(kvp_tree_create(0, &t), KVP_EINVAL);
	cr_assert_null(t);
	cr_assert_eq(kvp_tree_create(KVP_BLOCK_TOKENS_MAX + 1, &t), KVP_EINVAL);
	cr_assert_eq(kvp_tree_create(1, &t), 0);
	cr_assert_eq(kvp_tree_block_tokens(t), 1);
	kvp_tree_destroy(t);
	cr_assert_eq(kvp_tree_create(KVP_BLOCK_TOKENS_MAX, &t), 0);
	check_tree(t);
	kvp_tree_destroy(t);
	kvp_tree_destroy(NULL);
}

Test(tree, chunking_only_full_blocks)
{
	struct kvp_tree *t = new_tree(16);
	struct kvp_key root = kvp_ns_root("m", 1, NULL);
	struct kvp_tree_node *path[8];
	uint32_t tok[64], id = 100;

	for (uint32_t i = 0; i < 64; i++)
		tok[i] = i + 1;
	cr_assert_eq(tree_put(t, root, tok, 40, &id, path), 2);   /* 40 tokens: 2 blocks */
	cr_assert_eq(kvp_tree_size(t), 2);
	cr_assert_eq(kvp_tree_match(t, root, tok, 40, path, 8), 2);
	cr_assert_eq(kvp_tree_match(t, root, tok, 64, path, 8), 2);
	cr_assert_eq(kvp_tree_match(t, root, tok, 31, path, 8), 1);
	cr_assert_eq(kvp_tree_match(t, root, tok, 15, path, 8), 0);
	cr_assert_eq(kvp_tree_match(t, root, tok, 0, path, 8), 0);
	cr_assert_eq(kvp_tree_match(t, root, tok, 40, path, 1), 1);   /* max_nodes */
	cr_assert_eq(kvp_tree_match(t, root, tok, 40, NULL, 0), 0);
	cr_assert_eq(kvp_tree_node_block(path[0]), 100);
	cr_assert_eq(memcmp(kvp_tree_node_tokens(path[0]), tok, 16 * sizeof(uint32_t)), 0);
	cr_assert_null(kvp_tree_node_parent(path[0]));
	check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, block_size_1_prompt_128k_deep)
{
	/* A 128k-token prompt at B=1 is a chain 131072 nodes deep: insert, match, check,
	 * evict and clear must all be iterative. (The collide build's 64 buckets make
	 * every probe walk n/64 nodes, so it goes 32k deep only.) */
#ifdef KVP_TEST_COLLIDE
	const size_t n = 32768;
#else
	const size_t n = 131072;
#endif
	struct kvp_tree *t = new_tree(1);
	struct kvp_key root = kvp_ns_root("deep", 0, NULL);
	uint32_t *tok = malloc(n * sizeof(*tok)), id = 0, got;
	struct kvp_tree_node **path = malloc(n * sizeof(*path));
	size_t pinned_at = n / 2 + 3, evicted = 0;

	cr_assert(tok && path);
	for (size_t i = 0; i < n; i++)
		tok[i] = (uint32_t)(i % 7);
	cr_assert_eq(tree_put(t, root, tok, n, &id, path), n);
	cr_assert_eq(kvp_tree_match(t, root, tok, n, path, n), n);
	cr_assert_eq(kvp_tree_evictable(t), 1);
	check_tree(t);
	kvp_tree_pin(t, path[pinned_at]);
	while (kvp_tree_evict(t, &got) == 0) {
		cr_assert_eq(got, (uint32_t)(n - 1 - evicted), "deepest first");
		evicted++;
	}
	cr_assert_eq(evicted, n - pinned_at - 1);
	cr_assert_eq(kvp_tree_size(t), pinned_at + 1);
	check_tree(t);
	kvp_tree_unpin(t, path[pinned_at]);
	kvp_tree_clear(t, NULL, NULL);
	cr_assert_eq(kvp_tree_size(t), 0);
	check_tree(t);
	/* and destroy of a deep chain */
	cr_assert_eq(tree_put(t, root, tok, n, &id, path), n);
	kvp_tree_destroy(t);
	free(tok);
	free(path);
}

Test(tree, block_size_4096)
{
	const uint32_t b = KVP_BLOCK_TOKENS_MAX;
	struct kvp_tree *t = new_tree(b);
	struct kvp_key root = kvp_ns_root("big", 0, NULL);
	uint32_t *tok = malloc((3 * b + 100) * sizeof(*tok)), id = 0;
	struct kvp_tree_node *path[4];

	cr_assert_not_null(tok);
	for (uint32_t i = 0; i < 3 * b + 100; i++)
		tok[i] = i * 2654435761u;
	cr_assert_eq(tree_put(t, root, tok, 3 * b + 100, &id, path), 3);
	cr_assert_eq(kvp_tree_match(t, root, tok, 3 * b + 100, path, 4), 3);
	cr_assert_eq(kvp_tree_match(t, root, tok, 3 * b - 1, path, 4), 2);
	tok[2 * b + 4095] ^= 1;   /* last token of block 2 */
	cr_assert_eq(kvp_tree_match(t, root, tok, 3 * b, path, 4), 2);
	check_tree(t);
	kvp_tree_destroy(t);
	free(tok);
}

/* ---- insert / pin / evict ------------------------------------------------------------ */

Test(tree, insert_existing_block_is_eexist)
{
	struct kvp_tree *t = new_tree(4);
	struct kvp_key r1 = kvp_ns_root("m", 1, NULL), r2 = kvp_ns_root("m", 2, NULL);
	const uint32_t tok[8] = { 1, 2, 3, 4, 1, 2, 3, 4 };
	struct kvp_tree_node *a, *b, *x, *y;
	struct kvp_key ka = kvp_block_key(r1, tok, 4), kb = kvp_block_key(ka, tok + 4, 4);

	cr_assert_eq(kvp_tree_insert(t, r1, NULL, ka, tok, 1, &a), 0);
	cr_assert_eq(kvp_tree_insert(t, r1, a, kb, tok + 4, 2, &b), 0);
	cr_assert_eq(kvp_tree_insert(t, r1, NULL, ka, tok, 9, &x), KVP_EEXIST);
	cr_assert_eq(x, a);
	cr_assert_eq(kvp_tree_node_block(x), 1, "the existing node is untouched");
	cr_assert_eq(kvp_tree_insert(t, r1, a, kb, tok + 4, 9, &x), KVP_EEXIST);
	cr_assert_eq(x, b);
	cr_assert_eq(kvp_tree_size(t), 2);
	cr_assert_eq(kvp_tree_evictable(t), 1);
	/* the same tokens under another root, or another parent, are other blocks */
	cr_assert_eq(kvp_tree_insert(t, r2, NULL, kvp_block_key(r2, tok, 4), tok, 3, &y), 0);
	cr_assert_neq(y, a);
	cr_assert_eq(kvp_tree_insert(t, r1, b, kvp_block_key(kb, tok, 4), tok, 4, &y), 0);
	cr_assert_eq(kvp_tree_size(t), 4);
	check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, pin_protects_node_and_ancestors)
{
	/*   A - B - C      pin B: C is still evictable; then B (a pinned leaf) and A are
	 *   D              not, only D. Unpin B: B, then A.                            */
	struct kvp_tree *t = new_tree(2);
	struct kvp_key root = kvp_ns_root("pin", 0, NULL);
	const uint32_t abc[6] = { 1, 1, 2, 2, 3, 3 }, d[2] = { 9, 9 };
	struct kvp_tree_node *p[3], *pd[1];
	uint32_t id = 10, got;

	tree_put(t, root, abc, 6, &id, p);   /* A=10 B=11 C=12 */
	tree_put(t, root, d, 2, &id, pd);     /* D=13 */
	kvp_tree_pin(t, p[1]);
	cr_assert_eq(kvp_tree_node_pins(p[1]), 1);
	check_tree(t);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 12);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 13);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	cr_assert_eq(kvp_tree_size(t), 2);
	check_tree(t);
	kvp_tree_pin(t, p[1]);
	kvp_tree_unpin(t, p[1]);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL, "still pinned once");
	kvp_tree_unpin(t, p[1]);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 11);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 10);
	cr_assert_eq(kvp_tree_size(t), 0);
	check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, evict_efull_when_empty_or_all_pinned)
{
	struct kvp_tree *t = new_tree(4);
	struct kvp_key root = kvp_ns_root("full", 0, NULL);
	struct kvp_tree_node *p[16];
	uint32_t tok[4], id = 0, got = 77;

	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	cr_assert_eq(got, 77);
	for (uint32_t i = 0; i < 16; i++) {
		for (int j = 0; j < 4; j++)
			tok[j] = i;
		tree_put(t, root, tok, 4, &id, p + i);
		kvp_tree_pin(t, p[i]);
	}
	cr_assert_eq(kvp_tree_evictable(t), 0);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	cr_assert_eq(kvp_tree_size(t), 16);
	check_tree(t);
	kvp_tree_unpin(t, p[5]);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 5);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	kvp_tree_destroy(t);
}

Test(tree, lru_order_is_exact)
{
	/* Leaves L0..L9 inserted in order; then touched, pinned and unpinned so that the
	 * LRU must place nodes at the head, in the middle and at the tail. */
	struct kvp_tree *t = new_tree(1);
	struct kvp_key root = kvp_ns_root("lru", 0, NULL);
	struct kvp_tree_node *l[10], *path[1];
	uint32_t tok[1], id = 0, got;
	const uint32_t want[10] = { 0, 2, 3, 5, 6, 8, 9, 7, 4, 1 };

	for (uint32_t i = 0; i < 10; i++) {
		tok[0] = i;
		tree_put(t, root, tok, 1, &id, l + i);
	}
	kvp_tree_pin(t, l[5]);               /* off the LRU, tick of its insert */
	tok[0] = 7;
	kvp_tree_match(t, root, tok, 1, path, 1);   /* 7 becomes the newest */
	tok[0] = 4;
	kvp_tree_match(t, root, tok, 1, path, 1);   /* then 4 */
	kvp_tree_pin(t, l[1]);
	tok[0] = 1;
	kvp_tree_match(t, root, tok, 1, path, 1);   /* 1 is used while pinned */
	kvp_tree_unpin(t, l[5]);             /* back between 4 and 6, by its old tick */
	kvp_tree_unpin(t, l[1]);             /* back at the tail */
	check_tree(t);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(kvp_tree_evict(t, &got), 0);
		cr_assert_eq(got, want[i], "eviction %d: got %u want %u", i, got, want[i]);
		check_tree(t);
	}
	kvp_tree_destroy(t);
}

Test(tree, eviction_uncovers_parent_at_its_tick)
{
	/* P - C, and X. P was used after X (a lookup of P alone), C before X: C goes
	 * first, then X, then P (uncovered at its own tick, so after X: the tail).
	 * Then Q - D, and Y: D goes, and Q, older than Y, is uncovered at the head. */
	struct kvp_tree *t = new_tree(1);
	struct kvp_key root = kvp_ns_root("up", 0, NULL);
	const uint32_t pc[2] = { 1, 2 }, x[1] = { 3 }, q[2] = { 4, 5 }, y[1] = { 6 };
	struct kvp_tree_node *path[2];
	uint32_t id = 0, got;

	tree_put(t, root, pc, 2, &id, path);    /* P=0 C=1 */
	tree_put(t, root, x, 1, &id, path);     /* X=2 */
	kvp_tree_match(t, root, pc, 1, path, 1); /* P used */
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 1);
	check_tree(t);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 2);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 0);

	tree_put(t, root, q, 2, &id, path);     /* Q=3 D=4 */
	tree_put(t, root, y, 1, &id, path);     /* Y=5 */
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 4);
	check_tree(t);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 3);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 5);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	kvp_tree_destroy(t);
}

Test(tree, namespace_eviction_uncovers_parent_in_the_middle)
{
	/* A's P (then its child C, added without a lookup of P) among B's leaves: the LRU
	 * is W0..W3 P X Y C Z V0..V5 with P off it, and P's tick lies between W3's and
	 * X's. Evicting A's own least recently used leaf (C) uncovers P, which belongs
	 * before X although C sat after Y. */
	struct kvp_tree *t = new_tree(1);
	struct kvp_key ra = kvp_ns_root("m", 1, NULL), rb = kvp_ns_root("m", 2, NULL);
	const uint32_t p[1] = { 1 }, c[1] = { 2 };
	const uint32_t want[14] = { 0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14 };
	struct kvp_tree_node *path[1], *pn, *cn;
	uint32_t id = 0, got, tok[1];

	for (uint32_t i = 0; i < 4; i++) {                  /* W0..W3 = 0..3 */
		tok[0] = 100 + i;
		tree_put(t, rb, tok, 1, &id, path);
	}
	tree_put(t, ra, p, 1, &id, &pn);                     /* P = 4 */
	for (uint32_t i = 0; i < 2; i++) {                  /* X, Y = 5, 6 */
		tok[0] = 200 + i;
		tree_put(t, rb, tok, 1, &id, path);
	}
	cr_assert_eq(kvp_tree_insert(t, ra, pn, kvp_block_key(kvp_tree_node_key(pn), c, 1), c, id++,
				     &cn), 0);               /* C = 7 */
	for (uint32_t i = 0; i < 7; i++) {                  /* Z, V0..V5 = 8..14 */
		tok[0] = 300 + i;
		tree_put(t, rb, tok, 1, &id, path);
	}
	check_tree(t);
	cr_assert_eq(kvp_tree_evict_ns(t, ra, &got), 0);
	cr_assert_eq(got, 7);
	check_tree(t);
	for (int i = 0; i < 14; i++) {
		cr_assert_eq(kvp_tree_evict(t, &got), 0);
		cr_assert_eq(got, want[i], "eviction %d: got %u want %u", i, got, want[i]);
		check_tree(t);
	}
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	kvp_tree_destroy(t);
}

static void collect_id(void *arg, uint32_t id)
{
	uint32_t *v = arg;

	v[++v[0]] = id;
}

Test(tree, clear_removes_unpinned_leaf_first)
{
	/*   A(0) - B(1) - C(2) - D(3)     pin C: D goes, C B A stay.
	 *        \ E(4) - F(5)            all go, F before E, and A stays (C's ancestor).
	 *   G(6)                          goes.                                         */
	struct kvp_tree *t = new_tree(1);
	struct kvp_key root = kvp_ns_root("clear", 0, NULL);
	const uint32_t abcd[4] = { 1, 2, 3, 4 }, aef[3] = { 1, 5, 6 }, g[1] = { 7 };
	struct kvp_tree_node *p[4], *q[3], *r[1];
	uint32_t id = 0, got[16] = { 0 };
	int pos[8];

	tree_put(t, root, abcd, 4, &id, p);
	tree_put(t, root, aef, 3, &id, q);
	tree_put(t, root, g, 1, &id, r);
	kvp_tree_pin(t, p[2]);
	kvp_tree_clear(t, collect_id, got);
	cr_assert_eq(got[0], 4, "removed %u", got[0]);
	memset(pos, -1, sizeof(pos));
	for (uint32_t i = 1; i <= got[0]; i++)
		pos[got[i]] = (int)i;
	cr_assert(pos[3] > 0 && pos[4] > 0 && pos[5] > 0 && pos[6] > 0);
	cr_assert(pos[5] < pos[4], "F before E");
	cr_assert_eq(kvp_tree_size(t), 3);
	cr_assert_eq(kvp_tree_match(t, root, abcd, 4, p, 4), 3);
	check_tree(t);
	kvp_tree_unpin(t, p[2]);
	got[0] = 0;
	kvp_tree_clear(t, collect_id, got);
	cr_assert_eq(got[0], 3);
	cr_assert_eq(got[1], 2);
	cr_assert_eq(got[2], 1);
	cr_assert_eq(got[3], 0);
	cr_assert_eq(kvp_tree_size(t), 0);
	check_tree(t);
	kvp_tree_destroy(t);
}

/* ---- collisions and verification ------------------------------------------------------- */

Test(tree, forged_key_costs_a_miss_never_a_wrong_hit)
{
	/* A node claims the key that {9,9,9,9} hashes to, but holds {1,2,3,4}: a crafted
	 * collision. Looking up {9,9,9,9} must miss; caching it must work beside it. */
	struct kvp_tree *t = new_tree(4);
	struct kvp_key root = kvp_ns_root("forge", 0, NULL), other = kvp_ns_root("forge", 1, NULL);
	const uint32_t t1[4] = { 1, 2, 3, 4 }, t3[8] = { 9, 9, 9, 9, 5, 5, 5, 5 };
	struct kvp_key k3 = kvp_block_key(root, t3, 4);
	struct kvp_tree_node *forged, *real, *path[2];

	cr_assert_eq(kvp_tree_insert(t, root, NULL, k3, t1, 1, &forged), 0);
	cr_assert_eq(kvp_tree_match(t, root, t3, 8, path, 2), 0, "wrong hit on tokens");
	cr_assert_eq(kvp_tree_insert(t, root, NULL, k3, t3, 2, &real), 0, "duplicate key");
	cr_assert_neq(real, forged);
	cr_assert_eq(kvp_tree_match(t, root, t3, 8, path, 2), 1);
	cr_assert_eq(path[0], real);
	/* Depth 0 of another namespace, same key and tokens (forged: under `other` these
	 * tokens have another key). Met first in the bucket; the stored root rejects it. */
	cr_assert_eq(kvp_tree_insert(t, other, NULL, k3, t3, 3, &forged), 0);
	cr_assert_neq(forged, real);
	cr_assert_eq(kvp_tree_match(t, root, t3, 8, path, 2), 1);
	cr_assert_eq(path[0], real);
	cr_assert_eq(kvp_tree_match(t, other, t3, 8, path, 2), 0);
	/* Below depth 0 the parent decides: same key and tokens, another parent. */
	{
		struct kvp_key k4 = kvp_block_key(k3, t3 + 4, 4);
		struct kvp_tree_node *c1, *c2;

		cr_assert_eq(kvp_tree_insert(t, other, forged, k4, t3 + 4, 4, &c2), 0);
		cr_assert_eq(kvp_tree_match(t, root, t3, 8, path, 2), 1, "not under real");
		cr_assert_eq(kvp_tree_insert(t, root, real, k4, t3 + 4, 5, &c1), 0);
		cr_assert_neq(c1, c2);
		cr_assert_eq(kvp_tree_match(t, root, t3, 8, path, 2), 2);
		cr_assert_eq(path[0], real);
		cr_assert_eq(path[1], c1);
	}
	check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, colliding_keys_are_verified)
{
	/* Many depth-0 blocks, then probes for blocks that are not cached. In the collide
	 * build most probes meet nodes with table-equal keys and must still miss; every
	 * cached block must still find itself. */
	struct kvp_tree *t = new_tree(4);
	struct kvp_key root = kvp_ns_root("coll", 0, NULL);
	struct rng r = { 12345 };
	enum { N = 400, PROBES = 4000 };
	static uint32_t tok[N][4];
	static struct kvp_key key[N];
	struct kvp_tree_node *nodes[N], *path[1];
	size_t collided = 0;

	for (int i = 0; i < N; i++) {
		for (int j = 0; j < 4; j++)
			tok[i][j] = (uint32_t)i * 4u + (uint32_t)j;   /* all distinct */
		key[i] = kvp_block_key(root, tok[i], 4);
		cr_assert_eq(kvp_tree_insert(t, root, NULL, key[i], tok[i], (uint32_t)i, &nodes[i]), 0);
	}
	check_tree(t);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(kvp_tree_match(t, root, tok[i], 4, path, 1), 1);
		cr_assert_eq(path[0], nodes[i], "block %d found another node", i);
	}
	for (int p = 0; p < PROBES; p++) {
		uint32_t q[4];
		struct kvp_key k;

		for (int j = 0; j < 4; j++)
			q[j] = 1000000u + rng_below(&r, 1u << 30);
		k = kvp_block_key(root, q, 4);
		for (int i = 0; i < N; i++)
			if (table_equal(k, key[i]))
				collided++;
		cr_assert_eq(kvp_tree_match(t, root, q, 4, path, 1), 0, "probe %d hit", p);
	}
#ifdef KVP_TEST_COLLIDE
	cr_assert(collided > PROBES, "only %zu collisions", collided);
#else
	cr_assert_eq(collided, 0);
#endif
	check_tree(t);
	kvp_tree_destroy(t);
}

/* ---- allocation failure ----------------------------------------------------------------- */

Test(tree, failed_allocation_changes_nothing)
{
	struct kvp_tree *t = NULL;
	struct kvp_key root = kvp_ns_root("oom", 0, NULL);
	const uint32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct kvp_tree_node *a, *b = (struct kvp_tree_node *)&b, *path[2];
	uint32_t got;

	kvp_index_set_allocator(test_alloc, test_free);
	alloc_fail_in = 0;
	cr_assert_eq(kvp_tree_create(4, &t), KVP_ENOMEM);
	alloc_fail_in = 1;
	cr_assert_eq(kvp_tree_create(4, &t), KVP_ENOMEM);
	cr_assert_eq(alloc_live, 0, "create leaked on failure");
	cr_assert_eq(kvp_tree_create(4, &t), 0);
	cr_assert_eq(kvp_tree_insert(t, root, NULL, kvp_block_key(root, tok, 4), tok, 1, &a), 0);
	alloc_fail_in = 0;
	cr_assert_eq(kvp_tree_insert(t, root, a, kvp_block_key(kvp_tree_node_key(a), tok + 4, 4),
				     tok + 4, 2, &b), KVP_ENOMEM);
	cr_assert_null(b);
	cr_assert_eq(kvp_tree_size(t), 1);
	cr_assert_eq(kvp_tree_evictable(t), 1, "parent still an evictable leaf");
	check_tree(t);
	cr_assert_eq(kvp_tree_match(t, root, tok, 8, path, 2), 1);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 1);
	kvp_tree_destroy(t);
	cr_assert_eq(alloc_live, 0, "leak");
	kvp_index_set_allocator(NULL, NULL);
}

Test(tree, failed_table_growth_keeps_working)
{
	/* Refuse every allocation the size of a grown bucket array (and larger); nodes
	 * (B=4: well under 256 bytes) still come. The table stays at its first size and
	 * everything still works, with longer chains. */
	struct kvp_tree *t = NULL;
	struct kvp_key root = kvp_ns_root("grow", 0, NULL);
	struct kvp_tree_node *path[1];
	uint32_t tok[4], id = 0;

	kvp_index_set_allocator(test_alloc, test_free);
	cr_assert_eq(kvp_tree_create(4, &t), 0);
	alloc_fail_min = 256;
	for (uint32_t i = 0; i < 1000; i++) {
		for (int j = 0; j < 4; j++)
			tok[j] = i;
		tree_put(t, root, tok, 4, &id, path);
	}
	alloc_fail_min = 0;
	check_tree(t);
	cr_assert_eq(kvp_tree_size(t), 1000);
	for (uint32_t i = 0; i < 1000; i++) {
		for (int j = 0; j < 4; j++)
			tok[j] = i;
		cr_assert_eq(kvp_tree_match(t, root, tok, 4, path, 1), 1);
		cr_assert_eq(kvp_tree_node_block(path[0]), i);
	}
	/* growth resumes once memory is back */
	tok[0] = 5000;
	tree_put(t, root, tok, 4, &id, path);
	check_tree(t);
	kvp_tree_destroy(t);
	cr_assert_eq(alloc_live, 0);
	kvp_index_set_allocator(NULL, NULL);
}

/* ---- the model ----------------------------------------------------------------------------- */

struct mnode {
	bool alive;
	int ns;
	int parent;                  /* slot, -1 at depth 0 */
	uint32_t children;
	uint32_t pins;
	uint64_t tick;
	uint32_t block;
	struct kvp_key key;
	struct kvp_tree_node *tn;    /* tree-level test */
	uint32_t *tok;               /* this block's tokens */
};

struct model {
	uint32_t b;
	struct mnode *v;
	size_t slots;
	size_t alive;
	uint64_t tick;
};

static void model_init(struct model *m, uint32_t b, size_t slots)
{
	m->b = b;
	m->slots = slots;
	m->alive = 0;
	m->tick = 0;
	m->v = calloc(slots, sizeof(*m->v));
	cr_assert_not_null(m->v);
	for (size_t i = 0; i < slots; i++) {
		m->v[i].tok = malloc(b * sizeof(uint32_t));
		cr_assert_not_null(m->v[i].tok);
	}
}

static void model_free(struct model *m)
{
	for (size_t i = 0; i < m->slots; i++)
		free(m->v[i].tok);
	free(m->v);
}

static int model_child(const struct model *m, int ns, int parent, const uint32_t *blk)
{
	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (x->alive && x->ns == ns && x->parent == parent &&
		    memcmp(x->tok, blk, m->b * sizeof(uint32_t)) == 0)
			return (int)i;
	}
	return -1;
}

/* Longest cached prefix: slots into path[], returns its length in blocks. */
static size_t model_match(const struct model *m, int ns, const uint32_t *tok, size_t nb,
			  int *path)
{
	int parent = -1;
	size_t i;

	for (i = 0; i < nb; i++) {
		int c = model_child(m, ns, parent, tok + i * m->b);

		if (c < 0)
			break;
		path[i] = parent = c;
	}
	return i;
}

static bool model_evictable(const struct mnode *x)
{
	return x->alive && x->pins == 0 && x->children == 0;
}

static size_t model_n_evictable(const struct model *m)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += model_evictable(&m->v[i]);
	return n;
}

/* The least recently used unpinned leaf other than `except`, or -1. Ticks of
 * evictable leaves are distinct (each tick touches one root path, and of a path only
 * its deepest node can be a leaf), so "least" is never ambiguous: asserted. */
static int model_victim(const struct model *m, int except)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (!model_evictable(x) || (int)i == except)
			continue;
		if (best >= 0)
			cr_assert_neq(x->tick, m->v[best].tick, "LRU tie");
		if (best < 0 || x->tick < m->v[best].tick)
			best = (int)i;
	}
	return best;
}

/* The same within namespace ns: what kvp_tree_evict_ns must pick. */
static int model_victim_ns(const struct model *m, int ns)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (model_evictable(x) && x->ns == ns && (best < 0 || x->tick < m->v[best].tick))
			best = (int)i;
	}
	return best;
}

/* Quota groups of the random model: namespace 0 alone, 1 and 2 together (keyed by
 * namespace 1's root, so one record is both a namespace and a group). */
#define TREE_GROUP(ns) ((ns) == 0 ? 0 : 1)

static int model_victim_group(const struct model *m, int grp)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (model_evictable(x) && TREE_GROUP(x->ns) == grp &&
		    (best < 0 || x->tick < m->v[best].tick))
			best = (int)i;
	}
	return best;
}

static size_t model_group_size(const struct model *m, int grp)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += m->v[i].alive && TREE_GROUP(m->v[i].ns) == grp;
	return n;
}

static size_t model_ns_size(const struct model *m, int ns)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += m->v[i].alive && m->v[i].ns == ns;
	return n;
}

static bool model_under(const struct model *m, int s, int top)
{
	for (; s >= 0; s = m->v[s].parent)
		if (s == top)
			return true;
	return false;
}

static int model_add(struct model *m, int ns, int parent, const uint32_t *blk,
		     struct kvp_key key, uint64_t tick)
{
	for (size_t i = 0; i < m->slots; i++) {
		struct mnode *x = &m->v[i];

		if (x->alive)
			continue;
		x->alive = true;
		x->ns = ns;
		x->parent = parent;
		x->children = 0;
		x->pins = 0;
		x->tick = tick;
		x->block = UINT32_MAX;
		x->key = key;
		x->tn = NULL;
		memcpy(x->tok, blk, m->b * sizeof(uint32_t));
		if (parent >= 0)
			m->v[parent].children++;
		m->alive++;
		return (int)i;
	}
	cr_assert_fail("model full");
	return -1;
}

static void model_remove(struct model *m, int s)
{
	struct mnode *x = &m->v[s];

	cr_assert(model_evictable(x));
	x->alive = false;
	if (x->parent >= 0)
		m->v[x->parent].children--;
	m->alive--;
}

/* Prompts: a few stems per namespace over a 4-letter alphabet, cut at random lengths,
 * sometimes with one token changed or the tail of another stem, so that prefixes are
 * shared often and equal blocks under different parents are common. */
#define GEN_NS 3
#define GEN_STEMS 8
#define GEN_MAX 64

struct gen {
	struct rng r;
	uint32_t stem[GEN_NS][GEN_STEMS][GEN_MAX];
	struct kvp_key root[GEN_NS];
};

static void gen_init(struct gen *g, uint64_t seed)
{
	g->r.s = seed;
	for (int n = 0; n < GEN_NS; n++) {
		g->root[n] = kvp_ns_root("model", (uint32_t)n, NULL);
		for (int s = 0; s < GEN_STEMS; s++)
			for (int i = 0; i < GEN_MAX; i++)
				g->stem[n][s][i] = rng_below(&g->r, 4);
	}
}

static size_t gen_prompt(struct gen *g, int *ns, uint32_t *tok, size_t max)
{
	int n = (int)rng_below(&g->r, GEN_NS), s = (int)rng_below(&g->r, GEN_STEMS);
	size_t len = rng_below(&g->r, (uint32_t)max + 1);
	uint32_t kind = rng_below(&g->r, 10);

	memcpy(tok, g->stem[n][s], len * sizeof(*tok));
	if (kind < 2 && len > 0) {
		tok[rng_below(&g->r, (uint32_t)len)] = rng_below(&g->r, 4);
	} else if (kind < 4 && len > 0) {
		size_t cut = rng_below(&g->r, (uint32_t)len);
		int s2 = (int)rng_below(&g->r, GEN_STEMS);

		memcpy(tok + cut, g->stem[n][s2] + cut, (len - cut) * sizeof(*tok));
	}
	*ns = n;
	return len;
}

/* ---- differential: the tree alone ------------------------------------------------------- */

static void check_tree_against(const struct kvp_tree *t, const struct model *m)
{
	check_tree(t);
	cr_assert_eq(kvp_tree_size(t), m->alive);
	cr_assert_eq(kvp_tree_evictable(t), model_n_evictable(m));
}

Test(tree_model, random_operations, .timeout = 60)
{
	const uint32_t b = 2;
	const size_t limit = 96, ops = 100000;
	struct kvp_tree *t = new_tree(b);
	struct model m;
	struct gen g;
	uint32_t tok[GEN_MAX], next_id = 0;
	struct kvp_tree_node *path[GEN_MAX];
	int mpath[GEN_MAX];
	int pinned[256];
	size_t n_pinned = 0, n_evict = 0, n_hits = 0, n_evict_ns = 0, n_under = 0;
	size_t n_evict_group = 0;

	model_init(&m, b, limit + GEN_MAX);
	gen_init(&g, 0xC0FFEE);
	for (size_t op = 0; op < ops; op++) {
		uint32_t what = rng_below(&g.r, 100);
		int ns;
		size_t len = gen_prompt(&g, &ns, tok, GEN_MAX), nb = len / b;
		struct kvp_key root = g.root[ns];

		if (what < 30) {                           /* match */
			size_t mm = model_match(&m, ns, tok, nb, mpath);
			size_t got = kvp_tree_match(t, root, tok, len, path, GEN_MAX);

			cr_assert_eq(got, mm, "op %zu: match %zu, model %zu", op, got, mm);
			m.tick++;
			for (size_t i = 0; i < mm; i++) {
				cr_assert_eq(path[i], m.v[mpath[i]].tn);
				m.v[mpath[i]].tick = m.tick;
			}
			n_hits += mm > 0;
		} else if (what < 60) {                    /* match, then insert the rest */
			size_t mm = model_match(&m, ns, tok, nb, mpath);
			size_t got = kvp_tree_match(t, root, tok, len, path, GEN_MAX);
			struct kvp_key key = mm ? m.v[mpath[mm - 1]].key : root;

			cr_assert_eq(got, mm);
			m.tick++;
			for (size_t i = 0; i < mm; i++)
				m.v[mpath[i]].tick = m.tick;
			for (size_t i = mm; i < nb && m.alive < limit; i++) {
				int parent = i ? mpath[i - 1] : -1;
				struct kvp_tree_node *n;
				int s;

				key = kvp_block_key(key, tok + i * b, b);
				cr_assert_eq(kvp_tree_insert_grouped(t, root, g.root[TREE_GROUP(ns)],
								     parent >= 0 ? m.v[parent].tn : NULL,
								     key, tok + i * b, next_id, &n), 0);
				s = model_add(&m, ns, parent, tok + i * b, key, ++m.tick);
				m.v[s].tn = n;
				m.v[s].block = next_id++;
				mpath[i] = s;
			}
		} else if (what < 62) {                    /* evict within a group */
			int grp = TREE_GROUP(ns), v = model_victim_group(&m, grp);
			uint32_t id;
			int rc = kvp_tree_evict_group(t, g.root[grp], &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: group evicted %u, its LRU is %u",
					     op, id, m.v[v].block);
				model_remove(&m, v);
				n_evict++;
				n_evict_group++;
			}
		} else if (what < 64) {                    /* evict within a namespace */
			int v = model_victim_ns(&m, ns);
			uint32_t id;
			int rc = kvp_tree_evict_ns(t, root, &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: ns evicted %u, its LRU is %u", op,
					     id, m.v[v].block);
				model_remove(&m, v);
				n_evict++;
				n_evict_ns++;
			}
		} else if (what < 70) {                    /* evict */
			int v = model_victim(&m, -1);
			uint32_t id;
			int rc = kvp_tree_evict(t, &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: evicted %u, LRU is %u", op,
					     id, m.v[v].block);
				model_remove(&m, v);
				n_evict++;
			}
		} else if (what < 78) {                    /* pin a random cached block */
			int s = (int)rng_below(&g.r, (uint32_t)m.slots);

			if (m.v[s].alive && n_pinned < 256) {
				kvp_tree_pin(t, m.v[s].tn);
				m.v[s].pins++;
				pinned[n_pinned++] = s;
				cr_assert_eq(kvp_tree_node_pins(m.v[s].tn), m.v[s].pins);
			}
		} else if (what < 90) {                    /* unpin */
			if (n_pinned) {
				size_t k = rng_below(&g.r, (uint32_t)n_pinned);
				int s = pinned[k];

				pinned[k] = pinned[--n_pinned];
				kvp_tree_unpin(t, m.v[s].tn);
				m.v[s].pins--;
			}
		} else if (what < 98) {                    /* re-insert a cached block */
			int s = (int)rng_below(&g.r, (uint32_t)m.slots);

			if (m.v[s].alive) {
				struct mnode *x = &m.v[s];
				struct kvp_tree_node *n;

				cr_assert_eq(kvp_tree_insert(t, g.root[x->ns],
							     x->parent >= 0 ? m.v[x->parent].tn : NULL,
							     x->key, x->tok, 999999, &n), KVP_EEXIST);
				cr_assert_eq(n, x->tn);
			}
		} else if (what == 98 && rng_below(&g.r, 4) == 0) { /* evict a subtree */
			int top = (int)rng_below(&g.r, (uint32_t)m.slots), v;
			uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
			size_t removed = 0, n;
			bool progress = true;

			cr_assert_not_null(got);
			if (m.v[top].alive) {
				n = kvp_tree_evict_under(t, m.v[top].tn, collect_id, got);
				cr_assert_eq(n, got[0]);
				/* the model: every unpinned node under top, leaf first */
				while (progress) {
					progress = false;
					for (v = 0; v < (int)m.slots; v++) {
						if (!model_evictable(&m.v[v]) || !model_under(&m, v, top))
							continue;
						bool found = false;

						for (uint32_t i = 1; i <= got[0]; i++)
							found |= got[i] == m.v[v].block;
						cr_assert(found, "op %zu: subtree kept block %u", op,
							  m.v[v].block);
						model_remove(&m, v);
						removed++;
						progress = true;
					}
				}
				cr_assert_eq(got[0], removed, "op %zu: subtree evicted %u, model %zu", op,
					     got[0], removed);
				n_under += removed;
			}
			free(got);
		} else if (what == 99 && rng_below(&g.r, 2) == 0) { /* clear one namespace */
			uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
			size_t removed = 0;
			int v;

			cr_assert_not_null(got);
			cr_assert_eq(kvp_tree_clear_ns(t, root, collect_id, got), got[0]);
			while ((v = model_victim_ns(&m, ns)) >= 0) {
				bool found = false;

				for (uint32_t i = 1; i <= got[0]; i++)
					found |= got[i] == m.v[v].block;
				cr_assert(found, "clear_ns kept block %u", m.v[v].block);
				model_remove(&m, v);
				removed++;
			}
			cr_assert_eq(got[0], removed);
			free(got);
		} else if (what == 99 && rng_below(&g.r, 20) == 0) { /* clear */
			uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
			size_t removed = 0;
			int v;

			cr_assert_not_null(got);
			kvp_tree_clear(t, collect_id, got);
			while ((v = model_victim(&m, -1)) >= 0) {
				bool found = false;

				for (uint32_t i = 1; i <= got[0]; i++)
					found |= got[i] == m.v[v].block;
				cr_assert(found, "clear kept block %u", m.v[v].block);
				model_remove(&m, v);
				removed++;
			}
			cr_assert_eq(got[0], removed);
			free(got);
		}
		/* keep the tree near its limit by evicting, checking each victim */
		while (m.alive >= limit) {
			int v = model_victim(&m, -1);
			uint32_t id;

			if (v < 0)
				break;
			cr_assert_eq(kvp_tree_evict(t, &id), 0);
			cr_assert_eq(id, m.v[v].block, "op %zu: trim evicted %u, LRU is %u", op, id,
				     m.v[v].block);
			model_remove(&m, v);
			n_evict++;
		}
		check_tree_against(t, &m);
		cr_assert_eq(kvp_tree_ns_size(t, root), model_ns_size(&m, ns));
		cr_assert_eq(kvp_tree_group_size(t, g.root[TREE_GROUP(ns)]),
			     model_group_size(&m, TREE_GROUP(ns)));
	}
	cr_assert(n_evict > 10000 && n_hits > 10000, "evictions %zu, hits %zu", n_evict, n_hits);
	cr_assert(n_evict_ns > 500 && n_evict_group > 500 && n_under > 100,
		  "namespace evictions %zu, group %zu, subtree %zu", n_evict_ns, n_evict_group,
		  n_under);
	kvp_tree_destroy(t);
	model_free(&m);
}

/* ---- differential: the cache (tree + pool + leases) -------------------------------------- */

struct mlease {
	uint64_t owner;
	uint64_t id;
	size_t n;
	int slot[GEN_MAX];
};

#define MAX_OWNERS 4
#define MAX_LEASES 6            /* per owner, as configured */
#define LIVE_LEASES (MAX_OWNERS * MAX_LEASES)

struct cache_run {
	struct kvp_cache *c;
	struct model m;
	struct gen g;
	uint32_t cap;
	struct mlease lease[LIVE_LEASES];
	size_t n_leases;
	uint64_t evictions;
	/* tallies */
	size_t ops, hits, evicted, full, collisions, pinned_ops;
};

static size_t owner_leases(const struct cache_run *cr_, uint64_t owner)
{
	size_t n = 0;

	for (size_t i = 0; i < cr_->n_leases; i++)
		n += cr_->lease[i].owner == owner;
	return n;
}

static void lease_drop_model(struct cache_run *cr_, size_t i)
{
	struct mlease *l = &cr_->lease[i];

	for (size_t k = 0; k < l->n; k++) {
		cr_assert(cr_->m.v[l->slot[k]].alive && cr_->m.v[l->slot[k]].pins > 0);
		cr_->m.v[l->slot[k]].pins--;
	}
	*l = cr_->lease[--cr_->n_leases];
}

/* Compare everything observable with the model. */
static void cache_compare(struct cache_run *cr_, size_t op, uint64_t model_evictions)
{
	struct kvp_cache_stats st;
	uint32_t pinned = 0;
	static uint8_t seen[1024];

	cr_assert_eq(kvp_cache_check(cr_->c), 0, "op %zu: kvp_cache_check", op);
	kvp_cache_get_stats(cr_->c, &st);
	cr_assert_eq(st.evictions - cr_->evictions, model_evictions,
		     "op %zu: %llu evictions, model %llu", op,
		     (unsigned long long)(st.evictions - cr_->evictions),
		     (unsigned long long)model_evictions);
	cr_->evictions = st.evictions;
	for (size_t i = 0; i < cr_->m.slots; i++)
		pinned += cr_->m.v[i].alive && cr_->m.v[i].pins > 0;
	cr_assert_eq(st.pool.total, cr_->cap);
	cr_assert_eq(st.pool.free + st.pool.cached + st.pool.referenced, st.pool.total);
	cr_assert_eq(st.pool.free, cr_->cap - cr_->m.alive, "op %zu: free", op);
	cr_assert_eq(st.pool.referenced, pinned, "op %zu: referenced", op);
	cr_assert_eq(st.pool.cached, cr_->m.alive - pinned, "op %zu: cached", op);
	cr_assert_eq(st.tree_nodes, cr_->m.alive);
	cr_assert_eq(st.leases_active, cr_->n_leases);
	/* one pool block per cached block */
	cr_assert(cr_->cap <= sizeof(seen));
	memset(seen, 0, cr_->cap);
	for (size_t i = 0; i < cr_->m.slots; i++) {
		const struct mnode *x = &cr_->m.v[i];

		if (!x->alive)
			continue;
		cr_assert(x->block < cr_->cap);
		cr_assert(!seen[x->block], "block %u cached twice", x->block);
		seen[x->block] = 1;
	}
}

/* Count blocks of the prompt whose key the table cannot tell from a cached block's. */
static void count_collisions(struct cache_run *cr_, struct kvp_key root, const uint32_t *tok,
			     size_t nb)
{
	struct kvp_key keys[GEN_MAX];

	kvp_chain_keys(root, tok, nb, cr_->m.b, keys);
	for (size_t j = 0; j < nb; j++)
		for (size_t i = 0; i < cr_->m.slots; i++)
			if (cr_->m.v[i].alive && table_equal(cr_->m.v[i].key, keys[j]) &&
			    !kvp_key_eq(cr_->m.v[i].key, keys[j]))
				cr_->collisions++;
}

static void cache_lookup_op(struct cache_run *cr_, size_t op, int ns, const uint32_t *tok,
			    size_t len, uint64_t owner, bool pin)
{
	struct model *m = &cr_->m;
	size_t nb = len / m->b, mm;
	int mpath[GEN_MAX];
	uint32_t ids[GEN_MAX];
	struct kvp_cache_result res;
	bool busy = pin && owner_leases(cr_, owner) >= MAX_LEASES;
	int rc;

	count_collisions(cr_, cr_->g.root[ns], tok, nb);
	rc = kvp_cache_lookup(cr_->c, cr_->g.root[ns], tok, len, owner, pin, ids, &res);
	if (busy) {
		cr_assert_eq(rc, KVP_EBUSY);
		cache_compare(cr_, op, 0);
		return;
	}
	cr_assert_eq(rc, 0, "op %zu: lookup rc %d", op, rc);
	mm = model_match(m, ns, tok, nb, mpath);
	/* Soundness first: whatever was reported must be a cached prefix, block for block. */
	cr_assert(res.matched_tokens % m->b == 0 && res.matched_tokens / m->b <= mm,
		  "op %zu: reported %u tokens, only %zu blocks cached", op, res.matched_tokens, mm);
	for (size_t i = 0; i < res.n_blocks; i++)
		cr_assert_eq(ids[i], m->v[mpath[i]].block, "op %zu: block %zu is not cached there",
			     op, i);
	/* Then exactness (see the top of the file for why the collide build holds it). */
	cr_assert_eq(res.matched_tokens, mm * m->b, "op %zu: lookup matched %u, model %zu", op,
		     res.matched_tokens, mm * m->b);
	cr_assert_eq(res.n_blocks, mm);
	cr_assert_eq(res.prompt_tokens, len);
	m->tick++;
	for (size_t i = 0; i < mm; i++)
		m->v[mpath[i]].tick = m->tick;
	cr_->hits += mm > 0;
	if (pin && mm > 0) {
		struct mlease *l = &cr_->lease[cr_->n_leases++];

		cr_assert_neq(res.lease, 0);
		l->owner = owner;
		l->id = res.lease;
		l->n = mm;
		for (size_t i = 0; i < mm; i++) {
			l->slot[i] = mpath[i];
			m->v[mpath[i]].pins++;
		}
	} else {
		cr_assert_eq(res.lease, 0);
	}
	cache_compare(cr_, op, 0);
}

static void cache_insert_op(struct cache_run *cr_, size_t op, int ns, const uint32_t *tok,
			    size_t len, uint64_t owner, bool pin)
{
	struct model *m = &cr_->m;
	struct kvp_key root = cr_->g.root[ns], key;
	size_t nb = len / m->b, mm, k;
	int mpath[GEN_MAX];
	uint32_t ids[GEN_MAX];
	struct kvp_cache_result res;
	bool busy = pin && owner_leases(cr_, owner) >= MAX_LEASES, full = false;
	uint64_t evictions = 0;
	int rc;

	count_collisions(cr_, root, tok, nb);
	rc = kvp_cache_insert(cr_->c, root, root, tok, len, owner, pin, ids, &res);
	if (busy) {
		cr_assert_eq(rc, KVP_EBUSY);
		cache_compare(cr_, op, 0);
		return;
	}
	cr_assert_eq(rc, 0, "op %zu: insert rc %d", op, rc);
	mm = model_match(m, ns, tok, nb, mpath);
	m->tick++;
	for (size_t i = 0; i < mm; i++)
		m->v[mpath[i]].tick = m->tick;
	key = mm ? m->v[mpath[mm - 1]].key : root;
	/* Add the rest, taking free blocks, else evicting the LRU unpinned leaf; the
	 * block being extended is never the victim. */
	for (k = mm; k < nb; k++) {
		int parent = k ? mpath[k - 1] : -1;

		if (m->alive == cr_->cap) {
			int v = model_victim(m, parent);

			if (v < 0) {
				full = true;
				break;
			}
			model_remove(m, v);
			evictions++;
		}
		key = kvp_block_key(key, tok + k * m->b, m->b);
		mpath[k] = model_add(m, ns, parent, tok + k * m->b, key, m->tick);
	}
	cr_assert(res.matched_tokens % m->b == 0 && res.n_blocks == res.matched_tokens / m->b);
	cr_assert_eq(res.n_blocks, k, "op %zu: insert cached %u blocks, model %zu", op,
		     res.n_blocks, k);
	cr_assert_eq(res.new_blocks, k - mm, "op %zu: new %u, model %zu", op, res.new_blocks,
		     k - mm);
	cr_assert_eq(res.pool_full, full, "op %zu: pool_full", op);
	for (size_t i = 0; i < mm; i++)
		cr_assert_eq(ids[i], m->v[mpath[i]].block, "op %zu: matched block %zu", op, i);
	for (size_t i = mm; i < k; i++)
		m->v[mpath[i]].block = ids[i];
	cr_->evicted += evictions;
	cr_->full += full;
	if (pin && k > 0) {
		struct mlease *l = &cr_->lease[cr_->n_leases++];

		cr_assert_neq(res.lease, 0);
		l->owner = owner;
		l->id = res.lease;
		l->n = k;
		for (size_t i = 0; i < k; i++) {
			l->slot[i] = mpath[i];
			m->v[mpath[i]].pins++;
		}
	} else {
		cr_assert_eq(res.lease, 0);
	}
	cache_compare(cr_, op, evictions);
}

static void run_cache_model(uint64_t seed, uint32_t b, uint32_t cap, size_t ops)
{
	struct kvp_cache_config cfg = {
		.block_tokens = b,
		.capacity_blocks = cap,
		.max_tokens = GEN_MAX,
		.max_leases = MAX_LEASES,
	};
	struct cache_run *cr_ = calloc(1, sizeof(*cr_));
	uint32_t tok[GEN_MAX];

	cr_assert_not_null(cr_);
	cr_assert_eq(kvp_cache_create(&cfg, &cr_->c), 0);
	cr_->cap = cap;
	model_init(&cr_->m, b, cap);
	gen_init(&cr_->g, seed);
	for (size_t op = 0; op < ops; op++) {
		uint32_t what = rng_below(&cr_->g.r, 100);
		uint64_t owner = 1 + rng_below(&cr_->g.r, MAX_OWNERS);
		int ns;
		size_t len = gen_prompt(&cr_->g, &ns, tok, GEN_MAX);

		/* Leases pile up by chance; keep them rare enough that eviction happens. */
		if (what < 30) {
			cache_lookup_op(cr_, op, ns, tok, len, owner, false);
		} else if (what < 42) {
			cache_lookup_op(cr_, op, ns, tok, len, owner, true);
			cr_->pinned_ops++;
		} else if (what < 72) {
			cache_insert_op(cr_, op, ns, tok, len, owner, false);
		} else if (what < 82) {
			cache_insert_op(cr_, op, ns, tok, len, owner, true);
			cr_->pinned_ops++;
		} else if (what < 97) {                   /* release one lease */
			if (cr_->n_leases && rng_below(&cr_->g.r, 8)) {
				size_t i = rng_below(&cr_->g.r, (uint32_t)cr_->n_leases);
				struct mlease l = cr_->lease[i];
				uint32_t n = 0;

				/* someone else's lease is not found */
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner + MAX_OWNERS, l.id, &n),
					     KVP_ENOTFOUND);
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner, l.id, &n), 0);
				cr_assert_eq(n, l.n);
				lease_drop_model(cr_, i);
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner, l.id, &n),
					     KVP_ENOTFOUND, "released twice");
			} else {
				cr_assert_eq(kvp_cache_release(cr_->c, owner, 0xdead0000u + op, NULL),
					     KVP_ENOTFOUND);
			}
			cache_compare(cr_, op, 0);
		} else {                                  /* an owner disconnects */
			size_t want = owner_leases(cr_, owner);

			cr_assert_eq(kvp_cache_release_owner(cr_->c, owner), want);
			for (size_t i = cr_->n_leases; i-- > 0;)
				if (cr_->lease[i].owner == owner)
					lease_drop_model(cr_, i);
			cache_compare(cr_, op, 0);
		}
		cr_->ops++;
	}
	cr_log_info("cache model B=%u cap=%u: %zu ops, %zu hits, %zu evictions, %zu cut short "
		    "by a full pool, %zu pinning ops, %zu key collisions met",
		    b, cap, cr_->ops, cr_->hits, cr_->evicted, cr_->full, cr_->pinned_ops,
		    cr_->collisions);
	cr_assert(cr_->hits > ops / 20, "too few hits: %zu", cr_->hits);
	cr_assert(cr_->evicted > ops / 20, "too few evictions: %zu", cr_->evicted);
	cr_assert(cr_->full > 0, "the pool never filled with pinned blocks");
#ifdef KVP_TEST_COLLIDE
	cr_assert(cr_->collisions > ops / 10, "too few collisions: %zu", cr_->collisions);
#else
	cr_assert_eq(cr_->collisions, 0);
#endif
	kvp_cache_destroy(cr_->c);
	model_free(&cr_->m);
	free(cr_);
}

Test(cache_model, random_operations_b4, .timeout = 120)
{
	run_cache_model(0x5EED0001, 4, 48, 120000);
}

Test(cache_model, random_operations_b1, .timeout = 120)
{
	run_cache_model(0x5EED0002, 1, 40, 60000);
}

Test(cache_model, random_operations_b16, .timeout = 120)
{
	run_cache_model(0x5EED0003, 16, 12, 60000);
}

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
