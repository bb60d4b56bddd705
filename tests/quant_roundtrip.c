/*
 * quant_roundtrip.c - kvp_quant_row against the format: rows of several distributions
 * quantized and dequantized come back within each type's stated bound
 * (quant_test_util.h); rows already on a type's grid come back exactly; Q4_0, Q5_0 and
 * Q8_0 blocks quantize back to the same bytes; what the quantizer refuses; the type
 * table's sizes and names (kvp_ggml_row_bytes, kvp_ggml_type_name).
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_half.h"
#include "kvp_quant.h"
#include "kvp_status.h"
#include "quant_test_util.h"

TestSuite(roundtrip);
TestSuite(types);

#define MAX_ROW 4096
#define GUARD 64

static const char *tname(uint32_t type)
{
	static char buf[32];

	return kvp_ggml_type_name(type, buf, sizeof(buf));
}

static bool is_k(uint32_t type)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);

	return t && t->block_elems == KVP_QK_K;
}

/* Quantize x (n values) as type into a buffer with guard bytes after the row, check the
 * guard, dequantize into y. */
static void quant_dequant(uint32_t type, const float *x, float *y, size_t n, uint8_t *q)
{
	const size_t bytes = kvp_ggml_row_bytes(type, n);

	memset(q, 0xa5, bytes + GUARD);
	cr_assert_eq(kvp_quant_row(type, x, q, n), 0, "%s n %zu", tname(type), n);
	for (size_t i = 0; i < GUARD; i++)
		cr_assert_eq(q[bytes + i], 0xa5, "%s wrote past its row", tname(type));
	cr_assert_eq(kvp_dequant_row(type, q, y, n), 0);
}

Test(roundtrip, every_type_within_its_bound)
{
	static const size_t lens[] = { 256, 1024, MAX_ROW };
	static float x[MAX_ROW], y[MAX_ROW];
	static uint8_t q[MAX_ROW * 4 + GUARD];
	char why[256];

	for (size_t t = 0; t < qt_n_quant_types; t++) {
		const uint32_t type = qt_quant_types[t];

		for (int d = 0; d < QT_N_DIST; d++) {
			const bool tight = qt_dist_tight((enum qt_dist)d);

			/* the K bound is for rows whose block scales are normal f16 numbers */
			if (d == QT_TINY && is_k(type))
				continue;
			for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
				/* and, but for Gaussian and uniform rows, of 1024 values or more */
				if (is_k(type) && !tight && lens[l] < 1024)
					continue;
				for (uint64_t seed = 1; seed <= 3; seed++) {
					qt_fill(x, lens[l], (enum qt_dist)d, seed);
					quant_dequant(type, x, y, lens[l], q);
					cr_assert(qt_within_bound(type, x, y, lens[l], tight, why,
								  sizeof(why)),
						  "%s, %s row of %zu, seed %llu: %s", tname(type),
						  qt_dist_name((enum qt_dist)d), lens[l],
						  (unsigned long long)seed, why);
				}
			}
		}
	}
}

/* Zeros come back as zeros; a constant within an f16 (bf16) rounding or two of itself. */
Test(roundtrip, zeros_and_constants)
{
	/* large enough that Q6_K's block scale (|c| / 31 / 128) is a normal f16 */
	static const float consts[] = { 0.37f, -2.5f, 1.0f, -0.75f, 1000.0f };
	float x[512], y[512];
	uint8_t q[512 * 4 + GUARD];

	for (size_t t = 0; t < qt_n_quant_types; t++) {
		const uint32_t type = qt_quant_types[t];
		/* bf16 keeps 8 bits; the others round a scale (or the value) to f16 */
		const float tol = type == KVP_GGML_BF16 ? 0x1.0p-8f : 0x1.0p-10f;

		memset(x, 0, sizeof(x));
		quant_dequant(type, x, y, 512, q);
		for (int i = 0; i < 512; i++)
			cr_assert(y[i] == 0.0f, "%s: zeros gave %g at %d", tname(type), (double)y[i], i);
		for (size_t c = 0; c < sizeof(consts) / sizeof(consts[0]); c++) {
			for (int i = 0; i < 512; i++)
				x[i] = consts[c];
			quant_dequant(type, x, y, 512, q);
			for (int i = 0; i < 512; i++)
				cr_assert(fabsf(y[i] - consts[c]) <= fabsf(consts[c]) * tol,
					  "%s: constant %g gave %g at %d", tname(type), (double)consts[c],
					  (double)y[i], i);
		}
	}
}

/* ---- rows on a type's grid ---------------------------------------------------------- */

/* A random normal f16 of magnitude about 2^e, positive or of either sign. */
static float rand_f16(uint64_t *s, int e, bool any_sign)
{
	const uint16_t mant = (uint16_t)(qt_next(s) & 0x3ff);
	const uint16_t h = (uint16_t)((uint16_t)(e + 15) << 10 | mant);
	const float v = kvp_f16_to_f32(h);

	return any_sign && (qt_next(s) & 1) ? -v : v;
}

static int rand_in(uint64_t *s, int lo, int hi)
{
	return lo + (int)(qt_next(s) % (uint64_t)(hi - lo + 1));
}

/* n levels in lo..hi, each of the must[] levels at a random place. */
static void rand_levels(uint64_t *s, int *q, int n, int lo, int hi, const int *must, int n_must)
{
	for (int j = 0; j < n; j++)
		q[j] = rand_in(s, lo, hi);
	for (int k = 0; k < n_must; k++) {
		int at;

		do
			at = rand_in(s, 0, n - 1);
		while (k > 0 && q[at] == must[0]);
		q[at] = must[k];
	}
}

/* One block's values on the grid of a 32-element type, in the dequantizer's arithmetic. */
static void grid_block32(uint32_t type, uint64_t *s, float *x)
{
	int q[KVP_QK];
	const int e = rand_in(s, -6, 4);

	switch (type) {
	case KVP_GGML_Q8_0: {
		const int must[1] = { (qt_next(s) & 1) ? 127 : -127 };
		const float d = rand_f16(s, e, false);

		rand_levels(s, q, KVP_QK, -127, 127, must, 1);
		for (int j = 0; j < KVP_QK; j++)
			x[j] = (float)q[j] * d;
		break;
	}
	case KVP_GGML_Q4_0:
	case KVP_GGML_Q5_0: {
		const int half = type == KVP_GGML_Q4_0 ? 8 : 16, must[1] = { 0 };
		const float d = rand_f16(s, e, true);

		rand_levels(s, q, KVP_QK, 0, 2 * half - 1, must, 1);
		for (int j = 0; j < KVP_QK; j++)
			x[j] = (float)(q[j] - half) * d;
		break;
	}
	default: {   /* Q4_1, Q5_1: d and m of like magnitude, so q * d + m is exact */
		const int top = type == KVP_GGML_Q4_1 ? 15 : 31, must[2] = { 0, top };
		const float d = rand_f16(s, e, false), m = rand_f16(s, e + 2, true);

		rand_levels(s, q, KVP_QK, 0, top, must, 2);
		for (int j = 0; j < KVP_QK; j++)
			x[j] = (float)q[j] * d + m;
		break;
	}
	}
}

/* The K types: group scales (and mins) on their levels, the largest on the top one, and
 * each group's values spanning its levels. */
static void grid_block_k(uint32_t type, uint64_t *s, float *x)
{
	const bool sym = type == KVP_GGML_Q3_K || type == KVP_GGML_Q6_K;
	const int ng = type == KVP_GGML_Q4_K || type == KVP_GGML_Q5_K ? 8 : 16, n = KVP_QK_K / ng;
	const int e = rand_in(s, -8, 0), big = rand_in(s, 0, ng - 1), big_m = rand_in(s, 0, ng - 1);
	int q[32];

	if (sym) {
		const int neg = type == KVP_GGML_Q3_K ? 4 : 32, sneg = type == KVP_GGML_Q3_K ? 32 : 128;
		const float d = rand_f16(s, e, true);
		const int must[1] = { -neg };

		for (int g = 0; g < ng; g++) {
			int l = g == big ? -sneg : rand_in(s, -sneg + 1, sneg - 1);

			l = l ? l : 1;
			rand_levels(s, q, n, -neg, neg - 1, must, 1);
			for (int j = 0; j < n; j++)
				x[n * g + j] = d * (float)l * (float)q[j];
		}
		return;
	}
	const int top = type == KVP_GGML_Q2_K ? 3 : type == KVP_GGML_Q4_K ? 15 : 31;
	const int stop = type == KVP_GGML_Q2_K ? 15 : 63, must[2] = { 0, top };
	const float d = rand_f16(s, e, false), dmin = rand_f16(s, e + 1, false);

	for (int g = 0; g < ng; g++) {
		const int ls = g == big ? stop : rand_in(s, 1, stop);
		const int lm = g == big_m ? stop : rand_in(s, 0, stop);

		rand_levels(s, q, n, 0, top, must, 2);
		for (int j = 0; j < n; j++)
			x[n * g + j] = d * (float)ls * (float)q[j] - dmin * (float)lm;
	}
}

Test(roundtrip, rows_on_the_grid_come_back_exactly)
{
	static float x[MAX_ROW], y[MAX_ROW];
	static uint8_t q[MAX_ROW * 4 + GUARD];
	uint64_t s = 42;

	for (size_t t = 0; t < qt_n_quant_types; t++) {
		const uint32_t type = qt_quant_types[t];
		const struct kvp_ggml_type_info *info = kvp_ggml_type(type);

		if (info->block_elems == 1)
			continue;
		for (int rep = 0; rep < 20; rep++) {
			for (size_t b = 0; b < MAX_ROW / info->block_elems; b++) {
				if (is_k(type))
					grid_block_k(type, &s, x + b * KVP_QK_K);
				else
					grid_block32(type, &s, x + b * KVP_QK);
			}
			quant_dequant(type, x, y, MAX_ROW, q);
			for (size_t i = 0; i < MAX_ROW; i++)
				cr_assert(y[i] == x[i], "%s: element %zu (group %zu) came back %a, was %a",
					  tname(type), i, i / (is_k(type) ? 16 : 32), (double)y[i],
					  (double)x[i]);
		}
	}
}

/* Q4_0, Q5_0 and Q8_0 put the value of largest magnitude on an end level, so a block's
 * own values choose its own scale again: quantize(dequantize(b)) == b. */
Test(roundtrip, q4_0_q5_0_q8_0_blocks_quantize_to_themselves)
{
	static const uint32_t types[] = { KVP_GGML_Q4_0, KVP_GGML_Q5_0, KVP_GGML_Q8_0 };
	static float x[MAX_ROW], y[MAX_ROW];
	static uint8_t q1[MAX_ROW * 2 + GUARD], q2[MAX_ROW * 2 + GUARD];

	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		const size_t bytes = kvp_ggml_row_bytes(types[t], MAX_ROW);

		for (int d = 0; d < QT_N_DIST; d++) {
			qt_fill(x, MAX_ROW, (enum qt_dist)d, 7);
			quant_dequant(types[t], x, y, MAX_ROW, q1);
			cr_assert_eq(kvp_quant_row(types[t], y, q2, MAX_ROW), 0);
			for (size_t i = 0; i < bytes; i++)
				cr_assert_eq(q1[i], q2[i], "%s, %s row: byte %zu (block %zu) %02x then %02x",
					     tname(types[t]), qt_dist_name((enum qt_dist)d), i,
					     i / kvp_ggml_type(types[t])->block_bytes, q1[i], q2[i]);
		}
	}
}

/* The quantizer's choices as the format's reference makes them, worked out by hand. */
Test(roundtrip, q4_0_and_q8_0_choices_by_hand)
{
	float x[32];
	struct kvp_block_q4_0 b4;
	struct kvp_block_q8_0 b8;

	/* Q4_0: the largest magnitude is 8 (element 5), so d = 8 / -8 = -1 (0xbc00) and
	 * q = trunc(x / d + 8.5), at most 15: 8 -> 0; 0 -> 8; -3.4 -> trunc(11.9) = 11;
	 * 2.5 -> trunc(6.0) = 6 (ties up); -7.9 -> trunc(16.4) = 16, clamped to 15.
	 * Byte j holds element j low, element j + 16 high. */
	memset(x, 0, sizeof(x));
	x[5] = 8.0f;
	x[1] = -3.4f;
	x[2] = 2.5f;
	x[17] = -7.9f;
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q4_0, x, &b4, 32), 0);
	cr_assert_eq(b4.d, 0xbc00);
	cr_assert_eq(b4.qs[0], 0x88);
	cr_assert_eq(b4.qs[1], 0xfb, "qs[1] %02x", b4.qs[1]);   /* 11, then 15 */
	cr_assert_eq(b4.qs[2], 0x86, "qs[2] %02x", b4.qs[2]);
	cr_assert_eq(b4.qs[5], 0x80, "qs[5] %02x", b4.qs[5]);

	/* Q8_0: amax 15.875 -> d = 15.875 / 127 = 0.125 (0x3000), q = roundf(x * 8), ties
	 * away from zero: -0.0625 -> -1, 0.1875 -> 2, 0.3125 -> 3, -15.875 -> -127 */
	memset(x, 0, sizeof(x));
	x[0] = 15.875f;
	x[3] = -0.0625f;
	x[7] = 0.1875f;
	x[8] = 0.3125f;
	x[31] = -15.875f;
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q8_0, x, &b8, 32), 0);
	cr_assert_eq(b8.d, 0x3000);
	cr_assert_eq(b8.qs[0], 127);
	cr_assert_eq(b8.qs[1], 0);
	cr_assert_eq(b8.qs[3], -1);
	cr_assert_eq(b8.qs[7], 2);
	cr_assert_eq(b8.qs[8], 3);
	cr_assert_eq(b8.qs[31], -127);
}

Test(roundtrip, quant_refuses_what_it_does_not_write)
{
	float x[KVP_QK_K] = { 0 };
	uint8_t q[512];

	memset(q, 0x5a, sizeof(q));
	/* activations' types are the kernels' */
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q8_1, x, q, 32), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q8_K, x, q, KVP_QK_K), KVP_EINVAL);
	/* no layout: IQ2_XXS, IQ4_NL, I8, an id ggml never had */
	cr_assert_eq(kvp_quant_row(16, x, q, KVP_QK_K), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(20, x, q, KVP_QK_K), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(24, x, q, KVP_QK_K), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(5, x, q, KVP_QK_K), KVP_EINVAL);
	/* not whole blocks */
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q4_0, x, q, 48), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q4_K, x, q, 128), KVP_EINVAL);
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q6_K, x, q, 257), KVP_EINVAL);
	for (size_t i = 0; i < sizeof(q); i++)
		cr_assert_eq(q[i], 0x5a, "a refused call wrote byte %zu", i);
	/* an empty row is whole blocks */
	cr_assert_eq(kvp_quant_row(KVP_GGML_Q4_K, x, q, 0), 0);
	cr_assert_eq(q[0], 0x5a);
}

/* ---- the type table ------------------------------------------------------------------ */

Test(types, row_bytes)
{
	static const struct { uint32_t type; uint64_t n; size_t bytes; } rows[] = {
		{ KVP_GGML_F32, 3, 12 }, { KVP_GGML_F16, 3, 6 }, { KVP_GGML_BF16, 5, 10 },
		{ KVP_GGML_F32, 0, 0 }, { KVP_GGML_F32, 1, 4 },
		{ KVP_GGML_Q4_0, 32, 18 }, { KVP_GGML_Q4_0, 64, 36 }, { KVP_GGML_Q4_0, 31, 0 },
		{ KVP_GGML_Q4_0, 33, 0 }, { KVP_GGML_Q4_1, 32, 20 }, { KVP_GGML_Q5_0, 96, 66 },
		{ KVP_GGML_Q5_1, 32, 24 }, { KVP_GGML_Q8_0, 4096, 4352 }, { KVP_GGML_Q8_1, 32, 36 },
		{ KVP_GGML_Q2_K, 256, 84 }, { KVP_GGML_Q3_K, 512, 220 }, { KVP_GGML_Q4_K, 4096, 2304 },
		{ KVP_GGML_Q4_K, 128, 0 }, { KVP_GGML_Q4_K, 32, 0 }, { KVP_GGML_Q5_K, 256, 176 },
		{ KVP_GGML_Q6_K, 14336, 11760 }, { KVP_GGML_Q8_K, 256, 292 },
		/* no layout: 0 whatever n */
		{ 16, 256, 0 }, { 20, 32, 0 }, { 4, 32, 0 }, { 5, 32, 0 }, { 31, 1, 0 },
		{ 39, 32, 0 }, { UINT32_MAX, 1, 0 },
		/* sizes past size_t */
		{ KVP_GGML_F32, 1ull << 62, 0 }, { KVP_GGML_F32, (1ull << 62) + 1, 0 },
		{ KVP_GGML_F32, UINT64_MAX, 0 }, { KVP_GGML_F16, 1ull << 63, 0 },
		{ KVP_GGML_Q8_K, UINT64_MAX - 255, 0 },
		{ KVP_GGML_Q4_K, UINT64_MAX - 255, ((1ull << 56) - 1) * 144 },
		{ KVP_GGML_F32, (1ull << 62) - 1, ((1ull << 62) - 1) * 4 },
		{ KVP_GGML_F16, SIZE_MAX / 2, SIZE_MAX / 2 * 2 }, { KVP_GGML_F16, SIZE_MAX / 2 + 1, 0 },
		{ KVP_GGML_Q8_K, 256 * (SIZE_MAX / 292), SIZE_MAX / 292 * 292 },
		{ KVP_GGML_Q8_K, 256 * (SIZE_MAX / 292 + 1), 0 },
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		cr_assert_eq(kvp_ggml_row_bytes(rows[i].type, rows[i].n), rows[i].bytes,
			     "%s, %llu elements: %zu bytes, want %zu", tname(rows[i].type),
			     (unsigned long long)rows[i].n, kvp_ggml_row_bytes(rows[i].type, rows[i].n),
			     rows[i].bytes);
}

Test(types, names_and_table)
{
	static const struct { uint32_t type; const char *name; uint32_t elems, bytes; bool w; } known[] = {
		{ 0, "F32", 1, 4, true }, { 1, "F16", 1, 2, true }, { 2, "Q4_0", 32, 18, true },
		{ 3, "Q4_1", 32, 20, true }, { 6, "Q5_0", 32, 22, true }, { 7, "Q5_1", 32, 24, true },
		{ 8, "Q8_0", 32, 34, true }, { 9, "Q8_1", 32, 36, false }, { 10, "Q2_K", 256, 84, true },
		{ 11, "Q3_K", 256, 110, true }, { 12, "Q4_K", 256, 144, true },
		{ 13, "Q5_K", 256, 176, true }, { 14, "Q6_K", 256, 210, true },
		{ 15, "Q8_K", 256, 292, false }, { 30, "BF16", 1, 2, true },
	};
	static const struct { uint32_t type; const char *name; } other[] = {
		{ 16, "IQ2_XXS" }, { 17, "IQ2_XS" }, { 18, "IQ3_XXS" }, { 19, "IQ1_S" },
		{ 20, "IQ4_NL" }, { 21, "IQ3_S" }, { 22, "IQ2_S" }, { 23, "IQ4_XS" }, { 24, "I8" },
		{ 28, "F64" }, { 29, "IQ1_M" }, { 34, "TQ1_0" }, { 35, "TQ2_0" }, { 39, "MXFP4" },
		/* ids ggml retired or never had */
		{ 4, "type 4" }, { 5, "type 5" }, { 31, "type 31" }, { 1000, "type 1000" },
		{ UINT32_MAX, "type 4294967295" },
	};
	char buf[16], small[8];

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		const struct kvp_ggml_type_info *t = kvp_ggml_type(known[i].type);

		cr_assert_not_null(t, "type %u", known[i].type);
		cr_assert_str_eq(t->name, known[i].name);
		cr_assert_str_eq(kvp_ggml_type_name(known[i].type, buf, sizeof(buf)), known[i].name);
		cr_assert_eq(t->block_elems, known[i].elems, "%s", t->name);
		cr_assert_eq(t->block_bytes, known[i].bytes, "%s", t->name);
		cr_assert_eq(t->weights, known[i].w, "%s", t->name);
	}
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
		cr_assert_null(kvp_ggml_type(other[i].type), "type %u", other[i].type);
		cr_assert_str_eq(kvp_ggml_type_name(other[i].type, buf, sizeof(buf)), other[i].name);
	}
	/* a short buffer is cut, never overrun */
	memset(small, 'x', sizeof(small));
	cr_assert_str_eq(kvp_ggml_type_name(4000000000u, small, sizeof(small)), "type 40");
}
