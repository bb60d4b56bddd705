/*
 * server.c - the libevent loop: listening socket, connections, frame dispatch, STATS.
 *
 *   accept ──▶ conn READING ──frame──▶ dispatch ──▶ reply appended to output
 *                 │   ▲                  │ malformed / over limit
 *                 │   └──────────────────┘ ERROR, then ─▶ CLOSING (flush, 5 s max)
 *                 └── EOF / error ─────────────────────▶ CLOSED: leases released at
 *                                                        once, memory freed later from
 *                                                        the loop, never in its own cb
 *
 * Bounds: a header's payload length is checked against --max-frame-bytes before any
 * byte of the payload is buffered for it; at most FRAMES_PER_WAKEUP frames run per
 * read callback (the rest are picked up by a deferred trigger) so one busy client
 * cannot starve the others; reading pauses while a connection's unsent output is
 * over OUTPUT_HIGH_WATER.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <systemd/sd-daemon.h>
#include <mimalloc.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <xxhash.h>

#include "kvp_cache.h"
#include "kvp_config.h"
#include "kvp_daemon.h"
#include "kvp_gen.h"
#include "kvp_log.h"
#include "kvp_metrics.h"
#include "kvp_proto.h"

/*
 * One allocation route for the daemon (and, through event_set_mem_functions, libevent).
 * The system mimalloc is not ASan-instrumented: under KVP_SANITIZE go through libc so
 * that a use-after-free of a conn or a bufferevent is actually caught.
 */
#ifdef KVP_SANITIZE_BUILD
#define srv_malloc(n) malloc(n)
#define srv_zalloc(n) calloc(1, (n))
#define srv_malloc_aligned(n, a) aligned_alloc((a), ((n) + (a) - 1) / (a) * (a))
#define srv_free(p) free(p)
#else
#define srv_malloc(n) mi_malloc(n)
#define srv_zalloc(n) mi_zalloc(n)
#define srv_malloc_aligned(n, a) mi_malloc_aligned((n), (a))
#define srv_free(p) mi_free(p)
#endif

#define FRAMES_PER_WAKEUP 64
#define OUTPUT_HIGH_WATER (16u << 20)
#define CLOSE_FLUSH_SECONDS 5
#define READ_CHUNK (256u << 10)
#define STOP_TIMEOUT_SECONDS 30
#define STATUS_SECONDS 10
#define KVP_TENANT_SALTED UINT32_MAX   /* no uid is 2^32-1: salted namespaces only */

enum conn_state {
	CONN_READING,    /* normal: frames in, replies out */
	CONN_CLOSING,    /* a fatal ERROR is queued; flush it, then close */
	CONN_CLOSED,     /* gone: waiting for the loop to free it */
};

static const char *const conn_state_names[] = { "reading", "closing", "closed" };

struct server;

struct conn {
	struct server *srv;
	struct bufferevent *bev;
	enum conn_state state;
	bool peer_eof;               /* client shut its side: answer what came, then close */
	uint64_t id;                 /* lease owner id, unique for the daemon's life */
	uid_t uid;
	gid_t gid;                   /* primary group of the peer at connect */
	pid_t pid;
	uint8_t version;             /* header version of the request being answered */
	uint32_t tenant;             /* the uid, or KVP_TENANT_SALTED after a salted HELLO */
	struct kvp_key root;         /* namespace of this connection */
	struct kvp_key group;        /* its tenant's quota group: the namespace without adapter */
	char adapter[KVP_NAME_MAX + 1];
	struct gen_req *reqs;        /* generations in flight for this connection */
	uint32_t n_reqs;
	struct conn *next, **pprev;  /* server's list */
};

/* A GENERATE request from the loop's side: the engine job, its blocks and its client. */
struct gen_req {
	struct kvp_gen_job job;      /* handed to the engine thread */
	struct conn *conn;           /* NULL once the client is gone */
	uint32_t req_id;
	uint8_t version;             /* its header's version: every frame of it carries it */
	uint32_t n_sent;             /* generated tokens already streamed */
	uint32_t cached_report;      /* cached_tokens in the usage frame */
	struct kvp_seq seq;          /* the request's blocks */
	struct kvp_ns_counters *ns;  /* its namespace's counters (metrics) */
	struct gen_req *next, **pprev;
};

struct server {
	struct kvp_config *cfg;      /* the server's own copy: SIGHUP changes live fields */
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *sig_int, *sig_term, *sig_hup;
	struct event *tick;          /* watchdog and STATUS= to systemd */
	struct event *stop_timer;    /* graceful stop deadline */
	bool stopping;               /* SIGTERM: finish running requests, refuse new ones */
	bool activated;              /* the listening socket came from systemd (LISTEN_FDS) */
	struct event *accept_pause;  /* re-enables the listener after EMFILE and friends */
	struct kvp_cache *cache;
	struct conn *conns;
	uint32_t n_conns;
	uint64_t next_conn_id;
	uint64_t connections_total;
	uint64_t errors;
	uint64_t pings;
	uint64_t stats_requests;
	struct timespec started;
	uint32_t *tokens;            /* (max_tokens) aligned copy of a request's tokens */
	uint32_t *block_ids;         /* (max_tokens / block_tokens + 1) reply scratch */
	uint8_t *reply;              /* encode scratch for the largest reply */
	size_t reply_cap;
	const char *name;            /* index or model name, as HELLO and STATS show it */
	char ns_name[KVP_NAME_MAX + 32];  /* namespace string: name, plus the model's fingerprint */
	struct kvp_model *model;
	struct kvp_engine *engine;
	struct kvp_gen *gen;
	struct event *gen_notify;    /* activated by the engine thread */
	uint64_t generations_done;
	uint64_t generated_tokens;
	uint64_t computed_tokens;
	bool socket_bound;
	dev_t sock_dev;              /* the socket file we bound, so exit removes only it */
	ino_t sock_ino;
	/* metrics (kvp_metrics.h): /metrics, and the extra STATS keys */
	struct kvp_metrics *metrics;
	struct kvp_ns_stats_table ns_stats;
	struct kvp_hist ttft_hist, lookup_hist, insert_hist;
	struct kvp_req_counts req_counts;
	int last_error;              /* status of the last ERROR sent */
	/* live options as applied (apply_live) */
	uint32_t idle_applied;       /* idle timeout the connections were given */
	bool admin_gid_ok;           /* admin-group names a group */
	gid_t admin_gid;
	uint64_t admin_requests;
};

static void conn_close(struct conn *c, const char *why);
static void maybe_finish_stop(struct server *s);

static void conn_set_state(struct conn *c, enum conn_state s)
{
	if (c->state == s)
		return;
	kvp_debug("conn %llu: %s -> %s", (unsigned long long)c->id,
		  conn_state_names[c->state], conn_state_names[s]);
	c->state = s;
}

/* ---- replies --------------------------------------------------------------- */

static int send_frame(struct conn *c, uint8_t type, uint32_t req_id, const void *payload,
		      size_t len)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct kvp_frame_hdr h = {
		.version = c->version ? c->version : KVP_PROTO_VERSION, .type = type,
		.req_id = req_id, .len = (uint32_t)len,
	};
	uint8_t hdr[KVP_HDR_SIZE];

	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	size_t sent = 0;

	kvp_hdr_encode(hdr, &h);
	/*
	 * Nothing queued: write straight to the socket, which saves the write-readiness
	 * round through epoll for the common small reply. Whatever does not fit is queued
	 * behind, so order is kept either way.
	 */
	if (evbuffer_get_length(out) == 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
		ssize_t r = sendmsg(bufferevent_getfd(c->bev), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0)
			sent = (size_t)r;
	}
	for (int i = 0; i < 2; i++) {
		size_t skip = sent < iov[i].iov_len ? sent : iov[i].iov_len;
		sent -= skip;
		if (iov[i].iov_len > skip &&
		    evbuffer_add(out, (const uint8_t *)iov[i].iov_base + skip, iov[i].iov_len - skip))
			return KVP_ENOMEM;
	}
	return KVP_OK;
}

static void send_error(struct conn *c, uint32_t req_id, int status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void send_error(struct conn *c, uint32_t req_id, int status, const char *fmt, ...)
{
	char msg[KVP_ERROR_MSG_MAX + 1];
	uint8_t buf[KVP_ERROR_MSG_MAX + 16];
	size_t n;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = kvp_error_encode(buf, sizeof(buf), status, msg);
	c->srv->errors++;
	c->srv->last_error = status;
	kvp_debug("conn %llu: ERROR %d (%s): %s", (unsigned long long)c->id, -status,
		  kvp_strerror(status), msg);
	if (n)
		(void)send_frame(c, KVP_T_ERROR, req_id, buf, n);
}

/* ---- STATS ----------------------------------------------------------------- */

static double uptime_s(const struct server *s)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - s->started.tv_sec) +
	       (double)(now.tv_nsec - s->started.tv_nsec) / 1e9;
}

static char *stats_json(struct server *s)
{
	struct kvp_cache_stats st;
	cJSON *o = cJSON_CreateObject();
	char *txt;

	if (!o)
		return NULL;
	kvp_cache_get_stats(s->cache, &st);
	cJSON_AddStringToObject(o, "version", KVP_VERSION);
	cJSON_AddStringToObject(o, "mode", s->cfg->index_only ? "index-only" : "engine");
	cJSON_AddStringToObject(o, "name", s->name);
	cJSON_AddNumberToObject(o, "block_tokens", s->cfg->block_tokens);
	cJSON_AddNumberToObject(o, "uptime_s", uptime_s(s));
	cJSON_AddNumberToObject(o, "requests", (double)(st.lookups + st.inserts + st.generations));
	cJSON_AddNumberToObject(o, "lookups", (double)st.lookups);
	cJSON_AddNumberToObject(o, "lookup_hits", (double)st.lookup_hits);
	cJSON_AddNumberToObject(o, "generations", (double)st.generations);
	cJSON_AddNumberToObject(o, "generation_hits", (double)st.generation_hits);
	cJSON_AddNumberToObject(o, "generations_done", (double)s->generations_done);
	cJSON_AddNumberToObject(o, "generations_active", s->gen ? kvp_gen_active(s->gen) : 0);
	cJSON_AddNumberToObject(o, "computed_tokens", (double)s->computed_tokens);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)s->generated_tokens);
	cJSON_AddNumberToObject(o, "request_hit_rate",
				st.lookups + st.generations ?
				(double)(st.lookup_hits + st.generation_hits) /
				(double)(st.lookups + st.generations) : 0.0);
	cJSON_AddNumberToObject(o, "inserts", (double)st.inserts);
	cJSON_AddNumberToObject(o, "query_tokens", (double)st.query_tokens);
	cJSON_AddNumberToObject(o, "hit_tokens", (double)st.hit_tokens);
	cJSON_AddNumberToObject(o, "hit_rate",
				st.query_tokens ? (double)st.hit_tokens / (double)st.query_tokens : 0.0);
	cJSON_AddNumberToObject(o, "insert_tokens", (double)st.insert_tokens);
	cJSON_AddNumberToObject(o, "inserted_blocks", (double)st.inserted_blocks);
	cJSON_AddNumberToObject(o, "insert_full", (double)st.insert_full);
	cJSON_AddNumberToObject(o, "evictions", (double)st.evictions);
	cJSON_AddNumberToObject(o, "quota_evictions", (double)st.quota_evictions);
	cJSON_AddNumberToObject(o, "quota_refusals", (double)st.quota_refusals);
	cJSON_AddNumberToObject(o, "admin_requests", (double)s->admin_requests);
	cJSON_AddNumberToObject(o, "blocks_total", st.pool.total);
	cJSON_AddNumberToObject(o, "blocks_free", st.pool.free);
	cJSON_AddNumberToObject(o, "blocks_cached", st.pool.cached);
	cJSON_AddNumberToObject(o, "blocks_pinned", st.pool.referenced);
	cJSON_AddNumberToObject(o, "tree_nodes", (double)st.tree_nodes);
	cJSON_AddNumberToObject(o, "leases_active", (double)st.leases_active);
	cJSON_AddNumberToObject(o, "connections", s->n_conns);
	cJSON_AddNumberToObject(o, "connections_total", (double)s->connections_total);
	cJSON_AddNumberToObject(o, "errors", (double)s->errors);
	kvp_metrics_stats_json(o, &s->ns_stats, &s->ttft_hist, &s->lookup_hist);
	txt = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return txt;
}

/* GET /metrics: the STATS counters and the metrics tables as Prometheus text. */
static void metrics_render(void *arg, struct evbuffer *out)
{
	struct server *s = arg;
	struct kvp_metrics_view v = {
		.version = KVP_VERSION,
		.mode = s->cfg->index_only ? "index-only" : "engine",
		.name = s->name,
		.uptime_s = uptime_s(s),
		.computed_tokens = s->computed_tokens,
		.generated_tokens = s->generated_tokens,
		.generations_done = s->generations_done,
		.generations_active = s->gen ? kvp_gen_active(s->gen) : 0,
		.errors = s->errors,
		.connections_total = s->connections_total,
		.connections = s->n_conns,
		.ns = &s->ns_stats,
		.req = &s->req_counts,
		.ttft = s->engine ? &s->ttft_hist : NULL,
		.lookup = &s->lookup_hist,
		.insert = s->cfg->index_only ? &s->insert_hist : NULL,
	};

	kvp_cache_get_stats(s->cache, &v.cache);
	(void)kvp_metrics_render(&v, out);   /* on failure out is empty: a 500 */
}

/* ---- request handlers ------------------------------------------------------ */

/* Each returns 0 to keep going or a negative status after queuing a fatal ERROR. */

static int handle_hello(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	const struct kvp_config *cfg = c->srv->cfg;
	struct kvp_hello m;
	struct kvp_hello_reply r;
	uint8_t buf[64 + KVP_NAME_MAX];
	size_t n;
	int rc = kvp_hello_decode(p, h->len, &m);

	if (rc) {
		send_error(c, h->req_id, rc, "malformed HELLO: %s", kvp_strerror(rc));
		return rc;
	}
	if (m.version < 1) {
		send_error(c, h->req_id, KVP_EVERSION, "protocol version %u: this daemon speaks 1 and 2",
			   m.version);
		return KVP_EVERSION;
	}
	/* names are printable: no NUL, no control byte (0x1e separates adapter and salt) */
	for (uint16_t i = 0; i < m.adapter_len; i++) {
		if ((uint8_t)m.adapter[i] < 0x20) {
			send_error(c, h->req_id, KVP_EINVAL,
				   "adapter id contains a control byte (0x%02x) at %u",
				   (uint8_t)m.adapter[i], i);
			return KVP_OK;
		}
	}
	for (uint16_t i = 0; i < m.salt_len; i++) {
		if ((uint8_t)m.salt[i] < 0x20) {
			send_error(c, h->req_id, KVP_EINVAL, "cache salt contains a control byte at %u", i);
			return KVP_OK;
		}
	}
	if (m.salt_len && kvp_config_uid_listed(cfg->salt_uids, (uint32_t)c->uid) != 1) {
		send_error(c, h->req_id, KVP_EPERM,
			   "a cache salt is allowed only for the uids in salt-uids; this is uid %u",
			   (unsigned)c->uid);
		return KVP_OK;
	}
	memcpy(c->adapter, m.adapter, m.adapter_len);
	c->adapter[m.adapter_len] = '\0';
	if (m.salt_len) {
		/* a salted namespace: tenant KVP_TENANT_SALTED, adapter || 0x1e || salt, so every
		 * connection allowed the same salt (and adapter) shares blocks (docs/hashing.md) */
		char joined[2 * KVP_NAME_MAX + 2];
		snprintf(joined, sizeof(joined), "%s\x1e%.*s", c->adapter, (int)m.salt_len, m.salt);
		c->tenant = KVP_TENANT_SALTED;
		c->root = kvp_ns_root(c->srv->ns_name, KVP_TENANT_SALTED, joined);
		/* the salt is the tenant: its quota spans every adapter used with it */
		snprintf(joined, sizeof(joined), "\x1e%.*s", (int)m.salt_len, m.salt);
		c->group = kvp_ns_root(c->srv->ns_name, KVP_TENANT_SALTED, joined);
	} else {
		c->tenant = (uint32_t)c->uid;
		c->root = kvp_ns_root(c->srv->ns_name, (uint32_t)c->uid, c->adapter);
		c->group = kvp_ns_root(c->srv->ns_name, (uint32_t)c->uid, "");
	}

	r = (struct kvp_hello_reply){
		/* the highest version both sides speak */
		.version = m.version < KVP_PROTO_VERSION_MAX ? m.version : KVP_PROTO_VERSION_MAX,
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = kvp_cache_capacity(c->srv->cache),
		.max_tokens = cfg->max_tokens,
		.flags = cfg->index_only ? KVP_HELLO_INDEX_ONLY : 0,
		.tenant = c->tenant,
		.name = c->srv->name,
		.name_len = (uint16_t)strlen(c->srv->name),
	};
	n = kvp_hello_reply_encode(buf, sizeof(buf), &r);
	return send_frame(c, KVP_T_HELLO | KVP_T_REPLY, h->req_id, buf, n);
}

static int handle_tokens(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct server *s = c->srv;
	struct kvp_tokens_req m;
	struct kvp_cache_result res;
	struct kvp_blocks_reply r;
	struct kvp_ns_counters *ns;
	bool insert = h->type == KVP_T_INSERT;
	uint64_t t0;
	size_t n;
	int rc = kvp_tokens_req_decode(p, h->len, s->cfg->max_tokens, &m);

	if (rc == KVP_ETOOBIG) {
		/* well-formed but over the limit: refuse the request, keep the connection */
		send_error(c, h->req_id, rc, "%u tokens: over the limit of %u per request",
			   m.n_tokens, s->cfg->max_tokens);
		return KVP_OK;
	}
	if (rc) {
		send_error(c, h->req_id, rc, "malformed %s: %s", insert ? "INSERT" : "LOOKUP",
			   kvp_strerror(rc));
		return rc;
	}
	if (insert && !s->cfg->index_only) {
		/* the engine computes every block it caches; foreign blocks would have no KV */
		send_error(c, h->req_id, KVP_EUNSUPPORTED,
			   "INSERT registers externally computed blocks: index-only mode only; "
			   "in engine mode GENERATE caches the blocks it computes");
		return KVP_OK;
	}
	kvp_load_u32s(s->tokens, m.tokens, m.n_tokens);
	t0 = kvp_metrics_clock_ns();
	if (insert)
		rc = kvp_cache_insert(s->cache, c->root, c->group, s->tokens, m.n_tokens, c->id,
				      m.flags & KVP_F_PIN, s->block_ids, &res);
	else
		rc = kvp_cache_lookup(s->cache, c->root, s->tokens, m.n_tokens, c->id,
				      m.flags & KVP_F_PIN, s->block_ids, &res);
	kvp_hist_observe(insert ? &s->insert_hist : &s->lookup_hist,
			 (double)(kvp_metrics_clock_ns() - t0) / 1e3);
	if (rc == KVP_EBUSY) {
		send_error(c, h->req_id, rc, "this connection already holds %u leases",
			   s->cfg->max_leases);
		return KVP_OK;
	}
	if (rc && !(insert && rc == KVP_ENOMEM && res.n_blocks)) {
		send_error(c, h->req_id, rc, "%s failed: %s", insert ? "INSERT" : "LOOKUP",
			   kvp_strerror(rc));
		return KVP_OK;
	}
	ns = kvp_ns_stats_get(&s->ns_stats, (uint32_t)c->uid, c->adapter);
	ns->requests++;
	if (!insert) {
		ns->queries++;
		ns->query_tokens += m.n_tokens;
		ns->hit_tokens += res.matched_tokens;
	}
	if (res.pool_full)
		kvp_debug("conn %llu: pool full of pinned blocks; cached %u of %u tokens",
			  (unsigned long long)c->id, res.matched_tokens, m.n_tokens);
	r = (struct kvp_blocks_reply){
		.matched_tokens = res.matched_tokens,
		.prompt_tokens = res.prompt_tokens,
		.new_blocks = res.new_blocks,
		.lease = res.lease,
		.n_blocks = res.n_blocks,
	};
	n = kvp_blocks_reply_encode(s->reply, s->reply_cap, &r, s->block_ids);
	return send_frame(c, h->type | KVP_T_REPLY, h->req_id, s->reply, n);
}

static int handle_release(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	uint64_t lease;
	uint32_t n = 0;
	uint8_t buf[4];
	int rc = kvp_release_decode(p, h->len, &lease);

	if (rc) {
		send_error(c, h->req_id, rc, "malformed RELEASE: %s", kvp_strerror(rc));
		return rc;
	}
	rc = kvp_cache_release(c->srv->cache, c->id, lease, &n);
	if (rc) {
		send_error(c, h->req_id, rc, "no lease %llu on this connection",
			   (unsigned long long)lease);
		return KVP_OK;
	}
	kvp_u32_encode(buf, sizeof(buf), n);
	return send_frame(c, KVP_T_RELEASE | KVP_T_REPLY, h->req_id, buf, sizeof(buf));
}

static int handle_stats(struct conn *c, const struct kvp_frame_hdr *h)
{
	char *txt;
	int rc;

	if (h->len) {
		send_error(c, h->req_id, KVP_EPROTO, "STATS takes no payload");
		return KVP_EPROTO;
	}
	c->srv->stats_requests++;
	txt = stats_json(c->srv);
	if (!txt) {
		send_error(c, h->req_id, KVP_ENOMEM, "out of memory building STATS");
		return KVP_OK;
	}
	rc = send_frame(c, KVP_T_STATS | KVP_T_REPLY, h->req_id, txt, strlen(txt));
	cJSON_free(txt);
	return rc;
}

/* ---- GENERATE -------------------------------------------------------------- */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void gen_req_free(struct gen_req *r)
{
	srv_free(r->job.tokens);
	srv_free(r->job.logits);
	srv_free(r);
}

static int handle_generate(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct server *s = c->srv;
	struct kvp_generate_req m;
	const struct kvp_model_config *mc;
	struct gen_req *r;
	uint32_t max_new, n_positions;
	int rc = kvp_generate_req_decode(p, h->len, s->cfg->max_tokens, &m);

	if (rc == KVP_EPROTO || (rc == KVP_EINVAL && (m.flags & ~KVP_GEN_FLAGS_KNOWN))) {
		send_error(c, h->req_id, rc, "malformed GENERATE: %s", kvp_strerror(rc));
		return rc;
	}
	if (rc == KVP_ETOOBIG) {
		send_error(c, h->req_id, rc, "%u tokens: over the limit of %u per request",
			   m.n_tokens, s->cfg->max_tokens);
		return KVP_OK;
	}
	if (rc) {
		send_error(c, h->req_id, rc, "GENERATE: a sampling value or count is out of range "
			   "(temperature >= 0, top_p in (0, 1], 1..max tokens, <= %u stop ids)",
			   KVP_STOP_MAX);
		return KVP_OK;
	}
	if (c->n_reqs >= s->cfg->max_inflight) {
		send_error(c, h->req_id, KVP_EBUSY,
			   "this connection already runs %u generations (--max-inflight)", c->n_reqs);
		return KVP_OK;
	}
	if (!s->engine) {
		send_error(c, h->req_id, KVP_EUNSUPPORTED,
			   "this daemon runs --index-only: it has no engine to generate with");
		return KVP_OK;
	}
	mc = &s->model->cfg;
	if (m.n_tokens > mc->ctx) {
		send_error(c, h->req_id, KVP_ETOOBIG, "%u prompt tokens: over the model's context of %u",
			   m.n_tokens, mc->ctx);
		return KVP_OK;
	}
	r = srv_zalloc(sizeof(*r));
	if (!r)
		goto out_nomem;
	max_new = m.max_new;
	if (max_new > mc->ctx - m.n_tokens + 1)
		max_new = mc->ctx - m.n_tokens + 1;   /* the rest would finish "context" anyway */
	r->job.tokens = srv_malloc(((size_t)m.n_tokens + max_new) * sizeof(uint32_t));
	if (!r->job.tokens)
		goto out_free;
	kvp_load_u32s(r->job.tokens, m.tokens, m.n_tokens);
	for (uint32_t i = 0; i < m.n_tokens; i++) {
		if (r->job.tokens[i] >= mc->vocab) {
			send_error(c, h->req_id, KVP_EINVAL, "token %u at position %u: the vocabulary has %u",
				   r->job.tokens[i], i, mc->vocab);
			gen_req_free(r);
			return KVP_OK;
		}
	}
	if (m.flags & KVP_GEN_LOGITS) {
		r->job.logits = srv_malloc((size_t)mc->vocab * sizeof(float));
		if (!r->job.logits)
			goto out_free;
		r->job.want_logits = true;
	}
	/* KV is written for every position but the last token drawn */
	n_positions = m.n_tokens + (max_new ? max_new - 1 : 0);
	if (n_positions > mc->ctx)
		n_positions = mc->ctx;
	rc = kvp_cache_seq_begin(s->cache, c->root, c->group, r->job.tokens, m.n_tokens,
				 n_positions, &r->seq);
	if (rc == KVP_EFULL && r->seq.quota_full) {
		send_error(c, h->req_id, rc,
			   "tenant quota reached: this request needs %u blocks, and its tenant "
			   "holds %zu cached blocks; its quota is %u%% of the pool",
			   (n_positions + s->cfg->block_tokens - 1) / s->cfg->block_tokens,
			   kvp_cache_group_blocks(s->cache, c->group), s->cfg->tenant_quota_pct);
		gen_req_free(r);
		return KVP_OK;
	}
	if (rc == KVP_EFULL) {
		struct kvp_cache_stats st;
		kvp_cache_get_stats(s->cache, &st);
		send_error(c, h->req_id, rc,
			   "pool full of pinned blocks: this request needs %u blocks, %u of %u are "
			   "pinned by running requests and leases",
			   (n_positions + s->cfg->block_tokens - 1) / s->cfg->block_tokens,
			   st.pool.referenced, st.pool.total);
		gen_req_free(r);
		return KVP_OK;
	}
	if (rc)
		goto out_free;

	r->conn = c;
	r->ns = kvp_ns_stats_get(&s->ns_stats, (uint32_t)c->uid, c->adapter);
	r->ns->requests++;
	r->ns->queries++;
	r->ns->query_tokens += m.n_tokens;
	r->ns->hit_tokens += (uint64_t)r->seq.matched_blocks * s->cfg->block_tokens;
	r->req_id = h->req_id;
	r->version = h->version;
	r->job.n_prompt = m.n_tokens;
	r->job.max_new = max_new;
	r->job.ctx_limit = mc->ctx;
	r->job.cached = r->seq.matched_blocks * s->cfg->block_tokens;
	if (r->job.cached > m.n_tokens)
		r->job.cached = m.n_tokens;
	r->cached_report = r->job.cached < m.n_tokens ? r->job.cached : m.n_tokens - 1;
	r->job.blocks = r->seq.block_data;
	r->job.n_blocks = r->seq.n_blocks;
	kvp_sampler_init(&r->job.sampler, m.temperature, m.top_k, m.top_p, m.seed);
	r->job.n_stop = m.n_stop;
	kvp_load_u32s(r->job.stop, m.stop, m.n_stop);
	r->job.t_received_ns = mono_ns();
	r->job.owner = r;
	atomic_init(&r->job.cancel, false);
	r->next = c->reqs;
	if (r->next)
		r->next->pprev = &r->next;
	r->pprev = &c->reqs;
	c->reqs = r;
	c->n_reqs++;
	kvp_debug("conn %llu: GENERATE %u: %u prompt tokens, %u cached, max_new %u",
		  (unsigned long long)c->id, h->req_id, m.n_tokens, r->job.cached, max_new);
	kvp_gen_submit(s->gen, &r->job);
	return KVP_OK;

out_free:
	gen_req_free(r);
out_nomem:
	send_error(c, h->req_id, KVP_ENOMEM, "out of memory starting a generation");
	return KVP_OK;
}

/* Stream a request's new tokens; when it is done, send usage (or its ERROR). */
static void gen_req_flush(struct gen_req *r)
{
	struct conn *c = r->conn;
	struct kvp_gen_job *j = &r->job;
	uint8_t small[4 + 4 * 64];

	c->version = r->version;   /* these frames answer that request, not the current one */
	if (j->n_generated > r->n_sent) {
		uint32_t n = j->n_generated - r->n_sent;
		size_t cap = kvp_token_chunk_size(n);
		uint8_t *buf = cap <= sizeof(small) ? small : srv_malloc(cap);
		size_t len = buf ? kvp_token_chunk_encode(buf, cap, j->tokens + j->n_prompt + r->n_sent, n) : 0;

		if (len)
			(void)send_frame(c, KVP_T_GENERATE | KVP_T_REPLY, r->req_id, buf, len);
		if (buf != small)
			srv_free(buf);
		r->n_sent = j->n_generated;
	}
	if (!j->done)
		return;
	if (j->status) {
		send_error(c, r->req_id, j->status, "generation failed: %s", kvp_strerror(j->status));
		return;
	}
	struct kvp_generate_done d = {
		.prompt_tokens = j->n_prompt,
		.cached_tokens = r->cached_report,
		.computed_tokens = j->n_prompt - r->cached_report,
		.generated_tokens = j->n_generated,
		.finish = j->finish,
		.ttft_us = j->ttft_us,
		.prefill_us = j->prefill_us,
		.decode_us = j->decode_us,
		.n_logits = j->want_logits ? c->srv->model->cfg.vocab : 0,
	};
	size_t cap = kvp_generate_done_size(d.n_logits);
	uint8_t *buf = srv_malloc(cap);
	size_t len = buf ? kvp_generate_done_encode(buf, cap, &d, j->logits) : 0;

	if (len)
		(void)send_frame(c, KVP_T_GENERATE_DONE, r->req_id, buf, len);
	else
		send_error(c, r->req_id, KVP_ENOMEM, "out of memory sending usage");
	srv_free(buf);
}

/* A request is over: cache the blocks it computed, free the rest. */
static void gen_req_finish(struct server *s, struct gen_req *r)
{
	struct kvp_gen_job *j = &r->job;

	kvp_cache_seq_end(s->cache, &r->seq, j->tokens, j->n_valid);
	s->generations_done++;
	s->generated_tokens += j->n_generated;
	/* prompt positions the engine ran, as in the usage frame (decode steps are
	 * generated_tokens); a request cut short mid-prefill counts what it got through */
	uint32_t computed = j->n_valid >= j->n_prompt ? j->n_prompt - r->cached_report
			    : j->n_valid > j->cached ? j->n_valid - j->cached : 0;
	s->computed_tokens += computed;
	if (r->ns) {
		r->ns->computed_tokens += computed;
		r->ns->generated_tokens += j->n_generated;
	}
	kvp_req_count(&s->req_counts, KVP_T_GENERATE, j->status);
	if (j->status == 0)
		kvp_hist_observe(&s->ttft_hist, (double)j->ttft_us);
	if (r->conn) {
		*r->pprev = r->next;
		if (r->next)
			r->next->pprev = r->pprev;
		r->conn->n_reqs--;
	}
	gen_req_free(r);
}

static void gen_notify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	struct kvp_gen_job *jobs[64];
	size_t n;

	while ((n = kvp_gen_poll(s->gen, jobs, 64)) > 0) {
		for (size_t i = 0; i < n; i++) {
			struct gen_req *r = jobs[i]->owner;
			if (r->conn && r->conn->state == CONN_READING)
				gen_req_flush(r);
			if (jobs[i]->done)
				gen_req_finish(s, r);
		}
	}
	maybe_finish_stop(s);
}

/* Called from the engine thread. */
static void gen_notify(void *arg)
{
	struct server *s = arg;

	event_active(s->gen_notify, EV_READ, 0);
}

/* --tenant-quota in blocks of a pool of capacity blocks (0: none; at least 1). */
static uint32_t quota_blocks(const struct kvp_config *cfg, uint32_t capacity)
{
	uint64_t q = (uint64_t)capacity * cfg->tenant_quota_pct / 100;

	if (cfg->tenant_quota_pct == 0)
		return 0;
	return q ? (uint32_t)q : 1;
}

/*
 * Make the server follow its live options (after startup, SIGHUP or an ADMIN CONFIG):
 * the log level, the lease limit and tenant quota of the cache, the admin group, and
 * the idle timeout of every reading connection when it changed.
 */
static void apply_live(struct server *s)
{
	const struct kvp_config *cfg = s->cfg;

	kvp_log_set_level((enum kvp_log_level)cfg->log_level);
	kvp_cache_set_max_leases(s->cache, cfg->max_leases);
	kvp_cache_set_tenant_quota(s->cache, quota_blocks(cfg, kvp_cache_capacity(s->cache)));
	s->admin_gid_ok = false;
	if (cfg->admin_group[0]) {
		if (kvp_config_resolve_group(cfg->admin_group, &s->admin_gid) == 0)
			s->admin_gid_ok = true;
		else
			kvp_warn("admin-group '%s' names no group: only root may send ADMIN",
				 cfg->admin_group);
	}
	if (s->idle_applied != cfg->idle_timeout_s) {
		struct timeval idle = { (time_t)cfg->idle_timeout_s, 0 };

		s->idle_applied = cfg->idle_timeout_s;
		for (struct conn *c = s->conns; c; c = c->next)
			if (c->state == CONN_READING)
				bufferevent_set_timeouts(c->bev, cfg->idle_timeout_s ? &idle : NULL,
							 NULL);
	}
}

/* ---- ADMIN ------------------------------------------------------------------ */

/* Root, or a member (primary or supplementary group) of admin-group. */
static bool peer_is_admin(struct conn *c)
{
	struct server *s = c->srv;
	int fd = bufferevent_getfd(c->bev);
	gid_t small[64], *groups = small;
	socklen_t len = sizeof(small);
	bool found = false;
	int rc;

	if (c->uid == 0)
		return true;
	if (!s->admin_gid_ok)
		return false;
	if (c->gid == s->admin_gid)
		return true;
	rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	if (rc != 0 && errno == ERANGE && len > sizeof(small)) {
		/* more groups than fit: the kernel said how many bytes they take */
		groups = srv_malloc(len);
		if (!groups)
			return false;
		rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	}
	for (size_t i = 0; rc == 0 && i < len / sizeof(gid_t) && !found; i++)
		found = groups[i] == s->admin_gid;
	if (groups != small)
		srv_free(groups);
	return found;
}

/* s without its leading and trailing blanks (cut in place). */
static char *trim_blanks(char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t')
		s++;
	n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

/* ADMIN CONFIG: "" lists every option, "key" shows one, "key = value" sets a live one.
 * Returns 0 with the reply text in out, or a status with the reason in out. */
static int admin_config(struct server *s, struct conn *c, const char *text, size_t n,
			char *out, size_t cap)
{
	char buf[KVP_ADMIN_TEXT_MAX + 1], *key, *val = NULL, *eq;
	int rc;

	if (n > KVP_ADMIN_TEXT_MAX)
		n = KVP_ADMIN_TEXT_MAX;   /* the decoder refused longer ones already */
	memcpy(buf, text, n);
	buf[n] = '\0';
	eq = strchr(buf, '=');
	if (eq) {
		*eq = '\0';
		val = trim_blanks(eq + 1);
	}
	key = trim_blanks(buf);
	if (!*key && !eq)
		return kvp_config_format(s->cfg, NULL, out, cap) < 0 ? KVP_EINTERNAL : KVP_OK;
	if (!*key) {
		snprintf(out, cap, "expected 'key' or 'key = value'");
		return KVP_EINVAL;
	}
	if (!val) {
		if (kvp_config_format(s->cfg, key, out, cap) < 0) {
			snprintf(out, cap, "%s: no such option", key);
			return KVP_EINVAL;
		}
		return KVP_OK;
	}
	rc = kvp_config_set_live(s->cfg, key, val, out, cap);
	if (rc > 0)
		return KVP_EUNSUPPORTED;
	if (rc < 0)
		return KVP_EINVAL;
	apply_live(s);
	kvp_info("admin: uid %u set %s = %s", (unsigned)c->uid, key, val);
	(void)kvp_config_format(s->cfg, key, out, cap);
	return KVP_OK;
}

static int handle_admin(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	static const char *const op_names[] = { "?", "CLEAR", "EVICT", "PIN", "UNPIN", "CONFIG" };
	struct server *s = c->srv;
	struct kvp_admin_req m;
	struct kvp_admin_reply r = { 0 };
	struct kvp_key root = c->root;
	char *text = NULL;
	uint8_t *buf;
	size_t n, cap;
	uint32_t blocks = 0;
	int rc = kvp_admin_req_decode(p, h->len, s->cfg->max_tokens, &m);

	if (rc == KVP_EPROTO || (rc == KVP_EINVAL && (m.flags & ~KVP_ADMIN_FLAGS_KNOWN))) {
		send_error(c, h->req_id, rc, "malformed ADMIN: %s", kvp_strerror(rc));
		return rc;
	}
	if (rc) {
		send_error(c, h->req_id, rc, "ADMIN refused: %s", kvp_strerror(rc));
		return KVP_OK;
	}
	if (!peer_is_admin(c)) {
		kvp_warn("admin: %s refused for uid %u", m.op < 6 ? op_names[m.op] : "?",
			 (unsigned)c->uid);
		send_error(c, h->req_id, KVP_EPERM,
			   "administrative requests need root%s%s; this is uid %u",
			   s->admin_gid_ok ? " or group " : "",
			   s->admin_gid_ok ? s->cfg->admin_group : "", (unsigned)c->uid);
		return KVP_OK;
	}
	s->admin_requests++;
	if (m.flags & KVP_ADMIN_F_TENANT)
		root = kvp_ns_root(s->ns_name, m.tenant, c->adapter);
	if (m.n_tokens)
		kvp_load_u32s(s->tokens, m.tokens, m.n_tokens);
	text = srv_malloc(KVP_ADMIN_REPLY_TEXT_MAX + 1);
	if (!text) {
		send_error(c, h->req_id, KVP_ENOMEM, "out of memory");
		return KVP_OK;
	}
	text[0] = '\0';
	switch (m.op) {
	case KVP_ADMIN_CLEAR:
		blocks = (uint32_t)kvp_cache_clear(s->cache, (m.flags & KVP_ADMIN_F_ALL) ? NULL : &root);
		break;
	case KVP_ADMIN_EVICT:
		rc = kvp_cache_evict_prefix(s->cache, root, s->tokens, m.n_tokens, &blocks);
		break;
	case KVP_ADMIN_PIN:
		rc = kvp_cache_admin_pin(s->cache, root, s->tokens, m.n_tokens, &blocks);
		break;
	case KVP_ADMIN_UNPIN:
		rc = kvp_cache_admin_unpin(s->cache, root, s->tokens, m.n_tokens, &blocks);
		if (rc == KVP_ENOTFOUND)
			snprintf(text, KVP_ADMIN_REPLY_TEXT_MAX, "no PIN of that prefix");
		break;
	case KVP_ADMIN_CONFIG:
		rc = admin_config(s, c, m.text, m.text_len, text, KVP_ADMIN_REPLY_TEXT_MAX + 1);
		break;
	default:
		rc = KVP_EINVAL;
		snprintf(text, KVP_ADMIN_REPLY_TEXT_MAX, "unknown ADMIN op %u", m.op);
		break;
	}
	if (rc) {
		send_error(c, h->req_id, rc, "%s", text[0] ? text : kvp_strerror(rc));
		srv_free(text);
		return KVP_OK;
	}
	if (m.op != KVP_ADMIN_CONFIG)
		kvp_info("admin: uid %u %s%s: %u blocks", (unsigned)c->uid, op_names[m.op],
			 (m.flags & KVP_ADMIN_F_ALL) ? " (all namespaces)" : "", blocks);
	r.op = m.op;
	r.blocks = blocks;
	r.text_len = (uint32_t)strnlen(text, KVP_ADMIN_REPLY_TEXT_MAX);
	r.text = text;
	cap = kvp_admin_reply_size(&r);
	buf = srv_malloc(cap);
	n = buf ? kvp_admin_reply_encode(buf, cap, &r) : 0;
	if (n)
		rc = send_frame(c, KVP_T_ADMIN | KVP_T_REPLY, h->req_id, buf, n);
	else
		send_error(c, h->req_id, KVP_ENOMEM, "out of memory");
	srv_free(buf);
	srv_free(text);
	return rc;
}

static int dispatch(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	c->version = h->version;
	if (c->srv->stopping && h->type != KVP_T_STATS && h->type != KVP_T_PING &&
	    h->type != KVP_T_RELEASE) {
		send_error(c, h->req_id, KVP_ESHUTDOWN,
			   "kvprefixd is shutting down: running requests finish, new ones are refused");
		return KVP_OK;
	}
	switch (h->type) {
	case KVP_T_HELLO: return handle_hello(c, h, p);
	case KVP_T_LOOKUP:
	case KVP_T_INSERT: return handle_tokens(c, h, p);
	case KVP_T_RELEASE: return handle_release(c, h, p);
	case KVP_T_STATS: return handle_stats(c, h);
	case KVP_T_GENERATE: return handle_generate(c, h, p);
	case KVP_T_ADMIN: return handle_admin(c, h, p);
	case KVP_T_PING:
		c->srv->pings++;
		return send_frame(c, KVP_T_PING | KVP_T_REPLY, h->req_id, p, h->len);
	}
	send_error(c, h->req_id, KVP_EPROTO, "frame type 0x%02x is not a request", h->type);
	return KVP_EPROTO;
}

/* dispatch, counting the request by type and outcome for /metrics; a GENERATE that
 * starts is counted when it ends (gen_req_finish) */
static int dispatch_counted(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct server *s = c->srv;
	uint64_t errors = s->errors;
	int rc = dispatch(c, h, p);

	if (s->errors != errors)
		kvp_req_count(&s->req_counts, h->type, s->last_error);
	else if (rc || h->type != KVP_T_GENERATE)
		kvp_req_count(&s->req_counts, h->type, rc);
	return rc;
}

/* ---- connection I/O -------------------------------------------------------- */

static void conn_free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	bufferevent_free(c->bev);
	srv_free(c);
}

/* Unlink the connection, release its leases now; free it from the loop later. */
static void conn_close(struct conn *c, const char *why)
{
	struct server *s = c->srv;
	size_t n;

	if (c->state == CONN_CLOSED)
		return;
	conn_set_state(c, CONN_CLOSED);
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	n = kvp_cache_release_owner(s->cache, c->id);
	/* running generations end at their next step; their blocks come back via poll */
	for (struct gen_req *r = c->reqs; r; r = r->next) {
		atomic_store(&r->job.cancel, true);
		r->conn = NULL;
	}
	c->reqs = NULL;
	c->n_reqs = 0;
	kvp_debug("conn %llu (uid %u): closed (%s); %zu leases released",
		  (unsigned long long)c->id, (unsigned)c->uid, why, n);
	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	s->n_conns--;
	if (event_base_once(s->base, -1, EV_TIMEOUT, conn_free_cb, c, NULL) != 0) {
		/* cannot defer: freeing here is still safe with libevent's deferred cbs off */
		bufferevent_free(c->bev);
		srv_free(c);
	}
}

/* Stop reading; flush what is queued (CLOSE_FLUSH_SECONDS at most), then close. */
static void conn_finish(struct conn *c, const char *why)
{
	struct timeval tv = { CLOSE_FLUSH_SECONDS, 0 };

	conn_set_state(c, CONN_CLOSING);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_set_timeouts(c->bev, NULL, &tv);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_close(c, why);
}

static void conn_fatal(struct conn *c)
{
	conn_finish(c, "protocol error");
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct server *s = c->srv;
	struct evbuffer *in = bufferevent_get_input(bev);
	int frames = 0;
	bool more = false;

	while (c->state == CONN_READING) {
		uint8_t hb[KVP_HDR_SIZE];
		struct kvp_frame_hdr h;
		const uint8_t *p = NULL;
		size_t avail = evbuffer_get_length(in);
		int rc;

		if (avail < KVP_HDR_SIZE)
			break;
		if (frames == FRAMES_PER_WAKEUP) {
			/* fairness: let other connections run, continue on the next turn */
			bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
			more = true;
			break;
		}
		evbuffer_copyout(in, hb, sizeof(hb));
		rc = kvp_hdr_decode(hb, sizeof(hb), s->cfg->max_frame_bytes, &h);
		if (rc) {
			c->version = KVP_PROTO_VERSION;   /* nothing in a bad header is trusted */
			if (rc == KVP_ETOOBIG)
				send_error(c, h.req_id, rc, "frame of %u bytes: over the limit of %u",
					   h.len, s->cfg->max_frame_bytes);
			else
				send_error(c, rc == KVP_EPROTO ? 0 : h.req_id, rc,
					   "bad frame header: %s", kvp_strerror(rc));
			conn_fatal(c);
			return;
		}
		c->version = h.version;
		if (!kvp_frame_is_request(h.type)) {
			send_error(c, h.req_id, KVP_EPROTO, "frame type 0x%02x is not a request", h.type);
			conn_fatal(c);
			return;
		}
		if (avail < KVP_HDR_SIZE + (size_t)h.len) {
			/* wake up only once the whole frame is here */
			bufferevent_setwatermark(bev, EV_READ, KVP_HDR_SIZE + (size_t)h.len, 0);
			break;
		}
		bufferevent_setwatermark(bev, EV_READ, 0, 0);
		if (h.len) {
			p = evbuffer_pullup(in, KVP_HDR_SIZE + (ssize_t)h.len);
			if (!p) {
				send_error(c, h.req_id, KVP_ENOMEM, "out of memory reading a frame");
				conn_fatal(c);
				return;
			}
			p += KVP_HDR_SIZE;
		}
		rc = dispatch_counted(c, &h, p);
		evbuffer_drain(in, KVP_HDR_SIZE + (size_t)h.len);
		frames++;
		if (rc) {
			conn_fatal(c);
			return;
		}
	}
	if (c->state == CONN_READING && c->peer_eof && !more) {
		/* half-closed peer: every complete frame is answered; flush, then close */
		conn_finish(c, "peer closed");
		return;
	}
	if (c->state == CONN_READING && !c->peer_eof &&
	    evbuffer_get_length(bufferevent_get_output(bev)) > OUTPUT_HIGH_WATER)
		bufferevent_disable(bev, EV_READ);   /* the client is not reading its replies */
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	/* called when the output has drained */
	if (c->state == CONN_CLOSING) {
		conn_close(c, "flushed");
	} else if (c->state == CONN_READING && !c->peer_eof &&
		   !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
	}
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if ((what & BEV_EVENT_EOF) && c->state == CONN_READING) {
		/* a shutdown(SHUT_WR) still expects its replies: answer the frames already
		 * buffered (the read cb finishes the connection once they are done) */
		c->peer_eof = true;
		conn_read_cb(bev, c);
	} else if (what & BEV_EVENT_EOF)
		conn_close(c, "peer closed");
	else if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
		 c->state == CONN_READING) {
		/* idle: nothing arrived for --idle-timeout; a running generation is not idle */
		if (c->n_reqs) {
			bufferevent_enable(bev, EV_READ);
			return;
		}
		kvp_debug("conn %llu: idle for %u s", (unsigned long long)c->id,
			  c->srv->cfg->idle_timeout_s);
		conn_close(c, "idle timeout");
	} else if (what & BEV_EVENT_TIMEOUT)
		conn_close(c, "flush timed out");
	else if (what & BEV_EVENT_ERROR)
		conn_close(c, strerror(EVUTIL_SOCKET_ERROR()));
}

static void refuse(evutil_socket_t fd, int status, const char *msg)
{
	uint8_t buf[KVP_HDR_SIZE + KVP_ERROR_MSG_MAX + 16];
	struct kvp_frame_hdr h = { .version = KVP_PROTO_VERSION, .type = KVP_T_ERROR };
	size_t n = kvp_error_encode(buf + KVP_HDR_SIZE, sizeof(buf) - KVP_HDR_SIZE, status, msg);

	h.len = (uint32_t)n;
	kvp_hdr_encode(buf, &h);
	/* best effort: the socket is fresh, so a short message fits its buffer */
	if (send(fd, buf, KVP_HDR_SIZE + n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		kvp_debug("refusing a connection: %s", strerror(errno));
	evutil_closesocket(fd);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct server *s = arg;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct conn *c;

	if (s->n_conns >= s->cfg->max_connections) {
		kvp_warn("refusing a connection: %u connections open (--max-connections)",
			 s->n_conns);
		refuse(fd, KVP_EBUSY, "too many connections");
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) {
		kvp_warn("refusing a connection: SO_PEERCRED: %s", strerror(errno));
		evutil_closesocket(fd);
		return;
	}
	c = srv_zalloc(sizeof(*c));
	if (!c) {
		refuse(fd, KVP_ENOMEM, "out of memory");
		return;
	}
	c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		srv_free(c);
		refuse(fd, KVP_ENOMEM, "out of memory");
		return;
	}
	c->srv = s;
	c->id = ++s->next_conn_id;
	c->uid = cred.uid;
	c->gid = cred.gid;
	c->pid = cred.pid;
	c->state = CONN_READING;
	c->tenant = (uint32_t)c->uid;
	c->root = kvp_ns_root(s->ns_name, (uint32_t)c->uid, "");
	c->group = c->root;
	c->next = s->conns;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = &s->conns;
	s->conns = c;
	s->n_conns++;
	s->connections_total++;
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	if (s->cfg->idle_timeout_s) {
		struct timeval idle = { (time_t)s->cfg->idle_timeout_s, 0 };
		bufferevent_set_timeouts(c->bev, &idle, NULL);
	}
	/* take a whole request in one read where the socket has it */
	bufferevent_set_max_single_read(c->bev, READ_CHUNK);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	kvp_debug("conn %llu: accepted (uid %u, pid %d)", (unsigned long long)c->id,
		  (unsigned)c->uid, (int)c->pid);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	evconnlistener_enable(s->listener);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct server *s = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, 100 * 1000 };

	/*
	 * EMFILE and friends leave the connection in the backlog, so the listening socket
	 * stays readable: keep listening and this callback spins the loop at 100% CPU.
	 * Pause accepting for 100 ms instead (closing connections free descriptors).
	 */
	kvp_warn("accept: %s; pausing accept for 100 ms", evutil_socket_error_to_string(err));
	evconnlistener_disable(l);
	if (event_add(s->accept_pause, &tv) != 0)
		evconnlistener_enable(l);
}

/* One line for systemctl status: hit rate, pool use, connections, generations. */
static void notify_status(struct server *s)
{
	struct kvp_cache_stats st;
	char line[256];

	kvp_cache_get_stats(s->cache, &st);
	snprintf(line, sizeof(line),
		 "STATUS=%s: hit rate %.1f%%, pool %.0f%% used (%u of %u blocks, %u pinned), "
		 "%u connections, %u generating",
		 s->stopping ? "stopping" : s->engine ? "engine" : "index-only",
		 st.query_tokens ? 100.0 * (double)st.hit_tokens / (double)st.query_tokens : 0.0,
		 100.0 * (double)(st.pool.total - st.pool.free) / (double)st.pool.total,
		 st.pool.total - st.pool.free, st.pool.total, st.pool.referenced, s->n_conns,
		 s->gen ? kvp_gen_active(s->gen) : 0);
	(void)sd_notify(0, line);
}

/* Runs at half the watchdog interval (or every 10 s): proves the loop turns. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	(void)sd_notify(0, "WATCHDOG=1");
	notify_status(s);
}

static void stop_now(struct server *s, const char *why)
{
	kvp_info("stopping (%s)", why);
	event_base_loopbreak(s->base);
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	kvp_warn("stop timeout: %u generations still running are cut short",
		 s->gen ? kvp_gen_active(s->gen) : 0);
	stop_now(s, "stop timeout");
}

/* Called whenever a generation ends: a graceful stop waits for the last one. */
static void maybe_finish_stop(struct server *s)
{
	if (s->stopping && (!s->gen || kvp_gen_active(s->gen) == 0))
		stop_now(s, "running requests finished");
}

static void begin_stop(struct server *s, const char *sig)
{
	struct timeval tv = { STOP_TIMEOUT_SECONDS, 0 };

	if (s->stopping) {
		stop_now(s, "second signal");
		return;
	}
	s->stopping = true;
	(void)sd_notify(0, "STOPPING=1");
	kvp_info("%s: stopping; no new connections or requests, running ones may finish "
		 "(up to %d s)", sig, STOP_TIMEOUT_SECONDS);
	if (s->listener)
		evconnlistener_disable(s->listener);
	if (s->stop_timer)
		event_add(s->stop_timer, &tv);
	maybe_finish_stop(s);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	begin_stop(arg, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

struct reload_ctx {
	struct server *s;
	const struct kvp_config *next;
	int live, restart;
};

static void reload_one(void *arg, const char *name, bool live)
{
	struct reload_ctx *r = arg;

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
	struct reload_ctx r = { .s = s, .next = &next };
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
	s->cfg->log_level = next.log_level;
	s->cfg->max_connections = next.max_connections;
	s->cfg->max_inflight = next.max_inflight;
	s->cfg->max_leases = next.max_leases;
	s->cfg->idle_timeout_s = next.idle_timeout_s;
	s->cfg->tenant_quota_pct = next.tenant_quota_pct;
	memcpy(s->cfg->salt_uids, next.salt_uids, sizeof(s->cfg->salt_uids));
	memcpy(s->cfg->admin_group, next.admin_group, sizeof(s->cfg->admin_group));
	apply_live(s);
	kvp_info("reload: %d live changes applied, %d need a restart", r.live, r.restart);
	(void)sd_notify(0, "READY=1");
	notify_status(s);
}

/* ---- listening socket ------------------------------------------------------ */

static int make_parent_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	/* create missing components one by one (the runtime dir itself usually exists) */
	for (char *q = dir + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(dir, 0755) != 0 && errno != EEXIST)
			return -1;
		*q = '/';
	}
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		return -1;
	/*
	 * The socket's own directory must be ours and writable by no one else: in a shared
	 * /tmp (the default path without XDG_RUNTIME_DIR) another user can create
	 * /tmp/kvprefix-<uid> first and later swap our socket for theirs, receiving every
	 * client's prompts.
	 */
	{
		struct stat st;

		if (lstat(dir, &st) != 0)
			return -1;
		if (!S_ISDIR(st.st_mode) || (st.st_uid != geteuid() && st.st_uid != 0) ||
		    ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))) {
			errno = EPERM;
			return -1;
		}
	}
	return 0;
}

static int listen_socket(struct server *s, evutil_socket_t *out)
{
	const char *path = s->cfg->socket_path;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int fd, rc;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (make_parent_dir(path) != 0) {
		kvp_err("cannot use the directory of %s: %s (it must exist or be creatable, belong to this user or root, and not be writable by others)", path, strerror(errno));
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		kvp_err("socket: %s", strerror(errno));
		return -1;
	}
	/* A live daemon on this path is left alone; a stale socket file is replaced;
	 * anything else (a regular file, a socket we may not probe) is not ours to remove. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN) {
		kvp_err("another kvprefixd is already listening on %s", path);
		close(fd);
		return -1;
	}
	rc = errno;
	close(fd);
	if (rc == ECONNREFUSED) {
		struct stat st;

		if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
			kvp_err("%s exists and is not a socket; not replacing it", path);
			return -1;
		}
		if (unlink(path) == 0)
			kvp_info("removed a stale socket file at %s", path);
	} else if (rc != ENOENT) {
		kvp_err("cannot probe %s: %s", path, strerror(rc));
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		kvp_err("socket: %s", strerror(errno));
		return -1;
	}
	old = umask(0777 & ~s->cfg->socket_mode);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc != 0) {
		kvp_err("cannot bind %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	s->socket_bound = true;
	{
		struct stat st;

		if (stat(path, &st) == 0) {
			s->sock_dev = st.st_dev;
			s->sock_ino = st.st_ino;
		}
	}
	if (chmod(path, s->cfg->socket_mode) != 0)
		kvp_warn("chmod %s: %s", path, strerror(errno));
	/* listen now: between bind and listen a connect is refused, which a second
	 * daemon starting at that moment would take for a stale socket and unlink */
	if (listen(fd, 128) != 0) {
		kvp_err("cannot listen on %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	*out = fd;
	return 0;
}

/* ---- run ------------------------------------------------------------------- */

static void server_free(struct server *s)
{
	while (s->conns) {
		struct conn *c = s->conns;
		conn_close(c, "daemon stopping");
	}
	if (s->gen) {
		struct kvp_gen_job *jobs[64];
		size_t n;

		/* every job comes back done; return its blocks before the cache goes */
		kvp_gen_stop_thread(s->gen);
		while ((n = kvp_gen_poll(s->gen, jobs, 64)) > 0)
			for (size_t i = 0; i < n; i++)
				gen_req_finish(s, jobs[i]->owner);
		kvp_gen_free(s->gen);
	}
	if (s->gen_notify)
		event_free(s->gen_notify);
	kvp_metrics_free(s->metrics);
	if (s->listener)
		evconnlistener_free(s->listener);
	if (s->sig_int)
		event_free(s->sig_int);
	if (s->sig_term)
		event_free(s->sig_term);
	if (s->sig_hup)
		event_free(s->sig_hup);
	if (s->tick)
		event_free(s->tick);
	if (s->stop_timer)
		event_free(s->stop_timer);
	if (s->accept_pause)
		event_free(s->accept_pause);
	if (s->base) {
		/* run the deferred frees queued by conn_close */
		event_base_loop(s->base, EVLOOP_NONBLOCK);
		event_base_free(s->base);
	}
	if (s->socket_bound) {
		struct stat st;

		/* remove only our own socket file, not one a later daemon put there */
		if (lstat(s->cfg->socket_path, &st) == 0 && st.st_dev == s->sock_dev &&
		    st.st_ino == s->sock_ino && unlink(s->cfg->socket_path) != 0)
			kvp_warn("cannot remove %s: %s", s->cfg->socket_path, strerror(errno));
	}
	kvp_cache_destroy(s->cache);
	kvp_engine_destroy(s->engine);
	kvp_model_free(s->model);
	srv_free(s->tokens);
	srv_free(s->block_ids);
	srv_free(s->reply);
}

/* XXH3-64 of the whole model file: blocks of different weights never share a namespace,
 * even when two files carry the same general.name. */
static int model_fingerprint(const char *path, uint64_t *fp)
{
	struct stat st;
	void *m;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || st.st_size <= 0) {
		close(fd);
		return -1;
	}
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	*fp = XXH3_64bits(m, (size_t)st.st_size);
	munmap(m, (size_t)st.st_size);
	return 0;
}

static const char *dtype_name(uint32_t t)
{
	return t == 0 ? "f32" : t == 1 ? "f16" : t == 30 ? "bf16" : "?";
}

/* Load the model and the engine; size the pool from --pool-mb unless given in blocks. */
static int engine_setup(struct server *s, uint32_t *capacity)
{
	const struct kvp_config *cfg = s->cfg;
	struct kvp_engine_config ec = {
		.threads = cfg->threads,
		.kv_dtype = (enum kvp_kv_dtype)cfg->kv_dtype,
		.block_tokens = cfg->block_tokens,
		.max_batch = 512,
	};
	const struct kvp_model_config *mc;
	char err[512], why[256], dev[300] = "";
	uint64_t fp = 0;
	size_t bb;
	int rc;

	/* the backend first: a missing GPU is found before a large model is read */
	ec.backend = KVP_BACKEND_CPU;
	if (cfg->backend == KVP_DAEMON_BACKEND_AUTO && cfg->kv_dtype != KVP_KV_F16) {
		kvp_info("--kv-dtype f32: using the CPU backend (the CUDA backend keeps KV in f16)");
	} else if (cfg->backend != KVP_DAEMON_BACKEND_CPU) {
		if (kvp_engine_probe(KVP_BACKEND_CUDA, why, sizeof(why)) == 0) {
			ec.backend = KVP_BACKEND_CUDA;
			snprintf(dev, sizeof(dev), " on %s", why);
		} else if (cfg->backend == KVP_DAEMON_BACKEND_CUDA) {
			kvp_err("--backend cuda: no CUDA device found: %s", why);
			return -1;
		} else {
			kvp_info("no CUDA device found (%s): using the CPU backend", why);
		}
	}
	if (ec.backend == KVP_BACKEND_CUDA && cfg->kv_dtype != KVP_KV_F16) {
		kvp_err("--kv-dtype f32 is for the CPU backend; the CUDA backend keeps KV in f16");
		return -1;
	}

	rc = kvp_model_load(cfg->model_path, &s->model, err, sizeof(err));
	if (rc) {
		kvp_err("cannot load model %s: %s", cfg->model_path, err);
		return -1;
	}
	mc = &s->model->cfg;
	if (model_fingerprint(cfg->model_path, &fp) != 0) {
		kvp_err("cannot read %s to fingerprint it: %s", cfg->model_path, strerror(errno));
		return -1;
	}
	s->name = mc->name;
	snprintf(s->ns_name, sizeof(s->ns_name), "%s@%016llx", mc->name, (unsigned long long)fp);
	err[0] = '\0';
	ec.err = err;
	ec.errlen = sizeof(err);
	rc = kvp_engine_create(s->model, &ec, &s->engine);
	if (rc) {
		kvp_err("cannot create the %s engine: %s%s%s", kvp_backend_name(ec.backend),
			kvp_strerror(rc), err[0] ? ": " : "", err);
		return -1;
	}
	bb = kvp_engine_block_bytes(s->engine);
	if (!cfg->capacity_given) {
		uint64_t n = ((uint64_t)cfg->pool_mb << 20) / bb;
		if (n == 0) {
			kvp_err("--pool-mb %u holds no block of %zu bytes", cfg->pool_mb, bb);
			return -1;
		}
		*capacity = n > (1u << 31) ? (1u << 31) : (uint32_t)n;
	}
	kvp_info("model %s: %s weights, %llu parameters, vocab %u, dim %u, %u layers, "
		 "%u heads (%u kv), ffn %u, context %u",
		 mc->name, dtype_name(mc->file_type), (unsigned long long)mc->n_params, mc->vocab,
		 mc->dim, mc->n_layers, mc->n_heads, mc->n_kv_heads, mc->ffn, mc->ctx);
	if (ec.backend == KVP_BACKEND_CUDA)
		kvp_info("KV f16: %zu bytes per token; pool %u blocks of %u tokens (%.1f MiB); "
			 "backend cuda%s", kvp_engine_token_bytes(s->engine), *capacity,
			 cfg->block_tokens, (double)*capacity * (double)bb / 1048576.0, dev);
	else
		kvp_info("KV %s: %zu bytes per token; pool %u blocks of %u tokens (%.1f MiB); "
			 "backend cpu, %d threads",
			 cfg->kv_dtype == KVP_KV_F16 ? "f16" : "f32", kvp_engine_token_bytes(s->engine),
			 *capacity, cfg->block_tokens, (double)*capacity * (double)bb / 1048576.0,
			 cfg->threads);
	return 0;
}

int kvp_server_run(const struct kvp_config *cfg)
{
	static struct kvp_config live;
	struct server s = { .cfg = &live, .name = live.index_name };
	struct kvp_cache_config cc = {
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = cfg->capacity_blocks,
		.max_tokens = cfg->max_tokens,
		.max_leases = cfg->max_leases,
	};
	size_t max_blocks = cfg->max_tokens / cfg->block_tokens + 1;
	evutil_socket_t fd;
	int rc, ret = 1, n_fds;

	live = *cfg;
	clock_gettime(CLOCK_MONOTONIC, &s.started);
	kvp_hist_init(&s.ttft_hist, KVP_HIST_TTFT);
	kvp_hist_init(&s.lookup_hist, KVP_HIST_LATENCY);
	kvp_hist_init(&s.insert_hist, KVP_HIST_LATENCY);
	signal(SIGPIPE, SIG_IGN);
#ifndef KVP_SANITIZE_BUILD
	event_set_mem_functions(mi_malloc, mi_realloc, mi_free);
#endif
	if (evthread_use_pthreads() != 0) {
		kvp_err("libevent has no pthreads support");
		return 1;
	}
	snprintf(s.ns_name, sizeof(s.ns_name), "%s", cfg->index_name);
	if (cfg->model_path && engine_setup(&s, &cc.capacity_blocks) != 0)
		goto out;
	cc.tenant_quota = quota_blocks(cfg, cc.capacity_blocks);

	rc = kvp_cache_create(&cc, &s.cache);
	if (rc) {
		kvp_err("cannot create the cache of %u blocks: %s", cc.capacity_blocks,
			kvp_strerror(rc));
		goto out;
	}
	s.idle_applied = live.idle_timeout_s;   /* no connection yet */
	apply_live(&s);
	if (s.engine) {
		bool gpu = kvp_engine_backend(s.engine) == KVP_BACKEND_CUDA;

		rc = gpu ? kvp_cache_attach_device(s.cache, kvp_engine_block_bytes(s.engine))
			 : kvp_cache_attach_memory(s.cache, kvp_engine_block_bytes(s.engine));
		if (rc) {
			kvp_err("cannot allocate the KV pool (%u blocks of %zu bytes%s): %s",
				cc.capacity_blocks, kvp_engine_block_bytes(s.engine),
				gpu ? " on the GPU" : "", kvp_strerror(rc));
			goto out;
		}
	}
	s.tokens = srv_malloc_aligned((size_t)cfg->max_tokens * sizeof(uint32_t), 64);
	s.block_ids = srv_malloc(max_blocks * sizeof(uint32_t));
	s.reply_cap = kvp_blocks_reply_size((uint32_t)max_blocks);
	s.reply = srv_malloc(s.reply_cap);
	s.base = event_base_new();
	if (!s.tokens || !s.block_ids || !s.reply || !s.base) {
		kvp_err("out of memory at start");
		goto out;
	}
	/* before the client socket exists: a bad --metrics-listen never takes a client */
	if (cfg->metrics_listen[0] &&
	    kvp_metrics_start(s.base, cfg->metrics_listen, metrics_render, &s, &s.metrics) != 0)
		goto out;   /* logged */
	if (s.engine) {
		s.gen_notify = event_new(s.base, -1, 0, gen_notify_cb, &s);
		if (!s.gen_notify || kvp_gen_start(s.engine, gen_notify, &s, &s.gen) != 0) {
			kvp_err("cannot start the engine thread");
			goto out;
		}
	}
	n_fds = sd_listen_fds(1);
	if (n_fds > 1) {
		kvp_err("systemd passed %d sockets; kvprefixd listens on one", n_fds);
		goto out;
	} else if (n_fds == 1) {
		/* socket activation: the unit's socket replaces --socket */
		fd = SD_LISTEN_FDS_START;
		if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
			kvp_err("the socket systemd passed is not a listening Unix stream socket");
			goto out;
		}
		evutil_make_socket_nonblocking(fd);
		evutil_make_socket_closeonexec(fd);
		s.activated = true;
		{
			struct sockaddr_un sa;
			socklen_t sl = sizeof(sa);
			if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_path[0])
				snprintf(s.cfg->socket_path, sizeof(s.cfg->socket_path), "%s", sa.sun_path);
		}
	} else if (listen_socket(&s, &fd) != 0) {
		goto out;
	}
	s.listener = evconnlistener_new(s.base, accept_cb, &s,
					LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!s.listener) {
		kvp_err("cannot listen on %s: %s", cfg->socket_path, strerror(errno));
		close(fd);
		goto out;
	}
	evconnlistener_set_error_cb(s.listener, accept_error_cb);
	s.accept_pause = evtimer_new(s.base, accept_resume_cb, &s);
	if (!s.accept_pause) {
		kvp_err("out of memory at start");
		goto out;
	}
	s.sig_int = evsignal_new(s.base, SIGINT, signal_cb, &s);
	s.sig_term = evsignal_new(s.base, SIGTERM, signal_cb, &s);
	s.sig_hup = evsignal_new(s.base, SIGHUP, hup_cb, &s);
	s.stop_timer = evtimer_new(s.base, stop_timer_cb, &s);
	s.tick = event_new(s.base, -1, EV_PERSIST, tick_cb, &s);
	if (!s.sig_int || !s.sig_term || !s.sig_hup || !s.stop_timer || !s.tick ||
	    event_add(s.sig_int, NULL) || event_add(s.sig_term, NULL) || event_add(s.sig_hup, NULL)) {
		kvp_err("cannot install signal handlers");
		goto out;
	}
	{
		/* WATCHDOG=1 at half the interval systemd asked for, STATUS= along with it */
		uint64_t usec = 0;
		struct timeval tv = { STATUS_SECONDS, 0 };
		if (sd_watchdog_enabled(0, &usec) > 0 && usec / 2 < (uint64_t)STATUS_SECONDS * 1000000) {
			tv.tv_sec = (time_t)(usec / 2 / 1000000);
			tv.tv_usec = (suseconds_t)(usec / 2 % 1000000);
		}
		event_add(s.tick, &tv);
	}
	kvp_info("kvprefixd %s: %s, %u blocks of %u tokens, listening on %s%s", KVP_VERSION,
		 s.engine ? "engine" : "index-only", cc.capacity_blocks, cfg->block_tokens,
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
