/*
 * kvp_gguf.h - GGUF v3 files: a validating reader over mmap, and a writer.
 *
 * The reader maps the file read-only, parses the header, every metadata key/value and
 * every tensor descriptor, and checks each count, string length, offset and size
 * against the file before anything is returned: a truncated or corrupted file is
 * refused with a message that names the key or tensor at fault, never a crash.
 * Tensor data pointers point into the mapping and live until kvp_gguf_close.
 *
 * Threading: a parsed file is immutable; any thread may read it.
 */
#ifndef KVP_GGUF_H
#define KVP_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvp_quant.h"
#include "kvp_status.h"

/* ggml tensor types (enum kvp_ggml_type) and their layouts: kvp_quant.h. A tensor of a
 * type without a known layout is refused at open, naming the type. */

/* GGUF metadata value types (values as in the GGUF spec). */
enum kvp_gguf_vtype {
	KVP_GGUF_U8 = 0, KVP_GGUF_I8 = 1, KVP_GGUF_U16 = 2, KVP_GGUF_I16 = 3,
	KVP_GGUF_U32 = 4, KVP_GGUF_I32 = 5, KVP_GGUF_F32 = 6, KVP_GGUF_BOOL = 7,
	KVP_GGUF_STRING = 8, KVP_GGUF_ARRAY = 9, KVP_GGUF_U64 = 10, KVP_GGUF_I64 = 11,
	KVP_GGUF_F64 = 12,
};

#define KVP_GGUF_MAX_DIMS 4

struct kvp_gguf_tensor {
	const char *name;                 /* NUL-terminated copy */
	uint32_t n_dims;
	uint64_t ne[KVP_GGUF_MAX_DIMS];   /* ne[0] is the fastest-varying dimension */
	uint32_t type;                    /* enum kvp_ggml_type, or another ggml type id */
	const void *data;                 /* inside the mapping */
	uint64_t nbytes;
};

struct kvp_gguf;

/* Open and validate path. On failure returns a negative status and writes a one-line
 * reason into err (which names the key or tensor at fault where there is one). */
int kvp_gguf_open(const char *path, struct kvp_gguf **out, char *err, size_t errlen);
void kvp_gguf_close(struct kvp_gguf *g);

uint32_t kvp_gguf_version(const struct kvp_gguf *g);
size_t kvp_gguf_n_tensors(const struct kvp_gguf *g);
const struct kvp_gguf_tensor *kvp_gguf_tensor_at(const struct kvp_gguf *g, size_t i);
const struct kvp_gguf_tensor *kvp_gguf_find_tensor(const struct kvp_gguf *g, const char *name);

/* Metadata getters: KVP_ENOTFOUND if the key is absent, KVP_EINVAL if its type does not
 * convert (u32 accepts any integer type whose value fits; f32 accepts f32 and f64). */
int kvp_gguf_get_u32(const struct kvp_gguf *g, const char *key, uint32_t *out);
int kvp_gguf_get_f32(const struct kvp_gguf *g, const char *key, float *out);
/* String value: pointer into the mapping (not NUL-terminated) and its length. */
int kvp_gguf_get_str(const struct kvp_gguf *g, const char *key, const char **s, size_t *len);
/* Array value: element type and count. */
int kvp_gguf_get_arr(const struct kvp_gguf *g, const char *key, uint32_t *elem_type,
		     uint64_t *n);
/* Element i of an array of integers, as get_u32 converts a scalar: KVP_ENOTFOUND (no
 * key), KVP_EINVAL (not an array of integers, i past its end, a value that does not
 * fit). */
int kvp_gguf_get_arr_u32(const struct kvp_gguf *g, const char *key, uint64_t i, uint32_t *out);

/* ---- writer ----------------------------------------------------------------- */

/* A writer collects keys (copied when added) and tensors, then writes them in one go.
 * Used by one thread. The adders return 0, KVP_EINVAL (key not 1..65535 bytes, tensor
 * name not 1..64 bytes, n_dims not 1..4, a zero dimension, a type without a layout in
 * kvp_quant.h, a row (ne[0]) that is not whole blocks of its type, or general.alignment
 * other than the u32 32 the writer always uses), KVP_EEXIST
 * (the key or tensor name was already added), KVP_ETOOBIG (over 65,536 keys or
 * tensors) or KVP_ENOMEM; a failed add changes nothing. general.alignment is written
 * whether or not it was added. */
struct kvp_gguf_writer;

int kvp_gguf_writer_new(struct kvp_gguf_writer **out);
void kvp_gguf_writer_free(struct kvp_gguf_writer *w);
int kvp_gguf_add_u32(struct kvp_gguf_writer *w, const char *key, uint32_t v);
int kvp_gguf_add_f32(struct kvp_gguf_writer *w, const char *key, float v);
int kvp_gguf_add_str(struct kvp_gguf_writer *w, const char *key, const char *v);
int kvp_gguf_add_str_array(struct kvp_gguf_writer *w, const char *key, const char *const *v,
			   uint64_t n);
int kvp_gguf_add_f32_array(struct kvp_gguf_writer *w, const char *key, const float *v,
			   uint64_t n);
int kvp_gguf_add_i32_array(struct kvp_gguf_writer *w, const char *key, const int32_t *v,
			   uint64_t n);
/* Add a tensor; data (nbytes for the type and shape) is copied at write time, so it
 * must stay valid until kvp_gguf_write returns. */
int kvp_gguf_add_tensor(struct kvp_gguf_writer *w, const char *name, uint32_t n_dims,
			const uint64_t *ne, enum kvp_ggml_type type, const void *data);
/* Add a tensor whose data is produced at write time, chunk by chunk, so a file of any
 * size is written in bounded memory: fill(ctx, dst, off, n) writes bytes [off, off + n)
 * of the tensor's data into dst and returns 0 or a negative status (which aborts the
 * write). off and n are multiples of the type's block bytes (the element size of F32,
 * F16 and BF16), n <= 1 MiB, chunks in order.
 * ctx must stay valid until kvp_gguf_write returns. */
typedef int (*kvp_gguf_fill_fn)(void *ctx, void *dst, uint64_t off, size_t n);
int kvp_gguf_add_tensor_fill(struct kvp_gguf_writer *w, const char *name, uint32_t n_dims,
			     const uint64_t *ne, enum kvp_ggml_type type, kvp_gguf_fill_fn fill,
			     void *ctx);
/* Write the file (alignment 32), atomically via a temporary file and rename. */
int kvp_gguf_write(struct kvp_gguf_writer *w, const char *path, char *err, size_t errlen);

#endif
