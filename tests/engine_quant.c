/*
 * engine_quant.c - the models people download, as kvprefix-mkmodel writes them: every
 * weight type, the _M mix, qwen2 (half-split rope, QKV biases), llama with every bias,
 * linear rope scaling and Llama 3 frequency factors. Each against the reference on the
 * file's dequantized weights:
 *
 *   logits    a 150-token prompt and 4 single-token steps, within the case's tolerance:
 *             TOL_F32 where the engine computes in f32 (F32, F16, BF16 weights); for
 *             block types the engine quantizes activations to 8 bits per block (as is
 *             standard), the reference too, and TOL_Q (below) is what rounding apart
 *             near a step costs
 *   greedy    64 greedy steps: the engine's token is the reference's, or the two are a
 *             near tie in the reference (the engine's pick within 2 x the tolerance of
 *             the best; at most Q_MAX_TIES such steps); the reference follows the
 *             engine's token
 *   features  the reference without the feature (no bias, the other rope pairing, no
 *             frequency scaling) disagrees with the engine by > 10x the tolerance: the
 *             feature is computed, not ignored
 *   cache     invariant 5 (et_cache_model) on a Q4_K_M llama and a Q8_0 qwen2
 *
 * One of the files of test_engine; see engine_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_test_ref.h"
#include "engine_test_util.h"
#include "kvp_engine.h"
#include "kvp_model.h"

/* Block-type weights: logits against the reference, which rounds each matrix's input to
 * 8 bits per block as the engine does (act8). The two agree to ~1e-7 until an element
 * sits within f32 rounding of a rounding step: the engine and the reference (in double)
 * then round it apart, a whole step (1/127 of its block's max), which moves logits by
 * ~5e-4 on these models (|logit| < 1.5). Measured worst over every case here: 1.8e-2,
 * a few such flips adding up; an error of the format's layout or of a kernel moves
 * them by 1e-1 and more (the exact, unrounded reference is 2.1e-2 away). */
#define TOL_Q 4e-2

#define QBASE "--vocab 512 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --ctx 512 "

#define QCASE(nm, args, tol) { .name = nm, .mk_args = QBASE args, .n_prompt = 150, .tol_ref = tol }

static const struct fwd_case q_cases[] = {
	QCASE("w-f16", "--dtype f16 --seed 31", 0),
	QCASE("w-bf16", "--dtype bf16 --seed 32", 0),
	QCASE("w-q8_0", "--dtype q8_0 --seed 33", TOL_Q),
	QCASE("w-q4_0", "--dtype q4_0 --seed 34", TOL_Q),
	QCASE("w-q4_1", "--dtype q4_1 --seed 35", TOL_Q),
	QCASE("w-q5_0", "--dtype q5_0 --seed 36", TOL_Q),
	QCASE("w-q5_1", "--dtype q5_1 --seed 37", TOL_Q),
	QCASE("w-q2_k", "--dtype q2_k --seed 38", TOL_Q),
	QCASE("w-q3_k", "--dtype q3_k --seed 39", TOL_Q),
	QCASE("w-q4_k", "--dtype q4_k --seed 40", TOL_Q),
	QCASE("w-q5_k", "--dtype q5_k --seed 41", TOL_Q),
	QCASE("w-q6_k", "--dtype q6_k --seed 42", TOL_Q),
	QCASE("w-q4_k_m", "--dtype q4_k_m --seed 43", TOL_Q),
	/* 13.. architectures and features, f16 (tolerance TOL_F32) and quantized */
	QCASE("qwen2-f16", "--arch qwen2 --dtype f16 --seed 44", 0),
	QCASE("qwen2-q8_0", "--arch qwen2 --dtype q8_0 --seed 45", TOL_Q),
	QCASE("bias-f16", "--bias --dtype f16 --seed 46", 0),
	QCASE("linear-f16", "--rope-scaling linear:4 --dtype f16 --seed 47", 0),
	QCASE("llama3-f16", "--rope-scaling llama3 --dtype f16 --seed 48", 0),
	QCASE("llama3-q4_k_m", "--rope-scaling llama3 --dtype q4_k_m --seed 49", TOL_Q),
};

#define Q_EXTRA 4
#define Q_GREEDY 64
/* mkmodel's random weights give nearly flat logits (512 of them under 1.5): a step's
 * top two are often closer than TOL_Q, and 8-bit activations may order them either
 * way. Up to this many such steps of 65 are taken as ties; past it, something is off. */
#define Q_MAX_TIES 8

/* The prompt's logits and Q_EXTRA steps against the reference; returns the max diff. */
static double q_logits(const struct fwd_case *c, const char *path, enum ref_mutant mu)
{
	uint32_t tok[150 + Q_EXTRA];
	struct eng g;
	struct table t;
	const uint32_t B = 16, n = c->n_prompt;

	et_eng_open(&g, path, 2, KVP_KV_F32, B, 64);
	struct ref_model *r = ref_open(path, mu);
	et_make_prompt(tok, n + Q_EXTRA, r->vocab, 7000 + n);
	double *lg = ref_run(r, tok, n, Q_EXTRA);
	et_table_init(&t, (n + Q_EXTRA + B - 1) / B, kvp_engine_block_bytes(g.e), 17);
	double d = et_eng_run_vs_ref(&g, &t, tok, n, Q_EXTRA, lg, r->vocab);
	et_table_free(&t);
	free(lg);
	ref_close(r);
	et_eng_close(&g);
	return d;
}

/* Greedy decode, engine and reference in step; returns how many steps were near ties
 * the two broke differently (the reference then follows the engine). */
static int q_greedy(const struct fwd_case *c, const char *path)
{
	uint32_t tok[64];
	struct eng g;
	struct table t;
	const uint32_t B = 16, n = 64;
	const double tol = et_tol_ref(c);
	int ties = 0;

	et_eng_open(&g, path, 2, KVP_KV_F32, B, 64);
	const uint32_t V = g.m->cfg.vocab;
	struct ref_model *r = ref_open(path, REF_OK);
	float *lg = malloc(V * sizeof(float));
	double *rl = malloc(V * sizeof(double));
	cr_assert(lg && rl);
	et_make_prompt(tok, n, V, 99);
	et_table_init(&t, (n + Q_GREEDY + B) / B, kvp_engine_block_bytes(g.e), 5);
	cr_assert_eq(kvp_engine_forward(g.e, t.blocks, t.n, tok, n, 0, 0, lg), 0);
	for (uint32_t p = 0; p < n; p++)
		ref_step(r, tok[p], p, p + 1 == n ? rl : NULL);
	for (uint32_t s = 0; s <= Q_GREEDY; s++) {
		const uint32_t pe = et_argmax_f(lg, V), pr = et_argmax_d(rl, V);

		if (pe != pr) {
			cr_assert_leq(rl[pr] - rl[pe], 2 * tol,
				      "%s: greedy step %u: engine %u, reference %u, %g apart in the "
				      "reference (over 2 x tolerance %g)", c->name, s, pe, pr,
				      rl[pr] - rl[pe], tol);
			ties++;
		}
		if (s == Q_GREEDY)
			break;
		cr_assert_eq(kvp_engine_forward(g.e, t.blocks, t.n, &pe, 1, n + s, n + s, lg), 0);
		ref_step(r, pe, n + s, rl);
	}
	free(lg);
	free(rl);
	et_table_free(&t);
	ref_close(r);
	et_eng_close(&g);
	return ties;
}

static void q_check(const struct fwd_case *c, const enum ref_mutant *off, size_t n_off)
{
	char path[256];
	const double tol = et_tol_ref(c);

	et_fwd_model_path(c, path, sizeof(path));
	double d = q_logits(c, path, REF_OK);
	cr_assert_leq(d, tol, "%s: max |logit - reference| %g over tolerance %g", c->name, d, tol);
	int ties = q_greedy(c, path);
	cr_assert_leq(ties, Q_MAX_TIES, "%s: %d near ties broken differently in %d greedy steps",
		      c->name, ties, Q_GREEDY);
	fprintf(stderr, "test_engine: %-14s max |logit - ref| %.3g (tol %g); greedy %d steps, "
			"%d near ties\n", c->name, d, tol, Q_GREEDY, ties);
	for (size_t i = 0; i < n_off; i++) {
		double dm = q_logits(c, path, off[i]);

		cr_assert_gt(dm, 10 * tol, "%s: the reference with %s agrees with the engine (%g): "
					   "the feature is not computed", c->name,
			     ref_mutant_name[off[i]], dm);
	}
}

Test(quant, f16) { q_check(&q_cases[0], NULL, 0); }
Test(quant, bf16) { q_check(&q_cases[1], NULL, 0); }
Test(quant, q8_0) { q_check(&q_cases[2], NULL, 0); }
Test(quant, q4_0) { q_check(&q_cases[3], NULL, 0); }
Test(quant, q4_1) { q_check(&q_cases[4], NULL, 0); }
Test(quant, q5_0) { q_check(&q_cases[5], NULL, 0); }
Test(quant, q5_1) { q_check(&q_cases[6], NULL, 0); }
Test(quant, q2_k) { q_check(&q_cases[7], NULL, 0); }
Test(quant, q3_k) { q_check(&q_cases[8], NULL, 0); }
Test(quant, q4_k) { q_check(&q_cases[9], NULL, 0); }
Test(quant, q5_k) { q_check(&q_cases[10], NULL, 0); }
Test(quant, q6_k) { q_check(&q_cases[11], NULL, 0); }
Test(quant, q4_k_m) { q_check(&q_cases[12], NULL, 0); }

Test(quant, qwen2)
{
	static const enum ref_mutant off[] = { REF_ROPE_PAIRS, REF_NO_BIAS };

	q_check(&q_cases[13], off, 2);
	q_check(&q_cases[14], NULL, 0);
}

Test(quant, llama_biases)
{
	static const enum ref_mutant off[] = { REF_NO_BIAS };

	q_check(&q_cases[15], off, 1);
}

Test(quant, rope_scaling)
{
	static const enum ref_mutant off[] = { REF_NO_FREQ_SCALE };

	q_check(&q_cases[16], off, 1);
	q_check(&q_cases[17], off, 1);
	q_check(&q_cases[18], NULL, 0);
}

Test(quant, cache_q4_k_m) { et_cache_model(&q_cases[12]); }
Test(quant, cache_qwen2_q8_0) { et_cache_model(&q_cases[14]); }
