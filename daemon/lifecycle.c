/*
 * lifecycle.c - the daemon between start and exit: signals, the graceful stop, SIGHUP's
 * reload, the live options, and the watchdog and STATUS= lines for systemd.
 *
 *   SIGTERM/SIGINT ──▶ stopping: new connections and new requests get ESHUTDOWN,
 *                      running generations finish (--stop-timeout at most; those cut
 *                      short get ESHUTDOWN after their tokens) ──▶ exit
 *   second signal  ──▶ cut the generations short the same way, exit now
 *   SIGHUP         ──▶ re-read the file with the same flags; the live options (the
 *                      option table's OPT_LIVE) apply at once, the rest are logged as
 *                      needing a restart
 *   tick           ──▶ WATCHDOG=1 and STATUS= every STATUS_SECONDS (or half the
 *                      watchdog interval systemd asked for)
 */
#include <signal.h>
#include <stdio.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>

#include "kvp_log.h"
#include "server.h"

#define STATUS_SECONDS 10

uint32_t quota_blocks(const struct kvp_config *cfg, uint32_t capacity)
{
	uint64_t q = (uint64_t)capacity * cfg->tenant_quota_pct / 100;

	if (cfg->tenant_quota_pct == 0)
		return 0;
	return q ? (uint32_t)q : 1;
}

/*
 * The log level, the lease limit and tenant quota of the cache, the admin group, and
 * the idle timeout of every reading connection when it changed.
 */
void apply_live(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;

	kvp_log_set_level((enum kvp_log_level)cfg->log_level);
	kvp_cache_set_max_leases(s->cache, cfg->max_leases);
	kvp_cache_set_tenant_quota(s->cache, quota_blocks(cfg, kvp_cache_capacity(s->cache)));
	s->admin_gid_ok = false;
	if (cfg->admin_group[0]) {
		if (kvp_config_resolve_group(cfg->admin_group, &s->admin_gid) == KVP_OK)
			s->admin_gid_ok = true;
		else
			kvp_warn("admin-group '%s' names no group: only root may send ADMIN",
				 cfg->admin_group);
	}
	if (s->idle_applied != cfg->idle_timeout_s) {
		s->idle_applied = cfg->idle_timeout_s;
		conn_apply_idle_timeout(s);
	}
}

/* ---- systemd ------------------------------------------------------------------ */

void notify_status(struct server *s)
{
	struct kvp_cache_stats st;
	char line[256];

	kvp_cache_get_stats(s->cache, &st);
	snprintf(line, sizeof(line),
		 "STATUS=%s: hit rate %.1f%%, pool %.0f%% used (%u of %u blocks, %u pinned), "
		 "%u connections, %u generating",
		 s->stopping ? "stopping" : s->engine ? "engine" : "index-only",
		 100.0 * kvp_stats_hit_rate(&s->stats),
		 100.0 * (double)(st.pool.total - st.pool.free) / (double)st.pool.total,
		 st.pool.total - st.pool.free, st.pool.total, st.pool.referenced, s->n_conns,
		 generate_active(s));
	(void)sd_notify(0, line);
}

/* Runs at half the watchdog interval (or every 10 s): proves the loop turns. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	(void)sd_notify(0, "WATCHDOG=1");
	srv_keeps_expire(s);
	notify_status(s);
}

/* ---- stopping ------------------------------------------------------------------ */

static void stop_now(struct server *s, const char *why)
{
	kvp_info("stopping (%s)", why);
	event_base_loopbreak(s->base);
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	kvp_warn("stop timeout: %u generations still running are cut short", generate_active(s));
	generate_cut_short(s);
	conn_flush_all(s);
	stop_now(s, "stop timeout");
}

void maybe_finish_stop(struct server *s)
{
	if (s->stopping && generate_active(s) == 0)
		stop_now(s, "running requests finished");
}

static void begin_stop(struct server *s, const char *sig)
{
	struct timeval tv = { (time_t)s->cfg->stop_timeout_s, 0 };

	if (s->stopping) {
		generate_cut_short(s);
		conn_flush_all(s);
		stop_now(s, "second signal");
		return;
	}
	/* new connections are still accepted, to be told ESHUTDOWN (conn.c) rather than
	 * left waiting in the backlog until the daemon exits */
	s->stopping = true;
	(void)sd_notify(0, "STOPPING=1");
	kvp_info("%s: stopping; new connections and requests are refused, running "
		 "generations may finish (up to %u s)", sig, s->cfg->stop_timeout_s);
	if (s->stop_timer)
		event_add(s->stop_timer, &tv);
	maybe_finish_stop(s);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	begin_stop(arg, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- reload ---------------------------------------------------------------------- */

struct reload_count {
	int live, restart;
};

static void reload_one(void *arg, const char *name, bool live)
{
	struct reload_count *r = arg;

	if (live) {
		r->live++;
		kvp_info("reload: %s changed, applied", name);
	} else {
		r->restart++;
		kvp_warn("reload: %s changed, needs a restart to take effect", name);
	}
}

static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *s = arg;
	struct kvp_config next;
	struct reload_count r = { 0 };
	char err[512];

	(void)sd_notify(0, "RELOADING=1");
	if (kvp_config_reload(kvp_config_argc, kvp_config_argv, &next, err, sizeof(err)) != 0) {
		kvp_err("reload refused, configuration unchanged: %s", err);
		(void)sd_notify(0, "READY=1");
		return;
	}
	if (s->activated)   /* systemd's socket stands for --socket: not a change */
		snprintf(next.socket_path, sizeof(next.socket_path), "%s", s->cfg->socket_path);
	kvp_config_diff(s->cfg, &next, reload_one, &r);
	/* the live options take effect now; the others stay as they were */
	kvp_config_copy_live(s->cfg, &next);
	apply_live(s);
	kvp_info("reload: %d live changes applied, %d need a restart", r.live, r.restart);
	(void)sd_notify(0, "READY=1");
	notify_status(s);
}

/* ---- setup ----------------------------------------------------------------------- */

/* The tick's interval: STATUS_SECONDS, or half the watchdog interval systemd asked for
 * when that is shorter. */
static struct timeval tick_interval(void)
{
	uint64_t usec = 0;
	struct timeval tv = { STATUS_SECONDS, 0 };

	if (sd_watchdog_enabled(0, &usec) > 0 && usec / 2 < (uint64_t)STATUS_SECONDS * 1000000) {
		tv.tv_sec = (time_t)(usec / 2 / 1000000);
		tv.tv_usec = (suseconds_t)(usec / 2 % 1000000);
	}
	return tv;
}

int lifecycle_start(struct server *s)
{
	struct timeval tv = tick_interval();

	s->sig_int = evsignal_new(s->base, SIGINT, signal_cb, s);
	s->sig_term = evsignal_new(s->base, SIGTERM, signal_cb, s);
	s->sig_hup = evsignal_new(s->base, SIGHUP, hup_cb, s);
	s->stop_timer = evtimer_new(s->base, stop_timer_cb, s);
	s->tick = event_new(s->base, -1, EV_PERSIST, tick_cb, s);
	if (!s->sig_int || !s->sig_term || !s->sig_hup || !s->stop_timer || !s->tick ||
	    event_add(s->sig_int, NULL) || event_add(s->sig_term, NULL) ||
	    event_add(s->sig_hup, NULL) || event_add(s->tick, &tv)) {
		kvp_err("cannot install signal handlers");
		return KVP_ENOMEM;
	}
	return KVP_OK;
}

void lifecycle_free(struct server *s)
{
	struct event **evs[] = { &s->sig_int, &s->sig_term, &s->sig_hup, &s->tick,
				 &s->stop_timer };

	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
		if (*evs[i])
			event_free(*evs[i]);
		*evs[i] = NULL;
	}
}
