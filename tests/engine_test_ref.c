/*
 * engine_test_ref.c - the reference forward pass of test_engine and its mutants: open
 * a GGUF file's raw tensors, run one token at a time in double, keep every position's
 * K/V. Declared in engine_test_ref.h.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_test_ref.h"
#include "kvp_gguf.h"
#include "kvp_half.h"
#include "kvp_quant.h"

/* ---- the reference ---------------------------------------------------------------- */

const char *const ref_mutant_name[REF_N_MUTANTS] = {
	"ok", "rope-pairs", "no-rope", "gqa-mod", "transposed", "scale-dim",
	"rope-full", "no-bias", "no-freq-scale",
};

struct ref_layer {
	const float *an, *wq, *wk, *wv, *wo, *fn, *wg, *wu, *wd;
	const float *bq, *bk, *bv, *bo, *bg, *bu, *bd;   /* NULL: no bias */
};

/* The tensor's data widened to f32 (ne[0] * ne[1] floats), kept in r->owned. */
static const float *ref_widen(struct ref_model *r, const struct kvp_gguf_tensor *t,
			      uint64_t ne0, uint64_t ne1)
{
	const size_t row_bytes = kvp_ggml_row_bytes(t->type, ne0);
	float *out = malloc((size_t)(ne0 * ne1) * sizeof(float));
	float **list = realloc(r->owned, (r->n_owned + 1) * sizeof(*list));
	uint32_t *types = realloc(r->owned_type, (r->n_owned + 1) * sizeof(*types));

	cr_assert(out && list && types && row_bytes);
	r->owned = list;
	r->owned_type = types;
	r->owned_type[r->n_owned] = t->type;
	r->owned[r->n_owned++] = out;
	cr_assert_eq(t->nbytes, row_bytes * ne1, "reference: %s size", t->name);
	for (uint64_t row = 0; row < ne1; row++)
		cr_assert_eq(kvp_dequant_row(t->type, (const uint8_t *)t->data + row * row_bytes,
					     out + row * ne0, ne0),
			     0, "reference: %s type %u", t->name, t->type);
	return out;
}

static const float *ref_tensor(struct ref_model *r, const char *name, uint64_t ne0,
			      uint64_t ne1, bool optional)
{
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(r->g, name);

	if (!t) {
		cr_assert(optional, "reference: tensor %s missing", name);
		return NULL;
	}
	cr_assert_eq(t->ne[0], ne0, "reference: %s ne[0] %llu want %llu", name,
		     (unsigned long long)t->ne[0], (unsigned long long)ne0);
	cr_assert_eq(t->n_dims >= 2 ? t->ne[1] : 1, ne1, "reference: %s ne[1]", name);
	for (uint32_t i = 2; i < t->n_dims; i++)
		cr_assert_eq(t->ne[i], 1);
	return ref_widen(r, t, ne0, ne1);
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

/* "<arch>.<what>" for the file's architecture. */
static const char *ref_key(const struct ref_model *r, const char *what, char *buf, size_t n)
{
	snprintf(buf, n, "%s.%s", r->halves ? "qwen2" : "llama", what);
	return buf;
}

/* The architecture, and the rope's pairing and frequency scaling. */
static void ref_open_rope(struct ref_model *r)
{
	const char *s;
	size_t len;
	char k[96];

	cr_assert_eq(kvp_gguf_get_str(r->g, "general.architecture", &s, &len), 0);
	cr_assert((len == 5 && !memcmp(s, "llama", 5)) || (len == 5 && !memcmp(s, "qwen2", 5)),
		  "reference: architecture %.*s", (int)len, s);
	r->halves = !memcmp(s, "qwen2", 5);
	/* the factor (or the older scale_linear) scales unless the type says none */
	r->rope_scale = ref_f32(r->g, ref_key(r, "rope.scaling.factor", k, sizeof(k)), 0.0);
	if (r->rope_scale == 0.0)
		r->rope_scale = ref_f32(r->g, ref_key(r, "rope.scale_linear", k, sizeof(k)), 0.0);
	if (r->rope_scale == 0.0 ||
	    (kvp_gguf_get_str(r->g, ref_key(r, "rope.scaling.type", k, sizeof(k)), &s, &len) == 0 &&
	     len == 4 && !memcmp(s, "none", 4)))
		r->rope_scale = 1.0;
}

static void ref_open_layer(struct ref_model *r, uint32_t l)
{
	struct ref_layer *L = &r->L[l];
	const uint32_t d = r->dim, qd = r->n_heads * r->head_dim, kvd = r->n_kv_heads * r->head_dim;
	char tn[64];

#define T(field, what, kind, n0, n1, opt)                                        \
	snprintf(tn, sizeof(tn), "blk.%u.%s.%s", l, what, kind);                 \
	L->field = ref_tensor(r, tn, n0, n1, opt)
	T(an, "attn_norm", "weight", d, 1, false);
	T(wq, "attn_q", "weight", d, qd, false);
	T(wk, "attn_k", "weight", d, kvd, false);
	T(wv, "attn_v", "weight", d, kvd, false);
	T(wo, "attn_output", "weight", qd, d, false);
	T(fn, "ffn_norm", "weight", d, 1, false);
	T(wg, "ffn_gate", "weight", d, r->ffn, false);
	T(wu, "ffn_up", "weight", d, r->ffn, false);
	T(wd, "ffn_down", "weight", r->ffn, d, false);
	T(bq, "attn_q", "bias", qd, 1, true);
	T(bk, "attn_k", "bias", kvd, 1, true);
	T(bv, "attn_v", "bias", kvd, 1, true);
	T(bo, "attn_output", "bias", d, 1, true);
	T(bg, "ffn_gate", "bias", r->ffn, 1, true);
	T(bu, "ffn_up", "bias", r->ffn, 1, true);
	T(bd, "ffn_down", "bias", d, 1, true);
#undef T
	r->has_bias |= L->bq || L->bk || L->bv || L->bo || L->bg || L->bu || L->bd;
}

struct ref_model *ref_open(const char *path, enum ref_mutant mutant)
{
	struct ref_model *r = calloc(1, sizeof(*r));
	char err[256], k[96];
	const struct kvp_gguf_tensor *te;

	cr_assert_not_null(r);
	cr_assert_eq(kvp_gguf_open(path, &r->g, err, sizeof(err)), 0, "%s", err);
	r->mutant = mutant;
	ref_open_rope(r);
	r->dim = ref_u32(r->g, ref_key(r, "embedding_length", k, sizeof(k)), true, 0);
	r->n_layers = ref_u32(r->g, ref_key(r, "block_count", k, sizeof(k)), true, 0);
	r->ffn = ref_u32(r->g, ref_key(r, "feed_forward_length", k, sizeof(k)), true, 0);
	r->n_heads = ref_u32(r->g, ref_key(r, "attention.head_count", k, sizeof(k)), true, 0);
	r->ctx = ref_u32(r->g, ref_key(r, "context_length", k, sizeof(k)), true, 0);
	r->n_kv_heads = ref_u32(r->g, ref_key(r, "attention.head_count_kv", k, sizeof(k)), false,
				r->n_heads);
	r->head_dim = r->dim / r->n_heads;
	r->rope_dim = ref_u32(r->g, ref_key(r, "rope.dimension_count", k, sizeof(k)), false,
			      r->head_dim);
	r->eps = ref_f32(r->g, ref_key(r, "attention.layer_norm_rms_epsilon", k, sizeof(k)), 1e-5);
	r->base = ref_f32(r->g, ref_key(r, "rope.freq_base", k, sizeof(k)), 10000.0);
	te = kvp_gguf_find_tensor(r->g, "token_embd.weight");
	cr_assert_not_null(te);
	r->vocab = (uint32_t)te->ne[1];

	const uint32_t d = r->dim, qd = r->n_heads * r->head_dim, kvd = r->n_kv_heads * r->head_dim;
	r->tok = ref_tensor(r, "token_embd.weight", d, r->vocab, false);
	r->onorm = ref_tensor(r, "output_norm.weight", d, 1, false);
	r->out = ref_tensor(r, "output.weight", d, r->vocab, true);
	if (!r->out)
		r->out = r->tok;
	r->freq_factors = ref_tensor(r, "rope_freqs.weight", r->rope_dim / 2, 1, true);
	r->L = calloc(r->n_layers, sizeof(*r->L));
	cr_assert_not_null(r->L);
	for (uint32_t l = 0; l < r->n_layers; l++)
		ref_open_layer(r, l);
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
	r->xq = dalloc(r->ffn > qd ? (r->ffn > d ? r->ffn : d) : (qd > d ? qd : d));
	r->act8 = true;
	return r;
}

void ref_close(struct ref_model *r)
{
	if (!r)
		return;
	kvp_gguf_close(r->g);
	for (uint32_t i = 0; i < r->n_owned; i++)
		free(r->owned[i]);
	free(r->owned);
	free(r->owned_type);
	free(r->xq);
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

/* The file type of a widened tensor. */
static uint32_t ref_type_of(const struct ref_model *r, const float *w)
{
	for (uint32_t i = 0; i < r->n_owned; i++)
		if (r->owned[i] == w)
			return r->owned_type[i];
	cr_assert_fail("reference: a matrix it did not widen");
	return 0;
}

/* x (n) rounded as the engine rounds the activations of a block-type matrix (kvp_cpu.h):
 * per block of 32 (256 for the K types) d = max |x| / 127, for the 32-element types as
 * the f16 the block stores; each element to the nearest multiple of d (ties to even),
 * within 127 steps. From the definition, in double, not from the engine's code. */
static const double *ref_round_act(const struct ref_model *r, uint32_t type, const double *x,
				   uint32_t n)
{
	const uint32_t be = kvp_ggml_type(type)->block_elems;

	if (!r->act8 || be == 1)
		return x;
	for (uint32_t b = 0; b < n; b += be) {
		double amax = 0.0;

		for (uint32_t i = b; i < b + be; i++)
			amax = fmax(amax, fabs(x[i]));
		float d = (float)(amax / 127.0);
		if (be == 32)
			d = kvp_f16_to_f32(kvp_f32_to_f16(d));
		for (uint32_t i = b; i < b + be; i++) {
			double q = d >= FLT_MIN ? nearbyint(x[i] / d) : 0.0;

			q = q > 127 ? 127 : q < -127 ? -127 : q;
			r->xq[i] = (double)d * q;
		}
	}
	return r->xq;
}

/* out (n_out) = W x (+ b), W the GGUF tensor ne = [n_in, n_out]: n_out rows of n_in
 * floats; b (n_out) or NULL. */
static void ref_matvec(const struct ref_model *r, double *out, const float *w, const float *b,
		       const double *x, uint32_t n_in, uint32_t n_out, bool accumulate)
{
	x = ref_round_act(r, ref_type_of(r, w), x, n_in);
	for (uint32_t o = 0; o < n_out; o++) {
		double s = 0.0;
		for (uint32_t i = 0; i < n_in; i++) {
			size_t idx = r->mutant == REF_TRANSPOSED ? (size_t)i * n_out + o
								 : (size_t)o * n_in + i;
			s += (double)w[idx] * x[i];
		}
		if (b && r->mutant != REF_NO_BIAS)
			s += (double)b[o];
		out[o] = accumulate ? out[o] + s : s;
	}
}

void ref_rope(const struct ref_model *r, double *x, uint32_t n_heads, uint32_t pos)
{
	const uint32_t hd = r->head_dim;
	const uint32_t rd = r->mutant == REF_ROPE_FULL ? hd : r->rope_dim;
	const bool halves = r->halves != (r->mutant == REF_ROPE_PAIRS);
	const bool scaled = r->mutant != REF_NO_FREQ_SCALE;

	if (r->mutant == REF_NO_ROPE)
		return;
	for (uint32_t h = 0; h < n_heads; h++) {
		double *xh = x + (size_t)h * hd;
		for (uint32_t i = 0; i < rd / 2; i++) {
			double th = (double)pos * pow(r->base, -2.0 * i / (double)rd);
			if (scaled && r->freq_factors && i < r->rope_dim / 2)
				th /= (double)r->freq_factors[i];
			if (scaled)
				th /= r->rope_scale;
			double c = cos(th), s = sin(th);
			uint32_t a = halves ? i : 2 * i, b = halves ? i + rd / 2 : 2 * i + 1;
			double x0 = xh[a], x1 = xh[b];
			xh[a] = x0 * c - x1 * s;
			xh[b] = x0 * s + x1 * c;
		}
	}
}

/* One token at position pos (all positions below must have been run); logits (vocab
 * doubles) when non-NULL. */
void ref_step(struct ref_model *r, uint32_t tok, uint32_t pos, double *logits)
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
		ref_matvec(r, r->q, L->wq, L->bq, r->xn, d, qd, false);
		ref_matvec(r, r->k, L->wk, L->bk, r->xn, d, kvd, false);
		ref_matvec(r, r->v, L->wv, L->bv, r->xn, d, kvd, false);
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
		ref_matvec(r, r->x, L->wo, L->bo, r->att, qd, d, true);
		ref_rmsnorm(r, r->xn, r->x, L->fn);
		ref_matvec(r, r->g1, L->wg, L->bg, r->xn, d, r->ffn, false);
		ref_matvec(r, r->u1, L->wu, L->bu, r->xn, d, r->ffn, false);
		for (uint32_t i = 0; i < r->ffn; i++) {
			double g = r->g1[i];
			r->g1[i] = g / (1.0 + exp(-g)) * r->u1[i];
		}
		ref_matvec(r, r->x, L->wd, L->bd, r->g1, r->ffn, d, true);
	}
	if (logits) {
		ref_rmsnorm(r, r->xn, r->x, r->onorm);
		ref_matvec(r, logits, r->out, NULL, r->xn, d, r->vocab, false);
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
