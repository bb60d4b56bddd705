/*
 * batch.c - building event batches: appending records what happened in plain arrays
 * (cheap, on the daemon's loop); take packs them into msgpack (on the publisher's
 * thread), merging what vLLM merges:
 *
 *   stored(h1, no parent) stored(h2, parent h1) removed(h7) removed(h8) stored(h9, h3)
 *     └──── one BlockStored [h1 h2] ────┘ └─ one BlockRemoved [h7 h8] ─┘ └ BlockStored ┘
 *
 * A record is one block (or a clear); a record that continues the one before (a stored
 * block whose parent is the previous stored block, a removal after a removal, the same
 * medium) joins its event. The merge is decided at append, so that the count of events
 * is known without packing; take walks the records once per event to count its blocks
 * (msgpack writes an array's length before its elements).
 */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_events.h"

enum rec_kind { REC_STORED = 1, REC_REMOVED, REC_CLEARED };

struct rec {
	uint64_t hash, parent;
	uint8_t kind;
	uint8_t medium;
	bool has_parent;
	bool joins;                  /* continues the event of the record before */
};

struct kvp_evbatch {
	enum kvp_ev_encoding enc;
	uint32_t block_tokens;
	struct rec *recs;
	size_t n, cap;
	uint32_t *tokens;            /* block_tokens per stored record, in order */
	size_t n_tokens, cap_tokens;
	size_t n_events;
};

const char *kvp_ev_medium_name(enum kvp_ev_medium m)
{
	switch (m) {
	case KVP_EV_GPU: return "GPU";
	case KVP_EV_CPU: return "CPU";
	case KVP_EV_DISK: return "DISK";
	}
	return "CPU";
}

int kvp_evbatch_create(enum kvp_ev_encoding enc, uint32_t block_tokens,
		       struct kvp_evbatch **out)
{
	struct kvp_evbatch *b;

	*out = NULL;
	if (block_tokens == 0 || (enc != KVP_EV_MAP && enc != KVP_EV_ARRAY))
		return KVP_EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return KVP_ENOMEM;
	b->enc = enc;
	b->block_tokens = block_tokens;
	*out = b;
	return 0;
}

int kvp_evbatch_create_like(const struct kvp_evbatch *b, struct kvp_evbatch **out)
{
	return kvp_evbatch_create(b->enc, b->block_tokens, out);
}

void kvp_evbatch_destroy(struct kvp_evbatch *b)
{
	if (!b)
		return;
	free(b->recs);
	free(b->tokens);
	free(b);
}

/* ---- appending ------------------------------------------------------------------------ */

static int reserve(struct kvp_evbatch *b, size_t tokens)
{
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 64;
		struct rec *r = realloc(b->recs, cap * sizeof(*r));

		if (!r)
			return KVP_ENOMEM;
		b->recs = r;
		b->cap = cap;
	}
	if (b->n_tokens + tokens > b->cap_tokens) {
		size_t cap = b->cap_tokens ? 2 * b->cap_tokens : 64 * (size_t)b->block_tokens;
		uint32_t *t;

		while (cap < b->n_tokens + tokens)
			cap *= 2;
		t = realloc(b->tokens, cap * sizeof(*t));
		if (!t)
			return KVP_ENOMEM;
		b->tokens = t;
		b->cap_tokens = cap;
	}
	return 0;
}

static void push(struct kvp_evbatch *b, struct rec r)
{
	const struct rec *prev = b->n ? &b->recs[b->n - 1] : NULL;

	r.joins = prev && prev->kind == r.kind && prev->medium == r.medium &&
		  ((r.kind == REC_STORED && r.has_parent && r.parent == prev->hash) ||
		   r.kind == REC_REMOVED);
	b->n_events += !r.joins;
	b->recs[b->n++] = r;
}

int kvp_evbatch_stored(struct kvp_evbatch *b, uint64_t hash, bool has_parent, uint64_t parent,
		       const uint32_t *tokens, enum kvp_ev_medium medium)
{
	if (reserve(b, b->block_tokens))
		return KVP_ENOMEM;
	memcpy(b->tokens + b->n_tokens, tokens, b->block_tokens * sizeof(*tokens));
	b->n_tokens += b->block_tokens;
	push(b, (struct rec){ .kind = REC_STORED, .hash = hash, .parent = parent,
			      .has_parent = has_parent, .medium = (uint8_t)medium });
	return 0;
}

int kvp_evbatch_removed(struct kvp_evbatch *b, uint64_t hash, enum kvp_ev_medium medium)
{
	if (reserve(b, 0))
		return KVP_ENOMEM;
	push(b, (struct rec){ .kind = REC_REMOVED, .hash = hash, .medium = (uint8_t)medium });
	return 0;
}

int kvp_evbatch_cleared(struct kvp_evbatch *b)
{
	if (reserve(b, 0))
		return KVP_ENOMEM;
	push(b, (struct rec){ .kind = REC_CLEARED });
	return 0;
}

size_t kvp_evbatch_events(const struct kvp_evbatch *b)
{
	return b->n_events;
}

size_t kvp_evbatch_bytes(const struct kvp_evbatch *b)
{
	return b->n * 12 + b->n_tokens * 5 + b->n_events * 100;
}

void kvp_evbatch_reset(struct kvp_evbatch *b)
{
	b->n = 0;
	b->n_tokens = 0;
	b->n_events = 0;
}

/* ---- packing ------------------------------------------------------------------------ */

struct packer {
	const struct kvp_evbatch *b;
	msgpack_packer pk;
	bool fail;
};

static void pack_str(struct packer *p, const char *s)
{
	size_t n = strlen(s);

	p->fail |= msgpack_pack_str(&p->pk, n) || msgpack_pack_str_body(&p->pk, s, n);
}

/* A map key, or nothing in the array form. */
static void pack_key(struct packer *p, const char *name)
{
	if (p->b->enc == KVP_EV_MAP)
		pack_str(p, name);
}

/* The start of an event of n_fields fields besides its type. */
static void pack_head(struct packer *p, const char *type, size_t n_fields)
{
	p->fail |= p->b->enc == KVP_EV_MAP ? msgpack_pack_map(&p->pk, n_fields + 1)
					   : msgpack_pack_array(&p->pk, n_fields + 1);
	pack_key(p, "type");
	pack_str(p, type);
}

static void pack_hashes(struct packer *p, const struct rec *r, size_t n)
{
	pack_key(p, "block_hashes");
	p->fail |= msgpack_pack_array(&p->pk, n);
	for (size_t i = 0; i < n; i++)
		p->fail |= msgpack_pack_uint64(&p->pk, r[i].hash);
}

static void pack_medium(struct packer *p, const struct rec *r)
{
	pack_key(p, "medium");
	pack_str(p, kvp_ev_medium_name((enum kvp_ev_medium)r->medium));
}

/* BlockStored of n records from r, whose tokens start at t: block_hashes,
 * parent_block_hash, token_ids, block_size, lora_id, medium, lora_name (the array form
 * stops at medium, as the engines that read it expect). */
static void pack_stored(struct packer *p, const struct rec *r, size_t n, const uint32_t *t)
{
	const size_t n_tok = n * p->b->block_tokens;
	msgpack_packer *pk = &p->pk;

	pack_head(p, "BlockStored", p->b->enc == KVP_EV_MAP ? 7 : 6);
	pack_hashes(p, r, n);
	pack_key(p, "parent_block_hash");
	p->fail |= r->has_parent ? msgpack_pack_uint64(pk, r->parent) : msgpack_pack_nil(pk);
	pack_key(p, "token_ids");
	p->fail |= msgpack_pack_array(pk, n_tok);
	for (size_t i = 0; i < n_tok; i++)
		p->fail |= msgpack_pack_uint32(pk, t[i]);
	pack_key(p, "block_size");
	p->fail |= msgpack_pack_uint32(pk, p->b->block_tokens);
	pack_key(p, "lora_id");
	p->fail |= msgpack_pack_nil(pk);
	pack_medium(p, r);
	if (p->b->enc == KVP_EV_MAP) {
		pack_key(p, "lora_name");
		p->fail |= msgpack_pack_nil(pk);
	}
}

/* Every event, in order. */
static void pack_events(struct packer *p)
{
	const struct kvp_evbatch *b = p->b;
	const uint32_t *t = b->tokens;

	for (size_t i = 0; i < b->n && !p->fail;) {
		const struct rec *r = &b->recs[i];
		size_t n = 1;

		while (i + n < b->n && b->recs[i + n].joins)
			n++;
		if (r->kind == REC_STORED) {
			pack_stored(p, r, n, t);
			t += n * b->block_tokens;
		} else if (r->kind == REC_REMOVED) {
			pack_head(p, "BlockRemoved", 2);
			pack_hashes(p, r, n);
			pack_medium(p, r);
		} else {
			pack_head(p, "AllBlocksCleared", 0);
		}
		i += n;
	}
}

int kvp_evbatch_take(struct kvp_evbatch *b, double ts, uint8_t **buf, size_t *len)
{
	msgpack_sbuffer out;
	struct packer p = { .b = b };

	*buf = NULL;
	*len = 0;
	msgpack_sbuffer_init(&out);
	msgpack_packer_init(&p.pk, &out, msgpack_sbuffer_write);
	p.fail |= msgpack_pack_array(&p.pk, 3) || msgpack_pack_double(&p.pk, ts) ||
		  msgpack_pack_array(&p.pk, b->n_events);
	pack_events(&p);
	p.fail |= msgpack_pack_nil(&p.pk);
	if (p.fail) {
		msgpack_sbuffer_destroy(&out);
		return KVP_ENOMEM;
	}
	*len = out.size;
	*buf = (uint8_t *)msgpack_sbuffer_release(&out);
	kvp_evbatch_reset(b);
	return 0;
}
