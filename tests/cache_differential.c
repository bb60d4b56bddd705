/*
 * cache_differential.c - the cache on top of the tree (kvp_cache_*: tree + pool +
 * leases) against the trivial model of tree_test_model.c, for random lookups, inserts,
 * releases and disconnects at three block sizes.
 *
 * Because a probe walks the whole bucket past nodes that fail verification, a collision
 * costs time, never a miss; so both builds hold the cache to the same exact model, and
 * the collide build additionally counts the collisions it met (they must be many) and
 * checks, separately and first, that no reported match is anything but a cached prefix.
 *
 * One of the files of test_tree and test_tree_collide; see tree_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cache.h"
#include "kvp_index.h"
#include "tree_test_util.h"

/* ---- differential: the cache (tree + pool + leases) -------------------------------------- */

struct mlease {
	uint64_t owner;
	uint64_t id;
	size_t n;
	int slot[GEN_MAX];
};

#define MAX_OWNERS 4
#define MAX_LEASES 6            /* per owner, as configured */
#define LIVE_LEASES (MAX_OWNERS * MAX_LEASES)

struct cache_run {
	struct kvp_cache *c;
	struct model m;
	struct gen g;
	uint32_t cap;
	struct mlease lease[LIVE_LEASES];
	size_t n_leases;
	uint64_t evictions;
	/* tallies */
	size_t ops, hits, evicted, full, collisions, pinned_ops;
};

static size_t owner_leases(const struct cache_run *cr_, uint64_t owner)
{
	size_t n = 0;

	for (size_t i = 0; i < cr_->n_leases; i++)
		n += cr_->lease[i].owner == owner;
	return n;
}

static void lease_drop_model(struct cache_run *cr_, size_t i)
{
	struct mlease *l = &cr_->lease[i];

	for (size_t k = 0; k < l->n; k++) {
		cr_assert(cr_->m.v[l->slot[k]].alive && cr_->m.v[l->slot[k]].pins > 0);
		cr_->m.v[l->slot[k]].pins--;
	}
	*l = cr_->lease[--cr_->n_leases];
}

/* Compare everything observable with the model. */
static void cache_compare(struct cache_run *cr_, size_t op, uint64_t model_evictions)
{
	struct kvp_cache_stats st;
	uint32_t pinned = 0;
	static uint8_t seen[1024];

	cr_assert_eq(kvp_cache_check(cr_->c), 0, "op %zu: kvp_cache_check", op);
	kvp_cache_get_stats(cr_->c, &st);
	cr_assert_eq(st.evictions - cr_->evictions, model_evictions,
		     "op %zu: %llu evictions, model %llu", op,
		     (unsigned long long)(st.evictions - cr_->evictions),
		     (unsigned long long)model_evictions);
	cr_->evictions = st.evictions;
	for (size_t i = 0; i < cr_->m.slots; i++)
		pinned += cr_->m.v[i].alive && cr_->m.v[i].pins > 0;
	cr_assert_eq(st.pool.total, cr_->cap);
	cr_assert_eq(st.pool.free + st.pool.cached + st.pool.referenced, st.pool.total);
	cr_assert_eq(st.pool.free, cr_->cap - cr_->m.alive, "op %zu: free", op);
	cr_assert_eq(st.pool.referenced, pinned, "op %zu: referenced", op);
	cr_assert_eq(st.pool.cached, cr_->m.alive - pinned, "op %zu: cached", op);
	cr_assert_eq(st.tree_nodes, cr_->m.alive);
	cr_assert_eq(st.leases_active, cr_->n_leases);
	/* one pool block per cached block */
	cr_assert(cr_->cap <= sizeof(seen));
	memset(seen, 0, cr_->cap);
	for (size_t i = 0; i < cr_->m.slots; i++) {
		const struct mnode *x = &cr_->m.v[i];

		if (!x->alive)
			continue;
		cr_assert(x->block < cr_->cap);
		cr_assert(!seen[x->block], "block %u cached twice", x->block);
		seen[x->block] = 1;
	}
}

/* Count blocks of the prompt whose key the table cannot tell from a cached block's. */
static void count_collisions(struct cache_run *cr_, struct kvp_key root, const uint32_t *tok,
			     size_t nb)
{
	struct kvp_key keys[GEN_MAX];

	kvp_chain_keys(root, tok, nb, cr_->m.b, keys);
	for (size_t j = 0; j < nb; j++)
		for (size_t i = 0; i < cr_->m.slots; i++)
			if (cr_->m.v[i].alive && tt_table_equal(cr_->m.v[i].key, keys[j]) &&
			    !kvp_key_eq(cr_->m.v[i].key, keys[j]))
				cr_->collisions++;
}

static void cache_lookup_op(struct cache_run *cr_, size_t op, int ns, const uint32_t *tok,
			    size_t len, uint64_t owner, bool pin)
{
	struct model *m = &cr_->m;
	size_t nb = len / m->b, mm;
	int mpath[GEN_MAX];
	uint32_t ids[GEN_MAX];
	struct kvp_cache_result res;
	bool busy = pin && owner_leases(cr_, owner) >= MAX_LEASES;
	int rc;

	count_collisions(cr_, cr_->g.root[ns], tok, nb);
	rc = kvp_cache_lookup(cr_->c, cr_->g.root[ns], tok, len, owner, pin, ids, &res);
	if (busy) {
		cr_assert_eq(rc, KVP_EBUSY);
		cache_compare(cr_, op, 0);
		return;
	}
	cr_assert_eq(rc, 0, "op %zu: lookup rc %d", op, rc);
	mm = tt_model_match(m, ns, tok, nb, mpath);
	/* Soundness first: whatever was reported must be a cached prefix, block for block. */
	cr_assert(res.matched_tokens % m->b == 0 && res.matched_tokens / m->b <= mm,
		  "op %zu: reported %u tokens, only %zu blocks cached", op, res.matched_tokens, mm);
	for (size_t i = 0; i < res.n_blocks; i++)
		cr_assert_eq(ids[i], m->v[mpath[i]].block, "op %zu: block %zu is not cached there",
			     op, i);
	/* Then exactness (see the top of the file for why the collide build holds it). */
	cr_assert_eq(res.matched_tokens, mm * m->b, "op %zu: lookup matched %u, model %zu", op,
		     res.matched_tokens, mm * m->b);
	cr_assert_eq(res.n_blocks, mm);
	cr_assert_eq(res.prompt_tokens, len);
	m->tick++;
	for (size_t i = 0; i < mm; i++)
		m->v[mpath[i]].tick = m->tick;
	cr_->hits += mm > 0;
	if (pin && mm > 0) {
		struct mlease *l = &cr_->lease[cr_->n_leases++];

		cr_assert_neq(res.lease, 0);
		l->owner = owner;
		l->id = res.lease;
		l->n = mm;
		for (size_t i = 0; i < mm; i++) {
			l->slot[i] = mpath[i];
			m->v[mpath[i]].pins++;
		}
	} else {
		cr_assert_eq(res.lease, 0);
	}
	cache_compare(cr_, op, 0);
}

static void cache_insert_op(struct cache_run *cr_, size_t op, int ns, const uint32_t *tok,
			    size_t len, uint64_t owner, bool pin)
{
	struct model *m = &cr_->m;
	struct kvp_key root = cr_->g.root[ns], key;
	size_t nb = len / m->b, mm, k;
	int mpath[GEN_MAX];
	uint32_t ids[GEN_MAX];
	struct kvp_cache_result res;
	bool busy = pin && owner_leases(cr_, owner) >= MAX_LEASES, full = false;
	uint64_t evictions = 0;
	int rc;

	count_collisions(cr_, root, tok, nb);
	rc = kvp_cache_insert(cr_->c, root, root, tok, len, owner, pin, ids, &res);
	if (busy) {
		cr_assert_eq(rc, KVP_EBUSY);
		cache_compare(cr_, op, 0);
		return;
	}
	cr_assert_eq(rc, 0, "op %zu: insert rc %d", op, rc);
	mm = tt_model_match(m, ns, tok, nb, mpath);
	m->tick++;
	for (size_t i = 0; i < mm; i++)
		m->v[mpath[i]].tick = m->tick;
	key = mm ? m->v[mpath[mm - 1]].key : root;
	/* Add the rest, taking free blocks, else evicting the LRU unpinned leaf; the
	 * block being extended is never the victim. */
	for (k = mm; k < nb; k++) {
		int parent = k ? mpath[k - 1] : -1;

		if (m->alive == cr_->cap) {
			int v = tt_model_victim(m, parent);

			if (v < 0) {
				full = true;
				break;
			}
			tt_model_remove(m, v);
			evictions++;
		}
		key = kvp_block_key(key, tok + k * m->b, m->b);
		mpath[k] = tt_model_add(m, ns, parent, tok + k * m->b, key, m->tick);
	}
	cr_assert(res.matched_tokens % m->b == 0 && res.n_blocks == res.matched_tokens / m->b);
	cr_assert_eq(res.n_blocks, k, "op %zu: insert cached %u blocks, model %zu", op,
		     res.n_blocks, k);
	cr_assert_eq(res.new_blocks, k - mm, "op %zu: new %u, model %zu", op, res.new_blocks,
		     k - mm);
	cr_assert_eq(res.pool_full, full, "op %zu: pool_full", op);
	for (size_t i = 0; i < mm; i++)
		cr_assert_eq(ids[i], m->v[mpath[i]].block, "op %zu: matched block %zu", op, i);
	for (size_t i = mm; i < k; i++)
		m->v[mpath[i]].block = ids[i];
	cr_->evicted += evictions;
	cr_->full += full;
	if (pin && k > 0) {
		struct mlease *l = &cr_->lease[cr_->n_leases++];

		cr_assert_neq(res.lease, 0);
		l->owner = owner;
		l->id = res.lease;
		l->n = k;
		for (size_t i = 0; i < k; i++) {
			l->slot[i] = mpath[i];
			m->v[mpath[i]].pins++;
		}
	} else {
		cr_assert_eq(res.lease, 0);
	}
	cache_compare(cr_, op, evictions);
}

static void run_cache_model(uint64_t seed, uint32_t b, uint32_t cap, size_t ops)
{
	struct kvp_cache_config cfg = {
		.block_tokens = b,
		.capacity_blocks = cap,
		.max_tokens = GEN_MAX,
		.max_leases = MAX_LEASES,
	};
	struct cache_run *cr_ = calloc(1, sizeof(*cr_));
	uint32_t tok[GEN_MAX];

	cr_assert_not_null(cr_);
	cr_assert_eq(kvp_cache_create(&cfg, &cr_->c), 0);
	cr_->cap = cap;
	tt_model_init(&cr_->m, b, cap);
	tt_gen_init(&cr_->g, seed);
	for (size_t op = 0; op < ops; op++) {
		uint32_t what = tt_rng_below(&cr_->g.r, 100);
		uint64_t owner = 1 + tt_rng_below(&cr_->g.r, MAX_OWNERS);
		int ns;
		size_t len = tt_gen_prompt(&cr_->g, &ns, tok, GEN_MAX);

		/* Leases pile up by chance; keep them rare enough that eviction happens. */
		if (what < 30) {
			cache_lookup_op(cr_, op, ns, tok, len, owner, false);
		} else if (what < 42) {
			cache_lookup_op(cr_, op, ns, tok, len, owner, true);
			cr_->pinned_ops++;
		} else if (what < 72) {
			cache_insert_op(cr_, op, ns, tok, len, owner, false);
		} else if (what < 82) {
			cache_insert_op(cr_, op, ns, tok, len, owner, true);
			cr_->pinned_ops++;
		} else if (what < 97) {                   /* release one lease */
			if (cr_->n_leases && tt_rng_below(&cr_->g.r, 8)) {
				size_t i = tt_rng_below(&cr_->g.r, (uint32_t)cr_->n_leases);
				struct mlease l = cr_->lease[i];
				uint32_t n = 0;

				/* someone else's lease is not found */
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner + MAX_OWNERS, l.id, &n),
					     KVP_ENOTFOUND);
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner, l.id, &n), 0);
				cr_assert_eq(n, l.n);
				lease_drop_model(cr_, i);
				cr_assert_eq(kvp_cache_release(cr_->c, l.owner, l.id, &n),
					     KVP_ENOTFOUND, "released twice");
			} else {
				cr_assert_eq(kvp_cache_release(cr_->c, owner, 0xdead0000u + op, NULL),
					     KVP_ENOTFOUND);
			}
			cache_compare(cr_, op, 0);
		} else {                                  /* an owner disconnects */
			size_t want = owner_leases(cr_, owner);

			cr_assert_eq(kvp_cache_release_owner(cr_->c, owner), want);
			for (size_t i = cr_->n_leases; i-- > 0;)
				if (cr_->lease[i].owner == owner)
					lease_drop_model(cr_, i);
			cache_compare(cr_, op, 0);
		}
		cr_->ops++;
	}
	cr_log_info("cache model B=%u cap=%u: %zu ops, %zu hits, %zu evictions, %zu cut short "
		    "by a full pool, %zu pinning ops, %zu key collisions met",
		    b, cap, cr_->ops, cr_->hits, cr_->evicted, cr_->full, cr_->pinned_ops,
		    cr_->collisions);
	cr_assert(cr_->hits > ops / 20, "too few hits: %zu", cr_->hits);
	cr_assert(cr_->evicted > ops / 20, "too few evictions: %zu", cr_->evicted);
	cr_assert(cr_->full > 0, "the pool never filled with pinned blocks");
#ifdef KVP_TEST_COLLIDE
	cr_assert(cr_->collisions > ops / 10, "too few collisions: %zu", cr_->collisions);
#else
	cr_assert_eq(cr_->collisions, 0);
#endif
	kvp_cache_destroy(cr_->c);
	tt_model_free(&cr_->m);
	free(cr_);
}

Test(cache_model, random_operations_b4, .timeout = 120)
{
	run_cache_model(0x5EED0001, 4, 48, 120000);
}

Test(cache_model, random_operations_b1, .timeout = 120)
{
	run_cache_model(0x5EED0002, 1, 40, 60000);
}

Test(cache_model, random_operations_b16, .timeout = 120)
{
	run_cache_model(0x5EED0003, 16, 12, 60000);
}
