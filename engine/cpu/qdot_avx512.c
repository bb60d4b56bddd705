/*
 * qdot_avx512.c - the dot kernels with AVX-512 F/BW/VL (built with -mavx512f -mavx512bw
 * -mavx512vl, called only when the CPU has all three) for every block type: Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K. F16 and BF16 rows go through
 * kern_avx512.c's matrix-vector kernels.
 *
 * The products as in qdot_avx2.c, 64 bytes an instruction: two blocks of a 32-element
 * type, or 64 elements of a K super-block (two of Q4_K's 32-element groups, four of
 * Q6_K's, Q2_K's and Q3_K's 16). A's Q8_0 rows are first copied into pairs of blocks (q8_0_pair: the 64
 * values, the two scales spread over their lanes, each lane's sum of A), so that the
 * 32-element types take a pair in one load; the 4- and 5-bit types unpack two blocks of
 * W into one register, take their offsets (Q4_0's -8, Q5_0's -16) from A's sums and
 * their mins (Q4_1, Q5_1) against them. AVX-512BW has no vpsignb: Q8_0's sign trick is
 * |w| (vpabsb) against a negated where w is negative (a masked subtract).
 *
 * Built a second time with KVP_QDOT_VNNI (qdot_avx512vnni.c, -mavx512vnni) as the
 * table kvp_cpu_qdot_avx512vnni, for CPUs with AVX512-VNNI. vpdpbusd and vpdpwssd
 * each do a product and its sum in one instruction, into the accumulator: what
 * vpmaddubsw + vpmaddwd + vpaddd did in three (5-7 % faster for Q8_0 on a Zen 5 VM:
 * the products were not all that held these kernels back). The integer sums are the
 * same as without VNNI:
 *   Q8_0   W's bytes + 128 as unsigned (one xor a block of W, not a sign trick a row
 *          of A); each lane of the product starts from -128 x the sum of its four
 *          activations, a constant of A's row computed once a call
 *   Q4_K, Q5_K   vpdpwssd for the scale words' products and their sum
 *   Q6_K   the -32 offset of W's values is taken out once a super-block, from A's
 *          bsums, instead of a second vpmaddubsw per 64 values and row
 * so a result is the same whichever of the two tables runs (Q6_K: up to the f32
 * rounding of its lanes, summed in another order).
 *
 * KVP_QDOT_EMULATE (tests only) builds this file against SIMDe's portable AVX-512, so
 * that a CPU without it still checks these kernels' arithmetic.
 */
#include <string.h>

#if defined(KVP_QDOT_EMULATE)
#include "qdot_emulate.h"
#define kvp_cpu_qdot_avx512 kvp_cpu_qdot_avx512_emulated
#else
#include <immintrin.h>
#endif
#define H2F(h) _cvtsh_ss(h)

#include "cpu_impl.h"

#define QACC __m512
#define QACC_ZERO() _mm512_setzero_ps()
#define QACC_SUM(acc) _mm512_reduce_add_ps(acc)

#if defined(KVP_QDOT_EMULATE)
/* SIMDe's AVX-512 with eight rows a group took 3 minutes to compile under ASan (four:
 * 85 s); the grouping is qdot_body.h's, the same code at every group size */
#define QDOT_GROUP 4
#else
#define QDOT_GROUP 8            /* 32 registers: eight rows of A against each block */
#endif
#include "qdot_body.h"

#if defined(KVP_QDOT_EMULATE)
extern const struct kvp_cpu_qdot kvp_cpu_qdot_avx512_emulated;
#endif

/* acc + the 4-product sums of unsigned u and signed s bytes, a dword lane each (no
 * saturation in the byte products' range here: |u|, |s| <= 128, s never -128) */
#if defined(KVP_QDOT_VNNI)
#define DOT_U8S8(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define DOT_S16(acc, a, b) _mm512_dpwssd_epi32(acc, a, b)
#else
#define DOT_U8S8(acc, u, s) \
	_mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)))
#define DOT_S16(acc, a, b) _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
#endif

/* 2 x 32 bytes -> one register */
static inline __m512i join256(__m256i lo, __m256i hi)
{
	return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

static inline __m256i load256(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

/* 16 word scales, lane t = s[g0 + t / 8] (Q6_K: four 16-element groups in 64 bytes)
 * or s[g0 + t / 16] (Q4_K: two 32-element groups): s as words in the low 256 bits. */
static inline __m512i scales_by(__m512i s, int g0, int shift)
{
	const __m512i lane = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
					      17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
	const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16((short)g0), _mm512_srli_epi16(lane, (unsigned)shift));

	return _mm512_permutexvar_epi16(idx, s);
}

/* ---- Q8_0, two blocks at a time -------------------------------------------------------- */

/* Two blocks' f16 scales as f32, spread as a pair's products lie: lanes 0-7 the first,
 * 8-15 the second. */
QDOT_INLINE __m512 spread_q8_0_scales(uint16_t d0, uint16_t d1)
{
	const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(d0 | (uint32_t)d1 << 16)));

	return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
				     _mm512_castps128_ps512(d));
}

/* acc + the products of W's blocks w[0], w[1] with y, the activation's 64 values of the
 * same blocks, scaled by ad (their two scales, spread). What is W's alone (x, its signs,
 * its scales) is the same for every row of A: the row loop computes it once. */
QDOT_INLINE __m512 pair_q8_0(const struct kvp_block_q8_0 *w, __m512i y, __m512 ad, __m512 acc)
{
	const __m512i x = join256(load256(w[0].qs), load256(w[1].qs));
	/* |x| * (y * sign x) */
	const __m512i sy = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(x), _mm512_setzero_si512(), y);
#if defined(KVP_QDOT_VNNI)
	const __m512i p = DOT_U8S8(_mm512_setzero_si512(), _mm512_abs_epi8(x), sy);
#else
	const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(x), sy),
					    _mm512_set1_epi16(1));
#endif
	const __m512 d = _mm512_mul_ps(spread_q8_0_scales(w[0].d, w[1].d), ad);

	return _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
}

/* Blocks 2b and 2b + 1 of a row of W and of A's Q8_0 blocks. */
QDOT_INLINE __m512 blk2_q8_0(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + 2 * b;

	return pair_q8_0((const struct kvp_block_q8_0 *)wv + 2 * b,
			 join256(load256(a[0].qs), load256(a[1].qs)),
			 spread_q8_0_scales(a[0].d, a[1].d), acc);
}

/* A's blocks in pairs, as the kernel reads them best: the 64 values in one load, the two
 * scales already f32 and spread. Filled from the Q8_0 rows once a call; the products are
 * the same. */
struct q8_0_pair {
	int8_t qs[2 * KVP_QK];
	float d[16];
	int32_t c[16];          /* -128 x the sum of each dword lane's four values of qs */
	float s[16];            /* d x that sum: the min types' sums of A, lane by lane */
};

/* pairs on the stack: 128 KiB, rows x k / 64 at most */
#define Q8_0_PAIRS_MAX ((int)(131072 / sizeof(struct q8_0_pair)))

QDOT_INLINE __m512 blk2_q8_0_pairs(const void *wv, int b, const void *av, __m512 acc)
{
	const struct q8_0_pair *a = (const struct q8_0_pair *)av + b;
	const struct kvp_block_q8_0 *w = (const struct kvp_block_q8_0 *)wv + 2 * b;
#if defined(KVP_QDOT_VNNI)
	/* sum (w + 128) y - 128 sum y = sum w y, lane by lane */
	const __m512i wu = _mm512_xor_si512(join256(load256(w[0].qs), load256(w[1].qs)),
					    _mm512_set1_epi8((char)0x80));
	const __m512i p = DOT_U8S8(_mm512_loadu_si512((const void *)a->c), wu,
				   _mm512_loadu_si512((const void *)a->qs));
	const __m512 d = _mm512_mul_ps(spread_q8_0_scales(w[0].d, w[1].d), _mm512_loadu_ps(a->d));

	return _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
#else
	return pair_q8_0(w, _mm512_loadu_si512((const void *)a->qs), _mm512_loadu_ps(a->d), acc);
#endif
}

/* A's Q8_0 rows as pairs. */
static void q8_0_to_pairs(const struct kvp_qdot_args *x, int pairs, struct q8_0_pair *ap)
{
	for (int r = 0; r < x->m; r++) {
		const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)(x->aq + (size_t)r * x->aq_stride);

		for (int i = 0; i < pairs; i++) {
			struct q8_0_pair *o = &ap[r * pairs + i];

			memcpy(o->qs, a[2 * i].qs, KVP_QK);
			memcpy(o->qs + KVP_QK, a[2 * i + 1].qs, KVP_QK);
			const __m512 d = spread_q8_0_scales(a[2 * i].d, a[2 * i + 1].d);
			/* each lane's four values of A summed */
			const __m512i sum = _mm512_madd_epi16(
				_mm512_maddubs_epi16(_mm512_set1_epi8(1),
						     _mm512_loadu_si512((const void *)o->qs)),
				_mm512_set1_epi16(1));

			_mm512_storeu_ps(o->d, d);
			_mm512_storeu_si512((void *)o->c,
					    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7)));
			_mm512_storeu_ps(o->s, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sum)));
		}
	}
}

/* The pairs path of a 32-element type: A's Q8_0 rows as pairs on the stack, then blk
 * (two blocks of W against a pair) over W's rows. With an odd number of blocks, or
 * more pairs than the stack holds, other's kernel. */
QDOT_INLINE void rows_pairs(const struct kvp_qdot_args *x, int j0, int j1,
			    __m512 (*blk)(const void *w, int b, const void *a, __m512 acc),
			    kvp_qdot_fn other)
{
	const int pairs = x->k / (2 * KVP_QK);
	_Alignas(64) struct q8_0_pair ap[Q8_0_PAIRS_MAX];
	struct kvp_qdot_args xp = *x;

	if (x->k % (2 * KVP_QK) || (size_t)x->m * (size_t)pairs > Q8_0_PAIRS_MAX) {
		other(x, j0, j1);
		return;
	}
	q8_0_to_pairs(x, pairs, ap);
	xp.aq = (const char *)ap;
	xp.aq_stride = (size_t)pairs * sizeof(struct q8_0_pair);
	qdot_rows(&xp, j0, j1, 2 * KVP_QK, blk);
}

/* More pairs than the stack holds: A's blocks as they are; an odd number of blocks:
 * the AVX2 kernel's. */
static void rows_q8_0_unpaired(const struct kvp_qdot_args *x, int j0, int j1)
{
	if (x->k % (2 * KVP_QK))
		kvp_cpu_qdot_avx2.dot[KVP_GGML_Q8_0](x, j0, j1);
	else
		qdot_rows(x, j0, j1, 2 * KVP_QK, blk2_q8_0);
}

static void rows_q8_0(const struct kvp_qdot_args *x, int j0, int j1)
{
	rows_pairs(x, j0, j1, blk2_q8_0_pairs, rows_q8_0_unpaired);
}

/* ---- Q4_0, Q4_1, Q5_0, Q5_1, two blocks at a time -------------------------------------- */

/* Two blocks' 16 bytes of nibbles -> 64 bytes as a pair of A lies: block 0's low
 * nibbles (its elements 0-15), its high ones (16-31), then block 1's. */
QDOT_INLINE __m512i nibbles64(const uint8_t *q0, const uint8_t *q1)
{
	const __m256i t = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)q1),
					   _mm_loadu_si128((const __m128i *)q0));
	const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);

	/* 128-bit lanes [q0, q1, q0 >> 4, q1 >> 4] -> [q0, q0 >> 4, q1, q1 >> 4] */
	return _mm512_and_si512(_mm512_shuffle_i32x4(z, z, _MM_SHUFFLE(3, 1, 2, 0)),
				_mm512_set1_epi8(0x0F));
}

/* The fifth bits of two Q5 blocks (bit i of qh: element i) added to their nibbles u. */
QDOT_INLINE __m512i fifth_bits(__m512i u, const uint8_t *qh0, const uint8_t *qh1)
{
	uint32_t h0, h1;

	memcpy(&h0, qh0, sizeof(h0));
	memcpy(&h1, qh1, sizeof(h1));
	return _mm512_mask_add_epi8(u, (__mmask64)((uint64_t)h1 << 32 | h0), u, _mm512_set1_epi8(16));
}

/* acc + two blocks of W whose values are u - 2^(7 - shift) (u unsigned: Q4_0's nibble
 * - 8, shift 4; Q5_0's five bits - 16, shift 3), scales d0, d1, against pair a: each
 * lane's products from its -2^(7 - shift) x its sum of A, a's c shifted. */
QDOT_INLINE __m512 pair_offset(__m512i u, int shift, uint16_t d0, uint16_t d1,
			       const struct q8_0_pair *a, __m512 acc)
{
	const __m512i y = _mm512_loadu_si512((const void *)a->qs);
	const __m512i p = DOT_U8S8(_mm512_srai_epi32(_mm512_loadu_si512((const void *)a->c), shift),
				   u, y);
	const __m512 d = _mm512_mul_ps(spread_q8_0_scales(d0, d1), _mm512_loadu_ps(a->d));

	return _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
}

/* acc + two blocks of W whose values are d u + m (Q4_1, Q5_1) against pair a: the
 * products, and the mins against a's sums. */
QDOT_INLINE __m512 pair_min(__m512i u, uint16_t d0, uint16_t d1, uint16_t m0, uint16_t m1,
			    const struct q8_0_pair *a, __m512 acc)
{
	const __m512i p = DOT_U8S8(_mm512_setzero_si512(), u, _mm512_loadu_si512((const void *)a->qs));
	const __m512 d = _mm512_mul_ps(spread_q8_0_scales(d0, d1), _mm512_loadu_ps(a->d));

	acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
	return _mm512_fmadd_ps(spread_q8_0_scales(m0, m1), _mm512_loadu_ps(a->s), acc);
}

QDOT_INLINE __m512 blk2_q4_0(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q4_0 *w = (const struct kvp_block_q4_0 *)wv + 2 * b;

	return pair_offset(nibbles64(w[0].qs, w[1].qs), 4, w[0].d, w[1].d,
			   (const struct q8_0_pair *)av + b, acc);
}

QDOT_INLINE __m512 blk2_q5_0(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q5_0 *w = (const struct kvp_block_q5_0 *)wv + 2 * b;

	return pair_offset(fifth_bits(nibbles64(w[0].qs, w[1].qs), w[0].qh, w[1].qh), 3, w[0].d,
			   w[1].d, (const struct q8_0_pair *)av + b, acc);
}

QDOT_INLINE __m512 blk2_q4_1(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q4_1 *w = (const struct kvp_block_q4_1 *)wv + 2 * b;

	return pair_min(nibbles64(w[0].qs, w[1].qs), w[0].d, w[1].d, w[0].m, w[1].m,
			(const struct q8_0_pair *)av + b, acc);
}

QDOT_INLINE __m512 blk2_q5_1(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q5_1 *w = (const struct kvp_block_q5_1 *)wv + 2 * b;

	return pair_min(fifth_bits(nibbles64(w[0].qs, w[1].qs), w[0].qh, w[1].qh), w[0].d, w[1].d,
			w[0].m, w[1].m, (const struct q8_0_pair *)av + b, acc);
}

#define ROWS_PAIRS(type, TYPE)                                                             \
	static void rows_##type(const struct kvp_qdot_args *x, int j0, int j1)             \
	{                                                                                   \
		rows_pairs(x, j0, j1, blk2_##type, kvp_cpu_qdot_avx2.dot[KVP_GGML_##TYPE]); \
	}

ROWS_PAIRS(q4_0, Q4_0)
ROWS_PAIRS(q4_1, Q4_1)
ROWS_PAIRS(q5_0, Q5_0)
ROWS_PAIRS(q5_1, Q5_1)

/* sumi less 2^shift x the sum over a super-block's 16 groups of scale (sc16, words) x
 * the group's sum of A: an offset of W's values (Q3_K's -4, Q6_K's -32) taken once a
 * super-block from A's bsums instead of once a product. */
QDOT_INLINE __m512i sub_group_offset(__m512i sumi, __m256i sc16, const int16_t *bsums, int shift)
{
	const __m256i sb = _mm256_madd_epi16(sc16, load256(bsums));

	return _mm512_sub_epi32(sumi, _mm512_inserti64x4(_mm512_setzero_si512(),
							 _mm256_slli_epi32(sb, shift), 0));
}

/* ---- Q2_K, Q3_K -------------------------------------------------------------------------- */

/* The 2-bit fields of 64 elements of a Q2_K or Q3_K super-block: half h's 32 bytes of
 * qs, bits 2 s and 2 s + 2 (s = 0 or 2), elements 128 h + 32 s .. + 63 in A's order. */
QDOT_INLINE __m512i k2_pairs(const uint8_t *qs, int h, int s)
{
	const __m256i bits = load256(qs + 32 * h);

	return _mm512_and_si512(join256(_mm256_srli_epi16(bits, 2 * s), _mm256_srli_epi16(bits, 2 * s + 2)),
				_mm512_set1_epi8(3));
}

/* The 16 groups' word scales sc (low 256 bits) against the products of q (values
 * by register, four of 64 elements) with A's values: the integer sum of a super-block. */
QDOT_INLINE __m512i k2_sums(const __m512i q[4], __m512i sc, const int8_t *q8)
{
	__m512i sumi = _mm512_setzero_si512();

	for (int i = 0; i < 4; i++) {
		const __m512i p = _mm512_maddubs_epi16(q[i], _mm512_loadu_si512((const void *)(q8 + 64 * i)));

		sumi = DOT_S16(sumi, scales_by(sc, 4 * i, 3), p);
	}
	return sumi;
}

QDOT_INLINE __m512 blk_q2_k(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q2_k *w = (const struct kvp_block_q2_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m128i m4 = _mm_set1_epi8(0xF);
	const __m128i ms = _mm_loadu_si128((const __m128i *)w->scales);
	/* words: the 16 scales (low nibbles), the 16 mins (high ones) */
	const __m256i sc = _mm256_cvtepu8_epi16(_mm_and_si128(ms, m4));
	const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4));
	const __m256i prod = _mm256_madd_epi16(mins, load256(a->bsums));
	const __m512i q[4] = { k2_pairs(w->qs, 0, 0), k2_pairs(w->qs, 0, 2),
			       k2_pairs(w->qs, 1, 0), k2_pairs(w->qs, 1, 2) };
	const __m512i sumi = k2_sums(q, _mm512_castsi256_si512(sc), a->qs);

	acc = _mm512_fmadd_ps(_mm512_set1_ps(-a->d * H2F(w->dmin)),
			      _mm512_cvtepi32_ps(_mm512_inserti64x4(_mm512_setzero_si512(), prod, 0)), acc);
	return _mm512_fmadd_ps(_mm512_set1_ps(a->d * H2F(w->d)), _mm512_cvtepi32_ps(sumi), acc);
}

/* Q3_K's values are the 2-bit field + 4 x its hmask bit - 4: the field and the bit here
 * (0..7), the -4 taken once a super-block from A's bsums, as Q6_K's -32 is. */
QDOT_INLINE __m512 blk_q3_k(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q3_k *w = (const struct kvp_block_q3_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m256i hm = load256(w->hmask);
	const __m512i hh = join256(hm, hm);
	uint32_t u[4];
	__m512i q[4];

	qdot_k3_scales(w->scales, u);
	/* the 16 signed scales as words */
	const __m256i sc = _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1],
									   (int)u[0]),
							     _mm_set1_epi8(32)));
	/* element 128 h + 32 s + l: bit 4 h + s of hmask[l] */
	for (int i = 0; i < 4; i++) {
		const int h = i / 2, s = 2 * (i % 2);
		const __m512i sel = join256(_mm256_set1_epi8((char)(1 << (4 * h + s))),
					    _mm256_set1_epi8((char)(1 << (4 * h + s + 1))));
		const __m512i lo = k2_pairs(w->qs, h, s);

		q[i] = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hh, sel), lo, _mm512_set1_epi8(4));
	}
	const __m512i sumi = sub_group_offset(k2_sums(q, _mm512_castsi256_si512(sc), a->qs), sc,
					      a->bsums, 2);

	return _mm512_fmadd_ps(_mm512_set1_ps(a->d * H2F(w->d)), _mm512_cvtepi32_ps(sumi), acc);
}

QDOT_ROWS(q2_k, KVP_QK_K)
QDOT_ROWS(q3_k, KVP_QK_K)

/* ---- Q4_K, Q5_K ------------------------------------------------------------------------ */

/* A Q4_K or Q5_K super-block of W, unpacked once for every row of A: its 256 values as
 * bytes (64 a register, the order of A's), each lane's scale word, its 8 mins. */
struct k4_prep {
	__m512i q[4];
	__m512i sc[4];
	__m128i mins;
	float d, dmin;
};
_Static_assert(sizeof(struct k4_prep) <= QDOT_PREP_BYTES, "k4_prep outgrew the row loop's room");

/* qh: Q5_K's fifth bits, or NULL */
QDOT_INLINE void k4_prep(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales,
			 uint16_t d, uint16_t dmin, struct k4_prep *p)
{
	const __m256i m4 = _mm256_set1_epi8(0xF);
	uint32_t u[4];

	qdot_k4_scales(scales, u);
	/* words: scales 0-7, then mins 0-7 */
	const __m256i ms = _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
	const __m512i sc = _mm512_castsi256_si512(ms);
	/* Q5_K: qh[l] twice, its bits 2 j (the low nibbles' elements) against the first
	 * copy, 2 j + 1 (the high ones') against the second */
	const __m512i hh = qh ? join256(load256(qh), load256(qh)) : _mm512_setzero_si512();

	p->mins = _mm256_extracti128_si256(ms, 1);
	p->d = H2F(d);
	p->dmin = H2F(dmin);
	for (int j = 0; j < 4; j++) {
		const __m256i bits = load256(qs + 32 * j);
		__m512i q = join256(_mm256_and_si256(bits, m4),
				    _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4));

		if (qh) {
			const __m512i sel = join256(_mm256_set1_epi8((char)(1 << (2 * j))),
						    _mm256_set1_epi8((char)(1 << (2 * j + 1))));

			q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(hh, sel), q, _mm512_set1_epi8(16));
		}
		p->q[j] = q;
		p->sc[j] = scales_by(sc, 2 * j, 4);
	}
}

/* acc + an unpacked Q4_K or Q5_K super-block against block b of a row of A. */
QDOT_INLINE __m512 use_k4(const void *pv, int b, const void *av, __m512 acc)
{
	const struct k4_prep *p = pv;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m256i bsums = load256(a->bsums);
	const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
	const __m128i prod = _mm_madd_epi16(p->mins, q8s);
	__m512i sumi = _mm512_setzero_si512();

	acc = _mm512_fmadd_ps(_mm512_set1_ps(-a->d * p->dmin),
			      _mm512_cvtepi32_ps(_mm512_inserti32x4(_mm512_setzero_si512(), prod, 0)), acc);
	for (int j = 0; j < 4; j++) {
		const __m512i y = _mm512_loadu_si512((const void *)(a->qs + 64 * j));

		sumi = DOT_S16(sumi, p->sc[j], _mm512_maddubs_epi16(p->q[j], y));
	}
	return _mm512_fmadd_ps(_mm512_set1_ps(a->d * p->d), _mm512_cvtepi32_ps(sumi), acc);
}

QDOT_INLINE void prep_q4_k(const void *wv, int b, void *out)
{
	const struct kvp_block_q4_k *w = (const struct kvp_block_q4_k *)wv + b;

	k4_prep(w->qs, NULL, w->scales, w->d, w->dmin, out);
}

QDOT_INLINE void prep_q5_k(const void *wv, int b, void *out)
{
	const struct kvp_block_q5_k *w = (const struct kvp_block_q5_k *)wv + b;

	k4_prep(w->qs, w->qh, w->scales, w->d, w->dmin, out);
}

#define use_q4_k use_k4
#define use_q5_k use_k4

/* ---- Q6_K ------------------------------------------------------------------------------- */

QDOT_INLINE __m512 blk_q6_k(const void *wv, int b, const void *av, __m512 acc)
{
	const struct kvp_block_q6_k *w = (const struct kvp_block_q6_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	const __m512i m4 = _mm512_set1_epi8(0xF), m2 = _mm512_set1_epi8(3);
#if !defined(KVP_QDOT_VNNI)
	const __m512i m32 = _mm512_set1_epi8(32);
#endif
	const __m512i sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales)));
	const int8_t *q8 = a->qs;
	__m512i sumi = _mm512_setzero_si512();

	for (int h = 0; h < 2; h++, q8 += 128) {
		const __m512i lb = _mm512_loadu_si512((const void *)(w->ql + 64 * h));
		const __m256i bh = load256(w->qh + 32 * h);
		/* top bits of elements 0-63 (qh bits 0-1, 2-3) and 64-127 (4-5, 6-7) */
		const __m512i h01 = join256(bh, _mm256_srli_epi16(bh, 2));
		const __m512i h23 = join256(_mm256_srli_epi16(bh, 4), _mm256_srli_epi16(bh, 6));
		const __m512i q[2] = {
			_mm512_or_si512(_mm512_and_si512(lb, m4),
					_mm512_slli_epi16(_mm512_and_si512(h01, m2), 4)),
			_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lb, 4), m4),
					_mm512_slli_epi16(_mm512_and_si512(h23, m2), 4)),
		};

		for (int s = 0; s < 2; s++) {
			const __m512i y = _mm512_loadu_si512((const void *)(q8 + 64 * s));
#if defined(KVP_QDOT_VNNI)
			const __m512i p = _mm512_maddubs_epi16(q[s], y);
#else
			const __m512i p = _mm512_sub_epi16(_mm512_maddubs_epi16(q[s], y),
							   _mm512_maddubs_epi16(m32, y));
#endif

			sumi = DOT_S16(sumi, scales_by(sc, 8 * h + 4 * s, 3), p);
		}
	}
#if defined(KVP_QDOT_VNNI)
	sumi = sub_group_offset(sumi, _mm512_castsi512_si256(sc), a->bsums, 5);   /* the -32 */
#endif
	return _mm512_fmadd_ps(_mm512_set1_ps(a->d * H2F(w->d)), _mm512_cvtepi32_ps(sumi), acc);
}

QDOT_ROWS_PREP(q4_k, KVP_QK_K)
QDOT_ROWS_PREP(q5_k, KVP_QK_K)
QDOT_ROWS(q6_k, KVP_QK_K)

/* This build's table: the VNNI one falls back to the plain AVX-512 one, that one to
 * AVX2's. */
#if defined(KVP_QDOT_VNNI)
#define QDOT_TABLE kvp_cpu_qdot_avx512vnni
#define QDOT_NAME "avx512vnni"
#define QDOT_FALLBACK kvp_cpu_qdot_avx512
#else
#define QDOT_TABLE kvp_cpu_qdot_avx512
#define QDOT_NAME "avx512"
#define QDOT_FALLBACK kvp_cpu_qdot_avx2
#endif

const struct kvp_cpu_qdot QDOT_TABLE = {
	.name = QDOT_NAME,
	.dot = {
		[KVP_GGML_Q4_0] = rows_q4_0,
		[KVP_GGML_Q4_1] = rows_q4_1,
		[KVP_GGML_Q5_0] = rows_q5_0,
		[KVP_GGML_Q5_1] = rows_q5_1,
		[KVP_GGML_Q8_0] = rows_q8_0,
		[KVP_GGML_Q2_K] = rows_q2_k,
		[KVP_GGML_Q3_K] = rows_q3_k,
		[KVP_GGML_Q4_K] = rows_q4_k,
		[KVP_GGML_Q5_K] = rows_q5_k,
		[KVP_GGML_Q6_K] = rows_q6_k,
	},
	.fallback = &QDOT_FALLBACK,
};
