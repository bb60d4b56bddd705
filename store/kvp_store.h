/*
 * kvp_store.h - the block pool: fixed capacity, free list, per-block reference counts.
 *
 *   state        refs  on free list   meaning
 *   FREE           0       yes        no one holds it
 *   CACHED         0       no         resident in the index, evictable
 *   REFERENCED    >=1      no         pinned by a lease or in use by a request
 *
 *   alloc:   FREE -> REFERENCED(1)          ref:   CACHED|REFERENCED -> REFERENCED(+1)
 *   unref:   REFERENCED(1) -> CACHED        put:   REFERENCED(1) -> FREE (never cached)
 *   evict:   CACHED -> FREE
 *
 * Invariant (kvp_pool_check): free + cached + referenced == total at every step.
 * In index-only mode a block is only an id; no KV bytes exist.
 * Threading: not thread-safe; one owner thread. Allocation only at create time.
 */
#ifndef KVP_STORE_H
#define KVP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

enum kvp_block_state {
	KVP_BLOCK_FREE = 0,
	KVP_BLOCK_CACHED = 1,
	KVP_BLOCK_REFERENCED = 2,
};

struct kvp_pool;

struct kvp_pool_counts {
	uint32_t total;
	uint32_t free;
	uint32_t cached;
	uint32_t referenced;
};

/* Allocation hooks for store/ (default: libc). NULLs restore the default. */
void kvp_store_set_allocator(void *(*alloc)(size_t), void (*release)(void *));

/* A pool of capacity blocks (1..2^31). KVP_EINVAL, KVP_ENOMEM. */
int kvp_pool_create(uint32_t capacity, struct kvp_pool **out);
void kvp_pool_destroy(struct kvp_pool *p);

/* Take a free block: 0 and *id (now REFERENCED, refs 1), or KVP_EFULL. */
int kvp_pool_alloc(struct kvp_pool *p, uint32_t *id);
/* Add a reference to a CACHED or REFERENCED block. KVP_EINVAL on a FREE or bad id. */
int kvp_pool_ref(struct kvp_pool *p, uint32_t id);
/* Drop a reference; the last one leaves the block CACHED. KVP_EINVAL if not referenced. */
int kvp_pool_unref(struct kvp_pool *p, uint32_t id);
/* Drop the last reference of a block that was never cached: back to FREE. */
int kvp_pool_put(struct kvp_pool *p, uint32_t id);
/* Return an unreferenced CACHED block to the free list. KVP_EINVAL otherwise. */
int kvp_pool_evict(struct kvp_pool *p, uint32_t id);

/* Give every block block_bytes of host memory (one page-aligned mapping, zeroed, in
 * huge pages where allowed, made resident: its first 64 MiB before this returns, the
 * rest by a thread of the pool's that destroy stops and joins). Call once, before blocks
 * are used. KVP_ENOMEM (the mapping, or the memory of its first 64 MiB), KVP_EINVAL
 * (already attached, or capacity x block_bytes overflows). Index-only pools have none. */
#define KVP_POOL_RESIDENT_AT_ATTACH (64u << 20)
int kvp_pool_attach_memory(struct kvp_pool *p, size_t block_bytes);
/* The same on the GPU (store/pool_device.c): one device allocation of capacity x
 * block_bytes (zeroed), block i at base + i * block_bytes as on the host, and a page-locked
 * staging buffer of one block for kvp_pool_block_read/write. KVP_EUNSUPPORTED (built
 * without CUDA), KVP_ENOMEM (device memory), KVP_EINVAL as above. */
int kvp_pool_attach_device(struct kvp_pool *p, size_t block_bytes);
/* Whether the block bytes are device memory. */
bool kvp_pool_on_device(const struct kvp_pool *p);
/* Copy a block's bytes out to / in from host memory (block_bytes), through the staging
 * buffer for a device pool. KVP_EINVAL (bad id, no memory), KVP_EIO. */
int kvp_pool_block_read(const struct kvp_pool *p, uint32_t id, void *dst);
int kvp_pool_block_write(struct kvp_pool *p, uint32_t id, const void *src);
/* Base of a block's bytes (a device address for a device pool) (stable for the pool's life), or NULL without memory. Any
 * thread may use the bytes of a block it was handed; the metadata stays single-owner. */
void *kvp_pool_block_data(const struct kvp_pool *p, uint32_t id);
size_t kvp_pool_block_bytes(const struct kvp_pool *p);

enum kvp_block_state kvp_pool_state(const struct kvp_pool *p, uint32_t id);
uint32_t kvp_pool_refs(const struct kvp_pool *p, uint32_t id);
struct kvp_pool_counts kvp_pool_counts(const struct kvp_pool *p);
/* Recount every block and compare with the counters: 0 or KVP_EINTERNAL. O(capacity). */
int kvp_pool_check(const struct kvp_pool *p);

#endif
