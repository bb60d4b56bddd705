/*
 * codec.c - the frame codec of kvp_proto.h: bytes in, structs out. No I/O, no
 * allocation, no global state; safe from any thread.
 *
 * Every decoder walks its payload with a cursor that checks each length against the
 * bytes left before touching them, then insists the cursor ends exactly at n:
 *
 *     p                          p + n
 *     |-- fixed --|len|--bytes--|                 ok: cursor == n
 *     |-- fixed --|len|--by|                      KVP_EPROTO: field runs past n
 *     |-- fixed --|len|--bytes--|xx|              KVP_EPROTO: trailing bytes
 *
 * Precedence when a payload is wrong in more than one way: layout first (KVP_EPROTO),
 * then reserved flag bits (KVP_EINVAL), then limits (KVP_ETOOBIG). A frame whose
 * layout is broken is always reported as malformed, whatever else it claims.
 */
#include "kvp_proto.h"
#include "kvp_le.h"

#include <math.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KVP_HOST_LE 1
#else
#define KVP_HOST_LE 0
#endif

#define HELLO_FIXED 12u          /* version, flags, adapter_len, salt_len */
#define HELLO_REPLY_FIXED 26u    /* six u32 and name_len */
#define HELLO_REPLY_SIZES 8u     /* version >= 3: vocab_size, ctx_tokens after the name */
#define TOKENS_REQ_FIXED 8u      /* flags, n_tokens */
#define BLOCKS_REPLY_FIXED 24u   /* matched, prompt, new_blocks, lease, n_blocks */
#define ERROR_FIXED 6u           /* code, msg_len */
#define GEN_REQ_FIXED 36u        /* flags .. n_stop (32), n_tokens (4) */
#define GEN_REQ_STOP_OFF 32u     /* where the stop ids start */
#define CHUNK_FIXED 4u           /* n */
#define GEN_DONE_FIXED 52u       /* five u32, reserved, three u64, n_logits */
#define ADMIN_FIXED 18u          /* op, flags, tenant, n_tokens (16), text_len (2) */
#define ADMIN_HEAD 16u           /* where the tokens start */
#define ADMIN_REPLY_FIXED 12u    /* op, blocks, text_len */

#define HELLO_FLAGS_KNOWN 0u
#define HELLO_REPLY_FLAGS_KNOWN KVP_HELLO_INDEX_ONLY

/* ---- little-endian arrays (scalars: kvp_le.h) -------------------------------- */

void kvp_load_u32s(uint32_t *dst, const uint8_t *src, size_t n)
{
	if (n == 0)
		return;
#if KVP_HOST_LE
	memcpy(dst, src, n * sizeof(uint32_t));
#else
	for (size_t i = 0; i < n; i++)
		dst[i] = kvp_le_get_u32(src + 4 * i);
#endif
}

const uint32_t *kvp_view_u32s(uint32_t *scratch, const uint8_t *src, size_t n)
{
#if KVP_HOST_LE
	if (((uintptr_t)src & (_Alignof(uint32_t) - 1)) == 0)
		return (const uint32_t *)(const void *)src;
#endif
	kvp_load_u32s(scratch, src, n);
	return scratch;
}

void kvp_store_u32s(uint8_t *dst, const uint32_t *src, size_t n)
{
	if (n == 0)
		return;
#if KVP_HOST_LE
	memcpy(dst, src, n * sizeof(uint32_t));
#else
	for (size_t i = 0; i < n; i++)
		kvp_le_put_u32(dst + 4 * i, src[i]);
#endif
}

void kvp_load_f32s(float *dst, const uint8_t *src, size_t n)
{
	if (n == 0)
		return;
#if KVP_HOST_LE
	memcpy(dst, src, n * sizeof(float));
#else
	for (size_t i = 0; i < n; i++)
		dst[i] = kvp_le_get_f32(src + 4 * i);
#endif
}

void kvp_store_f32s(uint8_t *dst, const float *src, size_t n)
{
	if (n == 0)
		return;
#if KVP_HOST_LE
	memcpy(dst, src, n * sizeof(float));
#else
	for (size_t i = 0; i < n; i++)
		kvp_le_put_f32(dst + 4 * i, src[i]);
#endif
}

/* ---- bounded reader ----------------------------------------------------------- */

struct rd {
	const uint8_t *p;
	size_t left;
};

static inline bool rd_u16(struct rd *r, uint16_t *v)
{
	if (r->left < 2)
		return false;
	*v = kvp_le_get_u16(r->p);
	r->p += 2;
	r->left -= 2;
	return true;
}

static inline bool rd_u32(struct rd *r, uint32_t *v)
{
	if (r->left < 4)
		return false;
	*v = kvp_le_get_u32(r->p);
	r->p += 4;
	r->left -= 4;
	return true;
}

static inline bool rd_u64(struct rd *r, uint64_t *v)
{
	if (r->left < 8)
		return false;
	*v = kvp_le_get_u64(r->p);
	r->p += 8;
	r->left -= 8;
	return true;
}

static inline bool rd_f32(struct rd *r, float *v)
{
	if (r->left < 4)
		return false;
	*v = kvp_le_get_f32(r->p);
	r->p += 4;
	r->left -= 4;
	return true;
}

/* Take len bytes in place; *out points into the input. */
static inline bool rd_bytes(struct rd *r, size_t len, const uint8_t **out)
{
	if (r->left < len)
		return false;
	*out = r->p;
	r->p += len;
	r->left -= len;
	return true;
}

/* Take count u32 values in place, without computing 4 * count first (it could wrap
 * where size_t is 32 bits). */
static inline bool rd_u32_array(struct rd *r, uint32_t count, const uint8_t **out)
{
	if (r->left / 4 < count)
		return false;
	return rd_bytes(r, (size_t)count * 4, out);
}

/* ---- header -------------------------------------------------------------------- */

bool kvp_frame_is_request(uint8_t type)
{
	return (type >= KVP_T_HELLO && type <= KVP_T_GENERATE) || type == KVP_T_ADMIN ||
	       type == KVP_T_FLEET;
}

bool kvp_frame_type_valid(uint8_t version, uint8_t type)
{
	uint8_t req = (uint8_t)(type & ~KVP_T_REPLY);

	if (version < KVP_PROTO_VERSION || version > KVP_PROTO_VERSION_MAX)
		return false;
	if (type == KVP_T_ERROR || type == KVP_T_GENERATE_DONE)
		return true;
	if (req == KVP_T_ADMIN)
		return version >= KVP_PROTO_VERSION_ADMIN;
	if (req == KVP_T_FLEET)
		return version >= KVP_PROTO_VERSION_FLEET;
	return kvp_frame_is_request(req);
}

void kvp_hdr_encode(uint8_t out[KVP_HDR_SIZE], const struct kvp_frame_hdr *h)
{
	kvp_le_put_u32(out, KVP_PROTO_MAGIC);
	out[4] = h->version;
	out[5] = h->type;
	kvp_le_put_u16(out + 6, h->flags);
	kvp_le_put_u32(out + 8, h->req_id);
	kvp_le_put_u32(out + 12, h->len);
}

int kvp_hdr_decode(const uint8_t *in, size_t n, uint32_t max_payload, struct kvp_frame_hdr *h)
{
	if (n < KVP_HDR_SIZE)
		return KVP_EINVAL;
	h->version = in[4];
	h->type = in[5];
	h->flags = kvp_le_get_u16(in + 6);
	h->req_id = kvp_le_get_u32(in + 8);
	h->len = kvp_le_get_u32(in + 12);

	if (kvp_le_get_u32(in) != KVP_PROTO_MAGIC)
		return KVP_EPROTO;
	if (h->version < KVP_PROTO_VERSION || h->version > KVP_PROTO_VERSION_MAX)
		return KVP_EVERSION;
	if (!kvp_frame_type_valid(h->version, h->type) || h->flags != 0)
		return KVP_EPROTO;
	if (h->len > max_payload)
		return KVP_ETOOBIG;
	return 0;
}

/* ---- HELLO ---------------------------------------------------------------------- */

size_t kvp_hello_size(const struct kvp_hello *m)
{
	return HELLO_FIXED + (size_t)m->adapter_len + m->salt_len;
}

size_t kvp_hello_encode(uint8_t *out, size_t cap, const struct kvp_hello *m)
{
	size_t need = kvp_hello_size(m);
	uint8_t *p = out;

	if (m->adapter_len > KVP_NAME_MAX || m->salt_len > KVP_NAME_MAX || cap < need)
		return 0;
	kvp_le_put_u32(p, m->version);
	kvp_le_put_u32(p + 4, m->flags);
	kvp_le_put_u16(p + 8, m->adapter_len);
	p += 10;
	if (m->adapter_len)
		memcpy(p, m->adapter, m->adapter_len);
	p += m->adapter_len;
	kvp_le_put_u16(p, m->salt_len);
	p += 2;
	if (m->salt_len)
		memcpy(p, m->salt, m->salt_len);
	return need;
}

int kvp_hello_decode(const uint8_t *p, size_t n, struct kvp_hello *m)
{
	struct rd r = { p, n };
	const uint8_t *adapter, *salt;

	if (!rd_u32(&r, &m->version) || !rd_u32(&r, &m->flags) ||
	    !rd_u16(&r, &m->adapter_len) || !rd_bytes(&r, m->adapter_len, &adapter) ||
	    !rd_u16(&r, &m->salt_len) || !rd_bytes(&r, m->salt_len, &salt) || r.left != 0)
		return KVP_EPROTO;
	m->adapter = (const char *)adapter;
	m->salt = (const char *)salt;
	if (m->flags & ~HELLO_FLAGS_KNOWN)
		return KVP_EINVAL;
	if (m->adapter_len > KVP_NAME_MAX || m->salt_len > KVP_NAME_MAX)
		return KVP_ETOOBIG;
	return 0;
}

/* ---- HELLO reply ------------------------------------------------------------------- */

/* A reply of this version ends with vocab_size and ctx_tokens. */
static bool hello_reply_has_sizes(uint32_t version)
{
	return version >= KVP_PROTO_VERSION_SIZES;
}

size_t kvp_hello_reply_size(const struct kvp_hello_reply *m)
{
	return HELLO_REPLY_FIXED + (size_t)m->name_len +
	       (hello_reply_has_sizes(m->version) ? HELLO_REPLY_SIZES : 0);
}

size_t kvp_hello_reply_encode(uint8_t *out, size_t cap, const struct kvp_hello_reply *m)
{
	size_t need = kvp_hello_reply_size(m);
	uint8_t *p;

	if (m->name_len > KVP_NAME_MAX || cap < need)
		return 0;
	p = out + HELLO_REPLY_FIXED + m->name_len;
	kvp_le_put_u32(out, m->version);
	kvp_le_put_u32(out + 4, m->block_tokens);
	kvp_le_put_u32(out + 8, m->capacity_blocks);
	kvp_le_put_u32(out + 12, m->max_tokens);
	kvp_le_put_u32(out + 16, m->flags);
	kvp_le_put_u32(out + 20, m->tenant);
	kvp_le_put_u16(out + 24, m->name_len);
	if (m->name_len)
		memcpy(out + HELLO_REPLY_FIXED, m->name, m->name_len);
	if (hello_reply_has_sizes(m->version)) {
		kvp_le_put_u32(p, m->vocab_size);
		kvp_le_put_u32(p + 4, m->ctx_tokens);
	}
	return need;
}

int kvp_hello_reply_decode(const uint8_t *p, size_t n, struct kvp_hello_reply *m)
{
	struct rd r = { p, n };
	const uint8_t *name;

	m->vocab_size = m->ctx_tokens = 0;
	if (!rd_u32(&r, &m->version) || !rd_u32(&r, &m->block_tokens) ||
	    !rd_u32(&r, &m->capacity_blocks) || !rd_u32(&r, &m->max_tokens) ||
	    !rd_u32(&r, &m->flags) || !rd_u32(&r, &m->tenant) ||
	    !rd_u16(&r, &m->name_len) || !rd_bytes(&r, m->name_len, &name))
		return KVP_EPROTO;
	if (hello_reply_has_sizes(m->version) &&
	    (!rd_u32(&r, &m->vocab_size) || !rd_u32(&r, &m->ctx_tokens)))
		return KVP_EPROTO;
	if (r.left != 0)
		return KVP_EPROTO;
	m->name = (const char *)name;
	if (m->flags & ~HELLO_REPLY_FLAGS_KNOWN)
		return KVP_EINVAL;
	if (m->name_len > KVP_NAME_MAX)
		return KVP_ETOOBIG;
	return 0;
}

/* ---- LOOKUP / INSERT requests ---------------------------------------------------------- */

/* keep_s in its range: KVP_EINVAL or 0. */
static int keep_check(uint32_t keep_s)
{
	return keep_s == 0 || keep_s > KVP_KEEP_MAX_S ? KVP_EINVAL : 0;
}

/* keep_s and priority as a request with or without KEEP has them: with, keep_s in
 * range; without, both 0. For the encoders. */
static bool keep_fields_ok(bool keep, uint32_t keep_s, uint32_t priority)
{
	return keep ? keep_check(keep_s) == 0 : keep_s == 0 && priority == 0;
}

/* Read keep_s and priority when the flags say they are there; else set both 0. */
static bool rd_keep(struct rd *r, bool keep, uint32_t *keep_s, uint32_t *priority)
{
	*keep_s = *priority = 0;
	return !keep || (rd_u32(r, keep_s) && rd_u32(r, priority));
}

size_t kvp_tokens_req_size(uint32_t n_tokens)
{
	return TOKENS_REQ_FIXED + (size_t)n_tokens * 4;
}

size_t kvp_tokens_req_size_flags(uint32_t n_tokens, uint32_t flags)
{
	return kvp_tokens_req_size(n_tokens) + (flags & KVP_F_KEEP ? KVP_KEEP_SIZE : 0);
}

size_t kvp_tokens_req_encode_keep(uint8_t *out, size_t cap, uint32_t flags,
				  const uint32_t *tokens, uint32_t n_tokens, uint32_t keep_s,
				  uint32_t priority)
{
	const bool keep = flags & KVP_F_KEEP;
	const size_t tail = keep ? KVP_KEEP_SIZE : 0;
	uint8_t *p;

	if ((flags & ~KVP_INSERT_FLAGS_KNOWN) || !keep_fields_ok(keep, keep_s, priority) ||
	    cap < TOKENS_REQ_FIXED + tail || (cap - TOKENS_REQ_FIXED - tail) / 4 < n_tokens)
		return 0;
	kvp_le_put_u32(out, flags);
	kvp_le_put_u32(out + 4, n_tokens);
	kvp_store_u32s(out + TOKENS_REQ_FIXED, tokens, n_tokens);
	p = out + TOKENS_REQ_FIXED + (size_t)n_tokens * 4;
	if (keep) {
		kvp_le_put_u32(p, keep_s);
		kvp_le_put_u32(p + 4, priority);
	}
	return kvp_tokens_req_size_flags(n_tokens, flags);
}

size_t kvp_tokens_req_encode(uint8_t *out, size_t cap, uint32_t flags, const uint32_t *tokens,
			     uint32_t n_tokens)
{
	if (flags & ~KVP_LOOKUP_FLAGS_KNOWN)
		return 0;
	return kvp_tokens_req_encode_keep(out, cap, flags, tokens, n_tokens, 0, 0);
}

/* LOOKUP's and INSERT's decoder: the flags of known; keep_s and priority follow the
 * tokens when KVP_F_KEEP is one of them and is set. */
static int tokens_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens, uint32_t known,
			     struct kvp_tokens_req *m)
{
	struct rd r = { p, n };

	m->keep_s = m->priority = 0;
	if (!rd_u32(&r, &m->flags) || !rd_u32(&r, &m->n_tokens) ||
	    !rd_u32_array(&r, m->n_tokens, &m->tokens) ||
	    !rd_keep(&r, m->flags & known & KVP_F_KEEP, &m->keep_s, &m->priority) || r.left != 0)
		return KVP_EPROTO;
	if (m->flags & ~known)
		return KVP_EINVAL;
	if ((m->flags & KVP_F_KEEP) && keep_check(m->keep_s) < 0)
		return KVP_EINVAL;
	if (m->n_tokens > max_tokens)
		return KVP_ETOOBIG;
	return 0;
}

int kvp_tokens_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			  struct kvp_tokens_req *m)
{
	return tokens_req_decode(p, n, max_tokens, KVP_LOOKUP_FLAGS_KNOWN, m);
}

int kvp_tokens_req_decode_insert(const uint8_t *p, size_t n, uint32_t max_tokens,
				 struct kvp_tokens_req *m)
{
	return tokens_req_decode(p, n, max_tokens, KVP_INSERT_FLAGS_KNOWN, m);
}

/* ---- LOOKUP / INSERT replies -------------------------------------------------------------- */

size_t kvp_blocks_reply_size(uint32_t n_blocks)
{
	return BLOCKS_REPLY_FIXED + (size_t)n_blocks * 4;
}

size_t kvp_blocks_reply_encode(uint8_t *out, size_t cap, const struct kvp_blocks_reply *m,
			       const uint32_t *block_ids)
{
	if (cap < BLOCKS_REPLY_FIXED || (cap - BLOCKS_REPLY_FIXED) / 4 < m->n_blocks)
		return 0;
	kvp_le_put_u32(out, m->matched_tokens);
	kvp_le_put_u32(out + 4, m->prompt_tokens);
	kvp_le_put_u32(out + 8, m->new_blocks);
	kvp_le_put_u64(out + 12, m->lease);
	kvp_le_put_u32(out + 20, m->n_blocks);
	kvp_store_u32s(out + BLOCKS_REPLY_FIXED, block_ids, m->n_blocks);
	return kvp_blocks_reply_size(m->n_blocks);
}

int kvp_blocks_reply_decode(const uint8_t *p, size_t n, struct kvp_blocks_reply *m)
{
	struct rd r = { p, n };

	if (!rd_u32(&r, &m->matched_tokens) || !rd_u32(&r, &m->prompt_tokens) ||
	    !rd_u32(&r, &m->new_blocks) || !rd_u64(&r, &m->lease) ||
	    !rd_u32(&r, &m->n_blocks) || !rd_u32_array(&r, m->n_blocks, &m->block_ids) ||
	    r.left != 0)
		return KVP_EPROTO;
	return 0;
}

/* ---- FLEET reply ------------------------------------------------------------------------- */

size_t kvp_fleet_reply_size(const struct kvp_fleet_entry *e, uint32_t n)
{
	size_t size = 8;

	for (uint32_t i = 0; i < n; i++)
		size += 8 + e[i].name_len;
	return size;
}

size_t kvp_fleet_reply_encode(uint8_t *out, size_t cap, uint32_t prompt_tokens,
			      const struct kvp_fleet_entry *e, uint32_t n)
{
	size_t off = 8;

	if (cap < kvp_fleet_reply_size(e, n))
		return 0;
	kvp_le_put_u32(out, prompt_tokens);
	kvp_le_put_u32(out + 4, n);
	for (uint32_t i = 0; i < n; i++) {
		kvp_le_put_u32(out + off, e[i].matched_tokens);
		kvp_le_put_u32(out + off + 4, e[i].name_len);
		memcpy(out + off + 8, e[i].name, e[i].name_len);
		off += 8 + e[i].name_len;
	}
	return off;
}

int kvp_fleet_reply_decode(const uint8_t *p, size_t n, uint32_t *prompt_tokens,
			   struct kvp_fleet_entry *e, uint32_t max, uint32_t *n_entries)
{
	struct rd r = { p, n };
	uint32_t count;

	if (!rd_u32(&r, prompt_tokens) || !rd_u32(&r, &count) || count > max)
		return KVP_EPROTO;
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *name;

		if (!rd_u32(&r, &e[i].matched_tokens) || !rd_u32(&r, &e[i].name_len) ||
		    e[i].name_len > KVP_NAME_MAX || !rd_bytes(&r, e[i].name_len, &name))
			return KVP_EPROTO;
		e[i].name = (const char *)name;
	}
	if (r.left != 0)
		return KVP_EPROTO;
	*n_entries = count;
	return 0;
}

/* ---- RELEASE and single-u32 payloads ------------------------------------------------------ */

size_t kvp_release_encode(uint8_t *out, size_t cap, uint64_t lease)
{
	if (cap < 8)
		return 0;
	kvp_le_put_u64(out, lease);
	return 8;
}

int kvp_release_decode(const uint8_t *p, size_t n, uint64_t *lease)
{
	if (n != 8)
		return KVP_EPROTO;
	*lease = kvp_le_get_u64(p);
	return 0;
}

size_t kvp_u32_encode(uint8_t *out, size_t cap, uint32_t v)
{
	if (cap < 4)
		return 0;
	kvp_le_put_u32(out, v);
	return 4;
}

int kvp_u32_decode(const uint8_t *p, size_t n, uint32_t *v)
{
	if (n != 4)
		return KVP_EPROTO;
	*v = kvp_le_get_u32(p);
	return 0;
}

/* ---- ERROR --------------------------------------------------------------------------------- */

size_t kvp_error_size(size_t msg_len)
{
	return ERROR_FIXED + (msg_len > KVP_ERROR_MSG_MAX ? KVP_ERROR_MSG_MAX : msg_len);
}

/* Length of msg once cut to KVP_ERROR_MSG_MAX bytes, backing off so that the cut
 * never splits a UTF-8 sequence (at most 3 continuation bytes are dropped). */
static size_t error_msg_len(const char *msg)
{
	size_t len;

	if (!msg)
		return 0;
	len = strnlen(msg, KVP_ERROR_MSG_MAX + 1);
	if (len <= KVP_ERROR_MSG_MAX)
		return len;
	len = KVP_ERROR_MSG_MAX;
	for (int i = 0; i < 3 && ((uint8_t)msg[len] & 0xC0) == 0x80; i++)
		len--;
	return len;
}

size_t kvp_error_encode(uint8_t *out, size_t cap, int status, const char *msg)
{
	size_t len = error_msg_len(msg);
	size_t need = ERROR_FIXED + len;
	uint32_t code;

	if (status == 0 || cap < need)
		return 0;
	code = status < 0 ? (uint32_t)0 - (uint32_t)status : (uint32_t)status;
	if (code > INT32_MAX)
		return 0;
	kvp_le_put_u32(out, code);
	kvp_le_put_u16(out + 4, (uint16_t)len);
	if (len)
		memcpy(out + ERROR_FIXED, msg, len);
	return need;
}

int kvp_error_decode(const uint8_t *p, size_t n, struct kvp_error *m)
{
	struct rd r = { p, n };
	const uint8_t *msg;

	if (!rd_u32(&r, &m->code) || !rd_u16(&r, &m->msg_len) ||
	    !rd_bytes(&r, m->msg_len, &msg) || r.left != 0)
		return KVP_EPROTO;
	m->msg = (const char *)msg;
	/* 0 is success and cannot be an error; over INT32_MAX cannot be negated back. */
	if (m->code == 0 || m->code > INT32_MAX)
		return KVP_EPROTO;
	if (m->msg_len > KVP_ERROR_MSG_MAX)
		return KVP_ETOOBIG;
	return 0;
}

/* ---- GENERATE ------------------------------------------------------------------------------ */

/* The value checks of a GENERATE request, reserved flags apart: KVP_EINVAL or 0. NaN
 * fails every comparison, hence the negated forms. */
static int generate_values_check(const struct kvp_generate_req *m)
{
	if (m->max_new > KVP_GEN_MAX_NEW)
		return KVP_EINVAL;
	if (!isfinite(m->temperature) || !(m->temperature >= 0.0f))
		return KVP_EINVAL;
	if (!(m->top_p > 0.0f && m->top_p <= 1.0f))
		return KVP_EINVAL;
	if (m->n_stop > KVP_STOP_MAX || m->n_tokens == 0)
		return KVP_EINVAL;
	if ((m->flags & KVP_GEN_KEEP) && keep_check(m->keep_s) < 0)
		return KVP_EINVAL;
	return 0;
}

size_t kvp_generate_req_size(uint32_t n_stop, uint32_t n_tokens)
{
	return GEN_REQ_FIXED + ((size_t)n_stop + n_tokens) * 4;
}

size_t kvp_generate_req_size_flags(uint32_t n_stop, uint32_t n_tokens, uint32_t flags)
{
	return kvp_generate_req_size(n_stop, n_tokens) +
	       (flags & KVP_GEN_KEEP ? KVP_KEEP_SIZE : 0);
}

size_t kvp_generate_req_encode_head(uint8_t *out, size_t cap, const struct kvp_generate_req *m,
				    const uint32_t *stop)
{
	size_t need;

	if ((m->flags & ~KVP_GEN_FLAGS_KNOWN) || generate_values_check(m) < 0 ||
	    !keep_fields_ok(m->flags & KVP_GEN_KEEP, m->keep_s, m->priority))
		return 0;
	need = GEN_REQ_FIXED + (size_t)m->n_stop * 4;   /* n_stop <= KVP_STOP_MAX here */
	if (cap < need)
		return 0;
	kvp_le_put_u32(out, m->flags);
	kvp_le_put_u32(out + 4, m->max_new);
	kvp_le_put_f32(out + 8, m->temperature);
	kvp_le_put_u32(out + 12, m->top_k);
	kvp_le_put_f32(out + 16, m->top_p);
	kvp_le_put_u64(out + 20, m->seed);
	kvp_le_put_u32(out + 28, m->n_stop);
	kvp_store_u32s(out + GEN_REQ_STOP_OFF, stop, m->n_stop);
	kvp_le_put_u32(out + GEN_REQ_STOP_OFF + (size_t)m->n_stop * 4, m->n_tokens);
	return need;
}

size_t kvp_generate_req_tail_size(const struct kvp_generate_req *m)
{
	return m->flags & KVP_GEN_KEEP ? KVP_KEEP_SIZE : 0;
}

size_t kvp_generate_req_encode_tail(uint8_t *out, size_t cap, const struct kvp_generate_req *m)
{
	if (!(m->flags & KVP_GEN_KEEP) || cap < KVP_KEEP_SIZE)
		return 0;
	kvp_le_put_u32(out, m->keep_s);
	kvp_le_put_u32(out + 4, m->priority);
	return KVP_KEEP_SIZE;
}

size_t kvp_generate_req_encode(uint8_t *out, size_t cap, const struct kvp_generate_req *m,
			       const uint32_t *stop, const uint32_t *tokens)
{
	size_t head = kvp_generate_req_encode_head(out, cap, m, stop);
	size_t tail = kvp_generate_req_tail_size(m), body;

	if (head == 0 || cap - head < tail || (cap - head - tail) / 4 < m->n_tokens)
		return 0;
	body = head + (size_t)m->n_tokens * 4;
	kvp_store_u32s(out + head, tokens, m->n_tokens);
	kvp_generate_req_encode_tail(out + body, cap - body, m);
	return body + tail;
}

int kvp_generate_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			    struct kvp_generate_req *m)
{
	struct rd r = { p, n };
	int rc;

	m->keep_s = m->priority = 0;
	if (!rd_u32(&r, &m->flags) || !rd_u32(&r, &m->max_new) ||
	    !rd_f32(&r, &m->temperature) || !rd_u32(&r, &m->top_k) ||
	    !rd_f32(&r, &m->top_p) || !rd_u64(&r, &m->seed) ||
	    !rd_u32(&r, &m->n_stop) || !rd_u32_array(&r, m->n_stop, &m->stop) ||
	    !rd_u32(&r, &m->n_tokens) || !rd_u32_array(&r, m->n_tokens, &m->tokens) ||
	    !rd_keep(&r, m->flags & KVP_GEN_KEEP, &m->keep_s, &m->priority) || r.left != 0)
		return KVP_EPROTO;
	if (m->flags & ~KVP_GEN_FLAGS_KNOWN)
		return KVP_EINVAL;
	if ((rc = generate_values_check(m)) < 0)
		return rc;
	if (m->n_tokens > max_tokens)
		return KVP_ETOOBIG;
	return 0;
}

size_t kvp_token_chunk_size(uint32_t n)
{
	return CHUNK_FIXED + (size_t)n * 4;
}

size_t kvp_token_chunk_encode(uint8_t *out, size_t cap, const uint32_t *ids, uint32_t n)
{
	if (cap < CHUNK_FIXED || (cap - CHUNK_FIXED) / 4 < n)
		return 0;
	kvp_le_put_u32(out, n);
	kvp_store_u32s(out + CHUNK_FIXED, ids, n);
	return kvp_token_chunk_size(n);
}

int kvp_token_chunk_decode(const uint8_t *p, size_t n, struct kvp_token_chunk *m)
{
	struct rd r = { p, n };

	if (!rd_u32(&r, &m->n) || !rd_u32_array(&r, m->n, &m->ids) || r.left != 0)
		return KVP_EPROTO;
	return 0;
}

size_t kvp_generate_done_size(uint32_t n_logits)
{
	return GEN_DONE_FIXED + (size_t)n_logits * 4;
}

size_t kvp_generate_done_encode(uint8_t *out, size_t cap, const struct kvp_generate_done *m,
				const float *logits)
{
	if (m->finish > KVP_FINISH_CONTEXT || cap < GEN_DONE_FIXED ||
	    (cap - GEN_DONE_FIXED) / 4 < m->n_logits)
		return 0;
	kvp_le_put_u32(out, m->prompt_tokens);
	kvp_le_put_u32(out + 4, m->cached_tokens);
	kvp_le_put_u32(out + 8, m->computed_tokens);
	kvp_le_put_u32(out + 12, m->generated_tokens);
	kvp_le_put_u32(out + 16, m->finish);
	kvp_le_put_u32(out + 20, 0);
	kvp_le_put_u64(out + 24, m->ttft_us);
	kvp_le_put_u64(out + 32, m->prefill_us);
	kvp_le_put_u64(out + 40, m->decode_us);
	kvp_le_put_u32(out + 48, m->n_logits);
	kvp_store_f32s(out + GEN_DONE_FIXED, logits, m->n_logits);
	return kvp_generate_done_size(m->n_logits);
}

int kvp_generate_done_decode(const uint8_t *p, size_t n, struct kvp_generate_done *m)
{
	struct rd r = { p, n };
	uint32_t reserved;

	if (!rd_u32(&r, &m->prompt_tokens) || !rd_u32(&r, &m->cached_tokens) ||
	    !rd_u32(&r, &m->computed_tokens) || !rd_u32(&r, &m->generated_tokens) ||
	    !rd_u32(&r, &m->finish) || !rd_u32(&r, &reserved) ||
	    !rd_u64(&r, &m->ttft_us) || !rd_u64(&r, &m->prefill_us) ||
	    !rd_u64(&r, &m->decode_us) || !rd_u32(&r, &m->n_logits) ||
	    !rd_u32_array(&r, m->n_logits, &m->logits) || r.left != 0)
		return KVP_EPROTO;
	if (reserved != 0 || m->finish > KVP_FINISH_CONTEXT)
		return KVP_EINVAL;
	return 0;
}

/* ---- ADMIN ---------------------------------------------------------------------------------- */

size_t kvp_admin_req_size(const struct kvp_admin_req *m)
{
	return ADMIN_FIXED + (size_t)m->n_tokens * 4 + m->text_len;
}

/* Which fields each known op takes; an unknown op is the daemon's to refuse. */
static int admin_op_check(const struct kvp_admin_req *m)
{
	bool all = m->flags & KVP_ADMIN_F_ALL, tenant = m->flags & KVP_ADMIN_F_TENANT;

	switch (m->op) {
	case KVP_ADMIN_CLEAR:
		if ((all && tenant) || m->n_tokens || m->text_len)
			return KVP_EINVAL;
		return 0;
	case KVP_ADMIN_EVICT:
	case KVP_ADMIN_PIN:
	case KVP_ADMIN_UNPIN:
	case KVP_ADMIN_EXPLAIN:
		if (all || m->n_tokens == 0 || m->text_len)
			return KVP_EINVAL;
		return 0;
	case KVP_ADMIN_CONFIG:
		if (m->flags || m->n_tokens)
			return KVP_EINVAL;
		return 0;
	default:
		return 0;
	}
}

int kvp_admin_req_check(const struct kvp_admin_req *m)
{
	if (m->flags & ~KVP_ADMIN_FLAGS_KNOWN)
		return KVP_EINVAL;
	if (m->tenant && !(m->flags & KVP_ADMIN_F_TENANT))
		return KVP_EINVAL;
	for (uint16_t i = 0; i < m->text_len; i++)
		if ((uint8_t)m->text[i] < 0x20)
			return KVP_EINVAL;
	if (admin_op_check(m) < 0)
		return KVP_EINVAL;
	if (m->text_len > KVP_ADMIN_TEXT_MAX)
		return KVP_ETOOBIG;
	return 0;
}

size_t kvp_admin_req_encode(uint8_t *out, size_t cap, const struct kvp_admin_req *m,
			    const uint32_t *tokens)
{
	uint8_t *p;

	if (kvp_admin_req_check(m) < 0 || cap < ADMIN_FIXED ||
	    (cap - ADMIN_FIXED) / 4 < m->n_tokens ||
	    cap - ADMIN_FIXED - (size_t)m->n_tokens * 4 < m->text_len)
		return 0;
	kvp_le_put_u32(out, m->op);
	kvp_le_put_u32(out + 4, m->flags);
	kvp_le_put_u32(out + 8, m->tenant);
	kvp_le_put_u32(out + 12, m->n_tokens);
	kvp_store_u32s(out + ADMIN_HEAD, tokens, m->n_tokens);
	p = out + ADMIN_HEAD + (size_t)m->n_tokens * 4;
	kvp_le_put_u16(p, m->text_len);
	if (m->text_len)
		memcpy(p + 2, m->text, m->text_len);
	return kvp_admin_req_size(m);
}

int kvp_admin_req_decode(const uint8_t *p, size_t n, uint32_t max_tokens,
			 struct kvp_admin_req *m)
{
	struct rd r = { p, n };
	const uint8_t *text;
	int rc;

	if (!rd_u32(&r, &m->op) || !rd_u32(&r, &m->flags) || !rd_u32(&r, &m->tenant) ||
	    !rd_u32(&r, &m->n_tokens) || !rd_u32_array(&r, m->n_tokens, &m->tokens) ||
	    !rd_u16(&r, &m->text_len) || !rd_bytes(&r, m->text_len, &text) || r.left != 0)
		return KVP_EPROTO;
	m->text = (const char *)text;
	if ((rc = kvp_admin_req_check(m)) < 0)
		return rc;
	if (m->n_tokens > max_tokens)
		return KVP_ETOOBIG;
	return 0;
}

size_t kvp_admin_reply_size(const struct kvp_admin_reply *m)
{
	return ADMIN_REPLY_FIXED + (size_t)m->text_len;
}

size_t kvp_admin_reply_encode(uint8_t *out, size_t cap, const struct kvp_admin_reply *m)
{
	if (m->text_len > KVP_ADMIN_REPLY_TEXT_MAX || cap < ADMIN_REPLY_FIXED ||
	    cap - ADMIN_REPLY_FIXED < m->text_len)
		return 0;
	kvp_le_put_u32(out, m->op);
	kvp_le_put_u32(out + 4, m->blocks);
	kvp_le_put_u32(out + 8, m->text_len);
	if (m->text_len)
		memcpy(out + ADMIN_REPLY_FIXED, m->text, m->text_len);
	return kvp_admin_reply_size(m);
}

int kvp_admin_reply_decode(const uint8_t *p, size_t n, struct kvp_admin_reply *m)
{
	struct rd r = { p, n };
	const uint8_t *text;

	if (!rd_u32(&r, &m->op) || !rd_u32(&r, &m->blocks) || !rd_u32(&r, &m->text_len) ||
	    !rd_bytes(&r, m->text_len, &text) || r.left != 0)
		return KVP_EPROTO;
	m->text = (const char *)text;
	if (m->text_len > KVP_ADMIN_REPLY_TEXT_MAX)
		return KVP_ETOOBIG;
	return 0;
}
