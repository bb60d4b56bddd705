/*
 * engine_test_ref.h - the reference of test_engine (engine_test_ref.c): a llama forward
 * pass written from the spec alone. It reads the raw tensors from the GGUF file
 * (kvp_gguf, not kvp_model, so an orientation mistake in the loader is caught), widens
 * every tensor to f32 once with the reference dequantizers (kvp_dequant_row), and runs
 * in double: no paging, no SIMD, one contiguous K/V cache per layer. The input of a
 * matrix stored in a block type is rounded to 8 bits per block first, as kvp_cpu.h
 * says the engine computes (act8; off, the reference is the exact product). It knows the
 * llama and qwen2 architectures: adjacent or half-split rope pairs, linear rope scaling,
 * rope_freqs.weight frequency factors, projection biases.
 * Its mutants each get one thing wrong on purpose, so that a test can show that its
 * comparison with the engine has the power to fail.
 *
 * Every function here fails the calling test through criterion's asserts; none returns
 * an error.
 */
#ifndef KVP_ENGINE_TEST_REF_H
#define KVP_ENGINE_TEST_REF_H

#include <stdbool.h>
#include <stdint.h>

struct kvp_gguf;
struct ref_layer;

enum ref_mutant {
	REF_OK = 0,
	REF_ROPE_PAIRS,    /* the other rope pairing: halves for llama, adjacent for qwen2 */
	REF_NO_ROPE,
	REF_GQA_MOD,       /* q head h reads kv head h % n_kv instead of h / group */
	REF_TRANSPOSED,    /* read W[i * out + o] instead of W[o * in + i] */
	REF_SCALE_DIM,     /* scale by 1/sqrt(dim) instead of 1/sqrt(head_dim) */
	REF_ROPE_FULL,     /* rotate all head_dim dims even when rope_dim is smaller */
	REF_NO_BIAS,       /* ignore the projection biases */
	REF_NO_FREQ_SCALE, /* ignore rope scaling and rope_freqs.weight */
	REF_N_MUTANTS,
};

/* "ok", "rope-halves", ...: each mutant's name, for messages. */
extern const char *const ref_mutant_name[REF_N_MUTANTS];

struct ref_model {
	struct kvp_gguf *g;
	uint32_t vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, ctx, rope_dim;
	double eps, base;
	bool halves;            /* qwen2: pairs (x[i], x[i + rope_dim/2]) */
	double rope_scale;      /* linear: positions divided by it; 1 without scaling */
	const float *freq_factors;  /* rope_freqs.weight (rope_dim/2), or NULL */
	bool has_bias;          /* the file has any projection bias */
	const float *tok, *onorm, *out;
	float **owned;          /* every widened tensor, freed by ref_close */
	uint32_t *owned_type;   /* its type in the file */
	uint32_t n_owned;
	/* round the input of each block-type matrix to 8 bits per block, as the engine
	 * does (ref_open sets it; the quantization tests also compare without) */
	bool act8;
	double *xq;             /* the rounded input */
	struct ref_layer *L;
	enum ref_mutant mutant;
	/* state: K (post-rope) and V of every position, per layer, contiguous */
	double *kc, *vc;     /* (n_layers, ctx, kv_dim) */
	/* scratch */
	double *x, *xn, *q, *k, *v, *att, *g1, *u1, *sc;
};

/* The reference (or a mutant of it) on the GGUF file at path (any tensor type the
 * loader takes); ref_close frees it. */
struct ref_model *ref_open(const char *path, enum ref_mutant mutant);
void ref_close(struct ref_model *r);

/* Rope on n_heads heads of x (head_dim doubles each) at position pos; reads only
 * head_dim, rope_dim, base, halves, rope_scale, freq_factors and mutant of r. */
void ref_rope(const struct ref_model *r, double *x, uint32_t n_heads, uint32_t pos);

/* Reference logits of positions n_prompt-1 .. n_prompt-1+n_extra (n_extra+1 vectors of
 * vocab doubles, calloc'ed: the caller frees) of tokens[0 .. n_prompt+n_extra), run from
 * position 0; the reference keeps its K/V (kc, vc) for layout checks. */
double *ref_run(struct ref_model *r, const uint32_t *tok, uint32_t n_prompt,
		uint32_t n_extra);

/* One token at position pos, every position below already run (by ref_run or
 * ref_step); its logits (vocab doubles) into logits when non-NULL. */
void ref_step(struct ref_model *r, uint32_t tok, uint32_t pos, double *logits);

#endif
