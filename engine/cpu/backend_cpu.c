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
 * A batch's rows go in steps of at most max_batch rows, taken from its sequences in
 * order (decode rows of many sequences and prompt chunks side by side): the matrix work
 * runs once per step over all its rows, so the weights are read once for the whole
 * step, while rope, the K/V stores and attention run per sequence over its own block
 * table. Attention reads K/V from the blocks themselves; a cached prefix is read, never
 * written. The logits of every sequence that wants them come from one pass of the
 * output matrix over their last rows.
 *
 * Every matrix is used as the file stores it (kvp_cpu_weight over the model's mapping):
 * nothing is widened or packed at create, so the engine adds only its run state to the
 * model's mapped file. kvp_cpu_matmul_w takes the dot path for up to
 * KVP_CPU_DOT_MAX_M rows (decode: each weight byte read once, activations quantized to
 * 8 bits for block types) and the blocked GEMM above, dequantizing and packing W's
 * slices as it goes (prefill).
 */
#include "backend.h"
#include "kvp_cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cpu_layer {
	struct kvp_cpu_weight wq, wk, wv, wo, w_gate, w_up, w_down;
};

/* A piece of one sequence in a step: its rows row0 .. row0+rows-1 of the run state,
 * at positions pos .. pos+rows-1, over its own block table. */
struct seg {
	const struct kvp_engine_seq *s;
	struct kvp_kv_view kv;
	uint32_t row0, rows, pos;
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
	uint32_t *tok;       /* (max_batch) the step's tokens */
	struct seg *segs;    /* (max_batch) the step's pieces of sequences */
	float *last_h;       /* (last_cap, dim) last hidden rows of sequences wanting logits */
	float *last_logits;  /* (last_cap, vocab) */
	uint32_t last_cap;
	struct cpu_layer *layers;    /* (n_layers) */
	struct kvp_cpu_weight embd;  /* (vocab, dim): rows looked up */
	struct kvp_cpu_weight output;   /* (vocab, dim) */
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

/* The kernels' view of a model matrix. */
static struct kvp_cpu_weight weight_of(const struct kvp_tensor *t)
{
	return (struct kvp_cpu_weight){ .data = t->data, .type = t->type, .n = (int)t->rows,
					 .k = (int)t->cols, .row_bytes = t->row_bytes };
}

static void cpu_destroy(void *state)
{
	struct cpu_state *c = state;

	if (!c)
		return;
	kvp_threadpool_destroy(c->tp);
	free(c->layers);
	free(c->rope_freq);
	free(c->x);
	free(c->xb);
	free(c->q);
	free(c->k);
	free(c->v);
	free(c->att);
	free(c->hb);
	free(c->hb2);
	free(c->tok);
	free(c->segs);
	free(c->last_h);
	free(c->last_logits);
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
	c->tok = calloc(rows, sizeof(*c->tok));
	c->segs = calloc(rows, sizeof(*c->segs));
	c->layers = calloc(mc->n_layers ? mc->n_layers : 1, sizeof(*c->layers));
	c->rope_freq = calloc(mc->rope_dim / 2 ? mc->rope_dim / 2 : 1, sizeof(double));
	if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->hb || !c->hb2 ||
	    !c->tok || !c->segs || !c->layers || !c->rope_freq)
		return KVP_ENOMEM;
	for (uint32_t i = 0; i < mc->rope_dim / 2; i++)
		c->rope_freq[i] = kvp_model_rope_freq(c->m, i);
	c->rope = (struct kvp_cpu_rope){ .freq = c->rope_freq, .rope_dim = (int)mc->rope_dim,
					 .halves = mc->rope_style == KVP_ROPE_HALVES };
	return KVP_OK;
}

/* Every matrix as the kernels take it; KVP_EUNSUPPORTED (err says which) for a type
 * they do not compute with. */
static int open_matrices(struct cpu_state *c, char *err, size_t errlen)
{
	const struct kvp_model *m = c->m;

	c->embd = weight_of(&m->tok_embd);
	c->output = weight_of(&m->output);
	for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];

		c->layers[l] = (struct cpu_layer){
			.wq = weight_of(&w->wq), .wk = weight_of(&w->wk), .wv = weight_of(&w->wv),
			.wo = weight_of(&w->wo), .w_gate = weight_of(&w->w_gate),
			.w_up = weight_of(&w->w_up), .w_down = weight_of(&w->w_down),
		};
		const struct kvp_cpu_weight *ws[] = {
			&c->layers[l].wq, &c->layers[l].wk, &c->layers[l].wv, &c->layers[l].wo,
			&c->layers[l].w_gate, &c->layers[l].w_up, &c->layers[l].w_down,
			&c->embd, &c->output,
		};
		for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++) {
			int rc = kvp_cpu_weight_check(ws[i]);
			char tn[16];

			if (rc < 0) {
				if (err && errlen)
					snprintf(err, errlen, "CPU kernels: a matrix of type %s: %s",
						 kvp_ggml_type_name(ws[i]->type, tn, sizeof(tn)),
						 kvp_strerror(rc));
				return rc;
			}
		}
	}
	return KVP_OK;
}

static int cpu_create(const struct kvp_model *m, const struct kvp_engine_config *cfg,
		      void **state, char *err, size_t errlen)
{
	const struct kvp_model_config *mc = &m->cfg;
	struct cpu_state *c = calloc(1, sizeof(*c));
	int rc;

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
		rc = open_matrices(c, err, errlen);
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
	for (uint32_t i = 0; i < rows; i++)
		(void)kvp_cpu_weight_row(&c->embd, (int)tokens[i], c->x + (size_t)i * c->embd.k);
}

/* C (rows, w->n) (+)= A . W^T into *rc, unless an earlier call failed. The weights were
 * checked at create: only the scratch's growth (at the first call of each shape) can
 * fail, KVP_ENOMEM. */
static void mm(struct cpu_state *c, const float *a, int lda, const struct kvp_cpu_weight *w,
	       float *out, int ldc, uint32_t rows, bool accumulate, int *rc)
{
	if (*rc == KVP_OK)
		*rc = kvp_cpu_matmul_w(c->tp, a, (size_t)lda, w, out, (size_t)ldc, (int)rows,
				       accumulate);
}

/* The attention sublayer of layer l over a step's rows: x += attention. The matrix
 * work runs once over every row; rope, the K/V stores and attention per sequence. */
static int attention_block(struct cpu_state *c, uint32_t l, struct seg *segs, uint32_t n_segs,
			   uint32_t rows)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	const struct kvp_layer_weights *w = &c->m->layers[l];
	const struct cpu_layer *p = &c->layers[l];
	const int dim = (int)mc->dim, qd = (int)c->q_dim, kvd = (int)c->kv_dim;
	int rc = KVP_OK;

	kvp_cpu_rmsnorm_rows(c->tp, c->xb, dim, c->x, dim, w->attn_norm, (int)rows, dim,
			     mc->rms_eps);
	mm(c, c->xb, dim, &p->wq, c->q, qd, rows, false, &rc);
	mm(c, c->xb, dim, &p->wk, c->k, kvd, rows, false, &rc);
	mm(c, c->xb, dim, &p->wv, c->v, kvd, rows, false, &rc);
	if (rc)
		return rc;
	add_bias(c, c->q, qd, w->bq, rows, qd);
	add_bias(c, c->k, kvd, w->bk, rows, kvd);
	add_bias(c, c->v, kvd, w->bv, rows, kvd);
	for (uint32_t i = 0; i < n_segs; i++) {
		struct seg *g = &segs[i];
		float *q = c->q + (size_t)g->row0 * qd, *k = c->k + (size_t)g->row0 * kvd;
		const float *v = c->v + (size_t)g->row0 * kvd;
		const uint32_t from = g->s->kv_write_from;

		g->kv.layer = l;
		kvp_cpu_rope_rows_spec(c->tp, q, qd, (int)g->rows, (int)mc->n_heads,
				       (int)mc->head_dim, &c->rope, g->pos);
		kvp_cpu_rope_rows_spec(c->tp, k, kvd, (int)g->rows, (int)mc->n_kv_heads,
				       (int)mc->head_dim, &c->rope, g->pos);
		/* rows below kv_write_from are a cached prefix: its KV is already there */
		if (g->pos + g->rows > from) {
			uint32_t skip = from > g->pos ? from - g->pos : 0;

			kvp_cpu_kv_store_rows(c->tp, &g->kv, g->pos + skip, (int)(g->rows - skip),
					      k + (size_t)skip * kvd, kvd, v + (size_t)skip * kvd,
					      kvd);
		}
		kvp_cpu_attention(c->tp, &g->kv, q, c->att + (size_t)g->row0 * qd, g->rows, g->pos,
				  mc->n_heads);
	}
	mm(c, c->att, qd, &p->wo, c->x, dim, rows, true, &rc);
	add_bias(c, c->x, dim, w->bo, rows, dim);
	return rc;
}

/* The FFN sublayer of layer l: x += down(silu(gate(xb)) * up(xb)). */
static int ffn_block(struct cpu_state *c, uint32_t l, uint32_t rows)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	const struct kvp_layer_weights *w = &c->m->layers[l];
	const struct cpu_layer *p = &c->layers[l];
	const int dim = (int)mc->dim, ffn = (int)mc->ffn;
	int rc = KVP_OK;

	kvp_cpu_rmsnorm_rows(c->tp, c->xb, dim, c->x, dim, w->ffn_norm, (int)rows, dim,
			     mc->rms_eps);
	mm(c, c->xb, dim, &p->w_gate, c->hb, ffn, rows, false, &rc);
	mm(c, c->xb, dim, &p->w_up, c->hb2, ffn, rows, false, &rc);
	add_bias(c, c->hb, ffn, w->b_gate, rows, ffn);
	add_bias(c, c->hb2, ffn, w->b_up, rows, ffn);
	kvp_cpu_swiglu_rows(c->tp, c->hb, ffn, c->hb2, ffn, (int)rows, ffn);
	mm(c, c->hb, ffn, &p->w_down, c->x, dim, rows, true, &rc);
	add_bias(c, c->x, dim, w->b_down, rows, dim);
	return rc;
}

/* One step over the rows of segs (rows in all, their tokens in c->tok). */
static int forward_step(struct cpu_state *c, struct seg *segs, uint32_t n_segs, uint32_t rows)
{
	int rc = KVP_OK;

	embed(c, c->tok, rows);
	for (uint32_t l = 0; l < c->m->cfg.n_layers && rc == KVP_OK; l++) {
		rc = attention_block(c, l, segs, n_segs, rows);
		if (rc == KVP_OK)
			rc = ffn_block(c, l, rows);
	}
	return rc;
}

/* Room for n rows of the logits stage: their last hidden rows and their logits. */
static int reserve_last(struct cpu_state *c, uint32_t n)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	float *h, *lg;

	if (n <= c->last_cap)
		return KVP_OK;
	h = alloc_f32((size_t)n * mc->dim);
	lg = alloc_f32((size_t)n * mc->vocab);
	if (!h || !lg) {
		free(h);
		free(lg);
		return KVP_ENOMEM;
	}
	free(c->last_h);
	free(c->last_logits);
	c->last_h = h;
	c->last_logits = lg;
	c->last_cap = n;
	return KVP_OK;
}

/* The batch's logits: the final norm and the output matrix over every sequence's last
 * hidden row at once (last_h, n rows), each row's logits copied to its sequence. */
static int logits_stage(struct cpu_state *c, const struct kvp_engine_seq *seqs, uint32_t n_seqs,
			uint32_t n)
{
	const struct kvp_model_config *mc = &c->m->cfg;
	int rc = KVP_OK;
	uint32_t r = 0;

	kvp_cpu_rmsnorm_rows(c->tp, c->last_h, mc->dim, c->last_h, mc->dim, c->m->output_norm,
			     (int)n, (int)mc->dim, mc->rms_eps);
	mm(c, c->last_h, (int)mc->dim, &c->output, c->last_logits, (int)mc->vocab, n, false, &rc);
	for (uint32_t i = 0; i < n_seqs && rc == KVP_OK; i++)
		if (seqs[i].logits)
			memcpy(seqs[i].logits, c->last_logits + (size_t)r++ * mc->vocab,
			       (size_t)mc->vocab * sizeof(float));
	return rc;
}

/*
 * The whole batch in steps of at most max_batch rows: each step takes the rows of the
 * sequences in order, the last one it reaches cut where the step is full and carried on
 * in the next. A sequence's last hidden row is kept (last_h) for the logits stage.
 */
static int cpu_forward(void *state, const struct kvp_engine_seq *seqs, uint32_t n_seqs)
{
	struct cpu_state *c = state;
	const struct kvp_model_config *mc = &c->m->cfg;
	const uint32_t b = c->block_tokens;
	uint32_t i = 0, off = 0, n_last = 0, want = 0;
	int rc;

	for (uint32_t s = 0; s < n_seqs; s++)
		want += seqs[s].logits != NULL;
	if ((rc = reserve_last(c, want)))
		return rc;
	while (i < n_seqs) {
		uint32_t rows = 0, n_segs = 0;

		while (i < n_seqs && rows < c->max_batch) {
			const struct kvp_engine_seq *s = &seqs[i];
			uint32_t take = s->n - off < c->max_batch - rows ? s->n - off
									 : c->max_batch - rows;
			struct seg *g = &c->segs[n_segs++];

			*g = (struct seg){
				.s = s, .row0 = rows, .rows = take, .pos = s->pos0 + off,
				.kv = { .blocks = s->blocks, .block_tokens = b,
					.n_blocks = (s->pos0 + off + take + b - 1) / b,
					.n_layers = mc->n_layers, .n_kv_heads = mc->n_kv_heads,
					.head_dim = mc->head_dim, .dtype = c->kv_dtype },
			};
			memcpy(c->tok + rows, s->tokens + off, take * sizeof(uint32_t));
			rows += take;
			off += take;
			if (off == s->n) {
				i++;
				off = 0;
			}
		}
		if ((rc = forward_step(c, c->segs, n_segs, rows)))
			return rc;
		for (uint32_t k = 0; k < n_segs; k++) {
			const struct seg *g = &c->segs[k];

			if (g->s->logits && g->pos + g->rows == g->s->pos0 + g->s->n)
				memcpy(c->last_h + (size_t)n_last++ * mc->dim,
				       c->x + (size_t)(g->row0 + g->rows - 1) * mc->dim,
				       mc->dim * sizeof(float));
		}
	}
	return n_last ? logits_stage(c, seqs, n_seqs, n_last) : KVP_OK;
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
