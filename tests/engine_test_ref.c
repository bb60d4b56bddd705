/*
 * engine_test_ref.c - the reference forward pass of test_engine and its mutants: open
 * a GGUF file's raw tensors, run one token at a time in double, keep every position's
 * K/V. Declared in engine_test_ref.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_test_ref.h"
#include "kvp_gguf.h"

/* ---- the reference ---------------------------------------------------------------- */

const char *const ref_mutant_name[REF_N_MUTANTS] = {
	"ok", "rope-halves", "no-rope", "gqa-mod", "transposed", "scale-dim",
	"rope-full",
};

struct ref_layer {
	const float *an, *wq, *wk, *wv, *wo, *fn, *wg, *wu, *wd;
};

static const float *ref_tensor(struct kvp_gguf *g, const char *name, uint64_t ne0, uint64_t ne1,
			       bool optional)
{
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, name);

	if (!t) {
		cr_assert(optional, "reference: tensor %s missing", name);
		return NULL;
	}
	cr_assert_eq(t->type, KVP_GGML_F32, "reference: %s is not f32", name);
	cr_assert_eq(t->ne[0], ne0, "reference: %s ne[0] %llu want %llu", name,
		     (unsigned long long)t->ne[0], (unsigned long long)ne0);
	cr_assert_eq(t->n_dims >= 2 ? t->ne[1] : 1, ne1, "reference: %s ne[1]", name);
	for (uint32_t i = 2; i < t->n_dims; i++)
		cr_assert_eq(t->ne[i], 1);
	cr_assert_eq(t->nbytes, ne0 * ne1 * 4);
	cr_assert_eq((uintptr_t)t->data % sizeof(float), 0);
	return t->data;
}

static uint32_t ref_u32(struct kvp_gguf *g, const char *key, bool required, uint32_t def)
{
	uint32_t v;
	int rc = kvp_gguf_get_u32(g, key, &v);

	if (rc == KVP_ENOTFOUND && !required)
		return def;
	cr_assert_eq(rc, 0, "reference: key %s", key);
	return v;
}

static double ref_f32(struct kvp_gguf *g, const char *key, double def)
{
	float v;
	int rc = kvp_gguf_get_f32(g, key, &v);

	if (rc == KVP_ENOTFOUND)
		return def;
	cr_assert_eq(rc, 0, "reference: key %s", key);
	return (double)v;
}

static double *dalloc(size_t n)
{
	double *p = calloc(n ? n : 1, sizeof(double));
	cr_assert_not_null(p);
	return p;
}

struct ref_model *ref_open(const char *path, enum ref_mutant mutant)
{
	struct ref_model *r = calloc(1, sizeof(*r));
	char err[256], tn[64];
	const struct kvp_gguf_tensor *te;

	cr_assert_not_null(r);
	cr_assert_eq(kvp_gguf_open(path, &r->g, err, sizeof(err)), 0, "%s", err);
	r->mutant = mutant;
	r->dim = ref_u32(r->g, "llama.embedding_length", true, 0);
	r->n_layers = ref_u32(r->g, "llama.block_count", true, 0);
	r->ffn = ref_u32(r->g, "llama.feed_forward_length", true, 0);
	r->n_heads = ref_u32(r->g, "llama.attention.head_count", true, 0);
	r->ctx = ref_u32(r->g, "llama.context_length", true, 0);
	r->n_kv_heads = ref_u32(r->g, "llama.attention.head_count_kv", false, r->n_heads);
	r->head_dim = r->dim / r->n_heads;
	r->rope_dim = ref_u32(r->g, "llama.rope.dimension_count", false, r->head_dim);
	r->eps = ref_f32(r->g, "llama.attention.layer_norm_rms_epsilon", 1e-5);
	r->base = ref_f32(r->g, "llama.rope.freq_base", 10000.0);
	te = kvp_gguf_find_tensor(r->g, "token_embd.weight");
	cr_assert_not_null(te);
	r->vocab = (uint32_t)te->ne[1];

	const uint32_t d = r->dim, qd = r->n_heads * r->head_dim, kvd = r->n_kv_heads * r->head_dim;
	r->tok = ref_tensor(r->g, "token_embd.weight", d, r->vocab, false);
	r->onorm = ref_tensor(r->g, "output_norm.weight", d, 1, false);
	r->out = ref_tensor(r->g, "output.weight", d, r->vocab, true);
	if (!r->out)
		r->out = r->tok;
	r->L = calloc(r->n_layers, sizeof(*r->L));
	cr_assert_not_null(r->L);
	for (uint32_t l = 0; l < r->n_layers; l++) {
		struct ref_layer *L = &r->L[l];
#define T(field, what, n0, n1)                                                   \
	snprintf(tn, sizeof(tn), "blk.%u.%s.weight", l, what);                   \
	L->field = ref_tensor(r->g, tn, n0, n1, false)
		T(an, "attn_norm", d, 1);
		T(wq, "attn_q", d, qd);
		T(wk, "attn_k", d, kvd);
		T(wv, "attn_v", d, kvd);
		T(wo, "attn_output", qd, d);
		T(fn, "ffn_norm", d, 1);
		T(wg, "ffn_gate", d, r->ffn);
		T(wu, "ffn_up", d, r->ffn);
		T(wd, "ffn_down", r->ffn, d);
#undef T
	}
	r->kc = dalloc((size_t)r->n_layers * r->ctx * kvd);
	r->vc = dalloc((size_t)r->n_layers * r->ctx * kvd);
	r->x = dalloc(d);
	r->xn = dalloc(d);
	r->q = dalloc(qd);
	r->k = dalloc(kvd);
	r->v = dalloc(kvd);
	r->att = dalloc(qd);
	r->g1 = dalloc(r->ffn);
	r->u1 = dalloc(r->ffn);
	r->sc = dalloc(r->ctx);
	return r;
}

void ref_close(struct ref_model *r)
{
	if (!r)
		return;
	kvp_gguf_close(r->g);
	free(r->L);
	free(r->kc);
	free(r->vc);
	free(r->x);
	free(r->xn);
	free(r->q);
	free(r->k);
	free(r->v);
	free(r->att);
	free(r->g1);
	free(r->u1);
	free(r->sc);
	free(r);
}

static void ref_rmsnorm(const struct ref_model *r, double *out, const double *x, const float *w)
{
	double ss = 0.0;
	for (uint32_t i = 0; i < r->dim; i++)
		ss += x[i] * x[i];
	double inv = 1.0 / sqrt(ss / r->dim + r->eps);
	for (uint32_t i = 0; i < r->dim; i++)
		out[i] = x[i] * inv * (double)w[i];
}

/* out (n_out) = W x, W the GGUF tensor ne = [n_in, n_out]: n_out rows of n_in floats. */
static void ref_matvec(const struct ref_model *r, double *out, const float *w, const double *x,
		       uint32_t n_in, uint32_t n_out, bool accumulate)
{
	for (uint32_t o = 0; o < n_out; o++) {
		double s = 0.0;
		for (uint32_t i = 0; i < n_in; i++) {
			size_t idx = r->mutant == REF_TRANSPOSED ? (size_t)i * n_out + o
								 : (size_t)o * n_in + i;
			s += (double)w[idx] * x[i];
		}
		out[o] = accumulate ? out[o] + s : s;
	}
}

void ref_rope(const struct ref_model *r, double *x, uint32_t n_heads, uint32_t pos)
{
	const uint32_t hd = r->head_dim;
	const uint32_t rd = r->mutant == REF_ROPE_FULL ? hd : r->rope_dim;

	if (r->mutant == REF_NO_ROPE)
		return;
	for (uint32_t h = 0; h < n_heads; h++) {
		double *xh = x + (size_t)h * hd;
		for (uint32_t i = 0; i < rd / 2; i++) {
			double th = (double)pos * pow(r->base, -2.0 * i / (double)rd);
			double c = cos(th), s = sin(th);
			uint32_t a = 2 * i, b = 2 * i + 1;
			if (r->mutant == REF_ROPE_HALVES) {
				a = i;
				b = i + rd / 2;
			}
			double x0 = xh[a], x1 = xh[b];
			xh[a] = x0 * c - x1 * s;
			xh[b] = x0 * s + x1 * c;
		}
	}
}

/* One token at position pos (all positions below must have been run); logits (vocab
 * doubles) when non-NULL. */
static void ref_step(struct ref_model *r, uint32_t tok, uint32_t pos, double *logits)
{
	const uint32_t d = r->dim, hd = r->head_dim, qd = r->n_heads * hd;
	const uint32_t kvd = r->n_kv_heads * hd, group = r->n_heads / r->n_kv_heads;
	const double scale = 1.0 / sqrt((double)(r->mutant == REF_SCALE_DIM ? d : hd));

	cr_assert_lt(tok, r->vocab);
	cr_assert_lt(pos, r->ctx);
	for (uint32_t i = 0; i < d; i++)
		r->x[i] = (double)r->tok[(size_t)tok * d + i];
	for (uint32_t l = 0; l < r->n_layers; l++) {
		const struct ref_layer *L = &r->L[l];
		double *kc = r->kc + (size_t)l * r->ctx * kvd, *vc = r->vc + (size_t)l * r->ctx * kvd;

		ref_rmsnorm(r, r->xn, r->x, L->an);
		ref_matvec(r, r->q, L->wq, r->xn, d, qd, false);
		ref_matvec(r, r->k, L->wk, r->xn, d, kvd, false);
		ref_matvec(r, r->v, L->wv, r->xn, d, kvd, false);
		ref_rope(r, r->q, r->n_heads, pos);
		ref_rope(r, r->k, r->n_kv_heads, pos);
		memcpy(kc + (size_t)pos * kvd, r->k, kvd * sizeof(double));
		memcpy(vc + (size_t)pos * kvd, r->v, kvd * sizeof(double));
		for (uint32_t h = 0; h < r->n_heads; h++) {
			uint32_t hk = r->mutant == REF_GQA_MOD ? h % r->n_kv_heads : h / group;
			const double *qh = r->q + (size_t)h * hd;
			double mx = -INFINITY, sum = 0.0;
			uint32_t last = pos;
			for (uint32_t t = 0; t <= last; t++) {
				const double *kt = kc + (size_t)t * kvd + (size_t)hk * hd;
				double s = 0.0;
				for (uint32_t e = 0; e < hd; e++)
					s += qh[e] * kt[e];
				r->sc[t] = s * scale;
				mx = r->sc[t] > mx ? r->sc[t] : mx;
			}
			for (uint32_t t = 0; t <= last; t++) {
				r->sc[t] = exp(r->sc[t] - mx);
				sum += r->sc[t];
			}
			double *oh = r->att + (size_t)h * hd;
			for (uint32_t e = 0; e < hd; e++)
				oh[e] = 0.0;
			for (uint32_t t = 0; t <= last; t++) {
				const double *vt = vc + (size_t)t * kvd + (size_t)hk * hd;
				double p = r->sc[t] / sum;
				for (uint32_t e = 0; e < hd; e++)
					oh[e] += p * vt[e];
			}
		}
		ref_matvec(r, r->x, L->wo, r->att, qd, d, true);
		ref_rmsnorm(r, r->xn, r->x, L->fn);
		ref_matvec(r, r->g1, L->wg, r->xn, d, r->ffn, false);
		ref_matvec(r, r->u1, L->wu, r->xn, d, r->ffn, false);
		for (uint32_t i = 0; i < r->ffn; i++) {
			double g = r->g1[i];
			r->g1[i] = g / (1.0 + exp(-g)) * r->u1[i];
		}
		ref_matvec(r, r->x, L->wd, r->g1, r->ffn, d, true);
	}
	if (logits) {
		ref_rmsnorm(r, r->xn, r->x, r->onorm);
		ref_matvec(r, logits, r->out, r->xn, d, r->vocab, false);
	}
}

/* ---- reference runs: the prompt, then n_extra more tokens one at a time ------------- */

/* Reference logits of positions n_prompt-1 .. n_prompt-1+n_extra (n_extra+1 vectors)
 * of tokens[0 .. n_prompt+n_extra); the reference keeps its K/V for layout checks. */
double *ref_run(struct ref_model *r, const uint32_t *tok, uint32_t n_prompt,
		uint32_t n_extra)
{
	double *lg = dalloc((size_t)(n_extra + 1) * r->vocab);
	for (uint32_t p = 0; p < n_prompt + n_extra; p++)
		ref_step(r, tok[p], p,
			 p + 1 >= n_prompt ? lg + (size_t)(p + 1 - n_prompt) * r->vocab : NULL);
	return lg;
}
