/*
 * quant.c - the ggml tensor types: the table of names and block sizes, and the
 * reference dequantizers, written from the format's definition (kvp_quant.h). The
 * engine's kernels (engine/cpu) compute on the blocks directly; these are what they
 * are tested against, and what the model loader and the CUDA upload use on a row.
 */
#include "kvp_quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvp_half.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

struct type_row {
	uint32_t id;
	struct kvp_ggml_type_info info;
};

static const struct type_row types[] = {
	{ KVP_GGML_F32, { "F32", 1, 4, true } },
	{ KVP_GGML_F16, { "F16", 1, 2, true } },
	{ KVP_GGML_Q4_0, { "Q4_0", KVP_QK, sizeof(struct kvp_block_q4_0), true } },
	{ KVP_GGML_Q4_1, { "Q4_1", KVP_QK, sizeof(struct kvp_block_q4_1), true } },
	{ KVP_GGML_Q5_0, { "Q5_0", KVP_QK, sizeof(struct kvp_block_q5_0), true } },
	{ KVP_GGML_Q5_1, { "Q5_1", KVP_QK, sizeof(struct kvp_block_q5_1), true } },
	{ KVP_GGML_Q8_0, { "Q8_0", KVP_QK, sizeof(struct kvp_block_q8_0), true } },
	{ KVP_GGML_Q8_1, { "Q8_1", KVP_QK, sizeof(struct kvp_block_q8_1), false } },
	{ KVP_GGML_Q2_K, { "Q2_K", KVP_QK_K, sizeof(struct kvp_block_q2_k), true } },
	{ KVP_GGML_Q3_K, { "Q3_K", KVP_QK_K, sizeof(struct kvp_block_q3_k), true } },
	{ KVP_GGML_Q4_K, { "Q4_K", KVP_QK_K, sizeof(struct kvp_block_q4_k), true } },
	{ KVP_GGML_Q5_K, { "Q5_K", KVP_QK_K, sizeof(struct kvp_block_q5_k), true } },
	{ KVP_GGML_Q6_K, { "Q6_K", KVP_QK_K, sizeof(struct kvp_block_q6_k), true } },
	{ KVP_GGML_Q8_K, { "Q8_K", KVP_QK_K, sizeof(struct kvp_block_q8_k), false } },
	{ KVP_GGML_BF16, { "BF16", 1, 2, true } },
};

/* ggml ids whose layout this build does not handle, by name, for messages. */
static const struct { uint32_t id; const char *name; } other_names[] = {
	{ 16, "IQ2_XXS" }, { 17, "IQ2_XS" }, { 18, "IQ3_XXS" }, { 19, "IQ1_S" },
	{ 20, "IQ4_NL" }, { 21, "IQ3_S" }, { 22, "IQ2_S" }, { 23, "IQ4_XS" }, { 24, "I8" },
	{ 25, "I16" }, { 26, "I32" }, { 27, "I64" }, { 28, "F64" }, { 29, "IQ1_M" },
	{ 34, "TQ1_0" }, { 35, "TQ2_0" }, { 39, "MXFP4" },
};

const struct kvp_ggml_type_info *kvp_ggml_type(uint32_t type)
{
	for (size_t i = 0; i < NELEM(types); i++)
		if (types[i].id == type)
			return &types[i].info;
	return NULL;
}

const char *kvp_ggml_type_name(uint32_t type, char *buf, size_t cap)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);

	if (t)
		return t->name;
	for (size_t i = 0; i < NELEM(other_names); i++)
		if (other_names[i].id == type)
			return other_names[i].name;
	snprintf(buf, cap, "type %u", type);
	return buf;
}

size_t kvp_ggml_row_bytes(uint32_t type, uint64_t n)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);

	if (!t || n % t->block_elems || n / t->block_elems > SIZE_MAX / t->block_bytes)
		return 0;
	return (size_t)(n / t->block_elems) * t->block_bytes;
}

/* ---- the 32-element types ------------------------------------------------------------ */

static void dequant_q4_0(const struct kvp_block_q4_0 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);

	for (int j = 0; j < KVP_QK / 2; j++) {
		y[j] = (float)((b->qs[j] & 0x0F) - 8) * d;
		y[j + KVP_QK / 2] = (float)((b->qs[j] >> 4) - 8) * d;
	}
}

static void dequant_q4_1(const struct kvp_block_q4_1 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d), m = kvp_f16_to_f32(b->m);

	for (int j = 0; j < KVP_QK / 2; j++) {
		y[j] = (float)(b->qs[j] & 0x0F) * d + m;
		y[j + KVP_QK / 2] = (float)(b->qs[j] >> 4) * d + m;
	}
}

static uint32_t qh_bits(const uint8_t qh[4])
{
	return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
	       (uint32_t)qh[3] << 24;
}

static void dequant_q5_0(const struct kvp_block_q5_0 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);
	const uint32_t qh = qh_bits(b->qh);

	for (int j = 0; j < KVP_QK / 2; j++) {
		const int h0 = (qh >> j) << 4 & 0x10, h1 = (qh >> (j + 12)) & 0x10;

		y[j] = (float)(((b->qs[j] & 0x0F) | h0) - 16) * d;
		y[j + KVP_QK / 2] = (float)(((b->qs[j] >> 4) | h1) - 16) * d;
	}
}

static void dequant_q5_1(const struct kvp_block_q5_1 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d), m = kvp_f16_to_f32(b->m);
	const uint32_t qh = qh_bits(b->qh);

	for (int j = 0; j < KVP_QK / 2; j++) {
		const int h0 = (qh >> j) << 4 & 0x10, h1 = (qh >> (j + 12)) & 0x10;

		y[j] = (float)((b->qs[j] & 0x0F) | h0) * d + m;
		y[j + KVP_QK / 2] = (float)((b->qs[j] >> 4) | h1) * d + m;
	}
}

static void dequant_q8_0(const struct kvp_block_q8_0 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);

	for (int j = 0; j < KVP_QK; j++)
		y[j] = (float)b->qs[j] * d;
}

static void dequant_q8_1(const struct kvp_block_q8_1 *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);

	for (int j = 0; j < KVP_QK; j++)
		y[j] = (float)b->qs[j] * d;
}

/* ---- the K types ------------------------------------------------------------------------ */

static void dequant_q2_k(const struct kvp_block_q2_k *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d), dmin = kvp_f16_to_f32(b->dmin);
	const uint8_t *q = b->qs;
	int is = 0;

	for (int n = 0; n < KVP_QK_K; n += 128) {
		for (int shift = 0; shift < 8; shift += 2) {
			for (int half = 0; half < 2; half++) {
				const uint8_t sc = b->scales[is++];
				const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);

				for (int l = 0; l < 16; l++)
					*y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
			}
		}
		q += 32;
	}
}

/* Q3_K's 16 scales: 6 bits each, packed into 12 bytes (low 4 bits in bytes 0-7, the
 * high 2 bits in bytes 8-11), stored as value + 32. */
static void q3_k_scales(const uint8_t packed[12], int8_t out[16])
{
	for (int i = 0; i < 16; i++) {
		const int lo = i < 8 ? packed[i] & 0xF : packed[i - 8] >> 4;
		const int hi = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;

		out[i] = (int8_t)((lo | hi << 4) - 32);
	}
}

/* The high bits: hmask byte k (0..31) holds bit m of element k of each of the 8 groups
 * of 32, in group order across both halves. */
static void dequant_q3_k(const struct kvp_block_q3_k *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);
	const uint8_t *q = b->qs;
	int8_t sc[16];
	uint8_t m = 1;
	int is = 0;

	q3_k_scales(b->scales, sc);
	for (int n = 0; n < KVP_QK_K; n += 128) {
		for (int shift = 0; shift < 8; shift += 2) {
			for (int half = 0; half < 2; half++) {
				const float dl = d * (float)sc[is++];

				for (int l = 0; l < 16; l++) {
					const int k = l + 16 * half;
					const int v = ((q[k] >> shift) & 3) - ((b->hmask[k] & m) ? 0 : 4);

					*y++ = dl * (float)v;
				}
			}
			m <<= 1;
		}
		q += 32;
	}
}

/* Q4_K's and Q5_K's 8 scales and 8 mins: 6 bits each in 12 bytes. */
static void k4_scale_min(int j, const uint8_t q[12], uint8_t *sc, uint8_t *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
	}
}

static void dequant_q4_k(const struct kvp_block_q4_k *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d), dmin = kvp_f16_to_f32(b->dmin);
	const uint8_t *q = b->qs;

	for (int j = 0; j < KVP_QK_K / 64; j++) {
		uint8_t sc, m;
		float d1, m1, d2, m2;

		k4_scale_min(2 * j, b->scales, &sc, &m);
		d1 = d * (float)sc;
		m1 = dmin * (float)m;
		k4_scale_min(2 * j + 1, b->scales, &sc, &m);
		d2 = d * (float)sc;
		m2 = dmin * (float)m;
		for (int l = 0; l < 32; l++)
			*y++ = d1 * (float)(q[l] & 0xF) - m1;
		for (int l = 0; l < 32; l++)
			*y++ = d2 * (float)(q[l] >> 4) - m2;
		q += 32;
	}
}

static void dequant_q5_k(const struct kvp_block_q5_k *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d), dmin = kvp_f16_to_f32(b->dmin);
	const uint8_t *ql = b->qs;
	uint8_t u1 = 1, u2 = 2;

	for (int j = 0; j < KVP_QK_K / 64; j++) {
		uint8_t sc, m;
		float d1, m1, d2, m2;

		k4_scale_min(2 * j, b->scales, &sc, &m);
		d1 = d * (float)sc;
		m1 = dmin * (float)m;
		k4_scale_min(2 * j + 1, b->scales, &sc, &m);
		d2 = d * (float)sc;
		m2 = dmin * (float)m;
		for (int l = 0; l < 32; l++)
			*y++ = d1 * (float)((ql[l] & 0xF) + (b->qh[l] & u1 ? 16 : 0)) - m1;
		for (int l = 0; l < 32; l++)
			*y++ = d2 * (float)((ql[l] >> 4) + (b->qh[l] & u2 ? 16 : 0)) - m2;
		ql += 32;
		u1 <<= 2;
		u2 <<= 2;
	}
}

static void dequant_q6_k(const struct kvp_block_q6_k *b, float *y)
{
	const float d = kvp_f16_to_f32(b->d);
	const uint8_t *ql = b->ql, *qh = b->qh;
	const int8_t *sc = b->scales;

	for (int n = 0; n < KVP_QK_K; n += 128) {
		for (int l = 0; l < 32; l++) {
			const int is = l / 16;
			const int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
			const int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
			const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
			const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;

			y[l] = d * (float)sc[is] * (float)q1;
			y[l + 32] = d * (float)sc[is + 2] * (float)q2;
			y[l + 64] = d * (float)sc[is + 4] * (float)q3;
			y[l + 96] = d * (float)sc[is + 6] * (float)q4;
		}
		y += 128;
		ql += 64;
		qh += 32;
		sc += 8;
	}
}

static void dequant_q8_k(const struct kvp_block_q8_k *b, float *y)
{
	for (int j = 0; j < KVP_QK_K; j++)
		y[j] = b->d * (float)b->qs[j];
}

/* ---- rows ---------------------------------------------------------------------------- */

typedef void (*dequant_block_fn)(const void *block, float *y);

static dequant_block_fn block_dequantizer(uint32_t type)
{
	switch (type) {
	case KVP_GGML_Q4_0: return (dequant_block_fn)dequant_q4_0;
	case KVP_GGML_Q4_1: return (dequant_block_fn)dequant_q4_1;
	case KVP_GGML_Q5_0: return (dequant_block_fn)dequant_q5_0;
	case KVP_GGML_Q5_1: return (dequant_block_fn)dequant_q5_1;
	case KVP_GGML_Q8_0: return (dequant_block_fn)dequant_q8_0;
	case KVP_GGML_Q8_1: return (dequant_block_fn)dequant_q8_1;
	case KVP_GGML_Q2_K: return (dequant_block_fn)dequant_q2_k;
	case KVP_GGML_Q3_K: return (dequant_block_fn)dequant_q3_k;
	case KVP_GGML_Q4_K: return (dequant_block_fn)dequant_q4_k;
	case KVP_GGML_Q5_K: return (dequant_block_fn)dequant_q5_k;
	case KVP_GGML_Q6_K: return (dequant_block_fn)dequant_q6_k;
	case KVP_GGML_Q8_K: return (dequant_block_fn)dequant_q8_k;
	}
	return NULL;
}

int kvp_dequant_row(uint32_t type, const void *src, float *dst, size_t n)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	const uint16_t *h = src;
	dequant_block_fn f;

	if (!t || n % t->block_elems)
		return KVP_EINVAL;
	switch (type) {
	case KVP_GGML_F32:
		memcpy(dst, src, n * sizeof(float));
		return KVP_OK;
	case KVP_GGML_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kvp_f16_to_f32(h[i]);
		return KVP_OK;
	case KVP_GGML_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kvp_bf16_to_f32(h[i]);
		return KVP_OK;
	}
	f = block_dequantizer(type);
	for (size_t i = 0; i < n / t->block_elems; i++)
		f((const uint8_t *)src + i * t->block_bytes, dst + i * t->block_elems);
	return KVP_OK;
}

/* ---- quantizers: the 32-element types ------------------------------------------------
 *
 * As the format's reference quantizers choose: the scale from the block's extremes, each
 * value rounded to its nearest level with the f32 scale (the stored f16 one may differ
 * from it by half an f16 step). Q4_0 and Q5_0 put the value of largest magnitude on the
 * lowest level (-8 or -16), so that level is exact and the other side loses at most one
 * step to the clamp; Q4_1 and Q5_1 spread the levels from the minimum to the maximum.
 */

#define MIN_INT(a, b) ((a) < (b) ? (a) : (b))

/* The value of largest magnitude among n, with its sign (the first of equals). */
static float signed_absmax(const float *x, int n)
{
	float amax = 0.0f, max = 0.0f;

	for (int j = 0; j < n; j++) {
		if (fabsf(x[j]) > amax) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	}
	return max;
}

static void min_max(const float *x, int n, float *lo, float *hi)
{
	*lo = *hi = x[0];
	for (int j = 1; j < n; j++) {
		*lo = x[j] < *lo ? x[j] : *lo;
		*hi = x[j] > *hi ? x[j] : *hi;
	}
}

/* Level of x in [0, top]: x / d + offset, rounded half up (x / d + offset >= 0). */
static int level_up(float x, float id, float offset, int top)
{
	return MIN_INT((int)(x * id + offset), top);
}

static void quant_q4_0(const float *x, void *out)
{
	struct kvp_block_q4_0 *b = out;
	const float d = signed_absmax(x, KVP_QK) / -8, id = d != 0.0f ? 1.0f / d : 0.0f;

	b->d = kvp_f32_to_f16(d);
	for (int j = 0; j < KVP_QK / 2; j++)
		b->qs[j] = (uint8_t)(level_up(x[j], id, 8.5f, 15) |
				     level_up(x[j + KVP_QK / 2], id, 8.5f, 15) << 4);
}

static void quant_q4_1(const float *x, void *out)
{
	struct kvp_block_q4_1 *b = out;
	float lo, hi, d, id;

	min_max(x, KVP_QK, &lo, &hi);
	d = (hi - lo) / 15;
	id = d != 0.0f ? 1.0f / d : 0.0f;
	b->d = kvp_f32_to_f16(d);
	b->m = kvp_f32_to_f16(lo);
	for (int j = 0; j < KVP_QK / 2; j++)
		b->qs[j] = (uint8_t)(level_up(x[j] - lo, id, 0.5f, 15) |
				     level_up(x[j + KVP_QK / 2] - lo, id, 0.5f, 15) << 4);
}

/* The 5-bit types: low nibbles as in Q4, bit 4 of element j in bit j of qh. */
static void put_q5(uint8_t qs[KVP_QK / 2], uint8_t qh[4], const int q[KVP_QK])
{
	uint32_t h = 0;

	for (int j = 0; j < KVP_QK / 2; j++) {
		qs[j] = (uint8_t)((q[j] & 0xF) | (q[j + KVP_QK / 2] & 0xF) << 4);
		h |= (uint32_t)(q[j] >> 4) << j | (uint32_t)(q[j + KVP_QK / 2] >> 4) << (j + 16);
	}
	for (int k = 0; k < 4; k++)
		qh[k] = (uint8_t)(h >> (8 * k));
}

static void quant_q5_0(const float *x, void *out)
{
	struct kvp_block_q5_0 *b = out;
	const float d = signed_absmax(x, KVP_QK) / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
	int q[KVP_QK];

	b->d = kvp_f32_to_f16(d);
	for (int j = 0; j < KVP_QK; j++)
		q[j] = level_up(x[j], id, 16.5f, 31);
	put_q5(b->qs, b->qh, q);
}

static void quant_q5_1(const float *x, void *out)
{
	struct kvp_block_q5_1 *b = out;
	float lo, hi, d, id;
	int q[KVP_QK];

	min_max(x, KVP_QK, &lo, &hi);
	d = (hi - lo) / 31;
	id = d != 0.0f ? 1.0f / d : 0.0f;
	b->d = kvp_f32_to_f16(d);
	b->m = kvp_f32_to_f16(lo);
	for (int j = 0; j < KVP_QK; j++)
		q[j] = level_up(x[j] - lo, id, 0.5f, 31);
	put_q5(b->qs, b->qh, q);
}

static void quant_q8_0(const float *x, void *out)
{
	struct kvp_block_q8_0 *b = out;
	const float d = fabsf(signed_absmax(x, KVP_QK)) / 127, id = d != 0.0f ? 1.0f / d : 0.0f;

	b->d = kvp_f32_to_f16(d);
	for (int j = 0; j < KVP_QK; j++)
		b->qs[j] = (int8_t)roundf(x[j] * id);
}

/* ---- quantizers: the K types ----------------------------------------------------------
 *
 * A super-block of 256 values in groups of 16 or 32; each group has its own scale (and
 * min), and the group scales are themselves levels of one f16 step per super-block.
 *
 *   1. each group alone: NCAND candidate scales, from the one that maps the group's
 *      extremes onto one level fewer than it has to one level more; for each, the values
 *      rounded to levels, then the scale (and min) fitted to those levels by least
 *      squares; the fit of least squared error wins;
 *   2. the group scales (and mins) rounded to levels of the super-block's step, the
 *      largest on the top level (4 bits for Q2_K, 6 for Q3_K to Q5_K, 8 for Q6_K);
 *   3. each value rounded to its nearest level under its group's rounded scale and min,
 *      the ones the dequantizer uses.
 *
 * The asymmetric types (Q2_K, Q4_K, Q5_K: scale * q - min) store scale and min unsigned,
 * so a group's min is min(0, its lowest value) and zero stays representable; the
 * symmetric ones (Q3_K, Q6_K: scale * q, q in -neg .. neg - 1) take scales of either
 * sign, the largest magnitude on -neg as in Q4_0.
 */

#define NCAND 9

/* v rounded to the nearest integer, ties to even, for |v| < 2^22 (beyond, the nearest
 * of +-2^22): adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits. */
static int nearest(float v)
{
	float t;
	int32_t i;

	v = v > 0x1.0p22f ? 0x1.0p22f : v < -0x1.0p22f ? -0x1.0p22f : v;
	t = v + 0x1.8p23f;
	memcpy(&i, &t, sizeof(i));
	return (i & 0x007fffff) - 0x00400000;
}

static int clamp_int(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* One asymmetric group of n (<= 32) values, levels 0..top: x ~ scale * q - min. Sums in
 * double, so that the squared error of a fit comes from them without a second pass. */
static void fit_asym(const float *x, int n, int top, float *scale, float *min)
{
	float lo, hi;
	double sx = 0, sxx = 0, best = INFINITY;

	min_max(x, n, &lo, &hi);
	lo = lo < 0.0f ? lo : 0.0f;
	*scale = 0.0f;
	*min = -lo;                      /* all values equal: scale 0, min the value */
	if (!(hi > lo))
		return;
	for (int j = 0; j < n; j++) {
		sx += x[j];
		sxx += (double)x[j] * x[j];
	}
	for (int c = 0; c < NCAND; c++) {
		const float is = ((float)top - 1.0f + 2.0f * (float)c / (NCAND - 1)) / (hi - lo);
		int s1 = 0, s2 = 0;
		double sqx = 0, det, s, b, err;

		for (int j = 0; j < n; j++) {
			const int q = clamp_int(nearest((x[j] - lo) * is), 0, top);

			s1 += q;
			s2 += q * q;
			sqx += q * (double)x[j];
		}
		det = (double)n * s2 - (double)s1 * s1;
		if (det > 0) {
			s = (n * sqx - s1 * sx) / det;
			b = (sx - s * s1) / n;
		} else {             /* every value on one level */
			s = s2 > 0 ? sqx / s2 : 0;
			b = 0;
		}
		if (b > 0) {         /* the min must not be negative: fit through zero */
			b = 0;
			s = sqx / s2;
		}
		if (!(s > 0))
			continue;
		/* sum (s q + b - x)^2, expanded */
		err = s * s * s2 + n * b * b + sxx + 2 * s * b * s1 - 2 * s * sqx - 2 * b * sx;
		if (err < best) {
			best = err;
			*scale = (float)s;
			*min = (float)-b;
		}
	}
}

/* One symmetric group of n values, levels -neg..neg-1: returns the scale of x ~ scale * q. */
static float fit_sym(const float *x, int n, int neg)
{
	const float xm = signed_absmax(x, n);
	float best = 0.0f, scale = 0.0f;

	if (xm == 0.0f)
		return 0.0f;
	for (int c = 0; c < NCAND; c++) {
		const float is = -((float)neg - 1.0f + 2.0f * (float)c / (NCAND - 1)) / xm;
		float s2 = 0, sqx = 0;

		for (int j = 0; j < n; j++) {
			const int q = clamp_int(nearest(x[j] * is), -neg, neg - 1);

			s2 += (float)(q * q);
			sqx += (float)q * x[j];
		}
		/* least squares: scale sqx / s2 leaves sum x^2 - sqx^2 / s2 */
		if (s2 > 0.0f && sqx * sqx / s2 > best) {
			best = sqx * sqx / s2;
			scale = sqx / s2;
		}
	}
	return scale;
}

/* Unsigned group scales as levels 0..top of one step (returned as stored, f16). */
static uint16_t levels_u(const float *s, int ng, int top, uint8_t *l)
{
	float max = 0.0f, is;

	for (int g = 0; g < ng; g++)
		max = s[g] > max ? s[g] : max;
	is = max > 0.0f ? (float)top / max : 0.0f;
	for (int g = 0; g < ng; g++)
		l[g] = (uint8_t)clamp_int(nearest(s[g] * is), 0, top);
	return kvp_f32_to_f16(max / (float)top);
}

/* Signed group scales as levels -neg..neg-1, the largest magnitude on -neg. */
static uint16_t levels_s(const float *s, int ng, int neg, int *l)
{
	const float m = signed_absmax(s, ng);
	const float is = m != 0.0f ? -(float)neg / m : 0.0f;

	for (int g = 0; g < ng; g++)
		l[g] = clamp_int(nearest(s[g] * is), -neg, neg - 1);
	return kvp_f32_to_f16(m / (float)-neg);
}

/* The level of x in 0..top under scale ds and min dm (0 when the scale is). */
static int level_asym(float x, float ds, float dm, int top)
{
	return ds > 0.0f ? clamp_int(nearest((x + dm) / ds), 0, top) : 0;
}

static int level_sym(float x, float ds, int neg)
{
	return ds != 0.0f ? clamp_int(nearest(x / ds), -neg, neg - 1) : 0;
}

/* Steps 1 and 2 of an asymmetric type: ng groups of 256 / ng values. */
static void fit_asym_block(const float *x, int ng, int top, int scale_top, uint16_t *d,
			   uint16_t *dmin, uint8_t *ls, uint8_t *lm)
{
	const int n = KVP_QK_K / ng;
	float sc[16], mn[16];

	for (int g = 0; g < ng; g++)
		fit_asym(x + n * g, n, top, &sc[g], &mn[g]);
	*d = levels_u(sc, ng, scale_top, ls);
	*dmin = levels_u(mn, ng, scale_top, lm);
}

static void quant_q2_k(const float *x, void *out)
{
	struct kvp_block_q2_k *b = out;
	uint8_t ls[16], lm[16];
	float d, dmin;

	memset(b, 0, sizeof(*b));
	fit_asym_block(x, 16, 3, 15, &b->d, &b->dmin, ls, lm);
	d = kvp_f16_to_f32(b->d);
	dmin = kvp_f16_to_f32(b->dmin);
	for (int g = 0; g < 16; g++)
		b->scales[g] = (uint8_t)(ls[g] | lm[g] << 4);
	/* element 128 h + 32 j + k: bits 2j of qs[32 h + k] */
	for (int e = 0; e < KVP_QK_K; e++) {
		const int g = e / 16;
		const int q = level_asym(x[e], d * (float)ls[g], dmin * (float)lm[g], 3);

		b->qs[32 * (e / 128) + e % 32] |= (uint8_t)(q << (2 * (e % 128 / 32)));
	}
}

/* Q4_K's and Q5_K's 6-bit scales and mins into 12 bytes (k4_scale_min reads them). */
static void put_k4_scales(uint8_t q[12], const uint8_t *ls, const uint8_t *lm)
{
	memset(q, 0, 12);
	for (int j = 0; j < 4; j++) {
		q[j] = ls[j];
		q[j + 4] = lm[j];
	}
	for (int j = 4; j < 8; j++) {
		q[j + 4] = (uint8_t)((ls[j] & 0xF) | (lm[j] & 0xF) << 4);
		q[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
		q[j] |= (uint8_t)((lm[j] >> 4) << 6);
	}
}

/* Q4_K (bits 4) and Q5_K (bits 5): element 64 j + 32 h + l in nibble h of qs[32 j + l],
 * its 5th bit in bit 2 j + h of qh[l]. */
static void quant_k4(const float *x, int bits, uint16_t *dp, uint16_t *dminp, uint8_t scales[12],
		     uint8_t *qs, uint8_t *qh)
{
	const int top = (1 << bits) - 1;
	uint8_t ls[8], lm[8];
	float d, dmin;

	fit_asym_block(x, 8, top, 63, dp, dminp, ls, lm);
	put_k4_scales(scales, ls, lm);
	d = kvp_f16_to_f32(*dp);
	dmin = kvp_f16_to_f32(*dminp);
	memset(qs, 0, KVP_QK_K / 2);
	if (qh)
		memset(qh, 0, KVP_QK_K / 8);
	for (int e = 0; e < KVP_QK_K; e++) {
		const int g = e / 32;
		const int q = level_asym(x[e], d * (float)ls[g], dmin * (float)lm[g], top);

		qs[32 * (e / 64) + e % 32] |= (uint8_t)((q & 0xF) << (4 * (g & 1)));
		if (qh)
			qh[e % 32] |= (uint8_t)((q >> 4) << g);
	}
}

static void quant_q4_k(const float *x, void *out)
{
	struct kvp_block_q4_k *b = out;

	quant_k4(x, 4, &b->d, &b->dmin, b->scales, b->qs, NULL);
}

static void quant_q5_k(const float *x, void *out)
{
	struct kvp_block_q5_k *b = out;

	quant_k4(x, 5, &b->d, &b->dmin, b->scales, b->qs, b->qh);
}

static void quant_q3_k(const float *x, void *out)
{
	struct kvp_block_q3_k *b = out;
	float s[16], d;
	int l[16];

	memset(b, 0, sizeof(*b));
	for (int g = 0; g < 16; g++)
		s[g] = fit_sym(x + 16 * g, 16, 4);
	b->d = levels_s(s, 16, 32, l);
	d = kvp_f16_to_f32(b->d);
	/* stored as l + 32: low 4 bits in byte g (g < 8) or the high nibble of byte g - 8,
	 * the top 2 bits in bits 2 (g / 4) of byte 8 + g % 4 (q3_k_scales reads them) */
	for (int g = 0; g < 16; g++) {
		const int u = l[g] + 32;

		b->scales[g % 8] |= (uint8_t)((u & 0xF) << (4 * (g / 8)));
		b->scales[8 + g % 4] |= (uint8_t)((u >> 4) << (2 * (g / 4)));
	}
	/* element 128 h + 32 j + k, stored q + 4: the low 2 bits as Q2_K's, the third in
	 * bit 4 h + j of hmask[k] */
	for (int e = 0; e < KVP_QK_K; e++) {
		const int u = level_sym(x[e], d * (float)l[e / 16], 4) + 4;
		const int h = e / 128, j = e % 128 / 32, k = e % 32;

		b->qs[32 * h + k] |= (uint8_t)((u & 3) << (2 * j));
		b->hmask[k] |= (uint8_t)((u >> 2) << (4 * h + j));
	}
}

static void quant_q6_k(const float *x, void *out)
{
	struct kvp_block_q6_k *b = out;
	float s[16], d;
	int l[16];

	memset(b, 0, sizeof(*b));
	for (int g = 0; g < 16; g++)
		s[g] = fit_sym(x + 16 * g, 16, 32);
	b->d = levels_s(s, 16, 128, l);
	d = kvp_f16_to_f32(b->d);
	for (int g = 0; g < 16; g++)
		b->scales[g] = (int8_t)l[g];
	/* element 128 h + 32 k + i, stored q + 32: the low 4 bits in nibble k / 2 of
	 * ql[64 h + 32 (k % 2) + i], the high 2 in bits 2 k of qh[32 h + i] */
	for (int e = 0; e < KVP_QK_K; e++) {
		const int u = level_sym(x[e], d * (float)l[e / 16], 32) + 32;
		const int h = e / 128, k = e % 128 / 32, i = e % 32;

		b->ql[64 * h + 32 * (k % 2) + i] |= (uint8_t)((u & 0xF) << (4 * (k / 2)));
		b->qh[32 * h + i] |= (uint8_t)((u >> 4) << (2 * k));
	}
}

/* ---- quantizing rows ------------------------------------------------------------------ */

typedef void (*quant_block_fn)(const float *x, void *block);

static quant_block_fn block_quantizer(uint32_t type)
{
	switch (type) {
	case KVP_GGML_Q4_0: return quant_q4_0;
	case KVP_GGML_Q4_1: return quant_q4_1;
	case KVP_GGML_Q5_0: return quant_q5_0;
	case KVP_GGML_Q5_1: return quant_q5_1;
	case KVP_GGML_Q8_0: return quant_q8_0;
	case KVP_GGML_Q2_K: return quant_q2_k;
	case KVP_GGML_Q3_K: return quant_q3_k;
	case KVP_GGML_Q4_K: return quant_q4_k;
	case KVP_GGML_Q5_K: return quant_q5_k;
	case KVP_GGML_Q6_K: return quant_q6_k;
	}
	return NULL;
}

int kvp_quant_row(uint32_t type, const float *src, void *dst, size_t n)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	uint16_t *h = dst;
	quant_block_fn f;

	if (!t || n % t->block_elems)
		return KVP_EINVAL;
	switch (type) {
	case KVP_GGML_F32:
		memcpy(dst, src, n * sizeof(float));
		return KVP_OK;
	case KVP_GGML_F16:
		for (size_t i = 0; i < n; i++)
			h[i] = kvp_f32_to_f16(src[i]);
		return KVP_OK;
	case KVP_GGML_BF16:
		for (size_t i = 0; i < n; i++)
			h[i] = kvp_f32_to_bf16(src[i]);
		return KVP_OK;
	}
	f = block_quantizer(type);
	if (!f)
		return KVP_EINVAL;
	for (size_t i = 0; i < n / t->block_elems; i++)
		f(src + i * t->block_elems, (uint8_t *)dst + i * t->block_bytes);
	return KVP_OK;
}
