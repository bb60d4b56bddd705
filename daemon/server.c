/*
 * server.c - kvp_server_run: build the daemon in order, run the event loop, tear down.
 *
 *   options ──▶ [model_open: backend, model, engine, pool size]  (engine mode)
 *           ──▶ cache (tree + pool), its KV memory (host, or the GPU's)
 *           ──▶ request scratch, event base, /metrics (before any client socket)
 *           ──▶ the disk tier (--disk-cache) ──▶ engine thread ──▶ signals, tick ──▶ listening socket
 *           ──▶ READY=1 ──▶ event loop ... ──▶ teardown in reverse
 *
 * The files of the daemon and what each holds are listed in server.h.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <systemd/sd-daemon.h>

#include "kvp_clock.h"
#include "kvp_engine.h"
#include "kvp_log.h"
#include "kvp_metrics.h"
#include "server.h"

/* GET /metrics: the counters and the cache as Prometheus text. */
static void metrics_render(void *arg, struct evbuffer *out)
{
	struct server *s = arg;
	struct kvp_metrics_view v = {
		.version = KVP_VERSION,
		.mode = s->cfg->index_only ? "index-only" : "engine",
		.name = s->name,
		.uptime_s = server_uptime_s(s),
		.totals = s->stats.t,
		.generations_active = generate_active(s),
		.connections = s->n_conns,
		.ns = &s->stats.ns,
		.req = &s->stats.req,
		.ttft = s->engine ? &s->stats.ttft : NULL,
		.lookup = &s->stats.lookup,
		.insert = s->cfg->index_only ? &s->stats.insert : NULL,
	};

	kvp_cache_get_stats(s->cache, &v.cache);
	generate_sched_stats(s, &v.sched);
	tier_view(s, &v.tier);
	kv_events_view(s, &v.events);
	fleet_view(s, &v.events);
	(void)kvp_metrics_render(&v, out);   /* on failure out is empty: a 500 */
}

static void server_free(struct server *s)
{
	while (s->conns)
		conn_close(s->conns, "daemon stopping");
	generate_stop(s);
	tier_close(s);   /* every cached block to the disk before the pool goes */
	kv_events_close(s);
	fleet_close(s);
	kvp_metrics_free(s->metrics);
	if (s->listener)
		evconnlistener_free(s->listener);
	if (s->accept_pause)
		event_free(s->accept_pause);
	if (s->shed)
		event_free(s->shed);
	lifecycle_free(s);
	if (s->base) {
		/* run the deferred frees queued by conn_close */
		event_base_loop(s->base, EVLOOP_NONBLOCK);
		event_base_free(s->base);
	}
	listen_remove(s);
	kvp_cache_destroy(s->cache);
	kvp_engine_destroy(s->engine);
	kvp_model_free(s->model);
	uid_table_free(&s->uids);
	srv_free(s->tokens);
	srv_free(s->block_ids);
	srv_free(s->reply);
}

/* The cache of capacity blocks, with KV memory where the engine computes. */
static int cache_open(struct server *s, uint32_t capacity)
{
	const struct kvp_config *cfg = s->cfg;
	struct kvp_cache_config cc = {
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = capacity,
		.max_tokens = cfg->max_tokens,
		.max_leases = cfg->max_leases,
		.tenant_quota = quota_blocks(cfg, capacity),
		.eviction = cfg->eviction,
	};
	uint64_t t0;
	bool gpu;
	size_t bb;
	int rc = kvp_cache_create(&cc, &s->cache);

	if (rc) {
		kvp_err("cannot create the cache of %u blocks: %s", capacity, kvp_strerror(rc));
		return rc;
	}
	s->idle_applied = cfg->idle_timeout_s;   /* no connection yet */
	apply_live(s);
	if (!s->engine)
		return KVP_OK;
	gpu = kvp_engine_backend(s->engine) == KVP_BACKEND_CUDA;
	bb = kvp_engine_block_bytes(s->engine);
	t0 = kvp_clock_ns();
	rc = gpu ? kvp_cache_attach_device(s->cache, bb) : kvp_cache_attach_memory(s->cache, bb);
	if (rc)
		kvp_err("cannot allocate the KV pool (%u blocks of %zu bytes%s): %s%s", capacity, bb,
			gpu ? " on the GPU" : "", kvp_strerror(rc),
			rc == KVP_ENOMEM ? " (a smaller --pool-mb or --capacity-blocks fits)" : "");
	else if (!gpu) {
		const double mib = (double)capacity * (double)bb / 1048576.0;
		const double ms = (double)(kvp_clock_ns() - t0) / 1e6;

		if (mib > (double)(KVP_POOL_RESIDENT_AT_ATTACH >> 20))
			kvp_info("KV pool: %.1f MiB in %.0f ms, its first %u MiB resident, the rest "
				 "made so in the background", mib, ms, KVP_POOL_RESIDENT_AT_ATTACH >> 20);
		else
			kvp_info("KV pool: %.1f MiB in %.0f ms, resident", mib, ms);
	}
	return rc;
}

/* Scratch for the largest request and reply the limits allow, and the event base. */
static int loop_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	size_t max_blocks = cfg->max_tokens / cfg->block_tokens + 1;

	s->tokens = srv_malloc_aligned((size_t)cfg->max_tokens * sizeof(uint32_t), 64);
	s->block_ids = srv_malloc(max_blocks * sizeof(uint32_t));
	s->reply_cap = kvp_blocks_reply_size((uint32_t)max_blocks);
	s->reply = srv_malloc(s->reply_cap);
	s->base = event_base_new();
	s->shed = s->base ? event_new(s->base, -1, 0, conn_shed_cb, s) : NULL;
	if (!s->tokens || !s->block_ids || !s->reply || !s->base || !s->shed) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	return KVP_OK;
}

/* Accept clients on the listening socket. */
static int clients_open(struct server *s)
{
	evutil_socket_t fd;
	int rc = listen_open(s, &fd);

	if (rc)
		return rc;
	s->listener = evconnlistener_new(s->base, conn_accept_cb, s,
					 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!s->listener) {
		kvp_err("cannot listen on %s: %s", s->cfg->socket_path, strerror(errno));
		close(fd);
		return KVP_EIO;
	}
	evconnlistener_set_error_cb(s->listener, conn_accept_error_cb);
	s->accept_pause = evtimer_new(s->base, conn_accept_resume_cb, s);
	if (!s->accept_pause) {
		kvp_err("out of memory at start");
		return KVP_ENOMEM;
	}
	return KVP_OK;
}

/* Everything up to the event loop, in order. */
static int server_open(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;
	uint32_t capacity = cfg->capacity_blocks;
	int rc = KVP_OK;

	snprintf(s->ns_name, sizeof(s->ns_name), "%s", cfg->index_name);
	if (cfg->model_path)
		rc = model_open(s, &capacity);
	if (rc == KVP_OK)
		rc = cache_open(s, capacity);
	if (rc == KVP_OK)
		rc = loop_open(s);
	/* before the client socket exists: a bad --metrics-listen never takes a client */
	if (rc == KVP_OK && cfg->metrics_listen[0])
		rc = kvp_metrics_start(s->base, cfg->metrics_listen, metrics_render, s,
				       &s->metrics);
	if (rc == KVP_OK)
		rc = kv_events_open(s);   /* before the tiers: a warm start's pins are events */
	if (rc == KVP_OK)
		rc = fleet_open(s);
	if (rc == KVP_OK)
		rc = tier_open(s);
	if (rc == KVP_OK && s->engine)
		rc = generate_start(s);
	/* signals before the client socket: a SIGTERM sent as soon as a client could
	 * connect is a graceful stop, not the default action's kill */
	if (rc == KVP_OK)
		rc = lifecycle_start(s);
	if (rc == KVP_OK)
		rc = clients_open(s);
	return rc;
}

int kvp_server_run(const struct kvp_config *cfg)
{
	static struct kvp_config live;
	struct server s = { .cfg = &live, .name = live.index_name };
	int ret = 1;

	live = *cfg;
	clock_gettime(CLOCK_MONOTONIC, &s.started);
	kvp_stats_init(&s.stats);
	signal(SIGPIPE, SIG_IGN);
#ifndef KVP_SANITIZE_BUILD
	event_set_mem_functions(mi_malloc, mi_realloc, mi_free);
#endif
	if (evthread_use_pthreads() != 0) {
		kvp_err("libevent has no pthreads support");
		return 1;
	}
	if (server_open(&s) != KVP_OK)
		goto out;   /* logged */
	kvp_info("kvprefixd %s: %s, %u blocks of %u tokens, listening on %s%s", KVP_VERSION,
		 s.engine ? "engine" : "index-only", kvp_cache_capacity(s.cache), cfg->block_tokens,
		 s.cfg->socket_path, s.activated ? " (from systemd)" : "");
	/* the model is loaded and the socket listens: ready */
	(void)sd_notify(0, "READY=1");
	notify_status(&s);
	if (event_base_dispatch(s.base) < 0) {
		kvp_err("event loop failed");
		goto out;
	}
	ret = 0;
out:
	server_free(&s);
	if (ret == 0)
		kvp_info("stopped");
	return ret;
}
