/*
 * engine_reference.c - the reference of engine_test_ref.c itself: its rope by hand, its
 * mutants touching only what they claim to, and every mutant disagreeing with the
 * engine by far more than the tolerance, so that the forward and cache tests' comparison
 * has the power to fail.
 *
 * One of the files of test_engine; see engine_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine_test_ref.h"
#include "engine_test_util.h"
#include "kvp_engine.h"
#include "kvp_model.h"

/* ---- reference ---------------------------------------------------------------------- */

/* The reference's rope by hand: adjacent pairs, theta_i = pos * base^(-2i/rope_dim),
 * dims from rope_dim on untouched. */
Test(reference, rope_by_hand)
{
	struct ref_model r = { .head_dim = 6, .rope_dim = 4, .base = 10000.0, .rope_scale = 1.0 };
	double x[12] = { 1, 0, 1, 0, 7, 8, 0, 1, 0, 1, 9, 10 };

	ref_rope(&r, x, 2, 3);
	const double t0 = 3.0, t1 = 3.0 * 0.01;   /* 10000^(-2/4) = 0.01 */
	const double want[12] = { cos(t0), sin(t0), cos(t1), sin(t1), 7, 8,
				  -sin(t0), cos(t0), -sin(t1), cos(t1), 9, 10 };
	for (int i = 0; i < 12; i++)
		cr_assert_float_eq(x[i], want[i], 1e-15, "element %d: %g want %g", i, x[i], want[i]);
}

/* The reference on a hand-checkable fact: at position 0 a token attends only to itself
 * (the attention output is its V) and rope is the identity, so the logits of a 1-token
 * prompt do not depend on the rope or score-scale mutants, while those of later positions
 * do: the mutants touch what they claim to. */
Test(reference, mutants_sanity)
{
	char path[256];
	uint32_t tok[6];
	const enum ref_mutant mus[] = { REF_ROPE_PAIRS, REF_NO_ROPE, REF_SCALE_DIM };

	et_mkmodel("m.gguf", "--vocab 300 --dim 64 --layers 1 --heads 4 --kv-heads 2 --ffn 96 "
			     "--ctx 64 --dtype f32");
	et_path_in(path, sizeof(path), "m.gguf");
	et_make_prompt(tok, 6, 300, 5);
	struct ref_model *r0 = ref_open(path, REF_OK);
	double *a = ref_run(r0, tok, 1, 5);
	for (size_t k = 0; k < sizeof(mus) / sizeof(mus[0]); k++) {
		struct ref_model *r1 = ref_open(path, mus[k]);
		double *b = ref_run(r1, tok, 1, 5);
		for (uint32_t i = 0; i < 300; i++)
			cr_assert_eq(a[i], b[i], "%s: position 0 must not depend on it",
				     ref_mutant_name[mus[k]]);
		double d = 0.0;
		for (uint32_t i = 300; i < 6 * 300; i++)
			d = fmax(d, fabs(a[i] - b[i]));
		cr_assert_gt(d, 1e-6, "%s: later positions must depend on it", ref_mutant_name[mus[k]]);
		free(b);
		ref_close(r1);
	}
	free(a);
	ref_close(r0);
}

/*
 * The comparison has the power to fail: every mutant of the reference disagrees with the
 * engine by far more than the tolerance, on an mkmodel model (weights std 0.02) and on a
 * model with large weights and partial rope.
 */
Test(reference, mutants_disagree_with_engine)
{
	char path[2][256];
	const uint32_t n = 120, extra = 3;
	uint32_t tok[123];
	const struct custom_model cm = {
		.vocab = 300, .dim = 72, .layers = 2, .heads = 6, .kv_heads = 2, .ffn = 100,
		.ctx = 256, .rope_dim = 8, .eps = 1e-6f, .base = 500000.0f, .wscale = 0.25f,
		.nspread = 0.3f, .seed = 77,
	};

	et_mkmodel("m.gguf", "--vocab 512 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 160 "
			     "--ctx 1024 --dtype f32");
	et_write_custom("c.gguf", &cm);
	et_path_in(path[0], sizeof(path[0]), "m.gguf");
	et_path_in(path[1], sizeof(path[1]), "c.gguf");
	for (int mi = 0; mi < 2; mi++) {
		struct eng g;
		struct table t;
		et_eng_open(&g, path[mi], 2, KVP_KV_F32, 16, 64);
		uint32_t vocab = g.m->cfg.vocab;
		et_make_prompt(tok, n + extra, vocab, 11);
		for (int mu = 0; mu < REF_N_MUTANTS; mu++) {
			/* the reference itself on a model whose rope covers the whole head */
			if (mi == 0 && mu == REF_ROPE_FULL)
				continue;
			/* neither model has biases or scaled rope: see scaled_and_biased_models */
			if (mu == REF_NO_BIAS || mu == REF_NO_FREQ_SCALE)
				continue;
			struct ref_model *r = ref_open(path[mi], (enum ref_mutant)mu);
			double *lg = ref_run(r, tok, n, extra);
			et_table_init(&t, (n + extra + 15) / 16, kvp_engine_block_bytes(g.e), 3);
			double d = et_eng_run_vs_ref(&g, &t, tok, n, extra, lg, vocab);
			fprintf(stderr, "test_engine: model %s reference %-11s max |engine - ref| %.3g\n",
				mi ? "custom" : "mkmodel", ref_mutant_name[mu], d);
			if (mu == REF_OK)
				cr_assert_leq(d, TOL_F32, "%s: the true reference disagrees: %g",
					      path[mi], d);
			else
				cr_assert_gt(d, 10 * TOL_F32,
					     "%s: mutant %s is indistinguishable from the engine "
					     "(%g): the comparison cannot fail", path[mi],
					     ref_mutant_name[mu], d);
			et_table_free(&t);
			free(lg);
			ref_close(r);
		}
		et_eng_close(&g);
	}
}
