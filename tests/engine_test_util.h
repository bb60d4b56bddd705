/*
 * engine_test_util.h - what the engine_*.c files of test_engine share
 * (engine_test_util.c): the tolerances, the suites' temporary directory and models
 * (kvprefix-mkmodel and models written here), block tables, opening an engine, the
 * engine run that is compared with the reference (engine_test_ref.h), and the models of
 * the forward and cache tests.
 *
 * test_engine holds the forward pass (engine/kvp_engine.h) to an independent naive
 * reference, and checks DESIGN invariant 5 (caching never changes the answer) at engine
 * level:
 *
 *   reference  (engine_reference.c) the reference by hand, and its mutants (the other
 *              rope pairing, no rope, GQA by modulo, transposed weights, 1/sqrt(dim),
 *              rope over the whole head), which must all disagree with the engine by > 10x
 *              the tolerance: the comparison has the power to fail
 *   forward    (engine_forward.c) models from kvprefix-mkmodel (GQA 4/2, tied, MHA 4/4,
 *              MQA 8/1) and models written here with larger weights (peaked attention),
 *              partial rope (rope_dim < head_dim), head dims 12, 320, 4 (96 heads on 1
 *              kv head) and 2048: a ~300-token prompt over a shuffled table of
 *              NaN-poisoned host blocks, B = 1, 7, 16, 64, threads 1 and 2, max_batch 64
 *              (multi-step prefill), then single-token steps; logits within 1e-4 of the
 *              reference with f32 KV, and with f16 KV within 1e-3 (mkmodel) or 2e-2
 *              (large weights); every K/V row (post-rope) in the blocks where kvp_cpu.h
 *              says it is. Also: every kernel path this CPU has, max_batch 1/7/64/512 on
 *              2 and 3 threads, a prompt fed in several calls, a 2,500-token context;
 *              and a batch of three sequences (prefill, a chunk after a prefix, a
 *              decode row) gives each the logits and K/V it gets alone (invariant 9)
 *   cache      (engine_cache.c) invariant 5 as the daemon drives the engine: a prompt
 *              run cold and greedy-decoded 64 steps, then again with 0 %, ~50 % and
 *              100 % of its full blocks shared from the cold run (mprotect'ed read-only
 *              meanwhile, and compared byte for byte after): same tokens, logits within
 *              1e-4 (f32 KV) and 1e-3 (f16 KV), bit-identical when nothing is cached;
 *              prompts k*B-1, k*B, k*B+1 and 1 token, B = 16
 *   quant      (engine_quant.c) every weight type, qwen2, biases, rope scaling and
 *              frequency factors from kvprefix-mkmodel against the reference on the
 *              dequantized weights (TOL_F32 for f32 arithmetic, 5e-3 where activations
 *              are quantized to 8 bits), 64 greedy steps, each feature shown computed
 *              (its mutant disagrees), invariant 5 on quantized models
 *   errors     (engine_errors.c) token >= vocab, positions past the context, a table
 *              too short, n = 0, bad configs: KVP_EINVAL and nothing written; the
 *              boundaries accepted; one bad sequence refuses its whole batch
 *
 * Every function here fails the calling test through criterion's asserts; none returns
 * an error.
 */
#ifndef KVP_ENGINE_TEST_UTIL_H
#define KVP_ENGINE_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_engine.h"

struct kvp_model;

#define TOL_F32 1e-4     /* logits, f32 KV vs reference and across cache fractions */
#define TOL_F16 2e-2     /* logits, f16 KV vs the (f32/double) reference */
/* The same for mkmodel's models, whose small weights (std 0.02) keep logits under ~1 and
 * attention nearly uniform: an attention bug (rope on halves) moves their logits by only
 * ~4e-3, so 2e-2 would let it through; f16 KV moves them by ~2e-5. */
#define TOL_F16_MK 1e-3
#define TOL_F16_SAME 1e-3 /* logits, f16 KV, across cache fractions */

/* ---- temp dir, models ------------------------------------------------------------- */

/* name in the suite's temporary directory. */
void et_path_in(char *out, size_t n, const char *name);
/* kvprefix-mkmodel --out DIR/name ARGS; asserts it succeeded. */
void et_mkmodel(const char *name, const char *args);

/*
 * A model written by this test (kvp_gguf writer), for what mkmodel cannot make: weights
 * large enough that attention is peaked (so rope and masking errors show in the logits),
 * rope.dimension_count below the head dim, another freq_base and epsilon, odd sizes.
 */
struct custom_model {
	uint32_t vocab, dim, layers, heads, kv_heads, ffn, ctx, rope_dim;
	float eps, base;
	float wscale;   /* matrices uniform in [-wscale, wscale) */
	float nspread;  /* norms uniform in [1 - nspread, 1 + nspread) */
	bool tied;
	uint64_t seed;
};

/* c as an f32 GGUF file named name in the suite's temporary directory. */
void et_write_custom(const char *name, const struct custom_model *c);

/* ---- engine harness --------------------------------------------------------------- */

/* A sequence's block table: n blocks carved from one arena in a shuffled order, the
 * arena poisoned with 0xFF bytes (NaN as f32 and as f16), so that a position read
 * before it was written, or a block taken for another, shows as NaN or a wrong answer. */
struct table {
	void **blocks;
	uint32_t n;
	char *arena;
	size_t stride, bytes;
};

/* n blocks of block_bytes, each at a multiple of align (a power of two), shuffled by
 * seed; et_table_init aligns to 64 bytes. et_table_free frees either. */
void et_table_init_aligned(struct table *t, uint32_t n, size_t block_bytes, uint64_t seed,
			   size_t align);
void et_table_init(struct table *t, uint32_t n, size_t block_bytes, uint64_t seed);
/* Make block i of a page-aligned table read-only (or writable again). */
void et_table_protect(struct table *t, uint32_t i, bool ro);
void et_table_free(struct table *t);

/* A model and a CPU engine on it. */
struct eng {
	struct kvp_model *m;
	struct kvp_engine *e;
};

/* Load the model at path and create an engine with this config; et_eng_close frees both. */
void et_eng_open(struct eng *g, const char *path, int threads, enum kvp_kv_dtype dt,
		 uint32_t block_tokens, uint32_t max_batch);
void et_eng_close(struct eng *g);

/* The index of the largest of x[0..n) (the first on ties): a greedy pick. */
uint32_t et_argmax_f(const float *x, uint32_t n);
uint32_t et_argmax_d(const double *x, uint32_t n);
/* n tokens below vocab from seed. */
void et_make_prompt(uint32_t *tok, uint32_t n, uint32_t vocab, uint64_t seed);
/* max |a - ref| and max |a - b| over n; NaN counts as infinity. */
double et_max_diff_fd(const float *a, const double *ref, uint32_t n);
double et_max_diff_ff(const float *a, const float *b, uint32_t n);

/* Engine: prefill tok[0..n_prompt) in one call, then n_extra single-token calls; logits
 * of the same positions as ref_run. Returns the max abs diff against ref (all vectors). */
double et_eng_run_vs_ref(struct eng *g, struct table *t, const uint32_t *tok,
			 uint32_t n_prompt, uint32_t n_extra, const double *ref, uint32_t vocab);

/* ---- the models of the forward and cache tests ---------------------------------------- */

struct fwd_case {
	const char *name;
	const char *mk_args;               /* mkmodel args, or NULL for custom */
	struct custom_model cm;
	uint32_t n_prompt;
	bool light;                        /* big: B = 16 only */
	/* logits vs the reference with f32 KV: 0 for TOL_F32; quantized weights need more
	 * (the engine quantizes activations to 8 bits, the reference does not) */
	double tol_ref;
};

/* 0 gqa-4-2, 1 tied, 2 mha-4-4, 3 mqa-8-1 (mkmodel); 4 custom-hd12, 5 custom-hd320,
 * 6 custom-g96, 7 custom-hd2048, 8 custom-hd320-g7 (written here). */
extern const struct fwd_case et_fwd_cases[];

/* The f16 KV tolerance against the reference for c's model. */
double et_tol_f16(const struct fwd_case *c);
/* The f32 KV tolerance against the reference for c's model. */
double et_tol_ref(const struct fwd_case *c);
/* Make c's model in the suite's temporary directory; its path in path. */
void et_fwd_model_path(const struct fwd_case *c, char *path, size_t n);

/* Invariant 5 on c's model (engine_cache.c): cold, then 0 / ~50 / 100 % of the full
 * blocks shared, KV f32 and f16, threads 1 and 2: the same greedy tokens over 64 steps,
 * logits within TOL_F32 / TOL_F16_SAME of the cold run's. */
void et_cache_model(const struct fwd_case *c);

#endif
