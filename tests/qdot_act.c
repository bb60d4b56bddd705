/*
 * qdot_act.c - the activation quantizers (kvp_cpu_quant_q8_0, kvp_cpu_quant_q8_k)
 * against their definition in kvp_cpu.h, written here again in the plainest C: d =
 * amax / 127 (Q8_0: rounded to its f16 first), 0 below FLT_MIN, q = x / d rounded half
 * to even (rint), Q8_K's bsums the sums of each 16. Random rows of several scales, an
 * all-zero block, ties, and the extremes.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_half.h"
#include "qdot_util.h"

/* the definition: q[0..n) and d of one block, d rounded to f16 first for Q8_0 */
static float def_block(const float *x, int n, int8_t *q, bool half)
{
	float amax = 0.0f;

	for (int i = 0; i < n; i++)
		amax = fmaxf(amax, fabsf(x[i]));
	float d = amax / 127.0f;
	if (half)
		d = kvp_f16_to_f32(kvp_f32_to_f16(d));
	if (d < FLT_MIN)
		d = 0.0f;
	float id = d != 0.0f ? 1.0f / d : 0.0f;
	for (int i = 0; i < n; i++) {
		float v = rintf(x[i] * id);

		q[i] = (int8_t)fminf(127.0f, fmaxf(-127.0f, v));
	}
	return d;
}

static void check_q8_0(const float *x, int k)
{
	struct kvp_block_q8_0 *y = qt_alloc((size_t)k / KVP_QK * sizeof(*y));
	int8_t q[KVP_QK];

	kvp_cpu_quant_q8_0(x, y, k);
	for (int b = 0; b < k / KVP_QK; b++) {
		float d = def_block(x + b * KVP_QK, KVP_QK, q, true);

		cr_assert_eq(y[b].d, kvp_f32_to_f16(d), "block %d: d %#x, want %#x (%g)", b,
			     y[b].d, kvp_f32_to_f16(d), d);
		for (int i = 0; i < KVP_QK; i++)
			cr_assert_eq(y[b].qs[i], q[i], "block %d element %d (x %.9g): %d, want %d", b,
				     i, x[b * KVP_QK + i], y[b].qs[i], q[i]);
	}
	free(y);
}

static void check_q8_k(const float *x, int k)
{
	struct kvp_block_q8_k *y = qt_alloc((size_t)k / KVP_QK_K * sizeof(*y));
	int8_t q[KVP_QK_K];

	kvp_cpu_quant_q8_k(x, y, k);
	for (int b = 0; b < k / KVP_QK_K; b++) {
		float d = def_block(x + b * KVP_QK_K, KVP_QK_K, q, false);

		cr_assert_eq(y[b].d, d, "block %d: d %.9g, want %.9g", b, y[b].d, d);
		for (int i = 0; i < KVP_QK_K; i++)
			cr_assert_eq(y[b].qs[i], q[i], "block %d element %d: %d, want %d", b, i,
				     y[b].qs[i], q[i]);
		for (int g = 0; g < KVP_QK_K / 16; g++) {
			int s = 0;

			for (int i = 0; i < 16; i++)
				s += q[16 * g + i];
			cr_assert_eq(y[b].bsums[g], s, "block %d bsum %d: %d, want %d", b, g,
				     y[b].bsums[g], s);
		}
	}
	free(y);
}

Test(quant_act, random_rows)
{
	const int k = 4 * KVP_QK_K;

	for (int round = 0; round < 200; round++) {
		float *x = qt_rand_floats(k);
		float scale = ldexpf(1.0f, (int)(qt_rand() % 40) - 20);

		for (int i = 0; i < k; i++)
			x[i] *= scale;
		check_q8_0(x, k);
		check_q8_k(x, k);
		free(x);
	}
}

Test(quant_act, zeros_ties_and_extremes)
{
	const int k = KVP_QK_K;
	float *x = qt_alloc(k * sizeof(float));

	/* all zero: d 0, every q 0 */
	memset(x, 0, k * sizeof(float));
	check_q8_0(x, k);
	check_q8_k(x, k);
	/* amax 127: d 1, so x + 0.5 are ties, rounded to even */
	for (int i = 0; i < k; i++)
		x[i] = i % 32 == 0 ? (i % 64 ? -127.0f : 127.0f) : (float)(i % 50 - 25) + 0.5f;
	check_q8_0(x, k);
	check_q8_k(x, k);
	/* the largest and the smallest magnitudes */
	for (int i = 0; i < k; i++)
		x[i] = i % 3 == 0 ? 3.0e38f : i % 3 == 1 ? -1.0e-38f : 1.0e-45f;
	check_q8_0(x, k);
	check_q8_k(x, k);
	for (int i = 0; i < k; i++)
		x[i] = i % 2 ? 1.0e-40f : -3.0e-41f;
	check_q8_0(x, k);
	check_q8_k(x, k);
	free(x);
}

Test(quant_act, not_finite_is_safe)
{
	const int k = KVP_QK_K;
	float *x = qt_rand_floats(k);
	struct kvp_block_q8_0 y0[KVP_QK_K / KVP_QK];
	struct kvp_block_q8_k yk;

	x[3] = NAN;
	x[40] = INFINITY;
	x[100] = -INFINITY;
	/* unspecified values, but no undefined behaviour (UBSan) and every q in range */
	kvp_cpu_quant_q8_0(x, y0, k);
	kvp_cpu_quant_q8_k(x, &yk, k);
	for (int i = 0; i < k; i++)
		cr_assert(yk.qs[i] >= -127 && y0[i / KVP_QK].qs[i % KVP_QK] >= -127);
	free(x);
}
