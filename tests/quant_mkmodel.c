/*
 * quant_mkmodel.c - kvprefix-mkmodel's types, architectures and options, read back
 * through the GGUF reader (the model loader takes these files once it computes with
 * them):
 *
 *   every --dtype     each tensor has its type and size, and dequantizes to the f32
 *                     file's values for the same seed within the type's stated bound
 *                     (quant_test_util.h); norms stay f32, byte for byte
 *   refusals          a row that is not whole blocks names the option and the block
 *   --arch qwen2      qwen2.* keys and the q, k, v biases
 *   --bias            a bias on each of the 7 layer matrices
 *   --rope-scaling    linear's two keys; llama3's rope_freqs.weight, Llama 3's factors
 *   bytes             the same options give the same bytes; the f32 llama file is the
 *                     one the tool always wrote
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "kvp_gguf.h"
#include "kvp_quant.h"
#include "quant_test_util.h"

#ifndef KVP_MKMODEL_PATH
#error "KVP_MKMODEL_PATH must name the kvprefix-mkmodel binary"
#endif

TestSuite(mkmodel_types, .init = qt_tmp_setup, .fini = qt_tmp_teardown);

/* dim and ffn multiples of 256, head dim 64 */
#define SHAPE "--vocab 300 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --ctx 128"
#define DIM 256u
#define FFN 512u
#define HD 64u
#define KV (2u * HD)

/* Run kvprefix-mkmodel --out DIR/name --quiet ARGS, its stderr into msg; exit status. */
static int mkmodel(const char *name, const char *args, char *msg, size_t cap)
{
	char cmd[1024], out[256], sink[512];

	qt_path(out, sizeof(out), name);
	snprintf(cmd, sizeof(cmd), "'%s' --quiet --out '%s' %s 2>&1", KVP_MKMODEL_PATH, out, args);
	return kvp_run_capture(cmd, msg ? msg : sink, msg ? cap : sizeof(sink));
}

static struct kvp_gguf *open_model(const char *name, const char *args)
{
	struct kvp_gguf *g = NULL;
	char path[256], err[512];

	cr_assert_eq(mkmodel(name, args, err, sizeof(err)), 0, "mkmodel %s: %s", args, err);
	qt_path(path, sizeof(path), name);
	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "%s: %s", args, err);
	return g;
}

static const struct kvp_gguf_tensor *need(const struct kvp_gguf *g, const char *name)
{
	const struct kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, name);

	cr_assert_not_null(t, "tensor '%s' missing", name);
	return t;
}

static bool str_is(const struct kvp_gguf *g, const char *key, const char *want)
{
	const char *s;
	size_t n;

	return kvp_gguf_get_str(g, key, &s, &n) == 0 && n == strlen(want) && memcmp(s, want, n) == 0;
}

/* ---- every dtype ---------------------------------------------------------------------- */

struct dtype_case {
	const char *name;
	uint32_t type, ftype;
	bool mix;        /* Q6_K for output, attn_v, ffn_down */
};

static const struct dtype_case dtypes[] = {
	{ "f16", KVP_GGML_F16, 1, false }, { "bf16", KVP_GGML_BF16, 32, false },
	{ "q8_0", KVP_GGML_Q8_0, 7, false }, { "q4_0", KVP_GGML_Q4_0, 2, false },
	{ "q4_1", KVP_GGML_Q4_1, 3, false }, { "q5_0", KVP_GGML_Q5_0, 8, false },
	{ "q5_1", KVP_GGML_Q5_1, 9, false }, { "q2_k", KVP_GGML_Q2_K, 10, false },
	{ "q3_k", KVP_GGML_Q3_K, 11, false }, { "q4_k", KVP_GGML_Q4_K, 14, false },
	{ "q5_k", KVP_GGML_Q5_K, 16, false }, { "q6_k", KVP_GGML_Q6_K, 18, false },
	{ "q4_k_m", KVP_GGML_Q4_K, 15, true },
};

static uint32_t want_type(const struct dtype_case *d, const char *tensor)
{
	if (d->mix && (strcmp(tensor, "output.weight") == 0 || strstr(tensor, ".attn_v.") ||
		       strstr(tensor, ".ffn_down.")))
		return KVP_GGML_Q6_K;
	return d->type;
}

/* Every tensor of q against the same tensor of the f32 file f. */
static void compare_to_f32(const struct kvp_gguf *f, const struct kvp_gguf *q,
			   const struct dtype_case *d)
{
	char why[256];

	cr_assert_eq(kvp_gguf_n_tensors(q), kvp_gguf_n_tensors(f), "%s", d->name);
	for (size_t i = 0; i < kvp_gguf_n_tensors(f); i++) {
		const struct kvp_gguf_tensor *a = kvp_gguf_tensor_at(f, i);
		const struct kvp_gguf_tensor *b = need(q, a->name);
		const uint64_t n = a->ne[0] * a->ne[1];
		const uint32_t type = a->n_dims == 1 ? KVP_GGML_F32 : want_type(d, a->name);
		float *y;

		cr_assert_eq(b->n_dims, a->n_dims, "%s %s", d->name, a->name);
		cr_assert_eq(b->ne[0], a->ne[0]);
		cr_assert_eq(b->ne[1], a->ne[1]);
		cr_assert_eq(b->type, type, "%s %s: type %u, want %u", d->name, a->name, b->type, type);
		cr_assert_eq(b->nbytes, kvp_ggml_row_bytes(type, a->ne[0]) * a->ne[1], "%s %s", d->name,
			     a->name);
		if (type == KVP_GGML_F32) {   /* norms: the same bytes */
			cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "%s %s", d->name, a->name);
			continue;
		}
		y = malloc(n * sizeof(float));
		cr_assert_not_null(y);
		cr_assert_eq(kvp_dequant_row(type, b->data, y, n), 0);
		/* the matrices are uniform: the K types' tight bound */
		cr_assert(qt_within_bound(type, a->data, y, n, true, why, sizeof(why)), "%s %s: %s",
			  d->name, a->name, why);
		free(y);
	}
}

Test(mkmodel_types, every_dtype_holds_the_f32_values)
{
	struct kvp_gguf *f = open_model("f32.gguf", SHAPE " --seed 5");
	char args[256], file[32];
	uint32_t ft;

	cr_assert_eq(kvp_gguf_get_u32(f, "general.file_type", &ft), 0);
	cr_assert_eq(ft, 0);
	for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
		struct kvp_gguf *q;

		snprintf(args, sizeof(args), SHAPE " --seed 5 --dtype %s", dtypes[i].name);
		snprintf(file, sizeof(file), "%s.gguf", dtypes[i].name);
		q = open_model(file, args);
		cr_assert_eq(kvp_gguf_get_u32(q, "general.file_type", &ft), 0);
		cr_assert_eq(ft, dtypes[i].ftype, "%s: file type %u", dtypes[i].name, ft);
		compare_to_f32(f, q, &dtypes[i]);
		kvp_gguf_close(q);
	}
	kvp_gguf_close(f);
}

Test(mkmodel_types, tied_quantized_file_has_no_output)
{
	struct kvp_gguf *g = open_model("tied.gguf", SHAPE " --dtype q4_k_m --tied");

	cr_assert_null(kvp_gguf_find_tensor(g, "output.weight"));
	cr_assert_eq(need(g, "token_embd.weight")->type, KVP_GGML_Q4_K);
	cr_assert_eq(need(g, "blk.1.attn_v.weight")->type, KVP_GGML_Q6_K);
	cr_assert_eq(need(g, "blk.1.ffn_down.weight")->type, KVP_GGML_Q6_K);
	cr_assert_eq(need(g, "blk.1.attn_k.weight")->type, KVP_GGML_Q4_K);
	cr_assert_eq(need(g, "blk.1.ffn_norm.weight")->type, KVP_GGML_F32);
	kvp_gguf_close(g);
}

Test(mkmodel_types, rows_of_part_blocks_are_refused)
{
	static const struct { const char *args, *want; } bad[] = {
		{ "--dtype q4_k --dim 128 --heads 4", "--dim 128 must be a multiple of 256 (a Q4_K block)" },
		{ "--dtype q6_k --dim 512 --ffn 1000", "--ffn 1000 must be a multiple of 256 (a Q6_K block)" },
		{ "--dtype q4_k_m --ffn 1664", "--ffn 1664 must be a multiple of 256" },
		{ "--dtype q4_0 --dim 48 --heads 4", "--dim 48 must be a multiple of 32 (a Q4_0 block)" },
		{ "--dtype q8_0 --ffn 100", "--ffn 100 must be a multiple of 32 (a Q8_0 block)" },
		{ "--dtype iq4_nl", "--dtype is f32, f16" },
		{ "--dtype Q4_K", "not 'Q4_K'" },
		{ "--arch mistral", "--arch is llama or qwen2" },
		{ "--rope-scaling yarn", "--rope-scaling is none, linear:FACTOR or llama3" },
		{ "--rope-scaling linear:", "wants a factor" },
		{ "--rope-scaling linear:0", "wants a factor" },
		{ "--rope-scaling linear:2x", "wants a factor" },
		{ "--arch qwen2 --rope-scaling llama3", "--arch qwen2 files have none" },
		{ "--arch qwen2 --bias", "--arch qwen2 files have their q, k and v biases only" },
	};
	char msg[1024], path[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(mkmodel("bad.gguf", bad[i].args, msg, sizeof(msg)), 2, "%s", bad[i].args);
		cr_expect(strstr(msg, bad[i].want), "%s: message '%s' lacks '%s'", bad[i].args, msg,
			  bad[i].want);
	}
	qt_path(path, sizeof(path), "bad.gguf");
	cr_assert_neq(access(path, F_OK), 0, "a refused run left a file");
}

/* ---- architectures, biases, rope scaling ------------------------------------------------ */

static const char *const arch_keys[] = {
	"context_length", "embedding_length", "block_count", "feed_forward_length",
	"attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
	"rope.dimension_count", "rope.freq_base", "vocab_size",
};
static const char *const matrices[7] = {
	"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
};
static const uint64_t bias_len[7] = { DIM, KV, KV, DIM, FFN, FFN, DIM };

/* Layer l's bias of matrix m: F32, its matrix's output long, small values, not zero. */
static void check_bias(const struct kvp_gguf *g, uint32_t l, int m)
{
	const struct kvp_gguf_tensor *t;
	const float *v;
	char name[64];
	double ss = 0;

	snprintf(name, sizeof(name), "blk.%u.%s.bias", l, matrices[m]);
	t = need(g, name);
	cr_assert_eq(t->type, KVP_GGML_F32, "%s", name);
	cr_assert_eq(t->n_dims, 1, "%s", name);
	cr_assert_eq(t->ne[0], bias_len[m], "%s: %llu long", name, (unsigned long long)t->ne[0]);
	v = t->data;
	for (uint64_t i = 0; i < t->ne[0]; i++) {
		cr_assert(fabsf(v[i]) <= 0.02f / 4 * 1.7321f, "%s[%llu] = %g", name,
			  (unsigned long long)i, (double)v[i]);
		ss += (double)v[i] * v[i];
	}
	/* uniform with std a quarter of the matrices' 0.02 */
	cr_assert(fabs(sqrt(ss / (double)t->ne[0]) - 0.005) < 0.0012, "%s: rms %g", name,
		  sqrt(ss / (double)t->ne[0]));
}

static void check_no_bias(const struct kvp_gguf *g, uint32_t l, int m)
{
	char name[64];

	snprintf(name, sizeof(name), "blk.%u.%s.bias", l, matrices[m]);
	cr_assert_null(kvp_gguf_find_tensor(g, name), "%s present", name);
}

Test(mkmodel_types, qwen2_keys_and_attention_biases)
{
	struct kvp_gguf *g = open_model("qwen2.gguf", SHAPE " --arch qwen2 --dtype q8_0");
	char key[96];
	uint32_t u;

	cr_assert(str_is(g, "general.architecture", "qwen2"));
	for (size_t i = 0; i < sizeof(arch_keys) / sizeof(arch_keys[0]); i++) {
		float f;

		snprintf(key, sizeof(key), "qwen2.%s", arch_keys[i]);
		cr_assert(kvp_gguf_get_u32(g, key, &u) == 0 || kvp_gguf_get_f32(g, key, &f) == 0,
			  "%s missing", key);
		snprintf(key, sizeof(key), "llama.%s", arch_keys[i]);
		cr_assert_eq(kvp_gguf_get_u32(g, key, &u), KVP_ENOTFOUND, "%s present", key);
	}
	cr_assert_eq(kvp_gguf_get_u32(g, "qwen2.embedding_length", &u), 0);
	cr_assert_eq(u, DIM);
	cr_assert_eq(kvp_gguf_get_u32(g, "qwen2.attention.head_count_kv", &u), 0);
	cr_assert_eq(u, 2);
	for (uint32_t l = 0; l < 2; l++) {
		for (int m = 0; m < 7; m++) {
			if (m < 3)
				check_bias(g, l, m);
			else
				check_no_bias(g, l, m);
		}
	}
	cr_assert_eq(need(g, "blk.0.attn_q.weight")->type, KVP_GGML_Q8_0);
	kvp_gguf_close(g);
}

Test(mkmodel_types, bias_adds_one_to_each_layer_matrix)
{
	struct kvp_gguf *plain = open_model("plain.gguf", SHAPE);
	struct kvp_gguf *g = open_model("bias.gguf", SHAPE " --bias");

	cr_assert(str_is(g, "general.architecture", "llama"));
	cr_assert_eq(kvp_gguf_n_tensors(g), kvp_gguf_n_tensors(plain) + 2 * 7);
	for (uint32_t l = 0; l < 2; l++) {
		for (int m = 0; m < 7; m++) {
			check_bias(g, l, m);
			check_no_bias(plain, l, m);
		}
	}
	/* each bias its own values; the weights as without --bias */
	cr_assert_neq(memcmp(need(g, "blk.0.attn_k.bias")->data, need(g, "blk.0.attn_v.bias")->data,
			     KV * sizeof(float)), 0);
	cr_assert_eq(memcmp(need(g, "blk.1.ffn_up.weight")->data,
			    need(plain, "blk.1.ffn_up.weight")->data, DIM * FFN * sizeof(float)), 0);
	kvp_gguf_close(g);
	kvp_gguf_close(plain);
}

/* Llama 3's factors from the scheme as its reference code states it: a frequency's
 * wavelength under 8192 / 4 keeps the frequency, over 8192 / 1 divides it by 8, in
 * between blends the two by smooth = (8192 / wavelength - 1) / (4 - 1); the factor is
 * the old frequency over the new. */
static double llama3_factor(uint32_t i, uint32_t rope_dim)
{
	const double freq = pow(10000.0, -(double)(2 * i) / rope_dim);
	const double wavelen = 2 * M_PI / freq;
	double scaled;

	if (wavelen < 8192.0 / 4)
		scaled = freq;
	else if (wavelen > 8192.0 / 1)
		scaled = freq / 8;
	else {
		const double smooth = (8192.0 / wavelen - 1) / (4 - 1);

		scaled = (1 - smooth) * freq / 8 + smooth * freq;
	}
	return freq / scaled;
}

Test(mkmodel_types, rope_scaling_keys_and_llama3_factors)
{
	struct kvp_gguf *none = open_model("none.gguf", SHAPE " --rope-scaling none");
	struct kvp_gguf *lin = open_model("lin.gguf", SHAPE " --rope-scaling linear:4.5");
	struct kvp_gguf *q = open_model("qlin.gguf", SHAPE " --arch qwen2 --rope-scaling linear:2");
	struct kvp_gguf *l3 = open_model("l3.gguf", SHAPE " --rope-scaling llama3 --dtype q4_k");
	const struct kvp_gguf_tensor *t;
	const char *s;
	size_t n;
	float f;
	int seen[3] = { 0 };

	cr_assert_eq(kvp_gguf_get_str(none, "llama.rope.scaling.type", &s, &n), KVP_ENOTFOUND);
	cr_assert_null(kvp_gguf_find_tensor(none, "rope_freqs.weight"));
	cr_assert(str_is(lin, "llama.rope.scaling.type", "linear"));
	cr_assert_eq(kvp_gguf_get_f32(lin, "llama.rope.scaling.factor", &f), 0);
	cr_assert_eq(f, 4.5f);
	cr_assert_null(kvp_gguf_find_tensor(lin, "rope_freqs.weight"));
	cr_assert(str_is(q, "qwen2.rope.scaling.type", "linear"));
	cr_assert_eq(kvp_gguf_get_f32(q, "qwen2.rope.scaling.factor", &f), 0);
	cr_assert_eq(f, 2.0f);
	/* llama3: the tensor and no scaling key, as converted Llama 3 files */
	cr_assert_eq(kvp_gguf_get_str(l3, "llama.rope.scaling.type", &s, &n), KVP_ENOTFOUND);
	cr_assert_eq(kvp_gguf_get_f32(l3, "llama.rope.scaling.factor", &f), KVP_ENOTFOUND);
	t = need(l3, "rope_freqs.weight");
	cr_assert_eq(t->type, KVP_GGML_F32);
	cr_assert_eq(t->n_dims, 1);
	cr_assert_eq(t->ne[0], HD / 2);
	for (uint32_t i = 0; i < HD / 2; i++) {
		const float v = ((const float *)t->data)[i];
		const double want = llama3_factor(i, HD);

		cr_assert(fabs(v - want) <= 1e-6 * want, "factor %u: %.9g, want %.9g", i, (double)v, want);
		seen[v == 1.0f ? 0 : v == 8.0f ? 2 : 1]++;
	}
	/* head dim 64 at base 10000 reaches all three: kept, blended, divided by 8 */
	cr_assert(seen[0] && seen[1] && seen[2], "kept %d, blended %d, divided %d", seen[0], seen[1],
		  seen[2]);
	kvp_gguf_close(none);
	kvp_gguf_close(lin);
	kvp_gguf_close(q);
	kvp_gguf_close(l3);
}

/* ---- bytes -------------------------------------------------------------------------- */

static uint64_t file_fnv1a(const char *name, size_t *len)
{
	char path[256];
	uint64_t h = 0xcbf29ce484222325ull;
	FILE *f;
	int c;

	qt_path(path, sizeof(path), name);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	*len = 0;
	while ((c = fgetc(f)) != EOF) {
		h = (h ^ (uint8_t)c) * 0x100000001b3ull;
		++*len;
	}
	fclose(f);
	return h;
}

Test(mkmodel_types, same_options_same_bytes)
{
	static const char *const args[] = {
		SHAPE " --dtype q4_k_m --arch qwen2 --rope-scaling linear:2 --seed 9",
		SHAPE " --dtype q3_k --rope-scaling llama3 --tied",
		SHAPE " --dtype q5_1 --bias",
	};
	size_t na, nb, nc;

	for (size_t i = 0; i < sizeof(args) / sizeof(args[0]); i++) {
		cr_assert_eq(mkmodel("a.gguf", args[i], NULL, 0), 0, "%s", args[i]);
		cr_assert_eq(mkmodel("b.gguf", args[i], NULL, 0), 0);
		const uint64_t ha = file_fnv1a("a.gguf", &na), hb = file_fnv1a("b.gguf", &nb);

		cr_assert(na == nb && ha == hb, "%s: two runs differ", args[i]);
	}
	/* another seed, other bytes */
	cr_assert_eq(mkmodel("c.gguf", SHAPE " --dtype q5_1 --bias --seed 2", NULL, 0), 0);
	cr_assert_neq(file_fnv1a("c.gguf", &nc), file_fnv1a("a.gguf", &na));
}

/* The f32, f16 and bf16 llama files the tool wrote before it knew other types, pinned by
 * their FNV-1a 64 hashes: new options must leave them as they were. */
Test(mkmodel_types, llama_files_are_the_bytes_they_were)
{
	static const struct { const char *args; uint64_t fnv; size_t len; } pinned[] = {
		{ "--vocab 300 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 3",
		  0xc707fa255005f38bull, 409408 },
		{ "--vocab 260 --dim 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64 --ctx 128 --dtype f16 "
		  "--tied --seed 11", 0xe9167034bda7e122ull, 42720 },
		{ "--vocab 8 --dim 8 --layers 1 --heads 2 --kv-heads 1 --ffn 16 --ctx 64 --dtype bf16",
		  0xf27f86595cd995d0ull, 3264 },
	};
	size_t len;

	for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++) {
		cr_assert_eq(mkmodel("p.gguf", pinned[i].args, NULL, 0), 0);
		const uint64_t h = file_fnv1a("p.gguf", &len);

		cr_assert(h == pinned[i].fnv && len == pinned[i].len,
			  "%s: %zu bytes, fnv %016llx, want %zu, %016llx", pinned[i].args, len,
			  (unsigned long long)h, pinned[i].len, (unsigned long long)pinned[i].fnv);
	}
}
