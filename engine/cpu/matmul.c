/*
 * matmul.c - ISA dispatch, the blocked GEMM driver, the matrix-vector driver and the
 * peak-throughput probe.
 *
 * C (M, N) = A (M, K) . W (N, K)^T. Both operands are K-contiguous, so one of them must
 * be transposed for a broadcast-FMA kernel: W is, slice by slice, into a packed panel
 * P (kc, NR) (NR output features side by side for each k), and A is read in place,
 * one broadcast per row and k (the tile's MR row pointers are lda apart).
 *
 *   thread t owns output columns [n0, n1) (whole NR panels), or, when there are
 *   fewer panels than threads, rows [m0, m1):
 *
 *   for kb in K step KC:                   P slice: KC x NR floats (32 KiB): L1
 *     for panel j in [n0, n1) step NR:     A block: (m1-m0) x KC floats: L2
 *       pack_w(W[j:j+NR, kb:kb+KC]) -> P
 *       for i in [m0, m1) step MR:
 *         ukr: C[i:i+MR, j:j+NR] (+)= A[i:i+MR, kb:kb+KC] . P
 *
 * Each W element is packed once per call (O(NK) against O(MNK) compute); while the
 * tiles of one slice run, the next slice's lines are prefetched into L2, so packing
 * weights that come from DRAM costs ~2 % of a prefill. M <= 16 (decode, one row per
 * running sequence) takes the matrix-vector path instead (dot products along K, N split
 * across threads, W a chunk at a time so that it is read once for every row). kvp_cpu_gemm_w runs the
 * same driver on W of any type: each slice is made by the caller's fill (matmul_w.c
 * dequantizes it) instead of pack_w, with twice the scratch for the fill to work in.
 *
 * Measured (Zen 5, 2 threads, M = 512, the default model's shapes): 91-95 % of
 * kvp_cpu_peak_gflops on AVX-512 and on AVX2, ~90 % on the generic path.
 */
#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_impl.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#define KVP_GEMV_MAX_M 16        /* up to this many rows (a decode batch): the
                                    matrix-vector path, W read once */
#define KVP_GEMV_CHUNK_BYTES 32768   /* W rows dotted with every row of A while in L1 */
#define KVP_CPU_PEAK_MAX_THREADS 1024

/* ---- dispatch ------------------------------------------------------------------------ */

#if defined(__x86_64__)
/* AVX2 + FMA + F16C, with the OS saving the ymm state (__builtin_cpu_supports checks
 * that for "avx2"; F16C is CPUID.1:ECX[29], which not every compiler's builtin knows). */
static bool has_avx2_path(void)
{
	unsigned eax, ebx, ecx, edx;
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
		return false;
	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
		return false;
	return (ecx >> 29) & 1;
}

static bool has_avx512_path(void)
{
	__builtin_cpu_init();
	return has_avx2_path() && __builtin_cpu_supports("avx512f") &&
	       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}

static bool has_avx512vnni_path(void)
{
	return has_avx512_path() && __builtin_cpu_supports("avx512vnni");
}
#endif

static const struct kvp_cpu_kern *detect(void)
{
#if defined(__x86_64__)
	if (has_avx512vnni_path())
		return &kvp_cpu_kern_avx512vnni;
	if (has_avx512_path())
		return &kvp_cpu_kern_avx512;
	if (has_avx2_path())
		return &kvp_cpu_kern_avx2;
#endif
	return &kvp_cpu_kern_generic;
}

static const struct kvp_cpu_kern *_Atomic kern_forced;
static const struct kvp_cpu_kern *_Atomic kern_detected;

const struct kvp_cpu_kern *kvp_cpu_kern(void)
{
	const struct kvp_cpu_kern *k = atomic_load_explicit(&kern_forced, memory_order_relaxed);
	if (k)
		return k;
	k = atomic_load_explicit(&kern_detected, memory_order_relaxed);
	if (!k) {
		k = detect();
		atomic_store_explicit(&kern_detected, k, memory_order_relaxed);
	}
	return k;
}

const char *kvp_cpu_isa(void)
{
	return kvp_cpu_kern()->name;
}

int kvp_cpu_force_isa(const char *name)
{
	const struct kvp_cpu_kern *k = NULL;

	if (name == NULL) {
		atomic_store(&kern_forced, NULL);
		return KVP_OK;
	}
	if (strcmp(name, "generic") == 0) {
		k = &kvp_cpu_kern_generic;
	}
#if defined(__x86_64__)
	else if (strcmp(name, "avx2") == 0) {
		if (has_avx2_path())
			k = &kvp_cpu_kern_avx2;
	} else if (strcmp(name, "avx512") == 0) {
		if (has_avx512_path())
			k = &kvp_cpu_kern_avx512;
	} else if (strcmp(name, "avx512vnni") == 0) {
		if (has_avx512vnni_path())
			k = &kvp_cpu_kern_avx512vnni;
	}
#endif
	if (!k)
		return KVP_EUNSUPPORTED;
	atomic_store(&kern_forced, k);
	return KVP_OK;
}

/* ---- GEMM ---------------------------------------------------------------------------- */

struct gemm_job {
	const struct kvp_cpu_kern *kern;
	struct kvp_threadpool *tp;
	const float *a;         /* (m, k) rows lda apart */
	const float *w;         /* (n, k) rows ldw apart */
	float *c;               /* (m, n) rows ldc apart */
	size_t lda, ldw, ldc;
	int m, n, k;
	bool accumulate;
	const float *packed;    /* prepacked panels (kvp_cpu_pack_w), or NULL: pack per call */
	size_t pstride;         /* floats from one packed panel to the next */
	const struct kvp_gemm_w *wsrc;  /* W of any type, a slice made by its fill; w unused */
	_Atomic int no_scratch; /* a thread of a wsrc job found no scratch */
};

/* [lo, hi) of units split into nth near-equal contiguous parts. */
static void split(int units, int ith, int nth, int *lo, int *hi)
{
	kvp_cpu_split_rows(units, ith, nth, lo, hi);
}

/* C[m0:m1, n0:n1] through the gemv kernel (the small-M path, and the fallback when a
 * thread gets no scratch): 5 to KVP_GEMV_WIDE_ROWS rows whose A fits in
 * KVP_GEMV_WIDE_A_BYTES in one call, each row of W against all of them; otherwise
 * KVP_GEMV_ROWS rows at a time, W a chunk of rows at a time, small enough to stay in L1
 * while every group of rows of A passes over it. Either way W is read from memory once
 * whatever M. */
static void gemm_rows_gemv(const struct gemm_job *g, int m0, int m1, int n0, int n1)
{
	const int step = kvp_cpu_gemv_wide(m1 - m0, g->k) ? m1 - m0 : KVP_GEMV_ROWS;
	const int fit = (int)(KVP_GEMV_CHUNK_BYTES / (sizeof(float) * (size_t)g->k)) / 4 * 4;
	const int chunk = m1 - m0 <= step ? n1 - n0 : fit > 4 ? fit : 4;

	for (int j = n0; j < n1; j += chunk) {
		int nj = n1 - j < chunk ? n1 - j : chunk;

		for (int i = m0; i < m1; i += step) {
			int mr = m1 - i < step ? m1 - i : step;

			g->kern->gemv(g->a + (size_t)i * g->lda, g->lda, mr,
				      g->w + (size_t)j * g->ldw, g->ldw, nj, g->k,
				      g->c + (size_t)i * g->ldc + j, g->ldc, g->accumulate);
		}
	}
}

/* The W slice of panel j at K offset kb, as cache lines to prefetch: W comes from
 * DRAM (a model's weights do not fit the L3), and the strided rows of a slice are too
 * many streams for the hardware prefetcher, so pack_w would wait on every line. */
struct wslice {
	const char *w;          /* first byte: row j * NR, column kb */
	size_t ld;              /* bytes from one row to the next */
	int lines;              /* rows * row_lines */
	int row_lines;          /* 64-byte lines per row of the slice (+1: any alignment) */
};

static struct wslice wslice_at(const struct gemm_job *g, int j, int kb)
{
	const int NR = g->kern->nr, KC = g->kern->kc;
	int n0 = j * NR, rows = g->n - n0 < NR ? g->n - n0 : NR;
	int kc = g->k - kb < KC ? g->k - kb : KC;
	struct wslice s;

	if (g->wsrc) {
		const struct kvp_gemm_w *w = g->wsrc;
		size_t bytes = (size_t)kc / w->blk_elems * w->blk_bytes;
		s = (struct wslice){ w->base + (size_t)n0 * w->stride +
					     (size_t)kb / w->blk_elems * w->blk_bytes,
				     w->stride, 0, (int)((bytes + 63) / 64) + 1 };
	} else {
		s = (struct wslice){ (const char *)(g->w + (size_t)n0 * g->ldw + kb),
				     g->ldw * sizeof(float), 0, (kc + 15) / 16 + 1 };
	}
	s.lines = rows * s.row_lines;
	return s;
}

/* Thread ith's packing scratch: P (KC, NR) floats, and for a wsrc job as much again
 * for its fill; NULL when there is none. */
static float *gemm_scratch(const struct gemm_job *g, int ith)
{
	size_t bytes = (size_t)g->kern->kc * (size_t)g->kern->nr * sizeof(float) * (g->wsrc ? 2 : 1);

	return g->tp ? kvp_threadpool_scratch(g->tp, ith, bytes) : aligned_alloc(64, bytes);
}

/* Rows [m0, m1) in the fewest MR tiles, as even as they go: tile t of
 * gemm_tile_split has base or base + 1 rows (50 rows of MR 12: 5 tiles of 10, not 4 of
 * 12 and one of 2, whose few accumulators leave the FMA pipes waiting on latency).
 * Every row is computed the same way whatever its tile, so the split is invisible in
 * the results. */
struct tile_split {
	int tiles, base, extra;  /* the first extra tiles have base + 1 rows */
};

static struct tile_split gemm_tile_split(int rows, int MR)
{
	struct tile_split t = { (rows + MR - 1) / MR, 0, 0 };
	if (t.tiles > 0) {
		t.base = rows / t.tiles;
		t.extra = rows % t.tiles;
	}
	return t;
}

static void gemm_worker(void *arg, int ith, int nth)
{
	const struct gemm_job *g = arg;
	const struct kvp_cpu_kern *kn = g->kern;
	const int MR = kn->mr, NR = kn->nr, KC = kn->kc;
	int panels = (g->n + NR - 1) / NR;
	int m0 = 0, m1 = g->m, p0 = 0, p1 = panels;

	if (panels >= nth) {
		split(panels, ith, nth, &p0, &p1);
	} else {
		kvp_cpu_split_rows(g->m, ith, nth, &m0, &m1);
	}
	if (p0 >= p1 || m0 >= m1)
		return;

	float *p = NULL;
	if (!g->packed) {
		p = gemm_scratch(g, ith);
		if (!p && g->wsrc) {
			/* kvp_cpu_gemm_w reserved it: cannot happen */
			atomic_store(&((struct gemm_job *)g)->no_scratch, 1);
			return;
		}
		if (!p) {
			int n1 = p1 * NR < g->n ? p1 * NR : g->n;
			gemm_rows_gemv(g, m0, m1, p0 * NR, n1);
			return;
		}
	}

	const struct tile_split ts = gemm_tile_split(m1 - m0, MR);
	const int mtiles = ts.tiles;
	for (int kb = 0; kb < g->k; kb += KC) {
		int kc = g->k - kb < KC ? g->k - kb : KC;
		bool load_c = g->accumulate || kb > 0;
		for (int j = p0; j < p1; j++) {
			int n0 = j * NR;
			int nr = g->n - n0 < NR ? g->n - n0 : NR;
			const float *pj;

			/* the W slice used next, fetched into L2 a little per tile: from the
			 * original rows when packing per call, else the next packed slice
			 * (contiguous kc x NR floats) */
			struct wslice nx = { 0 };
			int jn = -1, kn_ = kb;
			if (j + 1 < p1)
				jn = j + 1;
			else if (kb + KC < g->k)
				jn = p0, kn_ = kb + KC;
			if (g->packed) {
				pj = g->packed + (size_t)j * g->pstride + (size_t)kb * NR;
				if (jn >= 0) {
					int kcn = g->k - kn_ < KC ? g->k - kn_ : KC;
					nx.w = (const char *)(g->packed + (size_t)jn * g->pstride +
							      (size_t)kn_ * NR);
					nx.row_lines = (kcn * NR + 15) / 16;
					nx.lines = nx.row_lines;
				}
			} else {
				if (g->wsrc)
					g->wsrc->fill(g->wsrc, kn, n0, nr, kb, kc, p,
						      p + (size_t)KC * NR);
				else
					kn->pack_w(g->w + (size_t)n0 * g->ldw + kb, g->ldw, nr,
						   kc, p);
				pj = p;
				if (jn >= 0)
					nx = wslice_at(g, jn, kn_);
			}
			int per_tile = (nx.lines + mtiles - 1) / mtiles, left = nx.lines;
			int prow = 0, pcol = 0;

			int i = m0;
			for (int t = 0; t < mtiles; t++) {
				int mr = ts.base + (t < ts.extra ? 1 : 0);
				kn->ukr(mr, nr, kc, g->a + (size_t)i * g->lda + kb, g->lda, pj,
					g->c + (size_t)i * g->ldc + n0, g->ldc, load_c);
				i += mr;
				for (int q = 0; q < per_tile && left > 0; q++, left--) {
					__builtin_prefetch(nx.w + (size_t)prow * nx.ld + (size_t)pcol * 64, 0, 2);
					if (++pcol == nx.row_lines) {
						pcol = 0;
						prow++;
					}
				}
			}
		}
	}
	if (!g->tp)
		free(p);
}

static void gemv_worker(void *arg, int ith, int nth)
{
	const struct gemm_job *g = arg;
	/* Split N in 16-column units so threads write whole cache lines of C. */
	int units = (g->n + 15) / 16, lo, hi;
	split(units, ith, nth, &lo, &hi);
	int n0 = lo * 16, n1 = hi * 16 < g->n ? hi * 16 : g->n;
	if (n0 < n1)
		gemm_rows_gemv(g, 0, g->m, n0, n1);
}

void kvp_cpu_matmul(struct kvp_threadpool *tp, const float *a, size_t lda, const float *w,
		    size_t ldw, float *c, size_t ldc, int m, int n, int k, bool accumulate)
{
	assert(m >= 0 && n >= 0 && k >= 0);
	assert(lda >= (size_t)k && ldw >= (size_t)k && ldc >= (size_t)n);
	if (m == 0 || n == 0)
		return;
	if (k == 0) {
		if (!accumulate)
			for (int i = 0; i < m; i++)
				memset(c + (size_t)i * ldc, 0, (size_t)n * sizeof(float));
		return;
	}
	struct gemm_job g = {
		.kern = kvp_cpu_kern(), .tp = tp, .a = a, .w = w, .c = c,
		.lda = lda, .ldw = ldw, .ldc = ldc, .m = m, .n = n, .k = k,
		.accumulate = accumulate,
	};
	if (m <= KVP_GEMV_MAX_M)
		kvp_cpu_parallel(tp, gemv_worker, &g);
	else
		kvp_cpu_parallel(tp, gemm_worker, &g);
}

/* ---- W of any type -------------------------------------------------------------------- */

static void reserve_worker(void *arg, int ith, int nth)
{
	struct gemm_job *g = arg;

	if (!gemm_scratch(g, ith))
		atomic_store(&g->no_scratch, 1);
}

int kvp_cpu_gemm_w(struct kvp_threadpool *tp, const float *a, size_t lda,
		   const struct kvp_gemm_w *w, float *c, size_t ldc, int m, int n, int k,
		   bool accumulate)
{
	struct gemm_job g = {
		.kern = kvp_cpu_kern(), .tp = tp, .a = a, .c = c, .lda = lda, .ldc = ldc,
		.m = m, .n = n, .k = k, .accumulate = accumulate, .wsrc = w,
	};

	assert(m > 0 && n > 0 && k > 0 && lda >= (size_t)k && ldc >= (size_t)n);
	assert(k % (int)w->blk_elems == 0 && g.kern->kc % (int)w->blk_elems == 0);
	/* every thread's scratch first, so that C is untouched when some cannot be had */
	if (tp) {
		kvp_threadpool_run(tp, reserve_worker, &g);
		if (atomic_load(&g.no_scratch))
			return KVP_ENOMEM;
	}
	kvp_cpu_parallel(tp, gemm_worker, &g);
	return atomic_load(&g.no_scratch) ? KVP_ENOMEM : KVP_OK;
}

/* ---- prepacked W ----------------------------------------------------------------------
 *
 * The whole of W in the layout pack_w gives one slice: panel j (output features
 * j*NR .. j*NR+NR-1) is a (kpad, NR) array, k-major, columns past n zero, panels
 * pstride = kpad * NR floats apart (kpad: k rounded up to 16, keeping every slice
 * 64-byte aligned). Slice (j, kb) of the GEMM is then panel j from row kb: the driver
 * reads it in place instead of packing it. */
struct kvp_packed_w {
	const struct kvp_cpu_kern *kern;  /* the layout (NR) is this table's */
	const float *w;                   /* the original, for M <= 3 and other kernels */
	size_t ldw;
	int n, k;
	size_t pstride;
	float *p;                         /* (panels, kpad, NR) */
};

int kvp_cpu_pack_w(const float *w, size_t ldw, int n, int k, struct kvp_packed_w **out)
{
	if (!w || !out || n < 0 || k < 0 || ldw < (size_t)k)
		return KVP_EINVAL;
	struct kvp_packed_w *pw = calloc(1, sizeof(*pw));
	if (!pw)
		return KVP_ENOMEM;
	const struct kvp_cpu_kern *kn = kvp_cpu_kern();
	const int NR = kn->nr, KC = kn->kc;
	const size_t panels = ((size_t)n + (size_t)NR - 1) / (size_t)NR;
	const size_t kpad = ((size_t)k + 15) / 16 * 16;
	*pw = (struct kvp_packed_w){ .kern = kn, .w = w, .ldw = ldw, .n = n, .k = k,
				     .pstride = kpad * (size_t)NR };
	if (panels > 0 && k > 0) {
		size_t bytes = panels * pw->pstride * sizeof(float);
		pw->p = aligned_alloc(64, (bytes + 63) / 64 * 64);
		if (!pw->p) {
			free(pw);
			return KVP_ENOMEM;
		}
		for (size_t j = 0; j < panels; j++) {
			int n0 = (int)j * NR, nr = n - n0 < NR ? n - n0 : NR;
			float *pj = pw->p + j * pw->pstride;
			for (int kb = 0; kb < k; kb += KC) {
				int kc = k - kb < KC ? k - kb : KC;
				kn->pack_w(w + (size_t)n0 * ldw + kb, ldw, nr, kc, pj + (size_t)kb * NR);
			}
			/* rows k .. kpad-1 are never read; keep them defined */
			memset(pj + (size_t)k * NR, 0, (kpad - (size_t)k) * NR * sizeof(float));
		}
	}
	*out = pw;
	return KVP_OK;
}

void kvp_cpu_packed_free(struct kvp_packed_w *pw)
{
	if (!pw)
		return;
	free(pw->p);
	free(pw);
}

size_t kvp_cpu_packed_bytes(const struct kvp_packed_w *pw)
{
	if (!pw || !pw->p)
		return 0;
	return ((size_t)pw->n + (size_t)pw->kern->nr - 1) / (size_t)pw->kern->nr * pw->pstride *
	       sizeof(float);
}

void kvp_cpu_matmul_packed(struct kvp_threadpool *tp, const float *a, size_t lda,
			   const struct kvp_packed_w *w, float *c, size_t ldc, int m,
			   bool accumulate)
{
	const struct kvp_cpu_kern *kn = kvp_cpu_kern();

	assert(m >= 0 && lda >= (size_t)w->k && ldc >= (size_t)w->n);
	if (m <= KVP_GEMV_MAX_M || kn != w->kern || !w->p) {
		/* matrix-vector (reads W once either way), a dispatch other than the one
		 * that packed, or nothing packed (n or k 0) */
		kvp_cpu_matmul(tp, a, lda, w->w, w->ldw, c, ldc, m, w->n, w->k, accumulate);
		return;
	}
	struct gemm_job g = {
		.kern = kn, .tp = tp, .a = a, .w = w->w, .c = c,
		.lda = lda, .ldw = w->ldw, .ldc = ldc, .m = m, .n = w->n, .k = w->k,
		.accumulate = accumulate, .packed = w->p, .pstride = w->pstride,
	};
	kvp_cpu_parallel(tp, gemm_worker, &g);
}

/* ---- peak ---------------------------------------------------------------------------- */

struct peak_job {
	const struct kvp_cpu_kern *kern;
	long iters;
	double flops[KVP_CPU_PEAK_MAX_THREADS];
};

static void peak_worker(void *arg, int ith, int nth)
{
	struct peak_job *pj = arg;
	double f = pj->kern->peak(pj->iters);
	if (ith < KVP_CPU_PEAK_MAX_THREADS)
		pj->flops[ith] = f;
}

/* Every thread at once, each its own ith: the rate is the sum over the wall time. */
static void run_peak(struct kvp_threadpool *tp, struct peak_job *pj)
{
	if (tp)
		kvp_threadpool_run(tp, peak_worker, pj);
	else
		peak_worker(pj, 0, 1);
}

static double seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double kvp_cpu_peak_gflops(struct kvp_threadpool *tp)
{
	struct peak_job pj = { .kern = kvp_cpu_kern(), .iters = 1000 };
	double best = 0;
	int nth = kvp_threadpool_size(tp);

	/* Calibrate to ~20 ms a run (which also wakes the threads), then keep the best of
	 * eight runs: the flops of every thread over the wall time of the whole run. */
	for (;;) {
		double t0 = seconds();
		run_peak(tp, &pj);
		double t = seconds() - t0;
		if (t > 0.005 || pj.iters > (1L << 40))
			break;
		pj.iters *= 4;
	}
	{
		double t0 = seconds();
		run_peak(tp, &pj);
		double t = seconds() - t0;
		if (t > 0)
			pj.iters = (long)((double)pj.iters * 0.02 / t) + 1;
	}
	for (int r = 0; r < 8; r++) {
		double t0 = seconds();
		run_peak(tp, &pj);
		double t = seconds() - t0;
		double fl = 0;
		for (int i = 0; i < nth && i < KVP_CPU_PEAK_MAX_THREADS; i++)
			fl += pj.flops[i];
		if (t > 0 && fl / t > best)
			best = fl / t;
	}
	return best * 1e-9;
}
