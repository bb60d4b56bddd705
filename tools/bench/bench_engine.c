/*
 * bench_engine.c - kvprefix-bench engine: the transformer engine and what the prefix
 * cache saves. Runs (a) in process (bench_engine_inproc.c), then (b) and (c) through a
 * kvprefixd with the same model and backend (bench_engine_daemon.c; this command
 * starts one unless --socket is given), and prints a table and one JSON line. Without
 * --model it makes a random model with kvprefix-mkmodel in a temporary directory.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_engine.h"
#include "kvp_index.h"
#include "util.h"

struct engine_opts {
	const char *model, *sock;
	const char *types;       /* --types */
	const char *weights;     /* --dtype: the default model's weight type */
	uint32_t levels[CONC_MAX_LEVELS];   /* --concurrency */
	uint32_t n_levels;
	uint64_t threads, block, pool_mb, max_batch, busy;
	enum kvp_kv_dtype dtype;
	enum kvp_backend backend;
	bool quick;
};

/* Every figure of a run. */
struct engine_figures {
	struct eng_inproc a;
	struct eng_cuda cu;      /* --backend cuda */
	struct eng_ttft b;
	struct eng_work w;
	bool peak_met, ttft_met;
};

static void usage_engine(FILE *f)
{
	fprintf(f,
		"Usage: kvprefix-bench engine [--backend cpu|cuda] [--model FILE] [--threads N]\n"
		"                             [--kv-dtype f32|f16] [--block-tokens N]\n"
		"                             [--max-batch N] [--socket PATH] [--pool-mb MB]\n"
		"                             [--quick]\n"
		"       kvprefix-bench engine --types LIST [--threads N] [--kv-dtype T] [--busy N]\n"
		"                             [--quick]\n"
		"       kvprefix-bench engine --concurrency LIST [--dtype T | --model FILE]\n"
		"                             [--socket PATH] [--threads N] [--quick]\n"
		"Measure the transformer engine and what the prefix cache saves:\n"
		"  (a) in process (kvp_engine_forward over host blocks): cold prefill tokens/s\n"
		"      at 512 and 2,048 tokens, decode tokens/s (128 steps after 512 tokens),\n"
		"      and the GFLOP/s of the 512-token prefill against this machine's peak FMA\n"
		"      GFLOP/s on the engine's threads, measured around each run (target:\n"
		"      median >= %.0f%% at f32, 2 threads);\n"
		"  (b) through kvprefixd: TTFT of a %u-token prompt whose first %u tokens are\n"
		"      cached vs the same-length prompt cold, back to back (target: median\n"
		"      cold/cached >= %.0fx);\n"
		"  (c) %u distinct %u-token prefixes, %u requests interleaved (request i: prefix\n"
		"      i %% %u + a unique 10-50-token suffix, %u greedy tokens): token hit rate,\n"
		"      whether every request after the first of its prefix hit, and the mean\n"
		"      and p99 TTFT of hits and misses.\n"
		"With --backend cuda, (a) runs the engine on CUDA device 0 with KV f16 in device\n"
		"blocks (kvp_pool_attach_device) instead: cold prefill tokens/s at 512, 2,048 and\n"
		"8,192 tokens and the TFLOP/s each achieves against the device's f16 tensor-core\n"
		"peak (kvp_device_info.f16_tflops; target: median >= %.0f%% at 8,192 tokens),\n"
		"decode tokens/s (128 steps after 512 tokens), and the TTFT of an 8,192-token\n"
		"prompt with %u%% of it cached vs cold; the CPU's peak FMA measurement is not\n"
		"made. FLOPs are counted as 2 per weight of the layer matrices per token, 4 x\n"
		"head_dim per head per causal (query, key) pair for attention, and the output\n"
		"head once (the last row). (b) and (c) start kvprefixd with --backend cuda.\n"
		"\n"
		"  -B, --backend B         cpu (default) or cuda: the engine in process and in\n"
		"                          the daemon this command starts (--backend cuda needs\n"
		"                          a CUDA build and device; KV is f16 on it)\n"
		"  -m, --model FILE        GGUF model (default: make a random model with\n"
		"                          kvprefix-mkmodel in a temporary directory: for cpu the\n"
		"                          default one, f32; for cuda a ~1.2B one, f16, dim 2048,\n"
		"                          16 layers, 32 heads (8 kv), ffn 8192, context 16384)\n"
		"  -t, --threads N         compute threads, in process and in the daemon\n"
		"                          (default: all online CPUs, here %d)\n"
		"  -k, --kv-dtype T        f32 (default) or f16; cuda: f16 only (its default)\n"
		"  -b, --block-tokens N    tokens a block (default 16)\n"
		"      --max-batch N       rows one internal step computes in process (default\n"
		"                          %u, as kvprefixd uses)\n"
		"  -s, --socket PATH       use this running kvprefixd (engine mode) for (b) and\n"
		"                          (c) instead of starting one with the model; it must\n"
		"                          serve the same model, and its own options apply\n"
		"      --pool-mb MB        KV pool of the daemon this command starts (default\n"
		"                          1024; with --backend cuda 4096, on the GPU)\n"
		"      --types LIST        instead of (a) to (c): (a) on the default model in each\n"
		"                          weight type of LIST (kvprefix-mkmodel --dtype values:\n"
		"                          f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,q2_k,q3_k,q4_k,\n"
		"                          q5_k,q6_k,q4_k_m), each in a process of its own: prefill\n"
		"                          and decode tokens/s, RSS, and decode's bytes per second\n"
		"                          against this machine's read bandwidth measured in the\n"
		"                          same process (target: >= 70%% for f16 and q8_0, 2\n"
		"                          threads)\n"
		"      --busy N            with --types: N processes spinning on the CPU beside\n"
		"                          the engine's runs (not the read bandwidth's), as on a\n"
		"                          machine that serves other work too (default 0)\n"
		"      --concurrency LIST  instead of (a) to (c), through kvprefixd: for each client\n"
		"                          count C of LIST (e.g. 1,2,4,8,16), C clients at once,\n"
		"                          each on its own connection one greedy generation of\n"
		"                          %u tokens after a fresh %u-token prompt: aggregate\n"
		"                          decode tokens/s while all C decode, TTFT and\n"
		"                          inter-token latency p50/p99 (target: 8 clients >= %.0fx\n"
		"                          the decode of 1, inter-token p99 <= %.0fx of 1's); then\n"
		"                          a mixed chat (%u users over %u system prompts arriving\n"
		"                          at random, %u turns each): throughput, hit rate, TTFT;\n"
		"                          with the model file at hand, each level's decode in\n"
		"                          process too (the engine alone)\n"
		"      --dtype T           weight type of the default model (kvprefix-mkmodel\n"
		"                          --dtype: f32, f16, q8_0, q4_k_m, ...; default f32)\n"
		"  -q, --quick             a smoke run: fewer repetitions, %u requests in (c)\n"
		"  -h, --help              show this help\n"
		"\n"
		"Progress goes to stderr; stdout gets a table, then one JSON line with every\n"
		"figure. With the default model on 2 cores the full run takes about 30 s\n"
		"(longer on a slower machine; under 3 minutes), --quick about 12 s. The default\n"
		"model of --backend cuda takes ~2.4 GB in the temporary directory and ~20 s to\n"
		"write.\n",
		TARGET_PEAK_FRACTION * 100, TTFT_PREFIX + TTFT_SUFFIX, TTFT_PREFIX,
		TARGET_TTFT_RATIO, WORK_PREFIXES, TTFT_PREFIX, WORK_REQUESTS, WORK_PREFIXES,
		WORK_MAX_NEW, TARGET_GPU_FRACTION * 100, CUDA_TTFT_CACHED_PCT, bench_online_cpus(),
		ENGINE_MAX_BATCH, CONC_MAX_NEW, CONC_PROMPT, TARGET_CONC_SPEEDUP, TARGET_CONC_ITL,
		CHAT_USERS, CHAT_SYSTEMS, CHAT_TURNS,
		WORK_REQUESTS_QUICK);
}

/* --backend cuda: KV f16 only, and a larger default pool. */
static int check_engine_cuda(struct engine_opts *o, bool dtype_given, bool pool_given)
{
	if (dtype_given && o->dtype != KVP_KV_F16) {
		fprintf(stderr, PROG " engine: --backend cuda keeps KV in f16; "
			"--kv-dtype f32 is for the CPU\n");
		return KVP_EXIT_USAGE;
	}
	o->dtype = KVP_KV_F16;
	/* the default cuda model's blocks are twice the CPU one's: (c)'s prefixes fit */
	if (!pool_given)
		o->pool_mb = 4096;
	return BENCH_RUN;
}

/* --concurrency "1,2,4,8": client counts, each 1..CONC_MAX_LEVEL. */
static bool parse_levels(const char *arg, struct engine_opts *o)
{
	const char *p = arg;

	o->n_levels = 0;
	while (*p) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);

		if (end == p || v < 1 || v > CONC_MAX_LEVEL || (*end && *end != ',') ||
		    o->n_levels == CONC_MAX_LEVELS) {
			bench_usage_error("engine", "--concurrency '%s': want up to %d client counts "
					  "in 1..%d, comma-separated", arg, CONC_MAX_LEVELS,
					  CONC_MAX_LEVEL);
			return false;
		}
		o->levels[o->n_levels++] = (uint32_t)v;
		p = *end ? end + 1 : end;
	}
	if (o->n_levels == 0)
		bench_usage_error("engine", "--concurrency: an empty list");
	return o->n_levels > 0;
}

static int parse_engine(int argc, char **argv, struct engine_opts *o)
{
	enum { O_POOL = 256, O_MAX_BATCH, O_TYPES, O_CONC, O_DTYPE, O_BUSY };
	static const struct option opts[] = {
		{ "backend", required_argument, NULL, 'B' },
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "kv-dtype", required_argument, NULL, 'k' },
		{ "block-tokens", required_argument, NULL, 'b' },
		{ "socket", required_argument, NULL, 's' },
		{ "pool-mb", required_argument, NULL, O_POOL },
		{ "max-batch", required_argument, NULL, O_MAX_BATCH },
		{ "types", required_argument, NULL, O_TYPES },
		{ "busy", required_argument, NULL, O_BUSY },
		{ "concurrency", required_argument, NULL, O_CONC },
		{ "dtype", required_argument, NULL, O_DTYPE },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool dtype_given = false, pool_given = false;
	int opt, choice;

	*o = (struct engine_opts){
		.threads = (uint64_t)bench_online_cpus(), .block = 16, .pool_mb = 1024,
		.max_batch = ENGINE_MAX_BATCH, .dtype = KVP_KV_F32, .backend = KVP_BACKEND_CPU,
	};
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":B:m:t:k:b:s:qh", opts, NULL)) != -1) {
		bool ok = true;

		switch (opt) {
		case 'm': o->model = optarg; break;
		case O_TYPES: o->types = optarg; break;
		case O_DTYPE: o->weights = optarg; break;
		case O_CONC: ok = parse_levels(optarg, o); break;
		case O_BUSY: ok = bench_parse_u64("engine", "--busy", optarg, 0, 64, &o->busy); break;
		case 's': o->sock = optarg; break;
		case 'q': o->quick = true; break;
		case 'B':
			choice = bench_parse_choice("engine", "--backend", optarg, "cpu", "cuda");
			o->backend = choice == 1 ? KVP_BACKEND_CUDA : KVP_BACKEND_CPU;
			ok = choice >= 0;
			break;
		case 'k':
			dtype_given = true;
			choice = bench_parse_choice("engine", "--kv-dtype", optarg, "f32", "f16");
			o->dtype = choice == 1 ? KVP_KV_F16 : KVP_KV_F32;
			ok = choice >= 0;
			break;
		case 't':
			ok = bench_parse_u64("engine", "--threads", optarg, 1, 1024, &o->threads);
			break;
		case 'b':
			ok = bench_parse_u64("engine", "--block-tokens", optarg, 1,
					     KVP_BLOCK_TOKENS_MAX, &o->block);
			break;
		case O_MAX_BATCH:
			ok = bench_parse_u64("engine", "--max-batch", optarg, 1, 1u << 16,
					     &o->max_batch);
			break;
		case O_POOL:
			pool_given = true;
			ok = bench_parse_u64("engine", "--pool-mb", optarg, 1, 1u << 24,
					     &o->pool_mb);
			break;
		case 'h': usage_engine(stdout); return KVP_EXIT_OK;
		default: return bench_bad_option("engine", argv, opt);
		}
		if (!ok)
			return KVP_EXIT_USAGE;
	}
	if (optind < argc)
		return bench_usage_error("engine", "unexpected argument '%s'", argv[optind]);
	if (o->weights && (o->model || o->types))
		return bench_usage_error("engine", "--dtype is the weight type of the default "
					 "model: not with --model or --types");
	if (o->busy && !o->types)
		return bench_usage_error("engine", "--busy goes with --types");
	if (o->types && o->n_levels)
		return bench_usage_error("engine", "--types and --concurrency are runs of their "
					 "own: one at a time");
	if (o->types && (o->model || o->sock || o->backend == KVP_BACKEND_CUDA))
		return bench_usage_error("engine", "--types makes its own models and runs in "
					 "process on the CPU: no --model, --socket or --backend cuda");
	if (o->backend == KVP_BACKEND_CUDA)
		return check_engine_cuda(o, dtype_given, pool_given);
	return BENCH_RUN;
}

int bench_make_model(const char *dir, enum kvp_backend backend, const char *dtype, char *out,
		     size_t cap)
{
	char bin[PATH_MAX], dt[32];
	pid_t pid;
	int st;

	if (bench_find_tool("engine", "kvprefix-mkmodel", "bin", bin, sizeof(bin)) < 0) {
		fprintf(stderr, PROG " engine: or pass --model FILE\n");
		return -1;
	}
	snprintf(dt, sizeof(dt), "%s", dtype);
	snprintf(out, cap, "%s/%s.gguf", dir, dt);
	fprintf(stderr, "engine: %s --out %s (%s, %s)\n", bin, out,
		backend == KVP_BACKEND_CUDA ? "a ~1.2B model for --backend cuda"
					    : "the default model", dt);
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, PROG " engine: fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		char *const args[] = { bin, "--out", out, "--dtype", dt, "--quiet", NULL };
		char *const gpu[] = { bin, "--out", out, "--dim", "2048", "--layers", "16",
				      "--heads", "32", "--kv-heads", "8", "--ffn", "8192",
				      "--ctx", "16384", "--dtype", dt, "--quiet", NULL };

		dup2(STDERR_FILENO, STDOUT_FILENO);
		execv(bin, backend == KVP_BACKEND_CUDA ? gpu : args);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, PROG " engine: %s --dtype %s failed\n", bin, dt);
		return -1;
	}
	return 0;
}

/* (a) on the CPU as JSON fields of j. */
static void json_engine_cpu(cJSON *j, const struct eng_inproc *a, bool peak_met)
{
	cJSON_AddNumberToObject(j, "prefill_512_tps_best", a->pf512_best);
	cJSON_AddNumberToObject(j, "prefill_512_tps_median", a->pf512_med);
	cJSON_AddNumberToObject(j, "prefill_2048_tps_best", a->pf2048_best);
	cJSON_AddNumberToObject(j, "prefill_2048_tps_median", a->pf2048_med);
	cJSON_AddNumberToObject(j, "decode_tps_best", a->dec_best);
	cJSON_AddNumberToObject(j, "decode_tps_median", a->dec_med);
	cJSON_AddNumberToObject(j, "decode_prompt_tokens", a->decode_prompt);
	cJSON_AddNumberToObject(j, "decode_steps", a->decode_steps);
	cJSON_AddNumberToObject(j, "suffix_50_after_2000_ms_median", a->suffix_ms_med);
	cJSON_AddNumberToObject(j, "cold_2050_ms", a->cold2050_ms);
	cJSON_AddNumberToObject(j, "prefill_512_gflop", a->flops_512 / 1e9);
	cJSON_AddNumberToObject(j, "prefill_512_gflops_best", a->gflops_best);
	cJSON_AddNumberToObject(j, "prefill_512_gflops_median", a->gflops_med);
	cJSON_AddNumberToObject(j, "peak_gflops", a->peak_gflops);
	cJSON_AddNumberToObject(j, "peak_fraction_best", a->frac_best);
	cJSON_AddNumberToObject(j, "peak_fraction_median", a->frac_med);
	cJSON_AddNumberToObject(j, "peak_fraction_target", TARGET_PEAK_FRACTION);
	cJSON_AddBoolToObject(j, "peak_fraction_met", peak_met);
}

/* (a) on CUDA as JSON fields of j (what memory allows, as cJSON does). */
static void json_engine_cuda(cJSON *j, const struct eng_cuda *cu, bool peak_met)
{
	const int ts = CUDA_TARGET_SIZE;
	cJSON *p, *e;

	cJSON_AddStringToObject(j, "device", cu->dev.name);
	cJSON_AddNumberToObject(j, "sm", cu->dev.sm_major * 10 + cu->dev.sm_minor);
	cJSON_AddNumberToObject(j, "f16_peak_tflops", cu->dev.f16_tflops);
	cJSON_AddNumberToObject(j, "max_batch", cu->max_batch);
	p = cJSON_AddArrayToObject(j, "prefill");
	for (int si = 0; p && si < CUDA_N_SIZES; si++) {
		e = cJSON_CreateObject();
		if (!e || !cJSON_AddItemToArray(p, e)) {
			cJSON_Delete(e);
			break;
		}
		cJSON_AddNumberToObject(e, "tokens", cuda_prefill_sizes[si]);
		cJSON_AddNumberToObject(e, "runs", cu->runs[si]);
		cJSON_AddNumberToObject(e, "tps_best", cu->pf_best[si]);
		cJSON_AddNumberToObject(e, "tps_median", cu->pf_med[si]);
		cJSON_AddNumberToObject(e, "tflop", cu->flops[si] / 1e12);
		cJSON_AddNumberToObject(e, "tflops_best", cu->tflops_best[si]);
		cJSON_AddNumberToObject(e, "tflops_median", cu->tflops_med[si]);
		cJSON_AddNumberToObject(e, "peak_fraction_best", cu->frac_best[si]);
		cJSON_AddNumberToObject(e, "peak_fraction_median", cu->frac_med[si]);
	}
	cJSON_AddNumberToObject(j, "decode_tps_best", cu->dec_best);
	cJSON_AddNumberToObject(j, "decode_tps_median", cu->dec_med);
	cJSON_AddNumberToObject(j, "decode_prompt_tokens", cu->decode_prompt);
	cJSON_AddNumberToObject(j, "decode_steps", cu->decode_steps);
	cJSON_AddNumberToObject(j, "ttft_prompt_tokens", cu->ttft_prompt);
	cJSON_AddNumberToObject(j, "ttft_cached_tokens", cu->ttft_cached);
	cJSON_AddNumberToObject(j, "ttft_reps", cu->ttft_reps);
	cJSON_AddNumberToObject(j, "ttft_cold_ms_median", cu->ttft_cold_ms);
	cJSON_AddNumberToObject(j, "ttft_cached_ms_median", cu->ttft_cached_ms);
	cJSON_AddNumberToObject(j, "ttft_ratio", cu->ttft_ratio);
	cJSON_AddNumberToObject(j, "ttft_logit_diff", cu->ttft_logit_diff);
	cJSON_AddNumberToObject(j, "peak_fraction_target", TARGET_GPU_FRACTION);
	cJSON_AddNumberToObject(j, "peak_fraction_target_tokens", cuda_prefill_sizes[ts]);
	cJSON_AddBoolToObject(j, "peak_fraction_met", peak_met);
}

/* (a) on the CPU, as a table on stdout. */
static void print_engine_cpu(const struct eng_inproc *a, uint64_t threads,
			     enum kvp_kv_dtype dtype, uint64_t block, bool quick, bool peak_met)
{
	printf("kvprefix-bench engine: %s (%.1fM parameters, dim %u, %u layers, %u heads "
	       "(%u kv), ffn %u, vocab %u)\n", a->name, (double)a->n_params / 1e6, a->dim,
	       a->n_layers, a->n_heads, a->n_kv_heads, a->ffn, a->vocab);
	printf("  threads %" PRIu64 ", KV %s, %" PRIu64 "-token blocks (%zu bytes), kernels %s"
	       "%s\n\n", threads, dtype == KVP_KV_F32 ? "f32" : "f16", block, a->block_bytes,
	       a->isa, quick ? ", --quick" : "");
	printf("(a) in process, kvp_engine_forward over host blocks\n");
	printf("  %-34s %12s %12s %5s\n", "", "best", "median", "runs");
	printf("  %-34s %8.0f t/s %8.0f t/s %5d\n", "prefill 512 tokens (cold)",
	       a->pf512_best, a->pf512_med, a->prefill_runs_512);
	printf("  %-34s %8.0f t/s %8.0f t/s %5d\n", "prefill 2048 tokens (cold)",
	       a->pf2048_best, a->pf2048_med, a->prefill_runs_2048);
	printf("  %-34s %8.1f t/s %8.1f t/s %5d\n", "decode 128 steps after 512 tokens",
	       a->dec_best, a->dec_med, a->decode_runs);
	printf("  %-34s %8.1f ms (%u tokens cold: %.1f ms, %.1fx)\n",
	       "50 tokens after 2000 cached", a->suffix_ms_med, TTFT_PREFIX + TTFT_SUFFIX,
	       a->cold2050_ms, a->cold2050_ms / a->suffix_ms_med);
	printf("  512-token prefill: %.2f GFLOP, %.1f GFLOP/s best, %.1f median\n",
	       a->flops_512 / 1e9, a->gflops_best, a->gflops_med);
	printf("  peak FMA of the engine's thread pool (%" PRIu64 "): %.1f GFLOP/s (median; "
	       "measured around each run)\n", threads, a->peak_gflops);
	printf("  run / its peak: %.1f%% best, %.1f%% median; target >= %.0f%% (median, "
	       "f32, 2 threads): %s%s\n\n", a->frac_best * 100, a->frac_med * 100,
	       TARGET_PEAK_FRACTION * 100, peak_met ? "met" : "MISSED",
	       dtype != KVP_KV_F32 || threads != 2 ? " (not the target's setting)" : "");
}

/* (a) on CUDA, as a table on stdout. */
static void print_engine_cuda(const struct eng_inproc *a, const struct eng_cuda *cu,
			      uint64_t block, bool quick, bool peak_met)
{
	const int ts = CUDA_TARGET_SIZE;

	printf("kvprefix-bench engine: %s (%.1fM parameters, dim %u, %u layers, %u heads "
	       "(%u kv), ffn %u, vocab %u)\n", a->name, (double)a->n_params / 1e6, a->dim,
	       a->n_layers, a->n_heads, a->n_kv_heads, a->ffn, a->vocab);
	printf("  backend cuda: %s (sm_%d%d, %d SMs, %.1f GiB), KV f16, %" PRIu64 "-token "
	       "blocks (%zu bytes), max_batch %u%s\n\n", cu->dev.name, cu->dev.sm_major,
	       cu->dev.sm_minor, cu->dev.sm_count, (double)cu->dev.mem_total / 1073741824.0,
	       block, a->block_bytes, cu->max_batch, quick ? ", --quick" : "");
	printf("(a) in process, kvp_engine_forward over device blocks (kvp_pool_attach_device)\n");
	printf("  %-34s %12s %12s %5s %14s %9s\n", "", "best", "median", "runs",
	       "TFLOP/s (med)", "of peak");
	for (int si = 0; si < CUDA_N_SIZES; si++) {
		char what[64];

		snprintf(what, sizeof(what), "prefill %u tokens (cold)", cuda_prefill_sizes[si]);
		printf("  %-34s %8.0f t/s %8.0f t/s %5d %14.1f %8.1f%%\n", what, cu->pf_best[si],
		       cu->pf_med[si], cu->runs[si], cu->tflops_med[si], cu->frac_med[si] * 100);
	}
	printf("  %-34s %8.1f t/s %8.1f t/s %5d\n", "decode 128 steps after 512 tokens",
	       cu->dec_best, cu->dec_med, cu->decode_runs);
	printf("  TTFT, %u-token prompt: cold %.1f ms; %u tokens (%u%%) cached, %u computed "
	       "%.1f ms: %.1fx\n  (medians of %d pairs; cold/cached the median of the pairs' "
	       "ratios; logits of the pair agree within %.2g of max |logit|)\n",
	       cu->ttft_prompt, cu->ttft_cold_ms, cu->ttft_cached, CUDA_TTFT_CACHED_PCT,
	       cu->ttft_prompt - cu->ttft_cached, cu->ttft_cached_ms, cu->ttft_ratio, cu->ttft_reps,
	       cu->ttft_logit_diff);
	printf("  FLOPs counted: 2 per layer-matrix weight per token (q, k, v, o, gate, up, "
	       "down),\n  4 x head_dim per head per causal (query, key) pair (QK^T and PV), the "
	       "output head\n  for the last row; %u tokens: %.2f TFLOP\n",
	       cuda_prefill_sizes[ts], cu->flops[ts] / 1e12);
	printf("  f16 tensor-core peak of the device: %.1f TFLOP/s (kvp_device_info.f16_tflops)\n",
	       cu->dev.f16_tflops);
	if (cu->dev.f16_tflops > 0)
		printf("  prefill %u tokens / peak: %.1f%% best, %.1f%% median; target >= %.0f%% "
		       "(median): %s\n\n", cuda_prefill_sizes[ts], cu->frac_best[ts] * 100,
		       cu->frac_med[ts] * 100, TARGET_GPU_FRACTION * 100,
		       peak_met ? "met" : "MISSED");
	else
		printf("  prefill %u tokens: the peak of sm_%d%d is not in the table; target >= "
		       "%.0f%% of peak: not judged\n\n", cuda_prefill_sizes[ts], cu->dev.sm_major,
		       cu->dev.sm_minor, TARGET_GPU_FRACTION * 100);
}

/* (a) on the backend of o, printed. */
static int run_engine_inproc(const struct engine_opts *o, struct engine_figures *f)
{
	if (o->backend == KVP_BACKEND_CUDA) {
		if (bench_engine_cuda(o->model, (uint32_t)o->block, (uint32_t)o->max_batch,
				      o->quick, &f->a, &f->cu) < 0)
			return -1;
		f->peak_met = f->cu.frac_med[CUDA_TARGET_SIZE] >= TARGET_GPU_FRACTION;
		print_engine_cuda(&f->a, &f->cu, o->block, o->quick, f->peak_met);
	} else {
		if (bench_engine_cpu(o->model, (int)o->threads, o->dtype, (uint32_t)o->block,
				     (uint32_t)o->max_batch, o->quick, &f->a) < 0)
			return -1;
		f->peak_met = f->a.frac_med >= TARGET_PEAK_FRACTION;
		print_engine_cpu(&f->a, o->threads, o->dtype, o->block, o->quick, f->peak_met);
	}
	fflush(stdout);
	return 0;
}

/* Start the daemon of (b) and (c) with o's model and options: its socket in *sock. */
static int engine_daemon(const struct engine_opts *o, struct kvp_daemon *d, const char **sock)
{
	char th[16], bt[16], pm[16];
	const char *args[] = { "--model", o->model, "--backend", kvp_backend_name(o->backend),
			       "--threads", th, "--block-tokens", bt,
			       "--kv-dtype", o->dtype == KVP_KV_F32 ? "f32" : "f16",
			       "--pool-mb", pm, NULL };

	snprintf(th, sizeof(th), "%" PRIu64, o->threads);
	snprintf(bt, sizeof(bt), "%" PRIu64, o->block);
	snprintf(pm, sizeof(pm), "%" PRIu64, o->pool_mb);
	if (bench_daemon_start(d, "engine", args, ENGINE_DAEMON_WAIT_MS) < 0)
		return -1;
	*sock = d->socket;
	return 0;
}

static void print_engine_ttft(const char *sock, const struct eng_ttft *b, bool met)
{
	printf("(b) through kvprefixd (%s): TTFT of a %u-token prompt, max_new 1\n", sock,
	       b->prompt);
	printf("  %-42s %10.1f ms (cached %u tokens)\n", "first 2000 tokens cached",
	       b->cached_med_us / 1e3, b->cached_tokens[0]);
	printf("  %-42s %10.1f ms (cached %u tokens)\n", "cold (a different prefix)",
	       b->cold_med_us / 1e3, b->cold_cached_tokens[0]);
	printf("  %-42s %10.1f ms\n", "(the 2000-token prefix alone, cold)",
	       b->prefix_med_us / 1e3);
	printf("  medians of %d pairs run back to back; cold/cached %.1fx (median of the pairs' "
	       "ratios;\n  ratio of the medians %.1fx), target >= %.0fx: %s\n\n", b->reps, b->ratio,
	       b->ratio_of_medians, TARGET_TTFT_RATIO, met ? "met" : "MISSED");
	fflush(stdout);
}

static void print_engine_workload(const struct eng_work *w, uint64_t t_start)
{
	printf("(c) %u prefixes of %u tokens, %u requests interleaved (suffix 10-50 tokens, "
	       "max_new %u), %.1f s\n", w->prefixes, w->prefix, w->requests, WORK_MAX_NEW,
	       w->elapsed_s);
	printf("  hit rate %.4f (%" PRIu64 " cached of %" PRIu64 " prompt tokens)\n",
	       w->hit_rate, w->cached_tokens, w->prompt_tokens);
	printf("  requests after the first of their prefix that hit: %u of %u (%s)\n",
	       w->after_first_hit, w->after_first,
	       w->after_first_hit == w->after_first ? "all" : "NOT ALL");
	printf("  %-8s %6s %14s %14s\n", "", "count", "TTFT mean", "TTFT p99");
	printf("  %-8s %6u %11.1f ms %11.1f ms\n", "hits", w->n_hit, w->hit_mean_us / 1e3,
	       w->hit_p99_us / 1e3);
	printf("  %-8s %6u %11.1f ms %11.1f ms\n", "misses", w->n_miss, w->miss_mean_us / 1e3,
	       w->miss_p99_us / 1e3);
	if (!isnan(w->evictions))
		printf("  daemon evictions so far: %.0f\n", w->evictions);
	printf("  total %.1f s\n\n", (double)(kvp_tool_now_ns() - t_start) / 1e9);
}

/* (b) as JSON fields of j. */
static void json_engine_ttft(cJSON *j, const struct eng_ttft *b, bool met)
{
	cJSON_AddNumberToObject(j, "prompt_tokens", b->prompt);
	cJSON_AddNumberToObject(j, "cached_prefix_tokens", b->prefix);
	cJSON_AddNumberToObject(j, "reps", b->reps);
	cJSON_AddNumberToObject(j, "cached_tokens", b->cached_tokens[0]);
	cJSON_AddNumberToObject(j, "cached_us_median", b->cached_med_us);
	cJSON_AddNumberToObject(j, "cold_us_median", b->cold_med_us);
	cJSON_AddNumberToObject(j, "prefix_cold_us_median", b->prefix_med_us);
	cJSON_AddNumberToObject(j, "ratio", b->ratio);
	cJSON_AddNumberToObject(j, "ratio_of_medians", b->ratio_of_medians);
	cJSON_AddNumberToObject(j, "target", TARGET_TTFT_RATIO);
	cJSON_AddBoolToObject(j, "met", met);
}

/* (c) as JSON fields of j. */
static void json_engine_workload(cJSON *j, const struct eng_work *w)
{
	cJSON_AddNumberToObject(j, "requests", w->requests);
	cJSON_AddNumberToObject(j, "prefixes", w->prefixes);
	cJSON_AddNumberToObject(j, "prefix_tokens", w->prefix);
	cJSON_AddNumberToObject(j, "prompt_tokens", (double)w->prompt_tokens);
	cJSON_AddNumberToObject(j, "cached_tokens", (double)w->cached_tokens);
	cJSON_AddNumberToObject(j, "hit_rate", w->hit_rate);
	cJSON_AddNumberToObject(j, "after_first", w->after_first);
	cJSON_AddNumberToObject(j, "after_first_hit", w->after_first_hit);
	cJSON_AddBoolToObject(j, "all_hit", w->after_first_hit == w->after_first);
	cJSON_AddNumberToObject(j, "hits", w->n_hit);
	cJSON_AddNumberToObject(j, "misses", w->n_miss);
	cJSON_AddNumberToObject(j, "hit_ttft_us_mean", w->hit_mean_us);
	cJSON_AddNumberToObject(j, "hit_ttft_us_p99", w->hit_p99_us);
	cJSON_AddNumberToObject(j, "miss_ttft_us_mean", w->miss_mean_us);
	cJSON_AddNumberToObject(j, "miss_ttft_us_p99", w->miss_p99_us);
	cJSON_AddNumberToObject(j, "elapsed_s", w->elapsed_s);
	if (!isnan(w->evictions))
		cJSON_AddNumberToObject(j, "daemon_evictions", w->evictions);
}

/* Every figure into root; false when out of memory. */
static bool json_engine_fields(cJSON *root, const struct engine_opts *o,
			       const struct engine_figures *f)
{
	cJSON *j;

	cJSON_AddStringToObject(root, "model", f->a.name);
	cJSON_AddStringToObject(root, "backend", kvp_backend_name(o->backend));
	cJSON_AddNumberToObject(root, "params", (double)f->a.n_params);
	cJSON_AddNumberToObject(root, "threads", (double)o->threads);
	cJSON_AddStringToObject(root, "kv_dtype", o->dtype == KVP_KV_F32 ? "f32" : "f16");
	cJSON_AddNumberToObject(root, "block_tokens", (double)o->block);
	cJSON_AddStringToObject(root, "isa", f->a.isa);
	cJSON_AddBoolToObject(root, "quick", o->quick);
	if (!(j = cJSON_AddObjectToObject(root, "inproc")))
		return false;
	if (o->backend == KVP_BACKEND_CUDA)
		json_engine_cuda(j, &f->cu, f->peak_met);
	else
		json_engine_cpu(j, &f->a, f->peak_met);
	if (!(j = cJSON_AddObjectToObject(root, "ttft")))
		return false;
	json_engine_ttft(j, &f->b, f->ttft_met && f->b.cached_ok);
	if (!(j = cJSON_AddObjectToObject(root, "workload")))
		return false;
	json_engine_workload(j, &f->w);
	return true;
}

/* The JSON line; false (message printed) when out of memory. */
static bool json_engine(const struct engine_opts *o, const struct engine_figures *f)
{
	cJSON *root = cJSON_CreateObject();

	return bench_json_finish("engine", root, root && json_engine_fields(root, o, f));
}

/* (b) and (c) through the daemon at sock, printed. */
static int run_engine_daemon(const struct engine_opts *o, const char *sock, uint64_t t_start,
			     struct engine_figures *f)
{
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	int ret = -1;

	if (bench_connect_engine(PROG " engine", sock, &c, &info) < 0)
		return -1;
	if (info.block_tokens != o->block)
		fprintf(stderr, "engine: note: the daemon uses %u-token blocks\n",
			info.block_tokens);
	if (bench_ttft(c, f->a.vocab, info.block_tokens, o->quick, &f->b) < 0)
		goto out;
	f->ttft_met = f->b.ratio >= TARGET_TTFT_RATIO;
	print_engine_ttft(sock, &f->b, f->ttft_met && f->b.cached_ok);
	if (bench_workload(c, f->a.vocab, info.block_tokens,
			   o->quick ? WORK_REQUESTS_QUICK : WORK_REQUESTS, &f->w) < 0)
		goto out;
	print_engine_workload(&f->w, t_start);
	ret = 0;
out:
	kvp_client_close(c);
	return ret;
}

/* The level of r with c clients, or NULL. */
static const struct eng_conc_level *conc_find(const struct eng_conc *r, uint32_t c)
{
	for (uint32_t i = 0; i < r->n_levels; i++)
		if (r->levels[i].clients == c)
			return &r->levels[i];
	return NULL;
}

/* --concurrency's targets: 8 clients against 1; false when either level is missing. */
static bool conc_targets(const struct eng_conc *r, double *speedup, double *itl_ratio)
{
	const struct eng_conc_level *one = conc_find(r, 1), *eight = conc_find(r, 8);

	if (!one || !eight)
		return false;
	*speedup = eight->decode_tps / one->decode_tps;
	*itl_ratio = eight->itl_p99_ms / one->itl_p99_ms;
	return true;
}

static void print_engine_conc(const char *model, const struct eng_conc *r)
{
	const struct eng_conc_level *one = conc_find(r, 1);
	const struct eng_conc_mixed *m = &r->mixed;
	double speedup, itl;

	printf("kvprefixd on %s: C clients at once, each a %u-token prompt, %u greedy tokens;\n"
	       "decode and inter-token figures while all C decode (whole-stream p99: with the\n"
	       "steps that took the others' prompts)\n", model, r->prompt, r->max_new);
	printf("  %8s %14s %8s %20s %24s %18s %18s\n", "clients", "decode tok/s", "x of 1",
	       "TTFT p50 / p99 ms", "inter-token p50 / p99 ms", "whole-stream p99",
	       "in process (x)");
	for (uint32_t i = 0; i < r->n_levels; i++) {
		const struct eng_conc_level *lv = &r->levels[i];

		printf("  %8u %14.1f %8.2f %9.1f / %8.1f %11.1f / %10.1f %18.1f", lv->clients,
		       lv->decode_tps, one ? lv->decode_tps / one->decode_tps : NAN,
		       lv->ttft_p50_ms, lv->ttft_p99_ms, lv->itl_p50_ms, lv->itl_p99_ms,
		       lv->itl_all_p99_ms);
		if (r->inproc)
			printf(" %10.1f (%.2f)", lv->inproc_tps,
			       one ? lv->inproc_tps / one->inproc_tps : NAN);
		printf("\n");
	}
	if (conc_targets(r, &speedup, &itl))
		printf("  8 clients: %.2fx the decode of 1 (target >= %.0fx: %s), inter-token p99 "
		       "%.2fx of 1's (target <= %.0fx: %s)\n", speedup, TARGET_CONC_SPEEDUP,
		       speedup >= TARGET_CONC_SPEEDUP ? "met" : "MISSED", itl, TARGET_CONC_ITL,
		       itl <= TARGET_CONC_ITL ? "met" : "MISSED");
	printf("mixed chat: %u users over %u system prompts arriving at random, %u turns each: "
	       "%u requests in %.1f s\n", m->users, m->systems, m->turns, m->requests,
	       m->elapsed_s);
	printf("  generated %.1f tokens/s, prompts %.1f tokens/s; hit rate %.3f (%llu cached of "
	       "%llu prompt tokens); TTFT p50 %.1f ms, p99 %.1f ms\n", m->generated_tps,
	       m->prompt_tps, m->hit_rate, (unsigned long long)m->cached_tokens,
	       (unsigned long long)m->prompt_tokens, m->ttft_p50_ms, m->ttft_p99_ms);
	fflush(stdout);
}

static bool json_engine_conc_fields(cJSON *root, const char *model, const struct eng_conc *r)
{
	cJSON *levels = cJSON_AddArrayToObject(root, "concurrency"), *m;
	double speedup, itl;

	cJSON_AddStringToObject(root, "model", model);
	cJSON_AddNumberToObject(root, "prompt_tokens", r->prompt);
	cJSON_AddNumberToObject(root, "max_new", r->max_new);
	if (!levels)
		return false;
	for (uint32_t i = 0; i < r->n_levels; i++) {
		const struct eng_conc_level *lv = &r->levels[i];
		cJSON *o = cJSON_CreateObject();

		if (!o || !cJSON_AddItemToArray(levels, o))
			return false;
		cJSON_AddNumberToObject(o, "clients", lv->clients);
		cJSON_AddNumberToObject(o, "decode_tps", lv->decode_tps);
		cJSON_AddNumberToObject(o, "window_s", lv->window_s);
		cJSON_AddNumberToObject(o, "ttft_ms_p50", lv->ttft_p50_ms);
		cJSON_AddNumberToObject(o, "ttft_ms_p99", lv->ttft_p99_ms);
		cJSON_AddNumberToObject(o, "itl_ms_p50", lv->itl_p50_ms);
		cJSON_AddNumberToObject(o, "itl_ms_p99", lv->itl_p99_ms);
		cJSON_AddNumberToObject(o, "itl_whole_ms_p50", lv->itl_all_p50_ms);
		cJSON_AddNumberToObject(o, "itl_whole_ms_p99", lv->itl_all_p99_ms);
		if (r->inproc)
			cJSON_AddNumberToObject(o, "inproc_decode_tps", lv->inproc_tps);
	}
	if (conc_targets(r, &speedup, &itl)) {
		cJSON_AddNumberToObject(root, "speedup_8", speedup);
		cJSON_AddNumberToObject(root, "itl_p99_ratio_8", itl);
		cJSON_AddBoolToObject(root, "target_met",
				      speedup >= TARGET_CONC_SPEEDUP && itl <= TARGET_CONC_ITL);
	}
	if (!(m = cJSON_AddObjectToObject(root, "mixed")))
		return false;
	cJSON_AddNumberToObject(m, "users", r->mixed.users);
	cJSON_AddNumberToObject(m, "requests", r->mixed.requests);
	cJSON_AddNumberToObject(m, "elapsed_s", r->mixed.elapsed_s);
	cJSON_AddNumberToObject(m, "generated_tps", r->mixed.generated_tps);
	cJSON_AddNumberToObject(m, "prompt_tps", r->mixed.prompt_tps);
	cJSON_AddNumberToObject(m, "hit_rate", r->mixed.hit_rate);
	cJSON_AddNumberToObject(m, "ttft_ms_p50", r->mixed.ttft_p50_ms);
	cJSON_AddNumberToObject(m, "ttft_ms_p99", r->mixed.ttft_p99_ms);
	return true;
}

/* --concurrency through the daemon at sock. An exit status. */
static int run_engine_conc(const struct engine_opts *o, const char *sock)
{
	static struct eng_conc r;
	struct kvp_server_info info;
	struct kvp_client *c = NULL;
	cJSON *root;

	if (bench_connect_engine(PROG " engine", sock, &c, &info) < 0)
		return KVP_EXIT_FAIL;
	kvp_client_close(c);
	if (bench_concurrency(sock, info.vocab_size, o->levels, o->n_levels, o->quick, &r) < 0)
		return KVP_EXIT_FAIL;
	/* the engine alone beside it, when this command has the model file */
	if (o->model && o->backend == KVP_BACKEND_CPU &&
	    bench_concurrency_inproc(o->model, (int)o->threads, o->dtype, o->quick, &r) < 0)
		return KVP_EXIT_FAIL;
	print_engine_conc(info.name, &r);
	root = cJSON_CreateObject();
	return bench_json_finish("engine", root, root && json_engine_conc_fields(root, info.name,
										  &r))
		       ? KVP_EXIT_OK : KVP_EXIT_FAIL;
}

int bench_cmd_engine(int argc, char **argv)
{
	uint64_t t_start = kvp_tool_now_ns();
	struct engine_opts o;
	struct engine_figures f = { 0 };
	struct kvp_daemon d = { 0 };
	char tmpdir[64] = "", model_buf[PATH_MAX];
	const char *sock;
	int ret = parse_engine(argc, argv, &o);

	if (ret != BENCH_RUN)
		return ret;
	ret = KVP_EXIT_FAIL;
	if (o.types) {
		const struct bench_types_opts to = {
			.types = o.types, .threads = (int)o.threads, .kv_dtype = o.dtype,
			.block = (uint32_t)o.block, .max_batch = (uint32_t)o.max_batch,
			.quick = o.quick, .busy = (int)o.busy,
		};

		if (bench_tmpdir("engine", tmpdir, sizeof(tmpdir), "kvprefix-bench-types") == 0)
			ret = bench_engine_types(&to, tmpdir);
		goto out;
	}
	if (!o.model) {
		if (bench_tmpdir("engine", tmpdir, sizeof(tmpdir), "kvprefix-bench-model") < 0 ||
		    bench_make_model(tmpdir, o.backend, o.weights ? o.weights :
				     o.backend == KVP_BACKEND_CUDA ? "f16" : "f32",
				     model_buf, sizeof(model_buf)) < 0)
			goto out;
		o.model = model_buf;
	}
	if (o.n_levels) {
		sock = o.sock;
		if (sock || engine_daemon(&o, &d, &sock) == 0)
			ret = run_engine_conc(&o, sock);
		goto out;
	}
	if (run_engine_inproc(&o, &f) < 0)
		goto out;
	sock = o.sock;
	if (!sock && engine_daemon(&o, &d, &sock) < 0)
		goto out;
	if (run_engine_daemon(&o, sock, t_start, &f) == 0 && json_engine(&o, &f))
		ret = KVP_EXIT_OK;
out:
	bench_daemon_stop(&d);
	if (tmpdir[0])
		(void)kvp_spawn_rmdir(tmpdir);   /* and the default model in it */
	return ret;
}
