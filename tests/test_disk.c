/*
 * test_disk.c - the disk tier (tier/kvp_disk.h) on real files in a temporary directory:
 *
 *   roundtrip       blocks put, then probed as a chain and fetched byte for byte
 *   warm_restart    closed and opened again: every block still found and read
 *   cold_when       another model, block size or KV dtype: nothing kept, and why
 *   corrupt         a flipped KV byte, a crafted header (valid checksum, other tokens),
 *                   a slot cut short: each a miss counted as a verify failure, never
 *                   bytes handed out as the block
 *   leaf_first      at capacity the least recently used block that nothing continues
 *                   goes, never a parent before its child
 *   clear           gone now and after a restart
 *   model           random puts, probes, fetches, clears and restarts at a small
 *                   capacity against a map of what was put: every fetch that succeeds
 *                   gives the bytes put under that key, and kvp_disk_check holds after
 *                   every step
 *   together        a small pool over a small disk tier, glued as kvprefixd glues them,
 *                   under random requests: every block cached or read back is its own
 *                   KV, and both tiers' invariants hold after every step
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tier/disk_format.h"
#include "kvp_disk.h"
#include "kvp_status.h"

#define BT 4                  /* tokens a block */
#define BB 1000               /* KV bytes a block */

static char dir[] = "/tmp/kvp-test-disk-XXXXXX";

static void setup(void)
{
	strcpy(dir, "/tmp/kvp-test-disk-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(disk, .init = setup, .fini = teardown);

static struct kvp_disk_config config(uint32_t slots)
{
	return (struct kvp_disk_config){
		.dir = dir, .capacity_bytes = (uint64_t)slots * slot_bytes(BT, BB),
		.model = "m@0123456789abcdef", .block_tokens = BT, .kv_dtype = "f16",
		.block_bytes = BB, .staging_bytes = 1 << 20,
	};
}

static struct kvp_disk *open_disk(const struct kvp_disk_config *cfg, bool warm)
{
	struct kvp_disk *d;
	char why[512];

	cr_assert_eq(kvp_disk_open(cfg, &d, why, sizeof(why)), KVP_OK, "%s", why);
	cr_assert_eq(why[0] == '\0', warm, "why: \"%s\"", why);
	return d;
}

/* Block i of chain c: tokens, key, parent, KV bytes (all from c and i). */
struct blk {
	uint32_t tokens[BT];
	struct kvp_key key, parent, root;
	uint8_t kv[BB];
};

static void make_block(struct blk *b, uint32_t c, uint32_t i)
{
	b->root = (struct kvp_key){ 77, 0 };
	for (int t = 0; t < BT; t++)
		b->tokens[t] = c * 1000 + i * 10 + (uint32_t)t;
	b->parent = i ? (struct kvp_key){ c * 100 + i - 1, c + 1 } : b->root;
	b->key = (struct kvp_key){ c * 100 + i, c + 1 };
	for (int k = 0; k < BB; k++)
		b->kv[k] = (uint8_t)(c * 31 + i * 7 + (uint32_t)k);
}

static struct kvp_disk_meta meta_of(const struct blk *b)
{
	return (struct kvp_disk_meta){ .key = b->key, .parent = b->parent, .root = b->root,
				       .tokens = b->tokens };
}

static void settle(struct kvp_disk *d)
{
	kvp_disk_drain(d);
	(void)kvp_disk_poll(d);
	cr_assert_eq(kvp_disk_check(d), KVP_OK);
}

/* Probe chain c from block 0 for n blocks: how many follow on disk. */
static uint32_t probe(struct kvp_disk *d, uint32_t c, uint32_t n)
{
	struct kvp_key keys[16];
	uint32_t tokens[16 * BT];
	struct blk b;

	for (uint32_t i = 0; i < n; i++) {
		make_block(&b, c, i);
		keys[i] = b.key;
		memcpy(tokens + i * BT, b.tokens, sizeof(b.tokens));
	}
	make_block(&b, c, 0);
	return kvp_disk_probe(d, b.root, b.root, keys, tokens, n);
}

static void fetched(void *arg, int status)
{
	*(int *)arg = status;
}

/* Fetch block i of chain c: its status, and dst holds what was read. */
static int fetch(struct kvp_disk *d, uint32_t c, uint32_t i, uint8_t *dst)
{
	struct blk b;
	struct kvp_disk_meta m;
	int status = 1, rc;

	make_block(&b, c, i);
	m = meta_of(&b);
	rc = kvp_disk_fetch(d, &m, dst, fetched, &status);
	if (rc)
		return rc;
	settle(d);
	cr_assert_neq(status, 1, "the fetch never completed");
	return status;
}

static void put_chain(struct kvp_disk *d, uint32_t c, uint32_t n)
{
	struct blk b;

	for (uint32_t i = n; i-- > 0;) {   /* leaf first, as the pool evicts */
		struct kvp_disk_meta m;

		make_block(&b, c, i);
		m = meta_of(&b);
		cr_assert_eq(kvp_disk_put(d, &m, b.kv), KVP_OK);
	}
	settle(d);
}

static void assert_block(struct kvp_disk *d, uint32_t c, uint32_t i)
{
	uint8_t got[BB];
	struct blk b;

	make_block(&b, c, i);
	cr_assert_eq(fetch(d, c, i, got), KVP_OK, "chain %u block %u", c, i);
	cr_assert_arr_eq(got, b.kv, BB, "chain %u block %u: other bytes", c, i);
}

Test(disk, roundtrip)
{
	struct kvp_disk_config cfg = config(16);
	struct kvp_disk *d = open_disk(&cfg, false);
	struct kvp_disk_stats st;
	struct blk b;
	struct kvp_disk_meta m;

	put_chain(d, 1, 3);
	cr_assert_eq(probe(d, 1, 3), 3);
	cr_assert_eq(probe(d, 1, 5), 3, "blocks never put were found");
	cr_assert_eq(probe(d, 2, 2), 0);
	for (uint32_t i = 0; i < 3; i++)
		assert_block(d, 1, i);
	make_block(&b, 1, 0);
	m = meta_of(&b);
	cr_assert_eq(kvp_disk_put(d, &m, b.kv), KVP_EEXIST);
	kvp_disk_get_stats(d, &st);
	cr_assert_eq(st.writes, 3);
	cr_assert_eq(st.reads, 3);
	cr_assert_eq(st.used, 3);
	kvp_disk_close(d);
}

Test(disk, warm_restart)
{
	struct kvp_disk_config cfg = config(16);
	struct kvp_disk *d = open_disk(&cfg, false);
	struct kvp_disk_stats st;

	put_chain(d, 1, 4);
	put_chain(d, 2, 2);
	kvp_disk_close(d);
	d = open_disk(&cfg, true);
	kvp_disk_get_stats(d, &st);
	cr_assert_eq(st.warm_blocks, 6);
	cr_assert_eq(kvp_disk_check(d), KVP_OK);
	cr_assert_eq(probe(d, 1, 4), 4);
	cr_assert_eq(probe(d, 2, 2), 2);
	assert_block(d, 1, 3);
	assert_block(d, 2, 0);
	kvp_disk_close(d);
}

static void expect_cold(struct kvp_disk_config *cfg, const char *word)
{
	struct kvp_disk *d;
	char why[512];

	cr_assert_eq(kvp_disk_open(cfg, &d, why, sizeof(why)), KVP_OK, "%s", why);
	cr_assert_not_null(strstr(why, word), "why: \"%s\" (wanted it to name %s)", why, word);
	cr_assert_eq(probe(d, 1, 2), 0, "blocks of another configuration were kept");
	if (cfg->block_bytes == BB)   /* this test's blocks fit */
		put_chain(d, 1, 2);
	kvp_disk_close(d);
}

Test(disk, cold_when_anything_differs)
{
	struct kvp_disk_config cfg = config(16);
	struct kvp_disk *d = open_disk(&cfg, false);

	put_chain(d, 1, 2);
	kvp_disk_close(d);
	cfg.model = "m@fedcba9876543210";
	expect_cold(&cfg, "model");
	cfg.kv_dtype = "f32";
	expect_cold(&cfg, "kv_dtype");
	cfg.block_bytes = BB + 16;
	expect_cold(&cfg, "block_bytes");
	cfg = config(16);
	d = open_disk(&cfg, false);   /* back to the first: cold too, what was there differs */
	kvp_disk_close(d);
}

/* Offset of chain c block i's slot in DIR/blocks, from a fresh tier of n slots. */
static int blocks_fd(void)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "%s/blocks", dir);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	return fd;
}

Test(disk, corrupt_kv_byte_is_a_miss)
{
	struct kvp_disk_config cfg = config(4);
	struct kvp_disk *d = open_disk(&cfg, false);
	struct kvp_disk_stats st;
	uint8_t got[BB], x;
	int fd;

	put_chain(d, 1, 1);   /* slot 0 */
	fd = blocks_fd();
	cr_assert_eq(pread(fd, &x, 1, (off_t)slot_head_bytes(BT) + 500), 1);
	x ^= 0x40;
	cr_assert_eq(pwrite(fd, &x, 1, (off_t)slot_head_bytes(BT) + 500), 1);
	close(fd);
	cr_assert_eq(probe(d, 1, 1), 1, "the header still names the block");
	cr_assert_eq(fetch(d, 1, 0, got), KVP_ENOTFOUND);
	kvp_disk_get_stats(d, &st);
	cr_assert_eq(st.verify_failures, 1);
	cr_assert_eq(probe(d, 1, 1), 0, "a block that failed its check is still offered");
	kvp_disk_close(d);
}

Test(disk, crafted_header_is_a_miss)
{
	struct kvp_disk_config cfg = config(4);
	struct kvp_disk *d = open_disk(&cfg, false);
	uint8_t head[8192], got[BB];
	struct slot_hdr h;
	uint32_t tokens[BT];
	struct blk b;
	int fd;

	put_chain(d, 1, 1);
	kvp_disk_close(d);
	/* the same key and a consistent header checksum, but other tokens (and KV whose
	 * checksum the header states): what a forged or colliding block looks like */
	make_block(&b, 1, 0);
	fd = blocks_fd();
	cr_assert_eq(pread(fd, head, slot_head_bytes(BT), 0), (ssize_t)slot_head_bytes(BT));
	cr_assert(slot_decode(head, BT, BB, &h, tokens));
	tokens[0] ^= 1;
	slot_encode(head, &h, tokens);
	cr_assert_eq(pwrite(fd, head, slot_head_bytes(BT), 0), (ssize_t)slot_head_bytes(BT));
	close(fd);
	d = open_disk(&cfg, true);
	cr_assert_eq(probe(d, 1, 1), 0, "a block with other tokens was offered");
	/* fetched anyway (a probe it passed before being rewritten): the read refuses it */
	struct kvp_disk_meta m = meta_of(&b);
	int status = 1;

	cr_assert_eq(kvp_disk_fetch(d, &m, got, fetched, &status), KVP_OK,
		     "key and parent match: the read is queued");
	settle(d);
	cr_assert_eq(status, KVP_ENOTFOUND, "a block with other tokens was read as the block");
	kvp_disk_close(d);
}

Test(disk, slot_cut_short_is_a_miss)
{
	struct kvp_disk_config cfg = config(2);
	struct kvp_disk *d = open_disk(&cfg, false);
	uint8_t got[BB];
	int fd;

	put_chain(d, 1, 2);   /* block 1 in slot 0, block 0 in slot 1 */
	kvp_disk_close(d);
	fd = blocks_fd();     /* a crash during block 0's write: slot 1 ends mid-KV */
	cr_assert_eq(ftruncate(fd, (off_t)slot_bytes(BT, BB) + (off_t)slot_head_bytes(BT) + 10), 0);
	close(fd);
	d = open_disk(&cfg, true);
	cr_assert_eq(probe(d, 1, 2), 2, "headers are whole");
	cr_assert_eq(fetch(d, 1, 0, got), KVP_ENOTFOUND, "a torn block was read as whole");
	assert_block(d, 1, 1);
	kvp_disk_close(d);
}

Test(disk, leaf_first_at_capacity)
{
	struct kvp_disk_config cfg = config(4);
	struct kvp_disk *d = open_disk(&cfg, false);
	struct kvp_disk_stats st;

	put_chain(d, 1, 3);   /* 1.0 <- 1.1 <- 1.2 */
	cr_assert_eq(probe(d, 1, 3), 3);   /* used root first: 1.0 is the least recent */
	put_chain(d, 2, 1);
	cr_assert_eq(probe(d, 2, 1), 1);   /* chain 2 used after chain 1 */
	put_chain(d, 3, 1);   /* one must go: the LRU leaf is 1.2, not 1.0 or 1.1 */
	cr_assert_eq(probe(d, 1, 3), 2, "a parent went before its child, or the wrong block");
	cr_assert_eq(probe(d, 2, 1), 1);
	cr_assert_eq(probe(d, 3, 1), 1);
	kvp_disk_get_stats(d, &st);
	cr_assert_eq(st.evictions, 1);
	kvp_disk_close(d);
}

Test(disk, clear_lasts_past_a_restart)
{
	struct kvp_disk_config cfg = config(8);
	struct kvp_disk *d = open_disk(&cfg, false);

	put_chain(d, 1, 3);
	kvp_disk_clear(d);
	settle(d);
	cr_assert_eq(probe(d, 1, 3), 0);
	kvp_disk_close(d);
	d = open_disk(&cfg, true);
	cr_assert_eq(probe(d, 1, 3), 0, "cleared blocks came back after a restart");
	put_chain(d, 1, 1);
	assert_block(d, 1, 0);
	kvp_disk_close(d);
}

Test(disk, bad_config_is_refused)
{
	struct kvp_disk_config cfg = config(4);
	struct kvp_disk *d;
	char why[256];

	cfg.capacity_bytes = 100;
	cr_assert_eq(kvp_disk_open(&cfg, &d, why, sizeof(why)), KVP_EINVAL);
	cr_assert_not_null(strstr(why, "holds no block"), "why: %s", why);
	cfg = config(4);
	cfg.dir = "/proc/kvp-no-such/dir";
	cr_assert_eq(kvp_disk_open(&cfg, &d, why, sizeof(why)), KVP_EIO);
	cr_assert_not_null(strstr(why, "/proc/kvp-no-such/dir"), "why: %s", why);
}

/* ---- against a model ------------------------------------------------------------------ */

Test(disk, random_model)
{
	enum { CHAINS = 6, LEN = 4, SLOTS = 7 };
	struct kvp_disk_config cfg = config(SLOTS);
	struct kvp_disk *d = open_disk(&cfg, false);
	unsigned seed = 12345;

	for (int step = 0; step < 600; step++) {
		uint32_t c = (uint32_t)rand_r(&seed) % CHAINS, i = (uint32_t)rand_r(&seed) % LEN;
		int op = rand_r(&seed) % 20;
		struct blk b;

		make_block(&b, c, i);
		if (op < 8) {
			struct kvp_disk_meta m = meta_of(&b);
			int rc = kvp_disk_put(d, &m, b.kv);

			cr_assert(rc == KVP_OK || rc == KVP_EEXIST || rc == KVP_EFULL, "put: %d", rc);
		} else if (op < 13) {
			uint32_t n = probe(d, c, LEN);

			cr_assert_leq(n, LEN);
		} else if (op < 18) {
			uint8_t got[BB];
			struct kvp_disk_meta m = meta_of(&b);
			int status = 1, rc = kvp_disk_fetch(d, &m, got, fetched, &status);

			if (rc == KVP_OK) {
				settle(d);
				cr_assert_eq(status, KVP_OK, "step %d: a block held failed its read", step);
				cr_assert_arr_eq(got, b.kv, BB, "step %d: other bytes", step);
			} else {
				cr_assert_eq(rc, KVP_ENOTFOUND);
			}
		} else if (op == 18) {
			kvp_disk_clear(d);
		} else {
			kvp_disk_close(d);
			d = open_disk(&cfg, true);
		}
		if (step % 3 == 0)
			settle(d);
		cr_assert_eq(kvp_disk_check(d), KVP_OK, "step %d", step);
	}
	kvp_disk_close(d);
}

/* ---- the pool and the disk tier together --------------------------------------------------
 *
 * A cache of 6 blocks with host memory over a disk tier of 5 slots, glued as kvprefixd
 * glues them: the demote hook puts each evicted block, a "request" first reads back
 * what the disk holds past the pool's prefix (fresh blocks from seq_begin, fetched,
 * registered by seq_end), then "computes" the rest. A block's KV is a function of its
 * key, so every block the pool holds and every block read back can be checked. Both
 * tiers' invariants after every step.
 */

#include "kvp_cache.h"

#define PB 4                      /* tokens a block in this test */
#define PKV 64                    /* KV bytes a block */

struct glue {
	struct kvp_cache *c;
	struct kvp_disk *d;
	uint8_t buf[PKV];
	int demoted;
};

static void kv_of(struct kvp_key k, uint8_t *kv)
{
	for (int i = 0; i < PKV; i++)
		kv[i] = (uint8_t)((k.lo >> (i % 8 * 8)) ^ (k.hi >> (i % 7 * 8)) ^ (uint64_t)i);
}

static void glue_demote(void *arg, const struct kvp_cache_block_info *b)
{
	struct glue *g = arg;
	const struct kvp_disk_meta m = { .key = b->key, .parent = b->parent, .root = b->root,
					 .tokens = b->tokens };

	cr_assert_eq(kvp_cache_block_read(g->c, b->block_id, g->buf), 0);
	(void)kvp_disk_put(g->d, &m, g->buf);
	g->demoted++;
}

static void run_request(struct glue *g, struct kvp_key root, const uint32_t *tok, uint32_t n)
{
	const uint32_t nb = n / PB;
	struct kvp_key keys[8];
	struct kvp_cache_result res;
	struct kvp_seq seq;
	uint32_t ids[8], m, d, good;
	int st[8];

	kvp_chain_keys(root, tok, nb, PB, keys);
	cr_assert_eq(kvp_cache_lookup(g->c, root, tok, n, 0, false, ids, &res), 0);
	m = res.matched_tokens / PB;
	d = m < nb ? kvp_disk_probe(g->d, root, m ? keys[m - 1] : root, keys + m,
				    tok + (size_t)m * PB, nb - m)
		   : 0;
	if (d && kvp_cache_seq_begin(g->c, root, root, tok, (m + d) * PB, (m + d) * PB, &seq) == 0) {
		for (good = seq.matched_blocks; good < m + d; good++) {
			const struct kvp_disk_meta dm = { .key = keys[good],
							  .parent = good ? keys[good - 1] : root,
							  .root = root, .tokens = tok + (size_t)good * PB };

			st[good] = 1;
			if (kvp_disk_fetch(g->d, &dm, seq.block_data[good], fetched, &st[good]))
				break;
			settle(g->d);
			if (st[good] != KVP_OK)
				break;
			kv_of(keys[good], g->buf);
			cr_assert_arr_eq(seq.block_data[good], g->buf, PKV, "a block read back is not its KV");
		}
		kvp_cache_seq_end(g->c, &seq, tok, good * PB);
	}
	/* the rest computed: every block's KV written, then cached */
	if (kvp_cache_seq_begin(g->c, root, root, tok, n, n, &seq) != 0)
		return;
	for (uint32_t i = 0; i < seq.n_blocks && i < nb; i++) {
		if (i < seq.matched_blocks) {
			kv_of(keys[i], g->buf);
			cr_assert_arr_eq(seq.block_data[i], g->buf, PKV, "a cached block is not its KV");
		} else {
			kv_of(keys[i], seq.block_data[i]);
		}
	}
	kvp_cache_seq_end(g->c, &seq, tok, n);
}

Test(disk, pool_and_disk_together)
{
	struct kvp_cache_config cc = { .block_tokens = PB, .capacity_blocks = 6, .max_tokens = 64,
				       .max_leases = 4 };
	struct kvp_disk_config cfg = {
		.dir = dir, .capacity_bytes = 5 * slot_bytes(PB, PKV), .model = "m@1",
		.block_tokens = PB, .kv_dtype = "f32", .block_bytes = PKV, .staging_bytes = 1 << 16,
	};
	struct glue g = { .demoted = 0 };
	struct kvp_key root = { 5, 5 };
	unsigned seed = 99;
	char why[256];

	cr_assert_eq(kvp_cache_create(&cc, &g.c), 0);
	cr_assert_eq(kvp_cache_attach_memory(g.c, PKV), 0);
	cr_assert_eq(kvp_disk_open(&cfg, &g.d, why, sizeof(why)), 0, "%s", why);
	kvp_cache_set_demote(g.c, glue_demote, &g);
	for (int step = 0; step < 400; step++) {
		uint32_t tok[16], chain = (uint32_t)rand_r(&seed) % 4, len = 4 + rand_r(&seed) % 13;

		for (uint32_t i = 0; i < 16; i++)   /* prompts of one of 4 families, shared starts */
			tok[i] = chain * 100 + (i < 8 ? i : i + (uint32_t)step % 2);
		run_request(&g, root, tok, len);
		settle(g.d);
		cr_assert_eq(kvp_cache_check(g.c), 0, "step %d: the pool", step);
		cr_assert_eq(kvp_disk_check(g.d), 0, "step %d: the disk tier", step);
	}
	cr_assert_gt(g.demoted, 0);
	{
		struct kvp_disk_stats st;

		kvp_disk_get_stats(g.d, &st);
		cr_assert_gt(st.reads, 0, "nothing came back from the disk");
	}
	kvp_disk_close(g.d);
	kvp_cache_destroy(g.c);
}

/* ---- memory mode: the host RAM tier ---------------------------------------------------- */

struct passed {
	struct kvp_disk_meta m[8];
	uint32_t tokens[8][BT];
	uint8_t kv[8][BB];
	int n;
};

static void record_passed(void *arg, const struct kvp_disk_meta *m, const void *kv)
{
	struct passed *p = arg;

	cr_assert_lt(p->n, 8);
	p->m[p->n] = *m;
	memcpy(p->tokens[p->n], m->tokens, sizeof(p->tokens[0]));
	memcpy(p->kv[p->n], kv, BB);
	p->n++;
}

/* Slots in memory, nothing on disk; a block dropped to make room is handed down whole. */
Test(disk, memory_mode_hands_evicted_blocks_down)
{
	struct kvp_disk_config cfg = config(3);
	struct passed p = { .n = 0 };
	struct kvp_disk *d;
	struct blk b;
	char path[128];

	cfg.dir = NULL;
	cfg.evicted = record_passed;
	cfg.evicted_arg = &p;
	d = open_disk(&cfg, true);   /* no manifest to compare: never "cold" */
	put_chain(d, 1, 3);
	cr_assert_eq(probe(d, 1, 3), 3);
	put_chain(d, 2, 1);          /* full: the LRU leaf, 1.2, goes down */
	cr_assert_eq(p.n, 1);
	make_block(&b, 1, 2);
	cr_assert(kvp_key_eq(p.m[0].key, b.key) && kvp_key_eq(p.m[0].parent, b.parent) &&
		  kvp_key_eq(p.m[0].root, b.root), "another block was handed down");
	cr_assert_arr_eq(p.tokens[0], b.tokens, sizeof(b.tokens));
	cr_assert_arr_eq(p.kv[0], b.kv, BB, "its KV bytes were not the block's");
	assert_block(d, 1, 0);
	assert_block(d, 2, 0);
	snprintf(path, sizeof(path), "%s/blocks", dir);
	cr_assert_neq(access(path, F_OK), 0, "memory mode wrote a file");
	kvp_disk_close(d);
}

/* One namespace's blocks dropped, now and after a restart; another's kept. */
Test(disk, clear_one_namespace)
{
	struct kvp_disk_config cfg = config(16);
	struct kvp_disk *d = open_disk(&cfg, false);
	struct kvp_key other = { 88, 0 };
	uint32_t tokens[2 * BT];
	struct kvp_key keys[2];
	struct blk b;

	put_chain(d, 1, 2);
	for (uint32_t i = 2; i-- > 0;) {   /* chain 1's blocks again, in namespace "other" */
		struct kvp_disk_meta m;

		make_block(&b, 1, i);
		m = meta_of(&b);
		m.root = other;
		m.parent = i ? b.parent : other;
		cr_assert_eq(kvp_disk_put(d, &m, b.kv), KVP_OK);
		keys[i] = b.key;
		memcpy(tokens + i * BT, b.tokens, sizeof(b.tokens));
	}
	settle(d);
	cr_assert_eq(kvp_disk_probe(d, other, other, keys, tokens, 2), 2);
	cr_assert_eq(kvp_disk_clear_ns(d, other), 2);
	settle(d);
	cr_assert_eq(kvp_disk_probe(d, other, other, keys, tokens, 2), 0);
	cr_assert_eq(probe(d, 1, 2), 2, "another namespace's blocks went too");
	kvp_disk_close(d);
	d = open_disk(&cfg, true);
	cr_assert_eq(kvp_disk_probe(d, other, other, keys, tokens, 2), 0,
		     "a cleared namespace came back after a restart");
	cr_assert_eq(probe(d, 1, 2), 2);
	kvp_disk_close(d);
}
