/*
 * tier.c - kvprefixd's tiers beside the pool: host RAM (--host-cache-mb), disk
 * (--disk-cache DIR, --disk-cache-gb N), Redis (--redis); promotion is tier_promote.c.
 *
 *   host         --host-cache-mb: the same tier in memory, between the pool and the disk
 *                (the host RAM under a GPU pool); what it drops goes to the disk
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

/* The KV dtype as the tiers' manifests and fingerprints name it. */
static const char *kv_dtype_name(const struct server *s)
{
	return s->cfg->kv_dtype == KVP_KV_F16 ? "f16" : "f32";
}

static void tier_notify(void *arg)
{
	struct server *s = arg;

	event_active(s->tier_event, EV_READ, 0);
}

/* A block's KV for a tier to copy: in place in a host pool, else read out of the GPU
 * into tier_buf. NULL when it cannot be read. */
static const void *block_kv(struct server *s, uint32_t id)
{
	const void *kv = kvp_cache_block_host(s->cache, id);

	if (kv)
		return kv;
	return kvp_cache_block_read(s->cache, id, s->tier_buf) == KVP_OK ? s->tier_buf : NULL;
}

static void tier_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	(void)fd;
	(void)what;
	if (s->host)
		(void)kvp_disk_poll(s->host);
	if (s->disk)
		(void)kvp_disk_poll(s->disk);
	maybe_finish_stop(s);
}

/* The cache's demote hook: the block copied out and queued for the tier below the
 * pool: the host tier, else (or at a stop, or when its queue is full) the disk. */
static void tier_demote(void *arg, const struct kvp_cache_block_info *b)
{
	struct server *s = arg;
	const struct kvp_disk_meta m = { .key = b->key, .parent = b->parent, .root = b->root,
					 .tokens = b->tokens };

	const void *kv = block_kv(s, b->block_id);

	if (!kv)
		return;
	/* dropped ones are counted there */
	if (s->host && !s->tier_flushing && kvp_disk_put(s->host, &m, kv) != KVP_EFULL)
		return;
	if (s->disk)
		(void)kvp_disk_put(s->disk, &m, kv);
}

/* The host tier's evicted hook: a block it drops to make room goes to the disk. */
static void host_pass_down(void *arg, const struct kvp_disk_meta *m, const void *kv)
{
	struct server *s = arg;

	if (s->disk)
		(void)kvp_disk_put(s->disk, m, kv);
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

	if (s->tier_quiet)
		return;
	if (!s->engine) {   /* an index: keys and tokens only */
		(void)kvp_redis_put(s->redis, &m, NULL);
		return;
	}
	const void *kv = block_kv(s, b->block_id);

	if (kv)
		(void)kvp_redis_put(s->redis, &m, kv);
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
		.kv_dtype = s->engine ? kv_dtype_name(s) : "index",
		.block_bytes = s->engine ? kvp_engine_block_bytes(s->engine) : 0,
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
	kvp_info("redis tier %s: %s shared there%s", cfg->redis,
		 s->engine ? "blocks computed here are" : "this index's blocks (keys and tokens) are",
		 cfg->redis_ttl_s ? " (with an expiry)" : "");
	kvp_cache_set_stored(s->cache, tier_stored, s);
	return KVP_OK;
}

/* ---- open and close ---------------------------------------------------------------------- */

/* What every tier of slots is opened with: the engine's blocks, the shared event. */
static struct kvp_disk_config slots_config(struct server *s)
{
	return (struct kvp_disk_config){
		.model = s->ns_name,
		.block_tokens = s->cfg->block_tokens,
		.kv_dtype = kv_dtype_name(s),
		.block_bytes = kvp_engine_block_bytes(s->engine),
		.staging_bytes = TIER_STAGING_BYTES,
		.notify = tier_notify,
		.notify_arg = s,
	};
}

static int disk_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	struct kvp_disk_config dc = slots_config(s);
	struct kvp_disk_stats st;
	char why[1024];
	int rc;

	dc.dir = cfg->disk_cache;
	dc.capacity_bytes = (uint64_t)cfg->disk_cache_gb * 1000000000u;
	kv_events_tier_watch(s, true, &dc);
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
	tier_pins_restore(s, why[0] == '\0');
	return KVP_OK;
}

/* The host RAM tier (--host-cache-mb): the disk tier's index over slots in memory. */
static int host_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	struct kvp_disk_config hc = slots_config(s);
	struct kvp_disk_stats st;
	char why[600];
	int rc;

	hc.capacity_bytes = (uint64_t)cfg->host_cache_mb * 1000000u;   /* dir NULL: memory */
	hc.evicted = host_pass_down;
	hc.evicted_arg = s;
	kv_events_tier_watch(s, false, &hc);
	rc = kvp_disk_open(&hc, &s->host, why, sizeof(why));

	if (rc) {
		kvp_err("--host-cache-mb %u: %s", cfg->host_cache_mb,
			rc == KVP_EINVAL && why[0] ? why : kvp_strerror(rc));
		return rc;
	}
	kvp_disk_get_stats(s->host, &st);
	kvp_info("host tier: %llu blocks of %llu bytes in RAM (%u MB)%s",
		 (unsigned long long)st.slots, (unsigned long long)st.slot_bytes,
		 cfg->host_cache_mb, s->disk ? ", over the disk tier" : "");
	return KVP_OK;
}

int tier_open(struct server *s)
{
	int rc = KVP_OK;

	if (!s->engine) {   /* an index shares through Redis; it has no KV to keep */
		if (s->cfg->disk_cache || s->cfg->host_cache_mb)
			kvp_warn("--disk-cache and --host-cache-mb are ignored with --index-only "
				 "(no KV to keep)");
		return s->cfg->redis ? redis_open(s) : KVP_OK;
	}
	if (!s->cfg->disk_cache && !s->cfg->redis && !s->cfg->host_cache_mb)
		return KVP_OK;
	s->tier_buf = srv_malloc_aligned(kvp_engine_block_bytes(s->engine), 64);
	s->tier_event = event_new(s->base, -1, 0, tier_event_cb, s);
	if (!s->tier_buf || !s->tier_event) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	if (s->cfg->disk_cache)
		rc = disk_open(s);
	if (rc == KVP_OK && s->cfg->host_cache_mb)
		rc = host_open(s);
	if (rc == KVP_OK && (s->disk || s->host))
		kvp_cache_set_demote(s->cache, tier_demote, s);
	if (rc == KVP_OK && s->cfg->redis)
		rc = redis_open(s);
	return rc;
}

/* Every block of the host tier, then every unpinned cached block, to the disk, a
 * queue's worth at a time. */
static void tier_flush(struct server *s)
{
	struct kvp_disk_stats st;
	size_t batch, n, total = 0;

	kvp_disk_get_stats(s->disk, &st);   /* a slot is at least what a write stages */
	batch = TIER_STAGING_BYTES / st.slot_bytes ? TIER_STAGING_BYTES / st.slot_bytes : 1;
	s->tier_flushing = true;             /* demotions go straight to the disk */
	if (s->host) {
		kvp_disk_drain(s->host);
		(void)kvp_disk_poll(s->host);
		while ((n = kvp_disk_evict_some(s->host, batch)) > 0) {
			total += n;
			kvp_disk_drain(s->disk);
			(void)kvp_disk_poll(s->disk);
		}
	}
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
	while (s->n_promoting || s->n_index_fetches) {
		for (int t = 0; t < 2; t++) {
			struct kvp_disk *d = t ? s->disk : s->host;

			if (d) {
				kvp_disk_drain(d);
				(void)kvp_disk_poll(d);
			}
		}
		if (s->redis && kvp_redis_poll(s->redis) == 0 &&
		    (s->n_promoting || s->n_index_fetches))
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
	if (s->disk && s->cache) {
		tier_pins_save(s);
		tier_flush(s);
	}
	if (s->cache)
		kvp_cache_set_demote(s->cache, NULL, NULL);
	kvp_disk_close(s->host);   /* what it held is on the disk now, or gone with it */
	s->host = NULL;
	kvp_disk_close(s->disk);
	s->disk = NULL;
	if (s->tier_event)
		event_free(s->tier_event);
	s->tier_event = NULL;
	srv_free(s->tier_buf);
	s->tier_buf = NULL;
}

void tier_clear(struct server *s, const struct kvp_key *root)
{
	struct kvp_disk *const tiers[2] = { s->host, s->disk };

	for (int t = 0; t < 2; t++) {
		if (!tiers[t])
			continue;
		if (root)
			(void)kvp_disk_clear_ns(tiers[t], *root);
		else
			kvp_disk_clear(tiers[t]);
	}
	if (s->redis)
		(void)kvp_redis_clear(s->redis, root);
}

void tier_view(const struct server *s, struct kvp_tier_view *v)
{
	memset(v, 0, sizeof(*v));
	if (s->host) {
		v->host_present = true;
		kvp_disk_get_stats(s->host, &v->host);
		v->host_promotions = s->host_promotions;
		v->host_promoted_blocks = s->host_promoted_blocks;
	}
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

