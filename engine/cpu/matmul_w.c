/*
 * matmul_w.c - C = A . W^T for W in its file form (kvp_cpu_weight, kvp_cpu.h): which
 * path a call takes, the quantized activations of the dot path, and the dequantization
 * of W's slices for the blocked GEMM.
 *
 *   M <= KVP_CPU_DOT_MAX_M (decode)            M > KVP_CPU_DOT_MAX_M (prefill)
 *   ─────────────────────────────              ───────────────────────────────
 *   A rows -> Q8_0 / Q8_K blocks (caller)       block types: A rows -> Q8 blocks -> f32
 *                                                 (the dot path's values, threads by rows)
 *                                               for each W slice (NR rows, KC elements):
 *   thread t: W rows [j0, j1), 16 at a time       dequantize its rows into tmp (f32)
 *     dot[type](W_j, A_r) for each r: one read    pack_w(tmp) -> P; the f32 micro-kernel
 *     of W from memory, integer block products    over all M rows (kvp_cpu_gemm_w)
 *   F16/BF16: kern->gemv_f16 / gemv_bf16        F32: kvp_cpu_matmul (packs W itself)
 *   F32: kvp_cpu_matmul
 *
 * The dot kernels come from the dispatched ISA's table (kern->qdot), or the table it
 * falls back to for a type it leaves out (avx512vnni -> avx512 -> avx2 -> generic).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define DOT_UNIT 16             /* rows of W a thread takes at a time: whole lines of C */
#define ACT_STACK_BYTES 16384   /* quantized A on the stack (tp NULL) up to this */
#define GEMV_CHUNK_BYTES 32768  /* W rows dotted with every row of A while in L1 */

int kvp_cpu_weight_check(const struct kvp_cpu_weight *w)
{
	const struct kvp_ggml_type_info *t;

	if (!w || w->n < 0 || w->k < 0)
		return KVP_EINVAL;
	t = kvp_ggml_type(w->type);
	if (!t || !t->weights)
		return KVP_EUNSUPPORTED;
	if (w->k % (int)t->block_elems || w->row_bytes < kvp_ggml_row_bytes(w->type, (uint64_t)w->k))
		return KVP_EINVAL;
	if (t->block_elems == 1 && w->row_bytes % t->block_bytes)
		return KVP_EINVAL;      /* F32, F16, BF16 rows are arrays of their elements */
	if (!w->data && w->n > 0 && w->k > 0)
		return KVP_EINVAL;
	return KVP_OK;
}

int kvp_cpu_weight_row(const struct kvp_cpu_weight *w, int r, float *out)
{
	int rc = kvp_cpu_weight_check(w);

	if (rc < 0)
		return rc;
	if (r < 0 || r >= w->n)
		return KVP_EINVAL;
	return kvp_dequant_row(w->type, (const char *)w->data + (size_t)r * w->row_bytes, out,
			       (size_t)w->k);
}

/* ---- the dot path --------------------------------------------------------------------- */

static kvp_qdot_fn qdot_fn(const struct kvp_cpu_qdot *t, uint32_t type)
{
	for (; t; t = t->fallback)
		if (t->dot[type])
			return t->dot[type];
	return NULL;
}

struct dot_job {
	struct kvp_qdot_args x;
	kvp_qdot_fn fn;
	int n;
};

static void dot_worker(void *arg, int ith, int nth)
{
	const struct dot_job *d = arg;
	int units = (d->n + DOT_UNIT - 1) / DOT_UNIT, lo, hi;

	kvp_cpu_split_rows(units, ith, nth, &lo, &hi);
	lo *= DOT_UNIT;
	hi = hi * DOT_UNIT < d->n ? hi * DOT_UNIT : d->n;
	if (lo < hi)
		d->fn(&d->x, lo, hi);
}

static int matmul_dot(struct kvp_threadpool *tp, const float *a, size_t lda,
		      const struct kvp_cpu_weight *w, float *c, size_t ldc, int m, bool accumulate)
{
	const bool ktype = kvp_ggml_type(w->type)->block_elems == KVP_QK_K;
	const size_t blk = ktype ? sizeof(struct kvp_block_q8_k) : sizeof(struct kvp_block_q8_0);
	const size_t stride = (size_t)w->k / (ktype ? KVP_QK_K : KVP_QK) * blk;
	_Alignas(64) char stack[ACT_STACK_BYTES];
	char *aq = stack;
	struct dot_job d = {
		.x = { .w = w->data, .w_stride = w->row_bytes, .aq_stride = stride, .m = m,
		       .k = w->k, .c = c, .ldc = ldc, .accumulate = accumulate },
		.fn = qdot_fn(kvp_cpu_kern()->qdot, w->type),
		.n = w->n,
	};

	assert(d.fn);
	if (tp)
		aq = kvp_threadpool_scratch(tp, 0, (size_t)m * stride);
	else if ((size_t)m * stride > sizeof(stack))
		aq = malloc((size_t)m * stride);
	if (!aq)
		return KVP_ENOMEM;
	for (int r = 0; r < m; r++) {
		void *row = aq + (size_t)r * stride;

		if (ktype)
			kvp_cpu_quant_q8_k(a + (size_t)r * lda, row, w->k);
		else
			kvp_cpu_quant_q8_0(a + (size_t)r * lda, row, w->k);
	}
	d.x.aq = aq;
	kvp_cpu_parallel(tp, dot_worker, &d);
	if (!tp && aq != stack)
		free(aq);
	return KVP_OK;
}

/* ---- F16 / BF16 matrix-vector ---------------------------------------------------------- */

struct gemv_h_job {
	const struct kvp_cpu_kern *kern;
	const float *a;
	size_t lda;
	const uint16_t *w;
	size_t ldw;             /* elements */
	float *c;
	size_t ldc;
	int m, n, k;
	bool accumulate, bf16;
};

/* Thread ith's rows of W against every row of A: all of them at once where
 * kvp_cpu_gemv_wide, else KVP_GEMV_ROWS at a time over a chunk of W that stays in L1. W
 * is read from memory once whatever M. */
static void gemv_h_worker(void *arg, int ith, int nth)
{
	const struct gemv_h_job *g = arg;
	const bool wide = kvp_cpu_gemv_wide(g->m, g->k);
	const int fit = (int)(GEMV_CHUNK_BYTES / (2 * (size_t)g->k)) / 4 * 4;
	int units = (g->n + DOT_UNIT - 1) / DOT_UNIT, lo, hi;

	kvp_cpu_split_rows(units, ith, nth, &lo, &hi);
	lo *= DOT_UNIT;
	hi = hi * DOT_UNIT < g->n ? hi * DOT_UNIT : g->n;
	const int chunk = wide ? hi - lo : fit > 4 ? fit : 4;
	const int step = wide ? g->m : KVP_GEMV_ROWS;

	for (int j = lo; j < hi; j += chunk) {
		int nj = hi - j < chunk ? hi - j : chunk;

		for (int r = 0; r < g->m; r += step) {
			int mr = g->m - r < step ? g->m - r : step;

			(g->bf16 ? g->kern->gemv_bf16 : g->kern->gemv_f16)(
				g->a + (size_t)r * g->lda, g->lda, mr, g->w + (size_t)j * g->ldw,
				g->ldw, nj, g->k, g->c + (size_t)r * g->ldc + j, g->ldc,
				g->accumulate);
		}
	}
}

/* ---- the GEMM path: W's slices dequantized into the packed panels -------------------------- */

static void fill_dequant(const struct kvp_gemm_w *w, const struct kvp_cpu_kern *kn, int n0,
			 int nr, int kb, int kc, float *p, float *tmp)
{
	const size_t off = (size_t)kb / w->blk_elems * w->blk_bytes;

	for (int r = 0; r < nr; r++) {
		const char *src = w->base + (size_t)(n0 + r) * w->stride + off;
		float *dst = tmp + (size_t)r * kc;

		if (w->type == KVP_GGML_F16)
			kn->f16_to_f32(dst, (const uint16_t *)src, (size_t)kc);
		else
			kvp_dequant_row(w->type, src, dst, (size_t)kc);
	}
	kn->pack_w(tmp, (size_t)kc, nr, kc, p);
}

/* ---- the GEMM path's activations: rounded as the dot path rounds them ---------------- */

struct round_job {
	const float *a;
	size_t lda;
	float *out;             /* (m, k), k apart */
	int m, k;
	bool ktype;
};

/* Rows of thread ith: each block quantized to 8 bits (Q8_K for the K types, Q8_0 for
 * the others) and read back, the values the dot path's integer products stand for. */
static void round_worker(void *arg, int ith, int nth)
{
	const struct round_job *j = arg;
	int r0, r1;

	kvp_cpu_split_rows(j->m, ith, nth, &r0, &r1);
	for (int r = r0; r < r1; r++) {
		const float *x = j->a + (size_t)r * j->lda;
		float *y = j->out + (size_t)r * j->k;

		if (j->ktype) {
			struct kvp_block_q8_k b;

			for (int i = 0; i < j->k; i += KVP_QK_K) {
				kvp_cpu_quant_q8_k(x + i, &b, KVP_QK_K);
				kvp_dequant_row(KVP_GGML_Q8_K, &b, y + i, KVP_QK_K);
			}
		} else {
			struct kvp_block_q8_0 b;

			for (int i = 0; i < j->k; i += KVP_QK) {
				kvp_cpu_quant_q8_0(x + i, &b, KVP_QK);
				kvp_dequant_row(KVP_GGML_Q8_0, &b, y + i, KVP_QK);
			}
		}
	}
}

static int matmul_gemm(struct kvp_threadpool *tp, const float *a, size_t lda,
		       const struct kvp_cpu_weight *w, float *c, size_t ldc, int m, bool accumulate)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(w->type);
	const struct kvp_gemm_w gw = {
		.base = w->data, .stride = w->row_bytes, .type = w->type,
		.blk_elems = t->block_elems, .blk_bytes = t->block_bytes, .fill = fill_dequant,
	};
	const size_t bytes = (size_t)m * (size_t)w->k * sizeof(float);
	float *rounded = NULL;
	int rc;

	if (t->block_elems > 1) {
		/* block types: A as the dot path rounds it, so that a row's result does not
		 * depend on how many rows share the call (decode and prefill agree) */
		struct round_job j = { .a = a, .lda = lda, .m = m, .k = w->k,
				       .ktype = t->block_elems == KVP_QK_K };

		rounded = tp ? kvp_threadpool_scratch(tp, KVP_POOL_CALLER_SLOT, bytes)
			     : aligned_alloc(64, (bytes + 63) / 64 * 64);
		if (!rounded)
			return KVP_ENOMEM;
		j.out = rounded;
		kvp_cpu_parallel(tp, round_worker, &j);
		a = rounded;
		lda = (size_t)w->k;
	}
	rc = kvp_cpu_gemm_w(tp, a, lda, &gw, c, ldc, m, w->n, w->k, accumulate);
	if (!tp)
		free(rounded);
	return rc;
}

int kvp_cpu_matmul_w(struct kvp_threadpool *tp, const float *a, size_t lda,
		     const struct kvp_cpu_weight *w, float *c, size_t ldc, int m, bool accumulate)
{
	int rc = kvp_cpu_weight_check(w);

	if (rc < 0)
		return rc;
	if (m < 0 || (m > 0 && (lda < (size_t)w->k || ldc < (size_t)w->n)))
		return KVP_EINVAL;
	if (m == 0 || w->n == 0)
		return KVP_OK;
	if (w->k == 0) {
		if (!accumulate)
			for (int i = 0; i < m; i++)
				memset(c + (size_t)i * ldc, 0, (size_t)w->n * sizeof(float));
		return KVP_OK;
	}
	if (w->type == KVP_GGML_F32) {
		kvp_cpu_matmul(tp, a, lda, w->data, w->row_bytes / sizeof(float), c, ldc, m, w->n,
			       w->k, accumulate);
		return KVP_OK;
	}
	if (m > KVP_CPU_DOT_MAX_M)
		return matmul_gemm(tp, a, lda, w, c, ldc, m, accumulate);
	if (w->type == KVP_GGML_F16 || w->type == KVP_GGML_BF16) {
		struct gemv_h_job g = {
			.kern = kvp_cpu_kern(), .a = a, .lda = lda, .w = w->data,
			.ldw = w->row_bytes / 2, .c = c, .ldc = ldc, .m = m, .n = w->n, .k = w->k,
			.accumulate = accumulate, .bf16 = w->type == KVP_GGML_BF16,
		};

		kvp_cpu_parallel(tp, gemv_h_worker, &g);
		return KVP_OK;
	}
	return matmul_dot(tp, a, lda, w, c, ldc, m, accumulate);
}
