/*
 * cuda_model.c - the whole CUDA engine against the CPU engine: a random f16 model's
 * logits, greedy tokens and K/V blocks, bf16, Q8_0 and Q4_K_M models' logits (weights
 * dequantized to f16 at upload), what its kernels do not compute refused, bad calls
 * refused with nothing written (model); and DESIGN invariant 5 on CUDA, caching never changes the
 * answer (cache). Needs a GPU.
 *
 * One of the files of test_cuda; see cuda_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_test_util.h"
#include "kvp_cpu.h"
#include "kvp_cuda.h"
#include "kvp_engine.h"
#include "kvp_model.h"
#include "kvp_store.h"

/* ---- tolerances of the whole-model tests (the kernels' are stated at each check) ----
 *
 * The CUDA engine rounds the inputs of every GEMM (normed activations, attention output,
 * silu(gate) * up) to the weights' dtype, where the CPU engine keeps them f32: each
 * rounding moves a value by up to 2^-11 (f16) or 2^-8 (bf16) of itself. A CPU emulation
 * of exactly those roundings on the test model below moves the logits by 1.8e-3 to
 * 3.7e-3 of max |logit| (f16) and 1.1e-2 to 1.6e-2 (bf16) over prompts of 200 tokens
 * and 16 greedy steps; the tolerances are ~3x that. In the same emulation, rope at the
 * wrong positions moves them by 1.7 of max |logit|, an FFN output 5 % too large by 2.6e-2.
 */
#define TOL_MODEL_F16 1e-2
#define TOL_MODEL_BF16 5e-2
/* CUDA against itself with 0/50/100 % cached: the same weights and roundings, only the
 * batch shapes of the GEMMs and the attention path (many rows vs one) differ. */
#define TOL_CACHE 5e-3
/* K/V the CUDA engine wrote vs the CPU engine's, relative to max |K/V| of the layer:
 * layer 0 depends on the embedding alone (one f16 rounding of its GEMM input and the
 * f16 storage: ~1e-3), later layers carry the upstream rounding as the logits do. */
#define TOL_KV_LAYER0 4e-3
#define TOL_KV_LATER 2e-2

/* The test model: GQA 4 (4 query heads on 1 kv head), head dim 64, weights std 0.08 so
 * that attention is peaked enough for rope and masking errors to show in the logits. */
#define MODEL_ARGS "--vocab 512 --dim 256 --layers 2 --heads 4 --kv-heads 1 --ffn 512 " \
		   "--ctx 1024 --weight-std 0.08"
/*
 * Prompt seeds (ct_make_prompt) picked on the CPU engine so that every greedy pick below
 * wins by a wide margin: with logits within tol * max |logit| of each other, two
 * engines can only pick differently where the top-2 gap is under 2 * tol * max |logit|.
 *   model: 200 tokens + 16 steps, smallest top-2 gap 4.3e-2 of max |logit| (>= 2 x 1e-2)
 *   cache: 95/96/97/1 tokens + 8 steps each, smallest gap 2.2e-2 (>= 2 x 5e-3)
 * Both tests assert these margins on the run they compare against, so a change of the
 * model generator that shrinks them fails loudly instead of flaking.
 */
#define MODEL_PROMPT_SEED 284
#define MODEL_PROMPT 200u
#define MODEL_STEPS 16u
#define CACHE_PROMPT_SEED 222
#define CACHE_STEPS 8u

/* ---- model: the CUDA engine against the CPU engine --------------------------------- */

/* Greedy run: prefill tok[pos0 .. L) with kv_write_from wf, then `steps` single-token
 * steps, each argmax fed at the next position (kv_write_from wf, as the daemon passes
 * the cached length). toks (steps + 1) picks; logits (steps + 1, vocab). */
static void run_greedy(struct kvp_engine *e, void *const *blocks, uint32_t nb,
		       const uint32_t *tok, uint32_t L, uint32_t pos0, uint32_t wf,
		       uint32_t steps, uint32_t *toks, float *logits)
{
	const uint32_t V = kvp_engine_model(e)->cfg.vocab;
	int rc;

	rc = kvp_engine_forward(e, blocks, nb, tok + pos0, L - pos0, pos0, wf, logits);
	cr_assert_eq(rc, 0, "%s forward of %u tokens at %u: %s",
		     kvp_backend_name(kvp_engine_backend(e)), L - pos0, pos0, kvp_strerror(rc));
	for (uint32_t s = 0; s <= steps; s++) {
		const float *lg = logits + (size_t)s * V;
		uint32_t b = 0;
		for (uint32_t i = 1; i < V; i++)
			if (lg[i] > lg[b])
				b = i;
		toks[s] = b;
		if (s == steps)
			break;
		rc = kvp_engine_forward(e, blocks, nb, &toks[s], 1, L + s, wf,
					logits + (size_t)(s + 1) * V);
		cr_assert_eq(rc, 0, "%s decode step %u: %s",
			     kvp_backend_name(kvp_engine_backend(e)), s, kvp_strerror(rc));
	}
}

/* (best - second best) / max |x| */
static double top2_gap_rel(const float *x, uint32_t n)
{
	uint32_t b = 0;
	double second = -INFINITY;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	for (uint32_t i = 0; i < n; i++)
		if (i != b && x[i] > second)
			second = x[i];
	return ((double)x[b] - second) / ct_max_abs(x, n);
}

static struct kvp_engine *cuda_engine(const struct kvp_model *m, uint32_t B, uint32_t max_batch)
{
	char err[256] = "";
	struct kvp_engine *e = NULL;
	struct kvp_engine_config cfg = {
		.backend = KVP_BACKEND_CUDA, .device = 0, .err = err, .errlen = sizeof(err),
		.threads = 1, .kv_dtype = KVP_KV_F16, .block_tokens = B, .max_batch = max_batch,
	};
	int rc = kvp_engine_create(m, &cfg, &e);

	cr_assert_eq(rc, 0, "CUDA engine: %s: %s", kvp_strerror(rc), err);
	cr_assert_eq(kvp_engine_backend(e), KVP_BACKEND_CUDA);
	cr_assert_null(kvp_engine_threads(e));
	return e;
}

static struct kvp_engine *cpu_engine(const struct kvp_model *m, uint32_t B, uint32_t max_batch)
{
	struct kvp_engine *e = NULL;
	struct kvp_engine_config cfg = { .backend = KVP_BACKEND_CPU, .threads = 2,
					 .kv_dtype = KVP_KV_F16, .block_tokens = B,
					 .max_batch = max_batch };

	cr_assert_eq(kvp_engine_create(m, &cfg, &e), 0);
	return e;
}

/* max |a - b| / max |b| over K/V of positions < npos in layer l (or all layers >= 1
 * when later), a = device blocks read back, b = host blocks; both f16. */
static double kv_diff(const struct dtable *dt, const struct htable *ht,
		      const struct kvp_model_config *mc, uint32_t B, uint32_t npos, bool later)
{
	const uint32_t hd = mc->head_dim, kvh = mc->n_kv_heads;
	unsigned char *blk = ct_xmalloc(ht->bb);
	double md = 0.0, mx = 0.0;
	float a[KVP_CUDA_MAX_HEAD_DIM], b[KVP_CUDA_MAX_HEAD_DIM];

	for (uint32_t bi = 0; bi * B < npos; bi++) {
		ct_dtable_read(dt, bi, blk);
		for (uint32_t l = later ? 1 : 0; l < (later ? mc->n_layers : 1); l++)
			for (uint32_t w = 0; w < 2; w++)
				for (uint32_t h = 0; h < kvh; h++)
					for (uint32_t j = 0; j < B && bi * B + j < npos; j++) {
						size_t off = ((((size_t)l * 2 + w) * kvh + h) * B + j) * hd;
						kvp_cpu_f16_to_f32(a, (const uint16_t *)blk + off, hd);
						kvp_cpu_f16_to_f32(b, (const uint16_t *)ht->blocks[bi] + off,
								   hd);
						for (uint32_t e = 0; e < hd; e++) {
							double d = fabs((double)a[e] - b[e]);
							md = d > md || isnan(d) ? (isnan(d) ? INFINITY : d) : md;
							mx = fabs(b[e]) > mx ? fabs(b[e]) : mx;
						}
					}
	}
	free(blk);
	return mx > 0 ? md / mx : md;
}

/*
 * The CUDA engine against the CPU engine on an f16 model: a 200-token prompt prefilled
 * in steps of 64 rows, then 16 greedy steps, each engine feeding its own picks. Logits
 * of every step within TOL_MODEL_F16 of max |CPU logit|, the same greedy tokens, and
 * the K/V the CUDA engine left in its device blocks close to the CPU engine's (the same
 * layout; layer 0 within TOL_KV_LAYER0, later layers TOL_KV_LATER).
 */
Test(model, cuda_matches_cpu_f16)
{
	const uint32_t B = 16, L = MODEL_PROMPT, S = MODEL_STEPS, nb = (L + S + B - 1) / B;
	char path[256], err[256];
	struct kvp_model *m;
	uint32_t tok[MODEL_PROMPT], tc[MODEL_STEPS + 1], tg[MODEL_STEPS + 1];
	struct htable ht;
	struct dtable dt;

	ct_need_gpu();
	ct_mkmodel("f16.gguf", MODEL_ARGS " --dtype f16", path, sizeof(path));
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	const uint32_t V = m->cfg.vocab;
	struct kvp_engine *ec = cpu_engine(m, B, 64), *eg = cuda_engine(m, B, 64);
	const size_t bb = kvp_engine_block_bytes(ec);
	cr_assert_eq(kvp_engine_block_bytes(eg), bb, "the CUDA engine's blocks have the CPU's "
		     "layout and size");
	cr_assert_eq(kvp_engine_token_bytes(eg), kvp_engine_token_bytes(ec));
	ct_htable_new(&ht, nb, bb);
	struct kvp_pool *p = ct_dpool_new(nb + 4, bb);
	ct_dtable_take(&dt, p, 0, nb, 7);
	ct_make_prompt(tok, L, V, MODEL_PROMPT_SEED);
	float *lc = ct_xmalloc((size_t)(S + 1) * V * sizeof(float));
	float *lg = ct_xmalloc((size_t)(S + 1) * V * sizeof(float));

	run_greedy(ec, ht.blocks, nb, tok, L, 0, 0, S, tc, lc);
	run_greedy(eg, dt.blocks, nb, tok, L, 0, 0, S, tg, lg);
	double worst = 0.0, min_gap = INFINITY;
	for (uint32_t s = 0; s <= S; s++) {
		const float *c = lc + (size_t)s * V, *g = lg + (size_t)s * V;
		size_t at;
		double gap = top2_gap_rel(c, V);
		double d = ct_max_rel_diff(g, c, V, ct_max_abs(c, V), &at);

		min_gap = gap < min_gap ? gap : min_gap;
		worst = d > worst ? d : worst;
		cr_assert_geq(gap, 2 * TOL_MODEL_F16, "test design: CPU step %u wins by only %.3g "
			      "of max |logit|; pick another MODEL_PROMPT_SEED", s, gap);
		cr_assert_leq(d, TOL_MODEL_F16, "step %u: CUDA logit %zu %.6g vs CPU %.6g: %.3g of "
			      "max |logit|", s, at, g[at], c[at], d);
		cr_assert_eq(tg[s], tc[s], "greedy step %u: CUDA picks %u, CPU %u", s, tg[s],
			     tc[s]);
	}
	double k0 = kv_diff(&dt, &ht, &m->cfg, B, L + S, false);
	double k1 = kv_diff(&dt, &ht, &m->cfg, B, L + S, true);
	fprintf(stderr, "test_cuda: model f16: CUDA vs CPU logits max diff %.3g of max |logit| "
		"(tol %g), smallest top-2 gap %.3g; K/V layer 0 %.3g (tol %g), later %.3g (tol "
		"%g)\n", worst, TOL_MODEL_F16, min_gap, k0, TOL_KV_LAYER0, k1, TOL_KV_LATER);
	cr_assert_leq(k0, TOL_KV_LAYER0, "layer-0 K/V in the device blocks off the CPU's by %.3g",
		      k0);
	cr_assert_leq(k1, TOL_KV_LATER, "K/V of layers >= 1 off the CPU's by %.3g", k1);
	free(lc);
	free(lg);
	ct_htable_free(&ht);
	ct_dtable_put(&dt, 0);
	kvp_pool_destroy(p);
	kvp_engine_destroy(ec);
	kvp_engine_destroy(eg);
	kvp_model_free(m);
}

/* The prompt's logits of the file mkmodel makes with dtype, CUDA against CPU within tol,
 * then 4 steps fed the CPU's picks on both. */
static void prompt_matches(const char *dtype, double tol)
{
	const uint32_t B = 16, L = MODEL_PROMPT, nb = (L + 4 + B - 1) / B;
	char path[256], err[256], args[256], file[32];
	struct kvp_model *m;
	uint32_t tok[MODEL_PROMPT + 4];
	struct htable ht;
	struct dtable dt;

	snprintf(args, sizeof(args), MODEL_ARGS " --dtype %s", dtype);
	snprintf(file, sizeof(file), "%s.gguf", dtype);
	ct_mkmodel(file, args, path, sizeof(path));
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	const uint32_t V = m->cfg.vocab;
	struct kvp_engine *ec = cpu_engine(m, B, 512), *eg = cuda_engine(m, B, 512);
	const size_t bb = kvp_engine_block_bytes(ec);
	/* every matrix on the device, 2 bytes an element, whatever the file's type */
	cr_assert_geq(kvp_engine_weight_bytes(eg), 2 * (m->cfg.n_params - m->cfg.n_params / 64),
		      "%s: %zu bytes of weights on the device for %llu parameters", dtype,
		      kvp_engine_weight_bytes(eg), (unsigned long long)m->cfg.n_params);
	ct_htable_new(&ht, nb, bb);
	struct kvp_pool *p = ct_dpool_new(nb, bb);
	ct_dtable_take(&dt, p, 0, nb, 8);
	ct_make_prompt(tok, L, V, MODEL_PROMPT_SEED);
	float *lc = ct_xmalloc(V * sizeof(float)), *lg = ct_xmalloc(V * sizeof(float));
	double worst = 0.0;

	cr_assert_eq(kvp_engine_forward(ec, ht.blocks, nb, tok, L, 0, 0, lc), 0);
	cr_assert_eq(kvp_engine_forward(eg, dt.blocks, nb, tok, L, 0, 0, lg), 0);
	for (uint32_t s = 0;; s++) {
		size_t at;
		double d = ct_max_rel_diff(lg, lc, V, ct_max_abs(lc, V), &at);
		worst = d > worst ? d : worst;
		cr_assert_leq(d, tol, "%s step %u: CUDA logit %zu %.6g vs CPU %.6g (%.3g of max "
			      "|logit|)", dtype, s, at, lg[at], lc[at], d);
		if (s == 4)
			break;
		uint32_t b = 0;
		for (uint32_t i = 1; i < V; i++)
			if (lc[i] > lc[b])
				b = i;
		tok[L + s] = b;
		cr_assert_eq(kvp_engine_forward(ec, ht.blocks, nb, &tok[L + s], 1, L + s, L + s, lc),
			     0);
		cr_assert_eq(kvp_engine_forward(eg, dt.blocks, nb, &tok[L + s], 1, L + s, L + s, lg),
			     0);
	}
	fprintf(stderr, "test_cuda: model %s: CUDA vs CPU logits max diff %.3g of max |logit| "
		"(tol %g)\n", dtype, worst, tol);
	free(lc);
	free(lg);
	ct_htable_free(&ht);
	ct_dtable_put(&dt, 0);
	kvp_pool_destroy(p);
	kvp_engine_destroy(ec);
	kvp_engine_destroy(eg);
	kvp_model_free(m);
}

/* A bf16 model (its matrices stay bf16 on the device). */
Test(model, cuda_matches_cpu_bf16)
{
	ct_need_gpu();
	prompt_matches("bf16", TOL_MODEL_BF16);
}

/* Quantized files reach the GPU dequantized to f16: the CUDA engine computes on the same
 * values as the CPU engine, which quantizes its activations to 8 bits per block; that
 * moves the logits by up to ~1 % of max |logit| more than f16 rounding alone. */
Test(model, cuda_matches_cpu_quantized)
{
	ct_need_gpu();
	prompt_matches("q8_0", 2 * TOL_MODEL_F16);
	prompt_matches("q4_k_m", 2 * TOL_MODEL_F16);
}

/* What the CUDA kernels do not compute (qwen2's half-split rope, biases, rope scaling)
 * is refused when the engine is made, saying to use the CPU backend. */
Test(model, cuda_refuses_what_it_does_not_compute)
{
	static const char *const args[] = { "--arch qwen2", "--bias", "--rope-scaling linear:2",
					     "--rope-scaling llama3" };
	char path[256], err[256], a[256], file[32];

	ct_need_gpu();
	for (size_t i = 0; i < sizeof(args) / sizeof(args[0]); i++) {
		struct kvp_model *m;
		struct kvp_engine *e = NULL;
		struct kvp_engine_config cfg = { .backend = KVP_BACKEND_CUDA, .err = err,
						 .errlen = sizeof(err), .threads = 1,
						 .kv_dtype = KVP_KV_F16, .block_tokens = 16,
						 .max_batch = 64 };

		snprintf(a, sizeof(a), "--vocab 300 --dim 64 --layers 1 --heads 2 --kv-heads 1 "
				       "--ffn 64 --ctx 64 --dtype f16 %s", args[i]);
		snprintf(file, sizeof(file), "r%zu.gguf", i);
		ct_mkmodel(file, a, path, sizeof(path));
		cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
		cr_assert_neq(kvp_engine_create(m, &cfg, &e), 0, "%s: created", args[i]);
		cr_assert_null(e);
		cr_assert_not_null(strstr(err, "--backend cpu"), "%s: %s", args[i], err);
		kvp_model_free(m);
	}
}

/* The engine refuses what the CPU engine refuses, and writes nothing then. */
Test(model, cuda_refuses_bad_calls)
{
	const uint32_t B = 16, nb = 4;
	char path[256], err[256];
	struct kvp_model *m;
	uint32_t tok[64];
	struct dtable dt;
	float lg[300];

	ct_need_gpu();
	ct_mkmodel("r.gguf", "--vocab 300 --dim 64 --layers 1 --heads 2 --kv-heads 1 --ffn 64 "
			     "--ctx 64 --dtype f16", path, sizeof(path));
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	struct kvp_engine *e = cuda_engine(m, B, 16);
	const size_t bb = kvp_engine_block_bytes(e);
	struct kvp_pool *p = ct_dpool_new(nb, bb);
	ct_dtable_take(&dt, p, 0, nb, 9);
	ct_make_prompt(tok, 64, 300, 3);
	uint32_t bad = 300;
	cr_assert_eq(kvp_engine_forward(e, dt.blocks, nb, &bad, 1, 0, 0, lg), KVP_EINVAL,
		     "token == vocab");
	cr_assert_eq(kvp_engine_forward(e, dt.blocks, nb, tok, 1, 64, 64, lg), KVP_EINVAL,
		     "position == ctx");
	cr_assert_eq(kvp_engine_forward(e, dt.blocks, 3, tok, 49, 0, 0, lg), KVP_EINVAL,
		     "table too short");
	cr_assert_eq(kvp_engine_forward(e, dt.blocks, nb, tok, 0, 0, 0, lg), KVP_EINVAL, "n = 0");
	unsigned char *blk = ct_xmalloc(bb);
	for (uint32_t i = 0; i < nb; i++) {
		ct_dtable_read(&dt, i, blk);
		for (size_t b = 0; b < bb; b++)
			cr_assert_eq(blk[b], 0xFF, "a refused call wrote block %u byte %zu", i, b);
	}
	/* and the boundaries are accepted */
	cr_assert_eq(kvp_engine_forward(e, dt.blocks, nb, tok, 64, 0, 0, lg), 0);
	for (uint32_t i = 0; i < 300; i++)
		cr_assert(isfinite(lg[i]), "logit %u is %g", i, lg[i]);
	free(blk);
	ct_dtable_put(&dt, 0);
	kvp_pool_destroy(p);
	kvp_engine_destroy(e);
	kvp_model_free(m);
}

/* ---- cache: DESIGN invariant 5 on the CUDA engine ----------------------------------- */

/*
 * A prompt run cold over device blocks and greedy-decoded CACHE_STEPS steps, then again
 * with 0 %, ~50 % and 100 % of its full blocks shared from the cold run (pos0 and
 * kv_write_from at the cached length, as the daemon calls it; 100 %: the last token
 * recomputed, nothing written), and ~50 % with the call starting 5 positions before the
 * cached end (recomputed, not written). Same greedy tokens, logits within TOL_CACHE of
 * max |cold logit|, and the cold run's full blocks byte for byte as they were (a device
 * block cannot be made read-only, so they are marked and compared after every run).
 * Prompts of k*B-1, k*B, k*B+1 and 1 tokens, B = 16, k = 6.
 */
Test(cache, same_answer_on_cuda)
{
	const uint32_t B = 16, k = 6;
	const uint32_t lens[] = { k * B - 1, k * B, k * B + 1, 1 };
	const uint32_t S = CACHE_STEPS;
	char path[256], err[256];
	struct kvp_model *m;
	uint32_t tok[k * B + 1], tc[CACHE_STEPS + 1], tw[CACHE_STEPS + 1];
	double worst = 0.0, min_gap = INFINITY;

	ct_need_gpu();
	ct_mkmodel("c.gguf", MODEL_ARGS " --dtype f16", path, sizeof(path));
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	const uint32_t V = m->cfg.vocab;
	struct kvp_engine *e = cuda_engine(m, B, 64);
	const size_t bb = kvp_engine_block_bytes(e);
	struct kvp_pool *p = ct_dpool_new(64, bb);
	ct_make_prompt(tok, k * B + 1, V, CACHE_PROMPT_SEED);
	float *lc = ct_xmalloc((size_t)(S + 1) * V * sizeof(float));
	float *lw = ct_xmalloc((size_t)(S + 1) * V * sizeof(float));

	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		const uint32_t L = lens[li], full = L / B, nb = (L + S + B - 1) / B;
		struct dtable a;

		ct_dtable_take(&a, p, 0, nb, 100 + L);
		run_greedy(e, a.blocks, nb, tok, L, 0, 0, S, tc, lc);
		for (uint32_t s = 0; s <= S; s++) {
			double gap = top2_gap_rel(lc + (size_t)s * V, V);
			min_gap = gap < min_gap ? gap : min_gap;
			cr_assert_geq(gap, 2 * TOL_CACHE, "test design: L=%u cold step %u wins by "
				      "only %.3g of max |logit|; pick another CACHE_PROMPT_SEED", L,
				      s, gap);
		}
		/* The shared blocks get the lowest bit of every f16 flipped (2^-11 of each
		 * value: far under TOL_CACHE in the logits). An engine that rewrote a cached
		 * position would put back the unflipped value, which the byte comparison
		 * after each run sees even where it recomputed the very same K/V. */
		unsigned char *snap = ct_xmalloc(full ? (size_t)full * bb : 1), *now = ct_xmalloc(bb);
		for (uint32_t i = 0; i < full; i++) {
			unsigned char *sb = snap + (size_t)i * bb;
			ct_dtable_read(&a, i, sb);
			for (size_t h = 0; h < bb; h += 2)
				sb[h] ^= 1;   /* little-endian: the f16's lowest mantissa bit */
			cr_assert_eq(kvp_pool_block_write(p, a.ids[i], sb), 0);
		}

		const uint32_t ms[4] = { 0, full / 2, full, full / 2 };
		for (int ci = 0; ci < 4; ci++) {
			const uint32_t mm = ms[ci];
			struct dtable b;

			if (ci == 3 && mm == 0)
				continue;
			b = a;   /* the first mm blocks shared, fresh ones after */
			ct_dtable_take(&b, p, mm, nb, 200 + L * 3 + (uint64_t)ci);
			uint32_t pos0 = mm * B, wf = mm * B;
			if (pos0 == L)
				pos0 = L - 1;
			if (ci == 3)
				pos0 = mm * B - (mm * B < 5 ? mm * B : 5);
			run_greedy(e, b.blocks, nb, tok, L, pos0, wf, S, tw, lw);
			for (uint32_t i = 0; i < full; i++) {
				ct_dtable_read(&a, i, now);
				cr_assert(memcmp(snap + (size_t)i * bb, now, bb) == 0,
					  "L=%u, %u of %u blocks cached (pos0 %u, kv_write_from %u): "
					  "the shared block %u was written", L, mm, full, pos0, wf, i);
			}
			for (uint32_t s = 0; s <= S; s++) {
				const float *c = lc + (size_t)s * V, *w = lw + (size_t)s * V;
				size_t at;
				double d = ct_max_rel_diff(w, c, V, ct_max_abs(c, V), &at);
				worst = d > worst ? d : worst;
				cr_assert_eq(tw[s], tc[s], "L=%u, %u of %u full blocks cached (pos0 %u):"
					     " greedy step %u picks %u, cold %u", L, mm, full, pos0, s,
					     tw[s], tc[s]);
				cr_assert_leq(d, TOL_CACHE, "L=%u, %u of %u full blocks cached (pos0 "
					      "%u): step %u logit %zu %.6g vs cold %.6g (%.3g of max)",
					      L, mm, full, pos0, s, at, w[at], c[at], d);
			}
			ct_dtable_put(&b, mm);
		}
		free(snap);
		free(now);
		ct_dtable_put(&a, 0);
	}
	cr_assert_eq(kvp_pool_check(p), 0);
	fprintf(stderr, "test_cuda: cache on CUDA: logits across 0/50/100%% cached within %.3g "
		"of max |logit| (tol %g); smallest top-2 gap %.3g\n", worst, TOL_CACHE, min_gap);
	free(lc);
	free(lw);
	kvp_pool_destroy(p);
	kvp_engine_destroy(e);
	kvp_model_free(m);
}
