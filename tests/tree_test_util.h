/*
 * tree_test_util.h - what the files of test_tree and test_tree_collide share: helpers
 * (tree_test_util.c), and the trivial model and prompt generator of the differential
 * tests (tree_test_model.c).
 *
 * Built twice (tests/CMakeLists.txt), every file of both with the same defines:
 *   test_tree          over the real index;
 *   test_tree_collide  KVP_TEST_COLLIDE=1, over an index built with
 *                      KVP_TREE_TEST_HASH_BITS=6: the table compares only 6 bits of each
 *                      key, so nearly every probe meets colliding nodes and verification
 *                      (parent, root, tokens) is all that stands between it and a wrong hit.
 *
 * Every function here fails the calling test through criterion's asserts; none returns
 * an error.
 */
#ifndef KVP_TREE_TEST_UTIL_H
#define KVP_TREE_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"

/* ---- helpers (tree_test_util.c) ---------------------------------------------------- */

/* Do two keys look equal to the tree's table (all 128 bits, or 6 in the collide build)? */
bool tt_table_equal(struct kvp_key a, struct kvp_key b);

/* xorshift64*: set s to seed it. */
struct rng {
	uint64_t s;
};

/* A value below n (n > 0) from r. */
uint32_t tt_rng_below(struct rng *r, uint32_t n);

/* A tree of b-token blocks; asserts that kvp_tree_create succeeded. */
struct kvp_tree *tt_new_tree(uint32_t b);
/* Assert that kvp_tree_check finds the tree sound. */
void tt_check_tree(const struct kvp_tree *t);
/* A removal callback (kvp_tree_clear and kin): arg is a uint32_t array; v[0] counts the
 * ids appended after it. */
void tt_collect_id(void *arg, uint32_t id);

/* ---- the model (tree_test_model.c) ---------------------------------------------------- */

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
	bool warm;                   /* REUSE: used again, or cached again from the ghost */
};

struct model {
	uint32_t b;
	struct mnode *v;
	size_t slots;
	size_t alive;
	uint64_t tick;
	/* KVP_EVICT_REUSE (tt_model_set_reuse): the bonus, and every key evicted for room
	 * (an unbounded ghost: the tree's must be set larger than the test evicts) */
	bool reuse;
	uint64_t bonus;
	uint64_t *ghost;
	size_t ghost_cap, ghost_n;
};

/* A model of b-token blocks with room for `slots` blocks; tt_model_free frees it. */
void tt_model_init(struct model *m, uint32_t b, size_t slots);
void tt_model_free(struct model *m);
/* Longest cached prefix of tok (nb blocks) in namespace ns: slots into path[], returns
 * its length in blocks. */
size_t tt_model_match(const struct model *m, int ns, const uint32_t *tok, size_t nb,
		      int *path);
/* Cached, unpinned and childless; and how many blocks are. */
bool tt_model_evictable(const struct mnode *x);
size_t tt_model_n_evictable(const struct model *m);
/* The least recently used evictable block other than `except`, in all the model, in
 * namespace ns, or in quota group grp; -1 if none. */
int tt_model_victim(const struct model *m, int except);
int tt_model_victim_ns(const struct model *m, int ns);
int tt_model_victim_group(const struct model *m, int grp);
/* Blocks cached in quota group grp, and in namespace ns. */
size_t tt_model_group_size(const struct model *m, int grp);
size_t tt_model_ns_size(const struct model *m, int ns);
/* Is slot s top or below it? */
bool tt_model_under(const struct model *m, int s, int top);
/* Cache one block (tokens blk, key) under parent (a slot, or -1) at tick; returns its
 * slot. Asserts that the model has room. */
int tt_model_add(struct model *m, int ns, int parent, const uint32_t *blk,
		 struct kvp_key key, uint64_t tick);
/* Drop slot s, which must be evictable. */
void tt_model_remove(struct model *m, int s);
/* Evict like the tree's REUSE policy from now on, with this bonus in ticks. */
void tt_model_set_reuse(struct model *m, uint64_t bonus);
/* A match used slot s: its tick, and under REUSE it is warm. */
void tt_model_touch(struct model *m, int s);
/* Slot s is about to be evicted for room: under REUSE the ghost keeps its key. */
void tt_model_evicted(struct model *m, int s);

/* Quota groups of the random model: namespace 0 alone, 1 and 2 together (keyed by
 * namespace 1's root, so one record is both a namespace and a group). */
#define TREE_GROUP(ns) ((ns) == 0 ? 0 : 1)

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

/* Seed g and draw its stems and namespace roots. */
void tt_gen_init(struct gen *g, uint64_t seed);
/* A prompt of at most max tokens into tok; *ns gets its namespace. Returns its length. */
size_t tt_gen_prompt(struct gen *g, int *ns, uint32_t *tok, size_t max);

#endif
