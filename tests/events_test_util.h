/*
 * events_test_util.h - what the files of test_events share (events_test_util.c): a
 * msgpack writer that follows the spec byte for byte, vLLM's events written with it,
 * and helpers that check the decoder. Every function here fails the calling test
 * through criterion's asserts; none returns an error.
 */
#ifndef KVP_EVENTS_TEST_UTIL_H
#define KVP_EVENTS_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_events.h"

/* ---- a msgpack writer ------------------------------------------------------------------- */

/* A growing buffer of msgpack; zero it to start, mp_free to end. */
struct mp {
	uint8_t *b;
	size_t n, cap;
};

void mp_byte(struct mp *m, uint8_t c);           /* one raw byte */
void mp_arr(struct mp *m, uint32_t n);            /* fixarray, array 16 or 32 */
void mp_map(struct mp *m, uint32_t n);            /* fixmap, map 16 or 32 */
void mp_str(struct mp *m, const char *s);         /* fixstr, str 8 or 16 */
void mp_bin(struct mp *m, const void *p, uint8_t n);   /* bin 8 */
void mp_uint(struct mp *m, uint64_t v);           /* the smallest unsigned form */
void mp_neg64(struct mp *m, int64_t v);           /* int 64 */
void mp_nil(struct mp *m);
void mp_f64(struct mp *m, double d);              /* float 64 */
void mp_free(struct mp *m);

/* vLLM's BlockStored as a map (fields in vLLM's order, lora_id and lora_name nil) or
 * as an array (medium NULL: the older form, without it). has_parent false: nil. */
void mp_stored_map(struct mp *m, const uint64_t *h, size_t n, bool has_parent,
		   uint64_t parent, const uint32_t *tok, uint32_t bs, const char *medium);
void mp_stored_arr(struct mp *m, const uint64_t *h, size_t n, bool has_parent,
		   uint64_t parent, const uint32_t *tok, uint32_t bs, const char *medium);
/* A batch [ts, [n events..., then mp_batch_tail: the rank, nil]. */
void mp_batch_head(struct mp *m, uint32_t n);
void mp_batch_tail(struct mp *m);

/* ---- checking the decoder ------------------------------------------------------------- */

struct kvp_evdecoder *et_decoder(void);
/* kvp_evdecode's status; on a failure, asserts that nothing was returned. */
int et_decode(struct kvp_evdecoder *d, const uint8_t *buf, size_t len,
	      const struct kvp_ev **ev, size_t *n);
/* Assert that a new decoder refuses the bytes as KVP_EPROTO (what: what is wrong with
 * them) and decodes a good batch afterwards. The _mp form frees m. */
void et_expect_eproto(const uint8_t *buf, size_t len, const char *what);
void et_expect_eproto_mp(struct mp *m, const char *what);
/* Assert that a decoded event is the BlockStored / BlockRemoved given. */
void et_expect_stored(const struct kvp_ev *e, const uint64_t *h, size_t n, bool has_parent,
		      uint64_t parent, const uint32_t *tok, uint32_t bs, enum kvp_ev_medium medium);
void et_expect_removed(const struct kvp_ev *e, const uint64_t *h, size_t n,
		       enum kvp_ev_medium medium);

#endif
