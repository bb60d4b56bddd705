/*
 * qdot_body.h - what the dot kernels of every instruction set share: the unpacking of
 * the K types' packed scales, and the loop over rows of W and of A. Included by the
 * qdot_<isa>.c files after they define an accumulator (QACC, QACC_ZERO(), QACC_SUM(acc):
 * a vector of partial sums and its total) and, for every type they implement, the
 * product of one block of W with the same block of a quantized row of A added into it:
 *
 *     QDOT_INLINE QACC blk_<type>(const void *w, int b, const void *a, QACC acc)
 *
 * (block b of the rows at w and a), then name the type's row loop QDOT_ROWS(<type>,
 * block elements). The loop takes W's rows one after another (qdot_rows).
 *
 * The element order inside the K types' super-blocks, from quant.c's dequantizers: an
 * element e of a super-block of 256 belongs to scale group e / 16 (Q2_K, Q3_K, Q6_K) or
 * e / 32 (Q4_K, Q5_K), so each group lines up with whole bsums of the Q8_K activations.
 *
 *   Q2_K, Q3_K   byte l (0..31) of the 32-byte run qs[32 h .. 32 h + 31], bits 2s..2s+1
 *                -> element 128 h + 32 s + l;  Q3_K's high bit: hmask[l], bit 4 h + s
 *   Q4_K, Q5_K   byte l of qs[32 j ..]: low nibble -> element 64 j + l, high -> 64 j + 32
 *                + l;  Q5_K's fifth bits: qh[l], bits 2 j and 2 j + 1
 *   Q6_K         half h (128 elements): ql[64 h + l] low nibble -> 128 h + l, ql[64 h +
 *                32 + l] low -> 128 h + 32 + l, the high nibbles -> + 64 and + 96; the top
 *                two bits from qh[32 h + l], bits 0-1, 2-3, 4-5, 6-7 in that order
 */
#ifndef KVP_QDOT_BODY_H
#define KVP_QDOT_BODY_H

#include <string.h>

#include "cpu_impl.h"

#define QDOT_INLINE static inline __attribute__((always_inline))

/* Q4_K's and Q5_K's 12 scale bytes as 4 words: bytes 0-7 the 8 six-bit scales, bytes
 * 8-15 the 8 six-bit mins (quant.c's k4_scale_min, four at a time). */
QDOT_INLINE void qdot_k4_scales(const uint8_t packed[12], uint32_t out[4])
{
	const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
	uint32_t u[3];

	memcpy(u, packed, sizeof(u));
	out[0] = u[0] & m6;                                     /* scales 0-3 */
	out[1] = (u[2] & m4) | ((u[0] >> 6) & m2) << 4;         /* scales 4-7 */
	out[2] = u[1] & m6;                                     /* mins 0-3 */
	out[3] = ((u[2] >> 4) & m4) | ((u[1] >> 6) & m2) << 4;  /* mins 4-7 */
}

/* Q3_K's 12 scale bytes as 4 words of 16 six-bit scales, each + 32 (subtract 32 for the
 * signed scale; quant.c's q3_k_scales). */
QDOT_INLINE void qdot_k3_scales(const uint8_t packed[12], uint32_t out[4])
{
	const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
	uint32_t u[3];

	memcpy(u, packed, sizeof(u));
	out[0] = (u[0] & m4) | ((u[2] >> 0) & m2) << 4;
	out[1] = (u[1] & m4) | ((u[2] >> 2) & m2) << 4;
	out[2] = ((u[0] >> 4) & m4) | ((u[2] >> 4) & m2) << 4;
	out[3] = ((u[1] >> 4) & m4) | ((u[2] >> 6) & m2) << 4;
}

QDOT_INLINE void qdot_store(const struct kvp_qdot_args *x, int r, int j, float s)
{
	float *cp = x->c + (size_t)r * x->ldc + j;

	*cp = x->accumulate ? *cp + s : s;
}

#ifndef QDOT_GROUP
#define QDOT_GROUP 4            /* rows of A taken together: 4, or 8 with 32 registers */
#endif

/* A type whose work on W alone is heavy (unpacking, scales) may give its block product
 * in two halves instead of one blk_ function: prep (block b of W into a struct of the
 * type's own, up to QDOT_PREP_BYTES) and use (that struct against the same block of a
 * row of A, added into acc). The row loop calls prep once a block and use once a row
 * of A, so that the unpacked block stays in registers or L1 for every row. use must do
 * what blk would, in the same order: a row's result depends on neither R nor the split. */
typedef void (*qdot_prep_fn)(const void *w, int b, void *out);
typedef QACC (*qdot_use_fn)(const void *prep, int b, const void *a, QACC acc);
#define QDOT_PREP_BYTES 640     /* a multiple of 64: the second of two stays aligned */

/* C[r][j] (+)= dot(W_j, A_r) for R rows of A from r0 (R a constant, 1 .. QDOT_GROUP)
 * and W rows [j0, j1), one row of W after another: each is read from memory once, front
 * to back (the one sequential stream per thread that the hardware prefetcher follows
 * best). Block b of W is taken against the R rows together: by fn, where what it does
 * to W alone (loading, unpacking, the signs) is the same expression R times over and
 * the compiler computes it once; or by prep once and use R times. Two chains of partial
 * sums a row, even and odd blocks, summed in that order: a row's result does not depend
 * on R. */
QDOT_INLINE void qdot_rows_r(const struct kvp_qdot_args *x, int j0, int j1, const int blk,
			     QACC (*fn)(const void *w, int b, const void *a, QACC acc),
			     qdot_prep_fn prep, qdot_use_fn use, const int R, int r0)
{
	const int nb = x->k / blk;
	const char *a[QDOT_GROUP];
	_Alignas(64) char pb[2][QDOT_PREP_BYTES];

	for (int r = 0; r < R; r++)
		a[r] = x->aq + (size_t)(r0 + r) * x->aq_stride;
	for (int j = j0; j < j1; j++) {
		const char *w = x->w + (size_t)j * x->w_stride;
		QACC acc0[QDOT_GROUP], acc1[QDOT_GROUP];
		int b = 0;

		for (int r = 0; r < R; r++) {
			acc0[r] = QACC_ZERO();
			acc1[r] = QACC_ZERO();
		}
		for (; b + 1 < nb; b += 2) {
			if (prep) {
				prep(w, b, pb[0]);
				prep(w, b + 1, pb[1]);
				for (int r = 0; r < R; r++)
					acc0[r] = use(pb[0], b, a[r], acc0[r]);
				for (int r = 0; r < R; r++)
					acc1[r] = use(pb[1], b + 1, a[r], acc1[r]);
				continue;
			}
			for (int r = 0; r < R; r++)
				acc0[r] = fn(w, b, a[r], acc0[r]);
			for (int r = 0; r < R; r++)
				acc1[r] = fn(w, b + 1, a[r], acc1[r]);
		}
		if (b < nb) {
			if (prep)
				prep(w, b, pb[0]);
			for (int r = 0; r < R; r++)
				acc0[r] = prep ? use(pb[0], b, a[r], acc0[r]) : fn(w, b, a[r], acc0[r]);
		}
		for (int r = 0; r < R; r++)
			qdot_store(x, r0 + r, j, QACC_SUM(acc0[r]) + QACC_SUM(acc1[r]));
	}
}

/* Every row of A, QDOT_GROUP at a time. With more than that, W goes a chunk of rows at
 * a time, small enough to stay in L1 while each group of A's rows passes over it: W is
 * read from memory once whatever M. */
#define QDOT_CHUNK_BYTES 16384

QDOT_INLINE void qdot_rows_pu(const struct kvp_qdot_args *x, int j0, int j1, const int blk,
			      QACC (*fn)(const void *w, int b, const void *a, QACC acc),
			      qdot_prep_fn prep, qdot_use_fn use)
{
	const int fit = (int)(QDOT_CHUNK_BYTES / x->w_stride);
	const int chunk = x->m <= QDOT_GROUP ? j1 - j0 : fit > 1 ? fit : 1;

	for (int j = j0; j < j1; j += chunk) {
		const int je = j1 - j < chunk ? j1 : j + chunk;
		int r0 = 0;

		for (; r0 + QDOT_GROUP <= x->m; r0 += QDOT_GROUP)
			qdot_rows_r(x, j, je, blk, fn, prep, use, QDOT_GROUP, r0);
		switch (x->m - r0) {
#if QDOT_GROUP > 4
		case 7: qdot_rows_r(x, j, je, blk, fn, prep, use, 7, r0); break;
		case 6: qdot_rows_r(x, j, je, blk, fn, prep, use, 6, r0); break;
		case 5: qdot_rows_r(x, j, je, blk, fn, prep, use, 5, r0); break;
		case 4: qdot_rows_r(x, j, je, blk, fn, prep, use, 4, r0); break;
#endif
		case 3: qdot_rows_r(x, j, je, blk, fn, prep, use, 3, r0); break;
		case 2: qdot_rows_r(x, j, je, blk, fn, prep, use, 2, r0); break;
		case 1: qdot_rows_r(x, j, je, blk, fn, prep, use, 1, r0); break;
		default: break;
		}
	}
}

QDOT_INLINE void qdot_rows(const struct kvp_qdot_args *x, int j0, int j1, const int blk,
			   QACC (*fn)(const void *w, int b, const void *a, QACC acc))
{
	qdot_rows_pu(x, j0, j1, blk, fn, NULL, NULL);
}

#define QDOT_ROWS(type, blk)                                                              \
	static void rows_##type(const struct kvp_qdot_args *x, int j0, int j1)            \
	{                                                                                  \
		qdot_rows(x, j0, j1, blk, blk_##type);                                     \
	}

/* The row loop of a type given as prep_<type> and use_<type>. */
#define QDOT_ROWS_PREP(type, blk)                                                         \
	static void rows_##type(const struct kvp_qdot_args *x, int j0, int j1)            \
	{                                                                                  \
		qdot_rows_pu(x, j0, j1, blk, NULL, prep_##type, use_##type);               \
	}

/* The row loops and the table of an ISA with a blk_ function for every block type. */
#define QDOT_EVERY_TYPE(table, isa, fb)                                                   \
	QDOT_ROWS(q4_0, KVP_QK)                                                            \
	QDOT_ROWS(q4_1, KVP_QK)                                                            \
	QDOT_ROWS(q5_0, KVP_QK)                                                            \
	QDOT_ROWS(q5_1, KVP_QK)                                                            \
	QDOT_ROWS(q8_0, KVP_QK)                                                            \
	QDOT_ROWS(q2_k, KVP_QK_K)                                                          \
	QDOT_ROWS(q3_k, KVP_QK_K)                                                          \
	QDOT_ROWS(q4_k, KVP_QK_K)                                                          \
	QDOT_ROWS(q5_k, KVP_QK_K)                                                          \
	QDOT_ROWS(q6_k, KVP_QK_K)                                                          \
	const struct kvp_cpu_qdot table = {                                                \
		.name = isa,                                                               \
		.dot = {                                                                   \
			[KVP_GGML_Q4_0] = rows_q4_0, [KVP_GGML_Q4_1] = rows_q4_1,          \
			[KVP_GGML_Q5_0] = rows_q5_0, [KVP_GGML_Q5_1] = rows_q5_1,          \
			[KVP_GGML_Q8_0] = rows_q8_0, [KVP_GGML_Q2_K] = rows_q2_k,          \
			[KVP_GGML_Q3_K] = rows_q3_k, [KVP_GGML_Q4_K] = rows_q4_k,          \
			[KVP_GGML_Q5_K] = rows_q5_k, [KVP_GGML_Q6_K] = rows_q6_k,          \
		},                                                                         \
		.fallback = fb,                                                            \
	};

#endif
