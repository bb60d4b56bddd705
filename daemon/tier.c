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
#include <unistd.h>

#include <event2/event.h>

#include "gen_req.h"
#include "kvp_disk.h"
#include "kvp_engine.h"
#include "kvp_log.h"
#include "kvp_redis.h"
#include "server.h"

#define TIER_STAGING_BYTES (64u << 20)   /* disk writes queued at once */
#define REDIS_QUEUE_BYTES (64u << 20)    /* Redis writes queued at once */

/* A GENERATE's blocks being read back: [first, disk_end) from the disk, then
 * [redis_from, end) from Redis. */
struct promotion {
	struct server *s;
	struct gen_req *r;
	struct kvp_seq seq;
	struct kvp_key *keys;      /* (end) chained keys of the prompt's blocks */
	uint32_t first, disk_end, redis_from, end;
	uint32_t pending;          /* reads and fetches not back yet */
	uint32_t redis_good;       /* leading blocks from redis_from that Redis had */
	uint8_t *staging;          /* a GPU pool's blocks are read here, then copied up */
	struct promo_read {
		struct promotion *p;
		int status;
	} *reads;                  /* (disk_end - first) */
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
static void tier_demote(void *arg, const struct kvp_cache_block_info *b)
{
	struct server *s = arg;
	const struct kvp_disk_meta m = { .key = b->key, .parent = b->parent, .root = b->root,
					 .tokens = b->tokens };

	if (kvp_cache_block_read(s->cache, b->block_id, s->tier_buf) != KVP_OK)
		return;
	(void)kvp_disk_put(s->disk, &m, s->tier_buf);   /* dropped ones are counted there */
}

/* ---- Redis ------------------------------------------------------------------------------ */

static void redis_notify(void *arg)
{
	struct server *s = arg;

	event_active(s->redis_event, EV_READ, 0);
}

static void redis_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	char msg[800];

	(void)fd;
	(void)what;
	(void)kvp_redis_poll(s->redis);
	if (kvp_redis_take_change(s->redis, msg, sizeof(msg)))
		kvp_info("%s", msg);
	maybe_finish_stop(s);
}

/* The cache's stored hook: a block the engine computed, copied out and queued for
 * Redis (dropped, counted, when the queue is full or Redis is down). */
static void tier_stored(void *arg, const struct kvp_cache_block_info *b)
{
	struct server *s = arg;
	const struct kvp_disk_meta m = { .key = b->key, .parent = b->parent, .root = b->root,
					 .tokens = b->tokens };

	if (s->tier_quiet || kvp_cache_block_read(s->cache, b->block_id, s->tier_buf) != KVP_OK)
		return;
	(void)kvp_redis_put(s->redis, &m, s->tier_buf);
}

static int redis_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	const struct kvp_redis_config rc = {
		.url = cfg->redis,
		.password = cfg->redis_password,
		.ttl_s = cfg->redis_ttl_s,
		.model = s->ns_name,
		.block_tokens = cfg->block_tokens,
		.kv_dtype = cfg->kv_dtype == KVP_KV_F16 ? "f16" : "f32",
		.block_bytes = kvp_engine_block_bytes(s->engine),
		.queue_bytes = REDIS_QUEUE_BYTES,
		.notify = redis_notify,
		.notify_arg = s,
	};
	char why[600];
	int rc2;

	s->redis_event = event_new(s->base, -1, 0, redis_event_cb, s);
	if (!s->redis_event) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	rc2 = kvp_redis_open(&rc, &s->redis, why, sizeof(why));
	if (rc2) {
		kvp_err("--redis: %s", rc2 == KVP_EINVAL ? why : kvp_strerror(rc2));
		return rc2;
	}
	kvp_info("redis tier %s: blocks computed here are shared there%s", cfg->redis,
		 cfg->redis_ttl_s ? " (with an expiry)" : "");
	kvp_cache_set_stored(s->cache, tier_stored, s);
	return KVP_OK;
}

/* ---- open and close ---------------------------------------------------------------------- */

static int disk_open(struct server *s)
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

	s->tier_event = event_new(s->base, -1, 0, tier_event_cb, s);
	if (!s->tier_event) {
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

int tier_open(struct server *s)
{
	int rc = KVP_OK;

	if (!s->cfg->disk_cache && !s->cfg->redis)
		return KVP_OK;
	s->tier_buf = srv_malloc_aligned(kvp_engine_block_bytes(s->engine), 64);
	if (!s->tier_buf) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	if (s->cfg->disk_cache)
		rc = disk_open(s);
	if (rc == KVP_OK && s->cfg->redis)
		rc = redis_open(s);
	return rc;
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
	/* reads in flight complete first: their requests end, their blocks go back */
	while (s->n_promoting) {
		if (s->disk) {
			kvp_disk_drain(s->disk);
			(void)kvp_disk_poll(s->disk);
		}
		if (s->redis && kvp_redis_poll(s->redis) == 0 && s->n_promoting)
			usleep(1000);   /* a fetch on Redis's thread: at most its timeout */
	}
	if (s->redis) {
		kvp_cache_set_stored(s->cache, NULL, NULL);
		kvp_redis_close(s->redis);
		s->redis = NULL;
	}
	if (s->redis_event)
		event_free(s->redis_event);
	s->redis_event = NULL;
	if (s->disk) {
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
	if (s->disk) {
		v->present = true;
		v->promotions = s->tier_promotions;
		kvp_disk_get_stats(s->disk, &v->disk);
		v->promoted_blocks = s->tier_promoted_blocks;
	}
	if (s->redis) {
		v->redis_present = true;
		kvp_redis_get_stats(s->redis, &v->redis);
		v->redis_promotions = s->redis_promotions;
		v->redis_promoted_blocks = s->redis_promoted_blocks;
	}
}

/* ---- promotion ------------------------------------------------------------------------ */

static void promotion_free(struct promotion *p)
{
	free(p->keys);
	free(p->reads);
	srv_free(p->staging);
	free(p);
}

/* Where block i's KV is read to: its pool block, or its place in the staging buffer. */
static void *promotion_dst(struct promotion *p, uint32_t i)
{
	return p->staging ? p->staging + (size_t)(i - p->first) * kvp_cache_block_bytes(p->s->cache)
			  : p->seq.block_data[i];
}

/* Every read is back: the leading good blocks registered, then the request begins. */
static void promotion_finish(struct promotion *p)
{
	struct server *s = p->s;
	struct gen_req *r = p->r;
	const uint32_t bt = s->cfg->block_tokens;
	uint32_t n = p->first, disk;

	while (n < p->disk_end && p->reads[n - p->first].status == KVP_OK)
		n++;
	disk = n - p->first;
	if (n >= p->redis_from)
		n = p->redis_from + p->redis_good;
	for (uint32_t i = p->first; p->staging && i < n; i++)
		if (kvp_cache_block_write(s->cache, p->seq.block_ids[i], promotion_dst(p, i)) != KVP_OK) {
			n = i;
			break;
		}
	s->tier_quiet = true;   /* blocks read back are not written to Redis again */
	kvp_cache_seq_end(s->cache, &p->seq, r->job.tokens, n * bt);
	s->tier_quiet = false;
	s->tier_promoted_blocks += disk < n - p->first ? disk : n - p->first;
	s->redis_promoted_blocks += n > p->redis_from ? n - p->redis_from : 0;
	kvp_debug("GENERATE %u: %u blocks read back (disk %u, Redis %u)", r->req_id, n - p->first,
		  disk, p->redis_good);
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

static void promotion_fetch_done(void *arg, uint32_t good)
{
	struct promotion *p = arg;

	p->redis_good = good;
	if (--p->pending == 0)
		promotion_finish(p);
}

/* Blocks [first, disk_end) of p's prompt: one disk read each. How many were queued. */
static uint32_t promotion_reads(struct server *s, struct promotion *p, struct kvp_key root)
{
	const uint32_t bt = s->cfg->block_tokens;
	uint32_t queued = 0;

	for (uint32_t i = p->first; i < p->disk_end; i++) {
		struct promo_read *rd = &p->reads[i - p->first];
		const struct kvp_disk_meta m = {
			.key = p->keys[i], .parent = i ? p->keys[i - 1] : root, .root = root,
			.tokens = p->r->job.tokens + (size_t)i * bt,
		};

		rd->p = p;
		rd->status = KVP_ENOTFOUND;
		if (kvp_disk_fetch(s->disk, &m, promotion_dst(p, i), promotion_read_done, rd) != KVP_OK)
			break;   /* the rest stay not found: only blocks before it count */
		queued++;
	}
	return queued;
}

/* Blocks [redis_from, end) in one fetch from Redis. 1 when it was queued, else 0. */
static uint32_t promotion_fetch(struct server *s, struct promotion *p, struct kvp_key root)
{
	const uint32_t n = p->end - p->redis_from;
	void **dst = n ? malloc(n * sizeof(*dst)) : NULL;
	int rc;

	if (!dst)
		return 0;
	for (uint32_t i = 0; i < n; i++)
		dst[i] = promotion_dst(p, p->redis_from + i);
	rc = kvp_redis_fetch(s->redis, root, p->redis_from ? p->keys[p->redis_from - 1] : root,
			     p->keys + p->redis_from,
			     p->r->job.tokens + (size_t)p->redis_from * s->cfg->block_tokens, n, dst,
			     promotion_fetch_done, p);
	free(dst);
	return rc == KVP_OK;
}

/* Whether Redis is worth a round trip now. */
static bool redis_up(const struct server *s)
{
	struct kvp_redis_stats st;

	if (!s->redis)
		return false;
	kvp_redis_get_stats(s->redis, &st);
	return st.connected;
}

/* The prompt's blocks past the pool's prefix that a tier may hold: *disk from the disk
 * (probed), then *more to ask Redis for; their keys in *keys. */
static void promotion_probe(struct server *s, struct gen_req *r, struct kvp_key root,
			    uint32_t *matched, uint32_t *disk, uint32_t *more, struct kvp_key **keys)
{
	const uint32_t bt = s->cfg->block_tokens, n = r->req.n_tokens, nb = n / bt;
	struct kvp_cache_result res;
	uint32_t m;

	*disk = *more = 0;
	if (nb == 0 || kvp_cache_lookup(s->cache, root, r->job.tokens, n, 0, false, s->block_ids,
					&res) != KVP_OK)
		return;
	m = res.matched_tokens / bt;
	if (m >= nb || !(*keys = malloc(nb * sizeof(**keys))))
		return;
	kvp_chain_keys(root, r->job.tokens, nb, bt, *keys);
	if (s->disk)
		*disk = kvp_disk_probe(s->disk, root, m ? (*keys)[m - 1] : root, *keys + m,
				       r->job.tokens + (size_t)m * bt, nb - m);
	if (redis_up(s))
		*more = nb - m - *disk;
	*matched = m;
}

bool tier_promote(struct server *s, struct gen_req *r)
{
	const struct conn *c = r->conn;
	const uint32_t bt = s->cfg->block_tokens;
	struct promotion *p;
	struct kvp_key *keys = NULL;
	uint32_t m = 0, d, more;

	if (!s->disk && !s->redis)
		return false;
	promotion_probe(s, r, c->root, &m, &d, &more, &keys);
	if (d + more == 0) {
		free(keys);
		return false;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		free(keys);
		return false;
	}
	p->s = s;
	p->r = r;
	p->keys = keys;
	/* the matched prefix pinned, fresh blocks for the rest: as a sequence takes them */
	if (kvp_cache_seq_begin(s->cache, c->root, c->group, r->job.tokens, (m + d + more) * bt,
				(m + d + more) * bt, &p->seq) != KVP_OK) {
		promotion_free(p);
		return false;   /* the request begins as it is, and says why if it cannot */
	}
	p->first = p->seq.matched_blocks;
	p->end = m + d + more;
	p->disk_end = m + d > p->first ? m + d : p->first;
	p->redis_from = more ? p->disk_end : p->end;
	p->reads = calloc(p->disk_end - p->first + 1, sizeof(*p->reads));
	if (kvp_cache_on_device(s->cache))
		p->staging = srv_malloc_aligned((size_t)(p->end - p->first) *
						kvp_cache_block_bytes(s->cache), 64);
	if (p->reads && (p->staging || !kvp_cache_on_device(s->cache))) {
		p->pending = promotion_reads(s, p, c->root);
		if (p->redis_from < p->end)
			p->pending += promotion_fetch(s, p, c->root);
	}
	s->n_promoting++;
	s->tier_promotions += d > 0;
	s->redis_promotions += more > 0;
	if (p->pending == 0)
		promotion_finish(p);   /* nothing could be queued: the request begins now */
	return true;
}
