/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader and the model loader
 * (engine/kvp_gguf.h, engine/kvp_model.h).
 *
 * Both take a path, so the input is written to one memfd (created once, rewritten
 * for each input) and opened as /proc/self/fd/N:
 *
 *     input --> memfd --> kvp_gguf_open   then every getter and every tensor's bytes
 *                     --> kvp_model_load  then every weight pointer's first and last float
 *
 * Nothing may crash, trip ASan/UBSan or leak (libFuzzer's leak check), whatever the
 * bytes. Built with KVP_SANITIZE the reader copies the file to an exact-size heap
 * buffer instead of mapping it, so touching a byte past the end of a tensor's data is
 * an ASan report.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* memfd_create; CMake defines it for the whole project */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvp_gguf.h"
#include "kvp_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char memfd_path[64];
static volatile uint64_t sink;   /* keeps the reads below from being optimised away */

static const char *const keys[] = {
	"general.architecture", "general.name", "general.alignment", "general.file_type",
	"llama.context_length", "llama.embedding_length", "llama.block_count",
	"llama.feed_forward_length", "llama.attention.head_count",
	"llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon",
	"llama.rope.dimension_count", "llama.rope.freq_base", "llama.vocab_size",
	"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
	"tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "", "z",
};

static void write_input(const uint8_t *data, size_t size)
{
	size_t done = 0;

	if (memfd < 0) {
		memfd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
		if (memfd < 0) {
			perror("fuzz_gguf: memfd_create");
			abort();
		}
		snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	}
	if (ftruncate(memfd, 0) != 0)
		abort();
	while (done < size) {
		ssize_t w = pwrite(memfd, data + done, size - done, (off_t)done);

		if (w <= 0)
			abort();
		done += (size_t)w;
	}
}

static void touch(const void *p, uint64_t nbytes)
{
	const uint8_t *b = p;

	if (nbytes)
		sink += b[0] + b[nbytes - 1];
}

static void poke_gguf(const struct kvp_gguf *g)
{
	size_t n = kvp_gguf_n_tensors(g);

	sink += kvp_gguf_version(g);
	for (size_t i = 0; i < n; i++) {
		const struct kvp_gguf_tensor *t = kvp_gguf_tensor_at(g, i);

		if (!t || kvp_gguf_find_tensor(g, t->name) == NULL)
			abort();   /* every tensor is found by its own name */
		touch(t->data, t->nbytes);
		sink += strlen(t->name);
	}
	if (kvp_gguf_tensor_at(g, n) != NULL)
		abort();
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		uint32_t u, et;
		uint64_t cnt;
		float f;
		const char *s;
		size_t len;

		if (kvp_gguf_get_u32(g, keys[i], &u) == 0)
			sink += u;
		if (kvp_gguf_get_f32(g, keys[i], &f) == 0)
			sink += (uint64_t)(f == f);
		if (kvp_gguf_get_str(g, keys[i], &s, &len) == 0)
			touch(s, len);
		if (kvp_gguf_get_arr(g, keys[i], &et, &cnt) == 0)
			sink += et + cnt;
	}
}

static void touch_tensor(const struct kvp_tensor *t)
{
	touch(t->data, (uint64_t)t->rows * t->row_bytes);
}

static void touch_bias(const float *b, uint64_t n)
{
	if (b)
		touch(b, n * sizeof(float));
}

static void poke_model(const struct kvp_model *m)
{
	const struct kvp_model_config *c = &m->cfg;
	uint64_t q = (uint64_t)c->n_heads * c->head_dim, kv = (uint64_t)c->n_kv_heads * c->head_dim;

	touch_tensor(&m->tok_embd);
	touch_tensor(&m->output);
	touch(m->output_norm, c->dim * sizeof(float));
	touch_bias(m->rope_freqs, c->rope_dim / 2);
	for (uint32_t l = 0; l < c->n_layers; l++) {
		const struct kvp_layer_weights *w = &m->layers[l];

		touch(w->attn_norm, c->dim * sizeof(float));
		touch(w->ffn_norm, c->dim * sizeof(float));
		touch_tensor(&w->wq);
		touch_tensor(&w->wk);
		touch_tensor(&w->wv);
		touch_tensor(&w->wo);
		touch_tensor(&w->w_gate);
		touch_tensor(&w->w_up);
		touch_tensor(&w->w_down);
		touch_bias(w->bq, q);
		touch_bias(w->bk, kv);
		touch_bias(w->bv, kv);
		touch_bias(w->bo, c->dim);
		touch_bias(w->b_gate, c->ffn);
		touch_bias(w->b_up, c->ffn);
		touch_bias(w->b_down, c->dim);
		if (w->wq.rows != q || w->wq.cols != c->dim || w->wk.rows != kv ||
		    w->w_down.rows != c->dim || w->w_down.cols != c->ffn)
			abort();   /* the loader promised these shapes */
	}
	if (c->head_dim * c->n_heads != c->dim || c->n_kv_heads == 0 ||
	    c->n_heads % c->n_kv_heads || c->rope_dim > c->head_dim)
		abort();   /* the loader promised a consistent config */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvp_gguf *g = NULL;
	struct kvp_model *m = NULL;
	char err[256];

	write_input(data, size);

	if (kvp_gguf_open(memfd_path, &g, err, sizeof(err)) == 0) {
		poke_gguf(g);
		kvp_gguf_close(g);
	} else if (g != NULL || strnlen(err, sizeof(err)) == sizeof(err)) {
		abort();   /* failure leaves *out NULL and a terminated message */
	}

	if (kvp_model_load(memfd_path, &m, err, sizeof(err)) == 0) {
		poke_model(m);
		kvp_model_free(m);
	} else if (m != NULL) {
		abort();
	}
	return 0;
}
