/*
 * kvp_index.h - chunking, chained block keys and the radix tree of cached blocks.
 *
 * A token sequence is cut into blocks of B tokens (1..KVP_BLOCK_TOKENS_MAX); only full
 * blocks are cached. Block i's key is
 *
 *     k_i = XXH3-128( canon(k_{i-1}) || tokens_i as u32 little-endian )
 *
 * where canon() is xxHash's 16-byte canonical (big-endian) form and k_{-1} is the
 * namespace root (kvp_ns_root). docs/hashing.md gives the byte layout and
 * known-answer vectors.
 *
 * The tree holds one node per cached block: its key, its parent, a copy of its B
 * tokens and the block id it owns (an opaque u32; the index knows nothing of KV).
 * A match compares the key, the parent and the tokens, so a hash collision can only
 * cost a miss. Leaves that no one pins sit on an LRU list and are evicted first.
 *
 * Threading: a tree is not thread-safe; one thread (the daemon's event loop) owns it.
 * Memory: every allocation goes through kvp_index_alloc hooks (kvp_index_set_allocator)
 * so tests can inject failure; a failed allocation leaves the tree unchanged.
 */
#ifndef KVP_INDEX_H
#define KVP_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

#define KVP_BLOCK_TOKENS_MAX 4096u

/* A 128-bit block key: the XXH128_hash_t value (low64, high64). */
struct kvp_key {
	uint64_t lo;
	uint64_t hi;
};

static inline bool kvp_key_eq(struct kvp_key a, struct kvp_key b)
{
	return a.lo == b.lo && a.hi == b.hi;
}

/* Namespace root: XXH3-128 over "kvprefix/ns/v1" || u32le len(model) || model ||
 * u32le tenant || u32le len(adapter) || adapter. NULL strings count as "". */
struct kvp_key kvp_ns_root(const char *model, uint32_t tenant, const char *adapter);

/* Key of one block of n tokens under parent. n <= KVP_BLOCK_TOKENS_MAX. Never
 * allocates; blocks over 56 tokens use a 16 KiB stack buffer. */
struct kvp_key kvp_block_key(struct kvp_key parent, const uint32_t *tokens, uint32_t n);

/* A block's content key: the low 64 bits of kvp_block_key({ parent, KVP_CONTENT_SALT },
 * tokens, n), chained from parent 0 at the first block, so without any namespace: the
 * same prefix has the same content key in every namespace. For diagnostics (which
 * namespace holds these tokens too), never for a match. */
#define KVP_CONTENT_SALT 0x746e65746e6f632dull   /* "-content" */
static inline uint64_t kvp_content_key(uint64_t parent, const uint32_t *tokens, uint32_t n)
{
	return kvp_block_key((struct kvp_key){ parent, KVP_CONTENT_SALT }, tokens, n).lo;
}

/* Keys of the first n_blocks full blocks of tokens (block size b), written to out. */
void kvp_chain_keys(struct kvp_key root, const uint32_t *tokens, size_t n_blocks,
		    uint32_t b, struct kvp_key *out);

/* Allocation hooks for index/ (default: libc). Pass NULLs to restore the default.
 * Set them before any tree exists: nodes are freed through the hook current then. */
void kvp_index_set_allocator(void *(*alloc)(size_t), void (*release)(void *));

struct kvp_tree;
struct kvp_tree_node;

/* Create a tree for blocks of block_tokens tokens. Returns KVP_EINVAL for a block size
 * outside 1..KVP_BLOCK_TOKENS_MAX, KVP_ENOMEM. *out owned by the caller. */
int kvp_tree_create(uint32_t block_tokens, struct kvp_tree **out);
/* Free the tree and all its nodes (block ids are simply forgotten). NULL is fine. */
void kvp_tree_destroy(struct kvp_tree *t);

uint32_t kvp_tree_block_tokens(const struct kvp_tree *t);
size_t kvp_tree_size(const struct kvp_tree *t);          /* nodes in the tree */
size_t kvp_tree_evictable(const struct kvp_tree *t);     /* unpinned leaves on the LRU */
/* The allocations holding the nodes (they live in slabs of slots, not one allocation a
 * node): they grow with the most nodes the tree has held at once and are given back
 * by kvp_tree_destroy. For memory accounting and its tests. */
size_t kvp_tree_node_allocations(const struct kvp_tree *t);

/*
 * Longest cached prefix of the full blocks of tokens[0..n_tokens) under root.
 * Never allocates. Writes the matched nodes, root first, to path[] (room for
 * max_nodes; matching stops there) and returns how many blocks matched. Matched nodes
 * count as used now for LRU purposes. Keys are computed here (one block ahead of the
 * probes), so the caller need not hash.
 */
size_t kvp_tree_match(struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens,
		      size_t n_tokens, struct kvp_tree_node **path, size_t max_nodes);

/* How many leading full blocks of tokens are cached under root, as kvp_tree_match
 * counts them, but touching nothing: no node counts as used. For diagnostics. */
size_t kvp_tree_peek(const struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens);

/*
 * Add one block under parent (NULL: directly under root) with the given key (computed
 * from parent's key, or root, by kvp_block_key) and tokens (block_tokens of them,
 * copied). The new node is unpinned and becomes an evictable leaf; parent stops being
 * one. Returns 0 and *out = the new node; KVP_EEXIST and *out = the existing node when
 * the same block (key, parent, tokens) is already there; KVP_ENOMEM. A different
 * block with an equal key is not "the same": both are kept (collisions are allowed).
 * A non-NULL parent must belong to namespace root (asserted).
 */
int kvp_tree_insert(struct kvp_tree *t, struct kvp_key root, struct kvp_tree_node *parent,
		    struct kvp_key key, const uint32_t *tokens, uint32_t block_id,
		    struct kvp_tree_node **out);

/* Pin / unpin a node: a pinned node (or any ancestor of one) is never evicted. */
void kvp_tree_pin(struct kvp_tree *t, struct kvp_tree_node *n);
void kvp_tree_unpin(struct kvp_tree *t, struct kvp_tree_node *n);

/* Evict the policy's next unpinned leaf (LRU: the least recently used): returns 0 and
 * its block id, or KVP_EFULL when nothing can be evicted. Its parent may become an
 * evictable leaf. */
int kvp_tree_evict(struct kvp_tree *t, uint32_t *block_id);

/*
 * Which leaf kvp_tree_evict (and the quota evictions' hook, kvp_tree_evict_group and
 * _ns, remember for the ghost) takes. Both policies are leaf-first and prefix-closed.
 *   KVP_EVICT_LRU     the least recently used unpinned leaf (the default)
 *   KVP_EVICT_REUSE   blocks used again since they were cached, or cached again while
 *                     the ghost remembered their key (the last `ghost` to 2 x `ghost`
 *                     keys evicted), are warm: a warm leaf goes only when it is `bonus`
 *                     ticks (matches and inserts) older than the coldest other leaf.
 *                     Blocks seen once go first. The ghost takes 21 to 43 bytes for
 *                     each of `ghost`.
 * Set it before the first insert: KVP_EINVAL otherwise (or for an unknown policy),
 * KVP_ENOMEM. Quota evictions (evict_group, evict_ns) stay least recently used first.
 */
enum kvp_evict_policy {
	KVP_EVICT_LRU = 0,
	KVP_EVICT_REUSE = 1,
};
int kvp_tree_set_policy(struct kvp_tree *t, enum kvp_evict_policy policy, size_t ghost,
			uint64_t bonus);
/* REUSE as a pool of capacity blocks runs it: a ghost of 8 x capacity keys, a bonus of
 * 4 x capacity ticks. Measured with kvprefix-bench replay --offline (docs/eviction.md):
 * above LRU at every pool size from 1% to 100% of the shared trace's blocks. */
#define KVP_REUSE_GHOST_PER_BLOCK 8u
#define KVP_REUSE_BONUS_PER_BLOCK 4u
int kvp_tree_set_policy_for(struct kvp_tree *t, enum kvp_evict_policy policy, size_t capacity);

/* Remove every unpinned node, leaf first, calling cb for each block id freed. Unpinned
 * ancestors of pinned nodes stay (the tree is prefix-closed). cb may be NULL and must
 * not call into the tree. Iterative: no depth limit. */
void kvp_tree_clear(struct kvp_tree *t, void (*cb)(void *arg, uint32_t block_id), void *arg);

/*
 * Namespaces (all the nodes under one root). Each keeps its node count and its own LRU
 * of evictable nodes, so quotas and clears need no walk over other namespaces.
 */
size_t kvp_tree_ns_size(const struct kvp_tree *t, struct kvp_key root);   /* nodes */
size_t kvp_tree_ns_count(const struct kvp_tree *t);   /* namespace and group records */

/*
 * Groups: the unit of a quota, a set of namespaces (e.g. every adapter of one tenant).
 * A namespace joins the group named at its first insert (kvp_tree_insert_grouped; with
 * kvp_tree_insert a namespace is its own group) and stays in it while it has nodes.
 * The group keeps a node count and an LRU of its namespaces' evictable nodes.
 */
int kvp_tree_insert_grouped(struct kvp_tree *t, struct kvp_key root, struct kvp_key group,
			    struct kvp_tree_node *parent, struct kvp_key key,
			    const uint32_t *tokens, uint32_t block_id, struct kvp_tree_node **out);
size_t kvp_tree_group_size(const struct kvp_tree *t, struct kvp_key group);   /* nodes */
/* The group namespace root belongs to: KVP_OK, or KVP_ENOTFOUND while it has no node. */
int kvp_tree_ns_group(const struct kvp_tree *t, struct kvp_key root, struct kvp_key *group);
/* kvp_tree_evict within a group: the least recently used unpinned leaf of any of its
 * namespaces; KVP_EFULL when there is none. */
int kvp_tree_evict_group(struct kvp_tree *t, struct kvp_key group, uint32_t *block_id);
/* kvp_tree_evict within namespace root: its least recently used unpinned leaf. */
int kvp_tree_evict_ns(struct kvp_tree *t, struct kvp_key root, uint32_t *block_id);
/* kvp_tree_clear within namespace root; returns how many nodes went. */
size_t kvp_tree_clear_ns(struct kvp_tree *t, struct kvp_key root,
			 void (*cb)(void *arg, uint32_t block_id), void *arg);
/* Evict every unpinned node of the subtree under top (top included), leaf first;
 * pinned nodes and their ancestors stay. top is invalid afterwards if it went (the
 * count says nothing of which: check with a new match). O(evictable leaves of the
 * namespace x depth): an administrative operation, not a request path. */
size_t kvp_tree_evict_under(struct kvp_tree *t, struct kvp_tree_node *top,
			    void (*cb)(void *arg, uint32_t block_id), void *arg);
/* Called with each node that kvp_tree_evict, _evict_group or _evict_ns (evictions to
 * make room) is about to remove, before it goes: what a lower tier keeps. Not called
 * by the clears or the evictions an administrator asks for. fn must not call into the
 * tree. NULL fn: none. */
void kvp_tree_set_evict_hook(struct kvp_tree *t,
			     void (*fn)(void *arg, const struct kvp_tree_node *n), void *arg);
/* Called with every node once it is inserted (added true) and with every node about
 * to be removed, for whatever reason (evictions, clears; added false), while its key,
 * tokens and parent are still valid; not by kvp_tree_destroy. A node's parent is
 * reported added before it and removed after it. fn must not call into the tree.
 * NULL fn: none. */
void kvp_tree_set_watch(struct kvp_tree *t,
			void (*fn)(void *arg, const struct kvp_tree_node *n, bool added), void *arg);
/* Evict n itself if it is an unpinned leaf: 0 and its block id, else KVP_EBUSY. */
int kvp_tree_evict_node(struct kvp_tree *t, struct kvp_tree_node *n, uint32_t *block_id);

struct kvp_key kvp_tree_node_key(const struct kvp_tree_node *n);
struct kvp_key kvp_tree_node_root(const struct kvp_tree_node *n);   /* its namespace */
uint32_t kvp_tree_node_block(const struct kvp_tree_node *n);
uint32_t kvp_tree_node_pins(const struct kvp_tree_node *n);
struct kvp_tree_node *kvp_tree_node_parent(const struct kvp_tree_node *n);
const uint32_t *kvp_tree_node_tokens(const struct kvp_tree_node *n);
uint64_t kvp_tree_node_content(const struct kvp_tree_node *n);   /* kvp_content_key */

/* Walk every structural invariant (links, LRU membership, counts). 0, KVP_EINTERNAL, or
 * KVP_ENOMEM when its scratch array (a word a node, from malloc, not the hooks) cannot
 * be had. O(nodes); writes check-only tallies in the namespace records, so it is not
 * safe to run concurrently with anything else on the tree (nothing is, see Threading). */
int kvp_tree_check(const struct kvp_tree *t);

#endif
