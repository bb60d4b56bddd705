/*
 * bench_engine_inproc.c - kvprefix-bench engine (a): the engine in process, through
 * kvp_engine_forward over blocks of our own. On the CPU: cold prefill at 512 and
 * 2,048 tokens, decode, a 50-token suffix after 2,000 cached positions, and the
 * 512-token prefill's GFLOP/s against the peak FMA rate of the engine's threads. On
 * CUDA: KV f16 in device blocks from a pool, cold prefill at 512, 2,048 and 8,192
 * tokens against the device's f16 tensor-core peak, decode, and the TTFT of an
 * 8,192-token prompt with 90 % of it cached vs cold.
 *
 * Two sets of blocks: prefill runs alternate between them so that each writes KV the
 * previous one did not (not in the caches, as for a cold request).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_engine.h"
#include "kvp_model.h"
#include "kvp_store.h"
#include "util.h"

const uint32_t cuda_prefill_sizes[CUDA_N_SIZES] = { 512, 2048, 8192 };

struct eng_ctx {
	struct kvp_engine *e;
	uint8_t *arena;          /* host blocks (CPU); NULL on CUDA */
	void **blocks;           /* 2 sets of nb_set pointers */
	uint32_t nb_set;
	float *logits;
	void *scratch;
	uint32_t *tokens;        /* room for the longest prompt */
	uint32_t vocab;
};

/* FLOPs of a cold prefill of n tokens (positions 0..n-1) with the last row's logits. */
static double prefill_flops(const struct kvp_model_config *mc, uint32_t n)
{
	double q_dim = (double)mc->n_heads * mc->head_dim;
	double kv_dim = (double)mc->n_kv_heads * mc->head_dim;
	double d = mc->dim, f = mc->ffn, m = n;
	double per_layer = 2 * m * q_dim * d            /* q */
			 + 2 * 2 * m * kv_dim * d       /* k, v */
			 + 2 * m * d * q_dim            /* o */
			 + 2 * 2 * m * f * d            /* gate, up */
			 + 2 * m * d * f;               /* down */
	double pairs = m * (m + 1) / 2;                 /* causal (query, key) pairs */
	double attn = 2.0 * 2.0 * mc->head_dim * mc->n_heads * pairs;   /* QK^T and PV */

	return mc->n_layers * (per_layer + attn) + 2.0 * mc->vocab * d;
}

/* The block pointer array (2 sets of nb_set), logits, sampler scratch and room for
 * max_tokens tokens; the vocabulary from m. 0, or -1 (nothing printed). */
static int eng_ctx_alloc(struct eng_ctx *x, const struct kvp_model *m, uint32_t block,
			 uint32_t max_tokens)
{
	x->vocab = m->cfg.vocab;
	x->nb_set = (max_tokens + block - 1) / block;
	x->blocks = malloc(2 * (size_t)x->nb_set * sizeof(*x->blocks));
	x->logits = aligned_alloc(64, ((size_t)x->vocab * sizeof(float) + 63) / 64 * 64);
	x->scratch = malloc(kvp_sampler_scratch_bytes(x->vocab));
	x->tokens = malloc(max_tokens * sizeof(*x->tokens));
	return x->blocks && x->logits && x->scratch && x->tokens ? 0 : -1;
}

static void eng_ctx_free(struct eng_ctx *x)
{
	free(x->tokens);
	free(x->scratch);
	free(x->logits);
	free(x->blocks);
	free(x->arena);
	kvp_engine_destroy(x->e);
}

/*
 * Prefill n tokens cold (write_from 0) runs times after warm warm-up runs, alternating
 * between the two block sets; rates[] gets n / seconds of each timed run. With peaks
 * non-NULL, the peak FMA GFLOP/s of the engine's threads is measured just before and
 * just after each timed run and the higher kept, so that a run and its peak see the
 * same machine (on a shared VM the throughput a core gives moves by 2x from minute to
 * minute) and a neighbour's burst during one peak measurement cannot flatter the run.
 */
static int eng_prefill(struct eng_ctx *x, uint32_t n, int warm, int runs, double *rates,
		       double *peaks, uint64_t seed)
{
	for (int r = -warm; r < runs; r++) {
		void *const *set = x->blocks + (size_t)((r + warm) & 1) * x->nb_set;
		uint64_t a, b;
		int rc;

		if (peaks && r >= 0)
			peaks[r] = kvp_engine_peak_gflops(x->e);
		bench_rand_tokens(x->tokens, n, seed + (uint64_t)(r + warm), x->vocab);
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens, n, 0, 0, x->logits);
		b = kvp_tool_now_ns();
		if (rc < 0) {
			fprintf(stderr, PROG " engine: forward of %u tokens: %s\n", n,
				kvp_strerror(rc));
			return rc;
		}
		bench_sink += (uint64_t)x->logits[0];
		if (r >= 0)
			rates[r] = (double)n / ((double)(b - a) / 1e9);
		if (peaks && r >= 0) {
			double after = kvp_engine_peak_gflops(x->e);

			fprintf(stderr, "engine: prefill %u tokens: %.3f s (peak FMA before %.1f, "
				"after %.1f GFLOP/s)\n", n, (double)(b - a) / 1e9, peaks[r], after);
			if (after > peaks[r])
				peaks[r] = after;
		}
		else
			fprintf(stderr, "engine: prefill %u tokens%s: %.3f s\n", n,
				r < 0 ? " (warm-up)" : "", (double)(b - a) / 1e9);
	}
	return 0;
}

/* Prefill a prompt (untimed), then time steps greedy decode steps. */
static int eng_decode(struct eng_ctx *x, uint32_t prompt, uint32_t steps, double *rate,
		      uint64_t seed)
{
	struct kvp_sampler s;
	uint64_t a, b;
	uint32_t tok;
	int rc;

	kvp_sampler_init(&s, 0, 0, 1, 0);
	bench_rand_tokens(x->tokens, prompt, seed, x->vocab);
	rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens, prompt, 0, 0, x->logits);
	if (rc < 0)
		goto fail;
	a = kvp_tool_now_ns();
	for (uint32_t i = 0; i < steps; i++) {
		uint32_t pos = prompt + i;

		tok = kvp_sample(&s, x->logits, x->vocab, x->scratch);
		rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, &tok, 1, pos, pos, x->logits);
		if (rc < 0)
			goto fail;
	}
	b = kvp_tool_now_ns();
	*rate = (double)steps / ((double)(b - a) / 1e9);
	fprintf(stderr, "engine: decode %u steps after %u tokens: %.3f s (%.1f tokens/s)\n",
		steps, prompt, (double)(b - a) / 1e9, *rate);
	return 0;
fail:
	fprintf(stderr, PROG " engine: decode forward: %s\n", kvp_strerror(rc));
	return rc;
}

/* runs decodes of steps tokens after prompt tokens; best and median tokens/s. */
static int eng_decode_runs(struct eng_ctx *x, int runs, uint32_t prompt, uint32_t steps,
			   double *best, double *med)
{
	double rdec[8];

	for (int i = 0; i < runs; i++)
		if (eng_decode(x, prompt, steps, &rdec[i], 300 + (uint64_t)i) < 0)
			return -1;
	*best = bench_best(rdec, (size_t)runs);
	*med = bench_median(rdec, (size_t)runs);
	return 0;
}

/* What (b) asks of the daemon, in process: the 50-token suffix after 2,000 positions
 * already in the blocks (write_from 2000), against all 2,050 tokens cold. */
static int eng_suffix(struct eng_ctx *x, int runs, double *suffix_ms, double *cold_ms)
{
	const uint32_t pre = TTFT_PREFIX, n = TTFT_PREFIX + TTFT_SUFFIX;
	double t[8];
	uint64_t a;
	int rc;

	bench_rand_tokens(x->tokens, n, 400, x->vocab);
	a = kvp_tool_now_ns();
	rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens, n, 0, 0, x->logits);
	*cold_ms = (double)(kvp_tool_now_ns() - a) / 1e6;
	for (int r = -1; r < runs && rc == 0; r++) {
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, x->blocks, x->nb_set, x->tokens + pre, n - pre, pre,
					pre, x->logits);
		if (r >= 0)
			t[r] = (double)(kvp_tool_now_ns() - a) / 1e6;
	}
	if (rc < 0) {
		fprintf(stderr, PROG " engine: forward of the suffix: %s\n", kvp_strerror(rc));
		return rc;
	}
	*suffix_ms = bench_median(t, (size_t)runs);
	fprintf(stderr, "engine: %u tokens cold %.1f ms; its last %u after %u cached %.1f ms "
		"(median of %d)\n", n, *cold_ms, n - pre, pre, *suffix_ms, runs);
	return 0;
}

/* Load the bench's model and describe it in res; NULL (reported) when it cannot be
 * loaded or its context is shorter than need_ctx positions (hint ends that message). */
static struct kvp_model *bench_load_model(const char *path, uint32_t need_ctx, const char *hint,
					  struct eng_inproc *res)
{
	struct kvp_model *m = NULL;
	char err[512];

	fprintf(stderr, "engine: loading %s\n", path);
	if (kvp_model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " engine: %s: %s\n", path, err);
		return NULL;
	}
	snprintf(res->name, sizeof(res->name), "%s", m->cfg.name);
	res->n_params = m->cfg.n_params;
	res->vocab = m->cfg.vocab;
	res->dim = m->cfg.dim;
	res->n_layers = m->cfg.n_layers;
	res->n_heads = m->cfg.n_heads;
	res->n_kv_heads = m->cfg.n_kv_heads;
	res->head_dim = m->cfg.head_dim;
	res->ffn = m->cfg.ffn;
	if (m->cfg.ctx < need_ctx) {
		fprintf(stderr, PROG " engine: %s has a context of %u tokens; the bench needs %u%s\n",
			path, m->cfg.ctx, need_ctx, hint);
		kvp_model_free(m);
		return NULL;
	}
	return m;
}

/* ---- on the CPU ------------------------------------------------------------------ */

/* Two sets of host blocks of bb bytes each (rounded up to 64), touched once. */
static int cpu_host_blocks(struct eng_ctx *x, const struct kvp_model *m, uint32_t block,
			   uint32_t max_tokens)
{
	size_t bb = (kvp_engine_block_bytes(x->e) + 63) / 64 * 64;
	uint32_t nb_set = (max_tokens + block - 1) / block;

	x->arena = aligned_alloc(64, 2 * (size_t)nb_set * bb);
	if (!x->arena || eng_ctx_alloc(x, m, block, max_tokens) < 0) {
		fprintf(stderr, PROG " engine: out of memory for %u KV blocks of %zu bytes\n",
			2 * nb_set, bb);
		return -1;
	}
	memset(x->arena, 0, 2 * (size_t)x->nb_set * bb);
	for (size_t i = 0; i < 2 * (size_t)x->nb_set; i++)
		x->blocks[i] = x->arena + i * bb;
	return 0;
}

/* The 512-token runs against their peaks, and the rates' best and median. */
static void cpu_summarize(struct eng_inproc *res, const double *r512, double *p512,
			  const double *r2048)
{
	const size_t n512 = (size_t)res->prefill_runs_512;
	double f512[8], r[8];

	for (size_t i = 0; i < n512; i++)
		f512[i] = res->flops_512 / (512.0 / r512[i]) / 1e9 / p512[i];
	res->frac_best = bench_best(f512, n512);
	res->frac_med = bench_median(f512, n512);
	res->peak_gflops = bench_median(p512, n512);
	memcpy(r, r512, n512 * sizeof(*r));
	res->pf512_best = bench_best(r, n512);
	res->pf512_med = bench_median(r, n512);
	memcpy(r, r2048, (size_t)res->prefill_runs_2048 * sizeof(*r));
	res->pf2048_best = bench_best(r, (size_t)res->prefill_runs_2048);
	res->pf2048_med = bench_median(r, (size_t)res->prefill_runs_2048);
	res->gflops_best = res->flops_512 / (512.0 / res->pf512_best) / 1e9;
	res->gflops_med = res->flops_512 / (512.0 / res->pf512_med) / 1e9;
}

/* The runs of (a) on the CPU, in the order they were always made. */
static int cpu_runs(struct eng_ctx *x, const struct kvp_model *m, bool quick,
		    struct eng_inproc *res)
{
	double r512[8], p512[8], r2048[8], best_short;

	res->prefill_runs_512 = quick ? 2 : 5;
	res->prefill_runs_2048 = quick ? 1 : 3;
	res->decode_runs = quick ? 1 : 3;
	res->decode_prompt = 512;
	res->decode_steps = 128;
	if (eng_prefill(x, 512, 1, res->prefill_runs_512, r512, p512, 100) < 0 ||
	    eng_prefill(x, 2048, quick ? 0 : 1, res->prefill_runs_2048, r2048, NULL, 200) < 0 ||
	    eng_decode_runs(x, res->decode_runs, res->decode_prompt, res->decode_steps,
			    &res->dec_best, &res->dec_med) < 0 ||
	    eng_decode_runs(x, res->decode_runs, DECODE_SHORT, res->decode_steps, &best_short,
			    &res->dec_short_med) < 0 ||
	    eng_suffix(x, quick ? 3 : 5, &res->suffix_ms_med, &res->cold2050_ms) < 0)
		return -1;
	res->flops_512 = prefill_flops(&m->cfg, 512);
	cpu_summarize(res, r512, p512, r2048);
	return 0;
}

int bench_engine_cpu(const char *model_path, int threads, enum kvp_kv_dtype dtype,
		     uint32_t block, uint32_t max_batch, bool quick, struct eng_inproc *res)
{
	const uint32_t max_tokens = TTFT_PREFIX + TTFT_SUFFIX;   /* >= 2048 */
	struct kvp_engine_config ec = {
		.threads = threads, .kv_dtype = dtype, .block_tokens = block,
		.max_batch = max_batch,
	};
	struct kvp_model *m = NULL;
	struct eng_ctx x = { 0 };
	int rc, ret = -1;

	memset(res, 0, sizeof(*res));
	m = bench_load_model(model_path, max_tokens + 1, "", res);
	if (!m)
		return -1;
	rc = kvp_engine_create(m, &ec, &x.e);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: kvp_engine_create: %s\n", kvp_strerror(rc));
		goto out;
	}
	res->isa = kvp_engine_kernels(x.e);
	res->block_bytes = kvp_engine_block_bytes(x.e);
	res->rss_load_mb = bench_rss_mb("VmRSS");
	if (cpu_host_blocks(&x, m, block, max_tokens) == 0 && cpu_runs(&x, m, quick, res) == 0)
		ret = 0;
	res->rss_end_mb = bench_rss_mb("VmRSS");
out:
	eng_ctx_free(&x);
	kvp_model_free(m);
	return ret;
}

/* ---- on CUDA --------------------------------------------------------------------- */

/*
 * TTFT in process: CUDA_TTFT_PROMPT tokens cold (write_from 0), then the same prompt
 * with its first CUDA_TTFT_CACHED_PCT % (whole blocks) already in the blocks (the cold
 * run just wrote them): only the rest is computed, its last row gives the logits. Each
 * call is timed to the logits in host memory. One untimed pair first; the prompt
 * changes every repetition. The two logit vectors must agree (invariant 5): their
 * largest difference is reported.
 */
static int eng_cuda_ttft(struct eng_ctx *x, uint32_t block, struct eng_cuda *res)
{
	const uint32_t n = CUDA_TTFT_PROMPT;
	const uint32_t pre = n * CUDA_TTFT_CACHED_PCT / 100 / block * block;
	double cold[8], cached[8], ratio[8];
	float *ref = malloc((size_t)x->vocab * sizeof(float));
	int rc = 0;

	if (!ref) {
		fprintf(stderr, PROG " engine: out of memory\n");
		return -1;
	}
	res->ttft_prompt = n;
	res->ttft_cached = pre;
	res->ttft_logit_diff = 0;
	for (int r = -1; r < res->ttft_reps && rc == 0; r++) {
		void *const *set = x->blocks + (size_t)((r + 1) & 1) * x->nb_set;
		uint64_t a, b, c;
		double mx = 0, md = 0;

		bench_rand_tokens(x->tokens, n, 0x8000 + (uint64_t)(r + 1), x->vocab);
		a = kvp_tool_now_ns();
		rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens, n, 0, 0, ref);
		b = kvp_tool_now_ns();
		if (rc == 0)
			rc = kvp_engine_forward(x->e, set, x->nb_set, x->tokens + pre, n - pre, pre,
						pre, x->logits);
		c = kvp_tool_now_ns();
		if (rc < 0)
			break;
		for (uint32_t i = 0; i < x->vocab; i++) {
			mx = fmax(mx, fabs((double)ref[i]));
			md = fmax(md, fabs((double)ref[i] - (double)x->logits[i]));
		}
		if (mx > 0 && md / mx > res->ttft_logit_diff)
			res->ttft_logit_diff = md / mx;
		fprintf(stderr, "engine: TTFT %u tokens%s: cold %.1f ms, %u cached %.1f ms\n", n,
			r < 0 ? " (warm-up)" : "", (double)(b - a) / 1e6, pre, (double)(c - b) / 1e6);
		if (r >= 0) {
			cold[r] = (double)(b - a) / 1e6;
			cached[r] = (double)(c - b) / 1e6;
			ratio[r] = cold[r] / cached[r];
		}
	}
	free(ref);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: TTFT forward: %s\n", kvp_strerror(rc));
		return rc;
	}
	res->ttft_cold_ms = bench_median(cold, (size_t)res->ttft_reps);
	res->ttft_cached_ms = bench_median(cached, (size_t)res->ttft_reps);
	res->ttft_ratio = bench_median(ratio, (size_t)res->ttft_reps);
	return 0;
}

/* CUDA device 0 into res->dev, described on stderr. 0, or -1 (message printed). */
static int cuda_open_device(struct eng_cuda *res)
{
	char err[512] = "", why[256] = "";

	if (kvp_device_count(why, sizeof(why)) <= 0) {
		fprintf(stderr, PROG " engine: --backend cuda: no CUDA device: %s\n", why);
		return -1;
	}
	if (kvp_device_open(0, &res->dev, err, sizeof(err)) < 0) {
		fprintf(stderr, PROG " engine: --backend cuda: device 0: %s\n", err);
		return -1;
	}
	fprintf(stderr, "engine: CUDA device 0: %s (sm_%d%d, %d SMs, %.1f GiB, f16 tensor peak "
		"%.1f TFLOP/s)\n", res->dev.name, res->dev.sm_major, res->dev.sm_minor,
		res->dev.sm_count, (double)res->dev.mem_total / 1073741824.0, res->dev.f16_tflops);
	return 0;
}

/* The blocks: device memory from a pool, as kvprefixd --backend cuda keeps them. */
static int cuda_device_blocks(struct eng_ctx *x, size_t bb, struct kvp_pool **pool)
{
	int rc = kvp_pool_create(2 * x->nb_set, pool);

	if (rc == 0)
		rc = kvp_pool_attach_device(*pool, bb);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: %u KV blocks of %zu bytes on the device: %s (%s)\n",
			2 * x->nb_set, bb, kvp_strerror(rc), kvp_device_last_error());
		return -1;
	}
	for (uint32_t i = 0; i < 2 * x->nb_set; i++) {
		uint32_t id;

		if (kvp_pool_alloc(*pool, &id) < 0) {
			fprintf(stderr, PROG " engine: pool: no free block\n");
			return -1;
		}
		x->blocks[i] = kvp_pool_block_data(*pool, id);
	}
	return 0;
}

/* Cold prefill at every size of cuda_prefill_sizes, against the device's peak. */
static int cuda_prefill(struct eng_ctx *x, const struct kvp_model *m, bool quick,
			struct eng_cuda *res)
{
	double rates[8], f[8];

	for (int si = 0; si < CUDA_N_SIZES; si++) {
		const uint32_t n = cuda_prefill_sizes[si];

		res->runs[si] = quick ? (si == 0 ? 2 : 1) : (si == 0 ? 5 : 3);
		if (eng_prefill(x, n, 1, res->runs[si], rates, NULL, 100 + 100 * (uint64_t)si) < 0)
			return -1;
		res->flops[si] = prefill_flops(&m->cfg, n);
		for (int r = 0; r < res->runs[si]; r++)
			f[r] = res->flops[si] / ((double)n / rates[r]) / 1e12;
		res->pf_best[si] = bench_best(rates, (size_t)res->runs[si]);
		res->pf_med[si] = bench_median(rates, (size_t)res->runs[si]);
		res->tflops_best[si] = bench_best(f, (size_t)res->runs[si]);
		res->tflops_med[si] = bench_median(f, (size_t)res->runs[si]);
		if (res->dev.f16_tflops > 0) {
			res->frac_best[si] = res->tflops_best[si] / res->dev.f16_tflops;
			res->frac_med[si] = res->tflops_med[si] / res->dev.f16_tflops;
		}
	}
	return 0;
}

/* The runs of (a) on CUDA: prefill, decode, TTFT. */
static int cuda_runs(struct eng_ctx *x, const struct kvp_model *m, uint32_t block, bool quick,
		     struct eng_cuda *res)
{
	if (cuda_prefill(x, m, quick, res) < 0)
		return -1;
	res->decode_runs = quick ? 1 : 3;
	res->decode_prompt = 512;
	res->decode_steps = 128;
	if (eng_decode_runs(x, res->decode_runs, res->decode_prompt, res->decode_steps,
			    &res->dec_best, &res->dec_med) < 0)
		return -1;
	res->ttft_reps = quick ? 3 : 5;
	return eng_cuda_ttft(x, block, res) < 0 ? -1 : 0;
}

/*
 * (a) with --backend cuda: the engine on CUDA device 0, KV f16 in device blocks (a pool
 * attached with kvp_pool_attach_device, two sets as on the CPU so that each prefill
 * writes blocks the previous one did not), prefill at cuda_prefill_sizes, decode,
 * TTFT cold vs 90 % cached. Fills a's model fields as bench_engine_cpu does.
 */
int bench_engine_cuda(const char *model_path, uint32_t block, uint32_t max_batch,
		      bool quick, struct eng_inproc *a, struct eng_cuda *res)
{
	const uint32_t max_tokens = cuda_prefill_sizes[CUDA_N_SIZES - 1] > CUDA_TTFT_PROMPT
					    ? cuda_prefill_sizes[CUDA_N_SIZES - 1]
					    : CUDA_TTFT_PROMPT;
	char err[512] = "";
	struct kvp_engine_config ec = {
		.backend = KVP_BACKEND_CUDA, .device = 0, .err = err, .errlen = sizeof(err),
		.threads = 1, .kv_dtype = KVP_KV_F16, .block_tokens = block,
		.max_batch = max_batch,
	};
	struct kvp_model *m = NULL;
	struct kvp_pool *pool = NULL;
	struct eng_ctx x = { 0 };
	int rc, ret = -1;

	memset(a, 0, sizeof(*a));
	memset(res, 0, sizeof(*res));
	res->max_batch = max_batch;
	if (cuda_open_device(res) < 0)
		return -1;
	m = bench_load_model(model_path, max_tokens + 1, " (kvprefix-mkmodel --ctx)", a);
	if (!m)
		return -1;
	a->isa = "cuda";
	rc = kvp_engine_create(m, &ec, &x.e);
	if (rc < 0) {
		fprintf(stderr, PROG " engine: kvp_engine_create (cuda): %s%s%s\n", kvp_strerror(rc),
			err[0] ? ": " : "", err);
		goto out;
	}
	a->block_bytes = kvp_engine_block_bytes(x.e);
	if (eng_ctx_alloc(&x, m, block, max_tokens) < 0) {
		fprintf(stderr, PROG " engine: out of memory\n");
		goto out;
	}
	if (cuda_device_blocks(&x, a->block_bytes, &pool) == 0 &&
	    cuda_runs(&x, m, block, quick, res) == 0)
		ret = 0;
out:
	eng_ctx_free(&x);
	kvp_pool_destroy(pool);
	kvp_model_free(m);
	return ret;
}
