/*
 * engine_cuda.c - the forward pass of the CPU backend (engine/cpu/backend_cpu.c) on a
 * CUDA device.
 *
 *   tokens (n) ──embed──▶ x (rows, dim) f32
 *   per layer:  xb = rmsnorm(x)                  q = xb . Wq      [k | v] = xb . Wkv
 *               rope(q, k)   K/V of rows at pos >= kv_write_from ──▶ blocks (f16, paged)
 *               att = attention(q, blocks)       x += att . Wo
 *               xb = rmsnorm(x)                  [gate | up] = xb . Wgu
 *               hact = silu(gate) * up           x += hact . Wdown
 *   last row:   logits = rmsnorm(x) . Wout ──download──▶ host
 *
 * Everything a forward touches lives on the device from create on: the weights
 * (uploaded once, see below), the activations for max_batch rows, the attention scratch
 * and a device copy of the block table. A forward uploads the tokens and the part of
 * the table it reads through page-locked staging, queues every kernel and GEMM of every
 * step on the engine's one stream, queues the logits' download, and synchronises once,
 * at the end. Steps of at most max_batch rows follow one another on the stream, so a
 * step reads the K/V the previous one wrote without any host round trip.
 *
 * Numerics (kvp_cuda.h): the residual stream x, q, k, v and every GEMM output are f32;
 * what a GEMM reads (xb, att, hact and the weights) is in the weights' dtype, f16, or
 * bf16 for a model whose file stores bf16 matrices (f32 files are rounded to f16); the
 * norm weights stay f32; KV is f16.
 *
 * Weights, per layer (shape comments are rows x columns, row-major):
 *     wq         (q_dim, dim)
 *     wkv        (2 * kv_dim, dim)   wk's rows, then wv's: k and v of a row come out of
 *                                    one GEMM, side by side in kv (rows, 2 * kv_dim)
 *     wo         (dim, q_dim)
 *     w_gate_up  (2 * ffn, dim)      w_gate's rows, then w_up's: one GEMM, gate and up
 *                                    side by side in gate_up (rows, 2 * ffn)
 *     w_down     (dim, ffn)
 * Fusing the matrices that read the same input saves a GEMM launch and a pass over xb
 * each, and gives cuBLAS one bigger N to tile, which matters most in decode, where
 * every GEMM is a single row. q keeps a GEMM of its own because the attention kernel
 * takes q as dense rows (no leading dimension); rope, kv_store and swiglu take strided
 * rows, so k, v, gate and up can share a buffer. The output head reuses the embedding
 * when the model ties them.
 */
#include "kvp_cpu.h"    /* its bulk f32 -> f16 conversion, for the weights' upload */
#include "kvp_cuda.h"
#include "kvp_device.h"
#include "kvp_half.h"
#include "kvp_engine.h"
#include "kvp_gguf.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Elements converted per upload while the weights go up (8 MiB of f16). */
#define STAGE_ELEMS ((size_t)4 << 20)

struct cuda_layer {
	float *attn_norm;     /* (dim) f32 */
	float *ffn_norm;      /* (dim) f32 */
	void *wq;             /* (q_dim, dim) */
	void *wkv;            /* (2 * kv_dim, dim) */
	void *wo;             /* (dim, q_dim) */
	void *w_gate_up;      /* (2 * ffn, dim) */
	void *w_down;         /* (dim, ffn) */
};

struct kvp_cuda_engine {
	const struct kvp_model *m;
	int device;
	uint32_t block_tokens;
	uint32_t max_batch;
	enum kvp_cuda_dtype wt;   /* dtype of the weights and of GEMM inputs */
	size_t wsz;               /* its bytes per element */
	uint32_t q_dim;           /* n_heads * head_dim */
	uint32_t kv_dim;          /* n_kv_heads * head_dim */
	void *stream;
	struct kvp_cuda_blas *blas;
	size_t weight_bytes;
	double peak_tflops;       /* the device's dense F16 peak (kvp_device_info) */
	/* weights (device) */
	void *embd;               /* (vocab, dim) */
	void *output;             /* (vocab, dim); == embd when tied */
	float *output_norm;       /* (dim) f32 */
	struct cuda_layer *layers;   /* (n_layers) host array of device pointers */
	/* run state for up to max_batch rows (device) */
	float *x;                 /* (max_batch, dim) f32 residual stream */
	void *xb;                 /* (max_batch, dim) wt: normed input of a sublayer */
	float *q;                 /* (max_batch, q_dim) f32 */
	float *kv;                /* (max_batch, 2 * kv_dim) f32: k | v */
	void *att;                /* (max_batch, q_dim) wt: attention output */
	float *gate_up;           /* (max_batch, 2 * ffn) f32: gate | up */
	void *hact;               /* (max_batch, ffn) wt: silu(gate) * up */
	void *scratch;            /* attention scratch, scratch_bytes (NULL when 0) */
	size_t scratch_bytes;
	uint32_t table_cap;       /* ctx / block_tokens + 1: the longest table read */
	uint32_t *d_tokens;       /* (ctx) */
	void **d_table;           /* (table_cap) device block pointers */
	float *d_logits;          /* (vocab) f32 */
	/* page-locked host staging */
	uint32_t *h_tokens;       /* (ctx) */
	void **h_table;           /* (table_cap) */
	float *h_logits;          /* (vocab) */
};

static void say(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void say(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

size_t kvp_cuda_engine_weight_bytes(const struct kvp_cuda_engine *e)
{
	return e->weight_bytes;
}

size_t kvp_cuda_engine_block_bytes(const struct kvp_cuda_engine *e)
{
	const struct kvp_model_config *mc = &e->m->cfg;

	return kvp_kv_block_bytes(mc->n_layers, mc->n_kv_heads, mc->head_dim, e->block_tokens,
				  KVP_KV_F16);
}

double kvp_cuda_engine_peak_tflops(const struct kvp_cuda_engine *e)
{
	return e->peak_tflops;
}

static void convert(enum kvp_cuda_dtype t, void *dst, const float *src, size_t n)
{
	if (t == KVP_CUDA_F16) {
		kvp_cpu_f32_to_f16(dst, src, n);
	} else {
		uint16_t *d = dst;
		for (size_t i = 0; i < n; i++)
			d[i] = kvp_f32_to_bf16(src[i]);
	}
}

/* Upload the rows [r0, r1) of t, converted to e->wt (a quantized file dequantized on
 * the host a row at a time), to d: through staging, whole rows at a time. */
static int upload_rows(struct kvp_cuda_engine *e, uint8_t *d, const struct kvp_tensor *t,
		       void *staging, float *row)
{
	const size_t per = STAGE_ELEMS / t->cols ? STAGE_ELEMS / t->cols : 1;

	for (uint32_t r = 0; r < t->rows;) {
		size_t k = t->rows - r < per ? t->rows - r : per;

		for (size_t i = 0; i < k; i++) {
			(void)kvp_dequant_row(t->type, (const uint8_t *)t->data +
					      (size_t)(r + i) * t->row_bytes, row, t->cols);
			convert(e->wt, (uint8_t *)staging + i * t->cols * e->wsz, row, t->cols);
		}
		if (kvp_device_upload(d + (size_t)r * t->cols * e->wsz, staging, k * t->cols * e->wsz))
			return KVP_EIO;
		r += (uint32_t)k;
	}
	return KVP_OK;
}

/*
 * A weight matrix on the device, in e->wt: the parts (matrices of the same columns)
 * stacked by rows. Converted on the host a chunk of whole rows at a time into staging
 * (page-locked, STAGE_ELEMS elements of wt; one row when a row is larger) and
 * uploaded.
 */
static int upload_matrix(struct kvp_cuda_engine *e, void **dst,
			 const struct kvp_tensor *const *parts, int nparts, void *staging)
{
	size_t total = 0, off = 0;
	float *row = malloc((size_t)parts[0]->cols * sizeof(float));
	uint8_t *d;
	int rc = KVP_OK;

	for (int i = 0; i < nparts; i++)
		total += (size_t)parts[i]->rows * parts[i]->cols;
	d = row ? kvp_device_alloc(total * e->wsz) : NULL;
	if (!d) {
		free(row);
		return KVP_ENOMEM;
	}
	*dst = d;
	e->weight_bytes += total * e->wsz;
	for (int i = 0; i < nparts && rc == KVP_OK; i++) {
		rc = upload_rows(e, d + off * e->wsz, parts[i], staging, row);
		off += (size_t)parts[i]->rows * parts[i]->cols;
	}
	free(row);
	return rc;
}

/* A norm vector (n floats), as it is. */
static int upload_f32(struct kvp_cuda_engine *e, float **dst, const float *src, size_t n)
{
	*dst = kvp_device_alloc(n * sizeof(float));
	if (!*dst)
		return KVP_ENOMEM;
	e->weight_bytes += n * sizeof(float);
	return kvp_device_upload(*dst, src, n * sizeof(float)) ? KVP_EIO : KVP_OK;
}

static int upload_weights(struct kvp_cuda_engine *e, char *err, size_t errlen)
{
	const struct kvp_model *m = e->m;
	const struct kvp_model_config *mc = &m->cfg;
	const size_t dim = mc->dim;
	void *staging;
	int rc = KVP_OK;

	staging = kvp_device_host_alloc(STAGE_ELEMS * e->wsz);
	if (!staging) {
		say(err, errlen, "CUDA: no page-locked host memory for the weight upload (%s)",
		    kvp_device_last_error());
		return KVP_ENOMEM;
	}
	{
		const struct kvp_tensor *p[1] = { &m->tok_embd };
		rc = upload_matrix(e, &e->embd, p, 1, staging);
	}
	if (!rc && mc->tied_output) {
		e->output = e->embd;
	} else if (!rc) {
		const struct kvp_tensor *p[1] = { &m->output };
		rc = upload_matrix(e, &e->output, p, 1, staging);
	}
	if (!rc)
		rc = upload_f32(e, &e->output_norm, m->output_norm, dim);
	for (uint32_t l = 0; l < mc->n_layers && !rc; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];
		struct cuda_layer *d = &e->layers[l];
		const struct kvp_tensor *pq[1] = { &w->wq }, *pkv[2] = { &w->wk, &w->wv };
		const struct kvp_tensor *po[1] = { &w->wo }, *pgu[2] = { &w->w_gate, &w->w_up };
		const struct kvp_tensor *pd[1] = { &w->w_down };

		if ((rc = upload_f32(e, &d->attn_norm, w->attn_norm, dim)) ||
		    (rc = upload_f32(e, &d->ffn_norm, w->ffn_norm, dim)) ||
		    (rc = upload_matrix(e, &d->wq, pq, 1, staging)) ||
		    (rc = upload_matrix(e, &d->wkv, pkv, 2, staging)) ||
		    (rc = upload_matrix(e, &d->wo, po, 1, staging)) ||
		    (rc = upload_matrix(e, &d->w_gate_up, pgu, 2, staging)) ||
		    (rc = upload_matrix(e, &d->w_down, pd, 1, staging)))
			break;
	}
	kvp_device_host_free(staging);
	if (rc == KVP_ENOMEM)
		say(err, errlen, "CUDA device %d: out of memory for the weights (%zu MiB uploaded)",
		    e->device, e->weight_bytes >> 20);
	else if (rc)
		say(err, errlen, "CUDA device %d: uploading the weights: %s", e->device,
		    kvp_device_last_error());
	return rc;
}

/* The activations, attention scratch, block table, tokens and logits. */
static int alloc_state(struct kvp_cuda_engine *e, char *err, size_t errlen)
{
	const struct kvp_model_config *mc = &e->m->cfg;
	const size_t rows = e->max_batch, dim = mc->dim, ffn = mc->ffn;
	const size_t qd = e->q_dim, kvd = e->kv_dim, f = sizeof(float);

	e->table_cap = mc->ctx / e->block_tokens + 1;
	e->scratch_bytes = kvp_cuda_attention_scratch_bytes(e->max_batch, mc->n_heads,
							    mc->head_dim, mc->ctx);
	e->x = kvp_device_alloc(rows * dim * f);
	e->xb = kvp_device_alloc(rows * dim * e->wsz);
	e->q = kvp_device_alloc(rows * qd * f);
	e->kv = kvp_device_alloc(rows * 2 * kvd * f);
	e->att = kvp_device_alloc(rows * qd * e->wsz);
	e->gate_up = kvp_device_alloc(rows * 2 * ffn * f);
	e->hact = kvp_device_alloc(rows * ffn * e->wsz);
	e->scratch = e->scratch_bytes ? kvp_device_alloc(e->scratch_bytes) : NULL;
	e->d_tokens = kvp_device_alloc((size_t)mc->ctx * sizeof(uint32_t));
	e->d_table = kvp_device_alloc((size_t)e->table_cap * sizeof(void *));
	e->d_logits = kvp_device_alloc((size_t)mc->vocab * f);
	if (!e->x || !e->xb || !e->q || !e->kv || !e->att || !e->gate_up || !e->hact ||
	    (e->scratch_bytes && !e->scratch) || !e->d_tokens || !e->d_table || !e->d_logits) {
		say(err, errlen, "CUDA device %d: out of memory for the run state of %u rows",
		    e->device, e->max_batch);
		return KVP_ENOMEM;
	}
	e->h_tokens = kvp_device_host_alloc((size_t)mc->ctx * sizeof(uint32_t));
	e->h_table = kvp_device_host_alloc((size_t)e->table_cap * sizeof(void *));
	e->h_logits = kvp_device_host_alloc((size_t)mc->vocab * f);
	if (!e->h_tokens || !e->h_table || !e->h_logits) {
		say(err, errlen, "CUDA: no page-locked host memory for the staging buffers");
		return KVP_ENOMEM;
	}
	return KVP_OK;
}

/*
 * One small kernel and one GEMM, waited for: a device this build has no kernels for
 * (compute capability below the build's CMAKE_CUDA_ARCHITECTURES) or a cuBLAS that
 * cannot run on it fails here, at create, rather than in the first request.
 */
static int probe(struct kvp_cuda_engine *e, const struct kvp_device_info *info, char *err,
		 size_t errlen)
{
	const uint32_t dim = e->m->cfg.dim;

	if (kvp_device_memset(e->x, 0, (size_t)dim * sizeof(float)) ||
	    kvp_cuda_from_f32(e->stream, e->xb, e->wt, e->x, dim))
		goto out_fail;
	if (kvp_cuda_gemm(e->blas, e->xb, dim, e->output, dim, e->wt, e->d_logits, 1, 1, 1,
			  (int)dim, false)) {
		/* a cuBLAS status, not a CUDA error: kvp_device_last_error knows nothing of it */
		say(err, errlen, "CUDA device %d (%s, sm_%d%d): cuBLAS cannot run a %s GEMM on it",
		    e->device, info->name, info->sm_major, info->sm_minor,
		    e->wt == KVP_CUDA_BF16 ? "bf16" : "f16");
		return KVP_EIO;
	}
	if (kvp_device_stream_sync(e->stream))
		goto out_fail;
	return KVP_OK;

out_fail:
	say(err, errlen, "CUDA device %d (%s, sm_%d%d) cannot run this build's kernels: %s",
	    e->device, info->name, info->sm_major, info->sm_minor, kvp_device_last_error());
	return KVP_EIO;
}

int kvp_cuda_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
			   struct kvp_cuda_engine **out, char *err, size_t errlen)
{
	const struct kvp_model_config *mc = &m->cfg;
	struct kvp_device_info info;
	struct kvp_cuda_engine *e;
	int rc;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (cfg->block_tokens == 0 || cfg->max_batch == 0) {
		say(err, errlen, "block_tokens and max_batch must be at least 1");
		return KVP_EINVAL;
	}
	if (mc->rope_style != KVP_ROPE_ADJACENT || mc->rope_scale != 1.0f ||
	    mc->rope_freq_factors || mc->attn_bias || mc->ffn_bias) {
		say(err, errlen, "the CUDA backend does not compute %s yet: run this model with "
		    "--backend cpu", mc->rope_style != KVP_ROPE_ADJACENT ? "rotary embedding on "
		    "halves (qwen2)" : mc->attn_bias || mc->ffn_bias ? "projection biases" :
		    "rope scaling");
		return KVP_EUNSUPPORTED;
	}
	if (mc->head_dim == 0 || mc->head_dim % 2 || mc->head_dim > KVP_CUDA_MAX_HEAD_DIM) {
		say(err, errlen, "head_dim %u: the CUDA backend needs an even head_dim of at most %d",
		    mc->head_dim, KVP_CUDA_MAX_HEAD_DIM);
		return KVP_EUNSUPPORTED;
	}
	/* cuBLAS takes int sizes: N of the fused gate/up GEMM is the largest (or vocab) */
	if ((uint64_t)mc->ffn * 2 > INT_MAX || mc->vocab > INT_MAX || mc->dim > INT_MAX ||
	    cfg->max_batch > INT_MAX) {
		say(err, errlen, "model dimensions too large for the CUDA backend");
		return KVP_EUNSUPPORTED;
	}
	rc = kvp_device_open(cfg->device, &info, err, errlen);
	if (rc)
		return rc;

	e = calloc(1, sizeof(*e));
	if (!e)
		return KVP_ENOMEM;
	e->m = m;
	e->device = cfg->device;
	e->peak_tflops = info.f16_tflops;
	e->block_tokens = cfg->block_tokens;
	e->max_batch = cfg->max_batch;
	e->wt = mc->file_type == KVP_GGML_BF16 ? KVP_CUDA_BF16 : KVP_CUDA_F16;
	e->wsz = kvp_cuda_dtype_size(e->wt);
	e->q_dim = mc->n_heads * mc->head_dim;
	e->kv_dim = mc->n_kv_heads * mc->head_dim;
	e->layers = calloc(mc->n_layers ? mc->n_layers : 1, sizeof(*e->layers));
	if (!e->layers) {
		rc = KVP_ENOMEM;
		goto out_destroy;
	}
	rc = kvp_device_stream_create(&e->stream);
	if (rc) {
		say(err, errlen, "CUDA device %d: creating a stream: %s", e->device,
		    kvp_device_last_error());
		rc = KVP_EIO;
		goto out_destroy;
	}
	rc = kvp_cuda_blas_create(e->stream, &e->blas, err, errlen);
	if (rc)
		goto out_destroy;
	rc = upload_weights(e, err, errlen);
	if (rc)
		goto out_destroy;
	rc = alloc_state(e, err, errlen);
	if (rc)
		goto out_destroy;
	rc = probe(e, &info, err, errlen);
	if (rc)
		goto out_destroy;
	*out = e;
	return KVP_OK;

out_destroy:
	kvp_cuda_engine_destroy(e);
	return rc;
}

void kvp_cuda_engine_destroy(struct kvp_cuda_engine *e)
{
	if (!e)
		return;
	/* nothing may still be running on what is freed; this also makes the engine's
	 * device current on this thread, which cuBLAS expects of its handle's destroy */
	if (e->stream)
		(void)kvp_device_stream_sync(e->stream);
	kvp_cuda_blas_destroy(e->blas);
	if (e->output != e->embd)
		kvp_device_free(e->output);
	kvp_device_free(e->embd);
	kvp_device_free(e->output_norm);
	if (e->layers) {
		for (uint32_t l = 0; l < e->m->cfg.n_layers; l++) {
			struct cuda_layer *d = &e->layers[l];
			kvp_device_free(d->attn_norm);
			kvp_device_free(d->ffn_norm);
			kvp_device_free(d->wq);
			kvp_device_free(d->wkv);
			kvp_device_free(d->wo);
			kvp_device_free(d->w_gate_up);
			kvp_device_free(d->w_down);
		}
		free(e->layers);
	}
	kvp_device_free(e->x);
	kvp_device_free(e->xb);
	kvp_device_free(e->q);
	kvp_device_free(e->kv);
	kvp_device_free(e->att);
	kvp_device_free(e->gate_up);
	kvp_device_free(e->hact);
	kvp_device_free(e->scratch);
	kvp_device_free(e->d_tokens);
	kvp_device_free(e->d_table);
	kvp_device_free(e->d_logits);
	kvp_device_host_free(e->h_tokens);
	kvp_device_host_free(e->h_table);
	kvp_device_host_free(e->h_logits);
	kvp_device_stream_destroy(e->stream);
	free(e);
}

/* One step: rows tokens (d_tok, on the device) at positions pos .. pos+rows-1. Queued
 * on the stream; returns the first launch failure. */
static int forward_rows(struct kvp_cuda_engine *e, const struct kvp_cuda_kv *base,
			const uint32_t *d_tok, uint32_t rows, uint32_t pos, uint32_t kv_write_from)
{
	const struct kvp_model_config *mc = &e->m->cfg;
	const int dim = (int)mc->dim, ffn = (int)mc->ffn, r = (int)rows;
	const int qd = (int)e->q_dim, kvd = (int)e->kv_dim;
	const enum kvp_cuda_dtype wt = e->wt;
	void *s = e->stream;
	struct kvp_cuda_kv kv = *base;
	int rc;

	rc = kvp_cuda_embed(s, e->x, e->embd, wt, d_tok, rows, mc->dim);
	for (uint32_t l = 0; l < mc->n_layers && !rc; l++) {
		const struct cuda_layer *w = &e->layers[l];

		kv.layer = l;
		if ((rc = kvp_cuda_rmsnorm(s, e->xb, wt, dim, e->x, dim, w->attn_norm, rows, mc->dim,
					   mc->rms_eps)) ||
		    (rc = kvp_cuda_gemm(e->blas, e->xb, dim, w->wq, dim, wt, e->q, qd, r, qd, dim,
					false)) ||
		    (rc = kvp_cuda_gemm(e->blas, e->xb, dim, w->wkv, dim, wt, e->kv, 2 * kvd, r,
					2 * kvd, dim, false)) ||
		    (rc = kvp_cuda_rope(s, e->q, qd, rows, mc->n_heads, mc->head_dim, mc->rope_dim,
					pos, mc->rope_base)) ||
		    (rc = kvp_cuda_rope(s, e->kv, 2 * kvd, rows, mc->n_kv_heads, mc->head_dim,
					mc->rope_dim, pos, mc->rope_base)))
			break;
		/* rows below kv_write_from are a cached prefix: its KV is already there, and
		 * another request may be reading it */
		if (pos + rows > kv_write_from) {
			uint32_t skip = kv_write_from > pos ? kv_write_from - pos : 0;
			const float *k = e->kv + (size_t)skip * 2 * kvd;
			rc = kvp_cuda_kv_store(s, &kv, pos + skip, rows - skip, k, 2 * (size_t)kvd,
					       k + kvd, 2 * (size_t)kvd);
			if (rc)
				break;
		}
		if ((rc = kvp_cuda_attention(s, &kv, e->q, e->att, wt, rows, pos, mc->n_heads,
					     e->scratch, e->scratch_bytes)) ||
		    (rc = kvp_cuda_gemm(e->blas, e->att, qd, w->wo, qd, wt, e->x, dim, r, dim, qd,
					true)) ||
		    (rc = kvp_cuda_rmsnorm(s, e->xb, wt, dim, e->x, dim, w->ffn_norm, rows, mc->dim,
					   mc->rms_eps)) ||
		    (rc = kvp_cuda_gemm(e->blas, e->xb, dim, w->w_gate_up, dim, wt, e->gate_up,
					2 * (size_t)ffn, r, 2 * ffn, dim, false)) ||
		    (rc = kvp_cuda_swiglu(s, e->hact, wt, ffn, e->gate_up, 2 * (size_t)ffn,
					  e->gate_up + ffn, 2 * (size_t)ffn, rows, mc->ffn)) ||
		    (rc = kvp_cuda_gemm(e->blas, e->hact, ffn, w->w_down, ffn, wt, e->x, dim, r, dim,
					ffn, true)))
			break;
	}
	return rc;
}

int kvp_cuda_engine_forward(struct kvp_cuda_engine *e, void *const *blocks, uint32_t n_blocks,
			    const uint32_t *tokens, uint32_t n, uint32_t pos0,
			    uint32_t kv_write_from, float *logits)
{
	const struct kvp_model_config *mc = &e->m->cfg;
	const uint32_t b = e->block_tokens;
	struct kvp_cuda_kv kv = {
		.d_blocks = (void *const *)e->d_table,
		.block_tokens = b,
		.n_layers = mc->n_layers,
		.n_kv_heads = mc->n_kv_heads,
		.head_dim = mc->head_dim,
	};
	uint32_t done = 0, rows = 0, need;
	int rc, sync;

	/* sizes, positions and token ids were checked by kvp_engine_forward_batch */
	need = (pos0 + n + b - 1) / b;   /* <= table_cap, as pos0 + n <= ctx */

	/* The staging buffers are free: every forward waits for its stream before it
	 * returns. The first kvp_device call also makes the device current on this thread,
	 * which the kernel launches and cuBLAS below rely on. */
	memcpy(e->h_tokens, tokens, (size_t)n * sizeof(uint32_t));
	memcpy(e->h_table, blocks, (size_t)need * sizeof(void *));
	rc = kvp_device_upload_async(e->d_tokens, e->h_tokens, (size_t)n * sizeof(uint32_t),
				     e->stream);
	if (!rc)
		rc = kvp_device_upload_async(e->d_table, e->h_table, (size_t)need * sizeof(void *),
					     e->stream);
	while (!rc && done < n) {
		rows = n - done < e->max_batch ? n - done : e->max_batch;
		kv.n_blocks = (pos0 + done + rows + b - 1) / b;   /* what this step may read */
		rc = forward_rows(e, &kv, e->d_tokens + done, rows, pos0 + done, kv_write_from);
		done += rows;
	}
	if (!rc && logits) {
		const float *last = e->x + (size_t)(rows - 1) * mc->dim;
		rc = kvp_cuda_rmsnorm(e->stream, e->xb, e->wt, mc->dim, last, mc->dim,
				      e->output_norm, 1, mc->dim, mc->rms_eps);
		if (!rc)
			rc = kvp_cuda_gemm(e->blas, e->xb, mc->dim, e->output, mc->dim, e->wt,
					   e->d_logits, mc->vocab, 1, (int)mc->vocab, (int)mc->dim,
					   false);
		if (!rc)
			rc = kvp_device_download_async(e->h_logits, e->d_logits,
						       (size_t)mc->vocab * sizeof(float), e->stream);
	}
	/* wait even after a failed launch: copies may still be reading the staging */
	sync = kvp_device_stream_sync(e->stream);
	if (rc)
		return rc;
	if (sync)
		return KVP_EIO;
	if (logits)
		memcpy(logits, e->h_logits, (size_t)mc->vocab * sizeof(float));
	return KVP_OK;
}
