/*
 * model_impl.h - private to the model loader (model.c, model_config.c,
 * model_tensors.c): the steps of kvp_model_load and what they share.
 *
 *   kvp_gguf_open        the file is well formed (gguf.c)
 *   model_read_config    the architecture, its keys, what it asks of the engine; a
 *                        feature the engine does not compute is refused, naming it
 *   model_bind           every tensor the config implies, with its exact shape and a
 *                        type the kernels take; matrices used in place, vectors made
 *                        f32; a tensor left over is refused, naming it
 */
#ifndef KVP_MODEL_IMPL_H
#define KVP_MODEL_IMPL_H

#include <stddef.h>

#include "kvp_gguf.h"
#include "kvp_model.h"

/* Sanity bounds: far above any llama model, low enough that every product fits. */
#define MODEL_MAX_DIM (1u << 20)        /* dim, ffn, n_heads * head_dim */
#define MODEL_MAX_VOCAB (1u << 24)
#define MODEL_MAX_LAYERS 4096u
#define MODEL_MAX_CTX (1u << 24)
#define MODEL_DEFAULT_EPS 1e-5f
#define MODEL_DEFAULT_ROPE_BASE 10000.0f
#define MODEL_ALIGN 64u

#ifndef KVP_MODEL_CALLOC
#define KVP_MODEL_CALLOC(n, s) calloc(n, s)
#define KVP_MODEL_ALIGNED_ALLOC(a, n) aligned_alloc(a, n)
#define KVP_MODEL_FREE(p) free(p)
#endif

/* Write a one-line reason into err (may be NULL) and return status. */
int model_fail(char *err, size_t errlen, int status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Copy at most dstlen - 1 bytes, printable ASCII and UTF-8 kept, control bytes as '?'. */
void model_copy_name(char *dst, size_t dstlen, const char *s, size_t n);

/* The "<arch>.<rest>" key of the model's architecture, in buf. */
const char *model_key(const struct kvp_model *m, const char *rest, char *buf, size_t cap);

int model_read_config(struct kvp_model *m, const char *path, char *err, size_t errlen);
int model_bind(struct kvp_model *m, char *err, size_t errlen);

#endif
