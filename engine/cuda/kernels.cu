/*
 * kernels.cu - the CUDA backend's kernels: embedding rows, RMSNorm, rotary embedding,
 * SwiGLU, dtype conversions, storing K/V into the paged blocks, and causal attention
 * that reads K/V straight from the block table. kvp_cuda.h is the contract; engine/cpu
 * is the reference each kernel mirrors and is tested against.
 *
 * Attention takes one of three paths, picked per call from rows, head_dim and the device:
 *
 *   rows < 16 (decode)          split-K: each row's positions 0..pos0+r are cut into
 *                               chunks (multiples of 64 positions, at most 64 / rows of
 *                               them); a block of threads per (row, kv head, chunk) leaves
 *                               a partial (max, sum, acc) in scratch, a merge kernel
 *                               combines them (one chunk: the output is written at once)
 *   rows >= 16, head_dim 64 or 128, sm_80 or later, q and out 8-byte aligned
 *                               tensor cores, flash-attention style (below)
 *   rows >= 16 otherwise        the split-K kernel with one chunk per row (SIMT, any
 *                               even head_dim up to KVP_CUDA_MAX_HEAD_DIM), no merge
 *
 * The tensor-core path: a block of 4 warps per (query head, 64 query rows), 16 rows a
 * warp; K/V tiles of 64 positions gathered row by row from whatever blocks hold them
 * (position p: block p / B, row p % B) into shared memory by cp.async, two buffers so
 * that tile t+1 loads while tile t computes:
 *
 *                 positions ──▶  tile 0   tile 1   ...   tile t   (last: the diagonal)
 *   d_blocks[p/B] ──cp.async──▶  Ks, Vs (64, D+8) f16 each, x2 buffers
 *   warp 0  rows r0    .. r0+15   S = Q Ks^T        (16, 64)  mma.sync m16n8k16, f32
 *   warp 1  rows r0+16 .. r0+31   S *= scale log2(e); S = -inf where p > pos0 + row
 *   warp 2  rows r0+32 .. r0+47   m' = max(m, rowmax S); P = 2^(S - m') as f16
 *   warp 3  rows r0+48 .. r0+63   O = O 2^(m - m') + P Vs   (16, D)  f32 in registers
 *                                 l = l 2^(m - m') + rowsum P
 *   out = O / l, rounded to out_t.  Blocks of the last (longest) row tiles start first.
 *
 * Numerics (tests hold these against engine/cpu):
 *   - every reduction accumulates in f32: RMSNorm's sum of squares, dot products,
 *     softmax sums, attention outputs. RMSNorm, SwiGLU and the decode/SIMT attention do
 *     the CPU's arithmetic in another summation order (a few ulp).
 *   - rope angles are made in double as kvp_cpu_rope makes them (theta = pos *
 *     base^(-2i/rope_dim)), rounded to float; the rotation is float, as on the CPU.
 *   - K/V are stored f16, rounded to nearest even: the same bytes as kvp_cpu_kv_store.
 *   - the tensor-core path rounds q to f16 for the Q K^T product (q itself is not
 *     scaled first; the scale is applied to the f32 scores) and the probabilities P to
 *     f16 for P V; l sums the rounded P, so the weights of each output still add up to
 *     one. The error, relative to the largest element of an output vector, grows with
 *     the spread of the scores: ~5e-4 for scores of standard deviation ~1, 1.5e-3 at ~5,
 *     2.5e-3 at ~10. The SIMT paths stay within ~2e-6.
 *   - outputs in f16 or bf16 add their own rounding (2^-11, 2^-8 relative).
 *
 * Block base pointers must be 16-byte aligned for the tensor-core path (cp.async), 4-byte
 * for the rest; a pool from kvp_device_alloc is (block i at base + i * block_bytes,
 * block_bytes a multiple of 4 * head_dim). Every launcher
 * checks its sizes first (KVP_EINVAL, nothing launched; every size must be positive),
 * launches on the given stream, allocates nothing, and reports a failed launch as KVP_EIO.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvp_cuda.h"

#define FULL_MASK 0xffffffffu
#define ROW_THREADS 256            /* elementwise kernels: a block per row */
#define POS_MAX 0x7fffffffu        /* pos0 + rows is at most this */

/* attention: the choice of path */
#define ATTN_DECODE_ROWS 16        /* fewer rows take the split-K path */
#define ATTN_SPLIT 64              /* split-K aims at rows * chunks = this, per kv head */
#define ATTN_MIN_CHUNK 64          /* split-K chunks are multiples of this many positions */

/* attention: the SIMT kernel (decode, and the fallback for rows >= 16) */
#define SIMT_THREADS 128
#define SIMT_WARPS (SIMT_THREADS / 32)
#define SIMT_TILE 64               /* positions per tile (two per lane in the softmax) */
#define SIMT_GMAX 8                /* query heads of one kv head per block of threads */
/* (head, pair of head_dim) items a thread accumulates */
#define SIMT_ITEMS (SIMT_GMAX * KVP_CUDA_MAX_HEAD_DIM / 2 / SIMT_THREADS)

/* attention: the tensor-core kernel */
#define TC_BM 64                   /* query rows per block of threads, 16 per warp */
#define TC_BN 64                   /* positions per K/V tile */
#define TC_THREADS 128

/* ---- small helpers ------------------------------------------------------------------- */

static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

/* store one value, rounded to nearest even */
static __device__ __forceinline__ void put(float *p, float v) { *p = v; }
static __device__ __forceinline__ void put(__half *p, float v) { *p = __float2half_rn(v); }
static __device__ __forceinline__ void put(__nv_bfloat16 *p, float v)
{
	*p = __float2bfloat16_rn(v);
}

static __device__ __forceinline__ uint32_t min_u32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

static __device__ __forceinline__ uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static __device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(FULL_MASK, v, o);
	return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
	return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); red holds 32 floats.
 * Every thread gets the sum. */
static __device__ float block_sum(float v, float *red)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	v = warp_sum(v);
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	if (warp == 0) {
		v = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f;
		v = warp_sum(v);
		if (lane == 0)
			red[0] = v;
	}
	__syncthreads();
	return red[0];
}

/* Clear a stale error left by an earlier runtime call, so that the check after a launch
 * reports that launch. (A sticky error, from a kernel that faulted, stays and fails the
 * launch itself.) */
static void clear_error(void)
{
	(void)cudaGetLastError();
}

/* Whether the launch just made succeeded. A failure is left pending (peeked, not
 * cleared), so that kvp_device_last_error can still name it; the next launcher's
 * clear_error drops it. */
static int launched(void)
{
	return cudaPeekAtLastError() == cudaSuccess ? KVP_OK : KVP_EIO;
}

static bool dtype_ok(enum kvp_cuda_dtype t)
{
	return t == KVP_CUDA_F32 || t == KVP_CUDA_F16 || t == KVP_CUDA_BF16;
}

/* Blocks for a grid-stride loop over n elements. */
static unsigned grid_for(size_t n)
{
	size_t b = (n + ROW_THREADS - 1) / ROW_THREADS;
	return (unsigned)(b < 65536 ? b : 65536);
}

/* ---- dtypes ---------------------------------------------------------------------------- */

extern "C" size_t kvp_cuda_dtype_size(enum kvp_cuda_dtype t)
{
	switch (t) {
	case KVP_CUDA_F32: return 4;
	case KVP_CUDA_F16: return 2;
	case KVP_CUDA_BF16: return 2;
	}
	return 0;
}

template <typename T>
static __global__ void from_f32_kernel(T *dst, const float *src, size_t n)
{
	const size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		put(&dst[i], src[i]);
}

template <typename T>
static __global__ void to_f32_kernel(float *dst, const T *src, size_t n)
{
	const size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		dst[i] = to_f32(src[i]);
}

extern "C" int kvp_cuda_from_f32(void *stream, void *dst, enum kvp_cuda_dtype dst_t,
				 const float *src, size_t n)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!dst || !src || n == 0 || !dtype_ok(dst_t))
		return KVP_EINVAL;
	clear_error();
	switch (dst_t) {
	case KVP_CUDA_F32:
		if (cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, s) !=
		    cudaSuccess)
			return KVP_EIO;
		return KVP_OK;
	case KVP_CUDA_F16:
		from_f32_kernel<<<grid_for(n), ROW_THREADS, 0, s>>>((__half *)dst, src, n);
		break;
	case KVP_CUDA_BF16:
		from_f32_kernel<<<grid_for(n), ROW_THREADS, 0, s>>>((__nv_bfloat16 *)dst, src, n);
		break;
	}
	return launched();
}

extern "C" int kvp_cuda_to_f32(void *stream, float *dst, const void *src,
			       enum kvp_cuda_dtype src_t, size_t n)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!dst || !src || n == 0 || !dtype_ok(src_t))
		return KVP_EINVAL;
	clear_error();
	switch (src_t) {
	case KVP_CUDA_F32:
		if (cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, s) !=
		    cudaSuccess)
			return KVP_EIO;
		return KVP_OK;
	case KVP_CUDA_F16:
		to_f32_kernel<<<grid_for(n), ROW_THREADS, 0, s>>>(dst, (const __half *)src, n);
		break;
	case KVP_CUDA_BF16:
		to_f32_kernel<<<grid_for(n), ROW_THREADS, 0, s>>>(dst, (const __nv_bfloat16 *)src,
								  n);
		break;
	}
	return launched();
}

/* ---- embedding --------------------------------------------------------------------- */

/* a block per row: x[row] = table[tokens[row]] */
template <typename T>
static __global__ void embed_kernel(float *x, const T *table, const uint32_t *tokens,
				    uint32_t dim)
{
	const T *src = table + (size_t)tokens[blockIdx.x] * dim;
	float *dst = x + (size_t)blockIdx.x * dim;
	for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
		dst[i] = to_f32(src[i]);
}

extern "C" int kvp_cuda_embed(void *stream, float *x, const void *table, enum kvp_cuda_dtype t,
			      const uint32_t *d_tokens, uint32_t rows, uint32_t dim)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!x || !table || !d_tokens || rows == 0 || rows > POS_MAX || dim == 0 ||
	    !dtype_ok(t))
		return KVP_EINVAL;
	clear_error();
	switch (t) {
	case KVP_CUDA_F32:
		embed_kernel<<<rows, ROW_THREADS, 0, s>>>(x, (const float *)table, d_tokens, dim);
		break;
	case KVP_CUDA_F16:
		embed_kernel<<<rows, ROW_THREADS, 0, s>>>(x, (const __half *)table, d_tokens, dim);
		break;
	case KVP_CUDA_BF16:
		embed_kernel<<<rows, ROW_THREADS, 0, s>>>(x, (const __nv_bfloat16 *)table, d_tokens,
							  dim);
		break;
	}
	return launched();
}

/* ---- RMSNorm ------------------------------------------------------------------------- */

/* a block per row; as kvp_cpu_rmsnorm: scale = 1 / sqrtf(mean(x^2) + eps), x * scale * w.
 * out may be x (same rows, f32): each element is read before it is written, by the same
 * thread, after the sum is complete. */
template <typename T>
static __global__ void rmsnorm_kernel(T *out, size_t ldo, const float *x, size_t ldx,
				      const float *w, uint32_t n, float eps)
{
	__shared__ float red[32];
	const float *xr = x + (size_t)blockIdx.x * ldx;
	T *orow = out + (size_t)blockIdx.x * ldo;

	float ss = 0.0f;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		ss = fmaf(xr[i], xr[i], ss);
	ss = block_sum(ss, red);
	const float scale = 1.0f / sqrtf(ss / (float)n + eps);
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		put(&orow[i], xr[i] * scale * w[i]);
}

extern "C" int kvp_cuda_rmsnorm(void *stream, void *out, enum kvp_cuda_dtype out_t, size_t ldo,
				const float *x, size_t ldx, const float *w, uint32_t rows,
				uint32_t n, float eps)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!out || !x || !w || rows == 0 || rows > POS_MAX || n == 0 || ldo < n || ldx < n ||
	    !dtype_ok(out_t))
		return KVP_EINVAL;
	clear_error();
	switch (out_t) {
	case KVP_CUDA_F32:
		rmsnorm_kernel<<<rows, ROW_THREADS, 0, s>>>((float *)out, ldo, x, ldx, w, n, eps);
		break;
	case KVP_CUDA_F16:
		rmsnorm_kernel<<<rows, ROW_THREADS, 0, s>>>((__half *)out, ldo, x, ldx, w, n, eps);
		break;
	case KVP_CUDA_BF16:
		rmsnorm_kernel<<<rows, ROW_THREADS, 0, s>>>((__nv_bfloat16 *)out, ldo, x, ldx, w, n,
							    eps);
		break;
	}
	return launched();
}

/* ---- rotary embedding ------------------------------------------------------------------ */

/*
 * A block per row. The cosines and sines of the row's position are made once per pair
 * (shared by every head) in double, as kvp_cpu_rope makes them, and rounded to float;
 * the rotation is the CPU's, in float:
 *     x0' = x0 c - x1 s,  x1' = x1 c + x0 s   (each as fma(other, +-s, self * c))
 */
static __global__ void rope_kernel(float *x, size_t ldx, uint32_t n_heads, uint32_t head_dim,
				   uint32_t rope_dim, uint32_t pos0, float base)
{
	__shared__ float cs[KVP_CUDA_MAX_HEAD_DIM / 2], sn[KVP_CUDA_MAX_HEAD_DIM / 2];
	const uint32_t pairs = rope_dim / 2, pos = pos0 + blockIdx.x;
	float *xr = x + (size_t)blockIdx.x * ldx;

	for (uint32_t i = threadIdx.x; i < pairs; i += blockDim.x) {
		const double f = pow((double)base, -2.0 * (double)i / (double)rope_dim);
		double sd, cd;
		sincos((double)pos * f, &sd, &cd);
		cs[i] = (float)cd;
		sn[i] = (float)sd;
	}
	__syncthreads();
	for (uint32_t it = threadIdx.x; it < n_heads * pairs; it += blockDim.x) {
		const uint32_t h = it / pairs, i = it % pairs;
		float *p = xr + (size_t)h * head_dim + 2 * i;
		const float x0 = p[0], x1 = p[1], c = cs[i], sv = sn[i];
		p[0] = fmaf(x1, -sv, x0 * c);
		p[1] = fmaf(x0, sv, x1 * c);
	}
}

extern "C" int kvp_cuda_rope(void *stream, float *x, size_t ldx, uint32_t rows, uint32_t n_heads,
			     uint32_t head_dim, uint32_t rope_dim, uint32_t pos0, float base)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!x || rows == 0 || n_heads == 0 || head_dim == 0 || head_dim % 2 != 0 ||
	    head_dim > KVP_CUDA_MAX_HEAD_DIM || rope_dim > head_dim ||
	    (size_t)n_heads * head_dim > ldx || (uint64_t)n_heads * head_dim > UINT32_MAX ||
	    (uint64_t)pos0 + rows > POS_MAX || !(base > 0.0f))
		return KVP_EINVAL;
	if (rope_dim / 2 == 0)
		return KVP_OK; /* nothing rotates, as on the CPU */
	clear_error();
	rope_kernel<<<rows, ROW_THREADS, 0, s>>>(x, ldx, n_heads, head_dim, rope_dim, pos0, base);
	return launched();
}

/* ---- SwiGLU -------------------------------------------------------------------------- */

/* a block per row: out = g / (1 + e^-g) * u, as kvp_cpu_swiglu; out may be gate (f32) */
template <typename T>
static __global__ void swiglu_kernel(T *out, size_t ldo, const float *gate, size_t ldg,
				     const float *up, size_t ldu, uint32_t n)
{
	const float *g = gate + (size_t)blockIdx.x * ldg, *u = up + (size_t)blockIdx.x * ldu;
	T *orow = out + (size_t)blockIdx.x * ldo;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
		const float gv = g[i];
		put(&orow[i], gv / (1.0f + expf(-gv)) * u[i]);
	}
}

extern "C" int kvp_cuda_swiglu(void *stream, void *out, enum kvp_cuda_dtype out_t, size_t ldo,
			       const float *gate, size_t ldg, const float *up, size_t ldu,
			       uint32_t rows, uint32_t n)
{
	cudaStream_t s = (cudaStream_t)stream;

	if (!out || !gate || !up || rows == 0 || rows > POS_MAX || n == 0 || ldo < n ||
	    ldg < n || ldu < n || !dtype_ok(out_t))
		return KVP_EINVAL;
	clear_error();
	switch (out_t) {
	case KVP_CUDA_F32:
		swiglu_kernel<<<rows, ROW_THREADS, 0, s>>>((float *)out, ldo, gate, ldg, up, ldu,
							   n);
		break;
	case KVP_CUDA_F16:
		swiglu_kernel<<<rows, ROW_THREADS, 0, s>>>((__half *)out, ldo, gate, ldg, up, ldu,
							   n);
		break;
	case KVP_CUDA_BF16:
		swiglu_kernel<<<rows, ROW_THREADS, 0, s>>>((__nv_bfloat16 *)out, ldo, gate, ldg, up,
							   ldu, n);
		break;
	}
	return launched();
}

/* ---- paged KV ---------------------------------------------------------------------------- */

/* One layer's K/V in the blocks, as the kernels address it. */
struct kv_geom {
	void *const *blocks;    /* (n_blocks) device block base pointers */
	uint32_t block_tokens;
	uint32_t n_kv_heads;
	uint32_t head_dim;
	size_t k_off;           /* elements from a block's base to (layer, K, head 0, token 0) */
	size_t v_from_k;        /* elements from a K row to the V row of the same head, token */
};

/* KVP_EINVAL unless kv describes a usable layer view. */
static int kv_geom_from(const struct kvp_cuda_kv *kv, struct kv_geom *g)
{
	if (!kv || !kv->d_blocks || kv->n_blocks == 0 || kv->block_tokens == 0 ||
	    kv->n_layers == 0 || kv->layer >= kv->n_layers || kv->n_kv_heads == 0 ||
	    kv->head_dim == 0 || kv->head_dim % 2 != 0 || kv->head_dim > KVP_CUDA_MAX_HEAD_DIM)
		return KVP_EINVAL;
	const size_t per = (size_t)kv->n_kv_heads * kv->block_tokens * kv->head_dim;
	g->blocks = kv->d_blocks;
	g->block_tokens = kv->block_tokens;
	g->n_kv_heads = kv->n_kv_heads;
	g->head_dim = kv->head_dim;
	g->k_off = (size_t)kv->layer * 2 * per;
	g->v_from_k = per;
	return KVP_OK;
}

/* Positions pos0 .. pos0+rows-1 exist in the table (and stay below POS_MAX). */
static bool positions_ok(const struct kvp_cuda_kv *kv, uint32_t pos0, uint32_t rows)
{
	const uint64_t end = (uint64_t)pos0 + rows;
	return rows > 0 && end <= POS_MAX && (end - 1) / kv->block_tokens < kv->n_blocks;
}

/* The K row of kv head hk at position pos; its V row is v_from_k elements further. */
static __device__ __forceinline__ const __half *kv_k_row(const struct kv_geom &g, uint32_t hk,
							uint32_t pos)
{
	const __half *base = static_cast<const __half *>(g.blocks[pos / g.block_tokens]);
	return base + g.k_off + ((size_t)hk * g.block_tokens + pos % g.block_tokens) * g.head_dim;
}

/* a block per row (position): K and V of every kv head, as f16 pairs */
static __global__ void kv_store_kernel(struct kv_geom g, uint32_t pos0, const float *k,
				       size_t ldk, const float *v, size_t ldv)
{
	const uint32_t pos = pos0 + blockIdx.x, np = g.head_dim / 2;
	__half *krow0 = const_cast<__half *>(kv_k_row(g, 0, pos));
	const float *kr = k + (size_t)blockIdx.x * ldk, *vr = v + (size_t)blockIdx.x * ldv;

	for (uint32_t it = threadIdx.x; it < g.n_kv_heads * np; it += blockDim.x) {
		const uint32_t h = it / np, e = 2 * (it % np);
		/* rows of successive heads are block_tokens rows apart */
		__half *kd = krow0 + (size_t)h * g.block_tokens * g.head_dim + e;
		const size_t src = (size_t)h * g.head_dim + e;
		__half *vd = kd + g.v_from_k;
		*reinterpret_cast<__half2 *>(kd) = __floats2half2_rn(kr[src], kr[src + 1]);
		*reinterpret_cast<__half2 *>(vd) = __floats2half2_rn(vr[src], vr[src + 1]);
	}
}

extern "C" int kvp_cuda_kv_store(void *stream, const struct kvp_cuda_kv *kv, uint32_t pos0,
				 uint32_t rows, const float *k, size_t ldk, const float *v,
				 size_t ldv)
{
	cudaStream_t s = (cudaStream_t)stream;
	struct kv_geom g;

	if (kv_geom_from(kv, &g) != KVP_OK || !k || !v || !positions_ok(kv, pos0, rows))
		return KVP_EINVAL;
	const size_t kv_dim = (size_t)g.n_kv_heads * g.head_dim;
	if (ldk < kv_dim || ldv < kv_dim || kv_dim / 2 > UINT32_MAX)
		return KVP_EINVAL;
	clear_error();
	kv_store_kernel<<<rows, ROW_THREADS, 0, s>>>(g, pos0, k, ldk, v, ldv);
	return launched();
}

/* ---- attention: shared ------------------------------------------------------------------- */

/* One attention call, as every kernel sees it. */
struct attn_params {
	struct kv_geom kv;
	const float *q;         /* (rows, n_heads * head_dim) */
	void *out;              /* (rows, n_heads * head_dim) in the out dtype */
	float *part;            /* split-K partials (n_chunks > 1), layout below */
	uint32_t rows;
	uint32_t pos0;
	uint32_t n_heads;
	uint32_t group;         /* n_heads / n_kv_heads */
	uint32_t n_chunks;      /* SIMT kernel: chunks of positions per row (grid z) */
	uint32_t chunk_tokens;  /* positions per chunk */
	float scale;            /* 1 / sqrt(head_dim) */
};

/*
 * Split-K partials in scratch, for the T = rows * n_heads * n_chunks triples
 * i = (row * n_heads + head) * n_chunks + chunk:
 *     acc (T, head_dim) f32   sum over the chunk of e^(s_p - m) v_p, not normalised
 *     m   (T) f32             the chunk's largest score s_p (scaled q . k_p)
 *     l   (T) f32             sum over the chunk of e^(s_p - m)
 * Chunks past a row's last position are neither written nor read.
 */
static size_t split_scratch_bytes(uint32_t rows, uint32_t n_chunks, uint32_t n_heads,
				  uint32_t head_dim)
{
	return (size_t)rows * n_heads * n_chunks * ((size_t)head_dim + 2) * sizeof(float);
}

/* Split-K for rows < ATTN_DECODE_ROWS over positions = pos0 + rows (the last row's
 * context): at most ceil(ATTN_SPLIT / rows) chunks, each a multiple of ATTN_MIN_CHUNK
 * positions. n_chunks <= min(ceil(ATTN_SPLIT / rows), ceil(positions / ATTN_MIN_CHUNK)). */
static void split_plan(uint32_t rows, uint32_t positions, uint32_t *n_chunks,
		       uint32_t *chunk_tokens)
{
	const uint32_t max_chunks = (ATTN_SPLIT + rows - 1) / rows;
	uint32_t per = (positions + max_chunks - 1) / max_chunks;
	per = (per + ATTN_MIN_CHUNK - 1) / ATTN_MIN_CHUNK * ATTN_MIN_CHUNK;
	*chunk_tokens = per;
	*n_chunks = (positions + per - 1) / per;
}

extern "C" size_t kvp_cuda_attention_scratch_bytes(uint32_t max_rows, uint32_t n_heads,
						   uint32_t head_dim, uint32_t max_positions)
{
	const uint32_t rmax = max_rows < ATTN_DECODE_ROWS - 1 ? max_rows : ATTN_DECODE_ROWS - 1;
	const uint64_t pos_chunks = ((uint64_t)max_positions + ATTN_MIN_CHUNK - 1) / ATTN_MIN_CHUNK;
	size_t best = 0;

	/* the bound of split_plan, over every call with rows <= max_rows and
	 * pos0 + rows <= max_positions; one chunk needs no scratch */
	for (uint32_t r = 1; r <= rmax; r++) {
		uint64_t c = (ATTN_SPLIT + r - 1) / r;
		if (c > pos_chunks)
			c = pos_chunks;
		if (c > 1) {
			size_t b = split_scratch_bytes(r, (uint32_t)c, n_heads, head_dim);
			best = b > best ? b : best;
		}
	}
	return best;
}

/* ---- attention: SIMT (decode, split-K; and the fallback for any head_dim) -------------------
 *
 * A block of 128 threads per (row, kv head, group of up to 8 of its query heads, chunk of
 * positions): grid (rows, n_kv_heads * ceil(group / 8), n_chunks). The K/V rows of a
 * chunk are read once for all the query heads of the group. Per tile of 64 positions:
 *     scores     a warp per position, lanes along head_dim (f16 pairs), warp sum per head
 *     softmax    a warp per head, lanes along the tile: m' = max(m, max s), p = e^(s - m'),
 *                l = l e^(m - m') + sum p
 *     acc        a thread per (head, pair of head_dim): acc = acc e^(m - m') + sum p v
 * All positions of a chunk are at or before the row's own position: no mask inside. With
 * one chunk the block writes out = acc / l; else the partial goes to scratch.
 */
template <typename OutT>
static __global__ void __launch_bounds__(SIMT_THREADS) attn_simt_kernel(struct attn_params p)
{
	__shared__ float qs[SIMT_GMAX][KVP_CUDA_MAX_HEAD_DIM]; /* (heads, d) q * scale */
	__shared__ float sc[SIMT_GMAX][SIMT_TILE];             /* (heads, tile) scores, then p */
	__shared__ const __half *krow[SIMT_TILE];              /* (tile) K row addresses */
	__shared__ float mx[SIMT_GMAX], sum[SIMT_GMAX], corr[SIMT_GMAX];

	const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
	const uint32_t D = p.kv.head_dim, np = D / 2;
	const uint32_t n_gb = (p.group + SIMT_GMAX - 1) / SIMT_GMAX;
	const uint32_t row = blockIdx.x, hk = blockIdx.y / n_gb;
	const uint32_t g0 = (blockIdx.y % n_gb) * SIMT_GMAX;
	const uint32_t gn = min_u32(p.group - g0, SIMT_GMAX);
	const uint32_t h0 = hk * p.group + g0; /* first query head of the block */
	const uint32_t last = p.pos0 + row;
	const uint64_t c0 = (uint64_t)blockIdx.z * p.chunk_tokens;
	const size_t ldq = (size_t)p.n_heads * D;

	if (c0 > last)
		return; /* this row's context ends before the chunk (the whole block leaves) */
	const uint32_t c1 = (uint32_t)min_u64(last, c0 + p.chunk_tokens - 1);

	for (uint32_t i = tid; i < gn * D; i += SIMT_THREADS) {
		const uint32_t g = i / D, e = i % D;
		qs[g][e] = p.q[row * ldq + (size_t)(h0 + g) * D + e] * p.scale;
	}
	if (tid < SIMT_GMAX) {
		mx[tid] = -INFINITY;
		sum[tid] = 0.0f;
	}
	float2 acc[SIMT_ITEMS];
#pragma unroll
	for (int i = 0; i < SIMT_ITEMS; i++)
		acc[i] = make_float2(0.0f, 0.0f);

	for (uint32_t t0 = (uint32_t)c0; t0 <= c1; t0 += SIMT_TILE) {
		const uint32_t tt = min_u32(c1 - t0 + 1, SIMT_TILE);
		if ((uint32_t)tid < tt)
			krow[tid] = kv_k_row(p.kv, hk, t0 + tid);
		__syncthreads();

		/* scores */
		for (uint32_t j = warp; j < tt; j += SIMT_WARPS) {
			const __half2 *kr = reinterpret_cast<const __half2 *>(krow[j]);
			float part[SIMT_GMAX];
#pragma unroll
			for (int g = 0; g < SIMT_GMAX; g++)
				part[g] = 0.0f;
			for (uint32_t i = lane; i < np; i += 32) {
				const float2 kf = __half22float2(kr[i]);
#pragma unroll
				for (int g = 0; g < SIMT_GMAX; g++)
					if ((uint32_t)g < gn)
						part[g] = fmaf(qs[g][2 * i + 1], kf.y,
							       fmaf(qs[g][2 * i], kf.x, part[g]));
			}
#pragma unroll
			for (int g = 0; g < SIMT_GMAX; g++) {
				if ((uint32_t)g < gn) {
					const float sv = warp_sum(part[g]);
					if (lane == 0)
						sc[g][j] = sv;
				}
			}
		}
		__syncthreads();

		/* online softmax; the tile holds at least one position, so m' is finite */
		for (uint32_t g = warp; g < gn; g += SIMT_WARPS) {
			const float s0 = (uint32_t)lane < tt ? sc[g][lane] : -INFINITY;
			const float s1 = (uint32_t)lane + 32 < tt ? sc[g][lane + 32] : -INFINITY;
			const float mold = mx[g];
			const float mnew = fmaxf(mold, warp_max(fmaxf(s0, s1)));
			const float p0 = expf(s0 - mnew), p1 = expf(s1 - mnew);
			if ((uint32_t)lane < tt)
				sc[g][lane] = p0;
			if ((uint32_t)lane + 32 < tt)
				sc[g][lane + 32] = p1;
			const float ps = warp_sum(p0 + p1);
			if (lane == 0) {
				const float c = expf(mold - mnew); /* 0 on the first tile */
				corr[g] = c;
				sum[g] = sum[g] * c + ps;
				mx[g] = mnew;
			}
		}
		__syncthreads();

		/* acc = acc * corr + sum_j p_j v_j */
#pragma unroll
		for (int i = 0; i < SIMT_ITEMS; i++) {
			const uint32_t it = tid + i * SIMT_THREADS;
			if (it < gn * np) {
				const uint32_t g = it / np, e2 = it % np;
				const float c = corr[g];
				const size_t vo = p.kv.v_from_k;
				float2 a = make_float2(acc[i].x * c, acc[i].y * c);
				for (uint32_t j = 0; j < tt; j++) {
					const __half *vr = krow[j] + vo;
					const float2 vf = __half22float2(
						reinterpret_cast<const __half2 *>(vr)[e2]);
					const float pj = sc[g][j];
					a.x = fmaf(pj, vf.x, a.x);
					a.y = fmaf(pj, vf.y, a.y);
				}
				acc[i] = a;
			}
		}
		__syncthreads();
	}

	if (p.n_chunks == 1) {
		OutT *out = static_cast<OutT *>(p.out) + row * ldq;
#pragma unroll
		for (int i = 0; i < SIMT_ITEMS; i++) {
			const uint32_t it = tid + i * SIMT_THREADS;
			if (it < gn * np) {
				const uint32_t g = it / np, e = 2 * (it % np);
				const float inv = 1.0f / sum[g];
				OutT *o = out + (size_t)(h0 + g) * D + e;
				put(o, acc[i].x * inv);
				put(o + 1, acc[i].y * inv);
			}
		}
		return;
	}
	const size_t T = (size_t)p.rows * p.n_heads * p.n_chunks;
	const size_t i0 = ((size_t)row * p.n_heads + h0) * p.n_chunks + blockIdx.z;
#pragma unroll
	for (int i = 0; i < SIMT_ITEMS; i++) {
		const uint32_t it = tid + i * SIMT_THREADS;
		if (it < gn * np) {
			const uint32_t g = it / np, e = 2 * (it % np);
			float *a = p.part + (i0 + (size_t)g * p.n_chunks) * D + e;
			a[0] = acc[i].x;
			a[1] = acc[i].y;
		}
	}
	if ((uint32_t)tid < gn) {
		const size_t idx = i0 + (size_t)tid * p.n_chunks;
		p.part[T * D + idx] = mx[tid];
		p.part[T * D + T + idx] = sum[tid];
	}
}

/* A block per (head, row): out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c over the
 * chunks c that hold any of the row's positions, M = max_c m_c. */
template <typename OutT>
static __global__ void __launch_bounds__(SIMT_THREADS) attn_merge_kernel(struct attn_params p)
{
	__shared__ float wt[ATTN_SPLIT];
	__shared__ float inv_l;
	const int tid = threadIdx.x;
	const uint32_t h = blockIdx.x, row = blockIdx.y, D = p.kv.head_dim;
	const uint32_t nc = (p.pos0 + row) / p.chunk_tokens + 1; /* <= n_chunks */
	const size_t T = (size_t)p.rows * p.n_heads * p.n_chunks;
	const size_t i0 = ((size_t)row * p.n_heads + h) * p.n_chunks;
	const float *pm = p.part + T * D, *pl = pm + T;

	if (tid < 32) {
		float m = -INFINITY;
		for (uint32_t c = tid; c < nc; c += 32)
			m = fmaxf(m, pm[i0 + c]);
		m = warp_max(m);
		float l = 0.0f;
		for (uint32_t c = tid; c < nc; c += 32) {
			const float w = expf(pm[i0 + c] - m);
			wt[c] = w;
			l = fmaf(w, pl[i0 + c], l);
		}
		l = warp_sum(l);
		if (tid == 0)
			inv_l = 1.0f / l;
	}
	__syncthreads();
	OutT *out = static_cast<OutT *>(p.out) + (size_t)row * p.n_heads * D + (size_t)h * D;
	for (uint32_t e = tid; e < D; e += SIMT_THREADS) {
		float a = 0.0f;
		for (uint32_t c = 0; c < nc; c++)
			a = fmaf(wt[c], p.part[(i0 + c) * D + e], a);
		put(&out[e], a * inv_l);
	}
}

/* ---- attention: tensor cores (sm_80+) ----------------------------------------------------
 *
 * mma.sync.m16n8k16 (row.col, f16 inputs, f32 accumulators) with, for lane = 4 g + t:
 *     A (16 x 16) regs a0..a3: (row g, k 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)
 *     B (16 x 8)  regs b0, b1: (k 2t..2t+1, col g), (k 2t+8..2t+9, col g)
 *     C (16 x 8)  c0 c1: (row g, cols 2t, 2t+1); c2 c3: (row g+8, cols 2t, 2t+1)
 * S = Q K^T: A = Q from registers (loaded once, as f16), B = K^T, whose column n is K row
 * n, so ldmatrix (no transpose) of the K tile gives b0, b1. O += P V: A = P, built in
 * registers from two S accumulator tiles (their C layout is A's layout); B = V, by
 * ldmatrix.trans of the V tile. Shared rows are D+8 halves: 16-byte aligned for cp.async
 * and ldmatrix, and the 8 rows one ldmatrix phase reads fall in distinct banks.
 */

/* cp.async and mma.m16n8k16 need sm_80; below it the kernel is a stub never launched */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
static __device__ __forceinline__ uint32_t smem_u32(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ uint32_t half2_bits(__half2 h)
{
	uint32_t u;
	memcpy(&u, &h, sizeof(u));
	return u;
}

/* store two adjacent values; p aligned to two elements */
static __device__ __forceinline__ void put2(float *p, float a, float b)
{
	*reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
static __device__ __forceinline__ void put2(__half *p, float a, float b)
{
	*reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}
static __device__ __forceinline__ void put2(__nv_bfloat16 *p, float a, float b)
{
	*reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

static __device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src)
		     : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i */
static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const __half *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(smem_u32(p)));
}

static __device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const __half *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(smem_u32(p)));
}

/* c (16 x 8) += a (16 x 16) . b (16 x 8) */
static __device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
						 uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* K and V rows of positions t0 .. t0+TC_BN-1 into ks, vs ((TC_BN, D+8) halves each):
 * 16 bytes per cp.async; positions past last are zeros (a V of garbage could be NaN,
 * and 0 * NaN would reach the output). */
template <int D>
static __device__ __forceinline__ void tc_load_tile(const struct attn_params &p, uint32_t hk,
						    uint32_t t0, uint32_t last, __half *ks,
						    __half *vs)
{
	constexpr int CPR = D / 8, LDS = D + 8; /* 16-byte chunks per row; smem row */
	for (int c = threadIdx.x; c < TC_BN * CPR; c += TC_THREADS) {
		const int r = c / CPR, col = (c % CPR) * 8;
		const uint32_t pos = t0 + (uint32_t)r;
		__half *dk = ks + r * LDS + col, *dv = vs + r * LDS + col;
		if (pos <= last) {
			const __half *src = kv_k_row(p.kv, hk, pos) + col;
			cp_async16(dk, src);
			cp_async16(dv, src + p.kv.v_from_k);
		} else {
			*reinterpret_cast<uint4 *>(dk) = make_uint4(0, 0, 0, 0);
			*reinterpret_cast<uint4 *>(dv) = make_uint4(0, 0, 0, 0);
		}
	}
}
#endif

template <int D, typename OutT>
static __global__ void __launch_bounds__(TC_THREADS) attn_tc_kernel(struct attn_params p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
	__trap(); /* never launched there: the host picks the SIMT kernel */
#else
	constexpr int LDS = D + 8;     /* halves per shared row */
	constexpr int KC = D / 16;     /* k steps of Q K^T */
	constexpr int NT = TC_BN / 8;  /* 8-column tiles of S */
	constexpr int OT = D / 8;      /* 8-column tiles of O */
	constexpr int PK = TC_BN / 16; /* k steps of P V */
	extern __shared__ uint4 tc_smem[];
	__half *ks = reinterpret_cast<__half *>(tc_smem); /* (2, TC_BN, LDS) */
	__half *vs = ks + 2 * TC_BN * LDS;                 /* (2, TC_BN, LDS) */

	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int gq = lane >> 2, tq = lane & 3;
	const uint32_t h = blockIdx.x, hk = h / p.group;
	const uint32_t n_qt = (p.rows + TC_BM - 1) / TC_BM;
	const uint32_t r0 = (n_qt - 1 - blockIdx.y) * TC_BM; /* longest rows first */
	const uint32_t wr0 = r0 + warp * 16;                 /* this warp's first row */
	const size_t ldq = (size_t)p.n_heads * D;
	const bool active = wr0 < p.rows;
	const uint32_t last = p.pos0 + min_u32(r0 + TC_BM - 1, p.rows - 1);
	const uint32_t warp_last = p.pos0 + min_u32(wr0 + 15, p.rows - 1);
	const uint32_t first_lim = p.pos0 + r0;
	const uint32_t n_tiles = last / TC_BN + 1;
	const float sl2 = p.scale * 1.44269504088896340736f; /* scores in log2 units */

	/* this thread's rows wr0 + gq and wr0 + gq + 8: the last position each may see
	 * (rows past the end repeat the last row's, are computed and not stored) */
	uint32_t lim[2];
#pragma unroll
	for (int hh = 0; hh < 2; hh++)
		lim[hh] = p.pos0 + min_u32(wr0 + gq + 8 * hh, p.rows - 1);

	/* Q as f16 A fragments, straight from global f32 (float2 per register) */
	uint32_t qa[KC][4];
	const float *qh = p.q + (size_t)h * D + 2 * tq;
#pragma unroll
	for (int kc = 0; kc < KC; kc++) {
#pragma unroll
		for (int hi = 0; hi < 2; hi++) {
#pragma unroll
			for (int hh = 0; hh < 2; hh++) {
				const uint32_t r = wr0 + gq + 8 * hh;
				const float *src = qh + r * ldq + kc * 16 + hi * 8;
				float2 v = make_float2(0.0f, 0.0f);
				if (r < p.rows)
					v = *reinterpret_cast<const float2 *>(src);
				qa[kc][hh + 2 * hi] = half2_bits(__floats2half2_rn(v.x, v.y));
			}
		}
	}

	float o[OT][4];
#pragma unroll
	for (int n = 0; n < OT; n++)
		o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
	float m[2] = { -INFINITY, -INFINITY }; /* running max, log2 units, per row */
	float l[2] = { 0.0f, 0.0f };            /* this thread's share of the row sums */

	tc_load_tile<D>(p, hk, 0, last, ks, vs);
	cp_async_commit();
	for (uint32_t t = 0; t < n_tiles; t++) {
		const int buf = (int)(t & 1);
		if (t + 1 < n_tiles) {
			tc_load_tile<D>(p, hk, (t + 1) * TC_BN, last, ks + (buf ^ 1) * TC_BN * LDS,
					vs + (buf ^ 1) * TC_BN * LDS);
			cp_async_commit();
			cp_async_wait<1>(); /* tile t has landed, t+1 may still be in flight */
		} else {
			cp_async_wait<0>();
		}
		__syncthreads();

		const uint32_t t0 = t * TC_BN;
		if (active && t0 <= warp_last) { /* else every position is masked for this warp */
			const __half *kb = ks + buf * TC_BN * LDS, *vb = vs + buf * TC_BN * LDS;

			/* S = Q K^T: ldmatrix matrices 0, 1 = K rows n*8.. (cols k, k+8) -> b0, b1
			 * of tile n; matrices 2, 3 the same for tile n+1 */
			float s[NT][4];
#pragma unroll
			for (int n = 0; n < NT; n++)
				s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
			const __half *kl = kb + ((lane >> 4) * 8 + (lane & 7)) * LDS +
					   ((lane >> 3) & 1) * 8; /* this lane's row address */
#pragma unroll
			for (int kc = 0; kc < KC; kc++) {
#pragma unroll
				for (int n = 0; n < NT; n += 2) {
					uint32_t b[4];
					ldsm_x4(b, kl + n * 8 * LDS + kc * 16);
					mma_16816(s[n], qa[kc], b[0], b[1]);
					mma_16816(s[n + 1], qa[kc], b[2], b[3]);
				}
			}

			/* scale, causal mask, new running max (rows are shared by the 4 lanes
			 * of a quad), and rescale what is accumulated so far */
			const bool diag = t0 + TC_BN - 1 > first_lim;
#pragma unroll
			for (int hh = 0; hh < 2; hh++) {
				float mt = -INFINITY;
#pragma unroll
				for (int n = 0; n < NT; n++) {
#pragma unroll
					for (int e = 0; e < 2; e++) {
						const uint32_t col = (uint32_t)(n * 8 + 2 * tq + e);
						float v = s[n][2 * hh + e] * sl2;
						if (diag && t0 + col > lim[hh])
							v = -INFINITY;
						s[n][2 * hh + e] = v;
						mt = fmaxf(mt, v);
					}
				}
				mt = fmaxf(mt, __shfl_xor_sync(FULL_MASK, mt, 1));
				mt = fmaxf(mt, __shfl_xor_sync(FULL_MASK, mt, 2));
				/* finite: tile 0 holds position 0, visible to every row */
				const float mnew = fmaxf(m[hh], mt);
				const float c = exp2f(m[hh] - mnew); /* 0 on the first tile */
				m[hh] = mnew;
				l[hh] *= c;
#pragma unroll
				for (int n = 0; n < OT; n++) {
					o[n][2 * hh] *= c;
					o[n][2 * hh + 1] *= c;
				}
			}

			/* P = 2^(S - m) as f16 A fragments: k step kk is S tiles 2kk (a0, a1)
			 * and 2kk+1 (a2, a3); l sums the rounded values */
			uint32_t pa[PK][4];
#pragma unroll
			for (int kk = 0; kk < PK; kk++) {
#pragma unroll
				for (int hi = 0; hi < 2; hi++) {
#pragma unroll
					for (int hh = 0; hh < 2; hh++) {
						const int n = 2 * kk + hi;
						const float p0 = exp2f(s[n][2 * hh] - m[hh]);
						const float p1 = exp2f(s[n][2 * hh + 1] - m[hh]);
						const __half2 ph = __floats2half2_rn(p0, p1);
						const float2 pf = __half22float2(ph);
						l[hh] += pf.x + pf.y;
						pa[kk][hh + 2 * hi] = half2_bits(ph);
					}
				}
			}

			/* O += P V: ldmatrix.trans matrices 0, 1 = V positions kk*16 + 0..7,
			 * 8..15 (cols n*8..) -> b0, b1 of tile n; matrices 2, 3 for tile n+1 */
			const __half *vl = vb + (((lane >> 3) & 1) * 8 + (lane & 7)) * LDS +
					   (lane >> 4) * 8; /* this lane's row address */
#pragma unroll
			for (int kk = 0; kk < PK; kk++) {
#pragma unroll
				for (int n = 0; n < OT; n += 2) {
					uint32_t b[4];
					ldsm_x4_trans(b, vl + kk * 16 * LDS + n * 8);
					mma_16816(o[n], pa[kk], b[0], b[1]);
					mma_16816(o[n + 1], pa[kk], b[2], b[3]);
				}
			}
		}
		__syncthreads(); /* the buffer is free for tile t+2 */
	}

	/* out = O / l, the row sums completed across the quad */
	OutT *out = static_cast<OutT *>(p.out);
#pragma unroll
	for (int hh = 0; hh < 2; hh++) {
		float lt = l[hh];
		lt += __shfl_xor_sync(FULL_MASK, lt, 1);
		lt += __shfl_xor_sync(FULL_MASK, lt, 2);
		const uint32_t r = wr0 + gq + 8 * hh;
		if (active && r < p.rows) {
			const float inv = 1.0f / lt;
			OutT *orow = out + r * ldq + (size_t)h * D + 2 * tq;
#pragma unroll
			for (int n = 0; n < OT; n++)
				put2(orow + n * 8, o[n][2 * hh] * inv, o[n][2 * hh + 1] * inv);
		}
	}
#endif
}

/* ---- attention: launch ------------------------------------------------------------------- */

/* Whether the current device runs the tensor-core kernel (sm_80 or later). */
static bool device_has_mma(void)
{
	int dev = 0, major = 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
		return false;
	return major >= 8;
}

template <int D, typename OutT>
static int attn_tc_launch(const struct attn_params &p, cudaStream_t s)
{
	const size_t smem = (size_t)2 * 2 * TC_BN * (D + 8) * sizeof(__half); /* K, V x 2 */
	const cudaError_t e = cudaFuncSetAttribute(
		attn_tc_kernel<D, OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
	if (e != cudaSuccess)
		return KVP_EIO;
	const dim3 grid(p.n_heads, (p.rows + TC_BM - 1) / TC_BM);
	attn_tc_kernel<D, OutT><<<grid, TC_THREADS, smem, s>>>(p);
	return launched();
}

enum attn_path { PATH_SPLIT, PATH_TC, PATH_SIMT };

template <typename OutT>
static int attn_launch(const struct attn_params &p, enum attn_path path, cudaStream_t s)
{
	if (path == PATH_TC)
		return p.kv.head_dim == 64 ? attn_tc_launch<64, OutT>(p, s)
					   : attn_tc_launch<128, OutT>(p, s);
	const uint32_t n_gb = (p.group + SIMT_GMAX - 1) / SIMT_GMAX;
	const dim3 grid(p.rows, p.kv.n_kv_heads * n_gb, p.n_chunks);
	attn_simt_kernel<OutT><<<grid, SIMT_THREADS, 0, s>>>(p);
	if (p.n_chunks > 1) {
		if (launched() != KVP_OK)
			return KVP_EIO;
		attn_merge_kernel<OutT><<<dim3(p.n_heads, p.rows), SIMT_THREADS, 0, s>>>(p);
	}
	return launched();
}

extern "C" int kvp_cuda_attention(void *stream, const struct kvp_cuda_kv *kv, const float *q,
				  void *out, enum kvp_cuda_dtype out_t, uint32_t rows,
				  uint32_t pos0, uint32_t n_heads, void *scratch,
				  size_t scratch_bytes)
{
	cudaStream_t s = (cudaStream_t)stream;
	struct attn_params p;

	memset(&p, 0, sizeof(p));
	if (kv_geom_from(kv, &p.kv) != KVP_OK || !q || !out || !dtype_ok(out_t) ||
	    n_heads == 0 || n_heads % kv->n_kv_heads != 0 || !positions_ok(kv, pos0, rows))
		return KVP_EINVAL;
	const uint32_t D = kv->head_dim, positions = pos0 + rows;
	p.q = q;
	p.out = out;
	p.rows = rows;
	p.pos0 = pos0;
	p.n_heads = n_heads;
	p.group = n_heads / kv->n_kv_heads;
	p.scale = (float)(1.0 / sqrt((double)D)); /* as the CPU */

	enum attn_path path;
	if (rows < ATTN_DECODE_ROWS) {
		path = PATH_SPLIT;
		split_plan(rows, positions, &p.n_chunks, &p.chunk_tokens);
		if (p.n_chunks > 1) {
			if (!scratch || (uintptr_t)scratch % sizeof(float) != 0 ||
			    scratch_bytes < split_scratch_bytes(rows, p.n_chunks, n_heads, D))
				return KVP_EINVAL;
			p.part = static_cast<float *>(scratch);
		}
	} else if ((D == 64 || D == 128) && (uintptr_t)q % 8 == 0 && (uintptr_t)out % 8 == 0 &&
		   (rows + TC_BM - 1) / TC_BM <= 65535 && device_has_mma()) {
		path = PATH_TC;
	} else {
		path = PATH_SIMT;
		p.n_chunks = 1;
		p.chunk_tokens = positions;
	}
	if (path != PATH_TC &&
	    (uint64_t)kv->n_kv_heads * ((p.group + SIMT_GMAX - 1) / SIMT_GMAX) > 65535)
		return KVP_EINVAL; /* grid y */

	clear_error();
	switch (out_t) {
	case KVP_CUDA_F32: return attn_launch<float>(p, path, s);
	case KVP_CUDA_F16: return attn_launch<__half>(p, path, s);
	case KVP_CUDA_BF16: return attn_launch<__nv_bfloat16>(p, path, s);
	}
	return KVP_EINVAL;
}
