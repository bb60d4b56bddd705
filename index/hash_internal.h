/*
 * hash_internal.h - the block-key byte layout as inline code, private to index/.
 *
 * hash.c (kvp_block_key, kvp_chain_keys) and tree.c (kvp_tree_match, which interleaves
 * hashing with probing) both build keys with kvp_hash_block(), so there is one
 * implementation of the layout of docs/hashing.md:
 *
 *   key = XXH3-128( canon(parent) | tokens as u32 little-endian ),   seed 0
 *   canon(k) = XXH128_canonicalFromHash: k.hi big-endian, then k.lo big-endian
 *
 * The input is built in a stack buffer and hashed with the one-shot XXH3 call: up to
 * ~512 tokens that is faster (2.7x at B=16, 1.5x at B=256) than the streaming API that
 * would hash the tokens where they lie; from 1024 tokens on the streaming API wins and
 * is used. B=16 skips the buffer altogether (kvp_hash_block16). Measured figures are in
 * docs/hashing.md, "Speed". Nothing allocates.
 * Not part of any public header: it pulls in xxHash with XXH_INLINE_ALL.
 */
#ifndef KVP_HASH_INTERNAL_H
#define KVP_HASH_INTERNAL_H

#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvp_index.h"

/* Host byte order, when the compiler says; otherwise the byte-by-byte paths below are
 * correct on any host. KVP_HASH_FORCE_PORTABLE selects them anyway (to test them on a
 * little-endian machine: the known answers must not change). */
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
	__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && !defined(KVP_HASH_FORCE_PORTABLE)
#define KVP_HASH_LE 1
#else
#define KVP_HASH_LE 0
#endif
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
	__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ && !defined(KVP_HASH_FORCE_PORTABLE)
#define KVP_HASH_BE 1
#else
#define KVP_HASH_BE 0
#endif

/* Inputs up to this many bytes take XXH3's short and mid-size paths and are built in a
 * small buffer; longer ones go to kvp_hash_block_long and its 16 KiB buffer. */
#define KVP_HASH_SHORT_BYTES 240u
#define KVP_HASH_SHORT_TOKENS ((KVP_HASH_SHORT_BYTES - 16u) / 4u)
#define KVP_HASH_LONG_BYTES (16u + 4u * KVP_BLOCK_TOKENS_MAX)
/* From this many tokens on (little-endian hosts), the streaming API hashing the tokens
 * in place beats copying them: measured ~10% faster at 1024 and ~20% at 4096, while
 * the copy wins by 1.5x at 256 and 2.7x at 16. */
#define KVP_HASH_STREAM_TOKENS 1024u

static inline void kvp_hash_put_u32le(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static inline void kvp_hash_put_u64be(unsigned char *p, uint64_t v)
{
#if KVP_HASH_LE
	v = XXH_swap64(v);     /* one bswap; GCC does not always see it in the loop */
	memcpy(p, &v, 8);
#elif KVP_HASH_BE
	memcpy(p, &v, 8);
#else
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (56 - 8 * i));
#endif
}

/* canon(k): XXH128_canonicalFromHash, 16 bytes big-endian, high64 first. */
static inline void kvp_hash_put_canon(unsigned char *p, struct kvp_key k)
{
	kvp_hash_put_u64be(p, k.hi);
	kvp_hash_put_u64be(p + 8, k.lo);
}

/* Tokens as u32 little-endian: a plain copy on little-endian hosts. */
static inline void kvp_hash_put_tokens(unsigned char *p, const uint32_t *tokens, uint32_t n)
{
#if KVP_HASH_LE
	memcpy(p, tokens, (size_t)n * 4u);
#else
	for (uint32_t i = 0; i < n; i++)
		kvp_hash_put_u32le(p + 4u * i, tokens[i]);
#endif
}

static inline struct kvp_key kvp_hash_from_xxh(XXH128_hash_t h)
{
	struct kvp_key k = { .lo = h.low64, .hi = h.high64 };
	return k;
}

/* Blocks of more than KVP_HASH_SHORT_TOKENS tokens (hash.c). Its 16 KiB buffer lives in
 * its own frame so that the small-block path does not pay for the stack probes. */
struct kvp_key kvp_hash_block_long(struct kvp_key parent, const uint32_t *tokens,
				   uint32_t n);

/*
 * B = 16 (80 input bytes), the common case, without building the input: this is
 * XXH3_len_17to128_128b (xxHash 0.8.1) unrolled for len = 80 and seed 0, with its
 * 16-byte reads at offsets 16..79 taken straight from the tokens and the one at offset
 * 0 from canon(parent). Same digest as XXH3_128bits on the built buffer (the tests
 * compare the two on random input); ~10% faster, because the tokens are neither copied
 * nor reloaded. Little-endian hosts only: XXH128_mix32B reads the tokens as LE words.
 */
static inline __attribute__((always_inline)) struct kvp_key
kvp_hash_block16(struct kvp_key parent, const uint32_t *tokens)
{
	/* Input byte x of the 80 is p[x] for x < 16, else tb[x - 16]. */
	const xxh_u8 *tb = (const xxh_u8 *)tokens;
	const size_t len = 80;
	unsigned char p[16];
	XXH128_hash_t acc, h;

	kvp_hash_put_canon(p, parent);
	acc.low64 = len * XXH_PRIME64_1;
	acc.high64 = 0;
	/* len > 64, not > 96: mix32B(in+32, in+len-48), (in+16, in+len-32), (in, in+len-16) */
	acc = XXH128_mix32B(acc, tb + 16, tb + 16, XXH3_kSecret + 64, 0);
	acc = XXH128_mix32B(acc, tb + 0, tb + 32, XXH3_kSecret + 32, 0);
	acc = XXH128_mix32B(acc, p, tb + 48, XXH3_kSecret, 0);
	h.low64 = acc.low64 + acc.high64;
	h.high64 = acc.low64 * XXH_PRIME64_1 + acc.high64 * XXH_PRIME64_4 + len * XXH_PRIME64_2;
	h.low64 = XXH3_avalanche(h.low64);
	h.high64 = (XXH64_hash_t)0 - XXH3_avalanche(h.high64);
	return kvp_hash_from_xxh(h);
}

/* Key of a block of n tokens under parent. Always inlined, so that a constant n (see
 * KVP_HASH_SPECIALISE) turns the copy and XXH3's length dispatch into straight code. */
static inline __attribute__((always_inline)) struct kvp_key
kvp_hash_block(struct kvp_key parent, const uint32_t *tokens, uint32_t n)
{
	unsigned char buf[KVP_HASH_SHORT_BYTES];

#if KVP_HASH_LE && XXH_VERSION_NUMBER >= 800 && XXH_VERSION_NUMBER < 900
	if (n == 16)
		return kvp_hash_block16(parent, tokens);
#endif
	if (n > KVP_HASH_SHORT_TOKENS)
		return kvp_hash_block_long(parent, tokens, n);
	kvp_hash_put_canon(buf, parent);
	kvp_hash_put_tokens(buf + 16, tokens, n);
	return kvp_hash_from_xxh(XXH3_128bits(buf, 16u + 4u * (size_t)n));
}

/* Run stmt with kvp_b_ bound to b, as a constant for the common block sizes (16 and 32
 * tokens: at B=16 about 2x faster than the generic path, which pays for a libc memcpy
 * and XXH3's length dispatch on every block), as the variable otherwise. */
#define KVP_HASH_SPECIALISE(b, stmt)                                       \
	switch (b) {                                                       \
	case 16: { const uint32_t kvp_b_ = 16; stmt; break; }              \
	case 32: { const uint32_t kvp_b_ = 32; stmt; break; }              \
	default: { const uint32_t kvp_b_ = (b); stmt; break; }             \
	}

#endif
