/*
 * gone.c - the ring of departures and its index: a linear-probing table of ring
 * positions + 1 (0: an empty slot), deleted from by shifting back the entries after
 * the hole, so no tombstones build up; and a Fenwick tree over the ring's positions
 * counting the departures that still count for ages.
 */
#include <stdlib.h>

#include "gone_internal.h"

struct departure {
	uint64_t key;
	uint32_t why;
	uint32_t live;            /* counted in ages (a departure to make room, the latest of
	                             its key, not cached again since) */
};

struct kvp_gone {
	struct departure *ring;   /* (limit) */
	uint32_t *fen;            /* (limit + 1) Fenwick tree of ring[].live */
	uint32_t *slots;          /* (mask + 1) ring position + 1, or 0 */
	size_t limit;
	size_t mask;
	uint64_t added;           /* departures so far: the next goes to added % limit */
};

static inline size_t home(const struct kvp_gone *g, uint64_t key)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 21) & g->mask;
}

struct kvp_gone *kvp_gone_create(size_t limit)
{
	struct kvp_gone *g;
	size_t slots = 16;

	if (limit == 0 || limit > (1u << 31))
		return NULL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->limit = limit;
	while (3 * slots < 4 * limit)   /* at most 3/4 full */
		slots *= 2;
	g->mask = slots - 1;
	g->ring = malloc(limit * sizeof(*g->ring));
	g->fen = calloc(limit + 1, sizeof(*g->fen));
	g->slots = calloc(slots, sizeof(*g->slots));
	if (!g->ring || !g->fen || !g->slots) {
		kvp_gone_destroy(g);
		return NULL;
	}
	return g;
}

void kvp_gone_destroy(struct kvp_gone *g)
{
	if (!g)
		return;
	free(g->ring);
	free(g->fen);
	free(g->slots);
	free(g);
}

size_t kvp_gone_bytes(const struct kvp_gone *g)
{
	return sizeof(*g) + g->limit * (sizeof(*g->ring) + sizeof(*g->fen)) +
	       (g->mask + 1) * sizeof(*g->slots);
}

/* ---- the count of live departures ------------------------------------------------ */

static void fen_add(struct kvp_gone *g, size_t pos, int32_t d)
{
	for (size_t i = pos + 1; i <= g->limit; i += i & (~i + 1))
		g->fen[i] += (uint32_t)d;
}

/* Live departures at ring positions [0, end). */
static uint64_t fen_prefix(const struct kvp_gone *g, size_t end)
{
	uint64_t s = 0;

	for (size_t i = end; i > 0; i -= i & (~i + 1))
		s += g->fen[i];
	return s;
}

static void set_dead(struct kvp_gone *g, size_t pos)
{
	if (g->ring[pos].live) {
		g->ring[pos].live = 0;
		fen_add(g, pos, -1);
	}
}

/* ---- the index of keys ------------------------------------------------------------- */

/* The slot holding key's entry, or the empty slot where its probe ends. */
static size_t slot_of(const struct kvp_gone *g, uint64_t key)
{
	size_t s = home(g, key);

	while (g->slots[s] && g->ring[g->slots[s] - 1].key != key)
		s = (s + 1) & g->mask;
	return s;
}

/* Empty slot hole, then move back each entry after it that may sit there. */
static void slot_delete(struct kvp_gone *g, size_t hole)
{
	size_t s = hole;

	g->slots[hole] = 0;
	for (;;) {
		size_t h;

		s = (s + 1) & g->mask;
		if (!g->slots[s])
			return;
		h = home(g, g->ring[g->slots[s] - 1].key);
		/* the entry at s may fill the hole unless its home lies in (hole, s] */
		if (((s - h) & g->mask) >= ((s - hole) & g->mask)) {
			g->slots[hole] = g->slots[s];
			g->slots[s] = 0;
			hole = s;
		}
	}
}

/* ---- departures ---------------------------------------------------------------------- */

void kvp_gone_add(struct kvp_gone *g, uint64_t key, enum kvp_gone_why why)
{
	const size_t pos = (size_t)(g->added % g->limit);
	size_t s;

	if (g->added >= g->limit) {   /* the oldest is forgotten */
		set_dead(g, pos);
		s = slot_of(g, g->ring[pos].key);
		if (g->slots[s] == pos + 1)
			slot_delete(g, s);
	}
	s = slot_of(g, key);
	if (g->slots[s])                 /* an earlier departure of key: this one replaces it */
		set_dead(g, g->slots[s] - 1);
	g->ring[pos].key = key;
	g->ring[pos].why = why;
	g->ring[pos].live = 0;
	if (why == KVP_GONE_POOL) {
		g->ring[pos].live = 1;
		fen_add(g, pos, 1);
	}
	g->slots[s] = (uint32_t)(pos + 1);
	g->added++;
}

void kvp_gone_forget(struct kvp_gone *g, uint64_t key)
{
	size_t s = slot_of(g, key);

	if (!g->slots[s])
		return;
	set_dead(g, g->slots[s] - 1);
	slot_delete(g, s);
}

bool kvp_gone_find(const struct kvp_gone *g, uint64_t key, enum kvp_gone_why *why,
		   uint64_t *age)
{
	const size_t head = (size_t)(g->added % g->limit);
	size_t s = slot_of(g, key), pos;

	if (!g->slots[s])
		return false;
	pos = g->slots[s] - 1;
	*why = (enum kvp_gone_why)g->ring[pos].why;
	/* the live departures after pos, up to the newest (just before head) */
	if (pos < head)
		*age = fen_prefix(g, head) - fen_prefix(g, pos + 1);
	else
		*age = fen_prefix(g, g->limit) - fen_prefix(g, pos + 1) + fen_prefix(g, head);
	return true;
}
