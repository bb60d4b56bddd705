/*
 * events_unit.c - the batch builder (kvp_evbatch_*): what it appends, merges and takes,
 * round-tripped through the decoder in both encodings, and its bytes pinned against
 * hand-written msgpack (the spec's encodings, checked by hand).
 *
 * One of the files of test_events (tests/events_*.c): the decoder in events_decode.c,
 * the fleet index in events_fleet.c, the publisher in events_pub.c; what they share in
 * events_test_util.c.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "events_test_util.h"
#include "kvp_events.h"

/* ---- the builder, round-tripped ---------------------------------------------------------- */

#define RT_B 4

/* Block i's tokens: 1000 i + 0..3, with one token over 2^31 now and then. */
static const uint32_t *rt_tok(uint32_t i)
{
	static uint32_t t[64][RT_B];

	for (uint32_t j = 0; j < RT_B; j++)
		t[i][j] = j == 3 && i % 3 == 0 ? 0xfffffff0u + i % 16 : 1000 * i + j;
	return t[i];
}

/* Blocks i..i+n-1's tokens, concatenated, into out. */
static const uint32_t *rt_toks(uint32_t i, uint32_t n, uint32_t *out)
{
	for (uint32_t k = 0; k < n; k++)
		memcpy(out + k * RT_B, rt_tok(i + k), sizeof(uint32_t) * RT_B);
	return out;
}

static void round_trip(enum kvp_ev_encoding enc)
{
	struct kvp_evbatch *b = NULL;
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	uint8_t *buf;
	size_t len, n, want = 0;
	uint32_t tk[8 * RT_B];
	const uint64_t max = UINT64_MAX;

	cr_assert_eq(kvp_evbatch_create(enc, RT_B, &b), 0);
	cr_assert_eq(kvp_evbatch_events(b), 0);
#define APPEND(call, opens)                                                   \
	do {                                                                  \
		cr_assert_eq(call, 0, #call);                                 \
		want += (opens);                                              \
		cr_assert_eq(kvp_evbatch_events(b), want, "after " #call);    \
	} while (0)
	/* E0: a chain of three, each block's parent the one before */
	APPEND(kvp_evbatch_stored(b, 101, false, 0, rt_tok(0), KVP_EV_GPU), 1);
	APPEND(kvp_evbatch_stored(b, 102, true, 101, rt_tok(1), KVP_EV_GPU), 0);
	APPEND(kvp_evbatch_stored(b, 103, true, 102, rt_tok(2), KVP_EV_GPU), 0);
	/* E1: a parent that is not the last block */
	APPEND(kvp_evbatch_stored(b, 104, true, 101, rt_tok(3), KVP_EV_GPU), 1);
	APPEND(kvp_evbatch_stored(b, 105, true, 104, rt_tok(4), KVP_EV_GPU), 0);
	/* E2: continues E1's chain, on another medium */
	APPEND(kvp_evbatch_stored(b, 106, true, 105, rt_tok(5), KVP_EV_CPU), 1);
	/* E3: a first block never continues */
	APPEND(kvp_evbatch_stored(b, 107, false, 106, rt_tok(6), KVP_EV_CPU), 1);
	/* E4: removals coalesce */
	APPEND(kvp_evbatch_removed(b, 102, KVP_EV_GPU), 1);
	APPEND(kvp_evbatch_removed(b, 103, KVP_EV_GPU), 0);
	APPEND(kvp_evbatch_removed(b, 999, KVP_EV_GPU), 0);
	/* E5: but not across media */
	APPEND(kvp_evbatch_removed(b, 104, KVP_EV_DISK), 1);
	/* E6: the parent was the last stored block, but removals came between */
	APPEND(kvp_evbatch_stored(b, 108, true, 107, rt_tok(7), KVP_EV_DISK), 1);
	/* E7, E8: each clear is an event */
	APPEND(kvp_evbatch_cleared(b), 1);
	APPEND(kvp_evbatch_cleared(b), 1);
	/* E9: a removal after a clear */
	APPEND(kvp_evbatch_removed(b, 1, KVP_EV_GPU), 1);
	/* E10: the whole u64 range, and 0 as a parent */
	APPEND(kvp_evbatch_stored(b, max, false, 0, rt_tok(8), KVP_EV_GPU), 1);
	APPEND(kvp_evbatch_stored(b, 0, true, max, rt_tok(9), KVP_EV_GPU), 0);
	APPEND(kvp_evbatch_stored(b, 5, true, 0, rt_tok(10), KVP_EV_GPU), 0);
#undef APPEND
	cr_assert_gt(kvp_evbatch_bytes(b), 0);
	cr_assert_eq(kvp_evbatch_take(b, 2.5, &buf, &len), 0);
	cr_assert_not_null(buf);
	cr_assert_eq(kvp_evbatch_events(b), 0, "take empties the builder");
	cr_assert_eq(kvp_evbatch_bytes(b), 0);
	/* [2.5, [...11 events], nil] */
	cr_assert_eq(buf[0], 0x93);
	cr_assert_eq(buf[1], 0xcb);
	cr_assert_eq(memcmp(buf + 2, "\x40\x04\0\0\0\0\0\0", 8), 0, "ts 2.5");
	cr_assert_eq(buf[10], 0x9b, "fixarray of 11 events");
	cr_assert_eq(buf[len - 1], 0xc0, "rank nil");

	cr_assert_eq(et_decode(d, buf, len, &ev, &n), 0);
	cr_assert_eq(n, 11);
	et_expect_stored(&ev[0], (const uint64_t[]){ 101, 102, 103 }, 3, false, 0, rt_toks(0, 3, tk),
		      RT_B, KVP_EV_GPU);
	et_expect_stored(&ev[1], (const uint64_t[]){ 104, 105 }, 2, true, 101, rt_toks(3, 2, tk),
		      RT_B, KVP_EV_GPU);
	et_expect_stored(&ev[2], (const uint64_t[]){ 106 }, 1, true, 105, rt_tok(5), RT_B,
		      KVP_EV_CPU);
	et_expect_stored(&ev[3], (const uint64_t[]){ 107 }, 1, false, 0, rt_tok(6), RT_B,
		      KVP_EV_CPU);
	et_expect_removed(&ev[4], (const uint64_t[]){ 102, 103, 999 }, 3, KVP_EV_GPU);
	et_expect_removed(&ev[5], (const uint64_t[]){ 104 }, 1, KVP_EV_DISK);
	et_expect_stored(&ev[6], (const uint64_t[]){ 108 }, 1, true, 107, rt_tok(7), RT_B,
		      KVP_EV_DISK);
	cr_assert_eq(ev[7].type, KVP_EV_CLEARED);
	cr_assert_eq(ev[8].type, KVP_EV_CLEARED);
	et_expect_removed(&ev[9], (const uint64_t[]){ 1 }, 1, KVP_EV_GPU);
	et_expect_stored(&ev[10], (const uint64_t[]){ max, 0, 5 }, 3, false, 0, rt_toks(8, 3, tk),
		      RT_B, KVP_EV_GPU);
	for (int i = 0; i < 11; i++)
		cr_assert_eq(ev[i].has_medium, ev[i].type != KVP_EV_CLEARED, "event %d", i);
	free(buf);

	/* an empty batch: [ts, [], nil], exactly */
	cr_assert_eq(kvp_evbatch_take(b, 0.0, &buf, &len), 0);
	cr_assert_eq(len, 12);
	cr_assert_eq(memcmp(buf, "\x93\xcb\0\0\0\0\0\0\0\0\x90\xc0", 12), 0);
	cr_assert_eq(et_decode(d, buf, len, &ev, &n), 0);
	cr_assert_eq(n, 0);
	free(buf);

	/* reset forgets an open event and the closed ones */
	cr_assert_eq(kvp_evbatch_removed(b, 7, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_cleared(b), 0);
	cr_assert_eq(kvp_evbatch_stored(b, 1, false, 0, rt_tok(0), KVP_EV_GPU), 0);
	kvp_evbatch_reset(b);
	cr_assert_eq(kvp_evbatch_events(b), 0);
	cr_assert_eq(kvp_evbatch_bytes(b), 0);
	/* and a block after the reset does not continue what was forgotten */
	cr_assert_eq(kvp_evbatch_stored(b, 2, true, 1, rt_tok(1), KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_take(b, 1.0, &buf, &len), 0);
	cr_assert_eq(et_decode(d, buf, len, &ev, &n), 0);
	cr_assert_eq(n, 1);
	et_expect_stored(&ev[0], (const uint64_t[]){ 2 }, 1, true, 1, rt_tok(1), RT_B, KVP_EV_GPU);
	free(buf);

	kvp_evbatch_destroy(b);
	kvp_evdecoder_destroy(d);
}

Test(events, round_trip_map)
{
	round_trip(KVP_EV_MAP);
}

Test(events, round_trip_array)
{
	round_trip(KVP_EV_ARRAY);
}

Test(events, long_chain_coalesces_into_one_event)
{
	/* 3000 blocks of 16 tokens, each the child of the one before, then 3000 removals:
	 * two events, whatever the builder's arrays grew through. */
	enum { N = 3000, B = 16 };
	static uint32_t tok[N * B];
	static uint64_t h[N];
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	size_t len, n;
	uint8_t *buf;

	for (int e = KVP_EV_MAP; e <= KVP_EV_ARRAY; e++) {
		struct kvp_evbatch *b = NULL;

		cr_assert_eq(kvp_evbatch_create((enum kvp_ev_encoding)e, B, &b), 0);
		for (uint32_t i = 0; i < N; i++) {
			for (uint32_t j = 0; j < B; j++)
				tok[i * B + j] = i * 7919u + j;
			h[i] = 0x9e3779b97f4a7c15ull * (i + 1);
			cr_assert_eq(kvp_evbatch_stored(b, h[i], i > 0, i ? h[i - 1] : 0, tok + i * B,
							KVP_EV_GPU), 0);
		}
		cr_assert_eq(kvp_evbatch_events(b), 1);
		for (uint32_t i = 0; i < N; i++)
			cr_assert_eq(kvp_evbatch_removed(b, h[N - 1 - i], KVP_EV_GPU), 0);
		cr_assert_eq(kvp_evbatch_events(b), 2);
		cr_assert_eq(kvp_evbatch_take(b, 3.0, &buf, &len), 0);
		cr_assert_eq(et_decode(d, buf, len, &ev, &n), 0);
		cr_assert_eq(n, 2);
		et_expect_stored(&ev[0], h, N, false, 0, tok, B, KVP_EV_GPU);
		cr_assert_eq(ev[1].type, KVP_EV_REMOVED);
		cr_assert_eq(ev[1].n_hashes, N);
		for (uint32_t i = 0; i < N; i++)
			cr_assert_eq(ev[1].hashes[i], h[N - 1 - i]);
		free(buf);
		kvp_evbatch_destroy(b);
	}
	kvp_evdecoder_destroy(d);
}

Test(events, create_like_copies_encoding_and_block_size_only)
{
	/* like a builder with events: empty, same encoding, same block size */
	const uint32_t tok[3] = { 5, 6, 7 };
	static const uint8_t want[] = {
		0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x91,
		0x97, 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o', 'r', 'e', 'd',   /* array form */
		0x91, 0x09, 0xc0, 0x93, 0x05, 0x06, 0x07, 0x03, 0xc0,               /* 3 tokens */
		0xa3, 'G', 'P', 'U', 0xc0,
	};
	struct kvp_evbatch *b, *c;
	uint8_t *buf;
	size_t len;

	cr_assert_eq(kvp_evbatch_create(KVP_EV_ARRAY, 3, &b), 0);
	cr_assert_eq(kvp_evbatch_stored(b, 8, false, 0, tok, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_create_like(b, &c), 0);
	cr_assert_neq(c, b);
	cr_assert_eq(kvp_evbatch_events(c), 0);
	/* a block in c does not continue b's */
	cr_assert_eq(kvp_evbatch_stored(c, 9, false, 8, tok, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_take(c, 0.0, &buf, &len), 0);
	cr_assert_eq(len, sizeof(want));
	cr_assert_eq(memcmp(buf, want, len), 0);
	free(buf);
	cr_assert_eq(kvp_evbatch_events(b), 1, "b keeps its own");
	kvp_evbatch_destroy(b);
	kvp_evbatch_destroy(c);
}

Test(events, builder_create_and_medium_names)
{
	struct kvp_evbatch *b = (struct kvp_evbatch *)&b;

	cr_assert_eq(kvp_evbatch_create(KVP_EV_MAP, 0, &b), KVP_EINVAL);
	cr_assert_null(b);
	cr_assert_eq(kvp_evbatch_create((enum kvp_ev_encoding)2, 16, &b), KVP_EINVAL);
	cr_assert_null(b);
	kvp_evbatch_destroy(NULL);
	kvp_evdecoder_destroy(NULL);
	cr_assert_str_eq(kvp_ev_medium_name(KVP_EV_GPU), "GPU");
	cr_assert_str_eq(kvp_ev_medium_name(KVP_EV_CPU), "CPU");
	cr_assert_str_eq(kvp_ev_medium_name(KVP_EV_DISK), "DISK");
}

/* ---- the wire format, byte for byte -------------------------------------------------------- */

#define S4_TYPE 0xa4, 't', 'y', 'p', 'e'
#define S16_CLEARED 0xb0, 'A', 'l', 'l', 'B', 'l', 'o', 'c', 'k', 's', 'C', 'l', 'e', 'a', 'r', \
	'e', 'd'
#define S11_STORED 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o', 'r', 'e', 'd'
#define S12_REMOVED 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm', 'o', 'v', 'e', 'd'
#define S12_HASHES 0xac, 'b', 'l', 'o', 'c', 'k', '_', 'h', 'a', 's', 'h', 'e', 's'
#define S17_PARENT 0xb1, 'p', 'a', 'r', 'e', 'n', 't', '_', 'b', 'l', 'o', 'c', 'k', '_', 'h', \
	'a', 's', 'h'
#define S9_TOKENS 0xa9, 't', 'o', 'k', 'e', 'n', '_', 'i', 'd', 's'
#define S10_BSIZE 0xaa, 'b', 'l', 'o', 'c', 'k', '_', 's', 'i', 'z', 'e'
#define S7_LORA 0xa7, 'l', 'o', 'r', 'a', '_', 'i', 'd'
#define S6_MEDIUM 0xa6, 'm', 'e', 'd', 'i', 'u', 'm'
#define S9_LORA_NAME 0xa9, 'l', 'o', 'r', 'a', '_', 'n', 'a', 'm', 'e'

static void expect_bytes(struct kvp_evbatch *b, double ts, const uint8_t *want, size_t want_len)
{
	uint8_t *buf;
	size_t len;

	cr_assert_eq(kvp_evbatch_take(b, ts, &buf, &len), 0);
	for (size_t i = 0; i < len && i < want_len; i++)
		cr_assert_eq(buf[i], want[i], "byte %zu: %#x want %#x", i, buf[i], want[i]);
	cr_assert_eq(len, want_len, "length %zu want %zu", len, want_len);
	free(buf);
}

Test(events, wire_cleared_map)
{
	static const uint8_t want[] = {
		0x93,                                      /* [ts, events, rank] */
		0xcb, 0, 0, 0, 0, 0, 0, 0, 0,              /* 0.0 */
		0x91,                                      /* one event */
		0x81, S4_TYPE, S16_CLEARED,                /* {"type": "AllBlocksCleared"} */
		0xc0,                                      /* rank: nil */
	};
	struct kvp_evbatch *b;

	cr_assert_eq(kvp_evbatch_create(KVP_EV_MAP, 16, &b), 0);
	cr_assert_eq(kvp_evbatch_cleared(b), 0);
	expect_bytes(b, 0.0, want, sizeof(want));
	kvp_evbatch_destroy(b);
}

Test(events, wire_stored_and_removed_map)
{
	static const uint8_t want[] = {
		0x93, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,  /* [1.5, */
		0x92,                                      /* two events */
		0x88, S4_TYPE, S11_STORED,                 /* {type: BlockStored, */
		S12_HASHES, 0x92, 0x05, 0xcd, 0x01, 0x2c,  /*  block_hashes: [5, 300], */
		S17_PARENT, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
		S9_TOKENS, 0x94, 0x01, 0xcc, 0xc8, 0x00, 0xce, 0x00, 0x01, 0x00, 0x00,
		S10_BSIZE, 0x02,                           /*  block_size: 2, */
		S7_LORA, 0xc0,                             /*  lora_id: nil, */
		S6_MEDIUM, 0xa3, 'C', 'P', 'U',            /*  medium: "CPU", */
		S9_LORA_NAME, 0xc0,                        /*  lora_name: nil}, */
		0x83, S4_TYPE, S12_REMOVED,                /* {type: BlockRemoved, */
		S12_HASHES, 0x91, 0xce, 0x00, 0x01, 0x00, 0x00,   /* block_hashes: [65536], */
		S6_MEDIUM, 0xa4, 'D', 'I', 'S', 'K',       /*  medium: "DISK"} */
		0xc0,
	};
	const uint32_t t0[2] = { 1, 200 }, t1[2] = { 0, 65536 };
	struct kvp_evbatch *b;

	cr_assert_eq(kvp_evbatch_create(KVP_EV_MAP, 2, &b), 0);
	cr_assert_eq(kvp_evbatch_stored(b, 5, true, UINT64_MAX - 1, t0, KVP_EV_CPU), 0);
	cr_assert_eq(kvp_evbatch_stored(b, 300, true, 5, t1, KVP_EV_CPU), 0);
	cr_assert_eq(kvp_evbatch_removed(b, 65536, KVP_EV_DISK), 0);
	expect_bytes(b, 1.5, want, sizeof(want));
	kvp_evbatch_destroy(b);
}

Test(events, wire_array_form)
{
	static const uint8_t want[] = {
		0x93, 0xcb, 0xbf, 0xf0, 0, 0, 0, 0, 0, 0,  /* [-1.0, */
		0x93,                                      /* three events */
		0x97, S11_STORED,                          /* [BlockStored, */
		0x91, 0x07,                                /*  [7], */
		0xc0,                                      /*  parent: nil, */
		0x92, 0x7f, 0xcc, 0x80,                    /*  tokens [127, 128], */
		0x02, 0xc0,                                /*  block_size 2, lora_id nil, */
		0xa3, 'G', 'P', 'U',                       /*  "GPU"] */
		0x93, S12_REMOVED, 0x92, 0x07, 0x08, 0xa3, 'G', 'P', 'U',
		0x91, S16_CLEARED,
		0xc0,
	};
	const uint32_t t0[2] = { 127, 128 };
	struct kvp_evbatch *b;

	cr_assert_eq(kvp_evbatch_create(KVP_EV_ARRAY, 2, &b), 0);
	cr_assert_eq(kvp_evbatch_stored(b, 7, false, 0, t0, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_removed(b, 7, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_removed(b, 8, KVP_EV_GPU), 0);
	cr_assert_eq(kvp_evbatch_cleared(b), 0);
	expect_bytes(b, -1.0, want, sizeof(want));
	kvp_evbatch_destroy(b);
}
