/*
 * server.h - private to kvprefixd: the server and connection structs that the daemon's
 * files share, and the calls between those files. Nothing outside daemon/ includes it.
 *
 *   server.c      kvp_server_run: build everything in order, run the loop, tear down
 *   listen.c      the listening socket: systemd's, or one bound at --socket
 *   conn.c        accept, connection states, the read loop, deferred close
 *   reply.c       replies: framed, written at once or gathered while frames run
 *   handlers.c    dispatch a frame; HELLO, LOOKUP/INSERT, RELEASE, STATS, PING
 *   admin.c       ADMIN: who may, and the ops
 *   explain.c     ADMIN EXPLAIN: each block's fate, as text
 *   generate.c    GENERATE: start a job, stream its tokens, finish it
 *   lifecycle.c   signals, graceful stop, SIGHUP reload, live options, watchdog
 *   model_open.c  backend choice, model load, fingerprint, engine, pool size
 *   tier.c        the tiers beside the pool (host RAM, disk, Redis): open, demote, flush
 *   tier_promote.c a prompt's blocks read back from the tiers before it begins
 *   tier_index.c  an index-only daemon's LOOKUP misses looked up in Redis
 *   tier_pins.c   ADMIN pins and keeps saved at stop, held again at a warm start
 *   stats.c ...   the counters (kvp_stats.h), STATS (stats_json.c), /metrics (metrics.c)
 *
 * Threading: everything here runs on the event loop thread, but for gen_notify and
 * tier_notify (the engine's and the disk tier's threads' wake-ups, which only activate
 * an event). Errors: 0 or a negative
 * enum kvp_status; a request's outcome travels as struct req_outcome.
 */
#ifndef KVP_SERVER_H
#define KVP_SERVER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include <event2/util.h>

#include "kvp_cache.h"
#include "kvp_config.h"
#include "kvp_daemon.h"
#include "kvp_gen.h"
#include "kvp_log.h"
#include "kvp_proto.h"
#include "kvp_stats.h"
#include "kvp_unix_listen.h"
#include "uid_table.h"

struct bufferevent;
struct evbuffer_cb_entry;
struct event;
struct event_base;
struct evconnlistener;
struct kvp_metrics;

/*
 * One allocation route for the daemon (and, through event_set_mem_functions, libevent).
 * The system mimalloc is not ASan-instrumented: under KVP_SANITIZE go through libc so
 * that a use-after-free of a conn or a bufferevent is actually caught.
 */
#ifdef KVP_SANITIZE_BUILD
#include <stdlib.h>
#define srv_malloc(n) malloc(n)
#define srv_zalloc(n) calloc(1, (n))
#define srv_malloc_aligned(n, a) aligned_alloc((a), ((n) + (a) - 1) / (a) * (a))
#define srv_free(p) free(p)
#else
#include <mimalloc.h>
#define srv_malloc(n) mi_malloc(n)
#define srv_zalloc(n) mi_zalloc(n)
#define srv_malloc_aligned(n, a) mi_malloc_aligned((n), (a))
#define srv_free(p) mi_free(p)
#endif

#define KVP_TENANT_SALTED UINT32_MAX   /* no uid is 2^32-1: salted namespaces only */

enum conn_state {
	CONN_READING,    /* normal: frames in, replies out */
	CONN_CLOSING,    /* a fatal ERROR is queued; flush it, then close */
	CONN_CLOSED,     /* gone: waiting for the loop to free it */
};

struct conn {
	struct server *srv;
	struct bufferevent *bev;
	enum conn_state state;
	bool peer_eof;               /* client shut its side: answer what came, then close */
	uint64_t id;                 /* lease owner id, unique for the daemon's life */
	uid_t uid;
	gid_t gid;                   /* primary group of the peer at connect */
	pid_t pid;
	uint32_t tenant;             /* the uid, or KVP_TENANT_SALTED after a salted HELLO */
	struct kvp_key root;         /* namespace of this connection */
	struct kvp_key group;        /* its tenant's quota group: the namespace without adapter */
	char adapter[KVP_NAME_MAX + 1];
	struct gen_req *reqs;        /* generations in flight for this connection */
	uint32_t n_reqs;
	uint64_t leased;             /* blocks under this connection's leases */
	struct event *frame_timer;   /* from a frame's first byte to its last (--frame-timeout) */
	bool frame_timing;           /* frame_timer is pending */
	/* the read path (conn.c): the socket read straight into rbuf, frames run in place */
	struct event *rev;           /* the socket readable, or --idle-timeout passed */
	bool reading;                /* rev is added */
	uint8_t *rbuf;               /* (rcap) bytes [rpos, rlen) read and not yet run */
	size_t rcap, rpos, rlen;
	size_t rneed;                /* the part-read frame at rpos: its whole size; 0: unknown */
	struct evbuffer_cb_entry *out_cb;   /* keeps the server's out_bytes */
	/* replies gathered while a read callback runs frames (reply.c) */
	uint8_t *wbuf;               /* REPLY_BATCH bytes once used, wlen of them held */
	size_t wlen;
	bool corked;                 /* between reply_cork and reply_uncork */
	bool free_pending;           /* closed while corked and not deferred: free at uncork */
	bool wfail;                  /* a reply could not be queued: write nothing more */
	struct conn *next, **pprev;  /* server's list */
};

struct server {
	struct kvp_config *cfg;      /* the server's own copy: SIGHUP changes live fields */
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *accept_pause;  /* re-enables the listener after EMFILE and friends */
	bool activated;              /* the listening socket came from systemd (LISTEN_FDS) */
	struct kvp_unix_file sock;   /* the socket file bound, so that exit removes only it */
	/* lifecycle.c */
	struct event *sig_int, *sig_term, *sig_hup;
	struct event *tick;          /* watchdog and STATUS= to systemd */
	struct event *stop_timer;    /* graceful stop deadline */
	bool stopping;               /* SIGTERM: finish running requests, refuse new ones */
	uint32_t idle_applied;       /* idle timeout the connections were given */
	bool admin_gid_ok;           /* admin-group names a group */
	gid_t admin_gid;
	/* the cache, its namespace names, the counters */
	struct kvp_cache *cache;
	const char *name;            /* index or model name, as HELLO and STATS show it */
	char ns_name[KVP_NAME_MAX + 32];  /* namespace string: name, plus the model's fingerprint */
	struct kvp_stats stats;
	struct kvp_metrics *metrics;
	struct timespec started;
	/* connections */
	struct conn *conns;
	uint32_t n_conns;
	uint64_t next_conn_id;
	struct uid_table uids;       /* connections and leased blocks of each uid */
	uint64_t out_bytes;          /* replies queued, all connections together */
	struct event *shed;          /* closes the worst reader when out_bytes is over budget */
	/* log lines a client can make us repeat: at most one a second each (kvp_log.h) */
	struct kvp_log_limit log_refused, log_frame_timeout, log_shed;
	/* request scratch, sized at start from the limits */
	uint32_t *tokens;            /* (max_tokens) aligned copy of a request's tokens */
	uint32_t *block_ids;         /* (max_tokens / block_tokens + 1) reply scratch */
	uint8_t *reply;              /* encode scratch for the largest reply */
	size_t reply_cap;
	/* the engine (model_open.c, generate.c) */
	struct kvp_model *model;
	struct kvp_engine *engine;
	struct kvp_gen *gen;
	uint64_t preempted;          /* generations preempted for blocks (generate.c) */
	struct gen_req *starved;     /* parked, no block to grow into: oldest first */
	struct gen_req *preempted_reqs;   /* blocks given back, waiting to take them again */
	uint32_t n_following;        /* requests waiting for another's prompt (gen_follow.c) */
	uint32_t n_submitted;        /* jobs given to the engine whose done news is not taken */
	bool gen_closing;            /* generate_stop began: nothing begins any more */
	struct event *gen_notify;    /* activated by the engine thread */
	/* the disk tier (tier.c) */
	struct kvp_disk *disk;       /* NULL without --disk-cache */
	struct event *tier_event;    /* activated by the tier's thread */
	uint8_t *tier_buf;           /* one block copied out of the pool */
	uint32_t n_promoting;        /* GENERATEs waiting for blocks read from the disk */
	uint64_t tier_promotions;    /* GENERATEs that read blocks back from the disk */
	uint64_t tier_promoted_blocks;   /* of them, from the disk */
	bool tier_quiet;             /* registering blocks read back: not written to Redis */
	bool tier_flushing;          /* a stop's flush: demotions go straight to the disk */
	/* the host RAM tier (tier.c, the disk tier in memory mode) */
	struct kvp_disk *host;       /* NULL without --host-cache-mb */
	uint64_t host_promotions, host_promoted_blocks;
	/* the Redis tier (tier.c) */
	struct kvp_redis *redis;     /* NULL without --redis */
	struct event *redis_event;   /* activated by its thread */
	uint64_t redis_promotions;   /* GENERATEs (an index: LOOKUPs) that asked Redis */
	uint32_t n_index_fetches;    /* an index's fetches from Redis in flight */
	uint64_t redis_promoted_blocks;
	/* KV events (kv_events.c) and the fleet index (fleet.c) */
	struct kv_events *events;    /* NULL without --kv-events */
	struct fleet *fleet;         /* NULL without --kv-events-sub */
};

/*
 * What a request handler did: its outcome (0, or the status its ERROR carried), whether
 * the connection must close (a malformed frame: ERROR, then close), and whether the
 * outcome is counted later (a GENERATE that started is counted when it ends).
 */
struct req_outcome {
	int status;
	bool close;
	bool later;
};

/* ---- reply.c ----------------------------------------------------------------------- */

/* One frame of version version for c: gathered while c is corked, else written at once
 * when nothing is queued; what the socket does not take is queued in order. 0 or
 * KVP_ENOMEM (the connection should then close: a frame may be cut short). */
int send_frame(struct conn *c, uint8_t version, uint8_t type, uint32_t req_id,
	       const void *payload, size_t len);
/* Send an ERROR frame (counted in the stats); returns status. */
int send_error(struct conn *c, uint8_t version, uint32_t req_id, int status, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
int send_verror(struct conn *c, uint8_t version, uint32_t req_id, int status, const char *fmt,
		va_list ap) __attribute__((format(printf, 5, 0)));
/* Gather c's replies from now on, until reply_uncork writes them (0 or KVP_ENOMEM). */
void reply_cork(struct conn *c);
int reply_uncork(struct conn *c);
/* Write what is gathered now, staying corked (conn_finish: before the close). */
int reply_flush(struct conn *c);
/* Drop what is gathered (a connection closing hard); free the buffer (c's free). */
void reply_discard(struct conn *c);
void reply_free(struct conn *c);

/* ---- conn.c ------------------------------------------------------------------------ */

/* Unlink c, release its leases now, cancel its generations; free it from the loop
 * later, never inside its own callback. */
void conn_close(struct conn *c, const char *why);
/* Stop reading; flush what is queued (a few seconds at most), then conn_close. */
void conn_finish(struct conn *c, const char *why);
/* The listener's callbacks (evconnlistener_new, evconnlistener_set_error_cb, and the
 * timer that resumes accepting). */
void conn_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		    int salen, void *arg);
void conn_accept_error_cb(struct evconnlistener *l, void *arg);
void conn_accept_resume_cb(evutil_socket_t fd, short what, void *arg);
/* Give every reading connection the idle timeout of the live options. */
void conn_apply_idle_timeout(struct server *s);
/* Over the output budget (--max-output-mb), close the connections with the most
 * unsent bytes until it holds again. The shed event's callback. */
void conn_shed_cb(evutil_socket_t fd, short what, void *arg);
/* Connections one uid may hold (--max-connections-per-uid, 0: a quarter of
 * --max-connections, at least 1). */
uint32_t conn_uid_limit(const struct kvp_config *cfg);
/* Give memory freed by closed connections back to the system. */
void server_trim(void);
/* Write what every connection has queued, as far as the sockets take it now: the last
 * frames before the daemon exits. */
void conn_flush_all(struct server *s);

/* ---- handlers.c -------------------------------------------------------------------- */

/* Run the request in frame h (payload p, h->len bytes). */
struct req_outcome dispatch_frame(struct conn *c, const struct kvp_frame_hdr *h,
				  const uint8_t *p);
/* Outcomes: a reply sent (the status of sending it), a refusal (ERROR sent, the
 * connection stays), a malformed frame (ERROR sent, the connection closes). */
struct req_outcome req_sent(int send_status);
struct req_outcome req_refuse(struct conn *c, const struct kvp_frame_hdr *h, int status,
			      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
struct req_outcome req_malformed(struct conn *c, const struct kvp_frame_hdr *h, int status,
				 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The reply to h (type h->type | KVP_T_REPLY, h's version and req_id). */
struct req_outcome req_reply(struct conn *c, const struct kvp_frame_hdr *h, const void *payload,
			     size_t len);
double server_uptime_s(const struct server *s);
/* Root, or a member (primary or supplementary group) of admin-group (admin.c). */
bool conn_is_admin(struct conn *c);
/* The connection's namespace as the counters know it. */
struct kvp_stats_ns conn_stats_ns(const struct conn *c);

/* ---- admin.c ----------------------------------------------------------------------- */

struct req_outcome handle_admin(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p);
/* Keeps (handlers.c): let go of the keeps that are due (before a request takes blocks,
 * and on the tick); keep the cached prefix of tokens for keep_s seconds from now. */
void srv_keeps_expire(struct server *s);
void srv_keep(struct server *s, struct kvp_key root, struct kvp_key group,
	      const uint32_t *tokens, uint32_t n_tokens, uint32_t keep_s, uint32_t priority);
/* ADMIN EXPLAIN (explain.c): the fate of each block of tokens[0..n) in namespace root, as
 * the reply's text in out (cap bytes, cut with "...\n" when longer); *cached: the blocks
 * cached. 0, KVP_ETOOBIG, KVP_ENOMEM. */
int admin_explain(struct server *s, struct kvp_key root, const uint32_t *tokens, size_t n,
		  uint32_t *cached, char *out, size_t cap);

/* ---- generate.c -------------------------------------------------------------------- */

struct req_outcome handle_generate(struct conn *c, const struct kvp_frame_hdr *h,
				   const uint8_t *p);
/* Start the engine thread and its wake-up event. 0 or a status (logged). */
int generate_start(struct server *s);
/* Stop the engine thread; every job comes back and its blocks go back to the cache. */
void generate_stop(struct server *s);
/* The client of c is gone: its generations end at their next step (their blocks come
 * back through the engine thread's news) and forget the connection. */
void generate_detach(struct conn *c);
/* The stop timeout passed: every generation still running gets an ESHUTDOWN ERROR
 * after the tokens it was sent, and is detached from its client. */
void generate_cut_short(struct server *s);
/* Generations submitted and not done (0 without an engine). */
uint32_t generate_active(const struct server *s);
/* The engine scheduler's figures (present false in index-only mode). */
void generate_sched_stats(const struct server *s, struct kvp_sched_stats *out);

/* ---- listen.c ---------------------------------------------------------------------- */

/* The listening socket: systemd's (LISTEN_FDS), or one bound at cfg->socket_path.
 * 0 and *fd, or a status (logged). */
int listen_open(struct server *s, evutil_socket_t *fd);
/* Remove the socket file, if it is still the one this daemon bound. */
void listen_remove(struct server *s);

/* ---- lifecycle.c ------------------------------------------------------------------- */

/* Signal handlers, the stop timer, the watchdog tick. 0 or a status (logged). */
int lifecycle_start(struct server *s);
void lifecycle_free(struct server *s);
/* Make the server follow its live options (startup, SIGHUP, ADMIN CONFIG). */
void apply_live(struct server *s);
/* --tenant-quota in blocks of a pool of capacity blocks (0: none; at least 1). */
uint32_t quota_blocks(const struct kvp_config *cfg, uint32_t capacity);
/* Called whenever a generation ends: a graceful stop waits for the last one. */
void maybe_finish_stop(struct server *s);
/* One line for systemctl status. */
void notify_status(struct server *s);

/* ---- tier.c ------------------------------------------------------------------------ */

struct gen_req;
/* Open the disk tier (--disk-cache) after the cache, and hook it under the pool.
 * 0 without one; else 0 or the status it failed with (logged). */
int tier_open(struct server *s);
/* ADMIN CLEAR: the tiers' blocks of namespace *root, or (root NULL) all of them. */
void tier_clear(struct server *s, const struct kvp_key *root);
/* What STATS and /metrics show of the tiers (present false without one). */
void tier_view(const struct server *s, struct kvp_tier_view *v);
/* Finish the reads in flight, write every unpinned cached block, close the files. */
void tier_close(struct server *s);
/* Before r begins: when the disk holds blocks of its prompt past the pool's, read them
 * and begin r once they are in (true); false when there is nothing to read. */
bool tier_promote(struct server *s, struct gen_req *r);

/* ---- kv_events.c ------------------------------------------------------------------- */

/* --kv-events: bind the sockets, publish AllBlocksCleared, watch the cache. 0 without
 * the option; else 0 or the status it failed with (logged). */
int kv_events_open(struct server *s);
/* Around an ADMIN CLEAR of every namespace: what came before goes out first; when the
 * pool is empty after it, one AllBlocksCleared replaces the removals. */
void kv_events_clear_begin(struct server *s);
void kv_events_clear_end(struct server *s);
void kv_events_view(const struct server *s, struct kvp_events_view *v);
/* The watch a tier of slots publishes its blocks through (disk: medium DISK; else the
 * host RAM tier: CPU, only under a GPU pool), set in *c when events are on. */
struct kvp_disk_config;
void kv_events_tier_watch(struct server *s, bool disk, struct kvp_disk_config *c);
/* Publish AllBlocksCleared and what is queued, close the sockets. */
void kv_events_close(struct server *s);

/* ---- fleet.c ------------------------------------------------------------------------ */

/* --kv-events-sub: the fleet index and its subscriber thread. 0 without the option;
 * else 0 or the status it failed with (logged). */
int fleet_open(struct server *s);
void fleet_view(const struct server *s, struct kvp_events_view *v);
void fleet_close(struct server *s);
/* FLEET: each engine's cached prefix of the request's tokens, longest first. */
struct req_outcome handle_fleet(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p);

/* ---- tier_index.c ------------------------------------------------------------------ */

/* After an index-only LOOKUP that matched `matched` of n_tokens: ask Redis for the rest
 * of its full blocks in the background and register what checks out. */
void tier_index_lookup(struct server *s, const struct conn *c, const uint32_t *tokens,
		       uint32_t n_tokens, uint32_t matched);

/* ---- tier_pins.c ------------------------------------------------------------------- */

/* At stop: the ADMIN pins and keeps to DIR/pins, then dropped (their blocks are flushed
 * too). */
void tier_pins_save(struct server *s);
/* At start: a warm start reads their blocks back and pins or keeps them again (a keep
 * until the same time, unless it has passed); a cold one removes the file. */
void tier_pins_restore(struct server *s, bool warm);

/* ---- model_open.c ------------------------------------------------------------------ */

/* Pick the backend, load the model, fingerprint it, create the engine; size the pool
 * from --pool-mb unless it was given in blocks (*capacity). 0 or a status (logged). */
int model_open(struct server *s, uint32_t *capacity);

#endif
