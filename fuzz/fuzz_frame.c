/*
 * fuzz_frame.c - libFuzzer target for the frame codec (proto/kvp_proto.h).
 *
 * The input is taken as one frame, header then payload:
 *
 *     data[0..16)   kvp_hdr_decode (with a small payload limit)
 *     data[16..)    the payload, handed to EVERY payload decoder whatever the header's
 *                   type says, so the fuzzer need not find the right type byte first
 *     (under 16 bytes: the whole input is the payload)
 *
 * The payload is copied to an exact-size heap buffer first, so a read one byte past it
 * is an ASan report. For every decoder that accepts the bytes, the decoded struct is
 * re-encoded and must give the same bytes (the encoding is canonical), the size
 * function must agree, and the encoder must refuse a buffer one byte short; any
 * mismatch aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"

#define MAX_TOKENS 64u          /* a small max_tokens, so KVP_ETOOBIG paths are reached */
#define MAX_PAYLOAD (1u << 16)  /* header payload limit */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const uint8_t *p, size_t n)
{
	fprintf(stderr, "fuzz_frame: %s (payload of %zu bytes)\n", what, n);
	abort();
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		abort();
	return p;
}

/* got (the encoder's result, in out) must equal the n input bytes p. */
static void same(const char *what, size_t got, const uint8_t *out, const uint8_t *p, size_t n)
{
	if (got != n) {
		fprintf(stderr, "fuzz_frame: %s re-encodes to %zu bytes, want %zu\n", what, got, n);
		abort();
	}
	if (n && memcmp(out, p, n) != 0)
		die(what, p, n);
}

static uint32_t *load_ids(const uint8_t *src, size_t n)
{
	uint32_t *v = xmalloc(n * sizeof(*v));

	kvp_load_u32s(v, src, n);
	return v;
}

static void check_header(const uint8_t *data, size_t size)
{
	struct kvp_frame_hdr h;
	uint8_t out[KVP_HDR_SIZE];
	int rc = kvp_hdr_decode(data, size, MAX_PAYLOAD, &h);

	if (size < KVP_HDR_SIZE) {
		if (rc != KVP_EINVAL)
			die("header: short input not refused", data, size);
		return;
	}
	if (rc != 0)
		return;
	if (h.version < KVP_PROTO_VERSION || h.version > KVP_PROTO_VERSION_MAX || h.flags != 0 ||
	    h.len > MAX_PAYLOAD || !kvp_frame_type_valid(h.version, h.type))
		die("header: accepted out-of-range fields", data, size);
	/* ADMIN and its reply exist from version 2 on */
	if ((h.type & ~KVP_T_REPLY) == KVP_T_ADMIN && h.version < KVP_PROTO_VERSION_ADMIN)
		die("header: ADMIN accepted in a version-1 header", data, size);
	kvp_hdr_encode(out, &h);
	if (memcmp(out, data, KVP_HDR_SIZE) != 0)
		die("header: round trip", data, size);
	/* a reply type is never a request, and vice versa */
	if (kvp_frame_is_request(h.type) && (h.type & KVP_T_REPLY))
		die("header: reply type taken for a request", data, size);
}

static void check_hello(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_hello m;

	if (kvp_hello_decode(p, n, &m) != 0)
		return;
	if (kvp_hello_size(&m) != n)
		die("hello: size", p, n);
	same("hello", kvp_hello_encode(out, n, &m), out, p, n);
	if (kvp_hello_encode(out, n - 1, &m) != 0)
		die("hello: short cap accepted", p, n);
}

static void check_hello_reply(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_hello_reply m;

	if (kvp_hello_reply_decode(p, n, &m) != 0)
		return;
	if (kvp_hello_reply_size(&m) != n)
		die("hello reply: size", p, n);
	same("hello reply", kvp_hello_reply_encode(out, n, &m), out, p, n);
	if (kvp_hello_reply_encode(out, n - 1, &m) != 0)
		die("hello reply: short cap accepted", p, n);
}

static void check_tokens_req(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_tokens_req m;
	uint32_t *ids;

	if (kvp_tokens_req_decode(p, n, MAX_TOKENS, &m) != 0)
		return;
	if (m.n_tokens > MAX_TOKENS || (m.flags & ~KVP_LOOKUP_FLAGS_KNOWN) || m.keep_s ||
	    m.priority || kvp_tokens_req_size(m.n_tokens) != n)
		die("tokens req: count, flags or size", p, n);
	ids = load_ids(m.tokens, m.n_tokens);
	same("tokens req", kvp_tokens_req_encode(out, n, m.flags, ids, m.n_tokens), out, p, n);
	if (kvp_tokens_req_encode(out, n - 1, m.flags, ids, m.n_tokens) != 0)
		die("tokens req: short cap accepted", p, n);
	free(ids);
}

/* INSERT's decoder: KEEP's keep_s and priority after the tokens. */
static void check_insert_req(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_tokens_req m;
	uint32_t *ids;

	if (kvp_tokens_req_decode_insert(p, n, MAX_TOKENS, &m) != 0)
		return;
	if (m.n_tokens > MAX_TOKENS || (m.flags & ~KVP_INSERT_FLAGS_KNOWN) ||
	    kvp_tokens_req_size_flags(m.n_tokens, m.flags) != n)
		die("insert req: count, flags or size", p, n);
	if ((m.flags & KVP_F_KEEP) ? m.keep_s == 0 || m.keep_s > KVP_KEEP_MAX_S
				   : m.keep_s || m.priority)
		die("insert req: keep_s or priority", p, n);
	ids = load_ids(m.tokens, m.n_tokens);
	same("insert req", kvp_tokens_req_encode_keep(out, n, m.flags, ids, m.n_tokens, m.keep_s,
						      m.priority), out, p, n);
	if (kvp_tokens_req_encode_keep(out, n - 1, m.flags, ids, m.n_tokens, m.keep_s,
				       m.priority) != 0)
		die("insert req: short cap accepted", p, n);
	free(ids);
}

static void check_blocks_reply(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_blocks_reply m;
	uint32_t *ids;

	if (kvp_blocks_reply_decode(p, n, &m) != 0)
		return;
	if (kvp_blocks_reply_size(m.n_blocks) != n)
		die("blocks reply: size", p, n);
	ids = load_ids(m.block_ids, m.n_blocks);
	same("blocks reply", kvp_blocks_reply_encode(out, n, &m, ids), out, p, n);
	if (kvp_blocks_reply_encode(out, n - 1, &m, ids) != 0)
		die("blocks reply: short cap accepted", p, n);
	free(ids);
}

static void check_scalars(const uint8_t *p, size_t n, uint8_t *out)
{
	uint64_t lease;
	uint32_t v;

	if (kvp_release_decode(p, n, &lease) == 0)
		same("release", kvp_release_encode(out, n, lease), out, p, n);
	if (kvp_u32_decode(p, n, &v) == 0)
		same("u32", kvp_u32_encode(out, n, v), out, p, n);
}

static void check_error(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_error m;
	char *msg;

	if (kvp_error_decode(p, n, &m) != 0)
		return;
	if (m.code == 0 || m.code > INT32_MAX || m.msg_len > KVP_ERROR_MSG_MAX ||
	    kvp_error_size(m.msg_len) != n)
		die("error: accepted out-of-range fields", p, n);
	/* The encoder takes a C string: a message with a NUL inside cannot round-trip. */
	if (memchr(m.msg, 0, m.msg_len))
		return;
	msg = xmalloc((size_t)m.msg_len + 1);
	memcpy(msg, m.msg, m.msg_len);
	msg[m.msg_len] = '\0';
	same("error", kvp_error_encode(out, n, -(int)m.code, msg), out, p, n);
	if (kvp_error_encode(out, n - 1, -(int)m.code, msg) != 0)
		die("error: short cap accepted", p, n);
	free(msg);
}

static void check_generate_req(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_generate_req m;
	uint32_t *stop, *toks;
	size_t head, tail;

	if (kvp_generate_req_decode(p, n, MAX_TOKENS, &m) != 0)
		return;
	if (m.n_tokens == 0 || m.n_tokens > MAX_TOKENS || m.n_stop > KVP_STOP_MAX ||
	    kvp_generate_req_size_flags(m.n_stop, m.n_tokens, m.flags) != n)
		die("generate req: counts or size", p, n);
	if ((m.flags & KVP_GEN_KEEP) ? m.keep_s == 0 || m.keep_s > KVP_KEEP_MAX_S
				     : m.keep_s || m.priority)
		die("generate req: keep_s or priority", p, n);
	stop = load_ids(m.stop, m.n_stop);
	toks = load_ids(m.tokens, m.n_tokens);
	same("generate req", kvp_generate_req_encode(out, n, &m, stop, toks), out, p, n);
	if (kvp_generate_req_encode(out, n - 1, &m, stop, toks) != 0)
		die("generate req: short cap accepted", p, n);
	/* head, tokens, tail: the tail is what follows the tokens */
	tail = kvp_generate_req_tail_size(&m);
	head = kvp_generate_req_encode_head(out, n, &m, stop);
	if (head != n - (size_t)m.n_tokens * 4 - tail || memcmp(out, p, head) != 0)
		die("generate req: head", p, n);
	if (kvp_generate_req_encode_tail(out, n, &m) != tail ||
	    (tail && memcmp(out, p + n - tail, tail) != 0))
		die("generate req: tail", p, n);
	free(stop);
	free(toks);
}

static void check_token_chunk(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_token_chunk m;
	uint32_t *ids;

	if (kvp_token_chunk_decode(p, n, &m) != 0)
		return;
	if (kvp_token_chunk_size(m.n) != n)
		die("token chunk: size", p, n);
	ids = load_ids(m.ids, m.n);
	same("token chunk", kvp_token_chunk_encode(out, n, ids, m.n), out, p, n);
	if (kvp_token_chunk_encode(out, n - 1, ids, m.n) != 0)
		die("token chunk: short cap accepted", p, n);
	free(ids);
}

static void check_generate_done(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_generate_done m;
	float *logits;

	if (kvp_generate_done_decode(p, n, &m) != 0)
		return;
	if (m.finish > KVP_FINISH_CONTEXT || kvp_generate_done_size(m.n_logits) != n)
		die("generate done: finish or size", p, n);
	logits = xmalloc((size_t)m.n_logits * sizeof(float));
	kvp_load_f32s(logits, m.logits, m.n_logits);
	same("generate done", kvp_generate_done_encode(out, n, &m, logits), out, p, n);
	if (kvp_generate_done_encode(out, n - 1, &m, logits) != 0)
		die("generate done: short cap accepted", p, n);
	free(logits);
}

static void check_admin_req(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_admin_req m;
	uint32_t *ids;

	if (kvp_admin_req_decode(p, n, MAX_TOKENS, &m) != 0)
		return;
	if (m.n_tokens > MAX_TOKENS || m.text_len > KVP_ADMIN_TEXT_MAX ||
	    (m.flags & ~KVP_ADMIN_FLAGS_KNOWN) || kvp_admin_req_check(&m) != 0 ||
	    kvp_admin_req_size(&m) != n)
		die("admin req: accepted out-of-range fields", p, n);
	for (uint16_t i = 0; i < m.text_len; i++)
		if ((uint8_t)m.text[i] < 0x20)
			die("admin req: control byte in the text", p, n);
	ids = load_ids(m.tokens, m.n_tokens);
	same("admin req", kvp_admin_req_encode(out, n, &m, ids), out, p, n);
	if (kvp_admin_req_encode(out, n - 1, &m, ids) != 0)
		die("admin req: short cap accepted", p, n);
	free(ids);
}

static void check_admin_reply(const uint8_t *p, size_t n, uint8_t *out)
{
	struct kvp_admin_reply m;

	if (kvp_admin_reply_decode(p, n, &m) != 0)
		return;
	if (m.text_len > KVP_ADMIN_REPLY_TEXT_MAX || kvp_admin_reply_size(&m) != n)
		die("admin reply: text or size", p, n);
	same("admin reply", kvp_admin_reply_encode(out, n, &m), out, p, n);
	if (kvp_admin_reply_encode(out, n - 1, &m) != 0)
		die("admin reply: short cap accepted", p, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *src = size >= KVP_HDR_SIZE ? data + KVP_HDR_SIZE : data;
	size_t n = size >= KVP_HDR_SIZE ? size - KVP_HDR_SIZE : size;
	uint8_t *p, *out;

	check_header(data, size);

	/* exact-size copies: the payload, and the encoders' output buffer */
	p = xmalloc(n);
	out = xmalloc(n);
	if (n)
		memcpy(p, src, n);
	check_hello(p, n, out);
	check_hello_reply(p, n, out);
	check_tokens_req(p, n, out);
	check_insert_req(p, n, out);
	check_blocks_reply(p, n, out);
	check_scalars(p, n, out);
	check_error(p, n, out);
	check_generate_req(p, n, out);
	check_token_chunk(p, n, out);
	check_generate_done(p, n, out);
	check_admin_req(p, n, out);
	check_admin_reply(p, n, out);
	free(out);
	free(p);
	return 0;
}
