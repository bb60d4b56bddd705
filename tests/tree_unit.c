/*
 * tree_unit.c - the radix tree (kvp_tree_*) case by case: create and block sizes,
 * chunking, insert, pin, evict and the exact LRU order, clearing, forged and colliding
 * keys, allocation failure injected through kvp_index_set_allocator, and the watch
 * (kvp_tree_set_watch): every node reported once as it is inserted and once as it is
 * removed, whatever removes it, parent before child and child before parent.
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_index.h"
#include "tree_test_util.h"

/* ---- helpers ----------------------------------------------------------------------- */

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

/* ---- counting allocator with failure injection -------------------------------------- */

static long alloc_live;          /* allocations not yet freed */
static long alloc_fail_in = -1;  /* fail the allocation this many calls from now */
static size_t alloc_fail_pow2;   /* or: fail every allocation of a power of two >= this */

static void *test_alloc(size_t n)
{
	if (alloc_fail_in == 0 ||
	    (alloc_fail_pow2 && n >= alloc_fail_pow2 && (n & (n - 1)) == 0)) {
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
	tt_check_tree(t);
	kvp_tree_destroy(t);
	kvp_tree_destroy(NULL);
}

Test(tree, chunking_only_full_blocks)
{
	struct kvp_tree *t = tt_new_tree(16);
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
	tt_check_tree(t);
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
	struct kvp_tree *t = tt_new_tree(1);
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
	tt_check_tree(t);
	kvp_tree_pin(t, path[pinned_at]);
	while (kvp_tree_evict(t, &got) == 0) {
		cr_assert_eq(got, (uint32_t)(n - 1 - evicted), "deepest first");
		evicted++;
	}
	cr_assert_eq(evicted, n - pinned_at - 1);
	cr_assert_eq(kvp_tree_size(t), pinned_at + 1);
	tt_check_tree(t);
	kvp_tree_unpin(t, path[pinned_at]);
	kvp_tree_clear(t, NULL, NULL);
	cr_assert_eq(kvp_tree_size(t), 0);
	tt_check_tree(t);
	/* and destroy of a deep chain */
	cr_assert_eq(tree_put(t, root, tok, n, &id, path), n);
	kvp_tree_destroy(t);
	free(tok);
	free(path);
}

Test(tree, block_size_4096)
{
	const uint32_t b = KVP_BLOCK_TOKENS_MAX;
	struct kvp_tree *t = tt_new_tree(b);
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
	tt_check_tree(t);
	kvp_tree_destroy(t);
	free(tok);
}

/* ---- insert / pin / evict ------------------------------------------------------------ */

Test(tree, insert_existing_block_is_eexist)
{
	struct kvp_tree *t = tt_new_tree(4);
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
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, pin_protects_node_and_ancestors)
{
	/*   A - B - C      pin B: C is still evictable; then B (a pinned leaf) and A are
	 *   D              not, only D. Unpin B: B, then A.                            */
	struct kvp_tree *t = tt_new_tree(2);
	struct kvp_key root = kvp_ns_root("pin", 0, NULL);
	const uint32_t abc[6] = { 1, 1, 2, 2, 3, 3 }, d[2] = { 9, 9 };
	struct kvp_tree_node *p[3], *pd[1];
	uint32_t id = 10, got;

	tree_put(t, root, abc, 6, &id, p);   /* A=10 B=11 C=12 */
	tree_put(t, root, d, 2, &id, pd);     /* D=13 */
	kvp_tree_pin(t, p[1]);
	cr_assert_eq(kvp_tree_node_pins(p[1]), 1);
	tt_check_tree(t);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 12);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 13);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	cr_assert_eq(kvp_tree_size(t), 2);
	tt_check_tree(t);
	kvp_tree_pin(t, p[1]);
	kvp_tree_unpin(t, p[1]);
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL, "still pinned once");
	kvp_tree_unpin(t, p[1]);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 11);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 10);
	cr_assert_eq(kvp_tree_size(t), 0);
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, evict_efull_when_empty_or_all_pinned)
{
	struct kvp_tree *t = tt_new_tree(4);
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
	tt_check_tree(t);
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
	struct kvp_tree *t = tt_new_tree(1);
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
	tt_check_tree(t);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(kvp_tree_evict(t, &got), 0);
		cr_assert_eq(got, want[i], "eviction %d: got %u want %u", i, got, want[i]);
		tt_check_tree(t);
	}
	kvp_tree_destroy(t);
}

Test(tree, eviction_uncovers_parent_at_its_tick)
{
	/* P - C, and X. P was used after X (a lookup of P alone), C before X: C goes
	 * first, then X, then P (uncovered at its own tick, so after X: the tail).
	 * Then Q - D, and Y: D goes, and Q, older than Y, is uncovered at the head. */
	struct kvp_tree *t = tt_new_tree(1);
	struct kvp_key root = kvp_ns_root("up", 0, NULL);
	const uint32_t pc[2] = { 1, 2 }, x[1] = { 3 }, q[2] = { 4, 5 }, y[1] = { 6 };
	struct kvp_tree_node *path[2];
	uint32_t id = 0, got;

	tree_put(t, root, pc, 2, &id, path);    /* P=0 C=1 */
	tree_put(t, root, x, 1, &id, path);     /* X=2 */
	kvp_tree_match(t, root, pc, 1, path, 1); /* P used */
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 1);
	tt_check_tree(t);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 2);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 0);

	tree_put(t, root, q, 2, &id, path);     /* Q=3 D=4 */
	tree_put(t, root, y, 1, &id, path);     /* Y=5 */
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 4);
	tt_check_tree(t);
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
	struct kvp_tree *t = tt_new_tree(1);
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
	tt_check_tree(t);
	cr_assert_eq(kvp_tree_evict_ns(t, ra, &got), 0);
	cr_assert_eq(got, 7);
	tt_check_tree(t);
	for (int i = 0; i < 14; i++) {
		cr_assert_eq(kvp_tree_evict(t, &got), 0);
		cr_assert_eq(got, want[i], "eviction %d: got %u want %u", i, got, want[i]);
		tt_check_tree(t);
	}
	cr_assert_eq(kvp_tree_evict(t, &got), KVP_EFULL);
	kvp_tree_destroy(t);
}

Test(tree, clear_removes_unpinned_leaf_first)
{
	/*   A(0) - B(1) - C(2) - D(3)     pin C: D goes, C B A stay.
	 *        \ E(4) - F(5)            all go, F before E, and A stays (C's ancestor).
	 *   G(6)                          goes.                                         */
	struct kvp_tree *t = tt_new_tree(1);
	struct kvp_key root = kvp_ns_root("clear", 0, NULL);
	const uint32_t abcd[4] = { 1, 2, 3, 4 }, aef[3] = { 1, 5, 6 }, g[1] = { 7 };
	struct kvp_tree_node *p[4], *q[3], *r[1];
	uint32_t id = 0, got[16] = { 0 };
	int pos[8];

	tree_put(t, root, abcd, 4, &id, p);
	tree_put(t, root, aef, 3, &id, q);
	tree_put(t, root, g, 1, &id, r);
	kvp_tree_pin(t, p[2]);
	kvp_tree_clear(t, tt_collect_id, got);
	cr_assert_eq(got[0], 4, "removed %u", got[0]);
	memset(pos, -1, sizeof(pos));
	for (uint32_t i = 1; i <= got[0]; i++)
		pos[got[i]] = (int)i;
	cr_assert(pos[3] > 0 && pos[4] > 0 && pos[5] > 0 && pos[6] > 0);
	cr_assert(pos[5] < pos[4], "F before E");
	cr_assert_eq(kvp_tree_size(t), 3);
	cr_assert_eq(kvp_tree_match(t, root, abcd, 4, p, 4), 3);
	tt_check_tree(t);
	kvp_tree_unpin(t, p[2]);
	got[0] = 0;
	kvp_tree_clear(t, tt_collect_id, got);
	cr_assert_eq(got[0], 3);
	cr_assert_eq(got[1], 2);
	cr_assert_eq(got[2], 1);
	cr_assert_eq(got[3], 0);
	cr_assert_eq(kvp_tree_size(t), 0);
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

/* ---- collisions and verification ------------------------------------------------------- */

Test(tree, forged_key_costs_a_miss_never_a_wrong_hit)
{
	/* A node claims the key that {9,9,9,9} hashes to, but holds {1,2,3,4}: a crafted
	 * collision. Looking up {9,9,9,9} must miss; caching it must work beside it. */
	struct kvp_tree *t = tt_new_tree(4);
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
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, colliding_keys_are_verified)
{
	/* Many depth-0 blocks, then probes for blocks that are not cached. In the collide
	 * build most probes meet nodes with table-equal keys and must still miss; every
	 * cached block must still find itself. */
	struct kvp_tree *t = tt_new_tree(4);
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
	tt_check_tree(t);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(kvp_tree_match(t, root, tok[i], 4, path, 1), 1);
		cr_assert_eq(path[0], nodes[i], "block %d found another node", i);
	}
	for (int p = 0; p < PROBES; p++) {
		uint32_t q[4];
		struct kvp_key k;

		for (int j = 0; j < 4; j++)
			q[j] = 1000000u + tt_rng_below(&r, 1u << 30);
		k = kvp_block_key(root, q, 4);
		for (int i = 0; i < N; i++)
			if (tt_table_equal(k, key[i]))
				collided++;
		cr_assert_eq(kvp_tree_match(t, root, q, 4, path, 1), 0, "probe %d hit", p);
	}
#ifdef KVP_TEST_COLLIDE
	cr_assert(collided > PROBES, "only %zu collisions", collided);
#else
	cr_assert_eq(collided, 0);
#endif
	tt_check_tree(t);
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
	tt_check_tree(t);
	cr_assert_eq(kvp_tree_match(t, root, tok, 8, path, 2), 1);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);
	cr_assert_eq(got, 1);
	kvp_tree_destroy(t);
	cr_assert_eq(alloc_live, 0, "leak");
	kvp_index_set_allocator(NULL, NULL);
}

Test(tree, failed_table_growth_keeps_working)
{
	/* Refuse every allocation the size of a grown bucket array (powers of two from 32
	 * 4-byte handles on); the node slab's chunks (B=4: 2^k slots of 104 bytes) and its
	 * chunk table (6 x 2^k pointers) still come. The table stays at its first size and
	 * everything still works, with longer chains. */
	struct kvp_tree *t = NULL;
	struct kvp_key root = kvp_ns_root("grow", 0, NULL);
	struct kvp_tree_node *path[1];
	uint32_t tok[4], id = 0;

	kvp_index_set_allocator(test_alloc, test_free);
	cr_assert_eq(kvp_tree_create(4, &t), 0);
	alloc_fail_pow2 = 128;
	for (uint32_t i = 0; i < 1000; i++) {
		for (int j = 0; j < 4; j++)
			tok[j] = i;
		tree_put(t, root, tok, 4, &id, path);
	}
	alloc_fail_pow2 = 0;
	tt_check_tree(t);
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
	tt_check_tree(t);
	kvp_tree_destroy(t);
	cr_assert_eq(alloc_live, 0);
	kvp_index_set_allocator(NULL, NULL);
}

/* ---- the watch: every node reported as it comes and as it goes ---------------------------- */

#define WATCH_MAX 1024

/* What the watch saw: the nodes reported added and not yet removed (every node of the
 * tree, when the watch was set on an empty one), and the removals since the last
 * watch_reset, in order, with what the removed node said of itself then. */
struct watch_log {
	const struct kvp_tree_node *live[WATCH_MAX];
	size_t n_live;
	const struct kvp_tree_node *added[WATCH_MAX];
	size_t n_added;
	uint32_t removed_id[WATCH_MAX];
	struct kvp_key removed_root[WATCH_MAX];
	size_t n_removed;
};

static long watch_find(const struct watch_log *w, const struct kvp_tree_node *n)
{
	for (size_t i = 0; i < w->n_live; i++)
		if (w->live[i] == n)
			return (long)i;
	return -1;
}

/* The watch: a parent is reported added before its child and removed after it. */
static void watch_fn(void *arg, const struct kvp_tree_node *n, bool added)
{
	struct watch_log *w = arg;
	const struct kvp_tree_node *p = kvp_tree_node_parent(n);
	long at = watch_find(w, n);

	cr_assert(!p || watch_find(w, p) >= 0, "%s block %u: its parent %u is not in the tree",
		  added ? "added" : "removed", kvp_tree_node_block(n),
		  p ? kvp_tree_node_block(p) : 0);
	if (added) {
		cr_assert_eq(at, -1, "block %u reported added twice", kvp_tree_node_block(n));
		cr_assert_lt(w->n_live, WATCH_MAX);
		w->live[w->n_live++] = n;
		w->added[w->n_added++] = n;
		return;
	}
	cr_assert_geq(at, 0, "block %u reported removed, never added", kvp_tree_node_block(n));
	for (size_t i = 0; i < w->n_live; i++)
		cr_assert_neq(kvp_tree_node_parent(w->live[i]), n,
			      "block %u removed before its child %u", kvp_tree_node_block(n),
			      kvp_tree_node_block(w->live[i]));
	w->live[at] = w->live[--w->n_live];
	w->removed_id[w->n_removed] = kvp_tree_node_block(n);
	w->removed_root[w->n_removed++] = kvp_tree_node_root(n);
}

static void watch_reset(struct watch_log *w)
{
	w->n_added = 0;
	w->n_removed = 0;
}

/* The watch reported exactly the removals that the call reported, in its order:
 * got[] as tt_collect_id fills it. */
static void watch_saw_removed(const struct watch_log *w, const uint32_t *got)
{
	cr_assert_eq(w->n_removed, got[0], "watch saw %zu removals, the call %u", w->n_removed,
		     got[0]);
	for (uint32_t i = 0; i < got[0]; i++)
		cr_assert_eq(w->removed_id[i], got[i + 1], "removal %u: watch %u, call %u", i,
			     w->removed_id[i], got[i + 1]);
	cr_assert_eq(w->n_added, 0);
}

/* The live set is the tree: same size, and every live node is found by a match of its
 * own chain (rebuilt by walking its parents). */
static void watch_is_tree(const struct watch_log *w, struct kvp_tree *t)
{
	cr_assert_eq(w->n_live, kvp_tree_size(t), "watch: %zu live, tree: %zu", w->n_live,
		     kvp_tree_size(t));
	for (size_t i = 0; i < w->n_live; i++) {
		const struct kvp_tree_node *chain[64], *x = w->live[i];
		uint32_t b = kvp_tree_block_tokens(t), tok[64 * 8];
		struct kvp_tree_node *path[64];
		size_t d = 0;

		for (; x; x = kvp_tree_node_parent(x)) {
			cr_assert_lt(d, 64);
			chain[d++] = x;
		}
		cr_assert_leq(b, 8);
		for (size_t j = 0; j < d; j++)
			memcpy(tok + j * b, kvp_tree_node_tokens(chain[d - 1 - j]), b * sizeof(*tok));
		cr_assert_eq(kvp_tree_match(t, kvp_tree_node_root(w->live[i]), tok, d * b, path, 64), d);
		cr_assert_eq(path[d - 1], w->live[i]);
	}
}

static struct kvp_tree *watched_tree(uint32_t b, struct watch_log *w)
{
	struct kvp_tree *t = tt_new_tree(b);

	memset(w, 0, sizeof(*w));
	kvp_tree_set_watch(t, watch_fn, w);
	return t;
}

Test(tree, watch_insert_reports_each_new_node_parent_first)
{
	static struct watch_log w;
	struct kvp_tree *t = NULL;
	struct kvp_key root = kvp_ns_root("watch", 0, NULL);
	const uint32_t abc[6] = { 1, 1, 2, 2, 3, 3 }, abd[6] = { 1, 1, 2, 2, 4, 4 };
	struct kvp_tree_node *p[3], *q[3], *x;
	uint32_t id = 0;

	t = watched_tree(2, &w);
	cr_assert_eq(tree_put(t, root, abc, 6, &id, p), 3);
	cr_assert_eq(w.n_added, 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(w.added[i], p[i], "insert %d reported in order", i);
	cr_assert_eq(w.n_removed, 0);
	/* a branch: only the new node */
	watch_reset(&w);
	cr_assert_eq(tree_put(t, root, abd, 6, &id, q), 3);
	cr_assert_eq(w.n_added, 1);
	cr_assert_eq(w.added[0], q[2]);
	/* the same block again: KVP_EEXIST, nothing reported */
	watch_reset(&w);
	cr_assert_eq(kvp_tree_insert(t, root, p[0], kvp_tree_node_key(p[1]), abc + 2, 99, &x),
		     KVP_EEXIST);
	cr_assert_eq(w.n_added, 0);
	/* a failed allocation: nothing inserted, nothing reported */
	kvp_tree_destroy(t);
	kvp_index_set_allocator(test_alloc, test_free);
	t = watched_tree(2, &w);
	tree_put(t, root, abc, 2, &id, p);
	watch_reset(&w);
	alloc_fail_in = 0;
	cr_assert_eq(kvp_tree_insert(t, root, p[0], kvp_block_key(kvp_tree_node_key(p[0]), abc + 2, 2),
				     abc + 2, 50, &x), KVP_ENOMEM);
	cr_assert_eq(w.n_added, 0);
	watch_is_tree(&w, t);
	/* no watch: nothing */
	kvp_tree_set_watch(t, NULL, NULL);
	tree_put(t, root, abc, 6, &id, p);
	cr_assert_eq(w.n_added, 0);
	tt_check_tree(t);
	kvp_tree_destroy(t);
	cr_assert_eq(alloc_live, 0);
	kvp_index_set_allocator(NULL, NULL);
}

Test(tree, watch_evictions_report_the_node_that_goes)
{
	/*   A(0) - B(1) - C(2)      ns1, one group
	 *   D(3)                    ns2, grouped with ns1
	 *   E(4) - F(5)             ns3, its own group                                  */
	static struct watch_log w;
	struct kvp_tree *t = watched_tree(1, &w);
	struct kvp_key r1 = kvp_ns_root("w", 1, NULL), r2 = kvp_ns_root("w", 2, NULL),
		       r3 = kvp_ns_root("w", 3, NULL);
	const uint32_t abc[3] = { 1, 2, 3 }, d[1] = { 4 }, ef[2] = { 5, 6 };
	struct kvp_tree_node *p[3], *pd, *pe, *pf;
	uint32_t id = 0, got;

	tree_put(t, r1, abc, 3, &id, p);
	cr_assert_eq(kvp_tree_insert_grouped(t, r2, r1, NULL, kvp_block_key(r2, d, 1), d, id++, &pd),
		     0);
	tree_put(t, r3, ef, 1, &id, &pe);
	cr_assert_eq(kvp_tree_insert(t, r3, pe, kvp_block_key(kvp_tree_node_key(pe), ef + 1, 1),
				     ef + 1, id++, &pf), 0);
	cr_assert_eq(w.n_added, 6);
	cr_assert_eq(w.n_live, kvp_tree_size(t));   /* (a match would change the LRU order) */

	watch_reset(&w);
	cr_assert_eq(kvp_tree_evict(t, &got), 0);   /* C, the oldest leaf */
	cr_assert_eq(got, 2);
	cr_assert_eq(w.n_removed, 1);
	cr_assert_eq(w.removed_id[0], 2);
	cr_assert(kvp_key_eq(w.removed_root[0], r1));

	watch_reset(&w);
	cr_assert_eq(kvp_tree_evict_ns(t, r3, &got), 0);   /* F */
	cr_assert_eq(got, 5);
	cr_assert_eq(w.n_removed, 1);
	cr_assert_eq(w.removed_id[0], 5);

	watch_reset(&w);
	cr_assert_eq(kvp_tree_evict_group(t, r1, &got), 0);   /* B: uncovered before D */
	cr_assert_eq(w.n_removed, 1);
	cr_assert_eq(w.removed_id[0], got);

	watch_reset(&w);
	cr_assert_eq(kvp_tree_evict_node(t, p[0], &got), 0);   /* A, now a leaf */
	cr_assert_eq(got, 0);
	cr_assert_eq(w.n_removed, 1);
	cr_assert_eq(w.removed_id[0], 0);
	/* a node that is not an evictable leaf: KVP_EBUSY, nothing reported */
	watch_reset(&w);
	kvp_tree_pin(t, pd);
	cr_assert_eq(kvp_tree_evict_node(t, pd, &got), KVP_EBUSY);
	cr_assert_eq(kvp_tree_evict_ns(t, r2, &got), KVP_EFULL);
	cr_assert_eq(w.n_removed, 0);
	kvp_tree_unpin(t, pd);
	watch_is_tree(&w, t);
	tt_check_tree(t);
	/* destroy reports nothing */
	watch_reset(&w);
	kvp_tree_destroy(t);
	cr_assert_eq(w.n_removed, 0);
}

/* A tree for the clears: namespace r1 holds
 *
 *   A(0) - B(1) - C(2) - D(3)      C pinned: D goes, C B A stay
 *        \ E(4) - F(5)
 *              \ G(6)
 *   H(7)
 *
 * and namespace r2 holds I(8) - J(9) and K(10). */
static struct kvp_tree *clear_tree(struct watch_log *w, struct kvp_key r1, struct kvp_key r2,
				   struct kvp_tree_node **a, struct kvp_tree_node **c,
				   struct kvp_tree_node **e)
{
	struct kvp_tree *t = watched_tree(1, w);
	const uint32_t abcd[4] = { 1, 2, 3, 4 }, aef[3] = { 1, 5, 6 }, aeg[3] = { 1, 5, 7 },
		       h[1] = { 8 }, ij[2] = { 9, 10 }, k[1] = { 11 };
	struct kvp_tree_node *p[4];
	uint32_t id = 0;

	tree_put(t, r1, abcd, 4, &id, p);
	*a = p[0];
	*c = p[2];
	tree_put(t, r1, aef, 3, &id, p);
	*e = p[1];
	tree_put(t, r1, aeg, 3, &id, p);
	tree_put(t, r1, h, 1, &id, p);
	tree_put(t, r2, ij, 2, &id, p);
	tree_put(t, r2, k, 1, &id, p);
	cr_assert_eq(kvp_tree_size(t), 11);
	cr_assert_eq(w->n_added, 11);
	kvp_tree_pin(t, *c);
	watch_reset(w);
	return t;
}

Test(tree, watch_clear_reports_every_removed_node_leaf_first)
{
	static struct watch_log w;
	struct kvp_key r1 = kvp_ns_root("wc", 1, NULL), r2 = kvp_ns_root("wc", 2, NULL);
	struct kvp_tree_node *a, *c, *e;
	struct kvp_tree *t = clear_tree(&w, r1, r2, &a, &c, &e);
	uint32_t got[32] = { 0 };

	kvp_tree_clear(t, tt_collect_id, got);
	cr_assert_eq(got[0], 8, "D E F G H I J K");
	watch_saw_removed(&w, got);
	watch_is_tree(&w, t);
	cr_assert_eq(kvp_tree_size(t), 3);
	kvp_tree_unpin(t, c);
	watch_reset(&w);
	got[0] = 0;
	kvp_tree_clear(t, NULL, NULL);
	cr_assert_eq(w.n_removed, 3);
	cr_assert_eq(w.removed_id[0], 2, "C, then B, then A");
	cr_assert_eq(w.removed_id[1], 1);
	cr_assert_eq(w.removed_id[2], 0);
	cr_assert_eq(w.n_live, 0);
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, watch_clear_ns_reports_that_namespace_only)
{
	static struct watch_log w;
	struct kvp_key r1 = kvp_ns_root("wn", 1, NULL), r2 = kvp_ns_root("wn", 2, NULL);
	struct kvp_tree_node *a, *c, *e;
	struct kvp_tree *t = clear_tree(&w, r1, r2, &a, &c, &e);
	uint32_t got[32] = { 0 };

	cr_assert_eq(kvp_tree_clear_ns(t, r2, tt_collect_id, got), 3);
	watch_saw_removed(&w, got);
	for (size_t i = 0; i < w.n_removed; i++)
		cr_assert(kvp_key_eq(w.removed_root[i], r2), "removal %zu from another namespace", i);
	watch_is_tree(&w, t);
	watch_reset(&w);
	got[0] = 0;
	cr_assert_eq(kvp_tree_clear_ns(t, r1, tt_collect_id, got), 5, "D E F G H");
	watch_saw_removed(&w, got);
	for (size_t i = 0; i < w.n_removed; i++)
		cr_assert(kvp_key_eq(w.removed_root[i], r1));
	watch_is_tree(&w, t);
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, watch_evict_under_reports_the_subtree_that_goes)
{
	static struct watch_log w;
	struct kvp_key r1 = kvp_ns_root("wu", 1, NULL), r2 = kvp_ns_root("wu", 2, NULL);
	struct kvp_tree_node *a, *c, *e;
	struct kvp_tree *t = clear_tree(&w, r1, r2, &a, &c, &e);
	uint32_t got[32] = { 0 };

	/* under E: F, G, then E itself */
	cr_assert_eq(kvp_tree_evict_under(t, e, tt_collect_id, got), 3);
	watch_saw_removed(&w, got);
	cr_assert_eq(w.removed_id[2], 4, "E after its children");
	watch_is_tree(&w, t);
	/* under A: D only (C pinned keeps C B A) */
	watch_reset(&w);
	got[0] = 0;
	cr_assert_eq(kvp_tree_evict_under(t, a, tt_collect_id, got), 1);
	watch_saw_removed(&w, got);
	cr_assert_eq(w.removed_id[0], 3);
	watch_is_tree(&w, t);
	/* unpinned: A's whole subtree, and nothing of H or r2 */
	kvp_tree_unpin(t, c);
	watch_reset(&w);
	got[0] = 0;
	cr_assert_eq(kvp_tree_evict_under(t, a, tt_collect_id, got), 3);
	watch_saw_removed(&w, got);
	cr_assert_eq(w.removed_id[2], 0);
	watch_is_tree(&w, t);
	cr_assert_eq(kvp_tree_size(t), 4);
	tt_check_tree(t);
	kvp_tree_destroy(t);
}

Test(tree, watch_random_operations_keep_the_live_set_equal_to_the_tree)
{
	/* Random inserts, evictions of every kind, pins, clears: after each, the watch's
	 * live set is the tree, and every removal the call reported the watch saw. */
	static struct watch_log w;
	static struct gen g;
	struct kvp_tree *t = watched_tree(2, &w);
	struct kvp_tree_node *pinned[8] = { 0 }, *path[GEN_MAX];
	uint32_t tok[GEN_MAX], id = 0, got[WATCH_MAX + 1], one;

	tt_gen_init(&g, 4242);
	for (int step = 0; step < 3000; step++) {
		uint32_t op = tt_rng_below(&g.r, 100);
		int ns;

		watch_reset(&w);
		got[0] = 0;
		if (op < 50 && kvp_tree_size(t) < 600) {
			size_t len = tt_gen_prompt(&g, &ns, tok, GEN_MAX), nb = len / 2, before;
			size_t m = kvp_tree_match(t, g.root[ns], tok, len, path, GEN_MAX);

			before = kvp_tree_size(t);
			tree_put(t, g.root[ns], tok, len, &id, path);
			cr_assert_eq(w.n_added, nb - m);
			cr_assert_eq(kvp_tree_size(t), before + nb - m);
			for (size_t i = m; i < nb; i++)
				cr_assert_eq(w.added[i - m], path[i]);
		} else if (op < 70) {
			int rc = op < 60 ? kvp_tree_evict(t, &one)
				 : kvp_tree_evict_ns(t, g.root[op % GEN_NS], &one);

			if (rc == 0) {
				got[0] = 1;
				got[1] = one;
			}
			watch_saw_removed(&w, got);
		} else if (op < 80) {
			uint32_t slot = tt_rng_below(&g.r, 8);

			if (pinned[slot]) {
				kvp_tree_unpin(t, pinned[slot]);
				pinned[slot] = NULL;
			} else if (w.n_live) {
				pinned[slot] = (struct kvp_tree_node *)w.live[tt_rng_below(&g.r,
							(uint32_t)w.n_live)];
				kvp_tree_pin(t, pinned[slot]);
			}
		} else if (op < 90 && w.n_live) {
			struct kvp_tree_node *top = (struct kvp_tree_node *)
				w.live[tt_rng_below(&g.r, (uint32_t)w.n_live)];

			kvp_tree_evict_under(t, top, tt_collect_id, got);
			watch_saw_removed(&w, got);
		} else if (op < 97) {
			kvp_tree_clear_ns(t, g.root[op % GEN_NS], tt_collect_id, got);
			watch_saw_removed(&w, got);
		} else {
			kvp_tree_clear(t, tt_collect_id, got);
			watch_saw_removed(&w, got);
		}
		watch_is_tree(&w, t);
		if (step % 100 == 0)
			tt_check_tree(t);
	}
	tt_check_tree(t);
	kvp_tree_destroy(t);
}
