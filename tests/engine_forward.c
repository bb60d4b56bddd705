/*
 * engine_forward.c - the engine's forward pass against the reference: logits and the K/V
 * rows it leaves in the blocks, on every model of et_fwd_cases over block sizes, thread
 * counts and both KV dtypes; every kernel path this CPU has, max_batch, a prompt fed in
 * several calls, a long context, and sequences batched in one forward.
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
#include "kvp_cpu.h"
#include "kvp_engine.h"
#include "kvp_model.h"

/* ---- forward: engine vs reference ------------------------------------------------- */

static double max_abs_d(const double *a, uint32_t n)
{
	double m = 0.0;
	for (uint32_t i = 0; i < n; i++)
		m = fabs(a[i]) > m ? fabs(a[i]) : m;
	return m;
}

/* Every K and V row of positions 0..n-1 in the blocks, at the offset kvp_cpu.h documents,
 * against the reference's (post-rope) K and V. Returns the max abs diff over
 * (1 + |ref|) (relative above 1, absolute below) of layer 0, whose K/V depend on the
 * embedding alone (so f16 KV is off by its rounding only), and in *later the same over
 * the other layers (whose inputs carry the error of the f16 KV below them). */
static double kv_layout_diff(const struct ref_model *r, const struct table *t, uint32_t B,
			     enum kvp_kv_dtype dt, uint32_t n, double *later)
{
	double lat = 0.0;

	const uint32_t hd = r->head_dim, kvh = r->n_kv_heads, kvd = kvh * hd;
	double md = 0.0;
	float row[KVP_CPU_MAX_HEAD_DIM];

	for (uint32_t l = 0; l < r->n_layers; l++)
		for (uint32_t which = 0; which < 2; which++)
			for (uint32_t h = 0; h < kvh; h++)
				for (uint32_t p = 0; p < n; p++) {
					size_t off = ((((size_t)l * 2 + which) * kvh + h) * B + p % B) * hd;
					const char *blk = t->blocks[p / B];
					if (dt == KVP_KV_F32)
						memcpy(row, blk + off * 4, hd * 4);
					else
						kvp_cpu_f16_to_f32(row, (const uint16_t *)(blk + off * 2), hd);
					const double *want = (which ? r->vc : r->kc) +
							     ((size_t)l * r->ctx + p) * kvd + (size_t)h * hd;
					double *acc = l == 0 ? &md : &lat;
					for (uint32_t e = 0; e < hd; e++) {
						double d = fabs(row[e] - want[e]) / (1.0 + fabs(want[e]));
						if (!(d <= *acc))
							*acc = isnan(d) ? INFINITY : d;
					}
				}
	if (later)
		*later = lat;
	else
		md = lat > md || isnan(lat) ? lat : md;
	return md;
}

#define FWD_EXTRA 4   /* single-token steps after the prompt */

/* One model: B 1/7/16/64 x threads 1/2 x KV f32/f16, max_batch 64. */
static void fwd_check(const struct fwd_case *c)
{
	char path[256];
	uint32_t tok[512 + FWD_EXTRA];
	const uint32_t bs[] = { 1, 7, 16, 64 };
	double worst[2] = { 0, 0 }, worst_kv[2] = { 0, 0 }, worst_kvl[2] = { 0, 0 };

	et_fwd_model_path(c, path, sizeof(path));
	struct ref_model *r = ref_open(path, REF_OK);
	const uint32_t n = c->n_prompt, total = n + FWD_EXTRA;
	cr_assert_leq(total, 512 + FWD_EXTRA);
	et_make_prompt(tok, total, r->vocab, 1000 + r->dim);
	double *lg = ref_run(r, tok, n, FWD_EXTRA);
	double scale = max_abs_d(lg, r->vocab);

	for (int dt = 0; dt < 2; dt++)
		for (size_t bi = 0; bi < sizeof(bs) / sizeof(bs[0]); bi++)
			for (int th = 1; th <= 2; th++) {
				struct eng g;
				struct table t;
				const uint32_t B = bs[bi];
				if (c->light && (B != 16 || th != 2))
					continue;
				et_eng_open(&g, path, th, (enum kvp_kv_dtype)dt, B, 64);
				cr_assert_eq(kvp_engine_block_bytes(g.e),
					     (size_t)r->n_layers * 2 * r->n_kv_heads * B * r->head_dim *
						     (dt ? 2 : 4));
				cr_assert_eq(kvp_engine_token_bytes(g.e),
					     kvp_engine_block_bytes(g.e) / B);
				et_table_init(&t, (total + B - 1) / B, kvp_engine_block_bytes(g.e),
					      B * 7 + (uint64_t)th);
				double d = et_eng_run_vs_ref(&g, &t, tok, n, FWD_EXTRA, lg, r->vocab);
				double dk_later;
				double dk = kv_layout_diff(r, &t, B, (enum kvp_kv_dtype)dt, total,
							   &dk_later);
				worst[dt] = d > worst[dt] ? d : worst[dt];
				worst_kv[dt] = dk > worst_kv[dt] ? dk : worst_kv[dt];
				worst_kvl[dt] = dk_later > worst_kvl[dt] ? dk_later : worst_kvl[dt];
				cr_assert_leq(d, dt ? et_tol_f16(c) : TOL_F32,
					      "%s: B=%u threads=%d kv=%s: max |logit - ref| = %g",
					      c->name, B, th, dt ? "f16" : "f32", d);
				/* layer 0: f32 exact up to float rounding, f16 within half an
				 * f16 ulp (2^-11 relative) plus that; later layers carry the
				 * error of the f16 KV below them */
				cr_assert_leq(dk, dt ? 6e-4 : 1e-5,
					      "%s: B=%u threads=%d kv=%s: layer-0 K/V rows in the blocks "
					      "off the reference by %g (layout or rope)", c->name, B,
					      th, dt ? "f16" : "f32", dk);
				cr_assert_leq(dk_later, dt ? 1e-2 : 1e-5,
					      "%s: B=%u threads=%d kv=%s: K/V rows of layers >= 1 off "
					      "the reference by %g", c->name, B, th, dt ? "f16" : "f32",
					      dk_later);
				et_table_free(&t);
				et_eng_close(&g);
			}
	fprintf(stderr, "test_engine: %-12s |logits| <= %.3g  max diff f32 KV %.3g (tol %g), "
			"f16 KV %.3g (tol %g); K/V rows rel f32 %.3g/%.3g f16 %.3g/%.3g "
			"(layer 0/later)\n",
		c->name, scale, worst[0], TOL_F32, worst[1], et_tol_f16(c), worst_kv[0], worst_kvl[0],
		worst_kv[1], worst_kvl[1]);
	free(lg);
	ref_close(r);
}

Test(forward, gqa_4_2) { fwd_check(&et_fwd_cases[0]); }
Test(forward, tied) { fwd_check(&et_fwd_cases[1]); }
Test(forward, mha_4_4) { fwd_check(&et_fwd_cases[2]); }
Test(forward, mqa_8_1) { fwd_check(&et_fwd_cases[3]); }
Test(forward, custom_partial_rope_hd12) { fwd_check(&et_fwd_cases[4]); }
Test(forward, custom_wide_head_hd320) { fwd_check(&et_fwd_cases[5]); }
Test(forward, custom_group96_hd4) { fwd_check(&et_fwd_cases[6]); }
Test(forward, custom_max_head_dim_2048) { fwd_check(&et_fwd_cases[7]); }
Test(forward, custom_hd320_group7) { fwd_check(&et_fwd_cases[8]); }

/* Every kernel path this CPU has gives the reference's answer. */
Test(forward, every_isa)
{
	const char *isas[] = { "generic", "avx2", "avx512" };
	const int cases[] = { 0, 3, 4 };
	uint32_t tok[300 + FWD_EXTRA];
	int ran = 0;

	for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
		const struct fwd_case *c = &et_fwd_cases[cases[ci]];
		char path[256];
		et_fwd_model_path(c, path, sizeof(path));
		struct ref_model *r = ref_open(path, REF_OK);
		et_make_prompt(tok, 300 + FWD_EXTRA, r->vocab, 99);
		double *lg = ref_run(r, tok, 300, FWD_EXTRA);
		for (size_t ii = 0; ii < 3; ii++) {
			if (kvp_cpu_force_isa(isas[ii]) != 0)
				continue;
			for (int dt = 0; dt < 2; dt++) {
				struct eng g;
				struct table t;
				et_eng_open(&g, path, 2, (enum kvp_kv_dtype)dt, 16, 64);
				et_table_init(&t, (300 + FWD_EXTRA + 15) / 16, kvp_engine_block_bytes(g.e),
					      ii);
				double d = et_eng_run_vs_ref(&g, &t, tok, 300, FWD_EXTRA, lg, r->vocab);
				fprintf(stderr, "test_engine: isa %-7s %-12s kv %s max diff %.3g\n",
					isas[ii], c->name, dt ? "f16" : "f32", d);
				cr_assert_leq(d, dt ? et_tol_f16(c) : TOL_F32, "isa %s model %s kv %s: %g",
					      isas[ii], c->name, dt ? "f16" : "f32", d);
				et_table_free(&t);
				et_eng_close(&g);
			}
			ran++;
		}
		kvp_cpu_force_isa(NULL);
		free(lg);
		ref_close(r);
	}
	cr_assert_geq(ran, 3, "the generic path at least must run for each model");
}

/* max_batch 1 (token by token), 7 (ragged steps), 64, 512 (one step), on 2 and 3
 * threads (uneven splits): the reference's answer. */
Test(forward, max_batch)
{
	const uint32_t mbs[] = { 1, 7, 64, 512 };
	uint32_t tok[300 + FWD_EXTRA];

	for (int ci = 0; ci < 5; ci += 4) {
		const struct fwd_case *c = &et_fwd_cases[ci];
		char path[256];
		et_fwd_model_path(c, path, sizeof(path));
		struct ref_model *r = ref_open(path, REF_OK);
		et_make_prompt(tok, 300 + FWD_EXTRA, r->vocab, 7);
		double *lg = ref_run(r, tok, 300, FWD_EXTRA);
		for (size_t mi = 0; mi < sizeof(mbs) / sizeof(mbs[0]); mi++)
			for (int th = 2; th <= 3; th++) {
				struct eng g;
				struct table t;
				et_eng_open(&g, path, th, KVP_KV_F32, 16, mbs[mi]);
				et_table_init(&t, (300 + FWD_EXTRA + 15) / 16, kvp_engine_block_bytes(g.e),
					      mi);
				double d = et_eng_run_vs_ref(&g, &t, tok, 300, FWD_EXTRA, lg, r->vocab);
				cr_assert_leq(d, TOL_F32, "%s max_batch %u threads %d: %g", c->name,
					      mbs[mi], th, d);
				et_table_free(&t);
				et_eng_close(&g);
			}
		free(lg);
		ref_close(r);
	}
}

/* A prompt fed in several calls (chunked prefill, as a daemon may do), each writing its
 * own positions, matches the reference; calls split at and off block boundaries. */
Test(forward, chunked_calls)
{
	char path[256];
	uint32_t tok[300];
	const uint32_t cuts[] = { 0, 1, 16, 17, 100, 128, 255, 299, 300 };
	float lg[512];

	et_fwd_model_path(&et_fwd_cases[4], path, sizeof(path));
	struct ref_model *r = ref_open(path, REF_OK);
	et_make_prompt(tok, 300, r->vocab, 8);
	double *ref = ref_run(r, tok, 300, 0);
	struct eng g;
	struct table t;
	et_eng_open(&g, path, 2, KVP_KV_F32, 16, 64);
	et_table_init(&t, 300 / 16 + 1, kvp_engine_block_bytes(g.e), 5);
	for (size_t i = 0; i + 1 < sizeof(cuts) / sizeof(cuts[0]); i++)
		cr_assert_eq(kvp_engine_forward(g.e, t.blocks, t.n, tok + cuts[i], cuts[i + 1] - cuts[i],
						cuts[i], cuts[i], lg), 0);
	double d = et_max_diff_fd(lg, ref, r->vocab);
	cr_assert_leq(d, TOL_F32, "chunked prefill: %g", d);
	cr_assert_leq(kv_layout_diff(r, &t, 16, KVP_KV_F32, 300, NULL), 1e-5);
	et_table_free(&t);
	et_eng_close(&g);
	free(ref);
	ref_close(r);
}

/* Deep into a long context (positions to 2,500 of 4,096, rope angles in the thousands of
 * radians, 40 attention tiles): f32 KV still within 1e-4 of the reference. */
Test(forward, long_context)
{
	char path[256];
	const uint32_t n = 2500;
	uint32_t *tok = malloc((n + FWD_EXTRA) * sizeof(uint32_t));
	struct fwd_case c = et_fwd_cases[4];

	cr_assert_not_null(tok);
	c.name = "custom-long";
	c.cm.ctx = 4096;
	c.cm.base = 10000.0f;
	c.cm.rope_dim = 12;
	c.cm.layers = 1;
	et_fwd_model_path(&c, path, sizeof(path));
	struct ref_model *r = ref_open(path, REF_OK);
	et_make_prompt(tok, n + FWD_EXTRA, r->vocab, 31);
	double *lg = ref_run(r, tok, n, FWD_EXTRA);
	for (int dt = 0; dt < 2; dt++) {
		struct eng g;
		struct table t;
		et_eng_open(&g, path, 2, (enum kvp_kv_dtype)dt, 16, 512);
		et_table_init(&t, (n + FWD_EXTRA + 15) / 16, kvp_engine_block_bytes(g.e), 17);
		double d = et_eng_run_vs_ref(&g, &t, tok, n, FWD_EXTRA, lg, r->vocab);
		fprintf(stderr, "test_engine: long context (%u) kv %s max diff %.3g\n", n,
			dt ? "f16" : "f32", d);
		cr_assert_leq(d, dt ? TOL_F16 : TOL_F32, "long context kv %s: %g",
			      dt ? "f16" : "f32", d);
		cr_assert_leq(kv_layout_diff(r, &t, 16, (enum kvp_kv_dtype)dt, n + FWD_EXTRA, NULL),
			      dt ? 6e-4 : 1e-5);
		et_table_free(&t);
		et_eng_close(&g);
	}
	free(lg);
	free(tok);
	ref_close(r);
}

/* ---- batches: several sequences in one forward (DESIGN invariant 9) ---------------- */

#define BATCH_SEQS 3

/* The largest difference between two KV blocks, element by element, in units of the
 * dtype's rounding at each value (about one f16 ulp, 1e-5 relative for f32): 0 when
 * equal; infinity when one holds the fill (never written) and the other a value. */
static double kv_block_diff(const void *a, const void *b, size_t bytes, enum kvp_kv_dtype dt)
{
	const size_t el = dt == KVP_KV_F16 ? 2 : 4, n = bytes / el;
	const double rel = dt == KVP_KV_F16 ? 1.0 / 1024 : 1e-5;
	double worst = 0;

	for (size_t i = 0; i < n; i++) {
		float x, y;

		if (memcmp((const char *)a + i * el, (const char *)b + i * el, el) == 0)
			continue;
		if (dt == KVP_KV_F16) {
			kvp_cpu_f16_to_f32(&x, (const uint16_t *)a + i, 1);
			kvp_cpu_f16_to_f32(&y, (const uint16_t *)b + i, 1);
		} else {
			memcpy(&x, (const float *)a + i, 4);
			memcpy(&y, (const float *)b + i, 4);
		}
		if (!isfinite(x) || !isfinite(y))
			return INFINITY;
		double d = fabs((double)x - y) / (rel * fmax(fabs((double)x), 1e-2));

		worst = fmax(worst, d);
	}
	return worst;
}

/* Three sequences of one model, each with its own table: a cold prefill from position
 * 0, a chunk at positions 20..49 over a prefix written just before, a single decode
 * row at position 70. Runs each prefix alone first (when it has one), then the rows
 * under test either one call per sequence (batch false) or all in one batch; the last
 * row's logits of each in lg[s]. */
static void run_three(struct eng *g, struct table *t, const uint32_t *tok, bool batch,
		      float lg[BATCH_SEQS][300])
{
	static const uint32_t pos0[BATCH_SEQS] = { 0, 20, 70 };
	static const uint32_t rows[BATCH_SEQS] = { 100, 30, 1 };
	struct kvp_engine_seq seqs[BATCH_SEQS];

	for (int s = 0; s < BATCH_SEQS; s++) {
		const uint32_t *ts = tok + 200 * s;

		if (pos0[s])   /* the sequence's prefix, already in its blocks */
			cr_assert_eq(kvp_engine_forward(g->e, t[s].blocks, t[s].n, ts, pos0[s], 0, 0,
							NULL), 0);
		seqs[s] = (struct kvp_engine_seq){
			.blocks = t[s].blocks, .n_blocks = t[s].n, .tokens = ts + pos0[s],
			.n = rows[s], .pos0 = pos0[s], .kv_write_from = pos0[s], .logits = lg[s],
		};
	}
	if (batch) {
		cr_assert_eq(kvp_engine_forward_batch(g->e, seqs, BATCH_SEQS), 0);
		return;
	}
	for (int s = 0; s < BATCH_SEQS; s++)
		cr_assert_eq(kvp_engine_forward_batch(g->e, &seqs[s], 1), 0);
}

/* A sequence computed in a batch with others gives the logits it gets alone, and the
 * K/V each writes lands in its own table only. With max_batch 64 the 131 rows go in
 * three steps, the middle sequence cut between the second and the third: rows of
 * different sequences share each matrix call (so another kernel may sum them: equal
 * within the tolerance, not to the bit). */
Test(forward, batch_of_sequences_matches_each_alone)
{
	char path[256];
	uint32_t tok[200 * BATCH_SEQS];
	static float alone[BATCH_SEQS][300], together[BATCH_SEQS][300];
	struct eng g;
	struct table ta[BATCH_SEQS], tb[BATCH_SEQS];

	et_mkmodel("batch.gguf", "--vocab 300 --dim 64 --layers 2 --heads 4 --kv-heads 2 "
				 "--ffn 96 --ctx 256 --dtype f32");
	et_path_in(path, sizeof(path), "batch.gguf");
	et_make_prompt(tok, 200 * BATCH_SEQS, 300, 41);
	for (int dt = 0; dt < 2; dt++) {
		et_eng_open(&g, path, 2, (enum kvp_kv_dtype)dt, 16, 64);
		for (int s = 0; s < BATCH_SEQS; s++) {
			et_table_init(&ta[s], 8, kvp_engine_block_bytes(g.e), 10 + s);
			et_table_init(&tb[s], 8, kvp_engine_block_bytes(g.e), 20 + s);
		}
		run_three(&g, ta, tok, false, alone);
		run_three(&g, tb, tok, true, together);
		for (int s = 0; s < BATCH_SEQS; s++) {
			double d = et_max_diff_ff(together[s], alone[s], 300);

			cr_assert_leq(d, 1e-5, "kv %s, sequence %d: batched logits differ by %g",
				      dt ? "f16" : "f32", s, d);
			/* the same K/V in the same logical blocks, and nothing written
			 * elsewhere (an element never written keeps its fill in both) */
			for (uint32_t b = 0; b < 8; b++) {
				double kd = kv_block_diff(ta[s].blocks[b], tb[s].blocks[b],
							  kvp_engine_block_bytes(g.e),
							  (enum kvp_kv_dtype)dt);

				cr_assert_leq(kd, 1.0, "kv %s, sequence %d, block %u: K/V differs by "
					      "%g ulp-scaled", dt ? "f16" : "f32", s, b, kd);
			}
		}
		for (int s = 0; s < BATCH_SEQS; s++) {
			et_table_free(&ta[s]);
			et_table_free(&tb[s]);
		}
		et_eng_close(&g);
	}
}
