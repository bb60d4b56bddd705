/*
 * attention.c - paged KV: block sizes, storing a position's K/V, and the attention
 * driver that splits the work and hands it to the dispatched kernels (kern_body.h).
 *
 *   block (void *, block_bytes):
 *   ┌ layer 0 ─────────────────────────────────┬ layer 1 ─ ...
 *   │ K: kv_head 0 (B, d) | kv_head 1 (B, d) ..│ V: kv_head 0 (B, d) | ...
 *   position p lives in blocks[p / B], row p % B.
 *
 * Work items (dynamic: an atomic counter, heaviest first):
 *   many queries per kv head (n * group >= 8): (kv head, chunk of rows) with up to
 *     KVP_ATTN_MAX_Q query vectors, the K/V tile shared by all of them (attn_big);
 *   otherwise (decode): (row, kv head) (attn_small).
 */
#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define KVP_ATTN_BIG_MIN_Q 8 /* query vectors per kv head that make the big path pay */

void kvp_cpu_kv_store(const struct kvp_kv_view *kv, uint32_t pos, const float *k, const float *v)
{
	const struct kvp_cpu_kern *kn = kvp_cpu_kern();
	const size_t d = kv->head_dim;

	assert(pos / kv->block_tokens < kv->n_blocks);
	for (uint32_t h = 0; h < kv->n_kv_heads; h++) {
		void *kr = (void *)kvp_kv_row(kv, 0, h, pos);
		void *vr = (void *)kvp_kv_row(kv, 1, h, pos);
		if (kv->dtype == KVP_KV_F16) {
			kn->f32_to_f16(kr, k + h * d, d);
			kn->f32_to_f16(vr, v + h * d, d);
		} else {
			memcpy(kr, k + h * d, d * sizeof(float));
			memcpy(vr, v + h * d, d * sizeof(float));
		}
	}
}

struct store_job {
	const struct kvp_kv_view *kv;
	uint32_t pos0;
	int n_rows;
	const float *k, *v;     /* (n_rows, ldk), (n_rows, ldv) */
	size_t ldk, ldv;
};

static void store_worker(void *arg, int ith, int nth)
{
	const struct store_job *j = arg;
	int r0, r1;
	kvp_cpu_split_rows(j->n_rows, ith, nth, &r0, &r1);
	for (int r = r0; r < r1; r++)
		kvp_cpu_kv_store(j->kv, j->pos0 + (uint32_t)r, j->k + (size_t)r * j->ldk,
				 j->v + (size_t)r * j->ldv);
}

void kvp_cpu_kv_store_rows(struct kvp_threadpool *tp, const struct kvp_kv_view *kv, uint32_t pos0,
			   int n_rows, const float *k, size_t ldk, const float *v, size_t ldv)
{
	struct store_job j = { .kv = kv, .pos0 = pos0, .n_rows = n_rows, .k = k, .v = v,
			       .ldk = ldk, .ldv = ldv };
	size_t elems = (size_t)n_rows * kv->n_kv_heads * kv->head_dim;
	kvp_cpu_parallel(elems < KVP_CPU_ROWS_MIN_PARALLEL || n_rows < 2 ? NULL : tp, store_worker, &j);
}

struct attn_job {
	const struct kvp_cpu_kern *kern;
	struct kvp_threadpool *tp;
	struct kvp_attn_args args;
	bool big;
	uint32_t rows_per_item;     /* big: rows of one chunk */
	uint32_t n_chunks;          /* big: chunks of rows; small: n */
	uint32_t n_items;
	size_t scratch_bytes;
	_Atomic uint32_t next;
};

static void attn_worker(void *arg, int ith, int nth)
{
	struct attn_job *j = arg;
	const struct kvp_attn_args *a = &j->args;
	const uint32_t hkv = a->kv->n_kv_heads;
	float *scratch = NULL;

	if (j->big) {
		scratch = j->tp ? kvp_threadpool_scratch(j->tp, ith, j->scratch_bytes)
				: aligned_alloc(64, j->scratch_bytes);
	}
	for (;;) {
		uint32_t it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
		if (it >= j->n_items)
			break;
		/* last chunks (longest context) first */
		uint32_t chunk = j->n_chunks - 1 - it / hkv, hk = it % hkv;
		if (!j->big) {
			j->kern->attn_small(a, chunk, hk);
			continue;
		}
		uint32_t r0 = chunk * j->rows_per_item;
		uint32_t r1 = r0 + j->rows_per_item < a->n ? r0 + j->rows_per_item : a->n;
		if (scratch) {
			j->kern->attn_big(a, hk, r0, r1, scratch);
		} else {
			for (uint32_t r = r0; r < r1; r++)
				j->kern->attn_small(a, r, hk);
		}
	}
	if (!j->tp)
		free(scratch);
}

void kvp_cpu_attention(struct kvp_threadpool *tp, const struct kvp_kv_view *kv,
		       const float *q, float *out, uint32_t n, uint32_t pos0, uint32_t n_heads)
{
	assert(kv->n_kv_heads > 0 && n_heads % kv->n_kv_heads == 0);
	assert(n == 0 || (pos0 + n - 1) / kv->block_tokens < kv->n_blocks);
	assert(kv->head_dim >= 1 && kv->head_dim <= KVP_CPU_MAX_HEAD_DIM);
	if (n == 0)
		return;

	struct attn_job j = {
		.kern = kvp_cpu_kern(),
		.tp = tp,
		.args = {
			.kv = kv, .q = q, .out = out, .n = n, .pos0 = pos0, .n_heads = n_heads,
			.group = n_heads / kv->n_kv_heads,
			.scale = (float)(1.0 / sqrt((double)kv->head_dim)),
		},
	};
	uint32_t g = j.args.group;
	j.big = (size_t)n * g >= KVP_ATTN_BIG_MIN_Q;
	if (j.big) {
		uint32_t vlen = (uint32_t)j.kern->vlen;
		j.rows_per_item = g >= KVP_ATTN_MAX_Q ? 1 : KVP_ATTN_MAX_Q / g;
		j.n_chunks = (n + j.rows_per_item - 1) / j.rows_per_item;
		uint32_t rp = (j.rows_per_item * g + vlen - 1) / vlen * vlen;
		j.scratch_bytes = kvp_attn_big_scratch_floats(kv->head_dim, rp) * sizeof(float);
	} else {
		j.n_chunks = n;
	}
	j.n_items = j.n_chunks * kv->n_kv_heads;
	kvp_cpu_parallel(tp, attn_worker, &j);
}
