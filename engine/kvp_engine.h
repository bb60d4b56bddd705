/*
 * kvp_engine.h - the forward pass of a loaded model over paged block tables, the KV
 * layout those blocks hold, and sampling.
 *
 * Backends. The engine runs on one of a table of backends (engine/backend.h, private):
 * the CPU (the reference, engine/cpu) or CUDA (engine/cuda, when built with KVP_CUDA),
 * picked by kvp_engine_config.backend. Everything below is the same call whichever
 * runs; what differs is where the KV blocks live (host memory for the CPU, device
 * memory for CUDA) and which KV dtypes are offered.
 *
 * KV block layout. One block holds, for its block_tokens positions,
 *
 *     (layer, K/V, kv_head, token, head_dim)
 *
 * elements of the KV dtype, so the K of layer l, kv head h, token j of a block starts
 * at element (((l * 2 + 0) * n_kv_heads + h) * block_tokens + j) * head_dim, and its V
 * at the same with 1 in place of 0. K is stored after the rotary embedding, so a
 * block's bytes are exactly what attention at any later position reads. Block i of a
 * sequence's table holds its positions i*B .. i*B+B-1.
 *
 * A forward call. It takes a batch: rows of one or more sequences, each with its own
 * block table. Sequence s computes rows for its tokens at positions pos0 .. pos0+n-1;
 * positions >= kv_write_from get their K/V written into its blocks, positions below
 * are taken as already there (a cached prefix is never written: another request may
 * be reading it). Rows of different sequences never attend to each other. Results do
 * not depend on what else is in the batch (DESIGN.md invariant 9).
 *
 * Threading: an engine is used by one thread at a time (the daemon's engine thread);
 * it drives its own compute threads or device stream. Errors: 0 or a negative
 * enum kvp_status; memory: KVP_ENOMEM leaves the engine usable.
 */
#ifndef KVP_ENGINE_H
#define KVP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_model.h"
#include "kvp_status.h"

/* ---- KV ------------------------------------------------------------------------------ */

enum kvp_kv_dtype { KVP_KV_F32 = 0, KVP_KV_F16 = 1 };

/* Bytes of one block of the layout above for a model of these dims. */
size_t kvp_kv_block_bytes(uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
			  uint32_t block_tokens, enum kvp_kv_dtype dtype);
const char *kvp_kv_dtype_name(enum kvp_kv_dtype t);   /* "f32", "f16" */

/* ---- backends ------------------------------------------------------------------------ */

enum kvp_backend { KVP_BACKEND_CPU = 0, KVP_BACKEND_CUDA = 1 };

const char *kvp_backend_name(enum kvp_backend b);   /* "cpu", "cuda" */

/* Can this process run backend b? 0 with a one-line description of where it runs in
 * desc ("CUDA device 0 (NVIDIA H100, sm_90, 79.1 GiB)"); else a negative status
 * (KVP_EUNSUPPORTED: not built in; KVP_ENOTFOUND: no device; KVP_EIO) with the reason
 * in desc. Cheap enough to call before loading a model; may open the device. */
int kvp_engine_probe(enum kvp_backend b, char *desc, size_t desclen);

/* ---- engine -------------------------------------------------------------------------- */

struct kvp_engine;
struct kvp_threadpool;

struct kvp_engine_config {
	enum kvp_backend backend;     /* CUDA: KV in f16 only, blocks are device memory */
	int device;                   /* CUDA device index (0) */
	char *err;                    /* optional: why create failed, one line */
	size_t errlen;
	int threads;                  /* CPU compute threads, >= 1 */
	enum kvp_kv_dtype kv_dtype;
	uint32_t block_tokens;
	uint32_t max_batch;           /* most rows one internal step computes (e.g. 512) */
};

/* KVP_EINVAL (a bad config, said in err), KVP_EUNSUPPORTED (backend not built, or the
 * dtype not offered by it), KVP_ENOTFOUND / KVP_EIO (no usable device), KVP_ENOMEM.
 * The model must outlive the engine. */
int kvp_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      struct kvp_engine **out);
void kvp_engine_destroy(struct kvp_engine *e);
const struct kvp_model *kvp_engine_model(const struct kvp_engine *e);
enum kvp_backend kvp_engine_backend(const struct kvp_engine *e);
enum kvp_kv_dtype kvp_engine_kv_dtype(const struct kvp_engine *e);
/* Bytes of KV per block, and per token. */
size_t kvp_engine_block_bytes(const struct kvp_engine *e);
size_t kvp_engine_token_bytes(const struct kvp_engine *e);

/* Optional figures a backend may offer. The CPU backend's compute threads (NULL on
 * others). Which kernels run: "avx512", "avx2", "generic" (CPU), "cuda". The peak
 * matrix throughput of what the engine runs on, GFLOP/s, measured by the CPU backend
 * (about 0.2 s; kvp_cpu_peak_gflops), the dense F16 tensor-core peak by CUDA; 0 when
 * the backend has no such figure. */
struct kvp_threadpool *kvp_engine_threads(struct kvp_engine *e);
const char *kvp_engine_kernels(const struct kvp_engine *e);
double kvp_engine_peak_gflops(struct kvp_engine *e);
/* Bytes the backend keeps for the weights besides the model file's mapping: the CUDA
 * backend's device copy (f16 or bf16, dequantized at upload); 0 where the engine
 * computes on the mapping itself (the CPU backend). */
size_t kvp_engine_weight_bytes(const struct kvp_engine *e);

/* One sequence's share of a batch. */
struct kvp_engine_seq {
	void *const *blocks;          /* (n_blocks) its block table: host addresses on the
	                                 CPU, device addresses on CUDA (a pool attached with
	                                 kvp_pool_attach_device) */
	uint32_t n_blocks;            /* must cover positions 0 .. pos0+n-1 */
	const uint32_t *tokens;       /* (n) token ids, each < vocab */
	uint32_t n;                   /* rows, >= 1 */
	uint32_t pos0;                /* position of tokens[0] */
	uint32_t kv_write_from;       /* positions below hold K/V already: never written */
	float *logits;                /* (vocab) host: the last row's logits, or NULL */
};

/*
 * Forward every sequence of the batch. KVP_EINVAL when any sequence has n == 0, a token
 * id >= vocab, a table too short or positions over the model context: checked for the
 * whole batch before anything runs, so nothing is written then. KVP_ENOMEM, KVP_EIO
 * (a device error). After any other failure the K/V a sequence was to write may be
 * partly written; its logits are not.
 */
int kvp_engine_forward_batch(struct kvp_engine *e, const struct kvp_engine_seq *seqs,
			     uint32_t n_seqs);
/* A batch of one sequence, for callers that run one at a time. */
int kvp_engine_forward(struct kvp_engine *e, void *const *blocks, uint32_t n_blocks,
		       const uint32_t *tokens, uint32_t n, uint32_t pos0, uint32_t kv_write_from,
		       float *logits);

/* ---- sampling ------------------------------------------------------------------------ */

struct kvp_sampler {
	float temperature;            /* 0: greedy (argmax, lowest id on ties) */
	uint32_t top_k;               /* 0: off */
	float top_p;                  /* 1: off; (0, 1] */
	uint64_t rng;                 /* state, seeded from the request's seed */
};

void kvp_sampler_init(struct kvp_sampler *s, float temperature, uint32_t top_k, float top_p,
		      uint64_t seed);
/* Pick the next token from logits (vocab). scratch: room for vocab (float, uint32)
 * pairs, see kvp_sampler_scratch_bytes. */
uint32_t kvp_sample(struct kvp_sampler *s, const float *logits, uint32_t vocab, void *scratch);
size_t kvp_sampler_scratch_bytes(uint32_t vocab);

#endif
