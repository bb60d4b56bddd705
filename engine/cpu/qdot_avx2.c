/*
 * qdot_avx2.c - the dot kernels with AVX2 (built with -mavx2 -mfma -mf16c, called only
 * when the CPU has them): every block type.
 *
 * A block's products in bytes, then words, then dwords: vpmaddubsw multiplies unsigned
 * weight bytes by signed activation bytes and adds pairs into words (no saturation here:
 * |q| <= 63 unsigned against |a| <= 127, or |q| <= 128 after the sign trick below, keep a
 * pair under 32767), vpmaddwd adds word pairs into dwords, times the group scales where
 * the type has them. Signed weights (Q4_0, Q5_0, Q8_0) go through the sign trick
 * |w| * (a * sign w); offsets (Q3_K's -4, Q6_K's -32) are subtracted as a product of
 * their own. The integer sums are the generic kernels', exactly; each block's scales
 * multiply its dword sums in f32.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

#define QACC __m256
#define QACC_ZERO() _mm256_setzero_ps()
#define QACC_SUM(acc) hsum8(acc)

#include "qdot_body.h"

#define H2F(h) _cvtsh_ss(h)

/* 16 bytes of nibbles -> 32 bytes: the low nibbles, then the high ones */
static inline __m256i nibbles32(const uint8_t *p)
{
	const __m128i t = _mm_loadu_si128((const __m128i *)p);

	return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set (byte i: bit i) */
static inline __m256i bits32(const uint8_t *p)
{
	uint32_t x;

	memcpy(&x, p, sizeof(x));
	const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
					       0x0101010101010101, 0x0000000000000000);
	__m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);

	bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
	return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

/* the 8 dword sums of u8 x s8 byte products, as floats */
static inline __m256 dot_us8(__m256i u, __m256i s)
{
	return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/* the same for s8 x s8: |x| * (y * sign x) */
static inline __m256 dot_s8(__m256i x, __m256i y)
{
	return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* the 8 dword sums of the activation bytes alone */
static inline __m256 sum_s8(__m256i y)
{
	return dot_us8(_mm256_set1_epi8(1), y);
}

/* ---- the 32-element types ------------------------------------------------------------ */

/* A block's signed weight bytes (Q4_0, Q5_0, Q8_0), or unsigned ones with a min. */
QDOT_INLINE __m256i q4_0_bytes(const struct kvp_block_q4_0 *w)
{
	return _mm256_sub_epi8(nibbles32(w->qs), _mm256_set1_epi8(8));
}

QDOT_INLINE __m256i q5_0_bytes(const struct kvp_block_q5_0 *w)
{
	/* nibble - 16 where the fifth bit is clear: the nibble with 0xF0 or'ed in */
	__m256i hi = _mm256_andnot_si256(bits32(w->qh), _mm256_set1_epi8((char)0xF0));

	return _mm256_or_si256(nibbles32(w->qs), hi);
}

QDOT_INLINE __m256i q5_1_bytes(const struct kvp_block_q5_1 *w)
{
	__m256i hi = _mm256_and_si256(bits32(w->qh), _mm256_set1_epi8(0x10));

	return _mm256_or_si256(nibbles32(w->qs), hi);
}

#define QDOT_SIGNED(type, wtype, bytes_of)                                                \
	QDOT_INLINE __m256 blk_##type(const void *wv, int b, const void *av, __m256 acc)  \
	{                                                                                  \
		const struct wtype *w = (const struct wtype *)wv + b;                      \
		const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;    \
		const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);              \
		return _mm256_fmadd_ps(_mm256_set1_ps(H2F(w->d) * H2F(a->d)),              \
				       dot_s8(bytes_of(w), y), acc);                       \
	}

QDOT_INLINE __m256i q8_0_bytes(const struct kvp_block_q8_0 *w)
{
	return _mm256_loadu_si256((const __m256i *)w->qs);
}

QDOT_SIGNED(q4_0, kvp_block_q4_0, q4_0_bytes)
QDOT_SIGNED(q5_0, kvp_block_q5_0, q5_0_bytes)
QDOT_SIGNED(q8_0, kvp_block_q8_0, q8_0_bytes)

/* Q4_1, Q5_1: d_w d_a sum q a + m_w d_a sum a, q unsigned */
#define QDOT_MIN(type, wtype, bytes_of)                                                   \
	QDOT_INLINE __m256 blk_##type(const void *wv, int b, const void *av, __m256 acc)  \
	{                                                                                  \
		const struct wtype *w = (const struct wtype *)wv + b;                      \
		const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;    \
		const __m256i y = _mm256_loadu_si256((const __m256i *)a->qs);              \
		const float da = H2F(a->d);                                                \
		acc = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w->d) * da), dot_us8(bytes_of(w), y), acc); \
		return _mm256_fmadd_ps(_mm256_set1_ps(H2F(w->m) * da), sum_s8(y), acc);   \
	}

QDOT_INLINE __m256i q4_1_bytes(const struct kvp_block_q4_1 *w)
{
	return nibbles32(w->qs);
}

QDOT_MIN(q4_1, kvp_block_q4_1, q4_1_bytes)
QDOT_MIN(q5_1, kvp_block_q5_1, q5_1_bytes)

/* ---- the K types ------------------------------------------------------------------------ */

/* Word scales for the 16 word products of 32 bytes, from 8 word scales broadcast to
 * both lanes: group i in all 16 (Q4_K, Q5_K: 32-element groups) ... */
static inline __m256i scale_all(__m256i scales, int i)
{
	return _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)((2 * i + 1) << 8 | 2 * i)));
}

/* ... or group 2i in the low lane, 2i + 1 in the high (Q2_K, Q3_K: 16-element groups) */
static inline __m256i scale_pair(__m256i scales, int i)
{
	return _mm256_shuffle_epi8(scales,
				   _mm256_set_m128i(_mm_set1_epi16((short)((4 * i + 3) << 8 | (4 * i + 2))),
						    _mm_set1_epi16((short)((4 * i + 1) << 8 | 4 * i))));
}

static inline __m256i bcast128(__m128i x)
{
	return _mm256_set_m128i(x, x);
}

QDOT_INLINE __m256 blk_q2_k(const void *wv, int b, const void *av, __m256 acc)
{
	const struct kvp_block_q2_k *w = (const struct kvp_block_q2_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m256i m3 = _mm256_set1_epi8(3);
	const __m128i m4 = _mm_set1_epi8(0xF);
	const __m128i ms = _mm_loadu_si128((const __m128i *)w->scales);
	const __m256i mins = _mm256_cvtepi8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4));
	const __m256i all = _mm256_cvtepi8_epi16(_mm_and_si128(ms, m4));
	const __m256i sc[2] = { bcast128(_mm256_castsi256_si128(all)),
				bcast128(_mm256_extracti128_si256(all, 1)) };
	const __m256i prod = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)a->bsums));
	const uint8_t *q2 = w->qs;
	const int8_t *q8 = a->qs;
	__m256i sumi = _mm256_setzero_si256();

	acc = _mm256_fmadd_ps(_mm256_set1_ps(-a->d * H2F(w->dmin)), _mm256_cvtepi32_ps(prod), acc);
	for (int j = 0; j < 2; j++, q2 += 32, q8 += 128) {
		const __m256i bits = _mm256_loadu_si256((const __m256i *)q2);

		for (int s = 0; s < 4; s++) {
			__m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), m3);
			__m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 32 * s)));

			sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair(sc[j], s), p));
		}
	}
	return _mm256_fmadd_ps(_mm256_set1_ps(a->d * H2F(w->d)), _mm256_cvtepi32_ps(sumi), acc);
}

QDOT_INLINE __m256 blk_q3_k(const void *wv, int b, const void *av, __m256 acc)
{
	const struct kvp_block_q3_k *w = (const struct kvp_block_q3_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
	const uint8_t *q3 = w->qs;
	const int8_t *q8 = a->qs;
	__m256i sumi = _mm256_setzero_si256();
	uint32_t u[4];

	qdot_k3_scales(w->scales, u);
	const __m128i s8 = _mm_sub_epi8(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]),
					_mm_set1_epi8(32));
	const __m256i all = _mm256_cvtepi8_epi16(s8);
	const __m256i sc[2] = { bcast128(_mm256_castsi256_si128(all)),
				bcast128(_mm256_extracti128_si256(all, 1)) };
	const __m256i hbits = _mm256_loadu_si256((const __m256i *)w->hmask);

	for (int j = 0; j < 2; j++, q3 += 32, q8 += 128) {
		const __m256i bits = _mm256_loadu_si256((const __m256i *)q3);

		for (int s = 0; s < 4; s++) {
			const __m256i y = _mm256_loadu_si256((const __m256i *)(q8 + 32 * s));
			__m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), m3);
			/* 4 where the high bit is clear: q = lo - 4 */
			__m256i hb = _mm256_and_si256(_mm256_srli_epi16(hbits, 4 * j + s), one);
			__m256i h4 = _mm256_slli_epi16(_mm256_xor_si256(hb, one), 2);
			__m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, y), _mm256_maddubs_epi16(h4, y));

			sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair(sc[j], s), p));
		}
	}
	return _mm256_fmadd_ps(_mm256_set1_ps(a->d * H2F(w->d)), _mm256_cvtepi32_ps(sumi), acc);
}

/* Q4_K and Q5_K: one super-block, qh NULL for Q4_K. */
QDOT_INLINE __m256 k4_block(const uint8_t *q4, const uint8_t *qh, const uint8_t scales[12],
			    uint16_t dw, uint16_t dminw, const struct kvp_block_q8_k *a, __m256 acc)
{
	const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
	const int8_t *q8 = a->qs;
	uint32_t u[4];

	qdot_k4_scales(scales, u);
	/* words: scales 0-7 in the low lane, mins 0-7 in the high */
	const __m256i ms = _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
	const __m256i bsums = _mm256_loadu_si256((const __m256i *)a->bsums);
	const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
	const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), q8s);
	const __m256i sc = bcast128(_mm256_castsi256_si128(ms));
	const __m256i hbits = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
	__m256i sumi = _mm256_setzero_si256();

	acc = _mm256_fmadd_ps(_mm256_set1_ps(-a->d * H2F(dminw)),
			      _mm256_cvtepi32_ps(_mm256_set_m128i(_mm_setzero_si128(), prod)), acc);
	for (int j = 0; j < 4; j++, q4 += 32, q8 += 64) {
		const __m256i bits = _mm256_loadu_si256((const __m256i *)q4);
		__m256i lo = _mm256_and_si256(bits, m4);
		__m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);

		if (qh) {
			__m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one);
			__m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one);

			lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
			hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
		}
		__m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
		__m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));

		sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_all(sc, 2 * j), pl));
		sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_all(sc, 2 * j + 1), ph));
	}
	return _mm256_fmadd_ps(_mm256_set1_ps(a->d * H2F(dw)), _mm256_cvtepi32_ps(sumi), acc);
}

QDOT_INLINE __m256 blk_q4_k(const void *wv, int b, const void *av, __m256 acc)
{
	const struct kvp_block_q4_k *w = (const struct kvp_block_q4_k *)wv + b;

	return k4_block(w->qs, NULL, w->scales, w->d, w->dmin, (const struct kvp_block_q8_k *)av + b, acc);
}

QDOT_INLINE __m256 blk_q5_k(const void *wv, int b, const void *av, __m256 acc)
{
	const struct kvp_block_q5_k *w = (const struct kvp_block_q5_k *)wv + b;

	return k4_block(w->qs, w->qh, w->scales, w->d, w->dmin, (const struct kvp_block_q8_k *)av + b, acc);
}

QDOT_INLINE __m256 blk_q6_k(const void *wv, int b, const void *av, __m256 acc)
{
	const struct kvp_block_q6_k *w = (const struct kvp_block_q6_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
	const __m256i m32 = _mm256_set1_epi8(32);
	const __m128i scales = _mm_loadu_si128((const __m128i *)w->scales);
	const uint8_t *ql = w->ql, *qh = w->qh;
	const int8_t *q8 = a->qs;
	__m256i sumi = _mm256_setzero_si256();

	for (int j = 0; j < 2; j++, ql += 64, qh += 32, q8 += 128) {
		const __m256i b1 = _mm256_loadu_si256((const __m256i *)ql);
		const __m256i b2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
		const __m256i bh = _mm256_loadu_si256((const __m256i *)qh);
		/* the 6-bit q of elements 32 s + l, s = 0..3 (qdot_body.h) */
		const __m256i q[4] = {
			_mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(bh, m2), 4)),
			_mm256_or_si256(_mm256_and_si256(b2, m4),
					_mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 2), m2), 4)),
			_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
					_mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 4), m2), 4)),
			_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
					_mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(bh, 6), m2), 4)),
		};

		for (int s = 0; s < 4; s++) {
			const __m256i y = _mm256_loadu_si256((const __m256i *)(q8 + 32 * s));
			const uint64_t g = (uint64_t)(8 * j + 2 * s);   /* groups g, g + 1 */
			const __m128i shuf = _mm_set_epi64x((long long)(0x0101010101010101ull * (g + 1)),
							    (long long)(0x0101010101010101ull * g));
			const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
			__m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[s], y), _mm256_maddubs_epi16(m32, y));

			sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
		}
	}
	return _mm256_fmadd_ps(_mm256_set1_ps(a->d * H2F(w->d)), _mm256_cvtepi32_ps(sumi), acc);
}

QDOT_EVERY_TYPE(kvp_cpu_qdot_avx2, "avx2", &kvp_cpu_qdot_generic)
