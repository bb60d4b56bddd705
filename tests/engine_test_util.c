/*
 * engine_test_util.c - what the engine_*.c files of test_engine share: the suites and
 * their temporary directory, kvprefix-mkmodel and models written here, block tables,
 * opening an engine, the engine run compared with the reference, and the models of the
 * forward and cache tests. Declared in engine_test_util.h.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "daemon_harness.h"
#include "engine_test_util.h"
#include "kvp_engine.h"
#include "kvp_gguf.h"
#include "kvp_model.h"

#ifndef KVP_MKMODEL_PATH
#error "KVP_MKMODEL_PATH must name the kvprefix-mkmodel binary"
#endif

/* ---- temp dir, models ------------------------------------------------------------- */

static char g_dir[64];

static void setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(g_dir, sizeof(g_dir), "engine"), 0);
}

static void teardown(void)
{
	kvp_tmpdir_remove(g_dir);
}

TestSuite(reference, .init = setup, .fini = teardown);
TestSuite(forward, .init = setup, .fini = teardown);
TestSuite(cache, .init = setup, .fini = teardown);
TestSuite(errors, .init = setup, .fini = teardown);

void et_path_in(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", g_dir, name);
}

/* kvprefix-mkmodel --out DIR/name ARGS; asserts it succeeded. */
void et_mkmodel(const char *name, const char *args)
{
	char cmd[1024], out[256];
	int st;

	et_path_in(out, sizeof(out), name);
	snprintf(cmd, sizeof(cmd), "'%s' --quiet --out '%s' %s", KVP_MKMODEL_PATH, out, args);
	st = system(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mkmodel %s failed", args);
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float urand(uint64_t *s)
{
	return (float)((double)(splitmix(s) >> 11) * 0x1p-53 * 2.0 - 1.0);
}

void et_write_custom(const char *name, const struct custom_model *c)
{
	struct kvp_gguf_writer *w;
	char path[256], err[256], tn[64];
	const uint32_t hd = c->dim / c->heads;
	float *bufs[16 * 9 + 8];
	int nb = 0;
	uint64_t s = c->seed;

	et_path_in(path, sizeof(path), name);
	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	cr_assert_eq(kvp_gguf_add_str(w, "general.architecture", "llama"), 0);
	cr_assert_eq(kvp_gguf_add_str(w, "general.name", name), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.context_length", c->ctx), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.embedding_length", c->dim), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.block_count", c->layers), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.feed_forward_length", c->ffn), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.attention.head_count", c->heads), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.attention.head_count_kv", c->kv_heads), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "llama.rope.dimension_count", c->rope_dim), 0);
	cr_assert_eq(kvp_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", c->eps), 0);
	cr_assert_eq(kvp_gguf_add_f32(w, "llama.rope.freq_base", c->base), 0);

	cr_assert_leq(c->layers, 16);
#define ADD_T(nm, n0, n1, isnorm)                                                          \
	do {                                                                               \
		uint64_t ne_[2] = { (n0), (n1) };                                          \
		size_t cnt_ = (size_t)ne_[0] * ne_[1];                                     \
		float *d_ = malloc(cnt_ * sizeof(float));                                  \
		cr_assert_not_null(d_);                                                    \
		for (size_t i_ = 0; i_ < cnt_; i_++)                                       \
			d_[i_] = (isnorm) ? 1.0f + c->nspread * urand(&s)                  \
					  : c->wscale * urand(&s);                         \
		bufs[nb++] = d_;                                                           \
		cr_assert_eq(kvp_gguf_add_tensor(w, (nm), (n1) == 1 ? 1 : 2, ne_,          \
						 KVP_GGML_F32, d_), 0, "%s", (nm));        \
	} while (0)

	/* the embedding as large as the matrices' outputs, so the residual stream is not
	 * dominated by it */
	ADD_T("token_embd.weight", c->dim, c->vocab, false);
	for (uint32_t l = 0; l < c->layers; l++) {
		snprintf(tn, sizeof(tn), "blk.%u.attn_norm.weight", l);
		ADD_T(tn, c->dim, 1, true);
		snprintf(tn, sizeof(tn), "blk.%u.attn_q.weight", l);
		ADD_T(tn, c->dim, c->heads * hd, false);
		snprintf(tn, sizeof(tn), "blk.%u.attn_k.weight", l);
		ADD_T(tn, c->dim, c->kv_heads * hd, false);
		snprintf(tn, sizeof(tn), "blk.%u.attn_v.weight", l);
		ADD_T(tn, c->dim, c->kv_heads * hd, false);
		snprintf(tn, sizeof(tn), "blk.%u.attn_output.weight", l);
		ADD_T(tn, c->heads * hd, c->dim, false);
		snprintf(tn, sizeof(tn), "blk.%u.ffn_norm.weight", l);
		ADD_T(tn, c->dim, 1, true);
		snprintf(tn, sizeof(tn), "blk.%u.ffn_gate.weight", l);
		ADD_T(tn, c->dim, c->ffn, false);
		snprintf(tn, sizeof(tn), "blk.%u.ffn_up.weight", l);
		ADD_T(tn, c->dim, c->ffn, false);
		snprintf(tn, sizeof(tn), "blk.%u.ffn_down.weight", l);
		ADD_T(tn, c->ffn, c->dim, false);
	}
	ADD_T("output_norm.weight", c->dim, 1, true);
	if (!c->tied)
		ADD_T("output.weight", c->dim, c->vocab, false);
#undef ADD_T
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
	for (int i = 0; i < nb; i++)
		free(bufs[i]);
}

/* ---- engine harness --------------------------------------------------------------- */

void et_table_init_aligned(struct table *t, uint32_t n, size_t block_bytes, uint64_t seed,
			   size_t align)
{
	uint32_t *perm = malloc(n * sizeof(*perm));
	void *a = NULL;

	cr_assert_not_null(perm);
	t->n = n;
	t->stride = (block_bytes + align - 1) / align * align;
	t->bytes = t->stride * n;
	cr_assert_eq(posix_memalign(&a, align, t->bytes ? t->bytes : align), 0);
	t->arena = a;
	memset(t->arena, 0xFF, t->bytes);
	t->blocks = calloc(n ? n : 1, sizeof(void *));
	cr_assert_not_null(t->blocks);
	for (uint32_t i = 0; i < n; i++)
		perm[i] = i;
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(splitmix(&seed) % i);
		uint32_t tmp = perm[i - 1];
		perm[i - 1] = perm[j];
		perm[j] = tmp;
	}
	for (uint32_t i = 0; i < n; i++)
		t->blocks[i] = t->arena + (size_t)perm[i] * t->stride;
	free(perm);
}

void et_table_init(struct table *t, uint32_t n, size_t block_bytes, uint64_t seed)
{
	et_table_init_aligned(t, n, block_bytes, seed, 64);
}

/* Make block i of a page-aligned table read-only (or writable again): a write into a
 * cached block by the engine then faults at the write, instead of going unnoticed
 * when it happens to write the same bytes. */
void et_table_protect(struct table *t, uint32_t i, bool ro)
{
	cr_assert_eq(mprotect(t->blocks[i], t->stride, ro ? PROT_READ : PROT_READ | PROT_WRITE),
		     0);
}

void et_table_free(struct table *t)
{
	free(t->blocks);
	free(t->arena);
	memset(t, 0, sizeof(*t));
}

void et_eng_open(struct eng *g, const char *path, int threads, enum kvp_kv_dtype dt,
		 uint32_t block_tokens, uint32_t max_batch)
{
	char err[256];
	struct kvp_engine_config cfg = { .threads = threads, .kv_dtype = dt,
					 .block_tokens = block_tokens, .max_batch = max_batch };

	cr_assert_eq(kvp_model_load(path, &g->m, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvp_engine_create(g->m, &cfg, &g->e), 0);
}

void et_eng_close(struct eng *g)
{
	kvp_engine_destroy(g->e);
	kvp_model_free(g->m);
}

uint32_t et_argmax_f(const float *x, uint32_t n)
{
	uint32_t b = 0;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

uint32_t et_argmax_d(const double *x, uint32_t n)
{
	uint32_t b = 0;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

void et_make_prompt(uint32_t *tok, uint32_t n, uint32_t vocab, uint64_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		tok[i] = (uint32_t)(splitmix(&seed) % vocab);
}

double et_max_diff_fd(const float *a, const double *ref, uint32_t n)
{
	double m = 0.0;
	for (uint32_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - ref[i]);
		if (!(d <= m))   /* NaN propagates as infinity */
			m = isnan(d) ? INFINITY : d;
	}
	return m;
}

double et_max_diff_ff(const float *a, const float *b, uint32_t n)
{
	double m = 0.0;
	for (uint32_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - (double)b[i]);
		if (!(d <= m))
			m = isnan(d) ? INFINITY : d;
	}
	return m;
}

/* Engine: prefill tok[0..n_prompt) in one call, then n_extra single-token calls; logits
 * of the same positions as ref_run. Returns the max abs diff against ref (all vectors). */
double et_eng_run_vs_ref(struct eng *g, struct table *t, const uint32_t *tok,
			 uint32_t n_prompt, uint32_t n_extra, const double *ref, uint32_t vocab)
{
	float *lg = malloc(vocab * sizeof(float));
	double md = 0.0, d;

	cr_assert_not_null(lg);
	cr_assert_eq(kvp_engine_forward(g->e, t->blocks, t->n, tok, n_prompt, 0, 0, lg), 0);
	md = et_max_diff_fd(lg, ref, vocab);
	for (uint32_t s = 0; s < n_extra; s++) {
		uint32_t p = n_prompt + s;
		cr_assert_eq(kvp_engine_forward(g->e, t->blocks, t->n, tok + p, 1, p, p, lg), 0);
		d = et_max_diff_fd(lg, ref + (size_t)(s + 1) * vocab, vocab);
		md = d > md ? d : md;
	}
	free(lg);
	return md;
}

/* ---- the models of the forward and cache tests ---------------------------------------- */

const struct fwd_case et_fwd_cases[] = {
	{ "gqa-4-2", "--vocab 512 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 160 "
		     "--ctx 1024 --dtype f32", { 0 }, 300, false, 0 },
	{ "tied", "--vocab 512 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 160 "
		  "--ctx 1024 --dtype f32 --tied --seed 2", { 0 }, 300, false, 0 },
	{ "mha-4-4", "--vocab 512 --dim 64 --layers 2 --heads 4 --kv-heads 4 --ffn 160 "
		     "--ctx 1024 --dtype f32 --seed 3", { 0 }, 300, false, 0 },
	{ "mqa-8-1", "--vocab 512 --dim 64 --layers 2 --heads 8 --kv-heads 1 --ffn 160 "
		     "--ctx 1024 --dtype f32 --seed 4", { 0 }, 300, false, 0 },
	/* large weights, head dim 12 (vector tails), partial rope 8 of 12, GQA group 3 */
	{ "custom-hd12", NULL,
	  { .vocab = 300, .dim = 72, .layers = 2, .heads = 6, .kv_heads = 2, .ffn = 100,
	    .ctx = 512, .rope_dim = 8, .eps = 1e-6f, .base = 500000.0f, .wscale = 0.25f,
	    .nspread = 0.3f, .seed = 21 }, 300, false, 0 },
	/* head dim 320: the decode attention's shrunken tiles, and rope over 160 pairs
	 * (over 128: the direct rope path); tied */
	{ "custom-hd320", NULL,
	  { .vocab = 280, .dim = 640, .layers = 1, .heads = 2, .kv_heads = 1, .ffn = 64,
	    .ctx = 256, .rope_dim = 320, .eps = 1e-5f, .base = 10000.0f, .wscale = 0.08f,
	    .nspread = 0.2f, .tied = true, .seed = 22 }, 150, false, 0 },
	/* 96 query heads on one kv head (a group over KVP_ATTN_MAX_Q = 64 query vectors),
	 * head dim 4 */
	{ "custom-g96", NULL,
	  { .vocab = 270, .dim = 384, .layers = 2, .heads = 96, .kv_heads = 1, .ffn = 64,
	    .ctx = 256, .rope_dim = 4, .eps = 1e-5f, .base = 10000.0f, .wscale = 0.1f,
	    .nspread = 0.2f, .seed = 23 }, 120, false, 0 },
	/* head dim 2048 = KVP_CPU_MAX_HEAD_DIM, rope over 1024 pairs */
	{ "custom-hd2048", NULL,
	  { .vocab = 260, .dim = 2048, .layers = 1, .heads = 1, .kv_heads = 1, .ffn = 32,
	    .ctx = 128, .rope_dim = 2048, .eps = 1e-5f, .base = 10000.0f, .wscale = 0.03f,
	    .nspread = 0.2f, .seed = 24 }, 40, true, 0 },
	/* head dim 320 with 7 query heads per kv head: decode attention (1 row x 7 heads,
	 * under 8 query vectors) takes the one-row path, whose stack tiles hold 6 heads of
	 * 320, so the heads go in two rounds (6 + 1); partial rope 64 of 320 */
	{ "custom-hd320-g7", NULL,
	  { .vocab = 260, .dim = 2240, .layers = 1, .heads = 7, .kv_heads = 1, .ffn = 32,
	    .ctx = 64, .rope_dim = 64, .eps = 1e-5f, .base = 10000.0f, .wscale = 0.03f,
	    .nspread = 0.2f, .seed = 25 }, 24, true, 0 },
};

double et_tol_f16(const struct fwd_case *c)
{
	return c->mk_args ? TOL_F16_MK : TOL_F16;
}

double et_tol_ref(const struct fwd_case *c)
{
	return c->tol_ref > 0 ? c->tol_ref : TOL_F32;
}

void et_fwd_model_path(const struct fwd_case *c, char *path, size_t n)
{
	char file[64];
	snprintf(file, sizeof(file), "%s.gguf", c->name);
	if (c->mk_args)
		et_mkmodel(file, c->mk_args);
	else
		et_write_custom(file, &c->cm);
	et_path_in(path, n, file);
}
