/*
 * test_faults.c - allocation failure injected at every allocation site of index/ and
 * store/, in turn: the call fails cleanly and the structures stay valid.
 *
 * A counting allocator is installed with kvp_index_set_allocator and
 * kvp_store_set_allocator. It answers NULL to the N-th allocation, and either to every
 * one after it too (FAIL_FROM: memory stays short) or to that one only (FAIL_ONCE:
 * memory comes back). For N = 1, 2, 3, ... a scripted workload runs from scratch until
 * a run completes without reaching the N-th allocation; that run must be the
 * fault-free run (N == its allocation count + 1).
 *
 * The cache workload (tree + pool + leases, as kvprefixd uses them): inserts, pinned and
 * not, some long enough to evict and, once, enough pinned leases to fill the pool;
 * lookups with and without pin (and refused as busy); releases, by the right and the
 * wrong owner, and whole owners; generations (seq_begin, then seq_end caching what was
 * computed: the other caller of kvp_tree_insert); and lookups of every recent prompt.
 * The table grows 16 -> 32 -> 64 buckets and beyond. The tree workload drives the tree
 * alone (insert, re-insert, match, pin, unpin, evict, clear); the pool test its create.
 * After every step:
 *   - the call returned what a model predicts, or KVP_ENOMEM, and KVP_ENOMEM only when
 *     a failure was injected during that very call;
 *   - kvp_cache_check (pool check + tree check + pins == leases) / kvp_tree_check /
 *     kvp_pool_check pass;
 *   - every observable result (matched blocks, block ids, lease ids, new blocks,
 *     pool_full, evictions, victims, pool counts, tree size, evictable leaves) equals a
 *     trivial model's: a flat array of cached blocks with last-use ticks, evicting the
 *     least recently used unpinned leaf, and the pool's LIFO free list. A failed insert
 *     may have cached a prefix of its blocks (kvp_cache.h says so): the model takes the
 *     point of failure from the result (res.n_blocks) and then checks everything
 *     else, and a follow-up lookup checks what actually got cached (seq_end returns
 *     nothing: there the tree's size says where it stopped);
 *   - nothing leaks: the allocations live through the hooks are exactly
 *     tree + bucket array + one per node (+ the pool's four), and 0 after destroy.
 *
 * Coverage is checked, not assumed: the allocator records the return address of every
 * call (one per call instruction) and of every call it failed, and the sweep must have
 * failed every allocation site of index/ and store/. There are 12, counted by hand:
 *
 *   index/tree.c  kvp_tree_create   the tree                    KVP_INDEX_MALLOC(sizeof(*t))
 *   index/tree.c  kvp_tree_create   the first bucket array      KVP_INDEX_MALLOC(16 * ptr)
 *   index/slab.c  chunk_new         a chunk of node slots       kvp_index_alloc(slots * slot)
 *   index/slab.c  table_grow        the doubled chunk table     kvp_index_alloc(cap * ptr)
 *   index/tree.c  table_maybe_grow  the doubled bucket array    KVP_INDEX_MALLOC(new_n * ptr)
 *   index/tree.c  kvp_tree_create   the namespace table         KVP_INDEX_MALLOC(4 * ptr) 
 *   index/tree.c  ns_get            a namespace or group record KVP_INDEX_MALLOC(sizeof(*ns))
 *                 (for a namespace's first node, and for its group when that is a
 *                 record not made yet: the workload reaches both ways)
 *   index/tree.c  ns_maybe_grow     the doubled namespace table KVP_INDEX_MALLOC(new_n * ptr)
 *   store/pool.c  kvp_pool_create   the pool                    store_alloc(sizeof(*p))
 *   store/pool.c  kvp_pool_create   state[]                     store_alloc(capacity)
 *   store/pool.c  kvp_pool_create   refs[]                      store_alloc(capacity * 4)
 *   store/pool.c  kvp_pool_create   next[]                      store_alloc(capacity * 4)
 *
 * (index/hash.c allocates nothing; kvp_pool_attach_memory uses mmap, not the hook.)
 * If a site is added, EXPECTED_SITES must change with this list.
 *
 * Not covered here: cache/cache.c's own allocations (the cache struct, its path
 * scratch, the owner table and its growth, owners, leases and their shrinking
 * realloc, sequence arrays, kvp_cache_check's scratch) call libc directly, not a hook,
 * so no failure can be injected there from a test.
 */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cache.h"
#include "kvp_index.h"
#include "kvp_store.h"

#define EXPECTED_SITES 12       /* the list above */
#define INDEX_SITES 8
#define STORE_SITES 4

/* ---- failure reports with context --------------------------------------------------- */

static struct {
	const char *test;
	uint64_t fail_at;
	int op;
	const char *what;
} ctx;

static void req_fail(int line, const char *cond, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cr_assert_fail("line %d: %s: %s [%s, fail_at %llu, op %d (%s)]", line, cond, msg,
		       ctx.test, (unsigned long long)ctx.fail_at, ctx.op,
		       ctx.what ? ctx.what : "-");
}

/* A plain branch on the hot path; criterion only when something is wrong. */
#define REQ(cond, ...)                                            \
	do {                                                      \
		if (!(cond))                                      \
			req_fail(__LINE__, #cond, __VA_ARGS__);   \
	} while (0)

/* ---- the failing allocator ---------------------------------------------------------- */

enum fail_mode {
	FAIL_ONCE,      /* the N-th allocation fails, later ones succeed */
	FAIL_FROM,      /* the N-th and every later allocation fail */
};

#define MAX_SITES 32

static struct {
	uint64_t calls;            /* allocation attempts since fa_arm */
	uint64_t fail_at;          /* 0: never fail */
	enum fail_mode mode;
	uint64_t failures;         /* attempts answered with NULL */
	long live;                 /* returned and not yet released */
	void *seen[MAX_SITES];     /* call sites that asked (return addresses) */
	size_t n_seen;
	void *failed[MAX_SITES];   /* call sites that were refused */
	size_t n_failed;
} fa;

static void site_add(void **set, size_t *n, void *site)
{
	for (size_t i = 0; i < *n; i++)
		if (set[i] == site)
			return;
	if (*n < MAX_SITES)
		set[(*n)++] = site;
}

static __attribute__((noinline)) void *fa_alloc(size_t size)
{
	void *site = __builtin_return_address(0);
	void *p;

	fa.calls++;
	site_add(fa.seen, &fa.n_seen, site);
	if (fa.fail_at && (fa.calls == fa.fail_at ||
			   (fa.mode == FAIL_FROM && fa.calls > fa.fail_at))) {
		fa.failures++;
		site_add(fa.failed, &fa.n_failed, site);
		return NULL;
	}
	p = malloc(size ? size : 1);
	if (p)
		fa.live++;
	return p;
}

static void fa_release(void *p)
{
	if (!p)
		return;
	fa.live--;
	free(p);
}

static void fa_install(const char *test)
{
	memset(&fa, 0, sizeof(fa));
	memset(&ctx, 0, sizeof(ctx));
	ctx.test = test;
	kvp_index_set_allocator(fa_alloc, fa_release);
	kvp_store_set_allocator(fa_alloc, fa_release);
}

static void fa_uninstall(void)
{
	kvp_index_set_allocator(NULL, NULL);
	kvp_store_set_allocator(NULL, NULL);
}

/* Start a run: counters to zero, site sets kept across the sweep. */
static void fa_arm(uint64_t fail_at, enum fail_mode mode)
{
	fa.calls = 0;
	fa.failures = 0;
	fa.fail_at = fail_at;
	fa.mode = mode;
	ctx.fail_at = fail_at;
	ctx.op = -1;
	ctx.what = "create";
}

/* ---- workload shape ----------------------------------------------------------------- */

#define B 4u                    /* tokens per block */
#define MAXB 24u                /* blocks per prompt (max_tokens / B) */
#define MAX_TOKENS (MAXB * B)
#define CAP 80u                 /* pool blocks: the table grows 16 -> 32 -> 64 -> 128 */
#define MAX_LEASES 3u
#define N_OWNERS 3u
#define N_NS 16   /* well over 4, so the namespace table has to grow */
/* Quota groups: namespaces 0..3 are their own; the others join them, so a group's
 * record is also made before any namespace of it exists (namespace 5 before 1). */
#define N_GROUPS 4
#define GROUP_OF(ns) ((ns) % N_GROUPS)
#define N_OPS 240
#define PIN_STORM 120           /* cache runs: op where every owner pins long prompts */
#define HIST 24
#define MODEL_SLOTS 160u        /* cache runs stay <= CAP nodes; tree runs <= ~130 */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)((rng_next(r) >> 32) % n);
}

/* A prompt: nb full blocks, each named by a tag (its tokens are a function of the tag,
 * the tag is its first token, so equal tags <=> equal tokens), plus tail < B tokens. */
struct prompt {
	int ns;
	uint32_t nb;
	uint32_t tail;
	uint32_t tags[MAXB];
};

static size_t prompt_tokens(const struct prompt *p, uint32_t *tok)
{
	for (uint32_t i = 0; i < p->nb; i++)
		for (uint32_t t = 0; t < B; t++)
			tok[i * B + t] = t == 0 ? p->tags[i] : p->tags[i] * 2654435761u + t;
	for (uint32_t t = 0; t < p->tail; t++)
		tok[p->nb * B + t] = 0xFFFF0000u + t;
	return (size_t)p->nb * B + p->tail;
}

struct gen {
	struct rng r;
	uint32_t next_tag;
	struct prompt hist[HIST];
	int n_hist;
};

static void gen_init(struct gen *g)
{
	memset(g, 0, sizeof(*g));
	g->r.s = 0x5eed0fa17ULL;     /* the same script for every N */
	g->next_tag = 1;
}

static void gen_remember(struct gen *g, const struct prompt *p)
{
	if (g->n_hist < HIST)
		g->hist[g->n_hist++] = *p;
	else
		g->hist[rng_below(&g->r, HIST)] = *p;
}

/* A prompt of nb blocks no one has seen. */
static void gen_fresh(struct gen *g, struct prompt *p, uint32_t nb)
{
	p->ns = (int)rng_below(&g->r, N_NS);
	p->nb = nb;
	for (uint32_t i = 0; i < p->nb; i++)
		p->tags[i] = g->next_tag++;
	p->tail = p->nb < MAXB ? rng_below(&g->r, B) : 0;
	gen_remember(g, p);
}

/* New prompts mostly extend a cut of an earlier one, so prefixes are shared; some are
 * long and fresh, to push the pool into eviction. */
static void gen_prompt(struct gen *g, struct prompt *p)
{
	uint32_t kind = rng_below(&g->r, 16);

	if (g->n_hist == 0 || kind < 3) {
		p->ns = (int)rng_below(&g->r, N_NS);
		p->nb = kind == 0 ? 16 + rng_below(&g->r, MAXB - 15) : 1 + rng_below(&g->r, 10);
		for (uint32_t i = 0; i < p->nb; i++)
			p->tags[i] = g->next_tag++;
	} else {
		const struct prompt *h = &g->hist[rng_below(&g->r, (uint32_t)g->n_hist)];
		uint32_t ext = rng_below(&g->r, 7);

		*p = *h;
		p->nb = rng_below(&g->r, h->nb + 1);
		while (ext-- > 0 && p->nb < MAXB)
			p->tags[p->nb++] = g->next_tag++;
	}
	p->tail = p->nb < MAXB ? rng_below(&g->r, B) : 0;
	gen_remember(g, p);
}

/* ---- the model ---------------------------------------------------------------------- */

struct mnode {
	bool alive;
	int ns;
	int parent;                  /* slot, -1 at depth 0 */
	uint32_t tag;
	uint64_t tick;
	uint32_t pins;
	uint32_t children;
	uint32_t block;
	struct kvp_tree_node *tn;    /* tree runs */
};

struct mlease {
	uint64_t id;
	uint64_t owner;
	uint32_t n;
	int nodes[MAXB];
};

struct model {
	struct mnode v[MODEL_SLOTS];
	uint32_t alive;
	uint32_t peak;               /* the most alive at once */
	uint32_t hi;                 /* slots [hi, MODEL_SLOTS) have never been used */
	uint64_t tick;               /* mirrors the tree's: +1 per match, +1 per new node */
	uint32_t free_stack[CAP];    /* the pool's LIFO free list, top last */
	uint32_t n_free;
	struct mlease lease[N_OWNERS * MAX_LEASES];
	uint32_t n_leases;
	uint32_t owner_leases[N_OWNERS + 1];
	uint64_t next_lease;
	uint64_t evictions;
};

static void model_init(struct model *m)
{
	memset(m, 0, sizeof(*m));
	for (uint32_t i = 0; i < CAP; i++)
		m->free_stack[i] = CAP - 1 - i;    /* block 0 on top */
	m->n_free = CAP;
	m->next_lease = 1;
}

static int model_child(const struct model *m, int ns, int parent, uint32_t tag)
{
	for (uint32_t i = 0; i < m->hi; i++) {
		const struct mnode *x = &m->v[i];

		if (x->alive && x->ns == ns && x->parent == parent && x->tag == tag)
			return (int)i;
	}
	return -1;
}

/* A match as the tree does it: one tick, given to every matched node. */
static uint32_t model_match(struct model *m, const struct prompt *p, int *path)
{
	int parent = -1;
	uint32_t i;

	m->tick++;
	for (i = 0; i < p->nb; i++) {
		int c = model_child(m, p->ns, parent, p->tags[i]);

		if (c < 0)
			break;
		m->v[c].tick = m->tick;
		path[i] = parent = c;
	}
	return i;
}

static bool model_evictable(const struct mnode *x)
{
	return x->alive && x->pins == 0 && x->children == 0;
}

static uint32_t model_n_evictable(const struct model *m)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < m->hi; i++)
		n += model_evictable(&m->v[i]);
	return n;
}

/* The tree's namespace records: one for each namespace holding a node, and one for
 * each group of those that is not itself such a namespace. */
static uint32_t model_n_ns(const struct model *m)
{
	bool seen[N_NS] = { false };
	uint32_t n = 0;

	for (uint32_t i = 0; i < m->hi; i++)
		if (m->v[i].alive)
			seen[m->v[i].ns] = seen[GROUP_OF(m->v[i].ns)] = true;
	for (int k = 0; k < N_NS; k++)
		n += seen[k];
	return n;
}

static uint32_t model_n_pinned(const struct model *m)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < m->hi; i++)
		n += m->v[i].alive && m->v[i].pins > 0;
	return n;
}

/* The least recently used unpinned leaf, or -1 (ticks of leaves are distinct). */
static int model_victim(const struct model *m)
{
	int best = -1;

	for (uint32_t i = 0; i < m->hi; i++) {
		const struct mnode *x = &m->v[i];

		if (!model_evictable(x))
			continue;
		REQ(best < 0 || x->tick != m->v[best].tick, "model: LRU tie");
		if (best < 0 || x->tick < m->v[best].tick)
			best = (int)i;
	}
	return best;
}

static int model_add(struct model *m, const struct prompt *p, int parent, uint32_t k,
		     uint32_t block)
{
	for (uint32_t i = 0; i < MODEL_SLOTS; i++) {
		struct mnode *x = &m->v[i];

		if (x->alive)
			continue;
		*x = (struct mnode){ .alive = true, .ns = p->ns, .parent = parent,
				     .tag = p->tags[k], .tick = ++m->tick, .block = block };
		if (parent >= 0)
			m->v[parent].children++;
		m->alive++;
		if (m->alive > m->peak)
			m->peak = m->alive;
		if (i >= m->hi)
			m->hi = i + 1;
		return (int)i;
	}
	REQ(0, "model full");
	return -1;
}

static void model_remove(struct model *m, int s)
{
	struct mnode *x = &m->v[s];

	REQ(model_evictable(x), "model: removing a node that is not an evictable leaf");
	x->alive = false;
	if (x->parent >= 0)
		m->v[x->parent].children--;
	m->alive--;
}

static void model_lease_add(struct model *m, uint64_t owner, const int *path, uint32_t n)
{
	struct mlease *l = &m->lease[m->n_leases++];

	l->id = m->next_lease++;
	l->owner = owner;
	l->n = n;
	for (uint32_t i = 0; i < n; i++) {
		l->nodes[i] = path[i];
		m->v[path[i]].pins++;
	}
	m->owner_leases[owner]++;
}

static void model_lease_drop(struct model *m, uint32_t i)
{
	struct mlease *l = &m->lease[i];

	for (uint32_t k = 0; k < l->n; k++) {
		REQ(m->v[l->nodes[k]].pins > 0, "model: unpinning an unpinned node");
		m->v[l->nodes[k]].pins--;
	}
	m->owner_leases[l->owner]--;
	m->lease[i] = m->lease[--m->n_leases];
}

/* ==== the cache ========================================================================= */

struct crun {
	struct kvp_cache *c;
	struct kvp_key root[N_NS];
	struct model m;
	struct gen g;
	enum fail_mode mode;
	/* totals over the sweep, to show the workload does what it says */
	uint64_t n_enomem, n_full, n_evict_ops, n_busy, n_seq, n_seq_enomem;
};

/* Allocations live through the hooks while a cache exists: the tree, its bucket array,
 * its namespace table, the node slab's (kvp_tree_node_allocations) and one per
 * namespace holding a node; the pool and its three arrays. */
#define CACHE_FIXED_ALLOCS 7

static void cache_compare(struct crun *r)
{
	struct kvp_cache_stats st;
	const struct model *m = &r->m;
	int rc = kvp_cache_check(r->c);

	REQ(rc == 0, "kvp_cache_check: %d", rc);
	kvp_cache_get_stats(r->c, &st);
	REQ(st.tree_nodes == m->alive, "tree %zu nodes, model %u", st.tree_nodes, m->alive);
	REQ(st.pool.free == m->n_free, "pool %u free, model %u", st.pool.free, m->n_free);
	REQ(st.pool.referenced == model_n_pinned(m), "pool %u referenced, model %u",
	    st.pool.referenced, model_n_pinned(m));
	REQ(st.pool.cached == m->alive - model_n_pinned(m), "pool %u cached", st.pool.cached);
	REQ(st.evictions == m->evictions, "%llu evictions, model %llu",
	    (unsigned long long)st.evictions, (unsigned long long)m->evictions);
	REQ(st.leases_active == m->n_leases, "%llu leases, model %u",
	    (unsigned long long)st.leases_active, m->n_leases);
	REQ(fa.live == (long)(CACHE_FIXED_ALLOCS + st.tree_node_allocs + model_n_ns(m)) &&
	    st.tree_node_allocs <= 2 + 2 * m->peak, "%ld live allocations, %zu of the node slab, "
	    "for %u nodes (%u at most) in %u namespaces", fa.live, st.tree_node_allocs, m->alive,
	    m->peak, model_n_ns(m));
}

static void cache_lookup(struct crun *r, const struct prompt *p, uint64_t owner, bool pin)
{
	uint32_t tok[MAX_TOKENS], ids[MAXB];
	size_t nt = prompt_tokens(p, tok);
	struct kvp_cache_result res;
	struct model *m = &r->m;
	uint64_t calls = fa.calls;
	int path[MAXB], rc;
	uint32_t mm;

	rc = kvp_cache_lookup(r->c, r->root[p->ns], tok, nt, owner, pin, ids, &res);
	REQ(fa.calls == calls, "a lookup allocated through the index/store hooks");
	if (pin && m->owner_leases[owner] >= MAX_LEASES) {
		REQ(rc == KVP_EBUSY, "lookup: %d, want KVP_EBUSY", rc);
		r->n_busy++;
		return;
	}
	REQ(rc == 0, "lookup: %d", rc);
	mm = model_match(m, p, path);
	REQ(res.n_blocks == mm, "lookup matched %u blocks, model %u", res.n_blocks, mm);
	REQ(res.matched_tokens == mm * B && res.prompt_tokens == nt, "lookup token counts");
	for (uint32_t i = 0; i < mm; i++)
		REQ(ids[i] == m->v[path[i]].block, "lookup block %u: id %u, model %u", i, ids[i],
		    m->v[path[i]].block);
	if (pin && mm > 0) {
		REQ(res.lease == m->next_lease, "lease %llu, model %llu",
		    (unsigned long long)res.lease, (unsigned long long)m->next_lease);
		model_lease_add(m, owner, path, mm);
	} else {
		REQ(res.lease == 0, "lease without a pinned match");
	}
}

static void cache_insert(struct crun *r, const struct prompt *p, uint64_t owner, bool pin)
{
	uint32_t tok[MAX_TOKENS], ids[MAXB];
	size_t nt = prompt_tokens(p, tok);
	struct kvp_cache_result res;
	struct model *m = &r->m;
	uint64_t failures = fa.failures;
	bool failed_here, full = false;
	int path[MAXB], parent, rc, mrc = 0;
	uint32_t mm, k, added = 0;
	struct kvp_cache_stats st0, st;

	kvp_cache_get_stats(r->c, &st0);
	rc = kvp_cache_insert(r->c, r->root[p->ns], r->root[GROUP_OF(p->ns)], tok, nt, owner, pin,
			      ids, &res);
	failed_here = fa.failures != failures;
	REQ(rc != KVP_ENOMEM || failed_here, "KVP_ENOMEM with no failure injected");
	if (pin && m->owner_leases[owner] >= MAX_LEASES) {
		REQ(rc == KVP_EBUSY && !failed_here, "insert: %d, want KVP_EBUSY", rc);
		r->n_busy++;
		return;
	}

	/* what kvp_cache_insert does, step by step; where the real call ran out of memory
	 * (res.n_blocks, with KVP_ENOMEM) the model's node allocation fails too */
	mm = model_match(m, p, path);
	parent = mm > 0 ? path[mm - 1] : -1;
	if (parent >= 0)
		m->v[parent].pins++;          /* held while evicting for the rest */
	for (k = mm; k < p->nb; k++) {
		uint32_t id;
		int x;

		if (m->n_free == 0) {
			int v = model_victim(m);

			if (v < 0) {
				full = true;
				break;
			}
			model_remove(m, v);
			m->free_stack[m->n_free++] = m->v[v].block;
			m->evictions++;
		}
		id = m->free_stack[--m->n_free];
		if (rc == KVP_ENOMEM && k == res.n_blocks) {
			m->free_stack[m->n_free++] = id;   /* kvp_pool_put */
			mrc = KVP_ENOMEM;
			break;
		}
		x = model_add(m, p, parent, k, id);
		m->v[x].pins++;
		if (parent >= 0)
			m->v[parent].pins--;
		parent = x;
		path[k] = x;
		added++;
	}
	if (parent >= 0)
		m->v[parent].pins--;

	REQ(rc == mrc, "insert: %d, model %d (stopped at block %u of %u, res.n_blocks %u)",
	    rc, mrc, k, p->nb, res.n_blocks);
	REQ(res.n_blocks == k, "insert covers %u blocks, model %u", res.n_blocks, k);
	REQ(res.new_blocks == added, "insert added %u blocks, model %u", res.new_blocks, added);
	REQ(res.pool_full == full, "pool_full %d, model %d", res.pool_full, full);
	REQ(res.matched_tokens == k * B && res.prompt_tokens == nt, "insert token counts");
	for (uint32_t i = 0; i < k; i++)
		REQ(ids[i] == m->v[path[i]].block, "insert block %u: id %u, model %u", i, ids[i],
		    m->v[path[i]].block);
	if (pin && k > 0) {
		REQ(res.lease == m->next_lease, "lease %llu, model %llu",
		    (unsigned long long)res.lease, (unsigned long long)m->next_lease);
		model_lease_add(m, owner, path, k);
	} else {
		REQ(res.lease == 0, "lease without pinned blocks");
	}
	/* a failure that did not fail the call can only be a table's growth after a node */
	if (failed_here && rc == 0)
		REQ(added > 0, "an allocation failed under an insert that added nothing");
	/* short of memory for good: new nodes only in slots the node slab already held */
	kvp_cache_get_stats(r->c, &st);
	if (r->mode == FAIL_FROM && failures > 0)
		REQ(st.tree_node_allocs == st0.tree_node_allocs, "the slab grew after memory ran out");
	if (full)
		r->n_full++;
	if (rc == KVP_ENOMEM) {
		r->n_enomem++;
		cache_compare(r);
		ctx.what = "lookup after a failed insert";
		cache_lookup(r, p, 0, false);  /* what got cached is what the model says */
	}
}

/*
 * A generation as kvprefixd runs one in engine mode: seq_begin over a prompt of whole
 * blocks (pins the cached prefix, takes blocks for every position, evicting), then
 * seq_end with n_valid positions computed (caches the full ones). seq_end returns
 * nothing; where an injected failure stopped it, the tree's size says so.
 */
static void cache_generate(struct crun *r, const struct prompt *p0)
{
	struct model *m = &r->m;
	struct prompt q = *p0;
	uint32_t tok[MAX_TOKENS], ids[MAXB], prompt_nb, need, n_positions, n_valid, full;
	uint32_t mm, got, i, delta;
	uint64_t calls = fa.calls, failures, slab_allocs;
	struct kvp_cache_stats st;
	struct kvp_seq seq;
	int path[MAXB], parent, rc;

	/* the prompt: p0's full blocks; the positions: up to a few blocks more */
	prompt_nb = q.nb;
	need = prompt_nb + 1 + rng_below(&r->g.r, 4);
	if (need > MAXB)
		need = MAXB;
	while (q.nb < need)
		q.tags[q.nb++] = r->g.next_tag++;
	q.tail = 0;
	prompt_tokens(&q, tok);
	n_positions = need * B - rng_below(&r->g.r, B);
	if (n_positions < prompt_nb * B)
		n_positions = prompt_nb * B;
	n_valid = rng_below(&r->g.r, n_positions + 1);
	if (n_valid < prompt_nb * B && rng_below(&r->g.r, 2))
		n_valid = n_positions;

	rc = kvp_cache_seq_begin(r->c, r->root[q.ns], r->root[GROUP_OF(q.ns)], tok, prompt_nb * B,
				 n_positions, &seq);
	REQ(fa.calls == calls, "seq_begin allocated through the index/store hooks");

	q.nb = prompt_nb;
	mm = model_match(m, &q, path);
	q.nb = need;
	for (i = 0; i < mm; i++)
		m->v[path[i]].pins++;
	for (got = mm; got < need; got++) {
		if (m->n_free == 0) {
			int v = model_victim(m);

			if (v < 0)
				break;
			model_remove(m, v);
			m->free_stack[m->n_free++] = m->v[v].block;
			m->evictions++;
		}
		ids[got] = m->free_stack[--m->n_free];
	}
	if (got < need) {
		for (i = mm; i < got; i++)
			m->free_stack[m->n_free++] = ids[i];
		for (i = 0; i < mm; i++)
			m->v[path[i]].pins--;
		REQ(rc == KVP_EFULL, "seq_begin: %d, model KVP_EFULL", rc);
		r->n_full++;
		return;
	}
	REQ(rc == 0, "seq_begin: %d", rc);
	REQ(seq.n_blocks == need && seq.matched_blocks == mm, "seq: %u blocks, %u matched; "
	    "model %u, %u", seq.n_blocks, seq.matched_blocks, need, mm);
	for (i = 0; i < need; i++)
		REQ(seq.block_ids[i] == (i < mm ? m->v[path[i]].block : ids[i]),
		    "seq block %u: id %u", i, seq.block_ids[i]);
	kvp_cache_get_stats(r->c, &st);
	REQ(st.pool.free == m->n_free && st.pool.referenced == model_n_pinned(m) + need - mm,
	    "pool during a sequence: %u free, %u referenced", st.pool.free, st.pool.referenced);

	ctx.what = "generate: seq_end";
	failures = fa.failures;
	slab_allocs = st.tree_node_allocs;
	kvp_cache_seq_end(r->c, &seq, tok, n_valid);
	REQ(seq.block_ids == NULL && seq.n_blocks == 0, "seq_end left the sequence set");
	kvp_cache_get_stats(r->c, &st);
	REQ(st.tree_nodes >= m->alive, "seq_end removed nodes");
	delta = (uint32_t)(st.tree_nodes - m->alive);
	full = n_valid / B;
	if (full > need)
		full = need;
	parent = mm > 0 ? path[mm - 1] : -1;
	for (i = mm; i < full; i++) {
		if (i - mm == delta) {
			REQ(fa.failures != failures, "seq_end cached %u of %u blocks, nothing failed",
			    delta, full - mm);
			break;
		}
		parent = model_add(m, &q, parent, i, ids[i]);
	}
	REQ(i - mm == delta, "seq_end cached %u blocks, at most %u", delta, full - mm);
	for (; i < need; i++)
		m->free_stack[m->n_free++] = ids[i];
	for (i = 0; i < mm; i++)
		m->v[path[i]].pins--;
	/* after memory ran out, nodes go only into slots the node slab already held */
	if (r->mode == FAIL_FROM && failures > 0)
		REQ(st.tree_node_allocs == slab_allocs, "the node slab grew after memory ran out");
	r->n_seq++;
	gen_remember(&r->g, &q);
	if (fa.failures != failures) {
		r->n_seq_enomem += delta < full - mm;
		cache_compare(r);
		ctx.what = "lookup after a failed seq_end";
		cache_lookup(r, &q, 0, false);
	}
}

static void cache_release(struct crun *r, uint32_t pick, bool wrong_owner)
{
	struct model *m = &r->m;
	uint64_t calls = fa.calls, owner;
	struct mlease *l;
	uint32_t n = 0;
	int rc;

	if (m->n_leases == 0) {
		rc = kvp_cache_release(r->c, 1, 12345, &n);
		REQ(rc == KVP_ENOTFOUND, "release of no lease: %d", rc);
		return;
	}
	l = &m->lease[pick % m->n_leases];
	owner = wrong_owner ? l->owner % N_OWNERS + 1 : l->owner;
	rc = kvp_cache_release(r->c, owner, l->id, &n);
	REQ(fa.calls == calls, "a release allocated");
	if (wrong_owner) {
		REQ(rc == KVP_ENOTFOUND, "release by another owner: %d", rc);
		return;
	}
	REQ(rc == 0 && n == l->n, "release: %d, %u blocks, model %u", rc, n, l->n);
	model_lease_drop(m, pick % m->n_leases);
}

static void cache_release_owner(struct crun *r, uint64_t owner)
{
	struct model *m = &r->m;
	size_t n = kvp_cache_release_owner(r->c, owner);

	REQ(n == m->owner_leases[owner], "released %zu leases, model %u", n,
	    m->owner_leases[owner]);
	for (uint32_t i = m->n_leases; i-- > 0;)
		if (m->lease[i].owner == owner)
			model_lease_drop(m, i);
}

/* Every prompt seen lately, looked up unpinned: the whole cached content, compared. */
static void cache_verify_all(struct crun *r)
{
	for (int i = 0; i < r->g.n_hist; i++)
		cache_lookup(r, &r->g.hist[i], 0, false);
}

static const struct kvp_cache_config cache_cfg = {
	.block_tokens = B,
	.capacity_blocks = CAP,
	.max_tokens = MAX_TOKENS,
	.max_leases = MAX_LEASES,
};

/* One run of the script. Returns whether an injected failure was reached. */
static bool cache_run(struct crun *r, uint64_t fail_at)
{
	int rc;

	fa_arm(fail_at, r->mode);
	r->c = NULL;
	rc = kvp_cache_create(&cache_cfg, &r->c);
	if (rc) {
		REQ(rc == KVP_ENOMEM && fa.failures == 1, "create: %d after %llu failures", rc,
		    (unsigned long long)fa.failures);
		REQ(fa.live == 0, "a failed create left %ld allocations", fa.live);
		rc = kvp_cache_create(&cache_cfg, &r->c);
		if (r->mode == FAIL_FROM) {
			REQ(rc == KVP_ENOMEM && fa.live == 0, "create again: %d, %ld live", rc,
			    fa.live);
			return true;
		}
		REQ(rc == 0, "create after a single failure: %d", rc);
	} else {
		REQ(fa.failures == 0, "create succeeded through a failed allocation");
	}
	for (int n = 0; n < N_NS; n++)
		r->root[n] = kvp_ns_root("faults", (uint32_t)n, NULL);
	model_init(&r->m);
	gen_init(&r->g);
	cache_compare(r);

	for (int op = 0; op < N_OPS; op++) {
		uint32_t kind = rng_below(&r->g.r, 100);
		uint64_t owner = 1 + rng_below(&r->g.r, N_OWNERS);
		bool pin = rng_below(&r->g.r, 3) == 0;
		struct prompt p;

		ctx.op = op;
		if (op >= PIN_STORM && op < PIN_STORM + (int)(N_OWNERS * MAX_LEASES)) {
			/* every owner pins its full share of leases on fresh prompts, 9 x 9
			 * blocks: one more than the pool holds, so the last insert stops at a
			 * pool full of pinned blocks, and pinned requests are refused (busy)
			 * until something is released */
			ctx.what = "insert, pinned, storm";
			gen_fresh(&r->g, &p, 9);
			cache_insert(r, &p, 1 + (uint64_t)(op - PIN_STORM) % N_OWNERS, true);
		} else if (kind < 8) {
			ctx.what = "generate: seq_begin";
			gen_prompt(&r->g, &p);
			cache_generate(r, &p);
		} else if (kind < 45) {
			ctx.what = pin ? "insert, pinned" : "insert";
			gen_prompt(&r->g, &p);
			cache_insert(r, &p, owner, pin);
		} else if (kind < 70) {
			ctx.what = pin ? "lookup, pinned" : "lookup";
			gen_prompt(&r->g, &p);
			cache_lookup(r, &p, owner, pin);
		} else if (kind < 85) {
			ctx.what = "release";
			cache_release(r, rng_below(&r->g.r, 64), false);
		} else if (kind < 88) {
			ctx.what = "release by the wrong owner";
			cache_release(r, rng_below(&r->g.r, 64), true);
		} else if (kind < 95) {
			ctx.what = "release owner";
			cache_release_owner(r, owner);
		} else {
			ctx.what = "verify all";
			cache_verify_all(r);
		}
		cache_compare(r);
	}

	ctx.op = N_OPS;
	ctx.what = "final";
	for (uint64_t o = 1; o <= N_OWNERS; o++)
		cache_release_owner(r, o);
	cache_compare(r);
	cache_verify_all(r);
	cache_compare(r);
	REQ(r->m.n_leases == 0 && model_n_pinned(&r->m) == 0, "pins left after releasing all");
	kvp_cache_destroy(r->c);
	REQ(fa.live == 0, "%ld allocations leaked", fa.live);
	r->n_evict_ops += r->m.evictions;
	return fa.failures > 0;
}

static void cache_sweep(const char *test, enum fail_mode mode)
{
	static struct crun r;           /* large: keep it off the stack */
	uint64_t base_calls, n;

	memset(&r, 0, sizeof(r));
	r.mode = mode;
	fa_install(test);

	/* the fault-free run: its allocation count bounds the sweep */
	REQ(!cache_run(&r, 0), "no failure was asked for");
	base_calls = fa.calls;
	REQ(fa.n_seen == EXPECTED_SITES, "the workload reached %zu allocation sites, not %d",
	    fa.n_seen, EXPECTED_SITES);
	REQ(r.n_full > 0 && r.m.evictions > 0, "the workload never filled the pool: %llu full, %llu evictions", (unsigned long long)r.n_full, (unsigned long long)r.m.evictions);

	for (n = 1;; n++) {
		REQ(n <= base_calls + 1, "still failing past the fault-free allocation count");
		if (!cache_run(&r, n))
			break;
	}
	REQ(n == base_calls + 1, "the sweep ended at N = %llu, the fault-free run made %llu",
	    (unsigned long long)n, (unsigned long long)base_calls);
	REQ(fa.n_failed == EXPECTED_SITES, "failures injected at %zu call sites, not %d",
	    fa.n_failed, EXPECTED_SITES);
	REQ(fa.n_seen == EXPECTED_SITES, "%zu call sites seen in the sweep, not %d", fa.n_seen,
	    EXPECTED_SITES);
	REQ(r.n_enomem > 0 && r.n_seq_enomem > 0, "no insert / seq_end ever failed");
	REQ(r.n_busy > 0, "no owner ever ran out of leases");
	fa_uninstall();
	cr_log_info("%s: %llu runs, %llu allocations fault-free, %zu sites; %llu inserts "
		    "failed, %llu sequences (%llu cut short), %llu full pools, %llu evictions, "
		    "%llu busy", test, (unsigned long long)n, (unsigned long long)base_calls,
		    fa.n_failed, (unsigned long long)r.n_enomem, (unsigned long long)r.n_seq,
		    (unsigned long long)r.n_seq_enomem, (unsigned long long)r.n_full,
		    (unsigned long long)r.n_evict_ops, (unsigned long long)r.n_busy);
}

Test(faults, cache_fail_from_nth, .timeout = 120)
{
	cache_sweep("cache, fail N-th and after", FAIL_FROM);
}

Test(faults, cache_fail_only_nth, .timeout = 120)
{
	cache_sweep("cache, fail N-th only", FAIL_ONCE);
}

/* ==== the tree alone (insert, match, pin, evict, clear) ================================== */

struct trun {
	struct kvp_tree *t;
	struct kvp_key root[N_NS];
	struct model m;
	struct gen g;
	enum fail_mode mode;
	int pinned[16][MAXB];        /* pinned paths (model slots), to unpin later */
	uint32_t pinned_n[16];
	int n_pinned;
	uint64_t n_enomem;
};

static void tree_compare(struct trun *r)
{
	int rc = kvp_tree_check(r->t);
	size_t slab = kvp_tree_node_allocations(r->t);

	REQ(rc == 0, "kvp_tree_check: %d", rc);
	REQ(kvp_tree_size(r->t) == r->m.alive, "tree %zu nodes, model %u", kvp_tree_size(r->t),
	    r->m.alive);
	REQ(kvp_tree_evictable(r->t) == model_n_evictable(&r->m), "%zu evictable, model %u",
	    kvp_tree_evictable(r->t), model_n_evictable(&r->m));
	REQ(fa.live == (long)(3 + slab + model_n_ns(&r->m)) && slab <= 2 + 2 * (size_t)r->m.peak,
	    "%ld live allocations, %zu of the node slab, for %u nodes (%u at most) in %u "
	    "namespaces", fa.live, slab, r->m.alive, r->m.peak, model_n_ns(&r->m));
}

/* Match p in tree and model; returns the length, real nodes in path. */
static uint32_t tree_match(struct trun *r, const struct prompt *p, struct kvp_tree_node **path,
			   int *mpath)
{
	uint32_t tok[MAX_TOKENS];
	size_t nt = prompt_tokens(p, tok), got;
	uint64_t calls = fa.calls;
	uint32_t mm;

	got = kvp_tree_match(r->t, r->root[p->ns], tok, nt, path, MAXB);
	REQ(fa.calls == calls, "a match allocated");
	mm = model_match(&r->m, p, mpath);
	REQ(got == mm, "matched %zu blocks, model %u", got, mm);
	for (uint32_t i = 0; i < mm; i++)
		REQ(path[i] == r->m.v[mpath[i]].tn, "match: block %u is another node", i);
	return mm;
}

static void tree_insert(struct trun *r, const struct prompt *p)
{
	uint32_t tok[MAX_TOKENS];
	struct kvp_tree_node *path[MAXB], *parent, *out;
	int mpath[MAXB];
	uint32_t mm = tree_match(r, p, path, mpath);
	struct kvp_key key;

	prompt_tokens(p, tok);
	if (mm > 0) {
		/* the same block again: found, never allocated, nothing changes */
		uint64_t calls = fa.calls;
		struct kvp_tree_node *pp = mm > 1 ? path[mm - 2] : NULL;
		struct kvp_key pk = pp ? kvp_tree_node_key(pp) : r->root[p->ns];
		int rc = kvp_tree_insert_grouped(r->t, r->root[p->ns], r->root[GROUP_OF(p->ns)], pp,
						 kvp_block_key(pk, tok + (mm - 1) * B, B),
					 tok + (mm - 1) * B, 0, &out);

		REQ(rc == KVP_EEXIST && out == path[mm - 1] && fa.calls == calls,
		    "re-insert: %d", rc);
	}
	parent = mm > 0 ? path[mm - 1] : NULL;
	key = parent ? kvp_tree_node_key(parent) : r->root[p->ns];
	for (uint32_t k = mm; k < p->nb; k++) {
		const uint32_t *blk = tok + k * B;
		uint64_t failures = fa.failures;
		size_t slab_allocs = kvp_tree_node_allocations(r->t);
		size_t size = kvp_tree_size(r->t), evictable = kvp_tree_evictable(r->t);
		int rc, x;

		key = kvp_block_key(key, blk, B);
		rc = kvp_tree_insert_grouped(r->t, r->root[p->ns], r->root[GROUP_OF(p->ns)], parent, key,
					     blk, p->tags[k], &out);
		REQ(rc != KVP_ENOMEM || fa.failures != failures, "KVP_ENOMEM, nothing failed");
		if (rc == KVP_ENOMEM) {
			/* "a failed allocation leaves the tree unchanged" */
			r->n_enomem++;
			REQ(out == NULL, "a failed insert returned a node");
			REQ(kvp_tree_size(r->t) == size && kvp_tree_evictable(r->t) == evictable,
			    "a failed insert changed the tree");
			tree_compare(r);
			ctx.what = "match after a failed insert";
			REQ(tree_match(r, p, path, mpath) == k, "the failed block is there");
			return;
		}
		REQ(rc == 0, "insert: %d", rc);
		/* after memory ran out, only a slot the node slab already held can take it */
		if (r->mode == FAIL_FROM && failures > 0)
			REQ(kvp_tree_node_allocations(r->t) == slab_allocs,
			    "the node slab grew after memory ran out");
		REQ(out && kvp_tree_node_block(out) == p->tags[k] &&
		    kvp_tree_node_parent(out) == parent && kvp_tree_node_pins(out) == 0,
		    "the new node");
		x = model_add(&r->m, p, k > 0 ? mpath[k - 1] : -1, k, p->tags[k]);
		r->m.v[x].tn = out;
		mpath[k] = x;
		parent = out;
	}
}

static void tree_pin(struct trun *r, const struct prompt *p)
{
	struct kvp_tree_node *path[MAXB];
	int mpath[MAXB];
	uint32_t mm = tree_match(r, p, path, mpath);

	if (mm == 0 || r->n_pinned == 16)
		return;
	for (uint32_t i = 0; i < mm; i++) {
		kvp_tree_pin(r->t, path[i]);
		r->m.v[mpath[i]].pins++;
		r->pinned[r->n_pinned][i] = mpath[i];
	}
	r->pinned_n[r->n_pinned++] = mm;
}

static void tree_unpin(struct trun *r, uint32_t pick)
{
	int i;

	if (r->n_pinned == 0)
		return;
	i = (int)(pick % (uint32_t)r->n_pinned);
	for (uint32_t k = r->pinned_n[i]; k-- > 0;) {
		struct mnode *x = &r->m.v[r->pinned[i][k]];

		kvp_tree_unpin(r->t, x->tn);
		x->pins--;
	}
	r->n_pinned--;
	memcpy(r->pinned[i], r->pinned[r->n_pinned], sizeof(r->pinned[i]));
	r->pinned_n[i] = r->pinned_n[r->n_pinned];
}

static void tree_evict(struct trun *r, uint32_t n)
{
	while (n-- > 0) {
		uint32_t id = UINT32_MAX;
		int v = model_victim(&r->m);
		int rc = kvp_tree_evict(r->t, &id);

		if (v < 0) {
			REQ(rc == KVP_EFULL, "evict: %d with nothing evictable", rc);
			return;
		}
		REQ(rc == 0 && id == r->m.v[v].tag, "evicted %u (%d), model %u", id, rc,
		    r->m.v[v].tag);
		model_remove(&r->m, v);
	}
}

struct cleared {
	uint32_t ids[MODEL_SLOTS];
	uint32_t n;
};

static void on_clear(void *arg, uint32_t id)
{
	struct cleared *c = arg;

	REQ(c->n < MODEL_SLOTS, "clear: too many callbacks");
	c->ids[c->n++] = id;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

static void tree_clear(struct trun *r)
{
	struct cleared got = { .n = 0 }, want = { .n = 0 };
	uint64_t calls = fa.calls;
	int v;

	kvp_tree_clear(r->t, on_clear, &got);
	REQ(fa.calls == calls, "clear allocated");
	while ((v = model_victim(&r->m)) >= 0) {
		want.ids[want.n++] = r->m.v[v].tag;
		model_remove(&r->m, v);
	}
	REQ(got.n == want.n, "clear freed %u blocks, model %u", got.n, want.n);
	qsort(got.ids, got.n, sizeof(uint32_t), cmp_u32);
	qsort(want.ids, want.n, sizeof(uint32_t), cmp_u32);
	REQ(memcmp(got.ids, want.ids, got.n * sizeof(uint32_t)) == 0, "clear freed other blocks");
}

static bool tree_run(struct trun *r, uint64_t fail_at)
{
	int rc;

	fa_arm(fail_at, r->mode);
	r->t = (struct kvp_tree *)&rc;       /* must be overwritten */
	rc = kvp_tree_create(B, &r->t);
	if (rc) {
		REQ(rc == KVP_ENOMEM && r->t == NULL && fa.live == 0,
		    "failed create: %d, %ld live", rc, fa.live);
		rc = kvp_tree_create(B, &r->t);
		if (r->mode == FAIL_FROM) {
			REQ(rc == KVP_ENOMEM && r->t == NULL && fa.live == 0, "create again: %d", rc);
			return true;
		}
		REQ(rc == 0, "create after a single failure: %d", rc);
	}
	for (int n = 0; n < N_NS; n++)
		r->root[n] = kvp_ns_root("faults", (uint32_t)n, NULL);
	model_init(&r->m);
	gen_init(&r->g);
	r->n_pinned = 0;
	tree_compare(r);

	for (int op = 0; op < N_OPS; op++) {
		uint32_t kind = rng_below(&r->g.r, 100);
		struct prompt p;

		ctx.op = op;
		if (kind < 55) {
			ctx.what = "insert";
			gen_prompt(&r->g, &p);
			tree_insert(r, &p);
		} else if (kind < 68) {
			ctx.what = "match";
			gen_prompt(&r->g, &p);
			struct kvp_tree_node *path[MAXB];
			int mpath[MAXB];
			(void)tree_match(r, &p, path, mpath);
		} else if (kind < 78) {
			ctx.what = "pin";
			gen_prompt(&r->g, &p);
			tree_pin(r, &p);
		} else if (kind < 88) {
			ctx.what = "unpin";
			tree_unpin(r, rng_below(&r->g.r, 16));
		} else if (kind < 97) {
			ctx.what = "evict";
			tree_evict(r, 1 + rng_below(&r->g.r, 6));
		} else {
			ctx.what = "clear";
			tree_clear(r);
		}
		if (r->m.alive > 110) {
			ctx.what = "evict down";
			tree_evict(r, r->m.alive - 80);
		}
		tree_compare(r);
	}

	ctx.op = N_OPS;
	ctx.what = "final";
	while (r->n_pinned > 0)
		tree_unpin(r, 0);
	tree_clear(r);
	tree_compare(r);
	REQ(kvp_tree_size(r->t) == 0, "unpinned tree not empty after clear");
	kvp_tree_destroy(r->t);
	REQ(fa.live == 0, "%ld allocations leaked", fa.live);
	return fa.failures > 0;
}

static void tree_sweep(const char *test, enum fail_mode mode)
{
	static struct trun r;
	uint64_t base_calls, n;

	memset(&r, 0, sizeof(r));
	r.mode = mode;
	fa_install(test);
	REQ(!tree_run(&r, 0), "no failure was asked for");
	base_calls = fa.calls;
	for (n = 1;; n++) {
		REQ(n <= base_calls + 1, "still failing past the fault-free allocation count");
		if (!tree_run(&r, n))
			break;
	}
	REQ(n == base_calls + 1, "the sweep ended at N = %llu, the fault-free run made %llu",
	    (unsigned long long)n, (unsigned long long)base_calls);
	REQ(fa.n_failed == INDEX_SITES && fa.n_seen == INDEX_SITES,
	    "index/: failures at %zu of %zu call sites, not %d", fa.n_failed, fa.n_seen,
	    INDEX_SITES);
	REQ(r.n_enomem > 0, "no insert ever failed");
	fa_uninstall();
	cr_log_info("%s: %llu runs, %llu allocations fault-free, %llu inserts failed", test,
		    (unsigned long long)n, (unsigned long long)base_calls,
		    (unsigned long long)r.n_enomem);
}

Test(faults, tree_fail_from_nth, .timeout = 120)
{
	tree_sweep("tree, fail N-th and after", FAIL_FROM);
}

Test(faults, tree_fail_only_nth, .timeout = 120)
{
	tree_sweep("tree, fail N-th only", FAIL_ONCE);
}

/* ==== the pool alone: allocates at create only ========================================== */

Test(faults, pool_every_site)
{
	struct kvp_pool *p = NULL;
	uint64_t n;
	int rc;

	fa_install("pool");
	for (n = 1;; n++) {
		fa_arm(n, FAIL_ONCE);
		rc = kvp_pool_create(100, &p);
		if (fa.failures == 0)
			break;
		REQ(rc == KVP_ENOMEM && fa.live == 0, "create failing at %llu: %d, %ld live",
		    (unsigned long long)n, rc, fa.live);
	}
	REQ(rc == 0 && n == STORE_SITES + 1, "pool create made %llu allocations",
	    (unsigned long long)(n - 1));
	REQ(fa.n_failed == STORE_SITES, "store/: failures at %zu call sites, not %d",
	    fa.n_failed, STORE_SITES);

	/* from here on every allocation would fail: the pool's operations never allocate */
	fa_arm(1, FAIL_FROM);
	{
		uint32_t a, b2, c;

		REQ(kvp_pool_alloc(p, &a) == 0 && kvp_pool_alloc(p, &b2) == 0 &&
		    kvp_pool_alloc(p, &c) == 0, "alloc");
		REQ(kvp_pool_ref(p, a) == 0 && kvp_pool_unref(p, a) == 0, "ref/unref");
		REQ(kvp_pool_unref(p, a) == 0, "unref to cached");
		REQ(kvp_pool_state(p, a) == KVP_BLOCK_CACHED, "cached");
		REQ(kvp_pool_evict(p, a) == 0 && kvp_pool_put(p, b2) == 0, "evict/put");
		REQ(kvp_pool_check(p) == 0, "pool check");
		REQ(kvp_pool_counts(p).referenced == 1 && kvp_pool_counts(p).free == 99, "counts");
		REQ(kvp_pool_put(p, c) == 0 && kvp_pool_check(p) == 0, "put/check");
	}
	REQ(fa.calls == 0, "a pool operation allocated");
	kvp_pool_destroy(p);
	REQ(fa.live == 0, "%ld allocations leaked", fa.live);
	fa_uninstall();
}
