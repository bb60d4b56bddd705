/*
 * gone_internal.h - private to cache/: the keys of the blocks that left the pool lately,
 * in the order they left, each with why it went and the pool's eviction clock then.
 * What the miss diagnostics (diag.c) ask of a block a query did not find.
 *
 * A ring of the last `limit` departures (16 bytes each: the key's low 64 bits, why, and
 * whether it still counts), a Fenwick tree over the ring (4 bytes a departure) and an
 * open-addressed table of u32 ring positions at most 3/4 full (5.3 to 10.7 bytes a
 * departure) to find a key's latest departure: 25 to 31 bytes a departure kept; add
 * and forget O(log limit), find O(log limit). The oldest departure is forgotten as a
 * new one comes. Two blocks with the same low 64 bits of key are taken for one
 * another: a wrong reason in a diagnostic, never a wrong answer to a request.
 *
 * A block's age is what a larger pool needs to have kept it: the departures to make
 * room (KVP_GONE_POOL) after its own, counting each block once (its latest departure)
 * and not the blocks cached again since (kvp_gone_forget). Under LRU the pool's
 * evicted blocks, in order, are the next ones down an LRU stack, so a pool of
 * capacity + age + 1 blocks would have kept it.
 * Memory: plain malloc at create; nothing after. Not thread-safe (the cache's thread).
 */
#ifndef KVP_CACHE_GONE_INTERNAL_H
#define KVP_CACHE_GONE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a block left the pool. */
enum kvp_gone_why {
	KVP_GONE_POOL = 0,    /* evicted to make room */
	KVP_GONE_QUOTA = 1,   /* evicted: its tenant at its quota */
	KVP_GONE_ADMIN = 2,   /* cleared or evicted by an administrator, or a stop's flush */
};

struct kvp_gone;

/* Remembers the last limit (1 .. 2^31) departures. NULL without memory. */
struct kvp_gone *kvp_gone_create(size_t limit);
void kvp_gone_destroy(struct kvp_gone *g);
/* key left the pool now, for why. */
void kvp_gone_add(struct kvp_gone *g, uint64_t key, enum kvp_gone_why why);
/* key is cached again: its departure no longer counts, nor is it found. */
void kvp_gone_forget(struct kvp_gone *g, uint64_t key);
/* key's latest departure still remembered: true with why and its age; false when
 * none is. */
bool kvp_gone_find(const struct kvp_gone *g, uint64_t key, enum kvp_gone_why *why,
		   uint64_t *age);
size_t kvp_gone_bytes(const struct kvp_gone *g);

#endif
