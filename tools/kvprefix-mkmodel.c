/*
 * kvprefix-mkmodel.c - write a random-weight llama-family model as GGUF, for tests and
 * benchmarks (the project never downloads weights).
 *
 *   kvprefix-mkmodel --out FILE [--vocab N] [--dim N] [--layers N] [--heads N]
 *                    [--kv-heads N] [--ffn N] [--ctx N] [--dtype TYPE] [--arch llama|qwen2]
 *                    [--bias] [--rope-scaling none|linear:FACTOR|llama3] [--seed N]
 *                    [--tied] [--name NAME] [--quiet]
 *
 * The file carries the keys and tensors llama.cpp reads for its architecture ("llama",
 * or "qwen2": the same keys under qwen2.*, and the q, k, v biases) and a made-up
 * SentencePiece-style vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then one piece
 * "▁t<id>" per id), so llama.cpp loads it as well as kvprefixd. A vocabulary smaller than
 * 259 leaves the byte tokens out (<unk>, <s>, </s>, then pieces): kvprefixd computes with
 * it as with any other, which lets a protocol example show every logit; llama.cpp's
 * tokenizer then has no byte fallback.
 *
 * Weights are a pure function of (seed, tensor name, element index): a counter-based
 * generator (splitmix64), so the same arguments give the same bytes on any machine, and
 * each tensor is produced chunk by chunk while it is written (kvp_gguf_add_tensor_fill):
 * memory stays at a few MiB plus the vocabulary whatever the model size. A quantized
 * --dtype draws the same values, then quantizes them a block at a time (kvp_quant_row).
 *
 *   matrices  uniform in [-a, a], a = 0.02 * sqrt(3)   (std 0.02, as GPT-2 initialises)
 *   biases    uniform, std a quarter of the matrices'  (always f32)
 *   norms     uniform in [0.95, 1.05], always f32       (as llama.cpp writes norms)
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvp_gguf.h"
#include "kvp_quant.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF is written little-endian");

#define PROG "kvprefix-mkmodel"
#define N_SPECIAL 3u                    /* <unk> <s> </s> */
#define N_BYTE_TOKENS 256u
#define BYTE_VOCAB (N_SPECIAL + N_BYTE_TOKENS)   /* the smallest with the byte tokens */
#define MIN_VOCAB (N_SPECIAL + 1u)                /* the specials and one piece */
#define MAX_VOCAB (1u << 24)
#define MAX_DIM (1u << 20)
#define MAX_LAYERS 4096u
#define MAX_CTX (1u << 24)
#define WEIGHT_STD 0.02
#define NORM_SPREAD 0.05
#define ROPE_BASE 10000.0f
#define PROGRESS_MIN_BYTES (256ull << 20)

#define RUN 256                         /* values drawn at a time: whole blocks of every type */

/* llama.cpp's token types */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

enum arch { ARCH_LLAMA, ARCH_QWEN2 };
static const char *const arch_names[] = { "llama", "qwen2" };

enum rope_scaling { ROPE_NONE, ROPE_LINEAR, ROPE_LLAMA3 };

/* --dtype: the matrices' type and general.file_type, llama.cpp's LLAMA_FTYPE_MOSTLY_*
 * for it (a pure K type is the _S file type, as llama-quantize names it). */
struct dtype {
	const char *name;
	enum kvp_ggml_type type;
	uint32_t ftype;
	bool q6k_mix;               /* output, attn_v and ffn_down in Q6_K, as Q4_K_M files */
};

static const struct dtype dtypes[] = {
	{ "f32", KVP_GGML_F32, 0, false },     { "f16", KVP_GGML_F16, 1, false },
	{ "bf16", KVP_GGML_BF16, 32, false },  { "q8_0", KVP_GGML_Q8_0, 7, false },
	{ "q4_0", KVP_GGML_Q4_0, 2, false },   { "q4_1", KVP_GGML_Q4_1, 3, false },
	{ "q5_0", KVP_GGML_Q5_0, 8, false },   { "q5_1", KVP_GGML_Q5_1, 9, false },
	{ "q2_k", KVP_GGML_Q2_K, 10, false },  { "q3_k", KVP_GGML_Q3_K, 11, false },
	{ "q4_k", KVP_GGML_Q4_K, 14, false },  { "q5_k", KVP_GGML_Q5_K, 16, false },
	{ "q6_k", KVP_GGML_Q6_K, 18, false },  { "q4_k_m", KVP_GGML_Q4_K, 15, true },
};

struct opts {
	const char *out;
	const char *name;
	uint32_t vocab, dim, layers, heads, kv_heads, ffn, ctx;
	const struct dtype *dtype;
	enum arch arch;
	enum rope_scaling rope;
	float rope_factor;          /* ROPE_LINEAR */
	uint64_t seed;
	double std;
	bool tied, bias, quiet;
};

/* Progress over the whole file's tensor data, printed on stderr for big models. */
struct progress {
	uint64_t total, done;
	int last_pct;
	bool on;
	struct timespec t0;
};

/* One tensor's generator, the fill callback's context: value i = offset + scale * u(i),
 * stored as type. */
struct gen {
	uint64_t key;
	enum kvp_ggml_type type;
	double scale, offset;
	struct progress *prog;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " --out FILE [options]\n"
		"Write a llama-family GGUF model with random weights, in the form kvprefixd and\n"
		"llama.cpp read. The same options give the same bytes.\n"
		"\n"
		"  -o, --out FILE        the file to write (atomically, via FILE.tmp.XXXXXX)\n"
		"      --vocab N         vocabulary size, >= 4 (default 32000); below 259 the\n"
		"                        256 byte tokens are left out\n"
		"      --dim N           embedding length (default 512)\n"
		"      --layers N        transformer blocks (default 8)\n"
		"      --heads N         attention heads; must divide --dim, even head dim (default 8)\n"
		"      --kv-heads N      key/value heads; must divide --heads (default 4)\n"
		"      --ffn N           feed-forward length (default 1536)\n"
		"      --ctx N           context length (default 4096)\n"
		"      --dtype T         the type of the 7 layer matrices, token_embd and output:\n"
		"                        f32 (default), f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1,\n"
		"                        q2_k, q3_k, q4_k, q5_k, q6_k, or q4_k_m (q4_k, but q6_k\n"
		"                        for output, attn_v and ffn_down); norms and biases stay\n"
		"                        f32. Block types need --dim and --ffn multiples of their\n"
		"                        block: 32 (q4_0 .. q8_0) or 256 (the k types)\n"
		"      --arch A          llama (default) or qwen2: qwen2.* keys, and the q, k and\n"
		"                        v projections' biases\n"
		"      --bias            a bias on each of the 7 layer matrices (f32; llama only)\n"
		"      --rope-scaling S  none (default); linear:FACTOR (rope.scaling.type linear,\n"
		"                        rope.scaling.factor FACTOR); llama3 (a rope_freqs.weight\n"
		"                        tensor of Llama 3's frequency factors: factor 8, low and\n"
		"                        high frequency factors 1 and 4, original context 8192)\n"
		"      --seed N          weight seed (default 1)\n"
		"      --weight-std S    spread of the matrices' values (default 0.02); larger\n"
		"                        values give sharper attention, useful in tests; biases\n"
		"                        get a quarter of it\n"
		"      --tied            no output.weight: logits use token_embd\n"
		"      --name NAME       general.name (default kvprefix-random-<params>)\n"
		"  -q, --quiet           print nothing on success\n"
		"  -h, --help            show this help\n"
		"\n"
		"general.file_type is llama.cpp's for the dtype (0 f32, 1 f16, 32 bf16, 7 q8_0,\n"
		"2 q4_0, 3 q4_1, 8 q5_0, 9 q5_1, 10 q2_k, 11 q3_k, 14 q4_k, 16 q5_k, 18 q6_k,\n"
		"15 q4_k_m). The defaults make a ~58M parameter model (232 MB in f32). A ~1B one:\n"
		"  " PROG " --out 1b.gguf --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --dtype f16\n"
		"Exit status: 0 written, 1 error, 2 usage error.\n");
}

/* ---- weights ---------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t name_key(uint64_t seed, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull;             /* FNV-1a */

	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	return mix64(seed ^ mix64(h));
}

/* Uniform in [-1, 1), from the splitmix64 output at counter idx of stream key. */
static inline float uniform(uint64_t key, uint64_t idx)
{
	uint64_t z = mix64(key + (idx + 1) * 0x9E3779B97F4A7C15ull);

	return (float)((double)(z >> 40) * 0x1.0p-23 - 1.0);
}

static void progress_add(struct progress *p, uint64_t n)
{
	struct timespec now;
	int pct;

	p->done += n;
	if (!p->on)
		return;
	pct = (int)(p->done * 100 / p->total);
	if (pct / 10 == p->last_pct / 10 && pct != 100)
		return;
	p->last_pct = pct;
	clock_gettime(CLOCK_MONOTONIC, &now);
	fprintf(stderr, PROG ": %3d%% %" PRIu64 " / %" PRIu64 " MiB, %.1f s\n", pct,
		p->done >> 20, p->total >> 20,
		(double)(now.tv_sec - p->t0.tv_sec) + (double)(now.tv_nsec - p->t0.tv_nsec) / 1e9);
}

/* The writer asks for whole blocks (kvp_gguf.h), so a chunk quantizes on its own. */
static int fill(void *ctx, void *dst, uint64_t off, size_t n)
{
	const struct gen *g = ctx;
	const struct kvp_ggml_type_info *t = kvp_ggml_type(g->type);
	const uint64_t first = off / t->block_bytes * t->block_elems;
	const size_t count = n / t->block_bytes * t->block_elems;
	float v[RUN];
	int rc;

	/* values in runs of RUN (a loop the compiler vectorises), then stored as the type.
	 * scale * u is exact in double (24-bit by 24-bit), so the value is the same whether
	 * or not the compiler contracts it into an FMA: same bytes everywhere */
	for (size_t i = 0; i < count; i += RUN) {
		const size_t k = count - i < RUN ? count - i : RUN;

		for (size_t j = 0; j < k; j++)
			v[j] = (float)(g->offset + g->scale * (double)uniform(g->key, first + i + j));
		rc = kvp_quant_row(g->type, v, (uint8_t *)dst + i / t->block_elems * t->block_bytes, k);
		if (rc)
			return rc;
	}
	progress_add(g->prog, n);
	return 0;
}

/* ---- the file --------------------------------------------------------------------- */

/* The made-up vocabulary: strings in one buffer, pointers, scores, types. */
struct vocab {
	char *buf;
	const char **tok;
	float *score;
	int32_t *type;
};

static void vocab_free(struct vocab *v)
{
	free(v->buf);
	free(v->tok);
	free(v->score);
	free(v->type);
}

static int vocab_build(struct vocab *v, uint32_t n)
{
	static const char *const special[N_SPECIAL] = { "<unk>", "<s>", "</s>" };
	static const int32_t special_type[N_SPECIAL] = { TOK_UNKNOWN, TOK_CONTROL, TOK_CONTROL };
	const size_t slot = 16;          /* "▁t16777215" is 11 bytes + NUL */
	const uint32_t first_piece = n >= BYTE_VOCAB ? BYTE_VOCAB : N_SPECIAL;
	char *p;

	v->buf = malloc((size_t)n * slot);
	v->tok = malloc((size_t)n * sizeof(*v->tok));
	v->score = malloc((size_t)n * sizeof(*v->score));
	v->type = malloc((size_t)n * sizeof(*v->type));
	if (!v->buf || !v->tok || !v->score || !v->type)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		p = v->buf + (size_t)i * slot;
		if (i < N_SPECIAL) {
			snprintf(p, slot, "%s", special[i]);
			v->type[i] = special_type[i];
			v->score[i] = 0.0f;
		} else if (i < first_piece) {
			snprintf(p, slot, "<0x%02X>", i - N_SPECIAL);
			v->type[i] = TOK_BYTE;
			v->score[i] = 0.0f;
		} else {
			snprintf(p, slot, "\xe2\x96\x81t%u", i);
			v->type[i] = TOK_NORMAL;
			v->score[i] = -(float)(i - first_piece);
		}
		v->tok[i] = p;
	}
	return 0;
}

/* Which of the 7 layer matrices (attn_q .. ffn_down, in the order of build's table) have
 * a bias: all of them with --bias, q, k and v in a Qwen2 file. */
static bool has_bias(const struct opts *o, int m)
{
	return o->bias || (o->arch == ARCH_QWEN2 && m < 3);
}

static uint64_t n_params(const struct opts *o)
{
	uint64_t hd = o->dim / o->heads, q = (uint64_t)o->heads * hd, kv = (uint64_t)o->kv_heads * hd;
	uint64_t layer = 2ull * o->dim + 2 * q * o->dim + 2 * kv * o->dim + 3ull * o->dim * o->ffn;
	const uint64_t bias_len[7] = { q, kv, kv, o->dim, o->ffn, o->ffn, o->dim };

	for (int m = 0; m < 7; m++)
		layer += has_bias(o, m) ? bias_len[m] : 0;
	return (uint64_t)o->vocab * o->dim * (o->tied ? 1 : 2) + layer * o->layers + o->dim;
}

/* Llama 3's rope frequency factors, as its converters compute them for rope_freqs.weight:
 * per rotated pair i, wavelength 2 pi base^(2i / rope_dim); under 8192 / 4 kept (1),
 * over 8192 / 1 divided by 8, in between blended smoothly. */
static void llama3_rope_factors(float *f, uint32_t rope_dim, double base)
{
	const double factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, old_ctx = 8192.0;
	const double low_freq_wavelen = old_ctx / low_freq_factor;
	const double high_freq_wavelen = old_ctx / high_freq_factor;

	for (uint32_t i = 0; i < rope_dim / 2; i++) {
		const double freq = 1.0 / pow(base, (double)(2 * i) / (double)rope_dim);
		const double wavelen = 2.0 * M_PI / freq;

		if (wavelen < high_freq_wavelen) {
			f[i] = 1.0f;
		} else if (wavelen > low_freq_wavelen) {
			f[i] = (float)factor;
		} else {
			const double smooth = (old_ctx / wavelen - low_freq_factor) /
					      (high_freq_factor - low_freq_factor);

			f[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
		}
	}
}

/* What build adds tensors and keys with. */
struct builder {
	struct kvp_gguf_writer *w;
	const struct opts *o;
	struct gen *next;            /* the next free generator */
	struct progress *prog;
	char key[96];
};

/* "<arch>.<suffix>", for the key about to be added (the writer copies it). */
static const char *akey(struct builder *b, const char *suffix)
{
	snprintf(b->key, sizeof(b->key), "%s.%s", arch_names[b->o->arch], suffix);
	return b->key;
}

/* A tensor of ne0 x ne1 (ne1 0: a vector) of values offset + scale * u, stored as type. */
static int add_tensor(struct builder *b, const char *name, enum kvp_ggml_type type, double scale,
		      double offset, uint64_t ne0, uint64_t ne1)
{
	uint64_t ne[2] = { ne0, ne1 };
	struct gen *g = b->next++;

	g->key = name_key(b->o->seed, name);
	g->type = type;
	g->scale = scale;
	g->offset = offset;
	g->prog = b->prog;
	b->prog->total += kvp_ggml_row_bytes(type, ne0) * (ne1 ? ne1 : 1);
	return kvp_gguf_add_tensor_fill(b->w, name, ne1 ? 2 : 1, ne, type, fill, g);
}

/* The matrix called what ("attn_v", "output"): --dtype's type, or Q6_K where a Q4_K_M
 * file has it. */
static int add_matrix(struct builder *b, const char *name, const char *what, uint64_t ne0,
		      uint64_t ne1)
{
	const struct dtype *dt = b->o->dtype;
	const bool q6k = dt->q6k_mix && (strcmp(what, "output") == 0 ||
					 strcmp(what, "attn_v") == 0 || strcmp(what, "ffn_down") == 0);

	return add_tensor(b, name, q6k ? KVP_GGML_Q6_K : dt->type,
			  (double)(float)(b->o->std * 1.7320508075688772), 0.0, ne0, ne1);
}

static int add_norm(struct builder *b, const char *name, uint64_t n)
{
	return add_tensor(b, name, KVP_GGML_F32, (double)(float)NORM_SPREAD, 1.0, n, 0);
}

static int add_bias(struct builder *b, const char *name, uint64_t n)
{
	return add_tensor(b, name, KVP_GGML_F32, (double)(float)(b->o->std / 4 * 1.7320508075688772),
			  0.0, n, 0);
}

static int add_keys(struct builder *b, const struct vocab *v, const char *name)
{
	const struct opts *o = b->o;
	struct kvp_gguf_writer *w = b->w;
	int rc;

	if ((rc = kvp_gguf_add_str(w, "general.architecture", arch_names[o->arch])) ||
	    (rc = kvp_gguf_add_str(w, "general.name", name)) ||
	    (rc = kvp_gguf_add_u32(w, "general.alignment", 32)) ||
	    (rc = kvp_gguf_add_u32(w, "general.file_type", o->dtype->ftype)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "context_length"), o->ctx)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "embedding_length"), o->dim)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "block_count"), o->layers)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "feed_forward_length"), o->ffn)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "attention.head_count"), o->heads)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "attention.head_count_kv"), o->kv_heads)) ||
	    (rc = kvp_gguf_add_f32(w, akey(b, "attention.layer_norm_rms_epsilon"), 1e-5f)) ||
	    (rc = kvp_gguf_add_u32(w, akey(b, "rope.dimension_count"), o->dim / o->heads)) ||
	    (rc = kvp_gguf_add_f32(w, akey(b, "rope.freq_base"), ROPE_BASE)))
		return rc;
	if (o->rope == ROPE_LINEAR &&
	    ((rc = kvp_gguf_add_str(w, akey(b, "rope.scaling.type"), "linear")) ||
	     (rc = kvp_gguf_add_f32(w, akey(b, "rope.scaling.factor"), o->rope_factor))))
		return rc;
	if ((rc = kvp_gguf_add_u32(w, akey(b, "vocab_size"), o->vocab)) ||
	    (rc = kvp_gguf_add_str(w, "tokenizer.ggml.model", "llama")) ||
	    (rc = kvp_gguf_add_str_array(w, "tokenizer.ggml.tokens", v->tok, o->vocab)) ||
	    (rc = kvp_gguf_add_f32_array(w, "tokenizer.ggml.scores", v->score, o->vocab)) ||
	    (rc = kvp_gguf_add_i32_array(w, "tokenizer.ggml.token_type", v->type, o->vocab)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.unknown_token_id", 0)))
		return rc;
	return 0;
}

static int add_layer(struct builder *b, uint32_t l)
{
	const struct opts *o = b->o;
	const uint32_t hd = o->dim / o->heads, q = o->heads * hd, kv = o->kv_heads * hd;
	/* the 7 matrices: name, ne0 (the row, the input), ne1 (the output) */
	static const char *const what[7] = {
		"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
	};
	const uint64_t shape[7][2] = {
		{ o->dim, q }, { o->dim, kv }, { o->dim, kv }, { q, o->dim },
		{ o->dim, o->ffn }, { o->dim, o->ffn }, { o->ffn, o->dim },
	};
	char name[64];
	int rc;

	for (int m = 0; m < 7; m++) {
		if (m == 0 || m == 4) {   /* each half begins with its norm */
			snprintf(name, sizeof(name), "blk.%u.%s_norm.weight", l, m ? "ffn" : "attn");
			if ((rc = add_norm(b, name, o->dim)))
				return rc;
		}
		snprintf(name, sizeof(name), "blk.%u.%s.weight", l, what[m]);
		if ((rc = add_matrix(b, name, what[m], shape[m][0], shape[m][1])))
			return rc;
		snprintf(name, sizeof(name), "blk.%u.%s.bias", l, what[m]);
		if (has_bias(o, m) && (rc = add_bias(b, name, shape[m][1])))
			return rc;
	}
	return 0;
}

/* rope_freqs: the values, rope_dim / 2 of them, must live until the file is written. */
static int build(struct builder *b, const struct vocab *v, const char *name, const float *rope_freqs)
{
	const struct opts *o = b->o;
	int rc;

	if ((rc = add_keys(b, v, name)))
		return rc;
	if ((rc = add_matrix(b, "token_embd.weight", "token_embd", o->dim, o->vocab)) ||
	    (rc = add_norm(b, "output_norm.weight", o->dim)))
		return rc;
	if (!o->tied && (rc = add_matrix(b, "output.weight", "output", o->dim, o->vocab)))
		return rc;
	if (rope_freqs) {
		const uint64_t ne = o->dim / o->heads / 2;

		if ((rc = kvp_gguf_add_tensor(b->w, "rope_freqs.weight", 1, &ne, KVP_GGML_F32,
					      rope_freqs)))
			return rc;
	}
	for (uint32_t l = 0; l < o->layers; l++)
		if ((rc = add_layer(b, l)))
			return rc;
	return 0;
}

/* ---- options ---------------------------------------------------------------------- */

static int parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!s || !*s || *s == '-' || *s == '+') {
		fprintf(stderr, PROG ": --%s wants a number, got '%s'\n", opt, s ? s : "");
		return -1;
	}
	v = strtoull(s, &end, 10);
	if (errno || *end) {
		fprintf(stderr, PROG ": --%s wants a number, got '%s'\n", opt, s);
		return -1;
	}
	if (v < lo || v > hi) {
		fprintf(stderr, PROG ": --%s %llu is out of range (%llu to %llu)\n", opt, v,
			(unsigned long long)lo, (unsigned long long)hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	uint64_t v;

	if (parse_u64(opt, s, lo, hi, &v))
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_dtype(const char *s, struct opts *o)
{
	for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
		if (strcmp(s, dtypes[i].name) == 0) {
			o->dtype = &dtypes[i];
			return 0;
		}
	}
	fprintf(stderr, PROG ": --dtype is f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, "
		"q3_k, q4_k, q5_k, q6_k or q4_k_m, not '%s'\n", s);
	return -1;
}

static int parse_arch(const char *s, struct opts *o)
{
	if (strcmp(s, "llama") == 0) {
		o->arch = ARCH_LLAMA;
	} else if (strcmp(s, "qwen2") == 0) {
		o->arch = ARCH_QWEN2;
	} else {
		fprintf(stderr, PROG ": --arch is llama or qwen2, not '%s'\n", s);
		return -1;
	}
	return 0;
}

static int parse_rope_scaling(const char *s, struct opts *o)
{
	char *end;
	double f;

	if (strcmp(s, "none") == 0) {
		o->rope = ROPE_NONE;
		return 0;
	}
	if (strcmp(s, "llama3") == 0) {
		o->rope = ROPE_LLAMA3;
		return 0;
	}
	if (strncmp(s, "linear:", 7) == 0) {
		f = strtod(s + 7, &end);
		if (end != s + 7 && !*end && f > 0.0 && f <= 1024.0) {
			o->rope = ROPE_LINEAR;
			o->rope_factor = (float)f;
			return 0;
		}
		fprintf(stderr, PROG ": --rope-scaling linear:FACTOR wants a factor in (0, 1024], got '%s'\n",
			s + 7);
		return -1;
	}
	fprintf(stderr, PROG ": --rope-scaling is none, linear:FACTOR or llama3, not '%s'\n", s);
	return -1;
}

/* The options that depend on each other; 0 or -1 with a message. */
static int check_args(const struct opts *o)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(o->dtype->type);

	if (!o->out) {
		fprintf(stderr, PROG ": --out FILE is required (see --help)\n");
		return -1;
	}
	if (o->heads > o->dim || o->dim % o->heads) {
		fprintf(stderr, PROG ": --heads %u must divide --dim %u\n", o->heads, o->dim);
		return -1;
	}
	if ((o->dim / o->heads) % 2) {
		fprintf(stderr, PROG ": head dim %u (--dim %u / --heads %u) must be even for rotary embedding\n",
			o->dim / o->heads, o->dim, o->heads);
		return -1;
	}
	if (o->kv_heads > o->heads || o->heads % o->kv_heads) {
		fprintf(stderr, PROG ": --kv-heads %u must divide --heads %u\n", o->kv_heads, o->heads);
		return -1;
	}
	/* a row is whole blocks: every matrix's rows are --dim long but ffn_down's (--ffn);
	 * Q4_K_M's Q6_K has Q4_K's block */
	if (o->dim % t->block_elems) {
		fprintf(stderr, PROG ": --dtype %s: --dim %u must be a multiple of %u (a %s block): "
			"the matrices' rows are --dim long\n", o->dtype->name, o->dim, t->block_elems,
			t->name);
		return -1;
	}
	if (o->ffn % t->block_elems) {
		fprintf(stderr, PROG ": --dtype %s: --ffn %u must be a multiple of %u (a %s block): "
			"ffn_down's rows are --ffn long\n", o->dtype->name, o->ffn, t->block_elems,
			t->name);
		return -1;
	}
	if (o->rope == ROPE_LLAMA3 && o->arch != ARCH_LLAMA) {
		fprintf(stderr, PROG ": --rope-scaling llama3 is Llama 3's (rope_freqs.weight); "
			"--arch %s files have none\n", arch_names[o->arch]);
		return -1;
	}
	if (o->bias && o->arch != ARCH_LLAMA) {
		fprintf(stderr, PROG ": --bias adds the biases llama files may carry; --arch %s "
			"files have their q, k and v biases only\n", arch_names[o->arch]);
		return -1;
	}
	if (o->name && (!*o->name || strlen(o->name) > 255)) {
		fprintf(stderr, PROG ": --name must be 1 to 255 bytes\n");
		return -1;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_VOCAB = 256, O_DIM, O_LAYERS, O_HEADS, O_KV, O_FFN, O_CTX, O_DTYPE, O_SEED, O_STD,
	       O_TIED, O_NAME, O_ARCH, O_BIAS, O_ROPE };
	static const struct option lopts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "vocab", required_argument, NULL, O_VOCAB },
		{ "dim", required_argument, NULL, O_DIM },
		{ "layers", required_argument, NULL, O_LAYERS },
		{ "heads", required_argument, NULL, O_HEADS },
		{ "kv-heads", required_argument, NULL, O_KV },
		{ "ffn", required_argument, NULL, O_FFN },
		{ "ctx", required_argument, NULL, O_CTX },
		{ "dtype", required_argument, NULL, O_DTYPE },
		{ "arch", required_argument, NULL, O_ARCH },
		{ "bias", no_argument, NULL, O_BIAS },
		{ "rope-scaling", required_argument, NULL, O_ROPE },
		{ "seed", required_argument, NULL, O_SEED },
		{ "weight-std", required_argument, NULL, O_STD },
		{ "tied", no_argument, NULL, O_TIED },
		{ "name", required_argument, NULL, O_NAME },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c, bad = 0;

	*o = (struct opts){
		.vocab = 32000, .dim = 512, .layers = 8, .heads = 8, .kv_heads = 4, .ffn = 1536,
		.ctx = 4096, .dtype = &dtypes[0], .seed = 1, .std = WEIGHT_STD,
	};
	while ((c = getopt_long(argc, argv, "o:qh", lopts, NULL)) != -1) {
		switch (c) {
		case 'o': o->out = optarg; break;
		case 'q': o->quiet = true; break;
		case 'h': usage(stdout); exit(0);
		case O_VOCAB: bad |= parse_u32("vocab", optarg, MIN_VOCAB, MAX_VOCAB, &o->vocab); break;
		case O_DIM: bad |= parse_u32("dim", optarg, 2, MAX_DIM, &o->dim); break;
		case O_LAYERS: bad |= parse_u32("layers", optarg, 1, MAX_LAYERS, &o->layers); break;
		case O_HEADS: bad |= parse_u32("heads", optarg, 1, MAX_DIM, &o->heads); break;
		case O_KV: bad |= parse_u32("kv-heads", optarg, 1, MAX_DIM, &o->kv_heads); break;
		case O_FFN: bad |= parse_u32("ffn", optarg, 1, MAX_DIM, &o->ffn); break;
		case O_CTX: bad |= parse_u32("ctx", optarg, 1, MAX_CTX, &o->ctx); break;
		case O_SEED: bad |= parse_u64("seed", optarg, 0, UINT64_MAX, &o->seed); break;
		case O_TIED: o->tied = true; break;
		case O_BIAS: o->bias = true; break;
		case O_STD: {
			char *end;
			o->std = strtod(optarg, &end);
			if (end == optarg || *end || !(o->std > 0.0) || o->std > 10.0) {
				fprintf(stderr, PROG ": --weight-std wants a number in (0, 10], got '%s'\n",
					optarg);
				bad = 1;
			}
			break;
		}
		case O_NAME: o->name = optarg; break;
		case O_DTYPE: bad |= parse_dtype(optarg, o); break;
		case O_ARCH: bad |= parse_arch(optarg, o); break;
		case O_ROPE: bad |= parse_rope_scaling(optarg, o); break;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (bad)
		return -1;
	if (optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return check_args(o);
}

int main(int argc, char **argv)
{
	struct kvp_gguf_writer *w = NULL;
	struct progress prog = { .last_pct = -1 };
	struct vocab v = { 0 };
	struct gen *gens = NULL;
	float *rope_freqs = NULL;
	struct builder b;
	struct timespec t1;
	struct opts o;
	struct stat st;
	char err[512], name[64];
	uint64_t params;
	double secs;
	int rc, status = 1;

	if (parse_args(argc, argv, &o))
		return 2;
	params = n_params(&o);
	if (params >= 1000000000ull)
		snprintf(name, sizeof(name), "kvprefix-random-%.1fB", (double)params / 1e9);
	else
		snprintf(name, sizeof(name), "kvprefix-random-%.0fM", (double)params / 1e6);

	clock_gettime(CLOCK_MONOTONIC, &prog.t0);
	/* token_embd, output_norm, output; per layer 2 norms, 7 matrices, 7 biases */
	gens = calloc(3 + 16 * (size_t)o.layers, sizeof(*gens));
	if (o.rope == ROPE_LLAMA3 && (rope_freqs = malloc(o.dim / o.heads / 2 * sizeof(float))))
		llama3_rope_factors(rope_freqs, o.dim / o.heads, ROPE_BASE);
	if (!gens || (o.rope == ROPE_LLAMA3 && !rope_freqs) || vocab_build(&v, o.vocab) ||
	    kvp_gguf_writer_new(&w)) {
		fprintf(stderr, PROG ": out of memory\n");
		goto out;
	}
	b = (struct builder){ .w = w, .o = &o, .next = gens, .prog = &prog };
	rc = build(&b, &v, o.name ? o.name : name, rope_freqs);
	if (rc) {
		fprintf(stderr, PROG ": building the file: %s\n", kvp_strerror(rc));
		goto out;
	}
	prog.on = !o.quiet && prog.total >= PROGRESS_MIN_BYTES;
	rc = kvp_gguf_write(w, o.out, err, sizeof(err));
	if (rc) {
		fprintf(stderr, PROG ": %s\n", err);
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - prog.t0.tv_sec) + (double)(t1.tv_nsec - prog.t0.tv_nsec) / 1e9;
	if (!o.quiet)
		printf("%s: %s, %" PRIu64 " parameters, %s, %lld bytes, %.2f s\n", o.out,
		       o.name ? o.name : name, params, o.dtype->name,
		       stat(o.out, &st) == 0 ? (long long)st.st_size : -1LL, secs);
	status = 0;
out:
	kvp_gguf_writer_free(w);
	vocab_free(&v);
	free(rope_freqs);
	free(gens);
	return status;
}
