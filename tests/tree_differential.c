/*
 * tree_differential.c - the radix tree (kvp_tree_*) against the trivial model of
 * tree_test_model.c: 100,000 random matches, inserts, evictions (global, per namespace,
 * per quota group, of a subtree), pins, unpins and clears. After every operation the
 * tree's own checker runs, and its counters are compared with the model's.
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "kvp_index.h"
#include "tree_test_util.h"

/* ---- differential: the tree alone ------------------------------------------------------- */

static void check_tree_against(const struct kvp_tree *t, const struct model *m)
{
	tt_check_tree(t);
	cr_assert_eq(kvp_tree_size(t), m->alive);
	cr_assert_eq(kvp_tree_evictable(t), tt_model_n_evictable(m));
}

/* Match a prompt, then insert the blocks past the match while the tree is under limit,
 * in the model too. */
static void tree_model_insert(struct kvp_tree *t, struct model *m, const struct gen *g, int ns,
			      const uint32_t *tok, size_t len, size_t limit, uint32_t *next_id)
{
	const uint32_t b = m->b;
	size_t nb = len / b;
	struct kvp_key root = g->root[ns];
	struct kvp_tree_node *path[GEN_MAX];
	int mpath[GEN_MAX];
	size_t mm = tt_model_match(m, ns, tok, nb, mpath);
	size_t got = kvp_tree_match(t, root, tok, len, path, GEN_MAX);
	struct kvp_key key = mm ? m->v[mpath[mm - 1]].key : root;

	cr_assert_eq(got, mm);
	m->tick++;
	for (size_t i = 0; i < mm; i++)
		tt_model_touch(m, mpath[i]);
	for (size_t i = mm; i < nb && m->alive < limit; i++) {
		int parent = i ? mpath[i - 1] : -1;
		struct kvp_tree_node *n;
		int s;

		key = kvp_block_key(key, tok + i * b, b);
		cr_assert_eq(kvp_tree_insert_grouped(t, root, g->root[TREE_GROUP(ns)],
						     parent >= 0 ? m->v[parent].tn : NULL,
						     key, tok + i * b, *next_id, &n), 0);
		s = tt_model_add(m, ns, parent, tok + i * b, key, ++m->tick);
		m->v[s].tn = n;
		m->v[s].block = (*next_id)++;
		mpath[i] = s;
	}
}

/* Evict the unpinned subtree under a random cached block, and check it against the
 * model's. Returns how many blocks went. */
static size_t tree_model_evict_under(struct kvp_tree *t, struct model *m, struct rng *r,
				     size_t limit, size_t op)
{
	int top = (int)tt_rng_below(r, (uint32_t)m->slots), v;
	uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
	size_t removed = 0, n;
	bool progress = true;

	cr_assert_not_null(got);
	if (m->v[top].alive) {
		n = kvp_tree_evict_under(t, m->v[top].tn, tt_collect_id, got);
		cr_assert_eq(n, got[0]);
		/* the model: every unpinned node under top, leaf first */
		while (progress) {
			progress = false;
			for (v = 0; v < (int)m->slots; v++) {
				if (!tt_model_evictable(&m->v[v]) || !tt_model_under(m, v, top))
					continue;
				bool found = false;

				for (uint32_t i = 1; i <= got[0]; i++)
					found |= got[i] == m->v[v].block;
				cr_assert(found, "op %zu: subtree kept block %u", op,
					  m->v[v].block);
				tt_model_remove(m, v);
				removed++;
				progress = true;
			}
		}
		cr_assert_eq(got[0], removed, "op %zu: subtree evicted %u, model %zu", op,
			     got[0], removed);
	}
	free(got);
	return removed;
}

/* Clear namespace ns (root), and check the blocks that went against the model's. */
static void tree_model_clear_ns(struct kvp_tree *t, struct model *m, struct kvp_key root,
				int ns, size_t limit)
{
	uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
	size_t removed = 0;
	int v;

	cr_assert_not_null(got);
	cr_assert_eq(kvp_tree_clear_ns(t, root, tt_collect_id, got), got[0]);
	while ((v = tt_model_victim_ns(m, ns)) >= 0) {
		bool found = false;

		for (uint32_t i = 1; i <= got[0]; i++)
			found |= got[i] == m->v[v].block;
		cr_assert(found, "clear_ns kept block %u", m->v[v].block);
		tt_model_remove(m, v);
		removed++;
	}
	cr_assert_eq(got[0], removed);
	free(got);
}

/* Clear the whole tree, and check the blocks that went against the model's. */
static void tree_model_clear(struct kvp_tree *t, struct model *m, size_t limit)
{
	uint32_t *got = calloc(limit + GEN_MAX + 1, sizeof(*got));
	size_t removed = 0;
	int v;

	cr_assert_not_null(got);
	kvp_tree_clear(t, tt_collect_id, got);
	while ((v = tt_model_victim(m, -1)) >= 0) {
		bool found = false;

		for (uint32_t i = 1; i <= got[0]; i++)
			found |= got[i] == m->v[v].block;
		cr_assert(found, "clear kept block %u", m->v[v].block);
		tt_model_remove(m, v);
		removed++;
	}
	cr_assert_eq(got[0], removed);
	free(got);
}

/* Keep the tree under its limit by evicting, checking each victim. Returns how many
 * blocks went. */
static size_t tree_model_trim(struct kvp_tree *t, struct model *m, size_t limit, size_t op)
{
	size_t n_evict = 0;

	while (m->alive >= limit) {
		int v = tt_model_victim(m, -1);
		uint32_t id;

		if (v < 0)
			break;
		cr_assert_eq(kvp_tree_evict(t, &id), 0);
		cr_assert_eq(id, m->v[v].block, "op %zu: trim evicted %u, LRU is %u", op, id,
			     m->v[v].block);
		tt_model_evicted(m, v);
		tt_model_remove(m, v);
		n_evict++;
	}
	return n_evict;
}

/* 100,000 random operations against the model, under policy (REUSE: a bonus of `bonus`
 * ticks and a ghost larger than the run evicts, which the model's never forgets). */
static void random_operations(enum kvp_evict_policy policy, uint64_t bonus)
{
	const uint32_t b = 2;
	const size_t limit = 96, ops = 100000;
	struct kvp_tree *t = tt_new_tree(b);
	struct model m;
	struct gen g;
	uint32_t tok[GEN_MAX], next_id = 0;
	struct kvp_tree_node *path[GEN_MAX];
	int mpath[GEN_MAX];
	int pinned[256];
	size_t n_pinned = 0, n_evict = 0, n_hits = 0, n_evict_ns = 0, n_under = 0;
	size_t n_evict_group = 0;

	tt_model_init(&m, b, limit + GEN_MAX);
	if (policy == KVP_EVICT_REUSE) {
		cr_assert_eq(kvp_tree_set_policy(t, policy, 1u << 20, bonus), 0);
		tt_model_set_reuse(&m, bonus);
	}
	tt_gen_init(&g, 0xC0FFEE);
	for (size_t op = 0; op < ops; op++) {
		uint32_t what = tt_rng_below(&g.r, 100);
		int ns;
		size_t len = tt_gen_prompt(&g, &ns, tok, GEN_MAX), nb = len / b;
		struct kvp_key root = g.root[ns];

		if (what < 30) {                           /* match */
			size_t mm = tt_model_match(&m, ns, tok, nb, mpath);
			size_t got = kvp_tree_match(t, root, tok, len, path, GEN_MAX);

			cr_assert_eq(got, mm, "op %zu: match %zu, model %zu", op, got, mm);
			m.tick++;
			for (size_t i = 0; i < mm; i++) {
				cr_assert_eq(path[i], m.v[mpath[i]].tn);
				tt_model_touch(&m, mpath[i]);
			}
			n_hits += mm > 0;
		} else if (what < 60) {                    /* match, then insert the rest */
			tree_model_insert(t, &m, &g, ns, tok, len, limit, &next_id);
		} else if (what < 62) {                    /* evict within a group */
			int grp = TREE_GROUP(ns), v = tt_model_victim_group(&m, grp);
			uint32_t id;
			int rc = kvp_tree_evict_group(t, g.root[grp], &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: group evicted %u, its LRU is %u",
					     op, id, m.v[v].block);
				tt_model_evicted(&m, v);
				tt_model_remove(&m, v);
				n_evict++;
				n_evict_group++;
			}
		} else if (what < 64) {                    /* evict within a namespace */
			int v = tt_model_victim_ns(&m, ns);
			uint32_t id;
			int rc = kvp_tree_evict_ns(t, root, &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: ns evicted %u, its LRU is %u", op,
					     id, m.v[v].block);
				tt_model_evicted(&m, v);
				tt_model_remove(&m, v);
				n_evict++;
				n_evict_ns++;
			}
		} else if (what < 70) {                    /* evict */
			int v = tt_model_victim(&m, -1);
			uint32_t id;
			int rc = kvp_tree_evict(t, &id);

			if (v < 0) {
				cr_assert_eq(rc, KVP_EFULL);
			} else {
				cr_assert_eq(rc, 0);
				cr_assert_eq(id, m.v[v].block, "op %zu: evicted %u, LRU is %u", op,
					     id, m.v[v].block);
				tt_model_evicted(&m, v);
				tt_model_remove(&m, v);
				n_evict++;
			}
		} else if (what < 78) {                    /* pin a random cached block */
			int s = (int)tt_rng_below(&g.r, (uint32_t)m.slots);

			if (m.v[s].alive && n_pinned < 256) {
				kvp_tree_pin(t, m.v[s].tn);
				m.v[s].pins++;
				pinned[n_pinned++] = s;
				cr_assert_eq(kvp_tree_node_pins(m.v[s].tn), m.v[s].pins);
			}
		} else if (what < 90) {                    /* unpin */
			if (n_pinned) {
				size_t k = tt_rng_below(&g.r, (uint32_t)n_pinned);
				int s = pinned[k];

				pinned[k] = pinned[--n_pinned];
				kvp_tree_unpin(t, m.v[s].tn);
				m.v[s].pins--;
			}
		} else if (what < 98) {                    /* re-insert a cached block */
			int s = (int)tt_rng_below(&g.r, (uint32_t)m.slots);

			if (m.v[s].alive) {
				struct mnode *x = &m.v[s];
				struct kvp_tree_node *n;

				cr_assert_eq(kvp_tree_insert(t, g.root[x->ns],
							     x->parent >= 0 ? m.v[x->parent].tn : NULL,
							     x->key, x->tok, 999999, &n), KVP_EEXIST);
				cr_assert_eq(n, x->tn);
			}
		} else if (what == 98 && tt_rng_below(&g.r, 4) == 0) { /* evict a subtree */
			n_under += tree_model_evict_under(t, &m, &g.r, limit, op);
		} else if (what == 99 && tt_rng_below(&g.r, 2) == 0) { /* clear one namespace */
			tree_model_clear_ns(t, &m, root, ns, limit);
		} else if (what == 99 && tt_rng_below(&g.r, 20) == 0) { /* clear */
			tree_model_clear(t, &m, limit);
		}
		/* keep the tree near its limit by evicting, checking each victim */
		n_evict += tree_model_trim(t, &m, limit, op);
		check_tree_against(t, &m);
		cr_assert_eq(kvp_tree_ns_size(t, root), tt_model_ns_size(&m, ns));
		cr_assert_eq(kvp_tree_group_size(t, g.root[TREE_GROUP(ns)]),
			     tt_model_group_size(&m, TREE_GROUP(ns)));
	}
	cr_assert(n_evict > 10000 && n_hits > 10000, "evictions %zu, hits %zu", n_evict, n_hits);
	cr_assert(n_evict_ns > 500 && n_evict_group > 500 && n_under > 100,
		  "namespace evictions %zu, group %zu, subtree %zu", n_evict_ns, n_evict_group,
		  n_under);
	kvp_tree_destroy(t);
	tt_model_free(&m);
}

Test(tree_model, random_operations, .timeout = 60)
{
	random_operations(KVP_EVICT_LRU, 0);
}

/* REUSE's choice between its two lists goes both ways in the run: with a bonus of 0 a
 * warm leaf still loses ties to a colder one, with 300 it outlives many cold ones. */
Test(tree_model, random_operations_reuse, .timeout = 120)
{
	random_operations(KVP_EVICT_REUSE, 0);
	random_operations(KVP_EVICT_REUSE, 300);
}
