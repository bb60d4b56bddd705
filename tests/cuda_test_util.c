/*
 * cuda_test_util.c - what the cuda_*.c files of test_cuda share: the test suites (each
 * .fini frees the test's device memory and stream, and removes its temporary
 * directory), the seeded generator, device memory, tables of device and host KV blocks,
 * and kvprefix-mkmodel. Declared in cuda_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "cuda_test_util.h"
#include "daemon_harness.h"
#include "kvp_device.h"
#include "kvp_store.h"

#ifndef KVP_MKMODEL_PATH
#error "KVP_MKMODEL_PATH must name the kvprefix-mkmodel binary"
#endif

/* ---- helpers ---------------------------------------------------------------------- */

static char g_dir[64];
static char g_why[256];
struct kvp_device_info ct_info;

uint64_t ct_splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

void *ct_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	cr_assert_not_null(p, "out of memory (%zu bytes)", n);
	return p;
}

void ct_make_prompt(uint32_t *tok, uint32_t n, uint32_t vocab, uint64_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		tok[i] = (uint32_t)(ct_splitmix(&seed) % vocab);
}

/* Skip the test unless a CUDA device is there; open device 0 when it is. */
void ct_need_gpu(void)
{
	char err[256] = "";
	int n, rc;

	g_why[0] = '\0';
	n = kvp_device_count(g_why, sizeof(g_why));
	if (n <= 0)
		cr_skip_test("no CUDA device: %s", g_why[0] ? g_why : "(no reason given)");
	rc = kvp_device_open(0, &ct_info, err, sizeof(err));
	cr_assert_eq(rc, 0, "kvp_device_open(0): %s: %s", kvp_strerror(rc), err);
}

/* ---- device memory, freed after each test (also after a failed assertion) ---------- */

#define MAX_DEV_BUFS 256
static void *g_dev[MAX_DEV_BUFS];
static int g_ndev;

void *ct_dev_alloc(size_t bytes)
{
	void *d;

	cr_assert_lt(g_ndev, MAX_DEV_BUFS);
	d = kvp_device_alloc(bytes ? bytes : 1);
	cr_assert_not_null(d, "kvp_device_alloc(%zu): %s", bytes, kvp_device_last_error());
	g_dev[g_ndev++] = d;
	return d;
}

void *ct_dev_from(const void *host, size_t bytes)
{
	void *d = ct_dev_alloc(bytes);
	int rc = kvp_device_upload(d, host, bytes);
	cr_assert_eq(rc, 0, "upload %zu bytes: %s (%s)", bytes, kvp_strerror(rc),
		     kvp_device_last_error());
	return d;
}

void ct_dev_to(void *host, const void *d, size_t bytes)
{
	int rc = kvp_device_download(host, d, bytes);
	cr_assert_eq(rc, 0, "download %zu bytes: %s (%s)", bytes, kvp_strerror(rc),
		     kvp_device_last_error());
}

void ct_dev_fill(void *d, int byte, size_t bytes)
{
	int rc = kvp_device_memset(d, byte, bytes);
	cr_assert_eq(rc, 0, "memset: %s (%s)", kvp_strerror(rc), kvp_device_last_error());
}

static void *g_stream;

void *ct_stream(void)
{
	if (!g_stream) {
		int rc = kvp_device_stream_create(&g_stream);
		cr_assert_eq(rc, 0, "stream: %s (%s)", kvp_strerror(rc), kvp_device_last_error());
	}
	return g_stream;
}

static void dev_release_all(void)
{
	while (g_ndev > 0)
		kvp_device_free(g_dev[--g_ndev]);
	if (g_stream)
		kvp_device_stream_destroy(g_stream);
	g_stream = NULL;
}

double ct_max_abs(const float *x, size_t n)
{
	double m = 0.0;
	for (size_t i = 0; i < n; i++)
		m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
	return m;
}

/* max |a - b| / scale; NaN anywhere counts as infinity. */
double ct_max_rel_diff(const float *a, const float *b, size_t n, double scale, size_t *at)
{
	double m = 0.0;

	if (at)
		*at = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - (double)b[i]) / scale;
		if (!(d <= m)) {
			m = isnan(d) ? INFINITY : d;
			if (at)
				*at = i;
		}
	}
	return m;
}

/* ---- a table of device blocks from a pool attached with kvp_pool_attach_device ----- */

/* A pool of cap blocks of bb bytes on the device, every block poisoned with 0xFF (NaN as
 * f16), so that a position read before it was written shows as NaN. */
struct kvp_pool *ct_dpool_new(uint32_t cap, size_t bb)
{
	struct kvp_pool *p;
	int rc;

	cr_assert_eq(kvp_pool_create(cap, &p), 0);
	rc = kvp_pool_attach_device(p, bb);
	cr_assert_eq(rc, 0, "kvp_pool_attach_device(%zu bytes x %u): %s (%s)", bb, cap,
		     kvp_strerror(rc), kvp_device_last_error());
	cr_assert(kvp_pool_on_device(p));
	ct_dev_fill(kvp_pool_block_data(p, 0), 0xFF, (size_t)cap * bb);
	return p;
}

/* Make t a table of n blocks of p: its first `shared` entries kept (blocks shared with
 * another table), the rest newly taken from p in an order shuffled by seed, poisoned. */
void ct_dtable_take(struct dtable *t, struct kvp_pool *p, uint32_t shared, uint32_t n,
		    uint64_t seed)
{
	uint32_t fresh = n - shared;

	cr_assert_leq(n, 256);
	cr_assert_leq(shared, n);
	t->pool = p;
	t->n = n;
	for (uint32_t i = shared; i < n; i++) {
		int rc = kvp_pool_alloc(p, &t->ids[i]);
		cr_assert_eq(rc, 0, "pool: %s", kvp_strerror(rc));
	}
	for (uint32_t i = fresh; i > 1; i--) {
		uint32_t j = (uint32_t)(ct_splitmix(&seed) % i), tmp = t->ids[shared + i - 1];
		t->ids[shared + i - 1] = t->ids[shared + j];
		t->ids[shared + j] = tmp;
	}
	for (uint32_t i = 0; i < n; i++) {
		t->blocks[i] = kvp_pool_block_data(p, t->ids[i]);
		cr_assert_not_null(t->blocks[i]);
		if (i >= shared)
			ct_dev_fill(t->blocks[i], 0xFF, kvp_pool_block_bytes(p));
	}
}

/* Give back blocks from index `from` on. */
void ct_dtable_put(struct dtable *t, uint32_t from)
{
	for (uint32_t i = from; i < t->n; i++)
		cr_assert_eq(kvp_pool_put(t->pool, t->ids[i]), 0);
	t->n = from;
}

void ct_dtable_read(const struct dtable *t, uint32_t i, void *dst)
{
	int rc = kvp_pool_block_read(t->pool, t->ids[i], dst);
	cr_assert_eq(rc, 0, "kvp_pool_block_read(block %u): %s (%s)", t->ids[i], kvp_strerror(rc),
		     kvp_device_last_error());
}

void ct_htable_new(struct htable *t, uint32_t n, size_t bb)
{
	cr_assert_leq(n, 256);
	t->n = n;
	t->bb = bb;
	for (uint32_t i = 0; i < n; i++) {
		void *p = NULL;
		cr_assert_eq(posix_memalign(&p, 64, (bb + 63) / 64 * 64), 0);
		memset(p, 0xFF, bb);
		t->blocks[i] = p;
	}
}

void ct_htable_free(struct htable *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		free(t->blocks[i]);
	t->n = 0;
}

static void suite_fini(void)
{
	dev_release_all();
	if (g_dir[0])
		kvp_tmpdir_remove(g_dir);
	g_dir[0] = '\0';
}

static void suite_init_dir(void)
{
	cr_assert_eq(kvp_tmpdir_make(g_dir, sizeof(g_dir), "cuda"), 0);
}

TestSuite(device, .fini = suite_fini);
TestSuite(pool, .fini = suite_fini);
TestSuite(engine, .init = suite_init_dir, .fini = suite_fini);
TestSuite(kernels, .fini = suite_fini);
TestSuite(model, .init = suite_init_dir, .fini = suite_fini);
TestSuite(cache, .init = suite_init_dir, .fini = suite_fini);

/* kvprefix-mkmodel --out DIR/name ARGS; the path in path. */
void ct_mkmodel(const char *name, const char *args, char *path, size_t cap)
{
	char cmd[1024];
	int st;

	snprintf(path, cap, "%s/%s", g_dir, name);
	snprintf(cmd, sizeof(cmd), "'%s' --quiet --out '%s' %s", KVP_MKMODEL_PATH, path, args);
	st = system(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mkmodel %s failed", args);
}
