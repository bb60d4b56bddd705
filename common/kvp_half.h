/*
 * kvp_half.h - scalar conversions between f32 and the 16-bit floats of model files and
 * KV blocks: IEEE half (f16) and bfloat16 (bf16).
 *
 * Exact as IEEE-754 defines them: f32 to f16 and to bf16 round to nearest, ties to
 * even; subnormals, infinities and signed zeros are kept; a NaN stays a NaN (made
 * quiet, its top payload bits kept). f16 and bf16 to f32 are exact. The f16 pair
 * matches the F16C instructions bit for bit, so the CPU kernels' vector paths and
 * these scalar ones agree.
 *
 * Pure functions: any thread, no allocation. Bulk loops over arrays belong to the
 * engine's kernels, which vectorise them.
 */
#ifndef KVP_HALF_H
#define KVP_HALF_H

#include <stdint.h>

float kvp_f16_to_f32(uint16_t h);
uint16_t kvp_f32_to_f16(float f);
float kvp_bf16_to_f32(uint16_t h);
uint16_t kvp_f32_to_bf16(float f);

#endif
