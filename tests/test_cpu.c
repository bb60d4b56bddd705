/*
 * test_cpu.c - the CPU backend's kernels (engine/cpu/kvp_cpu.h) against naive
 * double-precision references written here, on every ISA path this CPU can run
 * (kvp_cpu_force_isa: generic always; avx2 and avx512 where present).
 *
 *   pool       1, 2, 3 threads: every ith runs exactly once per run, many runs
 *   matmul     many (m, n, k) incl. 1 and sizes off the tile grid, padded leading
 *              dimensions, accumulate on/off, with and without a pool;
 *              |c - ref| <= 1e-5 * (sum_k |a w| + |c0|)
 *   packed     kvp_cpu_matmul_packed on the same shapes: the same tolerance, and bit for
 *              bit kvp_cpu_matmul on the original W; packed under one ISA, run under
 *              another (reads the original)
 *   rmsnorm    relative 1e-5;  rope: the formula in double, 1e-6 of the pair's norm
 *   swiglu     relative 1e-6;  add: exact
 *   f16        all 65536 halves: decode == reference, f16 -> f32 -> f16 exact (NaN stays
 *              NaN); random floats round to nearest even like a double reference
 *   attention  shuffled block tables, block_tokens 1/16/64, f32 and f16 KV, n 1 and
 *              many, pos0 0 and > 0, GQA 1/2/4, against softmax(q k^T / sqrt(d)) v in
 *              double on the contiguous K/V: 1e-5 (f32 KV) and 2e-3 (f16 KV)
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_cpu.h"

/* ---- helpers --------------------------------------------------------------------------- */

static const char *const isas[] = { "generic", "avx2", "avx512" };
#define N_ISAS 3

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float frand(void)
{
	return (float)((double)(rng_next() >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static float *rand_buf(size_t n)
{
	float *p = malloc((n ? n : 1) * sizeof(float));
	cr_assert(p);
	for (size_t i = 0; i < n; i++)
		p[i] = frand();
	return p;
}

/* Switch to isa; false when this CPU lacks it (the caller skips it). */
static bool use_isa(const char *isa)
{
	int rc = kvp_cpu_force_isa(isa);
	if (rc == KVP_EUNSUPPORTED)
		return false;
	cr_assert_eq(rc, 0);
	cr_assert_str_eq(kvp_cpu_isa(), isa);
	return true;
}

/* ---- thread pool ----------------------------------------------------------------------- */

struct count_job {
	_Atomic int hits[8];
	_Atomic int bad_nth;
	int expect_nth;
};

static void count_fn(void *arg, int ith, int nth)
{
	struct count_job *j = arg;
	if (nth != j->expect_nth || ith < 0 || ith >= nth)
		atomic_fetch_add(&j->bad_nth, 1);
	else
		atomic_fetch_add(&j->hits[ith], 1);
}

Test(pool, every_ith_once)
{
	for (int nt = 1; nt <= 3; nt++) {
		struct kvp_threadpool *tp;
		cr_assert_eq(kvp_threadpool_create(nt, &tp), 0);
		cr_assert_eq(kvp_threadpool_size(tp), nt);
		for (int run = 0; run < 2000; run++) {
			struct count_job j = { .expect_nth = nt };
			kvp_threadpool_run(tp, count_fn, &j);
			cr_assert_eq(atomic_load(&j.bad_nth), 0);
			for (int i = 0; i < nt; i++)
				cr_assert_eq(atomic_load(&j.hits[i]), 1, "nt %d run %d ith %d ran %d times",
					     nt, run, i, atomic_load(&j.hits[i]));
			/* now and then let the workers fall asleep, to cover the futex path */
			if (run % 500 == 499) {
				struct timespec ts = { 0, 5 * 1000 * 1000 };
				nanosleep(&ts, NULL);
			}
		}
		kvp_threadpool_destroy(tp);
	}
	cr_assert_eq(kvp_threadpool_create(0, &(struct kvp_threadpool *){ NULL }), KVP_EINVAL);
}

struct task_job {
	_Atomic int hits[512];
	_Atomic int bad;
	_Atomic int done;
	int expect_n;
	bool stall_first;       /* task 0 waits until every other task is done */
};

static void task_fn(void *arg, int t, int ntasks)
{
	struct task_job *j = arg;

	if (ntasks != j->expect_n || t < 0 || t >= ntasks) {
		atomic_fetch_add(&j->bad, 1);
		return;
	}
	if (j->stall_first && t == 0) {
		struct timespec t0, now;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		do {   /* the others' tasks must not wait for this one's thread (10 s cap) */
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec - t0.tv_sec > 10) {
				atomic_fetch_add(&j->bad, 1000);
				break;
			}
		} while (atomic_load(&j->done) < ntasks - 1);
	}
	atomic_fetch_add(&j->hits[t], 1);
	atomic_fetch_add(&j->done, 1);
}

/* Runs of tasks, between runs of the other kind: every task once, every ith once. */
Test(pool, every_task_once)
{
	static const int counts[] = { 0, 1, 2, 3, 7, 64, 512 };

	for (int nt = 1; nt <= 3; nt++) {
		struct kvp_threadpool *tp;

		cr_assert_eq(kvp_threadpool_create(nt, &tp), 0);
		for (int run = 0; run < 3000; run++) {
			const int n = counts[run % 7];
			struct task_job j = { .expect_n = n };
			struct count_job c = { .expect_nth = nt };

			kvp_threadpool_run_tasks(tp, task_fn, &j, n);
			cr_assert_eq(atomic_load(&j.bad), 0, "nt %d run %d: a bad task index", nt, run);
			for (int t = 0; t < n; t++)
				cr_assert_eq(atomic_load(&j.hits[t]), 1, "nt %d run %d: task %d of %d ran "
					     "%d times", nt, run, t, n, atomic_load(&j.hits[t]));
			if (run % 3 == 0) {
				kvp_threadpool_run(tp, count_fn, &c);
				for (int i = 0; i < nt; i++)
					cr_assert_eq(atomic_load(&c.hits[i]), 1, "nt %d run %d ith %d", nt,
						     run, i);
			}
			if (run % 500 == 499) {   /* the futex path */
				struct timespec ts = { 0, 5 * 1000 * 1000 };
				nanosleep(&ts, NULL);
			}
		}
		kvp_threadpool_destroy(tp);
	}
}

/* A thread held up in one task holds up only that task: the other threads take the
 * rest (with one thread a pool runs them in order, so task 0 would wait forever). */
Test(pool, a_stalled_task_does_not_hold_up_the_others)
{
	for (int nt = 2; nt <= 3; nt++) {
		struct kvp_threadpool *tp;

		cr_assert_eq(kvp_threadpool_create(nt, &tp), 0);
		for (int run = 0; run < 20; run++) {
			struct task_job j = { .expect_n = 16, .stall_first = true };

			kvp_threadpool_run_tasks(tp, task_fn, &j, 16);
			cr_assert_eq(atomic_load(&j.bad), 0, "nt %d run %d: task 0 waited 10 s for "
				     "the others", nt, run);
			cr_assert_eq(atomic_load(&j.done), 16);
		}
		kvp_threadpool_destroy(tp);
	}
}

/* ---- matmul ---------------------------------------------------------------------------- */

static void check_matmul(struct kvp_threadpool *tp, int m, int n, int k, int pad, bool acc)
{
	size_t lda = (size_t)k + pad, ldw = (size_t)k + 2 * pad, ldc = (size_t)n + 3 * pad;
	float *a = rand_buf((size_t)m * lda);       /* (m, lda) */
	float *w = rand_buf((size_t)n * ldw);       /* (n, ldw) */
	float *c = rand_buf((size_t)m * ldc);       /* (m, ldc) */
	float *c0 = malloc(sizeof(float) * ((size_t)m * ldc + 1));
	cr_assert(c0);
	memcpy(c0, c, sizeof(float) * (size_t)m * ldc);

	kvp_cpu_matmul(tp, a, lda, w, ldw, c, ldc, m, n, k, acc);

	for (int i = 0; i < m; i++) {
		for (int j = 0; j < n; j++) {
			double ref = acc ? c0[(size_t)i * ldc + j] : 0.0;
			double mag = fabs(ref);
			for (int t = 0; t < k; t++) {
				double p = (double)a[(size_t)i * lda + t] * w[(size_t)j * ldw + t];
				ref += p;
				mag += fabs(p);
			}
			double got = c[(size_t)i * ldc + j];
			cr_assert(fabs(got - ref) <= 1e-5 * mag + 1e-30,
				  "%s m %d n %d k %d pad %d acc %d: c[%d][%d] = %.9g, want %.9g",
				  kvp_cpu_isa(), m, n, k, pad, acc, i, j, got, ref);
		}
		/* the padding between rows is untouched */
		for (size_t j = (size_t)n; j < ldc; j++)
			cr_assert_eq(c[(size_t)i * ldc + j], c0[(size_t)i * ldc + j]);
	}
	free(a);
	free(w);
	free(c);
	free(c0);
}

static const int mm_shapes[][3] = {
	{ 1, 1, 1 }, { 1, 7, 3 }, { 1, 64, 64 }, { 1, 1536, 512 }, { 2, 33, 17 }, { 3, 100, 70 },
	{ 4, 5, 6 }, { 5, 32, 256 }, { 6, 16, 8 }, { 7, 31, 257 }, { 8, 35, 100 }, { 8, 3, 16 },
	{ 9, 34, 47 }, { 11, 47, 13 }, { 12, 32, 256 }, { 16, 29, 80 },
	{ 13, 33, 255 }, { 14, 48, 300 }, { 17, 1, 40 }, { 25, 65, 513 }, { 37, 97, 129 },
	{ 64, 64, 64 }, { 100, 3, 600 }, { 129, 257, 33 }, { 200, 96, 520 },
};

static void matmul_all_shapes(const char *isa)
{
	if (!use_isa(isa))
		return;
	struct kvp_threadpool *tp2, *tp3;
	cr_assert_eq(kvp_threadpool_create(2, &tp2), 0);
	cr_assert_eq(kvp_threadpool_create(3, &tp3), 0);
	for (size_t s = 0; s < sizeof(mm_shapes) / sizeof(mm_shapes[0]); s++) {
		int m = mm_shapes[s][0], n = mm_shapes[s][1], k = mm_shapes[s][2];
		check_matmul(tp2, m, n, k, 0, false);
		check_matmul(tp2, m, n, k, 5, true);
		check_matmul(NULL, m, n, k, 3, s % 2 == 0);
		check_matmul(tp3, m, n, k, 1, s % 2 == 1);
	}
	/* k == 0: C = 0, or unchanged when accumulating */
	check_matmul(tp2, 5, 9, 0, 2, false);
	check_matmul(tp2, 5, 9, 0, 2, true);
	kvp_threadpool_destroy(tp2);
	kvp_threadpool_destroy(tp3);
}

Test(matmul, generic) { matmul_all_shapes("generic"); }
Test(matmul, avx2) { matmul_all_shapes("avx2"); }
Test(matmul, avx512) { matmul_all_shapes("avx512"); }

Test(matmul, model_shapes)
{
	/* the default model's projections at a 64-row prefill and a decode row */
	struct kvp_threadpool *tp;
	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	for (int i = 0; i < N_ISAS; i++) {
		if (!use_isa(isas[i]))
			continue;
		check_matmul(tp, 64, 512, 512, 0, false);
		check_matmul(tp, 64, 1536, 512, 0, false);
		check_matmul(tp, 64, 512, 1536, 0, true);
		check_matmul(tp, 1, 512, 1536, 0, false);
	}
	kvp_threadpool_destroy(tp);
}

/* ---- prepacked W ------------------------------------------------------------------------ */

/* kvp_cpu_matmul_packed against the double reference (the tolerance of check_matmul)
 * and bit for bit against kvp_cpu_matmul on the original W. pack_isa: the ISA forced
 * while packing (NULL: the one in force), to check a call under another dispatch. */
static void check_matmul_packed(struct kvp_threadpool *tp, int m, int n, int k, int pad,
				bool acc, const char *pack_isa)
{
	size_t lda = (size_t)k + pad, ldw = (size_t)k + 2 * pad, ldc = (size_t)n + 3 * pad;
	float *a = rand_buf((size_t)m * lda);
	float *w = rand_buf((size_t)n * ldw);
	float *c = rand_buf((size_t)m * ldc);
	float *c0 = malloc(sizeof(float) * ((size_t)m * ldc + 1));
	float *cu = malloc(sizeof(float) * ((size_t)m * ldc + 1));
	struct kvp_packed_w *pw = NULL;
	const char *run_isa = kvp_cpu_isa();
	cr_assert(c0 && cu);
	memcpy(c0, c, sizeof(float) * (size_t)m * ldc);
	memcpy(cu, c, sizeof(float) * (size_t)m * ldc);

	if (pack_isa)
		cr_assert_eq(kvp_cpu_force_isa(pack_isa), 0);
	cr_assert_eq(kvp_cpu_pack_w(w, ldw, n, k, &pw), 0);
	if (n > 0 && k > 0)
		cr_assert_geq(kvp_cpu_packed_bytes(pw), (size_t)n * k * sizeof(float));
	if (pack_isa)
		cr_assert_eq(kvp_cpu_force_isa(run_isa), 0);

	kvp_cpu_matmul_packed(tp, a, lda, pw, c, ldc, m, acc);
	kvp_cpu_matmul(tp, a, lda, w, ldw, cu, ldc, m, n, k, acc);

	for (int i = 0; i < m; i++) {
		for (int j = 0; j < n; j++) {
			double ref = acc ? c0[(size_t)i * ldc + j] : 0.0;
			double mag = fabs(ref);
			for (int t = 0; t < k; t++) {
				double p = (double)a[(size_t)i * lda + t] * w[(size_t)j * ldw + t];
				ref += p;
				mag += fabs(p);
			}
			double got = c[(size_t)i * ldc + j];
			cr_assert(fabs(got - ref) <= 1e-5 * mag + 1e-30,
				  "packed %s (packed under %s) m %d n %d k %d pad %d acc %d: "
				  "c[%d][%d] = %.9g, want %.9g", run_isa, pack_isa ? pack_isa : run_isa,
				  m, n, k, pad, acc, i, j, got, ref);
			cr_assert(got == cu[(size_t)i * ldc + j],
				  "packed %s m %d n %d k %d: c[%d][%d] = %.9g, unpacked %.9g", run_isa,
				  m, n, k, i, j, got, cu[(size_t)i * ldc + j]);
		}
		for (size_t j = (size_t)n; j < ldc; j++)
			cr_assert_eq(c[(size_t)i * ldc + j], c0[(size_t)i * ldc + j]);
	}
	kvp_cpu_packed_free(pw);
	free(a);
	free(w);
	free(c);
	free(c0);
	free(cu);
}

static void matmul_packed_all_shapes(const char *isa)
{
	if (!use_isa(isa))
		return;
	struct kvp_threadpool *tp2, *tp3;
	cr_assert_eq(kvp_threadpool_create(2, &tp2), 0);
	cr_assert_eq(kvp_threadpool_create(3, &tp3), 0);
	for (size_t s = 0; s < sizeof(mm_shapes) / sizeof(mm_shapes[0]); s++) {
		int m = mm_shapes[s][0], n = mm_shapes[s][1], k = mm_shapes[s][2];
		check_matmul_packed(tp2, m, n, k, 0, false, NULL);
		check_matmul_packed(tp2, m, n, k, 5, true, NULL);
		check_matmul_packed(NULL, m, n, k, 3, s % 2 == 0, NULL);
		check_matmul_packed(tp3, m, n, k, 1, s % 2 == 1, NULL);
	}
	/* the suffix shape of the engine bench, and K past one KC block, odd N */
	check_matmul_packed(tp2, 50, 512, 512, 0, false, NULL);
	check_matmul_packed(tp2, 50, 512, 1536, 0, true, NULL);
	check_matmul_packed(tp3, 23, 301, 771, 2, true, NULL);
	/* k == 0 and n == 0 */
	check_matmul_packed(tp2, 5, 9, 0, 2, false, NULL);
	check_matmul_packed(tp2, 5, 9, 0, 2, true, NULL);
	check_matmul_packed(tp2, 5, 0, 7, 2, false, NULL);
	/* packed under another ISA than the call's: the call reads the original */
	for (int i = 0; i < N_ISAS; i++) {
		if (strcmp(isas[i], isa) == 0 || kvp_cpu_force_isa(isas[i]) != 0)
			continue;
		cr_assert_eq(kvp_cpu_force_isa(isa), 0);
		check_matmul_packed(tp2, 37, 97, 129, 1, true, isas[i]);
	}
	kvp_threadpool_destroy(tp2);
	kvp_threadpool_destroy(tp3);
}

Test(matmul_packed, generic) { matmul_packed_all_shapes("generic"); }
Test(matmul_packed, avx2) { matmul_packed_all_shapes("avx2"); }
Test(matmul_packed, avx512) { matmul_packed_all_shapes("avx512"); }

Test(matmul_packed, invalid)
{
	float w[4] = { 0 };
	struct kvp_packed_w *pw = NULL;
	cr_assert_eq(kvp_cpu_pack_w(w, 1, 2, 2, &pw), KVP_EINVAL);     /* ldw < k */
	cr_assert_eq(kvp_cpu_pack_w(w, 2, -1, 2, &pw), KVP_EINVAL);
	cr_assert_eq(kvp_cpu_pack_w(NULL, 2, 2, 2, &pw), KVP_EINVAL);
	cr_assert_null(pw);
	kvp_cpu_packed_free(NULL);
	cr_assert_eq(kvp_cpu_packed_bytes(NULL), 0);
}

Test(matmul, peak_and_isa)
{
	struct kvp_threadpool *tp;
	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	double g = kvp_cpu_peak_gflops(tp);
	cr_assert(g > 0.1 && g < 1e6, "peak %f", g);
	cr_assert_eq(kvp_cpu_force_isa(NULL), 0);
	const char *isa = kvp_cpu_isa();
	cr_assert(strcmp(isa, "generic") == 0 || strcmp(isa, "avx2") == 0 ||
		  strcmp(isa, "avx512") == 0 || strcmp(isa, "avx512vnni") == 0);
	cr_assert_eq(kvp_cpu_force_isa("sse9"), KVP_EUNSUPPORTED);
	kvp_threadpool_destroy(tp);
}

/* ---- elementwise ----------------------------------------------------------------------- */

Test(ops, rmsnorm)
{
	static const int sizes[] = { 1, 7, 16, 63, 64, 100, 512, 4097 };
	for (int i = 0; i < N_ISAS; i++) {
		if (!use_isa(isas[i]))
			continue;
		for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
			int n = sizes[s];
			float *x = rand_buf((size_t)n), *w = rand_buf((size_t)n), *out = rand_buf((size_t)n);
			double ss = 0;
			for (int j = 0; j < n; j++)
				ss += (double)x[j] * x[j];
			double scale = 1.0 / sqrt(ss / n + 1e-5);
			kvp_cpu_rmsnorm(out, x, w, n, 1e-5f);
			for (int j = 0; j < n; j++) {
				double ref = x[j] * scale * w[j];
				cr_assert(fabs(out[j] - ref) <= 1e-5 * fabs(ref) + 1e-30,
					  "%s n %d [%d] %g vs %g", isas[i], n, j, out[j], ref);
			}
			/* in place */
			kvp_cpu_rmsnorm(x, x, w, n, 1e-5f);
			cr_assert_eq(memcmp(x, out, sizeof(float) * (size_t)n), 0);
			free(x);
			free(w);
			free(out);
		}
	}
}

Test(ops, rope)
{
	static const uint32_t poss[] = { 0, 1, 2, 17, 511, 4095, 100000, 1000003 };
	static const float bases[] = { 10000.0f, 500000.0f };
	static const int dims[][3] = { { 4, 64, 64 }, { 2, 64, 32 }, { 3, 128, 128 }, { 1, 10, 6 } };
	for (size_t d = 0; d < 4; d++) {
		int nh = dims[d][0], hd = dims[d][1], rd = dims[d][2];
		for (size_t b = 0; b < 2; b++)
			for (size_t p = 0; p < sizeof(poss) / sizeof(poss[0]); p++) {
				float *x = rand_buf((size_t)nh * hd), *x0 = malloc(sizeof(float) * nh * hd);
				memcpy(x0, x, sizeof(float) * nh * hd);
				/* twice at the same position: the second call uses the cache */
				for (int rep = 0; rep < 2; rep++) {
					memcpy(x, x0, sizeof(float) * nh * hd);
					kvp_cpu_rope(x, nh, hd, rd, poss[p], bases[b]);
					for (int h = 0; h < nh; h++)
						for (int i = 0; i < hd / 2; i++) {
							const float *in = x0 + h * hd, *got = x + h * hd;
							double r0 = in[2 * i], r1 = in[2 * i + 1];
							if (2 * i < rd) {
								double th = (double)poss[p] *
									    pow((double)bases[b], -2.0 * i / rd);
								double y0 = r0 * cos(th) - r1 * sin(th);
								double y1 = r0 * sin(th) + r1 * cos(th);
								r0 = y0;
								r1 = y1;
							}
							double norm = hypot(in[2 * i], in[2 * i + 1]) + 1e-30;
							cr_assert(fabs(got[2 * i] - r0) <= 1e-6 * norm &&
								  fabs(got[2 * i + 1] - r1) <= 1e-6 * norm,
								  "pos %u base %g dims %d/%d/%d head %d pair %d",
								  poss[p], bases[b], nh, hd, rd, h, i);
						}
				}
				free(x);
				free(x0);
			}
	}
}

Test(ops, swiglu_add)
{
	static const int sizes[] = { 1, 15, 16, 17, 1536, 4099 };
	for (int i = 0; i < N_ISAS; i++) {
		if (!use_isa(isas[i]))
			continue;
		for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
			int n = sizes[s];
			float *g = rand_buf((size_t)n), *u = rand_buf((size_t)n), *g0 = malloc(sizeof(float) * n);
			for (int j = 0; j < n; j++)
				g[j] *= (j % 5 == 0) ? 120.0f : 12.0f;   /* far into both tails too */
			memcpy(g0, g, sizeof(float) * n);
			kvp_cpu_swiglu(g, u, n);
			for (int j = 0; j < n; j++) {
				double ref = (double)g0[j] / (1.0 + exp(-(double)g0[j])) * u[j];
				cr_assert(fabs(g[j] - ref) <= 1e-6 * fabs(ref) + 1e-30,
					  "%s swiglu(%g, %g) = %g, want %g", isas[i], g0[j], u[j], g[j], ref);
			}
			memcpy(g, g0, sizeof(float) * n);
			kvp_cpu_add(g, u, n);
			for (int j = 0; j < n; j++)
				cr_assert_eq(g[j], g0[j] + u[j]);
			free(g);
			free(u);
			free(g0);
		}
	}
}

Test(ops, batched_rows_match_single_rows)
{
	enum { ROWS = 67, DIM = 512, FFN = 200, LD = DIM + 3 };
	struct kvp_threadpool *tp;
	cr_assert_eq(kvp_threadpool_create(3, &tp), 0);
	for (int i = 0; i < N_ISAS; i++) {
		if (!use_isa(isas[i]))
			continue;
		float *x = rand_buf((size_t)ROWS * LD), *w = rand_buf(DIM);   /* (ROWS, LD) */
		float *a = rand_buf((size_t)ROWS * LD), *b = malloc(sizeof(float) * ROWS * LD);
		float *g = rand_buf((size_t)ROWS * FFN), *u = rand_buf((size_t)ROWS * FFN);
		float *g2 = malloc(sizeof(float) * ROWS * FFN);
		memcpy(b, a, sizeof(float) * ROWS * LD);
		memcpy(g2, g, sizeof(float) * ROWS * FFN);

		kvp_cpu_rmsnorm_rows(tp, a, LD, x, LD, w, ROWS, DIM, 1e-6f);
		for (int r = 0; r < ROWS; r++)
			kvp_cpu_rmsnorm(b + r * LD, x + r * LD, w, DIM, 1e-6f);
		cr_assert_eq(memcmp(a, b, sizeof(float) * ROWS * LD), 0, "%s rmsnorm", isas[i]);

		/* rows in reverse, and a second pass with a different base: cache misses */
		for (int pass = 0; pass < 2; pass++) {
			float base = pass ? 500000.0f : 10000.0f;
			kvp_cpu_rope_rows(tp, a, LD, ROWS, 8, 64, 48, 1000, base);
			for (int r = ROWS - 1; r >= 0; r--)
				kvp_cpu_rope(b + r * LD, 8, 64, 48, 1000 + (uint32_t)r, base);
			cr_assert_eq(memcmp(a, b, sizeof(float) * ROWS * LD), 0, "%s rope", isas[i]);
		}

		kvp_cpu_add_rows(tp, a, LD, x, LD, ROWS, DIM);
		for (int r = 0; r < ROWS; r++)
			kvp_cpu_add(b + r * LD, x + r * LD, DIM);
		cr_assert_eq(memcmp(a, b, sizeof(float) * ROWS * LD), 0, "%s add", isas[i]);

		kvp_cpu_swiglu_rows(tp, g, FFN, u, FFN, ROWS, FFN);
		kvp_cpu_swiglu(g2, u, ROWS * FFN);
		cr_assert_eq(memcmp(g, g2, sizeof(float) * ROWS * FFN), 0, "%s swiglu", isas[i]);
		free(x);
		free(w);
		free(a);
		free(b);
		free(g);
		free(u);
		free(g2);
	}
	kvp_threadpool_destroy(tp);
}

/* ---- f16 / bf16 ------------------------------------------------------------------------ */

static double f16_value(uint16_t h)
{
	int e = (h >> 10) & 0x1f, m = h & 0x3ff;
	double v = e == 0 ? ldexp(m, -24) : ldexp(m | 0x400, e - 25);
	return (h & 0x8000) ? -v : v;
}

/* round-to-nearest-even f16 of x (finite), by search over the ordered halves */
static uint16_t f16_ref_round(float x)
{
	uint16_t sign = signbit(x) ? 0x8000 : 0;
	double a = fabs((double)x);
	if (a >= 65520.0)
		return sign | 0x7c00;
	/* halves are ordered like their bit patterns: bisect the magnitude */
	uint16_t lo = 0, hi = 0x7bff;
	while (lo < hi) {
		uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
		if (f16_value(mid) <= a)
			lo = mid;
		else
			hi = mid - 1;
	}
	uint16_t r = lo;
	if (lo < 0x7bff || a > f16_value(0x7bff)) {
		double below = f16_value(lo);
		double above = lo == 0x7bff ? 65536.0 : f16_value((uint16_t)(lo + 1));
		if (a - below > above - a || (a - below == above - a && (lo & 1)))
			r = (uint16_t)(lo + 1);
	}
	return sign | r;
}

Test(f16, all_halves_round_trip)
{
	for (int i = 0; i < N_ISAS; i++) {
		if (!use_isa(isas[i]))
			continue;
		static uint16_t h[65536], back[65536];
		static float f[65536];
		for (int v = 0; v < 65536; v++)
			h[v] = (uint16_t)v;
		/* odd start and length: both the vector body and the scalar tail */
		kvp_cpu_f16_to_f32(f, h, 65536);
		kvp_cpu_f16_to_f32(f + 1, h + 1, 65531);
		kvp_cpu_f32_to_f16(back, f, 65536);
		for (int v = 0; v < 65536; v++) {
			bool nan = ((v >> 10) & 0x1f) == 0x1f && (v & 0x3ff);
			bool inf = ((v >> 10) & 0x1f) == 0x1f && !(v & 0x3ff);
			if (nan) {
				cr_assert(isnan(f[v]), "%s %04x", isas[i], v);
				cr_assert(((back[v] >> 10) & 0x1f) == 0x1f && (back[v] & 0x3ff),
					  "%s NaN %04x came back as %04x", isas[i], v, back[v]);
				cr_assert_eq(back[v] & 0x8000, v & 0x8000);
				continue;
			}
			if (inf)
				cr_assert(isinf(f[v]) && (signbit(f[v]) != 0) == ((v & 0x8000) != 0));
			else
				cr_assert((double)f[v] == f16_value((uint16_t)v) &&
					  (signbit(f[v]) != 0) == ((v & 0x8000) != 0),
					  "%s %04x -> %.9g", isas[i], v, f[v]);
			cr_assert_eq(back[v], v, "%s %04x -> %g -> %04x", isas[i], v, f[v], back[v]);
		}
	}
}

Test(f16, rounding)
{
	enum { N = 20000 };
	static float x[N];
	static uint16_t got[N];
	for (int i = 0; i < N; i++) {
		uint32_t u;
		switch (i % 4) {
		case 0: x[i] = frand() * 70000.0f; break;           /* normals, overflow */
		case 1: x[i] = frand() * 1e-4f; break;              /* subnormal halves */
		case 2:                                             /* exact ties */
			u = (uint32_t)(rng_next() & 0x0fffe000u) | 0x38000000u | 0x1000u;
			memcpy(&x[i], &u, 4);
			break;
		default: x[i] = frand() * 1e-7f; break;             /* underflow to 0 */
		}
	}
	for (int k = 0; k < N_ISAS; k++) {
		if (!use_isa(isas[k]))
			continue;
		kvp_cpu_f32_to_f16(got, x, N);
		for (int i = 0; i < N; i++)
			cr_assert_eq(got[i], f16_ref_round(x[i]), "%s %.9g -> %04x, want %04x", isas[k],
				     x[i], got[i], f16_ref_round(x[i]));
	}
}

Test(f16, bf16)
{
	uint16_t h[5] = { 0x3f80, 0xbf80, 0x7f80, 0x0001, 0x4049 };
	float f[5];
	kvp_cpu_bf16_to_f32(f, h, 5);
	cr_assert_eq(f[0], 1.0f);
	cr_assert_eq(f[1], -1.0f);
	cr_assert(isinf(f[2]));
	cr_assert_eq(f[3], 0x1p-133f);
	cr_assert_eq(f[4], 3.140625f);
}

/* ---- attention ------------------------------------------------------------------------- */

struct attn_case {
	uint32_t bt;            /* block_tokens */
	enum kvp_kv_dtype dtype;
	uint32_t n, pos0;
	uint32_t n_heads, n_kv_heads, head_dim;
};

static void check_attention(struct kvp_threadpool *tp, const struct attn_case *tc)
{
	const uint32_t L = 2, layer = 1, d = tc->head_dim, hkv = tc->n_kv_heads, hq = tc->n_heads;
	const uint32_t ctx = tc->pos0 + tc->n, nb = (ctx + tc->bt - 1) / tc->bt;
	const size_t bbytes = kvp_kv_block_bytes(L, hkv, d, tc->bt, tc->dtype);
	const size_t kvw = (size_t)hkv * d, qw = (size_t)hq * d;

	/* a pool of 2 * nb blocks; the table takes nb of them in shuffled order */
	char *pool = malloc(bbytes * 2 * nb);
	void **blocks = malloc(sizeof(void *) * nb);
	uint32_t *perm = malloc(sizeof(uint32_t) * 2 * nb);
	cr_assert(pool && blocks && perm);
	memset(pool, 0xff, bbytes * 2 * nb);      /* NaN everywhere nothing was stored */
	for (uint32_t i = 0; i < 2 * nb; i++)
		perm[i] = i;
	for (uint32_t i = 2 * nb - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(rng_next() % (i + 1)), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (uint32_t i = 0; i < nb; i++)
		blocks[i] = pool + bbytes * perm[i];

	struct kvp_kv_view kv = {
		.blocks = blocks, .n_blocks = nb, .block_tokens = tc->bt, .n_layers = L,
		.n_kv_heads = hkv, .head_dim = d, .layer = layer, .dtype = tc->dtype,
	};
	float *k = rand_buf((size_t)ctx * kvw);   /* (ctx, hkv * d) */
	float *v = rand_buf((size_t)ctx * kvw);   /* (ctx, hkv * d) */
	float *q = rand_buf((size_t)tc->n * qw);  /* (n, hq * d) */
	float *out = rand_buf((size_t)tc->n * qw);
	/* the first half position by position, the rest in one batched call */
	for (uint32_t p = 0; p < ctx / 2; p++)
		kvp_cpu_kv_store(&kv, p, k + p * kvw, v + p * kvw);
	kvp_cpu_kv_store_rows(tp, &kv, ctx / 2, (int)(ctx - ctx / 2), k + (ctx / 2) * kvw, kvw,
			      v + (ctx / 2) * kvw, kvw);

	kvp_cpu_attention(tp, &kv, q, out, tc->n, tc->pos0, hq);

	const double tol = tc->dtype == KVP_KV_F16 ? 2e-3 : 1e-5;
	double *s = malloc(sizeof(double) * ctx);
	for (uint32_t r = 0; r < tc->n; r++)
		for (uint32_t h = 0; h < hq; h++) {
			uint32_t hk = h / (hq / hkv), last = tc->pos0 + r;
			const float *qr = q + r * qw + h * d;
			double mx = -INFINITY, sum = 0;
			for (uint32_t p = 0; p <= last; p++) {
				double dot = 0;
				for (uint32_t e = 0; e < d; e++)
					dot += (double)qr[e] * k[p * kvw + hk * d + e];
				s[p] = dot / sqrt((double)d);
				mx = s[p] > mx ? s[p] : mx;
			}
			for (uint32_t p = 0; p <= last; p++) {
				s[p] = exp(s[p] - mx);
				sum += s[p];
			}
			for (uint32_t e = 0; e < d; e++) {
				double ref = 0;
				for (uint32_t p = 0; p <= last; p++)
					ref += s[p] * v[p * kvw + hk * d + e];
				ref /= sum;
				double got = out[r * qw + h * d + e];
				cr_assert(fabs(got - ref) <= tol * (1.0 + fabs(ref)),
					  "%s bt %u %s n %u pos0 %u heads %u/%u d %u: row %u head %u [%u] "
					  "%.8g vs %.8g",
					  kvp_cpu_isa(), tc->bt, tc->dtype == KVP_KV_F16 ? "f16" : "f32",
					  tc->n, tc->pos0, hq, hkv, d, r, h, e, got, ref);
			}
		}
	free(s);
	free(k);
	free(v);
	free(q);
	free(out);
	free(perm);
	free(blocks);
	free(pool);
}

static void attention_cases(const char *isa, enum kvp_kv_dtype dtype)
{
	static const uint32_t bts[] = { 1, 16, 64 };
	static const uint32_t ns[][2] = { { 1, 0 }, { 1, 77 }, { 3, 5 }, { 37, 0 }, { 100, 29 },
					  { 130, 200 } };
	static const uint32_t heads[][3] = { { 4, 4, 64 }, { 8, 4, 64 }, { 8, 2, 64 }, { 4, 1, 40 } };
	if (!use_isa(isa))
		return;
	struct kvp_threadpool *tp;
	cr_assert_eq(kvp_threadpool_create(2, &tp), 0);
	for (size_t b = 0; b < 3; b++)
		for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
			for (size_t h = 0; h < 4; h++) {
				struct attn_case tc = {
					.bt = bts[b], .dtype = dtype, .n = ns[i][0], .pos0 = ns[i][1],
					.n_heads = heads[h][0], .n_kv_heads = heads[h][1],
					.head_dim = heads[h][2],
				};
				/* the long cases once per block size and head layout is plenty */
				if (tc.n * (tc.pos0 + tc.n) > 20000 && h % 2 == 1)
					continue;
				check_attention((b + i + h) % 3 == 0 ? NULL : tp, &tc);
			}
	/* a suffix after a long cached prefix (the engine bench's shape): query vectors
	 * per kv head not a multiple of the kernel's block, next tiles prefetched */
	struct attn_case suffix = { .bt = 16, .dtype = dtype, .n = 50, .pos0 = 2000,
				    .n_heads = 8, .n_kv_heads = 4, .head_dim = 64 };
	check_attention(tp, &suffix);
	kvp_threadpool_destroy(tp);
}

Test(attention, generic_f32) { attention_cases("generic", KVP_KV_F32); }
Test(attention, generic_f16) { attention_cases("generic", KVP_KV_F16); }
Test(attention, avx2_f32) { attention_cases("avx2", KVP_KV_F32); }
Test(attention, avx2_f16) { attention_cases("avx2", KVP_KV_F16); }
Test(attention, avx512_f32) { attention_cases("avx512", KVP_KV_F32); }
Test(attention, avx512_f16) { attention_cases("avx512", KVP_KV_F16); }

Test(attention, block_bytes)
{
	cr_assert_eq(kvp_kv_block_bytes(8, 4, 64, 16, KVP_KV_F32), (size_t)8 * 2 * 4 * 16 * 64 * 4);
	cr_assert_eq(kvp_kv_block_bytes(8, 4, 64, 16, KVP_KV_F16), (size_t)8 * 2 * 4 * 16 * 64 * 2);
}
