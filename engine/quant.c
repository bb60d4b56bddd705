/*
 * quant.c - the ggml tensor types: the table of names and block sizes, and the
 * reference dequantizers, written from the format's definition (kvp_quant.h). The
 * engine's kernels (engine/cpu) compute on the blocks directly; these are what they
 * are tested against, and what the model loader and the CUDA upload use on a row.
 */
#include "kvp_quant.h"

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

	if (!t || n % t->block_elems)
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
