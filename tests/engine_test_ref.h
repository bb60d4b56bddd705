/*
 * engine_test_ref.h - the reference of test_engine (engine_test_ref.c): a llama forward
 * pass written from the spec alone. It reads the raw tensors from the GGUF file
 * (kvp_gguf, not kvp_model, so an orientation mistake in the loader is caught), f32
 * files only; no paging, no SIMD, double everywhere, one contiguous K/V cache per layer.
 * Its mutants each get one thing wrong on purpose, so that a test can show that its
 * comparison with the engine has the power to fail.
 *
 * Every function here fails the calling test through criterion's asserts; none returns
 * an error.
 */
#ifndef KVP_ENGINE_TEST_REF_H
#define KVP_ENGINE_TEST_REF_H

#include <stdint.h>

struct kvp_gguf;
struct ref_layer;

enum ref_mutant {
	REF_OK = 0,
	REF_ROPE_HALVES,   /* rotate (x[i], x[i + rope_dim/2]) (NeoX) instead of adjacent pairs */
	REF_NO_ROPE,
	REF_GQA_MOD,       /* q head h reads kv head h % n_kv instead of h / group */
	REF_TRANSPOSED,    /* read W[i * out + o] instead of W[o * in + i] */
	REF_SCALE_DIM,     /* scale by 1/sqrt(dim) instead of 1/sqrt(head_dim) */
	REF_ROPE_FULL,     /* rotate all head_dim dims even when rope_dim is smaller */
	REF_N_MUTANTS,
};

/* "ok", "rope-halves", ...: each mutant's name, for messages. */
extern const char *const ref_mutant_name[REF_N_MUTANTS];

struct ref_model {
	struct kvp_gguf *g;
	uint32_t vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, ctx, rope_dim;
	double eps, base;
	const float *tok, *onorm, *out;
	struct ref_layer *L;
	enum ref_mutant mutant;
	/* state: K (post-rope) and V of every position, per layer, contiguous */
	double *kc, *vc;     /* (n_layers, ctx, kv_dim) */
	/* scratch */
	double *x, *xn, *q, *k, *v, *att, *g1, *u1, *sc;
};

/* The reference (or a mutant of it) on the f32 GGUF file at path; ref_close frees it. */
struct ref_model *ref_open(const char *path, enum ref_mutant mutant);
void ref_close(struct ref_model *r);

/* Rope on n_heads heads of x (head_dim doubles each) at position pos; reads only
 * head_dim, rope_dim, base and mutant of r. */
void ref_rope(const struct ref_model *r, double *x, uint32_t n_heads, uint32_t pos);

/* Reference logits of positions n_prompt-1 .. n_prompt-1+n_extra (n_extra+1 vectors of
 * vocab doubles, calloc'ed: the caller frees) of tokens[0 .. n_prompt+n_extra), run from
 * position 0; the reference keeps its K/V (kc, vc) for layout checks. */
double *ref_run(struct ref_model *r, const uint32_t *tok, uint32_t n_prompt,
		uint32_t n_extra);

#endif
