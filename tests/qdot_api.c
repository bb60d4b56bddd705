/*
 * qdot_api.c - the rest of the weight kernels' contract (kvp_cpu.h):
 *
 *   no_allocation   the dot path allocates nothing: with a pool once it is warm, and
 *                   with no pool while A's blocks fit the stack; the GEMM path nothing on
 *                   a warm pool. Counted by wrapping the allocator at link time
 *                   (-Wl,--wrap=malloc ...: every call from the engine's objects lands
 *                   in the __wrap_ functions below)
 *   weight_row      kvp_cpu_weight_row is kvp_dequant_row of the row, every type
 *   errors          bad descriptors, types the engine does not compute with, m < 0,
 *                   short leading dimensions: refused, C untouched; M, N or K zero
 */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "qdot_util.h"

/* ---- counting allocations ------------------------------------------------------------ */

static _Atomic int counting, allocs;

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t s);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t s);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t a, size_t n);
int __wrap_posix_memalign(void **p, size_t a, size_t n);

static void count(void)
{
	if (atomic_load(&counting))
		atomic_fetch_add(&allocs, 1);
}

void *__wrap_malloc(size_t n)
{
	count();
	return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t s)
{
	count();
	return __real_calloc(n, s);
}

void *__wrap_realloc(void *p, size_t n)
{
	count();
	return __real_realloc(p, n);
}

void *__wrap_aligned_alloc(size_t a, size_t n)
{
	count();
	return __real_aligned_alloc(a, n);
}

int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
	count();
	return __real_posix_memalign(p, a, n);
}

/* Allocations made by one kvp_cpu_matmul_w call. */
static int allocs_of(struct kvp_threadpool *tp, const float *a, const struct kvp_cpu_weight *w,
		     float *c, int m)
{
	atomic_store(&allocs, 0);
	atomic_store(&counting, 1);
	int rc = kvp_cpu_matmul_w(tp, a, (size_t)w->k, w, c, (size_t)w->n, m, false);
	atomic_store(&counting, 0);
	cr_assert_eq(rc, 0);
	return atomic_load(&allocs);
}

Test(matmul_w, no_allocation)
{
	const int n = 64, k = 2048;
	struct kvp_threadpool *tp;
	float *a = qt_rand_floats((size_t)32 * k), *c = qt_alloc((size_t)32 * n * sizeof(float));
	char buf[16];

	/* a malloc made here must be seen, or the test proves nothing */
	atomic_store(&counting, 1);
	void *volatile probe = malloc(16);
	atomic_store(&counting, 0);
	free(probe);
	cr_assert_eq(atomic_load(&allocs), 1, "the allocator is not wrapped");

	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	for (int t = 0; t < qt_n_types; t++) {
		struct kvp_cpu_weight w;
		const char *name = kvp_ggml_type_name(qt_types[t], buf, sizeof(buf));

		qt_rand_weight(&w, qt_types[t], n, k, 0, false);
		for (int m = 1; m <= KVP_CPU_DOT_MAX_M; m++) {
			allocs_of(tp, a, &w, c, m);     /* warm: the pool's scratch grows */
			cr_assert_eq(allocs_of(tp, a, &w, c, m), 0, "%s m %d, pool", name, m);
		}
		/* no pool: A's blocks on the stack (2 rows of 2048 fit 16 KiB) */
		cr_assert_eq(allocs_of(NULL, a, &w, c, 1), 0, "%s m 1, no pool", name);
		cr_assert_eq(allocs_of(NULL, a, &w, c, 2), 0, "%s m 2, no pool", name);
		/* prefill on a warm pool */
		allocs_of(tp, a, &w, c, 32);
		cr_assert_eq(allocs_of(tp, a, &w, c, 32), 0, "%s m 32, pool", name);
		free((void *)w.data);
	}
	kvp_threadpool_destroy(tp);
	free(a);
	free(c);
}

/* ---- rows of W -------------------------------------------------------------------------- */

Test(matmul_w, weight_row_is_dequant_row)
{
	for (int t = 0; t < qt_n_types; t++) {
		const int k = 512;
		struct kvp_cpu_weight w;
		float *got = qt_alloc(k * sizeof(float)), *want = qt_alloc(k * sizeof(float));

		qt_rand_weight(&w, qt_types[t], 5, k, 4, false);
		for (int r = 0; r < w.n; r++) {
			cr_assert_eq(kvp_cpu_weight_row(&w, r, got), 0);
			cr_assert_eq(kvp_dequant_row(w.type, (const char *)w.data + r * w.row_bytes,
						     want, k), 0);
			cr_assert(memcmp(got, want, k * sizeof(float)) == 0);
		}
		cr_assert_eq(kvp_cpu_weight_row(&w, -1, got), KVP_EINVAL);
		cr_assert_eq(kvp_cpu_weight_row(&w, w.n, got), KVP_EINVAL);
		free((void *)w.data);
		free(got);
		free(want);
	}
}

/* ---- errors ------------------------------------------------------------------------------ */

Test(matmul_w, refusals_leave_c_untouched)
{
	static uint8_t data[4096];
	float a[2 * 256] = { 0 }, c[2 * 8], c0[2 * 8];
	const struct kvp_cpu_weight ok = { data, KVP_GGML_Q4_K, 8, 256, 144 };
	struct kvp_cpu_weight w;

	for (int i = 0; i < 16; i++)
		c[i] = c0[i] = (float)i;
	w = ok;
	w.type = KVP_GGML_Q8_K;         /* activations only */
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EUNSUPPORTED);
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &w, c, 8, 1, false), KVP_EUNSUPPORTED);
	w.type = 16;                    /* IQ2_XXS: no layout here */
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EUNSUPPORTED);
	w = ok;
	w.k = 200;                      /* not whole super-blocks */
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &w, c, 8, 1, false), KVP_EINVAL);
	w = ok;
	w.row_bytes = 143;
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EINVAL);
	w = ok;
	w.n = -1;
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EINVAL);
	w = ok;
	w.data = NULL;
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EINVAL);
	w = (struct kvp_cpu_weight){ data, KVP_GGML_F16, 8, 16, 33 };  /* odd F16 row */
	cr_assert_eq(kvp_cpu_weight_check(&w), KVP_EINVAL);
	cr_assert_eq(kvp_cpu_weight_check(NULL), KVP_EINVAL);
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &ok, c, 8, -1, false), KVP_EINVAL);
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 255, &ok, c, 8, 1, false), KVP_EINVAL);
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &ok, c, 7, 1, false), KVP_EINVAL);
	cr_assert(memcmp(c, c0, sizeof(c)) == 0);

	/* nothing to do: M or N zero leaves C alone, K zero makes it 0 (or leaves it) */
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &ok, c, 8, 0, false), 0);
	w = ok;
	w.n = 0;
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &w, c, 8, 2, false), 0);
	cr_assert(memcmp(c, c0, sizeof(c)) == 0);
	w = (struct kvp_cpu_weight){ NULL, KVP_GGML_Q8_0, 8, 0, 0 };
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &w, c, 8, 2, true), 0);
	cr_assert(memcmp(c, c0, sizeof(c)) == 0);
	cr_assert_eq(kvp_cpu_matmul_w(NULL, a, 256, &w, c, 8, 2, false), 0);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(c[i], 0.0f);
}
