/*
 * bench_engine.h - the parts of kvprefix-bench engine: (a) the engine in process
 * (bench_engine_inproc.c: on the CPU against its peak FMA rate, on CUDA against the
 * device's f16 tensor-core peak), (b) TTFT cached vs cold and (c) a shared-prefix
 * workload through a kvprefixd running the same backend (bench_engine_daemon.c), and
 * the command that runs them and prints their figures (bench_engine.c).
 */
#ifndef KVP_BENCH_ENGINE_H
#define KVP_BENCH_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_device.h"
#include "kvp_engine.h"
#include "kvprefix.h"

/* Targets printed beside the engine figures. */
#define TARGET_PEAK_FRACTION 0.60     /* 512-token prefill, f32, 2 threads */
#define TARGET_TTFT_RATIO 20.0        /* cold / cached TTFT of a 2,050-token prompt */
#define TARGET_DECODE_FRACTION 0.70   /* --types: decode GB/s of the read bandwidth
                                         (f16, q8_0, 2 threads) */
#define ENGINE_MAX_BATCH 512u         /* rows per internal step, as the daemon uses */
#define TTFT_PREFIX 2000u             /* (b), (c): tokens of a shared prefix */
#define DECODE_SHORT 16u              /* (a): the prompt of the short-context decode */
#define TTFT_SUFFIX 50u               /* (b): tokens after it */
#define WORK_PREFIXES 16u             /* (c) */
#define WORK_REQUESTS 200u
#define WORK_REQUESTS_QUICK 50u
#define WORK_MAX_NEW 8u
/* --backend cuda, in process */
#define TARGET_GPU_FRACTION 0.50      /* prefill TFLOP/s of the f16 tensor-core peak */
#define CUDA_N_SIZES 3
#define CUDA_TARGET_SIZE 2            /* the size the target is judged on: 8,192 */
#define CUDA_TTFT_PROMPT 8192u        /* in-process TTFT: this prompt ... */
#define CUDA_TTFT_CACHED_PCT 90u      /* ... with this share of it already in the blocks */

/* The prefill sizes of (a) on CUDA: 512, 2,048, 8,192. */
extern const uint32_t cuda_prefill_sizes[CUDA_N_SIZES];

/* (a): the model, and the figures on the CPU. */
struct eng_inproc {
	/* model */
	char name[256];
	uint64_t n_params;
	uint32_t vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn;
	const char *isa;
	size_t block_bytes;
	/* figures */
	double peak_gflops;
	int prefill_runs_512, prefill_runs_2048, decode_runs;
	double pf512_best, pf512_med;        /* tokens/s */
	double pf2048_best, pf2048_med;
	double dec_best, dec_med;            /* tokens/s */
	uint32_t decode_prompt, decode_steps;
	double dec_short_med;                /* tokens/s, decode_steps after DECODE_SHORT
	                                        tokens: the weights, little K/V */
	double suffix_ms_med;                /* 50 rows after 2,000 cached positions */
	double cold2050_ms;                  /* 2,050 rows cold */
	double flops_512;                    /* FLOPs of one 512-token prefill */
	double gflops_best, gflops_med;
	double frac_best, frac_med;          /* of peak */
	double rss_load_mb;                  /* the process, model loaded, engine made */
	double rss_end_mb;                   /* after the runs */
};

/* (a) with --backend cuda. */
struct eng_cuda {
	struct kvp_device_info dev;
	uint32_t max_batch;
	int runs[CUDA_N_SIZES];
	double pf_best[CUDA_N_SIZES], pf_med[CUDA_N_SIZES];         /* tokens/s */
	double flops[CUDA_N_SIZES];                                 /* FLOPs of one prefill */
	double tflops_best[CUDA_N_SIZES], tflops_med[CUDA_N_SIZES];
	double frac_best[CUDA_N_SIZES], frac_med[CUDA_N_SIZES];    /* of dev.f16_tflops */
	int decode_runs;
	uint32_t decode_prompt, decode_steps;
	double dec_best, dec_med;                                   /* tokens/s */
	int ttft_reps;
	uint32_t ttft_prompt, ttft_cached;                          /* tokens */
	double ttft_cold_ms, ttft_cached_ms;                        /* medians */
	double ttft_ratio;               /* median over the repetitions of cold / cached */
	double ttft_logit_diff;          /* max |cold - cached| / max |cold| over the reps */
};

/* (b) */
struct eng_ttft {
	int reps;
	uint32_t prompt, prefix;
	double cached_us[8], cold_us[8], prefix_us[8];
	uint32_t cached_tokens[8], cold_cached_tokens[8];
	double cached_med_us, cold_med_us, prefix_med_us;
	double ratio;            /* median over the repetitions of cold / cached */
	double ratio_of_medians;
	bool cached_ok;          /* every cached request found the whole prefix */
};

/* (c) */
struct eng_work {
	uint32_t requests, prefixes, prefix;
	uint64_t prompt_tokens, cached_tokens;
	double hit_rate;
	uint32_t after_first, after_first_hit;
	uint32_t n_hit, n_miss;
	double hit_mean_us, hit_p99_us, miss_mean_us, miss_p99_us;
	double elapsed_s;
	double evictions;        /* the daemon's counter at the end, NAN if unknown */
};

/* --concurrency: many clients at once (bench_engine_conc.c). */
#define CONC_MAX_LEVEL 256            /* clients of one level, at most */
#define CONC_MAX_LEVELS 16
#define TARGET_CONC_SPEEDUP 5.0       /* 8 clients' aggregate decode of 1 client's */
#define TARGET_CONC_ITL 3.0           /* 8 clients' inter-token p99 of 1 client's, at most */
#define CONC_PROMPT 64u               /* a client's prompt */
#define CONC_MAX_NEW 128u             /* its greedy tokens */
#define CONC_MAX_NEW_QUICK 32u
#define CONC_ROUNDS 3u                /* rounds of each level, the median taken */
#define CHAT_SYSTEMS 4u               /* the mixed chat: system prompts */
#define CHAT_USERS 16u                /* users, each on its own connection */
#define CHAT_TURNS 3u                 /* turns of each */

struct eng_conc_level {
	uint32_t clients;
	double decode_tps;       /* tokens/s of all streams while all were decoding */
	double window_s;         /* that window */
	double ttft_p50_ms, ttft_p99_ms;
	double itl_p50_ms, itl_p99_ms;           /* while all C decode */
	double itl_all_p50_ms, itl_all_p99_ms;   /* whole streams */
	double inproc_tps;       /* the engine alone: C sequences' decode in one batch */
};

struct eng_conc_mixed {
	uint32_t users, systems, turns, requests;
	uint64_t prompt_tokens, cached_tokens, generated;
	double hit_rate, elapsed_s, generated_tps, prompt_tps;
	double ttft_p50_ms, ttft_p99_ms;
};

struct eng_conc {
	uint32_t prompt, max_new, n_levels;
	bool inproc;             /* the in-process figures were measured */
	struct eng_conc_level levels[CONC_MAX_LEVELS];
	struct eng_conc_mixed mixed;
};

/* Each level of levels (clients, at most CONC_MAX_LEVEL) against the daemon at sock,
 * then the mixed chat workload. 0, or -1 (message printed). */
int bench_concurrency(const char *sock, uint32_t vocab, const uint32_t *levels,
		      uint32_t n_levels, bool quick, struct eng_conc *res);
/* After bench_concurrency: each level's decode in process on the model file, without
 * a daemon or clients sharing the cores (inproc_tps). 0, or -1 (message printed). */
int bench_concurrency_inproc(const char *model_path, int threads, enum kvp_kv_dtype dtype,
			     bool quick, struct eng_conc *res);

/* (a) on the CPU: load the model, prefill 512 and 2,048 tokens cold, decode, a cached
 * suffix; against the peak FMA rate around each 512-token run. 0, or -1 (message). */
int bench_engine_cpu(const char *model_path, int threads, enum kvp_kv_dtype dtype,
		     uint32_t block, uint32_t max_batch, bool quick, struct eng_inproc *res);
/* (a) on CUDA device 0 (KV f16 in device blocks); fills a's model fields as
 * bench_engine_cpu does. 0, or -1 (message printed). */
int bench_engine_cuda(const char *model_path, uint32_t block, uint32_t max_batch,
		      bool quick, struct eng_inproc *a, struct eng_cuda *res);

/* --types: the in-process runs per weight type of the default model. */
struct bench_types_opts {
	const char *types;       /* "f16,q8_0,...": kvprefix-mkmodel --dtype values */
	int threads;
	enum kvp_kv_dtype kv_dtype;
	uint32_t block, max_batch;
	bool quick;
	int busy;                /* processes spinning beside the engine's runs */
};

/* Make each type's model in dir, measure it in a child process, print a table and a
 * JSON line (bench_engine_types.c). An exit status. */
int bench_engine_types(const struct bench_types_opts *o, const char *dir);

/* kvprefix-mkmodel's default model of the backend (for cpu the default shape, for cuda
 * a ~1.2B one) in dtype, as dir/<dtype>.gguf; its path in out. 0, or -1 (message
 * printed). */
int bench_make_model(const char *dir, enum kvp_backend backend, const char *dtype, char *out,
		     size_t cap);

/* (b) through the daemon on c. 0, or -1 (message printed). */
int bench_ttft(struct kvp_client *c, uint32_t vocab, uint32_t block, bool quick,
	       struct eng_ttft *res);
/* (c) through the daemon on c, requests requests. 0, or -1 (message printed). */
int bench_workload(struct kvp_client *c, uint32_t vocab, uint32_t block, uint32_t requests,
		   struct eng_work *res);

#endif
