/*
 * kern_generic.c - portable C kernels, the fallback on any CPU (built with the
 * project's baseline flags only). The "vector" is one float; the compiler vectorises
 * what it can. The GEMM tile is 4 x 8 with A read in place, like the SIMD tiles.
 */
#include <math.h>
#include <string.h>

#include "cpu_impl.h"

#define MR 4
#define NR 8
#define KC 256

typedef float VF;
#define VLEN 1
#define VF_ZERO() 0.0f
#define VF_SET1(x) (x)
#define VF_LOAD(p) (*(p))
#define VF_STORE(p, v) (*(p) = (v))
#define VF_ADD(a, b) ((a) + (b))
#define VF_SUB(a, b) ((a) - (b))
#define VF_MUL(a, b) ((a) * (b))
#define VF_DIV(a, b) ((a) / (b))
#define VF_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VF_FMA(a, b, c) ((a) * (b) + (c))
#define VF_HSUM(v) (v)
#define VF_HMAX(v) (v)
#define VF_EXP(v) expf(v)
#define VF_GT_SEL(a, b, x, y) ((a) > (b) ? (x) : (y))
#define VF_LOAD_F16(p) kvp_f16_to_f32(*(p))
#define VF_LOAD_BF16(p) kvp_bf16_to_f32(*(p))
#define VF_STORE_F16(p, v) (*(p) = kvp_f32_to_f16(v))
#define BODY_TB 4
#define BODY_QB 4
#define BODY_DB 4

#include "kern_body.h"

/* 4-float vectors (GNU vector extension: SSE2 on x86-64, NEON on arm64); the (M, 8)
 * tile lives in 2 M of them. */
typedef float v4f __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p)
{
	v4f v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static inline __attribute__((always_inline)) void ukr_rows(const int M, int nr, int kc,
							   const float *a, size_t lda,
							   const float *p, float *c, size_t ldc,
							   bool load_c)
{
	v4f acc[MR][2];         /* (M, NR) tile */
	float out[MR][NR];      /* (M, NR) tile for the store */

	for (int i = 0; i < M; i++)
		acc[i][0] = acc[i][1] = (v4f){ 0, 0, 0, 0 };
	for (int k = 0; k < kc; k++) {
		v4f b0 = v4_load(p + (size_t)k * NR), b1 = v4_load(p + (size_t)k * NR + 4);
		for (int i = 0; i < M; i++) {
			float av = a[(size_t)i * lda + k];
			v4f va = { av, av, av, av };
			acc[i][0] += va * b0;
			acc[i][1] += va * b1;
		}
	}
	for (int i = 0; i < M; i++) {
		memcpy(&out[i][0], &acc[i][0], sizeof(v4f));
		memcpy(&out[i][4], &acc[i][1], sizeof(v4f));
		for (int j = 0; j < nr; j++) {
			float *cp = c + (size_t)i * ldc + j;
			*cp = load_c ? *cp + out[i][j] : out[i][j];
		}
	}
}

static void ukr(int mr, int nr, int kc, const float *a, size_t lda, const float *p, float *c,
		size_t ldc, bool load_c)
{
	switch (mr) {
	case 1: ukr_rows(1, nr, kc, a, lda, p, c, ldc, load_c); break;
	case 2: ukr_rows(2, nr, kc, a, lda, p, c, ldc, load_c); break;
	case 3: ukr_rows(3, nr, kc, a, lda, p, c, ldc, load_c); break;
	default: ukr_rows(4, nr, kc, a, lda, p, c, ldc, load_c); break;
	}
}

static void pack_w(const float *w, size_t ldw, int nr, int kc, float *p)
{
	for (int k = 0; k < kc; k++)
		for (int j = 0; j < NR; j++)
			p[(size_t)k * NR + j] = j < nr ? w[(size_t)j * ldw + k] : 0.0f;
}

/* The tile's instruction mix: independent products added into 6 running sums (no
 * FMA in the baseline ISA); y is hidden from the optimiser each round so the products
 * cannot be hoisted. */
static double peak(long iters)
{
	v4f a0 = { 0 }, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
	v4f x0 = { 1e-3f, 1e-3f, 1e-3f, 1e-3f }, x1 = x0 * 2, x2 = x0 * 3, x3 = x0 * 4;
	v4f x4 = x0 * 5, x5 = x0 * 6, y = { 0.5f, 0.5f, 0.5f, 0.5f };
	for (long it = 0; it < iters; it++) {
#if defined(__x86_64__)
		__asm__ volatile("" : "+x"(y));
#endif
		a0 += x0 * y; a1 += x1 * y; a2 += x2 * y;
		a3 += x3 * y; a4 += x4 * y; a5 += x5 * y;
	}
	v4f s = (a0 + a1) + (a2 + a3) + (a4 + a5);
	volatile float sink = s[0] + s[1] + s[2] + s[3];
	(void)sink;
	return (double)iters * 6 * 4 * 2;
}

const struct kvp_cpu_kern kvp_cpu_kern_generic = {
	.name = "generic",
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
	.qdot = &kvp_cpu_qdot_generic,
};
