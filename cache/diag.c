/*
 * diag.c - what became of a query's blocks: the departures (gone.c) for blocks that
 * left, the contents table for the same tokens in another namespace, and the scores of
 * the larger pools.
 *
 * The contents table counts the cached blocks of each content key (kvp_content_key: a
 * prefix's chain without its namespace) in a linear-probing table at most half full,
 * deleted from by shifting back. A query's first block not cached in its namespace is
 * cached in another one exactly when its content key is counted. The check costs one
 * hash and one probe whether it succeeds or not, so a query's time says nothing of
 * another namespace's blocks.
 */
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

struct contents_slot {
	uint64_t key;
	uint32_t count;          /* 0: empty */
};

struct kvp_diag {
	struct kvp_gone *gone;
	struct contents_slot *contents;   /* (mask + 1) */
	size_t mask;
	uint32_t capacity;
	uint32_t block_tokens;
};

static const char *const fate_names[KVP_FATE_N] = {
	"cached", "new", "evicted_pool", "evicted_quota", "evicted_admin",
	"other_namespace", "partial",
};

const char *kvp_fate_name(enum kvp_fate f)
{
	return (unsigned)f < KVP_FATE_N ? fate_names[f] : "?";
}

struct kvp_diag *kvp_diag_create(uint32_t capacity, uint32_t block_tokens)
{
	struct kvp_diag *d = calloc(1, sizeof(*d));
	size_t slots = 16;

	if (!d)
		return NULL;
	d->capacity = capacity;
	d->block_tokens = block_tokens;
	while (slots < 2 * (size_t)capacity)   /* a node a pool block: at most half full */
		slots *= 2;
	d->mask = slots - 1;
	d->contents = calloc(slots, sizeof(*d->contents));
	d->gone = kvp_gone_create((size_t)KVP_CACHE_GONE_PER_BLOCK * capacity);
	if (!d->contents || !d->gone) {
		kvp_diag_destroy(d);
		return NULL;
	}
	return d;
}

void kvp_diag_destroy(struct kvp_diag *d)
{
	if (!d)
		return;
	kvp_gone_destroy(d->gone);
	free(d->contents);
	free(d);
}

size_t kvp_diag_bytes(const struct kvp_diag *d)
{
	return sizeof(*d) + (d->mask + 1) * sizeof(*d->contents) + kvp_gone_bytes(d->gone);
}

/* ---- the contents table ---------------------------------------------------------------- */

static inline size_t home(const struct kvp_diag *d, uint64_t key)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 23) & d->mask;
}

/* The slot of key, or the empty slot where its probe ends. */
static size_t contents_slot_of(const struct kvp_diag *d, uint64_t key)
{
	size_t s = home(d, key);

	while (d->contents[s].count && d->contents[s].key != key)
		s = (s + 1) & d->mask;
	return s;
}

static void contents_delete(struct kvp_diag *d, size_t hole)
{
	size_t s = hole;

	d->contents[hole].count = 0;
	for (;;) {
		size_t h;

		s = (s + 1) & d->mask;
		if (!d->contents[s].count)
			return;
		h = home(d, d->contents[s].key);
		if (((s - h) & d->mask) >= ((s - hole) & d->mask)) {
			d->contents[hole] = d->contents[s];
			d->contents[s].count = 0;
			hole = s;
		}
	}
}

void kvp_diag_added(struct kvp_diag *d, const struct kvp_tree_node *n)
{
	uint64_t key = kvp_tree_node_content(n);
	size_t s = contents_slot_of(d, key);

	d->contents[s].key = key;
	d->contents[s].count++;
	kvp_gone_forget(d->gone, kvp_tree_node_key(n).lo);
}

void kvp_diag_removed(struct kvp_diag *d, const struct kvp_tree_node *n, enum kvp_gone_why why)
{
	size_t s = contents_slot_of(d, kvp_tree_node_content(n));

	kvp_gone_add(d->gone, kvp_tree_node_key(n).lo, why);
	if (d->contents[s].count && --d->contents[s].count == 0)
		contents_delete(d, s);
}

/* ---- fates ------------------------------------------------------------------------------- */

/* The fate of a block not cached in its namespace: key its key, content its content
 * key; *age for POOL. */
static enum kvp_fate fate_of(const struct kvp_diag *d, struct kvp_key key, uint64_t content,
			     uint64_t *age)
{
	static const enum kvp_fate of_why[] = {
		[KVP_GONE_POOL] = KVP_FATE_POOL,
		[KVP_GONE_QUOTA] = KVP_FATE_QUOTA,
		[KVP_GONE_ADMIN] = KVP_FATE_ADMIN,
	};
	bool elsewhere = d->contents[contents_slot_of(d, content)].count > 0;
	enum kvp_gone_why why;

	*age = 0;
	if (kvp_gone_find(d->gone, key.lo, &why, age))
		return of_why[why];
	*age = 0;
	return elsewhere ? KVP_FATE_OTHER_NS : KVP_FATE_NEW;
}

void kvp_diag_query(const struct kvp_diag *d, const struct kvp_tree_node *last,
		    struct kvp_key root, const uint32_t *tokens, size_t n_tokens, size_t matched,
		    struct kvp_cache_miss *out)
{
	static const uint32_t mult[KVP_CACHE_GHOST_N] = KVP_CACHE_GHOST_MULTIPLES;
	const uint32_t b = d->block_tokens;
	const size_t nb = n_tokens / b;
	struct kvp_key key = last ? kvp_tree_node_key(last) : root;
	bool alive[KVP_CACHE_GHOST_N];
	enum kvp_fate first = KVP_FATE_NEW;

	memset(out, 0, sizeof(*out));
	out->tokens[KVP_FATE_CACHED] = (uint32_t)(matched * b);
	out->tokens[KVP_FATE_PARTIAL] = (uint32_t)(n_tokens - nb * b);
	if (matched >= nb)
		return;
	for (int k = 0; k < KVP_CACHE_GHOST_N; k++)
		alive[k] = true;
	/* the first block decides the fate of them all; the larger pools go on while the
	 * blocks after it left to make room recently enough */
	for (size_t i = matched; i < nb; i++) {
		const uint32_t *blk = tokens + i * b;
		bool any = false;
		enum kvp_gone_why why;
		uint64_t age;
		enum kvp_fate f;

		key = kvp_block_key(key, blk, b);
		if (i == matched)
			f = first = fate_of(d, key, kvp_content_key(last ? kvp_tree_node_content(last)
									   : 0, blk, b), &age);
		else if (kvp_gone_find(d->gone, key.lo, &why, &age) && why == KVP_GONE_POOL)
			f = KVP_FATE_POOL;
		else
			break;
		for (int k = 0; k < KVP_CACHE_GHOST_N; k++) {
			alive[k] = alive[k] && f == KVP_FATE_POOL &&
				   age < (uint64_t)(mult[k] - 1) * d->capacity;
			if (alive[k])
				out->ghost_tokens[k] += b;
			any |= alive[k];
		}
		if (!any)
			break;
	}
	out->tokens[first] += (uint32_t)((nb - matched) * b);
}

int kvp_diag_explain(const struct kvp_diag *d, const struct kvp_tree *t, struct kvp_key root,
		     const uint32_t *tokens, size_t n_tokens, uint8_t *fates, uint64_t *ages,
		     size_t *n_out)
{
	const uint32_t b = d->block_tokens;
	const size_t nb = n_tokens / b;
	const size_t m = kvp_tree_peek(t, root, tokens, n_tokens);
	struct kvp_key key = root;
	uint64_t content = 0;
	size_t i;

	for (i = 0; i < nb; i++) {
		const uint32_t *blk = tokens + i * b;

		key = kvp_block_key(key, blk, b);
		content = kvp_content_key(content, blk, b);
		ages[i] = 0;
		fates[i] = i < m ? KVP_FATE_CACHED : (uint8_t)fate_of(d, key, content, &ages[i]);
	}
	if (n_tokens > nb * b) {
		fates[i] = KVP_FATE_PARTIAL;
		ages[i++] = 0;
	}
	*n_out = i;
	return KVP_OK;
}
