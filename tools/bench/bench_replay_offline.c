/*
 * bench_replay_offline.c - kvprefix-bench replay --offline: a trace through the index in
 * process, at several pool sizes, beside what no online policy can beat.
 *
 *   lru, reuse       the daemon's own radix tree (index/) under each eviction policy,
 *                    1-token blocks whose token is the trace's block id, so a chain of
 *                    ids is a chain of keys: per request a match (the LOOKUP) and
 *                    another (the INSERT's), then its missing blocks inserted (its own
 *                    blocks pinned meanwhile), the policy's leaf evicted whenever the
 *                    pool is full: what a daemon with that --eviction does
 *   the bound        the same requests, evicting instead the unpinned leaf whose next
 *                    use lies furthest ahead (known from the whole trace): leaf-first and
 *                    prefix-closed like the tree, so an upper bound for its policies
 *   unbounded        the bound with room for every block
 *
 * Hit rate = matched full blocks x 512 / input tokens, as the daemon's replay counts it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_replay.h"
#include "kvp_index.h"
#include "trace.h"

/* ---- the trace as dense block ids ------------------------------------------------------- */

struct dense {
	uint32_t *blk;        /* per request, its full blocks' dense ids, off[] into it */
	size_t *off;
	uint32_t *parent;     /* per dense id: its parent's, or UINT32_MAX */
	uint32_t *next_use;   /* per occurrence: the next request using that block, or MAX */
	uint32_t n_ids;
	uint32_t n_once;      /* ids only one request uses */
	uint64_t total_tokens;
	size_t n_reqs;
};

/* Dense ids for the hash ids: an open-addressed map, grown never (sized for them all). */
static int densify(const struct kvp_trace *tr, struct dense *d)
{
	size_t n_occ = 0, cap = 16, k = 0;
	uint64_t *keys;
	uint32_t *vals, *last;

	for (size_t i = 0; i < tr->n_reqs; i++)
		n_occ += tr->reqs[i].input_length / KVP_TRACE_BLOCK;
	while (cap < 2 * n_occ + 16)
		cap *= 2;
	memset(d, 0, sizeof(*d));
	keys = malloc(cap * sizeof(*keys));
	vals = malloc(cap * sizeof(*vals));
	d->blk = malloc((n_occ + 1) * sizeof(*d->blk));
	d->off = malloc((tr->n_reqs + 1) * sizeof(*d->off));
	d->parent = malloc((n_occ + 1) * sizeof(*d->parent));
	d->next_use = malloc((n_occ + 1) * sizeof(*d->next_use));
	if (!keys || !vals || !d->blk || !d->off || !d->parent || !d->next_use) {
		free(keys);
		free(vals);
		return -1;
	}
	memset(vals, 0xff, cap * sizeof(*vals));
	d->n_reqs = tr->n_reqs;
	for (size_t i = 0; i < tr->n_reqs; i++) {
		const struct kvp_trace_req *r = &tr->reqs[i];
		uint32_t prev = UINT32_MAX;

		d->off[i] = k;
		d->total_tokens += r->input_length;
		for (uint32_t b = 0; b < r->input_length / KVP_TRACE_BLOCK; b++) {
			uint64_t h = tr->hash_ids[r->hash_off + b];
			size_t s = kvp_splitmix64(h) & (cap - 1);

			while (vals[s] != UINT32_MAX && keys[s] != h)
				s = (s + 1) & (cap - 1);
			if (vals[s] == UINT32_MAX) {
				keys[s] = h;
				vals[s] = d->n_ids;
				d->parent[d->n_ids++] = prev;
			}
			prev = d->blk[k++] = vals[s];
		}
	}
	d->off[tr->n_reqs] = k;
	free(keys);
	free(vals);
	/* next uses, walking back: last[] the nearest later request of each id */
	last = malloc((d->n_ids + 1) * sizeof(*last));
	if (!last)
		return -1;
	memset(last, 0xff, (d->n_ids + 1) * sizeof(*last));
	for (size_t i = tr->n_reqs; i-- > 0;)
		for (size_t o = d->off[i]; o < d->off[i + 1]; o++) {
			d->next_use[o] = last[d->blk[o]];
			last[d->blk[o]] = (uint32_t)i;
		}
	/* last[] is now each id's first request: used once when nothing follows it there */
	for (size_t i = 0; i < tr->n_reqs; i++)
		for (size_t o = d->off[i]; o < d->off[i + 1]; o++)
			d->n_once += last[d->blk[o]] == i && d->next_use[o] == UINT32_MAX;
	free(last);
	return 0;
}

static void dense_free(struct dense *d)
{
	free(d->blk);
	free(d->off);
	free(d->parent);
	free(d->next_use);
}

/* ---- leaf-first LRU: the tree itself ------------------------------------------------------ */

static double run_tree(const struct dense *d, size_t cap, enum kvp_evict_policy policy)
{
	const struct kvp_key root = kvp_ns_root("replay-offline", 0, NULL);
	struct kvp_tree_node **path = NULL, **pinned = NULL;
	struct kvp_tree *t = NULL;
	uint32_t *toks = NULL;
	uint64_t hit = 0;
	size_t longest = 0;

	for (size_t i = 0; i < d->n_reqs; i++)
		if (d->off[i + 1] - d->off[i] > longest)
			longest = d->off[i + 1] - d->off[i];
	path = malloc((longest + 1) * sizeof(*path));
	pinned = malloc((longest + 1) * sizeof(*pinned));
	toks = malloc((longest + 1) * sizeof(*toks));
	if (!path || !pinned || !toks || kvp_tree_create(1, &t) != 0 ||
	    kvp_tree_set_policy_for(t, policy, cap) != 0)
		goto out;
	for (size_t i = 0; i < d->n_reqs; i++) {
		size_t n = d->off[i + 1] - d->off[i], m, np = 0;
		struct kvp_tree_node *parent;
		struct kvp_key pk;

		memcpy(toks, d->blk + d->off[i], n * sizeof(*toks));
		/* a LOOKUP, then an INSERT's own match, as the daemon's replay does them */
		(void)kvp_tree_match(t, root, toks, n, path, n);
		m = kvp_tree_match(t, root, toks, n, path, n);
		hit += (uint64_t)m * KVP_TRACE_BLOCK;
		for (size_t k = 0; k < m; k++)
			kvp_tree_pin(t, pinned[np++] = path[k]);
		parent = m ? path[m - 1] : NULL;
		pk = parent ? kvp_tree_node_key(parent) : root;
		for (size_t k = m; k < n; k++) {
			struct kvp_tree_node *node;
			uint32_t id;

			while (kvp_tree_size(t) >= cap)
				if (kvp_tree_evict(t, &id) != 0)
					break;
			if (kvp_tree_size(t) >= cap)
				break;   /* everything left is this request's */
			pk = kvp_block_key(pk, &toks[k], 1);
			if (kvp_tree_insert(t, root, parent, pk, &toks[k], 0, &node) < 0 && !node)
				break;
			kvp_tree_pin(t, pinned[np++] = node);
			parent = node;
		}
		while (np > 0)
			kvp_tree_unpin(t, pinned[--np]);
	}
out:
	kvp_tree_destroy(t);
	free(path);
	free(pinned);
	free(toks);
	return (double)hit / (double)d->total_tokens;
}

/* ---- the bound: furthest next use first, leaf-first ------------------------------------ */

struct heap_ent {
	uint32_t key;         /* next use (larger: evicted first) */
	uint32_t id;
	uint32_t ver;
};

struct bound {
	struct heap_ent *h;
	size_t n, cap;
	uint32_t *next, *ver, *children;
	uint8_t *cached;
	uint32_t *pin_req;    /* the request that uses it now (pinned) */
};

static void heap_push(struct bound *b, uint32_t id)
{
	struct heap_ent e = { b->next[id], id, b->ver[id] };
	size_t i = b->n++;

	while (i > 0 && b->h[(i - 1) / 2].key < e.key) {
		b->h[i] = b->h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	b->h[i] = e;
}

static struct heap_ent heap_pop(struct bound *b)
{
	struct heap_ent top = b->h[0], x = b->h[--b->n];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= b->n)
			break;
		if (c + 1 < b->n && b->h[c + 1].key > b->h[c].key)
			c++;
		if (b->h[c].key <= x.key)
			break;
		b->h[i] = b->h[c];
		i = c;
	}
	if (b->n)
		b->h[i] = x;
	return top;
}

/* Evict the unpinned leaf used furthest ahead; false when none. */
static bool bound_evict(struct bound *b, const struct dense *d, uint32_t req, size_t *size)
{
	while (b->n) {
		struct heap_ent e = heap_pop(b);
		uint32_t p;

		if (!b->cached[e.id] || e.ver != b->ver[e.id] || b->children[e.id] ||
		    b->pin_req[e.id] == req)
			continue;
		b->cached[e.id] = 0;
		--*size;
		p = d->parent[e.id];
		if (p != UINT32_MAX && b->cached[p] && --b->children[p] == 0) {
			b->ver[p]++;
			heap_push(b, p);
		}
		return true;
	}
	return false;
}

static double run_bound(const struct dense *d, size_t cap)
{
	struct bound b = { 0 };
	uint64_t hit = 0;
	size_t size = 0;

	b.cap = d->off[d->n_reqs] + 16;
	b.h = malloc(b.cap * 4 * sizeof(*b.h));
	b.next = calloc(d->n_ids + 1, sizeof(*b.next));
	b.ver = calloc(d->n_ids + 1, sizeof(*b.ver));
	b.children = calloc(d->n_ids + 1, sizeof(*b.children));
	b.cached = calloc(d->n_ids + 1, 1);
	b.pin_req = malloc((d->n_ids + 1) * sizeof(*b.pin_req));
	if (!b.h || !b.next || !b.ver || !b.children || !b.cached || !b.pin_req)
		goto out;
	memset(b.pin_req, 0xff, (d->n_ids + 1) * sizeof(*b.pin_req));
	for (size_t i = 0; i < d->n_reqs; i++) {
		size_t o = d->off[i], n = d->off[i + 1] - o, m = 0;

		while (m < n && b.cached[d->blk[o + m]])
			m++;
		hit += (uint64_t)m * KVP_TRACE_BLOCK;
		for (size_t k = 0; k < n; k++) {
			uint32_t id = d->blk[o + k], p = d->parent[id];

			b.pin_req[id] = (uint32_t)i;
			b.next[id] = d->next_use[o + k];
			b.ver[id]++;
			if (k < m) {
				if (!b.children[id])
					heap_push(&b, id);
				continue;
			}
			if (size >= cap && !bound_evict(&b, d, (uint32_t)i, &size))
				break;
			b.cached[id] = 1;
			size++;
			b.children[id] = 0;
			if (p != UINT32_MAX && b.cached[p] && b.children[p]++ == 0)
				b.ver[p]++;   /* no longer a leaf: its heap entries are stale */
			heap_push(&b, id);
			if (b.n + 8 > 4 * b.cap)
				break;   /* cannot happen: one push per use */
		}
	}
out:
	free(b.h);
	free(b.next);
	free(b.ver);
	free(b.children);
	free(b.cached);
	free(b.pin_req);
	return (double)hit / (double)d->total_tokens;
}

int bench_replay_offline(const struct kvp_trace *tr, const struct offline_cap *caps, size_t n)
{
	struct dense d;
	cJSON *o, *arr;
	bool built;
	double unbounded;

	if (densify(tr, &d) < 0) {
		fprintf(stderr, PROG " replay: out of memory\n");
		dense_free(&d);
		return -1;
	}
	unbounded = run_bound(&d, d.n_ids);
	printf("offline replay: %zu requests, %u distinct blocks of %u tokens, %u (%.0f%%) used "
	       "by one request only\n", d.n_reqs, d.n_ids, KVP_TRACE_BLOCK, d.n_once,
	       100.0 * d.n_once / (d.n_ids ? d.n_ids : 1));
	printf("  capacity (blocks)   %% of distinct   leaf-first LRU      reuse   furthest-use bound\n");
	o = cJSON_CreateObject();
	arr = o ? cJSON_AddArrayToObject(o, "capacities") : NULL;
	built = arr != NULL;
	for (size_t i = 0; i < n; i++) {
		size_t cap = caps[i].percent ? (size_t)(caps[i].value / 100.0 * d.n_ids + 0.5)
					     : (size_t)caps[i].value;
		double lru, reuse, bound;
		cJSON *x;

		if (cap < 1)
			cap = 1;
		lru = run_tree(&d, cap, KVP_EVICT_LRU);
		reuse = run_tree(&d, cap, KVP_EVICT_REUSE);
		bound = run_bound(&d, cap);
		printf("  %17zu   %13.1f   %14.4f   %8.4f   %18.4f\n", cap,
		       100.0 * (double)cap / d.n_ids, lru, reuse, bound);
		x = cJSON_CreateObject();
		built = built && x && cJSON_AddItemToArray(arr, x) &&
			cJSON_AddNumberToObject(x, "blocks", (double)cap) &&
			cJSON_AddNumberToObject(x, "lru", lru) &&
			cJSON_AddNumberToObject(x, "reuse", reuse) &&
			cJSON_AddNumberToObject(x, "bound", bound);
	}
	printf("  unbounded: %.4f\n", unbounded);
	built = built && cJSON_AddNumberToObject(o, "distinct_blocks", d.n_ids) &&
		cJSON_AddNumberToObject(o, "unbounded", unbounded);
	dense_free(&d);
	return bench_json_finish("replay", o, built) ? 0 : -1;
}
