/*
 * engine_cache.c - DESIGN invariant 5 at engine level, caching never changes the answer:
 * a prompt run cold and greedy-decoded, then again with 0 %, ~50 % and 100 % of its full
 * blocks shared from the cold run (read-only meanwhile), fed the cold run's tokens: the
 * same picks (but at a tie closer than the tolerance, which only quantized weights'
 * 8-bit activations bring within reach), the same logits within tolerance, the shared
 * blocks untouched.
 *
 * One of the files of test_engine; see engine_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_test_ref.h"
#include "engine_test_util.h"
#include "kvp_engine.h"
#include "kvp_model.h"

/* ---- cache: DESIGN invariant 5 ----------------------------------------------------- */

#define DECODE_STEPS 64

struct run_out {
	uint32_t toks[DECODE_STEPS + 1];   /* greedy picks: after the prompt, after each step */
	float *logits;                      /* (DECODE_STEPS + 1, vocab) */
};

/* Prefill tok[pos0 .. L) with kv_write_from wf over t, then greedy-decode DECODE_STEPS
 * steps, each argmax fed at the next position and its K/V written; as the daemon
 * (daemon/gen.c) does, every call passes the cached length wf as kv_write_from. With
 * follow, the tokens fed are follow's instead (o->toks still records the argmax): a
 * warm run kept on the cold run's path past a near tie it broke the other way. */
static void run_greedy(struct eng *g, struct table *t, const uint32_t *tok, uint32_t L,
		       uint32_t pos0, uint32_t wf, const uint32_t *follow, struct run_out *o)
{
	const uint32_t V = g->m->cfg.vocab;

	o->logits = malloc((size_t)(DECODE_STEPS + 1) * V * sizeof(float));
	cr_assert_not_null(o->logits);
	cr_assert_eq(kvp_engine_forward(g->e, t->blocks, t->n, tok + pos0, L - pos0, pos0, wf,
					o->logits), 0);
	o->toks[0] = et_argmax_f(o->logits, V);
	for (uint32_t s = 0; s < DECODE_STEPS; s++) {
		uint32_t p = L + s;
		float *lg = o->logits + (size_t)(s + 1) * V;
		const uint32_t *next = follow ? &follow[s] : &o->toks[s];

		cr_assert_eq(kvp_engine_forward(g->e, t->blocks, t->n, next, 1, p, wf, lg), 0);
		o->toks[s + 1] = et_argmax_f(lg, V);
	}
}

/* Second gap of a logits vector: best - second best (how close a greedy tie was). */
static double top2_gap(const float *x, uint32_t n)
{
	uint32_t b = et_argmax_f(x, n);
	double s = -INFINITY;
	for (uint32_t i = 0; i < n; i++)
		if (i != b && x[i] > s)
			s = x[i];
	return (double)x[b] - s;
}

static void on_segv(int sig)
{
	static const char msg[] = "test_engine: SIGSEGV while cached blocks were read-only: "
				  "the engine wrote into a shared cached block (or crashed)\n";
	ssize_t rc = write(2, msg, sizeof(msg) - 1);
	(void)rc;
	signal(sig, SIG_DFL);
	raise(sig);
}

/* tol_ref: the cold run's logits against the reference; tol_same: every run's logits
 * against the cold run's. */
static void cache_check(const char *path, int threads, enum kvp_kv_dtype dt, double tol_ref,
			double tol_same, double *worst)
{
	const uint32_t B = 16, k = 6;
	const uint32_t lens[] = { k * B - 1, k * B, k * B + 1, 1 };
	uint32_t tok[k * B + 1];
	struct eng g;

	et_eng_open(&g, path, threads, dt, B, 64);
	const uint32_t V = g.m->cfg.vocab;
	const size_t bb = kvp_engine_block_bytes(g.e);
	struct ref_model *r = ref_open(path, REF_OK);
	et_make_prompt(tok, k * B + 1, V, 4242);

	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		const uint32_t L = lens[li], full = L / B;
		const uint32_t nb = (L + DECODE_STEPS + B - 1) / B;
		struct table a;
		struct run_out cold;

		/* the cold run, checked against the reference for the prompt */
		et_table_init_aligned(&a, nb, bb, 100 + L, (size_t)sysconf(_SC_PAGESIZE));
		run_greedy(&g, &a, tok, L, 0, 0, NULL, &cold);
		double *ref = ref_run(r, tok, L, 0);
		double dref = et_max_diff_fd(cold.logits, ref, V);
		free(ref);
		cr_assert_leq(dref, tol_ref, "L=%u cold vs reference: %g", L, dref);

		/* set A's full blocks as they are once the cold run is over */
		char *snap = malloc(full ? (size_t)full * bb : 1);
		cr_assert_not_null(snap);
		for (uint32_t i = 0; i < full; i++)
			memcpy(snap + (size_t)i * bb, a.blocks[i], bb);

		/* 0 %, ~50 %, 100 % of the full blocks cached; then ~50 % again with the
		 * call starting 5 positions before the cached end (those recomputed but not
		 * written: kv_write_from inside the call) */
		const uint32_t ms[4] = { 0, full / 2, full, full / 2 };
		for (int ci = 0; ci < 4; ci++) {
			const uint32_t m = ms[ci];
			if (ci == 3 && m == 0)
				continue;
			struct table b;
			struct run_out warm;

			/* the second sequence: A's first m blocks, fresh ones after */
			et_table_init(&b, nb, bb, 200 + L * 3 + (uint64_t)ci);
			for (uint32_t i = 0; i < m; i++)
				b.blocks[i] = a.blocks[i];
			uint32_t pos0 = m * B, wf = m * B;
			if (pos0 == L)   /* all cached: recompute the last token, write nothing */
				pos0 = L - 1;
			if (ci == 3)
				pos0 = m * B - (m * B < 5 ? m * B : 5);
			/* the shared blocks read-only while the second sequence runs */
			for (uint32_t i = 0; i < m; i++)
				et_table_protect(&a, i, true);
			void (*old)(int) = signal(SIGSEGV, on_segv);
			run_greedy(&g, &b, tok, L, pos0, wf, cold.toks, &warm);
			signal(SIGSEGV, old);
			for (uint32_t i = 0; i < m; i++)
				et_table_protect(&a, i, false);

			for (uint32_t i = 0; i < full; i++)
				cr_assert(memcmp(snap + (size_t)i * bb, a.blocks[i], bb) == 0,
					  "L=%u m=%u: shared block %u of the cold run was written", L, m,
					  i);
			/* nothing cached: the very same calls as the cold run on other blocks,
			 * so the very same bits (the engine is deterministic, threads or not) */
			if (m == 0)
				cr_assert(memcmp(cold.logits, warm.logits,
						 (size_t)(DECODE_STEPS + 1) * V * sizeof(float)) == 0,
					  "L=%u threads %d kv %s: a rerun on other blocks gave other "
					  "logits", L, threads, dt ? "f16" : "f32");
			for (uint32_t s = 0; s <= DECODE_STEPS; s++) {
				const float *lc = cold.logits + (size_t)s * V;
				const float *lw = warm.logits + (size_t)s * V;
				double d = et_max_diff_ff(lc, lw, V);
				*worst = d > *worst ? d : *worst;
				/* the same pick, or a tie closer than the runs' tolerance */
				cr_assert(cold.toks[s] == warm.toks[s] ||
						  top2_gap(lc, V) <= 2 * tol_same,
					  "L=%u, %u of %u full blocks cached, threads %d, kv %s: "
					  "greedy token %u differs (%u vs %u; cold top-2 gap %g)",
					  L, m, full, threads, dt ? "f16" : "f32", s, cold.toks[s],
					  warm.toks[s], top2_gap(lc, V));
				cr_assert_leq(d, tol_same,
					      "L=%u, %u of %u full blocks cached, kv %s: step %u logits "
					      "differ by %g", L, m, full, dt ? "f16" : "f32", s, d);
			}
			free(warm.logits);
			et_table_free(&b);
		}
		free(snap);
		free(cold.logits);
		et_table_free(&a);
	}
	ref_close(r);
	et_eng_close(&g);
}

void et_cache_model(const struct fwd_case *c)
{
	char path[256];
	double worst[2] = { 0, 0 }, same[2];

	/* with activations rounded to 8 bits (quantized weights), the last digits of a
	 * value can move an element across a rounding step: the runs agree within the
	 * reference tolerance then, not to f32 rounding */
	same[KVP_KV_F32] = c->tol_ref > 0 ? c->tol_ref : TOL_F32;
	same[KVP_KV_F16] = c->tol_ref > 0 ? c->tol_ref : TOL_F16_SAME;
	et_fwd_model_path(c, path, sizeof(path));
	for (int dt = 0; dt < 2; dt++)
		for (int th = 1; th <= 2; th++)
			cache_check(path, th, (enum kvp_kv_dtype)dt,
				    dt ? et_tol_f16(c) + et_tol_ref(c) - TOL_F32 : et_tol_ref(c),
				    same[dt], &worst[dt]);
	fprintf(stderr, "test_engine: cache %-12s max logit diff across 0/50/100%% cached: "
			"f32 KV %.3g (tol %g), f16 KV %.3g (tol %g)\n",
		c->name, worst[0], same[KVP_KV_F32], worst[1], same[KVP_KV_F16]);
}

Test(cache, same_answer_gqa) { et_cache_model(&et_fwd_cases[0]); }
Test(cache, same_answer_mqa) { et_cache_model(&et_fwd_cases[3]); }
Test(cache, same_answer_custom) { et_cache_model(&et_fwd_cases[4]); }
