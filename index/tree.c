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
 *     clear and check walk the LRU list and the bucket array iteratively.
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
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "alloc_internal.h"
#include "ghost_internal.h"
#include "hash_internal.h"
#include "kvp_index.h"
#include "slab_internal.h"

/* ---- module allocator ------------------------------------------------------------ */

void *(*kvp_index_alloc_fn)(size_t) = malloc;
void (*kvp_index_release_fn)(void *) = free;

/* Set the hooks before creating any tree (or keep release able to free what the
 * previous alloc returned): nodes are freed through whatever hook is current. */
void kvp_index_set_allocator(void *(*alloc)(size_t), void (*release)(void *))
{
	kvp_index_alloc_fn = alloc ? alloc : malloc;
	kvp_index_release_fn = release ? release : free;
}

void *kvp_index_alloc(size_t size)
{
	return kvp_index_alloc_fn(size);
}

void kvp_index_release(void *p)
{
	kvp_index_release_fn(p);
}

/* A function that allocates, kept as one copy out of line so that its allocation has
 * exactly one call site whatever the optimiser does (tests/test_faults.c counts the
 * sites by return address): no inlining and, with GCC, no specialised clones. */
#if defined(__GNUC__) && !defined(__clang__)
#define KVP_OUT_OF_LINE __attribute__((noinline, noclone))
#else
#define KVP_OUT_OF_LINE __attribute__((noinline))
#endif

/* Conditions that must hold even in release builds; checked by kvp_tree_check. */
#define KVP_CHECK(cond)                    \
	do {                               \
		if (!(cond))               \
			return KVP_EINTERNAL; \
	} while (0)

/* ---- layout ---------------------------------------------------------------------- */

/* A node's place on one of the LRU lists: the handles before and after it, 0 at either
 * end and while it is on no list. */
struct kvp_link {
	uint32_t prev;
	uint32_t next;
};

/* A list's two ends (0, 0 when empty). */
struct kvp_list {
	uint32_t first;
	uint32_t last;
};

/* A node lives in the tree's slab (slab_internal.h) and names other nodes by handle. */
struct kvp_tree_node {
	struct kvp_key key;             /* full 128-bit chained key */
	uint64_t tick;                  /* last use: tree tick of the last match/insert */
	uint64_t content;               /* kvp_content_key chain: the same in every namespace */
	struct tree_ns *ns;             /* its namespace's accounting (and root) */
	uint32_t self;                  /* its own handle */
	uint32_t hnext;                 /* next in the hash bucket */
	uint32_t parent;                /* 0 at depth 0 */
	struct kvp_link lru;            /* on the tree's list iff pins == 0 && children == 0 */
	struct kvp_link nlru;           /* the namespace's own LRU: on it iff on lru's */
	struct kvp_link glru;           /* its group's LRU: on it iff on lru's */
	uint32_t children;              /* resident nodes whose parent this is */
	uint32_t pins;                  /* NODE_PINS: the pins; NODE_WARM: REUSE's "used again" */
	uint32_t block_id;
	uint32_t tokens[];              /* block_tokens of them */
};

#define NODE_WARM 0x80000000u
#define NODE_PINS 0x7fffffffu

/* Per-namespace accounting: resident nodes, and an LRU of the namespace's evictable
 * nodes (the same nodes as on the tree's LRU, in the same tick order), so that a
 * namespace can give up its own least recently used block (quotas) and be cleared
 * without a walk over everyone else's. Created with the namespace's first node, freed
 * with its last. */
struct tree_ns {
	struct kvp_key root;
	struct tree_ns *next;           /* hash chain */
	struct kvp_tree *tree;          /* whose slab its nodes live in */
	size_t nodes;
	size_t n_lru;
	struct kvp_list lru;            /* through node->nlru */
	/* the group (quota unit) the namespace's nodes count in: a record of the same
	 * table, keyed by the group key given at the namespace's first insert (itself
	 * when the key is the root); NULL while the namespace has no node */
	struct tree_ns *grp;
	size_t gnodes;                  /* as a group: nodes of its namespaces */
	size_t gn_lru;
	struct kvp_list glru;           /* through node->glru */
	size_t scratch, gscratch;       /* kvp_tree_check's tallies */
};

struct kvp_tree {
	uint32_t *buckets;              /* node handles, chained through node->hnext */
	size_t mask;                    /* number of buckets - 1 */
	size_t size;                    /* nodes */
	size_t n_lru;                   /* nodes on the LRU list */
	uint64_t tick;                  /* bumped by every match and insert */
	struct kvp_list lru;            /* lru.first is the least recently used */
	uint32_t block_tokens;
	struct kvp_slab slab;           /* the nodes */
	struct tree_ns **ns_buckets;    /* namespaces by root.lo (power of two) */
	size_t ns_mask;
	size_t n_ns;
	void (*evict_hook)(void *arg, const struct kvp_tree_node *n);   /* or NULL */
	void *evict_arg;
	void (*watch)(void *arg, const struct kvp_tree_node *n, bool added);   /* or NULL */
	void *watch_arg;
	/* the eviction policy: LRU keeps every evictable node on lru; REUSE keeps the warm
	 * ones on warm instead, and evicts from there only when its head is bonus ticks
	 * older than lru's; ghost remembers the keys evicted lately */
	enum kvp_evict_policy policy;
	struct kvp_list warm;           /* through node->lru, ascending tick */
	uint64_t bonus;
	struct kvp_ghost *ghost;
};

#define KVP_TREE_MIN_BUCKETS 16u
#define KVP_CHECK_LRU_BIT 0x80000000u
#define KVP_TREE_MIN_NS_BUCKETS 4u

#define LRU_OFF offsetof(struct kvp_tree_node, lru)
#define NLRU_OFF offsetof(struct kvp_tree_node, nlru)
#define GLRU_OFF offsetof(struct kvp_tree_node, glru)

#ifdef KVP_TREE_TEST_HASH_BITS
#define KVP_TREE_KEY_MASK ((UINT64_C(1) << (KVP_TREE_TEST_HASH_BITS)) - 1u)
static inline uint64_t tree_hash(struct kvp_key k)
{
	return k.lo & KVP_TREE_KEY_MASK;
}
static inline int tree_key_eq(struct kvp_key a, struct kvp_key b)
{
	return ((a.lo ^ b.lo) & KVP_TREE_KEY_MASK) == 0;
}
#else
static inline uint64_t tree_hash(struct kvp_key k)
{
	return k.lo;
}
static inline int tree_key_eq(struct kvp_key a, struct kvp_key b)
{
	return kvp_key_eq(a, b);
}
#endif

/* The node of handle h (0: NULL). */
static inline struct kvp_tree_node *node_at(const struct kvp_tree *t, uint32_t h)
{
	return kvp_slab_at(&t->slab, h);
}

static inline uint32_t *bucket_of(const struct kvp_tree *t, struct kvp_key k)
{
	return &t->buckets[tree_hash(k) & t->mask];
}

static inline size_t token_bytes(const struct kvp_tree *t)
{
	return (size_t)t->block_tokens * sizeof(uint32_t);
}

static inline uint32_t node_pins(const struct kvp_tree_node *n)
{
	return n->pins & NODE_PINS;
}

static inline bool node_warm(const struct kvp_tree_node *n)
{
	return (n->pins & NODE_WARM) != 0;
}

static inline int node_evictable(const struct kvp_tree_node *n)
{
	return node_pins(n) == 0 && n->children == 0;
}

/* ---- LRU lists (intrusive, by handle, ascending tick) ---------------------------- */

/* The tree-wide list an evictable node belongs on: its class's (REUSE), else the LRU. */
static inline struct kvp_list *glist(struct kvp_tree *t, const struct kvp_tree_node *n)
{
	return node_warm(n) ? &t->warm : &t->lru;
}

/* The link at offset off (LRU_OFF, NLRU_OFF, GLRU_OFF) of node h. */
static inline struct kvp_link *link_of(const struct kvp_tree *t, uint32_t h, size_t off)
{
	return (struct kvp_link *)(void *)((char *)node_at(t, h) + off);
}

static inline uint64_t tick_of(const struct kvp_tree *t, uint32_t h)
{
	return node_at(t, h)->tick;
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

static inline size_t ns_bucket(const struct kvp_tree *t, struct kvp_key root)
{
	return (size_t)(root.lo ^ (root.hi >> 17)) & t->ns_mask;
}

static struct tree_ns *ns_find(const struct kvp_tree *t, struct kvp_key root)
{
	struct tree_ns *ns = t->ns_buckets[ns_bucket(t, root)];

	while (ns && !kvp_key_eq(ns->root, root))
		ns = ns->next;
	return ns;
}

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

static int table_contains(const struct kvp_tree *t, uint32_t x)
{
	const struct kvp_tree_node *n = node_at(t, x);

	for (uint32_t h = *bucket_of(t, n->key); h; h = node_at(t, h)->hnext)
		if (h == x)
			return 1;
	return 0;
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
