/*
 * test_gguf.c - the GGUF reader and writer (engine/kvp_gguf.h), the llama model loader
 * (engine/kvp_model.h) and kvprefix-mkmodel, against their contracts.
 *
 *   mkmodel    files made by the real tool (f32/f16/bf16, tied/untied) load with the
 *              right config, parameter count and weights; same seed same bytes
 *   reader     the writer's keys and tensors read back through every getter; type
 *              conversions; what the writer refuses; v2 accepted, v1 refused
 *   truncate   a tiny model cut at every byte of its header and at a stride through
 *              its data is refused, with a message, never a crash
 *   corrupt    targeted byte patches (magic, version, counts, lengths, types, shapes,
 *              offsets, names, values) each refused with a message naming the key or
 *              tensor at fault
 *   fuzz       random byte flips in the header region never crash (run under
 *              -DKVP_SANITIZE=ON to make "never crash" mean "no memory error")
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "kvp_gguf.h"
#include "kvp_model.h"

#ifndef KVP_MKMODEL_PATH
#error "KVP_MKMODEL_PATH must name the kvprefix-mkmodel binary"
#endif

/* ---- helpers ----------------------------------------------------------------------- */

static char g_dir[64];

static void setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(g_dir, sizeof(g_dir), "gguf"), 0);
}

static void teardown(void)
{
	kvp_tmpdir_remove(g_dir);
}

TestSuite(mkmodel, .init = setup, .fini = teardown);
TestSuite(reader, .init = setup, .fini = teardown);
TestSuite(truncate, .init = setup, .fini = teardown);
TestSuite(corrupt, .init = setup, .fini = teardown);
TestSuite(fuzz, .init = setup, .fini = teardown);

static void path_in(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", g_dir, name);
}

/* A matrix of any file type widened to f32 (rows * cols, row-major), for comparing
 * weights across types. Freed by the caller. */
static float *tensor_f32(const struct kvp_tensor *t)
{
	float *out = malloc((size_t)t->rows * t->cols * sizeof(float));

	cr_assert(out);
	for (uint32_t r = 0; r < t->rows; r++)
		cr_assert_eq(kvp_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * t->row_bytes,
					     out + (size_t)r * t->cols, t->cols), 0);
	return out;
}

/* Run kvprefix-mkmodel --out DIR/name --quiet ARGS; returns its exit status. */
static int mkmodel(const char *name, const char *args)
{
	char cmd[1024], out[256];
	int st;

	path_in(out, sizeof(out), name);
	snprintf(cmd, sizeof(cmd), "'%s' --quiet --out '%s' %s 2>/dev/null", KVP_MKMODEL_PATH, out,
		 args);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static uint8_t *read_all(const char *path, size_t *n)
{
	struct stat st;
	uint8_t *b;
	FILE *f = fopen(path, "rb");

	cr_assert_not_null(f, "open %s", path);
	cr_assert_eq(fstat(fileno(f), &st), 0);
	*n = (size_t)st.st_size;
	b = malloc(*n ? *n : 1);
	cr_assert_not_null(b);
	cr_assert_eq(fread(b, 1, *n, f), *n);
	fclose(f);
	return b;
}

static void write_all(const char *path, const void *b, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, b, n), (ssize_t)n);
	close(fd);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Offset of the GGUF string s (its u64 length) in b, or SIZE_MAX. */
static size_t find_gstr(const uint8_t *b, size_t n, const char *s)
{
	size_t len = strlen(s);
	uint8_t pat[128];

	cr_assert_leq(len + 8, sizeof(pat));
	put64(pat, len);
	memcpy(pat + 8, s, len);
	for (size_t i = 0; i + len + 8 <= n; i++)
		if (memcmp(b + i, pat, len + 8) == 0)
			return i;
	return SIZE_MAX;
}

/* Where a key's u32 type and value start. */
static size_t key_type_at(const uint8_t *b, size_t n, const char *key)
{
	size_t o = find_gstr(b, n, key);

	cr_assert_neq(o, SIZE_MAX, "key %s not found in the file", key);
	return o + 8 + strlen(key);
}

/* Where a tensor info's n_dims starts. */
static size_t tensor_at(const uint8_t *b, size_t n, const char *name)
{
	size_t o = find_gstr(b, n, name);

	cr_assert_neq(o, SIZE_MAX, "tensor %s not found in the file", name);
	return o + 8 + strlen(name);
}

static uint64_t expect_params(uint64_t vocab, uint64_t dim, uint64_t layers, uint64_t heads,
			      uint64_t kv, uint64_t ffn, bool tied)
{
	uint64_t hd = dim / heads;
	uint64_t layer = 2 * dim + 2 * heads * hd * dim + 2 * kv * hd * dim + 3 * dim * ffn;

	return vocab * dim * (tied ? 1 : 2) + layer * layers + dim;
}

/* Load must fail with a message containing every string in want (NULL-terminated). */
static void expect_refused_v(const char *path, const char *what, const char *const *want)
{
	struct kvp_model *m = (struct kvp_model *)1;
	char err[512] = "unset";
	int rc = kvp_model_load(path, &m, err, sizeof(err));

	cr_assert_lt(rc, 0, "%s: loaded, want refused", what);
	cr_assert_null(m, "%s: *out not NULL on failure", what);
	cr_assert_gt(strlen(err), 0, "%s: empty message", what);
	for (; *want; want++)
		cr_assert_not_null(strstr(err, *want), "%s: message \"%s\" lacks \"%s\"", what, err,
				   *want);
}

#define expect_refused(path, what, ...) \
	expect_refused_v(path, what, (const char *const[]){ __VA_ARGS__, NULL })

/* ---- mkmodel ------------------------------------------------------------------------ */

struct shape {
	const char *args;
	uint32_t vocab, dim, layers, heads, kv, ffn, ctx;
	uint32_t type;
	bool tied;
};

static void check_loaded(const char *file, const struct shape *s)
{
	struct kvp_model *m = NULL;
	char path[256], err[512];
	int rc;

	path_in(path, sizeof(path), file);
	cr_assert_eq(mkmodel(file, s->args), 0, "mkmodel %s", s->args);
	rc = kvp_model_load(path, &m, err, sizeof(err));
	cr_assert_eq(rc, 0, "load %s: %s", s->args, err);
	const struct kvp_model_config *c = &m->cfg;
	cr_expect_eq(c->vocab, s->vocab);
	cr_expect_eq(c->dim, s->dim);
	cr_expect_eq(c->n_layers, s->layers);
	cr_expect_eq(c->n_heads, s->heads);
	cr_expect_eq(c->n_kv_heads, s->kv);
	cr_expect_eq(c->head_dim, s->dim / s->heads);
	cr_expect_eq(c->ffn, s->ffn);
	cr_expect_eq(c->ctx, s->ctx);
	cr_expect_eq(c->rope_dim, s->dim / s->heads);
	cr_expect_float_eq(c->rms_eps, 1e-5f, 1e-12f);
	cr_expect_float_eq(c->rope_base, 10000.0f, 1e-3f);
	cr_expect_eq(c->file_type, s->type);
	cr_expect_eq(c->tied_output, s->tied);
	cr_expect_eq(c->n_params,
		     expect_params(s->vocab, s->dim, s->layers, s->heads, s->kv, s->ffn, s->tied),
		     "%s: n_params %llu", s->args, (unsigned long long)c->n_params);
	cr_expect_eq(strncmp(c->name, "kvprefix-random-", 16), 0, "name %s", c->name);
	cr_expect(s->tied ? m->output.data == m->tok_embd.data : m->output.data != m->tok_embd.data);
	cr_expect_eq(m->owned, NULL, "mkmodel keeps vectors f32: nothing to convert");
	cr_expect_eq(m->tok_embd.type, s->type);
	cr_expect_eq(m->tok_embd.rows, c->vocab);
	cr_expect_eq(m->tok_embd.cols, c->dim);
	for (uint32_t l = 0; l < c->n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];

		cr_assert(w->attn_norm && w->wq.data && w->wk.data && w->wv.data && w->wo.data &&
			  w->ffn_norm && w->w_gate.data && w->w_up.data && w->w_down.data);
		cr_assert(!w->bq && !w->bk && !w->bv && !w->bo && !w->b_gate && !w->b_up && !w->b_down);
		cr_expect_eq(w->w_down.rows, c->dim);
		cr_expect_eq(w->w_down.cols, c->ffn);
		cr_expect_eq(w->w_down.type, s->type);
		/* norms near 1, matrices small and not all zero */
		for (uint32_t i = 0; i < c->dim; i++)
			cr_assert(fabsf(w->attn_norm[i] - 1.0f) <= 0.051f && fabsf(w->ffn_norm[i] - 1.0f) <= 0.051f);
		float *wq = tensor_f32(&w->wq), *wd = tensor_f32(&w->w_down);
		double ss = 0;
		for (uint32_t i = 0; i < c->dim * c->dim; i++) {
			cr_assert(fabsf(wq[i]) <= 0.0347f);
			ss += (double)wq[i] * wq[i];
		}
		cr_expect(fabs(sqrt(ss / (c->dim * c->dim)) - 0.02) < 0.002, "wq std %g",
			  sqrt(ss / (c->dim * c->dim)));
		for (size_t i = 0; i < (size_t)c->ffn * c->dim; i++)
			cr_assert(isfinite(wd[i]));
		free(wq);
		free(wd);
	}
	float *emb = tensor_f32(&m->tok_embd), *out = tensor_f32(&m->output);
	for (size_t i = 0; i < (size_t)c->vocab * c->dim; i++)
		cr_assert(isfinite(emb[i]) && isfinite(out[i]));
	free(emb);
	free(out);
	for (uint32_t i = 0; i < c->dim; i++)
		cr_assert(fabsf(m->output_norm[i] - 1.0f) <= 0.051f);
	kvp_model_free(m);
}

Test(mkmodel, loads_with_the_right_config)
{
	static const struct shape shapes[] = {
		{ "--vocab 300 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --ctx 256",
		  300, 64, 2, 4, 2, 96, 256, KVP_GGML_F32, false },
		{ "--vocab 300 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --ctx 256 --tied",
		  300, 64, 2, 4, 2, 96, 256, KVP_GGML_F32, true },
		{ "--vocab 259 --dim 48 --layers 3 --heads 6 --kv-heads 6 --ffn 40 --ctx 77 --dtype f16",
		  259, 48, 3, 6, 6, 40, 77, KVP_GGML_F16, false },
		{ "--vocab 1000 --dim 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --ctx 8 --dtype f16 --tied",
		  1000, 32, 1, 2, 1, 64, 8, KVP_GGML_F16, true },
		{ "--vocab 512 --dim 32 --layers 2 --heads 4 --kv-heads 1 --ffn 48 --ctx 64 --dtype bf16",
		  512, 32, 2, 4, 1, 48, 64, KVP_GGML_BF16, false },
		/* below 259: no byte tokens, but a model all the same */
		{ "--vocab 8 --dim 8 --layers 1 --heads 2 --kv-heads 1 --ffn 16 --ctx 64",
		  8, 8, 1, 2, 1, 16, 64, KVP_GGML_F32, false },
		{ "--vocab 4 --dim 8 --layers 1 --heads 2 --kv-heads 1 --ffn 16 --ctx 8 --tied",
		  4, 8, 1, 2, 1, 16, 8, KVP_GGML_F32, true },
	};
	char name[32];

	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		snprintf(name, sizeof(name), "m%zu.gguf", i);
		check_loaded(name, &shapes[i]);
	}
}

Test(mkmodel, default_model_parameter_count)
{
	/* the default shape, without writing 232 MB: the count the tool prints */
	cr_assert_eq(expect_params(32000, 512, 8, 8, 4, 1536, false), 57942528ull);
}

/* f16 and bf16 files hold the f32 file's weights, rounded: the conversions agree. */
Test(mkmodel, f16_and_bf16_convert_to_the_f32_weights)
{
	static const char *const base = "--vocab 300 --dim 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --seed 9";
	static const char *const dt[3] = { "f32", "f16", "bf16" };
	static const float tol[3] = { 0.0f, 1.0f / 2048, 1.0f / 256 };
	struct kvp_model *m[3];
	char args[256], file[32], path[256], err[512];

	for (int k = 0; k < 3; k++) {
		snprintf(args, sizeof(args), "%s --dtype %s", base, dt[k]);
		snprintf(file, sizeof(file), "%s.gguf", dt[k]);
		cr_assert_eq(mkmodel(file, args), 0);
		path_in(path, sizeof(path), file);
		cr_assert_eq(kvp_model_load(path, &m[k], err, sizeof(err)), 0, "%s", err);
	}
	float *emb0 = tensor_f32(&m[0]->tok_embd), *down0 = tensor_f32(&m[0]->layers[0].w_down);
	for (int k = 1; k < 3; k++) {
		size_t n = (size_t)300 * 32;
		float *emb = tensor_f32(&m[k]->tok_embd), *down = tensor_f32(&m[k]->layers[0].w_down);

		for (size_t i = 0; i < n; i++) {
			float a = emb0[i], b = emb[i];

			cr_assert(fabsf(a - b) <= tol[k] * fabsf(a) + 1e-7f, "%s tok_embd[%zu] %g vs %g",
				  dt[k], i, (double)b, (double)a);
			a = down0[i % (64 * 32)];
			b = down[i % (64 * 32)];
			cr_assert(fabsf(a - b) <= tol[k] * fabsf(a) + 1e-7f);
		}
		free(emb);
		free(down);
		/* norms stay f32 in every file */
		cr_assert_eq(memcmp(m[0]->output_norm, m[k]->output_norm, 32 * sizeof(float)), 0);
	}
	free(emb0);
	free(down0);
	for (int k = 0; k < 3; k++)
		kvp_model_free(m[k]);
}

Test(mkmodel, same_seed_same_bytes)
{
	static const char *const args = "--vocab 400 --dim 32 --layers 2 --heads 4 --kv-heads 2 --ffn 64";
	char a1[256], a2[256], a3[256], pa[256], pb[256], pc[256];
	size_t na, nb, nc;

	snprintf(a1, sizeof(a1), "%s --seed 7", args);
	snprintf(a2, sizeof(a2), "%s --seed 7", args);
	snprintf(a3, sizeof(a3), "%s --seed 8", args);
	cr_assert_eq(mkmodel("a.gguf", a1), 0);
	cr_assert_eq(mkmodel("b.gguf", a2), 0);
	cr_assert_eq(mkmodel("c.gguf", a3), 0);
	path_in(pa, sizeof(pa), "a.gguf");
	path_in(pb, sizeof(pb), "b.gguf");
	path_in(pc, sizeof(pc), "c.gguf");
	uint8_t *a = read_all(pa, &na), *b = read_all(pb, &nb), *c = read_all(pc, &nc);

	cr_assert_eq(na, nb);
	cr_assert_eq(memcmp(a, b, na), 0, "same seed, different bytes");
	cr_assert_eq(na, nc);
	cr_assert_neq(memcmp(a, c, na), 0, "different seed, same bytes");
	/* the header is the same, the weights differ */
	size_t ti = find_gstr(a, na, "token_embd.weight");
	cr_assert_eq(memcmp(a, c, ti), 0);
	size_t diff = 0;
	for (size_t i = 0; i < na; i++)
		diff += a[i] != c[i];
	cr_assert_gt(diff, na / 2, "only %zu of %zu bytes differ", diff, na);
	free(a);
	free(b);
	free(c);
}

Test(mkmodel, refuses_nonsense)
{
	static const char *const bad[] = {
		"--heads 3",                       /* does not divide 512 */
		"--kv-heads 3",                    /* does not divide 8 */
		"--dim 24 --heads 8",              /* head dim 3: odd */
		"--vocab 3",                       /* no room for a piece after the specials */
		"--dim 0", "--layers 0", "--ffn -1", "--dim 12x", "--ctx 99999999999",
		"--dtype q4_3", "--dtype q4_k --dim 128 --heads 4", "--bogus", "extra",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_expect_eq(mkmodel("bad.gguf", bad[i]), 2, "%s", bad[i]);
	cr_assert_eq(system("'" KVP_MKMODEL_PATH "' --help >/dev/null"), 0);
	char p[256];
	path_in(p, sizeof(p), "bad.gguf");
	cr_assert_neq(access(p, F_OK), 0, "a refused run left a file");
}

/* ---- reader ------------------------------------------------------------------------- */

Test(reader, writer_roundtrip_and_getters)
{
	struct kvp_gguf_writer *w;
	struct kvp_gguf *g;
	const char *toks[] = { "a", "", "\xe2\x96\x81hello" };
	const float sc[] = { 1.5f, -2.0f, 0.0f };
	const int32_t ty[] = { 1, 2, 3 };
	float f32d[6] = { 1, 2, 3, 4, 5, 6 };
	uint16_t f16d[3] = { 0x3c00, 0x4000, 0xc000 };
	uint16_t bf16d[5] = { 0x3f80, 1, 2, 3, 4 };
	const uint64_t ne2[2] = { 3, 2 }, ne1[1] = { 3 }, ne4[4] = { 1, 5, 1, 1 };
	char path[256], err[256];
	const char *s;
	size_t len;
	uint32_t u, et;
	uint64_t n;
	float f;

	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	cr_assert_eq(kvp_gguf_add_str(w, "general.architecture", "test"), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "a.u32", 4000000000u), 0);
	cr_assert_eq(kvp_gguf_add_f32(w, "a.f32", 0.25f), 0);
	cr_assert_eq(kvp_gguf_add_str_array(w, "a.toks", toks, 3), 0);
	cr_assert_eq(kvp_gguf_add_f32_array(w, "a.scores", sc, 3), 0);
	cr_assert_eq(kvp_gguf_add_i32_array(w, "a.types", ty, 3), 0);
	cr_assert_eq(kvp_gguf_add_f32_array(w, "a.empty", NULL, 0), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "t.f32", 2, ne2, KVP_GGML_F32, f32d), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "t.f16", 1, ne1, KVP_GGML_F16, f16d), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "t.bf16", 4, ne4, KVP_GGML_BF16, bf16d), 0);

	/* what the writer refuses */
	const uint64_t ne0[2] = { 0, 2 };
	cr_expect_eq(kvp_gguf_add_u32(w, "a.u32", 1), KVP_EEXIST);
	cr_expect_eq(kvp_gguf_add_u32(w, "", 1), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_u32(w, "general.alignment", 64), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_tensor(w, "t.f32", 2, ne2, KVP_GGML_F32, f32d), KVP_EEXIST);
	cr_expect_eq(kvp_gguf_add_tensor(w, "x", 0, ne2, KVP_GGML_F32, f32d), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_tensor(w, "x", 5, ne2, KVP_GGML_F32, f32d), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_tensor(w, "x", 2, ne0, KVP_GGML_F32, f32d), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_tensor(w, "x", 2, ne2, (enum kvp_ggml_type)2, f32d), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_add_tensor(w, "", 2, ne2, KVP_GGML_F32, f32d), KVP_EINVAL);
	char longname[80];
	memset(longname, 'n', 65);
	longname[65] = '\0';
	cr_expect_eq(kvp_gguf_add_tensor(w, longname, 2, ne2, KVP_GGML_F32, f32d), KVP_EINVAL);
	longname[64] = '\0';
	cr_expect_eq(kvp_gguf_add_tensor(w, longname, 2, ne2, KVP_GGML_F32, f32d), 0);

	path_in(path, sizeof(path), "rt.gguf");
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
	char tmp[300];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	cr_assert_neq(access(tmp, F_OK), 0, "temporary file left behind");

	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(kvp_gguf_version(g), 3);
	cr_assert_eq(kvp_gguf_get_str(g, "general.architecture", &s, &len), 0);
	cr_expect(len == 4 && memcmp(s, "test", 4) == 0);
	cr_assert_eq(kvp_gguf_get_u32(g, "a.u32", &u), 0);
	cr_expect_eq(u, 4000000000u);
	cr_assert_eq(kvp_gguf_get_u32(g, "general.alignment", &u), 0);
	cr_expect_eq(u, 32);
	cr_assert_eq(kvp_gguf_get_f32(g, "a.f32", &f), 0);
	cr_expect_eq(f, 0.25f);
	cr_assert_eq(kvp_gguf_get_arr(g, "a.toks", &et, &n), 0);
	cr_expect(et == KVP_GGUF_STRING && n == 3);
	cr_assert_eq(kvp_gguf_get_arr(g, "a.scores", &et, &n), 0);
	cr_expect(et == KVP_GGUF_F32 && n == 3);
	cr_assert_eq(kvp_gguf_get_arr(g, "a.types", &et, &n), 0);
	cr_expect(et == KVP_GGUF_I32 && n == 3);
	cr_assert_eq(kvp_gguf_get_arr(g, "a.empty", &et, &n), 0);
	cr_expect(et == KVP_GGUF_F32 && n == 0);
	/* absent and wrong type */
	cr_expect_eq(kvp_gguf_get_u32(g, "nope", &u), KVP_ENOTFOUND);
	cr_expect_eq(kvp_gguf_get_u32(g, "a.f32", &u), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_get_f32(g, "a.u32", &f), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_get_str(g, "a.u32", &s, &len), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_get_arr(g, "general.architecture", &et, &n), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_get_u32(g, "a.u3", &u), KVP_ENOTFOUND);
	cr_expect_eq(kvp_gguf_get_u32(g, "a.u320", &u), KVP_ENOTFOUND);

	cr_assert_eq(kvp_gguf_n_tensors(g), 4);
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, "t.f32");
	cr_assert_not_null(t);
	cr_expect(t->n_dims == 2 && t->ne[0] == 3 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
	cr_expect(t->type == KVP_GGML_F32 && t->nbytes == 24);
	cr_expect_eq(memcmp(t->data, f32d, 24), 0);
	cr_expect_eq((uintptr_t)t->data % 32, 0);
	cr_expect_eq(kvp_gguf_tensor_at(g, 0), t);
	t = kvp_gguf_find_tensor(g, "t.f16");
	cr_assert_not_null(t);
	cr_expect(t->n_dims == 1 && t->nbytes == 6 && memcmp(t->data, f16d, 6) == 0);
	cr_expect_eq((uintptr_t)t->data % 32, 0);
	t = kvp_gguf_find_tensor(g, "t.bf16");
	cr_assert_not_null(t);
	cr_expect(t->n_dims == 4 && t->ne[1] == 5 && t->nbytes == 10 && memcmp(t->data, bf16d, 10) == 0);
	cr_expect_not_null(kvp_gguf_find_tensor(g, longname));
	cr_expect_null(kvp_gguf_find_tensor(g, "t.f1"));
	cr_expect_null(kvp_gguf_tensor_at(g, 4));
	kvp_gguf_close(g);
}

/* Integer keys of any width convert to u32 when the value fits; v2 files read too. */
Test(reader, integer_conversions_and_versions)
{
	struct kvp_gguf_writer *w;
	struct kvp_gguf *g;
	char path[256], err[256];
	uint32_t u;
	float f;
	size_t n;

	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "k.a", 7), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "k.b", 0xffffffffu), 0);
	cr_assert_eq(kvp_gguf_add_f32(w, "k.c", 1.0f), 0);
	path_in(path, sizeof(path), "conv.gguf");
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
	uint8_t *b = read_all(path, &n);
	size_t a = key_type_at(b, n, "k.a"), bb = key_type_at(b, n, "k.b"), c = key_type_at(b, n, "k.c");

	put32(b + a, KVP_GGUF_I32);                  /* i32 7: fits */
	put32(b + bb, KVP_GGUF_I32);                 /* i32 -1: does not */
	put32(b + c, KVP_GGUF_U32);                  /* 1.0f's bits as u32 */
	write_all(path, b, n);
	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(kvp_gguf_get_u32(g, "k.a", &u), 0);
	cr_expect_eq(u, 7);
	cr_expect_eq(kvp_gguf_get_u32(g, "k.b", &u), KVP_EINVAL);
	cr_expect_eq(kvp_gguf_get_u32(g, "k.c", &u), 0);
	cr_expect_eq(u, 0x3f800000u);
	cr_expect_eq(kvp_gguf_get_f32(g, "k.c", &f), KVP_EINVAL);
	kvp_gguf_close(g);

	put32(b + 4, 2);
	write_all(path, b, n);
	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "v2: %s", err);
	cr_expect_eq(kvp_gguf_version(g), 2);
	kvp_gguf_close(g);

	static const struct { uint32_t v; const char *msg; } bad[] = {
		{ 1, "version 1" }, { 0, "version 0" }, { 4, "version 4" },
		{ 0x03000000u, "big-endian" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put32(b + 4, bad[i].v);
		write_all(path, b, n);
		g = (struct kvp_gguf *)1;
		cr_expect_lt(kvp_gguf_open(path, &g, err, sizeof(err)), 0);
		cr_expect_null(g);
		cr_expect_not_null(strstr(err, bad[i].msg), "\"%s\" lacks \"%s\"", err, bad[i].msg);
	}
	free(b);
}

Test(reader, not_a_model_file)
{
	char path[256];

	path_in(path, sizeof(path), "nope.gguf");
	expect_refused(path, "missing file", "open", "nope.gguf");
	expect_refused(g_dir, "a directory", "not a regular file");
	write_all(path, "", 0);
	expect_refused(path, "empty file", "too short");
	write_all(path, "GGUF\3\0\0\0", 8);
	expect_refused(path, "8 bytes", "too short");
	write_all(path, "GGML\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24);
	expect_refused(path, "bad magic", "not a GGUF file");
	/* an empty but valid GGUF: no architecture */
	write_all(path, "GGUF\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24);
	expect_refused(path, "no keys", "general.architecture", "missing");
}

/* ---- truncate ----------------------------------------------------------------------- */

#define TINY "--vocab 259 --dim 8 --layers 1 --heads 2 --kv-heads 1 --ffn 16 --ctx 32"

Test(truncate, every_cut_is_refused)
{
	char path[256], cut[256], err[512];
	struct kvp_model *m;
	size_t n, hdr;

	cr_assert_eq(mkmodel("tiny.gguf", TINY), 0);
	path_in(path, sizeof(path), "tiny.gguf");
	path_in(cut, sizeof(cut), "cut.gguf");
	uint8_t *b = read_all(path, &n);
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	kvp_model_free(m);
	/* the header ends where the first tensor's data starts */
	hdr = find_gstr(b, n, "token_embd.weight");
	cr_assert_neq(hdr, SIZE_MAX);
	cr_assert_lt(hdr, n);

	size_t cuts = 0;
	for (size_t len = 0; len + 32 <= n; len += (len < hdr + 4096 ? 1 : 61)) {
		write_all(cut, b, len);
		m = (struct kvp_model *)1;
		err[0] = '\0';
		int rc = kvp_model_load(cut, &m, err, sizeof(err));

		cr_assert_lt(rc, 0, "cut at %zu of %zu loaded", len, n);
		cr_assert_null(m);
		cr_assert_gt(strlen(err), 0, "cut at %zu: no message", len);
		if (len > hdr + 2048)
			cr_assert_not_null(strstr(err, "tensor '"), "cut at %zu: \"%s\"", len, err);
		cuts++;
	}
	cr_log_info("%zu cuts of a %zu-byte file (header %zu) refused", cuts, n, hdr);
	free(b);
}

/* ---- corrupt ------------------------------------------------------------------------ */

#define SMALL "--vocab 300 --dim 32 --layers 2 --heads 4 --kv-heads 2 --ffn 64 --ctx 128"

struct fixture {
	uint8_t *orig, *b;
	size_t n;
	char path[256];
};

static void fx_open(struct fixture *f)
{
	char src[256];

	cr_assert_eq(mkmodel("small.gguf", SMALL), 0);
	path_in(src, sizeof(src), "small.gguf");
	f->orig = read_all(src, &f->n);
	f->b = malloc(f->n);
	cr_assert_not_null(f->b);
	path_in(f->path, sizeof(f->path), "patched.gguf");
}

static void fx_reset(struct fixture *f)
{
	memcpy(f->b, f->orig, f->n);
}

static void fx_refused_v(struct fixture *f, const char *what, const char *const *want)
{
	write_all(f->path, f->b, f->n);
	expect_refused_v(f->path, what, want);
	fx_reset(f);
}

#define fx_refused(f, what, ...) fx_refused_v(f, what, (const char *const[]){ __VA_ARGS__, NULL })

static void patch32(struct fixture *f, size_t at, uint32_t v)
{
	cr_assert_leq(at + 4, f->n);
	put32(f->b + at, v);
}

static void patch64(struct fixture *f, size_t at, uint64_t v)
{
	cr_assert_leq(at + 8, f->n);
	put64(f->b + at, v);
}

static void patch_f32(struct fixture *f, size_t at, float v)
{
	uint32_t u;

	memcpy(&u, &v, 4);
	patch32(f, at, u);
}

/* Rename a key or tensor in place (same length). */
static void rename_str(struct fixture *f, const char *from, const char *to)
{
	size_t o = find_gstr(f->b, f->n, from);

	cr_assert_eq(strlen(from), strlen(to));
	cr_assert_neq(o, SIZE_MAX, "%s not in the file", from);
	memcpy(f->b + o + 8, to, strlen(to));
}

Test(corrupt, header_and_counts)
{
	struct fixture f;

	fx_open(&f);
	fx_reset(&f);
	write_all(f.path, f.b, f.n);
	struct kvp_model *m;
	char err[512];
	cr_assert_eq(kvp_model_load(f.path, &m, err, sizeof(err)), 0, "unpatched: %s", err);
	kvp_model_free(m);

	f.b[3] = 'X';
	fx_refused(&f, "magic", "not a GGUF file");
	patch32(&f, 4, 1);
	fx_refused(&f, "version 1", "version 1");
	patch32(&f, 4, 77);
	fx_refused(&f, "version 77", "version 77");
	patch64(&f, 8, 1ull << 60);
	fx_refused(&f, "n_tensors 2^60", "tensors");
	patch64(&f, 8, 60000);
	fx_refused(&f, "n_tensors 60000", "60000 tensors");
	patch64(&f, 16, 1ull << 60);
	fx_refused(&f, "n_kv 2^60", "metadata keys");
	patch64(&f, 16, 40000);
	fx_refused(&f, "n_kv 40000", "40000 metadata keys");
	patch64(&f, 16, get64(f.orig + 16) + 1);
	fx_refused(&f, "n_kv + 1", "");              /* the first tensor info read as a key */
	patch64(&f, 8, get64(f.orig + 8) + 1);
	fx_refused(&f, "n_tensors + 1", "tensor");
	patch64(&f, 8, get64(f.orig + 8) - 1);     /* a tensor info becomes padding/data */
	fx_refused(&f, "n_tensors - 1", "");
	free(f.orig);
	free(f.b);
}

Test(corrupt, keys_and_strings)
{
	struct fixture f;
	size_t o;

	fx_open(&f);
	fx_reset(&f);
	/* the first key's name length */
	patch64(&f, 24, 1ull << 40);
	fx_refused(&f, "key name length 2^40", "metadata key #0", "name length");
	patch64(&f, 24, 0);
	fx_refused(&f, "key name length 0", "metadata key #0", "name length");
	patch64(&f, 24, 65536);
	fx_refused(&f, "key name length 65536", "metadata key #0", "name length");
	/* a string value's length */
	o = key_type_at(f.b, f.n, "general.name");
	patch64(&f, o + 4, 1ull << 62);
	fx_refused(&f, "string length 2^62", "key 'general.name'", "string");
	patch64(&f, o + 4, f.n);
	fx_refused(&f, "string length = file size", "key 'general.name'");
	/* value types */
	patch32(&f, o, 99);
	fx_refused(&f, "value type 99", "key 'general.name'", "type 99");
	patch32(&f, o, 13);
	fx_refused(&f, "value type 13", "key 'general.name'", "type 13");
	/* arrays */
	o = key_type_at(f.b, f.n, "tokenizer.ggml.tokens");
	patch64(&f, o + 8, 1ull << 61);
	fx_refused(&f, "array count 2^61", "key 'tokenizer.ggml.tokens'", "array");
	patch32(&f, o + 4, KVP_GGUF_ARRAY);
	fx_refused(&f, "array of arrays", "key 'tokenizer.ggml.tokens'", "arrays of arrays");
	patch32(&f, o + 4, 42);
	fx_refused(&f, "array element type 42", "key 'tokenizer.ggml.tokens'", "element type 42");
	patch64(&f, o + 12, 1ull << 50);            /* the first token's length */
	fx_refused(&f, "token length 2^50", "key 'tokenizer.ggml.tokens'", "string 0");
	o = key_type_at(f.b, f.n, "tokenizer.ggml.scores");
	patch64(&f, o + 8, (1ull << 62) + 1);       /* x 4 bytes wraps 64 bits */
	fx_refused(&f, "f32 array count * 4 wraps", "key 'tokenizer.ggml.scores'");
	/* a NUL inside a key */
	o = find_gstr(f.b, f.n, "llama.block_count");
	f.b[o + 8 + 5] = 0;
	fx_refused(&f, "NUL in a key", "NUL");
	/* duplicates */
	rename_str(&f, "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id");
	fx_refused(&f, "duplicate key", "key 'tokenizer.ggml.bos_token_id' appears more than once");
	/* general.alignment */
	o = key_type_at(f.b, f.n, "general.alignment");
	patch32(&f, o + 4, 3);
	fx_refused(&f, "alignment 3", "general.alignment", "power of two");
	patch32(&f, o + 4, 0);
	fx_refused(&f, "alignment 0", "general.alignment", "power of two");
	patch32(&f, o, KVP_GGUF_F32);
	fx_refused(&f, "alignment f32", "general.alignment");
	free(f.orig);
	free(f.b);
}

Test(corrupt, tensor_infos)
{
	struct fixture f;
	const char *q = "blk.0.attn_q.weight";
	size_t o, len = strlen(q);

	fx_open(&f);
	fx_reset(&f);
	o = tensor_at(f.b, f.n, q);                 /* n_dims, ne[2], type, offset */
	patch32(&f, o, 0);
	fx_refused(&f, "n_dims 0", "tensor 'blk.0.attn_q.weight'", "n_dims 0");
	patch32(&f, o, 5);
	fx_refused(&f, "n_dims 5", "tensor 'blk.0.attn_q.weight'", "n_dims 5");
	patch64(&f, o + 4, 0);
	fx_refused(&f, "ne[0] 0", "tensor 'blk.0.attn_q.weight'", "dimension 0 is 0");
	patch64(&f, o + 12, 1ull << 63);
	fx_refused(&f, "ne[1] 2^63", "tensor 'blk.0.attn_q.weight'", "dimension 1");
	patch64(&f, o + 4, 1ull << 40);
	patch64(&f, o + 12, 1ull << 40);
	fx_refused(&f, "ne product overflows", "tensor 'blk.0.attn_q.weight'", "overflows");
	patch64(&f, o + 4, 1ull << 61);
	fx_refused(&f, "nbytes overflows", "tensor 'blk.0.attn_q.weight'");
	patch32(&f, o + 20, 16);
	fx_refused(&f, "type IQ2_XXS", "tensor 'blk.0.attn_q.weight'", "IQ2_XXS (16) is not supported");
	patch32(&f, o + 20, 0xffffffffu);
	fx_refused(&f, "type 2^32-1", "tensor 'blk.0.attn_q.weight'", "4294967295");
	uint64_t off = get64(f.b + o + 24);
	patch64(&f, o + 24, off + 4);
	fx_refused(&f, "misaligned offset", "tensor 'blk.0.attn_q.weight'", "not a multiple");
	patch64(&f, o + 24, (uint64_t)f.n / 32 * 32);
	fx_refused(&f, "offset at EOF", "tensor 'blk.0.attn_q.weight'", "past the end");
	patch64(&f, o + 24, 0xffffffffffffffe0ull);
	fx_refused(&f, "offset 2^64-32", "tensor 'blk.0.attn_q.weight'", "past the end");
	/* names */
	patch64(&f, o - len - 8, 0);
	fx_refused(&f, "name length 0", "tensor #", "name length 0");
	patch64(&f, o - len - 8, 65);
	fx_refused(&f, "name length 65", "tensor #", "name length 65");
	patch64(&f, o - len - 8, 1ull << 60);
	fx_refused(&f, "name length 2^60", "tensor #");
	rename_str(&f, "blk.0.attn_k.weight", "blk.0.attn_q.weight");
	fx_refused(&f, "duplicate tensor", "tensor 'blk.0.attn_q.weight' appears more than once");
	f.b[o - 3] = 0x01;                           /* a control byte in the name, shown as '?' */
	patch32(&f, o, 0);
	fx_refused(&f, "control byte in a tensor name", "tensor 'blk.0.attn_q.wei?ht': n_dims 0");
	free(f.orig);
	free(f.b);
}

Test(corrupt, model_shapes_and_values)
{
	struct fixture f;
	size_t o;

	fx_open(&f);
	fx_reset(&f);
	/* shapes: fewer rows keep the data inside the file, so only the loader objects */
	o = tensor_at(f.b, f.n, "blk.0.attn_q.weight");
	patch64(&f, o + 12, 31);
	fx_refused(&f, "attn_q rows", "tensor 'blk.0.attn_q.weight' has shape [32, 31], want [32, 32]");
	o = tensor_at(f.b, f.n, "blk.1.ffn_down.weight");
	patch64(&f, o + 4, 32);
	fx_refused(&f, "ffn_down in", "tensor 'blk.1.ffn_down.weight'", "want [64, 32]");
	o = tensor_at(f.b, f.n, "blk.1.attn_v.weight");
	patch64(&f, o + 12, 8);
	fx_refused(&f, "attn_v rows", "tensor 'blk.1.attn_v.weight'", "want [32, 16]");
	o = tensor_at(f.b, f.n, "output.weight");
	patch64(&f, o + 12, 299);
	fx_refused(&f, "output rows", "tensor 'output.weight'", "want [32, 300]");
	o = tensor_at(f.b, f.n, "blk.0.ffn_norm.weight");
	patch64(&f, o + 4, 16);
	fx_refused(&f, "norm length", "tensor 'blk.0.ffn_norm.weight'", "want [32]");
	o = tensor_at(f.b, f.n, "token_embd.weight");
	patch64(&f, o + 12, 299);
	fx_refused(&f, "vocab disagrees", "llama.vocab_size");
	/* missing tensors */
	rename_str(&f, "blk.1.ffn_up.weight", "blk.1.ffn_uX.weight");
	fx_refused(&f, "missing ffn_up", "tensor 'blk.1.ffn_up.weight' is missing");
	rename_str(&f, "token_embd.weight", "token_embX.weight");
	fx_refused(&f, "missing token_embd", "tensor 'token_embd.weight' is missing");
	rename_str(&f, "output_norm.weight", "output_norX.weight");
	fx_refused(&f, "missing output_norm", "tensor 'output_norm.weight' is missing");
	/* architecture and keys */
	o = key_type_at(f.b, f.n, "general.architecture");
	memcpy(f.b + o + 12, "gemma", 5);
	fx_refused(&f, "architecture", "general.architecture", "'gemma'", "llama", "qwen2");
	memcpy(f.b + o + 12, "qwen2", 5);
	fx_refused(&f, "qwen2 keys", "key 'qwen2.block_count' is missing");
	rename_str(&f, "general.architecture", "general.architecturX");
	fx_refused(&f, "no architecture", "key 'general.architecture' is missing");
	rename_str(&f, "llama.block_count", "llama.block_counX");
	fx_refused(&f, "no block_count", "key 'llama.block_count' is missing");
	o = key_type_at(f.b, f.n, "llama.embedding_length");
	patch32(&f, o, KVP_GGUF_F32);
	fx_refused(&f, "embedding_length f32", "key 'llama.embedding_length'");
	patch32(&f, o + 4, 0);
	fx_refused(&f, "embedding_length 0", "key 'llama.embedding_length'");
	o = key_type_at(f.b, f.n, "llama.attention.head_count");
	patch32(&f, o + 4, 3);
	fx_refused(&f, "heads 3", "llama.attention.head_count");
	patch32(&f, o + 4, 32);
	fx_refused(&f, "head dim 1", "llama.attention.head_count", "odd");
	o = key_type_at(f.b, f.n, "llama.attention.head_count_kv");
	patch32(&f, o + 4, 3);
	fx_refused(&f, "kv heads 3", "llama.attention.head_count_kv");
	patch32(&f, o + 4, 8);
	fx_refused(&f, "kv heads > heads", "llama.attention.head_count_kv");
	o = key_type_at(f.b, f.n, "llama.attention.layer_norm_rms_epsilon");
	patch_f32(&f, o + 4, 0.0f);
	fx_refused(&f, "eps 0", "layer_norm_rms_epsilon");
	patch_f32(&f, o + 4, NAN);
	fx_refused(&f, "eps nan", "layer_norm_rms_epsilon");
	patch_f32(&f, o + 4, -1e-5f);
	fx_refused(&f, "eps < 0", "layer_norm_rms_epsilon");
	o = key_type_at(f.b, f.n, "llama.rope.dimension_count");
	patch32(&f, o + 4, 3);
	fx_refused(&f, "rope dim odd", "llama.rope.dimension_count");
	patch32(&f, o + 4, 10);
	fx_refused(&f, "rope dim > head dim", "llama.rope.dimension_count");
	o = key_type_at(f.b, f.n, "llama.rope.freq_base");
	patch_f32(&f, o + 4, INFINITY);
	fx_refused(&f, "rope base inf", "llama.rope.freq_base");
	o = key_type_at(f.b, f.n, "llama.vocab_size");
	patch32(&f, o + 4, 301);
	fx_refused(&f, "vocab_size", "key 'llama.vocab_size' is 301");
	o = key_type_at(f.b, f.n, "llama.context_length");
	patch32(&f, o + 4, 0);
	fx_refused(&f, "ctx 0", "llama.context_length");
	free(f.orig);
	free(f.b);
}

/*
 * A small llama model built with the writer API, so keys can be left out or added:
 * vocab 300, dim 32, 2 layers, 4 heads, 2 kv heads, ffn 64. extra() may add keys and
 * tensors; skip names a key or tensor to leave out.
 */
#define L_VOCAB 300
#define L_DIM 32
static float zeros[L_VOCAB * L_DIM];

static void write_llama(const char *file, const char *skip,
			void (*extra)(struct kvp_gguf_writer *w), enum kvp_ggml_type norm_type)
{
	struct kvp_gguf_writer *w;
	char path[256], err[256], name[64];
	const uint32_t dim = L_DIM, ffn = 64, layers = 2, heads = 4, hd = dim / heads;
	/* without head_count_kv, kv heads default to the heads: shape attn_k/v for that */
	const uint32_t kv = skip && strcmp(skip, "llama.attention.head_count_kv") == 0 ? heads : 2;
	static const char *const what[9] = {
		"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
		"ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
	};
	const uint64_t shape[9][2] = {
		{ dim, 0 }, { dim, heads * hd }, { dim, kv * hd }, { dim, kv * hd }, { heads * hd, dim },
		{ dim, 0 }, { dim, ffn }, { dim, ffn }, { ffn, dim },
	};
	const struct { const char *k; uint32_t v; } u32s[] = {
		{ "llama.context_length", 64 }, { "llama.embedding_length", dim },
		{ "llama.block_count", layers }, { "llama.feed_forward_length", ffn },
		{ "llama.attention.head_count", heads }, { "llama.attention.head_count_kv", kv },
		{ "llama.rope.dimension_count", hd },
	};

	for (size_t i = 0; i < L_VOCAB * L_DIM; i++)
		zeros[i] = 0.0f;
	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	if (!skip || strcmp(skip, "general.architecture"))
		cr_assert_eq(kvp_gguf_add_str(w, "general.architecture", "llama"), 0);
	if (!skip || strcmp(skip, "general.name"))
		cr_assert_eq(kvp_gguf_add_str(w, "general.name", "tiny-llama"), 0);
	for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++)
		if (!skip || strcmp(skip, u32s[i].k))
			cr_assert_eq(kvp_gguf_add_u32(w, u32s[i].k, u32s[i].v), 0);
	if (!skip || strcmp(skip, "llama.attention.layer_norm_rms_epsilon"))
		cr_assert_eq(kvp_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-6f), 0);
	if (!skip || strcmp(skip, "llama.rope.freq_base"))
		cr_assert_eq(kvp_gguf_add_f32(w, "llama.rope.freq_base", 500000.0f), 0);
	if (extra)
		extra(w);
	const uint64_t emb[2] = { dim, L_VOCAB }, nrm[1] = { dim };
	if (!skip || strcmp(skip, "token_embd.weight"))
		cr_assert_eq(kvp_gguf_add_tensor(w, "token_embd.weight", 2, emb, KVP_GGML_F32, zeros), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "output_norm.weight", 1, nrm, norm_type, zeros), 0);
	for (uint32_t l = 0; l < layers; l++)
		for (int k = 0; k < 9; k++) {
			const uint64_t ne[2] = { shape[k][0], shape[k][1] };

			snprintf(name, sizeof(name), "blk.%u.%s.weight", l, what[k]);
			if (skip && strcmp(skip, name) == 0)
				continue;
			cr_assert_eq(kvp_gguf_add_tensor(w, name, ne[1] ? 2 : 1, ne,
							 ne[1] ? KVP_GGML_F16 : norm_type, zeros), 0);
		}
	path_in(path, sizeof(path), file);
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
}

static struct kvp_model *load_ok(const char *file)
{
	struct kvp_model *m = NULL;
	char path[256], err[512];

	path_in(path, sizeof(path), file);
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s: %s", file, err);
	return m;
}

static void refused_file(const char *file, const char *what, const char *want)
{
	char path[256];

	path_in(path, sizeof(path), file);
	expect_refused(path, what, want);
}

static void x_experts(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "llama.expert_count", 8); }
static void x_experts0(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "llama.expert_count", 0); }
static void x_scaling(struct kvp_gguf_writer *w) { kvp_gguf_add_str(w, "llama.rope.scaling.type", "linear"); }
static void x_scaling_none(struct kvp_gguf_writer *w) { kvp_gguf_add_str(w, "llama.rope.scaling.type", "none"); }
static void x_keylen(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "llama.attention.key_length", 16); }
static void x_keylen_ok(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "llama.attention.key_length", 8); }
static void x_vallen(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "llama.attention.value_length", 4); }
static void x_ropefreqs(struct kvp_gguf_writer *w)
{
	const uint64_t ne[1] = { 4 };

	kvp_gguf_add_tensor(w, "rope_freqs.weight", 1, ne, KVP_GGML_F32, zeros);
}
static void x_tokens_f32(struct kvp_gguf_writer *w) { kvp_gguf_add_f32_array(w, "tokenizer.ggml.tokens", zeros, L_VOCAB); }
/* per-layer kv heads: the same in every layer (as the tensors are shaped), or not */
static void x_kv_array(struct kvp_gguf_writer *w)
{
	const int32_t v[2] = { 4, 4 };

	kvp_gguf_add_i32_array(w, "llama.attention.head_count_kv", v, 2);
}
static void x_kv_array_mixed(struct kvp_gguf_writer *w)
{
	const int32_t v[2] = { 4, 2 };

	kvp_gguf_add_i32_array(w, "llama.attention.head_count_kv", v, 2);
}
static void x_tokens_short(struct kvp_gguf_writer *w)
{
	static const char *toks[L_VOCAB - 1];

	for (size_t i = 0; i < L_VOCAB - 1; i++)
		toks[i] = "t";
	kvp_gguf_add_str_array(w, "tokenizer.ggml.tokens", toks, L_VOCAB - 1);
}
static void x_arch_u32(struct kvp_gguf_writer *w) { kvp_gguf_add_u32(w, "general.architecture", 1); }
static void x_output(struct kvp_gguf_writer *w)
{
	const uint64_t ne[2] = { L_DIM, L_VOCAB };

	kvp_gguf_add_tensor(w, "output.weight", 2, ne, KVP_GGML_BF16, zeros);
}

Test(corrupt, llama_defaults_and_variants)
{
	struct kvp_model *m;

	/* optional keys take their defaults; mixed types (f16 matrices, f32/f16 norms) load */
	write_llama("full.gguf", NULL, NULL, KVP_GGML_F32);
	m = load_ok("full.gguf");
	cr_expect_str_eq(m->cfg.name, "tiny-llama");
	cr_expect_float_eq(m->cfg.rms_eps, 1e-6f, 1e-12f);
	cr_expect_float_eq(m->cfg.rope_base, 500000.0f, 1e-1f);
	cr_expect_eq(m->cfg.file_type, KVP_GGML_F16);
	cr_expect(m->cfg.tied_output && m->output.data == m->tok_embd.data);
	cr_expect_eq(m->cfg.n_params, expect_params(L_VOCAB, L_DIM, 2, 4, 2, 64, true));
	kvp_model_free(m);
	write_llama("f16norm.gguf", NULL, NULL, KVP_GGML_F16);
	m = load_ok("f16norm.gguf");
	kvp_model_free(m);
	write_llama("out.gguf", NULL, x_output, KVP_GGML_F32);
	m = load_ok("out.gguf");
	cr_expect(!m->cfg.tied_output && m->output.data != m->tok_embd.data);
	kvp_model_free(m);

	write_llama("nokv.gguf", "llama.attention.head_count_kv", NULL, KVP_GGML_F32);
	m = load_ok("nokv.gguf");
	cr_expect_eq(m->cfg.n_kv_heads, 4);
	kvp_model_free(m);
	write_llama("norope.gguf", "llama.rope.dimension_count", NULL, KVP_GGML_F32);
	m = load_ok("norope.gguf");
	cr_expect_eq(m->cfg.rope_dim, 8);
	kvp_model_free(m);
	write_llama("noeps.gguf", "llama.attention.layer_norm_rms_epsilon", NULL, KVP_GGML_F32);
	m = load_ok("noeps.gguf");
	cr_expect_float_eq(m->cfg.rms_eps, 1e-5f, 1e-12f);
	kvp_model_free(m);
	write_llama("nobase.gguf", "llama.rope.freq_base", NULL, KVP_GGML_F32);
	m = load_ok("nobase.gguf");
	cr_expect_float_eq(m->cfg.rope_base, 10000.0f, 1e-3f);
	kvp_model_free(m);
	write_llama("noname.gguf", "general.name", NULL, KVP_GGML_F32);
	m = load_ok("noname.gguf");
	cr_expect_str_eq(m->cfg.name, "noname.gguf");
	kvp_model_free(m);
	write_llama("exp0.gguf", NULL, x_experts0, KVP_GGML_F32);
	kvp_model_free(load_ok("exp0.gguf"));
	write_llama("none.gguf", NULL, x_scaling_none, KVP_GGML_F32);
	kvp_model_free(load_ok("none.gguf"));
	write_llama("kl8.gguf", NULL, x_keylen_ok, KVP_GGML_F32);
	kvp_model_free(load_ok("kl8.gguf"));
	write_llama("kva.gguf", "llama.attention.head_count_kv", x_kv_array, KVP_GGML_F32);
	m = load_ok("kva.gguf");
	cr_expect_eq(m->cfg.n_kv_heads, 4);
	kvp_model_free(m);

	/* refused */
	write_llama("exp.gguf", NULL, x_experts, KVP_GGML_F32);
	refused_file("exp.gguf", "experts", "llama.expert_count");
	write_llama("scale.gguf", NULL, x_scaling, KVP_GGML_F32);
	refused_file("scale.gguf", "rope scaling", "'llama.rope.scaling.type' is 'linear'");
	write_llama("kl.gguf", NULL, x_keylen, KVP_GGML_F32);
	refused_file("kl.gguf", "key_length", "llama.attention.key_length");
	write_llama("vl.gguf", NULL, x_vallen, KVP_GGML_F32);
	refused_file("vl.gguf", "value_length", "llama.attention.value_length");
	write_llama("rf.gguf", NULL, x_ropefreqs, KVP_GGML_F32);
	refused_file("rf.gguf", "rope_freqs", "tensor 'rope_freqs.weight'");
	write_llama("tf.gguf", NULL, x_tokens_f32, KVP_GGML_F32);
	refused_file("tf.gguf", "f32 tokens", "tokenizer.ggml.tokens");
	write_llama("ts.gguf", NULL, x_tokens_short, KVP_GGML_F32);
	refused_file("ts.gguf", "299 tokens", "'tokenizer.ggml.tokens' has 299 tokens");
	write_llama("kvm.gguf", "llama.attention.head_count_kv", x_kv_array_mixed, KVP_GGML_F32);
	refused_file("kvm.gguf", "per-layer kv heads", "llama.attention.head_count_kv");
	write_llama("au.gguf", "general.architecture", x_arch_u32, KVP_GGML_F32);
	refused_file("au.gguf", "architecture u32", "general.architecture");
	write_llama("noq.gguf", "blk.1.attn_q.weight", NULL, KVP_GGML_F32);
	refused_file("noq.gguf", "missing attn_q", "tensor 'blk.1.attn_q.weight' is missing");
	write_llama("noff.gguf", "llama.feed_forward_length", NULL, KVP_GGML_F32);
	refused_file("noff.gguf", "no ffn key", "key 'llama.feed_forward_length' is missing");
	write_llama("noctx.gguf", "llama.context_length", NULL, KVP_GGML_F32);
	refused_file("noctx.gguf", "no ctx key", "key 'llama.context_length' is missing");
}

/* ---- fuzz --------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* KVP_GGUF_FUZZ_ROUNDS=N runs N rounds instead of def (for long runs under ASan). */
static int fuzz_rounds(int def)
{
	const char *e = getenv("KVP_GGUF_FUZZ_ROUNDS");
	long v = e ? strtol(e, NULL, 10) : 0;

	return v > 0 && v < 100000000 ? (int)v : def;
}

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

Test(fuzz, header_byte_flips_never_crash)
{
	char path[256], err[512];
	size_t n, ti, hdr;
	int fd, loaded = 0, refused = 0;
	const int rounds = fuzz_rounds(4000);

	cr_assert_eq(mkmodel("fz.gguf", TINY), 0);
	path_in(path, sizeof(path), "fz.gguf");
	uint8_t *b = read_all(path, &n);
	ti = find_gstr(b, n, "token_embd.weight");
	cr_assert_neq(ti, SIZE_MAX);
	hdr = ti + 600;                                 /* the tensor infos and a bit */
	cr_assert_lt(hdr, n);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	for (int r = 0; r < rounds; r++) {
		size_t at[6];
		uint8_t v[6];
		int k = 1 + (int)(rnd() % 6);
		struct kvp_model *m = NULL;

		for (int i = 0; i < k; i++) {
			uint64_t x = rnd();

			switch (x % 3) {
			case 0: at[i] = (size_t)(rnd() % 256); break;             /* the fixed header, first keys */
			case 1: at[i] = ti + (size_t)(rnd() % (hdr - ti)); break; /* tensor infos */
			default: at[i] = (size_t)(rnd() % hdr); break;            /* anywhere in the header */
			}
			x = rnd();
			v[i] = (x & 1) ? (uint8_t)(b[at[i]] ^ (1u << ((x >> 1) % 8))) : (uint8_t)(x >> 8);
			cr_assert_eq(pwrite(fd, &v[i], 1, (off_t)at[i]), 1);
		}
		if (kvp_model_load(path, &m, err, sizeof(err)) == 0) {
			loaded++;
			kvp_model_free(m);
		} else {
			refused++;
			cr_assert_gt(strlen(err), 0);
			cr_assert_null(m);
		}
		for (int i = k - 1; i >= 0; i--)
			cr_assert_eq(pwrite(fd, &b[at[i]], 1, (off_t)at[i]), 1);
	}
	close(fd);
	cr_log_info("%d rounds: %d loaded, %d refused", rounds, loaded, refused);
	cr_assert_gt(refused, rounds / 4);
	free(b);
}

/* Random bytes after a valid fixed header, at many lengths: the parser never crashes. */
Test(fuzz, random_bodies)
{
	char path[256], err[512];
	uint8_t buf[4096];

	path_in(path, sizeof(path), "rb.gguf");
	for (int r = 0, rounds = fuzz_rounds(3000); r < rounds; r++) {
		size_t n = 24 + (size_t)(rnd() % (sizeof(buf) - 24));
		struct kvp_gguf *g = NULL;

		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rnd();
		memcpy(buf, "GGUF\3\0\0\0", 8);
		/* small counts, so the parse gets somewhere */
		put64(buf + 8, rnd() % 4);
		put64(buf + 16, rnd() % 4);
		if (r % 2) {
			/* a plausible first key: short length, known type */
			put64(buf + 24, 1 + rnd() % 16);
			put32(buf + 32 + (buf[24] & 15), (uint32_t)(rnd() % 13));
		}
		write_all(path, buf, n);
		if (kvp_gguf_open(path, &g, err, sizeof(err)) == 0)
			kvp_gguf_close(g);
		else
			cr_assert_gt(strlen(err), 0);
	}
}
