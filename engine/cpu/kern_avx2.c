/*
 * kern_avx2.c - AVX2 + FMA + F16C kernels (built with -mavx2 -mfma -mf16c, called only
 * when the CPU has them).
 *
 * GEMM tile 6 x 16: 12 ymm accumulators C[i][0:8], C[i][8:16] for 6 rows of A; per k,
 * two aligned loads of the packed W slice, 6 broadcasts of A[i][k] read in place and
 * 12 FMAs: 15 of the 16 ymm registers.
 */
#include <immintrin.h>

#include "cpu_impl.h"

#define MR 6
#define NR 16
#define KC 256

typedef __m256 VF;
#define VLEN 8
#define VF_ZERO() _mm256_setzero_ps()
#define VF_SET1(x) _mm256_set1_ps(x)
#define VF_LOAD(p) _mm256_loadu_ps(p)
#define VF_STORE(p, v) _mm256_storeu_ps(p, v)
#define VF_ADD(a, b) _mm256_add_ps(a, b)
#define VF_SUB(a, b) _mm256_sub_ps(a, b)
#define VF_MUL(a, b) _mm256_mul_ps(a, b)
#define VF_DIV(a, b) _mm256_div_ps(a, b)
#define VF_MAX(a, b) _mm256_max_ps(a, b)
#define VF_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VF_HSUM(v) hsum256(v)
#define VF_HMAX(v) hmax256(v)
#define VF_EXP(v) exp256(v)
#define VF_GT_SEL(a, b, x, y) _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_GT_OQ))
#define VF_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VF_LOAD_BF16(p) \
	_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VF_STORE_F16(p, v) \
	_mm_storeu_si128((__m128i *)(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define VF_SWAP_PAIRS(v) _mm256_permute_ps(v, 0xb1)
#define BODY_TB 4
#define BODY_QB 2
#define BODY_DB 4

static inline float hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* e^x as exp512 in kern_avx512.c, 2^n built in the exponent field (n in [-126, 127]). */
static inline __m256 exp256(__m256 x)
{
	const __m256 lo = _mm256_set1_ps(-87.336544f), hi = _mm256_set1_ps(88.0f);
	__m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
	x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	__m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
	return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* The sums of four vectors a, b, c, d into out[0..3], by a pairwise tree across them. */
static inline void hsum4_256(__m256 a, __m256 b, __m256 c, __m256 d, float *out)
{
	__m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));

	_mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
#define VF_HSUM4(a, b, c, d, out) hsum4_256(a, b, c, d, out)

#include "kern_body.h"

/* ---- GEMM tile ------------------------------------------------------------------------ */

/* lane mask for the first n of 8 lanes (n in 0..8) */
static inline __m256i lanes(int n)
{
	return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __attribute__((always_inline)) void ukr_rows(const int M, bool full, __m256i m0,
							   __m256i m1, int kc, const float *a,
							   size_t lda, const float *p, float *c,
							   size_t ldc, bool load_c)
{
	__m256 c0[MR], c1[MR];
	const float *ar[MR];

#pragma GCC unroll 6
	for (int i = 0; i < M; i++) {
		ar[i] = a + (size_t)i * lda;
		if (!load_c) {
			c0[i] = _mm256_setzero_ps();
			c1[i] = _mm256_setzero_ps();
		} else if (full) {
			c0[i] = _mm256_loadu_ps(c + (size_t)i * ldc);
			c1[i] = _mm256_loadu_ps(c + (size_t)i * ldc + 8);
		} else {
			c0[i] = _mm256_maskload_ps(c + (size_t)i * ldc, m0);
			c1[i] = _mm256_maskload_ps(c + (size_t)i * ldc + 8, m1);
		}
	}
	for (int k = 0; k < kc; k++) {
		__m256 b0 = _mm256_load_ps(p + (size_t)k * NR);
		__m256 b1 = _mm256_load_ps(p + (size_t)k * NR + 8);
#pragma GCC unroll 6
		for (int i = 0; i < M; i++) {
			__m256 av = _mm256_broadcast_ss(ar[i] + k);
			c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
			c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
		}
	}
#pragma GCC unroll 6
	for (int i = 0; i < M; i++) {
		if (full) {
			_mm256_storeu_ps(c + (size_t)i * ldc, c0[i]);
			_mm256_storeu_ps(c + (size_t)i * ldc + 8, c1[i]);
		} else {
			_mm256_maskstore_ps(c + (size_t)i * ldc, m0, c0[i]);
			_mm256_maskstore_ps(c + (size_t)i * ldc + 8, m1, c1[i]);
		}
	}
}

static void ukr(int mr, int nr, int kc, const float *a, size_t lda, const float *p, float *c,
		size_t ldc, bool load_c)
{
	bool full = nr == NR;
	__m256i m0 = lanes(nr), m1 = lanes(nr - 8);

	switch (mr) {
#define CASE(m) case m: ukr_rows(m, full, m0, m1, kc, a, lda, p, c, ldc, load_c); break;
	CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
	default: break;
	}
}

/* ---- packing: P (kc, 16) <- W (nr, kc)^T ----------------------------------------------- */

static inline void transpose8(__m256 r[8])
{
	__m256 t[8], u[8];
	for (int i = 0; i < 4; i++) {
		t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
	}
	/* u[4q+c], 128-bit lane L: column 4L+c of rows 4q..4q+3 */
	for (int q = 0; q < 2; q++) {
		u[4 * q + 0] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
		u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
		u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
		u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
	}
	for (int c = 0; c < 4; c++) {
		r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
		r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
	}
}

static void pack_w(const float *w, size_t ldw, int nr, int kc, float *p)
{
	for (int half = 0; half < 2; half++) {
		const int j0 = half * 8;
		const int rows = nr - j0 < 0 ? 0 : nr - j0 > 8 ? 8 : nr - j0;
		for (int k0 = 0; k0 < kc; k0 += 8) {
			const int kn = kc - k0 < 8 ? kc - k0 : 8;
			const __m256i km = lanes(kn);
			__m256 r[8];
			for (int j = 0; j < 8; j++)
				r[j] = j >= rows ? _mm256_setzero_ps()
				       : kn == 8 ? _mm256_loadu_ps(w + (size_t)(j0 + j) * ldw + k0)
				       : _mm256_maskload_ps(w + (size_t)(j0 + j) * ldw + k0, km);
			transpose8(r);
			for (int k = 0; k < kn; k++)
				_mm256_store_ps(p + (size_t)(k0 + k) * NR + j0, r[k]);
		}
	}
}

/* ---- peak ------------------------------------------------------------------------------ */

static double peak(long iters)
{
	__m256 a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;
	const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
	a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = _mm256_setzero_ps();
	for (long it = 0; it < iters; it++) {
#define F(a) a = _mm256_fmadd_ps(a, x, y);
		F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
#undef F
		__asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
		__asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
	}
	__m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
				 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
	s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
	volatile float sink = hsum256(s);
	(void)sink;
	return (double)iters * 12 * 8 * 2;
}

const struct kvp_cpu_kern kvp_cpu_kern_avx2 = {
	.name = "avx2",
	.mr = MR,
	.nr = NR,
	.kc = KC,
	.vlen = VLEN,
	.ukr = ukr,
	.pack_w = pack_w,
	.gemv = body_gemv,
	.gemv_f16 = body_gemv_f16,
	.gemv_bf16 = body_gemv_bf16,
	.peak = peak,
	.rmsnorm = body_rmsnorm,
	.swiglu = body_swiglu,
	.add = body_add,
	.rope = body_rope,
	.f16_to_f32 = body_f16_to_f32,
	.f32_to_f16 = body_f32_to_f16,
	.attn_big = body_attn_big,
	.attn_small = body_attn_small,
	.qdot = &kvp_cpu_qdot_avx2,
};
