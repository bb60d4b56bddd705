/*
 * engine.c - the engine's front: picks a backend from the table (backend.h), checks
 * every call before a backend sees it, and answers what backends share (the KV block
 * size, the model, the optional figures' defaults).
 *
 *   kvp_engine_create ──▶ config checks ──▶ ops->create ──▶ struct kvp_engine
 *   kvp_engine_forward_batch ──▶ batch_check (every sequence, before anything runs)
 *                            ──▶ ops->forward
 *
 * The forward pass itself is each backend's: engine/cpu/backend_cpu.c (the reference)
 * and engine/cuda/backend_cuda.c.
 */
#include "backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

struct kvp_engine {
	const struct kvp_model *m;
	const struct kvp_backend_ops *ops;
	enum kvp_backend backend;
	void *state;                  /* the backend's */
	enum kvp_kv_dtype kv_dtype;
	uint32_t block_tokens;
	size_t block_bytes;
};

static const struct kvp_backend_ops *backend_ops(enum kvp_backend b)
{
	switch (b) {
	case KVP_BACKEND_CPU: return &kvp_backend_cpu;
	case KVP_BACKEND_CUDA: return &kvp_backend_cuda;
	}
	return NULL;
}

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

size_t kvp_kv_block_bytes(uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
			  uint32_t block_tokens, enum kvp_kv_dtype dtype)
{
	size_t el = dtype == KVP_KV_F16 ? 2 : 4;

	return (size_t)n_layers * 2 * n_kv_heads * block_tokens * head_dim * el;
}

const char *kvp_kv_dtype_name(enum kvp_kv_dtype t)
{
	switch (t) {
	case KVP_KV_F32: return "f32";
	case KVP_KV_F16: return "f16";
	}
	return "unknown";
}

const char *kvp_backend_name(enum kvp_backend b)
{
	const struct kvp_backend_ops *ops = backend_ops(b);

	return ops ? ops->name : "unknown";
}

int kvp_engine_probe(enum kvp_backend b, char *desc, size_t desclen)
{
	const struct kvp_backend_ops *ops = backend_ops(b);

	if (desc && desclen)
		desc[0] = '\0';
	if (!ops) {
		say(desc, desclen, "unknown backend %d", (int)b);
		return KVP_EINVAL;
	}
	if (!ops->probe) {
		say(desc, desclen, "%s", ops->name);
		return KVP_OK;
	}
	return ops->probe(0, desc, desclen);
}

int kvp_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      struct kvp_engine **out)
{
	const struct kvp_backend_ops *ops = backend_ops(cfg->backend);
	struct kvp_engine *e;
	int rc;

	if (cfg->err && cfg->errlen)
		cfg->err[0] = '\0';
	if (!ops) {
		say(cfg->err, cfg->errlen, "unknown backend %d", (int)cfg->backend);
		return KVP_EINVAL;
	}
	if (cfg->threads < 1 || cfg->block_tokens == 0 || cfg->max_batch == 0 ||
	    (cfg->kv_dtype != KVP_KV_F32 && cfg->kv_dtype != KVP_KV_F16)) {
		say(cfg->err, cfg->errlen,
		    "threads, block_tokens and max_batch must be at least 1, kv_dtype f32 or f16");
		return KVP_EINVAL;
	}
	if (!(ops->kv_dtypes & (1u << cfg->kv_dtype))) {
		say(cfg->err, cfg->errlen, "the %s backend does not store KV in %s", ops->name,
		    kvp_kv_dtype_name(cfg->kv_dtype));
		return KVP_EUNSUPPORTED;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return KVP_ENOMEM;
	e->m = m;
	e->ops = ops;
	e->backend = cfg->backend;
	e->kv_dtype = cfg->kv_dtype;
	e->block_tokens = cfg->block_tokens;
	rc = ops->create(m, cfg, &e->state, cfg->err, cfg->errlen);
	if (rc) {
		free(e);
		return rc;
	}
	e->block_bytes = ops->block_bytes(e->state);
	*out = e;
	return KVP_OK;
}

void kvp_engine_destroy(struct kvp_engine *e)
{
	if (!e)
		return;
	e->ops->destroy(e->state);
	free(e);
}

const struct kvp_model *kvp_engine_model(const struct kvp_engine *e)
{
	return e->m;
}

enum kvp_backend kvp_engine_backend(const struct kvp_engine *e)
{
	return e->backend;
}

enum kvp_kv_dtype kvp_engine_kv_dtype(const struct kvp_engine *e)
{
	return e->kv_dtype;
}

size_t kvp_engine_block_bytes(const struct kvp_engine *e)
{
	return e->block_bytes;
}

size_t kvp_engine_token_bytes(const struct kvp_engine *e)
{
	return e->block_bytes / e->block_tokens;
}

struct kvp_threadpool *kvp_engine_threads(struct kvp_engine *e)
{
	return e->ops->threads ? e->ops->threads(e->state) : NULL;
}

const char *kvp_engine_kernels(const struct kvp_engine *e)
{
	return e->ops->kernels ? e->ops->kernels(e->state) : e->ops->name;
}

double kvp_engine_peak_gflops(struct kvp_engine *e)
{
	return e->ops->peak_gflops ? e->ops->peak_gflops(e->state) : 0.0;
}

size_t kvp_engine_weight_bytes(const struct kvp_engine *e)
{
	return e->ops->weight_bytes ? e->ops->weight_bytes(e->state) : 0;
}

/* Every sequence fits the model and its own table; KVP_EINVAL otherwise. */
static int batch_check(const struct kvp_engine *e, const struct kvp_engine_seq *seqs,
		       uint32_t n_seqs)
{
	const struct kvp_model_config *mc = &e->m->cfg;

	if (n_seqs == 0)
		return KVP_EINVAL;
	for (uint32_t s = 0; s < n_seqs; s++) {
		const struct kvp_engine_seq *q = &seqs[s];
		uint64_t end = (uint64_t)q->pos0 + q->n;

		if (q->n == 0 || end > mc->ctx || (uint64_t)q->n_blocks * e->block_tokens < end)
			return KVP_EINVAL;
		if (kvp_model_check_tokens(e->m, q->tokens, q->n, NULL) != 0)
			return KVP_EINVAL;
	}
	return KVP_OK;
}

int kvp_engine_forward_batch(struct kvp_engine *e, const struct kvp_engine_seq *seqs,
			     uint32_t n_seqs)
{
	int rc = batch_check(e, seqs, n_seqs);

	if (rc)
		return rc;
	return e->ops->forward(e->state, seqs, n_seqs);
}

int kvp_engine_forward(struct kvp_engine *e, void *const *blocks, uint32_t n_blocks,
		       const uint32_t *tokens, uint32_t n, uint32_t pos0, uint32_t kv_write_from,
		       float *logits)
{
	const struct kvp_engine_seq seq = {
		.blocks = blocks, .n_blocks = n_blocks, .tokens = tokens, .n = n,
		.pos0 = pos0, .kv_write_from = kv_write_from, .logits = logits,
	};

	return kvp_engine_forward_batch(e, &seq, 1);
}
