/*
 * qdot_emulate.h - for tests only: qdot_avx512.c built with KVP_QDOT_EMULATE runs on
 * SIMDe's portable AVX-512 (libsimde-dev), so that a CPU without AVX-512 still checks
 * those kernels' arithmetic against the generic ones (tests/qdot_emulated.c). This
 * header fills what SIMDe 0.7 lacks or names otherwise; nothing in the library
 * includes it.
 */
#ifndef KVP_QDOT_EMULATE_H
#define KVP_QDOT_EMULATE_H

#include <string.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include "kvp_half.h"

#define __mmask16 simde__mmask16
#define __mmask64 simde__mmask64
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)

static inline simde__m512 emu_cvtepi32_ps(simde__m512i v)
{
	int32_t i[16];
	float f[16];
	simde__m512 r;

	memcpy(i, &v, sizeof(i));
	for (int k = 0; k < 16; k++)
		f[k] = (float)i[k];
	memcpy(&r, f, sizeof(r));
	return r;
}

static inline float emu_reduce_add_ps(simde__m512 v)
{
	float f[16], s = 0.0f;

	memcpy(f, &v, sizeof(f));
	for (int k = 0; k < 16; k++)
		s += f[k];
	return s;
}

static inline simde__m512i emu_srai_epi32(simde__m512i v, int n)
{
	int32_t i[16];

	memcpy(i, &v, sizeof(i));
	for (int k = 0; k < 16; k++)
		i[k] >>= n;     /* arithmetic in GCC and Clang, as vpsrad */
	memcpy(&v, i, sizeof(i));
	return v;
}

#define _mm512_cvtepi32_ps(v) emu_cvtepi32_ps(v)
#define _mm512_srai_epi32(v, n) emu_srai_epi32(v, n)
#define _mm512_reduce_add_ps(v) emu_reduce_add_ps(v)
#define _cvtsh_ss(h) kvp_f16_to_f32(h)

/* F16C's four f16 in the low 64 bits of v to f32 */
static inline simde__m128 emu_cvtph_ps(simde__m128i v)
{
	uint16_t h[8];
	float f[4];
	simde__m128 r;

	memcpy(h, &v, sizeof(h));
	for (int k = 0; k < 4; k++)
		f[k] = kvp_f16_to_f32(h[k]);
	memcpy(&r, f, sizeof(r));
	return r;
}
#define _mm_cvtph_ps(v) emu_cvtph_ps(v)

#endif
