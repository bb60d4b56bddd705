/*
 * diag_internal.h - private to cache/: the miss diagnostics of kvp_cache.h (enum
 * kvp_fate, struct kvp_cache_miss, kvp_cache_explain). cache.c tells it every block
 * that enters the tree and every block that leaves (and why); it answers for a query
 * what became of the blocks after its match.
 *
 *   added(node)  ──▶ contents: count[content key]++     (kvp_content_key: the prefix
 *                                                          without its namespace)
 *   removed(node, why) ──▶ gone.c: the departure, why and in what order;
 *                          contents: count[content key]--
 *
 * A block not cached in its namespace whose content key is counted is cached in
 * another namespace (up to 64-bit collisions).
 *
 * Memory: plain malloc at create, nothing after.
 * Threading: the cache's.
 */
#ifndef KVP_CACHE_DIAG_INTERNAL_H
#define KVP_CACHE_DIAG_INTERNAL_H

#include "gone_internal.h"
#include "kvp_cache.h"

struct kvp_diag;

/* For a pool of capacity blocks of block_tokens tokens. NULL without memory. */
struct kvp_diag *kvp_diag_create(uint32_t capacity, uint32_t block_tokens);
void kvp_diag_destroy(struct kvp_diag *d);
void kvp_diag_added(struct kvp_diag *d, const struct kvp_tree_node *n);
void kvp_diag_removed(struct kvp_diag *d, const struct kvp_tree_node *n, enum kvp_gone_why why);
/* The query of n_tokens tokens under root that matched `matched` blocks, the last of
 * them last (NULL when none): out filled as kvp_cache_miss says. */
void kvp_diag_query(const struct kvp_diag *d, const struct kvp_tree_node *last,
		    struct kvp_key root, const uint32_t *tokens, size_t n_tokens, size_t matched,
		    struct kvp_cache_miss *out);
/* kvp_cache_explain's work (n_tokens already checked). 0. */
int kvp_diag_explain(const struct kvp_diag *d, const struct kvp_tree *t, struct kvp_key root,
		     const uint32_t *tokens, size_t n_tokens, uint8_t *fates, uint64_t *ages,
		     size_t *n_out);
size_t kvp_diag_bytes(const struct kvp_diag *d);

#endif
