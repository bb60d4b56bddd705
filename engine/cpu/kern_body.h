/*
 * kern_body.h - the kernels written once for every instruction set: matrix-vector (W in
 * f32, f16 or bf16), elementwise ops, f16 conversion loops and both attention paths.
 * Included by the kern_<isa>.c files after they define, for their vector type:
 *
 *   VF, VLEN                      vector of VLEN floats
 *   VF_ZERO() VF_SET1(x)          constructors
 *   VF_LOAD(p) VF_STORE(p, v)     unaligned load / store
 *   VF_ADD VF_SUB VF_MUL VF_DIV VF_MAX   lane-wise
 *   VF_FMA(a, b, c)               a * b + c
 *   VF_HSUM(v) VF_HMAX(v)         horizontal sum / max, a float
 *   VF_EXP(v)                     e^v within ~2 ulp, 0 below -87.3 (so e^-inf = 0)
 *   VF_GT_SEL(a, b, x, y)         lane-wise a > b ? x : y
 *   VF_LOAD_F16(p) VF_STORE_F16(p, v)   VLEN halves <-> VF
 *   VF_LOAD_BF16(p)               VLEN bfloat16s -> VF
 *   VF_SWAP_PAIRS(v)              (optional) lanes (1, 0, 3, 2, ..)
 *   BODY_TB BODY_QB BODY_DB       attention register blocking (see below)
 *
 * Every function here is static; the kern file puts them in its table.
 */
#ifndef VLEN
#error "kern_body.h is included by a kern_<isa>.c after it defines the VF_ macros"
#endif

#include <math.h>
#include <string.h>

#define BODY_INLINE static inline __attribute__((always_inline))
#define BODY_ROUND_UP(x, m) (((x) + (m) - 1) / (m) * (m))

/* ---- f16 ------------------------------------------------------------------------------ */

static void body_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
	size_t i = 0;
	for (; i + VLEN <= n; i += VLEN)
		VF_STORE(dst + i, VF_LOAD_F16(src + i));
	for (; i < n; i++)
		dst[i] = kvp_f16_to_f32(src[i]);
}

static void body_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
	size_t i = 0;
	for (; i + VLEN <= n; i += VLEN)
		VF_STORE_F16(dst + i, VF_LOAD(src + i));
	for (; i < n; i++)
		dst[i] = kvp_f32_to_f16(src[i]);
}

/* ---- elementwise ---------------------------------------------------------------------- */

static void body_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
	VF s0 = VF_ZERO(), s1 = VF_ZERO(), s2 = VF_ZERO(), s3 = VF_ZERO();
	int i = 0;
	for (; i + 4 * VLEN <= n; i += 4 * VLEN) {
		VF x0 = VF_LOAD(x + i), x1 = VF_LOAD(x + i + VLEN);
		VF x2 = VF_LOAD(x + i + 2 * VLEN), x3 = VF_LOAD(x + i + 3 * VLEN);
		s0 = VF_FMA(x0, x0, s0);
		s1 = VF_FMA(x1, x1, s1);
		s2 = VF_FMA(x2, x2, s2);
		s3 = VF_FMA(x3, x3, s3);
	}
	for (; i + VLEN <= n; i += VLEN) {
		VF x0 = VF_LOAD(x + i);
		s0 = VF_FMA(x0, x0, s0);
	}
	double sum = (double)VF_HSUM(VF_ADD(VF_ADD(s0, s1), VF_ADD(s2, s3)));
	for (; i < n; i++)
		sum += (double)x[i] * x[i];
	/* as llama.cpp: y = x * (1 / sqrtf(mean + eps)), then y * w */
	float scale = 1.0f / sqrtf((float)(sum / n) + eps);
	VF vs = VF_SET1(scale);
	for (i = 0; i + VLEN <= n; i += VLEN)
		VF_STORE(out + i, VF_MUL(VF_MUL(VF_LOAD(x + i), vs), VF_LOAD(w + i)));
	for (; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

/* silu(g) * u = g / (1 + e^-g) * u */
BODY_INLINE VF swiglu_vec(VF g, VF u)
{
	VF e = VF_EXP(VF_SUB(VF_ZERO(), g));
	return VF_MUL(VF_DIV(g, VF_ADD(VF_SET1(1.0f), e)), u);
}

static void body_swiglu(float *gate, const float *up, int n)
{
	int i = 0;
	for (; i + VLEN <= n; i += VLEN)
		VF_STORE(gate + i, swiglu_vec(VF_LOAD(gate + i), VF_LOAD(up + i)));
	if (i < n) {
		/* the tail through the same vector code, so that results do not depend on
		 * where a buffer is cut into calls */
		float gt[VLEN] = { 0 }, ut[VLEN] = { 0 };
		memcpy(gt, gate + i, sizeof(float) * (size_t)(n - i));
		memcpy(ut, up + i, sizeof(float) * (size_t)(n - i));
		VF_STORE(gt, swiglu_vec(VF_LOAD(gt), VF_LOAD(ut)));
		memcpy(gate + i, gt, sizeof(float) * (size_t)(n - i));
	}
}

static void body_add(float *x, const float *y, int n)
{
	int i = 0;
	for (; i + VLEN <= n; i += VLEN)
		VF_STORE(x + i, VF_ADD(VF_LOAD(x + i), VF_LOAD(y + i)));
	for (; i < n; i++)
		x[i] += y[i];
}

static void body_rope(float *x, int n_heads, int head_dim, int pairs, const float *cc,
		      const float *ss)
{
	for (int h = 0; h < n_heads; h++) {
		float *xh = x + (size_t)h * head_dim;
		int i = 0;
#ifdef VF_SWAP_PAIRS
		for (; i + VLEN <= 2 * pairs; i += VLEN) {
			VF v = VF_LOAD(xh + i);
			VF_STORE(xh + i, VF_FMA(VF_SWAP_PAIRS(v), VF_LOAD(ss + i),
						VF_MUL(v, VF_LOAD(cc + i))));
		}
#endif
		for (; i < 2 * pairs; i += 2) {
			float x0 = xh[i], x1 = xh[i + 1];
			xh[i] = x0 * cc[i] + x1 * ss[i];
			xh[i + 1] = x1 * cc[i + 1] + x0 * ss[i + 1];
		}
	}
}

/* ---- matrix-vector -------------------------------------------------------------------- */

/* The element type of rows read as f32 vectors: f32, or f16 / bf16 converted in
 * registers (a constant after inlining). W in the matrix-vector kernels; K and V in
 * decode attention. */
enum { GEMV_F32, GEMV_F16, GEMV_BF16 };

BODY_INLINE VF gemv_wload(const int wt, const void *w, size_t i)
{
	if (wt == GEMV_F16)
		return VF_LOAD_F16((const uint16_t *)w + i);
	if (wt == GEMV_BF16)
		return VF_LOAD_BF16((const uint16_t *)w + i);
	return VF_LOAD((const float *)w + i);
}

BODY_INLINE float gemv_wscalar(const int wt, const void *w, size_t i)
{
	if (wt == GEMV_F16)
		return kvp_f16_to_f32(((const uint16_t *)w)[i]);
	if (wt == GEMV_BF16)
		return kvp_bf16_to_f32(((const uint16_t *)w)[i]);
	return ((const float *)w)[i];
}

/* c[r] (+)= A row r . w for r < M (1 or 2): one row of W read front to back, the one
 * sequential stream per thread that the hardware prefetcher follows best (what decode,
 * bound by the reads, needs). Each dot product in four chains of partial sums. */
BODY_INLINE void gemv_row(const int wt, const int M, const float *a, size_t lda,
			  const void *w, int k, float *c, size_t ldc, bool accumulate)
{
	VF acc[2][4];
	for (int r = 0; r < M; r++)
		for (int u = 0; u < 4; u++)
			acc[r][u] = VF_ZERO();
	int kk = 0;
	for (; kk + 4 * VLEN <= k; kk += 4 * VLEN)
		for (int u = 0; u < 4; u++) {
			VF wv = gemv_wload(wt, w, (size_t)kk + (size_t)u * VLEN);
			for (int r = 0; r < M; r++)
				acc[r][u] = VF_FMA(VF_LOAD(a + (size_t)r * lda + kk + u * VLEN), wv,
						   acc[r][u]);
		}
	for (; kk + VLEN <= k; kk += VLEN) {
		VF wv = gemv_wload(wt, w, (size_t)kk);
		for (int r = 0; r < M; r++)
			acc[r][0] = VF_FMA(VF_LOAD(a + (size_t)r * lda + kk), wv, acc[r][0]);
	}
	for (int r = 0; r < M; r++) {
		float s = VF_HSUM(VF_ADD(VF_ADD(acc[r][0], acc[r][1]), VF_ADD(acc[r][2], acc[r][3])));
		for (int t = kk; t < k; t++)
			s += a[(size_t)r * lda + t] * gemv_wscalar(wt, w, (size_t)t);
		float *cp = c + (size_t)r * ldc;
		*cp = accumulate ? *cp + s : s;
	}
}

/* C[0:M, 0:J] (+)= A (M, k) . W (J, k)^T for M of 3 or 4: the products, no longer the
 * reads, are the bound; a tile of four rows of W reuses each load of A four times. Four
 * interleaved rows of W are four short streams the hardware prefetcher follows badly,
 * so the next tile's rows are asked for line by line while this one runs (a decode
 * batch of 8 rows took 1.3-1.4x less time with it, kvprefix-bench engine --concurrency). */
BODY_INLINE void gemv_tile(const int wt, const int M, const int J, const float *a, size_t lda,
			   const void *w, size_t ldw, int k, float *c, size_t ldc, bool accumulate)
{
	VF acc[4][4];
	for (int r = 0; r < M; r++)
		for (int j = 0; j < J; j++)
			acc[r][j] = VF_ZERO();
	const size_t esz = wt == GEMV_F32 ? sizeof(float) : sizeof(uint16_t);
	const char *next = (const char *)w + (size_t)J * ldw * esz;
	int kk = 0;
	for (; kk + VLEN <= k; kk += VLEN) {
		VF wv[4];
		for (int j = 0; j < J; j++) {
			__builtin_prefetch(next + ((size_t)j * ldw + (size_t)kk) * esz);
			wv[j] = gemv_wload(wt, w, (size_t)j * ldw + kk);
		}
		for (int r = 0; r < M; r++) {
			VF av = VF_LOAD(a + (size_t)r * lda + kk);
			for (int j = 0; j < J; j++)
				acc[r][j] = VF_FMA(av, wv[j], acc[r][j]);
		}
	}
	for (int r = 0; r < M; r++) {
		float sums[4];
#ifdef VF_HSUM4
		if (J == 4)
			VF_HSUM4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], sums);
		else
#endif
			for (int j = 0; j < J; j++)
				sums[j] = VF_HSUM(acc[r][j]);
		for (int j = 0; j < J; j++) {
			float s = sums[j];
			for (int t = kk; t < k; t++)
				s += a[(size_t)r * lda + t] * gemv_wscalar(wt, w, (size_t)j * ldw + t);
			float *cp = c + (size_t)r * ldc + j;
			*cp = accumulate ? *cp + s : s;
		}
	}
}

/* C[0:M, 0] (+)= A (M, k) . w for M of 5 to 8, A small enough to stay in L1: one row of
 * W, one stream the hardware prefetcher follows, against every row of A at once, one
 * chain of partial sums a row (M chains keep the FMA pipes full). The row GEMV_AHEAD rows
 * on is asked for line by line meanwhile, so that W keeps coming from memory at the
 * pace of the products. Where W comes from DRAM, as a model's weights do, this beats
 * the 4 x 4 tiles: 8 sequences of the default model (K = 512 in most of its matrices)
 * decode 1.2-1.3x faster in process (kvprefix-bench engine --concurrency 1,8). Where W
 * sits in the L3 (kernels' 1536 x 512 shape) it is about 10% slower, and once A's rows
 * outgrow L1 the tiles win (cpu_impl.h kvp_cpu_gemv_wide). */
#define GEMV_AHEAD 4
BODY_INLINE void gemv_col(const int wt, const int M, const float *a, size_t lda,
			  const void *w, size_t ldw, int k, float *c, size_t ldc, bool accumulate)
{
	const size_t esz = wt == GEMV_F32 ? sizeof(float) : sizeof(uint16_t);
	const char *ahead = (const char *)w + GEMV_AHEAD * ldw * esz;
	VF acc[KVP_GEMV_WIDE_ROWS];
	for (int r = 0; r < M; r++)
		acc[r] = VF_ZERO();
	int kk = 0;
	for (; kk + VLEN <= k; kk += VLEN) {
		__builtin_prefetch(ahead + (size_t)kk * esz);
		VF wv = gemv_wload(wt, w, (size_t)kk);
		for (int r = 0; r < M; r++)
			acc[r] = VF_FMA(VF_LOAD(a + (size_t)r * lda + kk), wv, acc[r]);
	}
	for (int r = 0; r < M; r++) {
		float s = VF_HSUM(acc[r]);
		for (int t = kk; t < k; t++)
			s += a[(size_t)r * lda + t] * gemv_wscalar(wt, w, (size_t)t);
		float *cp = c + (size_t)r * ldc;
		*cp = accumulate ? *cp + s : s;
	}
}

/* Rows of W against M (1 .. 8) rows of A. The three kernels sum in different orders: a
 * result differs between one or two rows, three or four, and five to eight by f32
 * rounding. */
BODY_INLINE void gemv_rows(const int wt, const int M, const float *a, size_t lda, const void *w,
			   size_t ldw, int n, int k, float *c, size_t ldc, bool accumulate)
{
	const size_t esz = wt == GEMV_F32 ? sizeof(float) : sizeof(uint16_t);
	int j = 0;
	if (M > KVP_GEMV_ROWS) {
		for (; j < n; j++)
			gemv_col(wt, M, a, lda, (const char *)w + (size_t)j * ldw * esz, ldw, k,
				 c + j, ldc, accumulate);
		return;
	}
	if (M <= 2) {
		for (; j < n; j++)
			gemv_row(wt, M, a, lda, (const char *)w + (size_t)j * ldw * esz, k, c + j, ldc,
				 accumulate);
		return;
	}
	for (; j + 4 <= n; j += 4)
		gemv_tile(wt, M, 4, a, lda, (const char *)w + (size_t)j * ldw * esz, ldw, k, c + j,
			  ldc, accumulate);
	for (; j < n; j++)
		gemv_tile(wt, M, 1, a, lda, (const char *)w + (size_t)j * ldw * esz, ldw, k, c + j,
			  ldc, accumulate);
}

BODY_INLINE void gemv_any(const int wt, const float *a, size_t lda, int m, const void *w,
			  size_t ldw, int n, int k, float *c, size_t ldc, bool accumulate)
{
	switch (m) {
	case 1: gemv_rows(wt, 1, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 2: gemv_rows(wt, 2, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 3: gemv_rows(wt, 3, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 4: gemv_rows(wt, 4, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 5: gemv_rows(wt, 5, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 6: gemv_rows(wt, 6, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	case 7: gemv_rows(wt, 7, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	default: gemv_rows(wt, 8, a, lda, w, ldw, n, k, c, ldc, accumulate); break;
	}
}
_Static_assert(KVP_GEMV_ROWS == 4 && KVP_GEMV_WIDE_ROWS == 8,
	       "gemv_rows' kernels and gemv_any's cases follow these");

static void body_gemv(const float *a, size_t lda, int m, const float *w, size_t ldw, int n,
		      int k, float *c, size_t ldc, bool accumulate)
{
	gemv_any(GEMV_F32, a, lda, m, w, ldw, n, k, c, ldc, accumulate);
}

static void body_gemv_f16(const float *a, size_t lda, int m, const uint16_t *w, size_t ldw,
			  int n, int k, float *c, size_t ldc, bool accumulate)
{
	gemv_any(GEMV_F16, a, lda, m, w, ldw, n, k, c, ldc, accumulate);
}

static void body_gemv_bf16(const float *a, size_t lda, int m, const uint16_t *w, size_t ldw,
			   int n, int k, float *c, size_t ldc, bool accumulate)
{
	gemv_any(GEMV_BF16, a, lda, m, w, ldw, n, k, c, ldc, accumulate);
}

/* ---- attention, many queries per kv head ------------------------------------------------
 *
 * One work item: query rows [r0, r1) x the G query heads of kv head hk, R = (r1-r0)*G
 * query vectors, padded to rp (a multiple of VLEN). Queries run along the vector lanes,
 * so the online softmax is lane-wise and both products are broadcast-FMA GEMMs:
 *
 *   qt (d, rp)      q^T * scale               (built once)
 *   for each tile of TILE positions t0 .. t0+tt-1 (K/V rows kp[i], vp[i] in the blocks,
 *                                              or converted from f16 into kt, vt):
 *     st (tt, rp)   = K_tile (tt, d) . qt      broadcast K[i][e], TB x QB vectors
 *                     -inf where position > the query's last position (causal)
 *     m' = max(m, max_i st); p = e^(st - m'); l = l e^(m - m') + sum_i p
 *     ot (d, rp)    = ot * e^(m - m') + V_tile^T (d, tt) . p
 *                                              broadcast V[i][e], DB x QB vectors
 *   out = ot^T / l
 */

/* st[i][q] = sum_e kp[i][e] * qt[e][q] for i < TB, QB vectors of q. */
BODY_INLINE void attn_scores_blk(const int TB, const int QB, const float *const *kp, int d,
				 const float *qt, size_t rp, float *st)
{
	VF acc[2 * BODY_TB][BODY_QB];
	for (int i = 0; i < TB; i++)
		for (int j = 0; j < QB; j++)
			acc[i][j] = VF_ZERO();
	for (int e = 0; e < d; e++) {
		VF qv[BODY_QB];
		for (int j = 0; j < QB; j++)
			qv[j] = VF_LOAD(qt + (size_t)e * rp + (size_t)j * VLEN);
		for (int i = 0; i < TB; i++) {
			VF kb = VF_SET1(kp[i][e]);
			for (int j = 0; j < QB; j++)
				acc[i][j] = VF_FMA(kb, qv[j], acc[i][j]);
		}
	}
	for (int i = 0; i < TB; i++)
		for (int j = 0; j < QB; j++)
			VF_STORE(st + (size_t)i * rp + (size_t)j * VLEN, acc[i][j]);
}

/* ot[e][q] += sum_i vp[i][e0 + e] * st[i][q] for e < DB, QB vectors of q. */
BODY_INLINE void attn_pv_blk(const int DB, const int QB, const float *const *vp, int e0, int tt,
			     const float *st, size_t rp, float *ot)
{
	VF acc[2 * BODY_DB][BODY_QB];
	for (int e = 0; e < DB; e++)
		for (int j = 0; j < QB; j++)
			acc[e][j] = VF_LOAD(ot + (size_t)e * rp + (size_t)j * VLEN);
	for (int i = 0; i < tt; i++) {
		VF pv[BODY_QB];
		for (int j = 0; j < QB; j++)
			pv[j] = VF_LOAD(st + (size_t)i * rp + (size_t)j * VLEN);
		for (int e = 0; e < DB; e++) {
			VF vb = VF_SET1(vp[i][e0 + e]);
			for (int j = 0; j < QB; j++)
				acc[e][j] = VF_FMA(vb, pv[j], acc[e][j]);
		}
	}
	for (int e = 0; e < DB; e++)
		for (int j = 0; j < QB; j++)
			VF_STORE(ot + (size_t)e * rp + (size_t)j * VLEN, acc[e][j]);
}

/* Scores of all tt positions for QB query vectors from column j0 (TB positions a
 * block, then one at a time). */
/* The K and V rows of the next tile, asked for a few at a time while this tile's scores
 * run: a kv head's rows are only block_tokens * d contiguous (a few KiB, then another
 * block anywhere), too short for the hardware prefetcher, and a whole tile asked for
 * at once (hundreds of lines) fills the miss buffers and stalls the loads the
 * arithmetic waits on. */
struct attn_pf {
	const char *k[KVP_ATTN_TILE], *v[KVP_ATTN_TILE];
	int rows;               /* 0: nothing to fetch */
	int lines;              /* 64-byte lines of one row */
};

BODY_INLINE void attn_pf_rows(const struct attn_pf *pf, int i0, int n)
{
	for (int i = i0; i < i0 + n && i < pf->rows; i++)
		for (int c = 0; c < pf->lines; c++) {
			__builtin_prefetch(pf->k[i] + 64 * c);
			__builtin_prefetch(pf->v[i] + 64 * c);
		}
}

BODY_INLINE void attn_scores_cols(const int TB, const int QB, const float *const *kp, int tt,
				  int d, const float *qt, size_t rp, float *st,
				  const struct attn_pf *pf)
{
	int i = 0;
	for (; i + TB <= tt; i += TB) {
		attn_scores_blk(TB, QB, kp + i, d, qt, rp, st + (size_t)i * rp);
		if (pf)
			attn_pf_rows(pf, i, TB);
	}
	for (; i < tt; i++) {
		attn_scores_blk(1, QB, kp + i, d, qt, rp, st + (size_t)i * rp);
		if (pf)
			attn_pf_rows(pf, i, 1);
	}
	/* a tile shorter than the next (the first of a causal row range) */
	if (pf && tt < pf->rows)
		attn_pf_rows(pf, tt, pf->rows - tt);
}

/* ot += V^T . p over all d for QB query vectors (DB dims a block, then one at a time). */
BODY_INLINE void attn_pv_cols(const int DB, const int QB, const float *const *vp, int d, int tt,
			      const float *st, size_t rp, float *ot)
{
	int e = 0;
	for (; e + DB <= d; e += DB)
		attn_pv_blk(DB, QB, vp, e, tt, st, rp, ot + (size_t)e * rp);
	for (; e < d; e++)
		attn_pv_blk(1, QB, vp, e, tt, st, rp, ot + (size_t)e * rp);
}

/* The K and V rows of positions t0 .. t0+tt-1 (f32 or f16, as stored; tt <= KVP_ATTN_TILE).
 * Walks the block table without a division per row. */
static void attn_tile_ptrs(const struct kvp_kv_view *kv, uint32_t hk, uint32_t t0, int tt,
			   const void **kp, const void **vp)
{
	const size_t esz = kv->dtype == KVP_KV_F16 ? 2 : 4, row = kv->head_dim * esz;
	const size_t koff = kvp_kv_offset(kv, 0, hk, 0) * esz, voff = kvp_kv_offset(kv, 1, hk, 0) * esz;
	uint32_t b = t0 / kv->block_tokens, j = t0 % kv->block_tokens;

	for (int i = 0; i < tt; i++) {
		const char *base = (const char *)kv->blocks[b] + j * row;

		kp[i] = base + koff;
		vp[i] = base + voff;
		if (++j == kv->block_tokens) {
			j = 0;
			b++;
		}
	}
}

/* attn_tile_ptrs with f16 rows converted into kt, vt (TILE, d): rows of f32 in both. */
static void attn_tile_rows(const struct kvp_kv_view *kv, uint32_t hk, uint32_t t0, int tt,
			   float *kt, float *vt, const float **kp, const float **vp)
{
	const size_t d = kv->head_dim;
	const void *kr[KVP_ATTN_TILE], *vr[KVP_ATTN_TILE];

	attn_tile_ptrs(kv, hk, t0, tt, kr, vr);
	for (int i = 0; i < tt; i++) {
		if (kv->dtype == KVP_KV_F16) {
			body_f16_to_f32(kt + (size_t)i * d, kr[i], d);
			body_f16_to_f32(vt + (size_t)i * d, vr[i], d);
			kp[i] = kt + (size_t)i * d;
			vp[i] = vt + (size_t)i * d;
		} else {
			kp[i] = kr[i];
			vp[i] = vr[i];
		}
	}
}

/* Ask for the K and V rows of positions t0 .. t0+tt-1 ahead of use: a kv head's rows
 * are only block_tokens * d contiguous (a few KiB, then another block anywhere), too
 * short for the hardware prefetcher, so decode would wait on every block. */
static void attn_tile_prefetch(const struct kvp_kv_view *kv, uint32_t hk, uint32_t t0, int tt)
{
	const size_t row = kv->head_dim * (kv->dtype == KVP_KV_F16 ? 2 : 4);
	const void *kp[KVP_ATTN_TILE], *vp[KVP_ATTN_TILE];

	attn_tile_ptrs(kv, hk, t0, tt, kp, vp);
	for (int i = 0; i < tt; i++)
		for (size_t off = 0; off < row; off += 64) {
			__builtin_prefetch((const char *)kp[i] + off);
			__builtin_prefetch((const char *)vp[i] + off);
		}
}

/* The K and V row addresses of positions t0 .. t0+tt-1, for attn_pf_rows. */
static void attn_pf_init(const struct kvp_kv_view *kv, uint32_t hk, uint32_t t0, int tt,
			 struct attn_pf *pf)
{
	const size_t esz = kv->dtype == KVP_KV_F16 ? 2 : 4, row = kv->head_dim * esz;
	const size_t koff = kvp_kv_offset(kv, 0, hk, 0) * esz, voff = kvp_kv_offset(kv, 1, hk, 0) * esz;
	uint32_t b = t0 / kv->block_tokens, j = t0 % kv->block_tokens;
	pf->rows = tt;
	pf->lines = (int)((row + 63) / 64);
	for (int i = 0; i < tt; i++) {
		const char *base = (const char *)kv->blocks[b] + j * row;
		pf->k[i] = base + koff;
		pf->v[i] = base + voff;
		if (++j == kv->block_tokens) {
			j = 0;
			b++;
		}
	}
}

static void body_attn_big(const struct kvp_attn_args *args, uint32_t hk, uint32_t r0,
			  uint32_t r1, float *scratch)
{
	const struct kvp_kv_view *kv = args->kv;
	const int d = (int)kv->head_dim, G = (int)args->group;
	const int R = (int)(r1 - r0) * G;
	const size_t rp = BODY_ROUND_UP((size_t)R, VLEN);
	const int nqv = (int)(rp / VLEN);
	const size_t ldq = (size_t)args->n_heads * (size_t)d;
	float *qt = scratch;                            /* (d, rp) */
	float *ot = qt + (size_t)d * rp;                /* (d, rp) */
	float *st = ot + (size_t)d * rp;                /* (TILE, rp) */
	float *mx = st + (size_t)KVP_ATTN_TILE * rp;    /* (rp) */
	float *l = mx + rp;                             /* (rp) */
	float *lim = l + rp;                            /* (rp) */
	float *kt = lim + rp;                           /* (TILE, d) */
	float *vt = kt + (size_t)KVP_ATTN_TILE * d;     /* (TILE, d) */
	const float *kp[KVP_ATTN_TILE], *vp[KVP_ATTN_TILE];
	struct attn_pf pf;

	for (size_t q = 0; q < rp; q++) {
		/* padded lanes copy the last real query's limit and see zeros */
		size_t qq = q < (size_t)R ? q : (size_t)R - 1;
		uint32_t r = r0 + (uint32_t)(qq / (size_t)G);
		uint32_t h = hk * (uint32_t)G + (uint32_t)(qq % (size_t)G);
		const float *qr = args->q + (size_t)r * ldq + (size_t)h * d;
		for (int e = 0; e < d; e++)
			qt[(size_t)e * rp + q] = q < (size_t)R ? qr[e] * args->scale : 0.0f;
		lim[q] = (float)(args->pos0 + r);
		mx[q] = -INFINITY;
		l[q] = 0.0f;
	}
	memset(ot, 0, sizeof(float) * (size_t)d * rp);

	const uint32_t first_lim = args->pos0 + r0, last = args->pos0 + r1 - 1;
	for (uint32_t t0 = 0; t0 <= last; t0 += KVP_ATTN_TILE) {
		const int tt = (int)(last + 1 - t0 < KVP_ATTN_TILE ? last + 1 - t0 : KVP_ATTN_TILE);
		attn_tile_rows(kv, hk, t0, tt, kt, vt, kp, vp);
		pf.rows = 0;
		if (t0 + KVP_ATTN_TILE <= last) {
			uint32_t t1 = t0 + KVP_ATTN_TILE;
			attn_pf_init(kv, hk, t1, (int)(last + 1 - t1 < KVP_ATTN_TILE ? last + 1 - t1
										     : KVP_ATTN_TILE), &pf);
		}

		/* scores: BODY_QB query vectors at a time, then the rest in one block of
		 * 1 .. BODY_QB-1 vectors (not one at a time: a single vector's few
		 * accumulators would leave the FMA pipes waiting on latency; with one
		 * vector left, twice the positions a block instead) */
		int j = 0;
		for (; j + BODY_QB <= nqv; j += BODY_QB)
			attn_scores_cols(BODY_TB, BODY_QB, kp, tt, d, qt + (size_t)j * VLEN, rp,
					 st + (size_t)j * VLEN, j == 0 ? &pf : NULL);
		switch (nqv - j) {
		case 0:
			break;
#if BODY_QB > 3
		case 3:
			attn_scores_cols(BODY_TB, 3, kp, tt, d, qt + (size_t)j * VLEN, rp,
					 st + (size_t)j * VLEN, j == 0 ? &pf : NULL);
			break;
#endif
#if BODY_QB > 2
		case 2:
			attn_scores_cols(BODY_TB, 2, kp, tt, d, qt + (size_t)j * VLEN, rp,
					 st + (size_t)j * VLEN, j == 0 ? &pf : NULL);
			break;
#endif
		default:
			attn_scores_cols(2 * BODY_TB, 1, kp, tt, d, qt + (size_t)j * VLEN, rp,
					 st + (size_t)j * VLEN, j == 0 ? &pf : NULL);
			break;
		}

		/* causal mask, online softmax, rescale the output so far */
		const bool masked = t0 + (uint32_t)tt - 1 > first_lim;
		const VF ninf = VF_SET1(-INFINITY);
		for (j = 0; j < nqv; j++) {
			const VF vlim = VF_LOAD(lim + (size_t)j * VLEN);
			float *sj = st + (size_t)j * VLEN;
			VF m = ninf;
			for (int i = 0; i < tt; i++) {
				VF s = VF_LOAD(sj + (size_t)i * rp);
				if (masked) {
					s = VF_GT_SEL(VF_SET1((float)(t0 + (uint32_t)i)), vlim, ninf, s);
					VF_STORE(sj + (size_t)i * rp, s);
				}
				m = VF_MAX(m, s);
			}
			VF mold = VF_LOAD(mx + (size_t)j * VLEN);
			VF mnew = VF_MAX(mold, m);
			VF corr = VF_EXP(VF_SUB(mold, mnew));
			VF sum = VF_ZERO();
			for (int i = 0; i < tt; i++) {
				VF p = VF_EXP(VF_SUB(VF_LOAD(sj + (size_t)i * rp), mnew));
				VF_STORE(sj + (size_t)i * rp, p);
				sum = VF_ADD(sum, p);
			}
			VF_STORE(mx + (size_t)j * VLEN, mnew);
			VF_STORE(l + (size_t)j * VLEN, VF_FMA(VF_LOAD(l + (size_t)j * VLEN), corr, sum));
			if (t0 > 0)
				for (int e = 0; e < d; e++) {
					float *o = ot + (size_t)e * rp + (size_t)j * VLEN;
					VF_STORE(o, VF_MUL(VF_LOAD(o), corr));
				}
		}

		/* ot += V^T . p, blocked like the scores */
		for (j = 0; j + BODY_QB <= nqv; j += BODY_QB)
			attn_pv_cols(BODY_DB, BODY_QB, vp, d, tt, st + (size_t)j * VLEN, rp,
				     ot + (size_t)j * VLEN);
		switch (nqv - j) {
		case 0:
			break;
#if BODY_QB > 3
		case 3:
			attn_pv_cols(BODY_DB, 3, vp, d, tt, st + (size_t)j * VLEN, rp,
				     ot + (size_t)j * VLEN);
			break;
#endif
#if BODY_QB > 2
		case 2:
			attn_pv_cols(BODY_DB, 2, vp, d, tt, st + (size_t)j * VLEN, rp,
				     ot + (size_t)j * VLEN);
			break;
#endif
		default:
			attn_pv_cols(2 * BODY_DB, 1, vp, d, tt, st + (size_t)j * VLEN, rp,
				     ot + (size_t)j * VLEN);
			break;
		}
	}

	for (int q = 0; q < R; q++) {
		uint32_t r = r0 + (uint32_t)(q / G);
		uint32_t h = hk * (uint32_t)G + (uint32_t)(q % G);
		float *orow = args->out + (size_t)r * ldq + (size_t)h * d;
		float inv = 1.0f / l[q];
		for (int e = 0; e < d; e++)
			orow[e] = ot[(size_t)e * rp + (size_t)q] * inv;
	}
}

/* ---- attention, a few queries per kv head (decode) -------------------------------------
 *
 * One query row r against positions 0 .. pos0 + r, the G query heads of kv head hk
 * two at a time, a tile of TS positions at a time with the online softmax. K and V are
 * read where they lie, f16 rows converted in registers: each K and V vector is loaded
 * once for both heads of a pair; the scores of four positions are summed across lanes
 * together (VF_HSUM4), and each output vector takes the tile's positions in two
 * chains of partial sums. The queries and outputs live on the stack (16 KiB): heads go
 * up to 8 at a time, fewer past d = 256, so that (heads, d) fits 8 x 256 floats. */

/* s[g * TS + i] = q_g . K_i for the GB (1 or 2) heads at q (d apart), i < tt. */
BODY_INLINE void attn_small_scores(const int et, const int GB, const float *q, int d,
				   const void *const *kp, int tt, float *s)
{
	enum { TS = KVP_ATTN_SMALL_TILE };
	const int dv = d / VLEN * VLEN;
	int i = 0;

#ifdef VF_HSUM4
	for (; i + 4 <= tt; i += 4) {
		VF acc[2][4];

		for (int g = 0; g < GB; g++)
			for (int j = 0; j < 4; j++)
				acc[g][j] = VF_ZERO();
		for (int e = 0; e < dv; e += VLEN) {
			VF k[4];

			for (int j = 0; j < 4; j++)
				k[j] = gemv_wload(et, kp[i + j], e);
			for (int g = 0; g < GB; g++) {
				VF qv = VF_LOAD(q + (size_t)g * d + e);

				for (int j = 0; j < 4; j++)
					acc[g][j] = VF_FMA(qv, k[j], acc[g][j]);
			}
		}
		for (int g = 0; g < GB; g++) {
			float *sg = s + (size_t)g * TS + i;

			VF_HSUM4(acc[g][0], acc[g][1], acc[g][2], acc[g][3], sg);
			for (int j = 0; j < 4; j++)
				for (int e = dv; e < d; e++)
					sg[j] += q[(size_t)g * d + e] * gemv_wscalar(et, kp[i + j], e);
		}
	}
#endif
	for (; i < tt; i++)
		for (int g = 0; g < GB; g++) {
			VF acc = VF_ZERO();
			float x;

			for (int e = 0; e < dv; e += VLEN)
				acc = VF_FMA(VF_LOAD(q + (size_t)g * d + e), gemv_wload(et, kp[i], e), acc);
			x = VF_HSUM(acc);
			for (int e = dv; e < d; e++)
				x += q[(size_t)g * d + e] * gemv_wscalar(et, kp[i], e);
			s[(size_t)g * TS + i] = x;
		}
}

/* o_g = o_g * corr[g] + sum_i p[g * TS + i] V_i for the GB heads at o (d apart). */
BODY_INLINE void attn_small_values(const int et, const int GB, const float *p, const float *corr,
				   const void *const *vp, int tt, int d, float *o)
{
	enum { TS = KVP_ATTN_SMALL_TILE };
	const int dv = d / VLEN * VLEN;

	for (int e = 0; e < dv; e += VLEN) {
		VF a[2], b[2];
		int i = 0;

		for (int g = 0; g < GB; g++) {
			a[g] = VF_MUL(VF_LOAD(o + (size_t)g * d + e), VF_SET1(corr[g]));
			b[g] = VF_ZERO();
		}
		for (; i + 2 <= tt; i += 2) {
			VF v0 = gemv_wload(et, vp[i], e), v1 = gemv_wload(et, vp[i + 1], e);

			for (int g = 0; g < GB; g++) {
				a[g] = VF_FMA(VF_SET1(p[(size_t)g * TS + i]), v0, a[g]);
				b[g] = VF_FMA(VF_SET1(p[(size_t)g * TS + i + 1]), v1, b[g]);
			}
		}
		if (i < tt) {
			VF v0 = gemv_wload(et, vp[i], e);

			for (int g = 0; g < GB; g++)
				a[g] = VF_FMA(VF_SET1(p[(size_t)g * TS + i]), v0, a[g]);
		}
		for (int g = 0; g < GB; g++)
			VF_STORE(o + (size_t)g * d + e, VF_ADD(a[g], b[g]));
	}
	for (int e = dv; e < d; e++)
		for (int g = 0; g < GB; g++) {
			float acc = o[(size_t)g * d + e] * corr[g];

			for (int i = 0; i < tt; i++)
				acc += p[(size_t)g * TS + i] * gemv_wscalar(et, vp[i], e);
			o[(size_t)g * d + e] = acc;
		}
}

/* The scores s (TS, -inf past tt) of one head into probabilities, its running max *m
 * and sum *l updated; returns the factor its output so far is to be scaled by. */
BODY_INLINE float attn_small_softmax(float *s, int tt, float *m, float *l)
{
	enum { TS = KVP_ATTN_SMALL_TILE };
	VF vm = VF_SET1(-INFINITY), vs = VF_ZERO(), vmn;
	float tmax, mnew, corr;

	for (int i = tt; i < TS; i++)
		s[i] = -INFINITY;
	for (int i = 0; i < TS; i += VLEN)
		vm = VF_MAX(vm, VF_LOAD(s + i));
	tmax = VF_HMAX(vm);
	mnew = *m > tmax ? *m : tmax;
	corr = mnew == *m ? 1.0f : expf(*m - mnew);
	vmn = VF_SET1(mnew);
	for (int i = 0; i < TS; i += VLEN) {
		VF p = VF_EXP(VF_SUB(VF_LOAD(s + i), vmn));

		VF_STORE(s + i, p);
		vs = VF_ADD(vs, p);
	}
	*m = mnew;
	*l = *l * corr + VF_HSUM(vs);
	return corr;
}

/* One tile of positions for the GB heads from g (their scaled queries at qs, outputs
 * at o, both (.., d)). */
BODY_INLINE void attn_small_tile(const int et, const int GB, const float *qs, float *o, int d,
				 const void *const *kp, const void *const *vp, int tt, float *m,
				 float *l)
{
	enum { TS = KVP_ATTN_SMALL_TILE };
	float s[2 * TS], corr[2];

	attn_small_scores(et, GB, qs, d, kp, tt, s);
	for (int g = 0; g < GB; g++)
		corr[g] = attn_small_softmax(s + (size_t)g * TS, tt, m + g, l + g);
	attn_small_values(et, GB, s, corr, vp, tt, d, o);
}

static void body_attn_small(const struct kvp_attn_args *args, uint32_t r, uint32_t hk)
{
	enum { TS = KVP_ATTN_SMALL_TILE, MAXD = KVP_ATTN_SMALL_MAX_D, MAXG = KVP_ATTN_SMALL_MAX_G };
	const struct kvp_kv_view *kv = args->kv;
	const int d = (int)kv->head_dim, G = (int)args->group;
	const int gmax = d <= MAXD ? MAXG : MAXG * MAXD / d;
	const int f16 = kv->dtype == KVP_KV_F16;
	const size_t ldq = (size_t)args->n_heads * (size_t)d;
	const uint32_t last = args->pos0 + r;
	float qs[MAXG * MAXD];     /* (gmax, d) scaled queries */
	float o[MAXG * MAXD];      /* (gmax, d) output so far */
	float m[MAXG], l[MAXG];    /* (gmax) running max and sum */
	const void *kp[TS], *vp[TS];

	for (int g0 = 0; g0 < G; g0 += gmax) {
		const int gn = G - g0 < gmax ? G - g0 : gmax;
		for (int g = 0; g < gn; g++) {
			uint32_t h = hk * (uint32_t)G + (uint32_t)(g0 + g);
			const float *qr = args->q + (size_t)r * ldq + (size_t)h * d;
			for (int e = 0; e < d; e++) {
				qs[g * d + e] = qr[e] * args->scale;
				o[g * d + e] = 0.0f;
			}
			m[g] = -INFINITY;
			l[g] = 0.0f;
		}
		for (uint32_t t0 = 0; t0 <= last; t0 += TS) {
			const int tt = (int)(last + 1 - t0 < TS ? last + 1 - t0 : TS);
			attn_tile_ptrs(kv, hk, t0, tt, kp, vp);
			/* two tiles ahead: a tile's work is shorter than a DRAM round trip */
			if (t0 + 2 * TS <= last) {
				uint32_t t2 = t0 + 2 * TS;
				attn_tile_prefetch(kv, hk, t2, (int)(last + 1 - t2 < TS ? last + 1 - t2 : TS));
			}
			for (int g = 0; g < gn; g += 2) {
				float *og = o + (size_t)g * d;
				const float *qg = qs + (size_t)g * d;

				if (gn - g >= 2 && f16)
					attn_small_tile(GEMV_F16, 2, qg, og, d, kp, vp, tt, m + g, l + g);
				else if (gn - g >= 2)
					attn_small_tile(GEMV_F32, 2, qg, og, d, kp, vp, tt, m + g, l + g);
				else if (f16)
					attn_small_tile(GEMV_F16, 1, qg, og, d, kp, vp, tt, m + g, l + g);
				else
					attn_small_tile(GEMV_F32, 1, qg, og, d, kp, vp, tt, m + g, l + g);
			}
		}
		for (int g = 0; g < gn; g++) {
			uint32_t h = hk * (uint32_t)G + (uint32_t)(g0 + g);
			float *orow = args->out + (size_t)r * ldq + (size_t)h * d;
			float inv = 1.0f / l[g];
			for (int e = 0; e < d; e++)
				orow[e] = o[(size_t)g * d + e] * inv;
		}
	}
}
