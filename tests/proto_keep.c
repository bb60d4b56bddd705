/*
 * proto_keep.c - KEEP in the codec (proto/kvp_proto.h): an INSERT with KVP_F_KEEP and a
 * GENERATE with KVP_GEN_KEEP carry u32 keep_s and u32 priority after their tokens.
 *
 *   INSERT    | flags | n_tokens | tokens (4T) | keep_s | priority |   16 + 4T
 *   GENERATE  | ... n_stop | stop | n_tokens | tokens | keep_s | priority |
 *
 * Round trips of both layouts, the encoders' refusals, the decoders' order (layout,
 * reserved bits, keep_s out of range, then max_tokens) with every field filled when the
 * layout is sound, and KEEP as a reserved bit of LOOKUP (and FLEET, which takes its
 * decoder).
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "kvp_le.h"
#include "kvp_proto.h"
#include "proto_test_util.h"

/* The decoders on an exact-size copy, freed before they return: m's pointers dangle,
 * its other fields are what was decoded. */
static int insert_decode_copy(const uint8_t *buf, size_t n, uint32_t max_tokens,
			      struct kvp_tokens_req *m)
{
	uint8_t *b = pt_exact(buf, n);
	int rc;

	memset(m, 0xA5, sizeof(*m));   /* every field must be written */
	rc = kvp_tokens_req_decode_insert(b, n, max_tokens, m);
	free(b);
	return rc;
}

static int lookup_decode_copy(const uint8_t *buf, size_t n, uint32_t max_tokens,
			      struct kvp_tokens_req *m)
{
	uint8_t *b = pt_exact(buf, n);
	int rc;

	memset(m, 0xA5, sizeof(*m));
	rc = kvp_tokens_req_decode(b, n, max_tokens, m);
	free(b);
	return rc;
}

static int generate_decode_copy(const uint8_t *buf, size_t n, uint32_t max_tokens,
				struct kvp_generate_req *m)
{
	uint8_t *b = pt_exact(buf, n);
	int rc;

	memset(m, 0xA5, sizeof(*m));
	rc = kvp_generate_req_decode(b, n, max_tokens, m);
	free(b);
	return rc;
}

/* ---- INSERT ------------------------------------------------------------------------- */

Test(keep, insert_roundtrip)
{
	static const struct {
		uint32_t flags, n, keep_s, priority;
	} cases[] = {
		{ KVP_F_KEEP, 10, 3600, 5 },
		{ KVP_F_KEEP | KVP_F_PIN, 10, 1, 0 },
		{ KVP_F_KEEP, 0, KVP_KEEP_MAX_S, UINT32_MAX },
		{ KVP_F_KEEP | KVP_F_PIN, 1, 604799, 0x80000000u },
	};
	uint8_t buf[128];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const uint32_t n = cases[i].n;
		const size_t sz = kvp_tokens_req_size_flags(n, cases[i].flags);
		struct kvp_tokens_req m;
		uint32_t got[10];

		cr_assert_eq(sz, 16 + 4 * (size_t)n);
		cr_assert_eq(kvp_tokens_req_encode_keep(buf, sz - 1, cases[i].flags, pt_ex_tokens,
							n, cases[i].keep_s, cases[i].priority), 0,
			     "short cap");
		cr_assert_eq(kvp_tokens_req_encode_keep(buf, sz, cases[i].flags, pt_ex_tokens, n,
							cases[i].keep_s, cases[i].priority), sz);
		/* keep_s and priority sit right after the tokens, little-endian */
		cr_assert_eq(kvp_le_get_u32(buf + 8 + 4 * (size_t)n), cases[i].keep_s);
		cr_assert_eq(kvp_le_get_u32(buf + 12 + 4 * (size_t)n), cases[i].priority);
		cr_assert_eq(insert_decode_copy(buf, sz, n, &m), 0, "case %zu", i);
		cr_assert_eq(m.flags, cases[i].flags);
		cr_assert_eq(m.n_tokens, n);
		cr_assert_eq(m.keep_s, cases[i].keep_s);
		cr_assert_eq(m.priority, cases[i].priority);
		cr_assert_eq(kvp_tokens_req_decode_insert(buf, sz, n, &m), 0);   /* tokens in buf */
		kvp_load_u32s(got, m.tokens, n);
		cr_assert(n == 0 || memcmp(got, pt_ex_tokens, 4 * (size_t)n) == 0);
		if (n)
			cr_assert_eq(insert_decode_copy(buf, sz, n - 1, &m), KVP_ETOOBIG);
	}
}

Test(keep, insert_without_keep_is_lookups_layout)
{
	uint8_t a[64], b[64];
	struct kvp_tokens_req m;
	size_t na, nb;

	cr_assert_eq(kvp_tokens_req_size_flags(10, KVP_F_PIN), kvp_tokens_req_size(10));
	na = kvp_tokens_req_encode(a, sizeof(a), KVP_F_PIN, pt_ex_tokens, 10);
	nb = kvp_tokens_req_encode_keep(b, sizeof(b), KVP_F_PIN, pt_ex_tokens, 10, 0, 0);
	pt_assert_bytes(b, nb, a, na, "INSERT without KEEP");
	cr_assert_eq(insert_decode_copy(b, nb, 10, &m), 0);
	cr_assert_eq(m.flags, KVP_F_PIN);
	cr_assert(m.keep_s == 0 && m.priority == 0, "0 and 0 without the flag");
	cr_assert_eq(lookup_decode_copy(b, nb, 10, &m), 0);
	cr_assert(m.keep_s == 0 && m.priority == 0);
	/* fields a request without KEEP does not carry are refused, not dropped */
	cr_assert_eq(kvp_tokens_req_encode_keep(b, sizeof(b), KVP_F_PIN, pt_ex_tokens, 10, 60, 0),
		     0);
	cr_assert_eq(kvp_tokens_req_encode_keep(b, sizeof(b), 0, pt_ex_tokens, 10, 0, 1), 0);
}

Test(keep, insert_keep_s_out_of_range)
{
	static const uint32_t bad[] = { 0, KVP_KEEP_MAX_S + 1, UINT32_MAX };
	uint8_t buf[64];
	struct kvp_tokens_req m;
	size_t n = kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_KEEP, pt_ex_tokens, 3, 60,
					      9);

	cr_assert_eq(n, 28);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t eb[64];

		pt_put32(buf + 20, bad[i]);
		cr_assert_eq(insert_decode_copy(buf, n, 3, &m), KVP_EINVAL, "keep_s %u", bad[i]);
		/* the layout is sound: every field is there for the daemon to name */
		cr_assert_eq(m.flags, KVP_F_KEEP);
		cr_assert(!(m.flags & ~KVP_INSERT_FLAGS_KNOWN), "no reserved bit: a value");
		cr_assert_eq(m.n_tokens, 3);
		cr_assert_eq(m.keep_s, bad[i]);
		cr_assert_eq(m.priority, 9);
		cr_assert_eq(insert_decode_copy(buf, n, 0, &m), KVP_EINVAL, "values before limits");
		cr_assert_eq(insert_decode_copy(buf, n - 1, 3, &m), KVP_EPROTO, "layout first");
		cr_assert_eq(kvp_tokens_req_encode_keep(eb, sizeof(eb), KVP_F_KEEP, pt_ex_tokens, 3,
							bad[i], 9), 0, "the encoder refuses it");
	}
	/* a reserved bit beside KEEP: still EINVAL, and the flags say which */
	pt_put32(buf + 20, 0);
	pt_put32(buf, KVP_F_KEEP | 0x4u);
	cr_assert_eq(insert_decode_copy(buf, n, 3, &m), KVP_EINVAL);
	cr_assert(m.flags & ~KVP_INSERT_FLAGS_KNOWN);
	cr_assert_eq(kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_KEEP | 0x4u, pt_ex_tokens,
						3, 60, 9), 0);
}

Test(keep, insert_size_follows_the_flags)
{
	uint8_t buf[64];
	struct kvp_tokens_req m;
	size_t n;

	/* KEEP set, but the frame stops after the tokens: keep_s and priority are missing */
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, pt_ex_tokens, 4);
	pt_put32(buf, KVP_F_PIN | KVP_F_KEEP);
	cr_assert_eq(insert_decode_copy(buf, n, 10, &m), KVP_EPROTO);
	cr_assert_eq(insert_decode_copy(buf, n + 4, 10, &m), KVP_EPROTO, "priority missing");
	/* KEEP clear, but 8 bytes more than the tokens */
	n = kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_KEEP, pt_ex_tokens, 4, 60, 1);
	pt_put32(buf, 0);
	cr_assert_eq(insert_decode_copy(buf, n, 10, &m), KVP_EPROTO);
	cr_assert_eq(insert_decode_copy(buf, n - 8, 10, &m), 0);
	/* n_tokens that would swallow keep_s and priority: a different layout, still exact */
	pt_put32(buf, KVP_F_KEEP);
	pt_put32(buf + 4, 6);
	cr_assert_eq(insert_decode_copy(buf, n, 10, &m), KVP_EPROTO);
	pt_put32(buf + 4, 2);
	cr_assert_eq(insert_decode_copy(buf, n, 10, &m), KVP_EPROTO);
}

Test(keep, keep_on_lookup_is_a_reserved_bit)
{
	uint8_t buf[64];
	struct kvp_tokens_req m;
	size_t n;

	cr_assert_eq(kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_KEEP, pt_ex_tokens, 4), 0);
	cr_assert_eq(kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN | KVP_F_KEEP, pt_ex_tokens,
					   4), 0);
	/* LOOKUP's layout with the bit set: refused as any reserved bit, fields filled */
	n = kvp_tokens_req_encode(buf, sizeof(buf), KVP_F_PIN, pt_ex_tokens, 4);
	pt_put32(buf, KVP_F_PIN | KVP_F_KEEP);
	cr_assert_eq(lookup_decode_copy(buf, n, 10, &m), KVP_EINVAL);
	cr_assert_eq(m.flags, KVP_F_PIN | KVP_F_KEEP);
	cr_assert(m.flags & ~KVP_LOOKUP_FLAGS_KNOWN);
	cr_assert(m.n_tokens == 4 && m.keep_s == 0 && m.priority == 0);
	cr_assert_eq(lookup_decode_copy(buf, n, 0, &m), KVP_EINVAL, "flags before limits");
	/* INSERT's KEEP layout sent as a LOOKUP: 8 bytes too many for LOOKUP's layout */
	n = kvp_tokens_req_encode_keep(buf, sizeof(buf), KVP_F_KEEP, pt_ex_tokens, 4, 60, 1);
	cr_assert_eq(lookup_decode_copy(buf, n, 10, &m), KVP_EPROTO);
	cr_assert_eq(insert_decode_copy(buf, n, 10, &m), 0);
}

/* ---- GENERATE ------------------------------------------------------------------------ */

static const uint32_t gk_stop[2] = { 2, 9 };

static struct kvp_generate_req gk_req(uint32_t keep_s, uint32_t priority)
{
	return (struct kvp_generate_req){
		.flags = KVP_GEN_LOGITS | KVP_GEN_KEEP, .max_new = 8, .temperature = 0.7f,
		.top_k = 40, .top_p = 0.9f, .seed = 42, .n_stop = 2, .n_tokens = 5,
		.keep_s = keep_s, .priority = priority,
	};
}

Test(keep, generate_roundtrip)
{
	static const uint32_t keeps[][2] = { { 1, 0 }, { 3600, 5 }, { KVP_KEEP_MAX_S, UINT32_MAX } };
	uint8_t buf[128], parts[128];

	for (size_t i = 0; i < sizeof(keeps) / sizeof(keeps[0]); i++) {
		struct kvp_generate_req in = gk_req(keeps[i][0], keeps[i][1]), out;
		size_t sz = kvp_generate_req_size_flags(2, 5, in.flags);
		size_t head, tail;

		cr_assert_eq(sz, kvp_generate_req_size(2, 5) + KVP_KEEP_SIZE);
		cr_assert_eq(sz, 36 + 8 + 20 + 8);
		cr_assert_eq(kvp_generate_req_encode(buf, sz - 1, &in, gk_stop, pt_ex_tokens), 0);
		cr_assert_eq(kvp_generate_req_encode(buf, sz, &in, gk_stop, pt_ex_tokens), sz);
		cr_assert_eq(kvp_le_get_u32(buf + sz - 8), keeps[i][0]);
		cr_assert_eq(kvp_le_get_u32(buf + sz - 4), keeps[i][1]);
		cr_assert_eq(generate_decode_copy(buf, sz, 5, &out), 0);
		cr_assert_eq(out.flags, in.flags);
		cr_assert_eq(out.n_stop, 2);
		cr_assert_eq(out.n_tokens, 5);
		cr_assert_eq(out.keep_s, keeps[i][0]);
		cr_assert_eq(out.priority, keeps[i][1]);
		cr_assert_eq(kvp_generate_req_decode(buf, sz, 5, &out), 0);   /* tokens in buf */
		cr_assert_eq(kvp_le_get_u32(out.tokens + 16), pt_ex_tokens[4]);
		cr_assert_eq(generate_decode_copy(buf, sz, 4, &out), KVP_ETOOBIG);

		/* head, the tokens gathered from elsewhere, tail: the same bytes */
		head = kvp_generate_req_encode_head(parts, sizeof(parts), &in, gk_stop);
		cr_assert_eq(head, 44);
		kvp_store_u32s(parts + head, pt_ex_tokens, 5);
		cr_assert_eq(kvp_generate_req_tail_size(&in), KVP_KEEP_SIZE);
		cr_assert_eq(kvp_generate_req_encode_tail(parts + head + 20, KVP_KEEP_SIZE - 1, &in),
			     0, "short cap");
		tail = kvp_generate_req_encode_tail(parts + head + 20, KVP_KEEP_SIZE, &in);
		cr_assert_eq(tail, KVP_KEEP_SIZE);
		pt_assert_bytes(parts, head + 20 + tail, buf, sz, "head + tokens + tail");
	}
}

Test(keep, generate_without_keep_has_no_tail)
{
	struct kvp_generate_req in = gk_req(0, 0), out;
	uint8_t buf[128], tail[8];
	size_t sz;

	in.flags = KVP_GEN_LOGITS;
	cr_assert_eq(kvp_generate_req_tail_size(&in), 0);
	cr_assert_eq(kvp_generate_req_encode_tail(tail, sizeof(tail), &in), 0);
	sz = kvp_generate_req_encode(buf, sizeof(buf), &in, gk_stop, pt_ex_tokens);
	cr_assert_eq(sz, kvp_generate_req_size(2, 5));
	cr_assert_eq(sz, kvp_generate_req_size_flags(2, 5, in.flags));
	cr_assert_eq(generate_decode_copy(buf, sz, 5, &out), 0);
	cr_assert(out.keep_s == 0 && out.priority == 0, "0 and 0 without the flag");
	/* keep_s or priority without the flag: refused, not dropped */
	in.keep_s = 60;
	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &in, gk_stop, pt_ex_tokens), 0);
	cr_assert_eq(kvp_generate_req_encode_head(buf, sizeof(buf), &in, gk_stop), 0);
	in.keep_s = 0;
	in.priority = 1;
	cr_assert_eq(kvp_generate_req_encode(buf, sizeof(buf), &in, gk_stop, pt_ex_tokens), 0);
}

Test(keep, generate_keep_s_out_of_range)
{
	static const uint32_t bad[] = { 0, KVP_KEEP_MAX_S + 1, UINT32_MAX };
	struct kvp_generate_req in = gk_req(60, 3), out;
	uint8_t buf[128];
	size_t sz = kvp_generate_req_encode(buf, sizeof(buf), &in, gk_stop, pt_ex_tokens);

	cr_assert_eq(sz, 72);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvp_generate_req e = gk_req(bad[i], 3);
		uint8_t eb[128];

		pt_put32(buf + sz - 8, bad[i]);
		cr_assert_eq(generate_decode_copy(buf, sz, 5, &out), KVP_EINVAL, "keep_s %u",
			     bad[i]);
		/* a value, not a reserved bit: the daemon answers and keeps the connection */
		cr_assert(!(out.flags & ~KVP_GEN_FLAGS_KNOWN));
		cr_assert_eq(out.keep_s, bad[i]);
		cr_assert_eq(out.priority, 3);
		cr_assert_eq(out.n_tokens, 5);
		cr_assert_eq(generate_decode_copy(buf, sz, 0, &out), KVP_EINVAL,
			     "values before limits");
		cr_assert_eq(generate_decode_copy(buf, sz - 1, 5, &out), KVP_EPROTO,
			     "layout first");
		cr_assert_eq(kvp_generate_req_encode(eb, sizeof(eb), &e, gk_stop, pt_ex_tokens), 0);
		cr_assert_eq(kvp_generate_req_encode_head(eb, sizeof(eb), &e, gk_stop), 0);
	}
}

Test(keep, generate_size_follows_the_flags)
{
	struct kvp_generate_req in = gk_req(60, 3), out;
	uint8_t buf[128];
	size_t sz = kvp_generate_req_encode(buf, sizeof(buf), &in, gk_stop, pt_ex_tokens);

	/* KEEP set, the tail missing or half there */
	cr_assert_eq(generate_decode_copy(buf, sz - 8, 5, &out), KVP_EPROTO);
	cr_assert_eq(generate_decode_copy(buf, sz - 4, 5, &out), KVP_EPROTO);
	/* KEEP clear, a tail there anyway */
	pt_put32(buf, KVP_GEN_LOGITS);
	cr_assert_eq(generate_decode_copy(buf, sz, 5, &out), KVP_EPROTO);
	cr_assert_eq(generate_decode_copy(buf, sz - 8, 5, &out), 0);
	/* a reserved bit beside KEEP: the layout is KEEP's, then EINVAL for the bit */
	pt_put32(buf, KVP_GEN_KEEP | 0x8u);
	cr_assert_eq(generate_decode_copy(buf, sz, 5, &out), KVP_EINVAL);
	cr_assert(out.flags & ~KVP_GEN_FLAGS_KNOWN);
	cr_assert_eq(generate_decode_copy(buf, sz - 8, 5, &out), KVP_EPROTO);
}
