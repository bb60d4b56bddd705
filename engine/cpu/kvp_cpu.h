/*
 * kvp_cpu.h - the CPU backend's kernels: a thread pool, f32 matrix multiply, the
 * elementwise ops of a llama layer, and attention that reads K/V straight from the
 * paged block table (never from a contiguous copy).
 *
 * Vectorised with runtime dispatch (AVX-512 F/BW/VL, AVX2+FMA+F16C, portable C);
 * results agree across paths within float rounding. All pointers are f32 unless named
 * otherwise. Weights may also stay in the form a GGUF file stores them: F16, BF16 and
 * the quantized types (kvp_cpu_matmul_w).
 *
 * Private to the engine (engine/cpu/backend_cpu.c and the engine's tests): the rest of
 * kvprefix reaches these kernels only through kvp_engine.h. The KV block layout the
 * attention kernels read and write is the engine's, documented in kvp_engine.h.
 */
#ifndef KVP_CPU_H
#define KVP_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_engine.h"
#include "kvp_quant.h"
#include "kvp_status.h"

/* ---- threads ---------------------------------------------------------------- */

struct kvp_threadpool;

/* n_threads >= 1 (the caller's thread counts as one). KVP_EINVAL (n_threads < 1 or
 * > 1024), KVP_ENOMEM, KVP_EIO. Workers spin ~0.2 ms after a run, then sleep on a futex;
 * a run on a warm pool costs well under a microsecond. The pool also owns per-thread
 * scratch for the kernels (grown on demand, freed by destroy). */
int kvp_threadpool_create(int n_threads, struct kvp_threadpool **out);
void kvp_threadpool_destroy(struct kvp_threadpool *tp);
int kvp_threadpool_size(const struct kvp_threadpool *tp);
/* Run fn(arg, ith, nth) on every thread (ith = 0..nth-1, the caller is 0) and return
 * when all are done. Only one thread may call run on a pool at a time. */
void kvp_threadpool_run(struct kvp_threadpool *tp, void (*fn)(void *arg, int ith, int nth),
			void *arg);
/* Run fn(arg, t, ntasks) once for each task t = 0..ntasks-1 (0 <= ntasks <=
 * KVP_POOL_MAX_TASKS), each on whichever thread takes it first, the caller included,
 * and return when all are done: a thread the machine does not schedule holds up only
 * the tasks it has taken. Tasks of one run may run on one thread one after another, or
 * on several at once. One caller at a time, as run. */
#define KVP_POOL_MAX_TASKS 0xffff
void kvp_threadpool_run_tasks(struct kvp_threadpool *tp,
			      void (*fn)(void *arg, int t, int ntasks), void *arg, int ntasks);

/* ---- matrix multiply ---------------------------------------------------------- */

/* C (M, N) = A (M, K) . W (N, K)^T, or C += when accumulate. Row-major, contiguous rows
 * with the given leading dimensions (elements). Parallel over tp (may be NULL). C must
 * not overlap A or W. M <= 3 takes a matrix-vector path (N split across threads);
 * larger M a blocked GEMM that packs W per call (no allocation with a pool; with
 * tp NULL it mallocs 32 KiB, falling back to the matrix-vector path if that fails). */
void kvp_cpu_matmul(struct kvp_threadpool *tp, const float *a, size_t lda, const float *w,
		    size_t ldw, float *c, size_t ldc, int m, int n, int k, bool accumulate);

/*
 * Prepacked W: a weight matrix W (N, K) packed once into the blocked GEMM's panel
 * layout, so that kvp_cpu_matmul_packed skips the per-call packing (O(N K) memory
 * traffic, as much as the compute at a few tens of rows). The copy takes N K floats
 * (N rounded up to the tile width, K to 16) and belongs to the dispatched ISA at pack
 * time. W itself must outlive the packed copy: M <= 3 reads it (the matrix-vector path
 * streams W once either way), and so does a call made while kvp_cpu_force_isa has
 * selected another ISA than the one that packed.
 *
 * kvp_cpu_pack_w: KVP_EINVAL (ldw < k, n or k negative), KVP_ENOMEM.
 * kvp_cpu_matmul_packed: C (M, N) (+)= A (M, K) . W^T, as kvp_cpu_matmul on the
 * original W with the same arguments, bit for bit (the same tiles and summation order).
 */
struct kvp_packed_w;
int kvp_cpu_pack_w(const float *w, size_t ldw, int n, int k, struct kvp_packed_w **out);
void kvp_cpu_packed_free(struct kvp_packed_w *pw);
/* Bytes the packed copy holds (0 for an empty matrix). */
size_t kvp_cpu_packed_bytes(const struct kvp_packed_w *pw);
void kvp_cpu_matmul_packed(struct kvp_threadpool *tp, const float *a, size_t lda,
			   const struct kvp_packed_w *w, float *c, size_t ldc, int m,
			   bool accumulate);

/* ---- weights in their file form -------------------------------------------------
 *
 * A weight matrix as a GGUF file stores it: n rows (output features) of k elements
 * (input features) of a ggml type (kvp_quant.h), row r at data + r * row_bytes, each
 * row its k / block_elems blocks end to end. The kernels compute on these bytes; nothing
 * is widened at load. Types: those whose kvp_ggml_type()->weights is true (F32, F16,
 * BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
 */
struct kvp_cpu_weight {
	const void *data;
	uint32_t type;          /* enum kvp_ggml_type */
	int n;                  /* rows, >= 0 */
	int k;                  /* elements a row, >= 0, a multiple of the type's block */
	size_t row_bytes;       /* >= kvp_ggml_row_bytes(type, k) */
};

/* Rows of A up to which kvp_cpu_matmul_w takes the dot path (decode, and batches of a
 * few sequences). The dot path's cost grows with M from the first row, the GEMM's
 * hardly below a tile of rows: measured on AVX2 (2 threads), the GEMM overtakes it
 * between 12 rows (F16, Q8_0) and 32 (Q4_K, Q6_K, whose slices cost more to unpack). */
#define KVP_CPU_DOT_MAX_M 16

/* 0 when w describes a matrix the kernels take (data may be NULL only when n or k is 0);
 * KVP_EINVAL for a negative size, k off the type's block or row_bytes too small;
 * KVP_EUNSUPPORTED for a type the engine does not compute with. */
int kvp_cpu_weight_check(const struct kvp_cpu_weight *w);

/*
 * C (M, N) = A (M, K) . W^T, or C += when accumulate: A f32 rows lda apart (lda >= K),
 * C f32 rows ldc apart (ldc >= N), N = w->n, K = w->k, M = m >= 0. C must not overlap
 * A or W. Parallel over tp; only one thread may use tp at a time. With tp NULL, on the
 * calling thread, from any thread. The dispatched ISA (kvp_cpu_isa) picks the kernels.
 *
 * M <= KVP_CPU_DOT_MAX_M (decode), the dot path, split across threads by rows of W
 * (16 at a time), each weight byte read once:
 *   block types: each row of A is quantized per block to 8 bits on the calling thread
 *     (kvp_cpu_quant_q8_0 for the 32-element types, kvp_cpu_quant_q8_k for the K
 *     types), then dotted with each row of W in integers, the block scales applied in
 *     f32. Against dequantize (kvp_dequant_row) + a dot in double, the error of C[r][j]
 *     is at most
 *         sum_b (0.6 amax_b / 127 + e) sum_{i in b} |w_i|
 *           + 1e-5 sum_b amax_b sum_{i in b} (|w_i| + |o_i|)
 *     b: the activation blocks (32 or 256 elements), amax_b = max |a_i| over b, e = 4e-6
 *     for the 32-element types (their f16 activation scale's subnormal steps) and 0 for
 *     the K types, o_i the element's offset (its value with the quant bits zero: the
 *     min, -8 d and the like). The first term is the 8-bit rounding of A, half a step;
 *     the second f32 rounding, for K up to 2^14. Rows of A of the 32-element types must
 *     stay under 8.3e6 in magnitude (an f16 scale).
 *   F16, BF16: W converted to f32 in registers, dotted with the f32 rows of A, 4 rows
 *     of A at a time over a few rows of W that stay in L1; error 1e-5 sum |a_i w_i|.
 *   F32: kvp_cpu_matmul (its matrix-vector path for M <= 3, the GEMM above).
 * M > KVP_CPU_DOT_MAX_M (prefill), the blocked GEMM of kvp_cpu_matmul, each slice of W
 *   dequantized (kvp_dequant_row's values, exactly) into the packed-panel layout once a
 *   call: bit for bit kvp_cpu_matmul on the dequantized W (F32: on W itself). For block
 *   types A is first rounded as the dot path rounds it (each block quantized to 8 bits
 *   and read back), so the two paths compute the same sum in another order: a row's
 *   result does not depend on how many rows share the call beyond f32 rounding (what
 *   lets caching and batching keep the answer, DESIGN invariants 5 and 9), and the
 *   bound above holds for every M.
 *
 * Scratch: with a pool, its per-thread scratch (the quantized rows of A, on slot 0:
 * M * K * 1.14 bytes at most; the GEMM 2 KC NR floats a thread; the GEMM's rounded A,
 * M * K floats, on the caller's own slot), grown on first need and then reused: no
 * allocation once warm. With tp NULL, the dot path keeps A's blocks on the stack up to
 * 16 KiB and mallocs above; the GEMM mallocs its panels and rounded A per call.
 *
 * 0; KVP_EINVAL / KVP_EUNSUPPORTED as kvp_cpu_weight_check; KVP_ENOMEM when scratch
 * cannot be had, C untouched. Rows of A that are not finite give unspecified values in
 * the dot path (never undefined behaviour).
 */
int kvp_cpu_matmul_w(struct kvp_threadpool *tp, const float *a, size_t lda,
		     const struct kvp_cpu_weight *w, float *c, size_t ldc, int m, bool accumulate);

/* Row r (0 <= r < n) of W into out (k floats), exactly kvp_dequant_row's values: the
 * embedding lookup. Any thread, no allocation. 0, or as kvp_cpu_weight_check, or
 * KVP_EINVAL for r out of range. */
int kvp_cpu_weight_row(const struct kvp_cpu_weight *w, int r, float *out);

/* The activation quantizers of the dot path, k a multiple of the block (32, 256): per
 * block d = max |x| / 127, q = x / d rounded half to even (the same bits on every ISA),
 * Q8_0's d stored as f16, Q8_K's as f32 with bsums the sums of each 16 q. Any thread. */
void kvp_cpu_quant_q8_0(const float *x, struct kvp_block_q8_0 *y, int k);
void kvp_cpu_quant_q8_k(const float *x, struct kvp_block_q8_k *y, int k);

/* Peak f32 FMA throughput of this machine on n_threads, in GFLOP/s (2 flops per FMA),
 * measured with the widest vector unit the matmul uses: independent FMA chains in
 * registers on every thread of tp at once, best of 8 runs of ~20 ms. Takes about 0.2 s. */
double kvp_cpu_peak_gflops(struct kvp_threadpool *tp);
/* Name of the dispatched path: "avx512vnni" (avx512 with AVX512-VNNI dot kernels),
 * "avx512", "avx2" or "generic". */
const char *kvp_cpu_isa(void);
/* Tests and benchmarks: dispatch every kernel to the named path ("avx512vnni",
 * "avx512", "avx2", "generic"), or back to the detected one when name is NULL.
 * KVP_EUNSUPPORTED when this CPU lacks it. Not thread-safe against kernels running on
 * other threads. */
int kvp_cpu_force_isa(const char *name);

/* ---- elementwise -------------------------------------------------------------- */

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], i < n. out may equal x. */
void kvp_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* A rotary embedding: the first rope_dim dims of each head, pair i turned by
 * pos * freq[i]; pairs adjacent (x[2i], x[2i+1]) or halves (x[i], x[i + rope_dim/2]).
 * freq NULL: the plain base^(-2i/rope_dim). The tables it builds from freq are kept
 * per thread, rebuilt when freq's values change. */
struct kvp_cpu_rope {
	const double *freq;   /* (rope_dim / 2), or NULL */
	float base;           /* with freq NULL */
	int rope_dim;
	bool halves;
};
void kvp_cpu_rope_spec(float *x, int n_heads, int head_dim, const struct kvp_cpu_rope *r,
		       uint32_t pos);
/* The plain rope, adjacent pairs: theta = pos * base^(-2i/rope_dim). */
void kvp_cpu_rope(float *x, int n_heads, int head_dim, int rope_dim, uint32_t pos, float base);
/* gate[i] = silu(gate[i]) * up[i] */
void kvp_cpu_swiglu(float *gate, const float *up, int n);
/* x[i] += y[i] */
void kvp_cpu_add(float *x, const float *y, int n);
void kvp_cpu_f16_to_f32(float *dst, const uint16_t *src, size_t n);
void kvp_cpu_f32_to_f16(uint16_t *dst, const float *src, size_t n);
void kvp_cpu_bf16_to_f32(float *dst, const uint16_t *src, size_t n);

/* ---- batched rows (prefill) ------------------------------------------------------
 *
 * The ops above over n_rows rows (row r at x + r * ldx), split across tp (may be NULL)
 * in contiguous row ranges; bit-identical to calling the single-row op on each row.
 * Batches under 8192 elements run on the calling thread. At 512 rows of the default
 * model the single-row calls in a loop cost ~4 % of a layer on 2 threads, these ~2 %. */
void kvp_cpu_rmsnorm_rows(struct kvp_threadpool *tp, float *out, size_t ldo, const float *x,
			  size_t ldx, const float *w, int n_rows, int n, float eps);
/* row r at position pos0 + r */
void kvp_cpu_rope_rows(struct kvp_threadpool *tp, float *x, size_t ldx, int n_rows, int n_heads,
		       int head_dim, int rope_dim, uint32_t pos0, float base);
void kvp_cpu_rope_rows_spec(struct kvp_threadpool *tp, float *x, size_t ldx, int n_rows,
			    int n_heads, int head_dim, const struct kvp_cpu_rope *r, uint32_t pos0);
void kvp_cpu_swiglu_rows(struct kvp_threadpool *tp, float *gate, size_t ldg, const float *up,
			 size_t ldu, int n_rows, int n);
void kvp_cpu_add_rows(struct kvp_threadpool *tp, float *x, size_t ldx, const float *y, size_t ldy,
		      int n_rows, int n);

/* ---- paged KV and attention --------------------------------------------------- */

#define KVP_CPU_MAX_HEAD_DIM 2048

/* One layer's view of a sequence's block table. */
struct kvp_kv_view {
	void *const *blocks;     /* (n_blocks) block base pointers, in sequence order */
	uint32_t n_blocks;
	uint32_t block_tokens;
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t head_dim;
	uint32_t layer;
	enum kvp_kv_dtype dtype;
};

/* Store the K and V rows (n_kv_heads * head_dim each) of position pos. */
void kvp_cpu_kv_store(const struct kvp_kv_view *kv, uint32_t pos, const float *k, const float *v);
/* The same for positions pos0 .. pos0+n_rows-1, rows ldk / ldv apart, on tp. */
void kvp_cpu_kv_store_rows(struct kvp_threadpool *tp, const struct kvp_kv_view *kv, uint32_t pos0,
			   int n_rows, const float *k, size_t ldk, const float *v, size_t ldv);

/*
 * Causal attention for n query rows at positions pos0 .. pos0+n-1 (head_dim at most
 * KVP_CPU_MAX_HEAD_DIM):
 * q (n, n_heads * head_dim), out (n, n_heads * head_dim). Query head h reads kv head
 * h / (n_heads / n_kv_heads); row i attends to positions 0 .. pos0+i, whose K/V must
 * be in the blocks. Scale 1/sqrt(head_dim). Tiled over positions (64 a tile, across
 * block boundaries) with an online softmax; f16 K/V converted a tile at a time. Parallel
 * on tp over (kv head, chunk of rows) when n * group >= 8, else over (row, kv head).
 * The many-row path takes ~80 KiB of scratch per thread from the pool (malloc when tp
 * is NULL; without memory it falls back to the per-row path, which needs none).
 */
void kvp_cpu_attention(struct kvp_threadpool *tp, const struct kvp_kv_view *kv,
		       const float *q, float *out, uint32_t n, uint32_t pos0, uint32_t n_heads);

#endif
