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
	memset(m, 0, sizeof(*m));
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
	free(m->ghost);
}

/* ---- REUSE: the ghost, a growing set of keys' low words (0 stored as 1) -------------- */

static size_t ghost_slot(const struct model *m, uint64_t k)
{
	size_t s = (size_t)(k * 0x9e3779b97f4a7c15ull) & (m->ghost_cap - 1);

	while (m->ghost[s] && m->ghost[s] != k)
		s = (s + 1) & (m->ghost_cap - 1);
	return s;
}

static bool ghost_has(const struct model *m, uint64_t k)
{
	return m->ghost_cap && m->ghost[ghost_slot(m, k ? k : 1)] != 0;
}

static void ghost_add(struct model *m, uint64_t k)
{
	k = k ? k : 1;
	if (2 * (m->ghost_n + 1) > m->ghost_cap) {
		uint64_t *old = m->ghost;
		size_t old_cap = m->ghost_cap;

		m->ghost_cap = old_cap ? 2 * old_cap : 1024;
		m->ghost = calloc(m->ghost_cap, sizeof(*m->ghost));
		cr_assert_not_null(m->ghost);
		for (size_t i = 0; i < old_cap; i++)
			if (old[i])
				m->ghost[ghost_slot(m, old[i])] = old[i];
		free(old);
	}
	if (!m->ghost[ghost_slot(m, k)]) {
		m->ghost[ghost_slot(m, k)] = k;
		m->ghost_n++;
	}
}

void tt_model_set_reuse(struct model *m, uint64_t bonus)
{
	m->reuse = true;
	m->bonus = bonus;
}

void tt_model_touch(struct model *m, int s)
{
	m->v[s].tick = m->tick;
	m->v[s].warm |= m->reuse;
}

void tt_model_evicted(struct model *m, int s)
{
	if (m->reuse)
		ghost_add(m, m->v[s].key.lo);
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
	if (m->reuse && best >= 0) {   /* the coldest of each class, then the rule */
		int cold = -1, warm = -1;

		for (size_t i = 0; i < m->slots; i++) {
			const struct mnode *x = &m->v[i];
			int *c = x->warm ? &warm : &cold;

			if (tt_model_evictable(x) && (int)i != except &&
			    (*c < 0 || x->tick < m->v[*c].tick))
				*c = (int)i;
		}
		if (cold >= 0 && warm >= 0)
			return m->v[cold].tick <= m->v[warm].tick + m->bonus ? cold : warm;
		return cold >= 0 ? cold : warm;
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
		x->warm = m->reuse && ghost_has(m, key.lo);
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
