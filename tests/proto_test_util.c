/*
 * proto_test_util.c - what the proto_*.c files of test_proto share: exact-size copies,
 * byte comparison, little-endian writers, the seeded generator, whole frames, the
 * decoders as one-argument-shape functions, and the example tokens and logits of
 * docs/protocol.md. Declared in proto_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"
#include "proto_test_util.h"

/* ---- helpers ----------------------------------------------------------------------- */

/* An exact-size heap copy: one byte past the end is outside the allocation. */
uint8_t *pt_exact(const void *p, size_t n)
{
	uint8_t *b = malloc(n ? n : 1);

	cr_assert(b);
	if (n)
		memcpy(b, p, n);
	return b;
}

void pt_assert_bytes(const uint8_t *got, size_t got_n, const uint8_t *want, size_t want_n,
		     const char *what)
{
	if (got_n == want_n && memcmp(got, want, want_n) == 0)
		return;
	for (size_t i = 0; i < (got_n > want_n ? got_n : want_n); i++) {
		if (i >= got_n || i >= want_n || got[i] != want[i]) {
			cr_assert_fail("%s: %zu bytes, want %zu; first difference at offset %zu", what,
				 got_n, want_n, i);
		}
	}
}

void pt_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

void pt_putf(uint8_t *p, float f)
{
	uint32_t bits;

	memcpy(&bits, &f, sizeof(bits));
	pt_put32(p, bits);
}

uint32_t pt_fbits(float f)
{
	uint32_t bits;

	memcpy(&bits, &f, sizeof(bits));
	return bits;
}

float pt_bitsf(uint32_t bits)
{
	float f;

	memcpy(&f, &bits, sizeof(f));
	return f;
}

void pt_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

uint64_t pt_rnd(void)
{
	/* xorshift64*: deterministic, so a failure replays */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

uint32_t pt_rnd_below(uint32_t n)
{
	return n ? (uint32_t)(pt_rnd() % n) : 0;
}

/* A whole frame: header (of this version) then payload. */
size_t pt_frame(uint8_t *out, uint8_t version, uint8_t type, uint32_t req_id,
		const uint8_t *payload, size_t n)
{
	struct kvp_frame_hdr h = { version, type, 0, req_id, (uint32_t)n };

	kvp_hdr_encode(out, &h);
	if (n)
		memcpy(out + KVP_HDR_SIZE, payload, n);
	return KVP_HDR_SIZE + n;
}

/* ---- the examples' data used beyond the examples -------------------------------------
 *
 * The 10 tokens of the index-only session of docs/protocol.md (§9), and the 8 logits of
 * its GENERATE session (§9.1); the rest of both sessions is in proto_examples.c.
 */
const uint32_t pt_ex_tokens[10] = { 128000, 791, 4062, 14198, 39935,
				    35308, 927, 279, 16053, 5679 };
const float pt_gx_logits[8] = { -1.5f, 0.25f, 2.0f, 3.5f, -0.75f, 1.0f, 0.5f, -2.0f };

/* ---- every decoder, returning only its status -------------------------------------- */

int pt_dec_hello(const uint8_t *p, size_t n)
{
	struct kvp_hello m;

	return kvp_hello_decode(p, n, &m);
}

int pt_dec_hello_reply(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	return kvp_hello_reply_decode(p, n, &m);
}

int pt_dec_tokens(const uint8_t *p, size_t n)
{
	struct kvp_tokens_req m;

	return kvp_tokens_req_decode(p, n, UINT32_MAX, &m);
}

int pt_dec_insert(const uint8_t *p, size_t n)
{
	struct kvp_tokens_req m;

	return kvp_tokens_req_decode_insert(p, n, UINT32_MAX, &m);
}

int pt_dec_blocks(const uint8_t *p, size_t n)
{
	struct kvp_blocks_reply m;

	return kvp_blocks_reply_decode(p, n, &m);
}

int pt_dec_release(const uint8_t *p, size_t n)
{
	uint64_t l;

	return kvp_release_decode(p, n, &l);
}

int pt_dec_u32(const uint8_t *p, size_t n)
{
	uint32_t v;

	return kvp_u32_decode(p, n, &v);
}

int pt_dec_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	return kvp_error_decode(p, n, &m);
}

int pt_dec_generate(const uint8_t *p, size_t n)
{
	struct kvp_generate_req m;

	return kvp_generate_req_decode(p, n, UINT32_MAX, &m);
}

int pt_dec_chunk(const uint8_t *p, size_t n)
{
	struct kvp_token_chunk m;

	return kvp_token_chunk_decode(p, n, &m);
}

int pt_dec_done(const uint8_t *p, size_t n)
{
	struct kvp_generate_done m;

	return kvp_generate_done_decode(p, n, &m);
}

int pt_dec_admin(const uint8_t *p, size_t n)
{
	struct kvp_admin_req m;

	return kvp_admin_req_decode(p, n, UINT32_MAX, &m);
}

int pt_dec_admin_reply(const uint8_t *p, size_t n)
{
	struct kvp_admin_reply m;

	return kvp_admin_reply_decode(p, n, &m);
}
