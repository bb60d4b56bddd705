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
#include <mimalloc.h>

#include "kvp_cache.h"
#include "kvp_daemon.h"
#include "kvp_log.h"
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
	pid_t pid;
	struct kvp_key root;         /* namespace of this connection */
	char adapter[KVP_NAME_MAX + 1];
	struct conn *next, **pprev;  /* server's list */
};

struct server {
	const struct kvp_config *cfg;
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *sig_int, *sig_term;
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
	bool socket_bound;
	dev_t sock_dev;              /* the socket file we bound, so exit removes only it */
	ino_t sock_ino;
};

static void conn_close(struct conn *c, const char *why);

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
		.version = KVP_PROTO_VERSION, .type = type, .req_id = req_id, .len = (uint32_t)len,
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
	cJSON_AddStringToObject(o, "name", s->cfg->index_name);
	cJSON_AddNumberToObject(o, "block_tokens", s->cfg->block_tokens);
	cJSON_AddNumberToObject(o, "uptime_s", uptime_s(s));
	cJSON_AddNumberToObject(o, "requests", (double)(st.lookups + st.inserts));
	cJSON_AddNumberToObject(o, "lookups", (double)st.lookups);
	cJSON_AddNumberToObject(o, "lookup_hits", (double)st.lookup_hits);
	cJSON_AddNumberToObject(o, "request_hit_rate",
				st.lookups ? (double)st.lookup_hits / (double)st.lookups : 0.0);
	cJSON_AddNumberToObject(o, "inserts", (double)st.inserts);
	cJSON_AddNumberToObject(o, "query_tokens", (double)st.query_tokens);
	cJSON_AddNumberToObject(o, "hit_tokens", (double)st.hit_tokens);
	cJSON_AddNumberToObject(o, "hit_rate",
				st.query_tokens ? (double)st.hit_tokens / (double)st.query_tokens : 0.0);
	cJSON_AddNumberToObject(o, "insert_tokens", (double)st.insert_tokens);
	cJSON_AddNumberToObject(o, "inserted_blocks", (double)st.inserted_blocks);
	cJSON_AddNumberToObject(o, "insert_full", (double)st.insert_full);
	cJSON_AddNumberToObject(o, "evictions", (double)st.evictions);
	cJSON_AddNumberToObject(o, "blocks_total", st.pool.total);
	cJSON_AddNumberToObject(o, "blocks_free", st.pool.free);
	cJSON_AddNumberToObject(o, "blocks_cached", st.pool.cached);
	cJSON_AddNumberToObject(o, "blocks_pinned", st.pool.referenced);
	cJSON_AddNumberToObject(o, "tree_nodes", (double)st.tree_nodes);
	cJSON_AddNumberToObject(o, "leases_active", (double)st.leases_active);
	cJSON_AddNumberToObject(o, "connections", s->n_conns);
	cJSON_AddNumberToObject(o, "connections_total", (double)s->connections_total);
	cJSON_AddNumberToObject(o, "errors", (double)s->errors);
	txt = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return txt;
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
		send_error(c, h->req_id, KVP_EVERSION, "protocol version %u: this daemon speaks 1",
			   m.version);
		return KVP_EVERSION;
	}
	if (m.salt_len) {
		send_error(c, h->req_id, KVP_EPERM,
			   "cache salts are not enabled on this daemon; the tenant is uid %u",
			   (unsigned)c->uid);
		return KVP_OK;
	}
	memcpy(c->adapter, m.adapter, m.adapter_len);
	c->adapter[m.adapter_len] = '\0';
	if (memchr(c->adapter, '\0', m.adapter_len)) {
		send_error(c, h->req_id, KVP_EINVAL, "adapter id contains a NUL byte");
		c->adapter[0] = '\0';
		return KVP_OK;
	}
	c->root = kvp_ns_root(cfg->index_name, (uint32_t)c->uid, c->adapter);

	r = (struct kvp_hello_reply){
		.version = KVP_PROTO_VERSION,
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = cfg->capacity_blocks,
		.max_tokens = cfg->max_tokens,
		.flags = cfg->index_only ? KVP_HELLO_INDEX_ONLY : 0,
		.tenant = (uint32_t)c->uid,
		.name = cfg->index_name,
		.name_len = (uint16_t)strlen(cfg->index_name),
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
	bool insert = h->type == KVP_T_INSERT;
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
	kvp_load_u32s(s->tokens, m.tokens, m.n_tokens);
	if (insert)
		rc = kvp_cache_insert(s->cache, c->root, s->tokens, m.n_tokens, c->id,
				      m.flags & KVP_F_PIN, s->block_ids, &res);
	else
		rc = kvp_cache_lookup(s->cache, c->root, s->tokens, m.n_tokens, c->id,
				      m.flags & KVP_F_PIN, s->block_ids, &res);
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

static int dispatch(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	switch (h->type) {
	case KVP_T_HELLO: return handle_hello(c, h, p);
	case KVP_T_LOOKUP:
	case KVP_T_INSERT: return handle_tokens(c, h, p);
	case KVP_T_RELEASE: return handle_release(c, h, p);
	case KVP_T_STATS: return handle_stats(c, h);
	case KVP_T_PING:
		c->srv->pings++;
		return send_frame(c, KVP_T_PING | KVP_T_REPLY, h->req_id, p, h->len);
	}
	send_error(c, h->req_id, KVP_EPROTO, "frame type 0x%02x is not a request", h->type);
	return KVP_EPROTO;
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
			if (rc == KVP_ETOOBIG)
				send_error(c, h.req_id, rc, "frame of %u bytes: over the limit of %u",
					   h.len, s->cfg->max_frame_bytes);
			else
				send_error(c, rc == KVP_EPROTO ? 0 : h.req_id, rc,
					   "bad frame header: %s", kvp_strerror(rc));
			conn_fatal(c);
			return;
		}
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
		rc = dispatch(c, &h, p);
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
	else if (what & BEV_EVENT_TIMEOUT)
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
	c->pid = cred.pid;
	c->state = CONN_READING;
	c->root = kvp_ns_root(s->cfg->index_name, (uint32_t)c->uid, "");
	c->next = s->conns;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = &s->conns;
	s->conns = c;
	s->n_conns++;
	s->connections_total++;
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
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

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *s = arg;

	kvp_info("%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
	event_base_loopbreak(s->base);
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
	if (s->listener)
		evconnlistener_free(s->listener);
	if (s->sig_int)
		event_free(s->sig_int);
	if (s->sig_term)
		event_free(s->sig_term);
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
	srv_free(s->tokens);
	srv_free(s->block_ids);
	srv_free(s->reply);
}

int kvp_server_run(const struct kvp_config *cfg)
{
	struct server s = { .cfg = cfg };
	struct kvp_cache_config cc = {
		.block_tokens = cfg->block_tokens,
		.capacity_blocks = cfg->capacity_blocks,
		.max_tokens = cfg->max_tokens,
		.max_leases = cfg->max_leases,
	};
	size_t max_blocks = cfg->max_tokens / cfg->block_tokens + 1;
	evutil_socket_t fd;
	int rc, ret = 1;

	clock_gettime(CLOCK_MONOTONIC, &s.started);
	signal(SIGPIPE, SIG_IGN);
#ifndef KVP_SANITIZE_BUILD
	event_set_mem_functions(mi_malloc, mi_realloc, mi_free);
#endif

	rc = kvp_cache_create(&cc, &s.cache);
	if (rc) {
		kvp_err("cannot create the cache of %u blocks: %s", cfg->capacity_blocks,
			kvp_strerror(rc));
		return 1;
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
	if (listen_socket(&s, &fd) != 0)
		goto out;
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
	if (!s.sig_int || !s.sig_term || event_add(s.sig_int, NULL) || event_add(s.sig_term, NULL)) {
		kvp_err("cannot install signal handlers");
		goto out;
	}
	kvp_info("kvprefixd %s: index-only, %u blocks of %u tokens, listening on %s",
		 KVP_VERSION, cfg->capacity_blocks, cfg->block_tokens, cfg->socket_path);
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
