/*
 * slab_internal.h - private to index/: slots of one fixed size, named by 32-bit handles.
 *
 * The tree keeps its nodes here so that a node can name another in 4 bytes instead of
 * a pointer's 8 (parent, hash chain, the three LRU lists) and so that a node takes its
 * exact size, with no allocator rounding.
 *
 *   handle h (1 .. 2^32 - 1) is slot i = h - 1; 0 names nothing
 *   chunks[0 .. shift-1] hold 1, 2, 4, .. 2^(shift-1) slots: slots 0 .. 2^shift - 2
 *   chunks[shift ..]     hold 2^shift slots each: the slots after those
 *
 * The first chunks grow so that a small tree holds little; then a chunk holds the
 * slots of about 16 KiB, so that what a large one holds beyond its slots stays below
 * one chunk. Chunks are allocated as the slots are first needed. Freed slots go on a
 * free list threaded through their first 4 bytes and are taken again first, so the
 * slab holds as many slots as the most it ever held at once; chunks are given back
 * only by kvp_slab_fini. A slot's address never changes while it is allocated.
 *
 * Memory: chunks and the chunk table come from the module allocator (alloc_internal.h),
 * each from one call site. A failed allocation changes nothing.
 * Not thread-safe; the tree's owner thread only.
 */
#ifndef KVP_INDEX_SLAB_INTERNAL_H
#define KVP_INDEX_SLAB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

struct kvp_slab {
	char **chunks;
	size_t n_chunks;        /* allocated */
	size_t cap_chunks;      /* room in chunks[] */
	size_t slot;            /* bytes a slot, a multiple of 8 */
	uint32_t shift;         /* 2^shift slots a chunk */
	uint32_t free_head;     /* a freed slot (its first 4 bytes: the next), or 0 */
	uint32_t used;          /* slots ever handed out: handles 1 .. used exist */
	size_t live;            /* slots allocated now */
};

/* An empty slab of slots of at least slot_bytes (rounded up to 8). Allocates nothing. */
void kvp_slab_init(struct kvp_slab *s, size_t slot_bytes);
/* Give every chunk back. The slab is empty (and usable) afterwards. */
void kvp_slab_fini(struct kvp_slab *s);

/* A slot's handle, or 0 when out of memory (or of handles). Its bytes are undefined. */
uint32_t kvp_slab_alloc(struct kvp_slab *s);
/* Give slot h (allocated) back. */
void kvp_slab_free(struct kvp_slab *s, uint32_t h);

/* The chunk of slot i and its place there. */
static inline uint32_t kvp_slab_chunk_of(const struct kvp_slab *s, uint32_t i, uint32_t *at)
{
	const uint32_t geo = (1u << s->shift) - 1;

	if (__builtin_expect(i < geo, 0)) {   /* the first few slots only */
		uint32_t k = 31u - (uint32_t)__builtin_clz(i + 1);

		*at = i + 1 - (1u << k);
		return k;
	}
	*at = (i - geo) & geo;
	return s->shift + ((i - geo) >> s->shift);
}

/* Slot h's bytes; h must be allocated (or have been: chunks stay). NULL for 0. */
static inline void *kvp_slab_at(const struct kvp_slab *s, uint32_t h)
{
	uint32_t at, c;

	if (!h)
		return NULL;
	c = kvp_slab_chunk_of(s, h - 1, &at);
	return s->chunks[c] + (size_t)at * s->slot;
}

/* The allocations the slab holds: its chunks and, with them, the chunk table. */
static inline size_t kvp_slab_allocations(const struct kvp_slab *s)
{
	return s->n_chunks ? s->n_chunks + 1 : 0;
}

#endif
