/*
 * slab.c - slots of one fixed size named by 32-bit handles (slab_internal.h).
 */
#include <assert.h>
#include <string.h>

#include "alloc_internal.h"
#include "slab_internal.h"

/* A full-size chunk holds as many slots as fit in this many bytes, a power of two of
 * them, at least one. */
#define SLAB_CHUNK_BYTES 16384u
#define SLAB_MIN_TABLE 6u        /* chunk pointers at first, then doubled */

void kvp_slab_init(struct kvp_slab *s, size_t slot_bytes)
{
	memset(s, 0, sizeof(*s));
	s->slot = (slot_bytes + 7u) & ~(size_t)7u;
	if (s->slot < sizeof(uint32_t))
		s->slot = 8;
	while (s->shift < 16 && ((size_t)2 << s->shift) * s->slot <= SLAB_CHUNK_BYTES)
		s->shift++;
}

void kvp_slab_fini(struct kvp_slab *s)
{
	size_t slot = s->slot;
	uint32_t shift = s->shift;

	for (size_t c = 0; c < s->n_chunks; c++)
		KVP_INDEX_FREE(s->chunks[c]);
	KVP_INDEX_FREE(s->chunks);
	memset(s, 0, sizeof(*s));
	s->slot = slot;
	s->shift = shift;
}

/* Room for one more chunk pointer: the table doubled. */
static KVP_OUT_OF_LINE int table_grow(struct kvp_slab *s)
{
	size_t cap = s->cap_chunks ? 2 * s->cap_chunks : SLAB_MIN_TABLE;
	char **t = KVP_INDEX_MALLOC(cap * sizeof(*t));

	if (!t)
		return -1;
	if (s->n_chunks)
		memcpy(t, s->chunks, s->n_chunks * sizeof(*t));
	KVP_INDEX_FREE(s->chunks);
	s->chunks = t;
	s->cap_chunks = cap;
	return 0;
}

/* Chunk k, of 2^min(k, shift) slots. */
static KVP_OUT_OF_LINE char *chunk_new(const struct kvp_slab *s, uint32_t k)
{
	char *c = KVP_INDEX_MALLOC(s->slot << (k < s->shift ? k : s->shift));

	/* touching the result keeps the allocation a call from here, not a jump that
	 * would make the caller the call site */
	if (c)
		c[0] = 0;
	return c;
}

uint32_t kvp_slab_alloc(struct kvp_slab *s)
{
	uint32_t h = s->free_head, at;

	if (h) {
		memcpy(&s->free_head, kvp_slab_at(s, h), sizeof(s->free_head));
		s->live++;
		return h;
	}
	if (s->used == UINT32_MAX)
		return 0;
	if (kvp_slab_chunk_of(s, s->used, &at) == s->n_chunks) {   /* every chunk is full */
		char *c = chunk_new(s, (uint32_t)s->n_chunks);

		if (!c)
			return 0;
		if (s->n_chunks == s->cap_chunks && table_grow(s)) {
			KVP_INDEX_FREE(c);
			return 0;
		}
		s->chunks[s->n_chunks++] = c;
	}
	s->live++;
	return ++s->used;
}

void kvp_slab_free(struct kvp_slab *s, uint32_t h)
{
	assert(h && h <= s->used && s->live > 0);
	memcpy(kvp_slab_at(s, h), &s->free_head, sizeof(s->free_head));
	s->free_head = h;
	s->live--;
}
