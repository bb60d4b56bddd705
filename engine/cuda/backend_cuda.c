/*
 * backend_cuda.c - the CUDA backend's entry in the engine's table (backend.h): probe
 * for a device, and the CUDA engine of engine_cuda.c behind create / destroy / forward.
 */
#include "backend.h"
#include "kvp_cuda.h"
#include "kvp_device.h"

#include <stdio.h>

static int cuda_probe(int device, char *desc, size_t desclen)
{
	struct kvp_device_info info;
	char why[256] = "", err[256] = "";
	int rc;

	if (kvp_device_count(why, sizeof(why)) <= 0) {
		if (desc && desclen)
			snprintf(desc, desclen, "%s", why);
		return kvp_device_built() ? KVP_ENOTFOUND : KVP_EUNSUPPORTED;
	}
	rc = kvp_device_open(device, &info, err, sizeof(err));
	if (rc) {
		if (desc && desclen)
			snprintf(desc, desclen, "%s", err[0] ? err : kvp_strerror(rc));
		return rc;
	}
	if (desc && desclen)
		snprintf(desc, desclen, "CUDA device %d (%s, sm_%d%d, %.1f GiB)", device, info.name,
			 info.sm_major, info.sm_minor, (double)info.mem_total / 1073741824.0);
	return KVP_OK;
}

static int cuda_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		       void **state, char *err, size_t errlen)
{
	struct kvp_cuda_engine *e;
	int rc = kvp_cuda_engine_create(m, cfg, &e, err, errlen);

	if (rc == KVP_OK)
		*state = e;
	return rc;
}

static void cuda_destroy(void *state)
{
	kvp_cuda_engine_destroy(state);
}

static size_t cuda_block_bytes(void *state)
{
	return kvp_cuda_engine_block_bytes(state);
}

static int cuda_forward(void *state, const struct kvp_engine_seq *seqs, uint32_t n_seqs)
{
	int rc = KVP_OK;

	for (uint32_t i = 0; i < n_seqs && rc == KVP_OK; i++)
		rc = kvp_cuda_engine_forward(state, seqs[i].blocks, seqs[i].n_blocks,
					     seqs[i].tokens, seqs[i].n, seqs[i].pos0,
					     seqs[i].kv_write_from, seqs[i].logits);
	return rc;
}

static double cuda_peak_gflops(void *state)
{
	return kvp_cuda_engine_peak_tflops(state) * 1000.0;
}

static size_t cuda_weight_bytes(void *state)
{
	return kvp_cuda_engine_weight_bytes(state);
}

const struct kvp_backend_ops kvp_backend_cuda = {
	.name = "cuda",
	.kv_dtypes = 1u << KVP_KV_F16,
	.probe = cuda_probe,
	.create = cuda_create,
	.destroy = cuda_destroy,
	.block_bytes = cuda_block_bytes,
	.forward = cuda_forward,
	.peak_gflops = cuda_peak_gflops,
	.weight_bytes = cuda_weight_bytes,
};
