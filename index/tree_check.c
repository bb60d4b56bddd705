/*
 * tree_check.c - kvp_tree_check: every structural invariant of the tree (tree.c),
 * walked in O(nodes), for the tests and kvp_cache_check.
 */
#include <stdlib.h>
#include <string.h>

#include "kvp_index.h"
#include "tree_internal.h"

/* Conditions that must hold even in release builds; checked by kvp_tree_check. */
#define KVP_CHECK(cond)                    \
	do {                               \
		if (!(cond))               \
			return KVP_EINTERNAL; \
	} while (0)

static int table_contains(const struct kvp_tree *t, uint32_t x)
{
	const struct kvp_tree_node *n = node_at(t, x);

	for (uint32_t h = *bucket_of(t, n->key); h; h = node_at(t, h)->hnext)
		if (h == x)
			return 1;
	return 0;
}


/* ---- invariants ------------------------------------------------------------------ */

/* Is h a handle the slab has handed out? (A corrupt link must not be followed.) */
static bool handle_ok(const struct kvp_tree *t, uint32_t h)
{
	return h >= 1 && h <= t->slab.used;
}

/* Walk list l through the links at off: each node resident, in the table, once on the
 * list (the tally's bit, set here when mark), ticks ascending, links mirrored, the ends
 * right. Counts the nodes into *count (at most max). 0 or KVP_EINTERNAL. */
static int check_list(const struct kvp_tree *t, const struct kvp_list *l, size_t off,
		      uint32_t *tally, bool mark, size_t max, size_t *count)
{
	uint32_t prev = 0;
	uint64_t last_tick = 0;

	*count = 0;
	KVP_CHECK((l->first == 0) == (l->last == 0));
	for (uint32_t h = l->first; h; h = link_of(t, h, off)->next) {
		const struct kvp_tree_node *n;

		KVP_CHECK(handle_ok(t, h) && ++*count <= max);
		n = node_at(t, h);
		KVP_CHECK(n->self == h && table_contains(t, h));
		KVP_CHECK(link_of(t, h, off)->prev == prev);
		KVP_CHECK(n->tick >= last_tick);
		if (mark) {
			KVP_CHECK(!(tally[h] & KVP_CHECK_LRU_BIT));
			tally[h] |= KVP_CHECK_LRU_BIT;
		} else {
			KVP_CHECK(tally[h] & KVP_CHECK_LRU_BIT);   /* on the tree's list too */
		}
		last_tick = n->tick;
		prev = h;
	}
	KVP_CHECK(l->last == prev);
	return 0;
}

static int check_with(const struct kvp_tree *t, uint32_t *tally)
{
	size_t count = 0, on = 0, n_evictable = 0, bytes = token_bytes(t);

	/* 1. Table: every node in its own bucket, named by its own handle; the counts. */
	for (size_t i = 0; i <= t->mask; i++) {
		for (uint32_t h = t->buckets[i]; h; h = node_at(t, h)->hnext) {
			const struct kvp_tree_node *n;

			KVP_CHECK(handle_ok(t, h) && ++count <= t->size);
			n = node_at(t, h);
			KVP_CHECK(n->self == h);
			KVP_CHECK((tree_hash(n->key) & t->mask) == i);
			KVP_CHECK(n->tick <= t->tick);
		}
	}
	KVP_CHECK(count == t->size && t->slab.live == t->size);

	/* 2. Parents: resident, same namespace; tally children. No identical twins. */
	for (size_t i = 0; i <= t->mask; i++) {
		for (uint32_t h = t->buckets[i]; h; h = node_at(t, h)->hnext) {
			const struct kvp_tree_node *n = node_at(t, h);
			uint32_t p = n->parent;

			if (p) {
				KVP_CHECK(p != h && handle_ok(t, p) && table_contains(t, p));
				KVP_CHECK(node_at(t, p)->ns == n->ns);
				KVP_CHECK(tally[p] < t->size);
				tally[p]++;
			}
			for (uint32_t o = n->hnext; o; o = node_at(t, o)->hnext) {
				const struct kvp_tree_node *x = node_at(t, o);

				KVP_CHECK(!(tree_key_eq(x->key, n->key) && x->parent == p &&
					    x->ns == n->ns &&
					    memcmp(x->tokens, n->tokens, bytes) == 0));
			}
		}
	}

	/* 3. LRU (and REUSE's warm list): resident evictable nodes, each once, on the list
	 * of their class, ticks ascending, links mirrored. */
	for (int w = 0; w < 2; w++) {
		const struct kvp_list *l = w ? &t->warm : &t->lru;

		if (check_list(t, l, LRU_OFF, tally, true, t->size, &on))
			return KVP_EINTERNAL;
		for (uint32_t h = l->first; h; h = node_at(t, h)->lru.next)
			KVP_CHECK(node_warm(node_at(t, h)) == (w == 1));
		n_evictable += on;
	}
	KVP_CHECK(n_evictable == t->n_lru);
	KVP_CHECK(t->policy == KVP_EVICT_REUSE || !t->warm.first);

	/* 4. Every node: children counted right; on the LRU iff evictable, and with no
	 * links while on none. */
	n_evictable = 0;
	for (size_t i = 0; i <= t->mask; i++) {
		for (uint32_t h = t->buckets[i]; h; h = node_at(t, h)->hnext) {
			const struct kvp_tree_node *n = node_at(t, h);
			int on_lru = (tally[h] & KVP_CHECK_LRU_BIT) != 0;

			KVP_CHECK((tally[h] & ~KVP_CHECK_LRU_BIT) == n->children);
			KVP_CHECK(on_lru == node_evictable(n));
			KVP_CHECK(on_lru || !(n->lru.prev | n->lru.next | n->nlru.prev | n->nlru.next |
					      n->glru.prev | n->glru.next));
			n_evictable += on_lru;
		}
	}
	KVP_CHECK(n_evictable == t->n_lru);

	/* 5. Namespaces and groups: each node's namespace is its root's and has a group;
	 * counts add up; each namespace LRU and group LRU holds exactly its nodes of the
	 * tree's LRU, in tick order. */
	count = 0;
	for (size_t i = 0; i <= t->ns_mask; i++) {
		for (const struct tree_ns *ns = t->ns_buckets[i]; ns; ns = ns->next) {
			KVP_CHECK(++count <= t->n_ns);
			KVP_CHECK(ns_find(t, ns->root) == ns && (ns->nodes > 0 || ns->gnodes > 0));
			KVP_CHECK((ns->grp != NULL) == (ns->nodes > 0) && ns->tree == t);
			if (check_list(t, &ns->lru, NLRU_OFF, tally, false, ns->nodes, &on))
				return KVP_EINTERNAL;
			KVP_CHECK(on == ns->n_lru);
			for (uint32_t h = ns->lru.first; h; h = node_at(t, h)->nlru.next)
				KVP_CHECK(node_at(t, h)->ns == ns);
			if (check_list(t, &ns->glru, GLRU_OFF, tally, false, ns->gnodes, &on))
				return KVP_EINTERNAL;
			KVP_CHECK(on == ns->gn_lru);
			for (uint32_t h = ns->glru.first; h; h = node_at(t, h)->glru.next)
				KVP_CHECK(node_at(t, h)->ns->grp == ns);
		}
	}
	KVP_CHECK(count == t->n_ns);
	n_evictable = 0;
	for (size_t i = 0; i <= t->ns_mask; i++)
		for (struct tree_ns *ns = t->ns_buckets[i]; ns; ns = ns->next)
			ns->scratch = ns->gscratch = 0;
	for (size_t i = 0; i <= t->mask; i++) {
		for (uint32_t h = t->buckets[i]; h; h = node_at(t, h)->hnext) {
			const struct kvp_tree_node *n = node_at(t, h);

			KVP_CHECK(n->ns && ns_find(t, n->ns->root) == n->ns && n->ns->grp);
			n->ns->scratch++;
			n->ns->grp->gscratch++;
		}
	}
	for (size_t i = 0; i <= t->ns_mask; i++) {
		for (const struct tree_ns *ns = t->ns_buckets[i]; ns; ns = ns->next) {
			KVP_CHECK(ns->scratch == ns->nodes && ns->gscratch == ns->gnodes);
			n_evictable += ns->n_lru;
		}
	}
	KVP_CHECK(n_evictable == t->n_lru);
	return 0;
}

int kvp_tree_check(const struct kvp_tree *t)
{
	uint32_t *tally;
	int rc;

	KVP_CHECK(t && t->buckets);
	KVP_CHECK(((t->mask + 1) & t->mask) == 0 && t->mask + 1 >= KVP_TREE_MIN_BUCKETS);
	KVP_CHECK(t->block_tokens >= 1 && t->block_tokens <= KVP_BLOCK_TOKENS_MAX);
	/* a tally a handle: children counted, and the bit for "seen on the LRU" (not
	 * through the module's allocator: checking is no part of the tree's memory) */
	tally = calloc((size_t)t->slab.used + 1, sizeof(*tally));
	if (!tally)
		return KVP_ENOMEM;
	rc = check_with(t, tally);
	free(tally);
	return rc;
}
