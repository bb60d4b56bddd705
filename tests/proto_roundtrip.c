/*
 * proto_roundtrip.c - every message of the frame codec (proto/kvp_proto.h) encoded and
 * decoded back: edge values, exact layouts, encoders refusing a short cap. (ADMIN's round
 * trips are in proto_admin.c.)
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"
#include "proto_test_util.h"

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
		{ 1, 16, 65536, 131072, 0, 0, "", 0, 0, 0 },
		{ 1, 1, 1, 1, KVP_HELLO_INDEX_ONLY, 4294967295u, "m", 1, 0, 0 },
		{ 2, 16, 4096, 2048, 0, 1000, "m", 1, 0, 0 },
		{ 3, 16, 4096, 2048, 0, 1000, "llama", 5, 32000, 4096 },
		{ 3, 16, 4096, 2048, KVP_HELLO_INDEX_ONLY, 0, "", 0, 0, 0 },
		{ 7, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0, 12345, big, KVP_NAME_MAX,
		  0xFFFFFFFFu, 0xFFFFFFFFu },
	};

	memset(big, 'n', sizeof(big));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kvp_hello_reply *in = &cases[i];
		size_t sz = kvp_hello_reply_size(in);
		uint8_t *b = malloc(sz);
		struct kvp_hello_reply out;

		/* from version 3 on, vocab_size and ctx_tokens follow the name */
		cr_assert_eq(sz, 26u + in->name_len + (in->version >= 3 ? 8u : 0u));
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
		cr_assert_eq(out.vocab_size, in->vocab_size);
		cr_assert_eq(out.ctx_tokens, in->ctx_tokens);
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
			t[i] = (uint32_t)pt_rnd();
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
			ids[i] = (uint32_t)pt_rnd();
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
		src[i] = (uint32_t)pt_rnd();
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

Test(roundtrip, view_u32s_copies_only_what_it_must)
{
	const uint16_t one = 1;
	const bool le = *(const uint8_t *)&one == 1;
	uint32_t src[67], scratch[67];
	_Alignas(8) uint8_t raw[4 * 67 + 8];

	for (size_t i = 0; i < 67; i++)
		src[i] = (uint32_t)pt_rnd();
	for (size_t off = 0; off < 8; off++) {
		const uint32_t *v;

		memset(scratch, 0, sizeof(scratch));
		kvp_store_u32s(raw + off, src, 67);
		v = kvp_view_u32s(scratch, raw + off, 67);
		cr_assert(memcmp(v, src, sizeof(src)) == 0, "offset %zu", off);
		/* in place exactly where the bytes already are host u32s */
		if (le && off % 4 == 0)
			cr_assert(v == (const uint32_t *)(const void *)(raw + off), "offset %zu", off);
		else
			cr_assert(v == scratch, "offset %zu", off);
	}
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
		src[i] = pt_bitsf(bits[i]);
	for (size_t off = 0; off < 8; off++) {
		memset(dst, 0, sizeof(dst));
		kvp_store_f32s(raw + off, src, N);
		cr_assert_eq(raw[off + 2], 0x00);
		cr_assert_eq(raw[off + 4 + 3], 0x80, "little-endian sign byte last");
		kvp_load_f32s(dst, raw + off, N);
		for (size_t i = 0; i < N; i++)
			cr_assert_eq(pt_fbits(dst[i]), bits[i], "value %zu at offset %zu", i, off);
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
	cr_assert_eq(b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24,
		     pt_fbits(in->temperature));
	cr_assert_eq(b[20], (uint8_t)in->seed);
	cr_assert_eq(b[27], (uint8_t)(in->seed >> 56));

	cr_assert_eq(kvp_generate_req_decode(b, sz, in->n_tokens, &out), 0);
	cr_assert_eq(out.flags, in->flags);
	cr_assert_eq(out.max_new, in->max_new);
	cr_assert_eq(pt_fbits(out.temperature), pt_fbits(in->temperature));
	cr_assert_eq(out.top_k, in->top_k);
	cr_assert_eq(pt_fbits(out.top_p), pt_fbits(in->top_p));
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
		{ 0, 16, 0.0f, 0, 1.0f, 0, 0, NULL, 1, NULL, 0, 0 },
		{ KVP_GEN_LOGITS, 0, 0.7f, 40, 0.9f, 42, 1, NULL, 6, NULL, 0, 0 },
		{ 0, KVP_GEN_MAX_NEW, FLT_MAX, UINT32_MAX, FLT_MIN, UINT64_MAX, KVP_STOP_MAX, NULL,
		  4096, NULL, 0, 0 },
		/* -0 is >= 0; the smallest denormal is > 0 */
		{ KVP_GEN_LOGITS, 1, -0.0f, 1, pt_bitsf(1), 0x0102030405060708ull, 3, NULL, 17,
		  NULL, 0, 0 },
		/* top_p just below 1 */
		{ 0, 5, pt_bitsf(1), 0, pt_bitsf(0x3f7fffffu), 7, 0, NULL, 2, NULL, 0, 0 },
	};

	for (size_t i = 0; i < KVP_STOP_MAX; i++)
		stop[i] = (uint32_t)pt_rnd();
	for (size_t i = 0; i < 4096; i++)
		toks[i] = (uint32_t)pt_rnd();
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
			ids[i] = (uint32_t)pt_rnd();
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
			lg[i] = i % 97 == 5 ? -INFINITY : pt_bitsf((uint32_t)pt_rnd());
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
