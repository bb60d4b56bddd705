/*
 * tree_internal.h - private to index/: the tree's layout, for tree.c (the tree) and
 * tree_check.c (its invariants). The picture and the tricky cases are in tree.c's
 * opening comment.
 */
#ifndef KVP_INDEX_TREE_INTERNAL_H
#define KVP_INDEX_TREE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"
#include "slab_internal.h"

struct kvp_ghost;

/* ---- layout ---------------------------------------------------------------------- */

/* A node's place on one of the LRU lists: the handles before and after it, 0 at either
 * end and while it is on no list. */
struct kvp_link {
	uint32_t prev;
	uint32_t next;
};

/* A list's two ends (0, 0 when empty). */
struct kvp_list {
	uint32_t first;
	uint32_t last;
};

/* A node lives in the tree's slab (slab_internal.h) and names other nodes by handle. */
struct kvp_tree_node {
	struct kvp_key key;             /* full 128-bit chained key */
	uint64_t tick;                  /* last use: tree tick of the last match/insert */
	uint64_t content;               /* kvp_content_key chain: the same in every namespace */
	struct tree_ns *ns;             /* its namespace's accounting (and root) */
	uint32_t self;                  /* its own handle */
	uint32_t hnext;                 /* next in the hash bucket */
	uint32_t parent;                /* 0 at depth 0 */
	struct kvp_link lru;            /* on the tree's list iff pins == 0 && children == 0 */
	struct kvp_link nlru;           /* the namespace's own LRU: on it iff on lru's */
	struct kvp_link glru;           /* its group's LRU: on it iff on lru's */
	uint32_t children;              /* resident nodes whose parent this is */
	uint32_t pins;                  /* NODE_PINS: the pins; NODE_WARM: REUSE's "used again" */
	uint32_t block_id;
	uint32_t tokens[];              /* block_tokens of them */
};

#define NODE_WARM 0x80000000u
#define NODE_PINS 0x7fffffffu

/* Per-namespace accounting: resident nodes, and an LRU of the namespace's evictable
 * nodes (the same nodes as on the tree's LRU, in the same tick order), so that a
 * namespace can give up its own least recently used block (quotas) and be cleared
 * without a walk over everyone else's. Created with the namespace's first node, freed
 * with its last. */
struct tree_ns {
	struct kvp_key root;
	struct tree_ns *next;           /* hash chain */
	struct kvp_tree *tree;          /* whose slab its nodes live in */
	size_t nodes;
	size_t n_lru;
	struct kvp_list lru;            /* through node->nlru */
	/* the group (quota unit) the namespace's nodes count in: a record of the same
	 * table, keyed by the group key given at the namespace's first insert (itself
	 * when the key is the root); NULL while the namespace has no node */
	struct tree_ns *grp;
	size_t gnodes;                  /* as a group: nodes of its namespaces */
	size_t gn_lru;
	struct kvp_list glru;           /* through node->glru */
	size_t scratch, gscratch;       /* kvp_tree_check's tallies */
};

struct kvp_tree {
	uint32_t *buckets;              /* node handles, chained through node->hnext */
	size_t mask;                    /* number of buckets - 1 */
	size_t size;                    /* nodes */
	size_t n_lru;                   /* nodes on the LRU list */
	uint64_t tick;                  /* bumped by every match and insert */
	struct kvp_list lru;            /* lru.first is the least recently used */
	uint32_t block_tokens;
	struct kvp_slab slab;           /* the nodes */
	struct tree_ns **ns_buckets;    /* namespaces by root.lo (power of two) */
	size_t ns_mask;
	size_t n_ns;
	void (*evict_hook)(void *arg, const struct kvp_tree_node *n);   /* or NULL */
	void *evict_arg;
	void (*watch)(void *arg, const struct kvp_tree_node *n, bool added);   /* or NULL */
	void *watch_arg;
	/* the eviction policy: LRU keeps every evictable node on lru; REUSE keeps the warm
	 * ones on warm instead, and evicts from there only when its head is bonus ticks
	 * older than lru's; ghost remembers the keys evicted lately */
	enum kvp_evict_policy policy;
	struct kvp_list warm;           /* through node->lru, ascending tick */
	uint64_t bonus;
	struct kvp_ghost *ghost;
};

#define KVP_TREE_MIN_BUCKETS 16u
#define KVP_CHECK_LRU_BIT 0x80000000u
#define KVP_TREE_MIN_NS_BUCKETS 4u

#define LRU_OFF offsetof(struct kvp_tree_node, lru)
#define NLRU_OFF offsetof(struct kvp_tree_node, nlru)
#define GLRU_OFF offsetof(struct kvp_tree_node, glru)

#ifdef KVP_TREE_TEST_HASH_BITS
#define KVP_TREE_KEY_MASK ((UINT64_C(1) << (KVP_TREE_TEST_HASH_BITS)) - 1u)
static inline uint64_t tree_hash(struct kvp_key k)
{
	return k.lo & KVP_TREE_KEY_MASK;
}
static inline int tree_key_eq(struct kvp_key a, struct kvp_key b)
{
	return ((a.lo ^ b.lo) & KVP_TREE_KEY_MASK) == 0;
}
#else
static inline uint64_t tree_hash(struct kvp_key k)
{
	return k.lo;
}
static inline int tree_key_eq(struct kvp_key a, struct kvp_key b)
{
	return kvp_key_eq(a, b);
}
#endif

/* The node of handle h (0: NULL). */
static inline struct kvp_tree_node *node_at(const struct kvp_tree *t, uint32_t h)
{
	return kvp_slab_at(&t->slab, h);
}

static inline uint32_t *bucket_of(const struct kvp_tree *t, struct kvp_key k)
{
	return &t->buckets[tree_hash(k) & t->mask];
}

static inline size_t token_bytes(const struct kvp_tree *t)
{
	return (size_t)t->block_tokens * sizeof(uint32_t);
}

static inline uint32_t node_pins(const struct kvp_tree_node *n)
{
	return n->pins & NODE_PINS;
}

static inline bool node_warm(const struct kvp_tree_node *n)
{
	return (n->pins & NODE_WARM) != 0;
}

static inline int node_evictable(const struct kvp_tree_node *n)
{
	return node_pins(n) == 0 && n->children == 0;
}

/* The link at offset off (LRU_OFF, NLRU_OFF, GLRU_OFF) of node h. */
static inline struct kvp_link *link_of(const struct kvp_tree *t, uint32_t h, size_t off)
{
	return (struct kvp_link *)(void *)((char *)node_at(t, h) + off);
}

static inline uint64_t tick_of(const struct kvp_tree *t, uint32_t h)
{
	return node_at(t, h)->tick;
}

/* ---- namespaces ------------------------------------------------------------------ */

static inline size_t ns_bucket(const struct kvp_tree *t, struct kvp_key root)
{
	return (size_t)(root.lo ^ (root.hi >> 17)) & t->ns_mask;
}

static inline struct tree_ns *ns_find(const struct kvp_tree *t, struct kvp_key root)
{
	struct tree_ns *ns = t->ns_buckets[ns_bucket(t, root)];

	while (ns && !kvp_key_eq(ns->root, root))
		ns = ns->next;
	return ns;
}

#endif
