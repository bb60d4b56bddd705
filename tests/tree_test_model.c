/*
 * tree_test_model.c - the trivial model the differential tests (tree_differential.c,
 * cache_differential.c) hold the tree and the cache to, and their prompt generator.
 *
 * The model is a flat array of cached blocks (namespace, parent, tokens, pins, children,
 * last-use tick), matched by linear scan, evicting the least recently used unpinned leaf
 * by a linear minimum. Declared in tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_index.h"
#include "tree_test_util.h"

/* ---- the model ----------------------------------------------------------------------------- */

void tt_model_init(struct model *m, uint32_t b, size_t slots)
{
	m->b = b;
	m->slots = slots;
	m->alive = 0;
	m->tick = 0;
	m->v = calloc(slots, sizeof(*m->v));
	cr_assert_not_null(m->v);
	for (size_t i = 0; i < slots; i++) {
		m->v[i].tok = malloc(b * sizeof(uint32_t));
		cr_assert_not_null(m->v[i].tok);
	}
}

void tt_model_free(struct model *m)
{
	for (size_t i = 0; i < m->slots; i++)
		free(m->v[i].tok);
	free(m->v);
}

static int model_child(const struct model *m, int ns, int parent, const uint32_t *blk)
{
	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (x->alive && x->ns == ns && x->parent == parent &&
		    memcmp(x->tok, blk, m->b * sizeof(uint32_t)) == 0)
			return (int)i;
	}
	return -1;
}

/* Longest cached prefix: slots into path[], returns its length in blocks. */
size_t tt_model_match(const struct model *m, int ns, const uint32_t *tok, size_t nb,
		      int *path)
{
	int parent = -1;
	size_t i;

	for (i = 0; i < nb; i++) {
		int c = model_child(m, ns, parent, tok + i * m->b);

		if (c < 0)
			break;
		path[i] = parent = c;
	}
	return i;
}

bool tt_model_evictable(const struct mnode *x)
{
	return x->alive && x->pins == 0 && x->children == 0;
}

size_t tt_model_n_evictable(const struct model *m)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += tt_model_evictable(&m->v[i]);
	return n;
}

/* The least recently used unpinned leaf other than `except`, or -1. Ticks of
 * evictable leaves are distinct (each tick touches one root path, and of a path only
 * its deepest node can be a leaf), so "least" is never ambiguous: asserted. */
int tt_model_victim(const struct model *m, int except)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (!tt_model_evictable(x) || (int)i == except)
			continue;
		if (best >= 0)
			cr_assert_neq(x->tick, m->v[best].tick, "LRU tie");
		if (best < 0 || x->tick < m->v[best].tick)
			best = (int)i;
	}
	return best;
}

/* The same within namespace ns: what kvp_tree_evict_ns must pick. */
int tt_model_victim_ns(const struct model *m, int ns)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (tt_model_evictable(x) && x->ns == ns && (best < 0 || x->tick < m->v[best].tick))
			best = (int)i;
	}
	return best;
}

/* The same within quota group grp (TREE_GROUP): what kvp_tree_evict_group must pick. */
int tt_model_victim_group(const struct model *m, int grp)
{
	int best = -1;

	for (size_t i = 0; i < m->slots; i++) {
		const struct mnode *x = &m->v[i];

		if (tt_model_evictable(x) && TREE_GROUP(x->ns) == grp &&
		    (best < 0 || x->tick < m->v[best].tick))
			best = (int)i;
	}
	return best;
}

size_t tt_model_group_size(const struct model *m, int grp)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += m->v[i].alive && TREE_GROUP(m->v[i].ns) == grp;
	return n;
}

size_t tt_model_ns_size(const struct model *m, int ns)
{
	size_t n = 0;

	for (size_t i = 0; i < m->slots; i++)
		n += m->v[i].alive && m->v[i].ns == ns;
	return n;
}

bool tt_model_under(const struct model *m, int s, int top)
{
	for (; s >= 0; s = m->v[s].parent)
		if (s == top)
			return true;
	return false;
}

int tt_model_add(struct model *m, int ns, int parent, const uint32_t *blk,
		 struct kvp_key key, uint64_t tick)
{
	for (size_t i = 0; i < m->slots; i++) {
		struct mnode *x = &m->v[i];

		if (x->alive)
			continue;
		x->alive = true;
		x->ns = ns;
		x->parent = parent;
		x->children = 0;
		x->pins = 0;
		x->tick = tick;
		x->block = UINT32_MAX;
		x->key = key;
		x->tn = NULL;
		memcpy(x->tok, blk, m->b * sizeof(uint32_t));
		if (parent >= 0)
			m->v[parent].children++;
		m->alive++;
		return (int)i;
	}
	cr_assert_fail("model full");
	return -1;
}

void tt_model_remove(struct model *m, int s)
{
	struct mnode *x = &m->v[s];

	cr_assert(tt_model_evictable(x));
	x->alive = false;
	if (x->parent >= 0)
		m->v[x->parent].children--;
	m->alive--;
}

/* ---- the prompt generator (see GEN_* in tree_test_util.h) ---------------------------- */

void tt_gen_init(struct gen *g, uint64_t seed)
{
	g->r.s = seed;
	for (int n = 0; n < GEN_NS; n++) {
		g->root[n] = kvp_ns_root("model", (uint32_t)n, NULL);
		for (int s = 0; s < GEN_STEMS; s++)
			for (int i = 0; i < GEN_MAX; i++)
				g->stem[n][s][i] = tt_rng_below(&g->r, 4);
	}
}

size_t tt_gen_prompt(struct gen *g, int *ns, uint32_t *tok, size_t max)
{
	int n = (int)tt_rng_below(&g->r, GEN_NS), s = (int)tt_rng_below(&g->r, GEN_STEMS);
	size_t len = tt_rng_below(&g->r, (uint32_t)max + 1);
	uint32_t kind = tt_rng_below(&g->r, 10);

	memcpy(tok, g->stem[n][s], len * sizeof(*tok));
	if (kind < 2 && len > 0) {
		tok[tt_rng_below(&g->r, (uint32_t)len)] = tt_rng_below(&g->r, 4);
	} else if (kind < 4 && len > 0) {
		size_t cut = tt_rng_below(&g->r, (uint32_t)len);
		int s2 = (int)tt_rng_below(&g->r, GEN_STEMS);

		memcpy(tok + cut, g->stem[n][s2] + cut, (len - cut) * sizeof(*tok));
	}
	*ns = n;
	return len;
}
