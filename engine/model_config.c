/*
 * model_config.c - what a GGUF file's keys ask of the engine (model_impl.h): the
 * architecture and its sizes, rotary embedding and its scaling, and the refusals.
 *
 *   general.architecture   llama (Mistral's files too), qwen2; anything else refused
 *   split.count > 1        refused: one part of a split file
 *   <arch>.* sizes         a u32, or a per-layer array whose values are all equal
 *   rope.scaling.type      none, linear (with .factor); a .factor alone, or the legacy
 *                          .scale_linear, is linear too (as llama.cpp reads them);
 *                          yarn and any other type refused
 *   rope_freqs.weight      per-pair frequency factors (Llama 3): read by model_bind
 *   expert_count > 0       refused (mixture of experts)
 *   attention.sliding_window shorter than the context: the context is cut to it
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_impl.h"

static bool str_is(const char *s, size_t n, const char *want)
{
	return n == strlen(want) && memcmp(s, want, n) == 0;
}

const char *model_key(const struct kvp_model *m, const char *rest, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s.%s", m->cfg.arch_name, rest);
	return buf;
}

/* Keys a converter may write per layer (an array of block_count values). */
static bool per_layer_key(const char *rest)
{
	static const char *const keys[] = { "feed_forward_length", "attention.head_count",
					    "attention.head_count_kv" };

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (strcmp(rest, keys[i]) == 0)
			return true;
	return false;
}

/* A size key: a u32, or for a per-layer key an array of block_count integers all equal. */
static int get_size(const struct kvp_model *m, const char *rest, bool required, uint32_t def,
		    uint32_t *out, char *err, size_t errlen)
{
	char key[96];
	uint32_t etype, first = 0, v;
	uint64_t n;
	int rc;

	model_key(m, rest, key, sizeof(key));
	rc = kvp_gguf_get_u32(m->file, key, out);
	if (rc == KVP_OK)
		return KVP_OK;
	if (rc == KVP_ENOTFOUND) {
		if (required)
			return model_fail(err, errlen, KVP_ENOTFOUND, "key '%s' is missing", key);
		*out = def;
		return KVP_OK;
	}
	if (!per_layer_key(rest) || kvp_gguf_get_arr(m->file, key, &etype, &n) != KVP_OK ||
	    n == 0)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is not an unsigned integer that fits in 32 bits", key);
	if (n != m->cfg.n_layers)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is an array of %llu values for %u layers", key,
				  (unsigned long long)n, m->cfg.n_layers);
	for (uint64_t i = 0; i < n; i++) {
		if (kvp_gguf_get_arr_u32(m->file, key, i, &v) != KVP_OK)
			return model_fail(err, errlen, KVP_EINVAL,
					  "key '%s' is an array of %llu values, not of unsigned "
					  "32-bit integers", key, (unsigned long long)n);
		if (i == 0)
			first = v;
		else if (v != first)
			return model_fail(err, errlen, KVP_EUNSUPPORTED,
					  "key '%s' varies per layer (%u in layer 0, %u in layer %llu): "
					  "layers of different sizes are not supported", key, first, v,
					  (unsigned long long)i);
	}
	*out = first;
	return KVP_OK;
}

static int get_f32(const struct kvp_model *m, const char *rest, float def, float *out,
		   char *err, size_t errlen)
{
	char key[96];
	int rc = kvp_gguf_get_f32(m->file, model_key(m, rest, key, sizeof(key)), out);

	if (rc == KVP_ENOTFOUND) {
		*out = def;
		return KVP_OK;
	}
	if (rc)
		return model_fail(err, errlen, KVP_EINVAL, "key '%s' is not a float", key);
	return KVP_OK;
}

static int check_dim(const struct kvp_model *m, const char *rest, uint32_t v, uint32_t max,
		     char *err, size_t errlen)
{
	char key[96];

	if (v == 0 || v > max)
		return model_fail(err, errlen, KVP_EINVAL, "key '%s' is %u (1 to %u)",
				  model_key(m, rest, key, sizeof(key)), v, max);
	return KVP_OK;
}

/* general.architecture, and that the file is whole (not one part of a split). */
static int read_arch(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	const char *s;
	size_t len;
	uint32_t parts, no;
	int rc = kvp_gguf_get_u32(m->file, "split.count", &parts);

	if (rc == KVP_OK && parts > 1) {
		if (kvp_gguf_get_u32(m->file, "split.no", &no) != KVP_OK)
			no = 0;
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "key 'split.count' is %u: this file is part %u of %u of a split "
				  "GGUF; join the parts into one file (llama-gguf-split --merge "
				  "FIRST-PART OUT.gguf) and load that", parts, no + 1, parts);
	}
	rc = kvp_gguf_get_str(m->file, "general.architecture", &s, &len);
	if (rc == KVP_ENOTFOUND)
		return model_fail(err, errlen, KVP_ENOTFOUND, "key 'general.architecture' is missing");
	if (rc)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key 'general.architecture' is not a string");
	if (str_is(s, len, "llama")) {
		c->arch = KVP_ARCH_LLAMA;
		c->rope_style = KVP_ROPE_ADJACENT;
	} else if (str_is(s, len, "qwen2")) {
		c->arch = KVP_ARCH_QWEN2;
		c->rope_style = KVP_ROPE_HALVES;
	} else {
		char arch[64];

		model_copy_name(arch, sizeof(arch), s, len);
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "key 'general.architecture' is '%s': 'llama' (and Mistral's llama "
				  "files) and 'qwen2' are supported", arch);
	}
	memcpy(c->arch_name, s, len);
	c->arch_name[len] = '\0';
	return KVP_OK;
}

/* The sizes: embedding, layers, FFN, heads, context, head sizes. */
static int read_sizes(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	char key[96];
	uint32_t u;
	int rc;

	/* block_count first: the per-layer arrays are checked against it */
	if ((rc = get_size(m, "block_count", true, 0, &c->n_layers, err, errlen)) ||
	    (rc = get_size(m, "embedding_length", true, 0, &c->dim, err, errlen)) ||
	    (rc = get_size(m, "feed_forward_length", true, 0, &c->ffn, err, errlen)) ||
	    (rc = get_size(m, "attention.head_count", true, 0, &c->n_heads, err, errlen)) ||
	    (rc = get_size(m, "context_length", true, 0, &c->ctx, err, errlen)))
		return rc;
	if ((rc = check_dim(m, "embedding_length", c->dim, MODEL_MAX_DIM, err, errlen)) ||
	    (rc = check_dim(m, "block_count", c->n_layers, MODEL_MAX_LAYERS, err, errlen)) ||
	    (rc = check_dim(m, "feed_forward_length", c->ffn, MODEL_MAX_DIM, err, errlen)) ||
	    (rc = check_dim(m, "attention.head_count", c->n_heads, c->dim, err, errlen)) ||
	    (rc = check_dim(m, "context_length", c->ctx, MODEL_MAX_CTX, err, errlen)))
		return rc;
	c->ctx_file = c->ctx;
	if (c->dim % c->n_heads)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s': %u does not divide the embedding length %u",
				  model_key(m, "attention.head_count", key, sizeof(key)), c->n_heads,
				  c->dim);
	c->head_dim = c->dim / c->n_heads;
	if (c->head_dim % 2)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s': head dim %u (embedding %u / %u heads) is odd",
				  model_key(m, "attention.head_count", key, sizeof(key)), c->head_dim,
				  c->dim, c->n_heads);
	if ((rc = get_size(m, "attention.head_count_kv", false, c->n_heads, &c->n_kv_heads, err,
			   errlen)))
		return rc;
	if (c->n_kv_heads == 0 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is %u: it must divide the head count %u",
				  model_key(m, "attention.head_count_kv", key, sizeof(key)),
				  c->n_kv_heads, c->n_heads);
	/* explicit head sizes other than dim / n_heads are not supported */
	static const char *const lengths[] = { "attention.key_length", "attention.value_length" };
	for (size_t i = 0; i < 2; i++) {
		if ((rc = get_size(m, lengths[i], false, c->head_dim, &u, err, errlen)))
			return rc;
		if (u != c->head_dim)
			return model_fail(err, errlen, KVP_EUNSUPPORTED,
					  "key '%s' is %u: only embedding / head count (%u) is "
					  "supported", model_key(m, lengths[i], key, sizeof(key)), u,
					  c->head_dim);
	}
	return KVP_OK;
}

/* The linear rope scaling factor: rope.scaling.type linear with .factor; a .factor
 * without a type; the legacy .scale_linear. 1 when none. */
static int read_rope_scaling(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	char key[96], st[64] = "";
	const char *s;
	size_t len;
	float factor = 0.0f, legacy = 0.0f, attn = 1.0f;
	int rc;

	rc = kvp_gguf_get_str(m->file, model_key(m, "rope.scaling.type", key, sizeof(key)), &s,
			      &len);
	if (rc != KVP_OK && rc != KVP_ENOTFOUND)
		return model_fail(err, errlen, KVP_EINVAL, "key '%s' is not a string", key);
	if (rc == KVP_OK)
		model_copy_name(st, sizeof(st), s, len);
	if ((rc = get_f32(m, "rope.scaling.factor", 0.0f, &factor, err, errlen)) ||
	    (rc = get_f32(m, "rope.scale_linear", 0.0f, &legacy, err, errlen)) ||
	    (rc = get_f32(m, "rope.scaling.attn_factor", 1.0f, &attn, err, errlen)))
		return rc;
	if (st[0] && strcmp(st, "none") && strcmp(st, "linear"))
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "key '%s' is '%s': rope scaling none and linear (and Llama 3's "
				  "rope_freqs.weight) are supported", key, st);
	if (attn != 1.0f)
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "key '%s' is %g: an attention factor other than 1 is not supported",
				  model_key(m, "rope.scaling.attn_factor", key, sizeof(key)),
				  (double)attn);
	c->rope_scale = 1.0f;
	if (strcmp(st, "none") == 0)
		return KVP_OK;
	float probe;
	if (kvp_gguf_get_f32(m->file, model_key(m, "rope.scaling.factor", key, sizeof(key)),
			     &probe) == KVP_ENOTFOUND)
		factor = legacy;   /* the older key of the same thing, read when it is absent */
	if (factor == 0.0f && strcmp(st, "linear") == 0)
		return model_fail(err, errlen, KVP_EINVAL, "key '%s' is 'linear' without a factor",
				  model_key(m, "rope.scaling.type", key, sizeof(key)));
	if (factor != 0.0f && (!(factor > 0.0f) || !isfinite(factor)))
		return model_fail(err, errlen, KVP_EINVAL,
				  "rope scaling factor %g: it must be finite and > 0", (double)factor);
	if (factor != 0.0f)
		c->rope_scale = factor;
	return KVP_OK;
}

/* Rotary embedding and normalisation. */
static int read_rope(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	char key[96];
	int rc;

	if ((rc = get_size(m, "rope.dimension_count", false, c->head_dim, &c->rope_dim, err,
			   errlen)))
		return rc;
	if (c->rope_dim == 0 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is %u: it must be even, 2 to head dim %u",
				  model_key(m, "rope.dimension_count", key, sizeof(key)), c->rope_dim,
				  c->head_dim);
	if ((rc = get_f32(m, "attention.layer_norm_rms_epsilon", MODEL_DEFAULT_EPS, &c->rms_eps,
			  err, errlen)))
		return rc;
	if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is %g: it must be finite and > 0",
				  model_key(m, "attention.layer_norm_rms_epsilon", key, sizeof(key)),
				  (double)c->rms_eps);
	if ((rc = get_f32(m, "rope.freq_base", MODEL_DEFAULT_ROPE_BASE, &c->rope_base, err,
			  errlen)))
		return rc;
	if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base))
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is %g: it must be finite and > 0",
				  model_key(m, "rope.freq_base", key, sizeof(key)),
				  (double)c->rope_base);
	return read_rope_scaling(m, err, errlen);
}

/* What the engine does not compute: experts refused; a sliding window shorter than the
 * context cuts the context to it (within the window both attentions are the same). */
static int read_refusals(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	char key[96];
	uint32_t u;
	int rc;

	if ((rc = get_size(m, "expert_count", false, 0, &u, err, errlen)))
		return rc;
	if (u > 0)
		return model_fail(err, errlen, KVP_EUNSUPPORTED,
				  "key '%s' is %u: mixture-of-experts models are not supported",
				  model_key(m, "expert_count", key, sizeof(key)), u);
	if ((rc = get_size(m, "attention.sliding_window", false, 0, &u, err, errlen)))
		return rc;
	if (u > 0 && u < c->ctx)
		c->ctx = u;
	return KVP_OK;
}

/* vocab: token_embd's shape is authoritative; the other sources must agree. */
static int read_vocab(struct kvp_model *m, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	const struct kvp_gguf_tensor *te = kvp_gguf_find_tensor(m->file, "token_embd.weight");
	char key[96];
	uint32_t u, etype;
	uint64_t n;
	int rc;

	if (!te)
		return model_fail(err, errlen, KVP_ENOTFOUND, "tensor 'token_embd.weight' is missing");
	if (te->ne[1] == 0 || te->ne[1] > MODEL_MAX_VOCAB)
		return model_fail(err, errlen, KVP_EINVAL,
				  "tensor 'token_embd.weight': vocab %llu (1 to %u)",
				  (unsigned long long)te->ne[1], MODEL_MAX_VOCAB);
	c->vocab = (uint32_t)te->ne[1];
	if ((rc = get_size(m, "vocab_size", false, c->vocab, &u, err, errlen)))
		return rc;
	if (u != c->vocab)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key '%s' is %u but tensor 'token_embd.weight' has %u rows",
				  model_key(m, "vocab_size", key, sizeof(key)), u, c->vocab);
	rc = kvp_gguf_get_arr(m->file, "tokenizer.ggml.tokens", &etype, &n);
	if (rc == 0 && etype != KVP_GGUF_STRING)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key 'tokenizer.ggml.tokens' is not an array of strings");
	if (rc == 0 && n != c->vocab)
		return model_fail(err, errlen, KVP_EINVAL,
				  "key 'tokenizer.ggml.tokens' has %llu tokens but tensor "
				  "'token_embd.weight' has %u rows", (unsigned long long)n, c->vocab);
	if (rc != 0 && rc != KVP_ENOTFOUND)
		return model_fail(err, errlen, KVP_EINVAL, "key 'tokenizer.ggml.tokens' is not an array");
	return KVP_OK;
}

int model_read_config(struct kvp_model *m, const char *path, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	const char *s;
	size_t len;
	int rc;

	if ((rc = read_arch(m, err, errlen)) || (rc = read_sizes(m, err, errlen)) ||
	    (rc = read_rope(m, err, errlen)) || (rc = read_refusals(m, err, errlen)) ||
	    (rc = read_vocab(m, err, errlen)))
		return rc;
	rc = kvp_gguf_get_str(m->file, "general.name", &s, &len);
	if (rc == 0 && len > 0) {
		model_copy_name(c->name, sizeof(c->name), s, len);
	} else {
		const char *base = strrchr(path, '/');

		base = base ? base + 1 : path;
		model_copy_name(c->name, sizeof(c->name), base, strlen(base));
	}
	return KVP_OK;
}
