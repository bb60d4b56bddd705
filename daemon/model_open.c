/*
 * model_open.c - engine mode's start: where the engine runs, the model file, its
 * fingerprint (which names the cache's namespaces), the engine, and the pool's size.
 *
 *   --backend ──probe──▶ cpu | cuda     (before the model: a missing GPU is found
 *                                        before a large file is read)
 *   --model ──▶ kvp_model_load ──▶ XXH3-64 of the file ──▶ ns_name "NAME@FINGERPRINT"
 *           ──▶ kvp_engine_create ──▶ capacity = --pool-mb / block bytes (unless
 *                                     --capacity-blocks was given)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvp_engine.h"
#include "kvp_gguf.h"
#include "kvp_log.h"
#include "server.h"

/* XXH3-64 of the whole model file: blocks of different weights never share a namespace,
 * even when two files carry the same general.name. 0, or KVP_EIO with errno set. */
static int model_fingerprint(const char *path, uint64_t *fp)
{
	struct stat st;
	void *m;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return KVP_EIO;
	if (fstat(fd, &st) != 0 || st.st_size <= 0) {
		close(fd);
		return KVP_EIO;
	}
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return KVP_EIO;
	*fp = XXH3_64bits(m, (size_t)st.st_size);
	munmap(m, (size_t)st.st_size);
	return KVP_OK;
}

/* --backend: where the engine runs; dev says where, for the log. */
static int choose_backend(const struct kvp_config *cfg, enum kvp_backend *out, char *dev,
			  size_t devlen)
{
	char why[256];

	*out = KVP_BACKEND_CPU;
	dev[0] = '\0';
	if (cfg->backend == KVP_DAEMON_BACKEND_AUTO && cfg->kv_dtype != KVP_KV_F16) {
		kvp_info("--kv-dtype f32: using the CPU backend (the CUDA backend keeps KV in f16)");
	} else if (cfg->backend != KVP_DAEMON_BACKEND_CPU) {
		if (kvp_engine_probe(KVP_BACKEND_CUDA, why, sizeof(why)) == KVP_OK) {
			*out = KVP_BACKEND_CUDA;
			snprintf(dev, devlen, " on %s", why);
		} else if (cfg->backend == KVP_DAEMON_BACKEND_CUDA) {
			kvp_err("--backend cuda: no CUDA device found: %s", why);
			return KVP_ENOTFOUND;
		} else {
			kvp_info("no CUDA device found (%s): using the CPU backend", why);
		}
	}
	if (*out == KVP_BACKEND_CUDA && cfg->kv_dtype != KVP_KV_F16) {
		kvp_err("--kv-dtype f32 is for the CPU backend; the CUDA backend keeps KV in f16");
		return KVP_EINVAL;
	}
	return KVP_OK;
}

/* Load the model and name the namespaces after it. */
static int load_model(struct server *s)
{
	const char *path = s->cfg->model_path;
	char err[512];
	uint64_t fp = 0;
	int rc = kvp_model_load(path, &s->model, err, sizeof(err));

	if (rc) {
		kvp_err("cannot load model %s: %s", path, err);
		return rc;
	}
	rc = model_fingerprint(path, &fp);
	if (rc) {
		kvp_err("cannot read %s to fingerprint it: %s", path, strerror(errno));
		return rc;
	}
	s->name = s->model->cfg.name;
	snprintf(s->ns_name, sizeof(s->ns_name), "%s@%016llx", s->model->cfg.name,
		 (unsigned long long)fp);
	return KVP_OK;
}

/* Resident memory of this process in MiB, or -1 where /proc says nothing. */
static double rss_mib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long long size, resident;
	int n;

	if (!f)
		return -1;
	n = fscanf(f, "%llu %llu", &size, &resident);
	fclose(f);
	if (n != 2)
		return -1;
	return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

/* "q4_k 169, q6_k 1, f32 65": how many tensors of each type the engine reads. */
static void format_types(const struct kvp_model_config *mc, char *out, size_t n)
{
	size_t used = 0;

	out[0] = '\0';
	for (uint32_t t = 0; t < sizeof(mc->type_count) / sizeof(mc->type_count[0]); t++) {
		char unknown[16];

		if (!mc->type_count[t] || used >= n)
			continue;
		int w = snprintf(out + used, n - used, "%s%s %u", used ? ", " : "",
				 kvp_ggml_type_name(t, unknown, sizeof(unknown)), mc->type_count[t]);
		if (w < 0)
			break;
		used += (size_t)w;
	}
}

/* What was loaded, and where it runs. */
static void log_engine(const struct server *s, uint32_t capacity, const char *dev)
{
	const struct kvp_config *cfg = s->cfg;
	const struct kvp_model_config *mc = &s->model->cfg;
	const size_t bb = kvp_engine_block_bytes(s->engine);
	const double pool_mib = (double)capacity * (double)bb / 1048576.0;
	char where[400], types[256];

	format_types(mc, types, sizeof(types));
	kvp_info("model %s: %s, %llu parameters, vocab %u, dim %u, %u layers, "
		 "%u heads (%u kv), ffn %u, context %u%s",
		 mc->name, mc->arch_name, (unsigned long long)mc->n_params, mc->vocab, mc->dim,
		 mc->n_layers, mc->n_heads, mc->n_kv_heads, mc->ffn, mc->ctx,
		 mc->ctx < mc->ctx_file ? " (the sliding window)" : "");
	kvp_info("weights: %.1f MiB in the file, used in place; tensors %s; resident after "
		 "load %.1f MiB (the file's pages come in as the engine first reads them)",
		 (double)mc->weight_bytes / 1048576.0, types, rss_mib());
	if (kvp_engine_weight_bytes(s->engine))
		kvp_info("weights held by the %s backend: %.1f MiB (converted from the file's "
			 "types when it started)", kvp_engine_kernels(s->engine),
			 (double)kvp_engine_weight_bytes(s->engine) / 1048576.0);
	if (kvp_engine_backend(s->engine) == KVP_BACKEND_CUDA)
		snprintf(where, sizeof(where), "cuda%s", dev);
	else
		snprintf(where, sizeof(where), "cpu, %d threads", cfg->threads);
	kvp_info("KV %s: %zu bytes per token; pool %u blocks of %u tokens (%.1f MiB); backend %s",
		 kvp_kv_dtype_name(kvp_engine_kv_dtype(s->engine)),
		 kvp_engine_token_bytes(s->engine), capacity, cfg->block_tokens, pool_mib, where);
}

int model_open(struct server *s, uint32_t *capacity)
{
	const struct kvp_config *cfg = s->cfg;
	char err[512] = "", dev[300];
	struct kvp_engine_config ec = {
		.threads = cfg->threads,
		.kv_dtype = (enum kvp_kv_dtype)cfg->kv_dtype,
		.block_tokens = cfg->block_tokens,
		.max_batch = cfg->max_batch_tokens,
		.err = err,
		.errlen = sizeof(err),
	};
	size_t bb;
	int rc = choose_backend(cfg, &ec.backend, dev, sizeof(dev));

	if (rc == KVP_OK)
		rc = load_model(s);
	if (rc)
		return rc;
	rc = kvp_engine_create(s->model, &ec, &s->engine);
	if (rc) {
		kvp_err("cannot create the %s engine: %s%s%s", kvp_backend_name(ec.backend),
			kvp_strerror(rc), err[0] ? ": " : "", err);
		return rc;
	}
	bb = kvp_engine_block_bytes(s->engine);
	if (!cfg->capacity_given) {
		uint64_t n = ((uint64_t)cfg->pool_mb << 20) / bb;

		if (n == 0) {
			kvp_err("--pool-mb %u holds no block of %zu bytes", cfg->pool_mb, bb);
			return KVP_EINVAL;
		}
		*capacity = n > (1u << 31) ? (1u << 31) : (uint32_t)n;
	}
	log_engine(s, *capacity, dev);
	return KVP_OK;
}
