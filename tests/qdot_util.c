/*
 * qdot_util.c - random weights of every type, and the reference the weight kernels are
 * held to (qdot_util.h).
 */
#include "qdot_util.h"

#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_half.h"

const uint32_t qt_types[] = {
	KVP_GGML_F32, KVP_GGML_F16, KVP_GGML_BF16, KVP_GGML_Q4_0, KVP_GGML_Q4_1,
	KVP_GGML_Q5_0, KVP_GGML_Q5_1, KVP_GGML_Q8_0, KVP_GGML_Q2_K, KVP_GGML_Q3_K,
	KVP_GGML_Q4_K, KVP_GGML_Q5_K, KVP_GGML_Q6_K,
};
const int qt_n_types = sizeof(qt_types) / sizeof(qt_types[0]);
const char *const qt_isas[] = { "generic", "avx2", "avx512", "avx512vnni" };
const int qt_n_isas = 4;

/* Where a block keeps its f16 scales, and which bytes are quant bits (value 0 there
 * leaves the element's offset: the min, -8 d, -32 d sc and the like). */
struct layout {
	uint32_t type;
	int halves[2];          /* byte offsets of the f16 scales; -1: none */
	int q0, q1;             /* quant bytes [q0, q1) */
};

static const struct layout layouts[] = {
	{ KVP_GGML_Q4_0, { 0, -1 }, 2, 18 },
	{ KVP_GGML_Q4_1, { 0, 2 }, 4, 20 },
	{ KVP_GGML_Q5_0, { 0, -1 }, 2, 22 },
	{ KVP_GGML_Q5_1, { 0, 2 }, 4, 24 },
	{ KVP_GGML_Q8_0, { 0, -1 }, 2, 34 },
	{ KVP_GGML_Q2_K, { 80, 82 }, 16, 80 },
	{ KVP_GGML_Q3_K, { 108, -1 }, 0, 96 },
	{ KVP_GGML_Q4_K, { 0, 2 }, 16, 144 },
	{ KVP_GGML_Q5_K, { 0, 2 }, 16, 176 },
	{ KVP_GGML_Q6_K, { 208, -1 }, 0, 192 },
};

static const struct layout *layout_of(uint32_t type)
{
	for (size_t i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++)
		if (layouts[i].type == type)
			return &layouts[i];
	return NULL;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

uint64_t qt_rand(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

float qt_frand(void)
{
	return (float)((double)(qt_rand() >> 11) * 0x1p-53 * 2.0 - 1.0);
}

void *qt_alloc(size_t bytes)
{
	void *p = malloc(bytes ? bytes : 1);

	cr_assert(p, "out of memory");
	return p;
}

float *qt_rand_floats(size_t n)
{
	float *p = qt_alloc(n * sizeof(float));

	for (size_t i = 0; i < n; i++)
		p[i] = qt_frand();
	return p;
}

bool qt_use_isa(const char *isa)
{
	int rc = kvp_cpu_force_isa(isa);

	if (rc == KVP_EUNSUPPORTED) {
		cr_log_info("%s: not on this CPU, its kernels are not tried here", isa);
		return false;
	}
	cr_assert_eq(rc, 0);
	return true;
}

static void put_half(uint8_t *p, float v)
{
	uint16_t h = kvp_f32_to_f16(v);

	memcpy(p, &h, sizeof(h));
}

/* a scale: random in +-[2^-8, 2^-4), or from +-{0.5, 1, 2} on the grid */
static float rand_scale(bool grid)
{
	float sign = qt_rand() & 1 ? -1.0f : 1.0f;

	if (grid)
		return sign * (float)(1 << (qt_rand() % 3)) * 0.5f;
	return sign * ldexpf(1.0f + (float)(qt_rand() % 1024) / 1024.0f, -8 + (int)(qt_rand() % 4));
}

static void rand_row(uint8_t *row, uint32_t type, int k, bool grid)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	const struct layout *l = layout_of(type);

	for (size_t i = 0; i < kvp_ggml_row_bytes(type, (uint64_t)k); i++)
		row[i] = (uint8_t)qt_rand();
	if (t->block_elems == 1) {
		for (int i = 0; i < k; i++) {
			float v = grid ? (float)((int)(qt_rand() % 17) - 8) : qt_frand();
			uint16_t h = type == KVP_GGML_BF16 ? kvp_f32_to_bf16(v) : kvp_f32_to_f16(v);

			if (type == KVP_GGML_F32)
				memcpy(row + 4 * (size_t)i, &v, sizeof(v));
			else
				memcpy(row + 2 * (size_t)i, &h, sizeof(h));
		}
		return;
	}
	for (int b = 0; b < k / (int)t->block_elems; b++)
		for (int h = 0; h < 2; h++)
			if (l->halves[h] >= 0)
				put_half(row + (size_t)b * t->block_bytes + l->halves[h], rand_scale(grid));
}

void qt_rand_weight(struct kvp_cpu_weight *w, uint32_t type, int n, int k, size_t pad,
		    bool grid)
{
	size_t rb = kvp_ggml_row_bytes(type, (uint64_t)k) + pad;
	uint8_t *data = qt_alloc((size_t)n * rb);

	for (int j = 0; j < n; j++) {
		rand_row(data + (size_t)j * rb, type, k, grid);
		memset(data + (size_t)j * rb + rb - pad, 0xA5, pad);
	}
	*w = (struct kvp_cpu_weight){ .data = data, .type = type, .n = n, .k = k, .row_bytes = rb };
}

static int act_block(uint32_t type)
{
	uint32_t be = kvp_ggml_type(type)->block_elems;

	return be == 1 ? KVP_QK : (int)be;
}

float *qt_grid_rows(uint32_t type, int m, int k, size_t lda)
{
	const int ab = act_block(type);
	float *a = qt_alloc((size_t)m * lda * sizeof(float));

	for (int r = 0; r < m; r++) {
		float *ar = a + (size_t)r * lda;

		for (int i = 0; i < k; i++)
			ar[i] = (float)((int)(qt_rand() % 63) - 31);
		for (int b = 0; b < k; b += ab)
			ar[b + (int)(qt_rand() % (uint64_t)ab)] = qt_rand() & 1 ? 127.0f : -127.0f;
	}
	return a;
}

float *qt_dequant_all(const struct kvp_cpu_weight *w)
{
	float *d = qt_alloc((size_t)w->n * (size_t)w->k * sizeof(float));

	for (int j = 0; j < w->n; j++)
		cr_assert_eq(kvp_dequant_row(w->type, (const char *)w->data + (size_t)j * w->row_bytes,
					     d + (size_t)j * w->k, (size_t)w->k), 0);
	return d;
}

/* Row j's offsets: the row dequantized with its quant bits zero (0 for F32/F16/BF16). */
static void offsets_row(const struct kvp_cpu_weight *w, int j, float *o)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(w->type);
	const struct layout *l = layout_of(w->type);
	size_t rb = kvp_ggml_row_bytes(w->type, (uint64_t)w->k);
	uint8_t *row;

	if (!l) {
		memset(o, 0, (size_t)w->k * sizeof(float));
		return;
	}
	row = qt_alloc(rb);
	memcpy(row, (const char *)w->data + (size_t)j * w->row_bytes, rb);
	for (size_t b = 0; b < rb / t->block_bytes; b++)
		memset(row + b * t->block_bytes + l->q0, 0, (size_t)(l->q1 - l->q0));
	cr_assert_eq(kvp_dequant_row(w->type, row, o, (size_t)w->k), 0);
	free(row);
}

void qt_reference(const struct kvp_cpu_weight *w, const float *a, size_t lda, int m,
		  struct qt_ref *ref)
{
	const bool quantized = kvp_ggml_type(w->type)->block_elems > 1;
	const int ab = act_block(w->type);
	float *wd = qt_dequant_all(w), *o = qt_alloc((size_t)w->k * sizeof(float));

	ref->c = qt_alloc((size_t)m * w->n * sizeof(double));
	ref->tol = qt_alloc((size_t)m * w->n * sizeof(double));
	for (int j = 0; j < w->n; j++) {
		const float *wj = wd + (size_t)j * w->k;

		offsets_row(w, j, o);
		for (int r = 0; r < m; r++) {
			const float *ar = a + (size_t)r * lda;
			double s = 0, mag = 0, qbound = 0, fbound = 0;

			for (int b = 0; b < w->k; b += ab) {
				double amax = 0, sw = 0, swo = 0;

				for (int i = b; i < b + ab && i < w->k; i++) {
					s += (double)ar[i] * wj[i];
					mag += fabs((double)ar[i] * wj[i]);
					amax = fmax(amax, fabs(ar[i]));
					sw += fabs(wj[i]);
					swo += fabs(wj[i]) + fabs(o[i]);
				}
				qbound += (0.6 * amax / 127 + (ab == KVP_QK ? 4e-6 : 0.0)) * sw;
				fbound += amax * swo;
			}
			ref->c[(size_t)r * w->n + j] = s;
			ref->tol[(size_t)r * w->n + j] =
				quantized ? qbound + 1e-5 * fbound : 1e-5 * mag;
		}
	}
	free(wd);
	free(o);
}

void qt_ref_free(struct qt_ref *ref)
{
	free(ref->c);
	free(ref->tol);
}
