/*
 * tier.c - kvprefixd's disk tier (--disk-cache DIR, --disk-cache-gb N): below the pool.
 *
 *   start        kvp_disk_open after the cache: a warm start keeps what DIR holds for
 *                this model, block size and KV dtype; anything else starts cold, and
 *                the log says why
 *   eviction     the cache's demote hook: a block leaving the pool to make room is
 *                copied out and queued for the disk (never waited for; a full queue
 *                drops it, counted)
 *   GENERATE     before it begins (tier_promote): the blocks of its prompt the disk
 *                holds past what the pool does are read, on the tier's thread, into
 *                fresh pool blocks taken as a sequence takes them (its cached prefix
 *                pinned); each read is checked against the block asked for; then the
 *                good ones are registered as if computed and the request begins, its
 *                usage counting them as cached
 *   stop         (tier_close) reads finished, the ADMIN pins saved and dropped
 *                (tier_pins.c), every cached block written, the file synced: the next
 *                start is warm, and pins its prefixes again
 *
 * Event loop thread only, but for tier_notify (the tier's thread activating an event).
 */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "gen_req.h"
#include "kvp_disk.h"
#include "kvp_engine.h"
#include "kvp_log.h"
#include "server.h"

#define TIER_STAGING_BYTES (64u << 20)   /* writes queued at once */

/* A GENERATE's blocks being read from the disk. */
struct promotion {
	struct server *s;
	struct gen_req *r;
	struct kvp_seq seq;
	struct kvp_key *keys;      /* (end) chained keys of the prompt's blocks */
	uint32_t first, end;       /* blocks [first, end) come from the disk */
	uint32_t pending;
	uint8_t *staging;          /* a GPU pool's blocks are read here, then copied up */
	struct promo_read {
		struct promotion *p;
		int status;
	} *reads;                  /* (end - first) */
};

static void tier_notify(void *arg)
{
	struct server *s = arg;

	event_active(s->tier_event, EV_READ, 0);
}

static void tier_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	(void)fd;
	(void)what;
	(void)kvp_disk_poll(s->disk);
	maybe_finish_stop(s);
}

/* The cache's demote hook: the block copied out and queued for the disk. */
static void tier_demote(void *arg, const struct kvp_cache_demoted *b)
{
	struct server *s = arg;
	const struct kvp_disk_meta m = { .key = b->key, .parent = b->parent, .root = b->root,
					 .tokens = b->tokens };

	if (kvp_cache_block_read(s->cache, b->block_id, s->tier_buf) != KVP_OK)
		return;
	(void)kvp_disk_put(s->disk, &m, s->tier_buf);   /* dropped ones are counted there */
}

int tier_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	const size_t bb = kvp_engine_block_bytes(s->engine);
	const struct kvp_disk_config dc = {
		.dir = cfg->disk_cache,
		.capacity_bytes = (uint64_t)cfg->disk_cache_gb * 1000000000u,
		.model = s->ns_name,
		.block_tokens = cfg->block_tokens,
		.kv_dtype = cfg->kv_dtype == KVP_KV_F16 ? "f16" : "f32",
		.block_bytes = bb,
		.staging_bytes = TIER_STAGING_BYTES,
		.notify = tier_notify,
		.notify_arg = s,
	};
	struct kvp_disk_stats st;
	char why[1024];
	int rc;

	if (!cfg->disk_cache)
		return KVP_OK;
	s->tier_buf = srv_malloc_aligned(bb, 64);
	s->tier_event = event_new(s->base, -1, 0, tier_event_cb, s);
	if (!s->tier_buf || !s->tier_event) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	rc = kvp_disk_open(&dc, &s->disk, why, sizeof(why));
	if (rc) {
		kvp_err("--disk-cache %s: %s", cfg->disk_cache, why[0] ? why : kvp_strerror(rc));
		return rc;
	}
	kvp_disk_get_stats(s->disk, &st);
	if (why[0])
		kvp_info("disk tier %s: starting cold: %s", cfg->disk_cache, why);
	else
		kvp_info("disk tier %s: warm start, %llu blocks kept", cfg->disk_cache,
			 (unsigned long long)st.warm_blocks);
	kvp_info("disk tier %s: %llu blocks of %llu bytes (%u GB)", cfg->disk_cache,
		 (unsigned long long)st.slots, (unsigned long long)st.slot_bytes,
		 cfg->disk_cache_gb);
	kvp_cache_set_demote(s->cache, tier_demote, s);
	tier_pins_restore(s, why[0] == '\0');
	return KVP_OK;
}

/* Every unpinned cached block to the disk, a queue's worth at a time. */
static void tier_flush(struct server *s)
{
	struct kvp_disk_stats st;
	size_t batch, n, total = 0;

	kvp_disk_get_stats(s->disk, &st);   /* a slot is at least what a write stages */
	batch = TIER_STAGING_BYTES / st.slot_bytes ? TIER_STAGING_BYTES / st.slot_bytes : 1;

	while ((n = kvp_cache_demote_some(s->cache, batch)) > 0) {
		total += n;
		kvp_disk_drain(s->disk);
		(void)kvp_disk_poll(s->disk);
	}
	kvp_info("disk tier %s: %zu cached blocks written at stop", s->cfg->disk_cache, total);
}

void tier_close(struct server *s)
{
	if (s->disk) {
		/* reads in flight complete first: their requests end, their blocks go back */
		while (s->n_promoting) {
			kvp_disk_drain(s->disk);
			(void)kvp_disk_poll(s->disk);
		}
		if (s->cache) {
			tier_pins_save(s);
			tier_flush(s);
		}
		kvp_cache_set_demote(s->cache, NULL, NULL);
		kvp_disk_close(s->disk);
		s->disk = NULL;
	}
	if (s->tier_event)
		event_free(s->tier_event);
	s->tier_event = NULL;
	srv_free(s->tier_buf);
	s->tier_buf = NULL;
}

void tier_view(const struct server *s, struct kvp_tier_view *v)
{
	memset(v, 0, sizeof(*v));
	if (!s->disk)
		return;
	v->present = true;
	kvp_disk_get_stats(s->disk, &v->disk);
	v->promotions = s->tier_promotions;
	v->promoted_blocks = s->tier_promoted_blocks;
}

/* ---- promotion ------------------------------------------------------------------------ */

static void promotion_free(struct promotion *p)
{
	free(p->keys);
	free(p->reads);
	srv_free(p->staging);
	free(p);
}

/* Every read is back: the leading good blocks registered, then the request begins. */
static void promotion_finish(struct promotion *p)
{
	struct server *s = p->s;
	struct gen_req *r = p->r;
	const uint32_t bt = s->cfg->block_tokens;
	const size_t bb = kvp_cache_block_bytes(s->cache);
	uint32_t n = p->first;

	for (; n < p->end && p->reads[n - p->first].status == KVP_OK; n++)
		if (p->staging &&
		    kvp_cache_block_write(s->cache, p->seq.block_ids[n],
					  p->staging + (size_t)(n - p->first) * bb) != KVP_OK)
			break;
	kvp_cache_seq_end(s->cache, &p->seq, r->job.tokens, n * bt);
	s->tier_promoted_blocks += n - p->first;
	kvp_debug("GENERATE %u: %u blocks read back from the disk tier (%u asked for)", r->req_id,
		  n - p->first, p->end - p->first);
	s->n_promoting--;
	promotion_free(p);
	gen_req_begin_waited(s, r);
}

static void promotion_read_done(void *arg, int status)
{
	struct promo_read *rd = arg;
	struct promotion *p = rd->p;

	rd->status = status;
	if (--p->pending == 0)
		promotion_finish(p);
}

/* Blocks [first, end) of p's prompt: one read each. How many were queued. */
static uint32_t promotion_reads(struct server *s, struct promotion *p, struct kvp_key root)
{
	const uint32_t bt = s->cfg->block_tokens;
	const size_t bb = kvp_cache_block_bytes(s->cache);
	uint32_t queued = 0;

	for (uint32_t i = p->first; i < p->end; i++) {
		struct promo_read *rd = &p->reads[i - p->first];
		const struct kvp_disk_meta m = {
			.key = p->keys[i], .parent = i ? p->keys[i - 1] : root, .root = root,
			.tokens = p->r->job.tokens + (size_t)i * bt,
		};
		void *dst = p->staging ? p->staging + (size_t)(i - p->first) * bb
				       : p->seq.block_data[i];

		rd->p = p;
		rd->status = KVP_ENOTFOUND;
		if (kvp_disk_fetch(s->disk, &m, dst, promotion_read_done, rd) != KVP_OK)
			break;   /* the rest stay not found: only blocks before it count */
		queued++;
	}
	return queued;
}

/* The disk's blocks of r's prompt past the pool's: how many, and their keys in *keys. */
static uint32_t promotion_probe(struct server *s, struct gen_req *r, struct kvp_key root,
				uint32_t *matched, struct kvp_key **keys)
{
	const uint32_t bt = s->cfg->block_tokens, n = r->req.n_tokens, nb = n / bt;
	struct kvp_cache_result res;
	uint32_t m, d;

	if (nb == 0 || kvp_cache_lookup(s->cache, root, r->job.tokens, n, 0, false, s->block_ids,
					&res) != KVP_OK)
		return 0;
	m = res.matched_tokens / bt;
	if (m >= nb || !(*keys = malloc(nb * sizeof(**keys))))
		return 0;
	kvp_chain_keys(root, r->job.tokens, nb, bt, *keys);
	d = kvp_disk_probe(s->disk, root, m ? (*keys)[m - 1] : root, *keys + m,
			   r->job.tokens + (size_t)m * bt, nb - m);
	if (d == 0) {
		free(*keys);
		*keys = NULL;
	}
	*matched = m;
	return d;
}

bool tier_promote(struct server *s, struct gen_req *r)
{
	const struct conn *c = r->conn;
	const uint32_t bt = s->cfg->block_tokens;
	struct promotion *p;
	struct kvp_key *keys = NULL;
	uint32_t m = 0, d;

	if (!s->disk)
		return false;
	d = promotion_probe(s, r, c->root, &m, &keys);
	if (d == 0)
		return false;
	p = calloc(1, sizeof(*p));
	if (!p) {
		free(keys);
		return false;
	}
	p->s = s;
	p->r = r;
	p->keys = keys;
	/* the matched prefix pinned, fresh blocks for the disk's: as a sequence takes them */
	if (kvp_cache_seq_begin(s->cache, c->root, c->group, r->job.tokens, (m + d) * bt,
				(m + d) * bt, &p->seq) != KVP_OK) {
		promotion_free(p);
		return false;   /* the request begins as it is, and says why if it cannot */
	}
	p->first = p->seq.matched_blocks;
	p->end = m + d;
	p->reads = calloc(p->end - p->first + 1, sizeof(*p->reads));
	if (kvp_cache_on_device(s->cache))
		p->staging = srv_malloc_aligned((size_t)(p->end - p->first) *
						kvp_cache_block_bytes(s->cache), 64);
	p->pending = p->reads && (p->staging || !kvp_cache_on_device(s->cache))
			     ? promotion_reads(s, p, c->root)
			     : 0;
	s->n_promoting++;
	s->tier_promotions++;
	if (p->pending == 0)
		promotion_finish(p);   /* nothing could be queued: the request begins now */
	return true;
}
