/*
 * kvp_engine.h - the forward pass of a loaded model over a paged block table, and
 * sampling. Two backends behind the same calls: the CPU (the reference, engine/cpu) and
 * CUDA (engine/cuda, when built with KVP_CUDA), picked by kvp_engine_config.backend.
 *
 * KV of a sequence lives in store blocks (layout in engine/cpu/kvp_cpu.h); block i of
 * the table holds positions i*B .. i*B+B-1. A forward call computes rows for tokens at
 * positions pos0 .. pos0+n-1; positions >= kv_write_from get their K/V written into
 * the blocks, positions below are taken as already there (a cached prefix is never
 * written: another request may be reading it).
 *
 * Threading: an engine is used by one thread at a time (the daemon's engine thread);
 * it drives its own pool of compute threads.
 */
#ifndef KVP_ENGINE_H
#define KVP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_cpu.h"
#include "kvp_model.h"

struct kvp_engine;

enum kvp_backend { KVP_BACKEND_CPU = 0, KVP_BACKEND_CUDA = 1 };

struct kvp_engine_config {
	enum kvp_backend backend;     /* CUDA: KV in f16 only, blocks are device memory */
	int device;                   /* CUDA device index (0) */
	char *err;                    /* optional: why create failed, one line */
	size_t errlen;
	int threads;                  /* compute threads, >= 1 */
	enum kvp_kv_dtype kv_dtype;
	uint32_t block_tokens;
	uint32_t max_batch;           /* most rows one internal step computes (e.g. 512) */
};

int kvp_engine_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      struct kvp_engine **out);
void kvp_engine_destroy(struct kvp_engine *e);
const struct kvp_model *kvp_engine_model(const struct kvp_engine *e);
/* Bytes of KV per block, and per token. */
size_t kvp_engine_block_bytes(const struct kvp_engine *e);
size_t kvp_engine_token_bytes(const struct kvp_engine *e);
/* The CPU backend's compute threads (NULL on CUDA). */
struct kvp_threadpool *kvp_engine_threads(struct kvp_engine *e);
enum kvp_backend kvp_engine_backend(const struct kvp_engine *e);
const char *kvp_backend_name(enum kvp_backend b);   /* "cpu", "cuda" */

/*
 * Forward tokens[0..n) at positions pos0.. over blocks[0..n_blocks), which must cover
 * positions 0 .. pos0+n-1. logits (vocab floats) receives the last row's logits when
 * non-NULL. With the CUDA backend the blocks are device pointers (a pool attached with
 * kvp_pool_attach_device) and logits still host memory. KVP_EINVAL for n == 0, a token id >= vocab, a table too short or
 * positions over the model context (nothing is written then); KVP_ENOMEM.
 */
int kvp_engine_forward(struct kvp_engine *e, void *const *blocks, uint32_t n_blocks,
		       const uint32_t *tokens, uint32_t n, uint32_t pos0, uint32_t kv_write_from,
		       float *logits);

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
