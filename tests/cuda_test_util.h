/*
 * cuda_test_util.h - what the cuda_*.c files of test_cuda share (cuda_test_util.c): the
 * test suites, the seeded generator, device memory freed after each test, tables of
 * device and host KV blocks, and kvprefix-mkmodel.
 *
 * test_cuda holds the CUDA backend (device/kvp_device.h, engine/cuda/kvp_cuda.h, the
 * CUDA engine behind kvp_engine.h) to the CPU reference (engine/cpu), each within a
 * stated tolerance (DESIGN: CPU is the reference backend; every CUDA op is tested
 * against it):
 *
 *   device   (cuda_device.c) kvp_device_count: 0 devices come with a one-line reason
 *            (runs everywhere); kvp_device_built agrees with this build's KVP_TEST_CUDA.
 *            With a GPU: the info of device 0, copies, memset, streams, a missing index
 *            refused
 *   pool     (cuda_device.c; GPU) a pool of device blocks: block i at base + i *
 *            block_bytes, bytes in and out through kvp_pool_block_read/write,
 *            neighbours untouched
 *   engine   (cuda_device.c) KVP_BACKEND_CUDA where no device is: create fails with a
 *            status and a reason, and leaves *out NULL (runs wherever there is no device)
 *   kernels  (cuda_kernels.c; GPU, CUDA build) every launcher against the kvp_cpu op:
 *            embed (exact), rmsnorm, rope, kv_store (byte for byte against
 *            kvp_cpu_kv_store in f16, read back through kvp_pool_block_read), attention
 *            (prefill 300 rows at pos0 0 and 100, decode at pos 1000; head dims 64, 80,
 *            128, 256; GQA 4; block tables of 16 and 256 tokens in a shuffled order,
 *            unwritten positions NaN), swiglu, f32 <-> f16/bf16 (bit for bit), cuBLAS
 *            GEMM in f16, bf16 and f32 with accumulate on and off against
 *            kvp_cpu_matmul. Each tolerance is stated where it is checked, relative to
 *            max |reference|
 *   model    (cuda_model.c; GPU) a random f16 model from kvprefix-mkmodel (weight std
 *            0.08): the CUDA engine's logits within 1e-2 of the CPU engine's (f16 KV on
 *            both) over a 200-token prompt and 16 greedy steps, the same 16 greedy
 *            tokens, and the same K/V in the blocks; a bf16 model's logits within 5e-2
 *   cache    (cuda_model.c; GPU) DESIGN invariant 5 on CUDA: prompts of k*B-1, k*B,
 *            k*B+1 and 1 tokens run cold, then with 0 %, ~50 % and 100 % of their full
 *            blocks shared from the cold run: the same greedy tokens, logits within
 *            5e-3, and the shared blocks byte for byte as they were
 *
 * Where there is no device (or the build has no CUDA) every GPU test is skipped and
 * says why: kvp_device_count's reason, or "built without CUDA".
 *
 * Every function here fails the calling test through criterion's asserts; none returns
 * an error.
 */
#ifndef KVP_CUDA_TEST_UTIL_H
#define KVP_CUDA_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "kvp_device.h"
#include "kvp_store.h"

/* 1 when this build has the CUDA backend (tests/CMakeLists.txt sets it from the top
 * CMakeLists' KVP_CUDA_ENABLED); the kernel launchers exist only then. */
#ifndef KVP_TEST_CUDA
#define KVP_TEST_CUDA 0
#endif

/* ---- helpers ---------------------------------------------------------------------- */

/* Device 0, as ct_need_gpu opened it. */
extern struct kvp_device_info ct_info;

/* splitmix64: *s is the state. */
uint64_t ct_splitmix(uint64_t *s);
/* malloc(n), asserted; n = 0 gives a byte. */
void *ct_xmalloc(size_t n);
/* n tokens below vocab from seed. */
void ct_make_prompt(uint32_t *tok, uint32_t n, uint32_t vocab, uint64_t seed);
/* Skip the test unless a CUDA device is there; open device 0 (into ct_info) when it is. */
void ct_need_gpu(void);

/* ---- device memory, freed after each test (also after a failed assertion) ---------- */

/* Device buffers, freed by the suites' .fini. */
void *ct_dev_alloc(size_t bytes);
/* A device copy of host[0..bytes). */
void *ct_dev_from(const void *host, size_t bytes);
/* Download d[0..bytes) into host. */
void ct_dev_to(void *host, const void *d, size_t bytes);
/* memset on the device. */
void ct_dev_fill(void *d, int byte, size_t bytes);
/* The test's stream, created on first use, destroyed by the suites' .fini. */
void *ct_stream(void);

/* max |x| */
double ct_max_abs(const float *x, size_t n);
/* max |a - b| / scale; NaN anywhere counts as infinity. *at (may be NULL) gets where. */
double ct_max_rel_diff(const float *a, const float *b, size_t n, double scale, size_t *at);

/* ---- a table of device blocks from a pool attached with kvp_pool_attach_device ----- */

struct dtable {
	struct kvp_pool *pool;
	uint32_t ids[256];
	void *blocks[256];     /* device addresses, in sequence order */
	uint32_t n;
};

/* A pool of cap blocks of bb bytes on the device, every block poisoned with 0xFF (NaN as
 * f16), so that a position read before it was written shows as NaN. */
struct kvp_pool *ct_dpool_new(uint32_t cap, size_t bb);
/* Make t a table of n blocks of p: its first `shared` entries kept (blocks shared with
 * another table), the rest newly taken from p in an order shuffled by seed, poisoned. */
void ct_dtable_take(struct dtable *t, struct kvp_pool *p, uint32_t shared, uint32_t n,
		    uint64_t seed);
/* Give back blocks from index `from` on. */
void ct_dtable_put(struct dtable *t, uint32_t from);
/* Block i's bytes into dst, through kvp_pool_block_read. */
void ct_dtable_read(const struct dtable *t, uint32_t i, void *dst);

/* A host block table: n blocks of bb bytes, 64-byte aligned, poisoned with 0xFF. */
struct htable {
	void *blocks[256];
	uint32_t n;
	size_t bb;
};

void ct_htable_new(struct htable *t, uint32_t n, size_t bb);
void ct_htable_free(struct htable *t);

/* ---- models --------------------------------------------------------------------------- */

/* kvprefix-mkmodel --out DIR/name ARGS into the suite's temporary directory (suites
 * engine, model and cache); the path in path. */
void ct_mkmodel(const char *name, const char *args, char *path, size_t cap);

#endif
