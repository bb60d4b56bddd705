/*
 * kern_avx512.c - AVX-512F kernels (built with -mavx512f -mavx512vl -mavx512bw -mavx2
 * -mfma -mf16c, called only when the CPU has them).
 *
 * GEMM tile 12 x 32: 24 zmm accumulators C[i][0:16], C[i][16:32] for 12 rows of A;
 * per k, two aligned loads of the packed W slice and 12 broadcasts of A[i][k] read in
 * place (rows lda apart), 24 FMAs. Two FMA pipes with 4-cycle latency need >= 8
 * independent accumulators; 24 leaves room, and the loads (14 per 24 FMAs) stay under
 * the two load ports. Measured on Zen 5: ~95 % of the FMA peak with A in L2.
 */
#include <immintrin.h>

#include "cpu_impl.h"

#define MR 12
#define NR 32
#define KC 256

typedef __m512 VF;
#define VLEN 16
#define VF_ZERO() _mm512_setzero_ps()
#define VF_SET1(x) _mm512_set1_ps(x)
#define VF_LOAD(p) _mm512_loadu_ps(p)
#define VF_STORE(p, v) _mm512_storeu_ps(p, v)
#define VF_ADD(a, b) _mm512_add_ps(a, b)
#define VF_SUB(a, b) _mm512_sub_ps(a, b)
#define VF_MUL(a, b) _mm512_mul_ps(a, b)
#define VF_DIV(a, b) _mm512_div_ps(a, b)
#define VF_MAX(a, b) _mm512_max_ps(a, b)
#define VF_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VF_HSUM(v) _mm512_reduce_add_ps(v)
#define VF_HMAX(v) _mm512_reduce_max_ps(v)
#define VF_EXP(v) exp512(v)
#define VF_GT_SEL(a, b, x, y) _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), y, x)
#define VF_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define VF_LOAD_BF16(p) \
	_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VF_STORE_F16(p, v) \
	_mm256_storeu_si256((__m256i *)(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define VF_SWAP_PAIRS(v) _mm512_permute_ps(v, 0xb1)
#define BODY_TB 4
#define BODY_QB 4
#define BODY_DB 4

/* e^x: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial (Cephes expf
 * coefficients), times 2^n by scalef. 0 below -87.34 (incl. -inf). */
static inline __m512 exp512(__m512 x)
{
	const __m512 lo = _mm512_set1_ps(-87.336544f), hi = _mm512_set1_ps(88.376259f);
	__mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
	x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_maskz_mov_ps((__mmask16)~under, _mm512_scalef_ps(p, n));
}

/* The sums of four vectors a, b, c, d into out[0..3]: halves added, then a pairwise
 * tree across the four (a quarter of the shuffles of four separate reductions). */
static inline void hsum4_512(__m512 a, __m512 b, __m512 c, __m512 d, float *out)
{
#define HALVES(v) _mm256_add_ps(_mm512_castps512_ps256(v), \
				_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
	__m256 ab = _mm256_hadd_ps(HALVES(a), HALVES(b));
	__m256 cd = _mm256_hadd_ps(HALVES(c), HALVES(d));
#undef HALVES
	__m256 abcd = _mm256_hadd_ps(ab, cd);

	_mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
#define VF_HSUM4(a, b, c, d, out) hsum4_512(a, b, c, d, out)

#include "kern_body.h"

/* ---- GEMM tile ------------------------------------------------------------------------ */

static inline __attribute__((always_inline)) void ukr_rows(const int M, __mmask16 k0, __mmask16 k1,
							   int kc, const float *a, size_t lda,
							   const float *p, float *c, size_t ldc,
							   bool load_c)
{
	__m512 c0[MR], c1[MR];
	const float *ar[MR];

#pragma GCC unroll 12
	for (int i = 0; i < M; i++) {
		ar[i] = a + (size_t)i * lda;
		if (load_c) {
			c0[i] = _mm512_maskz_loadu_ps(k0, c + (size_t)i * ldc);
			c1[i] = _mm512_maskz_loadu_ps(k1, c + (size_t)i * ldc + 16);
		} else {
			c0[i] = _mm512_setzero_ps();
			c1[i] = _mm512_setzero_ps();
		}
	}
	for (int k = 0; k < kc; k++) {
		__m512 b0 = _mm512_load_ps(p + (size_t)k * NR);
		__m512 b1 = _mm512_load_ps(p + (size_t)k * NR + 16);
#pragma GCC unroll 12
		for (int i = 0; i < M; i++) {
			__m512 av = _mm512_set1_ps(ar[i][k]);
			c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
			c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
		}
	}
#pragma GCC unroll 12
	for (int i = 0; i < M; i++) {
		_mm512_mask_storeu_ps(c + (size_t)i * ldc, k0, c0[i]);
		_mm512_mask_storeu_ps(c + (size_t)i * ldc + 16, k1, c1[i]);
	}
}

static void ukr(int mr, int nr, int kc, const float *a, size_t lda, const float *p, float *c,
		size_t ldc, bool load_c)
{
	__mmask16 k0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
	__mmask16 k1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);

	switch (mr) {
#define CASE(m) case m: ukr_rows(m, k0, k1, kc, a, lda, p, c, ldc, load_c); break;
	CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
	CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
	default: break;
	}
}

/* ---- packing: P (kc, 32) <- W (nr, kc)^T ----------------------------------------------- */

/* r[0..15] rows -> columns, in place: the 16x16 transpose in four shuffle stages
 * (pairs, quads within 128-bit lanes, then lanes across the register twice). */
static inline void transpose16(__m512 r[16])
{
	__m512 t[16], u[16];
	for (int i = 0; i < 8; i++) {
		t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
	}
	/* u[4q+c], 128-bit lane L: column 4L+c of rows 4q..4q+3 */
	for (int q = 0; q < 4; q++) {
		u[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
		u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
		u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
		u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
	}
	/* column 4L+c = lane L of u[c], u[4+c], u[8+c], u[12+c] */
	for (int c = 0; c < 4; c++) {
		__m512 x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
		__m512 x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xee);
		__m512 x2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
		__m512 x3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xee);
		r[c] = _mm512_shuffle_f32x4(x0, x2, 0x88);
		r[4 + c] = _mm512_shuffle_f32x4(x0, x2, 0xdd);
		r[8 + c] = _mm512_shuffle_f32x4(x1, x3, 0x88);
		r[12 + c] = _mm512_shuffle_f32x4(x1, x3, 0xdd);
	}
}

static void pack_w(const float *w, size_t ldw, int nr, int kc, float *p)
{
	for (int half = 0; half < 2; half++) {
		const int j0 = half * 16;
		const int rows = nr - j0 < 0 ? 0 : nr - j0 > 16 ? 16 : nr - j0;
		for (int k0 = 0; k0 < kc; k0 += 16) {
			const int kn = kc - k0 < 16 ? kc - k0 : 16;
			const __mmask16 km = kn == 16 ? 0xffff : (__mmask16)((1u << kn) - 1);
			__m512 r[16];
			for (int j = 0; j < 16; j++)
				r[j] = j < rows ? _mm512_maskz_loadu_ps(km, w + (size_t)(j0 + j) * ldw + k0)
						: _mm512_setzero_ps();
			transpose16(r);
			for (int k = 0; k < kn; k++)
				_mm512_store_ps(p + (size_t)(k0 + k) * NR + j0, r[k]);
		}
	}
}

/* ---- peak ------------------------------------------------------------------------------ */

static double peak(long iters)
{
	__m512 a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15;
	const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
	a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm512_setzero_ps();
	a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = _mm512_setzero_ps();
	for (long it = 0; it < iters; it++) {
#define F(a) a = _mm512_fmadd_ps(a, x, y);
		F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7)
		F(a8) F(a9) F(a10) F(a11) F(a12) F(a13) F(a14) F(a15)
#undef F
		/* keep the 16 chains in registers and the loop un-collapsed */
		__asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),
				 "+v"(a6), "+v"(a7));
		__asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13),
				 "+v"(a14), "+v"(a15));
	}
	__m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
				 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
	s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
					   _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
	volatile float sink = _mm512_reduce_add_ps(s);
	(void)sink;
	return (double)iters * 16 * 16 * 2;
}

/* Both tables but their names and dot kernels (qdot_avx512.c, qdot_avx512vnni.c). */
#define KERN_AVX512_COMMON                                                               \
	.mr = MR, .nr = NR, .kc = KC, .vlen = VLEN, .ukr = ukr, .pack_w = pack_w,          \
	.gemv = body_gemv, .gemv_f16 = body_gemv_f16, .gemv_bf16 = body_gemv_bf16,         \
	.peak = peak, .rmsnorm = body_rmsnorm, .swiglu = body_swiglu, .add = body_add,     \
	.rope = body_rope, .f16_to_f32 = body_f16_to_f32, .f32_to_f16 = body_f32_to_f16,   \
	.attn_big = body_attn_big, .attn_small = body_attn_small

const struct kvp_cpu_kern kvp_cpu_kern_avx512 = {
	.name = "avx512",
	KERN_AVX512_COMMON,
	.qdot = &kvp_cpu_qdot_avx512,
};

const struct kvp_cpu_kern kvp_cpu_kern_avx512vnni = {
	.name = "avx512vnni",
	KERN_AVX512_COMMON,
	.qdot = &kvp_cpu_qdot_avx512vnni,
};
