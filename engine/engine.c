/*
 * engine.c - the forward pass of a llama-family model over a paged block table.
 *
 *   tokens (n) ──embed──▶ x (rows, dim)
 *   per layer:  xb = rmsnorm(x)              q,k,v = xb . Wq/Wk/Wv      rope(q, k)
 *               K/V of rows at pos >= kv_write_from ──▶ blocks (paged)
 *               att = attention(q, blocks)   x += att . Wo
 *               xb = rmsnorm(x)              x += (silu(xb.Wg) * xb.Wu) . Wd
 *   last row:   logits = rmsnorm(x) . Wout
 *
 * Rows are processed in steps of at most max_batch, each step as matrix-matrix work
 * over its rows (prefill) or matrix-vector work (decode, one row). Attention reads K/V
 * from the blocks themselves; a cached prefix is read, never written.
 *
 * The seven matrices of every layer are packed once, at create, into the GEMM's panel
 * layout (kvp_cpu_pack_w): a second copy of the layer weights in memory (~100 MB for
 * the default 58M-parameter model), which spares each forward of more than 3 rows
 * packing them again (at 50 rows, e.g. a suffix after a cached prefix, that packing
 * cost as much memory traffic as the compute). Decode (1 row) still streams the
 * original row-major weights, and so does the output head, which only ever sees the
 * last row.
 *
 * The CUDA backend (engine/cuda/engine_cuda.c, built with KVP_CUDA) runs the same pass
 * on a GPU; an engine created with cfg->backend == KVP_BACKEND_CUDA holds one and every
 * call below hands over to it. The CPU run state then stays unallocated.
 */
#include "kvp_engine.h"
#ifdef KVP_HAVE_CUDA
#include "kvp_cuda.h"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvp_engine {
	const struct kvp_model *m;
	struct kvp_engine_config cfg;   /* err / errlen cleared: create's alone */
	enum kvp_backend backend;
#ifdef KVP_HAVE_CUDA
	struct kvp_cuda_engine *cuda;   /* KVP_BACKEND_CUDA */
#endif
	struct kvp_threadpool *tp;
	size_t block_bytes;
	uint32_t q_dim;      /* n_heads * head_dim */
	uint32_t kv_dim;     /* n_kv_heads * head_dim */
	/* run state for up to max_batch rows */
	float *x;            /* (max_batch, dim) residual stream */
	float *xb;           /* (max_batch, dim) normed input of a sublayer */
	float *q;            /* (max_batch, q_dim) */
	float *k;            /* (max_batch, kv_dim) */
	float *v;            /* (max_batch, kv_dim) */
	float *att;          /* (max_batch, q_dim) attention output */
	float *hb;           /* (max_batch, ffn) gate, then silu(gate) * up */
	float *hb2;          /* (max_batch, ffn) up */
	/* (n_layers) packed copies of the layer matrices */
	struct engine_packed {
		struct kvp_packed_w *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
	} *packed;
};

static void *alloc_f32(size_t n)
{
	void *p = NULL;

	if (posix_memalign(&p, 64, n * sizeof(float) + 64) != 0)
		return NULL;
	return p;
}

static void say(const struct kvp_engine_config *cfg, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void say(const struct kvp_engine_config *cfg, const char *fmt, ...)
{
	va_list ap;

	if (!cfg->err || cfg->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(cfg->err, cfg->errlen, fmt, ap);
	va_end(ap);
}

static int create_cuda(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		       struct kvp_engine **out)
{
#ifdef KVP_HAVE_CUDA
	const struct kvp_model_config *mc = &m->cfg;
	struct kvp_engine *e;
	int rc;

	e = calloc(1, sizeof(*e));
	if (!e)
		return KVP_ENOMEM;
	e->m = m;
	e->cfg = *cfg;
	e->cfg.err = NULL;
	e->cfg.errlen = 0;
	e->backend = KVP_BACKEND_CUDA;
	e->q_dim = mc->n_heads * mc->head_dim;
	e->kv_dim = mc->n_kv_heads * mc->head_dim;
	/* KV in f16 whatever cfg asks: kvp_cuda_engine_create refuses anything else */
	e->block_bytes = kvp_kv_block_bytes(mc->n_layers, mc->n_kv_heads, mc->head_dim,
					    cfg->block_tokens, KVP_KV_F16);
	rc = kvp_cuda_engine_create(m, cfg, &e->cuda, cfg->err, cfg->errlen);
	if (rc) {
		free(e);
		return rc;
	}
	*out = e;
	return KVP_OK;
#else
	(void)m;
	(void)out;
	say(cfg, "this build has no CUDA backend (configure with -DKVP_CUDA=ON)");
	return KVP_EUNSUPPORTED;
#endif
}

int kvp_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      struct kvp_engine **out)
{
	const struct kvp_model_config *mc = &m->cfg;
	struct kvp_engine *e;
	size_t rows;
	int rc;

	if (cfg->err && cfg->errlen)
		cfg->err[0] = '\0';
	if (cfg->backend == KVP_BACKEND_CUDA)
		return create_cuda(m, cfg, out);
	if (cfg->backend != KVP_BACKEND_CPU) {
		say(cfg, "unknown backend %d", (int)cfg->backend);
		return KVP_EINVAL;
	}
	if (cfg->threads < 1 || cfg->block_tokens == 0 || cfg->max_batch == 0 ||
	    (cfg->kv_dtype != KVP_KV_F32 && cfg->kv_dtype != KVP_KV_F16)) {
		say(cfg, "threads, block_tokens and max_batch must be at least 1, kv_dtype f32 or f16");
		return KVP_EINVAL;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return KVP_ENOMEM;
	e->m = m;
	e->cfg = *cfg;
	e->cfg.err = NULL;
	e->cfg.errlen = 0;
	e->backend = KVP_BACKEND_CPU;
	e->q_dim = mc->n_heads * mc->head_dim;
	e->kv_dim = mc->n_kv_heads * mc->head_dim;
	e->block_bytes = kvp_kv_block_bytes(mc->n_layers, mc->n_kv_heads, mc->head_dim,
					    cfg->block_tokens, cfg->kv_dtype);
	rc = kvp_threadpool_create(cfg->threads, &e->tp);
	if (rc)
		goto out_free;
	rows = cfg->max_batch;
	e->x = alloc_f32(rows * mc->dim);
	e->xb = alloc_f32(rows * mc->dim);
	e->q = alloc_f32(rows * e->q_dim);
	e->k = alloc_f32(rows * e->kv_dim);
	e->v = alloc_f32(rows * e->kv_dim);
	e->att = alloc_f32(rows * e->q_dim);
	e->hb = alloc_f32(rows * mc->ffn);
	e->hb2 = alloc_f32(rows * mc->ffn);
	e->packed = calloc(mc->n_layers ? mc->n_layers : 1, sizeof(*e->packed));
	if (!e->x || !e->xb || !e->q || !e->k || !e->v || !e->att || !e->hb || !e->hb2 ||
	    !e->packed) {
		rc = KVP_ENOMEM;
		goto out_state;
	}
	for (uint32_t l = 0; l < mc->n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];
		struct engine_packed *p = &e->packed[l];
		const int dim = (int)mc->dim, ffn = (int)mc->ffn;
		const int qd = (int)e->q_dim, kvd = (int)e->kv_dim;
		if ((rc = kvp_cpu_pack_w(w->wq, dim, qd, dim, &p->wq)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->wk, dim, kvd, dim, &p->wk)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->wv, dim, kvd, dim, &p->wv)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->wo, qd, dim, qd, &p->wo)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->w_gate, dim, ffn, dim, &p->w_gate)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->w_up, dim, ffn, dim, &p->w_up)) < 0 ||
		    (rc = kvp_cpu_pack_w(w->w_down, ffn, dim, ffn, &p->w_down)) < 0)
			goto out_state;
	}
	*out = e;
	return KVP_OK;

out_state:
	kvp_engine_destroy(e);
	return rc;
out_free:
	free(e);
	return rc;
}

void kvp_engine_destroy(struct kvp_engine *e)
{
	if (!e)
		return;
#ifdef KVP_HAVE_CUDA
	kvp_cuda_engine_destroy(e->cuda);
#endif
	kvp_threadpool_destroy(e->tp);
	if (e->packed) {
		for (uint32_t l = 0; l < e->m->cfg.n_layers; l++) {
			struct engine_packed *p = &e->packed[l];
			kvp_cpu_packed_free(p->wq);
			kvp_cpu_packed_free(p->wk);
			kvp_cpu_packed_free(p->wv);
			kvp_cpu_packed_free(p->wo);
			kvp_cpu_packed_free(p->w_gate);
			kvp_cpu_packed_free(p->w_up);
			kvp_cpu_packed_free(p->w_down);
		}
		free(e->packed);
	}
	free(e->x);
	free(e->xb);
	free(e->q);
	free(e->k);
	free(e->v);
	free(e->att);
	free(e->hb);
	free(e->hb2);
	free(e);
}

const struct kvp_model *kvp_engine_model(const struct kvp_engine *e)
{
	return e->m;
}

size_t kvp_engine_block_bytes(const struct kvp_engine *e)
{
	return e->block_bytes;
}

size_t kvp_engine_token_bytes(const struct kvp_engine *e)
{
	return e->block_bytes / e->cfg.block_tokens;
}

struct kvp_threadpool *kvp_engine_threads(struct kvp_engine *e)
{
	return e->tp;   /* NULL on CUDA */
}

enum kvp_backend kvp_engine_backend(const struct kvp_engine *e)
{
	return e->backend;
}

const char *kvp_backend_name(enum kvp_backend b)
{
	switch (b) {
	case KVP_BACKEND_CPU: return "cpu";
	case KVP_BACKEND_CUDA: return "cuda";
	}
	return "unknown";
}

/* One step: rows tokens at positions pos .. pos+rows-1. */
static void forward_rows(struct kvp_engine *e, const struct kvp_kv_view *base,
			 const uint32_t *tokens, uint32_t rows, uint32_t pos,
			 uint32_t kv_write_from)
{
	const struct kvp_model *m = e->m;
	const struct kvp_model_config *mc = &m->cfg;
	const int dim = (int)mc->dim, ffn = (int)mc->ffn;
	const int qd = (int)e->q_dim, kvd = (int)e->kv_dim;
	struct kvp_kv_view kv = *base;

	for (uint32_t i = 0; i < rows; i++)
		memcpy(e->x + (size_t)i * dim, m->tok_embd + (size_t)tokens[i] * dim,
		       (size_t)dim * sizeof(float));

	for (uint32_t l = 0; l < mc->n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];
		const struct engine_packed *p = &e->packed[l];

		kv.layer = l;
		kvp_cpu_rmsnorm_rows(e->tp, e->xb, dim, e->x, dim, w->attn_norm, (int)rows, dim,
				     mc->rms_eps);
		kvp_cpu_matmul_packed(e->tp, e->xb, dim, p->wq, e->q, qd, (int)rows, false);
		kvp_cpu_matmul_packed(e->tp, e->xb, dim, p->wk, e->k, kvd, (int)rows, false);
		kvp_cpu_matmul_packed(e->tp, e->xb, dim, p->wv, e->v, kvd, (int)rows, false);
		kvp_cpu_rope_rows(e->tp, e->q, qd, (int)rows, (int)mc->n_heads, (int)mc->head_dim,
				  (int)mc->rope_dim, pos, mc->rope_base);
		kvp_cpu_rope_rows(e->tp, e->k, kvd, (int)rows, (int)mc->n_kv_heads, (int)mc->head_dim,
				  (int)mc->rope_dim, pos, mc->rope_base);
		/* rows below kv_write_from are a cached prefix: its KV is already there */
		if (pos + rows > kv_write_from) {
			uint32_t skip = kv_write_from > pos ? kv_write_from - pos : 0;
			kvp_cpu_kv_store_rows(e->tp, &kv, pos + skip, (int)(rows - skip),
					      e->k + (size_t)skip * kvd, kvd, e->v + (size_t)skip * kvd,
					      kvd);
		}
		kvp_cpu_attention(e->tp, &kv, e->q, e->att, rows, pos, mc->n_heads);
		kvp_cpu_matmul_packed(e->tp, e->att, qd, p->wo, e->x, dim, (int)rows, true);

		kvp_cpu_rmsnorm_rows(e->tp, e->xb, dim, e->x, dim, w->ffn_norm, (int)rows, dim,
				     mc->rms_eps);
		kvp_cpu_matmul_packed(e->tp, e->xb, dim, p->w_gate, e->hb, ffn, (int)rows, false);
		kvp_cpu_matmul_packed(e->tp, e->xb, dim, p->w_up, e->hb2, ffn, (int)rows, false);
		kvp_cpu_swiglu_rows(e->tp, e->hb, ffn, e->hb2, ffn, (int)rows, ffn);
		kvp_cpu_matmul_packed(e->tp, e->hb, ffn, p->w_down, e->x, dim, (int)rows, true);
	}
}

int kvp_engine_forward(struct kvp_engine *e, void *const *blocks, uint32_t n_blocks,
		       const uint32_t *tokens, uint32_t n, uint32_t pos0, uint32_t kv_write_from,
		       float *logits)
{
	const struct kvp_model *m = e->m;
	const struct kvp_model_config *mc = &m->cfg;
	const uint32_t b = e->cfg.block_tokens;
	struct kvp_kv_view kv = {
		.blocks = blocks,
		.n_blocks = n_blocks,
		.block_tokens = b,
		.n_layers = mc->n_layers,
		.n_kv_heads = mc->n_kv_heads,
		.head_dim = mc->head_dim,
		.dtype = e->cfg.kv_dtype,
	};
	uint32_t done = 0, rows = 0;

#ifdef KVP_HAVE_CUDA
	if (e->backend == KVP_BACKEND_CUDA)
		return kvp_cuda_engine_forward(e->cuda, blocks, n_blocks, tokens, n, pos0,
					       kv_write_from, logits);
#endif
	if (n == 0 || (uint64_t)pos0 + n > mc->ctx || (uint64_t)n_blocks * b < (uint64_t)pos0 + n)
		return KVP_EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (tokens[i] >= mc->vocab)
			return KVP_EINVAL;
	while (done < n) {
		rows = n - done < e->cfg.max_batch ? n - done : e->cfg.max_batch;
		kv.n_blocks = (pos0 + done + rows + b - 1) / b;   /* what this step may read */
		forward_rows(e, &kv, tokens + done, rows, pos0 + done, kv_write_from);
		done += rows;
	}
	if (logits) {
		const float *last = e->x + (size_t)(rows - 1) * mc->dim;
		kvp_cpu_rmsnorm(e->xb, last, m->output_norm, (int)mc->dim, mc->rms_eps);
		kvp_cpu_matmul(e->tp, e->xb, mc->dim, m->output, mc->dim, logits, mc->vocab, 1,
			       (int)mc->vocab, (int)mc->dim, false);
	}
	return KVP_OK;
}
