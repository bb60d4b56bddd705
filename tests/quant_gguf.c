/*
 * quant_gguf.c - GGUF files of the ggml types (engine/kvp_gguf.h): the writer and the
 * reader carry a tensor of every type with a known layout, byte for byte; the reader
 * refuses a type without one (the IQ types, ...) naming it and the tensor, a row that is
 * not whole blocks, and a row whose byte size does not fit in 64 bits.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_gguf.h"
#include "kvp_quant.h"
#include "quant_test_util.h"

TestSuite(gguf_types, .init = qt_tmp_setup, .fini = qt_tmp_teardown);

static uint8_t *read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b;
	long len;

	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	b = malloc((size_t)len);
	cr_assert_not_null(b);
	cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return b;
}

static void write_file(const char *path, const void *b, size_t n)
{
	FILE *f = fopen(path, "wb");

	cr_assert_not_null(f);
	cr_assert_eq(fwrite(b, 1, n, f), n);
	fclose(f);
}

/* Where tensor name's descriptor puts its n_dims: just past its name (u64 length, bytes). */
static size_t tensor_info_at(const uint8_t *b, size_t n, const char *name)
{
	const size_t len = strlen(name);

	for (size_t i = 0; i + 8 + len <= n; i++) {
		uint64_t l;

		memcpy(&l, b + i, 8);
		if (l == len && memcmp(b + i + 8, name, len) == 0)
			return i + 8 + len;
	}
	cr_assert_fail("tensor '%s' not in the file", name);
	return 0;
}

/* ---- every type, written and read back --------------------------------------------- */

static const uint32_t all_types[] = {
	KVP_GGML_F32, KVP_GGML_F16, KVP_GGML_BF16, KVP_GGML_Q4_0, KVP_GGML_Q4_1, KVP_GGML_Q5_0,
	KVP_GGML_Q5_1, KVP_GGML_Q8_0, KVP_GGML_Q8_1, KVP_GGML_Q2_K, KVP_GGML_Q3_K, KVP_GGML_Q4_K,
	KVP_GGML_Q5_K, KVP_GGML_Q6_K, KVP_GGML_Q8_K,
};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))
#define BIG_ROW 4096u
#define BIG_ROWS 600u      /* 600 rows of 2304 bytes: past the writer's 1 MiB chunk */

/* A Q4_K tensor's bytes made while the file is written: byte i is a function of i. */
static int fill_q4_k(void *ctx, void *dst, uint64_t off, size_t n)
{
	size_t *calls = ctx;

	/* whole blocks, always */
	cr_assert_eq(off % sizeof(struct kvp_block_q4_k), 0, "chunk at %llu", (unsigned long long)off);
	cr_assert_eq(n % sizeof(struct kvp_block_q4_k), 0, "chunk of %zu", n);
	for (size_t i = 0; i < n; i++)
		((uint8_t *)dst)[i] = (uint8_t)((off + i) * 131 >> 3);
	(*calls)++;
	return 0;
}

Test(gguf_types, a_tensor_of_every_type_reads_back)
{
	struct kvp_gguf_writer *w = NULL;
	struct kvp_gguf *g = NULL;
	void *data[N_TYPES];
	uint64_t sizes[N_TYPES];
	float x[2 * KVP_QK_K * 3];
	char path[256], err[512], name[64];
	size_t calls = 0;
	uint64_t s = 3;

	qt_path(path, sizeof(path), "types.gguf");
	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	for (size_t i = 0; i < N_TYPES; i++) {
		const struct kvp_ggml_type_info *t = kvp_ggml_type(all_types[i]);
		const uint64_t ne[2] = { 2 * t->block_elems, 3 };

		sizes[i] = kvp_ggml_row_bytes(all_types[i], ne[0]) * ne[1];
		data[i] = malloc(sizes[i]);
		cr_assert_not_null(data[i]);
		qt_fill(x, ne[0] * ne[1], QT_GAUSS, i + 1);
		if (kvp_quant_row(all_types[i], x, data[i], ne[0] * ne[1]) != 0) {
			for (uint64_t k = 0; k < sizes[i]; k++)   /* Q8_1, Q8_K: any bytes */
				((uint8_t *)data[i])[k] = (uint8_t)qt_next(&s);
		}
		snprintf(name, sizeof(name), "t.%s", t->name);
		cr_assert_eq(kvp_gguf_add_tensor(w, name, 2, ne, all_types[i], data[i]), 0, "%s", name);
	}
	const uint64_t big[2] = { BIG_ROW, BIG_ROWS };
	cr_assert_eq(kvp_gguf_add_tensor_fill(w, "big.q4_k", 2, big, KVP_GGML_Q4_K, fill_q4_k, &calls), 0);
	/* the writer refuses a type without a layout and a row of part blocks */
	cr_assert_eq(kvp_gguf_add_tensor(w, "iq", 2, big, (enum kvp_ggml_type)16, data[0]), KVP_EINVAL);
	const uint64_t part[2] = { 128, 2 };
	cr_assert_eq(kvp_gguf_add_tensor(w, "part", 2, part, KVP_GGML_Q4_K, data[0]), KVP_EINVAL);
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
	cr_assert_eq(calls, 2, "1.38 MB in %zu chunks", calls);

	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvp_gguf_n_tensors(g), N_TYPES + 1);
	for (size_t i = 0; i < N_TYPES; i++) {
		const struct kvp_ggml_type_info *t = kvp_ggml_type(all_types[i]);
		const struct kvp_gguf_tensor *tt;

		snprintf(name, sizeof(name), "t.%s", t->name);
		tt = kvp_gguf_find_tensor(g, name);
		cr_assert_not_null(tt, "%s", name);
		cr_assert_eq(tt->type, all_types[i], "%s", name);
		cr_assert_eq(tt->n_dims, 2);
		cr_assert_eq(tt->ne[0], 2 * t->block_elems);
		cr_assert_eq(tt->ne[1], 3);
		cr_assert_eq(tt->nbytes, sizes[i], "%s: %llu bytes", name, (unsigned long long)tt->nbytes);
		cr_assert_eq(memcmp(tt->data, data[i], sizes[i]), 0, "%s: data differs", name);
		free(data[i]);
	}
	const struct kvp_gguf_tensor *bt = kvp_gguf_find_tensor(g, "big.q4_k");
	cr_assert_not_null(bt);
	cr_assert_eq(bt->nbytes, (uint64_t)BIG_ROW / 256 * 144 * BIG_ROWS);
	for (uint64_t i = 0; i < bt->nbytes; i++)
		cr_assert_eq(((const uint8_t *)bt->data)[i], (uint8_t)(i * 131 >> 3), "byte %llu",
			     (unsigned long long)i);
	kvp_gguf_close(g);
}

/* ---- what the reader refuses ---------------------------------------------------------- */

/* A file with one Q4_0 tensor blk.0.attn_q.weight [256, 4] (and an F32 one), its bytes in
 * *b, the offset of the Q4_0 tensor's n_dims in *at. */
static uint8_t *small_file(const char *path, size_t *n, size_t *at)
{
	static uint8_t q[4 * 8 * 18], f[16];
	const uint64_t ne[2] = { 256, 4 }, ne1 = 4;
	struct kvp_gguf_writer *w = NULL;
	char err[512];
	uint8_t *b;

	memset(q, 0x11, sizeof(q));
	cr_assert_eq(kvp_gguf_writer_new(&w), 0);
	cr_assert_eq(kvp_gguf_add_str(w, "general.architecture", "llama"), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "blk.0.attn_q.weight", 2, ne, KVP_GGML_Q4_0, q), 0);
	cr_assert_eq(kvp_gguf_add_tensor(w, "norm", 1, &ne1, KVP_GGML_F32, f), 0);
	cr_assert_eq(kvp_gguf_write(w, path, err, sizeof(err)), 0, "%s", err);
	kvp_gguf_writer_free(w);
	b = read_file(path, n);
	*at = tensor_info_at(b, *n, "blk.0.attn_q.weight");
	return b;
}

static void expect_refused(const char *path, int status, const char *const *want)
{
	struct kvp_gguf *g = NULL;
	char err[512] = "";

	cr_assert_eq(kvp_gguf_open(path, &g, err, sizeof(err)), status, "opened: %s", err);
	cr_assert_null(g);
	for (; *want; want++)
		cr_assert(strstr(err, *want), "message '%s' lacks '%s'", err, *want);
}

Test(gguf_types, types_without_a_layout_are_refused_by_name)
{
	static const struct { uint32_t id; const char *name; } ids[] = {
		{ 16, "IQ2_XXS" }, { 17, "IQ2_XS" }, { 18, "IQ3_XXS" }, { 19, "IQ1_S" },
		{ 20, "IQ4_NL" }, { 21, "IQ3_S" }, { 22, "IQ2_S" }, { 23, "IQ4_XS" }, { 29, "IQ1_M" },
		{ 24, "I8" }, { 28, "F64" }, { 34, "TQ1_0" }, { 35, "TQ2_0" }, { 39, "MXFP4" },
		{ 4, "type 4" }, { 31, "type 31" }, { 0x7fffffff, "type 2147483647" },
	};
	char path[256];
	size_t n, at;
	uint8_t *b;

	qt_path(path, sizeof(path), "iq.gguf");
	b = small_file(path, &n, &at);
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		const char *want[] = { "blk.0.attn_q.weight", ids[i].name, "not supported", NULL };
		uint8_t *c = malloc(n);

		memcpy(c, b, n);
		memcpy(c + at + 4 + 2 * 8, &ids[i].id, 4);     /* past n_dims and ne[2] */
		write_file(path, c, n);
		expect_refused(path, KVP_EUNSUPPORTED, want);
		free(c);
	}
	free(b);
}

Test(gguf_types, a_row_of_part_blocks_is_refused)
{
	static const char *const want[] = { "blk.0.attn_q.weight", "not a whole number of Q4_0 blocks",
					    NULL };
	const uint64_t ne[2] = { 16, 64 };   /* the same 1024 elements, half-block rows */
	char path[256];
	size_t n, at;
	uint8_t *b;

	qt_path(path, sizeof(path), "part.gguf");
	b = small_file(path, &n, &at);
	memcpy(b + at + 4, ne, sizeof(ne));
	write_file(path, b, n);
	expect_refused(path, KVP_EPROTO, want);
	free(b);
}

/* An F32 row of 2^62 + 1 elements is 2^64 + 4 bytes: its size once wrapped to 4, and the
 * tensor passed the region check over 4 bytes. */
Test(gguf_types, a_row_past_64_bits_is_refused)
{
	static const char *const want[] = { "'norm'", "overflows", NULL };
	static const uint64_t rows[] = { (1ull << 62) + 1, 1ull << 62, UINT64_MAX / 4 + 2 };
	char path[256];
	size_t n, at;
	uint8_t *b;

	qt_path(path, sizeof(path), "big.gguf");
	b = small_file(path, &n, &at);
	at = tensor_info_at(b, n, "norm");
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		uint8_t *c = malloc(n);

		memcpy(c, b, n);
		memcpy(c + at + 4, &rows[i], 8);
		write_file(path, c, n);
		expect_refused(path, KVP_EPROTO, want);
		free(c);
	}
	free(b);
}
