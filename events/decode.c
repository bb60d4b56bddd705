/*
 * decode.c - another engine's event batches, read with msgpack-c.
 *
 *   bytes ──bounds walk──▶ every container's count fits in the bytes left
 *         ──msgpack_unpack_next──▶ object tree (zone) ──events()──▶ struct kvp_ev[]
 *
 * The walk comes first because msgpack-c allocates a container's elements from its
 * declared count before reading them: 5 bytes can declare four billion. After the walk
 * the unpacker's memory is bounded by a small multiple of the input's length.
 */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kvp_events.h"
#include "kvp_le.h"

struct kvp_evdecoder {
	msgpack_unpacked up;
	struct kvp_ev *ev;
	size_t cap_ev;
	uint64_t *hashes;
	size_t n_hashes, cap_hashes;
	uint32_t *tokens;
	size_t n_tokens, cap_tokens;
};

int kvp_evdecoder_create(struct kvp_evdecoder **out)
{
	struct kvp_evdecoder *d = calloc(1, sizeof(*d));

	*out = d;
	if (!d)
		return KVP_ENOMEM;
	msgpack_unpacked_init(&d->up);
	return 0;
}

void kvp_evdecoder_destroy(struct kvp_evdecoder *d)
{
	if (!d)
		return;
	msgpack_unpacked_destroy(&d->up);
	free(d->ev);
	free(d->hashes);
	free(d->tokens);
	free(d);
}

/* ---- the bounds walk ------------------------------------------------------------------ */

static uint64_t be_n(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/*
 * One msgpack value's header at p (len bytes left): how many bytes of header and of
 * payload it has (*skip) and how many values follow inside it (*inner). -1 when the
 * bytes end inside the header, or on 0xc1 (never used).
 */
static int value_head(const uint8_t *p, size_t len, size_t *skip, uint64_t *inner)
{
	static const uint8_t fixed[32] = {
		/* 0xc0..0xdf: header bytes after the type byte, or 0 for ranges handled below */
		[0x0] = 0, [0x2] = 0, [0x3] = 0,              /* nil false true */
		[0xa] = 4, [0xb] = 8,                         /* float 32, 64 */
		[0xc] = 1, [0xd] = 2, [0xe] = 4, [0xf] = 8,   /* uint 8..64 */
		[0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,
		[0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17,   /* fixext */
	};
	uint8_t t = p[0];
	uint64_t n;

	*inner = 0;
	if (t <= 0x7f || t >= 0xe0) {                 /* fixint */
		*skip = 1;
		return 0;
	}
	if (t <= 0x8f || (t >= 0x90 && t <= 0x9f)) {  /* fixmap, fixarray */
		*inner = t <= 0x8f ? 2u * (t & 0x0f) : (t & 0x0f);
		*skip = 1;
		return 0;
	}
	if (t <= 0xbf) {                              /* fixstr */
		*skip = 1 + (t & 0x1f);
		return 0;
	}
	switch (t) {
	case 0xc1:
		return -1;
	case 0xc4: case 0xc5: case 0xc6:              /* bin 8, 16, 32 */
	case 0xd9: case 0xda: case 0xdb: {            /* str 8, 16, 32 */
		unsigned w = t <= 0xc6 ? 1u << (t - 0xc4) : 1u << (t - 0xd9);

		if (len < 1 + w)
			return -1;
		*skip = 1 + w + be_n(p + 1, w);
		return 0;
	}
	case 0xc7: case 0xc8: case 0xc9: {            /* ext 8, 16, 32 */
		unsigned w = 1u << (t - 0xc7);

		if (len < 1 + w)
			return -1;
		*skip = 1 + w + 1 + be_n(p + 1, w);
		return 0;
	}
	case 0xdc: case 0xdd: case 0xde: case 0xdf: { /* array 16, 32, map 16, 32 */
		unsigned w = t == 0xdc || t == 0xde ? 2 : 4;

		if (len < 1 + w)
			return -1;
		n = be_n(p + 1, w);
		*inner = t <= 0xdd ? n : 2 * n;
		*skip = 1 + w;
		return 0;
	}
	default:
		*skip = 1 + fixed[t - 0xc0];
		return 0;
	}
}

/* Containers open at once, at most: msgpack-c's parse stack (MSGPACK_EMBED_STACK_SIZE).
 * It refuses a deeper one with MSGPACK_UNPACK_NOMEM_ERROR, which is no lack of memory. */
#define EV_MAX_DEPTH 32

static bool is_container(uint8_t t)
{
	return (t >= 0x80 && t <= 0x9f) || (t >= 0xdc && t <= 0xdf);
}

/* Does buf hold exactly one value whose every container fits in what is left, nested
 * no deeper than EV_MAX_DEPTH? Each value takes a byte at least, so the values still
 * owed can never exceed the bytes. left[] holds what each open container still owes. */
static bool bounds_ok(const uint8_t *buf, size_t len)
{
	uint64_t left[EV_MAX_DEPTH + 1], owed = 1;
	unsigned depth = 0;
	size_t off = 0;

	left[0] = 1;
	while (owed > 0) {
		size_t skip;
		uint64_t inner;

		while (left[depth] == 0)
			depth--;   /* containers done */
		if (off >= len || value_head(buf + off, len - off, &skip, &inner) != 0)
			return false;
		if (skip > len - off)
			return false;
		if (is_container(buf[off]) && depth >= EV_MAX_DEPTH)
			return false;
		off += skip;
		left[depth]--;
		owed = owed - 1 + inner;
		if (owed > len - off)
			return false;
		if (inner > 0)
			left[++depth] = inner;
	}
	return off == len;
}

/* ---- objects to events ------------------------------------------------------------------ */

static bool str_is(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);

	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	       memcmp(o->via.str.ptr, s, n) == 0;
}

/* A field of a map event by name, or of an array event by position (1 after the
 * type); NULL when absent. */
static const msgpack_object *field(const msgpack_object *e, const char *name, uint32_t pos)
{
	if (e->type == MSGPACK_OBJECT_ARRAY)
		return pos < e->via.array.size ? &e->via.array.ptr[pos] : NULL;
	for (uint32_t i = 0; i < e->via.map.size; i++)
		if (str_is(&e->via.map.ptr[i].key, name))
			return &e->via.map.ptr[i].val;
	return NULL;
}

/* A block hash: an integer as its 64 bits, or bytes / a string (newer engines) as their
 * XXH3-64. */
static bool hash_of(const msgpack_object *o, uint64_t *h)
{
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		*h = o->via.u64;
		return true;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		*h = (uint64_t)o->via.i64;
		return true;
	case MSGPACK_OBJECT_BIN:
		*h = XXH3_64bits(o->via.bin.ptr, o->via.bin.size);
		return true;
	case MSGPACK_OBJECT_STR:
		*h = XXH3_64bits(o->via.str.ptr, o->via.str.size);
		return true;
	default:
		return false;
	}
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	size_t c = *cap ? *cap : 64;
	void *q;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	q = realloc(*p, c * size);
	if (!q)
		return KVP_ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static int take_hashes(struct kvp_evdecoder *d, const msgpack_object *o, struct kvp_ev *ev)
{
	int rc;

	if (!o || o->type != MSGPACK_OBJECT_ARRAY)
		return KVP_EPROTO;
	rc = grow((void **)&d->hashes, &d->cap_hashes, d->n_hashes + o->via.array.size,
		  sizeof(*d->hashes));
	if (rc)
		return rc;
	ev->hashes = (const uint64_t *)(uintptr_t)d->n_hashes;   /* an offset until the end */
	ev->n_hashes = o->via.array.size;
	for (uint32_t i = 0; i < o->via.array.size; i++)
		if (!hash_of(&o->via.array.ptr[i], &d->hashes[d->n_hashes++]))
			return KVP_EPROTO;
	return 0;
}

static int take_tokens(struct kvp_evdecoder *d, const msgpack_object *o, struct kvp_ev *ev)
{
	int rc;

	if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > KVP_EV_MAX_TOKENS)
		return KVP_EPROTO;
	rc = grow((void **)&d->tokens, &d->cap_tokens, d->n_tokens + o->via.array.size,
		  sizeof(*d->tokens));
	if (rc)
		return rc;
	ev->tokens = (const uint32_t *)(uintptr_t)d->n_tokens;
	ev->n_tokens = o->via.array.size;
	for (uint32_t i = 0; i < o->via.array.size; i++) {
		const msgpack_object *t = &o->via.array.ptr[i];

		if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 > UINT32_MAX)
			return KVP_EPROTO;
		d->tokens[d->n_tokens++] = (uint32_t)t->via.u64;
	}
	return 0;
}

static void take_medium(const msgpack_object *o, struct kvp_ev *ev)
{
	ev->has_medium = o && o->type == MSGPACK_OBJECT_STR;
	ev->medium = !ev->has_medium  ? KVP_EV_GPU
		     : str_is(o, "GPU") ? KVP_EV_GPU
		     : str_is(o, "DISK") ? KVP_EV_DISK : KVP_EV_CPU;
}

static int stored(struct kvp_evdecoder *d, const msgpack_object *e, struct kvp_ev *ev)
{
	const msgpack_object *parent = field(e, "parent_block_hash", 2);
	const msgpack_object *bs = field(e, "block_size", 4);
	int rc = take_hashes(d, field(e, "block_hashes", 1), ev);

	if (rc == 0)
		rc = take_tokens(d, field(e, "token_ids", 3), ev);
	if (rc)
		return rc;
	if (!parent || !bs || bs->type != MSGPACK_OBJECT_POSITIVE_INTEGER || bs->via.u64 == 0 ||
	    bs->via.u64 > KVP_EV_MAX_TOKENS || ev->n_tokens != ev->n_hashes * bs->via.u64)
		return KVP_EPROTO;
	ev->block_size = (uint32_t)bs->via.u64;
	ev->has_parent = parent->type != MSGPACK_OBJECT_NIL;
	if (ev->has_parent && !hash_of(parent, &ev->parent))
		return KVP_EPROTO;
	take_medium(field(e, "medium", 6), ev);
	return 0;
}

static int one_event(struct kvp_evdecoder *d, const msgpack_object *e, struct kvp_ev *ev)
{
	const msgpack_object *type;

	memset(ev, 0, sizeof(*ev));
	if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size > 0)
		type = &e->via.array.ptr[0];
	else if (e->type == MSGPACK_OBJECT_MAP)
		type = field(e, "type", 0);
	else
		return KVP_EPROTO;
	if (!type)
		return KVP_EPROTO;
	if (str_is(type, "BlockStored")) {
		ev->type = KVP_EV_STORED;
		return stored(d, e, ev);
	}
	if (str_is(type, "BlockRemoved")) {
		int rc = take_hashes(d, field(e, "block_hashes", 1), ev);

		ev->type = KVP_EV_REMOVED;
		take_medium(field(e, "medium", 2), ev);
		return rc;
	}
	if (str_is(type, "AllBlocksCleared")) {
		ev->type = KVP_EV_CLEARED;
		return 0;
	}
	return KVP_EPROTO;
}

/* The batch's events array: [ts, events, rank?] or {"ts":..., "events": [...], ...}. */
static const msgpack_object *events_of(const msgpack_object *o)
{
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		if (o->via.array.size < 2 || o->via.array.size > 3)
			return NULL;
		if (o->via.array.ptr[0].type != MSGPACK_OBJECT_FLOAT64 &&
		    o->via.array.ptr[0].type != MSGPACK_OBJECT_FLOAT32 &&
		    o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return NULL;
		o = &o->via.array.ptr[1];
	} else if (o->type == MSGPACK_OBJECT_MAP) {
		o = field(o, "events", 0);
	} else {
		return NULL;
	}
	return o && o->type == MSGPACK_OBJECT_ARRAY ? o : NULL;
}

int kvp_evdecode(struct kvp_evdecoder *d, const uint8_t *buf, size_t len,
		 const struct kvp_ev **events, size_t *n)
{
	const msgpack_object *arr;
	size_t off = 0;
	int rc;

	*events = NULL;
	*n = 0;
	if (!bounds_ok(buf, len))
		return KVP_EPROTO;
	msgpack_unpacked_destroy(&d->up);   /* the last batch's objects */
	msgpack_unpacked_init(&d->up);
	rc = msgpack_unpack_next(&d->up, (const char *)buf, len, &off);
	if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
		return KVP_ENOMEM;
	if (rc != MSGPACK_UNPACK_SUCCESS || off != len)
		return KVP_EPROTO;
	arr = events_of(&d->up.data);
	if (!arr || arr->via.array.size > KVP_EV_MAX_EVENTS)
		return KVP_EPROTO;
	rc = grow((void **)&d->ev, &d->cap_ev, arr->via.array.size, sizeof(*d->ev));
	if (rc)
		return rc;
	d->n_hashes = d->n_tokens = 0;
	for (uint32_t i = 0; i < arr->via.array.size; i++) {
		rc = one_event(d, &arr->via.array.ptr[i], &d->ev[i]);
		if (rc)
			return rc;
	}
	/* the arrays are final now: offsets to pointers */
	for (uint32_t i = 0; i < arr->via.array.size; i++) {
		d->ev[i].hashes = d->hashes ? d->hashes + (uintptr_t)d->ev[i].hashes : NULL;
		d->ev[i].tokens = d->tokens ? d->tokens + (uintptr_t)d->ev[i].tokens : NULL;
	}
	*events = d->ev;
	*n = arr->via.array.size;
	return 0;
}
