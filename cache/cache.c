/*
 * cache.c - tree + pool + leases: the request logic of kvprefixd without the I/O.
 *
 *   owners (chained hash by owner id)          tree nodes            pool
 *   ┌─────────┐   leases (list per owner)     ┌──────────┐        ┌──────────┐
 *   │ owner 7 │──▶ lease 12 ─▶ lease 15       │ node     │──id──▶ │ block id │
 *   └─────────┘    nodes[]: root..deepest ──▶ │ pins = k │        │ refs = k │
 *
 * Every pin of a node is mirrored by one pool reference on its block, and nothing else
 * holds pool references between calls, so kvp_cache_check can verify that
 * pool refs(block) == pins(node) == number of lease entries naming the node.
 *
 * Insert keeps one temporary pin on the node it is extending, so the eviction that
 * makes room for the next block can never take the path being built.
 *
 * A running sequence holds pool blocks that are in no tree node yet. Each quota group
 * (tenant) with a sequence running has a tally of them (struct kvp_cache_ns, on a
 * list), so that the tenant quota counts them, whichever sequence took them.
 */
#include "kvp_cache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

struct lease {
	uint64_t id;
	struct lease *next;               /* owner's list */
	struct lease **pprev;
	/* a keep (KVP_CACHE_KEEP_OWNER's) only: */
	struct lease *knext;              /* its bucket of c->keeps, by deepest node */
	uint64_t until_ms;                /* kept until then */
	uint32_t priority;
	struct kvp_key group;             /* the quota group of its namespace */
	uint32_t n;
	struct kvp_tree_node *nodes[];    /* (n) root first */
};

struct owner {
	uint64_t id;
	struct owner *hnext;
	struct lease *leases;
	uint32_t n_leases;
};

/* A quota group with sequences running: the blocks they hold outside the tree. */
struct kvp_cache_ns {
	struct kvp_key root;              /* the group's key */
	struct kvp_cache_ns *next;
	uint32_t seqs;                    /* running sequences */
	uint32_t blocks;                  /* their blocks not cached yet */
};

struct kvp_cache {
	struct kvp_cache_config cfg;
	struct kvp_tree *tree;
	struct kvp_pool *pool;
	struct kvp_tree_node **path;      /* (max_tokens / block_tokens) scratch */
	size_t path_cap;
	uint32_t *admin_ids;              /* (path_cap) block ids of an admin pin, unused */
	struct owner **owners;            /* (n_buckets) chained by hnext */
	size_t n_buckets;
	size_t n_owners;
	struct kvp_cache_ns *running;     /* namespaces with a sequence running */
	uint64_t next_lease;
	struct kvp_cache_stats st;
	struct kvp_diag *diag;            /* every block in and out: the miss diagnostics */
	struct lease **keeps;             /* (n_keep_buckets) keeps by deepest node */
	size_t n_keep_buckets;
	uint64_t next_expiry_ms;          /* no keep expires before: UINT64_MAX when none */
	enum kvp_gone_why gone_why;       /* why the blocks leaving now go */
	void (*demote)(void *arg, const struct kvp_cache_block_info *b);
	void *demote_arg;
	void (*stored)(void *arg, const struct kvp_cache_block_info *b);
	void *stored_arg;
	void (*watch)(void *arg, const struct kvp_cache_block_info *b, bool added);
	void *watch_arg;
};

static void watch_node(void *arg, const struct kvp_tree_node *n, bool added);

int kvp_cache_create(const struct kvp_cache_config *cfg, struct kvp_cache **out)
{
	struct kvp_cache *c;
	int rc;

	if (cfg->block_tokens == 0 || cfg->block_tokens > KVP_BLOCK_TOKENS_MAX ||
	    cfg->capacity_blocks == 0 || cfg->max_tokens == 0 || cfg->max_leases == 0)
		return KVP_EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return KVP_ENOMEM;
	c->cfg = *cfg;
	rc = kvp_tree_create(cfg->block_tokens, &c->tree);
	if (rc)
		goto out_free;
	rc = kvp_tree_set_policy_for(c->tree, (enum kvp_evict_policy)cfg->eviction,
				     cfg->capacity_blocks);
	if (rc)
		goto out_tree;
	rc = kvp_pool_create(cfg->capacity_blocks, &c->pool);
	if (rc)
		goto out_tree;
	rc = KVP_ENOMEM;
	c->path_cap = cfg->max_tokens / cfg->block_tokens + 1;
	c->path = calloc(c->path_cap, sizeof(*c->path));
	c->admin_ids = calloc(c->path_cap, sizeof(*c->admin_ids));
	if (!c->path || !c->admin_ids)
		goto out_path;
	c->n_buckets = 256;
	c->owners = calloc(c->n_buckets, sizeof(*c->owners));
	if (!c->owners)
		goto out_path;
	c->diag = kvp_diag_create(cfg->capacity_blocks, cfg->block_tokens);
	for (c->n_keep_buckets = 16; c->n_keep_buckets < cfg->capacity_blocks / 4;)
		c->n_keep_buckets *= 2;
	c->keeps = calloc(c->n_keep_buckets, sizeof(*c->keeps));
	if (!c->diag || !c->keeps)
		goto out_path;
	c->next_expiry_ms = UINT64_MAX;
	c->gone_why = KVP_GONE_ADMIN;
	kvp_tree_set_watch(c->tree, watch_node, c);
	c->next_lease = 1;
	*out = c;
	return KVP_OK;

out_path:
	kvp_diag_destroy(c->diag);
	free(c->keeps);
	free(c->owners);
	free(c->path);
	free(c->admin_ids);

	kvp_pool_destroy(c->pool);
out_tree:
	kvp_tree_destroy(c->tree);
out_free:
	free(c);
	return rc;
}

void kvp_cache_destroy(struct kvp_cache *c)
{
	if (!c)
		return;
	for (size_t b = 0; b < c->n_buckets; b++) {
		struct owner *o = c->owners[b];
		while (o) {
			struct owner *on = o->hnext;
			for (struct lease *l = o->leases, *ln; l; l = ln) {
				ln = l->next;
				free(l);
			}
			free(o);
			o = on;
		}
	}
	for (struct kvp_cache_ns *r = c->running, *rn; r; r = rn) {
		rn = r->next;
		free(r);
	}
	free(c->owners);
	free(c->path);
	free(c->admin_ids);
	kvp_pool_destroy(c->pool);
	kvp_tree_destroy(c->tree);
	kvp_diag_destroy(c->diag);
	free(c->keeps);
	free(c);
}

uint32_t kvp_cache_block_tokens(const struct kvp_cache *c)
{
	return c->cfg.block_tokens;
}

void kvp_cache_set_max_leases(struct kvp_cache *c, uint32_t max_leases)
{
	if (max_leases)
		c->cfg.max_leases = max_leases;
}

void kvp_cache_set_tenant_quota(struct kvp_cache *c, uint32_t blocks)
{
	c->cfg.tenant_quota = blocks;
}

uint32_t kvp_cache_capacity(const struct kvp_cache *c)
{
	return c->cfg.capacity_blocks;
}

static void pin_node(struct kvp_cache *c, struct kvp_tree_node *n)
{
	kvp_tree_pin(c->tree, n);
	(void)kvp_pool_ref(c->pool, kvp_tree_node_block(n));
}

static void unpin_node(struct kvp_cache *c, struct kvp_tree_node *n)
{
	kvp_tree_unpin(c->tree, n);
	(void)kvp_pool_unref(c->pool, kvp_tree_node_block(n));
}

/* ---- owners and leases ------------------------------------------------------- */

static size_t owner_bucket(const struct kvp_cache *c, uint64_t id)
{
	return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (c->n_buckets - 1);
}

static struct owner *owner_find(const struct kvp_cache *c, uint64_t id)
{
	for (struct owner *o = c->owners[owner_bucket(c, id)]; o; o = o->hnext)
		if (o->id == id)
			return o;
	return NULL;
}

/* Grow the owner table when it gets crowded; on failure keep the old one. */
static void owners_maybe_grow(struct kvp_cache *c)
{
	size_t nb = c->n_buckets * 2;
	struct owner **t;

	if (c->n_owners < c->n_buckets)
		return;
	t = calloc(nb, sizeof(*t));
	if (!t)
		return;
	for (size_t b = 0; b < c->n_buckets; b++) {
		for (struct owner *o = c->owners[b], *on; o; o = on) {
			size_t h = (size_t)((o->id * 0x9E3779B97F4A7C15ull) >> 32) & (nb - 1);
			on = o->hnext;
			o->hnext = t[h];
			t[h] = o;
		}
	}
	free(c->owners);
	c->owners = t;
	c->n_buckets = nb;
}

static void owner_remove(struct kvp_cache *c, struct owner *o)
{
	struct owner **pp = &c->owners[owner_bucket(c, o->id)];

	while (*pp != o)
		pp = &(*pp)->hnext;
	*pp = o->hnext;
	c->n_owners--;
	free(o);
}

/* Room for a lease of up to n nodes, with its owner record. Changes nothing visible
 * until lease_commit. */
static int lease_prepare(struct kvp_cache *c, uint64_t owner, size_t n, struct owner **po,
			 struct lease **pl)
{
	struct owner *o = owner_find(c, owner);
	struct lease *l;

	if (o && o->n_leases >= c->cfg.max_leases && owner < KVP_CACHE_KEEP_OWNER)
		return KVP_EBUSY;
	l = malloc(sizeof(*l) + n * sizeof(l->nodes[0]));
	if (!l)
		return KVP_ENOMEM;
	if (!o) {
		o = calloc(1, sizeof(*o));
		if (!o) {
			free(l);
			return KVP_ENOMEM;
		}
		o->id = owner;
		owners_maybe_grow(c);
		o->hnext = c->owners[owner_bucket(c, owner)];
		c->owners[owner_bucket(c, owner)] = o;
		c->n_owners++;
	}
	*po = o;
	*pl = l;
	return KVP_OK;
}

/* Pin nodes[0..n) under lease l of owner o; n == 0 discards the lease. */
static uint64_t lease_commit(struct kvp_cache *c, struct owner *o, struct lease *l,
			     size_t cap, struct kvp_tree_node **nodes, size_t n)
{
	if (n == 0) {
		free(l);
		if (o->n_leases == 0)
			owner_remove(c, o);
		return 0;
	}
	if (n < cap) {
		/* prepared for every block of the request; keep only what is pinned */
		struct lease *nl = realloc(l, sizeof(*l) + n * sizeof(l->nodes[0]));

		if (nl)
			l = nl;
	}
	l->id = c->next_lease++;
	l->n = (uint32_t)n;
	for (size_t i = 0; i < n; i++) {
		l->nodes[i] = nodes[i];
		pin_node(c, nodes[i]);
	}
	l->next = o->leases;
	if (l->next)
		l->next->pprev = &l->next;
	l->pprev = &o->leases;
	o->leases = l;
	o->n_leases++;
	c->st.leases_active++;
	c->st.leases_total++;
	return l->id;
}

/* ---- keeps: leases of KVP_CACHE_KEEP_OWNER with a lifetime and a priority ---------- */

static size_t keep_bucket(const struct kvp_cache *c, const struct kvp_tree_node *deepest)
{
	return (size_t)(((uint64_t)(uintptr_t)deepest * 0x9E3779B97F4A7C15ull) >> 32) &
	       (c->n_keep_buckets - 1);
}

static void keep_unlink(struct kvp_cache *c, struct lease *l)
{
	struct lease **pp = &c->keeps[keep_bucket(c, l->nodes[l->n - 1])];

	while (*pp != l)
		pp = &(*pp)->knext;
	*pp = l->knext;
}

static uint32_t lease_drop(struct kvp_cache *c, struct owner *o, struct lease *l);

/* Give up the keep with the lowest priority (the one expiring first among equals), of
 * quota group *group only when group is not NULL. False when there is none. */
static bool keep_give_up(struct kvp_cache *c, const struct kvp_key *group)
{
	struct owner *o = owner_find(c, KVP_CACHE_KEEP_OWNER);
	struct lease *worst = NULL;

	for (struct lease *l = o ? o->leases : NULL; l; l = l->next) {
		if (group && !kvp_key_eq(l->group, *group))
			continue;
		if (!worst || l->priority < worst->priority ||
		    (l->priority == worst->priority && l->until_ms < worst->until_ms))
			worst = l;
	}
	if (!worst)
		return false;
	(void)lease_drop(c, o, worst);
	if (o->n_leases == 0)
		owner_remove(c, o);
	c->st.keeps_given_up++;
	return true;
}

int kvp_cache_keep(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
		   const uint32_t *tokens, size_t n_tokens, uint64_t until_ms, uint32_t priority,
		   uint32_t *kept)
{
	struct owner *o;
	struct lease *l;
	size_t m, b;
	int rc;

	*kept = 0;
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	m = kvp_tree_match(c->tree, root, tokens, n_tokens, c->path, c->path_cap);
	if (m == 0)
		return KVP_OK;
	b = keep_bucket(c, c->path[m - 1]);
	for (l = c->keeps[b]; l; l = l->knext) {
		if (l->n == m && l->nodes[m - 1] == c->path[m - 1]) {   /* kept again: longer */
			l->until_ms = until_ms > l->until_ms ? until_ms : l->until_ms;
			l->priority = priority > l->priority ? priority : l->priority;
			*kept = (uint32_t)m;
			return KVP_OK;
		}
	}
	rc = lease_prepare(c, KVP_CACHE_KEEP_OWNER, m, &o, &l);
	if (rc)
		return rc;
	(void)lease_commit(c, o, l, m, c->path, m);   /* room for m: l stays where it is */
	l->until_ms = until_ms;
	l->priority = priority;
	l->group = group;
	l->knext = c->keeps[b];
	c->keeps[b] = l;
	if (until_ms < c->next_expiry_ms)
		c->next_expiry_ms = until_ms;
	c->st.keeps_made++;
	*kept = (uint32_t)m;
	return KVP_OK;
}

size_t kvp_cache_expire(struct kvp_cache *c, uint64_t now_ms)
{
	struct owner *o;
	uint64_t next = UINT64_MAX;
	size_t n = 0;

	if (now_ms < c->next_expiry_ms)
		return 0;
	o = owner_find(c, KVP_CACHE_KEEP_OWNER);
	for (struct lease *l = o ? o->leases : NULL, *ln; l; l = ln) {
		ln = l->next;
		if (l->until_ms <= now_ms) {
			(void)lease_drop(c, o, l);
			n++;
		} else if (l->until_ms < next) {
			next = l->until_ms;
		}
	}
	if (o && o->n_leases == 0)
		owner_remove(c, o);
	c->next_expiry_ms = next;
	c->st.keeps_expired += n;
	return n;
}

static uint32_t lease_drop(struct kvp_cache *c, struct owner *o, struct lease *l)
{
	uint32_t n = l->n;

	/* deepest first, so each unpinned node turns into an evictable leaf in order */
	if (o->id == KVP_CACHE_KEEP_OWNER)
		keep_unlink(c, l);
	for (uint32_t i = n; i-- > 0;)
		unpin_node(c, l->nodes[i]);
	*l->pprev = l->next;
	if (l->next)
		l->next->pprev = l->pprev;
	o->n_leases--;
	c->st.leases_active--;
	free(l);
	return n;
}

int kvp_cache_release(struct kvp_cache *c, uint64_t owner, uint64_t lease, uint32_t *n_blocks)
{
	struct owner *o = owner_find(c, owner);
	uint32_t n;

	if (!o || lease == 0)
		return KVP_ENOTFOUND;
	for (struct lease *l = o->leases; l; l = l->next) {
		if (l->id != lease)
			continue;
		n = lease_drop(c, o, l);
		if (o->n_leases == 0)
			owner_remove(c, o);
		if (n_blocks)
			*n_blocks = n;
		return KVP_OK;
	}
	return KVP_ENOTFOUND;
}

size_t kvp_cache_release_owner(struct kvp_cache *c, uint64_t owner)
{
	struct owner *o = owner_find(c, owner);
	size_t n = 0;

	if (!o)
		return 0;
	while (o->leases) {
		lease_drop(c, o, o->leases);
		n++;
	}
	owner_remove(c, o);
	return n;
}

/* ---- lookup and insert ------------------------------------------------------- */

static void result_blocks(struct kvp_cache *c, size_t n, uint32_t *block_ids,
			  struct kvp_cache_result *res)
{
	for (size_t i = 0; i < n; i++)
		block_ids[i] = kvp_tree_node_block(c->path[i]);
	res->n_blocks = (uint32_t)n;
	res->matched_tokens = (uint32_t)(n * c->cfg.block_tokens);
}

/* The query diagnosed after its match of m blocks (in c->path). */
static void diagnose(const struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens, size_t m, struct kvp_cache_miss *out)
{
	kvp_diag_query(c->diag, m ? c->path[m - 1] : NULL, root, tokens, n_tokens, m, out);
}

int kvp_cache_lookup(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res)
{
	struct owner *o = NULL;
	struct lease *l = NULL;
	size_t m;
	int rc;

	memset(res, 0, sizeof(*res));
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	if (pin && owner == 0)
		return KVP_EINVAL;
	if (pin) {
		o = owner_find(c, owner);
		if (o && o->n_leases >= c->cfg.max_leases && owner < KVP_CACHE_KEEP_OWNER)
			return KVP_EBUSY;
	}
	m = kvp_tree_match(c->tree, root, tokens, n_tokens, c->path, c->path_cap);
	diagnose(c, root, tokens, n_tokens, m, &res->miss);
	if (pin && m) {
		/* sized by the match, not the request: a lease lives as long as its owner */
		rc = lease_prepare(c, owner, m, &o, &l);
		if (rc)
			return rc;
	}
	result_blocks(c, m, block_ids, res);
	res->prompt_tokens = (uint32_t)n_tokens;
	if (pin && m)
		res->lease = lease_commit(c, o, l, m, c->path, m);

	return KVP_OK;
}

/* The running tally of namespace root, or NULL when no sequence of it runs. */
static struct kvp_cache_ns *running_find(const struct kvp_cache *c, struct kvp_key root)
{
	struct kvp_cache_ns *r = c->running;

	while (r && !kvp_key_eq(r->root, root))
		r = r->next;
	return r;
}

/* One more sequence of namespace root: its tally, created if new; NULL when out of
 * memory. */
static struct kvp_cache_ns *running_get(struct kvp_cache *c, struct kvp_key root)
{
	struct kvp_cache_ns *r = running_find(c, root);

	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
		r->root = root;
		r->next = c->running;
		c->running = r;
	}
	r->seqs++;
	return r;
}

/* A sequence of r's namespace is over, its blocks cached or freed. */
static void running_put(struct kvp_cache *c, struct kvp_cache_ns *r, uint32_t blocks)
{
	struct kvp_cache_ns **pp = &c->running;

	assert(r->seqs > 0 && r->blocks >= blocks);
	r->blocks -= blocks;
	if (--r->seqs > 0)
		return;
	while (*pp != r)
		pp = &(*pp)->next;
	*pp = r->next;
	free(r);
}

/* A node as a tier needs it. */
static struct kvp_cache_block_info block_info(const struct kvp_tree_node *n)
{
	const struct kvp_tree_node *p = kvp_tree_node_parent(n);
	struct kvp_cache_block_info b = {
		.root = kvp_tree_node_root(n),
		.key = kvp_tree_node_key(n),
		.tokens = kvp_tree_node_tokens(n),
		.block_id = kvp_tree_node_block(n),
	};

	b.parent = p ? kvp_tree_node_key(p) : b.root;
	return b;
}

/* The tree's eviction hook. */
static void demote_node(void *arg, const struct kvp_tree_node *n)
{
	struct kvp_cache *c = arg;
	const struct kvp_cache_block_info b = block_info(n);

	c->demote(c->demote_arg, &b);
}

/* A sequence's block registered: to the tier beside the pool, if any. */
static void stored_node(struct kvp_cache *c, const struct kvp_tree_node *n)
{
	if (c->stored) {
		const struct kvp_cache_block_info b = block_info(n);

		c->stored(c->stored_arg, &b);
	}
}

/* The tree's watch: every node in and out, to the diagnostics and the cache's watcher. */
static void watch_node(void *arg, const struct kvp_tree_node *n, bool added)
{
	struct kvp_cache *c = arg;

	if (added)
		kvp_diag_added(c->diag, n);
	else
		kvp_diag_removed(c->diag, n, c->gone_why);
	if (c->watch) {
		const struct kvp_cache_block_info b = block_info(n);

		c->watch(c->watch_arg, &b, added);
	}
}

void kvp_cache_set_watch(struct kvp_cache *c,
			 void (*watch)(void *arg, const struct kvp_cache_block_info *b, bool added),
			 void *arg)
{
	c->watch = watch;
	c->watch_arg = arg;
}

void kvp_cache_set_stored(struct kvp_cache *c,
			  void (*stored)(void *arg, const struct kvp_cache_block_info *b), void *arg)
{
	c->stored = stored;
	c->stored_arg = arg;
}

/*
 * A free pool block for a namespace of quota group `group` (a tenant), which already
 * holds `pending` more blocks than its tree nodes (taken by running sequences, not
 * cached yet). Under the tenant quota: a free block, else the least recently used
 * unpinned leaf of anyone. At the quota: the group's own least recently used leaf
 * (two while it is over a lowered quota, so that it shrinks back), or KVP_EFULL with
 * *quota set when it has none it may give up; it never takes another group's block
 * then.
 */
static int take_block(struct kvp_cache *c, struct kvp_key group, uint32_t pending, uint32_t *id,
		      bool *quota)
{
	uint32_t victim;
	size_t held;

	if (c->cfg.tenant_quota &&
	    (held = kvp_tree_group_size(c->tree, group) + pending) >= c->cfg.tenant_quota) {
		int rc;

		c->gone_why = KVP_GONE_QUOTA;
		if (held > c->cfg.tenant_quota && kvp_tree_evict_group(c->tree, group, &victim) == 0) {
			(void)kvp_pool_evict(c->pool, victim);
			c->st.evictions++;
			c->st.quota_evictions++;
		}
		rc = kvp_tree_evict_group(c->tree, group, &victim);
		while (rc && keep_give_up(c, &group))   /* nothing else of its own to give */
			rc = kvp_tree_evict_group(c->tree, group, &victim);
		c->gone_why = KVP_GONE_ADMIN;
		if (rc) {
			c->st.quota_refusals++;
			*quota = true;
			return KVP_EFULL;
		}
		(void)kvp_pool_evict(c->pool, victim);
		c->st.evictions++;
		c->st.quota_evictions++;
		return kvp_pool_alloc(c->pool, id);   /* the block just freed */
	}
	while (kvp_pool_alloc(c->pool, id) == KVP_EFULL) {
		int rc;

		c->gone_why = KVP_GONE_POOL;
		rc = kvp_tree_evict(c->tree, &victim);
		while (rc && keep_give_up(c, NULL))   /* nothing left but kept blocks */
			rc = kvp_tree_evict(c->tree, &victim);
		c->gone_why = KVP_GONE_ADMIN;
		if (rc)
			return KVP_EFULL;
		(void)kvp_pool_evict(c->pool, victim);
		c->st.evictions++;
	}
	return KVP_OK;
}

int kvp_cache_insert(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
		     const uint32_t *tokens,
		     size_t n_tokens, uint64_t owner, bool pin, uint32_t *block_ids,
		     struct kvp_cache_result *res)
{
	const uint32_t b = c->cfg.block_tokens;
	const size_t nb = n_tokens / b;
	struct kvp_tree_node *parent = NULL, *node;
	struct owner *o = NULL;
	struct lease *l = NULL;
	struct kvp_key key = root;
	const struct kvp_cache_ns *r = NULL;
	size_t m, k;
	int rc = KVP_OK;

	memset(res, 0, sizeof(*res));
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	if (pin && owner == 0)
		return KVP_EINVAL;
	if (pin) {
		rc = lease_prepare(c, owner, nb, &o, &l);
		if (rc)
			return rc;
	}

	m = kvp_tree_match(c->tree, root, tokens, n_tokens, c->path, c->path_cap);
	if (c->cfg.tenant_quota)
		r = running_find(c, group);
	if (m > 0) {
		parent = c->path[m - 1];
		key = kvp_tree_node_key(parent);
		pin_node(c, parent);   /* hold the path while evicting for the rest */
	}
	for (k = m; k < nb; k++) {
		const uint32_t *blk = tokens + k * b;
		uint32_t id;
		int irc;

		key = kvp_block_key(key, blk, b);
		if (take_block(c, group, r ? r->blocks : 0, &id, &res->quota_full)) {
			res->pool_full = true;
			c->st.insert_full++;
			break;
		}
		irc = kvp_tree_insert_grouped(c->tree, root, group, parent, key, blk, id, &node);
		if (irc == KVP_EEXIST) {
			(void)kvp_pool_put(c->pool, id);
		} else if (irc) {
			(void)kvp_pool_put(c->pool, id);
			rc = irc;
			break;
		} else {
			(void)kvp_pool_unref(c->pool, id);   /* now CACHED, owned by the tree */
			res->new_blocks++;
			stored_node(c, node);
		}
		pin_node(c, node);
		if (parent)
			unpin_node(c, parent);
		parent = node;
		c->path[k] = node;
	}
	if (parent)
		unpin_node(c, parent);

	result_blocks(c, k, block_ids, res);
	res->prompt_tokens = (uint32_t)n_tokens;
	if (pin)
		res->lease = lease_commit(c, o, l, nb, c->path, k);

	c->st.inserted_blocks += res->new_blocks;
	return rc;
}

/* ---- sequences --------------------------------------------------------------- */

int kvp_cache_attach_memory(struct kvp_cache *c, size_t block_bytes)
{
	return kvp_pool_attach_memory(c->pool, block_bytes);
}

int kvp_cache_attach_device(struct kvp_cache *c, size_t block_bytes)
{
	return kvp_pool_attach_device(c->pool, block_bytes);
}

int kvp_cache_seq_begin(struct kvp_cache *c, struct kvp_key root, struct kvp_key group,
			const uint32_t *tokens,
			uint32_t n_prompt, uint32_t n_positions, struct kvp_seq *seq)
{
	const uint32_t b = c->cfg.block_tokens;
	uint32_t need, m, got = 0;
	struct kvp_cache_ns *r;
	struct kvp_cache_miss miss;
	bool quota = false;
	int rc = KVP_ENOMEM;

	memset(seq, 0, sizeof(*seq));
	if (n_prompt > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	if (n_positions < n_prompt)
		n_positions = n_prompt;
	need = (n_positions + b - 1) / b;
	seq->block_ids = malloc((size_t)need * sizeof(uint32_t));
	seq->block_data = malloc((size_t)need * sizeof(void *));
	seq->nodes = malloc((size_t)(need ? need : 1) * sizeof(*seq->nodes));
	if (!seq->block_ids || !seq->block_data || !seq->nodes)
		goto out_free;
	r = running_get(c, group);
	if (!r)
		goto out_free;

	m = (uint32_t)kvp_tree_match(c->tree, root, tokens, n_prompt, c->path, c->path_cap);
	diagnose(c, root, tokens, n_prompt, m, &miss);
	for (uint32_t i = 0; i < m; i++) {
		seq->nodes[i] = c->path[i];
		seq->block_ids[i] = kvp_tree_node_block(c->path[i]);
		pin_node(c, c->path[i]);
	}
	if (c->cfg.tenant_quota && need > c->cfg.tenant_quota) {
		/* it could never run: keep what the namespace has cached */
		c->st.quota_refusals++;
		quota = true;
		got = m;
	} else {
		for (got = m; got < need; got++) {
			if (take_block(c, group, r->blocks, &seq->block_ids[got], &quota))
				break;
			r->blocks++;
		}
	}
	if (got < need) {
		for (uint32_t i = m; i < got; i++)
			(void)kvp_pool_put(c->pool, seq->block_ids[i]);
		for (uint32_t i = m; i-- > 0;)
			unpin_node(c, seq->nodes[i]);
		running_put(c, r, got - m);
		c->st.insert_full++;
		rc = KVP_EFULL;
		goto out_free;
	}
	for (uint32_t i = 0; i < need; i++)
		seq->block_data[i] = kvp_pool_block_data(c->pool, seq->block_ids[i]);
	seq->root = root;
	seq->group = group;
	seq->ns = r;
	seq->n_blocks = need;
	seq->matched_blocks = m;
	seq->miss = miss;
	return KVP_OK;

out_free:
	free(seq->block_ids);
	free(seq->block_data);
	free(seq->nodes);
	memset(seq, 0, sizeof(*seq));
	seq->quota_full = quota;
	return rc;
}

int kvp_cache_seq_grow(struct kvp_cache *c, struct kvp_seq *seq, uint32_t n_positions)
{
	const uint32_t b = c->cfg.block_tokens;
	const uint32_t need = (uint32_t)(((uint64_t)n_positions + b - 1) / b);
	struct kvp_cache_ns *r = seq->ns;
	uint32_t *ids;
	void **data;
	uint32_t got;
	bool quota = false;

	seq->quota_full = false;
	if (need <= seq->n_blocks)
		return KVP_OK;
	if (c->cfg.tenant_quota && need > c->cfg.tenant_quota) {
		c->st.quota_refusals++;
		seq->quota_full = true;
		return KVP_EFULL;   /* it could never have them: give up nothing */
	}
	/* room first: the arrays only ever grow, so a failure keeps the sequence whole */
	ids = realloc(seq->block_ids, (size_t)need * sizeof(*ids));
	if (!ids)
		return KVP_ENOMEM;
	seq->block_ids = ids;
	data = realloc(seq->block_data, (size_t)need * sizeof(*data));
	if (!data)
		return KVP_ENOMEM;
	seq->block_data = data;
	for (got = seq->n_blocks; got < need; got++) {
		if (take_block(c, seq->group, r->blocks, &ids[got], &quota))
			break;
		r->blocks++;
	}
	if (got < need) {
		for (uint32_t i = seq->n_blocks; i < got; i++)
			(void)kvp_pool_put(c->pool, ids[i]);
		r->blocks -= got - seq->n_blocks;
		c->st.insert_full++;
		seq->quota_full = quota;
		return KVP_EFULL;
	}
	for (uint32_t i = seq->n_blocks; i < need; i++)
		data[i] = kvp_pool_block_data(c->pool, ids[i]);
	seq->n_blocks = need;
	return KVP_OK;
}

uint32_t kvp_cache_seq_publish(struct kvp_cache *c, struct kvp_seq *seq, const uint32_t *tokens,
			       uint32_t n_valid)
{
	const uint32_t b = c->cfg.block_tokens;
	uint32_t full = n_valid / b, i = seq->matched_blocks, done;
	struct kvp_tree_node *parent = i ? seq->nodes[i - 1] : NULL, **nodes;
	struct kvp_key key = parent ? kvp_tree_node_key(parent) : seq->root;

	assert(seq->ns);
	if (full > seq->n_blocks)
		full = seq->n_blocks;
	if (full <= i)
		return 0;
	nodes = realloc(seq->nodes, (size_t)full * sizeof(*nodes));
	if (!nodes)
		return 0;   /* seq_end caches them instead */
	seq->nodes = nodes;
	for (; i < full; i++) {
		struct kvp_tree_node *node;

		key = kvp_block_key(key, tokens + (size_t)i * b, b);
		/* cached meanwhile by another request (or no memory): seq_end sorts out the
		 * rest as it always does */
		if (kvp_tree_insert_grouped(c->tree, seq->root, seq->group, parent, key,
					    tokens + (size_t)i * b, seq->block_ids[i], &node))
			break;
		/* the sequence's reference on its block becomes the pin of the node, as
		 * for a matched prefix */
		kvp_tree_pin(c->tree, node);
		seq->nodes[i] = node;
		c->st.inserted_blocks++;
		stored_node(c, node);
		parent = node;
	}
	done = i - seq->matched_blocks;
	seq->ns->blocks -= done;   /* the tree counts them now, not the running tally */
	seq->matched_blocks = i;
	return done;
}

void kvp_cache_seq_end(struct kvp_cache *c, struct kvp_seq *seq, const uint32_t *tokens,
		       uint32_t n_valid)
{
	const uint32_t b = c->cfg.block_tokens;
	uint32_t full = n_valid / b, i = seq->matched_blocks;
	struct kvp_tree_node *parent = i ? seq->nodes[i - 1] : NULL;
	struct kvp_key key = parent ? kvp_tree_node_key(parent) : seq->root;

	assert(seq->ns);
	if (full > seq->n_blocks)
		full = seq->n_blocks;
	for (; i < full; i++) {
		struct kvp_tree_node *node;
		uint32_t id = seq->block_ids[i];
		int rc;

		key = kvp_block_key(key, tokens + (size_t)i * b, b);
		rc = kvp_tree_insert_grouped(c->tree, seq->root, seq->group, parent, key,
					     tokens + (size_t)i * b, id,
				     &node);
		if (rc == KVP_EEXIST) {
			(void)kvp_pool_put(c->pool, id);   /* cached meanwhile: keep theirs */
		} else if (rc) {
			break;                             /* out of memory: free the rest */
		} else {
			(void)kvp_pool_unref(c->pool, id);
			c->st.inserted_blocks++;
			stored_node(c, node);
		}
		parent = node;
	}
	for (; i < seq->n_blocks; i++)
		if (i >= seq->matched_blocks)
			(void)kvp_pool_put(c->pool, seq->block_ids[i]);
	for (uint32_t j = seq->matched_blocks; j-- > 0;)
		unpin_node(c, seq->nodes[j]);
	running_put(c, seq->ns, seq->n_blocks - seq->matched_blocks);
	free(seq->block_ids);
	free(seq->block_data);
	free(seq->nodes);
	memset(seq, 0, sizeof(*seq));
}

/* ---- administration ------------------------------------------------------------- */

static void evicted_cb(void *arg, uint32_t block_id)
{
	struct kvp_cache *c = arg;

	(void)kvp_pool_evict(c->pool, block_id);
	c->st.evictions++;
}

size_t kvp_cache_clear(struct kvp_cache *c, const struct kvp_key *root)
{
	size_t before = c->st.evictions;

	if (root)
		(void)kvp_tree_clear_ns(c->tree, *root, evicted_cb, c);
	else
		kvp_tree_clear(c->tree, evicted_cb, c);
	return (size_t)(c->st.evictions - before);
}

int kvp_cache_evict_prefix(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			   size_t n_tokens, uint32_t *evicted)
{
	size_t before = c->st.evictions, m;
	uint32_t id;

	*evicted = 0;
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	m = kvp_tree_match(c->tree, root, tokens, n_tokens, c->path, c->path_cap);
	if (m == 0)
		return KVP_OK;
	/* everything under the deepest matched block, then the matched blocks above it
	 * for as long as each is left an unpinned leaf (the tree stays prefix-closed) */
	(void)kvp_tree_evict_under(c->tree, c->path[m - 1], evicted_cb, c);
	for (size_t i = m - 1; i-- > 0;) {
		if (kvp_tree_evict_node(c->tree, c->path[i], &id))
			break;
		evicted_cb(c, id);
	}
	*evicted = (uint32_t)(c->st.evictions - before);
	return KVP_OK;
}

int kvp_cache_admin_pin(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			size_t n_tokens, uint32_t *pinned)
{
	struct kvp_cache_result res;
	int rc;

	*pinned = 0;
	/* a lease of the administrator's owner: no lease limit, and no connection whose
	 * closing would release it */
	rc = kvp_cache_lookup(c, root, tokens, n_tokens, KVP_CACHE_ADMIN_OWNER, true,
			      c->admin_ids, &res);
	if (rc)
		return rc;
	*pinned = res.n_blocks;
	return KVP_OK;
}

int kvp_cache_admin_unpin(struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
			  size_t n_tokens, uint32_t *unpinned)
{
	struct owner *o = owner_find(c, KVP_CACHE_ADMIN_OWNER);
	struct lease *best = NULL;
	size_t m;

	*unpinned = 0;
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	if (!o)
		return KVP_ENOTFOUND;
	/* pinned blocks cannot go, so a pin's blocks still match; blocks cached since
	 * may make the match longer than the pin: take the longest pin it covers */
	m = kvp_tree_match(c->tree, root, tokens, n_tokens, c->path, c->path_cap);
	for (struct lease *l = o->leases; l; l = l->next) {
		if (l->n > m || (best && best->n >= l->n))
			continue;
		if (memcmp(l->nodes, c->path, l->n * sizeof(l->nodes[0])) == 0)
			best = l;
	}
	if (!best)
		return KVP_ENOTFOUND;
	*unpinned = lease_drop(c, o, best);
	if (o->n_leases == 0)
		owner_remove(c, o);
	return KVP_OK;
}

void kvp_cache_set_demote(struct kvp_cache *c,
			  void (*demote)(void *arg, const struct kvp_cache_block_info *b), void *arg)
{
	c->demote = demote;
	c->demote_arg = arg;
	kvp_tree_set_evict_hook(c->tree, demote ? demote_node : NULL, c);
}

size_t kvp_cache_demote_some(struct kvp_cache *c, size_t max)
{
	uint32_t id;
	size_t n = 0;

	while (n < max && kvp_tree_evict(c->tree, &id) == 0) {
		(void)kvp_pool_evict(c->pool, id);
		n++;
	}
	return n;
}

int kvp_cache_block_read(const struct kvp_cache *c, uint32_t id, void *dst)
{
	return kvp_pool_block_read(c->pool, id, dst);
}

const void *kvp_cache_block_host(const struct kvp_cache *c, uint32_t id)
{
	return kvp_pool_on_device(c->pool) ? NULL : kvp_pool_block_data(c->pool, id);
}

int kvp_cache_block_write(struct kvp_cache *c, uint32_t id, const void *src)
{
	return kvp_pool_block_write(c->pool, id, src);
}

size_t kvp_cache_block_bytes(const struct kvp_cache *c)
{
	return kvp_pool_block_bytes(c->pool);
}

bool kvp_cache_on_device(const struct kvp_cache *c)
{
	return kvp_pool_on_device(c->pool);
}

/* visit(c, l, tokens, n_tokens, arg) for every lease of owner id that holds blocks, with
 * its prefix (its blocks' tokens end to end, valid during the call). KVP_OK or
 * KVP_ENOMEM. */
static int each_prefix(const struct kvp_cache *c, uint64_t id,
		       void (*visit)(const struct kvp_cache *c, const struct lease *l,
				     const uint32_t *tokens, size_t n_tokens, void *arg),
		       void *arg)
{
	const struct owner *o = owner_find(c, id);
	const uint32_t b = c->cfg.block_tokens;
	uint32_t *tokens;

	if (!o)
		return KVP_OK;
	tokens = malloc(c->path_cap * b * sizeof(*tokens));
	if (!tokens)
		return KVP_ENOMEM;
	for (const struct lease *l = o->leases; l; l = l->next) {
		if (l->n == 0)
			continue;
		for (uint32_t i = 0; i < l->n; i++)
			memcpy(tokens + (size_t)i * b, kvp_tree_node_tokens(l->nodes[i]),
			       b * sizeof(*tokens));
		visit(c, l, tokens, (size_t)l->n * b, arg);
	}
	free(tokens);
	return KVP_OK;
}

struct pins_visit {
	void (*fn)(void *arg, struct kvp_key root, struct kvp_key group, const uint32_t *tokens,
		   size_t n_tokens);
	void *arg;
};

static void visit_pin(const struct kvp_cache *c, const struct lease *l, const uint32_t *tokens,
		      size_t n_tokens, void *arg)
{
	const struct pins_visit *v = arg;
	struct kvp_key root = kvp_tree_node_root(l->nodes[0]), group;

	if (kvp_tree_ns_group(c->tree, root, &group) != KVP_OK)
		group = root;
	v->fn(v->arg, root, group, tokens, n_tokens);
}

int kvp_cache_admin_pins(const struct kvp_cache *c,
			 void (*fn)(void *arg, struct kvp_key root, struct kvp_key group,
				    const uint32_t *tokens, size_t n_tokens),
			 void *arg)
{
	struct pins_visit v = { fn, arg };

	return each_prefix(c, KVP_CACHE_ADMIN_OWNER, visit_pin, &v);
}

struct keeps_visit {
	void (*fn)(void *arg, const struct kvp_cache_keep_info *k);
	void *arg;
};

static void visit_keep(const struct kvp_cache *c, const struct lease *l, const uint32_t *tokens,
		       size_t n_tokens, void *arg)
{
	const struct keeps_visit *v = arg;
	const struct kvp_cache_keep_info k = {
		.root = kvp_tree_node_root(l->nodes[0]), .group = l->group, .tokens = tokens,
		.n_tokens = n_tokens, .until_ms = l->until_ms, .priority = l->priority,
	};

	(void)c;
	v->fn(v->arg, &k);
}

int kvp_cache_keeps(const struct kvp_cache *c,
		    void (*fn)(void *arg, const struct kvp_cache_keep_info *k), void *arg)
{
	struct keeps_visit v = { fn, arg };

	return each_prefix(c, KVP_CACHE_KEEP_OWNER, visit_keep, &v);
}

size_t kvp_cache_admin_unpin_all(struct kvp_cache *c)
{
	struct owner *o = owner_find(c, KVP_CACHE_ADMIN_OWNER);
	size_t n = 0;

	while (o && o->leases) {
		(void)lease_drop(c, o, o->leases);
		n++;
	}
	if (o)
		owner_remove(c, o);
	return n;
}

size_t kvp_cache_ns_blocks(const struct kvp_cache *c, struct kvp_key root)
{
	return kvp_tree_ns_size(c->tree, root);
}

size_t kvp_cache_group_blocks(const struct kvp_cache *c, struct kvp_key group)
{
	return kvp_tree_group_size(c->tree, group);
}

int kvp_cache_explain(const struct kvp_cache *c, struct kvp_key root, const uint32_t *tokens,
		      size_t n_tokens, uint8_t *fates, uint64_t *ages, size_t *n_out)
{
	*n_out = 0;
	if (n_tokens > c->cfg.max_tokens)
		return KVP_ETOOBIG;
	return kvp_diag_explain(c->diag, c->tree, root, tokens, n_tokens, fates, ages, n_out);
}

size_t kvp_cache_diag_bytes(const struct kvp_cache *c)
{
	return kvp_diag_bytes(c->diag);
}

void kvp_cache_get_stats(const struct kvp_cache *c, struct kvp_cache_stats *st)
{
	const struct owner *keep = owner_find(c, KVP_CACHE_KEEP_OWNER);

	*st = c->st;
	st->keeps_active = keep ? keep->n_leases : 0;
	st->pool = kvp_pool_counts(c->pool);
	st->tree_nodes = kvp_tree_size(c->tree);
	st->tree_node_allocs = kvp_tree_node_allocations(c->tree);
	st->diag_bytes = kvp_diag_bytes(c->diag);
}

int kvp_cache_check(const struct kvp_cache *c)
{
	struct kvp_pool_counts pc = kvp_pool_counts(c->pool);
	uint32_t *cnt;
	int rc = KVP_OK;

	if (kvp_pool_check(c->pool))
		return KVP_EINTERNAL;
	rc = kvp_tree_check(c->tree);
	if (rc)
		return rc == KVP_ENOMEM ? rc : KVP_EINTERNAL;
	/* every tree node owns exactly one non-free block */
	if ((size_t)pc.cached + pc.referenced != kvp_tree_size(c->tree))
		return KVP_EINTERNAL;
	cnt = calloc(pc.total, sizeof(*cnt));
	if (!cnt)
		return KVP_ENOMEM;
	for (size_t b = 0; b < c->n_buckets; b++)
		for (const struct owner *o = c->owners[b]; o; o = o->hnext)
			for (const struct lease *l = o->leases; l; l = l->next)
				for (uint32_t i = 0; i < l->n; i++)
					cnt[kvp_tree_node_block(l->nodes[i])]++;
	for (size_t b = 0; b < c->n_buckets && rc == KVP_OK; b++)
		for (const struct owner *o = c->owners[b]; o && rc == KVP_OK; o = o->hnext)
			for (const struct lease *l = o->leases; l; l = l->next)
				for (uint32_t i = 0; i < l->n; i++)
					if (kvp_tree_node_pins(l->nodes[i]) !=
					    cnt[kvp_tree_node_block(l->nodes[i])])
						rc = KVP_EINTERNAL;
	for (uint32_t id = 0; id < pc.total && rc == KVP_OK; id++)
		if (kvp_pool_refs(c->pool, id) != cnt[id])
			rc = KVP_EINTERNAL;
	free(cnt);
	return rc;
}
