/*
 * quant_known.c - dequantization against blocks written out byte by byte, each value
 * worked out from the format's definition (kvp_quant.h; the ggml block layouts) in the
 * comment above it. Each block sets every field of its type to values that differ from
 * element to element and from field to field: both nibbles, the 5th and high bits, every
 * scale and min slot, negative scales where the type has them, so that a wrong bit
 * order, nibble order, scale packing or sign changes some value. Compared exactly: every
 * value is a small multiple of a power of two.
 *
 * Also F32, F16 and BF16 elements, and what kvp_dequant_row refuses.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <string.h>

#include "kvp_quant.h"

TestSuite(known);

/* Dequantize one block of type (block_bytes given, elems values) and compare exactly. */
static void check_block(uint32_t type, const uint8_t *bytes, size_t block_bytes, const float *want,
			size_t elems)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	float got[KVP_QK_K];

	cr_assert_not_null(t);
	cr_assert_eq(t->block_bytes, block_bytes, "%s: block of %u bytes", t->name, t->block_bytes);
	cr_assert_eq(t->block_elems, elems, "%s: block of %u elements", t->name, t->block_elems);
	memset(got, 0xff, sizeof(got));
	cr_assert_eq(kvp_dequant_row(type, bytes, got, elems), 0, "%s", t->name);
	for (size_t i = 0; i < elems; i++)
		cr_assert(got[i] == want[i], "%s element %zu: got %.9g, want %.9g", t->name, i,
			  (double)got[i], (double)want[i]);
}

/*
 * Q4_0: d = 0x3800 = 0.5; qs[j] = j | (15 - j) << 4.
 * element j (low nibble) = 0.5 * (j - 8); element j + 16 (high nibble) = 0.5 * (7 - j):
 * -4 .. 3.5 rising, then 3.5 .. -4 falling. Swapped nibbles or a sign slip shows.
 */
static const uint8_t q4_0_bytes[18] = {
	0x00, 0x38, 0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d,
	0x1e, 0x0f,
};
static const float q4_0_want[32] = {
	-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5,
	0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5,
	3.5, 3, 2.5, 2, 1.5, 1, 0.5, 0,
	-0.5, -1, -1.5, -2, -2.5, -3, -3.5, -4,
};

Test(known, q4_0)
{
	check_block(KVP_GGML_Q4_0, q4_0_bytes, sizeof(q4_0_bytes), q4_0_want,
		    sizeof(q4_0_want) / sizeof(float));
}

/*
 * Q4_1: d = 0x3400 = 0.25, m = 0xbc00 = -1; qs[j] = (3j mod 16) | ((5j + 1) mod 16) << 4.
 * element j = 0.25 * (3j mod 16) - 1; element j + 16 = 0.25 * ((5j + 1) mod 16) - 1.
 * (d and m swapped would give 0.25 offsets and steps of 1.)
 */
static const uint8_t q4_1_bytes[20] = {
	0x00, 0x34, 0x00, 0xbc, 0x10, 0x63, 0xb6, 0x09, 0x5c, 0xaf, 0xf2, 0x45, 0x98, 0xeb, 0x3e, 0x81,
	0xd4, 0x27, 0x7a, 0xcd,
};
static const float q4_1_want[32] = {
	-1, -0.25, 0.5, 1.25, 2, 2.75, -0.5, 0.25,
	1, 1.75, 2.5, -0.75, 0, 0.75, 1.5, 2.25,
	-0.75, 0.5, 1.75, -1, 0.25, 1.5, 2.75, 0,
	1.25, 2.5, -0.25, 1, 2.25, -0.5, 0.75, 2,
};

Test(known, q4_1)
{
	check_block(KVP_GGML_Q4_1, q4_1_bytes, sizeof(q4_1_bytes), q4_1_want,
		    sizeof(q4_1_want) / sizeof(float));
}

/*
 * Q5_0: d = 0x3c00 = 1; qh bytes 0f f0 c3 a5 (the u32 0xa5c3f00f); qs[j] = j | (15 - j) << 4.
 * element j = (j + 16 * bit j of qh) - 16; element j + 16 = (15 - j + 16 * bit (j + 16)) - 16.
 * bits 0-3 set: elements 0-3 = 0, 1, 2, 3; bits 4-11 clear: elements 4-11 = j - 16 (-12 ..
 * -5); bits 12-15 set: 12 .. 15. bits 16-31 are c3 a5: 1100 0011, 1010 0101 read from bit 0:
 * elements 16, 17 = 15, 14; 18-21 = 13 - 16 .. 10 - 16; 22, 23 = 9, 8; then 0xa5 for elements
 * 24-31: bits 1, 0, 1, 0, 0, 1, 0, 1 = 7, -10, 5, -12, -13, 2, -15, 0.
 */
static const uint8_t q5_0_bytes[22] = {
	0x00, 0x3c, 0x0f, 0xf0, 0xc3, 0xa5, 0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69,
	0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
};
static const float q5_0_want[32] = {
	0, 1, 2, 3, -12, -11, -10, -9,
	-8, -7, -6, -5, 12, 13, 14, 15,
	15, 14, -3, -4, -5, -6, 9, 8,
	7, -10, 5, -12, -13, 2, -15, 0,
};

Test(known, q5_0)
{
	check_block(KVP_GGML_Q5_0, q5_0_bytes, sizeof(q5_0_bytes), q5_0_want,
		    sizeof(q5_0_want) / sizeof(float));
}

/*
 * Q5_1: d = 0x3800 = 0.5, m = 0xc200 = -3; qh bytes 96 3c 5a e1; qs[j] = (7j mod 16) |
 * ((3j + 2) mod 16) << 4. element j = 0.5 * ((7j mod 16) + 16 * bit j of qh) - 3; element
 * j + 16 = 0.5 * (((3j + 2) mod 16) + 16 * bit (j + 16) of qh) - 3. E.g. element 0: bit 0 of
 * 0x96 clear, 0.5 * 0 - 3 = -3; element 1: bit 1 set, 0.5 * (7 + 16) - 3 = 8.5; element 16:
 * bit 0 of 0x5a clear, 0.5 * 2 - 3 = -2; element 17: bit 1 set, 0.5 * (5 + 16) - 3 = 7.5.
 */
static const uint8_t q5_1_bytes[24] = {
	0x00, 0x38, 0x00, 0xc2, 0x96, 0x3c, 0x5a, 0xe1, 0x20, 0x57, 0x8e, 0xb5, 0xec, 0x13, 0x4a, 0x71,
	0xa8, 0xdf, 0x06, 0x3d, 0x64, 0x9b, 0xc2, 0xf9,
};
static const float q5_1_want[32] = {
	-3, 8.5, 12, -0.5, 11, -1.5, 2, 5.5,
	1, 4.5, 8, 11.5, 7, 10.5, -2, 1.5,
	-2, 7.5, 1, 10.5, 12, -2.5, 7, 0.5,
	10, 3.5, -3, -1.5, 0, 9.5, 11, 12.5,
};

Test(known, q5_1)
{
	check_block(KVP_GGML_Q5_1, q5_1_bytes, sizeof(q5_1_bytes), q5_1_want,
		    sizeof(q5_1_want) / sizeof(float));
}

/*
 * Q8_0: d = 0x3400 = 0.25; qs[j] = -128 + 8j (j < 31), qs[31] = 127: element j = 0.25 * qs[j],
 * -32 .. 28 in steps of 2, then 31.75.
 */
static const uint8_t q8_0_bytes[34] = {
	0x00, 0x34, 0x80, 0x88, 0x90, 0x98, 0xa0, 0xa8, 0xb0, 0xb8, 0xc0, 0xc8, 0xd0, 0xd8, 0xe0, 0xe8,
	0xf0, 0xf8, 0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40, 0x48, 0x50, 0x58, 0x60, 0x68,
	0x70, 0x7f,
};
static const float q8_0_want[32] = {
	-32, -30, -28, -26, -24, -22, -20, -18,
	-16, -14, -12, -10, -8, -6, -4, -2,
	0, 2, 4, 6, 8, 10, 12, 14,
	16, 18, 20, 22, 24, 26, 28, 31.75,
};

Test(known, q8_0)
{
	check_block(KVP_GGML_Q8_0, q8_0_bytes, sizeof(q8_0_bytes), q8_0_want,
		    sizeof(q8_0_want) / sizeof(float));
}

/*
 * Q8_1: d = 0x3800 = 0.5, s = 0x4880 (not used by dequantization); qs[j] = 31 - 2j:
 * element j = 0.5 * (31 - 2j) = 15.5 .. -15.5.
 */
static const uint8_t q8_1_bytes[36] = {
	0x00, 0x38, 0x80, 0x48, 0x1f, 0x1d, 0x1b, 0x19, 0x17, 0x15, 0x13, 0x11, 0x0f, 0x0d, 0x0b, 0x09,
	0x07, 0x05, 0x03, 0x01, 0xff, 0xfd, 0xfb, 0xf9, 0xf7, 0xf5, 0xf3, 0xf1, 0xef, 0xed, 0xeb, 0xe9,
	0xe7, 0xe5, 0xe3, 0xe1,
};
static const float q8_1_want[32] = {
	15.5, 14.5, 13.5, 12.5, 11.5, 10.5, 9.5, 8.5,
	7.5, 6.5, 5.5, 4.5, 3.5, 2.5, 1.5, 0.5,
	-0.5, -1.5, -2.5, -3.5, -4.5, -5.5, -6.5, -7.5,
	-8.5, -9.5, -10.5, -11.5, -12.5, -13.5, -14.5, -15.5,
};

Test(known, q8_1)
{
	check_block(KVP_GGML_Q8_1, q8_1_bytes, sizeof(q8_1_bytes), q8_1_want,
		    sizeof(q8_1_want) / sizeof(float));
}

/*
 * Q2_K: scales[g] = g | (15 - g) << 4 (scale g, min 15 - g), d = 0x3800 = 0.5, dmin =
 * 0x3400 = 0.25. Element e = 128h + 32j + k (h half, j 0..3, k 0..31) is bits 2j of
 * qs[32h + k], designed as q = (k + j + h) mod 4; its group g = e / 16.
 * value = 0.5 * g * q - 0.25 * (15 - g). Group 0: scale 0, every value -3.75; group 15
 * (e 240..255, h 1, j 3, k 16..31): 7.5 * (k mod 4) - 0, so 0, 7.5, 15, 22.5, ...
 */
static const uint8_t q2_k_bytes[84] = {
	0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
	0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93,
	0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93,
	0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4,
	0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4,
	0x00, 0x38, 0x00, 0x34,
};
static const float q2_k_want[256] = {
	-3.75, -3.75, -3.75, -3.75, -3.75, -3.75, -3.75, -3.75,
	-3.75, -3.75, -3.75, -3.75, -3.75, -3.75, -3.75, -3.75,
	-3.5, -3, -2.5, -2, -3.5, -3, -2.5, -2, -3.5, -3, -2.5, -2, -3.5, -3, -2.5, -2,
	-2.25, -1.25, -0.25, -3.25, -2.25, -1.25, -0.25, -3.25,
	-2.25, -1.25, -0.25, -3.25, -2.25, -1.25, -0.25, -3.25,
	-1.5, 0, 1.5, -3, -1.5, 0, 1.5, -3, -1.5, 0, 1.5, -3, -1.5, 0, 1.5, -3,
	1.25, 3.25, -2.75, -0.75, 1.25, 3.25, -2.75, -0.75,
	1.25, 3.25, -2.75, -0.75, 1.25, 3.25, -2.75, -0.75,
	2.5, 5, -2.5, 0, 2.5, 5, -2.5, 0, 2.5, 5, -2.5, 0, 2.5, 5, -2.5, 0,
	6.75, -2.25, 0.75, 3.75, 6.75, -2.25, 0.75, 3.75,
	6.75, -2.25, 0.75, 3.75, 6.75, -2.25, 0.75, 3.75,
	8.5, -2, 1.5, 5, 8.5, -2, 1.5, 5, 8.5, -2, 1.5, 5, 8.5, -2, 1.5, 5,
	2.25, 6.25, 10.25, -1.75, 2.25, 6.25, 10.25, -1.75,
	2.25, 6.25, 10.25, -1.75, 2.25, 6.25, 10.25, -1.75,
	3, 7.5, 12, -1.5, 3, 7.5, 12, -1.5, 3, 7.5, 12, -1.5, 3, 7.5, 12, -1.5,
	8.75, 13.75, -1.25, 3.75, 8.75, 13.75, -1.25, 3.75,
	8.75, 13.75, -1.25, 3.75, 8.75, 13.75, -1.25, 3.75,
	10, 15.5, -1, 4.5, 10, 15.5, -1, 4.5, 10, 15.5, -1, 4.5, 10, 15.5, -1, 4.5,
	17.25, -0.75, 5.25, 11.25, 17.25, -0.75, 5.25, 11.25,
	17.25, -0.75, 5.25, 11.25, 17.25, -0.75, 5.25, 11.25,
	19, -0.5, 6, 12.5, 19, -0.5, 6, 12.5, 19, -0.5, 6, 12.5, 19, -0.5, 6, 12.5,
	-0.25, 6.75, 13.75, 20.75, -0.25, 6.75, 13.75, 20.75,
	-0.25, 6.75, 13.75, 20.75, -0.25, 6.75, 13.75, 20.75,
	0, 7.5, 15, 22.5, 0, 7.5, 15, 22.5, 0, 7.5, 15, 22.5, 0, 7.5, 15, 22.5,
};

Test(known, q2_k)
{
	check_block(KVP_GGML_Q2_K, q2_k_bytes, sizeof(q2_k_bytes), q2_k_want,
		    sizeof(q2_k_want) / sizeof(float));
}

/*
 * Q3_K: d = 0x3800 = 0.5; the 16 group scales l = -32 -17 -5 -1 0 1 3 7 12 19 25 31 -8 -24
 * 14 -3, stored as u = l + 32 (0 15 27 31 32 33 35 39 44 51 57 63 24 8 46 29): the low 4 bits
 * of u[g] in byte g (g < 8) or the high nibble of byte g - 8, the top 2 bits of u[g] in bits
 * 2 (g / 4) of byte 8 + g mod 4. So scales[0] = (u0 & 15) | (u8 & 15) << 4 = 0x00 | 0xc0,
 * scales[8] = u0>>4 | u4>>4 << 2 | u8>>4 << 4 | u12>>4 << 6 = 0 | 2<<2 | 2<<4 | 1<<6 = 0x68.
 * Element e = 128h + 32j + k: low 2 bits (k + j + h) mod 4 in bits 2j of qs[32h + k]; the
 * high bit ((7k + 4h + j) >> 1) & 1 in bit 4h + j of hmask[k]; value = 0.5 * l[e / 16] *
 * (low - (high ? 0 : 4)). Element 0: low 0, high 0: 0.5 * -32 * -4 = 64.
 */
static const uint8_t q3_k_bytes[110] = {
	0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66,
	0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66, 0xcc, 0x99, 0x33, 0x66,
	0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93,
	0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93,
	0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4,
	0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4, 0x39, 0x4e, 0x93, 0xe4,
	0xc0, 0x3f, 0x9b, 0xff, 0x80, 0x81, 0xe3, 0xd7, 0x68, 0x38, 0xb9, 0x79, 0x00, 0x38,
};
static const float q3_k_want[256] = {
	64, -16, -32, 16, 64, -16, -32, 16, 64, -16, -32, 16, 64, -16, -32, 16,
	34, -8.5, -17, 8.5, 34, -8.5, -17, 8.5, 34, -8.5, -17, 8.5, 34, -8.5, -17, 8.5,
	7.5, 5, -7.5, -0, 7.5, 5, -7.5, -0, 7.5, 5, -7.5, -0, 7.5, 5, -7.5, -0,
	1.5, 1, -1.5, -0, 1.5, 1, -1.5, -0, 1.5, 1, -1.5, -0, 1.5, 1, -1.5, -0,
	0, -0, -0, 0, 0, -0, -0, 0, 0, -0, -0, 0, 0, -0, -0, 0,
	1, -0.5, -2, 0.5, 1, -0.5, -2, 0.5, 1, -0.5, -2, 0.5, 1, -0.5, -2, 0.5,
	4.5, 0, -4.5, -3, 4.5, 0, -4.5, -3, 4.5, 0, -4.5, -3, 4.5, 0, -4.5, -3,
	10.5, 0, -10.5, -7, 10.5, 0, -10.5, -7, 10.5, 0, -10.5, -7, 10.5, 0, -10.5, -7,
	-18, 12, 18, -24, -18, 12, 18, -24, -18, 12, 18, -24, -18, 12, 18, -24,
	-28.5, 19, 28.5, -38, -28.5, 19, 28.5, -38, -28.5, 19, 28.5, -38, -28.5, 19, 28.5, -38,
	-25, -12.5, 0, 12.5, -25, -12.5, 0, 12.5, -25, -12.5, 0, 12.5, -25, -12.5, 0, 12.5,
	-31, -15.5, 0, 15.5, -31, -15.5, 0, 15.5, -31, -15.5, 0, 15.5, -31, -15.5, 0, 15.5,
	-12, 16, 12, -8, -12, 16, 12, -8, -12, 16, 12, -8, -12, 16, 12, -8,
	-36, 48, 36, -24, -36, 48, 36, -24, -36, 48, 36, -24, -36, 48, 36, -24,
	0, 7, -14, -7, 0, 7, -14, -7, 0, 7, -14, -7, 0, 7, -14, -7,
	-0, -1.5, 3, 1.5, -0, -1.5, 3, 1.5, -0, -1.5, 3, 1.5, -0, -1.5, 3, 1.5,
};

Test(known, q3_k)
{
	check_block(KVP_GGML_Q3_K, q3_k_bytes, sizeof(q3_k_bytes), q3_k_want,
		    sizeof(q3_k_want) / sizeof(float));
}

/*
 * Q4_K: d = 0x3800 = 0.5, dmin = 0x3c00 = 1; group scales ls = 1 5 17 63 32 47 16 2 and mins
 * lm = 0 9 33 62 48 15 31 20, packed: bytes 0-3 = ls[0..3] | (ls[4..7] >> 4) << 6, bytes 4-7 =
 * lm[0..3] | (lm[4..7] >> 4) << 6, bytes 8-11 = (ls[4..7] & 15) | (lm[4..7] & 15) << 4.
 * Element 64j + l (l < 32) is the low nibble of qs[32j + l], designed (l + j) mod 16, in
 * group 2j; element 64j + 32 + l the high nibble, (15 - l + 2j) mod 16, in group 2j + 1.
 * value = 0.5 * ls[g] * q - 1 * lm[g]. Element 0: 0.5 * 1 * 0 - 0 = 0; element 32: q 15,
 * 0.5 * 5 * 15 - 9 = 28.5; element 192 (group 6): q 3, 0.5 * 16 * 3 - 31 = -7.
 */
static const uint8_t q4_k_bytes[144] = {
	0x00, 0x38, 0x00, 0x3c, 0x81, 0x85, 0x51, 0x3f, 0xc0, 0x09, 0x61, 0x7e, 0x00, 0xff, 0xf0, 0x42,
	0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
	0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
	0x11, 0x02, 0xf3, 0xe4, 0xd5, 0xc6, 0xb7, 0xa8, 0x99, 0x8a, 0x7b, 0x6c, 0x5d, 0x4e, 0x3f, 0x20,
	0x11, 0x02, 0xf3, 0xe4, 0xd5, 0xc6, 0xb7, 0xa8, 0x99, 0x8a, 0x7b, 0x6c, 0x5d, 0x4e, 0x3f, 0x20,
	0x32, 0x23, 0x14, 0x05, 0xf6, 0xe7, 0xd8, 0xc9, 0xba, 0xab, 0x9c, 0x8d, 0x7e, 0x6f, 0x50, 0x41,
	0x32, 0x23, 0x14, 0x05, 0xf6, 0xe7, 0xd8, 0xc9, 0xba, 0xab, 0x9c, 0x8d, 0x7e, 0x6f, 0x50, 0x41,
	0x53, 0x44, 0x35, 0x26, 0x17, 0x08, 0xf9, 0xea, 0xdb, 0xcc, 0xbd, 0xae, 0x9f, 0x80, 0x71, 0x62,
	0x53, 0x44, 0x35, 0x26, 0x17, 0x08, 0xf9, 0xea, 0xdb, 0xcc, 0xbd, 0xae, 0x9f, 0x80, 0x71, 0x62,
};
static const float q4_k_want[256] = {
	0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5,
	0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5,
	28.5, 26, 23.5, 21, 18.5, 16, 13.5, 11, 8.5, 6, 3.5, 1, -1.5, -4, -6.5, -9,
	28.5, 26, 23.5, 21, 18.5, 16, 13.5, 11, 8.5, 6, 3.5, 1, -1.5, -4, -6.5, -9,
	-24.5, -16, -7.5, 1, 9.5, 18, 26.5, 35, 43.5, 52, 60.5, 69, 77.5, 86, 94.5, -33,
	-24.5, -16, -7.5, 1, 9.5, 18, 26.5, 35, 43.5, 52, 60.5, 69, 77.5, 86, 94.5, -33,
	-30.5, -62, 410.5, 379, 347.5, 316, 284.5, 253, 221.5, 190, 158.5, 127, 95.5, 64, 32.5, 1,
	-30.5, -62, 410.5, 379, 347.5, 316, 284.5, 253, 221.5, 190, 158.5, 127, 95.5, 64, 32.5, 1,
	-16, 0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, -48, -32,
	-16, 0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, -48, -32,
	55.5, 32, 8.5, -15, 337.5, 314, 290.5, 267, 243.5, 220, 196.5, 173, 149.5, 126, 102.5, 79,
	55.5, 32, 8.5, -15, 337.5, 314, 290.5, 267, 243.5, 220, 196.5, 173, 149.5, 126, 102.5, 79,
	-7, 1, 9, 17, 25, 33, 41, 49, 57, 65, 73, 81, 89, -31, -23, -15,
	-7, 1, 9, 17, 25, 33, 41, 49, 57, 65, 73, 81, 89, -31, -23, -15,
	-15, -16, -17, -18, -19, -20, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14,
	-15, -16, -17, -18, -19, -20, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14,
};

Test(known, q4_k)
{
	check_block(KVP_GGML_Q4_K, q4_k_bytes, sizeof(q4_k_bytes), q4_k_want,
		    sizeof(q4_k_want) / sizeof(float));
}

/*
 * Q5_K: d = 0x3400 = 0.25, dmin = 0x3800 = 0.5; ls = 63 2 40 7 19 33 1 58, lm = 5 63 0 27
 * 16 44 60 3, packed as Q4_K's; qh[l] = (37l + 11) mod 256. Element 64j + l: the low nibble
 * of qs[32j + l], designed (3l + j) mod 16, plus 16 * bit 2j of qh[l]; element 64j + 32 + l:
 * the high nibble, (5l + 2j + 1) mod 16, plus 16 * bit 2j + 1 of qh[l]. value = 0.25 *
 * ls[g] * q - 0.5 * lm[g]. Element 0: qh[0] = 11 = 0b1011, bit 0 set: q 16, 0.25 * 63 * 16 -
 * 2.5 = 249.5; element 32: bit 1 set: q 1 + 16, 0.25 * 2 * 17 - 31.5 = -23.
 */
static const uint8_t q5_k_bytes[176] = {
	0x00, 0x34, 0x00, 0x38, 0x7f, 0x82, 0x28, 0xc7, 0x45, 0xbf, 0xc0, 0x1b, 0x03, 0xc1, 0xc1, 0x3a,
	0x0b, 0x30, 0x55, 0x7a, 0x9f, 0xc4, 0xe9, 0x0e, 0x33, 0x58, 0x7d, 0xa2, 0xc7, 0xec, 0x11, 0x36,
	0x5b, 0x80, 0xa5, 0xca, 0xef, 0x14, 0x39, 0x5e, 0x83, 0xa8, 0xcd, 0xf2, 0x17, 0x3c, 0x61, 0x86,
	0x10, 0x63, 0xb6, 0x09, 0x5c, 0xaf, 0xf2, 0x45, 0x98, 0xeb, 0x3e, 0x81, 0xd4, 0x27, 0x7a, 0xcd,
	0x10, 0x63, 0xb6, 0x09, 0x5c, 0xaf, 0xf2, 0x45, 0x98, 0xeb, 0x3e, 0x81, 0xd4, 0x27, 0x7a, 0xcd,
	0x31, 0x84, 0xd7, 0x2a, 0x7d, 0xc0, 0x13, 0x66, 0xb9, 0x0c, 0x5f, 0xa2, 0xf5, 0x48, 0x9b, 0xee,
	0x31, 0x84, 0xd7, 0x2a, 0x7d, 0xc0, 0x13, 0x66, 0xb9, 0x0c, 0x5f, 0xa2, 0xf5, 0x48, 0x9b, 0xee,
	0x52, 0xa5, 0xf8, 0x4b, 0x9e, 0xe1, 0x34, 0x87, 0xda, 0x2d, 0x70, 0xc3, 0x16, 0x69, 0xbc, 0x0f,
	0x52, 0xa5, 0xf8, 0x4b, 0x9e, 0xe1, 0x34, 0x87, 0xda, 0x2d, 0x70, 0xc3, 0x16, 0x69, 0xbc, 0x0f,
	0x73, 0xc6, 0x19, 0x6c, 0xbf, 0x02, 0x55, 0xa8, 0xfb, 0x4e, 0x91, 0xe4, 0x37, 0x8a, 0xdd, 0x20,
	0x73, 0xc6, 0x19, 0x6c, 0xbf, 0x02, 0x55, 0xa8, 0xfb, 0x4e, 0x91, 0xe4, 0x37, 0x8a, 0xdd, 0x20,
};
static const float q5_k_want[256] = {
	249.5, 44.75, 344, 139.25, 438.5, 233.75, 281, 76.25,
	375.5, 170.75, 470, 13.25, 312.5, 107.75, 407, 202.25,
	249.5, 44.75, 344, 139.25, 438.5, 233.75, 281, 76.25,
	375.5, 170.75, 470, 13.25, 312.5, 107.75, 407, 202.25,
	-23, -28.5, -26, -23.5, -21, -26.5, -24, -21.5,
	-19, -24.5, -30, -19.5, -17, -30.5, -28, -17.5,
	-23, -28.5, -26, -23.5, -21, -26.5, -24, -21.5,
	-19, -24.5, -30, -19.5, -17, -30.5, -28, -17.5,
	10, 40, 230, 100, 290, 160, 30, 220, 90, 120, 310, 20, 210, 240, 110, 300,
	10, 40, 230, 100, 290, 160, 30, 220, 90, 120, 310, 20, 210, 240, 110, 300,
	19.75, 0.5, 9.25, 18, 26.75, 7.5, 16.25, 25, 5.75, 14.5, 23.25, 4, 12.75, 21.5, 2.25, 11,
	19.75, 0.5, 9.25, 18, 26.75, 7.5, 16.25, 25, 5.75, 14.5, 23.25, 4, 12.75, 21.5, 2.25, 11,
	1.5, 91.75, 106, 120.25, 134.5, -3.25, 11, 25.25,
	115.5, 129.75, 68, 6.25, 20.5, 34.75, 125, 139.25,
	77.5, 15.75, 30, 44.25, 58.5, 72.75, 87, 101.25,
	39.5, 53.75, -8, 82.25, 96.5, 110.75, 49, 63.25,
	19.25, 192.5, 101.75, 143, 52.25, 93.5, 134.75, 44,
	217.25, -5.5, 167.75, 209, -13.75, 159.5, 68.75, 110,
	19.25, 60.5, 233.75, 11, 184.25, 93.5, 134.75, 44,
	85.25, 126.5, 35.75, 209, -13.75, 159.5, 200.75, -22,
	-29.25, -28.5, -23.75, -23, -26.25, -25.5, -24.75, -28,
	-27.25, -22.5, -25.75, -29, -24.25, -23.5, -26.75, -30,
	-25.25, -28.5, -27.75, -23, -22.25, -29.5, -28.75, -24,
	-27.25, -26.5, -25.75, -25, -28.25, -27.5, -22.75, -30,
	100, 172.5, 13, 85.5, 390, 230.5, 303, 143.5, 216, 56.5, 129, 433.5, 274, 346.5, 187, 27.5,
	100, 404.5, 245, 317.5, 390, -1.5, 71, 143.5, 448, 288.5, 361, 433.5, 42, 114.5, 187, 259.5,
};

Test(known, q5_k)
{
	check_block(KVP_GGML_Q5_K, q5_k_bytes, sizeof(q5_k_bytes), q5_k_want,
		    sizeof(q5_k_want) / sizeof(float));
}

/*
 * Q6_K: d = 0x3400 = 0.25; int8 scales -128 -77 -20 -1 0 1 9 33 64 127 -50 100 -9 5 -100
 * 77; ql[i] = (5i + 3) mod 256, qh[i] = (29i + 7) mod 256. Element 128h + 32k + i: the low 4
 * bits are nibble k / 2 of ql[64h + 32 (k mod 2) + i], the high 2 bits are bits 2k of
 * qh[32h + i]; value = 0.25 * scales[e / 16] * (q - 32). Element 0: ql[0] = 3, qh[0] = 7:
 * q = 3 | 3 << 4 = 51, 0.25 * -128 * 19 = -608. Element 96 (k 3, group 6): the high nibble
 * of ql[32] = 0xa3 is 10, bits 6-7 of qh[0] are 0: q 10, 0.25 * 9 * (10 - 32) = -49.5.
 */
static const uint8_t q6_k_bytes[210] = {
	0x03, 0x08, 0x0d, 0x12, 0x17, 0x1c, 0x21, 0x26, 0x2b, 0x30, 0x35, 0x3a, 0x3f, 0x44, 0x49, 0x4e,
	0x53, 0x58, 0x5d, 0x62, 0x67, 0x6c, 0x71, 0x76, 0x7b, 0x80, 0x85, 0x8a, 0x8f, 0x94, 0x99, 0x9e,
	0xa3, 0xa8, 0xad, 0xb2, 0xb7, 0xbc, 0xc1, 0xc6, 0xcb, 0xd0, 0xd5, 0xda, 0xdf, 0xe4, 0xe9, 0xee,
	0xf3, 0xf8, 0xfd, 0x02, 0x07, 0x0c, 0x11, 0x16, 0x1b, 0x20, 0x25, 0x2a, 0x2f, 0x34, 0x39, 0x3e,
	0x43, 0x48, 0x4d, 0x52, 0x57, 0x5c, 0x61, 0x66, 0x6b, 0x70, 0x75, 0x7a, 0x7f, 0x84, 0x89, 0x8e,
	0x93, 0x98, 0x9d, 0xa2, 0xa7, 0xac, 0xb1, 0xb6, 0xbb, 0xc0, 0xc5, 0xca, 0xcf, 0xd4, 0xd9, 0xde,
	0xe3, 0xe8, 0xed, 0xf2, 0xf7, 0xfc, 0x01, 0x06, 0x0b, 0x10, 0x15, 0x1a, 0x1f, 0x24, 0x29, 0x2e,
	0x33, 0x38, 0x3d, 0x42, 0x47, 0x4c, 0x51, 0x56, 0x5b, 0x60, 0x65, 0x6a, 0x6f, 0x74, 0x79, 0x7e,
	0x07, 0x24, 0x41, 0x5e, 0x7b, 0x98, 0xb5, 0xd2, 0xef, 0x0c, 0x29, 0x46, 0x63, 0x80, 0x9d, 0xba,
	0xd7, 0xf4, 0x11, 0x2e, 0x4b, 0x68, 0x85, 0xa2, 0xbf, 0xdc, 0xf9, 0x16, 0x33, 0x50, 0x6d, 0x8a,
	0xa7, 0xc4, 0xe1, 0xfe, 0x1b, 0x38, 0x55, 0x72, 0x8f, 0xac, 0xc9, 0xe6, 0x03, 0x20, 0x3d, 0x5a,
	0x77, 0x94, 0xb1, 0xce, 0xeb, 0x08, 0x25, 0x42, 0x5f, 0x7c, 0x99, 0xb6, 0xd3, 0xf0, 0x0d, 0x2a,
	0x80, 0xb3, 0xec, 0xff, 0x00, 0x01, 0x09, 0x21, 0x40, 0x7f, 0xce, 0x64, 0xf7, 0x05, 0x9c, 0x4d,
	0x00, 0x34,
};
static const float q6_k_want[256] = {
	-608, 768, 96, -64, -736, 640, 480, -192, -864, 1024, 352, -320, -992, 896, 224, -448,
	-365.75, 462, 57.75, -38.5, -442.75, 385, 288.75, -115.5,
	-519.75, 616, 211.75, -192.5, -596.75, 539, 134.75, -269.5,
	65, 40, 95, -90, -35, -60, 75, 130, -135, -80, -25, 30, 85, 140, -125, -70,
	3.25, 2, 4.75, -4.5, -1.75, -3, 3.75, 6.5, -6.75, -4, -1.25, 1.5, 4.25, 7, -6.25, -3.5,
	-0, 0, -0, -0, 0, -0, 0, -0, 0, -0, 0, -0, 0, -0, -0, 0,
	-2.75, 5.25, -2.75, 1.5, -6.5, 1.5, -6.25, 1.75, 5.75, -2, 6, -2, 6, -1.75, 2.25, -5.75,
	-49.5, -49.5, -13.5, -11.25, -11.25, 24.75, 27, 63,
	63, -42.75, -42.75, -6.75, -6.75, 31.5, 31.5, 31.5,
	255.75, 255.75, -140.25, -264, -132, -132, 8.25, 8.25,
	8.25, 148.5, 148.5, -247.5, -247.5, -107.25, -107.25, 24.75,
	304, -384, -48, 32, 368, -320, -240, 96, 432, -512, -176, 160, 496, -448, -112, 224,
	603.25, -762, -95.25, 63.5, 730.25, -635, -476.25, 190.5,
	857.25, -1016, -349.25, 317.5, 984.25, -889, -222.25, 444.5,
	162.5, 100, 237.5, -225, -87.5, -150, 187.5, 325,
	-337.5, -200, -62.5, 75, 212.5, 350, -312.5, -175,
	-325, -200, -475, 450, 175, 300, -375, -650, 675, 400, 125, -150, -425, -700, 625, 350,
	-9, 63, -9, -47.25, 24.75, -47.25, 22.5, -49.5,
	58.5, -15.75, 56.25, -15.75, 56.25, -18, -54, 18,
	31.25, -8.75, 31.25, -27.5, 12.5, -27.5, 13.75, -26.25,
	-6.25, 35, -5, 35, -5, 36.25, -23.75, 16.25,
	-350, -750, -750, -775, 425, 425, 400, 400, -0, -25, -425, -425, 775, 750, 750, 350,
	-250.25, 57.75, 57.75, 385, 385, -539, -519.75, -211.75,
	-211.75, -192.5, 115.5, 115.5, 423.5, 442.75, -481.25, -481.25,
};

Test(known, q6_k)
{
	check_block(KVP_GGML_Q6_K, q6_k_bytes, sizeof(q6_k_bytes), q6_k_want,
		    sizeof(q6_k_want) / sizeof(float));
}

/*
 * Q8_K: f32 d = 0.5 (bytes 00 00 00 3f); qs[j] = ((37j) mod 256) - 128; bsums (not used by
 * dequantization) all 0x5555. element j = 0.5 * qs[j].
 */
static const uint8_t q8_k_bytes[292] = {
	0x00, 0x00, 0x00, 0x3f, 0x80, 0xa5, 0xca, 0xef, 0x14, 0x39, 0x5e, 0x83, 0xa8, 0xcd, 0xf2, 0x17,
	0x3c, 0x61, 0x86, 0xab, 0xd0, 0xf5, 0x1a, 0x3f, 0x64, 0x89, 0xae, 0xd3, 0xf8, 0x1d, 0x42, 0x67,
	0x8c, 0xb1, 0xd6, 0xfb, 0x20, 0x45, 0x6a, 0x8f, 0xb4, 0xd9, 0xfe, 0x23, 0x48, 0x6d, 0x92, 0xb7,
	0xdc, 0x01, 0x26, 0x4b, 0x70, 0x95, 0xba, 0xdf, 0x04, 0x29, 0x4e, 0x73, 0x98, 0xbd, 0xe2, 0x07,
	0x2c, 0x51, 0x76, 0x9b, 0xc0, 0xe5, 0x0a, 0x2f, 0x54, 0x79, 0x9e, 0xc3, 0xe8, 0x0d, 0x32, 0x57,
	0x7c, 0xa1, 0xc6, 0xeb, 0x10, 0x35, 0x5a, 0x7f, 0xa4, 0xc9, 0xee, 0x13, 0x38, 0x5d, 0x82, 0xa7,
	0xcc, 0xf1, 0x16, 0x3b, 0x60, 0x85, 0xaa, 0xcf, 0xf4, 0x19, 0x3e, 0x63, 0x88, 0xad, 0xd2, 0xf7,
	0x1c, 0x41, 0x66, 0x8b, 0xb0, 0xd5, 0xfa, 0x1f, 0x44, 0x69, 0x8e, 0xb3, 0xd8, 0xfd, 0x22, 0x47,
	0x6c, 0x91, 0xb6, 0xdb, 0x00, 0x25, 0x4a, 0x6f, 0x94, 0xb9, 0xde, 0x03, 0x28, 0x4d, 0x72, 0x97,
	0xbc, 0xe1, 0x06, 0x2b, 0x50, 0x75, 0x9a, 0xbf, 0xe4, 0x09, 0x2e, 0x53, 0x78, 0x9d, 0xc2, 0xe7,
	0x0c, 0x31, 0x56, 0x7b, 0xa0, 0xc5, 0xea, 0x0f, 0x34, 0x59, 0x7e, 0xa3, 0xc8, 0xed, 0x12, 0x37,
	0x5c, 0x81, 0xa6, 0xcb, 0xf0, 0x15, 0x3a, 0x5f, 0x84, 0xa9, 0xce, 0xf3, 0x18, 0x3d, 0x62, 0x87,
	0xac, 0xd1, 0xf6, 0x1b, 0x40, 0x65, 0x8a, 0xaf, 0xd4, 0xf9, 0x1e, 0x43, 0x68, 0x8d, 0xb2, 0xd7,
	0xfc, 0x21, 0x46, 0x6b, 0x90, 0xb5, 0xda, 0xff, 0x24, 0x49, 0x6e, 0x93, 0xb8, 0xdd, 0x02, 0x27,
	0x4c, 0x71, 0x96, 0xbb, 0xe0, 0x05, 0x2a, 0x4f, 0x74, 0x99, 0xbe, 0xe3, 0x08, 0x2d, 0x52, 0x77,
	0x9c, 0xc1, 0xe6, 0x0b, 0x30, 0x55, 0x7a, 0x9f, 0xc4, 0xe9, 0x0e, 0x33, 0x58, 0x7d, 0xa2, 0xc7,
	0xec, 0x11, 0x36, 0x5b, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55,
	0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55,
	0x55, 0x55, 0x55, 0x55,
};
static const float q8_k_want[256] = {
	-64, -45.5, -27, -8.5, 10, 28.5, 47, -62.5, -44, -25.5, -7, 11.5, 30, 48.5, -61, -42.5,
	-24, -5.5, 13, 31.5, 50, -59.5, -41, -22.5, -4, 14.5, 33, 51.5, -58, -39.5, -21, -2.5,
	16, 34.5, 53, -56.5, -38, -19.5, -1, 17.5, 36, 54.5, -55, -36.5, -18, 0.5, 19, 37.5,
	56, -53.5, -35, -16.5, 2, 20.5, 39, 57.5, -52, -33.5, -15, 3.5, 22, 40.5, 59, -50.5,
	-32, -13.5, 5, 23.5, 42, 60.5, -49, -30.5, -12, 6.5, 25, 43.5, 62, -47.5, -29, -10.5,
	8, 26.5, 45, 63.5, -46, -27.5, -9, 9.5, 28, 46.5, -63, -44.5, -26, -7.5, 11, 29.5,
	48, -61.5, -43, -24.5, -6, 12.5, 31, 49.5, -60, -41.5, -23, -4.5, 14, 32.5, 51, -58.5,
	-40, -21.5, -3, 15.5, 34, 52.5, -57, -38.5, -20, -1.5, 17, 35.5, 54, -55.5, -37, -18.5,
	0, 18.5, 37, 55.5, -54, -35.5, -17, 1.5, 20, 38.5, 57, -52.5, -34, -15.5, 3, 21.5,
	40, 58.5, -51, -32.5, -14, 4.5, 23, 41.5, 60, -49.5, -31, -12.5, 6, 24.5, 43, 61.5,
	-48, -29.5, -11, 7.5, 26, 44.5, 63, -46.5, -28, -9.5, 9, 27.5, 46, -63.5, -45, -26.5,
	-8, 10.5, 29, 47.5, -62, -43.5, -25, -6.5, 12, 30.5, 49, -60.5, -42, -23.5, -5, 13.5,
	32, 50.5, -59, -40.5, -22, -3.5, 15, 33.5, 52, -57.5, -39, -20.5, -2, 16.5, 35, 53.5,
	-56, -37.5, -19, -0.5, 18, 36.5, 55, -54.5, -36, -17.5, 1, 19.5, 38, 56.5, -53, -34.5,
	-16, 2.5, 21, 39.5, 58, -51.5, -33, -14.5, 4, 22.5, 41, 59.5, -50, -31.5, -13, 5.5,
	24, 42.5, 61, -48.5, -30, -11.5, 7, 25.5, 44, 62.5, -47, -28.5, -10, 8.5, 27, 45.5,
};

Test(known, q8_k)
{
	check_block(KVP_GGML_Q8_K, q8_k_bytes, sizeof(q8_k_bytes), q8_k_want,
		    sizeof(q8_k_want) / sizeof(float));
}

/* F16: sign, 5-bit exponent (bias 15), 10-bit mantissa; BF16: the top half of an f32. */
Test(known, f16_bf16_f32_elements)
{
	static const uint16_t f16[8] = { 0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x3555, 0x0400, 0xfc00 };
	static const float f16_want[8] = {
		1.0f, -2.0f, 65504.0f, 0x1.0p-24f, -0.0f, 0x1.554p-2f, 0x1.0p-14f, -INFINITY,
	};
	static const uint16_t bf16[6] = { 0x3f80, 0xc040, 0x4049, 0x0001, 0x7f7f, 0xbe20 };
	static const float bf16_want[6] = {
		1.0f, -3.0f, 3.140625f, 0x1.0p-133f, 0x1.fep127f, -0.15625f,
	};
	static const float f32[3] = { 1.5f, -0x1.fffffep127f, 0x1.0p-149f };
	float got[8];

	cr_assert_eq(kvp_dequant_row(KVP_GGML_F16, f16, got, 8), 0);
	for (int i = 0; i < 8; i++)
		cr_assert(got[i] == f16_want[i] && signbit(got[i]) == signbit(f16_want[i]),
			  "f16 %04x: got %a", f16[i], (double)got[i]);
	cr_assert_eq(kvp_dequant_row(KVP_GGML_BF16, bf16, got, 6), 0);
	for (int i = 0; i < 6; i++)
		cr_assert(got[i] == bf16_want[i], "bf16 %04x: got %a", bf16[i], (double)got[i]);
	cr_assert_eq(kvp_dequant_row(KVP_GGML_F32, f32, got, 3), 0);
	cr_assert_eq(memcmp(got, f32, sizeof(f32)), 0);
}

/* Rows of several blocks: block i's bytes land on elements i * block_elems on. */
Test(known, rows_are_blocks_end_to_end)
{
	uint8_t row[3 * sizeof(q4_k_bytes)];
	float got[3 * KVP_QK_K];

	for (int i = 0; i < 3; i++)
		memcpy(row + i * sizeof(q4_k_bytes), i == 1 ? (const void *)q6_k_bytes : q4_k_bytes,
		       sizeof(q4_k_bytes));
	/* the middle block is Q6_K's first 144 bytes read as Q4_K: only its ends are checked */
	cr_assert_eq(kvp_dequant_row(KVP_GGML_Q4_K, row, got, 3 * KVP_QK_K), 0);
	for (int i = 0; i < KVP_QK_K; i++) {
		cr_assert(got[i] == q4_k_want[i]);
		cr_assert(got[2 * KVP_QK_K + i] == q4_k_want[i]);
	}
}

Test(known, dequant_refuses_what_has_no_layout)
{
	float got[KVP_QK_K];

	/* a row that is not whole blocks */
	cr_assert_eq(kvp_dequant_row(KVP_GGML_Q4_0, q4_0_bytes, got, 16), KVP_EINVAL);
	cr_assert_eq(kvp_dequant_row(KVP_GGML_Q6_K, q6_k_bytes, got, 128), KVP_EINVAL);
	/* IQ2_XXS, IQ4_NL, a type ggml never defined */
	cr_assert_eq(kvp_dequant_row(16, q4_0_bytes, got, 32), KVP_EINVAL);
	cr_assert_eq(kvp_dequant_row(20, q4_0_bytes, got, 32), KVP_EINVAL);
	cr_assert_eq(kvp_dequant_row(4, q4_0_bytes, got, 32), KVP_EINVAL);
	cr_assert_eq(kvp_dequant_row(UINT32_MAX, q4_0_bytes, got, 32), KVP_EINVAL);
	/* an empty row is whole blocks */
	cr_assert_eq(kvp_dequant_row(KVP_GGML_Q4_0, q4_0_bytes, got, 0), 0);
}
