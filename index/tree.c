/*
 * tree.c - the radix tree of cached blocks (index/).
 *
 * The tree has no child pointers. Each node names its parent; nodes are found through
 * one hash table keyed by the node's chained block key, and a lookup walks down a
 * prompt by computing the next block's key and probing for it. Leaves that nobody pins
 * sit on an LRU list, oldest first. Nodes live in a slab of fixed-size slots
 * (slab.c) and name each other by 32-bit handle (0: none), which keeps a node at 88
 * bytes beside its tokens.
 *
 *   struct kvp_tree
 *   +---------------------+        buckets[] (power of two; grows x2 when size > buckets)
 *   | buckets  ---------------->  [0] -> A -> D -> 0         handles, chained through
 *   | mask, size          |      [1] -> 0                    node->hnext, duplicate
 *   | tick (per call)     |      [2] -> B -> 0               keys allowed
 *   | lru (first, last) --------+ [3] -> C -> E -> 0
 *   | slab (the nodes)    |     |
 *   +---------------------+     |  LRU: evictable nodes only (pins == 0 && children == 0),
 *                               |  ordered by last-use tick, least recently used first
 *                               +-> E(t=3) <-> C(t=7)     (handles; 0 at both ends)
 *
 *   namespace root r (a key, not a node)
 *        :
 *        A (depth 0: parent 0, its namespace's root compared)
 *        |
 *        B          A node, one slot of the slab:
 *       / \         +------+---------+-----+-----+-------+------+----------+------------+
 *      C   D (pin)  | key  |  tick,  | ns  | self| hnext,| the 3| children,|  block id  |
 *          |        | 128b | content |     |     | parent| lrus | pins+warm|            |
 *          E        +------+---------+-----+-----+-------+------+----------+------------+
 *                   | tokens[block_tokens] (flexible array member, u32 each)    ...
 *                   +---------------------------------------------------------------+
 *
 *   Here C and E are evictable leaves. D is pinned, so neither D nor its ancestors B,
 *   A can go; once E is evicted D stays (pinned); when D is unpinned it becomes an
 *   evictable leaf again and is put back on the LRU in tick order.
 *
 * Tricky cases
 *   - Every namespace's first block has parent 0, so at depth 0 the root key of the
 *     node's namespace record (node->ns) is compared as well; below depth 0 the parent
 *     pins the namespace. A node does not store the root itself.
 *   - Keys can collide (by accident, or crafted, or on purpose in the test build with
 *     KVP_TREE_TEST_HASH_BITS). A node matches only if key, parent (and root at depth
 *     0) AND tokens are all equal, and a probe walks the whole bucket past nodes that
 *     fail, so a collision can cost a probe, never a wrong hit. Two different blocks
 *     with the same key simply both live in the bucket.
 *   - Prefix closure: a node is evicted only as a leaf, so a node is resident only
 *     while its parent is. Evicting a leaf can make its parent an evictable leaf; the
 *     parent is then inserted into the LRU at its own tick (typically the head, since a
 *     parent is rarely used more recently than its last child).
 *   - Deep chains: a 128k-token prompt at B=16 is 8k nodes deep. Nothing here recurses;
 *     clear and kvp_tree_check (tree_check.c) walk the lists and the bucket array
 *     iteratively.
 *   - The bucket is the low bits of key.lo, a public function of the tokens. A client
 *     that grinds prompts for keys with equal low bits can lengthen one chain: that
 *     costs probe time (bounded by the pool size), never correctness. A keyed bucket
 *     hash would close it; not done yet.
 *   - Allocation: only insert (a slab chunk when every slot is taken), create and the
 *     table growth allocate. A failed chunk allocation changes nothing; a failed growth
 *     keeps the old, fuller table. An evicted node's slot is taken again by the next
 *     insert; the slab's chunks go back with the tree.
 *   - Lists are linear with both ends in their owner (the tree, a namespace, a group),
 *     so taking a node off one needs the list: a REUSE node turning warm is taken off
 *     the cold list before its flag changes (match_loop).
 *
 * Test-only build: with KVP_TREE_TEST_HASH_BITS=n the table looks only at the low n
 * bits of key.lo, both to pick the bucket and to compare keys (the full key is still
 * stored), so that collisions happen constantly and verification has to reject them.
 */
#include <assert.h>
#include <stddef.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "alloc_internal.h"
#include "ghost_internal.h"
#include "hash_internal.h"
#include "kvp_index.h"
#include "slab_internal.h"
#include "tree_internal.h"

/* ---- LRU lists (intrusive, by handle, ascending tick) ---------------------------- */

/* The tree-wide list an evictable node belongs on: its class's (REUSE), else the LRU. */
static inline struct kvp_list *glist(struct kvp_tree *t, const struct kvp_tree_node *n)
{
	return node_warm(n) ? &t->warm : &t->lru;
}

/* n's link at off into list l, right after node `after` (0: first). */
static inline void list_put_after(const struct kvp_tree *t, struct kvp_list *l,
				  struct kvp_tree_node *n, size_t off, uint32_t after)
{
	struct kvp_link *k = (struct kvp_link *)(void *)((char *)n + off);
	uint32_t next = after ? link_of(t, after, off)->next : l->first;

	k->prev = after;
	k->next = next;
	if (after)
		link_of(t, after, off)->next = n->self;
	else
		l->first = n->self;
	if (next)
		link_of(t, next, off)->prev = n->self;
	else
		l->last = n->self;
}

static inline void list_take(const struct kvp_tree *t, struct kvp_list *l,
			     struct kvp_tree_node *n, size_t off)
{
	struct kvp_link *k = (struct kvp_link *)(void *)((char *)n + off);

	if (k->prev)
		link_of(t, k->prev, off)->next = k->next;
	else
		l->first = k->next;
	if (k->next)
		link_of(t, k->next, off)->prev = k->prev;
	else
		l->last = k->prev;
	k->prev = k->next = 0;
}

static inline void lru_remove(struct kvp_tree *t, struct kvp_tree_node *n)
{
	list_take(t, glist(t, n), n, LRU_OFF);
	list_take(t, &n->ns->lru, n, NLRU_OFF);
	list_take(t, &n->ns->grp->glru, n, GLRU_OFF);
	t->n_lru--;
	n->ns->n_lru--;
	n->ns->grp->gn_lru--;
}

/* n->tick is the newest tick: append. */
static inline void lru_push_tail(struct kvp_tree *t, struct kvp_tree_node *n)
{
	struct kvp_list *g = glist(t, n);

	list_put_after(t, g, n, LRU_OFF, g->last);
	list_put_after(t, &n->ns->lru, n, NLRU_OFF, n->ns->lru.last);
	list_put_after(t, &n->ns->grp->glru, n, GLRU_OFF, n->ns->grp->glru.last);
	t->n_lru++;
	n->ns->n_lru++;
	n->ns->grp->gn_lru++;
}

/* n (evictable, not listed) to the head of the lists: it goes next. */
static inline void lru_push_head(struct kvp_tree *t, struct kvp_tree_node *n)
{
	list_put_after(t, glist(t, n), n, LRU_OFF, 0);
	list_put_after(t, &n->ns->lru, n, NLRU_OFF, 0);
	list_put_after(t, &n->ns->grp->glru, n, GLRU_OFF, 0);
	t->n_lru++;
	n->ns->n_lru++;
	n->ns->grp->gn_lru++;
}

/*
 * Put n's link at off at its place in list l: after every node with a tick <= n's,
 * before every node with a greater one. The two ends are checked first (the usual
 * cases: a leaf just used goes last, a parent uncovered by an eviction goes first);
 * otherwise the list is walked from whichever is nearest by tick: either end, or hint
 * (a node on the list, or 0 for none). A parent uncovered by evicting its child gets
 * the node that followed the child as hint: the child may have sat anywhere in the
 * list (a namespace's own least recently used leaf is in the middle of the tree's
 * LRU), and the parent's tick is usually close to the child's.
 */
static void list_insert_ordered(const struct kvp_tree *t, struct kvp_list *l,
				struct kvp_tree_node *n, size_t off, uint32_t hint)
{
	const uint64_t tick = n->tick;
	uint64_t first, last;
	uint32_t x;

	if (!l->first || tick_of(t, l->last) <= tick) {
		list_put_after(t, l, n, off, l->last);
		return;
	}
	first = tick_of(t, l->first);
	last = tick_of(t, l->last);
	if (tick < first) {
		list_put_after(t, l, n, off, 0);
		return;
	}
	if (hint) {
		uint64_t at = tick_of(t, hint), d = at > tick ? at - tick : tick - at;

		if (d < tick - first && d < last - tick) {
			x = hint;
			while (link_of(t, x, off)->prev && tick_of(t, link_of(t, x, off)->prev) > tick)
				x = link_of(t, x, off)->prev;
			while (x && tick_of(t, x) <= tick)
				x = link_of(t, x, off)->next;
			list_put_after(t, l, n, off, x ? link_of(t, x, off)->prev : l->last);
			return;
		}
	}
	if (tick - first < last - tick) {
		x = l->first;
		while (x && tick_of(t, x) <= tick)
			x = link_of(t, x, off)->next;
		list_put_after(t, l, n, off, x ? link_of(t, x, off)->prev : l->last);
	} else {
		x = l->last;
		while (x && tick_of(t, x) > tick)
			x = link_of(t, x, off)->prev;
		list_put_after(t, l, n, off, x);
	}
}

/* n just became evictable: onto the tree's LRU, its namespace's and its group's, by
 * tick, with the nodes hint, nhint and ghint of those lists as places to start from
 * (0: none). */
static void lru_insert_near(struct kvp_tree *t, struct kvp_tree_node *n, uint32_t hint,
			    uint32_t nhint, uint32_t ghint)
{
	list_insert_ordered(t, glist(t, n), n, LRU_OFF, hint);
	list_insert_ordered(t, &n->ns->lru, n, NLRU_OFF, nhint);
	list_insert_ordered(t, &n->ns->grp->glru, n, GLRU_OFF, ghint);
	t->n_lru++;
	n->ns->n_lru++;
	n->ns->grp->gn_lru++;
}

static void lru_insert_ordered(struct kvp_tree *t, struct kvp_tree_node *n)
{
	lru_insert_near(t, n, 0, 0, 0);
}

/* ---- namespaces ------------------------------------------------------------------ */

/* Double the namespace table past a load of 1; on allocation failure keep the old. */
static KVP_OUT_OF_LINE void ns_maybe_grow(struct kvp_tree *t)
{
	size_t old_n = t->ns_mask + 1, new_n = old_n * 2;
	struct tree_ns **nb;

	if (t->n_ns <= old_n || new_n > SIZE_MAX / sizeof(*nb))
		return;
	nb = KVP_INDEX_MALLOC(new_n * sizeof(*nb));
	if (!nb)
		return;
	memset(nb, 0, new_n * sizeof(*nb));
	for (size_t i = 0; i < old_n; i++) {
		struct tree_ns *ns = t->ns_buckets[i], *next;

		for (; ns; ns = next) {
			size_t b = (size_t)(ns->root.lo ^ (ns->root.hi >> 17)) & (new_n - 1);

			next = ns->next;
			ns->next = nb[b];
			nb[b] = ns;
		}
	}
	KVP_INDEX_FREE(t->ns_buckets);
	t->ns_buckets = nb;
	t->ns_mask = new_n - 1;
}

/* The namespace of root, created (empty) if new; NULL when out of memory. Kept out of
 * line, like node_new, so each allocation has one call site (tests/test_faults.c
 * injects a failure at every site by its return address). */
static KVP_OUT_OF_LINE struct tree_ns *ns_get(struct kvp_tree *t, struct kvp_key root)
{
	struct tree_ns *ns = ns_find(t, root);
	size_t b;

	if (ns)
		return ns;
	ns = KVP_INDEX_MALLOC(sizeof(*ns));
	if (!ns)
		return NULL;
	memset(ns, 0, sizeof(*ns));
	ns->root = root;
	ns->tree = t;
	b = ns_bucket(t, root);
	ns->next = t->ns_buckets[b];
	t->ns_buckets[b] = ns;
	t->n_ns++;
	return ns;
}

/* Free a record that holds no node any more, neither as a namespace nor as a group. */
static void ns_drop_if_empty(struct kvp_tree *t, struct tree_ns *ns)
{
	struct tree_ns **pp;

	if (ns->nodes || ns->gnodes)
		return;
	assert(ns->n_lru == 0 && ns->gn_lru == 0 && !ns->grp);
	pp = &t->ns_buckets[ns_bucket(t, ns->root)];
	while (*pp != ns)
		pp = &(*pp)->next;
	*pp = ns->next;
	t->n_ns--;
	KVP_INDEX_FREE(ns);
}

/* The namespace of root for an insert at depth 0, in group (root's own when equal),
 * both created if new; NULL when out of memory (nothing is left behind then). A
 * namespace keeps the group it was given while it has nodes. */
static struct tree_ns *ns_get_in_group(struct kvp_tree *t, struct kvp_key root,
				       struct kvp_key group)
{
	struct tree_ns *ns = ns_get(t, root), *g;

	if (!ns || ns->grp)
		return ns;
	g = kvp_key_eq(group, root) ? ns : ns_find(t, group);
	if (!g) {
		g = ns_get(t, group);
		if (!g) {
			ns_drop_if_empty(t, ns);
			return NULL;
		}
	}
	ns->grp = g;
	return ns;
}

/* A namespace lost its last node: it leaves its group, and either may go. */
static void ns_release(struct kvp_tree *t, struct tree_ns *ns)
{
	struct tree_ns *g = ns->grp;

	if (ns->nodes)
		return;
	ns->grp = NULL;
	if (g && g != ns)
		ns_drop_if_empty(t, g);
	ns_drop_if_empty(t, ns);
}

/* ---- hash table ------------------------------------------------------------------ */

static inline void table_unlink(struct kvp_tree *t, struct kvp_tree_node *n)
{
	uint32_t *pp = bucket_of(t, n->key);

	while (*pp != n->self) {
		assert(*pp);
		pp = &node_at(t, *pp)->hnext;
	}
	*pp = n->hnext;
	n->hnext = 0;
}

/* Double the bucket array when the load passes 1. On allocation failure keep the old
 * table: lookups stay correct, only chains get longer. */
static KVP_OUT_OF_LINE void table_maybe_grow(struct kvp_tree *t)
{
	size_t old_n = t->mask + 1, new_n = old_n * 2;
	uint32_t *nb;

	if (t->size <= old_n || new_n > SIZE_MAX / sizeof(*nb))
		return;
	nb = KVP_INDEX_MALLOC(new_n * sizeof(*nb));
	if (!nb)
		return;
	memset(nb, 0, new_n * sizeof(*nb));
	for (size_t i = 0; i < old_n; i++) {
		uint32_t h = t->buckets[i], next;

		for (; h; h = next) {
			struct kvp_tree_node *n = node_at(t, h);
			size_t b = tree_hash(n->key) & (new_n - 1);

			next = n->hnext;
			n->hnext = nb[b];
			nb[b] = h;
		}
	}
	KVP_INDEX_FREE(t->buckets);
	t->buckets = nb;
	t->mask = new_n - 1;
}

/* Do two blocks of n tokens hold the same tokens? For the specialised small block
 * sizes one branch on a vector compare instead of memcmp's word-by-word early exits. */
static inline __attribute__((always_inline)) int
tokens_eq(const uint32_t *a, const uint32_t *b, uint32_t n)
{
#ifdef __SSE2__
	if (n % 4 == 0 && n <= 32) {
		__m128i all = _mm_set1_epi32(-1);

		for (uint32_t i = 0; i < n; i += 4) {
			__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(a + i));
			__m128i y = _mm_loadu_si128((const __m128i *)(const void *)(b + i));

			all = _mm_and_si128(all, _mm_cmpeq_epi32(x, y));
		}
		return _mm_movemask_epi8(all) == 0xffff;
	}
#endif
	return memcmp(a, b, (size_t)n * sizeof(uint32_t)) == 0;
}

/* The node for block (key, parent, tokens) in namespace root, or NULL. Inlined so that
 * a constant block size makes the token comparison a few vector compares. */
static inline __attribute__((always_inline)) struct kvp_tree_node *
table_find(const struct kvp_tree *t, struct kvp_key root, const struct kvp_tree_node *parent,
	   struct kvp_key key, const uint32_t *tokens, uint32_t b)
{
	const uint32_t ph = parent ? parent->self : 0;

	for (uint32_t h = *bucket_of(t, key); h;) {
		struct kvp_tree_node *n = node_at(t, h);

		h = n->hnext;
		if (!tree_key_eq(n->key, key) || n->parent != ph)
			continue;
		if (!ph && !kvp_key_eq(n->ns->root, root))
			continue;
		if (tokens_eq(n->tokens, tokens, b))
			return n;
	}
	return NULL;
}

/* ---- create / destroy / accessors ------------------------------------------------- */

int kvp_tree_create(uint32_t block_tokens, struct kvp_tree **out)
{
	struct kvp_tree *t;

	assert(out);
	*out = NULL;
	if (block_tokens < 1 || block_tokens > KVP_BLOCK_TOKENS_MAX)
		return KVP_EINVAL;
	t = KVP_INDEX_MALLOC(sizeof(*t));
	if (!t)
		goto out_nomem;
	memset(t, 0, sizeof(*t));
	t->buckets = KVP_INDEX_MALLOC(KVP_TREE_MIN_BUCKETS * sizeof(*t->buckets));
	if (!t->buckets)
		goto out_free_tree;
	memset(t->buckets, 0, KVP_TREE_MIN_BUCKETS * sizeof(*t->buckets));
	t->mask = KVP_TREE_MIN_BUCKETS - 1;
	t->ns_buckets = KVP_INDEX_MALLOC(KVP_TREE_MIN_NS_BUCKETS * sizeof(*t->ns_buckets));
	if (!t->ns_buckets)
		goto out_free_buckets;
	memset(t->ns_buckets, 0, KVP_TREE_MIN_NS_BUCKETS * sizeof(*t->ns_buckets));
	t->ns_mask = KVP_TREE_MIN_NS_BUCKETS - 1;
	t->block_tokens = block_tokens;
	kvp_slab_init(&t->slab, offsetof(struct kvp_tree_node, tokens) + token_bytes(t));
	*out = t;
	return 0;

out_free_buckets:
	KVP_INDEX_FREE(t->buckets);
out_free_tree:
	KVP_INDEX_FREE(t);
out_nomem:
	return KVP_ENOMEM;
}

void kvp_tree_destroy(struct kvp_tree *t)
{
	if (!t)
		return;
	kvp_slab_fini(&t->slab);
	for (size_t i = 0; i <= t->ns_mask; i++) {
		struct tree_ns *ns = t->ns_buckets[i], *next;

		for (; ns; ns = next) {
			next = ns->next;
			KVP_INDEX_FREE(ns);
		}
	}
	KVP_INDEX_FREE(t->ns_buckets);
	KVP_INDEX_FREE(t->buckets);
	kvp_ghost_destroy(t->ghost);
	KVP_INDEX_FREE(t);
}

uint32_t kvp_tree_block_tokens(const struct kvp_tree *t)
{
	return t->block_tokens;
}

size_t kvp_tree_size(const struct kvp_tree *t)
{
	return t->size;
}

size_t kvp_tree_evictable(const struct kvp_tree *t)
{
	return t->n_lru;
}

size_t kvp_tree_node_allocations(const struct kvp_tree *t)
{
	return kvp_slab_allocations(&t->slab);
}

struct kvp_key kvp_tree_node_key(const struct kvp_tree_node *n)
{
	return n->key;
}

struct kvp_key kvp_tree_node_root(const struct kvp_tree_node *n)
{
	return n->ns->root;
}

uint32_t kvp_tree_node_block(const struct kvp_tree_node *n)
{
	return n->block_id;
}

uint32_t kvp_tree_node_pins(const struct kvp_tree_node *n)
{
	return node_pins(n);
}

struct kvp_tree_node *kvp_tree_node_parent(const struct kvp_tree_node *n)
{
	return node_at(n->ns->tree, n->parent);
}

const uint32_t *kvp_tree_node_tokens(const struct kvp_tree_node *n)
{
	return n->tokens;
}

uint64_t kvp_tree_node_content(const struct kvp_tree_node *n)
{
	return n->content;
}

/* ---- match ----------------------------------------------------------------------- */

/*
 * The match loop for block size b (a constant in the specialised copies).
 *
 * The key chain is a dependency chain of multiplies (~23 cycles a block at B=16) that
 * leaves most of the core idle, and the probe of block i (bucket load, node load,
 * compares) does not feed the key of block i+1. So the loop runs one block ahead: it
 * hashes block i+1 and prefetches its bucket, then probes block i, and the CPU runs
 * the probe in the shadow of the next hash. A miss at block i has cost one extra hash.
 * Measured at B=16 on a fully cached 32k-token prompt (docs/hashing.md, "Speed"):
 * ~3.6x one XXH3_128bits over the same 128 KiB; keys first and probes after was
 * ~4.9x, hashing two blocks ahead with node prefetch ~3.9x.
 */
static inline __attribute__((always_inline)) size_t
match_loop(struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens, size_t n_blocks,
	   struct kvp_tree_node **path, uint64_t tick, uint32_t b, bool touch)
{
	const bool reuse = t->policy == KVP_EVICT_REUSE;
	struct kvp_key key, next;
	struct kvp_tree_node *parent = NULL;
	size_t i;

	if (n_blocks == 0)
		return 0;
	next = kvp_hash_block(root, tokens, b);
	for (i = 0; i < n_blocks; i++) {
		const uint32_t *blk = tokens + i * b;
		struct kvp_tree_node *n;

		key = next;
		if (i + 1 < n_blocks) {
			next = kvp_hash_block(key, blk + b, b);
			__builtin_prefetch(bucket_of(t, next));
		}
		n = table_find(t, root, parent, key, blk, b);
		if (!n)
			break;
		parent = n;
		if (!touch)
			continue;
		if (reuse && !node_warm(n)) {   /* used again: warm */
			const bool listed = node_evictable(n);

			if (listed)   /* from the cold list to the warm one, last */
				lru_remove(t, n);
			n->pins |= NODE_WARM;
			n->tick = tick;
			if (listed)
				lru_push_tail(t, n);
		}
		n->tick = tick;
		path[i] = n;
	}
	/* Only the deepest matched node can be a leaf (the others have a matched child):
	 * if it is on the LRU, it is now the most recently used. */
	if (touch && i > 0 && node_evictable(parent) &&
	    (glist(t, parent)->last != parent->self || parent->ns->lru.last != parent->self ||
	     parent->ns->grp->glru.last != parent->self)) {
		lru_remove(t, parent);
		lru_push_tail(t, parent);
	}
	return i;
}

size_t kvp_tree_match(struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens,
		      size_t n_tokens, struct kvp_tree_node **path, size_t max_nodes)
{
	size_t n_blocks = n_tokens / t->block_tokens, matched;
	uint64_t tick = ++t->tick;

	assert(n_tokens == 0 || tokens);
	assert(max_nodes == 0 || path);
	if (n_blocks > max_nodes)
		n_blocks = max_nodes;
	KVP_HASH_SPECIALISE(t->block_tokens,
		matched = match_loop(t, root, tokens, n_blocks, path, tick, kvp_b_, true));
	return matched;
}

size_t kvp_tree_peek(const struct kvp_tree *t, struct kvp_key root, const uint32_t *tokens,
		     size_t n_tokens)
{
	/* the match loop, touching nothing: it writes to no node and no list */
	struct kvp_tree *tt = (struct kvp_tree *)t;
	size_t matched;

	KVP_HASH_SPECIALISE(t->block_tokens,
		matched = match_loop(tt, root, tokens, n_tokens / t->block_tokens, NULL, 0,
				     kvp_b_, false));
	return matched;
}

/* ---- insert / pin / evict / clear ------------------------------------------------ */

int kvp_tree_insert(struct kvp_tree *t, struct kvp_key root, struct kvp_tree_node *parent,
		    struct kvp_key key, const uint32_t *tokens, uint32_t block_id,
		    struct kvp_tree_node **out)
{
	return kvp_tree_insert_grouped(t, root, root, parent, key, tokens, block_id, out);
}

int kvp_tree_insert_grouped(struct kvp_tree *t, struct kvp_key root, struct kvp_key group,
			    struct kvp_tree_node *parent, struct kvp_key key,
			    const uint32_t *tokens, uint32_t block_id, struct kvp_tree_node **out)
{
	struct kvp_tree_node *n;
	struct tree_ns *ns;
	size_t bytes = token_bytes(t);
	uint32_t h, *bucket;

	assert(t && tokens && out);
	assert(!parent || kvp_key_eq(parent->ns->root, root));
	*out = NULL;
	n = table_find(t, root, parent, key, tokens, t->block_tokens);
	if (n) {
		*out = n;
		return KVP_EEXIST;
	}
	ns = parent ? parent->ns : ns_get_in_group(t, root, group);
	if (!ns)
		return KVP_ENOMEM;
	h = kvp_slab_alloc(&t->slab);
	if (!h) {
		ns_release(t, ns);
		return KVP_ENOMEM;
	}

	n = node_at(t, h);
	memset(n, 0, sizeof(*n));
	n->self = h;
	n->key = key;
	n->parent = parent ? parent->self : 0;
	n->content = kvp_content_key(parent ? parent->content : 0, tokens, t->block_tokens);
	n->ns = ns;
	ns->nodes++;
	ns->grp->gnodes++;
	n->tick = ++t->tick;
	n->block_id = block_id;
	if (t->ghost && kvp_ghost_has(t->ghost, key.lo))   /* evicted lately */
		n->pins = NODE_WARM;
	memcpy(n->tokens, tokens, bytes);

	bucket = bucket_of(t, key);
	n->hnext = *bucket;
	*bucket = h;
	t->size++;
	if (parent) {
		if (node_evictable(parent))
			lru_remove(t, parent);
		assert(parent->children < UINT32_MAX);
		parent->children++;
	}
	lru_push_tail(t, n);        /* its tick is the newest */
	table_maybe_grow(t);
	ns_maybe_grow(t);
	if (t->watch)
		t->watch(t->watch_arg, n, true);
	*out = n;
	return 0;
}

void kvp_tree_pin(struct kvp_tree *t, struct kvp_tree_node *n)
{
	assert(n && node_pins(n) < NODE_PINS);
	if (node_evictable(n))
		lru_remove(t, n);
	n->pins++;
}

void kvp_tree_unpin(struct kvp_tree *t, struct kvp_tree_node *n)
{
	assert(n && node_pins(n) > 0);
	n->pins--;
	if (node_evictable(n))
		lru_insert_ordered(t, n);
}

/* Take n (an evictable leaf, already off the LRU) out of the table, its namespace
 * (freed with its last node) and its parent. Returns the parent if it just became an
 * evictable leaf (not yet on the LRU). */
static struct kvp_tree_node *node_detach(struct kvp_tree *t, struct kvp_tree_node *n)
{
	struct kvp_tree_node *p = node_at(t, n->parent);

	if (t->watch)
		t->watch(t->watch_arg, n, false);
	table_unlink(t, n);
	t->size--;
	n->ns->nodes--;
	n->ns->grp->gnodes--;
	if (!p) {
		ns_release(t, n->ns);
		return NULL;
	}
	assert(p->children > 0);
	p->children--;
	return node_evictable(p) ? p : NULL;
}

/* Give n's slot back (n is out of the table and off every list). */
static void node_free(struct kvp_tree *t, struct kvp_tree_node *n)
{
	kvp_slab_free(&t->slab, n->self);
}

/* Remove n, an evictable leaf; its parent goes onto the LRUs if it becomes one, placed
 * from where n was. */
static uint32_t evict_leaf(struct kvp_tree *t, struct kvp_tree_node *n)
{
	struct kvp_tree_node *p;
	uint32_t hint = n->lru.next, nhint = n->nlru.next, ghint = n->glru.next;
	uint32_t id = n->block_id;

	assert(node_evictable(n));
	lru_remove(t, n);
	p = node_detach(t, n);
	if (p)   /* n's place in the tree-wide list is a hint only in p's own list */
		lru_insert_near(t, p, node_warm(p) == node_warm(n) ? hint : 0, nhint, ghint);
	node_free(t, n);
	return id;
}

void kvp_tree_set_evict_hook(struct kvp_tree *t,
			     void (*fn)(void *arg, const struct kvp_tree_node *n), void *arg)
{
	t->evict_hook = fn;
	t->evict_arg = arg;
}

void kvp_tree_set_watch(struct kvp_tree *t,
			void (*fn)(void *arg, const struct kvp_tree_node *n, bool added), void *arg)
{
	t->watch = fn;
	t->watch_arg = arg;
}

/* An eviction to make room: the hook sees n before it goes; the ghost keeps its key. */
static uint32_t evict_for_room(struct kvp_tree *t, struct kvp_tree_node *n)
{
	if (t->evict_hook)
		t->evict_hook(t->evict_arg, n);
	if (t->ghost)
		kvp_ghost_add(t->ghost, n->key.lo);
	return evict_leaf(t, n);
}

/* The next victim of pool pressure: LRU's head; under REUSE the older of the two
 * heads, a warm node counting bonus ticks younger. NULL: nothing evictable. */
static struct kvp_tree_node *victim(struct kvp_tree *t)
{
	uint32_t c = t->lru.first, w = t->warm.first;

	if (!w)
		return node_at(t, c);
	if (!c)
		return node_at(t, w);
	return node_at(t, tick_of(t, c) <= tick_of(t, w) + t->bonus ? c : w);
}

int kvp_tree_evict(struct kvp_tree *t, uint32_t *block_id)
{
	struct kvp_tree_node *v;

	assert(t && block_id);
	v = victim(t);
	if (!v)
		return KVP_EFULL;
	*block_id = evict_for_room(t, v);
	return 0;
}

int kvp_tree_set_policy_for(struct kvp_tree *t, enum kvp_evict_policy policy, size_t capacity)
{
	return kvp_tree_set_policy(t, policy, KVP_REUSE_GHOST_PER_BLOCK * capacity,
				   (uint64_t)KVP_REUSE_BONUS_PER_BLOCK * capacity);
}

int kvp_tree_set_policy(struct kvp_tree *t, enum kvp_evict_policy policy, size_t ghost,
			uint64_t bonus)
{
	if (t->size != 0 || (policy != KVP_EVICT_LRU && policy != KVP_EVICT_REUSE))
		return KVP_EINVAL;
	kvp_ghost_destroy(t->ghost);
	t->ghost = NULL;
	if (policy == KVP_EVICT_REUSE && !(t->ghost = kvp_ghost_create(ghost)))
		return KVP_ENOMEM;
	t->policy = policy;
	t->bonus = bonus;
	return 0;
}

size_t kvp_tree_ns_size(const struct kvp_tree *t, struct kvp_key root)
{
	const struct tree_ns *ns = ns_find(t, root);

	return ns ? ns->nodes : 0;
}

size_t kvp_tree_group_size(const struct kvp_tree *t, struct kvp_key group)
{
	const struct tree_ns *g = ns_find(t, group);

	return g ? g->gnodes : 0;
}

int kvp_tree_evict_group(struct kvp_tree *t, struct kvp_key group, uint32_t *block_id)
{
	struct tree_ns *g = ns_find(t, group);

	assert(block_id);
	if (!g || !g->glru.first)
		return KVP_EFULL;
	*block_id = evict_for_room(t, node_at(t, g->glru.first));
	return 0;
}

int kvp_tree_ns_group(const struct kvp_tree *t, struct kvp_key root, struct kvp_key *group)
{
	const struct tree_ns *ns = ns_find(t, root);

	if (!ns || !ns->grp)
		return KVP_ENOTFOUND;
	*group = ns->grp->root;
	return KVP_OK;
}

size_t kvp_tree_ns_count(const struct kvp_tree *t)
{
	return t->n_ns;
}

int kvp_tree_evict_ns(struct kvp_tree *t, struct kvp_key root, uint32_t *block_id)
{
	struct tree_ns *ns = ns_find(t, root);

	assert(block_id);
	if (!ns || !ns->lru.first)
		return KVP_EFULL;
	*block_id = evict_for_room(t, node_at(t, ns->lru.first));
	return 0;
}

size_t kvp_tree_clear_ns(struct kvp_tree *t, struct kvp_key root,
			 void (*cb)(void *arg, uint32_t block_id), void *arg)
{
	struct tree_ns *ns = ns_find(t, root);
	size_t n = 0;

	/* the namespace is freed with its last node: test before touching it again */
	while (ns) {
		bool last = ns->nodes == 1;
		uint32_t id;

		if (!ns->lru.first)
			break;
		id = evict_leaf(t, node_at(t, ns->lru.first));
		n++;
		if (cb)
			cb(arg, id);
		if (last)
			break;
	}
	return n;
}

/* Is x in the subtree under top (top itself included)? Walks x's ancestors. */
static bool in_subtree(const struct kvp_tree *t, const struct kvp_tree_node *x,
		       const struct kvp_tree_node *top)
{
	for (; x; x = node_at(t, x->parent))
		if (x == top)
			return true;
	return false;
}

size_t kvp_tree_evict_under(struct kvp_tree *t, struct kvp_tree_node *top,
			    void (*cb)(void *arg, uint32_t block_id), void *arg)
{
	struct tree_ns *ns = top->ns;
	uint32_t l, next;
	size_t n = 0;
	bool gone = false;

	/*
	 * One pass over the namespace's evictable leaves. A leaf under top goes, and so
	 * does each ancestor it uncovers, up to top itself: those were not on the list
	 * when the pass began, and the pass would not see them. Every node of the subtree
	 * that can go is thus reached from one of its leaves. Evicting top ends the pass
	 * (nothing under it is left; the namespace may have gone with it).
	 */
	for (l = ns->lru.first; !gone && l; l = next) {
		struct kvp_tree_node *x = node_at(t, l);

		next = x->nlru.next;
		if (!in_subtree(t, x, top))
			continue;
		lru_remove(t, x);
		for (;;) {
			bool at_top = x == top, last = ns->nodes == 1;
			struct kvp_tree_node *up = node_detach(t, x);   /* uncovered parent */
			uint32_t id = x->block_id;

			node_free(t, x);
			n++;
			if (cb)
				cb(arg, id);
			if (last || at_top) {
				/* top is gone, so nothing under it is left; and after the
				 * namespace's last node the namespace itself is gone */
				if (up)
					lru_insert_ordered(t, up);   /* above top: stays, evictable */
				gone = true;
				break;
			}
			if (!up)
				break;
			x = up;                    /* under top, evictable, on no list yet */
		}
	}
	return n;
}

int kvp_tree_evict_node(struct kvp_tree *t, struct kvp_tree_node *n, uint32_t *block_id)
{
	if (!node_evictable(n))
		return KVP_EBUSY;
	*block_id = evict_leaf(t, n);
	return 0;
}

void kvp_tree_clear(struct kvp_tree *t, void (*cb)(void *arg, uint32_t block_id), void *arg)
{
	/* Pop the head until the LRU is empty. A parent uncovered on the way goes to the
	 * head, so it is removed next (leaf first, no recursion); order no longer matters
	 * because everything on the list goes. cb must not call into this tree. */
	while (t->lru.first || t->warm.first) {
		struct kvp_tree_node *n = node_at(t, t->lru.first ? t->lru.first : t->warm.first), *p;
		uint32_t id = n->block_id;

		lru_remove(t, n);
		p = node_detach(t, n);
		if (p)
			lru_push_head(t, p);
		node_free(t, n);
		if (cb)
			cb(arg, id);
	}
}
