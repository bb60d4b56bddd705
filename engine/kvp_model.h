/*
 * kvp_model.h - a llama-family model loaded from GGUF: flat config and weights
 * (llama2.c style). All weights are f32 in memory: f32 tensors point into the file
 * mapping, f16/bf16 tensors are converted once at load into one owned buffer.
 *
 * Semantics follow llama.cpp on the same file: RMSNorm with
 * llama.attention.layer_norm_rms_epsilon, rotary embedding on adjacent pairs
 * (x[2i], x[2i+1]) over llama.rope.dimension_count dims with llama.rope.freq_base,
 * grouped-query attention, SiLU-gated FFN, output head tied to token_embd when
 * output.weight is absent.
 *
 * Threading: a loaded model is immutable and may be shared by threads.
 */
#ifndef KVP_MODEL_H
#define KVP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

struct kvp_gguf;

struct kvp_model_config {
	uint32_t vocab;
	uint32_t dim;          /* llama.embedding_length */
	uint32_t n_layers;     /* llama.block_count */
	uint32_t n_heads;      /* llama.attention.head_count */
	uint32_t n_kv_heads;   /* llama.attention.head_count_kv (default n_heads) */
	uint32_t head_dim;     /* dim / n_heads */
	uint32_t ffn;          /* llama.feed_forward_length */
	uint32_t ctx;          /* llama.context_length */
	uint32_t rope_dim;     /* llama.rope.dimension_count (default head_dim) */
	float rms_eps;         /* llama.attention.layer_norm_rms_epsilon (default 1e-5) */
	float rope_base;       /* llama.rope.freq_base (default 10000) */
	uint32_t file_type;    /* enum kvp_ggml_type of the big matrices in the file */
	bool tied_output;      /* no output.weight: logits use token_embd */
	uint64_t n_params;
	char name[256];        /* general.name, or the file name */
};

struct kvp_layer_weights {
	const float *attn_norm;   /* (dim) */
	const float *wq;          /* (n_heads * head_dim, dim)  row = output feature */
	const float *wk;          /* (n_kv_heads * head_dim, dim) */
	const float *wv;          /* (n_kv_heads * head_dim, dim) */
	const float *wo;          /* (dim, n_heads * head_dim) */
	const float *ffn_norm;    /* (dim) */
	const float *w_gate;      /* (ffn, dim) */
	const float *w_up;        /* (ffn, dim) */
	const float *w_down;      /* (dim, ffn) */
};

struct kvp_model {
	struct kvp_model_config cfg;
	const float *tok_embd;              /* (vocab, dim) */
	struct kvp_layer_weights *layers;   /* (n_layers) */
	const float *output_norm;           /* (dim) */
	const float *output;                /* (vocab, dim); == tok_embd when tied */
	struct kvp_gguf *file;
	void *owned;                        /* converted weights, freed with the model */
};

/* Load path. On failure a negative status and a one-line reason in err naming the key
 * or tensor at fault (missing, wrong shape, unsupported type, bad value). */
int kvp_model_load(const char *path, struct kvp_model **out, char *err, size_t errlen);
void kvp_model_free(struct kvp_model *m);

/* Is every token id of tokens[0..n) in the vocabulary? 0, or KVP_EINVAL with the
 * position of the first that is not in *bad (may be NULL). The one check of token ids:
 * the engine runs it on every batch, the daemon on a request to say which one. */
int kvp_model_check_tokens(const struct kvp_model *m, const uint32_t *tokens, size_t n,
			   size_t *bad);

#endif
