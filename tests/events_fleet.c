/*
 * events_fleet.c - the fleet index (kvp_fleet_*): engines, re-stores, one engine's two
 * ids for one block, unknown parents and wrong block sizes; a differential test against
 * a trivial model over random events; growth to 200k blocks and deletes that shift
 * entries back; and batches from the builder through the decoder into the index.
 *
 * The model: per engine, id -> (key, token chain), the key computed with kvp_block_key
 * from the parent's key (or the fleet's root) when the block is stored, as kvp_fleet.h
 * says the index keys it. An engine holds block j of a query when one of its ids has
 * the key of the query's first j+1 blocks; kvp_fleet_match must give, per engine, the
 * number of leading blocks it holds, and kvp_fleet_check must pass after every event.
 *
 * One of the files of test_events; see events_unit.c.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events_test_util.h"
#include "kvp_events.h"
#include "kvp_fleet.h"
#include "kvp_index.h"

/* ---- the fleet index ------------------------------------------------------------------------ */

static struct kvp_fleet *new_fleet(uint32_t b, struct kvp_key root)
{
	struct kvp_fleet *f = NULL;

	cr_assert_eq(kvp_fleet_create(b, root, &f), 0);
	cr_assert_not_null(f);
	return f;
}

static void check_fleet(const struct kvp_fleet *f)
{
	cr_assert_eq(kvp_fleet_check(f), 0, "kvp_fleet_check failed");
}

static struct kvp_ev ev_stored(const uint64_t *h, size_t n, bool has_parent, uint64_t parent,
			       const uint32_t *tok, uint32_t bs)
{
	return (struct kvp_ev){ .type = KVP_EV_STORED, .hashes = h, .n_hashes = n,
				.has_parent = has_parent, .parent = parent, .tokens = tok,
				.n_tokens = n * bs, .block_size = bs };
}

static struct kvp_ev ev_removed(const uint64_t *h, size_t n)
{
	return (struct kvp_ev){ .type = KVP_EV_REMOVED, .hashes = h, .n_hashes = n };
}

/* Apply and return the status; *skipped into sk. */
static int fapply(struct kvp_fleet *f, unsigned inst, struct kvp_ev ev, size_t *sk)
{
	*sk = 999;
	return kvp_fleet_apply(f, inst, &ev, sk);
}

/* Match tokens and return engine inst's count. */
static uint32_t fmatch1(const struct kvp_fleet *f, const uint32_t *tok, size_t n, unsigned inst)
{
	struct kvp_key keys[64];
	uint32_t out[KVP_FLEET_MAX_INSTANCES];

	cr_assert_leq(n / 2, 64);
	memset(out, 0xee, sizeof(out));
	kvp_fleet_match(f, tok, n, keys, out);
	return out[inst];
}

Test(fleet, create_and_instances)
{
	struct kvp_key root = kvp_ns_root("fleet", 0, NULL);
	struct kvp_fleet *f = (struct kvp_fleet *)&f;
	char name[32];

	cr_assert_eq(kvp_fleet_create(0, root, &f), KVP_EINVAL);
	cr_assert_null(f);
	cr_assert_eq(kvp_fleet_create(KVP_BLOCK_TOKENS_MAX + 1, root, &f), KVP_EINVAL);
	kvp_fleet_destroy(NULL);
	f = new_fleet(16, root);
	cr_assert_eq(kvp_fleet_instances(f), 0);
	cr_assert_eq(kvp_fleet_blocks(f), 0);
	for (unsigned i = 0; i < KVP_FLEET_MAX_INSTANCES; i++) {
		snprintf(name, sizeof(name), "engine-%u", i);
		cr_assert_eq(kvp_fleet_instance(f, name), (int)i);
	}
	cr_assert_eq(kvp_fleet_instance(f, "engine-64"), KVP_EFULL, "the 65th engine");
	cr_assert_eq(kvp_fleet_instance(f, "engine-7"), 7, "a known name, when full");
	cr_assert_eq(kvp_fleet_instances(f), KVP_FLEET_MAX_INSTANCES);
	cr_assert_str_eq(kvp_fleet_instance_name(f, 63), "engine-63");
	cr_assert_null(kvp_fleet_instance_name(f, 64));
	cr_assert_eq(kvp_fleet_instance_blocks(f, 64), 0);
	check_fleet(f);
	kvp_fleet_destroy(f);
}

Test(fleet, sixty_four_engines_each_its_own_prefix)
{
	/* Engine i holds the first i % 9 blocks of one prompt (one event each), so the
	 * mask's every bit, bit 63 included, decides a count. */
	enum { B = 2, NB = 8 };
	struct kvp_fleet *f = new_fleet(B, kvp_ns_root("fleet", 1, NULL));
	uint32_t tok[NB * B + 1], out[KVP_FLEET_MAX_INSTANCES];
	uint64_t h[NB];
	struct kvp_key keys[NB];
	size_t sk;

	for (uint32_t i = 0; i < NB * B + 1; i++)
		tok[i] = i * 3 + 1;
	for (unsigned i = 0; i < KVP_FLEET_MAX_INSTANCES; i++) {
		char name[16];

		snprintf(name, sizeof(name), "e%u", i);
		cr_assert_eq(kvp_fleet_instance(f, name), (int)i);
		for (unsigned j = 0; j < NB; j++)
			h[j] = (uint64_t)i << 32 | j;
		if (i % 9)
			cr_assert_eq(fapply(f, i, ev_stored(h, i % 9, false, 0, tok, B), &sk), 0);
	}
	check_fleet(f);
	memset(out, 0xee, sizeof(out));
	kvp_fleet_match(f, tok, NB * B + 1, keys, out);
	for (unsigned i = 0; i < KVP_FLEET_MAX_INSTANCES; i++)
		cr_assert_eq(out[i], i % 9, "engine %u: %u want %u", i, out[i], i % 9);
	/* a query shorter than a block */
	kvp_fleet_match(f, tok, B - 1, keys, out);
	for (unsigned i = 0; i < KVP_FLEET_MAX_INSTANCES; i++)
		cr_assert_eq(out[i], 0);
	kvp_fleet_destroy(f);
}

Test(fleet, restore_duplicates_unknown_parent_wrong_size)
{
	enum { B = 2 };
	struct kvp_fleet *f = new_fleet(B, kvp_ns_root("fleet", 2, NULL));
	const uint32_t a[2 * B] = { 1, 2, 3, 4 }, c[B] = { 5, 6 };
	size_t sk;
	int e0, e1;

	e0 = kvp_fleet_instance(f, "e0");
	e1 = kvp_fleet_instance(f, "e1");
	cr_assert_eq(kvp_fleet_instance(f, "e0"), e0);
	/* X = block a0 */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 10 }, 1, false, 0, a, B), &sk), 0);
	cr_assert_eq(sk, 0);
	cr_assert_eq(fmatch1(f, a, 4, e0), 1);
	cr_assert_eq(fmatch1(f, a, 4, e1), 0);
	/* stored again, the same block: nothing changes */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 10 }, 1, false, 0, a, B), &sk), 0);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e0), 1);
	check_fleet(f);
	/* Y = a0 too: two ids of one engine, one block */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 11 }, 1, false, 0, a, B), &sk), 0);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e0), 2);
	check_fleet(f);
	/* Z = a1 under Y */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 12 }, 1, true, 11, a + B, B), &sk),
		     0);
	cr_assert_eq(fmatch1(f, a, 4, e0), 2);
	/* removing X keeps a0 (Y still holds it) */
	cr_assert_eq(fapply(f, e0, ev_removed((const uint64_t[]){ 10 }, 1), &sk), 0);
	cr_assert_eq(sk, 0);
	check_fleet(f);
	cr_assert_eq(fmatch1(f, a, 4, e0), 2);
	/* re-storing Y as another block: a0 is gone, Z keeps its key (a0 a1) */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 11 }, 1, false, 0, c, B), &sk), 0);
	check_fleet(f);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e0), 2);
	cr_assert_eq(fmatch1(f, a, 4, e0), 0);
	cr_assert_eq(fmatch1(f, c, 2, e0), 1);
	/* ... so a0 again (under a new id) brings the whole prefix back */
	cr_assert_eq(fapply(f, e0, ev_stored((const uint64_t[]){ 13 }, 1, false, 0, a, B), &sk), 0);
	cr_assert_eq(fmatch1(f, a, 4, e0), 2);
	check_fleet(f);
	/* an unknown parent: skipped in whole, counted */
	cr_assert_eq(fapply(f, e1, ev_stored((const uint64_t[]){ 20, 21 }, 2, true, 10, a, B), &sk),
		     KVP_EINVAL);
	cr_assert_eq(sk, 2);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e1), 0);
	/* a parent another engine holds is unknown to this one */
	cr_assert_eq(fapply(f, e1, ev_stored((const uint64_t[]){ 20 }, 1, true, 13, a + B, B), &sk),
		     KVP_EINVAL);
	cr_assert_eq(sk, 1);
	/* a block size other than the index's */
	cr_assert_eq(fapply(f, e1, ev_stored((const uint64_t[]){ 20 }, 1, false, 0, a, 4), &sk),
		     KVP_EINVAL);
	cr_assert_eq(sk, 1);
	cr_assert_eq(fapply(f, e1, ev_stored((const uint64_t[]){ 20, 21 }, 2, false, 0, a, 1), &sk),
		     KVP_EINVAL);
	cr_assert_eq(sk, 2);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e1), 0);
	/* an engine that does not exist */
	cr_assert_eq(fapply(f, 2, ev_removed((const uint64_t[]){ 1 }, 1), &sk), KVP_EINVAL);
	/* removals of unknown ids are counted */
	cr_assert_eq(fapply(f, e0, ev_removed((const uint64_t[]){ 99, 13, 13, 98 }, 4), &sk), 0);
	cr_assert_eq(sk, 3);
	check_fleet(f);
	/* e1 holds a0 as well; clearing e0 leaves e1's */
	cr_assert_eq(fapply(f, e1, ev_stored((const uint64_t[]){ 30 }, 1, false, 0, a, B), &sk), 0);
	{
		struct kvp_ev clr = { .type = KVP_EV_CLEARED };

		cr_assert_eq(kvp_fleet_apply(f, e0, &clr, &sk), 0);
	}
	check_fleet(f);
	cr_assert_eq(kvp_fleet_instance_blocks(f, e0), 0);
	cr_assert_eq(kvp_fleet_blocks(f), 1);
	cr_assert_eq(fmatch1(f, a, 4, e0), 0);
	cr_assert_eq(fmatch1(f, a, 4, e1), 1);
	kvp_fleet_destroy(f);
}

/* ---- the fleet index against a model ---- */

#define FM_B 2          /* tokens a block */
#define FM_INST 6       /* engines */
#define FM_IDS 40       /* ids per engine: x in 0..39, so re-stores are common */
#define FM_DEPTH 10     /* blocks in a chain at most */
#define FM_ALPHA 3      /* token values 0..2: 9 distinct blocks, duplicates everywhere */

struct fm_entry {
	bool used;
	struct kvp_key key;
	uint32_t depth;
	uint32_t tok[FM_DEPTH * FM_B];   /* the chain's tokens, root first */
};

struct fm {
	struct kvp_key root;
	struct fm_entry e[FM_INST][FM_IDS];
	uint64_t rng;
};

static uint64_t fm_next(struct fm *m)
{
	m->rng ^= m->rng >> 12;
	m->rng ^= m->rng << 25;
	m->rng ^= m->rng >> 27;
	return m->rng * 0x2545F4914F6CDD1Dull;
}

static uint32_t fm_below(struct fm *m, uint32_t n)
{
	return (uint32_t)((fm_next(m) >> 11) % n);
}

/* Engine i's id for slot x: small integers for even engines, hash-like for odd ones. */
static uint64_t fm_id(unsigned inst, uint32_t x)
{
	return inst % 2 ? (x + 1) * 0x9e3779b97f4a7c15ull : x;
}

/* The slot of engine i's id, or -1 for an id outside the slots. */
static int fm_slot(unsigned inst, uint64_t id)
{
	for (uint32_t x = 0; x < FM_IDS + 8; x++)
		if (fm_id(inst, x) == id)
			return x < FM_IDS ? (int)x : -1;
	return -1;
}

/* A used slot of engine inst at random, or -1. */
static int fm_pick_used(struct fm *m, unsigned inst)
{
	int used[FM_IDS], n = 0;

	for (int x = 0; x < FM_IDS; x++)
		if (m->e[inst][x].used)
			used[n++] = x;
	return n ? used[fm_below(m, (uint32_t)n)] : -1;
}

/* Does engine inst hold key k under some id? */
static bool fm_holds(const struct fm *m, unsigned inst, struct kvp_key k)
{
	for (int x = 0; x < FM_IDS; x++)
		if (m->e[inst][x].used && kvp_key_eq(m->e[inst][x].key, k))
			return true;
	return false;
}

/* One random event for engine inst, applied to the model and the index; the index's
 * answer must be the model's. */
static void fm_step(struct fm *m, struct kvp_fleet *f, unsigned inst)
{
	uint32_t r = fm_below(m, 100);
	uint64_t h[8];
	uint32_t tok[8 * FM_B];
	size_t sk, n, want_sk = 0;
	int rc, want_rc = 0;

	if (r < 3) {   /* cleared */
		struct kvp_ev clr = { .type = KVP_EV_CLEARED };

		for (int x = 0; x < FM_IDS; x++)
			m->e[inst][x].used = false;
		rc = kvp_fleet_apply(f, inst, &clr, &sk);
		cr_assert_eq(rc, 0);
		cr_assert_eq(sk, 0);
		return;
	}
	if (r < 33) {  /* removed: ids held or not, a repeat now and then */
		n = 1 + fm_below(m, 4);
		for (size_t i = 0; i < n; i++) {
			int x = fm_below(m, 4) == 0 ? -1 : fm_pick_used(m, inst);

			h[i] = x >= 0 ? fm_id(inst, (uint32_t)x) : fm_id(inst, fm_below(m, FM_IDS + 8));
			if (i > 0 && fm_below(m, 8) == 0)
				h[i] = h[i - 1];
		}
		for (size_t i = 0; i < n; i++) {
			int x = fm_slot(inst, h[i]);

			if (x >= 0 && m->e[inst][x].used)
				m->e[inst][x].used = false;
			else
				want_sk++;
		}
		rc = fapply(f, inst, ev_removed(h, n), &sk);
		cr_assert_eq(rc, 0, "removed: %d", rc);
		cr_assert_eq(sk, want_sk, "removed: skipped %zu want %zu", sk, want_sk);
		return;
	}
	/* stored: a chain under no parent, a held one, or one not held */
	{
		struct fm_entry par = { 0 }, cur;
		bool has_parent = false;
		uint64_t parent = 0;
		uint32_t bs = FM_B, q = fm_below(m, 100);
		int px = -1;

		if (q < 60 && (px = fm_pick_used(m, inst)) >= 0 &&
		    m->e[inst][px].depth < FM_DEPTH) {
			has_parent = true;
			parent = fm_id(inst, (uint32_t)px);
			par = m->e[inst][px];
		} else if (q >= 92) {
			has_parent = true;   /* never stored, or stored and gone */
			parent = fm_id(inst, fm_below(m, FM_IDS + 8));
			px = fm_slot(inst, parent);
			if (px >= 0 && m->e[inst][px].used)
				px = -1, parent = fm_id(inst, FM_IDS + 1);
			par.used = false;
		}
		n = 1 + fm_below(m, 4);
		if (has_parent && par.used && par.depth + n > FM_DEPTH)
			n = FM_DEPTH - par.depth;
		for (size_t i = 0; i < n; i++)
			h[i] = fm_id(inst, fm_below(m, FM_IDS));
		if (!has_parent && fm_below(m, 4) == 0) {
			/* another engine's chain, from its first block: shared prefixes */
			unsigned o = fm_below(m, FM_INST);
			int ox = fm_pick_used(m, o);

			for (size_t i = 0; i < n * FM_B; i++)
				tok[i] = fm_below(m, FM_ALPHA);
			if (ox >= 0) {
				size_t d = m->e[o][ox].depth < n ? m->e[o][ox].depth : n;

				memcpy(tok, m->e[o][ox].tok, d * FM_B * sizeof(*tok));
			}
		} else {
			for (size_t i = 0; i < n * FM_B; i++)
				tok[i] = fm_below(m, FM_ALPHA);
		}
		if (fm_below(m, 40) == 0)
			bs = fm_below(m, 2) ? 1 : 2 * FM_B;   /* the wrong size */
		if (bs != FM_B || (has_parent && !par.used)) {
			want_rc = KVP_EINVAL;
			want_sk = n;
		} else {
			cur = par;
			if (!has_parent) {
				cur.key = m->root;
				cur.depth = 0;
			}
			for (size_t i = 0; i < n; i++) {
				int x = fm_slot(inst, h[i]);

				cur.key = kvp_block_key(cur.key, tok + i * FM_B, FM_B);
				memcpy(cur.tok + cur.depth * FM_B, tok + i * FM_B,
				       FM_B * sizeof(*tok));
				cur.depth++;
				cur.used = true;
				cr_assert_geq(x, 0);
				m->e[inst][x] = cur;
			}
		}
		{
			struct kvp_ev ev = ev_stored(h, n, has_parent, parent, tok, FM_B);

			ev.block_size = bs;
			ev.n_tokens = n * bs;
			sk = 999;
			rc = kvp_fleet_apply(f, inst, &ev, &sk);
		}
		cr_assert_eq(rc, want_rc, "stored: %d want %d", rc, want_rc);
		cr_assert_eq(sk, want_sk, "stored: skipped %zu want %zu", sk, want_sk);
	}
}

/* A query: some engine's chain, cut or extended, a token changed now and then, or
 * random tokens; with a partial block at the end sometimes. */
static size_t fm_query(struct fm *m, uint32_t *tok)
{
	unsigned o = fm_below(m, FM_INST);
	int x = fm_pick_used(m, o);
	size_t nb = 0, n;

	if (x >= 0 && fm_below(m, 5) != 0) {
		nb = m->e[o][x].depth;
		memcpy(tok, m->e[o][x].tok, nb * FM_B * sizeof(*tok));
		if (fm_below(m, 4) == 0 && nb > 0)
			tok[fm_below(m, (uint32_t)(nb * FM_B))] ^= 1;
	}
	for (size_t add = fm_below(m, 3); add > 0 && nb < FM_DEPTH + 2; add--, nb++)
		for (size_t j = 0; j < FM_B; j++)
			tok[nb * FM_B + j] = fm_below(m, FM_ALPHA);
	n = nb * FM_B;
	if (fm_below(m, 4) == 0)
		tok[n++] = 0;
	return n;
}

static void fm_compare(struct fm *m, const struct kvp_fleet *f)
{
	uint32_t tok[(FM_DEPTH + 3) * FM_B], out[KVP_FLEET_MAX_INSTANCES];
	struct kvp_key keys[FM_DEPTH + 3], want_keys[FM_DEPTH + 3];
	size_t total = 0;

	check_fleet(f);
	for (unsigned i = 0; i < FM_INST; i++) {
		size_t n = 0;

		for (int x = 0; x < FM_IDS; x++)
			n += m->e[i][x].used;
		cr_assert_eq(kvp_fleet_instance_blocks(f, i), n, "engine %u: %zu blocks want %zu", i,
			     kvp_fleet_instance_blocks(f, i), n);
		total += n;
	}
	cr_assert_eq(kvp_fleet_blocks(f), total);
	for (int q = 0; q < 4; q++) {
		size_t n = fm_query(m, tok), nb = n / FM_B;
		struct kvp_key k = m->root;

		for (size_t j = 0; j < nb; j++)
			want_keys[j] = k = kvp_block_key(k, tok + j * FM_B, FM_B);
		memset(out, 0xee, sizeof(out));
		kvp_fleet_match(f, tok, n, keys, out);
		for (unsigned i = 0; i < FM_INST; i++) {
			uint32_t want = 0;

			while (want < nb && fm_holds(m, i, want_keys[want]))
				want++;
			cr_assert_eq(out[i], want, "engine %u: matched %u want %u (query of %zu blocks)",
				     i, out[i], want, nb);
		}
	}
}

Test(fleet, differential_against_a_model)
{
	static struct fm m;

	for (uint64_t seed = 1; seed <= 4; seed++) {
		struct kvp_fleet *f;

		memset(&m, 0, sizeof(m));
		m.rng = seed * 0x9e3779b97f4a7c15ull;
		m.root = kvp_ns_root("fleet-model", (uint32_t)seed, NULL);
		f = new_fleet(FM_B, m.root);
		for (unsigned i = 0; i < FM_INST; i++) {
			char name[16];

			snprintf(name, sizeof(name), "m%u", i);
			cr_assert_eq(kvp_fleet_instance(f, name), (int)i);
		}
		for (int step = 0; step < 6000; step++) {
			fm_step(&m, f, fm_below(&m, FM_INST));
			fm_compare(&m, f);
		}
		kvp_fleet_destroy(f);
	}
}

Test(fleet, growth_and_backward_shift_deletes)
{
	/* 200k blocks in one chain (B=1), stored by two engines under different ids: many
	 * resizes of both tables. Then engine 0 loses every other id, then the rest in a
	 * shuffled order, checked as it goes; engine 1 keeps the whole chain. */
	enum { N = 200000 };
	struct kvp_key root = kvp_ns_root("grow", 0, NULL);
	struct kvp_fleet *f = new_fleet(1, root);
	uint32_t *tok = malloc(N * sizeof(*tok)), out[2];
	uint64_t *h0 = malloc(N * sizeof(*h0)), *h1 = malloc(N * sizeof(*h1)), rs = 88172645463325252ull;
	struct kvp_key *keys = malloc(N * sizeof(*keys));
	size_t sk;

	cr_assert(tok && h0 && h1 && keys);
	cr_assert_eq(kvp_fleet_instance(f, "a"), 0);
	cr_assert_eq(kvp_fleet_instance(f, "b"), 1);
	for (uint32_t i = 0; i < N; i++) {
		tok[i] = i * 2654435761u;
		h0[i] = i;                                  /* small integers */
		h1[i] = (uint64_t)i * 0x100000001b3ull + 7; /* spread out */
	}
	cr_assert_eq(fapply(f, 0, ev_stored(h0, N, false, 0, tok, 1), &sk), 0);
	check_fleet(f);
	/* engine 1 in pieces, each under the last block of the one before */
	for (uint32_t i = 0; i < N; i += 5000)
		cr_assert_eq(fapply(f, 1, ev_stored(h1 + i, 5000, i > 0, i ? h1[i - 1] : 0, tok + i,
						    1), &sk), 0);
	check_fleet(f);
	cr_assert_eq(kvp_fleet_blocks(f), 2 * N);
	kvp_fleet_match(f, tok, N, keys, out);
	cr_assert_eq(out[0], N);
	cr_assert_eq(out[1], N);
	for (uint32_t i = 1; i < N; i += 2)
		cr_assert_eq(fapply(f, 0, ev_removed(h0 + i, 1), &sk), 0);
	check_fleet(f);
	cr_assert_eq(kvp_fleet_instance_blocks(f, 0), N / 2);
	kvp_fleet_match(f, tok, N, keys, out);
	cr_assert_eq(out[0], 1);
	cr_assert_eq(out[1], N);
	/* the rest (the even ids), shuffled */
	for (uint32_t i = 0; i < N / 2; i++)
		h0[i] = 2 * i;
	for (uint32_t i = N / 2 - 1; i > 0; i--) {
		uint32_t j;
		uint64_t t;

		rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
		j = (uint32_t)(rs % (i + 1));
		t = h0[i], h0[i] = h0[j], h0[j] = t;
	}
	for (uint32_t i = 0; i < N / 2; i++) {
		cr_assert_eq(fapply(f, 0, ev_removed(h0 + i, 1), &sk), 0);
		cr_assert_eq(sk, 0);
		if (i % 20000 == 0)
			check_fleet(f);
	}
	check_fleet(f);
	cr_assert_eq(kvp_fleet_instance_blocks(f, 0), 0);
	kvp_fleet_match(f, tok, N, keys, out);
	cr_assert_eq(out[0], 0);
	cr_assert_eq(out[1], N);
	/* the keys' table shrinks by deletes of engine 1's, backward shift too */
	for (uint32_t i = 0; i < N; i += 3)
		cr_assert_eq(fapply(f, 1, ev_removed(h1 + i, 1), &sk), 0);
	check_fleet(f);
	kvp_fleet_match(f, tok, N, keys, out);
	cr_assert_eq(out[1], 0);
	kvp_fleet_match(f, tok + 1, 2, keys, out);
	cr_assert_eq(out[1], 0, "a chain keyed from block 1 is not block 0's");
	{
		struct kvp_ev clr = { .type = KVP_EV_CLEARED };

		cr_assert_eq(kvp_fleet_apply(f, 1, &clr, &sk), 0);
	}
	check_fleet(f);
	cr_assert_eq(kvp_fleet_blocks(f), 0);
	/* and the emptied tables work again */
	cr_assert_eq(fapply(f, 1, ev_stored(h1, 10, false, 0, tok, 1), &sk), 0);
	kvp_fleet_match(f, tok, N, keys, out);
	cr_assert_eq(out[1], 10);
	check_fleet(f);
	kvp_fleet_destroy(f);
	free(tok);
	free(h0);
	free(h1);
	free(keys);
}

Test(fleet, decoded_batches_from_the_builder)
{
	/* An engine's batches as kvprefixd publishes them, decoded and applied: the
	 * index then answers as the engine's cache holds. */
	enum { B = 4 };
	struct kvp_key root = kvp_ns_root("kvprefix/fleet", 0, NULL);
	struct kvp_fleet *f = new_fleet(B, root);
	struct kvp_evdecoder *d = et_decoder();
	struct kvp_evbatch *b;
	const struct kvp_ev *ev;
	uint32_t tok[6 * B], out[1];
	struct kvp_key keys[6], k = root;
	uint64_t h[6];
	uint8_t *buf;
	size_t len, n, sk;

	cr_assert_eq(kvp_fleet_instance(f, "engine"), 0);
	cr_assert_eq(kvp_evbatch_create(KVP_EV_ARRAY, B, &b), 0);
	for (uint32_t i = 0; i < 6 * B; i++)
		tok[i] = 100 + i;
	for (int i = 0; i < 6; i++) {
		k = kvp_block_key(k, tok + i * B, B);
		h[i] = k.lo;   /* the low 64 bits of the chained keys, as kvprefixd's */
		cr_assert_eq(kvp_evbatch_stored(b, h[i], i > 0, i ? h[i - 1] : 0, tok + i * B,
						KVP_EV_GPU), 0);
	}
	cr_assert_eq(kvp_evbatch_removed(b, h[4], KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_removed(b, h[5], KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_take(b, 1.0, &buf, &len), 0);
	cr_assert_eq(et_decode(d, buf, len, &ev, &n), 0);
	cr_assert_eq(n, 2);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(kvp_fleet_apply(f, 0, &ev[i], &sk), 0);
	free(buf);
	check_fleet(f);
	kvp_fleet_match(f, tok, 6 * B, keys, out);
	cr_assert_eq(out[0], 4);
	cr_assert(kvp_key_eq(keys[3], k) == false && keys[5].lo == h[5], "query keys");
	kvp_evbatch_destroy(b);
	kvp_evdecoder_destroy(d);
	kvp_fleet_destroy(f);
}
