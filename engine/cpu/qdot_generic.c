/*
 * qdot_generic.c - the dot kernels in portable C (built with the baseline flags): one
 * row of W in its file form against one row of A quantized to Q8_0 / Q8_K blocks,
 * every block's product an exact integer sum, its scales applied in f32:
 *
 *   Q4_0, Q5_0, Q8_0   d_w d_a sum q_i a_i                  (q signed: q - 8, q - 16)
 *   Q4_1, Q5_1         d_w d_a sum q_i a_i + m_w d_a sum a_i
 *   Q2_K               d_w d_a sum_g sc_g sum q a - dmin d_a sum_g m_g bsum_g
 *   Q3_K, Q6_K         d_w d_a sum_g sc_g sum q a            (q signed, sc signed)
 *   Q4_K, Q5_K         as Q2_K, groups of 32 (two bsums a group)
 *
 * The reference the other instruction sets are checked against: on the same quantized
 * A their integer sums are the same, only the f32 order of the scale products differs.
 */
#include <string.h>

#include "cpu_impl.h"

#define QACC float
#define QACC_ZERO() 0.0f
#define QACC_SUM(acc) (acc)

#include "qdot_body.h"

#define H2F(h) kvp_f16_to_f32(h)

/* ---- the 32-element types ------------------------------------------------------------ */

QDOT_INLINE float blk_q4_0(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q4_0 *w = (const struct kvp_block_q4_0 *)wv + b;
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;
	int sumi = 0;

	for (int j = 0; j < KVP_QK / 2; j++)
		sumi += ((w->qs[j] & 0xF) - 8) * a->qs[j] + ((w->qs[j] >> 4) - 8) * a->qs[j + KVP_QK / 2];
	return acc + (float)sumi * (H2F(w->d) * H2F(a->d));
}

QDOT_INLINE float blk_q4_1(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q4_1 *w = (const struct kvp_block_q4_1 *)wv + b;
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;
	const float da = H2F(a->d);
	int sumi = 0, suma = 0;

	for (int j = 0; j < KVP_QK / 2; j++) {
		sumi += (w->qs[j] & 0xF) * a->qs[j] + (w->qs[j] >> 4) * a->qs[j + KVP_QK / 2];
		suma += a->qs[j] + a->qs[j + KVP_QK / 2];
	}
	return acc + (float)sumi * (H2F(w->d) * da) + (float)suma * (H2F(w->m) * da);
}

static inline uint32_t qh32(const uint8_t qh[4])
{
	uint32_t v;

	memcpy(&v, qh, sizeof(v));
	return v;
}

/* Q5_0 and Q5_1's five-bit q of element j and j + 16 of a block */
QDOT_INLINE void q5_pair(const uint8_t *qs, uint32_t qh, int j, int *q0, int *q1)
{
	*q0 = (qs[j] & 0xF) | ((qh >> j) & 1) << 4;
	*q1 = (qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
}

QDOT_INLINE float blk_q5_0(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q5_0 *w = (const struct kvp_block_q5_0 *)wv + b;
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;
	const uint32_t qh = qh32(w->qh);
	int sumi = 0;

	for (int j = 0; j < KVP_QK / 2; j++) {
		int q0, q1;

		q5_pair(w->qs, qh, j, &q0, &q1);
		sumi += (q0 - 16) * a->qs[j] + (q1 - 16) * a->qs[j + KVP_QK / 2];
	}
	return acc + (float)sumi * (H2F(w->d) * H2F(a->d));
}

QDOT_INLINE float blk_q5_1(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q5_1 *w = (const struct kvp_block_q5_1 *)wv + b;
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;
	const uint32_t qh = qh32(w->qh);
	const float da = H2F(a->d);
	int sumi = 0, suma = 0;

	for (int j = 0; j < KVP_QK / 2; j++) {
		int q0, q1;

		q5_pair(w->qs, qh, j, &q0, &q1);
		sumi += q0 * a->qs[j] + q1 * a->qs[j + KVP_QK / 2];
		suma += a->qs[j] + a->qs[j + KVP_QK / 2];
	}
	return acc + (float)sumi * (H2F(w->d) * da) + (float)suma * (H2F(w->m) * da);
}

QDOT_INLINE float blk_q8_0(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q8_0 *w = (const struct kvp_block_q8_0 *)wv + b;
	const struct kvp_block_q8_0 *a = (const struct kvp_block_q8_0 *)av + b;
	int sumi = 0;

	for (int j = 0; j < KVP_QK; j++)
		sumi += w->qs[j] * a->qs[j];
	return acc + (float)sumi * (H2F(w->d) * H2F(a->d));
}

/* ---- the K types ------------------------------------------------------------------------ */

/* Q2_K and Q3_K: sum over the 16 groups of 16 of scale * sum q a, q from 2 bits at
 * shift 2 s of qs plus, for Q3_K (hmask set), -4 where the high bit is clear; scales
 * as the caller unpacked them. */
QDOT_INLINE int k2_products(const uint8_t *qs, const uint8_t *hmask, const int sc[16],
			    const int8_t *q8)
{
	int isum = 0, g = 0;

	for (int h = 0; h < 2; h++, qs += 32)
		for (int s = 0; s < 4; s++)
			for (int half = 0; half < 2; half++, g++, q8 += 16) {
				int acc = 0;

				for (int l = 0; l < 16; l++) {
					int k = l + 16 * half, q = (qs[k] >> (2 * s)) & 3;

					if (hmask && !((hmask[k] >> (4 * h + s)) & 1))
						q -= 4;
					acc += q8[l] * q;
				}
				isum += sc[g] * acc;
			}
	return isum;
}

QDOT_INLINE float blk_q2_k(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q2_k *w = (const struct kvp_block_q2_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	int sc[16], summs = 0;

	for (int i = 0; i < 16; i++) {
		sc[i] = w->scales[i] & 0xF;
		summs += (w->scales[i] >> 4) * a->bsums[i];
	}
	int isum = k2_products(w->qs, NULL, sc, a->qs);
	return acc + a->d * H2F(w->d) * (float)isum - a->d * H2F(w->dmin) * (float)summs;
}

QDOT_INLINE float blk_q3_k(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q3_k *w = (const struct kvp_block_q3_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	uint32_t sw[4];
	uint8_t s8[16];
	int sc[16];

	qdot_k3_scales(w->scales, sw);
	memcpy(s8, sw, sizeof(s8));
	for (int i = 0; i < 16; i++)
		sc[i] = s8[i] - 32;
	int isum = k2_products(w->qs, w->hmask, sc, a->qs);
	return acc + a->d * H2F(w->d) * (float)isum;
}

/* Q4_K and Q5_K: the products of one super-block, qh NULL for Q4_K. */
QDOT_INLINE float k4_block(const uint8_t *qs, const uint8_t *qh, const uint8_t scales[12],
			   uint16_t d, uint16_t dmin, const struct kvp_block_q8_k *a)
{
	const int8_t *q8 = a->qs;
	uint32_t sw[4];
	uint8_t sm[16];     /* scales 0-7, mins 0-7 */
	int isum = 0, summs = 0;

	qdot_k4_scales(scales, sw);
	memcpy(sm, sw, sizeof(sm));
	for (int g = 0; g < 8; g++)
		summs += sm[8 + g] * (a->bsums[2 * g] + a->bsums[2 * g + 1]);
	for (int j = 0; j < 4; j++, qs += 32, q8 += 64) {
		int lo = 0, hi = 0;

		for (int l = 0; l < 32; l++) {
			int h0 = qh ? ((qh[l] >> (2 * j)) & 1) << 4 : 0;
			int h1 = qh ? ((qh[l] >> (2 * j + 1)) & 1) << 4 : 0;

			lo += ((qs[l] & 0xF) | h0) * q8[l];
			hi += ((qs[l] >> 4) | h1) * q8[l + 32];
		}
		isum += sm[2 * j] * lo + sm[2 * j + 1] * hi;
	}
	return a->d * H2F(d) * (float)isum - a->d * H2F(dmin) * (float)summs;
}

QDOT_INLINE float blk_q4_k(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q4_k *w = (const struct kvp_block_q4_k *)wv + b;

	return acc + k4_block(w->qs, NULL, w->scales, w->d, w->dmin, (const struct kvp_block_q8_k *)av + b);
}

QDOT_INLINE float blk_q5_k(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q5_k *w = (const struct kvp_block_q5_k *)wv + b;

	return acc + k4_block(w->qs, w->qh, w->scales, w->d, w->dmin, (const struct kvp_block_q8_k *)av + b);
}

QDOT_INLINE float blk_q6_k(const void *wv, int b, const void *av, float acc)
{
	const struct kvp_block_q6_k *w = (const struct kvp_block_q6_k *)wv + b;
	const struct kvp_block_q8_k *a = (const struct kvp_block_q8_k *)av + b;
	int isum = 0;

	for (int h = 0; h < 2; h++) {
		const uint8_t *ql = w->ql + 64 * h, *qh = w->qh + 32 * h;
		const int8_t *q8 = a->qs + 128 * h, *sc = w->scales + 8 * h;

		for (int part = 0; part < 4; part++)
			for (int sub = 0; sub < 2; sub++) {
				int sum = 0;

				for (int l = 16 * sub; l < 16 * sub + 16; l++) {
					int lo = part & 1 ? ql[l + 32] : ql[l];
					int q = ((part & 2 ? lo >> 4 : lo & 0xF) |
						 ((qh[l] >> (2 * part)) & 3) << 4) - 32;

					sum += q * q8[32 * part + l];
				}
				isum += sc[2 * part + sub] * sum;
			}
	}
	return acc + a->d * H2F(w->d) * (float)isum;
}

QDOT_EVERY_TYPE(kvp_cpu_qdot_generic, "generic", NULL)
