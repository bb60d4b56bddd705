/*
 * kvp_quant.h - the ggml tensor types GGUF files store: their names, their block
 * layouts, and the reference conversions between them and f32.
 *
 * A row of n elements of a block type is n / block_elems blocks laid end to end; n must
 * be a multiple of the block (a file whose rows are not is refused at load). The
 * layouts below are the ggml format's, byte for byte, little-endian; `half` is an IEEE
 * f16 (kvp_half.h).
 *
 *   type   block  bytes  a block                          value of element i
 *   F32        1      4  f32                               as is
 *   F16        1      2  f16                               as is
 *   BF16       1      2  bf16                              as is
 *   Q4_0      32     18  d, qs[16] (4-bit, low then high)  d * (q - 8)
 *   Q4_1      32     20  d, m, qs[16]                      d * q + m
 *   Q5_0      32     22  d, qh[4], qs[16] (5th bits in qh) d * (q - 16)
 *   Q5_1      32     24  d, m, qh[4], qs[16]               d * q + m
 *   Q8_0      32     34  d, qs[32] (int8)                  d * q
 *   Q8_1      32     36  d, s, qs[32] (s = d * sum q)      d * q (activations)
 *   Q2_K     256     84  scales[16], qs[64], d, dmin       16 groups of 16: scale 4 bits,
 *                                                          min 4 bits, 2-bit q
 *   Q3_K     256    110  hmask[32], qs[64], scales[12], d  16 groups of 16: 6-bit signed
 *                                                          scales, 3-bit q (high bit in
 *                                                          hmask, set = no -4)
 *   Q4_K     256    144  d, dmin, scales[12], qs[128]      8 groups of 32: 6-bit scale and
 *                                                          min, 4-bit q: d*sc*q - dmin*m
 *   Q5_K     256    176  d, dmin, scales[12], qh[32],      as Q4_K with a 5th bit in qh
 *                        qs[128]
 *   Q6_K     256    210  ql[128], qh[64], scales[16], d    16 groups of 16: int8 scale,
 *                                                          6-bit q: d * sc * (q - 32)
 *   Q8_K     256    292  f32 d, qs[256], bsums[16]         activations only: d * q
 *
 * In the 32-element types, byte j of qs holds element j in its low nibble and element
 * j + 16 in its high one. The K types' exact packing is in quant.c's dequantizers.
 *
 * Pure functions: any thread, no allocation, nothing but the arguments touched.
 */
#ifndef KVP_QUANT_H
#define KVP_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

/* ggml tensor type ids (as in the GGUF spec). */
enum kvp_ggml_type {
	KVP_GGML_F32 = 0,
	KVP_GGML_F16 = 1,
	KVP_GGML_Q4_0 = 2,
	KVP_GGML_Q4_1 = 3,
	KVP_GGML_Q5_0 = 6,
	KVP_GGML_Q5_1 = 7,
	KVP_GGML_Q8_0 = 8,
	KVP_GGML_Q8_1 = 9,
	KVP_GGML_Q2_K = 10,
	KVP_GGML_Q3_K = 11,
	KVP_GGML_Q4_K = 12,
	KVP_GGML_Q5_K = 13,
	KVP_GGML_Q6_K = 14,
	KVP_GGML_Q8_K = 15,
	KVP_GGML_BF16 = 30,
};

#define KVP_QK 32      /* elements of a block of the 32-element types */
#define KVP_QK_K 256   /* elements of a super-block of the K types */

struct kvp_block_q4_0 { uint16_t d; uint8_t qs[KVP_QK / 2]; };
struct kvp_block_q4_1 { uint16_t d, m; uint8_t qs[KVP_QK / 2]; };
struct kvp_block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[KVP_QK / 2]; };
struct kvp_block_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[KVP_QK / 2]; };
struct kvp_block_q8_0 { uint16_t d; int8_t qs[KVP_QK]; };
struct kvp_block_q8_1 { uint16_t d, s; int8_t qs[KVP_QK]; };   /* s = d * sum(qs) */
struct kvp_block_q2_k { uint8_t scales[KVP_QK_K / 16]; uint8_t qs[KVP_QK_K / 4]; uint16_t d, dmin; };
struct kvp_block_q3_k { uint8_t hmask[KVP_QK_K / 8]; uint8_t qs[KVP_QK_K / 4]; uint8_t scales[12];
			uint16_t d; };
struct kvp_block_q4_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[KVP_QK_K / 2]; };
struct kvp_block_q5_k { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[KVP_QK_K / 8];
			uint8_t qs[KVP_QK_K / 2]; };
struct kvp_block_q6_k { uint8_t ql[KVP_QK_K / 2]; uint8_t qh[KVP_QK_K / 4]; int8_t scales[KVP_QK_K / 16];
			uint16_t d; };
struct kvp_block_q8_k { float d; int8_t qs[KVP_QK_K]; int16_t bsums[KVP_QK_K / 16]; };

_Static_assert(sizeof(struct kvp_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(struct kvp_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(struct kvp_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(struct kvp_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(struct kvp_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(struct kvp_block_q8_1) == 36, "Q8_1 block");
_Static_assert(sizeof(struct kvp_block_q2_k) == 84, "Q2_K block");
_Static_assert(sizeof(struct kvp_block_q3_k) == 110, "Q3_K block");
_Static_assert(sizeof(struct kvp_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(struct kvp_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(struct kvp_block_q6_k) == 210, "Q6_K block");
_Static_assert(sizeof(struct kvp_block_q8_k) == 292, "Q8_K block");

struct kvp_ggml_type_info {
	const char *name;          /* "Q4_K" */
	uint32_t block_elems;      /* 1 for F32/F16/BF16 */
	uint32_t block_bytes;
	bool weights;              /* the engine computes with weights of this type */
};

/* The type's description, or NULL for an id ggml does not define or whose layout this
 * build does not know (an IQ type, say). */
const struct kvp_ggml_type_info *kvp_ggml_type(uint32_t type);
/* "Q4_K"; "type N" in buf for an unknown id (buf: at least 16 bytes). */
const char *kvp_ggml_type_name(uint32_t type, char *buf, size_t cap);
/* Bytes of a row of n elements: 0 for an unknown type, n not a multiple of its block, or
 * a size that does not fit in size_t. */
size_t kvp_ggml_row_bytes(uint32_t type, uint64_t n);

/* The reference conversions, one row of n elements (a multiple of the type's block),
 * exact as the format defines them (f32 arithmetic in the order of the definition).
 * dequant: every type with a layout above; KVP_EINVAL otherwise. quant: F32, F16,
 * BF16 (rounded to nearest even) and every block type above but Q8_1 and Q8_K (the
 * kernels quantize activations); KVP_EINVAL otherwise (nothing written). The 32-element
 * types choose their scales as the format's reference quantizers do and round each
 * value to its nearest level; the K types search each group's scale (and min) by least
 * squares, then round the group scales against the block's, then each value (quant.c
 * says how: a valid block, not byte for byte llama.cpp's). src must be finite. */
int kvp_dequant_row(uint32_t type, const void *src, float *dst, size_t n);
int kvp_quant_row(uint32_t type, const float *src, void *dst, size_t n);

#endif
