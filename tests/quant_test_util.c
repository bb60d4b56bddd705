/*
 * quant_test_util.c - seeded rows and the stated error bounds (quant_test_util.h).
 */
#include "quant_test_util.h"

#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>

#include "daemon_harness.h"
#include "kvp_half.h"
#include "kvp_quant.h"

const uint32_t qt_quant_types[] = {
	KVP_GGML_F32, KVP_GGML_F16, KVP_GGML_BF16, KVP_GGML_Q4_0, KVP_GGML_Q4_1,
	KVP_GGML_Q5_0, KVP_GGML_Q5_1, KVP_GGML_Q8_0, KVP_GGML_Q2_K, KVP_GGML_Q3_K,
	KVP_GGML_Q4_K, KVP_GGML_Q5_K, KVP_GGML_Q6_K,
};
const size_t qt_n_quant_types = sizeof(qt_quant_types) / sizeof(qt_quant_types[0]);

static char tmp_dir[64];

void qt_tmp_setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(tmp_dir, sizeof(tmp_dir), "quant"), 0);
}

void qt_tmp_teardown(void)
{
	kvp_tmpdir_remove(tmp_dir);
}

void qt_path(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", tmp_dir, name);
}

const char *qt_dist_name(enum qt_dist d)
{
	static const char *const names[QT_N_DIST] = {
		"gauss", "weights", "uniform", "heavy", "outliers", "sparse", "ramp", "zeros",
		"const+", "const-", "tiny",
	};

	return d < QT_N_DIST ? names[d] : "?";
}

uint64_t qt_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double unit(uint64_t *s)
{
	return ((double)(qt_next(s) >> 11) + 0.5) * 0x1.0p-53;   /* (0, 1) */
}

double qt_gauss(uint64_t *s)
{
	const double u = unit(s), v = unit(s);

	return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

void qt_fill(float *x, size_t n, enum qt_dist d, uint64_t seed)
{
	uint64_t s = seed * 0x100000001B3ull + (uint64_t)d;

	for (size_t i = 0; i < n; i++) {
		double g = 0.0;

		switch (d) {
		case QT_GAUSS: g = qt_gauss(&s); break;
		case QT_WEIGHTS: g = 0.02 * qt_gauss(&s); break;
		case QT_UNIFORM: g = 2.0 * unit(&s) - 1.0; break;
		case QT_HEAVY: g = qt_gauss(&s); g = g * g * g; break;
		case QT_OUTLIERS: g = qt_gauss(&s) * (qt_next(&s) % 100 == 0 ? 50.0 : 1.0); break;
		case QT_SPARSE: g = qt_next(&s) % 40 == 0 ? qt_gauss(&s) : 0.0; break;
		case QT_RAMP: g = n > 1 ? -1.0 + 2.0 * (double)i / (double)(n - 1) : 0.0; break;
		case QT_ZEROS: g = 0.0; break;
		case QT_CONST_POS: g = 0.37; break;
		case QT_CONST_NEG: g = -2.5; break;
		case QT_TINY: g = 1e-4 * qt_gauss(&s); break;
		default: break;
		}
		x[i] = (float)g;
	}
}

double qt_rms_bound(uint32_t type, bool tight)
{
	switch (type) {
	case KVP_GGML_Q2_K: return tight ? 0.32 : 0.40;
	case KVP_GGML_Q3_K: return tight ? 0.17 : 0.20;
	case KVP_GGML_Q4_K: return tight ? 0.09 : 0.15;
	case KVP_GGML_Q5_K: return tight ? 0.045 : 0.075;
	case KVP_GGML_Q6_K: return tight ? 0.023 : 0.05;
	}
	return 0.0;
}

bool qt_dist_tight(enum qt_dist d)
{
	return d == QT_GAUSS || d == QT_WEIGHTS || d == QT_UNIFORM;
}

/* How far an f16 rounding moves v. */
static double h16(double v)
{
	const double r = fabs(v) * 0x1.0p-11;

	return r > 0x1.0p-25 ? r : 0x1.0p-25;
}

static bool breach(char *why, size_t cap, size_t i, float x, float y, double bound)
{
	snprintf(why, cap, "element %zu: x %.9g y %.9g |e| %.3g > bound %.3g", i, (double)x,
		 (double)y, fabs((double)y - (double)x), bound);
	return false;
}

/* One block of the 32-element types. */
static bool block32_ok(uint32_t type, const float *x, const float *y, size_t base, char *why,
		       size_t cap)
{
	float amax = 0.0f, smax = 0.0f, lo = x[0], hi = x[0];

	for (int j = 0; j < KVP_QK; j++) {
		if (fabsf(x[j]) > amax) {
			amax = fabsf(x[j]);
			smax = x[j];
		}
		lo = x[j] < lo ? x[j] : lo;
		hi = x[j] > hi ? x[j] : hi;
	}
	for (int j = 0; j < KVP_QK; j++) {
		const double e = fabs((double)y[j] - (double)x[j]), eps = amax * 0x1.0p-20;
		double d, bound;

		switch (type) {
		case KVP_GGML_Q8_0:
			d = (double)(amax / 127);
			bound = d / 2 + 127 * h16(d) + eps;
			break;
		case KVP_GGML_Q4_0:
		case KVP_GGML_Q5_0: {
			const int half = type == KVP_GGML_Q4_0 ? 8 : 16;

			d = (double)(smax / (float)-half);
			bound = fabs(d) / 2 + half * h16(d) + eps;
			if (d != 0.0 && (double)x[j] / d > half - 0.5)
				bound += fabs(d) / 2;    /* past the top level: clamped */
			break;
		}
		default: {   /* Q4_1, Q5_1 */
			const int top = type == KVP_GGML_Q4_1 ? 15 : 31;

			d = (double)((hi - lo) / (float)top);
			bound = d / 2 + top * h16(d) + h16(lo) + eps;
			break;
		}
		}
		if (!(e <= bound))
			return breach(why, cap, base + (size_t)j, x[j], y[j], bound);
	}
	return true;
}

bool qt_within_bound(uint32_t type, const float *x, const float *y, size_t n, bool tight,
		     char *why, size_t cap)
{
	double se = 0.0, sx = 0.0, c;

	switch (type) {
	case KVP_GGML_F32:
	case KVP_GGML_F16:
	case KVP_GGML_BF16:
		for (size_t i = 0; i < n; i++) {
			const double e = fabs((double)y[i] - (double)x[i]);
			const double b = type == KVP_GGML_F32 ? 0.0
					 : type == KVP_GGML_F16 ? h16(x[i])
								: fabs((double)x[i]) * 0x1.0p-8;

			if (!(e <= b))
				return breach(why, cap, i, x[i], y[i], b);
		}
		return true;
	case KVP_GGML_Q4_0:
	case KVP_GGML_Q4_1:
	case KVP_GGML_Q5_0:
	case KVP_GGML_Q5_1:
	case KVP_GGML_Q8_0:
		for (size_t i = 0; i < n; i += KVP_QK)
			if (!block32_ok(type, x + i, y + i, i, why, cap))
				return false;
		return true;
	}
	c = qt_rms_bound(type, tight);
	for (size_t i = 0; i < n; i++) {
		se += ((double)y[i] - (double)x[i]) * ((double)y[i] - (double)x[i]);
		sx += (double)x[i] * (double)x[i];
	}
	if (!(sqrt(se) <= c * sqrt(sx))) {
		snprintf(why, cap, "rms error %.4g of the row's rms, bound %.3g",
			 sx > 0 ? sqrt(se / sx) : INFINITY, c);
		return false;
	}
	return true;
}
