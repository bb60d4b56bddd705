/*
 * backend_cpu.c - the CPU backend: the forward pass of a llama-family model over paged
 * block tables, on the kernels of kvp_cpu.h. The reference every other backend is
 * tested against.
 *
 *   tokens (n) ──embed──▶ x (rows, dim)
 *   per layer:  xb = rmsnorm(x)              q,k,v = xb . Wq/Wk/Wv      rope(q, k)
 *               K/V of rows at pos >= kv_write_from ──▶ blocks (paged)
 *               att = attention(q, blocks)   x += att . Wo
 *               xb = rmsnorm(x)              x += (silu(xb.Wg) * xb.Wu) . Wd
 *   last row:   logits = rmsnorm(x) . Wout
 *
 * A batch's sequences run one after the other; each sequence's rows go in steps of at
 * most max_batch, each step as matrix-matrix work over its rows (prefill) or
 * matrix-vector work (decode, one row). Attention reads K/V from the blocks themselves;
 * a cached prefix is read, never written.
 *
 * The seven matrices of every layer are packed once, at create, into the GEMM's panel
 * layout (kvp_cpu_pack_w): a second copy of the layer weights in memory (~100 MB for
 * the default 58M-parameter model), which spares each forward of more than 3 rows
 * packing them again (at 50 rows, e.g. a suffix after a cached prefix, that packing
 * cost as much memory traffic as the compute). Decode (1 row) still streams the
 * original row-major weights, and so does the output head, which only ever sees the
 * last row.
 */
#include "backend.h"
#include "kvp_cpu.h"

#include <stdlib.h>
#include <string.h>

/* One weight matrix as the GEMM takes it: f32 rows (the file's, or a widened copy of
 * a file in another type) and their packed panels. */
struct cpu_matrix {
	const float *w;               /* (rows, cols) */
	float *owned;                 /* the widened copy, when the file is not f32 */
	struct kvp_packed_w *packed;
};

struct cpu_layer {
	struct cpu_matrix wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct cpu_state {
	const struct kvp_model *m;
	struct kvp_threadpool *tp;
	enum kvp_kv_dtype kv_dtype;
	uint32_t block_tokens;
	uint32_t max_batch;
	uint32_t q_dim;      /* n_heads * head_dim */
	uint32_t kv_dim;     /* n_kv_heads * head_dim */
	/* run state for up to max_batch rows */
	float *x;            /* (max_batch, dim) residual stream */
	float *xb;           /* (max_batch, dim) normed input of a sublayer */
	float *q;            /* (max_batch, q_dim) */
	float *k;            /* (max_batch, kv_dim) */
	float *v;            /* (max_batch, kv_dim) */
	float *att;          /* (max_batch, q_dim) attention output */
	float *hb;           /* (max_batch, ffn) gate, then silu(gate) * up */
	float *hb2;          /* (max_batch, ffn) up */
	struct cpu_layer *layers;    /* (n_layers) */
	struct cpu_matrix output;    /* (vocab, dim), unpacked: only ever one row of A */
	double *rope_freq;           /* (rope_dim / 2) kvp_model_rope_freq */
	struct kvp_cpu_rope rope;
};

static void *alloc_f32(size_t n)
{
	void *p = NULL;

	if (posix_memalign(&p, 64, n * sizeof(float) + 64) != 0)
		return NULL;
	return p;
}

static void matrix_free(struct cpu_matrix *mx)
{
	kvp_cpu_packed_free(mx->packed);
	free(mx->owned);
	*mx = (struct cpu_matrix){ 0 };
}

/* The f32 rows of t: in place for an f32 file, else widened into a copy. */
static int matrix_rows(const struct kvp_tensor *t, struct cpu_matrix *mx)
{
	if (t->type == KVP_GGML_F32) {
		mx->w = t->data;
		return KVP_OK;
	}
	mx->owned = alloc_f32((size_t)t->rows * t->cols);
	if (!mx->owned)
		return KVP_ENOMEM;
	for (uint32_t r = 0; r < t->rows; r++)
		(void)kvp_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * t->row_bytes,
				      mx->owned + (size_t)r * t->cols, t->cols);
	mx->w = mx->owned;
	return KVP_OK;
}

/* t's f32 rows and their packed panels. */
static int matrix_open(const struct kvp_tensor *t, struct cpu_matrix *mx)
{
	int rc = matrix_rows(t, mx);

	if (rc == KVP_OK)
		rc = kvp_cpu_pack_w(mx->w, t->cols, (int)t->rows, (int)t->cols, &mx->packed);
	return rc;
}

static void cpu_destroy(void *state)
{
	struct cpu_state *c = state;

	if (!c)
		return;
	kvp_threadpool_destroy(c->tp);
	if (c->layers) {
		for (uint32_t l = 0; l < c->m->cfg.n_layers; l++) {
			struct cpu_layer *p = &c->layers[l];
			struct cpu_matrix *ms[] = { &p->wq, &p->wk, &p->wv, &p->wo, &p->w_gate,
						    &p->w_up, &p->w_down };

			for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
				matrix_free(ms[i]);
		}
		free(c->layers);
	}
	matrix_free(&c->output);
	free(c->rope_freq);
	free(c->x);
	free(c->xb);
	free(c->q);
	free(c->k);
	free(c->v);
	free(c->att);
	free(c->hb);
	free(c->hb2);
	free(c);
}

/* The run state for max_batch rows. */
static int alloc_run_state(struct cpu_state *c)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	size_t rows = c->max_batch;

	c->x = alloc_f32(rows * mc->dim);
	c->xb = alloc_f32(rows * mc->dim);
	c->q = alloc_f32(rows * c->q_dim);
	c->k = alloc_f32(rows * c->kv_dim);
	c->v = alloc_f32(rows * c->kv_dim);
	c->att = alloc_f32(rows * c->q_dim);
	c->hb = alloc_f32(rows * mc->ffn);
	c->hb2 = alloc_f32(rows * mc->ffn);
	c->layers = calloc(mc->n_layers ? mc->n_layers : 1, sizeof(*c->layers));
	c->rope_freq = calloc(mc->rope_dim / 2 ? mc->rope_dim / 2 : 1, sizeof(double));
	if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->hb || !c->hb2 ||
	    !c->layers || !c->rope_freq)
		return KVP_ENOMEM;
	for (uint32_t i = 0; i < mc->rope_dim / 2; i++)
		c->rope_freq[i] = kvp_model_rope_freq(c->m, i);
	c->rope = (struct kvp_cpu_rope){ .freq = c->rope_freq, .rope_dim = (int)mc->rope_dim,
					 .halves = mc->rope_style == KVP_ROPE_HALVES };
	return KVP_OK;
}

/* Every layer's seven matrices as the GEMM takes them, and the output head. */
static int open_matrices(struct cpu_state *c)
{
	const struct kvp_model *m = c->m;
	int rc = matrix_rows(&m->output, &c->output);

	for (uint32_t l = 0; l < m->cfg.n_layers && rc == KVP_OK; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];
		struct cpu_layer *p = &c->layers[l];

		if ((rc = matrix_open(&w->wq, &p->wq)) < 0 ||
		    (rc = matrix_open(&w->wk, &p->wk)) < 0 ||
		    (rc = matrix_open(&w->wv, &p->wv)) < 0 ||
		    (rc = matrix_open(&w->wo, &p->wo)) < 0 ||
		    (rc = matrix_open(&w->w_gate, &p->w_gate)) < 0 ||
		    (rc = matrix_open(&w->w_up, &p->w_up)) < 0 ||
		    (rc = matrix_open(&w->w_down, &p->w_down)) < 0)
			break;
	}
	return rc;
}

static int cpu_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      void **state, char *err, size_t errlen)
{
	const struct kvp_model_config *mc = &m->cfg;
	struct cpu_state *c = calloc(1, sizeof(*c));
	int rc;

	(void)err;
	(void)errlen;
	if (!c)
		return KVP_ENOMEM;
	c->m = m;
	c->kv_dtype = cfg->kv_dtype;
	c->block_tokens = cfg->block_tokens;
	c->max_batch = cfg->max_batch;
	c->q_dim = mc->n_heads * mc->head_dim;
	c->kv_dim = mc->n_kv_heads * mc->head_dim;
	rc = kvp_threadpool_create(cfg->threads, &c->tp);
	if (rc == KVP_OK)
		rc = alloc_run_state(c);
	if (rc == KVP_OK)
		rc = open_matrices(c);
	if (rc) {
		cpu_destroy(c);
		return rc;
	}
	*state = c;
	return KVP_OK;
}

/* y (rows, n) += b, per row; nothing when the model has no such bias. */
static void add_bias(struct cpu_state *c, float *y, size_t ldy, const float *b, uint32_t rows,
		     int n)
{
	if (b)
		kvp_cpu_add_rows(c->tp, y, ldy, b, 0, (int)rows, n);
}

/* x (rows, dim) = the embeddings of tokens (rows of token_embd, in its type). */
static void embed(struct cpu_state *c, const uint32_t *tokens, uint32_t rows)
{
	const struct kvp_tensor *e = &c->m->tok_embd;

	for (uint32_t i = 0; i < rows; i++)
		(void)kvp_dequant_row(e->type, (const uint8_t *)e->data + (size_t)tokens[i] * e->row_bytes,
				      c->x + (size_t)i * e->cols, e->cols);
}

/* The attention sublayer of layer l over rows at positions pos..: x += attention. */
static void attention_block(struct cpu_state *c, uint32_t l, struct kvp_kv_view *kv,
			    uint32_t rows, uint32_t pos, uint32_t kv_write_from)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	const struct kvp_layer_weights *w = &c->m->layers[l];
	const struct cpu_layer *p = &c->layers[l];
	const int dim = (int)mc->dim, qd = (int)c->q_dim, kvd = (int)c->kv_dim;

	kv->layer = l;
	kvp_cpu_rmsnorm_rows(c->tp, c->xb, dim, c->x, dim, w->attn_norm, (int)rows, dim,
			     mc->rms_eps);
	kvp_cpu_matmul_packed(c->tp, c->xb, dim, p->wq.packed, c->q, qd, (int)rows, false);
	kvp_cpu_matmul_packed(c->tp, c->xb, dim, p->wk.packed, c->k, kvd, (int)rows, false);
	kvp_cpu_matmul_packed(c->tp, c->xb, dim, p->wv.packed, c->v, kvd, (int)rows, false);
	add_bias(c, c->q, qd, w->bq, rows, qd);
	add_bias(c, c->k, kvd, w->bk, rows, kvd);
	add_bias(c, c->v, kvd, w->bv, rows, kvd);
	kvp_cpu_rope_rows_spec(c->tp, c->q, qd, (int)rows, (int)mc->n_heads, (int)mc->head_dim,
			       &c->rope, pos);
	kvp_cpu_rope_rows_spec(c->tp, c->k, kvd, (int)rows, (int)mc->n_kv_heads,
			       (int)mc->head_dim, &c->rope, pos);
	/* rows below kv_write_from are a cached prefix: its KV is already there */
	if (pos + rows > kv_write_from) {
		uint32_t skip = kv_write_from > pos ? kv_write_from - pos : 0;
		kvp_cpu_kv_store_rows(c->tp, kv, pos + skip, (int)(rows - skip),
				      c->k + (size_t)skip * kvd, kvd, c->v + (size_t)skip * kvd, kvd);
	}
	kvp_cpu_attention(c->tp, kv, c->q, c->att, rows, pos, mc->n_heads);
	kvp_cpu_matmul_packed(c->tp, c->att, qd, p->wo.packed, c->x, dim, (int)rows, true);
	add_bias(c, c->x, dim, w->bo, rows, dim);
}

/* The FFN sublayer of layer l: x += down(silu(gate(xb)) * up(xb)). */
static void ffn_block(struct cpu_state *c, uint32_t l, uint32_t rows)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	const struct kvp_layer_weights *w = &c->m->layers[l];
	const struct cpu_layer *p = &c->layers[l];
	const int dim = (int)mc->dim, ffn = (int)mc->ffn;

	kvp_cpu_rmsnorm_rows(c->tp, c->xb, dim, c->x, dim, w->ffn_norm, (int)rows, dim,
			     mc->rms_eps);
	kvp_cpu_matmul_packed(c->tp, c->xb, dim, p->w_gate.packed, c->hb, ffn, (int)rows, false);
	kvp_cpu_matmul_packed(c->tp, c->xb, dim, p->w_up.packed, c->hb2, ffn, (int)rows, false);
	add_bias(c, c->hb, ffn, w->b_gate, rows, ffn);
	add_bias(c, c->hb2, ffn, w->b_up, rows, ffn);
	kvp_cpu_swiglu_rows(c->tp, c->hb, ffn, c->hb2, ffn, (int)rows, ffn);
	kvp_cpu_matmul_packed(c->tp, c->hb, ffn, p->w_down.packed, c->x, dim, (int)rows, true);
	add_bias(c, c->x, dim, w->b_down, rows, dim);
}

/* One step: rows tokens at positions pos .. pos+rows-1. */
static void forward_rows(struct cpu_state *c, const struct kvp_kv_view *base,
			 const uint32_t *tokens, uint32_t rows, uint32_t pos,
			 uint32_t kv_write_from)
{
	struct kvp_kv_view kv = *base;

	embed(c, tokens, rows);
	for (uint32_t l = 0; l < c->m->cfg.n_layers; l++) {
		attention_block(c, l, &kv, rows, pos, kv_write_from);
		ffn_block(c, l, rows);
	}
}

/* One sequence of the batch, in steps of at most max_batch rows. */
static void forward_seq(struct cpu_state *c, const struct kvp_engine_seq *s)
{
	const struct kvp_model *m = c->m;
	const struct kvp_model_config *mc = &m->cfg;
	const uint32_t b = c->block_tokens;
	struct kvp_kv_view kv = {
		.blocks = s->blocks,
		.n_blocks = s->n_blocks,
		.block_tokens = b,
		.n_layers = mc->n_layers,
		.n_kv_heads = mc->n_kv_heads,
		.head_dim = mc->head_dim,
		.dtype = c->kv_dtype,
	};
	uint32_t done = 0, rows = 0;

	while (done < s->n) {
		rows = s->n - done < c->max_batch ? s->n - done : c->max_batch;
		kv.n_blocks = (s->pos0 + done + rows + b - 1) / b;   /* what this step may read */
		forward_rows(c, &kv, s->tokens + done, rows, s->pos0 + done, s->kv_write_from);
		done += rows;
	}
	if (s->logits) {
		const float *last = c->x + (size_t)(rows - 1) * mc->dim;
		kvp_cpu_rmsnorm(c->xb, last, m->output_norm, (int)mc->dim, mc->rms_eps);
		kvp_cpu_matmul(c->tp, c->xb, mc->dim, c->output.w, mc->dim, s->logits, mc->vocab, 1,
			       (int)mc->vocab, (int)mc->dim, false);
	}
}

static int cpu_forward(void *state, const struct kvp_engine_seq *seqs, uint32_t n_seqs)
{
	for (uint32_t i = 0; i < n_seqs; i++)
		forward_seq(state, &seqs[i]);
	return KVP_OK;
}

static size_t cpu_block_bytes(void *state)
{
	const struct cpu_state *c = state;
	const struct kvp_model_config *mc = &c->m->cfg;

	return kvp_kv_block_bytes(mc->n_layers, mc->n_kv_heads, mc->head_dim, c->block_tokens,
				  c->kv_dtype);
}

static struct kvp_threadpool *cpu_threads(void *state)
{
	return ((struct cpu_state *)state)->tp;
}

static const char *cpu_kernels(void *state)
{
	(void)state;
	return kvp_cpu_isa();
}

static double cpu_peak_gflops(void *state)
{
	return kvp_cpu_peak_gflops(((struct cpu_state *)state)->tp);
}

const struct kvp_backend_ops kvp_backend_cpu = {
	.name = "cpu",
	.kv_dtypes = 1u << KVP_KV_F32 | 1u << KVP_KV_F16,
	.create = cpu_create,
	.destroy = cpu_destroy,
	.block_bytes = cpu_block_bytes,
	.forward = cpu_forward,
	.threads = cpu_threads,
	.kernels = cpu_kernels,
	.peak_gflops = cpu_peak_gflops,
};
