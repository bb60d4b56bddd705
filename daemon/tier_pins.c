/*
 * tier_pins.c - ADMIN pins and keeps across a restart, with the disk tier (--disk-cache).
 *
 *   stop    every admin pin (its namespace, quota group and prefix) and every keep (the
 *           same, its time as wall-clock milliseconds and its priority) written to
 *           DIR/pins, then both let go so that the flush writes their blocks too
 *   start   (warm only) each one's blocks read back from the disk into the pool, then
 *           pinned again as ADMIN PIN would, or kept again until the same time (a keep
 *           whose time passed while the daemon was down is dropped); one whose blocks are
 *           gone holds what is left of its prefix, or nothing
 *
 * DIR/pins: magic "KVPPINS2", u32 count, then per pin the root (lo, hi), the group (lo,
 * hi), u32 n_tokens and the tokens (u32 each); then u32 count, and per keep the root, the
 * group, u64 until (Unix time, ms), u32 priority, u32 n_tokens and the tokens; all
 * little-endian, then the XXH3-64 of everything before it. "KVPPINS1" (pins only) is
 * read too. A file that does not check out is ignored (logged). Runs at start and stop
 * only, where waiting for the disk is fine. Event loop thread.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvp_clock.h"
#include "kvp_disk.h"
#include "kvp_le.h"
#include "kvp_log.h"
#include "server.h"

static const char pins_magic[8] = { 'K', 'V', 'P', 'P', 'I', 'N', 'S', '2' };
static const char pins_magic_v1[8] = { 'K', 'V', 'P', 'P', 'I', 'N', 'S', '1' };

struct pins_buf {
	uint8_t *p;
	size_t len, cap;
	uint32_t count;
	uint64_t mono_ms, unix_ms;   /* now, on both clocks: a keep's time moves between them */
	bool oom;
};

static void put(struct pins_buf *b, const void *src, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
		uint8_t *p = realloc(b->p, cap);

		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void put_u32(struct pins_buf *b, uint32_t v)
{
	uint8_t x[4];

	kvp_le_put_u32(x, v);
	put(b, x, 4);
}

static void put_key(struct pins_buf *b, struct kvp_key k)
{
	uint8_t x[16];

	kvp_le_put_u64(x, k.lo);
	kvp_le_put_u64(x + 8, k.hi);
	put(b, x, 16);
}

/* u32 n, then the tokens */
static void put_tokens(struct pins_buf *b, const uint32_t *tokens, size_t n)
{
	put_u32(b, (uint32_t)n);
	for (size_t i = 0; i < n; i++)
		put_u32(b, tokens[i]);
}

static void add_pin(void *arg, struct kvp_key root, struct kvp_key group, const uint32_t *tokens,
		    size_t n)
{
	struct pins_buf *b = arg;

	put_key(b, root);
	put_key(b, group);
	put_tokens(b, tokens, n);
	b->count++;
}

static void add_keep(void *arg, const struct kvp_cache_keep_info *k)
{
	struct pins_buf *b = arg;
	uint8_t x[8];

	if (k->until_ms <= b->mono_ms)
		return;   /* due: the next expiry would have let it go */
	put_key(b, k->root);
	put_key(b, k->group);
	kvp_le_put_u64(x, b->unix_ms + (k->until_ms - b->mono_ms));
	put(b, x, 8);
	put_u32(b, k->priority);
	put_tokens(b, k->tokens, k->n_tokens);
	b->count++;
}

static uint64_t unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void pins_path(const struct server *s, char *out, size_t cap, const char *suffix)
{
	snprintf(out, cap, "%s/pins%s", s->cfg->disk_cache, suffix);
}

void tier_pins_save(struct server *s)
{
	struct pins_buf b = { .mono_ms = kvp_clock_ns() / 1000000u, .unix_ms = unix_ms() };
	char path[4096], tmp[4096];
	uint32_t pins, keeps;
	size_t keeps_at;
	uint8_t sum[8];
	FILE *f;
	bool ok;

	put(&b, pins_magic, sizeof(pins_magic));
	put_u32(&b, 0);   /* the count, below */
	ok = kvp_cache_admin_pins(s->cache, add_pin, &b) == KVP_OK;
	pins = b.count;
	keeps_at = b.len;
	b.count = 0;
	put_u32(&b, 0);
	ok = ok && kvp_cache_keeps(s->cache, add_keep, &b) == KVP_OK;
	keeps = b.count;
	if (!ok || b.oom) {
		kvp_err("disk tier: out of memory saving the ADMIN pins and keeps: they are lost");
		free(b.p);
		return;
	}
	kvp_le_put_u32(b.p + 8, pins);
	kvp_le_put_u32(b.p + keeps_at, keeps);
	kvp_le_put_u64(sum, XXH3_64bits(b.p, b.len));
	put(&b, sum, sizeof(sum));
	pins_path(s, path, sizeof(path), "");
	pins_path(s, tmp, sizeof(tmp), ".tmp");
	f = b.oom ? NULL : fopen(tmp, "wb");
	ok = f && fwrite(b.p, 1, b.len, f) == b.len && fflush(f) == 0 && fsync(fileno(f)) == 0;
	if (f)
		ok = fclose(f) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		kvp_err("disk tier: cannot write %s: %s; the ADMIN pins and keeps are lost", path,
			strerror(errno));
		unlink(tmp);
	} else if (pins || keeps) {
		kvp_info("disk tier: %u ADMIN pins and %u keeps saved", pins, keeps);
	}
	free(b.p);
	/* their blocks go to the disk too */
	(void)kvp_cache_admin_unpin_all(s->cache);
	(void)kvp_cache_expire(s->cache, UINT64_MAX);
}

/* ---- restoring ------------------------------------------------------------------------ */

struct pin_read {
	int status;
	bool done;
};

static void pin_read_done(void *arg, int status)
{
	struct pin_read *r = arg;

	r->status = status;
	r->done = true;
}

/* The blocks of tokens[0 .. n) the disk holds, read into the pool now (waiting for
 * them) and registered; how many leading blocks are cached afterwards. */
static uint32_t pin_promote(struct server *s, struct kvp_key root, struct kvp_key group,
			    const uint32_t *tokens, uint32_t n)
{
	const uint32_t bt = s->cfg->block_tokens, nb = n / bt;
	const size_t bb = kvp_cache_block_bytes(s->cache);
	const bool dev = kvp_cache_on_device(s->cache);
	struct kvp_key *keys = malloc((nb ? nb : 1) * sizeof(*keys));
	struct pin_read *rd = calloc(nb ? nb : 1, sizeof(*rd));
	uint8_t *stage = dev ? malloc(bb) : NULL;
	struct kvp_seq seq;
	uint32_t d, good = 0, first;

	if (!keys || !rd || (dev && !stage) || nb == 0)
		goto out;
	kvp_chain_keys(root, tokens, nb, bt, keys);
	d = kvp_disk_probe(s->disk, root, root, keys, tokens, nb);
	if (d == 0 || kvp_cache_seq_begin(s->cache, root, group, tokens, d * bt, d * bt, &seq))
		goto out;
	first = seq.matched_blocks;   /* another pin's prefix, already restored */
	for (good = first; good < d; good++) {
		const struct kvp_disk_meta m = { .key = keys[good],
						 .parent = good ? keys[good - 1] : root,
						 .root = root, .tokens = tokens + (size_t)good * bt };

		if (kvp_disk_fetch(s->disk, &m, dev ? stage : seq.block_data[good], pin_read_done,
				   &rd[good]) != KVP_OK)
			break;
		while (!rd[good].done) {   /* one at a time: a stage of one block */
			kvp_disk_drain(s->disk);
			(void)kvp_disk_poll(s->disk);
		}
		if (rd[good].status != KVP_OK ||
		    (dev && kvp_cache_block_write(s->cache, seq.block_ids[good], stage) != KVP_OK))
			break;
	}
	kvp_cache_seq_end(s->cache, &seq, tokens, good * bt);
	s->tier_promoted_blocks += good - first;
out:
	free(keys);
	free(rd);
	free(stage);
	return good;
}

/* A pin or keep as saved: its tokens in a buffer take_prefix grows. */
struct saved {
	struct kvp_key root, group;
	uint64_t until;
	uint32_t priority, n, *tokens;
};

/* One prefix at buf + *off into *p (root, group, then when timed the until and priority,
 * then n_tokens and the tokens); false when the file ends or cannot be what this daemon
 * wrote. */
static bool take_prefix(const struct server *s, const uint8_t *buf, size_t len, size_t *off,
			bool timed, struct saved *p)
{
	const size_t head = 36 + (timed ? 12 : 0);
	uint32_t *t;

	if (*off + head > len)
		return false;
	buf += *off;
	p->root = (struct kvp_key){ kvp_le_get_u64(buf), kvp_le_get_u64(buf + 8) };
	p->group = (struct kvp_key){ kvp_le_get_u64(buf + 16), kvp_le_get_u64(buf + 24) };
	if (timed) {
		p->until = kvp_le_get_u64(buf + 32);
		p->priority = kvp_le_get_u32(buf + 40);
	}
	p->n = kvp_le_get_u32(buf + head - 4);
	if (p->n > s->cfg->max_tokens || *off + head + 4 * (size_t)p->n > len)
		return false;
	t = realloc(p->tokens, (p->n ? p->n : 1) * sizeof(*t));
	if (!t)
		return false;
	p->tokens = t;
	for (uint32_t i = 0; i < p->n; i++)
		t[i] = kvp_le_get_u32(buf + head + 4 * (size_t)i);
	*off += head + 4 * (size_t)p->n;
	return true;
}

/* Parse and re-pin every pin of buf (len bytes, checksum checked), then (v2) keep every
 * keep again whose time has not come. */
static void restore(struct server *s, const uint8_t *buf, size_t len, bool v2)
{
	const uint64_t mono = kvp_clock_ns() / 1000000u, now = unix_ms();
	uint32_t count = kvp_le_get_u32(buf + 8), restored = 0, due = 0, kept;
	struct saved p = { .tokens = NULL };
	size_t off = 12;
	uint32_t i;

	for (i = 0; i < count && take_prefix(s, buf, len, &off, false, &p); i++) {
		uint32_t pinned = 0;

		if (pin_promote(s, p.root, p.group, p.tokens, p.n) &&
		    kvp_cache_admin_pin(s->cache, p.root, p.tokens, p.n, &pinned) == KVP_OK && pinned)
			restored++;
	}
	kvp_info("disk tier: %u of %u ADMIN pins restored", restored, count);
	if (!v2 || i < count || off + 4 > len) {
		free(p.tokens);
		return;
	}
	count = kvp_le_get_u32(buf + off);
	off += 4;
	restored = 0;
	for (i = 0; i < count && take_prefix(s, buf, len, &off, true, &p); i++) {
		if (p.until <= now) {
			due++;
			continue;
		}
		if (pin_promote(s, p.root, p.group, p.tokens, p.n) &&
		    kvp_cache_keep(s->cache, p.root, p.group, p.tokens, p.n, mono + (p.until - now),
				   p.priority, &kept) == KVP_OK && kept)
			restored++;
	}
	free(p.tokens);
	kvp_info("disk tier: %u of %u keeps restored (%u had ended while stopped)", restored, count,
		 due);
}

void tier_pins_restore(struct server *s, bool warm)
{
	char path[4096];
	uint8_t *buf = NULL;
	long len;
	FILE *f;

	pins_path(s, path, sizeof(path), "");
	if (!warm) {
		(void)unlink(path);   /* another model's, or another layout's */
		return;
	}
	f = fopen(path, "rb");
	if (!f)
		return;
	if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 20 && len < (1l << 30) &&
	    fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len)) &&
	    fread(buf, 1, (size_t)len, f) == (size_t)len &&
	    (memcmp(buf, pins_magic, sizeof(pins_magic)) == 0 ||
	     memcmp(buf, pins_magic_v1, sizeof(pins_magic_v1)) == 0) &&
	    kvp_le_get_u64(buf + len - 8) == XXH3_64bits(buf, (size_t)len - 8))
		restore(s, buf, (size_t)len - 8, buf[7] == '2');
	else
		kvp_warn("disk tier: %s is not a pins file this daemon wrote: ignored", path);
	fclose(f);
	free(buf);
}
