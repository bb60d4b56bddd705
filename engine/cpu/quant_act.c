/*
 * quant_act.c - the activation quantizers of the dot path: a row of A in f32 to the
 * 8-bit blocks the integer dot kernels take (kvp_quant.h's Q8_0 and Q8_K layouts).
 *
 *   per block of B elements (B = 32 for Q8_0, 256 for Q8_K):
 *     amax = max |x_i|
 *     Q8_0: d = f16(amax / 127), the scale the block stores;  Q8_K: d = amax / 127 (f32)
 *     d below FLT_MIN is taken as 0 (its 1 / d would overflow): a block of zeros
 *     id = d ? 1 / d : 0;  q_i = round_half_even(x_i * id), clamped to [-127, 127]
 *     Q8_K: bsums[g] = sum of q_i over i in [16 g, 16 g + 16)
 *
 * Q8_0's q are rounded against the stored f16 scale, not the f32 one, so that an
 * element's error is half a step of the scale the kernels multiply by (ggml rounds
 * against the f32 scale and adds the f16 rounding of the scale to it). Past
 * |x| = 8.3e6 the f16 scale is infinite: the dot path's 32-element types need smaller
 * activations (as ggml's do).
 *
 * Every step is an IEEE operation with one correctly rounded result (max, /, *, and
 * rounding by adding 1.5 * 2^23, valid for |v| < 2^22), so there is one answer whatever
 * the instruction set: this file is the only implementation, written to vectorise at
 * the baseline ISA, and every kernel table shares it. Non-finite inputs give unspecified
 * blocks, never undefined behaviour (no float-to-int conversion of a NaN).
 */
#include <float.h>
#include <string.h>

#include "cpu_impl.h"

/* round half to even of |v| < 2^22, through the f32 mantissa */
static inline int32_t round_even(float v)
{
	float t = v + 12582912.0f;      /* 1.5 * 2^23 */
	int32_t bits;

	memcpy(&bits, &t, sizeof(bits));
	return (bits & 0x007fffff) - 0x00400000;
}

/* max |x_i| over n, a multiple of 8. Non-negative floats order as their bit patterns
 * do, so the maxima are taken on the bits with the sign cleared, eight lanes at a time:
 * a loop that vectorises at the baseline ISA, where a float max reduction does not. */
static inline float block_amax(const float *x, int n)
{
	uint32_t lane[8] = { 0 }, top = 0;
	float amax;

	for (int i = 0; i < n; i += 8)
		for (int l = 0; l < 8; l++) {
			uint32_t b;
			memcpy(&b, x + i + l, sizeof(b));
			b &= 0x7fffffffu;
			lane[l] = b > lane[l] ? b : lane[l];
		}
	for (int l = 0; l < 8; l++)
		top = lane[l] > top ? lane[l] : top;
	memcpy(&amax, &top, sizeof(amax));
	return amax;
}

/* q[0..n) of x[0..n) against the scale d. */
static inline void block_quant(const float *x, int8_t *q, int n, float d)
{
	const float id = d >= FLT_MIN ? 1.0f / d : 0.0f;

	for (int i = 0; i < n; i++) {
		int32_t v = round_even(x[i] * id);
		v = v < -127 ? -127 : v > 127 ? 127 : v;
		q[i] = (int8_t)v;
	}
}

void kvp_cpu_quant_q8_0(const float *x, struct kvp_block_q8_0 *y, int k)
{
	for (int b = 0; b < k / KVP_QK; b++, x += KVP_QK) {
		uint16_t h = kvp_f32_to_f16(block_amax(x, KVP_QK) / 127.0f);
		float d = kvp_f16_to_f32(h);

		if (!(d >= FLT_MIN))
			h = 0;
		y[b].d = h;
		block_quant(x, y[b].qs, KVP_QK, d);
	}
}

void kvp_cpu_quant_q8_k(const float *x, struct kvp_block_q8_k *y, int k)
{
	for (int b = 0; b < k / KVP_QK_K; b++, x += KVP_QK_K) {
		float d = block_amax(x, KVP_QK_K) / 127.0f;

		y[b].d = d >= FLT_MIN ? d : 0.0f;
		block_quant(x, y[b].qs, KVP_QK_K, y[b].d);
		for (int g = 0; g < KVP_QK_K / 16; g++) {
			int s = 0;
			for (int i = 0; i < 16; i++)
				s += y[b].qs[16 * g + i];
			y[b].bsums[g] = (int16_t)s;
		}
	}
}
