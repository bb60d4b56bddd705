/*
 * backend_none_cuda.c - the CUDA entry of the engine's table (backend.h) in a build
 * without CUDA (KVP_CUDA=OFF, or AUTO without nvcc): probe and create say so.
 */
#include "backend.h"

#include <stdio.h>

static const char no_cuda[] = "this build has no CUDA backend (configure with -DKVP_CUDA=ON)";

static int none_probe(int device, char *desc, size_t desclen)
{
	(void)device;
	if (desc && desclen)
		snprintf(desc, desclen, "%s", no_cuda);
	return KVP_EUNSUPPORTED;
}

static int none_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		       void **state, char *err, size_t errlen)
{
	(void)m;
	(void)cfg;
	(void)state;
	return none_probe(0, err, errlen);
}

static void none_destroy(void *state)
{
	(void)state;
}

static size_t none_block_bytes(void *state)
{
	(void)state;
	return 0;
}

static int none_forward(void *state, const struct kvp_engine_seq *seqs, uint32_t n_seqs)
{
	(void)state;
	(void)seqs;
	(void)n_seqs;
	return KVP_EUNSUPPORTED;
}

const struct kvp_backend_ops kvp_backend_cuda = {
	.name = "cuda",
	.kv_dtypes = 1u << 1,   /* KVP_KV_F16, as the real backend: create explains */
	.probe = none_probe,
	.create = none_create,
	.destroy = none_destroy,
	.block_bytes = none_block_bytes,
	.forward = none_forward,
};
