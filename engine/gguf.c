/*
 * gguf.c - GGUF v2/v3 files (kvp_gguf.h): a validating reader over a read-only
 * mapping, and a writer.
 *
 * File layout (all little-endian):
 *
 *     0      "GGUF"  u32 version  u64 n_tensors  u64 n_kv
 *     24     n_kv x  { string key, u32 vtype, value }
 *                    string = u64 len, len bytes (no NUL)
 *                    value  = scalar | string | array { u32 etype, u64 n, n x elem }
 *            n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 *                          u64 offset }
 *            padding to general.alignment (default 32)
 *     data   tensor data; tensor i lives at data + offset_i, offset_i % alignment == 0
 *
 * The reader walks the header with a cursor that checks every length against the bytes
 * left before touching them (a hostile count can make it walk, never allocate: counts
 * are capped and bounded by what the remaining bytes could hold), then checks each
 * tensor's shape, size and data region against the file:
 *
 *     |hdr|kv ...|tensor infos|pad|  data ......................... |EOF
 *                                  ^data_start
 *                                  |--offset--|==nbytes==|           ok
 *                                  |--offset----------------|==nbytes==|  refused
 *
 * Keys and tensor names are sorted once (an index), so duplicates are found in
 * O(n log n) and lookups are binary searches. Nothing in the mapping is written.
 * A file truncated by another process while mapped can still raise SIGBUS; the
 * daemon loads models it owns.
 *
 * Sanitizer builds (KVP_SANITIZE_BUILD) read the file into an exact-size heap buffer
 * instead of mapping it, so that a read one byte past the end is an ASan error rather
 * than a quiet read of the mapping's zero-filled last page.
 */
#include "kvp_gguf.h"
#include "kvp_le.h"
#include "kvp_quant.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_HDR_BYTES 24u
#define GGUF_DEFAULT_ALIGN 32u
#define GGUF_MAX_KEY 65535u          /* bytes in a metadata key */
#define GGUF_MAX_NAME 64u            /* bytes in a tensor name (the GGUF spec's limit) */
#define GGUF_MAX_KV 65536u           /* metadata pairs in one file */
#define GGUF_MAX_TENSORS 65536u      /* tensors in one file */
#define GGUF_MIN_KV_BYTES 14u        /* u64 len + 1-byte key + u32 type + 1-byte value */
#define GGUF_MIN_TENSOR_BYTES 33u    /* u64 len + 1 byte + u32 n_dims + u64 ne + u32 + u64 */
#define GGUF_WRITE_ALIGN 32u
#define GGUF_FILL_CHUNK (1u << 20)

#if defined(KVP_SANITIZE_BUILD) || defined(KVP_GGUF_NO_MMAP)
#define GGUF_HEAP_COPY 1
#else
#define GGUF_HEAP_COPY 0
#endif

/* Memory of this module goes through one pair of macros (tests may redefine them). */
#ifndef KVP_GGUF_MALLOC
#define KVP_GGUF_MALLOC(n) malloc(n)
#define KVP_GGUF_CALLOC(n, s) calloc(n, s)
#define KVP_GGUF_REALLOC(p, n) realloc(p, n)
#define KVP_GGUF_FREE(p) free(p)
#endif

/* ---- element types -------------------------------------------------------------- */

/* Bytes of a tensor of type with element counts ne[0..n_dims): rows of ne[0] elements
 * (a multiple of the type's block). 0 for a type without a known layout or a row that
 * is not whole blocks; KVP_EPROTO (in *rc) when the size overflows. */
static uint64_t tensor_bytes(uint32_t type, const uint64_t *ne, uint32_t n_dims, int *rc)
{
	const struct kvp_ggml_type_info *t = kvp_ggml_type(type);
	uint64_t bytes = kvp_ggml_row_bytes(type, ne[0]);

	*rc = KVP_OK;
	if (t && ne[0] % t->block_elems == 0 && ne[0] / t->block_elems > INT64_MAX / t->block_bytes) {
		*rc = KVP_EPROTO;    /* a row alone overflows */
		return 0;
	}
	for (uint32_t d = 1; d < n_dims && bytes; d++) {
		if (__builtin_mul_overflow(bytes, ne[d], &bytes) || bytes > INT64_MAX) {
			*rc = KVP_EPROTO;
			return 0;
		}
	}
	return bytes;
}

/* Bytes of one scalar metadata value, 0 for string, array or an unknown type. */
static size_t vtype_size(uint32_t t)
{
	switch (t) {
	case KVP_GGUF_U8: case KVP_GGUF_I8: case KVP_GGUF_BOOL: return 1;
	case KVP_GGUF_U16: case KVP_GGUF_I16: return 2;
	case KVP_GGUF_U32: case KVP_GGUF_I32: case KVP_GGUF_F32: return 4;
	case KVP_GGUF_U64: case KVP_GGUF_I64: case KVP_GGUF_F64: return 8;
	}
	return 0;
}

static const char *vtype_name(uint32_t t)
{
	static const char *const names[] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
		"u64", "i64", "f64",
	};
	return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

/* A printable, bounded rendering of bytes from the file for an error message. */
#define SHOW_MAX 72
static const char *show(char buf[static SHOW_MAX + 4], const uint8_t *s, size_t n)
{
	size_t k = n < SHOW_MAX ? n : SHOW_MAX;

	for (size_t i = 0; i < k; i++)
		buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
	if (k < n) {
		memcpy(buf + k, "...", 4);
	} else {
		buf[k] = '\0';
	}
	return buf;
}

__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}

/* ---- reader --------------------------------------------------------------------- */

struct gguf_kv {
	const uint8_t *key;          /* in the mapping, not NUL-terminated, no NUL inside */
	uint32_t key_len;
	uint32_t type;               /* enum kvp_gguf_vtype */
	uint32_t elem_type;          /* arrays: element type */
	uint64_t n;                  /* strings: byte length; arrays: element count */
	const uint8_t *val;          /* scalar bytes, string bytes, or first array element */
};

struct kvp_gguf {
	const uint8_t *map;
	size_t size;
	uint32_t version;
	uint32_t alignment;
	uint64_t data_start;
	size_t n_kv;
	struct gguf_kv *kv;                    /* (n_kv) sorted by key */
	size_t n_tensors;
	struct kvp_gguf_tensor *tensors;       /* (n_tensors) in file order */
	const struct kvp_gguf_tensor **by_name;/* (n_tensors) sorted by name */
	char *names;                           /* every tensor name, NUL-terminated */
};

/* A bounds-checked cursor over the mapping. */
struct cur {
	const uint8_t *p;
	size_t n;
	size_t off;
};

static inline size_t cur_left(const struct cur *c)
{
	return c->n - c->off;
}

static inline const uint8_t *cur_take(struct cur *c, uint64_t k)
{
	const uint8_t *r;

	if (k > cur_left(c))
		return NULL;
	r = c->p + c->off;
	c->off += (size_t)k;
	return r;
}

static int kv_cmp_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	int r = memcmp(a, b, an < bn ? an : bn);

	if (r)
		return r;
	return an < bn ? -1 : an > bn;
}

static int kv_cmp(const void *a, const void *b)
{
	const struct gguf_kv *x = a, *y = b;

	return kv_cmp_bytes(x->key, x->key_len, y->key, y->key_len);
}

static int tensor_ptr_cmp(const void *a, const void *b)
{
	const struct kvp_gguf_tensor *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

/*
 * Walk one value of type t (already read) at the cursor; fill kv's value fields.
 * what names the key for messages.
 */
static int parse_value(struct cur *c, struct gguf_kv *kv, const char *what, char *err,
		       size_t errlen)
{
	const uint8_t *p;
	size_t sz;

	if (kv->type == KVP_GGUF_STRING) {
		if (!(p = cur_take(c, 8)))
			goto truncated;
		kv->n = kvp_le_get_u64(p);
		if (!(kv->val = cur_take(c, kv->n)))
			return fail(err, errlen, KVP_EPROTO,
				    "key '%s': string of %llu bytes runs past the end of the file",
				    what, (unsigned long long)kv->n);
		return 0;
	}
	if (kv->type == KVP_GGUF_ARRAY) {
		if (!(p = cur_take(c, 12)))
			goto truncated;
		kv->elem_type = kvp_le_get_u32(p);
		kv->n = kvp_le_get_u64(p + 4);
		kv->val = c->p + c->off;
		if (kv->elem_type == KVP_GGUF_ARRAY)
			return fail(err, errlen, KVP_EUNSUPPORTED,
				    "key '%s': arrays of arrays are not supported", what);
		if (kv->elem_type == KVP_GGUF_STRING) {
			/* every element is at least its u64 length: bound n before walking */
			if (kv->n > cur_left(c) / 8)
				return fail(err, errlen, KVP_EPROTO,
					    "key '%s': array of %llu strings runs past the end of the file",
					    what, (unsigned long long)kv->n);
			for (uint64_t i = 0; i < kv->n; i++) {
				uint64_t len;

				if (!(p = cur_take(c, 8)))
					goto truncated;
				len = kvp_le_get_u64(p);
				if (!cur_take(c, len))
					return fail(err, errlen, KVP_EPROTO,
						    "key '%s': string %llu of the array (%llu bytes) runs past the end of the file",
						    what, (unsigned long long)i, (unsigned long long)len);
			}
			return 0;
		}
		sz = vtype_size(kv->elem_type);
		if (!sz)
			return fail(err, errlen, KVP_EPROTO, "key '%s': array element type %u is unknown",
				    what, kv->elem_type);
		if (kv->n > cur_left(c) / sz)
			return fail(err, errlen, KVP_EPROTO,
				    "key '%s': array of %llu %s runs past the end of the file", what,
				    (unsigned long long)kv->n, vtype_name(kv->elem_type));
		cur_take(c, kv->n * sz);
		return 0;
	}
	sz = vtype_size(kv->type);
	if (!sz)
		return fail(err, errlen, KVP_EPROTO, "key '%s': value type %u is unknown", what,
			    kv->type);
	if (!(kv->val = cur_take(c, sz)))
		goto truncated;
	return 0;
truncated:
	return fail(err, errlen, KVP_EPROTO, "key '%s': value runs past the end of the file", what);
}

static int parse_kvs(struct kvp_gguf *g, struct cur *c, uint64_t n_kv, char *err, size_t errlen)
{
	char buf[SHOW_MAX + 4];
	int rc;

	if (n_kv > GGUF_MAX_KV)
		return fail(err, errlen, KVP_ETOOBIG, "header: %llu metadata keys (at most %u)",
			    (unsigned long long)n_kv, GGUF_MAX_KV);
	if (n_kv > cur_left(c) / GGUF_MIN_KV_BYTES)
		return fail(err, errlen, KVP_EPROTO,
			    "header: %llu metadata keys cannot fit in the %zu bytes left of the file",
			    (unsigned long long)n_kv, cur_left(c));
	g->kv = KVP_GGUF_CALLOC(n_kv ? (size_t)n_kv : 1, sizeof(*g->kv));
	if (!g->kv)
		return fail(err, errlen, KVP_ENOMEM, "out of memory for %llu metadata keys",
			    (unsigned long long)n_kv);
	for (uint64_t i = 0; i < n_kv; i++) {
		struct gguf_kv *kv = &g->kv[i];
		const uint8_t *p;
		uint64_t len;

		if (!(p = cur_take(c, 8)))
			return fail(err, errlen, KVP_EPROTO,
				    "metadata key #%llu: name runs past the end of the file",
				    (unsigned long long)i);
		len = kvp_le_get_u64(p);
		if (len == 0 || len > GGUF_MAX_KEY)
			return fail(err, errlen, KVP_EPROTO,
				    "metadata key #%llu: name length %llu (1 to %u bytes)",
				    (unsigned long long)i, (unsigned long long)len, GGUF_MAX_KEY);
		if (!(kv->key = cur_take(c, len)))
			return fail(err, errlen, KVP_EPROTO,
				    "metadata key #%llu: name of %llu bytes runs past the end of the file",
				    (unsigned long long)i, (unsigned long long)len);
		kv->key_len = (uint32_t)len;
		if (memchr(kv->key, 0, len))
			return fail(err, errlen, KVP_EPROTO, "metadata key '%s': NUL byte in the name",
				    show(buf, kv->key, len));
		show(buf, kv->key, len);
		if (!(p = cur_take(c, 4)))
			return fail(err, errlen, KVP_EPROTO, "key '%s': type runs past the end of the file",
				    buf);
		kv->type = kvp_le_get_u32(p);
		rc = parse_value(c, kv, buf, err, errlen);
		if (rc)
			return rc;
	}
	g->n_kv = (size_t)n_kv;
	qsort(g->kv, g->n_kv, sizeof(*g->kv), kv_cmp);
	for (size_t i = 1; i < g->n_kv; i++)
		if (kv_cmp(&g->kv[i - 1], &g->kv[i]) == 0)
			return fail(err, errlen, KVP_EEXIST, "key '%s' appears more than once",
				    show(buf, g->kv[i].key, g->kv[i].key_len));
	return 0;
}

static const struct gguf_kv *find_kv(const struct kvp_gguf *g, const char *key)
{
	size_t lo, hi, n;

	assert(g && key);
	lo = 0;
	hi = g->n_kv;
	n = strlen(key);

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = kv_cmp_bytes(g->kv[mid].key, g->kv[mid].key_len, (const uint8_t *)key, n);

		if (r == 0)
			return &g->kv[mid];
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Tensor infos: parsed in a first pass (names stay in the mapping), copied after. */
struct tinfo {
	const uint8_t *name;
	uint32_t name_len;
	uint64_t offset;
};

static int parse_tensors(struct kvp_gguf *g, struct cur *c, uint64_t n_tensors,
			 struct tinfo **infos_out, char *err, size_t errlen)
{
	char buf[SHOW_MAX + 4];
	struct tinfo *ti;

	if (n_tensors > GGUF_MAX_TENSORS)
		return fail(err, errlen, KVP_ETOOBIG, "header: %llu tensors (at most %u)",
			    (unsigned long long)n_tensors, GGUF_MAX_TENSORS);
	if (n_tensors > cur_left(c) / GGUF_MIN_TENSOR_BYTES)
		return fail(err, errlen, KVP_EPROTO,
			    "header: %llu tensors cannot fit in the %zu bytes left of the file",
			    (unsigned long long)n_tensors, cur_left(c));
	g->tensors = KVP_GGUF_CALLOC(n_tensors ? (size_t)n_tensors : 1, sizeof(*g->tensors));
	ti = KVP_GGUF_CALLOC(n_tensors ? (size_t)n_tensors : 1, sizeof(*ti));
	*infos_out = ti;
	if (!g->tensors || !ti)
		return fail(err, errlen, KVP_ENOMEM, "out of memory for %llu tensors",
			    (unsigned long long)n_tensors);
	for (uint64_t i = 0; i < n_tensors; i++) {
		struct kvp_gguf_tensor *t = &g->tensors[i];
		const uint8_t *p;
		uint64_t len, nel = 1;
		char tname[16];
		int rc;

		if (!(p = cur_take(c, 8)))
			return fail(err, errlen, KVP_EPROTO,
				    "tensor #%llu: name runs past the end of the file",
				    (unsigned long long)i);
		len = kvp_le_get_u64(p);
		if (len == 0 || len > GGUF_MAX_NAME)
			return fail(err, errlen, KVP_EPROTO,
				    "tensor #%llu: name length %llu (1 to %u bytes)",
				    (unsigned long long)i, (unsigned long long)len, GGUF_MAX_NAME);
		if (!(ti[i].name = cur_take(c, len)))
			return fail(err, errlen, KVP_EPROTO,
				    "tensor #%llu: name runs past the end of the file",
				    (unsigned long long)i);
		ti[i].name_len = (uint32_t)len;
		show(buf, ti[i].name, len);
		if (memchr(ti[i].name, 0, len))
			return fail(err, errlen, KVP_EPROTO, "tensor '%s': NUL byte in the name", buf);
		if (!(p = cur_take(c, 4)))
			return fail(err, errlen, KVP_EPROTO,
				    "tensor '%s': n_dims runs past the end of the file", buf);
		t->n_dims = kvp_le_get_u32(p);
		if (t->n_dims < 1 || t->n_dims > KVP_GGUF_MAX_DIMS)
			return fail(err, errlen, KVP_EPROTO, "tensor '%s': n_dims %u (1 to %d)", buf,
				    t->n_dims, KVP_GGUF_MAX_DIMS);
		if (!(p = cur_take(c, 8ull * t->n_dims + 12)))
			return fail(err, errlen, KVP_EPROTO,
				    "tensor '%s': shape, type and offset run past the end of the file",
				    buf);
		for (uint32_t d = 0; d < KVP_GGUF_MAX_DIMS; d++) {
			t->ne[d] = d < t->n_dims ? kvp_le_get_u64(p + 8 * d) : 1;
			if (t->ne[d] == 0 || t->ne[d] > INT64_MAX)
				return fail(err, errlen, KVP_EPROTO,
					    "tensor '%s': dimension %u is %llu", buf, d,
					    (unsigned long long)t->ne[d]);
			if (__builtin_mul_overflow(nel, t->ne[d], &nel) || nel > INT64_MAX)
				return fail(err, errlen, KVP_EPROTO,
					    "tensor '%s': element count overflows", buf);
		}
		p += 8 * t->n_dims;
		t->type = kvp_le_get_u32(p);
		ti[i].offset = kvp_le_get_u64(p + 4);
		t->nbytes = tensor_bytes(t->type, t->ne, t->n_dims, &rc);
		if (rc)
			return fail(err, errlen, KVP_EPROTO, "tensor '%s': byte size overflows", buf);
		if (!kvp_ggml_type(t->type))
			return fail(err, errlen, KVP_EUNSUPPORTED,
				    "tensor '%s': ggml type %s (%u) is not supported (F32, F16, BF16, "
				    "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K types Q2_K to Q6_K are)",
				    buf, kvp_ggml_type_name(t->type, tname, sizeof(tname)), t->type);
		if (!t->nbytes)
			return fail(err, errlen, KVP_EPROTO,
				    "tensor '%s': %llu elements a row is not a whole number of %s blocks",
				    buf, (unsigned long long)t->ne[0],
				    kvp_ggml_type_name(t->type, tname, sizeof(tname)));
	}
	g->n_tensors = (size_t)n_tensors;
	return 0;
}

/* Copy the names, place the data, check regions and duplicates. */
static int finish_tensors(struct kvp_gguf *g, const struct tinfo *ti, char *err, size_t errlen)
{
	char buf[SHOW_MAX + 4];
	size_t total = 0, at = 0;

	for (size_t i = 0; i < g->n_tensors; i++)
		total += ti[i].name_len + 1;       /* <= 65 x 65536: no overflow */
	g->names = KVP_GGUF_MALLOC(total ? total : 1);
	g->by_name = KVP_GGUF_CALLOC(g->n_tensors ? g->n_tensors : 1, sizeof(*g->by_name));
	if (!g->names || !g->by_name)
		return fail(err, errlen, KVP_ENOMEM, "out of memory for tensor names");
	for (size_t i = 0; i < g->n_tensors; i++) {
		struct kvp_gguf_tensor *t = &g->tensors[i];
		uint64_t end;

		memcpy(g->names + at, ti[i].name, ti[i].name_len);
		g->names[at + ti[i].name_len] = '\0';
		t->name = g->names + at;
		at += ti[i].name_len + 1;
		g->by_name[i] = t;
		show(buf, ti[i].name, ti[i].name_len);
		if (ti[i].offset % g->alignment)
			return fail(err, errlen, KVP_EPROTO,
				    "tensor '%s': data offset %llu is not a multiple of the alignment %u",
				    buf, (unsigned long long)ti[i].offset, g->alignment);
		if (__builtin_add_overflow(g->data_start, ti[i].offset, &end) ||
		    __builtin_add_overflow(end, t->nbytes, &end) || end > g->size)
			return fail(err, errlen, KVP_EPROTO,
				    "tensor '%s': data (%llu bytes at offset %llu) runs past the end of the file",
				    buf, (unsigned long long)t->nbytes,
				    (unsigned long long)ti[i].offset);
		t->data = g->map + g->data_start + ti[i].offset;
	}
	qsort(g->by_name, g->n_tensors, sizeof(*g->by_name), tensor_ptr_cmp);
	for (size_t i = 1; i < g->n_tensors; i++)
		if (strcmp(g->by_name[i - 1]->name, g->by_name[i]->name) == 0)
			return fail(err, errlen, KVP_EEXIST, "tensor '%s' appears more than once",
				    show(buf, (const uint8_t *)g->by_name[i]->name,
					 strlen(g->by_name[i]->name)));
	return 0;
}

static int parse(struct kvp_gguf *g, char *err, size_t errlen)
{
	struct cur c = { .p = g->map, .n = g->size, .off = 0 };
	struct tinfo *ti = NULL;
	const struct gguf_kv *al;
	const uint8_t *p;
	uint64_t n_tensors, n_kv;
	int rc;

	if (!(p = cur_take(&c, GGUF_HDR_BYTES)))
		return fail(err, errlen, KVP_EPROTO,
			    "file of %zu bytes is too short for a GGUF header (24 bytes)", g->size);
	if (memcmp(p, GGUF_MAGIC, 4) != 0)
		return fail(err, errlen, KVP_EPROTO,
			    "not a GGUF file: magic %02x %02x %02x %02x, want \"GGUF\"", p[0], p[1],
			    p[2], p[3]);
	g->version = kvp_le_get_u32(p + 4);
	if (g->version == 1)
		return fail(err, errlen, KVP_EVERSION, "GGUF version 1 is not supported (2 and 3 are)");
	if (g->version != 2 && g->version != 3) {
		if ((g->version & 0xffff) == 0 && (g->version >> 24) >= 2 && (g->version >> 24) <= 3)
			return fail(err, errlen, KVP_EVERSION,
				    "GGUF version field 0x%08x: a big-endian file, not supported",
				    g->version);
		return fail(err, errlen, KVP_EVERSION, "GGUF version %u is not supported (2 and 3 are)",
			    g->version);
	}
	n_tensors = kvp_le_get_u64(p + 8);
	n_kv = kvp_le_get_u64(p + 16);
	rc = parse_kvs(g, &c, n_kv, err, errlen);
	if (rc)
		return rc;

	g->alignment = GGUF_DEFAULT_ALIGN;
	if ((al = find_kv(g, "general.alignment"))) {
		uint32_t a;

		if (kvp_gguf_get_u32(g, "general.alignment", &a))
			return fail(err, errlen, KVP_EPROTO,
				    "key 'general.alignment': type %s, want u32", vtype_name(al->type));
		if (a == 0 || (a & (a - 1)))
			return fail(err, errlen, KVP_EPROTO,
				    "key 'general.alignment': %u is not a power of two", a);
		g->alignment = a;
	}

	rc = parse_tensors(g, &c, n_tensors, &ti, err, errlen);
	if (rc)
		goto out_free_infos;
	/* data starts at the next multiple of the alignment (c.off <= size: no overflow) */
	g->data_start = ((uint64_t)c.off + g->alignment - 1) / g->alignment * g->alignment;
	rc = finish_tensors(g, ti, err, errlen);
out_free_infos:
	KVP_GGUF_FREE(ti);
	return rc;
}

static int map_file(int fd, const char *path, size_t size, void **out, char *err, size_t errlen)
{
#if GGUF_HEAP_COPY
	size_t got = 0;
	void *p;

	if (posix_memalign(&p, 64, size))
		return fail(err, errlen, KVP_ENOMEM, "out of memory reading %s", path);
	while (got < size) {
		ssize_t r = pread(fd, (char *)p + got, size - got, (off_t)got);

		if (r <= 0) {
			free(p);
			return fail(err, errlen, KVP_EIO, "read %s: %s", path,
				    r < 0 ? strerror(errno) : "file shrank");
		}
		got += (size_t)r;
	}
	*out = p;
#else
	void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);

	if (p == MAP_FAILED)
		return fail(err, errlen, KVP_EIO, "mmap %s: %s", path, strerror(errno));
	*out = p;
#endif
	return 0;
}

static void unmap_file(const void *p, size_t size)
{
#if GGUF_HEAP_COPY
	(void)size;
	free((void *)p);
#else
	munmap((void *)p, size);
#endif
}

int kvp_gguf_open(const char *path, struct kvp_gguf **out, char *err, size_t errlen)
{
	struct kvp_gguf *g;
	struct stat st;
	void *map = NULL;
	int fd, rc;

	assert(path && out);
	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, KVP_EIO, "open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0) {
		rc = fail(err, errlen, KVP_EIO, "stat %s: %s", path, strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = fail(err, errlen, KVP_EINVAL, "%s is not a regular file", path);
		goto out_close;
	}
	if (st.st_size < (off_t)GGUF_HDR_BYTES) {
		rc = fail(err, errlen, KVP_EPROTO,
			  "file of %lld bytes is too short for a GGUF header (24 bytes)",
			  (long long)st.st_size);
		goto out_close;
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		rc = fail(err, errlen, KVP_ETOOBIG, "%s is too large to map", path);
		goto out_close;
	}
	rc = map_file(fd, path, (size_t)st.st_size, &map, err, errlen);
	if (rc)
		goto out_close;
	g = KVP_GGUF_CALLOC(1, sizeof(*g));
	if (!g) {
		unmap_file(map, (size_t)st.st_size);
		rc = fail(err, errlen, KVP_ENOMEM, "out of memory");
		goto out_close;
	}
	g->map = map;
	g->size = (size_t)st.st_size;
	rc = parse(g, err, errlen);
	if (rc) {
		kvp_gguf_close(g);
		goto out_close;
	}
	*out = g;
out_close:
	close(fd);
	return rc;
}

void kvp_gguf_close(struct kvp_gguf *g)
{
	if (!g)
		return;
	if (g->map)
		unmap_file(g->map, g->size);
	KVP_GGUF_FREE(g->kv);
	KVP_GGUF_FREE(g->tensors);
	KVP_GGUF_FREE(g->by_name);
	KVP_GGUF_FREE(g->names);
	KVP_GGUF_FREE(g);
}

uint32_t kvp_gguf_version(const struct kvp_gguf *g)
{
	return g->version;
}

size_t kvp_gguf_n_tensors(const struct kvp_gguf *g)
{
	return g->n_tensors;
}

const struct kvp_gguf_tensor *kvp_gguf_tensor_at(const struct kvp_gguf *g, size_t i)
{
	return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct kvp_gguf_tensor *kvp_gguf_find_tensor(const struct kvp_gguf *g, const char *name)
{
	size_t lo = 0, hi = g->n_tensors;

	assert(name);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = strcmp(g->by_name[mid]->name, name);

		if (r == 0)
			return g->by_name[mid];
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* An integer of scalar type type at p as a u32: KVP_EINVAL when it is not an integer
 * type or the value does not fit. */
static int int_as_u32(uint32_t type, const uint8_t *p, uint32_t *out)
{
	int64_t s;
	uint64_t u;

	switch (type) {
	case KVP_GGUF_U8: u = p[0]; break;
	case KVP_GGUF_U16: u = kvp_le_get_u16(p); break;
	case KVP_GGUF_U32: u = kvp_le_get_u32(p); break;
	case KVP_GGUF_U64: u = kvp_le_get_u64(p); break;
	case KVP_GGUF_I8: s = (int8_t)p[0]; goto sign;
	case KVP_GGUF_I16: s = (int16_t)kvp_le_get_u16(p); goto sign;
	case KVP_GGUF_I32: s = (int32_t)kvp_le_get_u32(p); goto sign;
	case KVP_GGUF_I64: s = (int64_t)kvp_le_get_u64(p); goto sign;
	default: return KVP_EINVAL;
	}
	goto check;
sign:
	if (s < 0)
		return KVP_EINVAL;
	u = (uint64_t)s;
check:
	if (u > UINT32_MAX)
		return KVP_EINVAL;
	*out = (uint32_t)u;
	return 0;
}

int kvp_gguf_get_u32(const struct kvp_gguf *g, const char *key, uint32_t *out)
{
	const struct gguf_kv *kv = find_kv(g, key);

	if (!kv)
		return KVP_ENOTFOUND;
	return int_as_u32(kv->type, kv->val, out);
}

int kvp_gguf_get_f32(const struct kvp_gguf *g, const char *key, float *out)
{
	const struct gguf_kv *kv = find_kv(g, key);
	union { uint32_t u; float f; } a;
	union { uint64_t u; double d; } b;

	if (!kv)
		return KVP_ENOTFOUND;
	if (kv->type == KVP_GGUF_F32) {
		a.u = kvp_le_get_u32(kv->val);
		*out = a.f;
		return 0;
	}
	if (kv->type == KVP_GGUF_F64) {
		b.u = kvp_le_get_u64(kv->val);
		*out = (float)b.d;
		return 0;
	}
	return KVP_EINVAL;
}

int kvp_gguf_get_str(const struct kvp_gguf *g, const char *key, const char **s, size_t *len)
{
	const struct gguf_kv *kv = find_kv(g, key);

	if (!kv)
		return KVP_ENOTFOUND;
	if (kv->type != KVP_GGUF_STRING)
		return KVP_EINVAL;
	*s = (const char *)kv->val;
	*len = (size_t)kv->n;
	return 0;
}

int kvp_gguf_get_arr(const struct kvp_gguf *g, const char *key, uint32_t *elem_type, uint64_t *n)
{
	const struct gguf_kv *kv = find_kv(g, key);

	if (!kv)
		return KVP_ENOTFOUND;
	if (kv->type != KVP_GGUF_ARRAY)
		return KVP_EINVAL;
	*elem_type = kv->elem_type;
	*n = kv->n;
	return 0;
}

int kvp_gguf_get_arr_u32(const struct kvp_gguf *g, const char *key, uint64_t i, uint32_t *out)
{
	const struct gguf_kv *kv = find_kv(g, key);
	size_t es;

	if (!kv)
		return KVP_ENOTFOUND;
	if (kv->type != KVP_GGUF_ARRAY || i >= kv->n)
		return KVP_EINVAL;
	es = vtype_size(kv->elem_type);   /* 0 for strings and nested arrays */
	if (es == 0)
		return KVP_EINVAL;
	return int_as_u32(kv->elem_type, kv->val + i * es, out);
}

/* ---- writer --------------------------------------------------------------------- */

/*
 * Each key is serialised when added (value bytes exactly as in the file), so the
 * writer owns no pointers of the caller's but tensor data:
 *
 *     wkv { key, type, blob }     blob = the bytes after the u32 type
 *     wtensor { name, shape, type, data | fill+ctx, nbytes, offset (set at write) }
 */
struct wkv {
	char *key;
	uint32_t type;
	uint8_t *blob;
	size_t blob_len;
};

struct wtensor {
	char *name;
	uint32_t n_dims;
	uint64_t ne[KVP_GGUF_MAX_DIMS];
	uint32_t type;
	const void *data;
	kvp_gguf_fill_fn fill;
	void *ctx;
	uint64_t nbytes;
	uint64_t offset;
};

struct kvp_gguf_writer {
	struct wkv *kv;
	size_t n_kv, cap_kv;
	struct wtensor *t;
	size_t n_t, cap_t;
};

int kvp_gguf_writer_new(struct kvp_gguf_writer **out)
{
	*out = KVP_GGUF_CALLOC(1, sizeof(**out));
	return *out ? 0 : KVP_ENOMEM;
}

void kvp_gguf_writer_free(struct kvp_gguf_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n_kv; i++) {
		KVP_GGUF_FREE(w->kv[i].key);
		KVP_GGUF_FREE(w->kv[i].blob);
	}
	for (size_t i = 0; i < w->n_t; i++)
		KVP_GGUF_FREE(w->t[i].name);
	KVP_GGUF_FREE(w->kv);
	KVP_GGUF_FREE(w->t);
	KVP_GGUF_FREE(w);
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem, size_t max)
{
	size_t nc;
	void *p;

	if (n < *cap)
		return 0;
	if (n >= max)
		return KVP_ETOOBIG;
	nc = *cap ? *cap * 2 : 16;
	if (nc > max)
		nc = max;
	p = KVP_GGUF_REALLOC(*arr, nc * elem);
	if (!p)
		return KVP_ENOMEM;
	*arr = p;
	*cap = nc;
	return 0;
}

static char *dup_str(const char *s, size_t n)
{
	char *d = KVP_GGUF_MALLOC(n + 1);

	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* Append a key with a serialised value of blob_len bytes; *blob_out to fill in. */
static int add_kv(struct kvp_gguf_writer *w, const char *key, uint32_t type, size_t blob_len,
		  uint8_t **blob_out)
{
	size_t klen;
	struct wkv *kv;
	int rc;

	if (!w || !key)
		return KVP_EINVAL;
	klen = strlen(key);
	if (klen == 0 || klen > GGUF_MAX_KEY)
		return KVP_EINVAL;
	for (size_t i = 0; i < w->n_kv; i++)
		if (strcmp(w->kv[i].key, key) == 0)
			return KVP_EEXIST;
	rc = grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof(*w->kv), GGUF_MAX_KV);
	if (rc)
		return rc;
	kv = &w->kv[w->n_kv];
	kv->key = dup_str(key, klen);
	kv->blob = KVP_GGUF_MALLOC(blob_len ? blob_len : 1);
	if (!kv->key || !kv->blob) {
		KVP_GGUF_FREE(kv->key);
		KVP_GGUF_FREE(kv->blob);
		return KVP_ENOMEM;
	}
	kv->type = type;
	kv->blob_len = blob_len;
	*blob_out = kv->blob;
	w->n_kv++;
	return 0;
}

int kvp_gguf_add_u32(struct kvp_gguf_writer *w, const char *key, uint32_t v)
{
	uint8_t *b;
	int rc;

	if (key && strcmp(key, "general.alignment") == 0 && v != GGUF_WRITE_ALIGN)
		return KVP_EINVAL;    /* this writer aligns to 32 */
	rc = add_kv(w, key, KVP_GGUF_U32, 4, &b);
	if (!rc)
		kvp_le_put_u32(b, v);
	return rc;
}

int kvp_gguf_add_f32(struct kvp_gguf_writer *w, const char *key, float v)
{
	union { float f; uint32_t u; } x = { .f = v };
	uint8_t *b;
	int rc;

	if (key && strcmp(key, "general.alignment") == 0)
		return KVP_EINVAL;
	rc = add_kv(w, key, KVP_GGUF_F32, 4, &b);
	if (!rc)
		kvp_le_put_u32(b, x.u);
	return rc;
}

int kvp_gguf_add_str(struct kvp_gguf_writer *w, const char *key, const char *v)
{
	size_t n;
	uint8_t *b;
	int rc;

	if (!v || (key && strcmp(key, "general.alignment") == 0))
		return KVP_EINVAL;
	n = strlen(v);
	if (n > SIZE_MAX - 8)
		return KVP_ETOOBIG;
	rc = add_kv(w, key, KVP_GGUF_STRING, 8 + n, &b);
	if (!rc) {
		kvp_le_put_u64(b, n);
		memcpy(b + 8, v, n);
	}
	return rc;
}

int kvp_gguf_add_str_array(struct kvp_gguf_writer *w, const char *key, const char *const *v,
			   uint64_t n)
{
	size_t total = 12, at;
	uint8_t *b;
	int rc;

	if ((n && !v) || (key && strcmp(key, "general.alignment") == 0))
		return KVP_EINVAL;
	for (uint64_t i = 0; i < n; i++) {
		if (!v[i])
			return KVP_EINVAL;
		if (__builtin_add_overflow(total, 8 + strlen(v[i]), &total))
			return KVP_ETOOBIG;
	}
	rc = add_kv(w, key, KVP_GGUF_ARRAY, total, &b);
	if (rc)
		return rc;
	kvp_le_put_u32(b, KVP_GGUF_STRING);
	kvp_le_put_u64(b + 4, n);
	at = 12;
	for (uint64_t i = 0; i < n; i++) {
		size_t len = strlen(v[i]);

		kvp_le_put_u64(b + at, len);
		memcpy(b + at + 8, v[i], len);
		at += 8 + len;
	}
	return 0;
}

static int add_scalar_array(struct kvp_gguf_writer *w, const char *key, uint32_t etype,
			    const void *v, uint64_t n)
{
	const uint8_t *src = v;
	size_t bytes;
	uint8_t *b;
	int rc;

	if ((n && !v) || (key && strcmp(key, "general.alignment") == 0))
		return KVP_EINVAL;
	if (n > (SIZE_MAX - 12) / 4)
		return KVP_ETOOBIG;
	bytes = 12 + (size_t)n * 4;
	rc = add_kv(w, key, KVP_GGUF_ARRAY, bytes, &b);
	if (rc)
		return rc;
	kvp_le_put_u32(b, etype);
	kvp_le_put_u64(b + 4, n);
	for (uint64_t i = 0; i < n; i++) {
		uint32_t x;

		memcpy(&x, src + 4 * i, 4);
		kvp_le_put_u32(b + 12 + 4 * i, x);
	}
	return 0;
}

int kvp_gguf_add_f32_array(struct kvp_gguf_writer *w, const char *key, const float *v,
			   uint64_t n)
{
	return add_scalar_array(w, key, KVP_GGUF_F32, v, n);
}

int kvp_gguf_add_i32_array(struct kvp_gguf_writer *w, const char *key, const int32_t *v,
			   uint64_t n)
{
	return add_scalar_array(w, key, KVP_GGUF_I32, v, n);
}

static int add_tensor(struct kvp_gguf_writer *w, const char *name, uint32_t n_dims,
		      const uint64_t *ne, enum kvp_ggml_type type, const void *data,
		      kvp_gguf_fill_fn fill, void *ctx)
{
	uint64_t nbytes;
	struct wtensor *t;
	size_t nlen;
	int rc;

	if (!w || !name || !ne || n_dims < 1 || n_dims > KVP_GGUF_MAX_DIMS)
		return KVP_EINVAL;
	nlen = strlen(name);
	if (nlen == 0 || nlen > GGUF_MAX_NAME)
		return KVP_EINVAL;
	for (uint32_t d = 0; d < n_dims; d++)
		if (ne[d] == 0 || ne[d] > INT64_MAX)
			return KVP_EINVAL;
	nbytes = tensor_bytes((uint32_t)type, ne, n_dims, &rc);
	if (rc || !nbytes)
		return KVP_EINVAL;
	for (size_t i = 0; i < w->n_t; i++)
		if (strcmp(w->t[i].name, name) == 0)
			return KVP_EEXIST;
	rc = grow((void **)&w->t, &w->cap_t, w->n_t, sizeof(*w->t), GGUF_MAX_TENSORS);
	if (rc)
		return rc;
	t = &w->t[w->n_t];
	memset(t, 0, sizeof(*t));
	if (!(t->name = dup_str(name, nlen)))
		return KVP_ENOMEM;
	t->n_dims = n_dims;
	for (uint32_t d = 0; d < KVP_GGUF_MAX_DIMS; d++)
		t->ne[d] = d < n_dims ? ne[d] : 1;
	t->type = (uint32_t)type;
	t->data = data;
	t->fill = fill;
	t->ctx = ctx;
	t->nbytes = nbytes;
	w->n_t++;
	return 0;
}

int kvp_gguf_add_tensor(struct kvp_gguf_writer *w, const char *name, uint32_t n_dims,
			const uint64_t *ne, enum kvp_ggml_type type, const void *data)
{
	if (!data)
		return KVP_EINVAL;
	return add_tensor(w, name, n_dims, ne, type, data, NULL, NULL);
}

int kvp_gguf_add_tensor_fill(struct kvp_gguf_writer *w, const char *name, uint32_t n_dims,
			     const uint64_t *ne, enum kvp_ggml_type type, kvp_gguf_fill_fn fill,
			     void *ctx)
{
	if (!fill)
		return KVP_EINVAL;
	return add_tensor(w, name, n_dims, ne, type, NULL, fill, ctx);
}

/* A buffered output file that remembers its first error. */
struct wout {
	FILE *f;
	uint64_t pos;
	int err;        /* errno of the first failure */
};

static void out_bytes(struct wout *o, const void *p, size_t n)
{
	if (o->err || n == 0)
		return;
	if (fwrite(p, 1, n, o->f) != n)
		o->err = errno ? errno : EIO;
	o->pos += n;
}

static void out_u32(struct wout *o, uint32_t v)
{
	uint8_t b[4];

	kvp_le_put_u32(b, v);
	out_bytes(o, b, 4);
}

static void out_u64(struct wout *o, uint64_t v)
{
	uint8_t b[8];

	kvp_le_put_u64(b, v);
	out_bytes(o, b, 8);
}

static void out_str(struct wout *o, const char *s)
{
	size_t n = strlen(s);

	out_u64(o, n);
	out_bytes(o, s, n);
}

static void out_pad(struct wout *o)
{
	static const uint8_t zero[GGUF_WRITE_ALIGN];
	size_t r = (size_t)(o->pos % GGUF_WRITE_ALIGN);

	if (r)
		out_bytes(o, zero, GGUF_WRITE_ALIGN - r);
}

static int write_tensor_data(struct wout *o, const struct wtensor *t, uint8_t *chunk, char *err,
			     size_t errlen)
{
	/* whole blocks a chunk, so that a fill function produces whole blocks */
	const size_t chunk_max = GGUF_FILL_CHUNK - GGUF_FILL_CHUNK % kvp_ggml_type(t->type)->block_bytes;
	uint64_t off = 0;
	int rc;

	if (t->data) {
		const uint8_t *p = t->data;

		while (off < t->nbytes && !o->err) {
			size_t n = t->nbytes - off > chunk_max ? chunk_max : (size_t)(t->nbytes - off);
			out_bytes(o, p + off, n);
			off += n;
		}
		return 0;
	}
	while (off < t->nbytes && !o->err) {
		size_t n = t->nbytes - off > chunk_max ? chunk_max : (size_t)(t->nbytes - off);
		rc = t->fill(t->ctx, chunk, off, n);
		if (rc)
			return fail(err, errlen, rc, "tensor '%s': producing its data failed: %s",
				    t->name, kvp_strerror(rc));
		out_bytes(o, chunk, n);
		off += n;
	}
	return 0;
}

int kvp_gguf_write(struct kvp_gguf_writer *w, const char *path, char *err, size_t errlen)
{
	struct wout o = { 0 };
	bool has_align = false;
	uint8_t *chunk = NULL;
	char *tmp;
	uint64_t off = 0;
	size_t plen;
	int fd, rc = 0;

	if (err && errlen)
		err[0] = '\0';
	if (!w || !path)
		return fail(err, errlen, KVP_EINVAL, "no writer or path");
	for (size_t i = 0; i < w->n_kv; i++)
		if (strcmp(w->kv[i].key, "general.alignment") == 0)
			has_align = true;
	if (!has_align && w->n_kv >= GGUF_MAX_KV)
		return fail(err, errlen, KVP_ETOOBIG, "too many metadata keys");
	/* offsets: each tensor's data padded to the alignment */
	for (size_t i = 0; i < w->n_t; i++) {
		uint64_t padded = (w->t[i].nbytes + GGUF_WRITE_ALIGN - 1) / GGUF_WRITE_ALIGN *
				  GGUF_WRITE_ALIGN;

		w->t[i].offset = off;
		if (__builtin_add_overflow(off, padded, &off))
			return fail(err, errlen, KVP_ETOOBIG, "tensor data overflows 64 bits");
	}

	/* a temporary name of our own beside the file (PATH.tmp.XXXXXX), so that writers
	 * of the same path at once never write into each other's file; the last rename
	 * wins, and each rename installs a complete file */
	plen = strlen(path);
	tmp = KVP_GGUF_MALLOC(plen + 12);
	chunk = KVP_GGUF_MALLOC(GGUF_FILL_CHUNK);
	if (!tmp || !chunk) {
		rc = fail(err, errlen, KVP_ENOMEM, "out of memory");
		goto out_free;
	}
	memcpy(tmp, path, plen);
	memcpy(tmp + plen, ".tmp.XXXXXX", 12);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd >= 0 && fchmod(fd, 0644) != 0) {
		rc = fail(err, errlen, KVP_EIO, "chmod %s: %s", tmp, strerror(errno));
		close(fd);
		goto out_unlink;
	}
	if (fd < 0) {
		rc = fail(err, errlen, KVP_EIO, "create %s: %s", tmp, strerror(errno));
		goto out_free;
	}
	o.f = fdopen(fd, "wb");
	if (!o.f) {
		rc = fail(err, errlen, KVP_EIO, "fdopen %s: %s", tmp, strerror(errno));
		close(fd);
		goto out_unlink;
	}
	setvbuf(o.f, NULL, _IOFBF, 1u << 20);

	out_bytes(&o, GGUF_MAGIC, 4);
	out_u32(&o, 3);
	out_u64(&o, w->n_t);
	out_u64(&o, w->n_kv + !has_align);
	for (size_t i = 0; i < w->n_kv; i++) {
		out_str(&o, w->kv[i].key);
		out_u32(&o, w->kv[i].type);
		out_bytes(&o, w->kv[i].blob, w->kv[i].blob_len);
	}
	if (!has_align) {
		out_str(&o, "general.alignment");
		out_u32(&o, KVP_GGUF_U32);
		out_u32(&o, GGUF_WRITE_ALIGN);
	}
	for (size_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];

		out_str(&o, t->name);
		out_u32(&o, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++)
			out_u64(&o, t->ne[d]);
		out_u32(&o, t->type);
		out_u64(&o, t->offset);
	}
	out_pad(&o);
	for (size_t i = 0; i < w->n_t && !o.err && !rc; i++) {
		rc = write_tensor_data(&o, &w->t[i], chunk, err, errlen);
		out_pad(&o);
	}
	if (!rc && !o.err && fflush(o.f) != 0)
		o.err = errno ? errno : EIO;
	if (!rc && !o.err && fsync(fileno(o.f)) != 0)
		o.err = errno ? errno : EIO;
	if (fclose(o.f) != 0 && !o.err)
		o.err = errno ? errno : EIO;
	if (!rc && o.err)
		rc = fail(err, errlen, KVP_EIO, "write %s: %s", tmp, strerror(o.err));
	if (rc)
		goto out_unlink;
	if (rename(tmp, path) != 0) {
		rc = fail(err, errlen, KVP_EIO, "rename %s to %s: %s", tmp, path, strerror(errno));
		goto out_unlink;
	}
	goto out_free;
out_unlink:
	unlink(tmp);
out_free:
	KVP_GGUF_FREE(chunk);
	KVP_GGUF_FREE(tmp);
	return rc;
}
