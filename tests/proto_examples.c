/*
 * proto_examples.c - the hex examples of docs/protocol.md against the frame codec
 * (proto/kvp_proto.h): literal bytes here, the encoder, the decoder and the page itself
 * must all agree (all three sessions: the index-only one, the version-3 GENERATE one and
 * the version-2 ADMIN one).
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc_test_util.h"
#include "kvp_le.h"
#include "kvp_proto.h"
#include "proto_test_util.h"

/* ---- the examples of docs/protocol.md ----------------------------------------------------
 *
 * A session with a daemon of 4-token blocks: HELLO, INSERT 10 tokens (2 full blocks),
 * LOOKUP them with PIN, RELEASE the lease, STATS, PING, an ERROR for a RELEASE of an
 * unknown lease, and the INSERT again with KEEP (an hour, priority 5). Its 10 tokens,
 * pt_ex_tokens, are in proto_test_util.c: other files use them too.
 */
static const uint32_t ex_blocks[2] = { 0, 1 };
static const char ex_stats_json[] = "{\"lookups\":1,\"hit_tokens\":8}";

/* Some examples as literal bytes, copied from the page. */
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
static const uint8_t hex_insert_keep[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x03, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00,
	0x38, 0x00, 0x00, 0x00,
	0x02, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
	0x00, 0xf4, 0x01, 0x00, 0x17, 0x03, 0x00, 0x00, 0xde, 0x0f, 0x00, 0x00,
	0x76, 0x37, 0x00, 0x00, 0xff, 0x9b, 0x00, 0x00, 0xec, 0x89, 0x00, 0x00,
	0x9f, 0x03, 0x00, 0x00, 0x17, 0x01, 0x00, 0x00, 0xb5, 0x3e, 0x00, 0x00,
	0x2f, 0x16, 0x00, 0x00,
	0x10, 0x0e, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
};
static const uint8_t hex_error[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0xff, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
	0x13, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x0d, 0x00,
	0x6e, 0x6f, 0x20, 0x73, 0x75, 0x63, 0x68, 0x20, 0x6c, 0x65, 0x61, 0x73, 0x65,
};

/*
 * The GENERATE session (§9.1, version 4, replayed by doc_replay.c): an engine-mode
 * daemon with 4-token blocks and kvprefix-mkmodel's model of 8 tokens. HELLO offering
 * 3 and its reply with the model's sizes, GENERATE of 6 tokens with LOGITS and stop id
 * 7 (req_id 1: each command has a connection of its own), the first and the last token
 * frame (6; 7), GENERATE_DONE with the model's 8 logits, and an EINVAL ERROR for a
 * prompt token outside the vocabulary.
 */
static const uint32_t gx_prompt[6] = { 1, 4, 2, 6, 3, 5 };
static const uint32_t gx_stop[1] = { 7 };
static const uint32_t gx_tok1[1] = { 6 };
static const uint32_t gx_tok2[1] = { 7 };
/* the logits as the model computes them, as f32 bit patterns */
static const uint32_t gx_logit_bits[8] = { 0xbfca4aa3, 0xbf4a3612, 0xbeaa1326, 0x3f0f0652,
					   0x3e194778, 0xbfb5d307, 0x4011005c, 0x3dc57600 };
static const char gx_error[] = "token 9 at position 6: the vocabulary has 8";

static void gx_logits(float out[8])
{
	memcpy(out, gx_logit_bits, sizeof(gx_logit_bits));
}

static const uint8_t hex_generate[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x07, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x40, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x33, 0x33, 0x33, 0x3f,
	0x28, 0x00, 0x00, 0x00, 0x66, 0x66, 0x66, 0x3f,
	0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x07, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
};
static const uint8_t hex_generate_done[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x88, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x54, 0x00, 0x00, 0x00,
	0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xf1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xd1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xe5, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x08, 0x00, 0x00, 0x00,
	0xa3, 0x4a, 0xca, 0xbf, 0x12, 0x36, 0x4a, 0xbf, 0x26, 0x13, 0xaa, 0xbe,
	0x52, 0x06, 0x0f, 0x3f, 0x78, 0x47, 0x19, 0x3e, 0x07, 0xd3, 0xb5, 0xbf,
	0x5c, 0x00, 0x11, 0x40, 0x00, 0x76, 0xc5, 0x3d,
};
static const uint8_t hex_generate_tokens_2[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x87, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x08, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
};
static const uint8_t hex_hello_reply_engine[] = {
	0x4b, 0x56, 0x50, 0x31, 0x01, 0x81, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x2c, 0x00, 0x00, 0x00,
	0x04, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,
	0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe8, 0x03, 0x00, 0x00,
	0x0a, 0x00, 0x74, 0x69, 0x6e, 0x79, 0x2d, 0x6c, 0x6c, 0x61, 0x6d, 0x61,
	0x08, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
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
				     "demo-index", 10, 0, 0 };

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
	cr_assert(memcmp(got, pt_ex_tokens, sizeof(got)) == 0);
}

static size_t enc_insert(uint8_t *out, size_t cap)
{
	return kvp_tokens_req_encode(out, cap, 0, pt_ex_tokens, 10);
}

static void chk_insert(const uint8_t *p, size_t n)
{
	chk_tokens(p, n, 0);
}

static size_t enc_lookup(uint8_t *out, size_t cap)
{
	return kvp_tokens_req_encode(out, cap, KVP_F_PIN, pt_ex_tokens, 10);
}

static void chk_lookup(const uint8_t *p, size_t n)
{
	chk_tokens(p, n, KVP_F_PIN);
}

static size_t enc_insert_keep(uint8_t *out, size_t cap)
{
	return kvp_tokens_req_encode_keep(out, cap, KVP_F_KEEP, pt_ex_tokens, 10, 3600, 5);
}

static void chk_insert_keep(const uint8_t *p, size_t n)
{
	struct kvp_tokens_req m;
	uint32_t got[10];

	cr_assert_eq(kvp_tokens_req_decode_insert(p, n, 131072, &m), 0);
	cr_assert_eq(m.flags, KVP_F_KEEP);
	cr_assert_eq(m.n_tokens, 10);
	cr_assert_eq(m.keep_s, 3600);
	cr_assert_eq(m.priority, 5);
	kvp_load_u32s(got, m.tokens, 10);
	cr_assert(memcmp(got, pt_ex_tokens, sizeof(got)) == 0);
	cr_assert_eq(kvp_tokens_req_decode(p, n, 131072, &m), KVP_EPROTO,
		     "not a LOOKUP's layout");
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

static size_t enc_insert_keep_reply(uint8_t *out, size_t cap)
{
	struct kvp_blocks_reply m = { 8, 10, 0, 0, 2, NULL };

	return kvp_blocks_reply_encode(out, cap, &m, ex_blocks);
}

static void chk_insert_keep_reply(const uint8_t *p, size_t n)
{
	chk_blocks(p, n, 0, 0);
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

/* A HELLO offering version, with no adapter and no salt (§9.1 and §9.2). */
static size_t enc_hello_offer(uint8_t *out, size_t cap, uint32_t version)
{
	struct kvp_hello m = { version, 0, "", 0, "", 0 };

	return kvp_hello_encode(out, cap, &m);
}

static void chk_hello_offer(const uint8_t *p, size_t n, uint32_t version)
{
	struct kvp_hello m;

	cr_assert_eq(kvp_hello_decode(p, n, &m), 0);
	cr_assert_eq(m.version, version, "the client offers version %u", version);
	cr_assert_eq(m.flags, 0);
	cr_assert_eq(m.adapter_len, 0);
	cr_assert_eq(m.salt_len, 0);
}

static size_t enc_hello_v4(uint8_t *out, size_t cap)
{
	return enc_hello_offer(out, cap, 4);
}

static void chk_hello_v4(const uint8_t *p, size_t n)
{
	chk_hello_offer(p, n, 4);
}

static size_t enc_hello_reply_engine(uint8_t *out, size_t cap)
{
	struct kvp_hello_reply m = { 4, 4, 1024, 2048, 0, 1000, "tiny-llama", 10, 8, 64 };

	return kvp_hello_reply_encode(out, cap, &m);
}

static void chk_hello_reply_engine(const uint8_t *p, size_t n)
{
	struct kvp_hello_reply m;

	cr_assert_eq(kvp_hello_reply_decode(p, n, &m), 0);
	cr_assert_eq(m.version, 4);
	cr_assert_eq(m.vocab_size, 8, "version 4, as 3: the vocabulary");
	cr_assert_eq(m.ctx_tokens, 64, "version 4, as 3: the context");
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
	struct kvp_generate_req m = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 1, NULL, 6, NULL,
				      0, 0 };

	return kvp_generate_req_encode(out, cap, &m, gx_stop, gx_prompt);
}

static void chk_generate(const uint8_t *p, size_t n)
{
	struct kvp_generate_req m;
	uint32_t got[6];

	cr_assert_eq(kvp_generate_req_decode(p, n, 2048, &m), 0);
	cr_assert_eq(m.flags, KVP_GEN_LOGITS);
	cr_assert_eq(m.max_new, 8);
	cr_assert_eq(pt_fbits(m.temperature), 0x3f333333u);
	cr_assert_eq(m.temperature, 0.7f);
	cr_assert_eq(m.top_k, 40);
	cr_assert_eq(pt_fbits(m.top_p), 0x3f666666u);
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
	uint32_t got[1];

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
	return kvp_token_chunk_encode(out, cap, gx_tok2, 1);
}

static void chk_generate_tokens_2(const uint8_t *p, size_t n)
{
	chk_chunk(p, n, gx_tok2, 1);
}

static size_t enc_generate_done(uint8_t *out, size_t cap)
{
	struct kvp_generate_done m = { 6, 4, 2, 4, KVP_FINISH_STOP, 241, 209, 485, 8, NULL };
	float logits[8];

	gx_logits(logits);
	return kvp_generate_done_encode(out, cap, &m, logits);
}

static void chk_generate_done(const uint8_t *p, size_t n)
{
	struct kvp_generate_done m;
	float got[8], want[8];

	cr_assert_eq(kvp_generate_done_decode(p, n, &m), 0);
	cr_assert_eq(m.prompt_tokens, 6);
	cr_assert_eq(m.cached_tokens, 4);
	cr_assert_eq(m.computed_tokens, 2);
	cr_assert_eq(m.generated_tokens, 4);
	cr_assert_eq(m.finish, KVP_FINISH_STOP);
	cr_assert_eq(m.ttft_us, 241);
	cr_assert_eq(m.prefill_us, 209);
	cr_assert_eq(m.decode_us, 485);
	cr_assert_eq(m.n_logits, 8);
	kvp_load_f32s(got, m.logits, 8);
	gx_logits(want);
	cr_assert(memcmp(got, want, sizeof(got)) == 0);
}

static size_t enc_generate_error(uint8_t *out, size_t cap)
{
	return kvp_error_encode(out, cap, KVP_EINVAL, gx_error);
}

static void chk_generate_error(const uint8_t *p, size_t n)
{
	struct kvp_error m;

	cr_assert_eq(kvp_error_decode(p, n, &m), 0);
	cr_assert_eq(m.code, 2);
	cr_assert_eq(m.msg_len, strlen(gx_error));
	cr_assert(memcmp(m.msg, gx_error, m.msg_len) == 0);
}

static size_t enc_hello_v2(uint8_t *out, size_t cap)
{
	return enc_hello_offer(out, cap, 2);
}

static void chk_hello_v2(const uint8_t *p, size_t n)
{
	chk_hello_offer(p, n, 2);
}

static size_t enc_hello_reply_v2(uint8_t *out, size_t cap)
{
	struct kvp_hello_reply m = { 2, 4, 1024, 131072, KVP_HELLO_INDEX_ONLY, 0,
				     "demo-index", 10, 0, 0 };

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

/* §9.3: a FLEET of the tokens 1..8 and its reply of two engines. */
static size_t enc_fleet(uint8_t *out, size_t cap)
{
	static const uint32_t t[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

	return kvp_tokens_req_encode(out, cap, 0, t, 8);
}

static void chk_fleet(const uint8_t *p, size_t n)
{
	struct kvp_tokens_req m;

	cr_assert_eq(kvp_tokens_req_decode(p, n, 64, &m), 0);
	cr_assert_eq(m.flags, 0);
	cr_assert_eq(m.n_tokens, 8);
	for (uint32_t i = 0; i < 8; i++)
		cr_assert_eq(kvp_le_get_u32(m.tokens + 4 * i), i + 1);
}

static const struct kvp_fleet_entry ex_fleet[2] = { { 8, 5, "eng-a" }, { 4, 5, "eng-b" } };

static size_t enc_fleet_reply(uint8_t *out, size_t cap)
{
	return kvp_fleet_reply_encode(out, cap, 8, ex_fleet, 2);
}

static void chk_fleet_reply(const uint8_t *p, size_t n)
{
	struct kvp_fleet_entry e[2];
	uint32_t prompt, count;

	cr_assert_eq(kvp_fleet_reply_decode(p, n, &prompt, e, 2, &count), 0);
	cr_assert_eq(prompt, 8);
	cr_assert_eq(count, 2);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(e[i].matched_tokens, ex_fleet[i].matched_tokens);
		cr_assert_eq(e[i].name_len, 5);
		cr_assert(memcmp(e[i].name, ex_fleet[i].name, 5) == 0);
	}
	cr_assert_eq(kvp_fleet_reply_decode(p, n, &prompt, e, 1, &count), KVP_EPROTO,
		     "more entries than the caller has room for");
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
	{ "insert_keep", KVP_T_INSERT, 8, enc_insert_keep, chk_insert_keep, hex_insert_keep,
	  sizeof(hex_insert_keep), 1 },
	{ "insert_keep_reply", KVP_T_INSERT | KVP_T_REPLY, 8, enc_insert_keep_reply,
	  chk_insert_keep_reply, NULL, 0, 1 },
	{ "hello_v4", KVP_T_HELLO, 1, enc_hello_v4, chk_hello_v4, NULL, 0, 1 },
	{ "hello_reply_engine", KVP_T_HELLO | KVP_T_REPLY, 1, enc_hello_reply_engine,
	  chk_hello_reply_engine, hex_hello_reply_engine, sizeof(hex_hello_reply_engine), 1 },
	{ "generate", KVP_T_GENERATE, 1, enc_generate, chk_generate, hex_generate,
	  sizeof(hex_generate), 1 },
	{ "generate_tokens", KVP_T_GENERATE | KVP_T_REPLY, 1, enc_generate_tokens,
	  chk_generate_tokens, NULL, 0, 1 },
	{ "generate_tokens_2", KVP_T_GENERATE | KVP_T_REPLY, 1, enc_generate_tokens_2,
	  chk_generate_tokens_2, hex_generate_tokens_2, sizeof(hex_generate_tokens_2), 1 },
	{ "generate_done", KVP_T_GENERATE_DONE, 1, enc_generate_done, chk_generate_done,
	  hex_generate_done, sizeof(hex_generate_done), 1 },
	{ "generate_error", KVP_T_ERROR, 1, enc_generate_error, chk_generate_error, NULL, 0, 1 },
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
	{ "fleet", KVP_T_FLEET, 2, enc_fleet, chk_fleet, NULL, 0, 4 },
	{ "fleet_reply", KVP_T_FLEET | KVP_T_REPLY, 2, enc_fleet_reply, chk_fleet_reply, NULL, 0,
	  4 },
};
#define N_EXAMPLES (sizeof(examples) / sizeof(examples[0]))

static size_t example_frame(const struct example *ex, uint8_t *out, size_t cap)
{
	uint8_t payload[256];
	size_t n = ex->encode(payload, sizeof(payload));

	cr_assert(cap >= KVP_HDR_SIZE + n);
	return pt_frame(out, ex->version, ex->type, ex->req_id, payload, n);
}

/* Decode a whole frame from an exact-size copy and check it. */
static void example_decode(const struct example *ex, const uint8_t *bytes, size_t n)
{
	uint8_t *b = pt_exact(bytes, n);
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
		pt_assert_bytes(buf, n, ex->literal, ex->literal_len, ex->name);
		example_decode(ex, ex->literal, ex->literal_len);
	}
	cr_assert_geq(literals, 10);
}

Test(examples, protocol_md_matches_encoder)
{
	char *doc = dt_read_doc("protocol.md");
	size_t in_doc = 0;

	for (size_t i = 0; i < N_EXAMPLES; i++) {
		const struct example *ex = &examples[i];
		uint8_t want[512], got[512];
		size_t wn = example_frame(ex, want, sizeof(want));
		size_t gn = dt_example(doc, ex->name, got, sizeof(got));

		pt_assert_bytes(got, gn, want, wn, ex->name);
		example_decode(ex, got, gn);
	}
	/* And no example on the page goes unchecked. */
	for (const char *p = doc; (p = strstr(p, "<!-- example: ")); p++)
		in_doc++;
	cr_assert_eq(in_doc, N_EXAMPLES, "protocol.md has %zu examples, the test knows %zu",
		     in_doc, N_EXAMPLES);
	free(doc);
}
