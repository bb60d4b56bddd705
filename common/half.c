/*
 * half.c - f32 <-> f16 / bf16 scalar conversions (kvp_half.h).
 */
#include "kvp_half.h"

#include <string.h>

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float kvp_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;

	if (exp == 0) {
		/* zero or subnormal: mant * 2^-24, exact in f32 */
		float v = (float)mant * 0x1p-24f;
		return bits_f32(f32_bits(v) | sign);
	}
	if (exp == 31)
		return bits_f32(sign | 0x7f800000u | (mant << 13));
	return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t kvp_f32_to_f16(float f)
{
	uint32_t x = f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t abs = x & 0x7fffffffu;
	uint32_t e = abs >> 23, mant = abs & 0x7fffff;

	if (abs >= 0x7f800000u) /* inf, or NaN made quiet with its top payload bits */
		return sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0);
	if (abs >= 0x477ff000u) /* >= 65520 rounds to inf */
		return sign | 0x7c00;
	if (e < 113) {
		/* below 2^-14: a subnormal half, m * 2^(e-150) in units of 2^-24 */
		if (e < 102)
			return sign;
		uint32_t m = mant | 0x800000u;
		uint32_t shift = 126 - e;               /* 14 .. 24 */
		uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return sign | (uint16_t)r;
	}
	uint32_t r = ((e - 112) << 10) | (mant >> 13), rem = mant & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
		r++;   /* may carry into the exponent: that is the rounding */
	return sign | (uint16_t)r;
}

float kvp_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t kvp_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);   /* NaN: quiet, top payload kept */
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}
