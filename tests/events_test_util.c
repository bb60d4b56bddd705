/*
 * events_test_util.c - what the files of test_events share: a msgpack writer written
 * from the msgpack spec (not from msgpack-c, so that the decoder is not checked against
 * itself), vLLM's events in both forms, and the decoder's checking helpers. Declared in
 * events_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "events_test_util.h"
#include "kvp_events.h"

/* ---- a msgpack writer, from the spec ------------------------------------------------ */

static void mp_raw(struct mp *m, const void *p, size_t n)
{
	if (m->n + n > m->cap) {
		size_t cap = m->cap ? m->cap : 256;

		while (cap < m->n + n)
			cap *= 2;
		m->b = realloc(m->b, cap);
		cr_assert_not_null(m->b);
		m->cap = cap;
	}
	if (n)
		memcpy(m->b + m->n, p, n);
	m->n += n;
}

void mp_byte(struct mp *m, uint8_t c)
{
	mp_raw(m, &c, 1);
}

/* A type byte, then v big-endian in w bytes. */
static void mp_tbe(struct mp *m, uint8_t type, uint64_t v, unsigned w)
{
	mp_byte(m, type);
	for (unsigned i = w; i-- > 0;)
		mp_byte(m, (uint8_t)(v >> (8 * i)));
}

void mp_arr(struct mp *m, uint32_t n)
{
	if (n < 16)
		mp_byte(m, (uint8_t)(0x90 | n));
	else if (n <= 0xffff)
		mp_tbe(m, 0xdc, n, 2);
	else
		mp_tbe(m, 0xdd, n, 4);
}

void mp_map(struct mp *m, uint32_t n)
{
	if (n < 16)
		mp_byte(m, (uint8_t)(0x80 | n));
	else if (n <= 0xffff)
		mp_tbe(m, 0xde, n, 2);
	else
		mp_tbe(m, 0xdf, n, 4);
}

static void mp_strn(struct mp *m, const char *s, size_t n)
{
	if (n < 32)
		mp_byte(m, (uint8_t)(0xa0 | n));
	else if (n <= 0xff)
		mp_tbe(m, 0xd9, n, 1);
	else
		mp_tbe(m, 0xda, n, 2);
	mp_raw(m, s, n);
}

void mp_str(struct mp *m, const char *s)
{
	mp_strn(m, s, strlen(s));
}

void mp_bin(struct mp *m, const void *p, uint8_t n)
{
	mp_tbe(m, 0xc4, n, 1);
	mp_raw(m, p, n);
}

void mp_uint(struct mp *m, uint64_t v)
{
	if (v < 128)
		mp_byte(m, (uint8_t)v);
	else if (v <= 0xff)
		mp_tbe(m, 0xcc, v, 1);
	else if (v <= 0xffff)
		mp_tbe(m, 0xcd, v, 2);
	else if (v <= 0xffffffff)
		mp_tbe(m, 0xce, v, 4);
	else
		mp_tbe(m, 0xcf, v, 8);
}

/* A negative integer, in the int 64 form (any width is legal; vLLM's are int 64). */
void mp_neg64(struct mp *m, int64_t v)
{
	mp_tbe(m, 0xd3, (uint64_t)v, 8);
}

void mp_nil(struct mp *m)
{
	mp_byte(m, 0xc0);
}

void mp_f64(struct mp *m, double d)
{
	uint64_t v;

	memcpy(&v, &d, 8);
	mp_tbe(m, 0xcb, v, 8);
}

void mp_free(struct mp *m)
{
	free(m->b);
	*m = (struct mp){ 0 };
}

/* vLLM's BlockStored as a map (integer hashes, parent_hash 0 with has_parent false:
 * nil), fields in vLLM's order, lora_name included. */
void mp_stored_map(struct mp *m, const uint64_t *h, size_t n, bool has_parent,
			  uint64_t parent, const uint32_t *tok, uint32_t bs, const char *medium)
{
	mp_map(m, 8);
	mp_str(m, "type");
	mp_str(m, "BlockStored");
	mp_str(m, "block_hashes");
	mp_arr(m, (uint32_t)n);
	for (size_t i = 0; i < n; i++)
		mp_uint(m, h[i]);
	mp_str(m, "parent_block_hash");
	if (has_parent)
		mp_uint(m, parent);
	else
		mp_nil(m);
	mp_str(m, "token_ids");
	mp_arr(m, (uint32_t)(n * bs));
	for (size_t i = 0; i < n * bs; i++)
		mp_uint(m, tok[i]);
	mp_str(m, "block_size");
	mp_uint(m, bs);
	mp_str(m, "lora_id");
	mp_nil(m);
	mp_str(m, "medium");
	mp_str(m, medium);
	mp_str(m, "lora_name");
	mp_nil(m);
}

/* The same in the array form; medium NULL: the older form without it. */
void mp_stored_arr(struct mp *m, const uint64_t *h, size_t n, bool has_parent,
			  uint64_t parent, const uint32_t *tok, uint32_t bs, const char *medium)
{
	mp_arr(m, medium ? 7 : 6);
	mp_str(m, "BlockStored");
	mp_arr(m, (uint32_t)n);
	for (size_t i = 0; i < n; i++)
		mp_uint(m, h[i]);
	if (has_parent)
		mp_uint(m, parent);
	else
		mp_nil(m);
	mp_arr(m, (uint32_t)(n * bs));
	for (size_t i = 0; i < n * bs; i++)
		mp_uint(m, tok[i]);
	mp_uint(m, bs);
	mp_nil(m);
	if (medium)
		mp_str(m, medium);
}

/* The frame of a batch of n events: [ts, [ (events follow) */
void mp_batch_head(struct mp *m, uint32_t n)
{
	mp_arr(m, 3);
	mp_f64(m, 1717171717.25);
	mp_arr(m, n);
}

/* ... and its end: the data-parallel rank, nil. */
void mp_batch_tail(struct mp *m)
{
	mp_nil(m);
}

/* ---- decoding helpers ---------------------------------------------------------------- */

struct kvp_evdecoder *et_decoder(void)
{
	struct kvp_evdecoder *d = NULL;

	cr_assert_eq(kvp_evdecoder_create(&d), 0);
	cr_assert_not_null(d);
	return d;
}

/* Decode and return the status; on failure, nothing may have been returned. */
int et_decode(struct kvp_evdecoder *d, const uint8_t *buf, size_t len, const struct kvp_ev **ev,
	       size_t *n)
{
	int rc;

	*ev = (const struct kvp_ev *)(uintptr_t)1;
	*n = 12345;
	rc = kvp_evdecode(d, buf, len, ev, n);
	if (rc != 0) {
		cr_assert_null(*ev, "events returned with status %d", rc);
		cr_assert_eq(*n, 0, "count returned with status %d", rc);
	}
	return rc;
}

/* Assert that bytes are refused as KVP_EPROTO (what = what is wrong with them); the
 * decoder must still decode a good batch afterwards. */
void et_expect_eproto(const uint8_t *buf, size_t len, const char *what)
{
	struct kvp_evdecoder *d = et_decoder();
	const struct kvp_ev *ev;
	size_t n;
	struct mp good = { 0 };
	int rc = et_decode(d, buf, len, &ev, &n);

	cr_assert_eq(rc, KVP_EPROTO, "%s: got %d (%s), want KVP_EPROTO", what, rc,
		     kvp_strerror(rc));
	mp_batch_head(&good, 1);
	mp_arr(&good, 1);
	mp_str(&good, "AllBlocksCleared");
	mp_batch_tail(&good);
	cr_assert_eq(et_decode(d, good.b, good.n, &ev, &n), 0, "%s: the decoder is stuck", what);
	cr_assert_eq(n, 1);
	cr_assert_eq(ev[0].type, KVP_EV_CLEARED);
	mp_free(&good);
	kvp_evdecoder_destroy(d);
}

void et_expect_eproto_mp(struct mp *m, const char *what)
{
	et_expect_eproto(m->b, m->n, what);
	mp_free(m);
}

void et_expect_stored(const struct kvp_ev *e, const uint64_t *h, size_t n, bool has_parent,
			  uint64_t parent, const uint32_t *tok, uint32_t bs,
			  enum kvp_ev_medium medium)
{
	cr_assert_eq(e->type, KVP_EV_STORED);
	cr_assert_eq(e->n_hashes, n, "n_hashes %zu want %zu", e->n_hashes, n);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(e->hashes[i], h[i], "hash %zu: %#llx want %#llx", i,
			     (unsigned long long)e->hashes[i], (unsigned long long)h[i]);
	cr_assert_eq(e->has_parent, has_parent);
	if (has_parent)
		cr_assert_eq(e->parent, parent, "parent %#llx want %#llx",
			     (unsigned long long)e->parent, (unsigned long long)parent);
	cr_assert_eq(e->block_size, bs);
	cr_assert_eq(e->n_tokens, n * bs);
	cr_assert_eq(memcmp(e->tokens, tok, n * bs * sizeof(*tok)), 0, "tokens differ");
	cr_assert_eq(e->medium, medium);
}

void et_expect_removed(const struct kvp_ev *e, const uint64_t *h, size_t n,
			   enum kvp_ev_medium medium)
{
	cr_assert_eq(e->type, KVP_EV_REMOVED);
	cr_assert_eq(e->n_hashes, n, "n_hashes %zu want %zu", e->n_hashes, n);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(e->hashes[i], h[i]);
	cr_assert_eq(e->medium, medium);
}
