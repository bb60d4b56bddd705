/*
 * kvp_model.h - a llama-family model loaded from GGUF: flat config and weights
 * (llama2.c style), the weight matrices in their file form.
 *
 * Matrices (the seven of each layer, the embedding, the output head) stay as the file
 * stores them, F32, F16, BF16 or a ggml block type (kvp_quant.h), pointing into the
 * read-only mapping: nothing is widened at load, so a model takes about its file's
 * size. Vectors (norms, biases, rope frequency factors) are f32, converted once into an
 * owned buffer where the file stores them otherwise (they are small).
 *
 * Architectures: `llama` (and the files of models that are llama with other names,
 * Mistral's) and `qwen2`. Semantics follow llama.cpp on the same file: RMSNorm,
 * rotary embedding on adjacent pairs (llama) or on the two halves (qwen2) over
 * rope_dim dims, optionally scaled (linear: positions divided by rope_scale; per-pair
 * frequency factors from rope_freqs.weight, as Llama 3 files carry), grouped-query
 * attention, optional biases after the attention and FFN projections (qwen2 always has
 * q/k/v biases), SiLU-gated FFN, output head tied to token_embd when output.weight is
 * absent. Anything a file asks for that the engine does not compute exactly is refused
 * at load, naming the key or tensor: other architectures, experts, other rope scaling
 * types, per-layer sizes that differ, a split file, a tensor the engine would not use.
 * A sliding-window model runs with its context cut to the window, where full attention
 * and sliding-window attention are the same computation.
 *
 * Threading: a loaded model is immutable and may be shared by threads.
 */
#ifndef KVP_MODEL_H
#define KVP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_quant.h"
#include "kvp_status.h"

struct kvp_gguf;

enum kvp_arch { KVP_ARCH_LLAMA = 0, KVP_ARCH_QWEN2 = 1 };

/* How rotary embedding pairs the dims of a head. */
enum kvp_rope_style {
	KVP_ROPE_ADJACENT = 0,   /* (x[2i], x[2i+1]): llama files */
	KVP_ROPE_HALVES = 1,     /* (x[i], x[i + rope_dim/2]): qwen2 ("neox") */
};

/* A matrix of rows x cols elements (cols the fastest), in the file's type. */
struct kvp_tensor {
	const void *data;         /* inside the mapping */
	uint32_t type;            /* enum kvp_ggml_type */
	uint32_t rows, cols;
	size_t row_bytes;         /* kvp_ggml_row_bytes(type, cols) */
};

struct kvp_model_config {
	enum kvp_arch arch;
	char arch_name[16];     /* general.architecture */
	uint32_t vocab;
	uint32_t dim;          /* <arch>.embedding_length */
	uint32_t n_layers;     /* <arch>.block_count */
	uint32_t n_heads;      /* <arch>.attention.head_count (a uniform per-layer array too) */
	uint32_t n_kv_heads;   /* <arch>.attention.head_count_kv (default n_heads) */
	uint32_t head_dim;     /* dim / n_heads */
	uint32_t ffn;          /* <arch>.feed_forward_length */
	uint32_t ctx;          /* <arch>.context_length, or the sliding window when shorter */
	uint32_t ctx_file;     /* <arch>.context_length as the file says */
	uint32_t rope_dim;     /* <arch>.rope.dimension_count (default head_dim) */
	float rms_eps;         /* <arch>.attention.layer_norm_rms_epsilon (default 1e-5) */
	float rope_base;       /* <arch>.rope.freq_base (default 10000) */
	enum kvp_rope_style rope_style;
	float rope_scale;      /* linear scaling: positions divided by it; 1: none */
	bool rope_freq_factors;   /* rope_freqs.weight divides each pair's frequency */
	bool attn_bias;        /* q, k, v (and perhaps output) projection biases */
	bool ffn_bias;         /* gate, up, down biases */
	uint32_t file_type;    /* enum kvp_ggml_type of blk.0.attn_q.weight */
	bool tied_output;      /* no output.weight: logits use token_embd */
	uint64_t n_params;
	uint64_t weight_bytes; /* bytes of every tensor the engine reads, in the file */
	uint32_t type_count[32];   /* tensors of each ggml type id (below 32) */
	char name[256];        /* general.name, or the file name */
};

struct kvp_layer_weights {
	const float *attn_norm;   /* (dim) */
	struct kvp_tensor wq;     /* (n_heads * head_dim, dim)  row = output feature */
	struct kvp_tensor wk;     /* (n_kv_heads * head_dim, dim) */
	struct kvp_tensor wv;     /* (n_kv_heads * head_dim, dim) */
	struct kvp_tensor wo;     /* (dim, n_heads * head_dim) */
	const float *ffn_norm;    /* (dim) */
	struct kvp_tensor w_gate; /* (ffn, dim) */
	struct kvp_tensor w_up;   /* (ffn, dim) */
	struct kvp_tensor w_down; /* (dim, ffn) */
	/* biases, added after each projection; NULL when the file has none */
	const float *bq, *bk, *bv, *bo;          /* (q_dim), (kv_dim), (kv_dim), (dim) */
	const float *b_gate, *b_up, *b_down;     /* (ffn), (ffn), (dim) */
};

struct kvp_model {
	struct kvp_model_config cfg;
	struct kvp_tensor tok_embd;         /* (vocab, dim) */
	struct kvp_layer_weights *layers;   /* (n_layers) */
	const float *output_norm;           /* (dim) */
	struct kvp_tensor output;           /* (vocab, dim); == tok_embd when tied */
	const float *rope_freqs;            /* (rope_dim / 2) frequency factors, or NULL */
	struct kvp_gguf *file;
	void *owned;                        /* converted vectors, freed with the model */
};

/* Load path. On failure a negative status and a one-line reason in err naming the key
 * or tensor at fault (missing, wrong shape, unsupported type or feature, bad value). */
int kvp_model_load(const char *path, struct kvp_model **out, char *err, size_t errlen);
void kvp_model_free(struct kvp_model *m);

/* Is every token id of tokens[0..n) in the vocabulary? 0, or KVP_EINVAL with the
 * position of the first that is not in *bad (may be NULL). The one check of token ids:
 * the engine runs it on every batch, the daemon on a request to say which one. */
int kvp_model_check_tokens(const struct kvp_model *m, const uint32_t *tokens, size_t n,
			   size_t *bad);

/* The angle per position of rotary pair i (0 .. rope_dim/2 - 1), in double:
 * base^(-2i / rope_dim) / factor_i / rope_scale (factor_i from rope_freqs.weight, 1
 * without). Pair i at position p turns by p * kvp_model_rope_freq(m, i): the one
 * definition the backends and the tests compute rotary embedding from. */
double kvp_model_rope_freq(const struct kvp_model *m, uint32_t i);

#endif
