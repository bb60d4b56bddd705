/*
 * batch.c - building event batches: events appended as they happen, packed into one
 * msgpack body as each closes, the batch's frame put around the body at take.
 *
 *   stored(h1, no parent) stored(h2, parent h1) removed(h7) removed(h8) stored(h9, h3)
 *     └──── one BlockStored [h1 h2] ────┘ └─ one BlockRemoved [h7 h8] ─┘ └ BlockStored ┘
 *
 * The event being extended ("open") keeps its hashes and tokens in growable arrays;
 * it is packed when an event of another kind (or a stored block not continuing it)
 * comes, or at take. The body's events are counted so that take can write the events
 * array's header, which msgpack puts before the elements.
 */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_events.h"

enum open_kind { OPEN_NONE = 0, OPEN_STORED, OPEN_REMOVED };

struct kvp_evbatch {
	enum kvp_ev_encoding enc;
	uint32_t block_tokens;
	msgpack_sbuffer body;        /* the closed events, packed */
	msgpack_packer pk;           /* into body */
	size_t n_events;             /* closed events in body */
	/* the open event */
	enum open_kind open;
	enum kvp_ev_medium medium;
	bool has_parent;
	uint64_t parent;
	uint64_t *hashes;
	size_t n_hashes, cap_hashes;
	uint32_t *tokens;            /* n_hashes x block_tokens */
	size_t cap_tokens;
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
	msgpack_sbuffer_init(&b->body);
	msgpack_packer_init(&b->pk, &b->body, msgpack_sbuffer_write);
	*out = b;
	return 0;
}

void kvp_evbatch_destroy(struct kvp_evbatch *b)
{
	if (!b)
		return;
	msgpack_sbuffer_destroy(&b->body);
	free(b->hashes);
	free(b->tokens);
	free(b);
}

static int pack_str(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n) ? -1 : 0;
}

/* A map key, or nothing in the array form. */
static int pack_key(struct kvp_evbatch *b, const char *name)
{
	return b->enc == KVP_EV_MAP ? pack_str(&b->pk, name) : 0;
}

/* The start of an event of n_fields fields besides its type. */
static int pack_head(struct kvp_evbatch *b, const char *type, size_t n_fields)
{
	int rc = b->enc == KVP_EV_MAP ? msgpack_pack_map(&b->pk, n_fields + 1)
				      : msgpack_pack_array(&b->pk, n_fields + 1);

	if (rc || pack_key(b, "type"))
		return -1;
	return pack_str(&b->pk, type);
}

static int pack_hashes(struct kvp_evbatch *b)
{
	if (pack_key(b, "block_hashes") || msgpack_pack_array(&b->pk, b->n_hashes))
		return -1;
	for (size_t i = 0; i < b->n_hashes; i++)
		if (msgpack_pack_uint64(&b->pk, b->hashes[i]))
			return -1;
	return 0;
}

static int pack_medium(struct kvp_evbatch *b)
{
	return pack_key(b, "medium") || pack_str(&b->pk, kvp_ev_medium_name(b->medium)) ? -1 : 0;
}

/* BlockStored: block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
 * lora_name: the array form stops at medium, as the engines that read it expect. */
static int pack_stored(struct kvp_evbatch *b)
{
	size_t n_tok = b->n_hashes * b->block_tokens;
	msgpack_packer *pk = &b->pk;

	if (pack_head(b, "BlockStored", b->enc == KVP_EV_MAP ? 7 : 6) || pack_hashes(b))
		return -1;
	if (pack_key(b, "parent_block_hash") ||
	    (b->has_parent ? msgpack_pack_uint64(pk, b->parent) : msgpack_pack_nil(pk)))
		return -1;
	if (pack_key(b, "token_ids") || msgpack_pack_array(pk, n_tok))
		return -1;
	for (size_t i = 0; i < n_tok; i++)
		if (msgpack_pack_uint32(pk, b->tokens[i]))
			return -1;
	if (pack_key(b, "block_size") || msgpack_pack_uint32(pk, b->block_tokens) ||
	    pack_key(b, "lora_id") || msgpack_pack_nil(pk) || pack_medium(b))
		return -1;
	if (b->enc == KVP_EV_MAP && (pack_key(b, "lora_name") || msgpack_pack_nil(pk)))
		return -1;
	return 0;
}

/* Pack the open event into the body. On failure the body is cut back to where it was,
 * and the open event stays open. */
static int close_open(struct kvp_evbatch *b)
{
	size_t mark = b->body.size;
	int rc = 0;

	if (b->open == OPEN_STORED)
		rc = pack_stored(b);
	else if (b->open == OPEN_REMOVED)
		rc = pack_head(b, "BlockRemoved", 2) || pack_hashes(b) || pack_medium(b);
	else
		return 0;
	if (rc) {
		b->body.size = mark;
		return KVP_ENOMEM;
	}
	b->n_events++;
	b->open = OPEN_NONE;
	b->n_hashes = 0;
	return 0;
}

/* Room for one more hash (and block of tokens) in the open event. */
static int reserve_one(struct kvp_evbatch *b)
{
	if (b->n_hashes == b->cap_hashes) {
		size_t cap = b->cap_hashes ? 2 * b->cap_hashes : 16;
		uint64_t *h = realloc(b->hashes, cap * sizeof(*h));

		if (!h)
			return KVP_ENOMEM;
		b->hashes = h;
		b->cap_hashes = cap;
	}
	if ((b->n_hashes + 1) * b->block_tokens > b->cap_tokens) {
		size_t cap = b->cap_hashes * b->block_tokens;
		uint32_t *t = realloc(b->tokens, cap * sizeof(*t));

		if (!t)
			return KVP_ENOMEM;
		b->tokens = t;
		b->cap_tokens = cap;
	}
	return 0;
}

/* Make the open event one of this kind that the next block continues, closing the one
 * before when it is not. */
static int open_for(struct kvp_evbatch *b, enum open_kind kind, enum kvp_ev_medium medium,
		    bool continues)
{
	int rc;

	if (b->open == kind && b->medium == medium && continues)
		return reserve_one(b);
	rc = reserve_one(b);
	if (rc == 0)
		rc = close_open(b);
	if (rc)
		return rc;
	b->open = kind;
	b->medium = medium;
	return 0;
}

int kvp_evbatch_stored(struct kvp_evbatch *b, uint64_t hash, bool has_parent, uint64_t parent,
		       const uint32_t *tokens, enum kvp_ev_medium medium)
{
	bool continues = has_parent && b->n_hashes > 0 &&
			 b->hashes[b->n_hashes - 1] == parent;
	int rc = open_for(b, OPEN_STORED, medium, continues);

	if (rc)
		return rc;
	if (b->n_hashes == 0) {
		b->has_parent = has_parent;
		b->parent = parent;
	}
	memcpy(b->tokens + b->n_hashes * b->block_tokens, tokens,
	       b->block_tokens * sizeof(*tokens));
	b->hashes[b->n_hashes++] = hash;
	return 0;
}

int kvp_evbatch_removed(struct kvp_evbatch *b, uint64_t hash, enum kvp_ev_medium medium)
{
	int rc = open_for(b, OPEN_REMOVED, medium, true);

	if (rc)
		return rc;
	b->hashes[b->n_hashes++] = hash;
	return 0;
}

int kvp_evbatch_cleared(struct kvp_evbatch *b)
{
	size_t mark = b->body.size;
	int rc = close_open(b);

	if (rc)
		return rc;
	if (pack_head(b, "AllBlocksCleared", 0)) {
		b->body.size = mark;
		return KVP_ENOMEM;
	}
	b->n_events++;
	return 0;
}

size_t kvp_evbatch_events(const struct kvp_evbatch *b)
{
	return b->n_events + (b->open != OPEN_NONE);
}

size_t kvp_evbatch_bytes(const struct kvp_evbatch *b)
{
	return b->body.size + b->n_hashes * (9 + 5 * (size_t)b->block_tokens);
}

void kvp_evbatch_reset(struct kvp_evbatch *b)
{
	b->body.size = 0;
	b->n_events = 0;
	b->open = OPEN_NONE;
	b->n_hashes = 0;
}

int kvp_evbatch_take(struct kvp_evbatch *b, double ts, uint8_t **buf, size_t *len)
{
	msgpack_sbuffer out;
	msgpack_packer pk;
	int rc = close_open(b);

	*buf = NULL;
	*len = 0;
	if (rc)
		return rc;
	msgpack_sbuffer_init(&out);
	msgpack_packer_init(&pk, &out, msgpack_sbuffer_write);
	if (msgpack_pack_array(&pk, 3) || msgpack_pack_double(&pk, ts) ||
	    msgpack_pack_array(&pk, b->n_events) ||
	    (b->body.size && msgpack_sbuffer_write(&out, b->body.data, b->body.size)) ||
	    msgpack_pack_nil(&pk)) {
		msgpack_sbuffer_destroy(&out);
		return KVP_ENOMEM;
	}
	*len = out.size;
	*buf = (uint8_t *)msgpack_sbuffer_release(&out);
	kvp_evbatch_reset(b);
	return 0;
}
