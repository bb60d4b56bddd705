/*
 * test_proto.c - the frame codec (proto/kvp_proto.h) against its contract and against
 * docs/protocol.md.
 *
 * Decoders are always handed exact-size heap copies (see exact()), so that under
 * -DKVP_SANITIZE=ON a read one byte past the payload is an ASan error, not luck.
 *
 *   examples   the hex examples of docs/protocol.md: literal bytes here, the encoder,
 *              the decoder and the page itself must all agree (all three sessions:
 *              the index-only one, the GENERATE one and the version-2 ADMIN one)
 *   roundtrip  every message, edge values, encoders refusing a short cap
 *   header     magic, versions 1 and 2 (ADMIN only in 2), flags, every type byte in
 *              every version, payload limit, short input
 *   admin      the ADMIN request's rules: reserved flags, tenant, text bytes, the
 *              fields each op takes, limits, and their precedence
 *   truncate   every message cut at every length, and with trailing bytes
 *   limits     names, messages, token counts, flags, wrapping counts, GENERATE values
 *   random     random messages round-trip; mutated frames never crash, and whatever
 *              decodes re-encodes to the same bytes (the encoding is canonical)
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvp_proto.h"

/* ---- helpers ----------------------------------------------------------------------- */

/* An exact-size heap copy: one byte past the end is outside the allocation. */
static uint8_t *exact(const void *p, size_t n)
{
	uint8_t *b = malloc(n ? n : 1);

	cr_assert(b);
	if (n)
		memcpy(b, p, n);
	return b;
}

static void assert_bytes(const uint8_t *got, size_t got_n, const uint8_t *want, size_t want_n,
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

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void putf(uint8_t *p, float f)
{
	uint32_t bits;

	memcpy(&bits, &f, sizeof(bits));
	put32(p, bits);
}

static uint32_t fbits(float f)
{
	uint32_t bits;

	memcpy(&bits, &f, sizeof(bits));
	return bits;
}

static float bitsf(uint32_t bits)
{
	float f;

	memcpy(&f, &bits, sizeof(f));
	return f;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic, so a failure replays */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint32_t rnd_below(uint32_t n)
{
	return n ? (uint32_t)(rnd() % n) : 0;
}

/* A whole frame: header (of this version) then payload. */
static size_t frame(uint8_t *out, uint8_t version, uint8_t type, uint32_t req_id,
		    const uint8_t *payload, size_t n)
{
	struct kvp_frame_hdr h = { version, type, 0, req_id, (uint32_t)n };

	kvp_hdr_encode(out, &h);
	if (n)
		memcpy(out + KVP_HDR_SIZE, payload, n);
	return KVP_HDR_SIZE + n;
}

/* ---- the examples of docs/protocol.md ----------------------------------------------------
 *
 * A session with a daemon of 4-token blocks: HELLO, INSERT 10 tokens (2 full blocks),
 * LOOKUP them with PIN, RELEASE the lease, STATS, PING, and an ERROR for a RELEASE of an
 * unknown lease.
 */
static const uint32_t ex_tokens[10] = { 128000, 791, 4062, 14198, 39935,
					35308, 927, 279, 16053, 5679 };
static const uint32_t ex_blocks[2] = { 0, 1 };
static const char ex_stats_json[] = "{\"lookups\":1,\"hit_tokens\":8}";

/* Three examples as literal bytes, copied from the page. */
static const uint8_t hex_hello[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x14, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00,
	0x73, 0x71, 0x6c, 0x2d, 0x6c, 0x6f, 0x72, 0x61, 0x00, 0x00,
};
static const uint8_t hex_lookup[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
	0x30, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
	0x00, 0xf4, 0x01, 0x00, 0x17, 0x03, 0x00, 0x00, 0xde, 0x0f, 0x00, 0x00,
	0x76, 0x37, 0x00, 0x00, 0xff, 0x9b, 0x00, 0x00, 0xec, 0x89, 0x00, 0x00,
	0x9f, 0x03, 0x00, 0x00, 0x17, 0x01, 0x00, 0x00, 0xb5, 0x3e, 0x00, 0x00,
	0x2f, 0x16, 0x00, 0x00,
};
static const uint8_t hex_lookup_reply[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x82, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
	0x20, 0x00, 0x00, 0x00,
	0x08, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
};
static const uint8_t hex_error[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0xff, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
	0x13, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x0d, 0x00,
	0x6e, 0x6f, 0x20, 0x73, 0x75, 0x63, 0x68, 0x20, 0x6c, 0x65, 0x61, 0x73, 0x65,
};

/*
 * The GENERATE session (§9.1): an engine-mode daemon with 4-token blocks and a model of
 * 8 tokens. HELLO reply, GENERATE of 6 tokens with LOGITS and stop id 7, two token
 * frames (3; 6 7), GENERATE_DONE with 8 logits, and an EFULL ERROR for another one.
 */
static const uint32_t gx_prompt[6] = { 1, 4, 2, 6, 3, 5 };
static const uint32_t gx_stop[1] = { 7 };
static const uint32_t gx_tok1[1] = { 3 };
static const uint32_t gx_tok2[2] = { 6, 7 };
static const float gx_logits[8] = { -1.5f, 0.25f, 2.0f, 3.5f, -0.75f, 1.0f, 0.5f, -2.0f };

static const uint8_t hex_generate[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x07, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x40, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x33, 0x33, 0x33, 0x3f,
	0x28, 0x00, 0x00, 0x00, 0x66, 0x66, 0x66, 0x3f,
	0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x07, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
};
static const uint8_t hex_generate_done[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x88, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x54, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xe2, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x4c, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xfc, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x08, 0x00, 0x00, 0x00,
	0x00, 0x00, 0xc0, 0xbf, 0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0x40,
	0x00, 0x00, 0x60, 0x40, 0x00, 0x00, 0x40, 0xbf, 0x00, 0x00, 0x80, 0x3f,
	0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0xc0,
};
static const uint8_t hex_generate_tokens_2[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x87, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x0c, 0x00, 0x00, 0x00,
	0x02, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
};

/*
 * The ADMIN session (§9.2): root offers version 2 in HELLO (a version-1 header) and the
 * daemon answers 2; CLEAR of tenant 1000's namespace evicts 12 blocks; the same CLEAR
 * from a peer that may not gets EPERM; CONFIG sets max-leases to 128.
 */
static const char ax_config[] = "max-leases=128";
static const char ax_config_reply[] = "max-leases = 128\n";
static const char ax_eperm[] = "not in the admin group";

static const uint8_t hex_admin_clear[] = {
	0x4b, 0x56, 0x50, 0x31, 0x02, 0x09, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x12, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xe8, 0x03, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};
static const uint8_t hex_admin_clear_reply[] = {
	0x4b, 0x56, 0x50, 0x31, 0x02, 0x89, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x0c, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};
static const uint8_t hex_admin_config_reply[] = {
	0x4b, 0x56, 0x50, 0x31, 0x02, 0x89, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
	0x1d, 0x00, 0x00, 0x00,
	0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00,
	0x6d, 0x61, 0x78, 0x2d, 0x6c, 0x65, 0x61, 0x73, 0x65, 0x73, 0x20, 0x3d,
	0x20, 0x31, 0x32, 0x38, 0x0a,
};

/* Each example: its header, how to encode its payload, how to check a decode. */
struct example {
	const char *name;
	uint8_t type;
	uint32_t req_id;
	size_t (*encode)(uint8_t *out, size_t cap);
	void (*check)(const uint8_t *p, size_t n);
	const uint8_t *literal;
	size_t literal_len;
	uint8_t version;   /* of the header */
};

static size_t enc_hello(uint8_t *out, size_t cap)
{
	struct kvp_hello m = { 1, 0, "sql-lora", 8, "", 0 };

	return kvp_hello_encode(out, cap, &m);
}

static void chk_hello(const uint8_t *p, size_t n)
{
	struct kvp_hello m;

	cr_assert_eq(kvp_hello_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 1);
	cr_assert_eq(m.flags, 0);
	cr_assert_eq(m.adapter_len, 8);
	cr_assert(memcmp(m.adapter, "sql-lora", 8) == 0);
	cr_assert_eq(m.salt_len, 0);
}

static size_t enc_hello_reply(uint8_t *out, size_t cap)
{
	struct kvp_hello_reply m = { 1, 4, 1024, 131072, KVP_HELLO_INDEX_ONLY, 1000,
				     "demo-index", 10 };

	return kvp_hello_reply_encode(out, cap, &m);
}

static void chk_hello_reply(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	cr_assert_eq(kvp_hello_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 1);
	cr_assert_eq(m.block_tokens, 4);
	cr_assert_eq(m.capacity_blocks, 1024);
	cr_assert_eq(m.max_tokens, 131072);
	cr_assert_eq(m.flags, KVP_HELLO_INDEX_ONLY);
	cr_assert_eq(m.tenant, 1000);
	cr_assert_eq(m.name_len, 10);
	cr_assert(memcmp(m.name, "demo-index", 10) == 0);
}

static void chk_tokens(const uint8_t *p, size_t n, uint32_t flags)
{
	struct kvp_tokens_req m;
	uint32_t got[10];

	cr_assert_eq(kvp_tokens_req_decode(p, n, 131072, &m), 0);
	cr_assert_eq(m.flags, flags);
	cr_assert_eq(m.n_tokens, 10);
	kvp_load_u32s(got, m.tokens, 10);
	cr_assert(memcmp(got, ex_tokens, sizeof(got)) == 0);
}

static size_t enc_insert(uint8_t *out, size_t cap)
{
	return kvp_tokens_req_encode(out, cap, 0, ex_tokens, 10);
}

static void chk_insert(const uint8_t *p, size_t n)
{
	chk_tokens(p, n, 0);
}

static size_t enc_lookup(uint8_t *out, size_t cap)
{
	return kvp_tokens_req_encode(out, cap, KVP_F_PIN, ex_tokens, 10);
}

static void chk_lookup(const uint8_t *p, size_t n)
{
	chk_tokens(p, n, KVP_F_PIN);
}

static void chk_blocks(const uint8_t *p, size_t n, uint32_t new_blocks, uint64_t lease)
{
	struct kvp_blocks_reply m;
	uint32_t ids[2];

	cr_assert_eq(kvp_blocks_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.matched_tokens, 8);
	cr_assert_eq(m.prompt_tokens, 10);
	cr_assert_eq(m.new_blocks, new_blocks);
	cr_assert_eq(m.lease, lease);
	cr_assert_eq(m.n_blocks, 2);
	kvp_load_u32s(ids, m.block_ids, 2);
	cr_assert(memcmp(ids, ex_blocks, sizeof(ids)) == 0);
}

static size_t enc_insert_reply(uint8_t *out, size_t cap)
{
	struct kvp_blocks_reply m = { 8, 10, 2, 0, 2, NULL };

	return kvp_blocks_reply_encode(out, cap, &m, ex_blocks);
}

static void chk_insert_reply(const uint8_t *p, size_t n)
{
	chk_blocks(p, n, 2, 0);
}

static size_t enc_lookup_reply(uint8_t *out, size_t cap)
{
	struct kvp_blocks_reply m = { 8, 10, 0, 1, 2, NULL };

	return kvp_blocks_reply_encode(out, cap, &m, ex_blocks);
}

static void chk_lookup_reply(const uint8_t *p, size_t n)
{
	chk_blocks(p, n, 0, 1);
}

static size_t enc_release(uint8_t *out, size_t cap)
{
	return kvp_release_encode(out, cap, 1);
}

static void chk_release(const uint8_t *p, size_t n)
{
	uint64_t lease;

	cr_assert_eq(kvp_release_decode(p, n, &lease), 0);
	cr_assert_eq(lease, 1);
}

static size_t enc_release_reply(uint8_t *out, size_t cap)
{
	return kvp_u32_encode(out, cap, 2);
}

static void chk_release_reply(const uint8_t *p, size_t n)
{
	uint32_t v;

	cr_assert_eq(kvp_u32_decode(p, n, &v), 0);
	cr_assert_eq(v, 2);
}

static size_t enc_empty(uint8_t *out, size_t cap)
{
	return 0;
}

static void chk_empty(const uint8_t *p, size_t n)
{
	cr_assert_eq(n, 0);
}

static size_t enc_stats_reply(uint8_t *out, size_t cap)
{
	size_t n = strlen(ex_stats_json);

	cr_assert(cap >= n);
	memcpy(out, ex_stats_json, n);
	return n;
}

static void chk_stats_reply(const uint8_t *p, size_t n)
{
	cr_assert_eq(n, strlen(ex_stats_json));
	cr_assert(memcmp(p, ex_stats_json, n) == 0);
}

static size_t enc_ping(uint8_t *out, size_t cap)
{
	memcpy(out, "ping", 4);
	return 4;
}

static void chk_ping(const uint8_t *p, size_t n)
{
	cr_assert_eq(n, 4);
	cr_assert(memcmp(p, "ping", 4) == 0);
}

static size_t enc_error(uint8_t *out, size_t cap)
{
	return kvp_error_encode(out, cap, KVP_ENOTFOUND, "no such lease");
}

static void chk_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	cr_assert_eq(kvp_error_decode(p, n, &m), 0);
	cr_assert_eq(m.code, 6);
	cr_assert_eq(m.msg_len, 13);
	cr_assert(memcmp(m.msg, "no such lease", 13) == 0);
}

static size_t enc_hello_reply_engine(uint8_t *out, size_t cap)
{
	struct kvp_hello_reply m = { 1, 4, 1024, 2048, 0, 1000, "tiny-llama", 10 };

	return kvp_hello_reply_encode(out, cap, &m);
}

static void chk_hello_reply_engine(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	cr_assert_eq(kvp_hello_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 1);
	cr_assert_eq(m.block_tokens, 4);
	cr_assert_eq(m.capacity_blocks, 1024);
	cr_assert_eq(m.max_tokens, 2048);
	cr_assert_eq(m.flags, 0, "engine mode: INDEX_ONLY clear");
	cr_assert_eq(m.tenant, 1000);
	cr_assert_eq(m.name_len, 10);
	cr_assert(memcmp(m.name, "tiny-llama", 10) == 0);
}

static size_t enc_generate(uint8_t *out, size_t cap)
{
	struct kvp_generate_req m = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 1, NULL, 6, NULL };

	return kvp_generate_req_encode(out, cap, &m, gx_stop, gx_prompt);
}

static void chk_generate(const uint8_t *p, size_t n)
{
	struct kvp_generate_req m;
	uint32_t got[6];

	cr_assert_eq(kvp_generate_req_decode(p, n, 2048, &m), 0);
	cr_assert_eq(m.flags, KVP_GEN_LOGITS);
	cr_assert_eq(m.max_new, 8);
	cr_assert_eq(fbits(m.temperature), 0x3f333333u);
	cr_assert_eq(m.temperature, 0.7f);
	cr_assert_eq(m.top_k, 40);
	cr_assert_eq(fbits(m.top_p), 0x3f666666u);
	cr_assert_eq(m.seed, 42);
	cr_assert_eq(m.n_stop, 1);
	kvp_load_u32s(got, m.stop, 1);
	cr_assert_eq(got[0], 7);
	cr_assert_eq(m.n_tokens, 6);
	kvp_load_u32s(got, m.tokens, 6);
	cr_assert(memcmp(got, gx_prompt, sizeof(got)) == 0);
}

static void chk_chunk(const uint8_t *p, size_t n, const uint32_t *want, uint32_t count)
{
	struct kvp_token_chunk m;
	uint32_t got[2];

	cr_assert_eq(kvp_token_chunk_decode(p, n, &m), 0);
	cr_assert_eq(m.n, count);
	kvp_load_u32s(got, m.ids, count);
	cr_assert(memcmp(got, want, count * sizeof(uint32_t)) == 0);
}

static size_t enc_generate_tokens(uint8_t *out, size_t cap)
{
	return kvp_token_chunk_encode(out, cap, gx_tok1, 1);
}

static void chk_generate_tokens(const uint8_t *p, size_t n)
{
	chk_chunk(p, n, gx_tok1, 1);
}

static size_t enc_generate_tokens_2(uint8_t *out, size_t cap)
{
	return kvp_token_chunk_encode(out, cap, gx_tok2, 2);
}

static void chk_generate_tokens_2(const uint8_t *p, size_t n)
{
	chk_chunk(p, n, gx_tok2, 2);
}

static size_t enc_generate_done(uint8_t *out, size_t cap)
{
	struct kvp_generate_done m = { 6, 4, 2, 3, KVP_FINISH_STOP, 1250, 1100, 2300, 8, NULL };

	return kvp_generate_done_encode(out, cap, &m, gx_logits);
}

static void chk_generate_done(const uint8_t *p, size_t n)
{
	struct kvp_generate_done m;
	float got[8];

	cr_assert_eq(kvp_generate_done_decode(p, n, &m), 0);
	cr_assert_eq(m.prompt_tokens, 6);
	cr_assert_eq(m.cached_tokens, 4);
	cr_assert_eq(m.computed_tokens, 2);
	cr_assert_eq(m.generated_tokens, 3);
	cr_assert_eq(m.finish, KVP_FINISH_STOP);
	cr_assert_eq(m.ttft_us, 1250);
	cr_assert_eq(m.prefill_us, 1100);
	cr_assert_eq(m.decode_us, 2300);
	cr_assert_eq(m.n_logits, 8);
	kvp_load_f32s(got, m.logits, 8);
	cr_assert(memcmp(got, gx_logits, sizeof(got)) == 0);
}

static size_t enc_generate_error(uint8_t *out, size_t cap)
{
	return kvp_error_encode(out, cap, KVP_EFULL, "pool full of pinned blocks");
}

static void chk_generate_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	cr_assert_eq(kvp_error_decode(p, n, &m), 0);
	cr_assert_eq(m.code, 5);
	cr_assert_eq(m.msg_len, 26);
	cr_assert(memcmp(m.msg, "pool full of pinned blocks", 26) == 0);
}

static size_t enc_hello_v2(uint8_t *out, size_t cap)
{
	struct kvp_hello m = { 2, 0, "", 0, "", 0 };

	return kvp_hello_encode(out, cap, &m);
}

static void chk_hello_v2(const uint8_t *p, size_t n)
{
	struct kvp_hello m;

	cr_assert_eq(kvp_hello_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 2, "the client offers version 2");
	cr_assert_eq(m.flags, 0);
	cr_assert_eq(m.adapter_len, 0);
	cr_assert_eq(m.salt_len, 0);
}

static size_t enc_hello_reply_v2(uint8_t *out, size_t cap)
{
	struct kvp_hello_reply m = { 2, 4, 1024, 131072, KVP_HELLO_INDEX_ONLY, 0,
				     "demo-index", 10 };

	return kvp_hello_reply_encode(out, cap, &m);
}

static void chk_hello_reply_v2(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	cr_assert_eq(kvp_hello_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 2, "min(offer 2, daemon 2)");
	cr_assert_eq(m.block_tokens, 4);
	cr_assert_eq(m.capacity_blocks, 1024);
	cr_assert_eq(m.max_tokens, 131072);
	cr_assert_eq(m.flags, KVP_HELLO_INDEX_ONLY);
	cr_assert_eq(m.tenant, 0, "root");
	cr_assert_eq(m.name_len, 10);
	cr_assert(memcmp(m.name, "demo-index", 10) == 0);
}

static size_t enc_admin_clear(uint8_t *out, size_t cap)
{
	struct kvp_admin_req m = { KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 1000, 0, NULL, 0, NULL };

	return kvp_admin_req_encode(out, cap, &m, NULL);
}

static void chk_admin_clear(const uint8_t *p, size_t n)
{
	struct kvp_admin_req m;

	cr_assert_eq(kvp_admin_req_decode(p, n, 131072, &m), 0);
	cr_assert_eq(m.op, KVP_ADMIN_CLEAR);
	cr_assert_eq(m.flags, KVP_ADMIN_F_TENANT);
	cr_assert_eq(m.tenant, 1000);
	cr_assert_eq(m.n_tokens, 0);
	cr_assert_eq(m.text_len, 0);
}

static size_t enc_admin_clear_reply(uint8_t *out, size_t cap)
{
	struct kvp_admin_reply m = { KVP_ADMIN_CLEAR, 12, 0, NULL };

	return kvp_admin_reply_encode(out, cap, &m);
}

static void chk_admin_clear_reply(const uint8_t *p, size_t n)
{
	struct kvp_admin_reply m;

	cr_assert_eq(kvp_admin_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.op, KVP_ADMIN_CLEAR);
	cr_assert_eq(m.blocks, 12);
	cr_assert_eq(m.text_len, 0);
}

static size_t enc_admin_error(uint8_t *out, size_t cap)
{
	return kvp_error_encode(out, cap, KVP_EPERM, ax_eperm);
}

static void chk_admin_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	cr_assert_eq(kvp_error_decode(p, n, &m), 0);
	cr_assert_eq(m.code, 12);
	cr_assert_eq(m.msg_len, strlen(ax_eperm));
	cr_assert(memcmp(m.msg, ax_eperm, m.msg_len) == 0);
}

static size_t enc_admin_config(uint8_t *out, size_t cap)
{
	struct kvp_admin_req m = { KVP_ADMIN_CONFIG, 0, 0, 0, NULL,
				   (uint16_t)strlen(ax_config), ax_config };

	return kvp_admin_req_encode(out, cap, &m, NULL);
}

static void chk_admin_config(const uint8_t *p, size_t n)
{
	struct kvp_admin_req m;

	cr_assert_eq(kvp_admin_req_decode(p, n, 131072, &m), 0);
	cr_assert_eq(m.op, KVP_ADMIN_CONFIG);
	cr_assert_eq(m.flags, 0);
	cr_assert_eq(m.tenant, 0);
	cr_assert_eq(m.n_tokens, 0);
	cr_assert_eq(m.text_len, strlen(ax_config));
	cr_assert(memcmp(m.text, ax_config, m.text_len) == 0);
}

static size_t enc_admin_config_reply(uint8_t *out, size_t cap)
{
	struct kvp_admin_reply m = { KVP_ADMIN_CONFIG, 0, (uint32_t)strlen(ax_config_reply),
				     ax_config_reply };

	return kvp_admin_reply_encode(out, cap, &m);
}

static void chk_admin_config_reply(const uint8_t *p, size_t n)
{
	struct kvp_admin_reply m;

	cr_assert_eq(kvp_admin_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.op, KVP_ADMIN_CONFIG);
	cr_assert_eq(m.blocks, 0);
	cr_assert_eq(m.text_len, strlen(ax_config_reply));
	cr_assert(memcmp(m.text, ax_config_reply, m.text_len) == 0);
}

static const struct example examples[] = {
	{ "hello", KVP_T_HELLO, 1, enc_hello, chk_hello, hex_hello, sizeof(hex_hello), 1 },
	{ "hello_reply", KVP_T_HELLO | KVP_T_REPLY, 1, enc_hello_reply, chk_hello_reply, NULL, 0,
	  1 },
	{ "insert", KVP_T_INSERT, 2, enc_insert, chk_insert, NULL, 0, 1 },
	{ "insert_reply", KVP_T_INSERT | KVP_T_REPLY, 2, enc_insert_reply, chk_insert_reply,
	  NULL, 0, 1 },
	{ "lookup", KVP_T_LOOKUP, 3, enc_lookup, chk_lookup, hex_lookup, sizeof(hex_lookup), 1 },
	{ "lookup_reply", KVP_T_LOOKUP | KVP_T_REPLY, 3, enc_lookup_reply, chk_lookup_reply,
	  hex_lookup_reply, sizeof(hex_lookup_reply), 1 },
	{ "release", KVP_T_RELEASE, 4, enc_release, chk_release, NULL, 0, 1 },
	{ "release_reply", KVP_T_RELEASE | KVP_T_REPLY, 4, enc_release_reply, chk_release_reply,
	  NULL, 0, 1 },
	{ "stats", KVP_T_STATS, 5, enc_empty, chk_empty, NULL, 0, 1 },
	{ "stats_reply", KVP_T_STATS | KVP_T_REPLY, 5, enc_stats_reply, chk_stats_reply, NULL, 0,
	  1 },
	{ "ping", KVP_T_PING, 6, enc_ping, chk_ping, NULL, 0, 1 },
	{ "pong", KVP_T_PING | KVP_T_REPLY, 6, enc_ping, chk_ping, NULL, 0, 1 },
	{ "error", KVP_T_ERROR, 7, enc_error, chk_error, hex_error, sizeof(hex_error), 1 },
	{ "hello_reply_engine", KVP_T_HELLO | KVP_T_REPLY, 1, enc_hello_reply_engine,
	  chk_hello_reply_engine, NULL, 0, 1 },
	{ "generate", KVP_T_GENERATE, 2, enc_generate, chk_generate, hex_generate,
	  sizeof(hex_generate), 1 },
	{ "generate_tokens", KVP_T_GENERATE | KVP_T_REPLY, 2, enc_generate_tokens,
	  chk_generate_tokens, NULL, 0, 1 },
	{ "generate_tokens_2", KVP_T_GENERATE | KVP_T_REPLY, 2, enc_generate_tokens_2,
	  chk_generate_tokens_2, hex_generate_tokens_2, sizeof(hex_generate_tokens_2), 1 },
	{ "generate_done", KVP_T_GENERATE_DONE, 2, enc_generate_done, chk_generate_done,
	  hex_generate_done, sizeof(hex_generate_done), 1 },
	{ "generate_error", KVP_T_ERROR, 3, enc_generate_error, chk_generate_error, NULL, 0, 1 },
	{ "hello_v2", KVP_T_HELLO, 1, enc_hello_v2, chk_hello_v2, NULL, 0, 1 },
	{ "hello_reply_v2", KVP_T_HELLO | KVP_T_REPLY, 1, enc_hello_reply_v2, chk_hello_reply_v2,
	  NULL, 0, 1 },
	{ "admin_clear", KVP_T_ADMIN, 2, enc_admin_clear, chk_admin_clear, hex_admin_clear,
	  sizeof(hex_admin_clear), 2 },
	{ "admin_clear_reply", KVP_T_ADMIN | KVP_T_REPLY, 2, enc_admin_clear_reply,
	  chk_admin_clear_reply, hex_admin_clear_reply, sizeof(hex_admin_clear_reply), 2 },
	{ "admin_error", KVP_T_ERROR, 2, enc_admin_error, chk_admin_error, NULL, 0, 2 },
	{ "admin_config", KVP_T_ADMIN, 3, enc_admin_config, chk_admin_config, NULL, 0, 2 },
	{ "admin_config_reply", KVP_T_ADMIN | KVP_T_REPLY, 3, enc_admin_config_reply,
	  chk_admin_config_reply, hex_admin_config_reply, sizeof(hex_admin_config_reply), 2 },
};
#define N_EXAMPLES (sizeof(examples) / sizeof(examples[0]))

static size_t example_frame(const struct example *ex, uint8_t *out, size_t cap)
{
	uint8_t payload[256];
	size_t n = ex->encode(payload, sizeof(payload));

	cr_assert(cap >= KVP_HDR_SIZE + n);
	return frame(out, ex->version, ex->type, ex->req_id, payload, n);
}

/* Decode a whole frame from an exact-size copy and check it. */
static void example_decode(const struct example *ex, const uint8_t *bytes, size_t n)
{
	uint8_t *b = exact(bytes, n);
	struct kvp_frame_hdr h;

	cr_assert_eq(kvp_hdr_decode(b, n, UINT32_MAX, &h), 0, "%s: header", ex->name);
	cr_assert_eq(h.version, ex->version, "%s: version", ex->name);
	cr_assert_eq(h.type, ex->type, "%s: type", ex->name);
	cr_assert_eq(h.flags, 0);
	cr_assert_eq(h.req_id, ex->req_id, "%s: req_id", ex->name);
	cr_assert_eq(h.len, n - KVP_HDR_SIZE, "%s: len", ex->name);
	ex->check(b + KVP_HDR_SIZE, h.len);
	free(b);
}

Test(examples, literal_bytes_match_encoder_and_decoder)
{
	int literals = 0;

	for (size_t i = 0; i < N_EXAMPLES; i++) {
		const struct example *ex = &examples[i];
		uint8_t buf[512];
		size_t n;

		if (!ex->literal)
			continue;
		literals++;
		n = example_frame(ex, buf, sizeof(buf));
		assert_bytes(buf, n, ex->literal, ex->literal_len, ex->name);
		example_decode(ex, ex->literal, ex->literal_len);
	}
	cr_assert_geq(literals, 10);
}

/* The hex blocks of protocol.md: `<!-- example: NAME -->`, then a ```text fence of lines
 * `hex bytes  # comment`. */
static size_t doc_example(const char *doc, const char *name, uint8_t *out, size_t cap)
{
	char marker[64];
	const char *p, *end;
	size_t n = 0;

	snprintf(marker, sizeof(marker), "<!-- example: %s -->", name);
	p = strstr(doc, marker);
	cr_assert(p, "protocol.md has no example \"%s\"", name);
	p = strstr(p, "```text\n");
	cr_assert(p, "example \"%s\": no ```text block", name);
	p += 8;
	end = strstr(p, "```");
	cr_assert(end);
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *hash;

		if (!eol)
			eol = end;
		hash = memchr(p, '#', (size_t)(eol - p));
		if (!hash)
			hash = eol;
		for (const char *q = p; q < hash;) {
			unsigned v;

			if (*q == ' ') {
				q++;
				continue;
			}
			cr_assert(hash - q >= 2 && sscanf(q, "%2x", &v) == 1,
				  "example \"%s\": bad hex near \"%.10s\"", name, q);
			cr_assert(n < cap);
			out[n++] = (uint8_t)v;
			q += 2;
		}
		p = eol + 1;
	}
	return n;
}

static char *read_doc(void)
{
	FILE *f = fopen(KVP_DOCS_DIR "/protocol.md", "rb");
	char *s;
	long len;

	cr_assert(f, "cannot open %s", KVP_DOCS_DIR "/protocol.md");
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	s = malloc((size_t)len + 1);
	cr_assert(s);
	cr_assert_eq(fread(s, 1, (size_t)len, f), (size_t)len);
	s[len] = '\0';
	fclose(f);
	return s;
}

Test(examples, protocol_md_matches_encoder)
{
	char *doc = read_doc();
	size_t in_doc = 0;

	for (size_t i = 0; i < N_EXAMPLES; i++) {
		const struct example *ex = &examples[i];
		uint8_t want[512], got[512];
		size_t wn = example_frame(ex, want, sizeof(want));
		size_t gn = doc_example(doc, ex->name, got, sizeof(got));

		assert_bytes(got, gn, want, wn, ex->name);
		example_decode(ex, got, gn);
	}
	/* And no example on the page goes unchecked. */
	for (const char *p = doc; (p = strstr(p, "<!-- example: ")); p++)
		in_doc++;
	cr_assert_eq(in_doc, N_EXAMPLES, "protocol.md has %zu examples, the test knows %zu",
		     in_doc, N_EXAMPLES);
	free(doc);
}

/* ---- round trips ---------------------------------------------------------------------------- */

Test(roundtrip, hello)
{
	static char big[KVP_NAME_MAX];
	struct kvp_hello cases[] = {
		{ 1, 0, "", 0, "", 0 },
		{ 1, 0, "a", 1, "tenant-7", 8 },
		{ 0xFFFFFFFFu, 0, big, KVP_NAME_MAX, big, KVP_NAME_MAX },
	};

	memset(big, 'x', sizeof(big));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kvp_hello *in = &cases[i];
		size_t sz = kvp_hello_size(in);
		uint8_t *b = malloc(sz);
		struct kvp_hello out;

		cr_assert_eq(kvp_hello_encode(b, sz - 1, in), 0, "short cap must fail");
		cr_assert_eq(kvp_hello_encode(b, sz, in), sz);
		cr_assert_eq(sz, 12u + in->adapter_len + in->salt_len);
		cr_assert_eq(kvp_hello_decode(b, sz, &out), 0);
		cr_assert_eq(out.version, in->version);
		cr_assert_eq(out.flags, in->flags);
		cr_assert_eq(out.adapter_len, in->adapter_len);
		cr_assert_eq(out.salt_len, in->salt_len);
		cr_assert(memcmp(out.adapter, in->adapter, in->adapter_len) == 0);
		cr_assert(memcmp(out.salt, in->salt, in->salt_len) == 0);
		/* Strings point into the input, as the header says. */
		cr_assert((const uint8_t *)out.adapter == b + 10);
		free(b);
	}
}

Test(roundtrip, hello_reply)
{
	static char big[KVP_NAME_MAX];
	struct kvp_hello_reply cases[] = {
		{ 1, 16, 65536, 131072, 0, 0, "", 0 },
		{ 1, 1, 1, 1, KVP_HELLO_INDEX_ONLY, 4294967295u, "m", 1 },
		{ 7, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0, 12345, big, KVP_NAME_MAX },
	};

	memset(big, 'n', sizeof(big));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kvp_hello_reply *in = &cases[i];
		size_t sz = kvp_hello_reply_size(in);
		uint8_t *b = malloc(sz);
		struct kvp_hello_reply out;

		cr_assert_eq(sz, 26u + in->name_len);
		cr_assert_eq(kvp_hello_reply_encode(b, sz - 1, in), 0);
		cr_assert_eq(kvp_hello_reply_encode(b, sz, in), sz);
		cr_assert_eq(kvp_hello_reply_decode(b, sz, &out), 0);
		cr_assert_eq(out.version, in->version);
		cr_assert_eq(out.block_tokens, in->block_tokens);
		cr_assert_eq(out.capacity_blocks, in->capacity_blocks);
		cr_assert_eq(out.max_tokens, in->max_tokens);
		cr_assert_eq(out.flags, in->flags);
		cr_assert_eq(out.tenant, in->tenant);
		cr_assert_eq(out.name_len, in->name_len);
		cr_assert(memcmp(out.name, in->name, in->name_len) == 0);
		free(b);
	}
}

Test(roundtrip, tokens_req)
{
	static const uint32_t counts[] = { 0, 1, 3, 2048, 131072 };

	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		uint32_t n = counts[c];
		uint32_t *t = malloc((n ? n : 1) * sizeof(uint32_t));
		uint32_t *back = malloc((n ? n : 1) * sizeof(uint32_t));
		size_t sz = kvp_tokens_req_size(n);
		uint8_t *b = malloc(sz);
		struct kvp_tokens_req m;

		for (uint32_t i = 0; i < n; i++)
			t[i] = (uint32_t)rnd();
		cr_assert_eq(sz, 8u + 4u * (size_t)n);
		cr_assert_eq(kvp_tokens_req_encode(b, sz - 1, KVP_F_PIN, t, n), 0);
		cr_assert_eq(kvp_tokens_req_encode(b, sz, KVP_F_PIN, t, n), sz);
		cr_assert_eq(kvp_tokens_req_decode(b, sz, n, &m), 0);
		cr_assert_eq(m.flags, KVP_F_PIN);
		cr_assert_eq(m.n_tokens, n);
		cr_assert(m.tokens == b + 8);
		kvp_load_u32s(back, m.tokens, n);
		cr_assert(memcmp(back, t, (size_t)n * 4) == 0);
		/* Little-endian on the wire, whatever the host. */
		if (n)
			cr_assert_eq(b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24, t[0]);
		free(b);
		free(back);
		free(t);
	}
}

Test(roundtrip, blocks_reply)
{
	static const uint32_t counts[] = { 0, 1, 128, 8192 };

	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		uint32_t n = counts[c];
		uint32_t *ids = malloc((n ? n : 1) * sizeof(uint32_t));
		uint32_t *back = malloc((n ? n : 1) * sizeof(uint32_t));
		struct kvp_blocks_reply in = { n * 16, n * 16 + 5, n / 2, 0x0102030405060708ull, n,
					       NULL };
		struct kvp_blocks_reply out;
		size_t sz = kvp_blocks_reply_size(n);
		uint8_t *b = malloc(sz);

		for (uint32_t i = 0; i < n; i++)
			ids[i] = (uint32_t)rnd();
		cr_assert_eq(sz, 24u + 4u * (size_t)n);
		cr_assert_eq(kvp_blocks_reply_encode(b, sz - 1, &in, ids), 0);
		cr_assert_eq(kvp_blocks_reply_encode(b, sz, &in, ids), sz);
		/* lease: u64 little-endian at offset 12 */
		cr_assert_eq(b[12], 0x08);
		cr_assert_eq(b[19], 0x01);
		cr_assert_eq(kvp_blocks_reply_decode(b, sz, &out), 0);
		cr_assert_eq(out.matched_tokens, in.matched_tokens);
		cr_assert_eq(out.prompt_tokens, in.prompt_tokens);
		cr_assert_eq(out.new_blocks, in.new_blocks);
		cr_assert_eq(out.lease, in.lease);
		cr_assert_eq(out.n_blocks, n);
		kvp_load_u32s(back, out.block_ids, n);
		cr_assert(memcmp(back, ids, (size_t)n * 4) == 0);
		free(b);
		free(back);
		free(ids);
	}
}

Test(roundtrip, release_and_u32)
{
	static const uint64_t leases[] = { 0, 1, 0xFFFFFFFFull, 0x8000000000000001ull, UINT64_MAX };
	uint8_t *b = malloc(8);

	for (size_t i = 0; i < sizeof(leases) / sizeof(leases[0]); i++) {
		uint64_t l;

		cr_assert_eq(kvp_release_encode(b, 7, leases[i]), 0);
		cr_assert_eq(kvp_release_encode(b, 8, leases[i]), 8);
		cr_assert_eq(kvp_release_decode(b, 8, &l), 0);
		cr_assert_eq(l, leases[i]);
	}
	free(b);

	b = malloc(4);
	for (uint32_t v = 0; v < 5; v++) {
		uint32_t x = v * 0x40000001u, got;

		cr_assert_eq(kvp_u32_encode(b, 3, x), 0);
		cr_assert_eq(kvp_u32_encode(b, 4, x), 4);
		cr_assert_eq(kvp_u32_decode(b, 4, &got), 0);
		cr_assert_eq(got, x);
	}
	free(b);
}

Test(roundtrip, error_every_status)
{
	for (int s = KVP_EINTERNAL; s <= KVP_ENOMEM; s++) {
		const char *msg = kvp_strerror(s);
		size_t sz = kvp_error_size(strlen(msg));
		uint8_t *b = malloc(sz);
		struct kvp_error m;

		cr_assert_eq(kvp_error_encode(b, sz - 1, s, msg), 0);
		cr_assert_eq(kvp_error_encode(b, sz, s, msg), sz);
		cr_assert_eq(kvp_error_decode(b, sz, &m), 0);
		cr_assert_eq(m.code, (uint32_t)-s, "code is the positive status");
		cr_assert_eq(m.msg_len, strlen(msg));
		cr_assert(memcmp(m.msg, msg, m.msg_len) == 0);
		free(b);
	}
}

Test(roundtrip, error_positive_status_and_empty_message)
{
	uint8_t b[6];
	struct kvp_error m;

	/* A positive status is taken as the code itself; NULL is an empty message. */
	cr_assert_eq(kvp_error_encode(b, sizeof(b), 12, NULL), 6);
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	cr_assert_eq(m.code, 12);
	cr_assert_eq(m.msg_len, 0);
	cr_assert_eq(kvp_error_encode(b, sizeof(b), KVP_EPERM, ""), 6);
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	cr_assert_eq(m.code, 12);
	/* 0 is not an error. */
	cr_assert_eq(kvp_error_encode(b, sizeof(b), 0, "ok"), 0);
	cr_assert_eq(kvp_error_size(0), 6);
}

Test(roundtrip, load_store_u32s_any_alignment)
{
	uint32_t src[67], dst[67];
	uint8_t raw[4 * 67 + 8];

	for (size_t i = 0; i < 67; i++)
		src[i] = (uint32_t)rnd();
	for (size_t off = 0; off < 8; off++) {
		memset(dst, 0, sizeof(dst));
		kvp_store_u32s(raw + off, src, 67);
		cr_assert_eq(raw[off], (uint8_t)src[0]);
		cr_assert_eq(raw[off + 3], (uint8_t)(src[0] >> 24));
		kvp_load_u32s(dst, raw + off, 67);
		cr_assert(memcmp(dst, src, sizeof(src)) == 0);
	}
	/* n == 0 touches nothing, not even NULL */
	kvp_load_u32s(NULL, NULL, 0);
	kvp_store_u32s(NULL, NULL, 0);
}

Test(roundtrip, load_store_f32s_bits_exact)
{
	/* NaN payloads, infinities, -0 and denormals travel as their exact bits. */
	static const uint32_t bits[] = { 0x00000000u, 0x80000000u, 0x3f800000u, 0x7f800000u,
					 0xff800000u, 0x7fc00001u, 0x7fa00000u, 0xffffffffu,
					 0x00000001u, 0x807fffffu, 0x7f7fffffu };
	enum { N = sizeof(bits) / sizeof(bits[0]) };
	float src[N], dst[N];
	uint8_t raw[4 * N + 8];

	for (size_t i = 0; i < N; i++)
		src[i] = bitsf(bits[i]);
	for (size_t off = 0; off < 8; off++) {
		memset(dst, 0, sizeof(dst));
		kvp_store_f32s(raw + off, src, N);
		cr_assert_eq(raw[off + 2], 0x00);
		cr_assert_eq(raw[off + 4 + 3], 0x80, "little-endian sign byte last");
		kvp_load_f32s(dst, raw + off, N);
		for (size_t i = 0; i < N; i++)
			cr_assert_eq(fbits(dst[i]), bits[i], "value %zu at offset %zu", i, off);
	}
	kvp_load_f32s(NULL, NULL, 0);
	kvp_store_f32s(NULL, NULL, 0);
}

/* Encode m (ids from stop / tokens) into an exact-size buffer, check the layout and
 * decode it back. */
static void generate_roundtrip_one(const struct kvp_generate_req *in, const uint32_t *stop,
				   const uint32_t *tokens)
{
	size_t sz = kvp_generate_req_size(in->n_stop, in->n_tokens);
	size_t head = 36 + 4 * (size_t)in->n_stop;
	uint8_t *b = malloc(sz), *h = malloc(head);
	uint32_t *back = malloc(((size_t)in->n_stop + in->n_tokens + 1) * sizeof(uint32_t));
	struct kvp_generate_req out;

	cr_assert_eq(sz, 36u + 4u * ((size_t)in->n_stop + in->n_tokens));
	cr_assert_eq(kvp_generate_req_encode(b, sz - 1, in, stop, tokens), 0, "short cap");
	cr_assert_eq(kvp_generate_req_encode(b, sz, in, stop, tokens), sz);
	/* The head is the payload's first bytes, and needs only their room. */
	cr_assert_eq(kvp_generate_req_encode_head(h, head - 1, in, stop), 0);
	cr_assert_eq(kvp_generate_req_encode_head(h, head, in, stop), head);
	cr_assert(memcmp(h, b, head) == 0);
	/* Fixed offsets of docs/protocol.md §4.9. */
	cr_assert_eq(b[4] | b[5] << 8 | b[6] << 16 | (uint32_t)b[7] << 24, in->max_new);
	cr_assert_eq(b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24, fbits(in->temperature));
	cr_assert_eq(b[20], (uint8_t)in->seed);
	cr_assert_eq(b[27], (uint8_t)(in->seed >> 56));

	cr_assert_eq(kvp_generate_req_decode(b, sz, in->n_tokens, &out), 0);
	cr_assert_eq(out.flags, in->flags);
	cr_assert_eq(out.max_new, in->max_new);
	cr_assert_eq(fbits(out.temperature), fbits(in->temperature));
	cr_assert_eq(out.top_k, in->top_k);
	cr_assert_eq(fbits(out.top_p), fbits(in->top_p));
	cr_assert_eq(out.seed, in->seed);
	cr_assert_eq(out.n_stop, in->n_stop);
	cr_assert_eq(out.n_tokens, in->n_tokens);
	cr_assert(out.stop == b + 32);
	cr_assert(out.tokens == b + head);
	kvp_load_u32s(back, out.stop, out.n_stop);
	cr_assert(in->n_stop == 0 || memcmp(back, stop, (size_t)in->n_stop * 4) == 0);
	kvp_load_u32s(back, out.tokens, out.n_tokens);
	cr_assert(memcmp(back, tokens, (size_t)in->n_tokens * 4) == 0);
	free(back);
	free(h);
	free(b);
}

Test(roundtrip, generate_req)
{
	static uint32_t stop[KVP_STOP_MAX], toks[4096];
	struct kvp_generate_req cases[] = {
		{ 0, 16, 0.0f, 0, 1.0f, 0, 0, NULL, 1, NULL },
		{ KVP_GEN_LOGITS, 0, 0.7f, 40, 0.9f, 42, 1, NULL, 6, NULL },
		{ 0, KVP_GEN_MAX_NEW, FLT_MAX, UINT32_MAX, FLT_MIN, UINT64_MAX, KVP_STOP_MAX, NULL,
		  4096, NULL },
		/* -0 is >= 0; the smallest denormal is > 0 */
		{ KVP_GEN_LOGITS, 1, -0.0f, 1, bitsf(1), 0x0102030405060708ull, 3, NULL, 17, NULL },
		{ 0, 5, bitsf(1), 0, bitsf(0x3f7fffffu), 7, 0, NULL, 2, NULL },   /* top_p just below 1 */
	};

	for (size_t i = 0; i < KVP_STOP_MAX; i++)
		stop[i] = (uint32_t)rnd();
	for (size_t i = 0; i < 4096; i++)
		toks[i] = (uint32_t)rnd();
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		generate_roundtrip_one(&cases[i], stop, toks);
}

Test(roundtrip, token_chunk)
{
	static const uint32_t counts[] = { 0, 1, 2, 1000 };

	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		uint32_t n = counts[c];
		uint32_t *ids = malloc((n ? n : 1) * sizeof(uint32_t));
		uint32_t *back = malloc((n ? n : 1) * sizeof(uint32_t));
		size_t sz = kvp_token_chunk_size(n);
		uint8_t *b = malloc(sz);
		struct kvp_token_chunk m;

		for (uint32_t i = 0; i < n; i++)
			ids[i] = (uint32_t)rnd();
		cr_assert_eq(sz, 4u + 4u * (size_t)n);
		cr_assert_eq(kvp_token_chunk_encode(b, sz - 1, ids, n), 0);
		cr_assert_eq(kvp_token_chunk_encode(b, sz, ids, n), sz);
		cr_assert_eq(kvp_token_chunk_decode(b, sz, &m), 0);
		cr_assert_eq(m.n, n);
		cr_assert(m.ids == b + 4);
		kvp_load_u32s(back, m.ids, n);
		cr_assert(memcmp(back, ids, (size_t)n * 4) == 0);
		free(b);
		free(back);
		free(ids);
	}
}

Test(roundtrip, generate_done_with_and_without_logits)
{
	static const uint32_t counts[] = { 0, 1, 8, 151936 };

	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		uint32_t n = counts[c];
		float *lg = malloc((n ? n : 1) * sizeof(float));
		float *back = malloc((n ? n : 1) * sizeof(float));
		struct kvp_generate_done in = { 1000 + n, 992, 8 + n, 16, (uint32_t)(c % 3),
						0x1122334455667788ull, 1, UINT64_MAX, n, NULL };
		struct kvp_generate_done out;
		size_t sz = kvp_generate_done_size(n);
		uint8_t *b = malloc(sz);

		/* any bits: logits can be -inf (masked) or anything else */
		for (uint32_t i = 0; i < n; i++)
			lg[i] = i % 97 == 5 ? -INFINITY : bitsf((uint32_t)rnd());
		cr_assert_eq(sz, 52u + 4u * (size_t)n);
		cr_assert_eq(kvp_generate_done_encode(b, sz - 1, &in, lg), 0);
		cr_assert_eq(kvp_generate_done_encode(b, sz, &in, lg), sz);
		/* reserved at 20, zero; ttft_us at 24, little-endian */
		cr_assert(b[20] == 0 && b[21] == 0 && b[22] == 0 && b[23] == 0);
		cr_assert_eq(b[24], 0x88);
		cr_assert_eq(b[31], 0x11);
		cr_assert_eq(kvp_generate_done_decode(b, sz, &out), 0);
		cr_assert_eq(out.prompt_tokens, in.prompt_tokens);
		cr_assert_eq(out.cached_tokens, in.cached_tokens);
		cr_assert_eq(out.computed_tokens, in.computed_tokens);
		cr_assert_eq(out.generated_tokens, in.generated_tokens);
		cr_assert_eq(out.finish, in.finish);
		cr_assert_eq(out.ttft_us, in.ttft_us);
		cr_assert_eq(out.prefill_us, in.prefill_us);
		cr_assert_eq(out.decode_us, in.decode_us);
		cr_assert_eq(out.n_logits, n);
		cr_assert(out.logits == b + 52);
		kvp_load_f32s(back, out.logits, n);
		cr_assert(memcmp(back, lg, (size_t)n * 4) == 0, "logit bits kept exactly");
		free(b);
		free(back);
		free(lg);
	}
}

/* ---- header ----------------------------------------------------------------------------------- */

static uint8_t *hdr_bytes(uint8_t version, uint8_t type, uint16_t flags, uint32_t req_id,
			  uint32_t len)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { version, type, flags, req_id, len };

	kvp_hdr_encode(b, &h);
	return exact(b, sizeof(b));
}

Test(header, layout_is_byte_exact)
{
	uint8_t *b = hdr_bytes(1, KVP_T_LOOKUP, 0, 0x11223344u, 0x0A0B0C0Du);
	static const uint8_t want[] = { 'K', 'V', 'P', '1', 1, 2, 0, 0,
					0x44, 0x33, 0x22, 0x11, 0x0D, 0x0C, 0x0B, 0x0A };

	assert_bytes(b, KVP_HDR_SIZE, want, sizeof(want), "header");
	free(b);
}

Test(header, every_type_byte)
{
	for (unsigned v = 1; v <= 2; v++) {
		for (unsigned t = 0; t < 256; t++) {
			uint8_t *b = hdr_bytes((uint8_t)v, (uint8_t)t, 0, 9, 0);
			struct kvp_frame_hdr h;
			bool req = (t >= 0x01 && t <= 0x07) || t == 0x09;
			bool known = (t >= 0x01 && t <= 0x07) || (t >= 0x81 && t <= 0x88) ||
				     t == 0xFF || (v == 2 && (t == 0x09 || t == 0x89));

			cr_assert_eq(kvp_frame_is_request((uint8_t)t), req, "type 0x%02x", t);
			cr_assert_eq(kvp_frame_type_valid((uint8_t)v, (uint8_t)t), known,
				     "version %u type 0x%02x", v, t);
			cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 0, &h), known ? 0 : KVP_EPROTO,
				     "version %u type 0x%02x", v, t);
			cr_assert_eq(h.version, v);
			cr_assert_eq(h.type, t);
			cr_assert_eq(h.req_id, 9);
			free(b);
		}
	}
	/* No type exists in a version the codec does not speak. */
	for (unsigned t = 0; t < 256; t++) {
		cr_assert(!kvp_frame_type_valid(0, (uint8_t)t));
		cr_assert(!kvp_frame_type_valid(3, (uint8_t)t));
	}
}

Test(header, admin_only_in_version_2)
{
	static const uint8_t admin[] = { KVP_T_ADMIN, KVP_T_ADMIN | KVP_T_REPLY };
	struct kvp_frame_hdr h;

	cr_assert_eq(KVP_T_ADMIN, 0x09);
	cr_assert_eq(KVP_PROTO_VERSION, 1);
	cr_assert_eq(KVP_PROTO_VERSION_MAX, 2);
	cr_assert_eq(KVP_PROTO_VERSION_ADMIN, 2);
	cr_assert(kvp_frame_is_request(KVP_T_ADMIN));
	cr_assert(!kvp_frame_is_request(KVP_T_ADMIN | KVP_T_REPLY));
	for (size_t i = 0; i < sizeof(admin); i++) {
		uint8_t *b = hdr_bytes(1, admin[i], 0, 44, 18);

		/* in a version-1 header: an unknown type, with req_id and version kept */
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO,
			     "type 0x%02x in version 1", admin[i]);
		cr_assert_eq(h.version, 1);
		cr_assert_eq(h.req_id, 44);
		free(b);
		b = hdr_bytes(2, admin[i], 0, 45, 18);
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0);
		cr_assert_eq(h.version, 2);
		cr_assert_eq(h.type, admin[i]);
		cr_assert_eq(h.req_id, 45);
		cr_assert_eq(h.len, 18);
		free(b);
		/* in version 3: the version is refused first */
		b = hdr_bytes(3, admin[i], 0, 46, 18);
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EVERSION);
		cr_assert_eq(h.req_id, 46);
		free(b);
	}
}

Test(header, version_2_carries_every_ordinary_type)
{
	static const uint8_t types[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81, 0x82,
					 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0xFF };

	for (size_t i = 0; i < sizeof(types); i++) {
		uint8_t *b = hdr_bytes(2, types[i], 0, 0x0102, 40);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0, "type 0x%02x", types[i]);
		cr_assert_eq(h.version, 2);
		cr_assert_eq(h.type, types[i]);
		cr_assert_eq(h.len, 40);
		/* the encoder writes the version it is given: a reply keeps its request's */
		{
			uint8_t out[KVP_HDR_SIZE];

			kvp_hdr_encode(out, &h);
			assert_bytes(out, sizeof(out), b, KVP_HDR_SIZE, "version-2 header");
		}
		/* the other header checks are the same in version 2 */
		b[6] = 1;
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		b[6] = 0;
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 39, &h), KVP_ETOOBIG);
		b[0] = 'k';
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		free(b);
	}
}

Test(header, generate_types)
{
	/* GENERATE is a request; its token frame and DONE are replies, DONE reply-only. */
	cr_assert(kvp_frame_is_request(KVP_T_GENERATE));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE | KVP_T_REPLY));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE_DONE));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE_DONE & ~KVP_T_REPLY), "no request 0x08");
	cr_assert_eq(KVP_T_GENERATE_DONE, 0x88);
	for (unsigned i = 0; i < 3; i++) {
		static const uint8_t types[3] = { 0x07, 0x87, 0x88 };
		uint8_t *b = hdr_bytes(1, types[i], 0, 0xABCD, 52);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0);
		cr_assert_eq(h.type, types[i]);
		cr_assert_eq(h.len, 52);
		free(b);
	}
}

Test(header, bad_magic)
{
	for (int i = 0; i < 4; i++) {
		uint8_t *b = hdr_bytes(1, KVP_T_PING, 0, 77, 0);
		struct kvp_frame_hdr h;

		b[i] ^= 0x20;   /* "kVP1", "KvP1", ... */
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		cr_assert_eq(h.req_id, 77, "req_id is filled for the ERROR reply");
		free(b);
	}
	/* Bad magic wins over every other fault. */
	uint8_t *b = hdr_bytes(9, 0x42, 3, 5, 0xFFFFFFFFu);
	struct kvp_frame_hdr h;

	b[0] = 0;
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 16, &h), KVP_EPROTO);
	free(b);
}

Test(header, version)
{
	static const uint8_t bad[] = { 0, 3, 4, 0x81, 0xFF };

	for (size_t i = 0; i < sizeof(bad); i++) {
		uint8_t *b = hdr_bytes(bad[i], KVP_T_HELLO, 0, 31, 12);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EVERSION);
		cr_assert_eq(h.version, bad[i]);
		cr_assert_eq(h.req_id, 31);
		free(b);
	}
}

Test(header, flags)
{
	static const uint16_t bad[] = { 1, 0x0100, 0x8000, 0xFFFF };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t *b = hdr_bytes(1, KVP_T_STATS, bad[i], 8, 0);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		cr_assert_eq(h.flags, bad[i]);
		cr_assert_eq(h.req_id, 8);
		free(b);
	}
}

Test(header, payload_limit)
{
	struct kvp_frame_hdr h;
	uint8_t *b = hdr_bytes(1, KVP_T_INSERT, 0, 3, 4096);

	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 4096, &h), 0);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 4095, &h), KVP_ETOOBIG);
	cr_assert_eq(h.len, 4096);
	cr_assert_eq(h.req_id, 3);
	free(b);
	b = hdr_bytes(1, KVP_T_INSERT, 0, 3, UINT32_MAX);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, UINT32_MAX, &h), 0);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 0, &h), KVP_ETOOBIG);
	free(b);
}

Test(header, short_input_and_extra_input)
{
	uint8_t full[KVP_HDR_SIZE + 4];
	struct kvp_frame_hdr h = { 1, KVP_T_PING, 0, 1, 4 };

	kvp_hdr_encode(full, &h);
	memcpy(full + KVP_HDR_SIZE, "abcd", 4);
	for (size_t n = 0; n < KVP_HDR_SIZE; n++) {
		uint8_t *b = exact(full, n);

		cr_assert_eq(kvp_hdr_decode(b, n, 1024, &h), KVP_EINVAL, "n=%zu", n);
		free(b);
	}
	/* Bytes after the header (the payload) are not the header's business. */
	uint8_t *b = exact(full, sizeof(full));

	cr_assert_eq(kvp_hdr_decode(b, sizeof(full), 1024, &h), 0);
	cr_assert_eq(h.len, 4);
	free(b);
}

/* ---- truncation and trailing bytes -------------------------------------------------------------- */

typedef int (*decode_fn)(const uint8_t *p, size_t n);

static int dec_hello(const uint8_t *p, size_t n)
{
	struct kvp_hello m;

	return kvp_hello_decode(p, n, &m);
}

static int dec_hello_reply(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	return kvp_hello_reply_decode(p, n, &m);
}

static int dec_tokens(const uint8_t *p, size_t n)
{
	struct kvp_tokens_req m;

	return kvp_tokens_req_decode(p, n, UINT32_MAX, &m);
}

static int dec_blocks(const uint8_t *p, size_t n)
{
	struct kvp_blocks_reply m;

	return kvp_blocks_reply_decode(p, n, &m);
}

static int dec_release(const uint8_t *p, size_t n)
{
	uint64_t l;

	return kvp_release_decode(p, n, &l);
}

static int dec_u32(const uint8_t *p, size_t n)
{
	uint32_t v;

	return kvp_u32_decode(p, n, &v);
}

static int dec_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	return kvp_error_decode(p, n, &m);
}

static int dec_generate(const uint8_t *p, size_t n)
{
	struct kvp_generate_req m;

	return kvp_generate_req_decode(p, n, UINT32_MAX, &m);
}

static int dec_chunk(const uint8_t *p, size_t n)
{
	struct kvp_token_chunk m;

	return kvp_token_chunk_decode(p, n, &m);
}

static int dec_done(const uint8_t *p, size_t n)
{
	struct kvp_generate_done m;

	return kvp_generate_done_decode(p, n, &m);
}

static int dec_admin(const uint8_t *p, size_t n)
{
	struct kvp_admin_req m;

	return kvp_admin_req_decode(p, n, UINT32_MAX, &m);
}

static int dec_admin_reply(const uint8_t *p, size_t n)
{
	struct kvp_admin_reply m;

	return kvp_admin_reply_decode(p, n, &m);
}

/* The whole payload decodes; every prefix of it and every extension of it is malformed. */
static void check_exact_length(const char *what, decode_fn dec, const uint8_t *payload,
			       size_t n)
{
	uint8_t *b = exact(payload, n);
	uint8_t *big = malloc(n + 16);

	cr_assert_eq(dec(b, n), 0, "%s: the full payload decodes", what);
	free(b);
	for (size_t len = 0; len < n; len++) {
		b = exact(payload, len);
		cr_assert_eq(dec(b, len), KVP_EPROTO, "%s cut to %zu of %zu bytes", what, len, n);
		free(b);
	}
	memcpy(big, payload, n);
	for (size_t extra = 1; extra <= 16; extra++) {
		big[n + extra - 1] = (uint8_t)rnd();
		b = exact(big, n + extra);
		cr_assert_eq(dec(b, n + extra), KVP_EPROTO, "%s with %zu trailing bytes", what,
			     extra);
		free(b);
	}
	free(big);
}

Test(truncate, every_message_at_every_length)
{
	uint8_t buf[2048];
	size_t n;
	struct kvp_hello he = { 1, 0, "adapter-x", 9, "salt", 4 };
	struct kvp_hello he0 = { 1, 0, "", 0, "", 0 };
	struct kvp_hello_reply hr = { 1, 16, 100, 2048, 1, 5, "model", 5 };
	struct kvp_hello_reply hr0 = { 1, 16, 100, 2048, 0, 5, "", 0 };
	uint32_t ids[5] = { 1, 2, 3, 4, 5 };
	struct kvp_blocks_reply br = { 80, 83, 1, 42, 5, NULL };
	struct kvp_blocks_reply br0 = { 0, 3, 0, 0, 0, NULL };

	n = kvp_hello_encode(buf, sizeof(buf), &he);
	check_exact_length("HELLO", dec_hello, buf, n);
	n = kvp_hello_encode(buf, sizeof(buf), &he0);
	check_exact_length("HELLO (empty strings)", dec_hello, buf, n);
	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr);
	check_exact_length("HELLO reply", dec_hello_reply, buf, n);
	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr0);
	check_exact_length("HELLO reply (empty name)", dec_hello_reply, buf, n);
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, ex_tokens, 10);
	check_exact_length("LOOKUP/INSERT", dec_tokens, buf, n);
	n = kvp_tokens_req_encode(buf, sizeof(buf), 0, NULL, 0);
	check_exact_length("LOOKUP/INSERT (no tokens)", dec_tokens, buf, n);
	n = kvp_blocks_reply_encode(buf, sizeof(buf), &br, ids);
	check_exact_length("LOOKUP/INSERT reply", dec_blocks, buf, n);
	n = kvp_blocks_reply_encode(buf, sizeof(buf), &br0, NULL);
	check_exact_length("LOOKUP/INSERT reply (no blocks)", dec_blocks, buf, n);
	n = kvp_release_encode(buf, sizeof(buf), 0xDEADBEEFCAFEull);
	check_exact_length("RELEASE", dec_release, buf, n);
	n = kvp_u32_encode(buf, sizeof(buf), 3);
	check_exact_length("RELEASE reply", dec_u32, buf, n);
	n = kvp_error_encode(buf, sizeof(buf), KVP_EFULL, "pool full");
	check_exact_length("ERROR", dec_error, buf, n);
	n = kvp_error_encode(buf, sizeof(buf), KVP_EFULL, "");
	check_exact_length("ERROR (no message)", dec_error, buf, n);

	struct kvp_generate_req g = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 3, NULL, 10, NULL };
	struct kvp_generate_req g0 = { 0, 0, 0.0f, 0, 1.0f, 0, 0, NULL, 1, NULL };
	struct kvp_generate_done d = { 10, 8, 2, 4, KVP_FINISH_LENGTH, 5, 6, 7, 8, NULL };
	struct kvp_generate_done d0 = { 10, 8, 2, 4, KVP_FINISH_CONTEXT, 5, 6, 7, 0, NULL };

	n = kvp_generate_req_encode(buf, sizeof(buf), &g, ids, ex_tokens);
	check_exact_length("GENERATE", dec_generate, buf, n);
	n = kvp_generate_req_encode(buf, sizeof(buf), &g0, NULL, ex_tokens);
	check_exact_length("GENERATE (no stop ids, one token)", dec_generate, buf, n);
	n = kvp_token_chunk_encode(buf, sizeof(buf), ids, 5);
	check_exact_length("GENERATE tokens", dec_chunk, buf, n);
	n = kvp_token_chunk_encode(buf, sizeof(buf), NULL, 0);
	check_exact_length("GENERATE tokens (none)", dec_chunk, buf, n);
	n = kvp_generate_done_encode(buf, sizeof(buf), &d, gx_logits);
	check_exact_length("GENERATE_DONE (logits)", dec_done, buf, n);
	n = kvp_generate_done_encode(buf, sizeof(buf), &d0, NULL);
	check_exact_length("GENERATE_DONE (no logits)", dec_done, buf, n);

	struct kvp_admin_req a = { KVP_ADMIN_PIN, KVP_ADMIN_F_TENANT, 7, 10, NULL, 0, NULL };
	struct kvp_admin_req a0 = { KVP_ADMIN_CLEAR, 0, 0, 0, NULL, 0, NULL };
	struct kvp_admin_req ac = { KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 9, "log-level" };
	struct kvp_admin_req ax = { 77, KVP_ADMIN_F_ALL, 0, 3, NULL, 4, "text" };
	struct kvp_admin_reply ar = { KVP_ADMIN_CONFIG, 0, 17, "log-level = info\n" };
	struct kvp_admin_reply ar0 = { KVP_ADMIN_EVICT, 3, 0, NULL };

	n = kvp_admin_req_encode(buf, sizeof(buf), &a, ex_tokens);
	check_exact_length("ADMIN (tokens)", dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &a0, NULL);
	check_exact_length("ADMIN (nothing)", dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &ac, NULL);
	check_exact_length("ADMIN (text)", dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &ax, ids);
	check_exact_length("ADMIN (unknown op: tokens and text)", dec_admin, buf, n);
	n = kvp_admin_reply_encode(buf, sizeof(buf), &ar);
	check_exact_length("ADMIN reply", dec_admin_reply, buf, n);
	n = kvp_admin_reply_encode(buf, sizeof(buf), &ar0);
	check_exact_length("ADMIN reply (no text)", dec_admin_reply, buf, n);
}

/* ---- limits ---------------------------------------------------------------------------------- */

Test(limits, names_over_255)
{
	static char big[KVP_NAME_MAX + 1];
	struct kvp_hello a = { 1, 0, big, KVP_NAME_MAX + 1, "", 0 };
	struct kvp_hello s = { 1, 0, "", 0, big, KVP_NAME_MAX + 1 };
	struct kvp_hello_reply r = { 1, 16, 1, 1, 0, 0, big, KVP_NAME_MAX + 1 };
	uint8_t buf[1024];

	memset(big, 'z', sizeof(big));
	cr_assert_eq(kvp_hello_encode(buf, sizeof(buf), &a), 0);
	cr_assert_eq(kvp_hello_encode(buf, sizeof(buf), &s), 0);
	cr_assert_eq(kvp_hello_reply_encode(buf, sizeof(buf), &r), 0);

	/* Hand-built payloads whose layout is sound but whose strings are 256 bytes. */
	size_t n = 0;

	put32(buf, 1);
	put32(buf + 4, 0);
	put16(buf + 8, KVP_NAME_MAX + 1);
	memset(buf + 10, 'a', KVP_NAME_MAX + 1);
	n = 10 + KVP_NAME_MAX + 1;
	put16(buf + n, 0);
	n += 2;
	uint8_t *b = exact(buf, n);

	cr_assert_eq(dec_hello(b, n), KVP_ETOOBIG, "adapter of 256 bytes");
	free(b);

	put16(buf + 8, 0);
	put16(buf + 10, KVP_NAME_MAX + 1);
	memset(buf + 12, 's', KVP_NAME_MAX + 1);
	n = 12 + KVP_NAME_MAX + 1;
	b = exact(buf, n);
	cr_assert_eq(dec_hello(b, n), KVP_ETOOBIG, "salt of 256 bytes");
	free(b);

	memset(buf, 0, 24);
	put16(buf + 24, KVP_NAME_MAX + 1);
	memset(buf + 26, 'n', KVP_NAME_MAX + 1);
	n = 26 + KVP_NAME_MAX + 1;
	b = exact(buf, n);
	cr_assert_eq(dec_hello_reply(b, n), KVP_ETOOBIG, "name of 256 bytes");
	free(b);

	/* A long name that is also cut short is malformed first. */
	b = exact(buf, n - 1);
	cr_assert_eq(dec_hello_reply(b, n - 1), KVP_EPROTO);
	free(b);
}

Test(limits, error_message_cut_and_bounded)
{
	static char msg[3000];
	uint8_t *b;
	struct kvp_error m;
	size_t sz;

	memset(msg, 'e', sizeof(msg) - 1);
	cr_assert_eq(kvp_error_size(sizeof(msg) - 1), 6 + KVP_ERROR_MSG_MAX);
	sz = kvp_error_size(sizeof(msg) - 1);
	b = malloc(sz);
	cr_assert_eq(kvp_error_encode(b, sz, KVP_EINVAL, msg), sz);
	cr_assert_eq(kvp_error_decode(b, sz, &m), 0);
	cr_assert_eq(m.msg_len, KVP_ERROR_MSG_MAX);
	cr_assert_eq(m.code, 2);
	free(b);

	/* msg_len 1025 on the wire, with the bytes present: over the limit. */
	sz = 6 + KVP_ERROR_MSG_MAX + 1;
	b = malloc(sz);
	put32(b, 2);
	put16(b + 4, KVP_ERROR_MSG_MAX + 1);
	memset(b + 6, 'x', KVP_ERROR_MSG_MAX + 1);
	cr_assert_eq(kvp_error_decode(b, sz, &m), KVP_ETOOBIG);
	free(b);
}

Test(limits, error_cut_keeps_utf8_whole)
{
	/* A character straddling byte 1024 is dropped whole, never split. */
	static const char *chars[] = { "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80" };

	for (size_t c = 0; c < 3; c++) {
		size_t clen = strlen(chars[c]);

		for (size_t before = KVP_ERROR_MSG_MAX - clen + 1; before < KVP_ERROR_MSG_MAX;
		     before++) {
			char msg[KVP_ERROR_MSG_MAX + 8];
			uint8_t b[6 + KVP_ERROR_MSG_MAX];
			struct kvp_error m;

			memset(msg, 'a', before);
			memcpy(msg + before, chars[c], clen);
			strcpy(msg + before + clen, "tail");
			cr_assert(kvp_error_encode(b, sizeof(b), KVP_EIO, msg) > 0);
			cr_assert_eq(kvp_error_decode(b, sizeof(b) - (KVP_ERROR_MSG_MAX - before),
						      &m), 0);
			cr_assert_eq(m.msg_len, before, "%zu-byte char at %zu", clen, before);
		}
		/* Ending exactly at the limit keeps it. */
		char msg[KVP_ERROR_MSG_MAX + 8];
		uint8_t b[6 + KVP_ERROR_MSG_MAX];
		size_t before = KVP_ERROR_MSG_MAX - clen;

		memset(msg, 'a', before);
		memcpy(msg + before, chars[c], clen);
		strcpy(msg + before + clen, "tail");
		cr_assert_eq(kvp_error_encode(b, sizeof(b), KVP_EIO, msg), sizeof(b));
	}
}

Test(limits, error_code_range)
{
	uint8_t b[6] = { 0 };
	struct kvp_error m;

	cr_assert_eq(kvp_error_decode(b, 6, &m), KVP_EPROTO, "code 0 is not an error");
	put32(b, 0x80000000u);
	cr_assert_eq(kvp_error_decode(b, 6, &m), KVP_EPROTO);
	put32(b, 0x7FFFFFFFu);
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	put32(b, 99);   /* unknown to this build, but a well-formed error */
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	cr_assert_eq(m.code, 99);
}

Test(limits, token_count)
{
	uint32_t t[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	uint8_t buf[64];
	struct kvp_tokens_req m;
	size_t n = kvp_tokens_req_encode(buf, sizeof(buf), 0, t, 9);
	uint8_t *b = exact(buf, n);

	cr_assert_eq(kvp_tokens_req_decode(b, n, 9, &m), 0);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 8, &m), KVP_ETOOBIG);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 0, &m), KVP_ETOOBIG);
	free(b);

	/* A count that claims more than the payload holds: malformed, never read. */
	put32(buf + 4, UINT32_MAX);
	b = exact(buf, n);
	cr_assert_eq(kvp_tokens_req_decode(b, n, UINT32_MAX, &m), KVP_EPROTO);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 4, &m), KVP_EPROTO, "layout before limits");
	free(b);
	/* 0x40000000 * 4 wraps to 0 in 32 bits: must still be caught. */
	put32(buf + 4, 0x40000000u);
	b = exact(buf, 8);
	cr_assert_eq(kvp_tokens_req_decode(b, 8, UINT32_MAX, &m), KVP_EPROTO);
	free(b);
}

Test(limits, blocks_count_wrap)
{
	uint8_t buf[24] = { 0 };
	struct kvp_blocks_reply m;

	put32(buf + 20, 0x40000000u);
	uint8_t *b = exact(buf, sizeof(buf));

	cr_assert_eq(kvp_blocks_reply_decode(b, sizeof(buf), &m), KVP_EPROTO);
	put32(b + 20, UINT32_MAX);
	cr_assert_eq(kvp_blocks_reply_decode(b, sizeof(buf), &m), KVP_EPROTO);
	free(b);
}

Test(limits, unknown_flags)
{
	uint8_t buf[64];
	size_t n;
	uint8_t *b;
	struct kvp_tokens_req tr;

	/* LOOKUP/INSERT: only PIN */
	cr_assert_eq(kvp_tokens_req_encode(buf, sizeof(buf), 2, ex_tokens, 1), 0);
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, ex_tokens, 1);
	for (int bit = 1; bit < 32; bit++) {
		put32(buf, KVP_F_PIN | 1u << bit);
		b = exact(buf, n);
		cr_assert_eq(kvp_tokens_req_decode(b, n, 10, &tr), KVP_EINVAL, "bit %d", bit);
		/* flags before limits */
		cr_assert_eq(kvp_tokens_req_decode(b, n, 0, &tr), KVP_EINVAL);
		/* layout before flags */
		cr_assert_eq(kvp_tokens_req_decode(b, n - 1, 10, &tr), KVP_EPROTO);
		free(b);
	}

	/* HELLO: none defined */
	struct kvp_hello he = { 1, 0, "", 0, "", 0 };

	n = kvp_hello_encode(buf, sizeof(buf), &he);
	put32(buf + 4, 1);
	b = exact(buf, n);
	cr_assert_eq(dec_hello(b, n), KVP_EINVAL);
	free(b);

	/* HELLO reply: only INDEX_ONLY */
	struct kvp_hello_reply hr = { 1, 16, 1, 1, 0, 0, "", 0 };

	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr);
	put32(buf + 16, KVP_HELLO_INDEX_ONLY | 2);
	b = exact(buf, n);
	cr_assert_eq(dec_hello_reply(b, n), KVP_EINVAL);
	free(b);
}

/* A sound GENERATE payload (2 stop ids, 5 tokens; 64 bytes) in buf, for patching. */
static size_t generate_base(uint8_t *buf, size_t cap)
{
	static const uint32_t stop[2] = { 2, 9 };
	struct kvp_generate_req g = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 2, NULL, 5, NULL };
	size_t n = kvp_generate_req_encode(buf, cap, &g, stop, ex_tokens);

	cr_assert_eq(n, 64);
	return n;
}

/* Decode an exact copy of buf with max_tokens and return the status; *out gets m. */
static int generate_decode_copy(const uint8_t *buf, size_t n, uint32_t max_tokens,
				struct kvp_generate_req *out)
{
	uint8_t *b = exact(buf, n);
	int rc = kvp_generate_req_decode(b, n, max_tokens, out);

	free(b);
	return rc;
}

Test(limits, generate_bad_temperature)
{
	static const uint32_t bad[] = {
		0x7fc00000u,   /* quiet NaN */
		0xffc00000u,   /* negative NaN */
		0x7fa00000u,   /* signalling NaN */
		0x7f800001u,   /* smallest NaN payload */
		0x7f800000u,   /* +inf */
		0xff800000u,   /* -inf */
		0xbf800000u,   /* -1 */
		0x80000001u,   /* the negative denormal closest to 0 */
	};
	uint8_t buf[64], eb[64];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvp_generate_req e = { 0, 1, bitsf(bad[i]), 0, 1.0f, 0, 0, NULL, 1, NULL };

		put32(buf + 8, bad[i]);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "bits 0x%08x",
			     bad[i]);
		cr_assert_eq(fbits(m.temperature), bad[i], "fields are filled");
		cr_assert_eq(kvp_generate_req_encode(eb, sizeof(eb), &e, NULL, ex_tokens), 0,
			     "the encoder refuses it too");
	}
	/* -0, 0, the smallest denormal and FLT_MAX are fine */
	putf(buf + 8, -0.0f);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	put32(buf + 8, 1);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	putf(buf + 8, FLT_MAX);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
}

Test(limits, generate_bad_top_p)
{
	static const uint32_t bad[] = {
		0x00000000u,   /* 0 */
		0x80000000u,   /* -0 */
		0x3fc00000u,   /* 1.5 */
		0x3f800001u,   /* the float just above 1 */
		0xbf000000u,   /* -0.5 */
		0x7fc00000u,   /* NaN */
		0x7f800000u,   /* +inf */
	};
	uint8_t buf[64], hb[64];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvp_generate_req e = { 0, 1, 0.0f, 0, bitsf(bad[i]), 0, 0, NULL, 1, NULL };

		put32(buf + 16, bad[i]);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "top_p bits 0x%08x",
			     bad[i]);
		cr_assert_eq(kvp_generate_req_encode_head(hb, sizeof(hb), &e, NULL), 0);
	}
	putf(buf + 16, 1.0f);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	put32(buf + 16, 1);   /* the smallest denormal: above 0 */
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
}

Test(limits, generate_max_new_and_counts)
{
	static uint32_t stop[KVP_STOP_MAX + 1];
	uint8_t buf[512];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	put32(buf + 4, KVP_GEN_MAX_NEW);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	put32(buf + 4, KVP_GEN_MAX_NEW + 1);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "max_new over 2^20");
	put32(buf + 4, UINT32_MAX);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL);
	put32(buf + 4, 0);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0, "max_new 0: prefill only");

	/* n_stop 64 is the most; 65, with all its bytes present, is out of range. */
	struct kvp_generate_req g = { 0, 4, 0.0f, 0, 1.0f, 0, KVP_STOP_MAX, NULL, 1, NULL };

	n = kvp_generate_req_encode(buf, sizeof(buf), &g, stop, ex_tokens);
	cr_assert_eq(n, 36 + 4 * KVP_STOP_MAX + 4);
	cr_assert_eq(generate_decode_copy(buf, n, 1, &m), 0);
	g.n_stop = KVP_STOP_MAX + 1;
	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &g, stop, ex_tokens), 0);
	cr_assert_eq(kvp_generate_req_size(KVP_STOP_MAX + 1, 1), n + 4);
	put32(buf + 28, KVP_STOP_MAX + 1);
	memmove(buf + 32 + 4 * (KVP_STOP_MAX + 1), buf + 32 + 4 * KVP_STOP_MAX, 8);
	put32(buf + 32 + 4 * KVP_STOP_MAX, 77);
	cr_assert_eq(generate_decode_copy(buf, n + 4, 1, &m), KVP_EINVAL, "n_stop 65");
	cr_assert_eq(m.n_stop, KVP_STOP_MAX + 1);
	cr_assert_eq(m.n_tokens, 1);
	cr_assert_eq(generate_decode_copy(buf, n + 3, 1, &m), KVP_EPROTO, "layout first");

	/* n_tokens 0: sound layout, out of range; refused by the encoder too. */
	struct kvp_generate_req z = { 0, 4, 0.0f, 0, 1.0f, 0, 0, NULL, 0, NULL };

	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &z, NULL, NULL), 0);
	memset(buf, 0, 36);
	putf(buf + 16, 1.0f);
	cr_assert_eq(generate_decode_copy(buf, 36, 100, &m), KVP_EINVAL, "n_tokens 0");
	cr_assert_eq(generate_decode_copy(buf, 36, 0, &m), KVP_EINVAL, "values before limits");
}

Test(limits, generate_token_count)
{
	uint8_t buf[64];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_ETOOBIG);
	cr_assert_eq(m.n_tokens, 5, "the count is filled, so the daemon can name it");
	cr_assert_eq(generate_decode_copy(buf, n, 0, &m), KVP_ETOOBIG);
	/* out-of-range values come before limits, flags before values */
	putf(buf + 8, NAN);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EINVAL);
	put32(buf, 4);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EINVAL);

	/* Counts that claim more than the payload holds: malformed, never read, no wrap. */
	n = generate_base(buf, sizeof(buf));
	put32(buf + 28, 0x40000000u);   /* n_stop * 4 wraps to 0 in 32 bits */
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	put32(buf + 28, UINT32_MAX);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	n = generate_base(buf, sizeof(buf));
	put32(buf + 40, 0x40000000u);   /* n_tokens */
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EPROTO, "layout before limits");
	put32(buf + 40, 4);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO, "4 bytes extra");
	put32(buf + 40, 6);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO, "4 bytes short");
}

Test(limits, generate_flags)
{
	uint8_t buf[64], hb[64];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	for (int bit = 1; bit < 32; bit++) {
		struct kvp_generate_req e = { KVP_GEN_LOGITS | 1u << bit, 1, 0.0f, 0, 1.0f, 0, 0,
					      NULL, 1, NULL };

		put32(buf, KVP_GEN_LOGITS | 1u << bit);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "bit %d", bit);
		cr_assert_eq(m.flags, KVP_GEN_LOGITS | 1u << bit);
		cr_assert(m.flags & ~KVP_GEN_FLAGS_KNOWN, "the daemon can tell flags apart");
		cr_assert_eq(generate_decode_copy(buf, n, 0, &m), KVP_EINVAL, "flags before limits");
		cr_assert_eq(generate_decode_copy(buf, n - 1, 5, &m), KVP_EPROTO, "layout first");
		cr_assert_eq(kvp_generate_req_encode_head(hb, sizeof(hb), &e, NULL), 0);
	}
	put32(buf, 0);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
}

Test(limits, generate_done_reserved_and_finish)
{
	uint8_t buf[128];
	struct kvp_generate_done d = { 10, 8, 2, 4, KVP_FINISH_STOP, 5, 6, 7, 2, NULL };
	struct kvp_generate_done m;
	size_t n = kvp_generate_done_encode(buf, sizeof(buf), &d, gx_logits);
	uint8_t *b;

	for (uint32_t f = 0; f <= KVP_FINISH_CONTEXT; f++) {
		put32(buf + 16, f);
		b = exact(buf, n);
		cr_assert_eq(kvp_generate_done_decode(b, n, &m), 0);
		cr_assert_eq(m.finish, f);
		free(b);
	}
	put32(buf + 16, 3);
	b = exact(buf, n);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EINVAL, "finish 3");
	cr_assert_eq(kvp_generate_done_decode(b, n - 1, &m), KVP_EPROTO, "layout first");
	free(b);
	d.finish = 3;
	cr_assert_eq(kvp_generate_done_encode(buf, sizeof(buf), &d, gx_logits), 0);
	d.finish = 0;
	n = kvp_generate_done_encode(buf, sizeof(buf), &d, gx_logits);
	for (int bit = 0; bit < 32; bit++) {
		put32(buf + 20, 1u << bit);
		b = exact(buf, n);
		cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EINVAL, "reserved bit %d", bit);
		free(b);
	}
	/* n_logits that claims more than is there, wrapping or not */
	put32(buf + 20, 0);
	put32(buf + 48, 0x40000000u);
	b = exact(buf, n);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EPROTO);
	put32(b + 48, 3);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EPROTO);
	free(b);

	/* token frame: a count the payload cannot hold */
	put32(buf, 0x40000000u);
	b = exact(buf, 4);
	cr_assert_eq(kvp_token_chunk_decode(b, 4, &(struct kvp_token_chunk){ 0 }), KVP_EPROTO);
	free(b);
}

/* ---- ADMIN (version 2) ------------------------------------------------------------------- */

/* Encode m (tokens from ids) into an exact-size buffer; *n gets its size. */
static uint8_t *admin_bytes(const struct kvp_admin_req *m, const uint32_t *ids, size_t *n)
{
	size_t sz = kvp_admin_req_size(m);
	uint8_t *b = malloc(sz);

	cr_assert(b);
	cr_assert_eq(kvp_admin_req_encode(b, sz, m, ids), sz);
	*n = sz;
	return b;
}

/* The bytes of an ADMIN request written by hand, so that the encoder's refusals cannot
 * hide what the decoder does with them. */
static uint8_t *admin_raw(uint32_t op, uint32_t flags, uint32_t tenant, uint32_t n_tokens,
			  const char *text, uint16_t text_len, size_t *n)
{
	size_t sz = 18 + (size_t)n_tokens * 4 + text_len;
	uint8_t *b = calloc(1, sz);

	cr_assert(b);
	put32(b, op);
	put32(b + 4, flags);
	put32(b + 8, tenant);
	put32(b + 12, n_tokens);
	for (uint32_t i = 0; i < n_tokens; i++)
		put32(b + 16 + 4 * (size_t)i, 1000 + i);
	put16(b + 16 + (size_t)n_tokens * 4, text_len);
	if (text_len)
		memcpy(b + 18 + (size_t)n_tokens * 4, text, text_len);
	*n = sz;
	return b;
}

static int admin_raw_decode(uint32_t op, uint32_t flags, uint32_t tenant, uint32_t n_tokens,
			    const char *text, uint16_t text_len, uint32_t max_tokens,
			    struct kvp_admin_req *m)
{
	size_t n;
	uint8_t *b = admin_raw(op, flags, tenant, n_tokens, text, text_len, &n);
	uint8_t *e = exact(b, n);
	int rc = kvp_admin_req_decode(e, n, max_tokens, m);

	free(e);
	free(b);
	return rc;
}

Test(roundtrip, admin_req)
{
	static char big[KVP_ADMIN_TEXT_MAX];
	uint32_t toks[300];
	struct kvp_admin_req cases[] = {
		{ KVP_ADMIN_CLEAR, 0, 0, 0, NULL, 0, NULL },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 1000, 0, NULL, 0, NULL },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, UINT32_MAX, 0, NULL, 0, NULL },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_ALL, 0, 0, NULL, 0, NULL },
		{ KVP_ADMIN_EVICT, 0, 0, 1, NULL, 0, NULL },
		{ KVP_ADMIN_PIN, KVP_ADMIN_F_TENANT, 0, 300, NULL, 0, NULL },
		{ KVP_ADMIN_UNPIN, 0, 0, 10, NULL, 0, NULL },
		{ KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 0, NULL },
		{ KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 10, "max-leases" },
		{ KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 18, "max-leases = 64 \xc3\xa9" },
		{ KVP_ADMIN_CONFIG, 0, 0, 0, NULL, KVP_ADMIN_TEXT_MAX, big },
		/* an unknown op is well-formed: the daemon answers it */
		{ 0, 0, 0, 0, NULL, 0, NULL },
		{ 6, KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL, 3, 7, NULL, 5, "x y z" },
		{ UINT32_MAX, KVP_ADMIN_F_ALL, 0, 2, NULL, 1, "~" },
	};

	memset(big, '~', sizeof(big));
	for (uint32_t i = 0; i < 300; i++)
		toks[i] = i * 2654435761u;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kvp_admin_req *in = &cases[i];
		size_t sz = kvp_admin_req_size(in), n;
		uint8_t *b = admin_bytes(in, toks, &n);
		struct kvp_admin_req out;
		uint32_t back[300];

		cr_assert_eq(sz, 18 + 4 * (size_t)in->n_tokens + in->text_len, "case %zu", i);
		cr_assert_eq(kvp_admin_req_check(in), 0, "case %zu", i);
		cr_assert_eq(kvp_admin_req_decode(b, n, 300, &out), 0, "case %zu", i);
		cr_assert(out.op == in->op && out.flags == in->flags && out.tenant == in->tenant &&
			  out.n_tokens == in->n_tokens && out.text_len == in->text_len,
			  "case %zu", i);
		kvp_load_u32s(back, out.tokens, out.n_tokens);
		cr_assert(memcmp(back, toks, (size_t)out.n_tokens * 4) == 0, "case %zu", i);
		if (in->text_len)
			cr_assert(memcmp(out.text, in->text, in->text_len) == 0, "case %zu", i);
		/* the pointers are into the input */
		cr_assert_eq((const uint8_t *)out.tokens, b + 16);
		cr_assert_eq((const uint8_t *)out.text, b + 18 + 4 * (size_t)in->n_tokens);
		/* an encoder refuses a buffer one byte short */
		cr_assert_eq(kvp_admin_req_encode(b, n - 1, in, toks), 0, "case %zu", i);
		free(b);
	}
}

Test(roundtrip, admin_reply)
{
	static char big[KVP_ADMIN_REPLY_TEXT_MAX];
	struct kvp_admin_reply cases[] = {
		{ KVP_ADMIN_CLEAR, 0, 0, NULL },
		{ KVP_ADMIN_EVICT, UINT32_MAX, 0, NULL },
		{ KVP_ADMIN_CONFIG, 0, 17, "log-level = info\n" },
		{ KVP_ADMIN_CONFIG, 0, 3, "\0\x01\xff" },   /* the codec does not judge text */
		{ 42, 7, KVP_ADMIN_REPLY_TEXT_MAX, big },
	};

	memset(big, 'k', sizeof(big));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kvp_admin_reply *in = &cases[i];
		size_t sz = kvp_admin_reply_size(in);
		uint8_t *b = malloc(sz);
		struct kvp_admin_reply out;

		cr_assert_eq(sz, 12 + (size_t)in->text_len);
		cr_assert_eq(kvp_admin_reply_encode(b, sz, in), sz, "case %zu", i);
		cr_assert_eq(kvp_admin_reply_encode(b, sz - 1, in), 0, "case %zu: short cap", i);
		cr_assert_eq(kvp_admin_reply_decode(b, sz, &out), 0, "case %zu", i);
		cr_assert(out.op == in->op && out.blocks == in->blocks &&
			  out.text_len == in->text_len, "case %zu", i);
		if (in->text_len)
			cr_assert(memcmp(out.text, in->text, in->text_len) == 0);
		cr_assert_eq((const uint8_t *)out.text, b + 12);
		free(b);
	}
}

Test(admin, reserved_flags)
{
	struct kvp_admin_req m;

	for (unsigned bit = 2; bit < 32; bit++) {
		uint32_t f = 1u << bit;
		struct kvp_admin_req in = { KVP_ADMIN_CLEAR, f, 0, 0, NULL, 0, NULL };
		uint8_t out[64];

		cr_assert_eq(admin_raw_decode(KVP_ADMIN_CLEAR, f, 0, 0, NULL, 0, 16, &m),
			     KVP_EINVAL, "flag bit %u", bit);
		/* every field is filled, so the daemon can tell reserved bits from the rest */
		cr_assert_eq(m.flags, f);
		cr_assert_eq(m.flags & ~KVP_ADMIN_FLAGS_KNOWN, f);
		cr_assert_eq(kvp_admin_req_check(&in), KVP_EINVAL);
		cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &in, NULL), 0);
		/* with any op, known or not */
		cr_assert_eq(admin_raw_decode(99, f | KVP_ADMIN_F_TENANT, 5, 1, "a", 1, 16, &m),
			     KVP_EINVAL);
	}
	cr_assert_eq(KVP_ADMIN_F_TENANT, 0x1);
	cr_assert_eq(KVP_ADMIN_F_ALL, 0x2);
	cr_assert_eq(KVP_ADMIN_FLAGS_KNOWN, 0x3);
}

Test(admin, tenant_needs_the_tenant_flag)
{
	static const uint32_t ops[] = { KVP_ADMIN_CLEAR, KVP_ADMIN_EVICT, KVP_ADMIN_PIN,
					KVP_ADMIN_UNPIN, KVP_ADMIN_CONFIG, 0, 1234 };
	struct kvp_admin_req m;

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		uint32_t t = ops[i] >= KVP_ADMIN_EVICT && ops[i] <= KVP_ADMIN_UNPIN ? 4 : 0;
		struct kvp_admin_req in = { ops[i], 0, 1000, t, NULL, 0, NULL };
		uint32_t toks[4] = { 1, 2, 3, 4 };
		uint8_t out[64];

		cr_assert_eq(admin_raw_decode(ops[i], 0, 1000, t, NULL, 0, 16, &m), KVP_EINVAL,
			     "op %u: tenant without TENANT", ops[i]);
		cr_assert_eq(m.tenant, 1000);
		cr_assert_eq(admin_raw_decode(ops[i], 0, 1, t, NULL, 0, 16, &m), KVP_EINVAL);
		cr_assert_eq(kvp_admin_req_check(&in), KVP_EINVAL);
		cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &in, toks), 0);
	}
	/* with TENANT, any tenant (0 included) is fine wherever TENANT is */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 0, 0, NULL, 0, 16, &m),
		     0);
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_EVICT, KVP_ADMIN_F_TENANT, UINT32_MAX, 2, NULL, 0,
				      16, &m), 0);
	cr_assert_eq(m.tenant, UINT32_MAX);
}

Test(admin, text_bytes)
{
	struct kvp_admin_req m;
	char text[8];

	for (unsigned c = 0; c < 256; c++) {
		for (unsigned at = 0; at < sizeof(text); at += 7) {
			struct kvp_admin_req in = { KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 8, text };
			int want = c < 0x20 ? KVP_EINVAL : 0;
			uint8_t out[64];
			size_t n;

			memset(text, 'a', sizeof(text));
			text[at] = (char)c;
			cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0, 0, 0, text, 8, 16, &m), want,
				     "byte 0x%02x at %u", c, at);
			cr_assert_eq(kvp_admin_req_check(&in), want);
			n = kvp_admin_req_encode(out, sizeof(out), &in, NULL);
			cr_assert_eq(n != 0, want == 0);
		}
	}
	/* NUL is a byte below 0x20 too, wherever it is */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0, 0, 0, "a=b\0", 4, 16, &m), KVP_EINVAL);
	/* and the rule holds for an unknown op's text as well */
	cr_assert_eq(admin_raw_decode(9, 0, 0, 0, "\t", 1, 16, &m), KVP_EINVAL);
}

Test(admin, fields_each_op_takes)
{
	static const struct {
		uint32_t op, flags, n_tokens;
		uint16_t text_len;
		int want;
	} cases[] = {
		{ KVP_ADMIN_CLEAR, 0, 0, 0, 0 },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 0, 0, 0 },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_ALL, 0, 0, 0 },
		{ KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_CLEAR, 0, 1, 0, KVP_EINVAL },
		{ KVP_ADMIN_CLEAR, 0, 0, 1, KVP_EINVAL },
		{ KVP_ADMIN_EVICT, 0, 1, 0, 0 },
		{ KVP_ADMIN_EVICT, KVP_ADMIN_F_TENANT, 9, 0, 0 },
		{ KVP_ADMIN_EVICT, 0, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_EVICT, KVP_ADMIN_F_ALL, 4, 0, KVP_EINVAL },
		{ KVP_ADMIN_EVICT, 0, 4, 3, KVP_EINVAL },
		{ KVP_ADMIN_PIN, 0, 4, 0, 0 },
		{ KVP_ADMIN_PIN, 0, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_PIN, KVP_ADMIN_F_ALL, 4, 0, KVP_EINVAL },
		{ KVP_ADMIN_PIN, 0, 4, 1, KVP_EINVAL },
		{ KVP_ADMIN_UNPIN, KVP_ADMIN_F_TENANT, 4, 0, 0 },
		{ KVP_ADMIN_UNPIN, 0, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_UNPIN, KVP_ADMIN_F_ALL, 4, 0, KVP_EINVAL },
		{ KVP_ADMIN_UNPIN, 0, 4, 2, KVP_EINVAL },
		{ KVP_ADMIN_CONFIG, 0, 0, 0, 0 },
		{ KVP_ADMIN_CONFIG, 0, 0, 3, 0 },
		{ KVP_ADMIN_CONFIG, KVP_ADMIN_F_TENANT, 0, 3, KVP_EINVAL },
		{ KVP_ADMIN_CONFIG, KVP_ADMIN_F_ALL, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_CONFIG, 0, 1, 3, KVP_EINVAL },
		/* unknown ops take anything but reserved bits; the daemon refuses the op */
		{ 0, KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL, 5, 5, 0 },
		{ 6, 0, 0, 0, 0 },
		{ 0x80000001u, KVP_ADMIN_F_ALL, 1, 1, 0 },
	};
	uint32_t toks[16] = { 0 };
	struct kvp_admin_req m;

	cr_assert_eq(KVP_ADMIN_CLEAR, 1);
	cr_assert_eq(KVP_ADMIN_EVICT, 2);
	cr_assert_eq(KVP_ADMIN_PIN, 3);
	cr_assert_eq(KVP_ADMIN_UNPIN, 4);
	cr_assert_eq(KVP_ADMIN_CONFIG, 5);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t tenant = (cases[i].flags & KVP_ADMIN_F_TENANT) ? 1000 : 0;
		struct kvp_admin_req in = { cases[i].op, cases[i].flags, tenant, cases[i].n_tokens,
					    NULL, cases[i].text_len, "k=v,w" };
		uint8_t out[128];

		int rc = admin_raw_decode(cases[i].op, cases[i].flags, tenant, cases[i].n_tokens,
					  "k=v,w", cases[i].text_len, 16, &m);

		cr_assert_eq(rc, cases[i].want, "case %zu (op %u)", i, cases[i].op);
		cr_assert_eq(kvp_admin_req_check(&in), cases[i].want, "case %zu", i);
		cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &in, toks) != 0,
			     cases[i].want == 0, "case %zu: the encoder agrees", i);
	}
}

Test(admin, limits)
{
	static char big[KVP_ADMIN_TEXT_MAX + 1];
	struct kvp_admin_req in = { KVP_ADMIN_CONFIG, 0, 0, 0, NULL, KVP_ADMIN_TEXT_MAX, big };
	struct kvp_admin_req m;
	uint8_t out[KVP_ADMIN_TEXT_MAX + 64];

	memset(big, 'v', sizeof(big));
	/* text: 4096 bytes fit, 4097 are too big (and the u16 field holds up to 65535) */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0, 0, 0, big, KVP_ADMIN_TEXT_MAX, 0, &m),
		     0);
	cr_assert_eq(kvp_admin_req_check(&in), 0);
	cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &in, NULL), 18 + KVP_ADMIN_TEXT_MAX);
	in.text_len = KVP_ADMIN_TEXT_MAX + 1;
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0, 0, 0, big, KVP_ADMIN_TEXT_MAX + 1, 0,
				      &m), KVP_ETOOBIG);
	cr_assert_eq(m.text_len, KVP_ADMIN_TEXT_MAX + 1);
	cr_assert_eq(kvp_admin_req_check(&in), KVP_ETOOBIG);
	cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &in, NULL), 0);

	/* tokens: at most max_tokens, like LOOKUP */
	for (uint32_t op = KVP_ADMIN_EVICT; op <= KVP_ADMIN_UNPIN; op++) {
		cr_assert_eq(admin_raw_decode(op, 0, 0, 8, NULL, 0, 8, &m), 0);
		cr_assert_eq(admin_raw_decode(op, 0, 0, 9, NULL, 0, 8, &m), KVP_ETOOBIG);
		cr_assert_eq(m.n_tokens, 9, "filled, so the daemon can name the count");
		cr_assert_eq(admin_raw_decode(op, 0, 0, 1, NULL, 0, 0, &m), KVP_ETOOBIG);
	}
	/* a count that would wrap 4 * n on 32 bits, or run past the payload: malformed */
	{
		uint8_t raw[20] = { 0 };

		put32(raw, KVP_ADMIN_EVICT);
		put32(raw + 12, 0x40000001u);
		cr_assert_eq(kvp_admin_req_decode(raw, sizeof(raw), UINT32_MAX, &m), KVP_EPROTO);
		put32(raw + 12, UINT32_MAX);
		cr_assert_eq(kvp_admin_req_decode(raw, sizeof(raw), UINT32_MAX, &m), KVP_EPROTO);
	}
	/* the encoder refuses a count that does not fit its buffer */
	{
		struct kvp_admin_req e = { KVP_ADMIN_EVICT, 0, 0, UINT32_MAX, NULL, 0, NULL };
		uint32_t t[4] = { 0 };

		cr_assert_eq(kvp_admin_req_encode(out, sizeof(out), &e, t), 0);
	}
}

Test(admin, precedence)
{
	struct kvp_admin_req m;
	static char big[KVP_ADMIN_TEXT_MAX + 1];
	size_t n;
	uint8_t *b, *e;

	memset(big, 'v', sizeof(big));
	/* layout first: a reserved bit in a payload one byte short is malformed */
	b = admin_raw(KVP_ADMIN_CLEAR, 0x80, 0, 0, NULL, 0, &n);
	e = exact(b, n - 1);
	cr_assert_eq(kvp_admin_req_decode(e, n - 1, 16, &m), KVP_EPROTO);
	free(e);
	free(b);
	/* then reserved bits, before a tenant without its flag and a control byte */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0x4, 5, 0, "\n", 1, 16, &m), KVP_EINVAL);
	/* values before limits: a bad tenant or byte wins over too many tokens or text */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_EVICT, 0, 5, 9, NULL, 0, 8, &m), KVP_EINVAL);
	big[100] = '\x1f';
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CONFIG, 0, 0, 0, big, KVP_ADMIN_TEXT_MAX + 1, 16,
				      &m), KVP_EINVAL);
	big[100] = 'v';
	/* a field the op does not take wins over the text limit */
	cr_assert_eq(admin_raw_decode(KVP_ADMIN_CLEAR, 0, 0, 0, big, KVP_ADMIN_TEXT_MAX + 1, 16,
				      &m), KVP_EINVAL);
	/* an unknown op with too much text: only the limit applies */
	cr_assert_eq(admin_raw_decode(50, 0, 0, 0, big, KVP_ADMIN_TEXT_MAX + 1, 16, &m),
		     KVP_ETOOBIG);
}

Test(admin, reply_limits)
{
	static char big[KVP_ADMIN_REPLY_TEXT_MAX + 1];
	struct kvp_admin_reply in = { KVP_ADMIN_CONFIG, 0, KVP_ADMIN_REPLY_TEXT_MAX + 1, big };
	struct kvp_admin_reply m;
	size_t sz = 12 + sizeof(big);
	uint8_t hdr[12];
	uint8_t *b = malloc(sz);

	memset(big, 'x', sizeof(big));
	cr_assert_eq(kvp_admin_reply_encode(b, sz, &in), 0, "over 65536: refused");
	put32(b, KVP_ADMIN_CONFIG);
	put32(b + 4, 0);
	put32(b + 8, KVP_ADMIN_REPLY_TEXT_MAX + 1);
	memcpy(b + 12, big, sizeof(big));
	cr_assert_eq(kvp_admin_reply_decode(b, sz, &m), KVP_ETOOBIG);
	cr_assert_eq(m.text_len, KVP_ADMIN_REPLY_TEXT_MAX + 1);
	free(b);
	/* a text_len that runs past the payload is malformed, whatever its size */
	put32(hdr, 1);
	put32(hdr + 4, 0);
	put32(hdr + 8, UINT32_MAX);
	b = exact(hdr, sizeof(hdr));
	cr_assert_eq(kvp_admin_reply_decode(b, sizeof(hdr), &m), KVP_EPROTO);
	free(b);
}

/* ---- default socket path ---------------------------------------------------------------------- */

Test(socket_path, xdg_runtime_dir)
{
	char buf[256];

	setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/run/user/4242/kvprefix/kvprefixd.sock");
	/* Exactly enough room for the NUL, then one byte short. */
	cr_assert_eq(kvp_default_socket_path(buf, strlen(buf) + 1), 0);
	cr_assert_eq(kvp_default_socket_path(buf, strlen("/run/user/4242/kvprefix/kvprefixd.sock")),
		     KVP_ETOOBIG);
	cr_assert_eq(kvp_default_socket_path(NULL, 0), KVP_ETOOBIG);
}

Test(socket_path, without_xdg)
{
	char buf[256], want[256];

	unsetenv("XDG_RUNTIME_DIR");
	if (geteuid() == 0)
		snprintf(want, sizeof(want), "/run/kvprefix/kvprefixd.sock");
	else
		snprintf(want, sizeof(want), "/tmp/kvprefix-%u/kvprefixd.sock", (unsigned)geteuid());
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
	/* Empty or relative values are not paths: ignored, as the XDG spec asks. */
	setenv("XDG_RUNTIME_DIR", "", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
	setenv("XDG_RUNTIME_DIR", "run/user/1", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
}

/* ---- randomized ---------------------------------------------------------------------------------- */

static void random_string(char *s, uint16_t n)
{
	for (uint16_t i = 0; i < n; i++)
		s[i] = (char)rnd();
}

static uint32_t random_u32(void)
{
	/* mostly small values, sometimes the extremes */
	switch (rnd_below(4)) {
	case 0: return 0;
	case 1: return UINT32_MAX - rnd_below(2);
	case 2: return rnd_below(300);
	default: return (uint32_t)rnd();
	}
}

/* Encode one random message of kind k into an exact-size buffer, decode it, compare. */
static void random_roundtrip(unsigned k)
{
	char s1[KVP_NAME_MAX], s2[KVP_NAME_MAX];
	uint32_t arr[300], back[300];   /* kind 6: at most 64 stop + 200 tokens */
	uint8_t *b;
	size_t sz;

	switch (k) {
	case 0: {
		struct kvp_hello in = { random_u32(), 0, s1, (uint16_t)rnd_below(KVP_NAME_MAX + 1),
					s2, (uint16_t)rnd_below(KVP_NAME_MAX + 1) }, out;

		random_string(s1, in.adapter_len);
		random_string(s2, in.salt_len);
		sz = kvp_hello_size(&in);
		b = malloc(sz);
		cr_assert_eq(kvp_hello_encode(b, sz, &in), sz);
		cr_assert_eq(kvp_hello_decode(b, sz, &out), 0);
		cr_assert(out.version == in.version && out.adapter_len == in.adapter_len &&
			  out.salt_len == in.salt_len);
		cr_assert(memcmp(out.adapter, s1, in.adapter_len) == 0);
		cr_assert(memcmp(out.salt, s2, in.salt_len) == 0);
		break;
	}
	case 1: {
		struct kvp_hello_reply in = { random_u32(), random_u32(), random_u32(), random_u32(),
					      (uint32_t)rnd_below(2), random_u32(), s1,
					      (uint16_t)rnd_below(KVP_NAME_MAX + 1) }, out;

		random_string(s1, in.name_len);
		sz = kvp_hello_reply_size(&in);
		b = malloc(sz);
		cr_assert_eq(kvp_hello_reply_encode(b, sz, &in), sz);
		cr_assert_eq(kvp_hello_reply_decode(b, sz, &out), 0);
		cr_assert(out.version == in.version && out.block_tokens == in.block_tokens &&
			  out.capacity_blocks == in.capacity_blocks &&
			  out.max_tokens == in.max_tokens && out.flags == in.flags &&
			  out.tenant == in.tenant && out.name_len == in.name_len);
		cr_assert(memcmp(out.name, s1, in.name_len) == 0);
		break;
	}
	case 2: {
		uint32_t n = rnd_below(300), flags = (uint32_t)rnd_below(2);
		struct kvp_tokens_req out;

		for (uint32_t i = 0; i < n; i++)
			arr[i] = random_u32();
		sz = kvp_tokens_req_size(n);
		b = malloc(sz);
		cr_assert_eq(kvp_tokens_req_encode(b, sz, flags, arr, n), sz);
		cr_assert_eq(kvp_tokens_req_decode(b, sz, n, &out), 0);
		cr_assert(out.flags == flags && out.n_tokens == n);
		kvp_load_u32s(back, out.tokens, n);
		cr_assert(memcmp(back, arr, (size_t)n * 4) == 0);
		if (n)
			cr_assert_eq(kvp_tokens_req_decode(b, sz, n - 1, &out), KVP_ETOOBIG);
		break;
	}
	case 3: {
		struct kvp_blocks_reply in = { random_u32(), random_u32(), random_u32(), rnd(),
					       rnd_below(300), NULL }, out;

		for (uint32_t i = 0; i < in.n_blocks; i++)
			arr[i] = random_u32();
		sz = kvp_blocks_reply_size(in.n_blocks);
		b = malloc(sz);
		cr_assert_eq(kvp_blocks_reply_encode(b, sz, &in, arr), sz);
		cr_assert_eq(kvp_blocks_reply_decode(b, sz, &out), 0);
		cr_assert(out.matched_tokens == in.matched_tokens &&
			  out.prompt_tokens == in.prompt_tokens && out.new_blocks == in.new_blocks &&
			  out.lease == in.lease && out.n_blocks == in.n_blocks);
		kvp_load_u32s(back, out.block_ids, in.n_blocks);
		cr_assert(memcmp(back, arr, (size_t)in.n_blocks * 4) == 0);
		break;
	}
	case 4: {
		uint64_t l = rnd(), got;

		sz = 8;
		b = malloc(sz);
		cr_assert_eq(kvp_release_encode(b, sz, l), 8);
		cr_assert_eq(kvp_release_decode(b, sz, &got), 0);
		cr_assert_eq(got, l);
		break;
	}
	case 5: {
		char msg[KVP_ERROR_MSG_MAX + 1];
		size_t len = rnd_below(KVP_ERROR_MSG_MAX + 1);
		int st = -(int)(1 + rnd_below(16));
		struct kvp_error out;

		for (size_t i = 0; i < len; i++)
			msg[i] = (char)(' ' + rnd_below(95));
		msg[len] = '\0';
		sz = kvp_error_size(len);
		b = malloc(sz);
		cr_assert_eq(kvp_error_encode(b, sz, st, msg), sz);
		cr_assert_eq(kvp_error_decode(b, sz, &out), 0);
		cr_assert(out.code == (uint32_t)-st && out.msg_len == len);
		cr_assert(memcmp(out.msg, msg, len) == 0);
		break;
	}
	case 6: {
		uint32_t ns = rnd_below(KVP_STOP_MAX + 1), nt = 1 + rnd_below(200);
		struct kvp_generate_req in = {
			(uint32_t)rnd_below(2), rnd_below(KVP_GEN_MAX_NEW + 1),
			rnd_below(4) ? (float)rnd_below(2000) / 100.0f : 0.0f, random_u32(),
			(float)(1 + rnd_below(1000)) / 1000.0f, rnd(), ns, NULL, nt, NULL,
		}, out;

		for (uint32_t i = 0; i < ns + nt; i++)
			arr[i] = random_u32();
		sz = kvp_generate_req_size(ns, nt);
		b = malloc(sz);
		cr_assert_eq(kvp_generate_req_encode(b, sz, &in, arr, arr + ns), sz);
		cr_assert_eq(kvp_generate_req_decode(b, sz, nt, &out), 0);
		cr_assert(out.flags == in.flags && out.max_new == in.max_new &&
			  fbits(out.temperature) == fbits(in.temperature) && out.top_k == in.top_k &&
			  fbits(out.top_p) == fbits(in.top_p) && out.seed == in.seed &&
			  out.n_stop == ns && out.n_tokens == nt);
		kvp_load_u32s(back, out.stop, ns);
		kvp_load_u32s(back + ns, out.tokens, nt);
		cr_assert(memcmp(back, arr, ((size_t)ns + nt) * 4) == 0);
		cr_assert_eq(kvp_generate_req_decode(b, sz, nt - 1, &out), KVP_ETOOBIG);
		break;
	}
	case 7: {
		uint32_t n = rnd_below(300);
		struct kvp_token_chunk out;

		for (uint32_t i = 0; i < n; i++)
			arr[i] = random_u32();
		sz = kvp_token_chunk_size(n);
		b = malloc(sz);
		cr_assert_eq(kvp_token_chunk_encode(b, sz, arr, n), sz);
		cr_assert_eq(kvp_token_chunk_decode(b, sz, &out), 0);
		cr_assert_eq(out.n, n);
		kvp_load_u32s(back, out.ids, n);
		cr_assert(memcmp(back, arr, (size_t)n * 4) == 0);
		break;
	}
	case 8: {
		float lg[300], lb[300];
		struct kvp_generate_done in = { random_u32(), random_u32(), random_u32(),
						random_u32(), rnd_below(3), rnd(), rnd(), rnd(),
						rnd_below(300), NULL }, out;

		for (uint32_t i = 0; i < in.n_logits; i++)
			lg[i] = bitsf((uint32_t)rnd());
		sz = kvp_generate_done_size(in.n_logits);
		b = malloc(sz);
		cr_assert_eq(kvp_generate_done_encode(b, sz, &in, lg), sz);
		cr_assert_eq(kvp_generate_done_decode(b, sz, &out), 0);
		cr_assert(out.prompt_tokens == in.prompt_tokens &&
			  out.cached_tokens == in.cached_tokens &&
			  out.computed_tokens == in.computed_tokens &&
			  out.generated_tokens == in.generated_tokens && out.finish == in.finish &&
			  out.ttft_us == in.ttft_us && out.prefill_us == in.prefill_us &&
			  out.decode_us == in.decode_us && out.n_logits == in.n_logits);
		kvp_load_f32s(lb, out.logits, in.n_logits);
		cr_assert(memcmp(lb, lg, (size_t)in.n_logits * 4) == 0);
		break;
	}
	case 9: {
		static const uint32_t ops[] = { KVP_ADMIN_CLEAR, KVP_ADMIN_EVICT, KVP_ADMIN_PIN,
						KVP_ADMIN_UNPIN, KVP_ADMIN_CONFIG,
						0, 6, UINT32_MAX };
		char text[300];
		struct kvp_admin_req in = { ops[rnd_below(8)], 0, 0, 0, NULL, 0, text }, out;

		switch (in.op) {
		case KVP_ADMIN_CLEAR:
			in.flags = rnd_below(3);   /* none, TENANT or ALL */
			break;
		case KVP_ADMIN_EVICT:
		case KVP_ADMIN_PIN:
		case KVP_ADMIN_UNPIN:
			in.flags = rnd_below(2);
			in.n_tokens = 1 + rnd_below(299);
			break;
		case KVP_ADMIN_CONFIG:
			in.text_len = (uint16_t)rnd_below(300);
			break;
		default:
			in.flags = rnd_below(4);
			in.n_tokens = rnd_below(300);
			in.text_len = (uint16_t)rnd_below(300);
			break;
		}
		if (in.flags & KVP_ADMIN_F_TENANT)
			in.tenant = random_u32();
		for (uint32_t i = 0; i < in.n_tokens; i++)
			arr[i] = random_u32();
		for (uint16_t i = 0; i < in.text_len; i++)
			text[i] = (char)(0x20 + rnd_below(0xE0));
		sz = kvp_admin_req_size(&in);
		b = malloc(sz);
		cr_assert_eq(kvp_admin_req_encode(b, sz, &in, arr), sz);
		cr_assert_eq(kvp_admin_req_decode(b, sz, in.n_tokens, &out), 0);
		cr_assert(out.op == in.op && out.flags == in.flags && out.tenant == in.tenant &&
			  out.n_tokens == in.n_tokens && out.text_len == in.text_len);
		kvp_load_u32s(back, out.tokens, in.n_tokens);
		cr_assert(memcmp(back, arr, (size_t)in.n_tokens * 4) == 0);
		cr_assert(memcmp(out.text, text, in.text_len) == 0);
		if (in.n_tokens)
			cr_assert_eq(kvp_admin_req_decode(b, sz, in.n_tokens - 1, &out),
				     KVP_ETOOBIG);
		break;
	}
	default: {
		char text[300];
		struct kvp_admin_reply in = { random_u32(), random_u32(), rnd_below(300), text };
		struct kvp_admin_reply out;

		random_string(text, (uint16_t)in.text_len);
		sz = kvp_admin_reply_size(&in);
		b = malloc(sz);
		cr_assert_eq(kvp_admin_reply_encode(b, sz, &in), sz);
		cr_assert_eq(kvp_admin_reply_decode(b, sz, &out), 0);
		cr_assert(out.op == in.op && out.blocks == in.blocks &&
			  out.text_len == in.text_len);
		cr_assert(memcmp(out.text, text, in.text_len) == 0);
		break;
	}
	}
	free(b);
}

Test(random, roundtrip_loop)
{
	for (unsigned i = 0; i < 22000; i++)
		random_roundtrip(i % 11);
}

/* Re-encode what a decoder accepted; a canonical encoding gives back the input. */
static void reencode_matches(unsigned k, const uint8_t *p, size_t n)
{
	uint8_t out[4096];
	size_t m = 0;

	switch (k) {
	case 0: {
		struct kvp_hello h;

		if (kvp_hello_decode(p, n, &h) != 0)
			return;
		m = kvp_hello_encode(out, sizeof(out), &h);
		break;
	}
	case 1: {
		struct kvp_hello_reply h;

		if (kvp_hello_reply_decode(p, n, &h) != 0)
			return;
		m = kvp_hello_reply_encode(out, sizeof(out), &h);
		break;
	}
	case 2: {
		struct kvp_tokens_req t;
		uint32_t tok[1024];

		if (kvp_tokens_req_decode(p, n, 1024, &t) != 0)
			return;
		kvp_load_u32s(tok, t.tokens, t.n_tokens);
		m = kvp_tokens_req_encode(out, sizeof(out), t.flags, tok, t.n_tokens);
		break;
	}
	case 3: {
		struct kvp_blocks_reply r;
		uint32_t ids[1024];

		if (kvp_blocks_reply_decode(p, n, &r) != 0)
			return;
		kvp_load_u32s(ids, r.block_ids, r.n_blocks);
		m = kvp_blocks_reply_encode(out, sizeof(out), &r, ids);
		break;
	}
	case 4: {
		uint64_t l;

		if (kvp_release_decode(p, n, &l) != 0)
			return;
		m = kvp_release_encode(out, sizeof(out), l);
		break;
	}
	case 5: {
		struct kvp_error e;
		char msg[KVP_ERROR_MSG_MAX + 1];

		if (kvp_error_decode(p, n, &e) != 0)
			return;
		if (memchr(e.msg, '\0', e.msg_len))
			return;   /* the encoder takes a C string */
		memcpy(msg, e.msg, e.msg_len);
		msg[e.msg_len] = '\0';
		m = kvp_error_encode(out, sizeof(out), -(int)e.code, msg);
		if (m != n)   /* a cut UTF-8 tail is the one legitimate difference */
			return;
		break;
	}
	case 6: {
		struct kvp_generate_req g;
		uint32_t stop[KVP_STOP_MAX], tok[1024];

		if (kvp_generate_req_decode(p, n, 1024, &g) != 0)
			return;
		kvp_load_u32s(stop, g.stop, g.n_stop);
		kvp_load_u32s(tok, g.tokens, g.n_tokens);
		m = kvp_generate_req_encode(out, sizeof(out), &g, stop, tok);
		break;
	}
	case 7: {
		struct kvp_token_chunk ch;
		uint32_t ids[1024];

		if (kvp_token_chunk_decode(p, n, &ch) != 0)
			return;
		kvp_load_u32s(ids, ch.ids, ch.n);
		m = kvp_token_chunk_encode(out, sizeof(out), ids, ch.n);
		break;
	}
	case 8: {
		struct kvp_generate_done d;
		float lg[1024];

		if (kvp_generate_done_decode(p, n, &d) != 0)
			return;
		kvp_load_f32s(lg, d.logits, d.n_logits);
		m = kvp_generate_done_encode(out, sizeof(out), &d, lg);
		break;
	}
	case 9: {
		struct kvp_admin_req a;
		uint32_t tok[1024];

		if (kvp_admin_req_decode(p, n, 1024, &a) != 0)
			return;
		kvp_load_u32s(tok, a.tokens, a.n_tokens);
		m = kvp_admin_req_encode(out, sizeof(out), &a, tok);
		break;
	}
	default: {
		struct kvp_admin_reply a;

		if (kvp_admin_reply_decode(p, n, &a) != 0)
			return;
		m = kvp_admin_reply_encode(out, sizeof(out), &a);
		break;
	}
	}
	assert_bytes(out, m, p, n, "re-encoded frame");
}

Test(random, mutated_payloads_never_overread)
{
	uint8_t base[11][512];
	size_t base_n[11];
	struct kvp_generate_req gr = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 2, NULL, 6, NULL };
	struct kvp_generate_done gd = { 6, 4, 2, 3, KVP_FINISH_STOP, 1250, 1100, 2300, 8, NULL };
	struct kvp_hello he = { 1, 0, "lora", 4, "s", 1 };
	struct kvp_hello_reply hr = { 1, 16, 64, 4096, 1, 1000, "idx", 3 };
	uint32_t ids[3] = { 9, 8, 7 };
	struct kvp_blocks_reply br = { 48, 50, 3, 7, 3, NULL };

	base_n[0] = kvp_hello_encode(base[0], 512, &he);
	base_n[1] = kvp_hello_reply_encode(base[1], 512, &hr);
	base_n[2] = kvp_tokens_req_encode(base[2], 512, 1, ex_tokens, 10);
	base_n[3] = kvp_blocks_reply_encode(base[3], 512, &br, ids);
	base_n[4] = kvp_release_encode(base[4], 512, 77);
	base_n[5] = kvp_error_encode(base[5], 512, KVP_EBUSY, "busy");
	base_n[6] = kvp_generate_req_encode(base[6], 512, &gr, ids, ex_tokens);
	base_n[7] = kvp_token_chunk_encode(base[7], 512, ids, 3);
	base_n[8] = kvp_generate_done_encode(base[8], 512, &gd, gx_logits);
	{
		/* an unknown op: the one request that carries tokens and text together */
		struct kvp_admin_req ar = { 77, KVP_ADMIN_F_TENANT, 1000, 10, NULL, 14,
					    "max-leases=128" };
		struct kvp_admin_reply rr = { KVP_ADMIN_CONFIG, 0, 17, "max-leases = 128\n" };

		base_n[9] = kvp_admin_req_encode(base[9], 512, &ar, ex_tokens);
		base_n[10] = kvp_admin_reply_encode(base[10], 512, &rr);
	}

	for (unsigned i = 0; i < 110000; i++) {
		unsigned k = i % 11;
		uint8_t tmp[512];
		size_t n = base_n[k];
		uint8_t *b;

		memcpy(tmp, base[k], n);
		/* flip a few bytes, favouring the small length fields, then maybe resize */
		for (unsigned f = 1 + rnd_below(3); f; f--) {
			size_t at = rnd_below((uint32_t)n);

			tmp[at] = rnd_below(2) ? (uint8_t)rnd() : (uint8_t)(tmp[at] + rnd_below(5) - 2);
		}
		if (rnd_below(4) == 0)
			n = rnd_below((uint32_t)n + 9);
		if (n > base_n[k])
			for (size_t j = base_n[k]; j < n; j++)
				tmp[j] = (uint8_t)rnd();
		b = exact(tmp, n);
		reencode_matches(k, b, n);
		/* Every decoder on every input: none may read out of bounds. */
		dec_hello(b, n);
		dec_hello_reply(b, n);
		dec_tokens(b, n);
		dec_blocks(b, n);
		dec_release(b, n);
		dec_u32(b, n);
		dec_error(b, n);
		dec_generate(b, n);
		dec_chunk(b, n);
		dec_done(b, n);
		dec_admin(b, n);
		dec_admin_reply(b, n);
		if (n >= KVP_HDR_SIZE) {
			struct kvp_frame_hdr h;

			kvp_hdr_decode(b, n, UINT32_MAX, &h);
		}
		free(b);
	}
}
