/*
 * proto_test_util.h - what the proto_*.c files of test_proto share (proto_test_util.c).
 *
 * Decoders are always handed exact-size heap copies (see pt_exact()), so that under
 * -DKVP_SANITIZE=ON a read one byte past the payload is an ASan error, not luck.
 *
 * Each helper fails the calling test through criterion's asserts; none returns an error.
 */
#ifndef KVP_PROTO_TEST_UTIL_H
#define KVP_PROTO_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* An exact-size heap copy of p[0..n) (malloc'd, the caller frees): one byte past the
 * end is outside the allocation. */
uint8_t *pt_exact(const void *p, size_t n);
/* Assert got equals want, naming `what` and the first differing offset. */
void pt_assert_bytes(const uint8_t *got, size_t got_n, const uint8_t *want, size_t want_n,
		     const char *what);

/* Little-endian writers, and a float's bits and back. */
void pt_put32(uint8_t *p, uint32_t v);
void pt_putf(uint8_t *p, float f);
uint32_t pt_fbits(float f);
float pt_bitsf(uint32_t bits);
void pt_put16(uint8_t *p, uint16_t v);

/* xorshift64* from a fixed seed, so a failure replays. pt_rnd_below(0) is 0. */
uint64_t pt_rnd(void);
uint32_t pt_rnd_below(uint32_t n);

/* A whole frame in out: header (of this version) then payload. Returns its size. */
size_t pt_frame(uint8_t *out, uint8_t version, uint8_t type, uint32_t req_id,
		const uint8_t *payload, size_t n);

/* The 10 tokens of the index-only session of docs/protocol.md (§9), and 8 logits whose
 * f32 values are short and exact, for GENERATE_DONE payloads. */
extern const uint32_t pt_ex_tokens[10];
extern const float pt_gx_logits[8];

/* Each decoder on p[0..n) with the largest limit, into a local: its status only. */
int pt_dec_hello(const uint8_t *p, size_t n);
int pt_dec_hello_reply(const uint8_t *p, size_t n);
int pt_dec_tokens(const uint8_t *p, size_t n);
int pt_dec_insert(const uint8_t *p, size_t n);
int pt_dec_blocks(const uint8_t *p, size_t n);
int pt_dec_release(const uint8_t *p, size_t n);
int pt_dec_u32(const uint8_t *p, size_t n);
int pt_dec_error(const uint8_t *p, size_t n);
int pt_dec_generate(const uint8_t *p, size_t n);
int pt_dec_chunk(const uint8_t *p, size_t n);
int pt_dec_done(const uint8_t *p, size_t n);
int pt_dec_admin(const uint8_t *p, size_t n);
int pt_dec_admin_reply(const uint8_t *p, size_t n);

#endif
