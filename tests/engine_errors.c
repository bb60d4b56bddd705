/*
 * engine_errors.c - calls the engine must refuse (token >= vocab, positions past the
 * context, a table too short, n = 0) with KVP_EINVAL and nothing written, the boundaries
 * accepted, the engine's answer unchanged after refusals; and bad configs refused.
 *
 * One of the files of test_engine; see engine_test_util.h.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine_test_ref.h"
#include "engine_test_util.h"
#include "kvp_engine.h"
#include "kvp_model.h"

/* ---- errors -------------------------------------------------------------------------- */

Test(errors, refused_and_nothing_written)
{
	char path[256];
	struct eng g;
	struct table t;
	uint32_t tok[64];
	float lg[300], lg2[300];
	char *before;

	/* ctx 64, so the context limit is cheap to reach */
	et_mkmodel("e.gguf", "--vocab 300 --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 "
			     "--ctx 64 --dtype f32");
	et_path_in(path, sizeof(path), "e.gguf");
	et_eng_open(&g, path, 2, KVP_KV_F32, 16, 16);
	et_table_init(&t, 4, kvp_engine_block_bytes(g.e), 1);
	et_make_prompt(tok, 64, 300, 3);
	before = malloc(t.bytes);
	cr_assert_not_null(before);
	memcpy(before, t.arena, t.bytes);

#define REFUSED(blocks_, nb_, toks_, n_, pos0_, wf_)                                         \
	do {                                                                                \
		cr_assert_eq(kvp_engine_forward(g.e, (blocks_), (nb_), (toks_), (n_), (pos0_),  \
						(wf_), lg),                                     \
			     KVP_EINVAL, "forward(n_blocks %u, n %u, pos0 %u) not refused",     \
			     (unsigned)(nb_), (unsigned)(n_), (unsigned)(pos0_));               \
		cr_assert(memcmp(before, t.arena, t.bytes) == 0, "a refused call wrote KV");    \
	} while (0)

	/* token ids: == vocab, far over, and one bad id in the middle of a batch */
	uint32_t bad[40];
	memcpy(bad, tok, sizeof(bad));
	bad[0] = 300;
	REFUSED(t.blocks, 4, bad, 1, 0, 0);
	bad[0] = UINT32_MAX;
	REFUSED(t.blocks, 4, bad, 1, 0, 0);
	memcpy(bad, tok, sizeof(bad));
	bad[37] = 300;
	REFUSED(t.blocks, 4, bad, 40, 0, 0);
	REFUSED(t.blocks, 4, bad + 30, 10, 30, 30);

	/* positions past the context (64) */
	REFUSED(t.blocks, 4, tok, 1, 64, 64);
	REFUSED(t.blocks, 4, tok, 2, 63, 63);
	REFUSED(t.blocks, 4, tok, 1, UINT32_MAX, UINT32_MAX);
	REFUSED(t.blocks, 4, tok, 1, UINT32_MAX, 0);
	{
		struct table big;
		et_table_init(&big, 5, kvp_engine_block_bytes(g.e), 2);
		char *bb = malloc(big.bytes);
		cr_assert_not_null(bb);
		memcpy(bb, big.arena, big.bytes);
		uint32_t tok65[65];
		et_make_prompt(tok65, 65, 300, 4);
		cr_assert_eq(kvp_engine_forward(g.e, big.blocks, 5, tok65, 65, 0, 0, lg), KVP_EINVAL,
			     "65 positions in a 64 context");
		cr_assert(memcmp(bb, big.arena, big.bytes) == 0);
		free(bb);
		et_table_free(&big);
	}

	/* a table too short: 3 blocks of 16 cover positions 0..47 */
	REFUSED(t.blocks, 3, tok, 49, 0, 0);
	REFUSED(t.blocks, 3, tok, 1, 48, 48);
	REFUSED(t.blocks, 0, tok, 1, 0, 0);
	REFUSED(t.blocks, 2, tok + 20, 13, 20, 0);

	/* n = 0 */
	REFUSED(t.blocks, 4, tok, 0, 0, 0);
#undef REFUSED

	/* the boundaries themselves are accepted, and the engine still gives the answer of
	 * a fresh one after all those refusals */
	cr_assert_eq(kvp_engine_forward(g.e, t.blocks, 3, tok, 48, 0, 0, NULL), 0);
	cr_assert_eq(kvp_engine_forward(g.e, t.blocks, 4, tok + 48, 16, 48, 48, lg), 0);
	{
		struct eng g2;
		struct table t2;
		et_eng_open(&g2, path, 1, KVP_KV_F32, 16, 64);
		et_table_init(&t2, 4, kvp_engine_block_bytes(g2.e), 9);
		cr_assert_eq(kvp_engine_forward(g2.e, t2.blocks, 4, tok, 64, 0, 0, lg2), 0);
		double d = et_max_diff_ff(lg, lg2, 300);
		cr_assert_leq(d, TOL_F32, "after refusals: %g", d);
		struct ref_model *r = ref_open(path, REF_OK);
		double *ref = ref_run(r, tok, 64, 0);
		cr_assert_leq(et_max_diff_fd(lg, ref, 300), TOL_F32);
		free(ref);
		ref_close(r);
		et_table_free(&t2);
		et_eng_close(&g2);
	}
	/* the last position of the context, alone */
	cr_assert_eq(kvp_engine_forward(g.e, t.blocks, 4, tok + 63, 1, 63, 63, lg), 0);

	free(before);
	et_table_free(&t);
	et_eng_close(&g);
}

Test(errors, bad_config)
{
	char path[256];
	struct kvp_model *m;
	struct kvp_engine *e = NULL;
	char err[256];
	const struct kvp_engine_config ok = { .threads = 1, .kv_dtype = KVP_KV_F32,
					      .block_tokens = 16, .max_batch = 8 };
	struct kvp_engine_config c;

	et_mkmodel("b.gguf", "--vocab 300 --dim 32 --layers 1 --heads 2 --kv-heads 1 --ffn 32 "
			     "--ctx 64 --dtype f32");
	et_path_in(path, sizeof(path), "b.gguf");
	cr_assert_eq(kvp_model_load(path, &m, err, sizeof(err)), 0, "%s", err);
	c = ok; c.threads = 0;
	cr_assert_eq(kvp_engine_create(m, &c, &e), KVP_EINVAL);
	c = ok; c.block_tokens = 0;
	cr_assert_eq(kvp_engine_create(m, &c, &e), KVP_EINVAL);
	c = ok; c.max_batch = 0;
	cr_assert_eq(kvp_engine_create(m, &c, &e), KVP_EINVAL);
	c = ok; c.kv_dtype = (enum kvp_kv_dtype)7;
	cr_assert_eq(kvp_engine_create(m, &c, &e), KVP_EINVAL);
	cr_assert_null(e);
	cr_assert_eq(kvp_engine_create(m, &ok, &e), 0);
	cr_assert_eq(kvp_engine_model(e), m);
	kvp_engine_destroy(e);
	kvp_model_free(m);
}

/* One bad sequence refuses the whole batch before anything runs: the good sequence's
 * blocks stay as they were, its logits unwritten. */
Test(errors, bad_sequence_refuses_the_whole_batch)
{
	char path[256];
	struct eng g;
	struct table t[2];
	uint32_t tok[32], bad[4] = { 1, 2, 300, 3 };
	float lg[2][300];
	char *before;

	et_mkmodel("eb.gguf", "--vocab 300 --dim 64 --layers 1 --heads 4 --kv-heads 2 --ffn 96 "
			      "--ctx 64 --dtype f32");
	et_path_in(path, sizeof(path), "eb.gguf");
	et_eng_open(&g, path, 2, KVP_KV_F32, 16, 16);
	et_table_init(&t[0], 2, kvp_engine_block_bytes(g.e), 1);
	et_table_init(&t[1], 2, kvp_engine_block_bytes(g.e), 2);
	et_make_prompt(tok, 32, 300, 9);
	before = malloc(t[0].bytes);
	cr_assert_not_null(before);
	memcpy(before, t[0].arena, t[0].bytes);
	memset(lg, 0x7f, sizeof(lg));

	struct kvp_engine_seq seqs[2] = {
		{ .blocks = t[0].blocks, .n_blocks = 2, .tokens = tok, .n = 32, .logits = lg[0] },
		{ .blocks = t[1].blocks, .n_blocks = 2, .tokens = bad, .n = 4, .logits = lg[1] },
	};
	cr_assert_eq(kvp_engine_forward_batch(g.e, seqs, 2), KVP_EINVAL);
	cr_assert_eq(memcmp(before, t[0].arena, t[0].bytes), 0, "the good sequence was run");
	for (int i = 0; i < 300; i++)
		cr_assert_eq(lg[0][i], lg[0][0], "its logits were written");
	cr_assert_eq(kvp_engine_forward_batch(g.e, seqs, 0), KVP_EINVAL, "an empty batch");
	/* alone, the good one runs */
	cr_assert_eq(kvp_engine_forward_batch(g.e, seqs, 1), 0);
	free(before);
	et_table_free(&t[0]);
	et_table_free(&t[1]);
	et_eng_close(&g);
}
