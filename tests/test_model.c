/*
 * test_model.c - what the model loader (engine/kvp_model.h) takes from a GGUF file
 * beyond the plain llama layout, and what it refuses: architectures (llama, qwen2),
 * every weight type and mixes of them, projection biases, rope scaling and frequency
 * factors, per-layer arrays, sliding windows, split files, experts, tensors it would not
 * use. Each file is written here with the writer API, so a test names exactly the keys
 * and tensors it is about.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_harness.h"
#include "kvp_gguf.h"
#include "kvp_model.h"
#include "kvp_quant.h"

/* dim and ffn 256: rows of every block type, K types included, are whole blocks */
#define M_VOCAB 300u
#define M_DIM 256u
#define M_FFN 256u
#define M_HEADS 4u
#define M_KV 2u
#define M_LAYERS 2u
#define M_CTX 64u
#define M_HD (M_DIM / M_HEADS)

static char g_dir[64];

static void setup(void)
{
	cr_assert_eq(kvp_tmpdir_make(g_dir, sizeof(g_dir), "model"), 0);
}

static void teardown(void)
{
	kvp_tmpdir_remove(g_dir);
}

TestSuite(arch, .init = setup, .fini = teardown);
TestSuite(types, .init = setup, .fini = teardown);
TestSuite(rope, .init = setup, .fini = teardown);
TestSuite(refuse, .init = setup, .fini = teardown);

/* What one file holds: the architecture, matrix types, optional parts. */
struct spec {
	const char *arch;            /* "llama" (default) or "qwen2" */
	uint32_t mtype;              /* the matrices' type (default 0: F32) */
	uint32_t vtype;              /* vectors' (norms, biases) type (default F32) */
	uint32_t v_type;             /* attn_v's type, when not mtype (0: mtype) */
	uint32_t embd_type;          /* token_embd's type (0: mtype) */
	bool qkv_bias, o_bias, ffn_bias;
	const float *freq_factors;   /* rope_freqs.weight (M_HD / 2 values), or NULL */
	void (*keys)(struct kvp_gguf_writer *w, const char *arch);   /* more keys */
	const char *extra_tensor;    /* one more (vector of M_DIM) tensor, by name */
	bool head_arrays;            /* head counts as per-layer arrays, not scalars */
	bool no_ffn_key;             /* leave feed_forward_length to keys() */
	bool no_block_key;           /* leave block_count to keys() */
};

/* Bytes of value v in every element of a tensor of type t: a constant is exact in every
 * type (its blocks quantize it without error), so loads can check the value. */
static void *const_data(uint32_t type, uint64_t ne0, uint64_t ne1, float v)
{
	size_t row = kvp_ggml_row_bytes(type, ne0);
	float *src = malloc(ne0 * sizeof(float));
	uint8_t *out = calloc(ne1, row);

	cr_assert(src && out && row);
	if (type == KVP_GGML_Q8_1 || type == KVP_GGML_Q8_K) {
		free(src);
		return out;   /* no quantizer for these: zeros (scale 0) are valid blocks */
	}
	for (uint64_t i = 0; i < ne0; i++)
		src[i] = v;
	for (uint64_t r = 0; r < ne1; r++)
		cr_assert_eq(kvp_quant_row(type, src, out + r * row, ne0), 0, "quantize type %u", type);
	free(src);
	return out;
}

struct writer {
	struct kvp_gguf_writer *w;
	void *bufs[128];
	int n;
};

static void tensor(struct writer *wr, const char *name, uint64_t ne0, uint64_t ne1,
		   uint32_t type, float v)
{
	const uint64_t ne[2] = { ne0, ne1 };

	cr_assert_lt(wr->n, 128);
	wr->bufs[wr->n] = const_data(type, ne0, ne1 ? ne1 : 1, v);
	cr_assert_eq(kvp_gguf_add_tensor(wr->w, name, ne1 ? 2 : 1, ne, type, wr->bufs[wr->n]), 0,
		     "add %s", name);
	wr->n++;
}

static void key_u32(struct kvp_gguf_writer *w, const char *arch, const char *rest, uint32_t v)
{
	char k[96];

	snprintf(k, sizeof(k), "%s.%s", arch, rest);
	cr_assert_eq(kvp_gguf_add_u32(w, k, v), 0, "%s", k);
}

static void key_f32(struct kvp_gguf_writer *w, const char *arch, const char *rest, float v)
{
	char k[96];

	snprintf(k, sizeof(k), "%s.%s", arch, rest);
	cr_assert_eq(kvp_gguf_add_f32(w, k, v), 0, "%s", k);
}

static void key_str(struct kvp_gguf_writer *w, const char *arch, const char *rest,
		    const char *v)
{
	char k[96];

	snprintf(k, sizeof(k), "%s.%s", arch, rest);
	cr_assert_eq(kvp_gguf_add_str(w, k, v), 0, "%s", k);
}

static void write_layer(struct writer *wr, const struct spec *s, uint32_t l)
{
	const uint32_t mt = s->mtype, vt = s->vtype;
	char n[64];

#define W(what, ne0, ne1, type, v)                                               \
	snprintf(n, sizeof(n), "blk.%u.%s", l, what);                            \
	tensor(wr, n, ne0, ne1, type, v)
	W("attn_norm.weight", M_DIM, 0, vt, 1.0f);
	W("ffn_norm.weight", M_DIM, 0, vt, 1.0f);
	W("attn_q.weight", M_DIM, M_HEADS * M_HD, mt, 0.01f);
	W("attn_k.weight", M_DIM, M_KV * M_HD, mt, 0.01f);
	W("attn_v.weight", M_DIM, M_KV * M_HD, s->v_type ? s->v_type : mt, 0.01f);
	W("attn_output.weight", M_HEADS * M_HD, M_DIM, mt, 0.01f);
	W("ffn_gate.weight", M_DIM, M_FFN, mt, 0.01f);
	W("ffn_up.weight", M_DIM, M_FFN, mt, 0.01f);
	W("ffn_down.weight", M_FFN, M_DIM, mt, 0.01f);
	if (s->qkv_bias) {
		W("attn_q.bias", M_HEADS * M_HD, 0, vt, 0.5f);
		W("attn_k.bias", M_KV * M_HD, 0, vt, 0.25f);
		W("attn_v.bias", M_KV * M_HD, 0, vt, -0.25f);
	}
	if (s->o_bias) {
		W("attn_output.bias", M_DIM, 0, vt, 0.125f);
	}
	if (s->ffn_bias) {
		W("ffn_gate.bias", M_FFN, 0, vt, 1.0f);
		W("ffn_up.bias", M_FFN, 0, vt, 2.0f);
		W("ffn_down.bias", M_DIM, 0, vt, 3.0f);
	}
#undef W
}

static void write_model(const char *file, const struct spec *s)
{
	const char *arch = s->arch ? s->arch : "llama";
	const uint32_t mt = s->mtype;
	struct writer wr = { 0 };
	char path[256], err[256];

	cr_assert_eq(kvp_gguf_writer_new(&wr.w), 0);
	cr_assert_eq(kvp_gguf_add_str(wr.w, "general.architecture", arch), 0);
	cr_assert_eq(kvp_gguf_add_str(wr.w, "general.name", file), 0);
	key_u32(wr.w, arch, "context_length", M_CTX);
	key_u32(wr.w, arch, "embedding_length", M_DIM);
	if (!s->no_block_key)
		key_u32(wr.w, arch, "block_count", M_LAYERS);
	if (!s->no_ffn_key)
		key_u32(wr.w, arch, "feed_forward_length", M_FFN);
	if (s->head_arrays) {
		const int32_t heads[M_LAYERS] = { M_HEADS, M_HEADS }, kv[M_LAYERS] = { M_KV, M_KV };
		char k[96];

		snprintf(k, sizeof(k), "%s.attention.head_count", arch);
		cr_assert_eq(kvp_gguf_add_i32_array(wr.w, k, heads, M_LAYERS), 0);
		snprintf(k, sizeof(k), "%s.attention.head_count_kv", arch);
		cr_assert_eq(kvp_gguf_add_i32_array(wr.w, k, kv, M_LAYERS), 0);
	} else {
		key_u32(wr.w, arch, "attention.head_count", M_HEADS);
		key_u32(wr.w, arch, "attention.head_count_kv", M_KV);
	}
	key_f32(wr.w, arch, "rope.freq_base", 10000.0f);
	if (s->keys)
		s->keys(wr.w, arch);
	tensor(&wr, "token_embd.weight", M_DIM, M_VOCAB, s->embd_type ? s->embd_type : mt, 0.02f);
	tensor(&wr, "output_norm.weight", M_DIM, 0, s->vtype, 1.0f);
	for (uint32_t l = 0; l < M_LAYERS; l++)
		write_layer(&wr, s, l);
	if (s->freq_factors) {
		const uint64_t ne[1] = { M_HD / 2 };

		cr_assert_eq(kvp_gguf_add_tensor(wr.w, "rope_freqs.weight", 1, ne, KVP_GGML_F32,
						 s->freq_factors), 0);
	}
	if (s->extra_tensor)
		tensor(&wr, s->extra_tensor, M_DIM, 0, KVP_GGML_F32, 1.0f);
	snprintf(path, sizeof(path), "%s/%s", g_dir, file);
	cr_assert_eq(kvp_gguf_write(wr.w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(wr.w);
	for (int i = 0; i < wr.n; i++)
		free(wr.bufs[i]);
}

static struct kvp_model *load(const char *file, const struct spec *s)
{
	struct kvp_model *m = NULL;
	char path[256], err[512] = "";

	write_model(file, s);
	snprintf(path, sizeof(path), "%s/%s", g_dir, file);
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s: %s", file, err);
	return m;
}

/* Loading must fail with a message holding every string of want (NULL-terminated). */
static void refused_v(const char *file, const struct spec *s, const char *const *want)
{
	struct kvp_model *m = NULL;
	char path[256], err[512] = "";

	write_model(file, s);
	snprintf(path, sizeof(path), "%s/%s", g_dir, file);
	cr_assert_lt(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s: loaded, want refused",
		     file);
	cr_assert_null(m);
	for (; *want; want++)
		cr_assert_not_null(strstr(err, *want), "%s: \"%s\" lacks \"%s\"", file, err, *want);
}

#define refused(file, spec, ...) refused_v(file, spec, (const char *const[]){ __VA_ARGS__, NULL })

static uint64_t file_tensor_bytes(const char *file)
{
	struct kvp_gguf *g;
	char path[256], err[256];
	uint64_t sum = 0;

	snprintf(path, sizeof(path), "%s/%s", g_dir, file);
	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "%s", err);
	for (size_t i = 0; i < kvp_gguf_n_tensors(g); i++)
		sum += kvp_gguf_tensor_at(g, i)->nbytes;
	kvp_gguf_close(g);
	return sum;
}

/* ---- architectures ------------------------------------------------------------------ */

Test(arch, llama_without_extras)
{
	struct kvp_model *m = load("llama.gguf", &(struct spec){ 0 });

	cr_expect_eq(m->cfg.arch, KVP_ARCH_LLAMA);
	cr_expect_str_eq(m->cfg.arch_name, "llama");
	cr_expect_eq(m->cfg.rope_style, KVP_ROPE_ADJACENT);
	cr_expect(!m->cfg.attn_bias && !m->cfg.ffn_bias && !m->cfg.rope_freq_factors);
	cr_expect_float_eq(m->cfg.rope_scale, 1.0f, 0.0f);
	cr_expect_null(m->rope_freqs);
	kvp_model_free(m);
}

Test(arch, qwen2_halves_and_qkv_biases)
{
	struct kvp_model *m = load("qwen.gguf", &(struct spec){ .arch = "qwen2", .qkv_bias = true });
	const struct kvp_layer_weights *w = &m->layers[1];

	cr_expect_eq(m->cfg.arch, KVP_ARCH_QWEN2);
	cr_expect_str_eq(m->cfg.arch_name, "qwen2");
	cr_expect_eq(m->cfg.rope_style, KVP_ROPE_HALVES);
	cr_expect(m->cfg.attn_bias && !m->cfg.ffn_bias);
	cr_assert(w->bq && w->bk && w->bv && !w->bo && !w->b_gate && !w->b_up && !w->b_down);
	for (uint32_t i = 0; i < M_HEADS * M_HD; i++)
		cr_assert_eq(w->bq[i], 0.5f);
	for (uint32_t i = 0; i < M_KV * M_HD; i++)
		cr_assert(w->bk[i] == 0.25f && w->bv[i] == -0.25f);
	/* the parameter count holds the biases */
	const uint64_t per_layer = 2 * M_DIM + 2 * (uint64_t)M_DIM * M_DIM +
				   2 * (uint64_t)M_DIM * M_KV * M_HD + 3 * (uint64_t)M_DIM * M_FFN +
				   M_DIM + 2 * M_KV * M_HD;
	cr_expect_eq(m->cfg.n_params, (uint64_t)M_VOCAB * M_DIM + M_DIM + M_LAYERS * per_layer);
	kvp_model_free(m);
}

/* qwen2's q, k and v biases are part of the architecture: a file without them is
 * refused, naming the first missing one. */
Test(arch, qwen2_without_biases_refused)
{
	refused("qwen.gguf", &(struct spec){ .arch = "qwen2" }, "tensor 'blk.0.attn_q.bias' is missing");
}

/* Output and FFN biases, and biases stored f16: converted to f32 once, exact. */
Test(arch, every_bias_and_f16_vectors)
{
	struct kvp_model *m = load("b.gguf", &(struct spec){ .qkv_bias = true, .o_bias = true,
							     .ffn_bias = true, .vtype = KVP_GGML_F16 });
	const struct kvp_layer_weights *w = &m->layers[0];

	cr_expect(m->cfg.attn_bias && m->cfg.ffn_bias);
	cr_assert_not_null(m->owned, "f16 vectors are converted into the owned buffer");
	cr_assert(w->bo && w->b_gate && w->b_up && w->b_down);
	for (uint32_t i = 0; i < M_DIM; i++)
		cr_assert(w->bo[i] == 0.125f && w->b_down[i] == 3.0f && w->attn_norm[i] == 1.0f &&
			  m->output_norm[i] == 1.0f);
	for (uint32_t i = 0; i < M_FFN; i++)
		cr_assert(w->b_gate[i] == 1.0f && w->b_up[i] == 2.0f);
	for (uint32_t l = 0; l < M_LAYERS; l++)
		cr_assert_eq((uintptr_t)m->layers[l].attn_norm % 16, 0, "converted vectors aligned");
	kvp_model_free(m);
}

/* Per-layer arrays (newer converters write them) load when every layer agrees. */
Test(arch, uniform_per_layer_arrays)
{
	struct kvp_model *m = load("arr.gguf", &(struct spec){ .head_arrays = true });

	cr_expect_eq(m->cfg.n_heads, M_HEADS);
	cr_expect_eq(m->cfg.n_kv_heads, M_KV);
	kvp_model_free(m);
}

static void k_ffn_mixed(struct kvp_gguf_writer *w, const char *arch)
{
	const int32_t ffn[M_LAYERS] = { M_FFN, M_FFN / 2 };
	char k[96];

	snprintf(k, sizeof(k), "%s.feed_forward_length", arch);
	cr_assert_eq(kvp_gguf_add_i32_array(w, k, ffn, M_LAYERS), 0);
}

/* ---- types -------------------------------------------------------------------------- */

static const uint32_t weight_types[] = {
	KVP_GGML_F32, KVP_GGML_F16, KVP_GGML_BF16, KVP_GGML_Q4_0, KVP_GGML_Q4_1,
	KVP_GGML_Q5_0, KVP_GGML_Q5_1, KVP_GGML_Q8_0, KVP_GGML_Q2_K, KVP_GGML_Q3_K,
	KVP_GGML_Q4_K, KVP_GGML_Q5_K, KVP_GGML_Q6_K,
};

/* Every weight type loads in place: the matrices point into the file in its type, the
 * tally counts them, the weight bytes are the file's tensor bytes. */
Test(types, every_weight_type_loads_in_place)
{
	char file[32], tn[16];

	for (size_t i = 0; i < sizeof(weight_types) / sizeof(weight_types[0]); i++) {
		const uint32_t t = weight_types[i];
		struct kvp_model *m;

		snprintf(file, sizeof(file), "t%u.gguf", t);
		m = load(file, &(struct spec){ .mtype = t });
		const char *name = kvp_ggml_type_name(t, tn, sizeof(tn));
		const struct kvp_tensor *q = &m->layers[1].wq;

		cr_expect_eq(m->cfg.file_type, t, "%s", name);
		cr_expect_eq(q->type, t, "%s", name);
		cr_expect_eq(q->rows, M_HEADS * M_HD);
		cr_expect_eq(q->cols, M_DIM);
		cr_expect_eq(q->row_bytes, kvp_ggml_row_bytes(t, M_DIM), "%s", name);
		cr_expect_eq(m->tok_embd.type, t);
		/* 7 matrices a layer and the embedding; norms f32 */
		cr_expect_eq(m->cfg.type_count[t], t == KVP_GGML_F32 ? 7 * M_LAYERS + 1 + 2 * M_LAYERS + 1
								     : 7 * M_LAYERS + 1,
			     "%s: %u tensors", name, m->cfg.type_count[t]);
		cr_expect_eq(m->cfg.weight_bytes, file_tensor_bytes(file), "%s", name);
		/* the values: every element of a constant tensor dequantizes to about it */
		float row[M_DIM];
		cr_assert_eq(kvp_dequant_row(t, q->data, row, M_DIM), 0);
		for (uint32_t k = 0; k < M_DIM; k++)
			cr_assert(fabsf(row[k] - 0.01f) < 0.01f * 0.08f, "%s: %g", name, (double)row[k]);
		kvp_model_free(m);
	}
}

/* Files of the _M mixes: attn_v and the embedding in a wider type than the rest. */
Test(types, mixed_types_load)
{
	struct kvp_model *m = load("mix.gguf", &(struct spec){ .mtype = KVP_GGML_Q4_K,
							       .v_type = KVP_GGML_Q6_K,
							       .embd_type = KVP_GGML_Q8_0 });

	cr_expect_eq(m->cfg.file_type, KVP_GGML_Q4_K);
	cr_expect_eq(m->layers[0].wv.type, KVP_GGML_Q6_K);
	cr_expect_eq(m->layers[0].wk.type, KVP_GGML_Q4_K);
	cr_expect_eq(m->tok_embd.type, KVP_GGML_Q8_0);
	cr_expect_eq(m->cfg.type_count[KVP_GGML_Q4_K], 6 * M_LAYERS);
	cr_expect_eq(m->cfg.type_count[KVP_GGML_Q6_K], M_LAYERS);
	cr_expect_eq(m->cfg.type_count[KVP_GGML_Q8_0], 1);
	cr_expect(m->cfg.tied_output && m->output.type == KVP_GGML_Q8_0);
	kvp_model_free(m);
}

/* Activation-only block types are no weight type: refused by tensor and type. */
Test(types, activation_types_refused_for_weights)
{
	refused("q81.gguf", &(struct spec){ .mtype = KVP_GGML_Q8_K }, "tensor 'token_embd.weight'",
		"Q8_K", "not supported for weights");
}

/* ---- rope --------------------------------------------------------------------------- */

static void k_linear4(struct kvp_gguf_writer *w, const char *a)
{
	key_str(w, a, "rope.scaling.type", "linear");
	key_f32(w, a, "rope.scaling.factor", 4.0f);
}
static void k_factor_only(struct kvp_gguf_writer *w, const char *a)
{
	key_f32(w, a, "rope.scaling.factor", 2.0f);
}
static void k_legacy(struct kvp_gguf_writer *w, const char *a)
{
	key_f32(w, a, "rope.scale_linear", 8.0f);
}
static void k_none_with_factor(struct kvp_gguf_writer *w, const char *a)
{
	key_str(w, a, "rope.scaling.type", "none");
	key_f32(w, a, "rope.scaling.factor", 4.0f);
}
static void k_yarn(struct kvp_gguf_writer *w, const char *a)
{
	key_str(w, a, "rope.scaling.type", "yarn");
	key_f32(w, a, "rope.scaling.factor", 4.0f);
}
static void k_attn_factor(struct kvp_gguf_writer *w, const char *a)
{
	key_str(w, a, "rope.scaling.type", "linear");
	key_f32(w, a, "rope.scaling.factor", 4.0f);
	key_f32(w, a, "rope.scaling.attn_factor", 2.0f);
}
static void k_linear_no_factor(struct kvp_gguf_writer *w, const char *a)
{
	key_str(w, a, "rope.scaling.type", "linear");
}

static void expect_rope(const struct kvp_model *m, double scale, const float *factors)
{
	for (uint32_t i = 0; i < M_HD / 2; i++) {
		double want = pow(10000.0, -2.0 * i / M_HD) / scale / (factors ? factors[i] : 1.0);

		cr_assert(fabs(kvp_model_rope_freq(m, i) - want) <= 1e-12 * want,
			  "pair %u: %.17g want %.17g", i, kvp_model_rope_freq(m, i), want);
	}
}

Test(rope, linear_scaling)
{
	struct { void (*keys)(struct kvp_gguf_writer *, const char *); double scale; } cases[] = {
		{ k_linear4, 4.0 }, { k_factor_only, 2.0 }, { k_legacy, 8.0 },
		{ k_none_with_factor, 1.0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kvp_model *m = load("s.gguf", &(struct spec){ .keys = cases[i].keys });

		cr_expect_float_eq(m->cfg.rope_scale, (float)cases[i].scale, 0.0f, "case %zu", i);
		expect_rope(m, cases[i].scale, NULL);
		kvp_model_free(m);
	}
}

Test(rope, frequency_factors)
{
	float f[M_HD / 2];

	for (uint32_t i = 0; i < M_HD / 2; i++)
		f[i] = 1.0f + (float)i / 4.0f;
	struct kvp_model *m = load("f.gguf", &(struct spec){ .freq_factors = f, .keys = k_linear4 });

	cr_expect(m->cfg.rope_freq_factors);
	cr_assert_not_null(m->rope_freqs);
	expect_rope(m, 4.0, f);
	kvp_model_free(m);
	f[3] = 0.0f;
	refused("f0.gguf", &(struct spec){ .freq_factors = f }, "rope_freqs.weight", "factor 3");
}

Test(rope, other_scalings_refused)
{
	refused("y.gguf", &(struct spec){ .keys = k_yarn }, "llama.rope.scaling.type", "'yarn'");
	refused("a.gguf", &(struct spec){ .keys = k_attn_factor }, "llama.rope.scaling.attn_factor");
	refused("l.gguf", &(struct spec){ .keys = k_linear_no_factor }, "without a factor");
}

/* ---- refusals and cuts -------------------------------------------------------------- */

static void k_split(struct kvp_gguf_writer *w, const char *a)
{
	(void)a;
	cr_assert_eq(kvp_gguf_add_u32(w, "split.count", 3), 0);
	cr_assert_eq(kvp_gguf_add_u32(w, "split.no", 0), 0);
}
static void k_split_one(struct kvp_gguf_writer *w, const char *a)
{
	(void)a;
	cr_assert_eq(kvp_gguf_add_u32(w, "split.count", 1), 0);
}
static void k_experts(struct kvp_gguf_writer *w, const char *a)
{
	key_u32(w, a, "expert_count", 8);
}
static void k_window(struct kvp_gguf_writer *w, const char *a)
{
	key_u32(w, a, "attention.sliding_window", 32);
}
static void k_window_long(struct kvp_gguf_writer *w, const char *a)
{
	key_u32(w, a, "attention.sliding_window", 4096);
}

Test(refuse, split_file)
{
	refused("sp.gguf", &(struct spec){ .keys = k_split }, "split.count", "part 1 of 3",
		"llama-gguf-split --merge");
	kvp_model_free(load("sp1.gguf", &(struct spec){ .keys = k_split_one }));
}

Test(refuse, experts)
{
	refused("ex.gguf", &(struct spec){ .keys = k_experts }, "llama.expert_count", "experts");
}

Test(refuse, a_tensor_the_engine_would_not_use)
{
	refused("qn.gguf", &(struct spec){ .extra_tensor = "blk.0.attn_q_norm.weight" },
		"tensor 'blk.0.attn_q_norm.weight'", "not one a llama model computes with");
	const struct spec qb = { .arch = "qwen2", .qkv_bias = true,
				 .extra_tensor = "blk.1.post_norm.weight" };

	refused("qb.gguf", &qb, "tensor 'blk.1.post_norm.weight'", "qwen2");
}

static void k_ffn_short(struct kvp_gguf_writer *w, const char *arch)
{
	const int32_t ffn[1] = { M_FFN };
	char k[96];

	snprintf(k, sizeof(k), "%s.feed_forward_length", arch);
	cr_assert_eq(kvp_gguf_add_i32_array(w, k, ffn, 1), 0);
}

/* qwen2 has q, k and v biases and nothing else llama files may add: an output or FFN bias,
 * or Llama 3's rope_freqs, is refused by name rather than computed. */
Test(refuse, qwen2_takes_no_llama_extras)
{
	float f[M_HD / 2];

	for (uint32_t i = 0; i < M_HD / 2; i++)
		f[i] = 1.0f;
	const struct spec ob = { .arch = "qwen2", .qkv_bias = true, .o_bias = true };
	const struct spec fb = { .arch = "qwen2", .qkv_bias = true, .ffn_bias = true };
	const struct spec rf = { .arch = "qwen2", .qkv_bias = true, .freq_factors = f };

	refused("ob.gguf", &ob, "tensor 'blk.0.attn_output.bias'", "not one a qwen2 model");
	refused("fb.gguf", &fb, "tensor 'blk.0.ffn_gate.bias'", "not one a qwen2 model");
	refused("rf.gguf", &rf, "tensor 'rope_freqs.weight'", "not one a qwen2 model");
}

/* Only the sizes a converter writes per layer may be arrays. */
static void k_block_array(struct kvp_gguf_writer *w, const char *arch)
{
	const int32_t v[M_LAYERS] = { M_LAYERS, M_LAYERS };
	char k[96];

	snprintf(k, sizeof(k), "%s.block_count", arch);
	cr_assert_eq(kvp_gguf_add_i32_array(w, k, v, M_LAYERS), 0);
}

Test(refuse, non_uniform_layers)
{
	const struct spec sh = { .keys = k_ffn_short, .no_ffn_key = true };
	const struct spec ba = { .keys = k_block_array, .no_block_key = true };

	refused("ba.gguf", &ba, "key 'llama.block_count' is not an unsigned integer");

	refused("sh.gguf", &sh, "llama.feed_forward_length", "an array of 1 values for 2 layers");
	const struct spec nu = { .keys = k_ffn_mixed, .no_ffn_key = true };

	refused("nu.gguf", &nu, "llama.feed_forward_length", "layers of different sizes");
}

Test(refuse, sliding_window_cuts_the_context)
{
	struct kvp_model *m = load("w.gguf", &(struct spec){ .keys = k_window });

	cr_expect_eq(m->cfg.ctx, 32);
	cr_expect_eq(m->cfg.ctx_file, M_CTX);
	kvp_model_free(m);
	m = load("wl.gguf", &(struct spec){ .keys = k_window_long });
	cr_expect_eq(m->cfg.ctx, M_CTX);
	kvp_model_free(m);
}
