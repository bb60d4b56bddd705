/*
 * qdot_matmul.c - kvp_cpu_matmul_w on every weight type and every ISA this CPU runs:
 *
 *   reference   random valid W, random A, shapes off every tile (N 1, 37, 70; K of one
 *               and of several blocks and KC slices; M 1, 2, 3, the dot path's limit and
 *               past it; the dot path's limit with rows of 2,560), no pool, 1 and 2 threads, accumulate on and off, padded rows:
 *               within the bound kvp_cpu.h states against dequantize + a dot in double
 *   gemm_exact  M past the dot path: bit for bit kvp_cpu_matmul on the dequantized W
 *               (for block types, with A rounded to 8 bits per block as the dot path
 *               rounds it)
 *   paths_agree a row of A gives the same C whether it is one of 1 row (the dot path)
 *               or of 40 (the GEMM), up to f32 rounding
 *   grid        scales and activations on a grid where every sum is exact: every ISA's
 *               result equals the double reference exactly (the integer parts agree)
 *   vnni        the AVX512-VNNI dot kernels give the AVX-512 ones' results
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdot_util.h"

static int block_of(uint32_t type)
{
	return (int)kvp_ggml_type(type)->block_elems;
}

static void check_case(struct kvp_threadpool *tp, uint32_t type, int m, int n, int k, bool acc,
		       size_t pad)
{
	const size_t lda = (size_t)k + pad, ldc = (size_t)n + 3;
	struct kvp_cpu_weight w;
	struct qt_ref ref;
	float *a = qt_rand_floats((size_t)m * lda), *c = qt_rand_floats((size_t)m * ldc);
	float *c0 = qt_alloc((size_t)m * ldc * sizeof(float));
	char buf[16];

	/* blocks of A of different magnitudes, so that a block's scale taken for another's
	 * shows */
	for (size_t i = 0; i < (size_t)m * lda; i += KVP_QK) {
		const float f = (float)(1u << (2 * (qt_rand() % 4))) / 16.0f;

		for (size_t e = i; e < i + KVP_QK && e < (size_t)m * lda; e++)
			a[e] *= f;
	}
	qt_rand_weight(&w, type, n, k, pad, false);
	memcpy(c0, c, (size_t)m * ldc * sizeof(float));
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, lda, &w, c, ldc, m, acc), 0);
	qt_reference(&w, a, lda, m, &ref);
	for (int r = 0; r < m; r++) {
		for (int j = 0; j < n; j++) {
			double c0v = acc ? c0[(size_t)r * ldc + j] : 0.0;
			double want = ref.c[(size_t)r * n + j] + c0v;
			double tol = ref.tol[(size_t)r * n + j] + 1e-6 * fabs(c0v) + 1e-30;
			double got = c[(size_t)r * ldc + j];

			cr_assert(fabs(got - want) <= tol,
				  "%s %s m %d n %d k %d acc %d threads %d: c[%d][%d] = %.9g, want "
				  "%.9g (tolerance %.3g)", kvp_cpu_isa(),
				  kvp_ggml_type_name(type, buf, sizeof(buf)), m, n, k, acc,
				  tp ? kvp_threadpool_size(tp) : 0, r, j, got, want, tol);
		}
		for (size_t j = (size_t)n; j < ldc; j++)
			cr_assert_eq(c[(size_t)r * ldc + j], c0[(size_t)r * ldc + j],
				     "padding of C written");
	}
	qt_ref_free(&ref);
	free((void *)w.data);
	free(a);
	free(c);
	free(c0);
}

static const int ms[] = { 1, 2, 3, 7, KVP_CPU_DOT_MAX_M, KVP_CPU_DOT_MAX_M + 1 };
static const int ns[] = { 1, 37, 70 };

static void reference_cases(uint32_t type)
{
	const int blk = block_of(type);
	/* one block, a few, and past the GEMM's KC slice of 256 */
	const int ks[] = { blk == 1 ? 7 : blk, blk == 1 ? 40 : 3 * blk,
			   blk == 1 ? 300 : blk == KVP_QK ? 17 * blk : 5 * blk };
	struct kvp_threadpool *tp1, *tp2;

	cr_assert_eq(kvp_threadpool_create(1, &tp1), 0);
	cr_assert_eq(kvp_threadpool_create(2, &tp2), 0);
	for (int i = 0; i < qt_n_isas; i++) {
		int s = 0;

		if (!qt_use_isa(qt_isas[i]))
			continue;
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++)
			for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
				for (size_t ki = 0; ki < 3; ki++, s++) {
					check_case(tp2, type, ms[mi], ns[ni], ks[ki], false, 0);
					check_case(s % 2 ? tp1 : NULL, type, ms[mi], ns[ni], ks[ki],
						   true, (size_t)(s % 3) * 4);
				}
		/* the default model's FFN, a decode row */
		check_case(tp2, type, 1, 1536, 512, s % 2, 0);
		/* a full dot-path batch of long rows: A past what a kernel copies to its stack */
		check_case(tp2, type, KVP_CPU_DOT_MAX_M, 37, 2560 / blk * blk, false, 0);
	}
	kvp_cpu_force_isa(NULL);
	kvp_threadpool_destroy(tp1);
	kvp_threadpool_destroy(tp2);
}

#define TYPE_TEST(name, type) \
	Test(matmul_w, name) { reference_cases(type); }

TYPE_TEST(f32, KVP_GGML_F32)
TYPE_TEST(f16, KVP_GGML_F16)
TYPE_TEST(bf16, KVP_GGML_BF16)
TYPE_TEST(q4_0, KVP_GGML_Q4_0)
TYPE_TEST(q4_1, KVP_GGML_Q4_1)
TYPE_TEST(q5_0, KVP_GGML_Q5_0)
TYPE_TEST(q5_1, KVP_GGML_Q5_1)
TYPE_TEST(q8_0, KVP_GGML_Q8_0)
TYPE_TEST(q2_k, KVP_GGML_Q2_K)
TYPE_TEST(q3_k, KVP_GGML_Q3_K)
TYPE_TEST(q4_k, KVP_GGML_Q4_K)
TYPE_TEST(q5_k, KVP_GGML_Q5_K)
TYPE_TEST(q6_k, KVP_GGML_Q6_K)

/* ---- the GEMM path is kvp_cpu_matmul on the dequantized W, bit for bit ---------------- */

/* A's rows rounded in place as the dot path rounds them for a block type: each block
 * quantized to Q8_K (K types) or Q8_0 (the others) and read back. */
static void round_rows(uint32_t type, float *a, size_t lda, int m, int k)
{
	const int blk = block_of(type);

	if (blk == 1)
		return;
	for (int r = 0; r < m; r++)
		for (int i = 0; i < k; i += blk == KVP_QK_K ? KVP_QK_K : KVP_QK) {
			float *x = a + (size_t)r * lda + i;

			if (blk == KVP_QK_K) {
				struct kvp_block_q8_k b;

				kvp_cpu_quant_q8_k(x, &b, KVP_QK_K);
				cr_assert_eq(kvp_dequant_row(KVP_GGML_Q8_K, &b, x, KVP_QK_K), 0);
			} else {
				struct kvp_block_q8_0 b;

				kvp_cpu_quant_q8_0(x, &b, KVP_QK);
				cr_assert_eq(kvp_dequant_row(KVP_GGML_Q8_0, &b, x, KVP_QK), 0);
			}
		}
}

static void gemm_exact(struct kvp_threadpool *tp, uint32_t type, int m, int n, int k)
{
	const size_t lda = (size_t)k + 1, ldc = (size_t)n + 2;
	struct kvp_cpu_weight w;
	float *a = qt_rand_floats((size_t)m * lda), *wd;
	float *c = qt_rand_floats((size_t)m * ldc), *c2 = qt_alloc((size_t)m * ldc * sizeof(float));
	char buf[16];

	qt_rand_weight(&w, type, n, k, 0, false);
	wd = qt_dequant_all(&w);
	memcpy(c2, c, (size_t)m * ldc * sizeof(float));
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, lda, &w, c, ldc, m, true), 0);
	round_rows(type, a, lda, m, k);
	kvp_cpu_matmul(tp, a, lda, wd, (size_t)k, c2, ldc, m, n, k, true);
	cr_assert(memcmp(c, c2, (size_t)m * ldc * sizeof(float)) == 0,
		  "%s %s m %d n %d k %d: not kvp_cpu_matmul on the dequantized W", kvp_cpu_isa(),
		  kvp_ggml_type_name(type, buf, sizeof(buf)), m, n, k);
	free((void *)w.data);
	free(wd);
	free(a);
	free(c);
	free(c2);
}

/* fn(tp, type, blk) for every type on every ISA this CPU runs, blk the activation block
 * (32 for F32, F16, BF16), with a pool of 2 threads. */
static void every_isa_and_type(void (*fn)(struct kvp_threadpool *tp, uint32_t type, int blk))
{
	struct kvp_threadpool *tp;

	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	for (int i = 0; i < qt_n_isas; i++) {
		if (!qt_use_isa(qt_isas[i]))
			continue;
		for (int t = 0; t < qt_n_types; t++)
			fn(tp, qt_types[t], block_of(qt_types[t]) == KVP_QK_K ? KVP_QK_K : KVP_QK);
	}
	kvp_cpu_force_isa(NULL);
	kvp_threadpool_destroy(tp);
}

static void gemm_cases(struct kvp_threadpool *tp, uint32_t type, int blk)
{
	gemm_exact(tp, type, KVP_CPU_DOT_MAX_M + 1, 45, 3 * blk);
	gemm_exact(tp, type, 70, 100, 1280);
	gemm_exact(NULL, type, 33, 1, 2 * blk);
}

Test(matmul_w, gemm_is_matmul_on_dequantized_w) { every_isa_and_type(gemm_cases); }

/* The same row of A alone (the dot path) and as row 5 of 40 (the GEMM): the same C up
 * to f32 rounding, so that caching (a prompt's last row computed alone or in a prefill)
 * and batching do not change the answer. */
static void paths_agree(struct kvp_threadpool *tp, uint32_t type, int blk)
{
	const int m = 40, n = 37, k = 4 * blk;
	struct kvp_cpu_weight w;
	float *a = qt_rand_floats((size_t)m * k);
	float *c = qt_alloc((size_t)m * n * sizeof(float)), *c1 = qt_alloc((size_t)n * sizeof(float));
	struct qt_ref ref;
	char buf[16];

	qt_rand_weight(&w, type, n, k, 0, false);
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, (size_t)k, &w, c, (size_t)n, m, false), 0);
	cr_assert_eq(kvp_cpu_matmul_w(tp, a + 5 * (size_t)k, (size_t)k, &w, c1, (size_t)n, 1, false),
		     0);
	qt_reference(&w, a + 5 * (size_t)k, (size_t)k, 1, &ref);
	for (int j = 0; j < n; j++) {
		/* both within f32 rounding of the same sum: far below the 8-bit bound */
		double d = fabs((double)c[5 * (size_t)n + j] - c1[j]);
		cr_assert(d <= 0.02 * ref.tol[j] + 1e-6,
			  "%s %s: row alone %.9g, in a GEMM of %d rows %.9g (apart %.3g; the "
			  "8-bit bound is %.3g)", kvp_cpu_isa(),
			  kvp_ggml_type_name(type, buf, sizeof(buf)), c1[j], m,
			  c[5 * (size_t)n + j], d, ref.tol[j]);
	}
	qt_ref_free(&ref);
	free((void *)w.data);
	free(a);
	free(c);
	free(c1);
}

Test(matmul_w, decode_and_prefill_paths_agree) { every_isa_and_type(paths_agree); }

/* ---- on the grid every ISA gets the exact answer ---------------------------------------- */

static void grid_case(struct kvp_threadpool *tp, uint32_t type, int m, int n, int k)
{
	const size_t lda = (size_t)k, ldc = (size_t)n;
	struct kvp_cpu_weight w;
	struct qt_ref ref;
	float *a = qt_grid_rows(type, m, k, lda), *c = qt_alloc((size_t)m * ldc * sizeof(float));
	char buf[16];

	qt_rand_weight(&w, type, n, k, 0, true);
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, lda, &w, c, ldc, m, false), 0);
	qt_reference(&w, a, lda, m, &ref);
	for (int r = 0; r < m; r++)
		for (int j = 0; j < n; j++)
			cr_assert(c[(size_t)r * ldc + j] == ref.c[(size_t)r * n + j],
				  "%s %s m %d k %d: c[%d][%d] = %.9g, exactly %.9g", kvp_cpu_isa(),
				  kvp_ggml_type_name(type, buf, sizeof(buf)), m, k, r, j,
				  c[(size_t)r * ldc + j], ref.c[(size_t)r * n + j]);
	qt_ref_free(&ref);
	free((void *)w.data);
	free(a);
	free(c);
}

static void grid_cases(struct kvp_threadpool *tp, uint32_t type, int blk)
{
	for (int m = 1; m <= KVP_CPU_DOT_MAX_M; m += 3) {
		grid_case(tp, type, m, 19, blk);
		grid_case(tp, type, m, 33, 4 * blk);
	}
	/* rows past what a kernel copies to its stack */
	grid_case(tp, type, KVP_CPU_DOT_MAX_M, 7, 2560 / blk * blk);
}

Test(matmul_w, grid_is_exact_on_every_isa) { every_isa_and_type(grid_cases); }

/* ---- the VNNI dot kernels are the AVX-512 ones, faster ----------------------------------- */

/* C of avx512vnni against avx512 on random W and A: the same integer sums, so all but
 * Q6_K bit for bit; Q6_K's -32 is taken out in other lanes, whose f32 sums round
 * otherwise: within twice the bound both are held to (kvp_cpu.h's). Rows
 * of A 1 to 16 (the pairs A copies to the stack and past them), W rows 37, K of one
 * and of many super-blocks. */
static void vnni_case(struct kvp_threadpool *tp, uint32_t type, int m, int k)
{
	const int n = 37;
	struct kvp_cpu_weight w;
	float *a = qt_rand_floats((size_t)m * k);
	float *c0 = qt_alloc((size_t)m * n * sizeof(float)), *c1 = qt_alloc((size_t)m * n * sizeof(float));
	struct qt_ref ref;
	char buf[16];

	qt_rand_weight(&w, type, n, k, 0, false);
	qt_reference(&w, a, (size_t)k, m, &ref);
	cr_assert(qt_use_isa("avx512"));
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, (size_t)k, &w, c0, (size_t)n, m, false), 0);
	cr_assert(qt_use_isa("avx512vnni"));
	cr_assert_eq(kvp_cpu_matmul_w(tp, a, (size_t)k, &w, c1, (size_t)n, m, false), 0);
	for (int i = 0; i < m * n; i++) {
		const double tol = type == KVP_GGML_Q6_K ? 2.0 * ref.tol[i] : 0.0;

		cr_assert(fabs((double)c1[i] - (double)c0[i]) <= tol,
			  "%s m %d k %d: c[%d][%d] avx512vnni %.9g, avx512 %.9g",
			  kvp_ggml_type_name(type, buf, sizeof(buf)), m, k, i / n, i % n, c1[i],
			  c0[i]);
	}
	qt_ref_free(&ref);
	free((void *)w.data);
	free(a);
	free(c0);
	free(c1);
}

Test(matmul_w, vnni_kernels_equal_avx512s)
{
	const uint32_t types[] = { KVP_GGML_Q4_0, KVP_GGML_Q4_1, KVP_GGML_Q5_0, KVP_GGML_Q5_1,
				   KVP_GGML_Q8_0, KVP_GGML_Q4_K, KVP_GGML_Q5_K, KVP_GGML_Q6_K };
	const int mv[] = { 1, 2, 5, 8, KVP_CPU_DOT_MAX_M };
	struct kvp_threadpool *tp;

	if (kvp_cpu_force_isa("avx512vnni") == KVP_EUNSUPPORTED) {
		cr_skip_test("this CPU has no AVX512-VNNI: its kernels cannot run here");
		return;
	}
	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
		for (size_t i = 0; i < sizeof(mv) / sizeof(mv[0]); i++) {
			vnni_case(tp, types[t], mv[i], KVP_QK_K);
			vnni_case(tp, types[t], mv[i], 24 * KVP_QK_K);
		}
	kvp_cpu_force_isa(NULL);
	kvp_threadpool_destroy(tp);
}
