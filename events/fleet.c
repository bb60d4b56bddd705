/*
 * fleet.c - the fleet index: per engine, a map from its block ids to keys; for all of
 * them, one map from a key to the engines holding it.
 *
 * Both maps are open-addressed with linear probing, grown at 3/4 full, and delete by
 * shifting back the entries after the hole (no tombstones, so a long-lived index never
 * degrades). An id is mixed before use (an engine's ids may be small integers); a key
 * is already a hash. A key's entry exists while some engine holds it (mask != 0);
 * refs, allocated the first time one engine holds the key under two ids, counts the
 * extra ids per engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_fleet.h"

#define MATCH_AHEAD 8   /* key-table probes a match has in flight */

struct id_slot {
	uint64_t id;
	struct kvp_key key;
	uint32_t used;
};

struct id_map {
	struct id_slot *s;
	size_t mask, n;
};

struct key_slot {
	struct kvp_key key;
	uint64_t mask;               /* engines holding the key; 0: the slot is empty */
	uint32_t *refs;              /* extra ids per engine, or NULL */
};

struct instance {
	char name[KVP_FLEET_NAME_MAX + 1];
	struct id_map ids;
};

struct kvp_fleet {
	uint32_t block_tokens;
	struct kvp_key root;
	struct key_slot *ks;
	size_t kmask, kn;
	struct instance inst[KVP_FLEET_MAX_INSTANCES];
	unsigned n_inst;
};

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Is home h cyclically in (i, j]? Then the entry at j may not move to i. */
static inline bool stays(size_t i, size_t j, size_t h)
{
	return i <= j ? (i < h && h <= j) : (i < h || h <= j);
}

/* ---- an engine's ids ------------------------------------------------------------------ */

static struct id_slot *id_find(const struct id_map *m, uint64_t id)
{
	if (!m->s)
		return NULL;
	for (size_t i = mix64(id) & m->mask;; i = (i + 1) & m->mask) {
		if (!m->s[i].used)
			return NULL;
		if (m->s[i].id == id)
			return &m->s[i];
	}
}

static int id_grow(struct id_map *m)
{
	size_t cap = m->s ? 2 * (m->mask + 1) : 64;
	struct id_slot *s = calloc(cap, sizeof(*s));

	if (!s)
		return KVP_ENOMEM;
	for (size_t i = 0; m->s && i <= m->mask; i++) {
		size_t j = mix64(m->s[i].id) & (cap - 1);

		if (!m->s[i].used)
			continue;
		while (s[j].used)
			j = (j + 1) & (cap - 1);
		s[j] = m->s[i];
	}
	free(m->s);
	m->s = s;
	m->mask = cap - 1;
	return 0;
}

/* A new id (not in the map). */
static int id_put(struct id_map *m, uint64_t id, struct kvp_key key)
{
	size_t i;

	if ((!m->s || 4 * (m->n + 1) > 3 * (m->mask + 1)) && id_grow(m))
		return KVP_ENOMEM;
	for (i = mix64(id) & m->mask; m->s[i].used; i = (i + 1) & m->mask)
		;
	m->s[i] = (struct id_slot){ .id = id, .key = key, .used = 1 };
	m->n++;
	return 0;
}

static void id_del(struct id_map *m, struct id_slot *x)
{
	size_t i = (size_t)(x - m->s), j = i;

	for (;;) {
		j = (j + 1) & m->mask;
		if (!m->s[j].used)
			break;
		if (stays(i, j, mix64(m->s[j].id) & m->mask))
			continue;
		m->s[i] = m->s[j];
		i = j;
	}
	m->s[i].used = 0;
	m->n--;
}

/* ---- keys to engines ------------------------------------------------------------------ */

static struct key_slot *key_find(const struct kvp_fleet *f, struct kvp_key k)
{
	if (!f->ks)
		return NULL;
	for (size_t i = k.lo & f->kmask;; i = (i + 1) & f->kmask) {
		if (!f->ks[i].mask)
			return NULL;
		if (kvp_key_eq(f->ks[i].key, k))
			return &f->ks[i];
	}
}

static int key_grow(struct kvp_fleet *f)
{
	size_t cap = f->ks ? 2 * (f->kmask + 1) : 1024;
	struct key_slot *s = calloc(cap, sizeof(*s));

	if (!s)
		return KVP_ENOMEM;
	for (size_t i = 0; f->ks && i <= f->kmask; i++) {
		size_t j = f->ks[i].key.lo & (cap - 1);

		if (!f->ks[i].mask)
			continue;
		while (s[j].mask)
			j = (j + 1) & (cap - 1);
		s[j] = f->ks[i];
	}
	free(f->ks);
	f->ks = s;
	f->kmask = cap - 1;
	return 0;
}

static int key_add(struct kvp_fleet *f, struct kvp_key k, unsigned inst)
{
	const uint64_t bit = UINT64_C(1) << inst;
	struct key_slot *e = key_find(f, k);
	size_t i;

	if (e && (e->mask & bit)) {
		if (!e->refs && !(e->refs = calloc(KVP_FLEET_MAX_INSTANCES, sizeof(*e->refs))))
			return KVP_ENOMEM;
		e->refs[inst]++;
		return 0;
	}
	if (e) {
		e->mask |= bit;
		return 0;
	}
	if ((!f->ks || 4 * (f->kn + 1) > 3 * (f->kmask + 1)) && key_grow(f))
		return KVP_ENOMEM;
	for (i = k.lo & f->kmask; f->ks[i].mask; i = (i + 1) & f->kmask)
		;
	f->ks[i] = (struct key_slot){ .key = k, .mask = bit };
	f->kn++;
	return 0;
}

static void key_del_slot(struct kvp_fleet *f, struct key_slot *x)
{
	size_t i = (size_t)(x - f->ks), j = i;

	free(x->refs);
	for (;;) {
		j = (j + 1) & f->kmask;
		if (!f->ks[j].mask)
			break;
		if (stays(i, j, f->ks[j].key.lo & f->kmask))
			continue;
		f->ks[i] = f->ks[j];
		i = j;
	}
	f->ks[i] = (struct key_slot){ 0 };
	f->kn--;
}

static void key_remove(struct kvp_fleet *f, struct kvp_key k, unsigned inst)
{
	struct key_slot *e = key_find(f, k);

	if (!e)
		return;
	if (e->refs && e->refs[inst] > 0) {
		e->refs[inst]--;
		return;
	}
	e->mask &= ~(UINT64_C(1) << inst);
	if (!e->mask)
		key_del_slot(f, e);
}

/* ---- the index ------------------------------------------------------------------------ */

int kvp_fleet_create(uint32_t block_tokens, struct kvp_key root, struct kvp_fleet **out)
{
	struct kvp_fleet *f;

	*out = NULL;
	if (block_tokens == 0 || block_tokens > KVP_BLOCK_TOKENS_MAX)
		return KVP_EINVAL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return KVP_ENOMEM;
	f->block_tokens = block_tokens;
	f->root = root;
	*out = f;
	return 0;
}

void kvp_fleet_destroy(struct kvp_fleet *f)
{
	if (!f)
		return;
	for (size_t i = 0; f->ks && i <= f->kmask; i++)
		free(f->ks[i].refs);
	free(f->ks);
	for (unsigned i = 0; i < f->n_inst; i++)
		free(f->inst[i].ids.s);
	free(f);
}

int kvp_fleet_instance(struct kvp_fleet *f, const char *name)
{
	for (unsigned i = 0; i < f->n_inst; i++)
		if (strncmp(f->inst[i].name, name, KVP_FLEET_NAME_MAX) == 0)
			return (int)i;
	if (f->n_inst == KVP_FLEET_MAX_INSTANCES)
		return KVP_EFULL;
	snprintf(f->inst[f->n_inst].name, sizeof(f->inst[0].name), "%s", name);
	return (int)f->n_inst++;
}

size_t kvp_fleet_instances(const struct kvp_fleet *f)
{
	return f->n_inst;
}

const char *kvp_fleet_instance_name(const struct kvp_fleet *f, unsigned inst)
{
	return inst < f->n_inst ? f->inst[inst].name : NULL;
}

size_t kvp_fleet_instance_blocks(const struct kvp_fleet *f, unsigned inst)
{
	return inst < f->n_inst ? f->inst[inst].ids.n : 0;
}

size_t kvp_fleet_blocks(const struct kvp_fleet *f)
{
	size_t n = 0;

	for (unsigned i = 0; i < f->n_inst; i++)
		n += f->inst[i].ids.n;
	return n;
}

/* One stored block: id keyed as key for engine inst. */
static int store_one(struct kvp_fleet *f, unsigned inst, uint64_t id, struct kvp_key key)
{
	struct id_map *m = &f->inst[inst].ids;
	struct id_slot *x = id_find(m, id);
	int rc;

	if (x && kvp_key_eq(x->key, key))
		return 0;   /* stored again */
	rc = key_add(f, key, inst);
	if (rc)
		return rc;
	if (x) {   /* the id now names another block */
		key_remove(f, x->key, inst);
		x->key = key;
		return 0;
	}
	rc = id_put(m, id, key);
	if (rc)
		key_remove(f, key, inst);
	return rc;
}

/*
 * An engine's id of a block in a medium. One block may be in several media at once (the
 * pool and a tier below it) under the same hash, and leave one of them only: the id
 * map keys (hash, medium). GPU, every engine's usual medium, keeps the hash as it is.
 */
static uint64_t medium_id(uint64_t hash, enum kvp_ev_medium m)
{
	static const uint64_t salt[] = {
		[KVP_EV_GPU] = 0,
		[KVP_EV_CPU] = 0x9e3779b97f4a7c15ull,
		[KVP_EV_DISK] = 0xc2b2ae3d27d4eb4full,
	};

	return hash ^ salt[m];
}

/* A stored block's parent: in its own medium first, else in any other (a tier may hold
 * a block whose parent only the pool holds). */
static const struct id_slot *find_parent(const struct kvp_fleet *f, unsigned inst,
					 const struct kvp_ev *ev)
{
	const struct id_slot *p = id_find(&f->inst[inst].ids, medium_id(ev->parent, ev->medium));

	for (int m = KVP_EV_GPU; !p && m <= KVP_EV_DISK; m++)
		if (m != (int)ev->medium)
			p = id_find(&f->inst[inst].ids, medium_id(ev->parent, m));
	return p;
}

static int apply_stored(struct kvp_fleet *f, unsigned inst, const struct kvp_ev *ev,
			size_t *skipped)
{
	const uint32_t bt = f->block_tokens;
	struct kvp_key parent = f->root;

	if (ev->block_size != bt) {
		*skipped = ev->n_hashes;
		return KVP_EINVAL;
	}
	if (ev->has_parent) {
		const struct id_slot *p = find_parent(f, inst, ev);

		if (!p) {
			*skipped = ev->n_hashes;
			return KVP_EINVAL;
		}
		parent = p->key;
	}
	for (size_t i = 0; i < ev->n_hashes; i++) {
		struct kvp_key key = kvp_block_key(parent, ev->tokens + i * bt, bt);
		int rc = store_one(f, inst, medium_id(ev->hashes[i], ev->medium), key);

		if (rc)
			return rc;
		parent = key;
	}
	return 0;
}

static void apply_cleared(struct kvp_fleet *f, unsigned inst)
{
	struct id_map *m = &f->inst[inst].ids;

	for (size_t i = 0; m->s && i <= m->mask; i++)
		if (m->s[i].used)
			key_remove(f, m->s[i].key, inst);
	if (m->s)
		memset(m->s, 0, (m->mask + 1) * sizeof(*m->s));
	m->n = 0;
}

int kvp_fleet_apply(struct kvp_fleet *f, unsigned inst, const struct kvp_ev *ev,
		    size_t *skipped)
{
	*skipped = 0;
	if (inst >= f->n_inst)
		return KVP_EINVAL;
	switch (ev->type) {
	case KVP_EV_STORED:
		return apply_stored(f, inst, ev, skipped);
	case KVP_EV_REMOVED:
		for (size_t i = 0; i < ev->n_hashes; i++) {
			struct id_slot *x = id_find(&f->inst[inst].ids,
						    medium_id(ev->hashes[i], ev->medium));

			if (!x) {
				++*skipped;
				continue;
			}
			key_remove(f, x->key, inst);
			id_del(&f->inst[inst].ids, x);
		}
		return 0;
	case KVP_EV_CLEARED:
		apply_cleared(f, inst);
		return 0;
	}
	return KVP_EINVAL;
}

void kvp_fleet_match(const struct kvp_fleet *f, const uint32_t *tokens, size_t n_tokens,
		     struct kvp_key *keys, uint32_t *out)
{
	const size_t nb = n_tokens / f->block_tokens;
	uint64_t alive = f->n_inst == 64 ? ~UINT64_C(0) : (UINT64_C(1) << f->n_inst) - 1;
	size_t b;

	kvp_chain_keys(f->root, tokens, nb, f->block_tokens, keys);
	/* the probes are misses in a large table: start the first few loads together */
	for (b = 0; f->ks && b < nb && b < MATCH_AHEAD; b++)
		__builtin_prefetch(&f->ks[keys[b].lo & f->kmask]);
	for (b = 0; b < nb && alive; b++) {
		if (f->ks && b + MATCH_AHEAD < nb)
			__builtin_prefetch(&f->ks[keys[b + MATCH_AHEAD].lo & f->kmask]);
		const struct key_slot *e = key_find(f, keys[b]);
		uint64_t m = e ? e->mask & alive : 0, gone = alive & ~m;

		for (; gone; gone &= gone - 1)
			out[__builtin_ctzll(gone)] = (uint32_t)b;
		alive = m;
	}
	for (; alive; alive &= alive - 1)
		out[__builtin_ctzll(alive)] = (uint32_t)b;
}

int kvp_fleet_check(const struct kvp_fleet *f)
{
	size_t ids = 0, held = 0, kn = 0;

	for (unsigned i = 0; i < f->n_inst; i++) {
		const struct id_map *m = &f->inst[i].ids;
		size_t n = 0;

		for (size_t j = 0; m->s && j <= m->mask; j++) {
			const struct key_slot *e;

			if (!m->s[j].used)
				continue;
			n++;
			e = key_find(f, m->s[j].key);
			if (!e || !(e->mask & (UINT64_C(1) << i)))
				return KVP_EINTERNAL;
			if (id_find(m, m->s[j].id) != &m->s[j])
				return KVP_EINTERNAL;
		}
		if (n != m->n)
			return KVP_EINTERNAL;
		ids += n;
	}
	for (size_t j = 0; f->ks && j <= f->kmask; j++) {
		const struct key_slot *e = &f->ks[j];

		if (!e->mask)
			continue;
		kn++;
		held += (size_t)__builtin_popcountll(e->mask);
		for (unsigned i = 0; e->refs && i < KVP_FLEET_MAX_INSTANCES; i++)
			held += e->refs[i];
		if (key_find(f, e->key) != e)
			return KVP_EINTERNAL;
	}
	return ids == held && kn == f->kn ? 0 : KVP_EINTERNAL;
}
