/*
 * kvp_cuda.h - private to the engine: the CUDA backend's kernels, its cuBLAS GEMM and
 * the CUDA engine behind the backend table's "cuda" entry (backend_cuda.c).
 * Plain C; no CUDA type appears here (streams are void *, dtypes an enum), so C code
 * and tests include it without the CUDA headers.
 *
 * Every pointer named d_* or documented "device" is device memory. Kernel launchers
 * are asynchronous on the given stream and return KVP_OK, or KVP_EINVAL for bad sizes
 * (checked before launch), or KVP_EIO when the launch itself failed; errors inside a
 * kernel surface at the next kvp_device_stream_sync.
 *
 * Numerics (what the tests hold the kernels to, against the CPU reference in
 * engine/cpu): activations stay f32 (the residual stream, q/k/v, GEMM outputs) except
 * the inputs of GEMMs, which are in the weights' dtype (f16, or bf16 for bf16 models);
 * reductions (RMSNorm, softmax, attention dot products) accumulate in f32; KV is f16
 * in the paged layout of engine/cpu/kvp_cpu.h:
 *     (layer, K/V, kv_head, token, head_dim) per block, K stored after rotary.
 */
#ifndef KVP_CUDA_H
#define KVP_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvp_model;
struct kvp_engine_config;

enum kvp_cuda_dtype { KVP_CUDA_F32 = 0, KVP_CUDA_F16 = 1, KVP_CUDA_BF16 = 2 };

/* Bytes per element of a dtype. */
size_t kvp_cuda_dtype_size(enum kvp_cuda_dtype t);

/* One layer's view of a sequence's block table on the device; KV is always f16. */
struct kvp_cuda_kv {
	/* device array (n_blocks) of device block base pointers, 16-byte aligned for the
	 * tensor-core attention path (4-byte for the others); kvp_device_alloc's are */
	void *const *d_blocks;
	uint32_t n_blocks;
	uint32_t block_tokens;
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t head_dim;        /* even, at most KVP_CUDA_MAX_HEAD_DIM */
	uint32_t layer;
};

#define KVP_CUDA_MAX_HEAD_DIM 256

/* ---- kernels (engine/cuda/kernels.cu) --------------------------------------------- */

/* x (rows, dim) f32 = rows of the table (vocab, dim) in dtype t, picked by d_tokens
 * (device, rows u32, each < vocab: the caller checks on the host). */
int kvp_cuda_embed(void *stream, float *x, const void *table, enum kvp_cuda_dtype t,
		   const uint32_t *d_tokens, uint32_t rows, uint32_t dim);

/* out (rows, n) in out_t, rows ldo apart = x / sqrt(mean(x^2) + eps) * w, per row of x
 * (f32, ldx apart); w f32 (n). As kvp_cpu_rmsnorm, then rounded to out_t. */
int kvp_cuda_rmsnorm(void *stream, void *out, enum kvp_cuda_dtype out_t, size_t ldo,
		     const float *x, size_t ldx, const float *w, uint32_t rows, uint32_t n,
		     float eps);

/* Rotary embedding in place on f32 rows (row r at position pos0 + r), adjacent pairs,
 * the angles as kvp_cpu_rope computes them. */
int kvp_cuda_rope(void *stream, float *x, size_t ldx, uint32_t rows, uint32_t n_heads,
		  uint32_t head_dim, uint32_t rope_dim, uint32_t pos0, float base);

/* Write K and V rows (f32, n_kv_heads * head_dim each, ldk / ldv apart) of positions
 * pos0 .. pos0+rows-1 into the blocks of kv (layer kv->layer), as f16. */
int kvp_cuda_kv_store(void *stream, const struct kvp_cuda_kv *kv, uint32_t pos0,
		      uint32_t rows, const float *k, size_t ldk, const float *v, size_t ldv);

/*
 * Causal attention as kvp_cpu_attention: q (rows, n_heads * head_dim) f32 at positions
 * pos0 .. pos0+rows-1; row i attends to positions 0 .. pos0+i, read from the f16
 * blocks of kv; query head h reads kv head h / (n_heads / n_kv_heads); scale
 * 1/sqrt(head_dim). out (rows, n_heads * head_dim) in out_t. Prefill (many rows) is
 * tiled over positions with an online softmax; decode (few rows) splits the positions
 * across blocks of threads and merges the partial softmaxes, in scratch.
 * scratch: device memory of at least kvp_cuda_attention_scratch_bytes(...) bytes for
 * the largest call that will be made: max_rows its rows, max_positions its pos0 + rows.
 * Paths: rows < 16 split the positions across blocks (decode); more rows with head_dim
 * 64 or 128 on sm_80+ (q and out 8-byte aligned) use the tensor cores, q rounded to f16
 * for Q.K^T (error about 1e-3 of max |out| at ordinary score spreads, more for very
 * peaked attention); any other even head_dim takes the same split kernel with one chunk.
 */
size_t kvp_cuda_attention_scratch_bytes(uint32_t max_rows, uint32_t n_heads, uint32_t head_dim,
					uint32_t max_positions);
int kvp_cuda_attention(void *stream, const struct kvp_cuda_kv *kv, const float *q, void *out,
		       enum kvp_cuda_dtype out_t, uint32_t rows, uint32_t pos0, uint32_t n_heads,
		       void *scratch, size_t scratch_bytes);

/* out (rows, n) in out_t, ldo apart = silu(gate) * up; gate and up f32 (ldg, ldu). */
int kvp_cuda_swiglu(void *stream, void *out, enum kvp_cuda_dtype out_t, size_t ldo,
		    const float *gate, size_t ldg, const float *up, size_t ldu, uint32_t rows,
		    uint32_t n);

/* dst (n) in dst_t = src (n) f32, rounded to nearest even; and back to f32. */
int kvp_cuda_from_f32(void *stream, void *dst, enum kvp_cuda_dtype dst_t, const float *src,
		      size_t n);
int kvp_cuda_to_f32(void *stream, float *dst, const void *src, enum kvp_cuda_dtype src_t,
		    size_t n);

/* ---- cuBLAS (engine/cuda/blas.c) --------------------------------------------------
 * libcublas is opened with dlopen at create time (libcublas.so.13, then .so), so that
 * kvprefixd does not depend on it unless the CUDA backend is used. */

struct kvp_cuda_blas;
/* KVP_EUNSUPPORTED (no libcublas: err says which names were tried), KVP_EIO. */
int kvp_cuda_blas_create(void *stream, struct kvp_cuda_blas **out, char *err, size_t errlen);
void kvp_cuda_blas_destroy(struct kvp_cuda_blas *b);
/* C (m, n) f32 (+)= A (m, k) . W (n, k)^T; row-major, leading dimensions in elements;
 * A and W both in t (F16, BF16 or F32), accumulation in f32 (tensor cores for
 * F16/BF16). KVP_EINVAL, KVP_EIO. */
int kvp_cuda_gemm(struct kvp_cuda_blas *b, const void *a, size_t lda, const void *w, size_t ldw,
		  enum kvp_cuda_dtype t, float *c, size_t ldc, int m, int n, int k,
		  bool accumulate);

/* ---- the CUDA engine (engine/cuda/engine_cuda.c) -----------------------------------
 * Weights are uploaded once at create: the layer matrices, the embedding and the output
 * head in f16 (bf16 when the model file's matrices are bf16; f32 files are rounded to
 * f16), the norm vectors in f32. */

struct kvp_cuda_engine;
int kvp_cuda_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
			   struct kvp_cuda_engine **out, char *err, size_t errlen);
void kvp_cuda_engine_destroy(struct kvp_cuda_engine *e);
/* One sequence of kvp_engine_forward_batch, which has checked the sizes, positions and
 * token ids: blocks hold device pointers (a pool attached with kvp_pool_attach_device);
 * logits (host, vocab floats) when non-NULL. KV is f16 (the table offers nothing
 * else). */
int kvp_cuda_engine_forward(struct kvp_cuda_engine *e, void *const *blocks, uint32_t n_blocks,
			    const uint32_t *tokens, uint32_t n, uint32_t pos0,
			    uint32_t kv_write_from, float *logits);
/* Device bytes the weights take. */
size_t kvp_cuda_engine_weight_bytes(const struct kvp_cuda_engine *e);
/* Bytes of one KV block (f16, the layout of kvp_engine.h). */
size_t kvp_cuda_engine_block_bytes(const struct kvp_cuda_engine *e);
/* The device's dense F16 tensor-core peak, TFLOP/s (kvp_device_info.f16_tflops). */
double kvp_cuda_engine_peak_tflops(const struct kvp_cuda_engine *e);

#ifdef __cplusplus
}
#endif
#endif
