/*
 * ops.c - the elementwise ops of a llama layer, and half/bfloat conversions.
 *
 * rmsnorm, swiglu, add and the f16 loops go through the dispatched kernel table
 * (vectorised per ISA in kern_body.h; their scalar tails and the generic path use the
 * exact conversions of common/kvp_half.h, which match F16C bit for bit); rope is
 * computed here in double.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "cpu_impl.h"

/* ---- f16 / bf16 ------------------------------------------------------------------------ */

void kvp_cpu_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
	kvp_cpu_kern()->f16_to_f32(dst, src, n);
}

void kvp_cpu_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
	kvp_cpu_kern()->f32_to_f16(dst, src, n);
}

void kvp_cpu_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = kvp_bf16_to_f32(src[i]);
}

/* ---- layer ops ------------------------------------------------------------------------ */

void kvp_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
	assert(n > 0);
	kvp_cpu_kern()->rmsnorm(out, x, w, n, eps);
}

void kvp_cpu_swiglu(float *gate, const float *up, int n)
{
	kvp_cpu_kern()->swiglu(gate, up, n);
}

void kvp_cpu_add(float *x, const float *y, int n)
{
	kvp_cpu_kern()->add(x, y, n);
}

/*
 * Rotary embedding. Pair i of a head turns by pos * f_i (f_i from struct kvp_cpu_rope:
 * base^(-2i/rope_dim) for a plain model, scaled or divided by frequency factors for
 * others), and its cosine and sine are needed to ~1e-7 relative even at large pos (a
 * float angle at pos 4096 is already off by ~5e-4 rad), so they are built in double:
 *
 *   pos = a + j, a = pos rounded down to a multiple of 16 (the anchor), j < 16
 *   e^(i pos f) = e^(i a f) * e^(i j f)
 *
 * e^(i a f) by cos/sin once per anchor, e^(i j f) from a table made once per set of
 * frequencies; the product is the same whatever order positions come in, so the
 * result is deterministic. The rotation itself runs in float, vectorised for adjacent
 * pairs (kern table), on cos/sin rounded to float: within ~3 ulp of the pair's norm;
 * pairs of halves (x[i], x[i + rope_dim/2]) turn in a plain loop. All of it is kept
 * per thread; rope_dim > 256 takes a direct (slower) path.
 */
#define ROPE_STEPS 16
#define ROPE_MAX_PAIRS 128

struct rope_cache {
	bool valid;
	int pairs;
	bool anchor_valid;
	uint32_t anchor;
	uint32_t pos;
	double freq[ROPE_MAX_PAIRS];                   /* (pairs) f_i */
	double step[ROPE_STEPS][ROPE_MAX_PAIRS][2];    /* (16, pairs) cos, sin of j f_i */
	double at[ROPE_MAX_PAIRS][2];                  /* (pairs) cos, sin of anchor f_i */
	float cc[2 * ROPE_MAX_PAIRS];                  /* (2 pairs) cos, cos of pos f_i */
	float ss[2 * ROPE_MAX_PAIRS];                  /* (2 pairs) -sin, sin of pos f_i */
};

static _Thread_local struct rope_cache rope_tls;

/* The frequencies of a plain rope (base^(-2i/rope_dim)), per thread, for the base-only
 * entry points. */
static _Thread_local struct {
	int rope_dim;
	float base;
	double freq[ROPE_MAX_PAIRS];
} plain_tls;

/* Fill cc, ss for pos (cache valid for its frequencies). */
static void rope_angles(struct rope_cache *rc, int pairs, uint32_t pos)
{
	uint32_t anchor = pos - pos % ROPE_STEPS, j = pos % ROPE_STEPS;
	if (!rc->anchor_valid || rc->anchor != anchor) {
		for (int i = 0; i < pairs; i++) {
			double th = (double)anchor * rc->freq[i];
			rc->at[i][0] = cos(th);
			rc->at[i][1] = sin(th);
		}
		rc->anchor = anchor;
		rc->anchor_valid = true;
	}
	for (int i = 0; i < pairs; i++) {
		double c0 = rc->at[i][0], s0 = rc->at[i][1];
		double c1 = rc->step[j][i][0], s1 = rc->step[j][i][1];
		float c = (float)(c0 * c1 - s0 * s1), s = (float)(s0 * c1 + c0 * s1);
		rc->cc[2 * i] = c;
		rc->cc[2 * i + 1] = c;
		rc->ss[2 * i] = -s;
		rc->ss[2 * i + 1] = s;
	}
	rc->pos = pos;
}

/* rope_dim > 2 * ROPE_MAX_PAIRS: every angle straight from its frequency. */
static void rope_direct(float *x, int n_heads, int head_dim, const struct kvp_cpu_rope *r,
			uint32_t pos)
{
	const int pairs = r->rope_dim / 2;

	for (int h = 0; h < n_heads; h++) {
		float *xh = x + (size_t)h * head_dim;
		for (int i = 0; i < pairs; i++) {
			int i0 = r->halves ? i : 2 * i, i1 = r->halves ? i + pairs : 2 * i + 1;
			double f = r->freq ? r->freq[i]
					   : pow((double)r->base, -2.0 * i / (double)r->rope_dim);
			double th = (double)pos * f;
			double c = cos(th), s = sin(th), x0 = xh[i0], x1 = xh[i1];
			xh[i0] = (float)(x0 * c - x1 * s);
			xh[i1] = (float)(x0 * s + x1 * c);
		}
	}
}

/* r's frequencies (pairs <= ROPE_MAX_PAIRS): its own, or the plain ones of its base,
 * made once per thread. */
static const double *rope_freqs(const struct kvp_cpu_rope *r, int pairs)
{
	if (r->freq)
		return r->freq;
	if (plain_tls.rope_dim != r->rope_dim || plain_tls.base != r->base) {
		for (int i = 0; i < pairs; i++)
			plain_tls.freq[i] = pow((double)r->base, -2.0 * i / (double)r->rope_dim);
		plain_tls.rope_dim = r->rope_dim;
		plain_tls.base = r->base;
	}
	return plain_tls.freq;
}

/* The thread's cache, made valid for r's frequencies and pos. */
static struct rope_cache *rope_cached(const struct kvp_cpu_rope *r, int pairs, uint32_t pos)
{
	struct rope_cache *rc = &rope_tls;
	const double *freq = rope_freqs(r, pairs);

	if (!rc->valid || rc->pairs != pairs ||
	    memcmp(rc->freq, freq, (size_t)pairs * sizeof(double)) != 0) {
		for (int i = 0; i < pairs; i++) {
			rc->freq[i] = freq[i];
			for (int j = 0; j < ROPE_STEPS; j++) {
				rc->step[j][i][0] = cos((double)j * rc->freq[i]);
				rc->step[j][i][1] = sin((double)j * rc->freq[i]);
			}
		}
		rc->valid = true;
		rc->pairs = pairs;
		rc->anchor_valid = false;
		rope_angles(rc, pairs, pos);
	} else if (rc->pos != pos) {
		rope_angles(rc, pairs, pos);
	}
	return rc;
}

void kvp_cpu_rope_spec(float *x, int n_heads, int head_dim, const struct kvp_cpu_rope *r,
		       uint32_t pos)
{
	assert(r->rope_dim >= 0 && r->rope_dim <= head_dim);
	const int pairs = r->rope_dim / 2;
	struct rope_cache *rc;

	if (pairs == 0)
		return;
	if (pairs > ROPE_MAX_PAIRS) {
		rope_direct(x, n_heads, head_dim, r, pos);
		return;
	}
	rc = rope_cached(r, pairs, pos);
	if (!r->halves) {
		kvp_cpu_kern()->rope(x, n_heads, head_dim, pairs, rc->cc, rc->ss);
		return;
	}
	for (int h = 0; h < n_heads; h++) {
		float *xh = x + (size_t)h * head_dim;
		for (int i = 0; i < pairs; i++) {
			float x0 = xh[i], x1 = xh[i + pairs], c = rc->cc[2 * i], s = rc->ss[2 * i + 1];
			xh[i] = x0 * c - x1 * s;
			xh[i + pairs] = x0 * s + x1 * c;
		}
	}
}

void kvp_cpu_rope(float *x, int n_heads, int head_dim, int rope_dim, uint32_t pos, float base)
{
	const struct kvp_cpu_rope r = { .rope_dim = rope_dim, .base = base };

	kvp_cpu_rope_spec(x, n_heads, head_dim, &r, pos);
}

/* ---- batched rows ---------------------------------------------------------------------- */

enum row_op { ROW_RMSNORM, ROW_ROPE, ROW_SWIGLU, ROW_ADD };

struct rows_job {
	enum row_op op;
	float *x;               /* (n_rows, ldx) in/out (rmsnorm: out) */
	size_t ldx;
	const float *y;         /* (n_rows, ldy): rmsnorm x, swiglu up, add y */
	size_t ldy;
	const float *w;         /* (n) rmsnorm weight */
	int n_rows, n;
	float eps;
	int n_heads, head_dim;
	const struct kvp_cpu_rope *rope;
	uint32_t pos0;
};

static void rows_worker(void *arg, int ith, int nth)
{
	const struct rows_job *j = arg;
	const struct kvp_cpu_kern *kn = kvp_cpu_kern();
	int r0, r1;
	kvp_cpu_split_rows(j->n_rows, ith, nth, &r0, &r1);
	for (int r = r0; r < r1; r++) {
		float *xr = j->x + (size_t)r * j->ldx;
		const float *yr = j->y ? j->y + (size_t)r * j->ldy : NULL;
		switch (j->op) {
		case ROW_RMSNORM: kn->rmsnorm(xr, yr, j->w, j->n, j->eps); break;
		case ROW_ROPE:
			kvp_cpu_rope_spec(xr, j->n_heads, j->head_dim, j->rope, j->pos0 + (uint32_t)r);
			break;
		case ROW_SWIGLU: kn->swiglu(xr, yr, j->n); break;
		case ROW_ADD: kn->add(xr, yr, j->n); break;
		}
	}
}

/* Fan out when there is enough work to pay for waking the pool. */
static void rows_run(struct kvp_threadpool *tp, struct rows_job *j)
{
	if ((size_t)j->n_rows * (size_t)j->n < KVP_CPU_ROWS_MIN_PARALLEL || j->n_rows < 2)
		tp = NULL;
	kvp_cpu_parallel(tp, rows_worker, j);
}

void kvp_cpu_rmsnorm_rows(struct kvp_threadpool *tp, float *out, size_t ldo, const float *x,
			  size_t ldx, const float *w, int n_rows, int n, float eps)
{
	assert(n > 0 && n_rows >= 0);
	struct rows_job j = { .op = ROW_RMSNORM, .x = out, .ldx = ldo, .y = x, .ldy = ldx, .w = w,
			      .n_rows = n_rows, .n = n, .eps = eps };
	rows_run(tp, &j);
}

void kvp_cpu_rope_rows(struct kvp_threadpool *tp, float *x, size_t ldx, int n_rows, int n_heads,
		       int head_dim, int rope_dim, uint32_t pos0, float base)
{
	assert(n_rows >= 0);
	const struct kvp_cpu_rope r = { .rope_dim = rope_dim, .base = base };

	kvp_cpu_rope_rows_spec(tp, x, ldx, n_rows, n_heads, head_dim, &r, pos0);
}

void kvp_cpu_rope_rows_spec(struct kvp_threadpool *tp, float *x, size_t ldx, int n_rows,
			    int n_heads, int head_dim, const struct kvp_cpu_rope *r, uint32_t pos0)
{
	struct rows_job j = { .op = ROW_ROPE, .x = x, .ldx = ldx, .n_rows = n_rows,
			      .n = n_heads * head_dim, .n_heads = n_heads, .head_dim = head_dim,
			      .rope = r, .pos0 = pos0 };
	rows_run(tp, &j);
}

void kvp_cpu_swiglu_rows(struct kvp_threadpool *tp, float *gate, size_t ldg, const float *up,
			 size_t ldu, int n_rows, int n)
{
	assert(n_rows >= 0);
	struct rows_job j = { .op = ROW_SWIGLU, .x = gate, .ldx = ldg, .y = up, .ldy = ldu,
			      .n_rows = n_rows, .n = n };
	rows_run(tp, &j);
}

void kvp_cpu_add_rows(struct kvp_threadpool *tp, float *x, size_t ldx, const float *y, size_t ldy,
		      int n_rows, int n)
{
	assert(n_rows >= 0);
	struct rows_job j = { .op = ROW_ADD, .x = x, .ldx = ldx, .y = y, .ldy = ldy,
			      .n_rows = n_rows, .n = n };
	rows_run(tp, &j);
}
