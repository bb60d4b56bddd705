/*
 * model.c - load a llama-family model from GGUF (kvp_model.h).
 *
 * Steps, each of which refuses the file with a message naming the key or tensor:
 *
 *     kvp_gguf_open        the file is well formed (gguf.c)
 *     read_config          general.architecture == "llama", llama.* keys, bounds
 *     bind                 every tensor present with its exact shape; sum what needs
 *                          converting
 *     place                f32 tensors used in place (pointer into the mapping);
 *                          f16/bf16 converted into one owned buffer:
 *
 *     owned: |blk.0.attn_q (f16->f32)|blk.0.attn_k|...|token_embd|   (64-aligned slots)
 *
 * Shapes: GGUF's ne[0] is the contiguous (input) dimension, so a tensor with
 * ne = [in, out] is the row-major matrix (out, in) of kvp_model.h:
 *
 *     token_embd        [dim, vocab]          output         [dim, vocab] (optional)
 *     attn_q            [dim, n_heads*hd]     attn_k, attn_v [dim, n_kv*hd]
 *     attn_output       [n_heads*hd, dim]     ffn_gate, ffn_up [dim, ffn]
 *     ffn_down          [ffn, dim]            *_norm         [dim]
 */
#include "kvp_model.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_cpu.h"
#include "kvp_gguf.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "f32 tensors are used in place: a little-endian host is required");

/* Sanity bounds: far above any llama model, low enough that every product fits. */
#define MODEL_MAX_DIM (1u << 20)        /* dim, ffn, n_heads * head_dim */
#define MODEL_MAX_VOCAB (1u << 24)
#define MODEL_MAX_LAYERS 4096u
#define MODEL_MAX_CTX (1u << 24)
#define MODEL_DEFAULT_EPS 1e-5f
#define MODEL_DEFAULT_ROPE_BASE 10000.0f
#define MODEL_ALIGN 64u

#ifndef KVP_MODEL_CALLOC
#define KVP_MODEL_CALLOC(n, s) calloc(n, s)
#define KVP_MODEL_ALIGNED_ALLOC(a, n) aligned_alloc(a, n)
#define KVP_MODEL_FREE(p) free(p)
#endif

__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}

/* ---- config ----------------------------------------------------------------------- */

static int get_u32(const struct kvp_gguf *g, const char *key, bool required, uint32_t def,
		   uint32_t *out, char *err, size_t errlen)
{
	int rc = kvp_gguf_get_u32(g, key, out);

	if (rc == KVP_ENOTFOUND && !required) {
		*out = def;
		return 0;
	}
	if (rc == KVP_ENOTFOUND)
		return fail(err, errlen, KVP_ENOTFOUND, "key '%s' is missing", key);
	if (rc)
		return fail(err, errlen, KVP_EINVAL,
			    "key '%s' is not an unsigned integer that fits in 32 bits", key);
	return 0;
}

static int get_f32(const struct kvp_gguf *g, const char *key, float def, float *out, char *err,
		   size_t errlen)
{
	int rc = kvp_gguf_get_f32(g, key, out);

	if (rc == KVP_ENOTFOUND) {
		*out = def;
		return 0;
	}
	if (rc)
		return fail(err, errlen, KVP_EINVAL, "key '%s' is not a float", key);
	return 0;
}

static bool str_is(const char *s, size_t n, const char *want)
{
	return n == strlen(want) && memcmp(s, want, n) == 0;
}

/* Copy at most dstlen - 1 bytes, printable ASCII and UTF-8 kept, control bytes as '?'. */
static void copy_name(char *dst, size_t dstlen, const char *s, size_t n)
{
	size_t k = n < dstlen - 1 ? n : dstlen - 1;

	for (size_t i = 0; i < k; i++) {
		unsigned char ch = (unsigned char)s[i];

		dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	dst[k] = '\0';
}

static int check_dim(const char *key, uint32_t v, uint32_t max, char *err, size_t errlen)
{
	if (v == 0 || v > max)
		return fail(err, errlen, KVP_EINVAL, "key '%s' is %u (1 to %u)", key, v, max);
	return 0;
}

static int read_config(struct kvp_model *m, const char *path, char *err, size_t errlen)
{
	struct kvp_model_config *c = &m->cfg;
	const struct kvp_gguf *g = m->file;
	const struct kvp_gguf_tensor *te;
	uint32_t u, etype;
	const char *s;
	uint64_t n;
	size_t len;
	int rc;

	rc = kvp_gguf_get_str(g, "general.architecture", &s, &len);
	if (rc == KVP_ENOTFOUND)
		return fail(err, errlen, KVP_ENOTFOUND, "key 'general.architecture' is missing");
	if (rc)
		return fail(err, errlen, KVP_EINVAL, "key 'general.architecture' is not a string");
	if (!str_is(s, len, "llama")) {
		char arch[64];

		copy_name(arch, sizeof(arch), s, len);
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "key 'general.architecture' is '%s': only 'llama' is supported", arch);
	}

	if ((rc = get_u32(g, "llama.embedding_length", true, 0, &c->dim, err, errlen)) ||
	    (rc = get_u32(g, "llama.block_count", true, 0, &c->n_layers, err, errlen)) ||
	    (rc = get_u32(g, "llama.feed_forward_length", true, 0, &c->ffn, err, errlen)) ||
	    (rc = get_u32(g, "llama.attention.head_count", true, 0, &c->n_heads, err, errlen)) ||
	    (rc = get_u32(g, "llama.context_length", true, 0, &c->ctx, err, errlen)))
		return rc;
	if ((rc = check_dim("llama.embedding_length", c->dim, MODEL_MAX_DIM, err, errlen)) ||
	    (rc = check_dim("llama.block_count", c->n_layers, MODEL_MAX_LAYERS, err, errlen)) ||
	    (rc = check_dim("llama.feed_forward_length", c->ffn, MODEL_MAX_DIM, err, errlen)) ||
	    (rc = check_dim("llama.attention.head_count", c->n_heads, c->dim, err, errlen)) ||
	    (rc = check_dim("llama.context_length", c->ctx, MODEL_MAX_CTX, err, errlen)))
		return rc;
	if (c->dim % c->n_heads)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.attention.head_count': %u does not divide llama.embedding_length %u",
			    c->n_heads, c->dim);
	c->head_dim = c->dim / c->n_heads;
	if (c->head_dim % 2)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.attention.head_count': head dim %u (embedding %u / %u heads) is odd",
			    c->head_dim, c->dim, c->n_heads);
	if ((rc = get_u32(g, "llama.attention.head_count_kv", false, c->n_heads, &c->n_kv_heads,
			  err, errlen)))
		return rc;
	if (c->n_kv_heads == 0 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.attention.head_count_kv' is %u: it must divide head_count %u",
			    c->n_kv_heads, c->n_heads);
	/* explicit head sizes other than dim / n_heads are not supported */
	if ((rc = get_u32(g, "llama.attention.key_length", false, c->head_dim, &u, err, errlen)))
		return rc;
	if (u != c->head_dim)
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "key 'llama.attention.key_length' is %u: only embedding / head_count (%u) is supported",
			    u, c->head_dim);
	if ((rc = get_u32(g, "llama.attention.value_length", false, c->head_dim, &u, err, errlen)))
		return rc;
	if (u != c->head_dim)
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "key 'llama.attention.value_length' is %u: only embedding / head_count (%u) is supported",
			    u, c->head_dim);
	if ((rc = get_u32(g, "llama.rope.dimension_count", false, c->head_dim, &c->rope_dim, err,
			  errlen)))
		return rc;
	if (c->rope_dim == 0 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.rope.dimension_count' is %u: it must be even, 2 to head dim %u",
			    c->rope_dim, c->head_dim);
	if ((rc = get_f32(g, "llama.attention.layer_norm_rms_epsilon", MODEL_DEFAULT_EPS,
			  &c->rms_eps, err, errlen)))
		return rc;
	if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.attention.layer_norm_rms_epsilon' is %g: it must be finite and > 0",
			    (double)c->rms_eps);
	if ((rc = get_f32(g, "llama.rope.freq_base", MODEL_DEFAULT_ROPE_BASE, &c->rope_base, err,
			  errlen)))
		return rc;
	if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base))
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.rope.freq_base' is %g: it must be finite and > 0",
			    (double)c->rope_base);

	/* what the engine would silently get wrong is refused */
	if ((rc = get_u32(g, "llama.expert_count", false, 0, &u, err, errlen)))
		return rc;
	if (u > 0)
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "key 'llama.expert_count' is %u: mixture-of-experts models are not supported", u);
	rc = kvp_gguf_get_str(g, "llama.rope.scaling.type", &s, &len);
	if (rc == 0 && !str_is(s, len, "none")) {
		char st[64];

		copy_name(st, sizeof(st), s, len);
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "key 'llama.rope.scaling.type' is '%s': rope scaling is not supported", st);
	}
	if (rc != 0 && rc != KVP_ENOTFOUND)
		return fail(err, errlen, KVP_EINVAL, "key 'llama.rope.scaling.type' is not a string");
	if (kvp_gguf_find_tensor(g, "rope_freqs.weight"))
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "tensor 'rope_freqs.weight': rope frequency factors are not supported");

	/* vocab: token_embd's shape is authoritative; the other sources must agree */
	te = kvp_gguf_find_tensor(g, "token_embd.weight");
	if (!te)
		return fail(err, errlen, KVP_ENOTFOUND, "tensor 'token_embd.weight' is missing");
	if (te->ne[1] == 0 || te->ne[1] > MODEL_MAX_VOCAB)
		return fail(err, errlen, KVP_EINVAL,
			    "tensor 'token_embd.weight': vocab %llu (1 to %u)",
			    (unsigned long long)te->ne[1], MODEL_MAX_VOCAB);
	c->vocab = (uint32_t)te->ne[1];
	rc = get_u32(g, "llama.vocab_size", false, c->vocab, &u, err, errlen);
	if (rc)
		return rc;
	if (u != c->vocab)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'llama.vocab_size' is %u but tensor 'token_embd.weight' has %u rows",
			    u, c->vocab);
	rc = kvp_gguf_get_arr(g, "tokenizer.ggml.tokens", &etype, &n);
	if (rc == 0 && etype != KVP_GGUF_STRING)
		return fail(err, errlen, KVP_EINVAL, "key 'tokenizer.ggml.tokens' is not an array of strings");
	if (rc == 0 && n != c->vocab)
		return fail(err, errlen, KVP_EINVAL,
			    "key 'tokenizer.ggml.tokens' has %llu tokens but tensor 'token_embd.weight' has %u rows",
			    (unsigned long long)n, c->vocab);
	if (rc != 0 && rc != KVP_ENOTFOUND)
		return fail(err, errlen, KVP_EINVAL, "key 'tokenizer.ggml.tokens' is not an array");

	rc = kvp_gguf_get_str(g, "general.name", &s, &len);
	if (rc == 0 && len > 0) {
		copy_name(c->name, sizeof(c->name), s, len);
	} else {
		const char *base = strrchr(path, '/');

		base = base ? base + 1 : path;
		copy_name(c->name, sizeof(c->name), base, strlen(base));
	}
	return 0;
}

/* ---- tensors ---------------------------------------------------------------------- */

struct binding {
	char name[64];
	uint64_t ne0, ne1;                 /* ne1 == 0: a vector */
	bool optional;
	const float **dst;
	const struct kvp_gguf_tensor *t;   /* found, or NULL when optional and absent */
	bool convert;
};

static void bind_set(struct binding *b, const char *name, uint64_t ne0, uint64_t ne1,
		     const float **dst)
{
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->ne0 = ne0;
	b->ne1 = ne1;
	b->dst = dst;
}

static void bind_layer(struct binding *b, const char *what, uint32_t l, uint64_t ne0,
		       uint64_t ne1, const float **dst)
{
	snprintf(b->name, sizeof(b->name), "blk.%u.%s.weight", l, what);
	b->ne0 = ne0;
	b->ne1 = ne1;
	b->dst = dst;
}

static int check_tensor(struct binding *b, const struct kvp_gguf *g, char *err, size_t errlen)
{
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, b->name);
	uint64_t want1 = b->ne1 ? b->ne1 : 1;

	b->t = t;
	if (!t) {
		if (b->optional)
			return 0;
		return fail(err, errlen, KVP_ENOTFOUND, "tensor '%s' is missing", b->name);
	}
	if (t->ne[0] != b->ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
		char got[96], want[48];

		if (t->n_dims <= 2)
			snprintf(got, sizeof(got), "[%llu, %llu]", (unsigned long long)t->ne[0],
				 (unsigned long long)t->ne[1]);
		else
			snprintf(got, sizeof(got), "[%llu, %llu, %llu, %llu]",
				 (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
				 (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
		if (b->ne1)
			snprintf(want, sizeof(want), "[%llu, %llu]", (unsigned long long)b->ne0,
				 (unsigned long long)b->ne1);
		else
			snprintf(want, sizeof(want), "[%llu]", (unsigned long long)b->ne0);
		return fail(err, errlen, KVP_EINVAL, "tensor '%s' has shape %s, want %s", b->name,
			    got, want);
	}
	if (t->type != KVP_GGML_F32 && t->type != KVP_GGML_F16 && t->type != KVP_GGML_BF16)
		return fail(err, errlen, KVP_EUNSUPPORTED,
			    "tensor '%s': ggml type %u is not supported (F32, F16, BF16 are)",
			    b->name, t->type);
	b->convert = t->type != KVP_GGML_F32 || ((uintptr_t)t->data % sizeof(float)) != 0;
	return 0;
}

static void convert(float *dst, const struct kvp_gguf_tensor *t, size_t n)
{
	switch (t->type) {
	case KVP_GGML_F16:
		kvp_cpu_f16_to_f32(dst, t->data, n);
		break;
	case KVP_GGML_BF16:
		kvp_cpu_bf16_to_f32(dst, t->data, n);
		break;
	default:
		memcpy(dst, t->data, n * sizeof(float));   /* f32 at an unaligned offset */
		break;
	}
}

static int bind_all(struct kvp_model *m, char *err, size_t errlen)
{
	const struct kvp_model_config *c = &m->cfg;
	uint64_t q = (uint64_t)c->n_heads * c->head_dim, kv = (uint64_t)c->n_kv_heads * c->head_dim;
	size_t nb = 3 + 9 * (size_t)c->n_layers, i = 0;
	struct binding *b;
	uint64_t owned = 0, params = 0;
	int rc = 0;

	b = KVP_MODEL_CALLOC(nb, sizeof(*b));
	m->layers = KVP_MODEL_CALLOC(c->n_layers, sizeof(*m->layers));
	if (!b || !m->layers) {
		rc = fail(err, errlen, KVP_ENOMEM, "out of memory for %u layers", c->n_layers);
		goto out_free;
	}
	bind_set(&b[i++], "token_embd.weight", c->dim, c->vocab, &m->tok_embd);
	for (uint32_t l = 0; l < c->n_layers; l++) {
		struct kvp_layer_weights *w = &m->layers[l];

		bind_layer(&b[i++], "attn_norm", l, c->dim, 0, &w->attn_norm);
		bind_layer(&b[i++], "attn_q", l, c->dim, q, &w->wq);
		bind_layer(&b[i++], "attn_k", l, c->dim, kv, &w->wk);
		bind_layer(&b[i++], "attn_v", l, c->dim, kv, &w->wv);
		bind_layer(&b[i++], "attn_output", l, q, c->dim, &w->wo);
		bind_layer(&b[i++], "ffn_norm", l, c->dim, 0, &w->ffn_norm);
		bind_layer(&b[i++], "ffn_gate", l, c->dim, c->ffn, &w->w_gate);
		bind_layer(&b[i++], "ffn_up", l, c->dim, c->ffn, &w->w_up);
		bind_layer(&b[i++], "ffn_down", l, c->ffn, c->dim, &w->w_down);
	}
	bind_set(&b[i++], "output_norm.weight", c->dim, 0, &m->output_norm);
	bind_set(&b[i], "output.weight", c->dim, c->vocab, &m->output);
	b[i++].optional = true;

	for (i = 0; i < nb; i++) {
		uint64_t nel;

		if ((rc = check_tensor(&b[i], m->file, err, errlen)))
			goto out_free;
		if (!b[i].t)
			continue;
		nel = b[i].t->ne[0] * b[i].t->ne[1];          /* in the file: fits */
		params += nel;
		if (b[i].convert) {
			uint64_t slot = (nel * sizeof(float) + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;

			if (__builtin_add_overflow(owned, slot, &owned) || owned > SIZE_MAX) {
				rc = fail(err, errlen, KVP_ETOOBIG, "tensor '%s': converted weights too large",
					  b[i].name);
				goto out_free;
			}
		}
	}
	m->cfg.n_params = params;
	m->cfg.file_type = kvp_gguf_find_tensor(m->file, "blk.0.attn_q.weight")->type;
	m->cfg.tied_output = b[nb - 1].t == NULL;

	if (owned) {
		m->owned = KVP_MODEL_ALIGNED_ALLOC(MODEL_ALIGN, (size_t)owned);
		if (!m->owned) {
			rc = fail(err, errlen, KVP_ENOMEM,
				  "out of memory converting weights to f32 (%llu bytes)",
				  (unsigned long long)owned);
			goto out_free;
		}
	}
	owned = 0;
	for (i = 0; i < nb; i++) {
		const struct kvp_gguf_tensor *t = b[i].t;
		uint64_t nel;

		if (!t)
			continue;
		nel = t->ne[0] * t->ne[1];
		if (!b[i].convert) {
			*b[i].dst = t->data;
			continue;
		}
		*b[i].dst = (const float *)((char *)m->owned + owned);
		convert((float *)((char *)m->owned + owned), t, (size_t)nel);
		owned += (nel * sizeof(float) + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
	}
	if (m->cfg.tied_output)
		m->output = m->tok_embd;
out_free:
	KVP_MODEL_FREE(b);
	return rc;
}

int kvp_model_load(const char *path, struct kvp_model **out, char *err, size_t errlen)
{
	struct kvp_model *m;
	int rc;

	assert(path && out);
	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	m = KVP_MODEL_CALLOC(1, sizeof(*m));
	if (!m)
		return fail(err, errlen, KVP_ENOMEM, "out of memory");
	rc = kvp_gguf_open(path, &m->file, err, errlen);
	if (rc)
		goto out_free;
	rc = read_config(m, path, err, errlen);
	if (rc)
		goto out_free;
	rc = bind_all(m, err, errlen);
	if (rc)
		goto out_free;
	*out = m;
	return 0;
out_free:
	kvp_model_free(m);
	return rc;
}

void kvp_model_free(struct kvp_model *m)
{
	if (!m)
		return;
	KVP_MODEL_FREE(m->owned);
	KVP_MODEL_FREE(m->layers);
	kvp_gguf_close(m->file);
	KVP_MODEL_FREE(m);
}

int kvp_model_check_tokens(const struct kvp_model *m, const uint32_t *tokens, size_t n,
			   size_t *bad)
{
	const uint32_t vocab = m->cfg.vocab;

	for (size_t i = 0; i < n; i++) {
		if (tokens[i] >= vocab) {
			if (bad)
				*bad = i;
			return KVP_EINVAL;
		}
	}
	return KVP_OK;
}
