/*
 * quant_test_util.h - what the quantization tests share: seeded rows of several
 * distributions, each type's stated error bound for a row quantized and dequantized,
 * and a private directory for the files a test writes.
 *
 * The bounds, per type (x the input, y what comes back, e = y - x; for the block types
 * d is the f32 scale the format's reference chooses and d_h it rounded to f16, H(v) =
 * max(|v| * 2^-11, 2^-25) the most an f16 rounding moves v; eps = amax * 2^-20 for float
 * rounding, amax the block's largest |x|):
 *
 *   F32    e = 0
 *   F16    |e| <= max(|x| * 2^-11, 2^-25)       (round to nearest, subnormals kept)
 *   BF16   |e| <= |x| * 2^-8                     (round to nearest)
 *   Q8_0   d = amax / 127:        |e| <= d / 2 + 127 H(d) + eps
 *   Q4_0   d = amax_signed / -8:  |e| <= |d| / 2 + 8 H(d) + eps, but |d| + ... for a value
 *                                 the clamp moves (x / d > 7.5: only on the far side)
 *   Q5_0   as Q4_0 with 16 levels a side
 *   Q4_1   d = (max - min) / 15:  |e| <= d / 2 + 15 H(d) + H(min) + eps
 *   Q5_1   as Q4_1 with 31
 *   K types, over the row: rms(e) <= c * rms(x). Rounding to the nearest of 2^b levels
 *          spread over a group's range R leaves rms R / (sqrt(12) (2^b - 1)); a Gaussian
 *          group of 16 spans R ~ 3.5 sigma, of 32 ~ 4.1 sigma: 0.34, 0.14, 0.079, 0.038,
 *          0.017 sigma for Q2_K .. Q6_K before the search. For Gaussian and uniform rows
 *          (the tight bound) c = 0.32 (Q2_K), 0.17 (Q3_K), 0.09 (Q4_K), 0.045 (Q5_K),
 *          0.023 (Q6_K); for any row of at least 1024 values, heavy tails and outliers
 *          too, c = 0.40, 0.20, 0.15, 0.075, 0.05. Stated for rows whose block scales
 *          are normal f16 numbers.
 */
#ifndef KVP_QUANT_TEST_UTIL_H
#define KVP_QUANT_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum qt_dist {
	QT_GAUSS,        /* N(0, 1) */
	QT_WEIGHTS,      /* N(0, 0.02^2): a model's weights */
	QT_UNIFORM,      /* U[-1, 1) */
	QT_HEAVY,        /* g^3: heavy tails */
	QT_OUTLIERS,     /* N(0, 1), 1 in 100 times 50 */
	QT_SPARSE,       /* 0, 1 in 40 N(0, 1): whole groups of zeros */
	QT_RAMP,         /* -1 .. 1 evenly over the row */
	QT_ZEROS,
	QT_CONST_POS,    /* 0.37 everywhere */
	QT_CONST_NEG,    /* -2.5 everywhere */
	QT_TINY,         /* N(0, 1e-4^2): f16 scales go subnormal (not for the K bound) */
	QT_N_DIST,
};

const char *qt_dist_name(enum qt_dist d);
void qt_fill(float *x, size_t n, enum qt_dist d, uint64_t seed);

/* splitmix64 stream */
uint64_t qt_next(uint64_t *s);
double qt_gauss(uint64_t *s);

/* The types kvp_quant_row writes, and the block types among them. */
extern const uint32_t qt_quant_types[];
extern const size_t qt_n_quant_types;

/* True when y (x quantized as type and dequantized) is within the type's bound above
 * (the K types' tight one when tight); otherwise false and the first breach in why. */
bool qt_within_bound(uint32_t type, const float *x, const float *y, size_t n, bool tight,
		     char *why, size_t cap);
/* A private directory per test (criterion .init / .fini), and a path in it. */
void qt_tmp_setup(void);
void qt_tmp_teardown(void);
void qt_path(char *out, size_t cap, const char *name);

/* The K types' rms bound c, tight or for any row (0 for other types). */
double qt_rms_bound(uint32_t type, bool tight);
/* The distributions the tight bound is stated for. */
bool qt_dist_tight(enum qt_dist d);

#endif
