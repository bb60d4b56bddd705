/*
 * kvp_cache.h - the index and the pool working together, with leases and counters.
 *
 * This is everything kvprefixd does to a request short of I/O, so that tests can drive
 * it directly. It ties each tree node to one pool block:
 *
 *     tree node (key, parent, tokens, block id) ──▶ pool block id
 *     node pinned k times  <=>  pool block REFERENCED with k references
 *     node unpinned        <=>  pool block CACHED (evictable once it is a leaf)
 *
 * lookup  : match the longest verified prefix; with pin, every matched block is pinned
 *           under a new lease that belongs to `owner` (a connection).
 * insert  : match, then add the remaining full blocks, taking free blocks from the pool
 *           and evicting least recently used unpinned leaves when it is empty. When
 *           nothing is evictable, it stops early (what fit is cached) and says so.
 * release : unpin a lease; release_owner unpins every lease of an owner (disconnect).
 *
 * Threading: one owner thread. Memory: a lookup without pin never allocates; a failed
 * allocation returns KVP_ENOMEM with every structure valid: a lookup changes nothing,
 * an insert keeps the blocks it added before the failure (res says how many).
 */
#ifndef KVP_CACHE_H
#define KVP_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_index.h"
#include "kvp_store.h"

struct kvp_cache;

struct kvp_cache_config {
	uint32_t block_tokens;      /* 1..KVP_BLOCK_TOKENS_MAX */
	uint32_t capacity_blocks;   /* pool size */
	uint32_t max_tokens;        /* longest request accepted */
	uint32_t max_leases;        /* leases one owner may hold at once */
};

struct kvp_cache_result {
	uint32_t matched_tokens;    /* lookup: cached prefix before the call; insert: after */
	uint32_t prompt_tokens;
	uint32_t new_blocks;        /* insert: blocks added */
	uint32_t n_blocks;          /* block ids written to the caller's array */
	uint64_t lease;             /* 0 unless pinned */
	bool pool_full;             /* insert stopped early: nothing left to evict */
};

struct kvp_cache_stats {
	uint64_t lookups;           /* LOOKUP requests */
	uint64_t lookup_hits;       /* lookups that matched at least one block */
	uint64_t query_tokens;      /* tokens looked up */
	uint64_t hit_tokens;        /* of those, tokens served from cache */
	uint64_t inserts;
	uint64_t insert_tokens;
	uint64_t inserted_blocks;
	uint64_t insert_full;       /* inserts cut short by a pool full of pinned blocks */
	uint64_t evictions;
	uint64_t leases_active;
	uint64_t leases_total;
	struct kvp_pool_counts pool;
	size_t tree_nodes;
};

int kvp_cache_create(const struct kvp_cache_config *cfg, struct kvp_cache **out);
void kvp_cache_destroy(struct kvp_cache *c);
uint32_t kvp_cache_block_tokens(const struct kvp_cache *c);

/* block_ids: room for n_tokens / block_tokens ids. owner != 0 is needed for pin.
 * KVP_ETOOBIG when n_tokens > max_tokens, KVP_EBUSY when owner already holds
 * max_leases, KVP_ENOMEM. */
int kvp_cache_lookup(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res);
int kvp_cache_insert(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res);
/* KVP_ENOTFOUND unless the lease exists and belongs to owner. */
int kvp_cache_release(struct kvp_cache *c, uint64_t owner, uint64_t lease, uint32_t *n_blocks);
/* Release every lease of owner; returns how many. */
size_t kvp_cache_release_owner(struct kvp_cache *c, uint64_t owner);

void kvp_cache_get_stats(const struct kvp_cache *c, struct kvp_cache_stats *st);
/* Pool invariant, tree invariants, and node pins == pool references for every node.
 * 0, KVP_EINTERNAL, or KVP_ENOMEM for its O(capacity) scratch array. */
int kvp_cache_check(const struct kvp_cache *c);

#endif
