/*
 * proto_admin.c - the version-2 ADMIN request and its reply (proto/kvp_proto.h): round
 * trips, then the request's rules: reserved flags, tenant, text bytes, the fields each op
 * takes, limits, and their precedence.
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"
#include "proto_test_util.h"

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
	pt_put32(b, op);
	pt_put32(b + 4, flags);
	pt_put32(b + 8, tenant);
	pt_put32(b + 12, n_tokens);
	for (uint32_t i = 0; i < n_tokens; i++)
		pt_put32(b + 16 + 4 * (size_t)i, 1000 + i);
	pt_put16(b + 16 + (size_t)n_tokens * 4, text_len);
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
	uint8_t *e = pt_exact(b, n);
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
		{ 7, KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL, 3, 7, NULL, 5, "x y z" },
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
		{ KVP_ADMIN_EXPLAIN, 0, 4, 0, 0 },
		{ KVP_ADMIN_EXPLAIN, KVP_ADMIN_F_TENANT, 4, 0, 0 },
		{ KVP_ADMIN_EXPLAIN, 0, 0, 0, KVP_EINVAL },
		{ KVP_ADMIN_EXPLAIN, KVP_ADMIN_F_ALL, 4, 0, KVP_EINVAL },
		{ KVP_ADMIN_EXPLAIN, 0, 4, 1, KVP_EINVAL },
		/* unknown ops take anything but reserved bits; the daemon refuses the op */
		{ 0, KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL, 5, 5, 0 },
		{ 7, 0, 0, 0, 0 },
		{ 0x80000001u, KVP_ADMIN_F_ALL, 1, 1, 0 },
	};
	uint32_t toks[16] = { 0 };
	struct kvp_admin_req m;

	cr_assert_eq(KVP_ADMIN_CLEAR, 1);
	cr_assert_eq(KVP_ADMIN_EVICT, 2);
	cr_assert_eq(KVP_ADMIN_PIN, 3);
	cr_assert_eq(KVP_ADMIN_UNPIN, 4);
	cr_assert_eq(KVP_ADMIN_CONFIG, 5);
	cr_assert_eq(KVP_ADMIN_EXPLAIN, 6);
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

		pt_put32(raw, KVP_ADMIN_EVICT);
		pt_put32(raw + 12, 0x40000001u);
		cr_assert_eq(kvp_admin_req_decode(raw, sizeof(raw), UINT32_MAX, &m), KVP_EPROTO);
		pt_put32(raw + 12, UINT32_MAX);
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
	e = pt_exact(b, n - 1);
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
	pt_put32(b, KVP_ADMIN_CONFIG);
	pt_put32(b + 4, 0);
	pt_put32(b + 8, KVP_ADMIN_REPLY_TEXT_MAX + 1);
	memcpy(b + 12, big, sizeof(big));
	cr_assert_eq(kvp_admin_reply_decode(b, sz, &m), KVP_ETOOBIG);
	cr_assert_eq(m.text_len, KVP_ADMIN_REPLY_TEXT_MAX + 1);
	free(b);
	/* a text_len that runs past the payload is malformed, whatever its size */
	pt_put32(hdr, 1);
	pt_put32(hdr + 4, 0);
	pt_put32(hdr + 8, UINT32_MAX);
	b = pt_exact(hdr, sizeof(hdr));
	cr_assert_eq(kvp_admin_reply_decode(b, sizeof(hdr), &m), KVP_EPROTO);
	free(b);
}
