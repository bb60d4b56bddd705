/*
 * model_tensors.c - bind a GGUF file's tensors to the model (model_impl.h).
 *
 * Shapes: GGUF's ne[0] is the contiguous (input) dimension, so a tensor with
 * ne = [in, out] is the row-major matrix (out, in) of kvp_model.h:
 *
 *     token_embd        [dim, vocab]          output         [dim, vocab] (optional)
 *     attn_q            [dim, n_heads*hd]     attn_k, attn_v [dim, n_kv*hd]
 *     attn_output       [n_heads*hd, dim]     ffn_gate, ffn_up [dim, ffn]
 *     ffn_down          [ffn, dim]            *_norm         [dim]
 *     attn_q.bias       [n_heads*hd]          attn_k/v.bias  [n_kv*hd]
 *     attn_output.bias  [dim]                 ffn_gate/up.bias [ffn]   ffn_down.bias [dim]
 *     rope_freqs        [rope_dim / 2]
 *
 * Matrices are used in place, in the file's type (any type the kernels compute with).
 * Vectors are used in place when they are aligned f32, else converted into one owned
 * buffer of 64-aligned slots:
 *
 *     owned: |blk.0.attn_norm (f16->f32)|blk.0.attn_q.bias|...|   (small: vectors only)
 *
 * Every tensor of the file must be one of these: a tensor the engine would not use
 * means a model computed differently, and is refused by name.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

struct binding {
	char name[64];
	uint64_t ne0, ne1;                 /* ne1 == 0: a vector */
	bool optional;
	struct kvp_tensor *matrix;         /* where a matrix goes */
	const float **vector;              /* where a vector goes */
	const struct kvp_gguf_tensor *t;   /* found, or NULL when optional and absent */
	bool convert;                      /* a vector that is not aligned f32 */
};

struct bindings {
	struct binding *b;
	size_t n, cap;
};

static struct binding *add(struct bindings *bs, const char *name, uint64_t ne0, uint64_t ne1)
{
	struct binding *b = &bs->b[bs->n++];

	snprintf(b->name, sizeof(b->name), "%s", name);
	b->ne0 = ne0;
	b->ne1 = ne1;
	return b;
}

static struct binding *add_matrix(struct bindings *bs, const char *name, uint64_t ne0,
				  uint64_t ne1, struct kvp_tensor *dst)
{
	struct binding *b = add(bs, name, ne0, ne1);

	b->matrix = dst;
	return b;
}

static void add_vector(struct bindings *bs, const char *name, uint64_t ne0, bool optional,
		       const float **dst)
{
	struct binding *b = add(bs, name, ne0, 0);

	b->vector = dst;
	b->optional = optional;
}

/* Every tensor of layer l. */
static void add_layer(struct bindings *bs, const struct kvp_model_config *c, uint32_t l,
		      struct kvp_layer_weights *w)
{
	const uint64_t q = (uint64_t)c->n_heads * c->head_dim;
	const uint64_t kv = (uint64_t)c->n_kv_heads * c->head_dim;
	const bool qkv_bias_required = c->arch == KVP_ARCH_QWEN2;
	char n[64];

#define LAYER(what) (snprintf(n, sizeof(n), "blk.%u.%s", l, what), n)
	add_vector(bs, LAYER("attn_norm.weight"), c->dim, false, &w->attn_norm);
	add_matrix(bs, LAYER("attn_q.weight"), c->dim, q, &w->wq);
	add_matrix(bs, LAYER("attn_k.weight"), c->dim, kv, &w->wk);
	add_matrix(bs, LAYER("attn_v.weight"), c->dim, kv, &w->wv);
	add_matrix(bs, LAYER("attn_output.weight"), q, c->dim, &w->wo);
	add_vector(bs, LAYER("ffn_norm.weight"), c->dim, false, &w->ffn_norm);
	add_matrix(bs, LAYER("ffn_gate.weight"), c->dim, c->ffn, &w->w_gate);
	add_matrix(bs, LAYER("ffn_up.weight"), c->dim, c->ffn, &w->w_up);
	add_matrix(bs, LAYER("ffn_down.weight"), c->ffn, c->dim, &w->w_down);
	add_vector(bs, LAYER("attn_q.bias"), q, !qkv_bias_required, &w->bq);
	add_vector(bs, LAYER("attn_k.bias"), kv, !qkv_bias_required, &w->bk);
	add_vector(bs, LAYER("attn_v.bias"), kv, !qkv_bias_required, &w->bv);
	if (c->arch != KVP_ARCH_LLAMA)
		return;   /* qwen2 has q, k, v biases only: any other is refused as unused */
	add_vector(bs, LAYER("attn_output.bias"), c->dim, true, &w->bo);
	add_vector(bs, LAYER("ffn_gate.bias"), c->ffn, true, &w->b_gate);
	add_vector(bs, LAYER("ffn_up.bias"), c->ffn, true, &w->b_up);
	add_vector(bs, LAYER("ffn_down.bias"), c->dim, true, &w->b_down);
#undef LAYER
}

#define PER_LAYER 16
#define GLOBAL 5

static void shape_text(char *buf, size_t cap, const struct kvp_gguf_tensor *t)
{
	if (t->n_dims <= 2)
		snprintf(buf, cap, "[%llu, %llu]", (unsigned long long)t->ne[0],
			 (unsigned long long)t->ne[1]);
	else
		snprintf(buf, cap, "[%llu, %llu, %llu, %llu]", (unsigned long long)t->ne[0],
			 (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
			 (unsigned long long)t->ne[3]);
}

/* Find b's tensor and check its shape and type. */
static int check_tensor(struct binding *b, const struct kvp_gguf *g, char *err, size_t errlen)
{
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, b->name);
	const struct kvp_ggml_type_info *ti;
	uint64_t want1 = b->ne1 ? b->ne1 : 1;
	char got[96], want[48], tn[16];

	b->t = t;
	if (!t) {
		if (b->optional)
			return KVP_OK;
		return model_fail(err, errlen, KVP_ENOTFOUND, "tensor '%s' is missing", b->name);
	}
	if (t->ne[0] != b->ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
		shape_text(got, sizeof(got), t);
		if (b->ne1)
			snprintf(want, sizeof(want), "[%llu, %llu]", (unsigned long long)b->ne0,
				 (unsigned long long)b->ne1);
		else
			snprintf(want, sizeof(want), "[%llu]", (unsigned long long)b->ne0);
		return model_fail(err, errlen, KVP_EINVAL, "tensor '%s' has shape %s, want %s",
				  b->name, got, want);
	}
	ti = kvp_ggml_type(t->type);
	if (!ti || !ti->weights)
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "tensor '%s': ggml type %s is not supported for weights", b->name,
				  kvp_ggml_type_name(t->type, tn, sizeof(tn)));
	/* read in place: an f32 element, or a block's f16 fields, at its natural alignment */
	if ((uintptr_t)t->data % (t->type == KVP_GGML_F32 ? 4 : 2))
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "tensor '%s': its data is not aligned to its elements in the file "
				  "(general.alignment 1)", b->name);
	b->convert = b->vector && t->type != KVP_GGML_F32;
	return KVP_OK;
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)*(const void *const *)a, y = (uintptr_t)*(const void *const *)b;

	return x < y ? -1 : x > y;
}

/* Every tensor of the file is one the engine uses: the bound tensors sorted, each of
 * the file's looked up (a hostile file of 65,536 tensors costs n log n, not n^2). */
static int check_all_used(const struct kvp_model *m, const struct bindings *bs, char *err,
			  size_t errlen)
{
	size_t found = 0, n = kvp_gguf_n_tensors(m->file);
	const void **used;

	for (size_t i = 0; i < bs->n; i++)
		found += bs->b[i].t != NULL;
	if (found == n)
		return KVP_OK;
	used = KVP_MODEL_CALLOC(found ? found : 1, sizeof(*used));
	if (!used)
		return model_fail(err, errlen, KVP_ENOMEM, "out of memory checking the tensors");
	found = 0;
	for (size_t i = 0; i < bs->n; i++)
		if (bs->b[i].t)
			used[found++] = bs->b[i].t;
	qsort(used, found, sizeof(*used), cmp_ptr);
	for (size_t i = 0; i < n; i++) {
		const struct kvp_gguf_tensor *t = kvp_gguf_tensor_at(m->file, i);

		if (!bsearch(&t, used, found, sizeof(*used), cmp_ptr)) {
			KVP_MODEL_FREE(used);
			return model_fail(err, errlen, KVP_EUNSUPPORTED,
					  "tensor '%s' is not one a %s model computes with: refused "
					  "rather than computed differently", t->name, m->cfg.arch_name);
		}
	}
	KVP_MODEL_FREE(used);
	return model_fail(err, errlen, KVP_EINTERNAL, "tensor count mismatch");
}

/* The matrix of b, in place. */
static void place_matrix(const struct binding *b)
{
	const struct kvp_gguf_tensor *t = b->t;

	*b->matrix = (struct kvp_tensor){
		.data = t->data,
		.type = t->type,
		.rows = (uint32_t)t->ne[1],
		.cols = (uint32_t)t->ne[0],
		.row_bytes = kvp_ggml_row_bytes(t->type, t->ne[0]),
	};
}

/* The vectors that need converting: one owned buffer, each in its 64-aligned slot;
 * the others in place. */
static int place_vectors(struct kvp_model *m, struct bindings *bs, char *err, size_t errlen)
{
	size_t owned = 0;

	for (size_t i = 0; i < bs->n; i++)
		if (bs->b[i].t && bs->b[i].convert)
			owned += (bs->b[i].ne0 * sizeof(float) + MODEL_ALIGN - 1) / MODEL_ALIGN *
				 MODEL_ALIGN;
	if (owned) {
		m->owned = KVP_MODEL_ALIGNED_ALLOC(MODEL_ALIGN, owned);
		if (!m->owned)
			return model_fail(err, errlen, KVP_ENOMEM,
					  "out of memory converting vectors to f32 (%zu bytes)", owned);
	}
	owned = 0;
	for (size_t i = 0; i < bs->n; i++) {
		const struct binding *b = &bs->b[i];
		float *dst;

		if (!b->t || !b->vector)
			continue;
		if (!b->convert) {
			*b->vector = b->t->data;
			continue;
		}
		dst = (float *)((char *)m->owned + owned);
		(void)kvp_dequant_row(b->t->type, b->t->data, dst, (size_t)b->ne0);
		*b->vector = dst;
		owned += (b->ne0 * sizeof(float) + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
	}
	return KVP_OK;
}

/* What was loaded: parameters, bytes, tensors of each type, features. */
static void tally(struct kvp_model *m, const struct bindings *bs)
{
	struct kvp_model_config *c = &m->cfg;

	for (size_t i = 0; i < bs->n; i++) {
		const struct kvp_gguf_tensor *t = bs->b[i].t;

		if (!t)
			continue;
		c->n_params += t->ne[0] * t->ne[1];
		c->weight_bytes += t->nbytes;
		if (t->type < sizeof(c->type_count) / sizeof(c->type_count[0]))
			c->type_count[t->type]++;
	}
	c->file_type = m->layers[0].wq.type;
	c->tied_output = m->output.data == NULL;
	if (c->tied_output)
		m->output = m->tok_embd;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];

		c->attn_bias |= w->bq || w->bk || w->bv || w->bo;
		c->ffn_bias |= w->b_gate || w->b_up || w->b_down;
	}
}

int model_bind(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	struct bindings bs = { .cap = GLOBAL + PER_LAYER * (size_t)c->n_layers };
	int rc = KVP_OK;

	bs.b = KVP_MODEL_CALLOC(bs.cap, sizeof(*bs.b));
	m->layers = KVP_MODEL_CALLOC(c->n_layers, sizeof(*m->layers));
	if (!bs.b || !m->layers) {
		rc = model_fail(err, errlen, KVP_ENOMEM, "out of memory for %u layers", c->n_layers);
		goto out_free;
	}
	add_matrix(&bs, "token_embd.weight", c->dim, c->vocab, &m->tok_embd);
	for (uint32_t l = 0; l < c->n_layers; l++)
		add_layer(&bs, c, l, &m->layers[l]);
	add_vector(&bs, "output_norm.weight", c->dim, false, &m->output_norm);
	add_matrix(&bs, "output.weight", c->dim, c->vocab, &m->output)->optional = true;
	if (c->arch == KVP_ARCH_LLAMA)   /* Llama 3's factors; qwen2 files have none */
		add_vector(&bs, "rope_freqs.weight", c->rope_dim / 2, true, &m->rope_freqs);
	for (size_t i = 0; i < bs.n && rc == KVP_OK; i++)
		rc = check_tensor(&bs.b[i], m->file, err, errlen);
	if (rc == KVP_OK)
		rc = check_all_used(m, &bs, err, errlen);
	if (rc == KVP_OK)
		rc = place_vectors(m, &bs, err, errlen);
	if (rc)
		goto out_free;
	for (size_t i = 0; i < bs.n; i++)
		if (bs.b[i].t && bs.b[i].matrix)
			place_matrix(&bs.b[i]);
	c->rope_freq_factors = m->rope_freqs != NULL;
	for (uint32_t i = 0; c->rope_freq_factors && i < c->rope_dim / 2 && rc == KVP_OK; i++)
		if (!(m->rope_freqs[i] > 0.0f) || !isfinite(m->rope_freqs[i]))
			rc = model_fail(err, errlen, KVP_EINVAL,
					"tensor 'rope_freqs.weight': factor %u is %g: it must be "
					"finite and > 0", i, (double)m->rope_freqs[i]);
	if (rc)
		goto out_free;
	tally(m, &bs);
out_free:
	KVP_MODEL_FREE(bs.b);
	return rc;
}
