/*
 * ghost_internal.h - private to index/: the keys of blocks evicted lately, without the
 * blocks (a ghost cache). The tree's "reuse" policy asks it whether a block it is given
 * was here before.
 *
 * Two generations of an open-addressed set of 64-bit keys (a key's low word): adds go
 * to the current one; when it holds `limit` keys the older is emptied and becomes the
 * current. So the last `limit` to 2 x `limit` keys added are remembered, in 16 bytes
 * x the power of 2 at or above 4/3 x limit (24 to 48 bytes a key remembered), each add
 * and lookup O(1). A key of another block with the same low 64 bits is taken for it: a
 * false "seen", which only keeps a block a little longer.
 *
 * Allocation through the index's hooks (alloc_internal.h). Not thread-safe.
 */
#ifndef KVP_INDEX_GHOST_INTERNAL_H
#define KVP_INDEX_GHOST_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kvp_ghost;

/* A set remembering the last limit (>= 1) keys at least. NULL without memory. */
struct kvp_ghost *kvp_ghost_create(size_t limit);
void kvp_ghost_destroy(struct kvp_ghost *g);
void kvp_ghost_add(struct kvp_ghost *g, uint64_t key);
bool kvp_ghost_has(const struct kvp_ghost *g, uint64_t key);
size_t kvp_ghost_bytes(const struct kvp_ghost *g);

#endif
