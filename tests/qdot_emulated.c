/*
 * qdot_emulated.c - the AVX-512 dot kernels (engine/cpu/qdot_avx512.c) on any x86-64,
 * through SIMDe's portable AVX-512 (tests/qdot_avx512_emulated.c): the same checks as
 * qdot_matmul.c's on its table, called directly. Built when libsimde-dev is there; a
 * CPU with AVX-512 runs the real kernels in test_qdot as well.
 *
 *   reference   random W and A, every shape class: within kvp_cpu.h's bound
 *   grid        exact sums: equal to the double reference exactly
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"
#include "qdot_util.h"

extern const struct kvp_cpu_qdot kvp_cpu_qdot_avx512_emulated;

/* C = A . W^T through the emulated table's kernel for w's type, A quantized as
 * kvp_cpu_matmul_w does. */
static void emulated_matmul(const struct kvp_cpu_weight *w, const float *a, int m, float *c)
{
	const bool kt = kvp_ggml_type(w->type)->block_elems == KVP_QK_K;
	const size_t stride = (size_t)w->k / (kt ? KVP_QK_K : KVP_QK) *
			      (kt ? sizeof(struct kvp_block_q8_k) : sizeof(struct kvp_block_q8_0));
	char *aq = qt_alloc((size_t)m * stride);
	const struct kvp_qdot_args x = {
		.w = w->data, .w_stride = w->row_bytes, .aq = aq, .aq_stride = stride, .m = m,
		.k = w->k, .c = c, .ldc = (size_t)w->n, .accumulate = false,
	};

	for (int r = 0; r < m; r++) {
		if (kt)
			kvp_cpu_quant_q8_k(a + (size_t)r * w->k, (void *)(aq + r * stride), w->k);
		else
			kvp_cpu_quant_q8_0(a + (size_t)r * w->k, (void *)(aq + r * stride), w->k);
	}
	cr_assert(kvp_cpu_qdot_avx512_emulated.dot[w->type], "no AVX-512 kernel for type %u", w->type);
	kvp_cpu_qdot_avx512_emulated.dot[w->type](&x, 0, w->n);
	free(aq);
}

static void emulated_case(uint32_t type, int m, int n, int k, bool grid)
{
	struct kvp_cpu_weight w;
	struct qt_ref ref;
	float *a = grid ? qt_grid_rows(type, m, k, (size_t)k) : qt_rand_floats((size_t)m * k);
	float *c = qt_alloc((size_t)m * n * sizeof(float));
	char buf[16];

	qt_rand_weight(&w, type, n, k, 0, grid);
	emulated_matmul(&w, a, m, c);
	qt_reference(&w, a, (size_t)k, m, &ref);
	for (int i = 0; i < m * n; i++) {
		double err = fabs(c[i] - ref.c[i]);

		cr_assert(grid ? err == 0 : err <= ref.tol[i],
			  "%s m %d n %d k %d%s: c[%d] = %.9g, want %.9g (tolerance %.3g)",
			  kvp_ggml_type_name(type, buf, sizeof(buf)), m, n, k, grid ? " grid" : "",
			  i, c[i], ref.c[i], grid ? 0.0 : ref.tol[i]);
	}
	qt_ref_free(&ref);
	free((void *)w.data);
	free(a);
	free(c);
}

Test(matmul_w, avx512_kernels_emulated)
{
	static const uint32_t types[] = { KVP_GGML_Q4_0, KVP_GGML_Q4_1, KVP_GGML_Q5_0,
					  KVP_GGML_Q5_1, KVP_GGML_Q8_0, KVP_GGML_Q2_K,
					  KVP_GGML_Q3_K, KVP_GGML_Q4_K, KVP_GGML_Q5_K,
					  KVP_GGML_Q6_K };

	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		const int blk = (int)kvp_ggml_type(types[t])->block_elems;

		for (int m = 1; m <= KVP_CPU_DOT_MAX_M; m += 3)
			for (int n = 1; n <= 9; n += 4) {
				emulated_case(types[t], m, n, 2 * blk, false);
				emulated_case(types[t], m, n + 30, 6 * blk, false);
				emulated_case(types[t], m, n, 4 * blk, true);
				/* the 32-element types, an odd number of blocks: the
				 * AVX2 kernel's */
				emulated_case(types[t], m, n, 3 * blk, true);
			}
	}
}
