/*
 * events_decode.c - the decoder (kvp_evdecode) on what engines send: vLLM's array and
 * map forms, older and newer, integer, negative, bytes and string hashes, unknown
 * fields; and on what it must refuse as KVP_EPROTO, returning nothing: every cut of a
 * good batch, trailing bytes, bad msgpack, wrong types, unknown events, counts over the
 * limits, containers that claim more than the bytes hold, nesting far too deep. Every
 * input is hand-written msgpack (events_test_util.c).
 *
 * One of the files of test_events; see events_unit.c.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events_test_util.h"
#include "kvp_events.h"

/* "AllBlocksCleared" as a msgpack string, its header byte included. */
#define S16_CLEARED 0xb0, 'A', 'l', 'l', 'B', 'l', 'o', 'c', 'k', 's', 'C', 'l', 'e', 'a', 'r', \
	'e', 'd'

/* ---- the decoder on what engines send ------------------------------------------------------ */

Test(events, decode_old_vllm_two_element_batch_array_events)
{
	/* [ts, [BlockStored (no medium: older vLLM), BlockRemoved, AllBlocksCleared]] */
	const uint32_t tok[6] = { 1, 2, 3, 4, 5, 6 };
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	size_t n;

	mp_arr(&m, 2);
	mp_f64(&m, 12.0);
	mp_arr(&m, 3);
	mp_stored_arr(&m, (const uint64_t[]){ 10, 11 }, 2, true, 9, tok, 3, NULL);
	mp_arr(&m, 3);
	mp_str(&m, "BlockRemoved");
	mp_arr(&m, 1);
	mp_uint(&m, 10);
	mp_str(&m, "CPU");
	mp_arr(&m, 1);
	mp_str(&m, "AllBlocksCleared");
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
	cr_assert_eq(n, 3);
	et_expect_stored(&ev[0], (const uint64_t[]){ 10, 11 }, 2, true, 9, tok, 3, KVP_EV_GPU);
	cr_assert_not(ev[0].has_medium);
	et_expect_removed(&ev[1], (const uint64_t[]){ 10 }, 1, KVP_EV_CPU);
	cr_assert(ev[1].has_medium);
	cr_assert_eq(ev[2].type, KVP_EV_CLEARED);
	mp_free(&m);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_map_batch_and_map_events_with_extra_fields)
{
	/* {"ts": .., "events": [...], "data_parallel_rank": 3}, the events' fields in another
	 * order with unknown ones among them (lora_name a string, extra_keys nested) */
	const uint32_t tok[2] = { 77, 78 };
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	size_t n;

	mp_map(&m, 3);
	mp_str(&m, "ts");
	mp_f64(&m, 5.0);
	mp_str(&m, "events");
	mp_arr(&m, 3);
	mp_map(&m, 9);
	mp_str(&m, "medium");
	mp_str(&m, "DISK");
	mp_str(&m, "token_ids");
	mp_arr(&m, 2);
	mp_uint(&m, 77);
	mp_uint(&m, 78);
	mp_str(&m, "extra_keys");
	mp_arr(&m, 2);
	mp_map(&m, 1);
	mp_str(&m, "mm_hash");
	mp_str(&m, "abc");
	mp_arr(&m, 0);
	mp_str(&m, "block_size");
	mp_uint(&m, 2);
	mp_str(&m, "parent_block_hash");
	mp_nil(&m);
	mp_str(&m, "lora_name");
	mp_str(&m, "my-adapter");
	mp_str(&m, "type");
	mp_str(&m, "BlockStored");
	mp_str(&m, "lora_id");
	mp_uint(&m, 4);
	mp_str(&m, "block_hashes");
	mp_arr(&m, 1);
	mp_uint(&m, 42);
	/* a removal without a medium field, a clear with extra fields */
	mp_map(&m, 2);
	mp_str(&m, "block_hashes");
	mp_arr(&m, 0);
	mp_str(&m, "type");
	mp_str(&m, "BlockRemoved");
	mp_map(&m, 2);
	mp_str(&m, "type");
	mp_str(&m, "AllBlocksCleared");
	mp_str(&m, "medium");
	mp_nil(&m);
	mp_str(&m, "data_parallel_rank");
	mp_uint(&m, 3);
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
	cr_assert_eq(n, 3);
	et_expect_stored(&ev[0], (const uint64_t[]){ 42 }, 1, false, 0, tok, 2, KVP_EV_DISK);
	cr_assert(ev[0].has_medium);
	et_expect_removed(&ev[1], NULL, 0, KVP_EV_GPU);
	cr_assert_not(ev[1].has_medium);
	cr_assert_eq(ev[2].type, KVP_EV_CLEARED);
	mp_free(&m);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_three_element_batch_rank_and_ts_forms)
{
	/* rank an integer; ts a float 32, or an integer */
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	size_t n;
	const uint8_t f32_ts[] = { 0x93, 0xca, 0x3f, 0x80, 0, 0, 0x91, 0x91, S16_CLEARED, 0x02 };
	const uint8_t int_ts[] = { 0x93, 0xce, 0x66, 0x5f, 0x1a, 0x00, 0x90, 0xc0 };

	cr_assert_eq(et_decode(d, f32_ts, sizeof(f32_ts), &ev, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(ev[0].type, KVP_EV_CLEARED);
	cr_assert_eq(et_decode(d, int_ts, sizeof(int_ts), &ev, &n), 0);
	cr_assert_eq(n, 0);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_negative_int_hashes)
{
	/* Python's hash() is a signed 64-bit value: msgpack int 64, negative. Its 64 bits
	 * are the id, as a parent too. */
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	size_t n;

	mp_batch_head(&m, 2);
	mp_map(&m, 5);
	mp_str(&m, "type");
	mp_str(&m, "BlockStored");
	mp_str(&m, "block_hashes");
	mp_arr(&m, 3);
	mp_neg64(&m, -1);
	mp_neg64(&m, INT64_MIN);
	mp_byte(&m, 0xd0);   /* int 8: -100 */
	mp_byte(&m, 0x9c);
	mp_str(&m, "parent_block_hash");
	mp_neg64(&m, -2);
	mp_str(&m, "token_ids");
	mp_arr(&m, 6);
	for (int i = 0; i < 6; i++)
		mp_uint(&m, 9);
	mp_str(&m, "block_size");
	mp_uint(&m, 2);
	mp_arr(&m, 3);
	mp_str(&m, "BlockRemoved");
	mp_arr(&m, 1);
	mp_byte(&m, 0xff);   /* negative fixint -1 */
	mp_str(&m, "GPU");
	mp_batch_tail(&m);
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(ev[0].n_hashes, 3);
	cr_assert_eq(ev[0].hashes[0], UINT64_MAX);
	cr_assert_eq(ev[0].hashes[1], UINT64_C(1) << 63);
	cr_assert_eq(ev[0].hashes[2], (uint64_t)(int64_t)-100);
	cr_assert(ev[0].has_parent);
	cr_assert_eq(ev[0].parent, UINT64_MAX - 1);
	cr_assert_eq(memcmp(ev[0].tokens, (const uint32_t[]){ 9, 9, 9, 9, 9, 9 }, 24), 0);
	et_expect_removed(&ev[1], (const uint64_t[]){ UINT64_MAX }, 1, KVP_EV_GPU);
	mp_free(&m);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_bytes_and_string_hashes)
{
	/* Newer engines send a block hash as bytes (or a string): equal bytes give equal
	 * ids wherever they appear, so a parent given as bytes names the block stored
	 * under those bytes; different bytes give different ids. */
	static const uint8_t h1[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
	static const uint8_t h2[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 11 };
	const uint32_t tok[1] = { 5 };
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	size_t n;

	mp_batch_head(&m, 3);
	/* stored [bin h1] parent nil */
	mp_arr(&m, 7);
	mp_str(&m, "BlockStored");
	mp_arr(&m, 1);
	mp_bin(&m, h1, 32);
	mp_nil(&m);
	mp_arr(&m, 1);
	mp_uint(&m, 5);
	mp_uint(&m, 1);
	mp_nil(&m);
	mp_str(&m, "GPU");
	/* stored [bin h2, str "abc"] parent bin h1 */
	mp_arr(&m, 7);
	mp_str(&m, "BlockStored");
	mp_arr(&m, 2);
	mp_bin(&m, h2, 32);
	mp_str(&m, "abc");
	mp_bin(&m, h1, 32);
	mp_arr(&m, 2);
	mp_uint(&m, 5);
	mp_uint(&m, 5);
	mp_uint(&m, 1);
	mp_nil(&m);
	mp_str(&m, "GPU");
	/* removed [bin h1, str "abc", str "abd"] */
	mp_arr(&m, 3);
	mp_str(&m, "BlockRemoved");
	mp_arr(&m, 3);
	mp_bin(&m, h1, 32);
	mp_str(&m, "abc");
	mp_str(&m, "abd");
	mp_str(&m, "GPU");
	mp_batch_tail(&m);
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(ev[0].n_hashes, 1);
	cr_assert_not(ev[0].has_parent);
	cr_assert(ev[1].has_parent);
	cr_assert_eq(ev[1].parent, ev[0].hashes[0], "parent bytes name the stored block");
	cr_assert_neq(ev[1].hashes[0], ev[0].hashes[0], "h2 != h1");
	cr_assert_eq(ev[2].hashes[0], ev[0].hashes[0], "h1 again");
	cr_assert_eq(ev[2].hashes[1], ev[1].hashes[1], "\"abc\" again");
	cr_assert_neq(ev[2].hashes[2], ev[2].hashes[1], "\"abd\" != \"abc\"");
	cr_assert_eq(ev[1].tokens[1], tok[0]);
	mp_free(&m);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_replaces_the_last_batch)
{
	/* the events of one call are valid until the next; a second call, bigger, gives
	 * its own (the arrays may have moved), and a failed call returns nothing */
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	static uint32_t tok[4096];
	static uint64_t h[1024];
	struct mp a = { 0 }, b = { 0 };
	size_t n;

	for (uint32_t i = 0; i < 4096; i++)
		tok[i] = i;
	for (uint32_t i = 0; i < 1024; i++)
		h[i] = i + 1;
	mp_batch_head(&a, 1);
	mp_stored_map(&a, h, 2, false, 0, tok, 4, "GPU");
	mp_batch_tail(&a);
	mp_batch_head(&b, 2);
	mp_stored_map(&b, h, 1024, true, 77, tok, 4, "CPU");
	mp_stored_arr(&b, h + 5, 3, false, 0, tok + 8, 4, "GPU");
	mp_batch_tail(&b);
	cr_assert_eq(et_decode(d, a.b, a.n, &ev, &n), 0);
	et_expect_stored(&ev[0], h, 2, false, 0, tok, 4, KVP_EV_GPU);
	cr_assert_eq(et_decode(d, b.b, b.n, &ev, &n), 0);
	cr_assert_eq(n, 2);
	et_expect_stored(&ev[0], h, 1024, true, 77, tok, 4, KVP_EV_CPU);
	et_expect_stored(&ev[1], h + 5, 3, false, 0, tok + 8, 4, KVP_EV_GPU);
	cr_assert_eq(et_decode(d, b.b, b.n - 1, &ev, &n), KVP_EPROTO);
	cr_assert_eq(et_decode(d, a.b, a.n, &ev, &n), 0);
	cr_assert_eq(n, 1);
	et_expect_stored(&ev[0], h, 2, false, 0, tok, 4, KVP_EV_GPU);
	mp_free(&a);
	mp_free(&b);
	kvp_evdecoder_destroy(d);
}

/* ---- the decoder on what it must refuse ---------------------------------------------------- */

/* A good batch of every kind of event, for cutting. */
static void mp_sample_batch(struct mp *m)
{
	const uint32_t tok[6] = { 1, 2, 3, 300, 70000, 0xffffffffu };

	mp_batch_head(m, 4);
	mp_stored_map(m, (const uint64_t[]){ 1, 1ull << 40 }, 2, true, 99, tok, 3, "GPU");
	mp_stored_arr(m, (const uint64_t[]){ 3 }, 1, false, 0, tok + 3, 3, "CPU");
	mp_arr(m, 3);
	mp_str(m, "BlockRemoved");
	mp_arr(m, 2);
	mp_uint(m, 1);
	mp_neg64(m, -5);
	mp_str(m, "GPU");
	mp_map(m, 1);
	mp_str(m, "type");
	mp_str(m, "AllBlocksCleared");
	mp_batch_tail(m);
}

Test(events, decode_refuses_every_truncation_and_trailing_bytes)
{
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	uint8_t *copy;
	size_t n;

	mp_sample_batch(&m);
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
	cr_assert_eq(n, 4);
	for (size_t len = 0; len < m.n; len++) {
		/* an exact-size copy, so that a read past len is an ASan report */
		copy = malloc(len ? len : 1);
		cr_assert_not_null(copy);
		memcpy(copy, m.b, len);
		cr_assert_eq(et_decode(d, copy, len, &ev, &n), KVP_EPROTO, "cut at %zu of %zu", len,
			     m.n);
		free(copy);
	}
	copy = malloc(m.n + 1);
	cr_assert_not_null(copy);
	memcpy(copy, m.b, m.n);
	copy[m.n] = 0xc0;
	cr_assert_eq(et_decode(d, copy, m.n + 1, &ev, &n), KVP_EPROTO, "one trailing nil");
	copy[m.n] = 0x00;
	cr_assert_eq(et_decode(d, copy, m.n + 1, &ev, &n), KVP_EPROTO, "one trailing zero");
	free(copy);
	cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0, "and the whole still decodes");
	cr_assert_eq(n, 4);
	mp_free(&m);
	kvp_evdecoder_destroy(d);
}

Test(events, decode_refuses_bad_msgpack)
{
	/* 0xc1 is never used; a string longer than the bytes; a bin 32 claiming 4 GiB;
	 * two batches back to back */
	const uint8_t never_used[] = { 0x93, 0xc1, 0x90, 0xc0 };
	const uint8_t short_str[] = { 0x92, 0x00, 0x91, 0x91, 0xb0, 'A', 'l', 'l' };
	const uint8_t huge_bin[] = { 0x92, 0x00, 0x91, 0x92, 0xac, 'B', 'l', 'o', 'c', 'k',
				     'R', 'e', 'm', 'o', 'v', 'e', 'd', 0xc6, 0xff, 0xff, 0xff, 0xff };
	const uint8_t two[] = { 0x92, 0x00, 0x90, 0x92, 0x00, 0x90 };
	const uint8_t ext[] = { 0x92, 0x00, 0x91, 0xd4, 0x01, 0x02 };

	et_expect_eproto(never_used, sizeof(never_used), "0xc1");
	et_expect_eproto(short_str, sizeof(short_str), "a string cut short");
	et_expect_eproto(huge_bin, sizeof(huge_bin), "a bin 32 of 4 GiB in 22 bytes");
	et_expect_eproto(two, sizeof(two), "two batches");
	et_expect_eproto(ext, sizeof(ext), "an ext as an event");
	et_expect_eproto((const uint8_t *)"", 0, "nothing");
	et_expect_eproto((const uint8_t *)"\xc0", 1, "nil");
}

/* One BlockStored in the array form, with each field replaceable: the callers write
 * one field wrong and the rest right. */
enum sfield { SF_NONE, SF_HASHES, SF_PARENT, SF_TOKENS, SF_BSIZE };

static void mp_stored_bad(struct mp *m, enum sfield bad, void (*wr)(struct mp *m))
{
	mp_batch_head(m, 1);
	mp_arr(m, 7);
	mp_str(m, "BlockStored");
	if (bad == SF_HASHES) {
		wr(m);
	} else {
		mp_arr(m, 2);
		mp_uint(m, 1);
		mp_uint(m, 2);
	}
	if (bad == SF_PARENT)
		wr(m);
	else
		mp_nil(m);
	if (bad == SF_TOKENS) {
		wr(m);
	} else {
		mp_arr(m, 4);
		for (int i = 0; i < 4; i++)
			mp_uint(m, 10 + i);
	}
	if (bad == SF_BSIZE)
		wr(m);
	else
		mp_uint(m, 2);
	mp_nil(m);
	mp_str(m, "GPU");
	mp_batch_tail(m);
}

static void wr_tokens_with_string(struct mp *m)
{
	mp_arr(m, 4);
	mp_uint(m, 1);
	mp_str(m, "2");
	mp_uint(m, 3);
	mp_uint(m, 4);
}

static void wr_tokens_over_u32(struct mp *m)
{
	mp_arr(m, 4);
	mp_uint(m, 1);
	mp_uint(m, UINT64_C(1) << 32);
	mp_uint(m, 3);
	mp_uint(m, 4);
}

static void wr_tokens_negative(struct mp *m)
{
	mp_arr(m, 4);
	mp_uint(m, 1);
	mp_byte(m, 0xff);
	mp_uint(m, 3);
	mp_uint(m, 4);
}

static void wr_tokens_float(struct mp *m)
{
	mp_arr(m, 4);
	mp_uint(m, 1);
	mp_f64(m, 2.0);
	mp_uint(m, 3);
	mp_uint(m, 4);
}

static void wr_tokens_three(struct mp *m)
{
	mp_arr(m, 3);
	for (int i = 0; i < 3; i++)
		mp_uint(m, 1);
}

static void wr_tokens_five(struct mp *m)
{
	mp_arr(m, 5);
	for (int i = 0; i < 5; i++)
		mp_uint(m, 1);
}

static void wr_tokens_map(struct mp *m)
{
	mp_map(m, 0);
}

static void wr_bsize_zero(struct mp *m)
{
	mp_uint(m, 0);
}

static void wr_bsize_string(struct mp *m)
{
	mp_str(m, "2");
}

static void wr_bsize_nil(struct mp *m)
{
	mp_nil(m);
}

static void wr_bsize_one(struct mp *m)
{
	mp_uint(m, 1);   /* 2 hashes x 1 != 4 tokens */
}

static void wr_bsize_negative(struct mp *m)
{
	mp_neg64(m, -2);
}

static void wr_hashes_nil(struct mp *m)
{
	mp_nil(m);
}

static void wr_hashes_with_float(struct mp *m)
{
	mp_arr(m, 2);
	mp_uint(m, 1);
	mp_f64(m, 2.0);
}

static void wr_hashes_with_array(struct mp *m)
{
	mp_arr(m, 2);
	mp_uint(m, 1);
	mp_arr(m, 0);
}

static void wr_parent_bool(struct mp *m)
{
	mp_byte(m, 0xc3);
}

static void wr_parent_array(struct mp *m)
{
	mp_arr(m, 1);
	mp_uint(m, 1);
}

Test(events, decode_refuses_wrong_types)
{
	static const struct {
		enum sfield f;
		void (*wr)(struct mp *m);
		const char *what;
	} cases[] = {
		{ SF_TOKENS, wr_tokens_with_string, "a token id as a string" },
		{ SF_TOKENS, wr_tokens_over_u32, "a token id of 2^32" },
		{ SF_TOKENS, wr_tokens_negative, "a token id of -1" },
		{ SF_TOKENS, wr_tokens_float, "a token id as a float" },
		{ SF_TOKENS, wr_tokens_three, "3 tokens for 2 blocks of 2" },
		{ SF_TOKENS, wr_tokens_five, "5 tokens for 2 blocks of 2" },
		{ SF_TOKENS, wr_tokens_map, "token_ids a map" },
		{ SF_BSIZE, wr_bsize_zero, "block_size 0" },
		{ SF_BSIZE, wr_bsize_string, "block_size a string" },
		{ SF_BSIZE, wr_bsize_nil, "block_size nil" },
		{ SF_BSIZE, wr_bsize_one, "block_size 1 for 2 hashes and 4 tokens" },
		{ SF_BSIZE, wr_bsize_negative, "block_size -2" },
		{ SF_HASHES, wr_hashes_nil, "block_hashes nil" },
		{ SF_HASHES, wr_hashes_with_float, "a hash as a float" },
		{ SF_HASHES, wr_hashes_with_array, "a hash as an array" },
		{ SF_PARENT, wr_parent_bool, "parent true" },
		{ SF_PARENT, wr_parent_array, "parent an array" },
	};
	struct mp m = { 0 };

	/* the template itself is good */
	{
		struct kvp_evdecoder *d = et_decoder();
		const struct kvp_ev *ev;
		size_t n;

		mp_stored_bad(&m, SF_NONE, NULL);
		cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
		et_expect_stored(&ev[0], (const uint64_t[]){ 1, 2 }, 2, false, 0,
			      (const uint32_t[]){ 10, 11, 12, 13 }, 2, KVP_EV_GPU);
		mp_free(&m);
		kvp_evdecoder_destroy(d);
	}
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		mp_stored_bad(&m, cases[i].f, cases[i].wr);
		et_expect_eproto_mp(&m, cases[i].what);
	}
}

Test(events, decode_refuses_bad_events_and_batches)
{
	struct mp m = { 0 };

	mp_batch_head(&m, 1);
	mp_arr(&m, 1);
	mp_str(&m, "BlockUpdated");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "an unknown event type (array)");

	mp_batch_head(&m, 1);
	mp_map(&m, 1);
	mp_str(&m, "type");
	mp_str(&m, "blockstored");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "an unknown event type (map, case)");

	mp_batch_head(&m, 1);
	mp_map(&m, 1);
	mp_str(&m, "kind");
	mp_str(&m, "AllBlocksCleared");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "a map event without a type");

	mp_batch_head(&m, 1);
	mp_arr(&m, 1);
	mp_uint(&m, 1);
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "a type that is an integer");

	mp_batch_head(&m, 1);
	mp_arr(&m, 0);
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "an empty array event");

	mp_batch_head(&m, 1);
	mp_str(&m, "AllBlocksCleared");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "an event that is a string");

	mp_batch_head(&m, 2);
	mp_arr(&m, 1);
	mp_str(&m, "AllBlocksCleared");
	mp_arr(&m, 2);
	mp_str(&m, "BlockStored");
	mp_arr(&m, 0);
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "a BlockStored without parent, tokens, block_size");

	mp_batch_head(&m, 1);
	mp_arr(&m, 1);
	mp_str(&m, "BlockRemoved");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "a BlockRemoved without hashes");

	mp_arr(&m, 4);
	mp_f64(&m, 0);
	mp_arr(&m, 0);
	mp_nil(&m);
	mp_nil(&m);
	et_expect_eproto_mp(&m, "a batch of 4 elements");

	mp_arr(&m, 1);
	mp_arr(&m, 0);
	et_expect_eproto_mp(&m, "a batch of 1 element");

	mp_arr(&m, 2);
	mp_str(&m, "now");
	mp_arr(&m, 0);
	et_expect_eproto_mp(&m, "ts a string");

	mp_arr(&m, 2);
	mp_f64(&m, 0);
	mp_map(&m, 0);
	et_expect_eproto_mp(&m, "events a map");

	mp_map(&m, 1);
	mp_str(&m, "ts");
	mp_f64(&m, 0);
	et_expect_eproto_mp(&m, "a map batch without events");

	mp_str(&m, "batch");
	et_expect_eproto_mp(&m, "a string");
}

Test(events, decode_huge_declared_counts_fail_fast)
{
	/* Container headers that claim far more elements than the bytes could hold: the
	 * bounds walk refuses them before msgpack-c allocates for the count. */
	const uint8_t arr32[] = { 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0 };
	const uint8_t map32[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0 };
	const uint8_t events32[] = { 0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0 };
	const uint8_t hashes32[] = { 0x92, 0x00, 0x91, 0x92, 0xac, 'B', 'l', 'o', 'c', 'k', 'R',
				     'e', 'm', 'o', 'v', 'e', 'd', 0xdd, 0xff, 0xff, 0xff, 0xff,
				     0x01 };
	const uint8_t str32[] = { 0x92, 0x00, 0x91, 0x91, 0xdb, 0xff, 0xff, 0xff, 0xf0, 'A' };
	struct mp m = { 0 };

	et_expect_eproto(arr32, sizeof(arr32), "an array 32 of 2^32-1 in 6 bytes");
	et_expect_eproto(map32, sizeof(map32), "a map 32 of 2^32-1 in 6 bytes");
	et_expect_eproto(events32, sizeof(events32), "2^32-1 events in 8 bytes");
	et_expect_eproto(hashes32, sizeof(hashes32), "2^32-1 hashes");
	et_expect_eproto(str32, sizeof(str32), "a 4 GiB string");

	/* each of 65535 elements claims 15 more: what is owed grows past the bytes */
	mp_arr(&m, 2);
	mp_uint(&m, 0);
	mp_arr(&m, 0xffff);
	for (int i = 0; i < 4000; i++)
		mp_byte(&m, 0x9f);
	et_expect_eproto_mp(&m, "nested claims beyond the input");
}

Test(events, decode_event_count_limit)
{
	/* KVP_EV_MAX_EVENTS AllBlocksCleared (array form, 18 bytes each) decode; one more
	 * is refused */
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	struct mp m = { 0 };
	size_t n;

	for (uint32_t count = KVP_EV_MAX_EVENTS; count <= KVP_EV_MAX_EVENTS + 1; count++) {
		mp_batch_head(&m, count);
		for (uint32_t i = 0; i < count; i++) {
			mp_arr(&m, 1);
			mp_str(&m, "AllBlocksCleared");
		}
		mp_batch_tail(&m);
		if (count == KVP_EV_MAX_EVENTS) {
			cr_assert_eq(et_decode(d, m.b, m.n, &ev, &n), 0);
			cr_assert_eq(n, KVP_EV_MAX_EVENTS);
			cr_assert_eq(ev[n - 1].type, KVP_EV_CLEARED);
			mp_free(&m);
		} else {
			et_expect_eproto_mp(&m, "KVP_EV_MAX_EVENTS + 1 events");
		}
	}
	kvp_evdecoder_destroy(d);
}

Test(events, decode_token_count_limit)
{
	/* a BlockStored of KVP_EV_MAX_TOKENS + 1 token ids (block_size 1) is refused */
	struct mp m = { 0 };
	const uint32_t n = KVP_EV_MAX_TOKENS + 1;

	mp_batch_head(&m, 1);
	mp_arr(&m, 7);
	mp_str(&m, "BlockStored");
	mp_arr(&m, n);
	for (uint32_t i = 0; i < n; i++)
		mp_byte(&m, 0x01);
	mp_nil(&m);
	mp_arr(&m, n);
	for (uint32_t i = 0; i < n; i++)
		mp_byte(&m, 0x02);
	mp_uint(&m, 1);
	mp_nil(&m);
	mp_str(&m, "GPU");
	mp_batch_tail(&m);
	et_expect_eproto_mp(&m, "KVP_EV_MAX_TOKENS + 1 tokens in one event");
}

Test(events, decode_refuses_depth_bombs)
{
	/* Nested arrays (and maps) far deeper than any batch: refused as malformed,
	 * whether they stand for the events, an event, or an ignored field of one. */
	const size_t depths[] = { 40, 1000, 100000 };
	struct mp m = { 0 };

	for (size_t k = 0; k < sizeof(depths) / sizeof(depths[0]); k++) {
		size_t depth = depths[k];
		char what[96];

		mp_arr(&m, 2);
		mp_uint(&m, 0);
		for (size_t i = 0; i < depth; i++)
			mp_arr(&m, 1);
		mp_nil(&m);
		snprintf(what, sizeof(what), "events nested %zu deep", depth);
		et_expect_eproto_mp(&m, what);

		mp_batch_head(&m, 1);
		mp_map(&m, 2);
		mp_str(&m, "type");
		mp_str(&m, "AllBlocksCleared");
		mp_str(&m, "x");
		for (size_t i = 0; i < depth; i++) {
			mp_map(&m, 1);
			mp_uint(&m, 0);
		}
		mp_nil(&m);
		mp_batch_tail(&m);
		snprintf(what, sizeof(what), "an extra field of maps nested %zu deep", depth);
		et_expect_eproto_mp(&m, what);
	}
}
