/*
 * kvprefix-mkmodel.c - write a random-weight llama model as GGUF, for tests and
 * benchmarks (the project never downloads weights).
 *
 *   kvprefix-mkmodel --out FILE [--vocab N] [--dim N] [--layers N] [--heads N]
 *                    [--kv-heads N] [--ffn N] [--ctx N] [--dtype f32|f16|bf16]
 *                    [--seed N] [--tied] [--name NAME] [--quiet]
 *
 * The file carries the keys and tensors llama.cpp reads for architecture "llama" and a
 * made-up SentencePiece-style vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then
 * one piece "▁t<id>" per id), so llama.cpp loads it as well as kvprefixd. A vocabulary
 * smaller than 259 leaves the byte tokens out (<unk>, <s>, </s>, then pieces): kvprefixd
 * computes with it as with any other, which lets a protocol example show every logit;
 * llama.cpp's tokenizer then has no byte fallback.
 *
 * Weights are a pure function of (seed, tensor name, element index): a counter-based
 * generator (splitmix64), so the same arguments give the same bytes on any machine, and
 * each tensor is produced chunk by chunk while it is written (kvp_gguf_add_tensor_fill):
 * memory stays at a few MiB plus the vocabulary whatever the model size.
 *
 *   matrices  uniform in [-a, a], a = 0.02 * sqrt(3)   (std 0.02, as GPT-2 initialises)
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
#include "kvp_half.h"

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
#define PROGRESS_MIN_BYTES (256ull << 20)

/* llama.cpp's token types and file types */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };
enum { FTYPE_F32 = 0, FTYPE_F16 = 1, FTYPE_BF16 = 32 };

struct opts {
	const char *out;
	const char *name;
	uint32_t vocab, dim, layers, heads, kv_heads, ffn, ctx;
	enum kvp_ggml_type dtype;
	uint64_t seed;
	double std;
	bool tied, quiet;
};

/* Progress over the whole file's tensor data, printed on stderr for big models. */
struct progress {
	uint64_t total, done;
	int last_pct;
	bool on;
	struct timespec t0;
};

/* One tensor's generator: the fill callback's context. */
struct gen {
	uint64_t key;
	enum kvp_ggml_type type;
	bool norm;
	double std;                  /* of the matrices' values */
	struct progress *prog;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " --out FILE [options]\n"
		"Write a llama-architecture GGUF model with random weights (loads in kvprefixd\n"
		"and llama.cpp). The same options give the same bytes.\n"
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
		"      --dtype T         f32, f16 or bf16 for the matrices; norms are f32 (default f32)\n"
		"      --seed N          weight seed (default 1)\n"
		"      --weight-std S    spread of the matrices' values (default 0.02); larger\n"
		"                        values give sharper attention, useful in tests\n"
		"      --tied            no output.weight: logits use token_embd\n"
		"      --name NAME       general.name (default kvprefix-random-<params>)\n"
		"  -q, --quiet           print nothing on success\n"
		"  -h, --help            show this help\n"
		"\n"
		"The defaults make a ~58M parameter model (232 MB in f32). A ~1B one:\n"
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

static int fill(void *ctx, void *dst, uint64_t off, size_t n)
{
	const struct gen *g = ctx;
	/* scale * u is exact in double (24-bit by 24-bit), so the result is the same
	 * whether or not the compiler contracts it into an FMA: same bytes everywhere */
	const double scale = g->norm ? (double)(float)NORM_SPREAD
				     : (double)(float)(g->std * 1.7320508075688772);
	const double bias = g->norm ? 1.0 : 0.0;
	size_t es = g->type == KVP_GGML_F32 ? 4 : 2, count = n / es;
	uint64_t first = off / es;
	float v[256];

	/* values in runs of 256 (a loop the compiler vectorises), then stored as the type */
	for (size_t i = 0; i < count; i += 256) {
		size_t k = count - i < 256 ? count - i : 256;

		for (size_t j = 0; j < k; j++)
			v[j] = (float)(bias + scale * (double)uniform(g->key, first + i + j));
		switch (g->type) {
		case KVP_GGML_F32:
			memcpy((char *)dst + 4 * i, v, 4 * k);
			break;
		case KVP_GGML_F16:
			for (size_t j = 0; j < k; j++)
				((uint16_t *)dst)[i + j] = kvp_f32_to_f16(v[j]);
			break;
		case KVP_GGML_BF16:
			for (size_t j = 0; j < k; j++)
				((uint16_t *)dst)[i + j] = kvp_f32_to_bf16(v[j]);
			break;
		default:
			break;   /* mkmodel writes only the types of --dtype */
		}
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

static uint64_t n_params(const struct opts *o)
{
	uint64_t hd = o->dim / o->heads, q = (uint64_t)o->heads * hd, kv = (uint64_t)o->kv_heads * hd;
	uint64_t layer = 2ull * o->dim + 2 * q * o->dim + 2 * kv * o->dim + 3ull * o->dim * o->ffn;

	return (uint64_t)o->vocab * o->dim * (o->tied ? 1 : 2) + layer * o->layers + o->dim;
}

static int add_tensor(struct kvp_gguf_writer *w, struct gen *g, const struct opts *o,
		      struct progress *prog, const char *name, uint64_t ne0, uint64_t ne1)
{
	uint64_t ne[2] = { ne0, ne1 };

	g->key = name_key(o->seed, name);
	g->norm = ne1 == 0;
	g->std = o->std;
	g->type = g->norm ? KVP_GGML_F32 : o->dtype;
	g->prog = prog;
	prog->total += ne0 * (ne1 ? ne1 : 1) * (g->type == KVP_GGML_F32 ? 4 : 2);
	return kvp_gguf_add_tensor_fill(w, name, ne1 ? 2 : 1, ne, g->type, fill, g);
}

static int build(struct kvp_gguf_writer *w, const struct opts *o, struct vocab *v, struct gen *gens,
		 struct progress *prog, const char *name)
{
	uint32_t hd = o->dim / o->heads, q = o->heads * hd, kv = o->kv_heads * hd;
	uint32_t ftype = o->dtype == KVP_GGML_F16 ? FTYPE_F16 : o->dtype == KVP_GGML_BF16 ? FTYPE_BF16 : FTYPE_F32;
	struct gen *g = gens;
	char tname[64];
	int rc;

	if ((rc = kvp_gguf_add_str(w, "general.architecture", "llama")) ||
	    (rc = kvp_gguf_add_str(w, "general.name", name)) ||
	    (rc = kvp_gguf_add_u32(w, "general.alignment", 32)) ||
	    (rc = kvp_gguf_add_u32(w, "general.file_type", ftype)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.context_length", o->ctx)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.embedding_length", o->dim)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.block_count", o->layers)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.feed_forward_length", o->ffn)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.attention.head_count", o->heads)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.attention.head_count_kv", o->kv_heads)) ||
	    (rc = kvp_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.rope.dimension_count", hd)) ||
	    (rc = kvp_gguf_add_f32(w, "llama.rope.freq_base", 10000.0f)) ||
	    (rc = kvp_gguf_add_u32(w, "llama.vocab_size", o->vocab)) ||
	    (rc = kvp_gguf_add_str(w, "tokenizer.ggml.model", "llama")) ||
	    (rc = kvp_gguf_add_str_array(w, "tokenizer.ggml.tokens", v->tok, o->vocab)) ||
	    (rc = kvp_gguf_add_f32_array(w, "tokenizer.ggml.scores", v->score, o->vocab)) ||
	    (rc = kvp_gguf_add_i32_array(w, "tokenizer.ggml.token_type", v->type, o->vocab)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
	    (rc = kvp_gguf_add_u32(w, "tokenizer.ggml.unknown_token_id", 0)))
		return rc;

	if ((rc = add_tensor(w, g++, o, prog, "token_embd.weight", o->dim, o->vocab)) ||
	    (rc = add_tensor(w, g++, o, prog, "output_norm.weight", o->dim, 0)))
		return rc;
	if (!o->tied && (rc = add_tensor(w, g++, o, prog, "output.weight", o->dim, o->vocab)))
		return rc;
	for (uint32_t l = 0; l < o->layers; l++) {
		static const char *const what[9] = {
			"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
			"ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
		};
		const uint64_t shape[9][2] = {
			{ o->dim, 0 }, { o->dim, q }, { o->dim, kv }, { o->dim, kv }, { q, o->dim },
			{ o->dim, 0 }, { o->dim, o->ffn }, { o->dim, o->ffn }, { o->ffn, o->dim },
		};

		for (int k = 0; k < 9; k++) {
			snprintf(tname, sizeof(tname), "blk.%u.%s.weight", l, what[k]);
			if ((rc = add_tensor(w, g++, o, prog, tname, shape[k][0], shape[k][1])))
				return rc;
		}
	}
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

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_VOCAB = 256, O_DIM, O_LAYERS, O_HEADS, O_KV, O_FFN, O_CTX, O_DTYPE, O_SEED, O_STD,
	       O_TIED, O_NAME };
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
		.ctx = 4096, .dtype = KVP_GGML_F32, .seed = 1, .std = WEIGHT_STD,
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
		case O_DTYPE:
			if (strcmp(optarg, "f32") == 0) {
				o->dtype = KVP_GGML_F32;
			} else if (strcmp(optarg, "f16") == 0) {
				o->dtype = KVP_GGML_F16;
			} else if (strcmp(optarg, "bf16") == 0) {
				o->dtype = KVP_GGML_BF16;
			} else {
				fprintf(stderr, PROG ": --dtype is f32, f16 or bf16, not '%s'\n", optarg);
				bad = -1;
			}
			break;
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
	if (o->name && (!*o->name || strlen(o->name) > 255)) {
		fprintf(stderr, PROG ": --name must be 1 to 255 bytes\n");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct kvp_gguf_writer *w = NULL;
	struct progress prog = { .last_pct = -1 };
	struct vocab v = { 0 };
	struct gen *gens = NULL;
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
	gens = calloc(3 + 9 * (size_t)o.layers, sizeof(*gens));
	if (!gens || vocab_build(&v, o.vocab) || kvp_gguf_writer_new(&w)) {
		fprintf(stderr, PROG ": out of memory\n");
		goto out;
	}
	rc = build(w, &o, &v, gens, &prog, o.name ? o.name : name);
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
		       o.name ? o.name : name, params,
		       o.dtype == KVP_GGML_F16 ? "f16" : o.dtype == KVP_GGML_BF16 ? "bf16" : "f32",
		       stat(o.out, &st) == 0 ? (long long)st.st_size : -1LL, secs);
	status = 0;
out:
	kvp_gguf_writer_free(w);
	vocab_free(&v);
	free(gens);
	return status;
}
