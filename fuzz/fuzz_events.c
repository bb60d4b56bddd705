/*
 * fuzz_events.c - libFuzzer target for the KV event decoder (events/kvp_events.h),
 * and for the fleet index (events/kvp_fleet.h) fed with what it decodes.
 *
 * One input is one batch, handed to kvp_evdecode of a decoder that lives across inputs
 * (as the daemon's does). Checked, besides "no crash, no sanitizer report, no leak":
 *   - the status is 0 or KVP_EPROTO. Not KVP_ENOMEM: an input is at most libFuzzer's
 *     max_len and the decoder allocates a bounded multiple of it, and under ASan a
 *     failed malloc aborts rather than returning NULL, so KVP_ENOMEM can only be a
 *     refusal mapped to the wrong status;
 *   - a refusal returns nothing (events NULL, n 0);
 *   - a success keeps the header's promises: at most KVP_EV_MAX_EVENTS events, known
 *     types, a BlockStored's tokens n_hashes x block_size (block_size >= 1) and at most
 *     KVP_EV_MAX_TOKENS, a medium in range; every hash and token is read, so that an
 *     array pointing anywhere else is an ASan report;
 *   - the events, appended block by block to a batch builder (each encoding in turn,
 *     when every BlockStored has one block size) and taken, decode again to the same
 *     blocks: the builder may merge events (a chain, a run of removals) but the
 *     sequence of (type, hash, parent, tokens, medium) per block must not change;
 *   - applied to a fleet index of two engines (even events to one, odd to the other;
 *     its block size the first BlockStored's), every apply returns 0 or KVP_EINVAL
 *     with skipped <= the event's hashes, kvp_fleet_check passes after each, and a
 *     BlockStored from the root with distinct ids that applied cleanly leaves its
 *     engine matching all of its blocks.
 * Each check calls abort() when broken.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_events.h"
#include "kvp_fleet.h"
#include "kvp_index.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct kvp_evdecoder *dec;    /* across inputs, as the daemon's */
static struct kvp_evdecoder *dec2;   /* for the re-encoded batches */
static volatile uint64_t sink;

static void bad(const char *what)
{
	fprintf(stderr, "fuzz_events: %s\n", what);
	abort();
}

static struct kvp_evdecoder *decoder(struct kvp_evdecoder **d)
{
	if (!*d && kvp_evdecoder_create(d) != 0)
		bad("kvp_evdecoder_create failed");
	return *d;
}

/* ---- what a successful decode promises ---------------------------------------------- */

static void check_events(const struct kvp_ev *ev, size_t n)
{
	uint64_t s = 0;

	if (n > KVP_EV_MAX_EVENTS)
		bad("more than KVP_EV_MAX_EVENTS events");
	if (n && !ev)
		bad("events NULL");
	for (size_t i = 0; i < n; i++) {
		const struct kvp_ev *e = &ev[i];

		if (e->type != KVP_EV_STORED && e->type != KVP_EV_REMOVED &&
		    e->type != KVP_EV_CLEARED)
			bad("an unknown event type");
		if (e->medium != KVP_EV_GPU && e->medium != KVP_EV_CPU && e->medium != KVP_EV_DISK)
			bad("a medium out of range");
		for (size_t j = 0; j < e->n_hashes; j++)
			s += e->hashes[j];
		if (e->type != KVP_EV_STORED)
			continue;
		if (e->block_size == 0 || e->n_tokens != e->n_hashes * e->block_size)
			bad("BlockStored: token count is not n_hashes x block_size");
		if (e->n_tokens > KVP_EV_MAX_TOKENS)
			bad("BlockStored: over KVP_EV_MAX_TOKENS tokens");
		for (size_t j = 0; j < e->n_tokens; j++)
			s += e->tokens[j];
		s += e->has_parent ? e->parent : 0;
	}
	sink += s;
}

/* ---- re-encoding ------------------------------------------------------------------------ */

/* One block of a flattened batch: a stored block with the parent it has in the chain,
 * a removed hash, or a clear. */
struct blk {
	enum kvp_ev_type type;
	uint64_t hash;
	bool has_parent;
	uint64_t parent;
	const uint32_t *tokens;
	enum kvp_ev_medium medium;
};

/* Flatten events into out (room for every hash and clear); the count. */
static size_t flatten(const struct kvp_ev *ev, size_t n, struct blk *out)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		const struct kvp_ev *e = &ev[i];

		if (e->type == KVP_EV_CLEARED) {
			out[k++] = (struct blk){ .type = KVP_EV_CLEARED };
			continue;
		}
		for (size_t j = 0; j < e->n_hashes; j++) {
			struct blk b = { .type = e->type, .hash = e->hashes[j], .medium = e->medium };

			if (e->type == KVP_EV_STORED) {
				b.has_parent = j > 0 || e->has_parent;
				b.parent = j > 0 ? e->hashes[j - 1] : e->has_parent ? e->parent : 0;
				b.tokens = e->tokens + j * e->block_size;
			}
			out[k++] = b;
		}
	}
	return k;
}

static size_t count_blocks(const struct kvp_ev *ev, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += ev[i].type == KVP_EV_CLEARED ? 1 : ev[i].n_hashes;
	return k;
}

/* Append the flattened blocks to a builder of block size bs, take, decode, flatten
 * again and compare. */
static void reencode(const struct blk *want, size_t nw, uint32_t bs, enum kvp_ev_encoding enc)
{
	struct kvp_evbatch *b;
	const struct kvp_ev *ev;
	struct blk *got;
	uint8_t *buf;
	size_t len, n, ng;

	if (kvp_evbatch_create(enc, bs, &b) != 0)
		bad("kvp_evbatch_create failed");
	for (size_t i = 0; i < nw; i++) {
		const struct blk *x = &want[i];
		int rc = x->type == KVP_EV_STORED
				 ? kvp_evbatch_stored(b, x->hash, x->has_parent, x->parent, x->tokens,
						      x->medium)
			 : x->type == KVP_EV_REMOVED ? kvp_evbatch_removed(b, x->hash, x->medium)
						      : kvp_evbatch_cleared(b);

		if (rc != 0)
			bad("the builder refused a decoded block");
	}
	if (kvp_evbatch_take(b, 1.0, &buf, &len) != 0)
		bad("kvp_evbatch_take failed");
	if (kvp_evbatch_events(b) != 0)
		bad("take left events in the builder");
	kvp_evbatch_destroy(b);
	if (kvp_evdecode(decoder(&dec2), buf, len, &ev, &n) != 0)
		bad("the builder's batch does not decode");
	check_events(ev, n);
	if (count_blocks(ev, n) != nw)
		bad("re-encoded: another number of blocks");
	got = malloc((nw ? nw : 1) * sizeof(*got));
	if (!got)
		bad("malloc");
	ng = flatten(ev, n, got);
	for (size_t i = 0; i < ng; i++) {
		const struct blk *x = &want[i], *y = &got[i];

		if (x->type != y->type || x->hash != y->hash)
			bad("re-encoded: another block");
		if (x->type == KVP_EV_CLEARED)
			continue;
		if (x->medium != y->medium)
			bad("re-encoded: another medium");
		if (x->type == KVP_EV_STORED &&
		    (x->has_parent != y->has_parent || (x->has_parent && x->parent != y->parent) ||
		     memcmp(x->tokens, y->tokens, bs * sizeof(uint32_t)) != 0))
			bad("re-encoded: another parent or other tokens");
	}
	free(got);
	free(buf);
}

static void check_reencode(const struct kvp_ev *ev, size_t n)
{
	uint32_t bs = 0;
	size_t nw = count_blocks(ev, n);
	struct blk *want;

	for (size_t i = 0; i < n; i++) {
		if (ev[i].type != KVP_EV_STORED)
			continue;
		if (bs && ev[i].block_size != bs)
			return;   /* a builder has one block size */
		bs = ev[i].block_size;
	}
	want = malloc((nw ? nw : 1) * sizeof(*want));
	if (!want)
		bad("malloc");
	flatten(ev, n, want);
	reencode(want, nw, bs ? bs : 16, KVP_EV_MAP);
	reencode(want, nw, bs ? bs : 16, KVP_EV_ARRAY);
	free(want);
}

/* ---- the fleet index --------------------------------------------------------------------- */

/* Are the first n hashes distinct? Chains over 64 blocks are not checked (false). */
static bool distinct(const uint64_t *h, size_t n)
{
	if (n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (h[i] == h[j])
				return false;
	return true;
}

static void check_fleet(const struct kvp_ev *ev, size_t n)
{
	uint32_t bs = 16, out[KVP_FLEET_MAX_INSTANCES];
	struct kvp_fleet *f;
	struct kvp_key keys[64];

	for (size_t i = 0; i < n; i++)
		if (ev[i].type == KVP_EV_STORED) {
			bs = ev[i].block_size;
			break;
		}
	if (bs > KVP_BLOCK_TOKENS_MAX)
		bs = 16;
	if (kvp_fleet_create(bs, kvp_ns_root("fuzz", 0, NULL), &f) != 0)
		bad("kvp_fleet_create failed");
	if (kvp_fleet_instance(f, "even") != 0 || kvp_fleet_instance(f, "odd") != 1)
		bad("kvp_fleet_instance");
	for (size_t i = 0; i < n; i++) {
		const struct kvp_ev *e = &ev[i];
		unsigned inst = (unsigned)(i % 2);
		size_t skipped = SIZE_MAX;
		int rc = kvp_fleet_apply(f, inst, e, &skipped);

		if (rc != 0 && rc != KVP_EINVAL)
			bad("kvp_fleet_apply: a status other than 0 and KVP_EINVAL");
		if (skipped > e->n_hashes)
			bad("kvp_fleet_apply: skipped more blocks than the event has");
		if (kvp_fleet_check(f) != 0)
			bad("kvp_fleet_check failed");
		if (rc == 0 && e->type == KVP_EV_STORED && !e->has_parent && e->n_hashes &&
		    distinct(e->hashes, e->n_hashes)) {
			kvp_fleet_match(f, e->tokens, e->n_tokens, keys, out);
			if (out[inst] != e->n_hashes)
				bad("a stored chain from the root does not match in whole");
		}
	}
	if (kvp_fleet_instance_blocks(f, 0) + kvp_fleet_instance_blocks(f, 1) != kvp_fleet_blocks(f))
		bad("kvp_fleet_blocks is not the engines' sum");
	kvp_fleet_destroy(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct kvp_ev *ev = (const struct kvp_ev *)(uintptr_t)1;
	size_t n = 777;
	int rc = kvp_evdecode(decoder(&dec), data, size, &ev, &n);

	if (rc != 0) {
		if (rc != KVP_EPROTO)
			bad("kvp_evdecode: a status other than 0 and KVP_EPROTO");
		if (ev != NULL || n != 0)
			bad("kvp_evdecode: events returned with a refusal");
		return 0;
	}
	check_events(ev, n);
	/* the re-encoding decodes with its own decoder: ev stays valid */
	check_reencode(ev, n);
	check_fleet(ev, n);
	return 0;
}
