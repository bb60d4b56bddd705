/*
 * proto_limits.c - the codec's (proto/kvp_proto.h) bounds: every message cut at every
 * length and with trailing bytes; names, messages, token counts, flags, wrapping counts
 * and GENERATE values past their limits.
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

/* ---- truncation and trailing bytes -------------------------------------------------------------- */

typedef int (*decode_fn)(const uint8_t *p, size_t n);

/* The whole payload decodes; every prefix of it and every extension of it is malformed. */
static void check_exact_length(const char *what, decode_fn dec, const uint8_t *payload,
			       size_t n)
{
	uint8_t *b = pt_exact(payload, n);
	uint8_t *big = malloc(n + 16);

	cr_assert_eq(dec(b, n), 0, "%s: the full payload decodes", what);
	free(b);
	for (size_t len = 0; len < n; len++) {
		b = pt_exact(payload, len);
		cr_assert_eq(dec(b, len), KVP_EPROTO, "%s cut to %zu of %zu bytes", what, len, n);
		free(b);
	}
	memcpy(big, payload, n);
	for (size_t extra = 1; extra <= 16; extra++) {
		big[n + extra - 1] = (uint8_t)pt_rnd();
		b = pt_exact(big, n + extra);
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
	struct kvp_hello_reply hr = { 1, 16, 100, 2048, 1, 5, "model", 5, 0, 0 };
	struct kvp_hello_reply hr0 = { 1, 16, 100, 2048, 0, 5, "", 0, 0, 0 };
	struct kvp_hello_reply hr3 = { 3, 16, 100, 2048, 0, 5, "model", 5, 32000, 4096 };
	uint32_t ids[5] = { 1, 2, 3, 4, 5 };
	struct kvp_blocks_reply br = { 80, 83, 1, 42, 5, NULL };
	struct kvp_blocks_reply br0 = { 0, 3, 0, 0, 0, NULL };

	n = kvp_hello_encode(buf, sizeof(buf), &he);
	check_exact_length("HELLO", pt_dec_hello, buf, n);
	n = kvp_hello_encode(buf, sizeof(buf), &he0);
	check_exact_length("HELLO (empty strings)", pt_dec_hello, buf, n);
	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr);
	check_exact_length("HELLO reply", pt_dec_hello_reply, buf, n);
	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr0);
	check_exact_length("HELLO reply (empty name)", pt_dec_hello_reply, buf, n);
	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr3);
	check_exact_length("HELLO reply (version 3)", pt_dec_hello_reply, buf, n);
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, pt_ex_tokens, 10);
	check_exact_length("LOOKUP/INSERT", pt_dec_tokens, buf, n);
	n = kvp_tokens_req_encode(buf, sizeof(buf), 0, NULL, 0);
	check_exact_length("LOOKUP/INSERT (no tokens)", pt_dec_tokens, buf, n);
	n = kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_PIN | KVP_F_KEEP, pt_ex_tokens, 10,
				       3600, 7);
	check_exact_length("INSERT (KEEP)", pt_dec_insert, buf, n);
	n = kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_KEEP, NULL, 0, 1, 0);
	check_exact_length("INSERT (KEEP, no tokens)", pt_dec_insert, buf, n);
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, pt_ex_tokens, 10);
	check_exact_length("INSERT (no KEEP)", pt_dec_insert, buf, n);
	n = kvp_blocks_reply_encode(buf, sizeof(buf), &br, ids);
	check_exact_length("LOOKUP/INSERT reply", pt_dec_blocks, buf, n);
	n = kvp_blocks_reply_encode(buf, sizeof(buf), &br0, NULL);
	check_exact_length("LOOKUP/INSERT reply (no blocks)", pt_dec_blocks, buf, n);
	n = kvp_release_encode(buf, sizeof(buf), 0xDEADBEEFCAFEull);
	check_exact_length("RELEASE", pt_dec_release, buf, n);
	n = kvp_u32_encode(buf, sizeof(buf), 3);
	check_exact_length("RELEASE reply", pt_dec_u32, buf, n);
	n = kvp_error_encode(buf, sizeof(buf), KVP_EFULL, "pool full");
	check_exact_length("ERROR", pt_dec_error, buf, n);
	n = kvp_error_encode(buf, sizeof(buf), KVP_EFULL, "");
	check_exact_length("ERROR (no message)", pt_dec_error, buf, n);

	struct kvp_generate_req g = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 3, NULL, 10, NULL,
				      0, 0 };
	struct kvp_generate_req g0 = { 0, 0, 0.0f, 0, 1.0f, 0, 0, NULL, 1, NULL, 0, 0 };
	struct kvp_generate_done d = { 10, 8, 2, 4, KVP_FINISH_LENGTH, 5, 6, 7, 8, NULL };
	struct kvp_generate_done d0 = { 10, 8, 2, 4, KVP_FINISH_CONTEXT, 5, 6, 7, 0, NULL };

	n = kvp_generate_req_encode(buf, sizeof(buf), &g, ids, pt_ex_tokens);
	check_exact_length("GENERATE", pt_dec_generate, buf, n);
	n = kvp_generate_req_encode(buf, sizeof(buf), &g0, NULL, pt_ex_tokens);
	check_exact_length("GENERATE (no stop ids, one token)", pt_dec_generate, buf, n);
	g.flags |= KVP_GEN_KEEP;
	g.keep_s = KVP_KEEP_MAX_S;
	g.priority = UINT32_MAX;
	n = kvp_generate_req_encode(buf, sizeof(buf), &g, ids, pt_ex_tokens);
	check_exact_length("GENERATE (KEEP)", pt_dec_generate, buf, n);
	n = kvp_token_chunk_encode(buf, sizeof(buf), ids, 5);
	check_exact_length("GENERATE tokens", pt_dec_chunk, buf, n);
	n = kvp_token_chunk_encode(buf, sizeof(buf), NULL, 0);
	check_exact_length("GENERATE tokens (none)", pt_dec_chunk, buf, n);
	n = kvp_generate_done_encode(buf, sizeof(buf), &d, pt_gx_logits);
	check_exact_length("GENERATE_DONE (logits)", pt_dec_done, buf, n);
	n = kvp_generate_done_encode(buf, sizeof(buf), &d0, NULL);
	check_exact_length("GENERATE_DONE (no logits)", pt_dec_done, buf, n);

	struct kvp_admin_req a = { KVP_ADMIN_PIN, KVP_ADMIN_F_TENANT, 7, 10, NULL, 0, NULL };
	struct kvp_admin_req a0 = { KVP_ADMIN_CLEAR, 0, 0, 0, NULL, 0, NULL };
	struct kvp_admin_req ac = { KVP_ADMIN_CONFIG, 0, 0, 0, NULL, 9, "log-level" };
	struct kvp_admin_req ax = { 77, KVP_ADMIN_F_ALL, 0, 3, NULL, 4, "text" };
	struct kvp_admin_reply ar = { KVP_ADMIN_CONFIG, 0, 17, "log-level = info\n" };
	struct kvp_admin_reply ar0 = { KVP_ADMIN_EVICT, 3, 0, NULL };

	n = kvp_admin_req_encode(buf, sizeof(buf), &a, pt_ex_tokens);
	check_exact_length("ADMIN (tokens)", pt_dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &a0, NULL);
	check_exact_length("ADMIN (nothing)", pt_dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &ac, NULL);
	check_exact_length("ADMIN (text)", pt_dec_admin, buf, n);
	n = kvp_admin_req_encode(buf, sizeof(buf), &ax, ids);
	check_exact_length("ADMIN (unknown op: tokens and text)", pt_dec_admin, buf, n);
	n = kvp_admin_reply_encode(buf, sizeof(buf), &ar);
	check_exact_length("ADMIN reply", pt_dec_admin_reply, buf, n);
	n = kvp_admin_reply_encode(buf, sizeof(buf), &ar0);
	check_exact_length("ADMIN reply (no text)", pt_dec_admin_reply, buf, n);
}

/* ---- limits ---------------------------------------------------------------------------------- */

Test(limits, names_over_255)
{
	static char big[KVP_NAME_MAX + 1];
	struct kvp_hello a = { 1, 0, big, KVP_NAME_MAX + 1, "", 0 };
	struct kvp_hello s = { 1, 0, "", 0, big, KVP_NAME_MAX + 1 };
	struct kvp_hello_reply r = { 1, 16, 1, 1, 0, 0, big, KVP_NAME_MAX + 1, 0, 0 };
	uint8_t buf[1024];

	memset(big, 'z', sizeof(big));
	cr_assert_eq(kvp_hello_encode(buf, sizeof(buf), &a), 0);
	cr_assert_eq(kvp_hello_encode(buf, sizeof(buf), &s), 0);
	cr_assert_eq(kvp_hello_reply_encode(buf, sizeof(buf), &r), 0);

	/* Hand-built payloads whose layout is sound but whose strings are 256 bytes. */
	size_t n = 0;

	pt_put32(buf, 1);
	pt_put32(buf + 4, 0);
	pt_put16(buf + 8, KVP_NAME_MAX + 1);
	memset(buf + 10, 'a', KVP_NAME_MAX + 1);
	n = 10 + KVP_NAME_MAX + 1;
	pt_put16(buf + n, 0);
	n += 2;
	uint8_t *b = pt_exact(buf, n);

	cr_assert_eq(pt_dec_hello(b, n), KVP_ETOOBIG, "adapter of 256 bytes");
	free(b);

	pt_put16(buf + 8, 0);
	pt_put16(buf + 10, KVP_NAME_MAX + 1);
	memset(buf + 12, 's', KVP_NAME_MAX + 1);
	n = 12 + KVP_NAME_MAX + 1;
	b = pt_exact(buf, n);
	cr_assert_eq(pt_dec_hello(b, n), KVP_ETOOBIG, "salt of 256 bytes");
	free(b);

	memset(buf, 0, 24);
	pt_put16(buf + 24, KVP_NAME_MAX + 1);
	memset(buf + 26, 'n', KVP_NAME_MAX + 1);
	n = 26 + KVP_NAME_MAX + 1;
	b = pt_exact(buf, n);
	cr_assert_eq(pt_dec_hello_reply(b, n), KVP_ETOOBIG, "name of 256 bytes");
	free(b);

	/* A long name that is also cut short is malformed first. */
	b = pt_exact(buf, n - 1);
	cr_assert_eq(pt_dec_hello_reply(b, n - 1), KVP_EPROTO);
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
	pt_put32(b, 2);
	pt_put16(b + 4, KVP_ERROR_MSG_MAX + 1);
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
	pt_put32(b, 0x80000000u);
	cr_assert_eq(kvp_error_decode(b, 6, &m), KVP_EPROTO);
	pt_put32(b, 0x7FFFFFFFu);
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	pt_put32(b, 99);   /* unknown to this build, but a well-formed error */
	cr_assert_eq(kvp_error_decode(b, 6, &m), 0);
	cr_assert_eq(m.code, 99);
}

Test(limits, token_count)
{
	uint32_t t[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	uint8_t buf[64];
	struct kvp_tokens_req m;
	size_t n = kvp_tokens_req_encode(buf, sizeof(buf), 0, t, 9);
	uint8_t *b = pt_exact(buf, n);

	cr_assert_eq(kvp_tokens_req_decode(b, n, 9, &m), 0);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 8, &m), KVP_ETOOBIG);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 0, &m), KVP_ETOOBIG);
	free(b);

	/* A count that claims more than the payload holds: malformed, never read. */
	pt_put32(buf + 4, UINT32_MAX);
	b = pt_exact(buf, n);
	cr_assert_eq(kvp_tokens_req_decode(b, n, UINT32_MAX, &m), KVP_EPROTO);
	cr_assert_eq(kvp_tokens_req_decode(b, n, 4, &m), KVP_EPROTO, "layout before limits");
	free(b);
	/* 0x40000000 * 4 wraps to 0 in 32 bits: must still be caught. */
	pt_put32(buf + 4, 0x40000000u);
	b = pt_exact(buf, 8);
	cr_assert_eq(kvp_tokens_req_decode(b, 8, UINT32_MAX, &m), KVP_EPROTO);
	free(b);
}

Test(limits, blocks_count_wrap)
{
	uint8_t buf[24] = { 0 };
	struct kvp_blocks_reply m;

	pt_put32(buf + 20, 0x40000000u);
	uint8_t *b = pt_exact(buf, sizeof(buf));

	cr_assert_eq(kvp_blocks_reply_decode(b, sizeof(buf), &m), KVP_EPROTO);
	pt_put32(b + 20, UINT32_MAX);
	cr_assert_eq(kvp_blocks_reply_decode(b, sizeof(buf), &m), KVP_EPROTO);
	free(b);
}

Test(limits, unknown_flags)
{
	uint8_t buf[64];
	size_t n;
	uint8_t *b;
	struct kvp_tokens_req tr;

	/* LOOKUP: only PIN (KEEP is INSERT's: proto_keep.c) */
	cr_assert_eq(kvp_tokens_req_encode(buf, sizeof(buf), 2, pt_ex_tokens, 1), 0);
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, pt_ex_tokens, 1);
	for (int bit = 1; bit < 32; bit++) {
		pt_put32(buf, KVP_F_PIN | 1u << bit);
		b = pt_exact(buf, n);
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
	pt_put32(buf + 4, 1);
	b = pt_exact(buf, n);
	cr_assert_eq(pt_dec_hello(b, n), KVP_EINVAL);
	free(b);

	/* HELLO reply: only INDEX_ONLY */
	struct kvp_hello_reply hr = { 1, 16, 1, 1, 0, 0, "", 0, 0, 0 };

	n = kvp_hello_reply_encode(buf, sizeof(buf), &hr);
	pt_put32(buf + 16, KVP_HELLO_INDEX_ONLY | 2);
	b = pt_exact(buf, n);
	cr_assert_eq(pt_dec_hello_reply(b, n), KVP_EINVAL);
	free(b);
}

/* A sound GENERATE payload (2 stop ids, 5 tokens; 64 bytes) in buf, for patching. */
static size_t generate_base(uint8_t *buf, size_t cap)
{
	static const uint32_t stop[2] = { 2, 9 };
	struct kvp_generate_req g = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 2, NULL, 5, NULL,
				      0, 0 };
	size_t n = kvp_generate_req_encode(buf, cap, &g, stop, pt_ex_tokens);

	cr_assert_eq(n, 64);
	return n;
}

/* Decode an exact copy of buf with max_tokens and return the status; *out gets m. */
static int generate_decode_copy(const uint8_t *buf, size_t n, uint32_t max_tokens,
				struct kvp_generate_req *out)
{
	uint8_t *b = pt_exact(buf, n);
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
		struct kvp_generate_req e = { 0, 1, pt_bitsf(bad[i]), 0, 1.0f, 0, 0, NULL, 1,
					      NULL, 0, 0 };

		pt_put32(buf + 8, bad[i]);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "bits 0x%08x",
			     bad[i]);
		cr_assert_eq(pt_fbits(m.temperature), bad[i], "fields are filled");
		cr_assert_eq(kvp_generate_req_encode(eb, sizeof(eb), &e, NULL, pt_ex_tokens), 0,
			     "the encoder refuses it too");
	}
	/* -0, 0, the smallest denormal and FLT_MAX are fine */
	pt_putf(buf + 8, -0.0f);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	pt_put32(buf + 8, 1);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	pt_putf(buf + 8, FLT_MAX);
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
		struct kvp_generate_req e = { 0, 1, 0.0f, 0, pt_bitsf(bad[i]), 0, 0, NULL, 1,
					      NULL, 0, 0 };

		pt_put32(buf + 16, bad[i]);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "top_p bits 0x%08x",
			     bad[i]);
		cr_assert_eq(kvp_generate_req_encode_head(hb, sizeof(hb), &e, NULL), 0);
	}
	pt_putf(buf + 16, 1.0f);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	pt_put32(buf + 16, 1);   /* the smallest denormal: above 0 */
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
}

Test(limits, generate_max_new_and_counts)
{
	static uint32_t stop[KVP_STOP_MAX + 1];
	uint8_t buf[512];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	pt_put32(buf + 4, KVP_GEN_MAX_NEW);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
	pt_put32(buf + 4, KVP_GEN_MAX_NEW + 1);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "max_new over 2^20");
	pt_put32(buf + 4, UINT32_MAX);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL);
	pt_put32(buf + 4, 0);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0, "max_new 0: prefill only");

	/* n_stop 64 is the most; 65, with all its bytes present, is out of range. */
	struct kvp_generate_req g = { 0, 4, 0.0f, 0, 1.0f, 0, KVP_STOP_MAX, NULL, 1, NULL, 0, 0 };

	n = kvp_generate_req_encode(buf, sizeof(buf), &g, stop, pt_ex_tokens);
	cr_assert_eq(n, 36 + 4 * KVP_STOP_MAX + 4);
	cr_assert_eq(generate_decode_copy(buf, n, 1, &m), 0);
	g.n_stop = KVP_STOP_MAX + 1;
	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &g, stop, pt_ex_tokens), 0);
	cr_assert_eq(kvp_generate_req_size(KVP_STOP_MAX + 1, 1), n + 4);
	pt_put32(buf + 28, KVP_STOP_MAX + 1);
	memmove(buf + 32 + 4 * (KVP_STOP_MAX + 1), buf + 32 + 4 * KVP_STOP_MAX, 8);
	pt_put32(buf + 32 + 4 * KVP_STOP_MAX, 77);
	cr_assert_eq(generate_decode_copy(buf, n + 4, 1, &m), KVP_EINVAL, "n_stop 65");
	cr_assert_eq(m.n_stop, KVP_STOP_MAX + 1);
	cr_assert_eq(m.n_tokens, 1);
	cr_assert_eq(generate_decode_copy(buf, n + 3, 1, &m), KVP_EPROTO, "layout first");

	/* n_tokens 0: sound layout, out of range; refused by the encoder too. */
	struct kvp_generate_req z = { 0, 4, 0.0f, 0, 1.0f, 0, 0, NULL, 0, NULL, 0, 0 };

	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &z, NULL, NULL), 0);
	memset(buf, 0, 36);
	pt_putf(buf + 16, 1.0f);
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
	pt_putf(buf + 8, NAN);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EINVAL);
	pt_put32(buf, 4);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EINVAL);

	/* Counts that claim more than the payload holds: malformed, never read, no wrap. */
	n = generate_base(buf, sizeof(buf));
	pt_put32(buf + 28, 0x40000000u);   /* n_stop * 4 wraps to 0 in 32 bits */
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	pt_put32(buf + 28, UINT32_MAX);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	n = generate_base(buf, sizeof(buf));
	pt_put32(buf + 40, 0x40000000u);   /* n_tokens */
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO);
	cr_assert_eq(generate_decode_copy(buf, n, 4, &m), KVP_EPROTO, "layout before limits");
	pt_put32(buf + 40, 4);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO, "4 bytes extra");
	pt_put32(buf + 40, 6);
	cr_assert_eq(generate_decode_copy(buf, n, UINT32_MAX, &m), KVP_EPROTO, "4 bytes short");
}

Test(limits, generate_flags)
{
	uint8_t buf[64], hb[64];
	struct kvp_generate_req m;
	size_t n = generate_base(buf, sizeof(buf));

	for (int bit = 1; bit < 32; bit++) {
		struct kvp_generate_req e = { KVP_GEN_LOGITS | 1u << bit, 1, 0.0f, 0, 1.0f, 0, 0,
					      NULL, 1, NULL, 0, 0 };

		if ((1u << bit) & KVP_GEN_FLAGS_KNOWN)
			continue;   /* KEEP: its fields follow the tokens (proto_keep.c) */
		pt_put32(buf, KVP_GEN_LOGITS | 1u << bit);
		cr_assert_eq(generate_decode_copy(buf, n, 5, &m), KVP_EINVAL, "bit %d", bit);
		cr_assert_eq(m.flags, KVP_GEN_LOGITS | 1u << bit);
		cr_assert(m.flags & ~KVP_GEN_FLAGS_KNOWN, "the daemon can tell flags apart");
		cr_assert_eq(generate_decode_copy(buf, n, 0, &m), KVP_EINVAL, "flags before limits");
		cr_assert_eq(generate_decode_copy(buf, n - 1, 5, &m), KVP_EPROTO, "layout first");
		cr_assert_eq(kvp_generate_req_encode_head(hb, sizeof(hb), &e, NULL), 0);
	}
	pt_put32(buf, 0);
	cr_assert_eq(generate_decode_copy(buf, n, 5, &m), 0);
}

Test(limits, generate_done_reserved_and_finish)
{
	uint8_t buf[128];
	struct kvp_generate_done d = { 10, 8, 2, 4, KVP_FINISH_STOP, 5, 6, 7, 2, NULL };
	struct kvp_generate_done m;
	size_t n = kvp_generate_done_encode(buf, sizeof(buf), &d, pt_gx_logits);
	uint8_t *b;

	for (uint32_t f = 0; f <= KVP_FINISH_CONTEXT; f++) {
		pt_put32(buf + 16, f);
		b = pt_exact(buf, n);
		cr_assert_eq(kvp_generate_done_decode(b, n, &m), 0);
		cr_assert_eq(m.finish, f);
		free(b);
	}
	pt_put32(buf + 16, 3);
	b = pt_exact(buf, n);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EINVAL, "finish 3");
	cr_assert_eq(kvp_generate_done_decode(b, n - 1, &m), KVP_EPROTO, "layout first");
	free(b);
	d.finish = 3;
	cr_assert_eq(kvp_generate_done_encode(buf, sizeof(buf), &d, pt_gx_logits), 0);
	d.finish = 0;
	n = kvp_generate_done_encode(buf, sizeof(buf), &d, pt_gx_logits);
	for (int bit = 0; bit < 32; bit++) {
		pt_put32(buf + 20, 1u << bit);
		b = pt_exact(buf, n);
		cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EINVAL, "reserved bit %d", bit);
		free(b);
	}
	/* n_logits that claims more than is there, wrapping or not */
	pt_put32(buf + 20, 0);
	pt_put32(buf + 48, 0x40000000u);
	b = pt_exact(buf, n);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EPROTO);
	pt_put32(b + 48, 3);
	cr_assert_eq(kvp_generate_done_decode(b, n, &m), KVP_EPROTO);
	free(b);

	/* token frame: a count the payload cannot hold */
	pt_put32(buf, 0x40000000u);
	b = pt_exact(buf, 4);
	cr_assert_eq(kvp_token_chunk_decode(b, 4, &(struct kvp_token_chunk){ 0 }), KVP_EPROTO);
	free(b);
}
