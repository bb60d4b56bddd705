/*
 * cuda_kernels.c - every launcher of engine/cuda/kvp_cuda.h against the kvp_cpu op it
 * mirrors, each within the tolerance stated at its check: embed, rmsnorm, rope, kv_store,
 * attention (prefill, decode, bad sizes refused), swiglu, the f32 <-> f16/bf16
 * conversions and the cuBLAS GEMM, in every output dtype. Needs a GPU and a CUDA build;
 * without CUDA (KVP_TEST_CUDA=0) each test compiles to a skip that says so.
 *
 * One of the files of test_cuda; see cuda_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_test_util.h"
#include "kvp_cpu.h"
#include "kvp_cuda.h"
#include "kvp_device.h"
#include "kvp_engine.h"
#include "kvp_store.h"

/* ---- kernels ------------------------------------------------------------------------ */

#if KVP_TEST_CUDA

/* uniform in [-1, 1) */
static float urand(uint64_t *s)
{
	return (float)((double)(ct_splitmix(s) >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static float *rand_f32(size_t n, float scale, uint64_t *s)
{
	float *p = ct_xmalloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		p[i] = scale * urand(s);
	return p;
}

static void sync_ok(const char *what)
{
	int rc = kvp_device_stream_sync(ct_stream());
	cr_assert_eq(rc, 0, "%s: the kernel failed: %s (%s)", what, kvp_strerror(rc),
		     kvp_device_last_error());
}

/* The kernels need a device (this build has them). */
static void need_kernels(void)
{
	ct_need_gpu();
}

/* ---- dtypes ---------------------------------------------------------------------------- */

static uint16_t f32_to_bf16_rne(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7FFFFFFFu) > 0x7F800000u)         /* NaN: keep it a (quiet) NaN */
		return (uint16_t)((u >> 16) | 0x0040u);
	return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* src (n) f32 in dtype t, malloc'ed. */
static void *to_dtype(const float *src, size_t n, enum kvp_cuda_dtype t)
{
	void *out = ct_xmalloc(n * kvp_cuda_dtype_size(t));

	if (t == KVP_CUDA_F32)
		memcpy(out, src, n * sizeof(float));
	else if (t == KVP_CUDA_F16)
		kvp_cpu_f32_to_f16(out, src, n);
	else
		for (size_t i = 0; i < n; i++)
			((uint16_t *)out)[i] = f32_to_bf16_rne(src[i]);
	return out;
}

/* Element i of a buffer in dtype t, as f32. */
static float load_dt(const void *buf, enum kvp_cuda_dtype t, size_t i)
{
	float f;

	if (t == KVP_CUDA_F32)
		return ((const float *)buf)[i];
	if (t == KVP_CUDA_F16)
		kvp_cpu_f16_to_f32(&f, (const uint16_t *)buf + i, 1);
	else
		kvp_cpu_bf16_to_f32(&f, (const uint16_t *)buf + i, 1);
	return f;
}

static const char *dt_name(enum kvp_cuda_dtype t)
{
	return t == KVP_CUDA_F32 ? "f32" : t == KVP_CUDA_F16 ? "f16" : "bf16";
}

#define SENTINEL 0x5A   /* bytes of output padding a kernel must not write */

/*
 * got: rows of n elements in dtype t, ld elements apart (downloaded; the padding was
 * filled with SENTINEL bytes before the launch); want: rows x n f32, dense. Element-wise
 * |got - want| <= rel * |want| + abs_frac * max |want|, and the padding untouched.
 * Returns the largest |got - want| / max |want|.
 */
static double check_rows(const char *what, const void *got, enum kvp_cuda_dtype t, size_t ld,
			 const float *want, uint32_t rows, uint32_t n, double rel, double abs_frac)
{
	const size_t es = kvp_cuda_dtype_size(t);
	const double scale = ct_max_abs(want, (size_t)rows * n) > 0 ? ct_max_abs(want, (size_t)rows * n)
								: 1.0;
	double worst = 0.0;

	for (uint32_t r = 0; r < rows; r++) {
		for (uint32_t i = 0; i < n; i++) {
			double g = load_dt(got, t, (size_t)r * ld + i), w = want[(size_t)r * n + i];
			double d = fabs(g - w);
			cr_assert(d <= rel * fabs(w) + abs_frac * scale,
				  "%s: row %u element %u: %.9g, want %.9g (diff %.3g, max |want| %.3g)",
				  what, r, i, g, w, d, scale);
			worst = d / scale > worst ? d / scale : worst;
		}
		const unsigned char *pad = (const unsigned char *)got + ((size_t)r * ld + n) * es;
		for (size_t b = 0; b < (ld - n) * es; b++)
			cr_assert_eq(pad[b], SENTINEL, "%s: row %u: padding byte %zu after the row "
				     "was written", what, r, b);
	}
	return worst;
}

/* x (rows, dim) f32 = rows of a (vocab, dim) table in f32, f16 or bf16: exact, since
 * every f16 and bf16 value is a float. */
Test(kernels, embed)
{
	const uint32_t vocab = 300, dim = 200, rows = 50;
	const enum kvp_cuda_dtype dts[] = { KVP_CUDA_F32, KVP_CUDA_F16, KVP_CUDA_BF16 };
	uint64_t s = 11;
	uint32_t tok[50];

	need_kernels();
	ct_make_prompt(tok, rows, vocab, 5);
	tok[0] = 0;
	tok[1] = vocab - 1;
	tok[2] = tok[3] = 17;          /* a repeated row */
	float *tab = rand_f32((size_t)vocab * dim, 0.7f, &s);
	float *got = ct_xmalloc((size_t)rows * dim * sizeof(float));
	void *d_tok = ct_dev_from(tok, sizeof(tok));
	float *d_x = ct_dev_alloc((size_t)rows * dim * sizeof(float));
	for (size_t di = 0; di < 3; di++) {
		const enum kvp_cuda_dtype t = dts[di];
		void *h = to_dtype(tab, (size_t)vocab * dim, t);
		void *d_tab = ct_dev_from(h, (size_t)vocab * dim * kvp_cuda_dtype_size(t));

		ct_dev_fill(d_x, 0xFF, (size_t)rows * dim * sizeof(float));
		cr_assert_eq(kvp_cuda_embed(ct_stream(), d_x, d_tab, t, d_tok, rows, dim), 0);
		sync_ok("embed");
		ct_dev_to(got, d_x, (size_t)rows * dim * sizeof(float));
		for (uint32_t r = 0; r < rows; r++)
			for (uint32_t i = 0; i < dim; i++) {
				float want = load_dt(h, t, (size_t)tok[r] * dim + i);
				cr_assert(memcmp(&got[(size_t)r * dim + i], &want, 4) == 0,
					  "embed %s: row %u (token %u) element %u: %g, want %g",
					  dt_name(t), r, tok[r], i, got[(size_t)r * dim + i], want);
			}
		free(h);
	}
	free(tab);
	free(got);
}

/*
 * RMSNorm of rows ldx apart into rows ldo apart, out in f32, f16 and bf16, against
 * kvp_cpu_rmsnorm per row. Tolerances, element-wise:
 *   f32   1e-5 |ref| + 1e-6 max |ref|: the same math, another summation order and an
 *         rsqrt of a few ulp
 *   f16   1e-3 |ref| (2^-10: the rounding to f16, once, of a value that may sit just
 *         across a rounding midpoint from the reference's) + 1e-6 max |ref|
 *   bf16  8e-3 |ref| (2^-7, the same for bf16)
 * Rows of 64 to 4096 elements (one warp's worth to a block-wide reduction), rows of very
 * different scale, an all-zero row (0 / sqrt(eps) = 0).
 */
Test(kernels, rmsnorm)
{
	const struct { uint32_t rows, n; size_t ldx, ldo; } cs[] = {
		{ 33, 200, 208, 204 }, { 3, 4096, 4096, 4100 }, { 1, 64, 64, 64 }, { 7, 1000, 1000, 1003 },
	};
	const enum kvp_cuda_dtype dts[] = { KVP_CUDA_F32, KVP_CUDA_F16, KVP_CUDA_BF16 };
	const double rel[] = { 1e-5, 1e-3, 8e-3 };
	const float eps = 1e-5f;
	uint64_t s = 21;

	need_kernels();
	for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
		const uint32_t rows = cs[ci].rows, n = cs[ci].n;
		const size_t ldx = cs[ci].ldx, ldo = cs[ci].ldo;
		float *x = rand_f32((size_t)rows * ldx, 1.0f, &s);
		float *w = ct_xmalloc(n * sizeof(float));
		float *want = ct_xmalloc((size_t)rows * n * sizeof(float));

		for (uint32_t r = 0; r < rows; r++)
			for (size_t i = 0; i < ldx; i++)
				x[(size_t)r * ldx + i] *= (float)(0.05 + (r % 7) * 3.0);
		if (rows > 3)
			memset(x + 2 * ldx, 0, n * sizeof(float));
		for (uint32_t i = 0; i < n; i++)
			w[i] = 1.0f + 0.2f * urand(&s);
		for (uint32_t r = 0; r < rows; r++)
			kvp_cpu_rmsnorm(want + (size_t)r * n, x + (size_t)r * ldx, w, (int)n, eps);
		float *d_x = ct_dev_from(x, (size_t)rows * ldx * sizeof(float));
		float *d_w = ct_dev_from(w, n * sizeof(float));
		for (size_t di = 0; di < 3; di++) {
			const enum kvp_cuda_dtype t = dts[di];
			const size_t bytes = (size_t)rows * ldo * kvp_cuda_dtype_size(t);
			void *d_o = ct_dev_alloc(bytes), *got = ct_xmalloc(bytes);
			char what[96];

			ct_dev_fill(d_o, SENTINEL, bytes);
			cr_assert_eq(kvp_cuda_rmsnorm(ct_stream(), d_o, t, ldo, d_x, ldx, d_w, rows, n,
						      eps), 0);
			sync_ok("rmsnorm");
			ct_dev_to(got, d_o, bytes);
			snprintf(what, sizeof(what), "rmsnorm rows %u n %u out %s", rows, n,
				 dt_name(t));
			double d = check_rows(what, got, t, ldo, want, rows, n, rel[di], 1e-6);
			fprintf(stderr, "test_cuda: %-36s max diff %.3g of max |ref|\n", what, d);
			free(got);
		}
		free(x);
		free(w);
		free(want);
	}
}

/*
 * Rotary embedding in place, against kvp_cpu_rope_rows on the same rows (padding
 * between rows included: it must stay untouched). The header asks for the angles as the
 * CPU computes them (accurate at any position), so the tolerance is 2e-5 of max |x|
 * even at position 4,000: an angle computed as a float product pos * f_i is off by
 * ~pos * 6e-8 rad (2.4e-4 at 4,000) and fails it. Partial rope (rope_dim < head_dim)
 * leaves the rest of each head as it was.
 */
Test(kernels, rope)
{
	const struct { uint32_t rows, heads, hd, rd, pos0; float base; size_t ldx; } cs[] = {
		{ 40, 6, 64, 64, 0, 10000.0f, 6 * 64 + 16 },
		{ 40, 3, 80, 32, 3000, 500000.0f, 3 * 80 + 2 * 80 },
		{ 1, 8, 128, 128, 4000, 10000.0f, 8 * 128 },
		{ 300, 2, 256, 256, 100, 1000000.0f, 2 * 256 + 4 },
	};
	uint64_t s = 31;

	need_kernels();
	for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
		const size_t total = (size_t)cs[ci].rows * cs[ci].ldx;
		float *x = rand_f32(total, 2.0f, &s);
		float *want = ct_xmalloc(total * sizeof(float)), *got = ct_xmalloc(total * sizeof(float));
		size_t at;

		memcpy(want, x, total * sizeof(float));
		kvp_cpu_rope_rows(NULL, want, cs[ci].ldx, (int)cs[ci].rows, (int)cs[ci].heads,
				  (int)cs[ci].hd, (int)cs[ci].rd, cs[ci].pos0, cs[ci].base);
		float *d_x = ct_dev_from(x, total * sizeof(float));
		cr_assert_eq(kvp_cuda_rope(ct_stream(), d_x, cs[ci].ldx, cs[ci].rows, cs[ci].heads,
					   cs[ci].hd, cs[ci].rd, cs[ci].pos0, cs[ci].base), 0);
		sync_ok("rope");
		ct_dev_to(got, d_x, total * sizeof(float));
		double d = ct_max_rel_diff(got, want, total, ct_max_abs(x, total), &at);
		fprintf(stderr, "test_cuda: rope heads %u hd %u rope %u pos0 %u: max diff %.3g of "
			"max |x|\n", cs[ci].heads, cs[ci].hd, cs[ci].rd, cs[ci].pos0, d);
		cr_assert_leq(d, 2e-5, "rope case %zu (hd %u rope_dim %u pos0 %u): element %zu "
			      "(row %zu col %zu): %.8g want %.8g", ci, cs[ci].hd, cs[ci].rd,
			      cs[ci].pos0, at, at / cs[ci].ldx, at % cs[ci].ldx, got[at], want[at]);
		free(x);
		free(want);
		free(got);
	}
}

/* Where byte `off` of a block falls in the (layer, K/V, kv_head, token, head_dim) layout. */
static void kv_where(size_t off, uint32_t kvh, uint32_t B, uint32_t hd, char *out, size_t cap)
{
	size_t e = off / 2;
	uint32_t d = (uint32_t)(e % hd), t = (uint32_t)(e / hd % B);
	uint32_t h = (uint32_t)(e / hd / B % kvh), kv = (uint32_t)(e / hd / B / kvh % 2);
	uint32_t l = (uint32_t)(e / hd / B / kvh / 2);

	snprintf(out, cap, "layer %u %s head %u token %u dim %u", l, kv ? "V" : "K", h, t, d);
}

/*
 * K/V rows into the paged f16 layout, against kvp_cpu_kv_store_rows on host blocks
 * holding the same poison: every block read back through kvp_pool_block_read must equal
 * the host block byte for byte (f32 -> f16 rounds to nearest even on both; positions
 * and layers not written stay poison). Rows start mid-block and cross two block
 * boundaries; K and V are interleaved in one buffer (ldk = ldv > width), as in a fused
 * QKV output; then one more row (a decode step) into another layer.
 */
Test(kernels, kv_store)
{
	const uint32_t L = 3, kvh = 2, hd = 80, B = 16, nb = 4, kvd = kvh * hd;
	const size_t ld = 2 * (size_t)kvd + 16;
	const size_t bb = kvp_kv_block_bytes(L, kvh, hd, B, KVP_KV_F16);
	const struct { uint32_t layer, pos0, rows; } calls[] = { { 1, 5, 40 }, { 2, 45, 1 },
								  { 0, 63, 1 } };
	uint64_t s = 41;
	struct htable ht;
	struct dtable dt;

	need_kernels();
	struct kvp_pool *p = ct_dpool_new(nb + 3, bb);
	ct_dtable_take(&dt, p, 0, nb, 99);
	ct_htable_new(&ht, nb, bb);
	void *d_blocks = ct_dev_from(dt.blocks, nb * sizeof(void *));
	for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
		const uint32_t rows = calls[c].rows;
		float *kv = rand_f32((size_t)rows * ld, 3.0f, &s);
		/* a few values that round differently in f16: ties, tiny, huge */
		kv[0] = 1.0f + 0x1p-11f;
		kv[1] = 1.0f + 3 * 0x1p-11f;
		kv[2] = 1e-7f;
		kv[3] = 70000.0f;
		kv[kvd + 8] = -65520.0f;
		struct kvp_kv_view hv = { ht.blocks, nb, B, L, kvh, hd, calls[c].layer, KVP_KV_F16 };
		kvp_cpu_kv_store_rows(NULL, &hv, calls[c].pos0, (int)rows, kv, ld, kv + kvd + 8, ld);
		float *d_kv = ct_dev_from(kv, (size_t)rows * ld * sizeof(float));
		struct kvp_cuda_kv dv = { d_blocks, nb, B, L, kvh, hd, calls[c].layer };
		cr_assert_eq(kvp_cuda_kv_store(ct_stream(), &dv, calls[c].pos0, rows, d_kv, ld,
					       d_kv + kvd + 8, ld), 0);
		sync_ok("kv_store");
		free(kv);
	}
	unsigned char *got = ct_xmalloc(bb);
	for (uint32_t i = 0; i < nb; i++) {
		ct_dtable_read(&dt, i, got);
		const unsigned char *want = ht.blocks[i];
		for (size_t b = 0; b < bb; b++)
			if (got[b] != want[b]) {
				char where[96];
				kv_where(b, kvh, B, hd, where, sizeof(where));
				cr_assert_fail("kv_store: block %u (pool id %u) byte %zu (%s, position "
					       "%u): 0x%02x, want 0x%02x", i, dt.ids[i], b, where,
					       i * B + (uint32_t)(b / 2 / hd % B), got[b], want[b]);
			}
	}
	free(got);
	ct_htable_free(&ht);
	ct_dtable_put(&dt, 0);
	kvp_pool_destroy(p);
}

struct attn_case {
	const char *name;
	uint32_t hd, n_heads, n_kv, B, rows, pos0;
	enum kvp_cuda_dtype out_t;
};

/*
 * One attention call against kvp_cpu_attention on host blocks holding the same f16 K/V
 * bytes (written by kvp_cpu_kv_store_rows, copied to device blocks with
 * kvp_pool_block_write). Two layers, the call on layer 1, layer 0 full of other values;
 * positions past the last one stay NaN. Tolerance 2e-3 of max |ref| (3e-3 with f16
 * out, which adds a rounding of 2^-11 of an element): K/V are the same f16 values on both
 * sides and reductions run in f32, but the kernel may round q and the softmax weights to
 * f16 for tensor-core products (2^-11 relative per term). A position across the causal
 * edge, a wrong kv head (GQA), block or layer moves rows by well over 1e-2.
 */
static void attn_check(const struct attn_case *c, uint64_t seed)
{
	const uint32_t P = c->pos0 + c->rows, nb = (P + c->B - 1) / c->B, layers = 2;
	const uint32_t kvd = c->n_kv * c->hd, qd = c->n_heads * c->hd;
	const size_t bb = kvp_kv_block_bytes(layers, c->n_kv, c->hd, c->B, KVP_KV_F16);
	uint64_t s = seed;
	struct htable ht;
	struct dtable dt;
	size_t at;

	ct_htable_new(&ht, nb, bb);
	/* layer 0: other K/V at every position; layer 1: the K/V the call reads */
	for (uint32_t l = 0; l < layers; l++) {
		float *k = rand_f32((size_t)P * kvd, 1.0f, &s), *v = rand_f32((size_t)P * kvd, 1.0f, &s);
		struct kvp_kv_view hv = { ht.blocks, nb, c->B, layers, c->n_kv, c->hd, l, KVP_KV_F16 };
		kvp_cpu_kv_store_rows(NULL, &hv, 0, (int)P, k, kvd, v, kvd);
		free(k);
		free(v);
	}
	/* q scaled so that q.k / sqrt(hd) has a spread of ~1.3: peaked, not one-hot */
	float *q = rand_f32((size_t)c->rows * qd, 4.0f, &s);
	float *want = ct_xmalloc((size_t)c->rows * qd * sizeof(float));
	struct kvp_kv_view hv = { ht.blocks, nb, c->B, layers, c->n_kv, c->hd, 1, KVP_KV_F16 };
	kvp_cpu_attention(NULL, &hv, q, want, c->rows, c->pos0, c->n_heads);

	struct kvp_pool *p = ct_dpool_new(nb + 2, bb);
	ct_dtable_take(&dt, p, 0, nb, seed);
	for (uint32_t i = 0; i < nb; i++)
		cr_assert_eq(kvp_pool_block_write(p, dt.ids[i], ht.blocks[i]), 0);
	void *d_blocks = ct_dev_from(dt.blocks, nb * sizeof(void *));
	float *d_q = ct_dev_from(q, (size_t)c->rows * qd * sizeof(float));
	const size_t ob = (size_t)c->rows * qd * kvp_cuda_dtype_size(c->out_t);
	void *d_out = ct_dev_alloc(ob);
	size_t sb = kvp_cuda_attention_scratch_bytes(c->rows, c->n_heads, c->hd, P);
	void *scratch = sb ? ct_dev_alloc(sb) : NULL;
	struct kvp_cuda_kv dv = { d_blocks, nb, c->B, layers, c->n_kv, c->hd, 1 };

	ct_dev_fill(d_out, 0xFF, ob);
	cr_assert_eq(kvp_cuda_attention(ct_stream(), &dv, d_q, d_out, c->out_t, c->rows, c->pos0,
					c->n_heads, scratch, sb), 0, "%s", c->name);
	sync_ok(c->name);
	void *raw = ct_xmalloc(ob);
	float *got = ct_xmalloc((size_t)c->rows * qd * sizeof(float));
	ct_dev_to(raw, d_out, ob);
	for (size_t i = 0; i < (size_t)c->rows * qd; i++)
		got[i] = load_dt(raw, c->out_t, i);
	const double tol = c->out_t == KVP_CUDA_F32 ? 2e-3 : 3e-3;
	double d = ct_max_rel_diff(got, want, (size_t)c->rows * qd,
				   ct_max_abs(want, (size_t)c->rows * qd), &at);
	fprintf(stderr, "test_cuda: attention %-30s max diff %.3g of max |ref| (tol %g)\n",
		c->name, d, tol);
	cr_assert_leq(d, tol, "attention %s: row %zu (position %zu) head %zu dim %zu: %.6g "
		      "want %.6g (diff %.3g of max |ref|)", c->name, at / qd, c->pos0 + at / qd,
		      at % qd / c->hd, at % c->hd, got[at], want[at], d);
	free(raw);
	free(got);
	free(q);
	free(want);
	ct_htable_free(&ht);
	ct_dtable_put(&dt, 0);
	kvp_pool_destroy(p);
}

static const struct attn_case attn_prefill[] = {
	/* a 2-block table of 256-token blocks: 300 rows from position 0, and from 100 */
	{ "prefill hd64 B256 pos0 0", 64, 8, 2, 256, 300, 0, KVP_CUDA_F32 },
	{ "prefill hd64 B256 pos0 100", 64, 8, 2, 256, 300, 100, KVP_CUDA_F32 },
	{ "prefill hd64 B256 pos0 100 out f16", 64, 8, 2, 256, 300, 100, KVP_CUDA_F16 },
	/* head dim 80 (not a power of two) over 16-token blocks: tiles cross blocks */
	{ "prefill hd80 B16 pos0 0", 80, 8, 2, 16, 300, 0, KVP_CUDA_F32 },
	{ "prefill hd80 B16 pos0 100", 80, 8, 2, 16, 300, 100, KVP_CUDA_F32 },
	/* the largest head dim, MHA, a ragged 70 rows */
	{ "prefill hd256 MHA B64 pos0 30", 256, 2, 2, 64, 70, 30, KVP_CUDA_F32 },
};

static const struct attn_case attn_decode[] = {
	{ "decode hd64 B256 pos 1000", 64, 8, 2, 256, 1, 1000, KVP_CUDA_F32 },
	{ "decode hd64 B256 pos 1000 out f16", 64, 8, 2, 256, 1, 1000, KVP_CUDA_F16 },
	{ "decode hd80 B16 pos 1000", 80, 8, 2, 16, 1, 1000, KVP_CUDA_F32 },
	{ "decode hd128 B16 pos 0", 128, 8, 2, 16, 1, 0, KVP_CUDA_F32 },
	/* a few rows at once (speculative or a short suffix) */
	{ "few rows hd128 B16 pos 1000", 128, 8, 2, 16, 4, 1000, KVP_CUDA_F32 },
	{ "decode hd256 B16 pos 2047", 256, 4, 1, 16, 1, 2047, KVP_CUDA_F32 },
};

Test(kernels, attention_prefill)
{
	need_kernels();
	for (size_t i = 0; i < sizeof(attn_prefill) / sizeof(attn_prefill[0]); i++)
		attn_check(&attn_prefill[i], 500 + i);
}

Test(kernels, attention_decode)
{
	need_kernels();
	for (size_t i = 0; i < sizeof(attn_decode) / sizeof(attn_decode[0]); i++)
		attn_check(&attn_decode[i], 600 + i);
}

/* Sizes the kernel cannot take are refused before launch. */
Test(kernels, attention_refuses_bad_sizes)
{
	const uint32_t B = 16, nb = 2;
	float *d_q, *d_out;
	void *scratch;
	size_t sb;

	need_kernels();
	sb = kvp_cuda_attention_scratch_bytes(4, 8, KVP_CUDA_MAX_HEAD_DIM + 2, 32);
	scratch = ct_dev_alloc(sb ? sb : 64);
	d_q = ct_dev_alloc(4 * 8 * (KVP_CUDA_MAX_HEAD_DIM + 2) * sizeof(float));
	d_out = ct_dev_alloc(4 * 8 * (KVP_CUDA_MAX_HEAD_DIM + 2) * sizeof(float));
	void *blocks[2] = { ct_dev_alloc(4096), ct_dev_alloc(4096) };
	void *d_blocks = ct_dev_from(blocks, sizeof(blocks));
	struct kvp_cuda_kv kv = { d_blocks, nb, B, 1, 2, KVP_CUDA_MAX_HEAD_DIM + 2, 0 };
	cr_assert_eq(kvp_cuda_attention(ct_stream(), &kv, d_q, d_out, KVP_CUDA_F32, 4, 0, 8, scratch,
					sb), KVP_EINVAL, "head_dim over KVP_CUDA_MAX_HEAD_DIM");
	kv.head_dim = 63;
	cr_assert_eq(kvp_cuda_attention(ct_stream(), &kv, d_q, d_out, KVP_CUDA_F32, 4, 0, 8, scratch,
					sb), KVP_EINVAL, "odd head_dim");
	kv.head_dim = 64;
	kv.n_kv_heads = 3;
	cr_assert_eq(kvp_cuda_attention(ct_stream(), &kv, d_q, d_out, KVP_CUDA_F32, 4, 0, 8, scratch,
					sb), KVP_EINVAL, "8 query heads on 3 kv heads");
	sync_ok("nothing launched");
}

/*
 * silu(gate) * up, gate and up interleaved in one buffer (ldg = ldu > n, as the output
 * of a fused gate/up GEMM), out ldo apart in f32, f16, bf16, against kvp_cpu_swiglu_rows.
 * Gate spans [-8, 8] (both tails of silu). Tolerances element-wise: f32 1e-5 |ref| +
 * 1e-6 max |ref| (expf within a few ulp); f16 1e-3 |ref|, bf16 8e-3 |ref| (one rounding).
 */
Test(kernels, swiglu)
{
	const uint32_t rows = 19, n = 300;
	const size_t ldg = 2 * (size_t)n + 8, ldo = n + 6;
	const enum kvp_cuda_dtype dts[] = { KVP_CUDA_F32, KVP_CUDA_F16, KVP_CUDA_BF16 };
	const double rel[] = { 1e-5, 1e-3, 8e-3 };
	uint64_t s = 51;

	need_kernels();
	float *gu = rand_f32((size_t)rows * ldg, 1.0f, &s);
	for (size_t i = 0; i < (size_t)rows * ldg; i++)
		gu[i] *= (i % ldg) < n ? 8.0f : 2.0f;
	float *g = ct_xmalloc((size_t)rows * n * sizeof(float)), *u = ct_xmalloc((size_t)rows * n * 4);
	for (uint32_t r = 0; r < rows; r++) {
		memcpy(g + (size_t)r * n, gu + (size_t)r * ldg, n * sizeof(float));
		memcpy(u + (size_t)r * n, gu + (size_t)r * ldg + n + 4, n * sizeof(float));
	}
	kvp_cpu_swiglu_rows(NULL, g, n, u, n, (int)rows, (int)n);
	float *d_gu = ct_dev_from(gu, (size_t)rows * ldg * sizeof(float));
	for (size_t di = 0; di < 3; di++) {
		const enum kvp_cuda_dtype t = dts[di];
		const size_t bytes = (size_t)rows * ldo * kvp_cuda_dtype_size(t);
		void *d_o = ct_dev_alloc(bytes), *got = ct_xmalloc(bytes);
		char what[64];

		ct_dev_fill(d_o, SENTINEL, bytes);
		cr_assert_eq(kvp_cuda_swiglu(ct_stream(), d_o, t, ldo, d_gu, ldg, d_gu + n + 4, ldg,
					     rows, n), 0);
		sync_ok("swiglu");
		ct_dev_to(got, d_o, bytes);
		snprintf(what, sizeof(what), "swiglu out %s", dt_name(t));
		double d = check_rows(what, got, t, ldo, g, rows, n, rel[di], 1e-6);
		fprintf(stderr, "test_cuda: %-36s max diff %.3g of max |ref|\n", what, d);
		free(got);
	}
	free(gu);
	free(g);
	free(u);
}

static bool same_or_both_nan_f32(float a, float b)
{
	return (isnan(a) && isnan(b)) || memcmp(&a, &b, 4) == 0;
}

static bool is_nan16(uint16_t h, bool bf)
{
	return bf ? (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) : (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu);
}

/*
 * f32 -> f16 / bf16 bit for bit against round-to-nearest-even (kvp_cpu_f32_to_f16, and
 * the bf16 rounding above): ties, subnormals, overflow to infinity, signed zeros, NaN
 * (any NaN); f16 / bf16 -> f32 over all 65,536 patterns, exact; f32 -> f32 a copy.
 */
Test(kernels, convert)
{
	const size_t nr = 4099;
	uint64_t s = 61;

	need_kernels();
	float *x = ct_xmalloc(nr * sizeof(float));
	for (size_t i = 0; i < nr; i++)
		x[i] = ldexpf(urand(&s), (int)(ct_splitmix(&s) % 60) - 36);
	const float specials[] = {
		0.0f, -0.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f,
		65504.0f, 65519.0f, 65520.0f, -1e6f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-14f,
		0x1.ff8p-15f, INFINITY, -INFINITY, NAN, 3.0e38f, -0x1p-140f, 0x1.fffffep127f,
	};
	memcpy(x, specials, sizeof(specials));
	float *d_x = ct_dev_from(x, nr * sizeof(float));
	void *d_o = ct_dev_alloc(nr * sizeof(float));
	uint16_t *h = ct_xmalloc(nr * 2);
	for (int bf = 0; bf < 2; bf++) {
		const enum kvp_cuda_dtype t = bf ? KVP_CUDA_BF16 : KVP_CUDA_F16;
		uint16_t *want = to_dtype(x, nr, t);
		cr_assert_eq(kvp_cuda_from_f32(ct_stream(), d_o, t, d_x, nr), 0);
		sync_ok("from_f32");
		ct_dev_to(h, d_o, nr * 2);
		for (size_t i = 0; i < nr; i++)
			cr_assert(h[i] == want[i] || (is_nan16(h[i], bf) && is_nan16(want[i], bf)),
				  "f32 -> %s: %a (element %zu) gave 0x%04x, want 0x%04x", dt_name(t),
				  (double)x[i], i, h[i], want[i]);
		free(want);
	}
	float *f = ct_xmalloc(nr * sizeof(float));
	cr_assert_eq(kvp_cuda_from_f32(ct_stream(), d_o, KVP_CUDA_F32, d_x, nr), 0);
	sync_ok("from_f32 f32");
	ct_dev_to(f, d_o, nr * sizeof(float));
	for (size_t i = 0; i < nr; i++)
		cr_assert(same_or_both_nan_f32(f[i], x[i]), "f32 -> f32: element %zu", i);

	/* every 16-bit pattern back to f32 */
	uint16_t *all = ct_xmalloc(65536 * 2);
	float *got = ct_xmalloc(65536 * sizeof(float)), *want = ct_xmalloc(65536 * sizeof(float));
	for (uint32_t i = 0; i < 65536; i++)
		all[i] = (uint16_t)i;
	void *d_all = ct_dev_from(all, 65536 * 2);
	float *d_f = ct_dev_alloc(65536 * sizeof(float));
	for (int bf = 0; bf < 2; bf++) {
		const enum kvp_cuda_dtype t = bf ? KVP_CUDA_BF16 : KVP_CUDA_F16;
		if (bf)
			kvp_cpu_bf16_to_f32(want, all, 65536);
		else
			kvp_cpu_f16_to_f32(want, all, 65536);
		cr_assert_eq(kvp_cuda_to_f32(ct_stream(), d_f, d_all, t, 65536), 0);
		sync_ok("to_f32");
		ct_dev_to(got, d_f, 65536 * sizeof(float));
		for (uint32_t i = 0; i < 65536; i++)
			cr_assert(same_or_both_nan_f32(got[i], want[i]),
				  "%s 0x%04x -> f32: %a, want %a", dt_name(t), i, (double)got[i],
				  (double)want[i]);
	}
	cr_assert_eq(kvp_cuda_to_f32(ct_stream(), d_f, d_x, KVP_CUDA_F32, nr), 0);
	sync_ok("to_f32 f32");
	ct_dev_to(f, d_f, nr * sizeof(float));
	for (size_t i = 0; i < nr; i++)
		cr_assert(same_or_both_nan_f32(f[i], x[i]), "f32 -> f32: element %zu", i);
	free(all);
	free(got);
	free(want);
	free(x);
	free(f);
	free(h);
}

/*
 * C (m, n) (+)= A (m, k) . W (n, k)^T through cuBLAS, against kvp_cpu_matmul on the
 * same values (A and W rounded to the dtype first, so both multiply the same numbers).
 * Products of f16 or bf16 values are exact in f32 and both sides accumulate in f32:
 * what differs is the summation order, ~1e-6 of max |C|. Tolerances of max |ref|:
 * f16/bf16 1e-4; f32 2e-5, which a TF32 tensor-core path (10-bit mantissa inputs, ~1e-3)
 * would fail (the header promises f32 for F32). Shapes: one row (decode), sizes off any
 * tile grid, padded leading dimensions; accumulate onto C preset to other values.
 */
Test(kernels, gemm)
{
	const struct { int m, n, k; size_t pa, pw, pc; } cs[] = {
		{ 1, 96, 200, 0, 0, 0 }, { 1, 1000, 256, 8, 0, 4 }, { 37, 83, 96, 8, 16, 4 },
		{ 130, 257, 320, 0, 8, 0 }, { 512, 384, 256, 0, 0, 0 }, { 3, 5, 7, 1, 3, 2 },
	};
	const enum kvp_cuda_dtype dts[] = { KVP_CUDA_F16, KVP_CUDA_BF16, KVP_CUDA_F32 };
	const double tol[] = { 1e-4, 1e-4, 2e-5 };
	struct kvp_cuda_blas *blas = NULL;
	char err[256] = "";
	uint64_t s = 71;

	need_kernels();
	int rc = kvp_cuda_blas_create(ct_stream(), &blas, err, sizeof(err));
	cr_assert_eq(rc, 0, "kvp_cuda_blas_create: %s: %s", kvp_strerror(rc), err);
	for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
		const int m = cs[ci].m, n = cs[ci].n, k = cs[ci].k;
		const size_t lda = (size_t)k + cs[ci].pa, ldw = (size_t)k + cs[ci].pw;
		const size_t ldc = (size_t)n + cs[ci].pc;
		float *a = rand_f32((size_t)m * lda, 1.0f, &s), *w = rand_f32((size_t)n * ldw, 1.0f, &s);
		float *c0 = rand_f32((size_t)m * ldc, 1.0f, &s);
		float *want = ct_xmalloc((size_t)m * ldc * sizeof(float));
		float *got = ct_xmalloc((size_t)m * ldc * sizeof(float));
		float *d_c = ct_dev_alloc((size_t)m * ldc * sizeof(float));

		for (size_t di = 0; di < 3; di++) {
			const enum kvp_cuda_dtype t = dts[di];
			void *ha = to_dtype(a, (size_t)m * lda, t), *hw = to_dtype(w, (size_t)n * ldw, t);
			float *ra = ct_xmalloc((size_t)m * lda * 4), *rw = ct_xmalloc((size_t)n * ldw * 4);
			void *d_a = ct_dev_from(ha, (size_t)m * lda * kvp_cuda_dtype_size(t));
			void *d_w = ct_dev_from(hw, (size_t)n * ldw * kvp_cuda_dtype_size(t));

			for (size_t i = 0; i < (size_t)m * lda; i++)
				ra[i] = load_dt(ha, t, i);
			for (size_t i = 0; i < (size_t)n * ldw; i++)
				rw[i] = load_dt(hw, t, i);
			for (int acc = 0; acc < 2; acc++) {
				size_t at;

				memcpy(want, c0, (size_t)m * ldc * sizeof(float));
				kvp_cpu_matmul(NULL, ra, lda, rw, ldw, want, ldc, m, n, k, acc);
				cr_assert_eq(kvp_device_upload(d_c, c0, (size_t)m * ldc * 4), 0);
				rc = kvp_cuda_gemm(blas, d_a, lda, d_w, ldw, t, d_c, ldc, m, n, k, acc);
				cr_assert_eq(rc, 0, "gemm %s %dx%dx%d: %s", dt_name(t), m, n, k,
					     kvp_strerror(rc));
				sync_ok("gemm");
				ct_dev_to(got, d_c, (size_t)m * ldc * sizeof(float));
				double d = ct_max_rel_diff(got, want, (size_t)m * ldc,
							   ct_max_abs(want, (size_t)m * ldc), &at);
				fprintf(stderr, "test_cuda: gemm %-4s m %3d n %4d k %3d %-10s max diff "
					"%.3g of max |ref|\n", dt_name(t), m, n, k,
					acc ? "accumulate" : "", d);
				cr_assert_leq(d, tol[di], "gemm %s m %d n %d k %d accumulate %d: C[%zu][%zu]"
					      " %.7g want %.7g (%.3g of max |ref|; padding included)",
					      dt_name(t), m, n, k, acc, at / ldc, at % ldc, got[at],
					      want[at], d);
			}
			free(ha);
			free(hw);
			free(ra);
			free(rw);
		}
		free(a);
		free(w);
		free(c0);
		free(want);
		free(got);
	}
	kvp_cuda_blas_destroy(blas);
}

#else /* !KVP_TEST_CUDA: the same tests, each saying why it cannot run */

#define NO_KERNELS(name)                                                                    \
	Test(kernels, name)                                                                 \
	{                                                                                   \
		cr_skip_test("built without CUDA (KVP_CUDA off): the kernels of kvp_cuda.h "  \
			     "are not in this build");                                      \
	}
NO_KERNELS(embed)
NO_KERNELS(rmsnorm)
NO_KERNELS(rope)
NO_KERNELS(kv_store)
NO_KERNELS(attention_prefill)
NO_KERNELS(attention_decode)
NO_KERNELS(attention_refuses_bad_sizes)
NO_KERNELS(swiglu)
NO_KERNELS(convert)
NO_KERNELS(gemm)
#undef NO_KERNELS

#endif /* KVP_TEST_CUDA */
