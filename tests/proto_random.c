/*
 * proto_random.c - the codec (proto/kvp_proto.h) on random input: random messages
 * round-trip; mutated frames never crash, and whatever decodes re-encodes to the same
 * bytes (the encoding is canonical). The generator is seeded, so a failure replays.
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"
#include "proto_test_util.h"

/* ---- randomized ---------------------------------------------------------------------------------- */

static void random_string(char *s, uint16_t n)
{
	for (uint16_t i = 0; i < n; i++)
		s[i] = (char)pt_rnd();
}

static uint32_t random_u32(void)
{
	/* mostly small values, sometimes the extremes */
	switch (pt_rnd_below(4)) {
	case 0: return 0;
	case 1: return UINT32_MAX - pt_rnd_below(2);
	case 2: return pt_rnd_below(300);
	default: return (uint32_t)pt_rnd();
	}
}

/* Kinds 0-5, the index messages: HELLO and its reply, LOOKUP/INSERT and their reply,
 * RELEASE, ERROR. Encode one random message of kind k into an exact-size buffer, decode
 * it, compare. */
static void random_roundtrip_index(unsigned k)
{
	char s1[KVP_NAME_MAX], s2[KVP_NAME_MAX];
	uint32_t arr[300], back[300];
	uint8_t *b = NULL;
	size_t sz;

	switch (k) {
	case 0: {
		struct kvp_hello in = { random_u32(), 0,
					s1, (uint16_t)pt_rnd_below(KVP_NAME_MAX + 1),
					s2, (uint16_t)pt_rnd_below(KVP_NAME_MAX + 1) }, out;

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
					      (uint32_t)pt_rnd_below(2), random_u32(), s1,
					      (uint16_t)pt_rnd_below(KVP_NAME_MAX + 1), random_u32(),
					      random_u32() }, out;

		random_string(s1, in.name_len);
		sz = kvp_hello_reply_size(&in);
		b = malloc(sz);
		cr_assert_eq(kvp_hello_reply_encode(b, sz, &in), sz);
		cr_assert_eq(kvp_hello_reply_decode(b, sz, &out), 0);
		cr_assert(out.version == in.version && out.block_tokens == in.block_tokens &&
			  out.capacity_blocks == in.capacity_blocks &&
			  out.max_tokens == in.max_tokens && out.flags == in.flags &&
			  out.tenant == in.tenant && out.name_len == in.name_len);
		/* the model's sizes travel from version 3 on */
		cr_assert(in.version < 3 ? out.vocab_size == 0 && out.ctx_tokens == 0
			  : out.vocab_size == in.vocab_size && out.ctx_tokens == in.ctx_tokens);
		cr_assert(memcmp(out.name, s1, in.name_len) == 0);
		break;
	}
	case 2: {
		/* LOOKUP's flags, or INSERT's with KEEP half the time */
		uint32_t n = pt_rnd_below(300), flags = (uint32_t)pt_rnd_below(4);
		uint32_t keep_s = flags & KVP_F_KEEP ? 1 + pt_rnd_below(KVP_KEEP_MAX_S) : 0;
		uint32_t priority = flags & KVP_F_KEEP ? random_u32() : 0;
		struct kvp_tokens_req out;

		for (uint32_t i = 0; i < n; i++)
			arr[i] = random_u32();
		sz = kvp_tokens_req_size_flags(n, flags);
		b = malloc(sz);
		cr_assert_eq(kvp_tokens_req_encode_keep(b, sz, flags, arr, n, keep_s, priority), sz);
		cr_assert_eq(kvp_tokens_req_decode_insert(b, sz, n, &out), 0);
		cr_assert(out.flags == flags && out.n_tokens == n && out.keep_s == keep_s &&
			  out.priority == priority);
		kvp_load_u32s(back, out.tokens, n);
		cr_assert(memcmp(back, arr, (size_t)n * 4) == 0);
		if (n)
			cr_assert_eq(kvp_tokens_req_decode_insert(b, sz, n - 1, &out), KVP_ETOOBIG);
		/* LOOKUP's decoder takes what has no KEEP and refuses the rest */
		cr_assert_eq(kvp_tokens_req_decode(b, sz, n, &out),
			     flags & KVP_F_KEEP ? KVP_EPROTO : 0);
		break;
	}
	case 3: {
		struct kvp_blocks_reply in = { random_u32(), random_u32(), random_u32(), pt_rnd(),
					       pt_rnd_below(300), NULL }, out;

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
		uint64_t l = pt_rnd(), got;

		sz = 8;
		b = malloc(sz);
		cr_assert_eq(kvp_release_encode(b, sz, l), 8);
		cr_assert_eq(kvp_release_decode(b, sz, &got), 0);
		cr_assert_eq(got, l);
		break;
	}
	case 5: {
		char msg[KVP_ERROR_MSG_MAX + 1];
		size_t len = pt_rnd_below(KVP_ERROR_MSG_MAX + 1);
		int st = -(int)(1 + pt_rnd_below(16));
		struct kvp_error out;

		for (size_t i = 0; i < len; i++)
			msg[i] = (char)(' ' + pt_rnd_below(95));
		msg[len] = '\0';
		sz = kvp_error_size(len);
		b = malloc(sz);
		cr_assert_eq(kvp_error_encode(b, sz, st, msg), sz);
		cr_assert_eq(kvp_error_decode(b, sz, &out), 0);
		cr_assert(out.code == (uint32_t)-st && out.msg_len == len);
		cr_assert(memcmp(out.msg, msg, len) == 0);
		break;
	}
	}
	free(b);
}

/* Kinds 6-10, GENERATE and ADMIN: the GENERATE request, its token frame, GENERATE_DONE,
 * ADMIN and its reply. The same round trip. */
static void random_roundtrip_generate_admin(unsigned k)
{
	uint32_t arr[300], back[300];   /* kind 6: at most 64 stop + 200 tokens */
	uint8_t *b;
	size_t sz;

	switch (k) {
	case 6: {
		uint32_t ns = pt_rnd_below(KVP_STOP_MAX + 1), nt = 1 + pt_rnd_below(200);
		struct kvp_generate_req in = {
			(uint32_t)pt_rnd_below(4), pt_rnd_below(KVP_GEN_MAX_NEW + 1),
			pt_rnd_below(4) ? (float)pt_rnd_below(2000) / 100.0f : 0.0f, random_u32(),
			(float)(1 + pt_rnd_below(1000)) / 1000.0f, pt_rnd(), ns, NULL, nt, NULL,
			0, 0,
		}, out;

		if (in.flags & KVP_GEN_KEEP) {
			in.keep_s = 1 + pt_rnd_below(KVP_KEEP_MAX_S);
			in.priority = random_u32();
		}
		for (uint32_t i = 0; i < ns + nt; i++)
			arr[i] = random_u32();
		sz = kvp_generate_req_size_flags(ns, nt, in.flags);
		b = malloc(sz);
		cr_assert_eq(kvp_generate_req_encode(b, sz, &in, arr, arr + ns), sz);
		cr_assert_eq(kvp_generate_req_decode(b, sz, nt, &out), 0);
		cr_assert(out.flags == in.flags && out.max_new == in.max_new &&
			  pt_fbits(out.temperature) == pt_fbits(in.temperature) &&
			  out.top_k == in.top_k &&
			  pt_fbits(out.top_p) == pt_fbits(in.top_p) && out.seed == in.seed &&
			  out.n_stop == ns && out.n_tokens == nt && out.keep_s == in.keep_s &&
			  out.priority == in.priority);
		kvp_load_u32s(back, out.stop, ns);
		kvp_load_u32s(back + ns, out.tokens, nt);
		cr_assert(memcmp(back, arr, ((size_t)ns + nt) * 4) == 0);
		cr_assert_eq(kvp_generate_req_decode(b, sz, nt - 1, &out), KVP_ETOOBIG);
		break;
	}
	case 7: {
		uint32_t n = pt_rnd_below(300);
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
						random_u32(), pt_rnd_below(3), pt_rnd(), pt_rnd(),
						pt_rnd(), pt_rnd_below(300), NULL }, out;

		for (uint32_t i = 0; i < in.n_logits; i++)
			lg[i] = pt_bitsf((uint32_t)pt_rnd());
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
						KVP_ADMIN_UNPIN, KVP_ADMIN_CONFIG, KVP_ADMIN_EXPLAIN,
						0, 7, UINT32_MAX };
		char text[300];
		struct kvp_admin_req in = { ops[pt_rnd_below(9)], 0, 0, 0, NULL, 0, text }, out;

		switch (in.op) {
		case KVP_ADMIN_CLEAR:
			in.flags = pt_rnd_below(3);   /* none, TENANT or ALL */
			break;
		case KVP_ADMIN_EVICT:
		case KVP_ADMIN_PIN:
		case KVP_ADMIN_UNPIN:
		case KVP_ADMIN_EXPLAIN:
			in.flags = pt_rnd_below(2);
			in.n_tokens = 1 + pt_rnd_below(299);
			break;
		case KVP_ADMIN_CONFIG:
			in.text_len = (uint16_t)pt_rnd_below(300);
			break;
		default:
			in.flags = pt_rnd_below(4);
			in.n_tokens = pt_rnd_below(300);
			in.text_len = (uint16_t)pt_rnd_below(300);
			break;
		}
		if (in.flags & KVP_ADMIN_F_TENANT)
			in.tenant = random_u32();
		for (uint32_t i = 0; i < in.n_tokens; i++)
			arr[i] = random_u32();
		for (uint16_t i = 0; i < in.text_len; i++)
			text[i] = (char)(0x20 + pt_rnd_below(0xE0));
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
		struct kvp_admin_reply in = { random_u32(), random_u32(), pt_rnd_below(300), text };
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

/* Encode one random message of kind k into an exact-size buffer, decode it, compare. */
static void random_roundtrip(unsigned k)
{
	if (k < 6)
		random_roundtrip_index(k);
	else
		random_roundtrip_generate_admin(k);
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
	case 11: {
		struct kvp_tokens_req t;
		uint32_t tok[1024];

		if (kvp_tokens_req_decode_insert(p, n, 1024, &t) != 0)
			return;
		kvp_load_u32s(tok, t.tokens, t.n_tokens);
		m = kvp_tokens_req_encode_keep(out, sizeof(out), t.flags, tok, t.n_tokens, t.keep_s,
					       t.priority);
		break;
	}
	case 6:
	case 12: {
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
	case 10: {
		struct kvp_admin_reply a;

		if (kvp_admin_reply_decode(p, n, &a) != 0)
			return;
		m = kvp_admin_reply_encode(out, sizeof(out), &a);
		break;
	}
	}
	pt_assert_bytes(out, m, p, n, "re-encoded frame");
}

Test(random, mutated_payloads_never_overread)
{
	uint8_t base[13][512];
	size_t base_n[13];
	struct kvp_generate_req gr = { KVP_GEN_LOGITS, 8, 0.7f, 40, 0.9f, 42, 2, NULL, 6, NULL,
				       0, 0 };
	struct kvp_generate_req gk = { KVP_GEN_KEEP, 8, 0.0f, 0, 1.0f, 42, 1, NULL, 5, NULL,
				       3600, 2 };
	struct kvp_generate_done gd = { 6, 4, 2, 3, KVP_FINISH_STOP, 1250, 1100, 2300, 8, NULL };
	struct kvp_hello he = { 1, 0, "lora", 4, "s", 1 };
	struct kvp_hello_reply hr = { 1, 16, 64, 4096, 1, 1000, "idx", 3, 0, 0 };
	uint32_t ids[3] = { 9, 8, 7 };
	struct kvp_blocks_reply br = { 48, 50, 3, 7, 3, NULL };

	base_n[0] = kvp_hello_encode(base[0], 512, &he);
	base_n[1] = kvp_hello_reply_encode(base[1], 512, &hr);
	base_n[2] = kvp_tokens_req_encode(base[2], 512, 1, pt_ex_tokens, 10);
	base_n[3] = kvp_blocks_reply_encode(base[3], 512, &br, ids);
	base_n[4] = kvp_release_encode(base[4], 512, 77);
	base_n[5] = kvp_error_encode(base[5], 512, KVP_EBUSY, "busy");
	base_n[6] = kvp_generate_req_encode(base[6], 512, &gr, ids, pt_ex_tokens);
	base_n[7] = kvp_token_chunk_encode(base[7], 512, ids, 3);
	base_n[8] = kvp_generate_done_encode(base[8], 512, &gd, pt_gx_logits);
	{
		/* an unknown op: the one request that carries tokens and text together */
		struct kvp_admin_req ar = { 77, KVP_ADMIN_F_TENANT, 1000, 10, NULL, 14,
					    "max-leases=128" };
		struct kvp_admin_reply rr = { KVP_ADMIN_CONFIG, 0, 17, "max-leases = 128\n" };

		base_n[9] = kvp_admin_req_encode(base[9], 512, &ar, pt_ex_tokens);
		base_n[10] = kvp_admin_reply_encode(base[10], 512, &rr);
	}
	/* INSERT and GENERATE with KEEP: keep_s and priority after the tokens */
	base_n[11] = kvp_tokens_req_encode_keep(base[11], 512, KVP_F_PIN | KVP_F_KEEP, pt_ex_tokens,
						10, 60, 7);
	base_n[12] = kvp_generate_req_encode(base[12], 512, &gk, ids, pt_ex_tokens);

	for (unsigned i = 0; i < 130000; i++) {
		unsigned k = i % 13;
		uint8_t tmp[512];
		size_t n = base_n[k];
		uint8_t *b;

		memcpy(tmp, base[k], n);
		/* flip a few bytes, favouring the small length fields, then maybe resize */
		for (unsigned f = 1 + pt_rnd_below(3); f; f--) {
			size_t at = pt_rnd_below((uint32_t)n);

			tmp[at] = pt_rnd_below(2) ? (uint8_t)pt_rnd()
						  : (uint8_t)(tmp[at] + pt_rnd_below(5) - 2);
		}
		if (pt_rnd_below(4) == 0)
			n = pt_rnd_below((uint32_t)n + 9);
		if (n > base_n[k])
			for (size_t j = base_n[k]; j < n; j++)
				tmp[j] = (uint8_t)pt_rnd();
		b = pt_exact(tmp, n);
		reencode_matches(k, b, n);
		/* Every decoder on every input: none may read out of bounds. */
		pt_dec_hello(b, n);
		pt_dec_hello_reply(b, n);
		pt_dec_tokens(b, n);
		pt_dec_insert(b, n);
		pt_dec_blocks(b, n);
		pt_dec_release(b, n);
		pt_dec_u32(b, n);
		pt_dec_error(b, n);
		pt_dec_generate(b, n);
		pt_dec_chunk(b, n);
		pt_dec_done(b, n);
		pt_dec_admin(b, n);
		pt_dec_admin_reply(b, n);
		if (n >= KVP_HDR_SIZE) {
			struct kvp_frame_hdr h;

			kvp_hdr_decode(b, n, UINT32_MAX, &h);
		}
		free(b);
	}
}
