/*
 * ghost.c - the evicted keys' set: two generations of linear-probing tables of 64-bit
 * keys, each at most 3/4 full. A stored key is never 0 (0 marks an empty slot): a key
 * of 0 is stored as 1.
 */
#include <string.h>

#include "alloc_internal.h"
#include "ghost_internal.h"

struct kvp_ghost {
	uint64_t *gen[2];
	size_t mask;        /* slots of a generation - 1 */
	size_t n[2];
	size_t limit;       /* keys a generation takes before the other is emptied */
	int cur;
};

static inline uint64_t slot_key(uint64_t key)
{
	return key ? key : 1;
}

static inline size_t home(const struct kvp_ghost *g, uint64_t k)
{
	return (size_t)((k * 0x9e3779b97f4a7c15ull) >> 17) & g->mask;
}

struct kvp_ghost *kvp_ghost_create(size_t limit)
{
	struct kvp_ghost *g = kvp_index_alloc(sizeof(*g));
	size_t slots = 16;

	if (!g)
		return NULL;
	memset(g, 0, sizeof(*g));
	g->limit = limit ? limit : 1;
	while (3 * slots < 4 * g->limit)   /* at most 3/4 full */
		slots *= 2;
	g->mask = slots - 1;
	g->gen[0] = kvp_index_alloc(slots * sizeof(uint64_t));
	g->gen[1] = kvp_index_alloc(slots * sizeof(uint64_t));
	if (!g->gen[0] || !g->gen[1]) {
		kvp_ghost_destroy(g);
		return NULL;
	}
	memset(g->gen[0], 0, slots * sizeof(uint64_t));
	memset(g->gen[1], 0, slots * sizeof(uint64_t));
	return g;
}

void kvp_ghost_destroy(struct kvp_ghost *g)
{
	if (!g)
		return;
	kvp_index_release(g->gen[0]);
	kvp_index_release(g->gen[1]);
	kvp_index_release(g);
}

static bool gen_has(const struct kvp_ghost *g, int i, uint64_t k)
{
	for (size_t s = home(g, k);; s = (s + 1) & g->mask) {
		if (g->gen[i][s] == k)
			return true;
		if (g->gen[i][s] == 0)
			return false;
	}
}

bool kvp_ghost_has(const struct kvp_ghost *g, uint64_t key)
{
	uint64_t k = slot_key(key);

	return gen_has(g, g->cur, k) || gen_has(g, 1 - g->cur, k);
}

void kvp_ghost_add(struct kvp_ghost *g, uint64_t key)
{
	uint64_t k = slot_key(key);
	uint64_t *t;
	size_t s;

	if (g->n[g->cur] >= g->limit) {   /* the older generation goes */
		g->cur = 1 - g->cur;
		memset(g->gen[g->cur], 0, (g->mask + 1) * sizeof(uint64_t));
		g->n[g->cur] = 0;
	}
	t = g->gen[g->cur];
	for (s = home(g, k); t[s] && t[s] != k; s = (s + 1) & g->mask)
		;
	if (!t[s]) {
		t[s] = k;
		g->n[g->cur]++;
	}
}

size_t kvp_ghost_bytes(const struct kvp_ghost *g)
{
	return sizeof(*g) + 2 * (g->mask + 1) * sizeof(uint64_t);
}
