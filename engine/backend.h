/*
 * backend.h - private to the engine: the table of operations a backend implements,
 * and the backends this build has.
 *
 *   kvp_engine_create ──▶ backend->create(model, cfg) ──▶ state
 *   kvp_engine_forward_batch ──(whole batch checked)──▶ backend->forward(state, seqs)
 *   kvp_engine_destroy ──▶ backend->destroy(state)
 *
 * engine.c owns everything backends share: picking the backend, validating a batch
 * (sizes, positions, token ids) before a backend sees it. A backend computes, and says
 * how many bytes a block of its KV takes. Entries marked optional may be NULL; engine.c then answers with the
 * documented default (kvp_engine.h).
 *
 * Each backend lives in its own folder and compiles only there (engine/cpu,
 * engine/cuda); a build without CUDA links engine/backend_none_cuda.c instead, whose
 * probe and create say so. Nothing outside a backend's folder includes its headers.
 */
#ifndef KVP_ENGINE_BACKEND_H
#define KVP_ENGINE_BACKEND_H

#include "kvp_engine.h"

struct kvp_backend_ops {
	const char *name;
	/* KV dtypes the backend stores (bit 1 << enum kvp_kv_dtype). */
	unsigned kv_dtypes;
	/* Can it run here (kvp_engine_probe)? Optional: NULL is "always". */
	int (*probe)(int device, char *desc, size_t desclen);
	/* State for model m under cfg (already checked: threads, block_tokens, max_batch
	 * >= 1, a dtype in kv_dtypes). 0, or a status with one line in err. */
	int (*create)(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      void **state, char *err, size_t errlen);
	void (*destroy)(void *state);
	/* Bytes of one KV block: the layout of kvp_engine.h in the dtype the backend
	 * stores. */
	size_t (*block_bytes)(void *state);
	/* Forward a batch engine.c has checked (kvp_engine_forward_batch). */
	int (*forward)(void *state, const struct kvp_engine_seq *seqs, uint32_t n_seqs);
	/* Optional figures (kvp_engine.h). */
	struct kvp_threadpool *(*threads)(void *state);
	const char *(*kernels)(void *state);
	double (*peak_gflops)(void *state);
	size_t (*weight_bytes)(void *state);
};

extern const struct kvp_backend_ops kvp_backend_cpu;    /* engine/cpu/backend_cpu.c */
extern const struct kvp_backend_ops kvp_backend_cuda;   /* engine/cuda/backend_cuda.c, or
                                                           engine/backend_none_cuda.c */

#endif
