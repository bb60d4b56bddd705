/*
 * cpu_impl.h - private to engine/cpu: the per-ISA kernel table, the per-thread
 * scratch of the pool, and the small helpers the kernel files share.
 *
 * One kernel table per instruction set, each built from its own file with its own
 * compiler flags (engine/cpu/CMakeLists.txt):
 *
 *     kern_avx512.c  -mavx512f -mavx512vl -mavx512bw -mavx2 -mfma -mf16c   12x32 GEMM tile
 *                    (two tables: avx512, and avx512vnni whose dot kernels are
 *                    qdot_avx512vnni.c's, built with -mavx512vnni as well)
 *     kern_avx2.c    -mavx2 -mfma -mf16c                                     6x16 GEMM tile
 *     kern_generic.c (baseline x86-64 / any target)                          4x8  GEMM tile
 *
 * Everything but the GEMM tile and the peak loop is written once, in kern_body.h,
 * against a handful of vector macros (VF_*) that each kernel file defines before
 * including it. matmul.c picks the table at run time (__builtin_cpu_supports) and
 * the drivers (matmul.c, matmul_w.c, ops.c, attention.c) only ever call through it.
 * Each kern table points at its ISA's dot kernels for weights in their file form
 * (qdot_avx512vnni.c, qdot_avx512.c, qdot_avx2.c, qdot_generic.c; their loops in
 * qdot_body.h), so kvp_cpu_force_isa switches both.
 */
#ifndef KVP_CPU_IMPL_H
#define KVP_CPU_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cpu.h"
#include "kvp_half.h"

/* Attention: tokens per K/V tile, and the most query vectors one work item holds. */
#define KVP_ATTN_TILE 64
#define KVP_ATTN_MAX_Q 64
/* The small (decode) attention path: a tile's positions, and the queries and outputs
 * it keeps on the stack. */
#define KVP_ATTN_SMALL_TILE 16    /* a multiple of every VLEN */
#define KVP_ATTN_SMALL_MAX_D 256
#define KVP_ATTN_SMALL_MAX_G 8

/* Arguments of one attention call, shared by every work item. */
struct kvp_attn_args {
	const struct kvp_kv_view *kv;
	const float *q;         /* (n, n_heads * head_dim) */
	float *out;             /* (n, n_heads * head_dim) */
	uint32_t n;
	uint32_t pos0;
	uint32_t n_heads;
	uint32_t group;         /* n_heads / n_kv_heads */
	float scale;            /* 1 / sqrt(head_dim) */
};

struct kvp_cpu_qdot;

struct kvp_cpu_kern {
	const char *name;
	int mr;                 /* GEMM tile rows (of A and C) */
	int nr;                 /* GEMM tile columns (of W^T and C); packed panel width */
	int kc;                 /* K block: one packed W slice is (kc, nr) */
	int vlen;               /* floats per vector register */

	/*
	 * C (mr, nr) (+)= A (mr, kc) . P (kc, NR): A rows lda apart, P a packed W slice
	 * (pack_w), C rows ldc apart; mr <= MR, nr <= NR. load_c: add to C, else
	 * overwrite it.
	 */
	void (*ukr)(int mr, int nr, int kc, const float *a, size_t lda, const float *p,
		    float *c, size_t ldc, bool load_c);
	/* P (kc, NR) <- W (nr, kc)^T, rows of W ldw apart; columns nr..NR-1 of P zero.
	 * P is 64-byte aligned. */
	void (*pack_w)(const float *w, size_t ldw, int nr, int kc, float *p);
	/* C (m, n) (+)= A (m, k) . W (n, k)^T for m <= 8: the matrix-vector path. */
	void (*gemv)(const float *a, size_t lda, int m, const float *w, size_t ldw, int n,
		     int k, float *c, size_t ldc, bool accumulate);
	/* The same with W in f16 or bf16 (ldw in elements), converted in registers. */
	void (*gemv_f16)(const float *a, size_t lda, int m, const uint16_t *w, size_t ldw,
			 int n, int k, float *c, size_t ldc, bool accumulate);
	void (*gemv_bf16)(const float *a, size_t lda, int m, const uint16_t *w, size_t ldw,
			  int n, int k, float *c, size_t ldc, bool accumulate);
	/* Independent FMAs in registers, iters times; returns flops done. */
	double (*peak)(long iters);

	void (*rmsnorm)(float *out, const float *x, const float *w, int n, float eps);
	void (*swiglu)(float *gate, const float *up, int n);
	void (*add)(float *x, const float *y, int n);
	/* x[2i], x[2i+1] of each head, i < pairs: x * cc + swap_pairs(x) * ss, with
	 * cc = (c0, c0, c1, c1, ..) and ss = (-s0, s0, -s1, s1, ..) (2 pairs floats). */
	void (*rope)(float *x, int n_heads, int head_dim, int pairs, const float *cc,
		     const float *ss);
	void (*f16_to_f32)(float *dst, const uint16_t *src, size_t n);
	void (*f32_to_f16)(uint16_t *dst, const float *src, size_t n);

	/* Attention for query rows [r0, r1) of kv head hk, all its query heads, with
	 * scratch of kvp_attn_big_scratch_floats() floats (64-byte aligned). */
	void (*attn_big)(const struct kvp_attn_args *args, uint32_t hk, uint32_t r0,
			 uint32_t r1, float *scratch);
	/* Attention for query row r of kv head hk; needs no heap (head_dim <= 256). */
	void (*attn_small)(const struct kvp_attn_args *args, uint32_t r, uint32_t hk);

	/* The dot kernels on weights in their file form (qdot_<isa>.c). */
	const struct kvp_cpu_qdot *qdot;
};

extern const struct kvp_cpu_kern kvp_cpu_kern_generic;
#if defined(__x86_64__)
extern const struct kvp_cpu_kern kvp_cpu_kern_avx2;
extern const struct kvp_cpu_kern kvp_cpu_kern_avx512;
extern const struct kvp_cpu_kern kvp_cpu_kern_avx512vnni;   /* avx512's, VNNI dot kernels */
#endif

/* The dispatched table (kvp_cpu_force_isa can change it). */
const struct kvp_cpu_kern *kvp_cpu_kern(void);

/* ---- pool internals ---------------------------------------------------------------- */

/* Per-thread scratch of at least bytes, 64-byte aligned, owned by the pool and valid
 * until the next call for the same ith; only the task ith of a kvp_cpu_parallel run
 * (or thread ith of a kvp_threadpool_run) may ask for slot ith, from inside the run,
 * except slot 0, which is also the calling thread's between runs (a buffer it fills and
 * then shares with a run, as matmul_w.c does with the quantized activations). Slot
 * KVP_POOL_CALLER_SLOT is the calling thread's alone, between runs: a buffer it fills
 * and shares with runs that use their own slots, 0 included (matmul_w.c's rounded
 * activations for the GEMM). NULL when it cannot grow (the caller takes a path that
 * needs none, or reports KVP_ENOMEM). */
#define KVP_POOL_CALLER_SLOT (-1)
void *kvp_threadpool_scratch(struct kvp_threadpool *tp, int ith, size_t bytes);

/* Run fn(arg, ith, nth) for ith = 0..nth-1, nth the pool's size, as tasks
 * (kvp_threadpool_run_tasks): each share taken by the first thread free for it, so a
 * thread the machine has not scheduled yet does not hold up the others, which take its
 * share. On the calling thread alone (ith 0 of 1) when tp is NULL. */
void kvp_cpu_parallel(struct kvp_threadpool *tp, void (*fn)(void *arg, int ith, int nth),
		      void *arg);

/* The matrix-vector path's rows of A a kernel call takes (matmul.c, matmul_w.c): 5 to
 * KVP_GEMV_WIDE_ROWS at once while they fit in KVP_GEMV_WIDE_A_BYTES, each row of W
 * against all of them (kern_body.h gemv_col, best where W streams from memory), else
 * KVP_GEMV_ROWS at a time in tiles over a chunk of W that stays in L1. */
#define KVP_GEMV_ROWS 4
#define KVP_GEMV_WIDE_ROWS 8
#define KVP_GEMV_WIDE_A_BYTES 16384
static inline bool kvp_cpu_gemv_wide(int m, int k)
{
	return m > KVP_GEMV_ROWS && m <= KVP_GEMV_WIDE_ROWS &&
	       (size_t)m * (size_t)k * sizeof(float) <= KVP_GEMV_WIDE_A_BYTES;
}

/* Rows [r0, r1) of m for thread ith of nth: contiguous near-equal ranges (the batched
 * row ops, and the matmul's split of panels or rows). */
static inline void kvp_cpu_split_rows(int m, int ith, int nth, int *r0, int *r1)
{
	int q = m / nth, r = m % nth;
	*r0 = ith * q + (ith < r ? ith : r);
	*r1 = *r0 + q + (ith < r ? 1 : 0);
}

/* Batched row ops run on one thread below this many elements. */
#define KVP_CPU_ROWS_MIN_PARALLEL 8192

/* ---- weights in their file form (matmul_w.c, qdot_<isa>.c) ---------------------------- */

/*
 * One dot-path call: C[r][j] (+)= A_r . W_j for r < m and W rows j of [j0, j1), where
 * A_r is row r of A quantized per block (kvp_cpu_quant_q8_0 for the 32-element types,
 * kvp_cpu_quant_q8_k for the K types) and W_j row j of W in its file form. The block
 * products are integer; each block's scales are applied in f32.
 */
struct kvp_qdot_args {
	const char *w;          /* row j of W at w + j * w_stride */
	size_t w_stride;
	const char *aq;         /* quantized row r of A at aq + r * aq_stride */
	size_t aq_stride;
	int m;                  /* rows of A, 1 .. KVP_CPU_DOT_MAX_M */
	int k;                  /* elements a row, a multiple of the block */
	float *c;               /* (m, n) rows ldc apart */
	size_t ldc;
	bool accumulate;
};

typedef void (*kvp_qdot_fn)(const struct kvp_qdot_args *x, int j0, int j1);

#define KVP_QDOT_NTYPES 31      /* ggml type ids 0 .. 30 (BF16) */

/* One instruction set's dot kernels, indexed by ggml type id; a type it leaves NULL is
 * taken from the fallback table (avx512vnni -> avx512 -> avx2 -> generic, which has
 * every block type with weights true). F32, F16 and BF16 go through the kern table's
 * gemv entries. */
struct kvp_cpu_qdot {
	const char *name;
	kvp_qdot_fn dot[KVP_QDOT_NTYPES];
	const struct kvp_cpu_qdot *fallback;
};

extern const struct kvp_cpu_qdot kvp_cpu_qdot_generic;
#if defined(__x86_64__)
extern const struct kvp_cpu_qdot kvp_cpu_qdot_avx2;
extern const struct kvp_cpu_qdot kvp_cpu_qdot_avx512;
extern const struct kvp_cpu_qdot kvp_cpu_qdot_avx512vnni;
#endif

/*
 * W as the blocked GEMM driver (matmul.c) reads it, whatever its type: row j's bytes
 * at base + j * stride; elements [kb, kb + kc) of a row start at byte
 * kb / blk_elems * blk_bytes (kb and kc multiples of the block). fill makes the packed
 * slice P (kc, NR) of rows [n0, n0 + nr) as kern->pack_w lays it out, with tmp
 * (NR * KC floats, 64-byte aligned) to work in.
 */
struct kvp_gemm_w {
	const char *base;
	size_t stride;
	uint32_t type;
	uint32_t blk_elems, blk_bytes;
	void (*fill)(const struct kvp_gemm_w *w, const struct kvp_cpu_kern *kn, int n0, int nr,
		     int kb, int kc, float *p, float *tmp);
};

/* C (m, n) (+)= A (m, k) . W^T through the blocked GEMM, each W slice made by w->fill
 * once per call. Scratch: 2 * KC * NR floats per thread, from the pool (reserved on
 * every thread before C is touched) or, with tp NULL, malloc'd for the call.
 * 0, or KVP_ENOMEM with C untouched. */
int kvp_cpu_gemm_w(struct kvp_threadpool *tp, const float *a, size_t lda,
		   const struct kvp_gemm_w *w, float *c, size_t ldc, int m, int n, int k,
		   bool accumulate);

/* ---- shared helpers ------------------------------------------------------------------ */

/* Exact IEEE half <-> single conversions (kvp_f16_to_f32, kvp_f32_to_f16) come from
 * common/kvp_half.h, included above. */

/* Floats of scratch one attn_big work item needs for rp query vectors:
 *   qt (d, rp)  q^T scaled      ot (d, rp)  output^T
 *   st (TILE, rp) scores/probs  m, l, lim (rp) running max, sum, last position
 *   kt, vt (TILE, d)            f16 K/V converted to f32 */
static inline size_t kvp_attn_big_scratch_floats(uint32_t d, uint32_t rp)
{
	return (size_t)2 * d * rp + (size_t)KVP_ATTN_TILE * rp + 3 * (size_t)rp +
	       (size_t)2 * KVP_ATTN_TILE * d + 64;
}

/* Element offset of K (which 0) or V (which 1) of kv head h, token j in a block. */
static inline size_t kvp_kv_offset(const struct kvp_kv_view *kv, uint32_t which, uint32_t h,
				   uint32_t j)
{
	return ((((size_t)kv->layer * 2 + which) * kv->n_kv_heads + h) * kv->block_tokens + j) *
	       kv->head_dim;
}

/* Address of the K or V row of kv head h at sequence position pos. */
static inline const void *kvp_kv_row(const struct kvp_kv_view *kv, uint32_t which, uint32_t h,
				     uint32_t pos)
{
	size_t esz = kv->dtype == KVP_KV_F16 ? 2 : 4;
	const char *base = kv->blocks[pos / kv->block_tokens];
	return base + kvp_kv_offset(kv, which, h, pos % kv->block_tokens) * esz;
}

#endif
