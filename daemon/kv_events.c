/*
 * kv_events.c - kvprefixd's KV-cache events (--kv-events; docs/kv-events.md): what the
 * pool holds, published as vLLM publishes it, for the routers of a fleet.
 *
 *   cache watch ──▶ BlockStored / BlockRemoved appended to the batch being built
 *                   (consecutive blocks of a prompt share one event)
 *   end of the loop's turn (an event activated by the first append) ──▶ the builder
 *                   handed to the publisher's thread (events/pub.c), which packs it,
 *                   sends it and keeps it for replays; the loop goes on with an
 *                   empty one
 *   start, ADMIN CLEAR of every namespace, stop ──▶ AllBlocksCleared
 *
 * Never waits for a subscriber, and does no msgpack: appending copies a block's hash and
 * tokens. A batch grown past KV_EVENTS_FLUSH_BYTES is handed over at once. An event
 * that cannot be appended or handed over for want of memory is lost, and counted (STATS
 * kv_events.lost_events): a subscriber may then hold a block that went, or miss one.
 *
 * Event loop thread only.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "kvp_disk.h"
#include "kvp_events.h"
#include "kvp_evpub.h"
#include "kvp_log.h"
#include "server.h"

#define KV_EVENTS_FLUSH_BYTES (1u << 20)

struct kv_events {
	struct kvp_evbatch *batch;
	struct kvp_evpub *pub;
	struct event *flush;         /* activated by the first event of a batch */
	bool flush_pending;
	enum kvp_ev_medium medium;   /* the pool's */
	uint64_t lost;               /* events lost to memory */
};

/* The batch built so far to the publisher, which packs it on its thread. */
static void send_batch(struct kv_events *k)
{
	struct kvp_evbatch *next;
	size_t n = kvp_evbatch_events(k->batch);

	if (n == 0)
		return;
	next = kvp_evpub_submit(k->pub, k->batch);
	if (!next) {
		k->lost += n;
		kvp_evbatch_reset(k->batch);
		return;
	}
	k->batch = next;
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct kv_events *k = arg;

	(void)fd;
	(void)what;
	k->flush_pending = false;
	send_batch(k);
}

/* After an append: send at the end of this turn, or now when the batch is large. */
static void appended(struct kv_events *k, int rc)
{
	if (rc != 0)
		k->lost++;
	if (kvp_evbatch_bytes(k->batch) >= KV_EVENTS_FLUSH_BYTES) {
		send_batch(k);
		return;
	}
	if (!k->flush_pending) {
		k->flush_pending = true;
		event_active(k->flush, EV_READ, 0);
	}
}

/* A block cached (added: its tokens given) or gone, in medium. */
static void block_event(struct kv_events *k, struct kvp_key key, struct kvp_key parent,
			struct kvp_key root, const uint32_t *tokens, bool added,
			enum kvp_ev_medium medium)
{
	int rc;

	if (added)   /* the first block of a prompt has the root for parent: nil */
		rc = kvp_evbatch_stored(k->batch, key.lo, !kvp_key_eq(parent, root), parent.lo,
					tokens, medium);
	else
		rc = kvp_evbatch_removed(k->batch, key.lo, medium);
	appended(k, rc);
}

/* The cache's watch: a block of the pool cached or gone. */
static void watch_cb(void *arg, const struct kvp_cache_block_info *b, bool added)
{
	struct kv_events *k = arg;

	block_event(k, b->key, b->parent, b->root, b->tokens, added, k->medium);
}

/* A tier of slots' watch: a block it now holds, or one gone from it. */
static void disk_watch_cb(void *arg, const struct kvp_disk_meta *m, bool added)
{
	block_event(arg, m->key, m->parent, m->root, m->tokens, added, KVP_EV_DISK);
}

static void host_watch_cb(void *arg, const struct kvp_disk_meta *m, bool added)
{
	block_event(arg, m->key, m->parent, m->root, m->tokens, added, KVP_EV_CPU);
}

void kv_events_tier_watch(struct server *s, bool disk, struct kvp_disk_config *c)
{
	struct kv_events *k = s->events;

	/* under a pool in host memory, the host tier's medium would be the pool's: its
	 * blocks are not published */
	if (!k || (!disk && k->medium != KVP_EV_GPU))
		return;
	c->watch = disk ? disk_watch_cb : host_watch_cb;
	c->watch_arg = k;
}

int kv_events_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	struct kvp_evpub_config pc = {
		.endpoint = cfg->kv_events,
		.replay_endpoint = cfg->kv_events_replay,
		.buffer = cfg->kv_events_buffer,
	};
	char host[256], topic[2 * 256 + 8], err[512];
	struct kv_events *k;
	int rc;

	if (!cfg->kv_events)
		return 0;
	if (cfg->instance_id[0])
		snprintf(host, sizeof(host), "%s", cfg->instance_id);
	else if (gethostname(host, sizeof(host)) != 0 || !host[0])
		snprintf(host, sizeof(host), "kvprefixd");
	host[sizeof(host) - 1] = '\0';
	snprintf(topic, sizeof(topic), "kv@%s@%s", host, s->name);
	pc.topic = topic;
	k = calloc(1, sizeof(*k));
	if (!k)
		return KVP_ENOMEM;
	k->medium = s->engine && kvp_cache_on_device(s->cache) ? KVP_EV_GPU : KVP_EV_CPU;
	rc = kvp_evbatch_create(cfg->kv_events_array ? KVP_EV_ARRAY : KVP_EV_MAP,
				cfg->block_tokens, &k->batch);
	k->flush = rc == 0 ? event_new(s->base, -1, 0, flush_cb, k) : NULL;
	if (rc == 0 && !k->flush)
		rc = KVP_ENOMEM;
	if (rc == 0) {
		rc = kvp_evpub_open(&pc, &k->pub, err, sizeof(err));
		if (rc)
			kvp_err("--kv-events: %s", err);
	}
	if (rc) {
		if (k->flush)
			event_free(k->flush);
		kvp_evbatch_destroy(k->batch);
		free(k);
		return rc;
	}
	s->events = k;
	/* a subscriber's first batch says this instance holds nothing yet */
	appended(k, kvp_evbatch_cleared(k->batch));
	kvp_cache_set_watch(s->cache, watch_cb, k);
	kvp_info("kv events: publishing on %s as topic %s%s%s", cfg->kv_events, topic,
		 cfg->kv_events_replay ? ", replays on " : "",
		 cfg->kv_events_replay ? cfg->kv_events_replay : "");
	return 0;
}

void kv_events_clear_begin(struct server *s)
{
	if (s->events)
		send_batch(s->events);   /* what came before the clear, on its own */
}

void kv_events_clear_end(struct server *s)
{
	struct kv_events *k = s->events;
	struct kvp_cache_stats st;

	if (!k)
		return;
	kvp_cache_get_stats(s->cache, &st);
	if (st.tree_nodes != 0)
		return;   /* pinned blocks stayed: the removals say exactly what went */
	kvp_evbatch_reset(k->batch);   /* nothing is left: one event says it */
	appended(k, kvp_evbatch_cleared(k->batch));
}

void kv_events_view(const struct server *s, struct kvp_events_view *v)
{
	struct kvp_evpub_stats st;

	if (!s->events)
		return;
	kvp_evpub_stats(s->events->pub, &st);
	v->present = true;
	v->batches = st.batches;
	v->events = st.events;
	v->sent = st.sent;
	v->dropped = st.dropped;
	v->lost_events = s->events->lost;
	v->replays = st.replays;
	v->replayed = st.replayed;
	v->next_seq = st.next_seq;
}

void kv_events_close(struct server *s)
{
	struct kv_events *k = s->events;

	if (!k)
		return;
	kvp_cache_set_watch(s->cache, NULL, NULL);
	kvp_evbatch_reset(k->batch);   /* the pool goes with the process */
	if (kvp_evbatch_cleared(k->batch) == 0)
		send_batch(k);
	kvp_evpub_close(k->pub);
	event_free(k->flush);
	kvp_evbatch_destroy(k->batch);
	free(k);
	s->events = NULL;
}
