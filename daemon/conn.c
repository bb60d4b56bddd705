/*
 * conn.c - client connections: accept, the state of each, the read loop that cuts
 * frames out of the byte stream, and closing at a safe point.
 *
 *   accept ──▶ conn READING ──frame──▶ dispatch_frame ──▶ reply (reply.c)
 *                 │   ▲                  │ malformed / over limit
 *                 │   └──────────────────┘ ERROR, then ─▶ CLOSING (flush, 5 s max)
 *                 └── EOF / error ─────────────────────▶ CLOSED: leases released at
 *                                                        once, memory freed later from
 *                                                        the loop, never in its own cb
 *
 * Bounds: a header's payload length is checked against --max-frame-bytes before the
 * connection's read buffer grows for it (a read only fills the room it already has);
 * the buffer's size is bounded as "reading" below says; at most FRAMES_PER_WAKEUP
 * frames run per read callback (the rest are picked up by a deferred trigger) so one
 * busy client cannot starve the others; reading pauses while a connection's unsent
 * output is over OUTPUT_HIGH_WATER.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "kvp_log.h"
#include "server.h"

#ifdef KVP_SANITIZE_BUILD
#include <malloc.h>
#endif

#define FRAMES_PER_WAKEUP 64
#define OUTPUT_HIGH_WATER (16u << 20)
#define CLOSE_FLUSH_SECONDS 5

static const char *const conn_state_names[] = { "reading", "closing", "closed" };

static void conn_set_state(struct conn *c, enum conn_state s)
{
	if (c->state == s)
		return;
	kvp_debug("conn %llu: %s -> %s", (unsigned long long)c->id,
		  conn_state_names[c->state], conn_state_names[s]);
	c->state = s;
}

/* ---- closing ----------------------------------------------------------------- */

/* Stop watching the socket for reading (the idle timeout stops with it). */
static void read_stop(struct conn *c)
{
	if (c->reading) {
		event_del(c->rev);
		c->reading = false;
	}
}

static void conn_free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	bufferevent_free(c->bev);
	reply_free(c);
	srv_free(c->rbuf);
	srv_free(c);
}

void conn_close(struct conn *c, const char *why)
{
	struct server *s = c->srv;
	size_t n;

	struct uid_entry *u;

	if (c->state == CONN_CLOSED)
		return;
	conn_set_state(c, CONN_CLOSED);
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	reply_discard(c);   /* dropped with the connection, as its queued output is */
	n = kvp_cache_release_owner(s->cache, c->id);
	generate_detach(c);
	u = uid_table_find(&s->uids, c->uid);
	if (u) {
		u->conns--;
		u->leased -= c->leased;
		uid_table_release(&s->uids, u);
	}
	c->leased = 0;
	if (c->out_cb) {
		/* what is still queued is dropped with the connection */
		s->out_bytes -= evbuffer_get_length(bufferevent_get_output(c->bev));
		evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
		c->out_cb = NULL;
	}
	if (c->frame_timer) {
		event_free(c->frame_timer);
		c->frame_timer = NULL;
	}
	if (c->rev) {
		/* the read buffer stays until the free: a frame may be running from it */
		event_free(c->rev);
		c->rev = NULL;
		c->reading = false;
	}
	kvp_debug("conn %llu (uid %u): closed (%s); %zu leases released",
		  (unsigned long long)c->id, (unsigned)c->uid, why, n);
	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	s->n_conns--;
	if (event_base_once(s->base, -1, EV_TIMEOUT, conn_free_cb, c, NULL) != 0) {
		/* cannot defer: freeing here is still safe with libevent's deferred cbs off,
		 * but for a read callback's uncork, which frees it instead */
		if (c->corked)
			c->free_pending = true;
		else
			conn_free_cb(-1, 0, c);
	}
}

void conn_finish(struct conn *c, const char *why)
{
	struct timeval tv = { CLOSE_FLUSH_SECONDS, 0 };

	conn_set_state(c, CONN_CLOSING);
	read_stop(c);
	if (reply_flush(c) != KVP_OK) {
		conn_close(c, "out of memory");
		return;
	}
	bufferevent_set_timeouts(c->bev, NULL, &tv);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_close(c, why);
}

/* ---- reading ------------------------------------------------------------------ */

/*
 * Each connection reads its socket itself, into a buffer it owns and reuses, and each
 * whole frame runs where it lies: its payload is never copied. The bufferevent only
 * writes (and runs conn_run_cb, the deferred turn).
 *
 *   rbuf 0            rpos                              rlen               rcap
 *        | run already | frames not run yet, the last    | free: the next    |
 *        |             | maybe part-read (rneed: its size)| read lands here   |
 *
 * A read asks for the rest of the part-read frame and the header behind it, or for
 * RBUF_AHEAD bytes where that is less (small frames come by the dozen): in a stream
 * of large frames each read ends on the next frame's header, one read a frame, and
 * what a read brings of a frame it does not finish is RBUF_AHEAD bytes at most.
 *   - empty (rpos == rlen): both go back to 0
 *   - the part-read frame moves to the front when it is RBUF_MOVE bytes or less, or
 *     when it would run past rcap: RBUF_AHEAD bytes moved at most
 *   - a frame up to RBUF_KEEP: the buffer doubles at once until it holds the frame
 *     and RBUF_AHEAD more (RBUF_KEEP at most); a larger frame: the buffer goes to
 *     RBUF_KEEP, then doubles each time it is full of the frame, up to the frame's
 *     size (so never more than twice the bytes received)
 *   - larger than RBUF_KEEP, it goes back to RBUF_KEEP once a frame that fits
 *     RBUF_KEEP has run or the socket is drained, and what is left fits
 *
 * Memory, each connection: nothing until its first byte, then RBUF_MIN, doubling up
 * to RBUF_KEEP as its frames need, and kept. A larger frame (--max-frame-bytes at
 * most) takes the larger of RBUF_KEEP and twice its bytes received, never more than
 * its own size, and is given back after it as above. So between frames connections
 * hold --max-connections x RBUF_KEEP at most (256 MiB at the default 1,024).
 */
#define RBUF_MIN (64u << 10)
#define RBUF_KEEP (256u << 10)
#define RBUF_AHEAD (16u << 10)
#define RBUF_MOVE (4u << 10)

/* Move the unread bytes to the front of a new buffer of cap bytes (cap >= them).
 * 0, or KVP_ENOMEM with the buffer as it was. */
static int rbuf_resize(struct conn *c, size_t cap)
{
	const size_t have = c->rlen - c->rpos;
	uint8_t *b = srv_malloc(cap);

	if (!b)
		return KVP_ENOMEM;
	if (have)
		memcpy(b, c->rbuf + c->rpos, have);
	srv_free(c->rbuf);
	c->rbuf = b;
	c->rcap = cap;
	c->rpos = 0;
	c->rlen = have;
	return KVP_OK;
}

/* Make room behind what is buffered for the next read (the rules above); *room: the
 * bytes to ask for, 0 when whole frames wait for a deferred turn. 0 or KVP_ENOMEM. */
static int rbuf_room(struct conn *c, size_t *room)
{
	const size_t need = c->rneed ? c->rneed : KVP_HDR_SIZE;
	const size_t have = c->rlen - c->rpos;
	size_t cap = c->rcap ? c->rcap : RBUF_MIN, ask;

	*room = 0;
	if (have == 0)
		c->rpos = c->rlen = 0;
	else if (have >= need)
		return KVP_OK;
	if (c->rpos && (have <= RBUF_MOVE || c->rpos + need > c->rcap)) {
		memmove(c->rbuf, c->rbuf + c->rpos, have);
		c->rpos = 0;
		c->rlen = have;
	}
	while (cap < need + RBUF_AHEAD && cap < RBUF_KEEP)
		cap *= 2;
	if (need > cap && c->rcap == cap && c->rlen == cap)
		cap = need < 2 * cap ? need : 2 * cap;   /* full of a frame over RBUF_KEEP */
	if (cap > c->rcap && rbuf_resize(c, cap) != KVP_OK)
		return KVP_ENOMEM;
	ask = need - have + KVP_HDR_SIZE;
	if (ask < RBUF_AHEAD)
		ask = RBUF_AHEAD;
	*room = c->rcap - c->rlen < ask ? c->rcap - c->rlen : ask;
	return KVP_OK;
}

/* Back to RBUF_KEEP after a larger frame, when what is left fits (a failure keeps the
 * larger buffer). */
static void rbuf_trim(struct conn *c)
{
	if (c->rcap > RBUF_KEEP && c->rlen - c->rpos <= RBUF_KEEP && c->rneed <= RBUF_KEEP)
		(void)rbuf_resize(c, RBUF_KEEP);
}

/* The header at rpos (at least KVP_HDR_SIZE bytes are there), decoded and checked. 0,
 * or the status of the ERROR sent (the connection must then close). */
static int read_header(struct conn *c, struct kvp_frame_hdr *h)
{
	const uint32_t max = c->srv->cfg->max_frame_bytes;
	int rc;

	rc = kvp_hdr_decode(c->rbuf + c->rpos, KVP_HDR_SIZE, max, h);
	/* nothing in a bad header is trusted: the ERROR speaks version 1 */
	if (rc == KVP_ETOOBIG)
		return send_error(c, KVP_PROTO_VERSION, h->req_id, rc,
				  "frame of %u bytes: over the limit of %u", h->len, max);
	if (rc)
		return send_error(c, KVP_PROTO_VERSION, rc == KVP_EPROTO ? 0 : h->req_id, rc,
				  "bad frame header: %s", kvp_strerror(rc));
	if (!kvp_frame_is_request(h->type))
		return send_error(c, h->version, h->req_id, KVP_EPROTO,
				  "frame type 0x%02x is not a request", h->type);
	return KVP_OK;
}

/* The part-read frame's header, where it came whole and sound; else a version 1
 * header with id 0 (what an ERROR about it carries). */
static struct kvp_frame_hdr front_header(const struct conn *c)
{
	struct kvp_frame_hdr h = { .version = KVP_PROTO_VERSION };

	if (c->rlen - c->rpos >= KVP_HDR_SIZE &&
	    kvp_hdr_decode(c->rbuf + c->rpos, KVP_HDR_SIZE, UINT32_MAX, &h) != KVP_OK)
		h = (struct kvp_frame_hdr){ .version = KVP_PROTO_VERSION };
	return h;
}

/* Run one complete frame, its payload p in the read buffer; false when the
 * connection must close. */
static bool run_frame(struct conn *c, const struct kvp_frame_hdr *h, const uint8_t *p)
{
	struct req_outcome o;

	o = dispatch_frame(c, h, h->len ? p : NULL);
	if (!o.later)
		kvp_stats_request(&c->srv->stats, h->type, o.status);
	return !o.close;
}

/* No frame is part-read: stop timing (a flag spares the event base's lock per frame). */
static void frame_timer_stop(struct conn *c)
{
	if (c->frame_timing) {
		evtimer_del(c->frame_timer);
		c->frame_timing = false;
	}
}

/* The frame at rpos is not whole yet: it has --frame-timeout from its first byte (the
 * timer runs from the first call that sees it part-read). */
static void frame_timer_arm(struct conn *c)
{
	struct timeval tv = { (time_t)c->srv->cfg->frame_timeout_s, 0 };

	if (c->rlen == c->rpos) {
		frame_timer_stop(c);
		return;
	}
	if (!c->frame_timing && evtimer_add(c->frame_timer, &tv) == 0)
		c->frame_timing = true;
}

/* A frame took longer than --frame-timeout to arrive: a client this slow holds a
 * connection and a partly read frame; tell it and close. */
static void frame_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct kvp_frame_hdr h;

	c->frame_timing = false;
	if (c->state != CONN_READING)
		return;
	/* the request's id where its header came whole and sound; 0 otherwise */
	h = front_header(c);
	kvp_warn_limited(&c->srv->log_frame_timeout,
			 "conn %llu (uid %u): a frame took over %u s to arrive (%zu bytes of it); "
			 "closing", (unsigned long long)c->id, (unsigned)c->uid,
			 c->srv->cfg->frame_timeout_s, c->rlen - c->rpos);
	send_error(c, h.version, h.req_id, KVP_ETIMEDOUT,
		   "a frame must arrive whole within %u s of its first byte (--frame-timeout)",
		   c->srv->cfg->frame_timeout_s);
	conn_finish(c, "frame timeout");
}

/* Watch the socket for reading, with the live idle timeout. */
static void read_start(struct conn *c)
{
	const uint32_t idle_s = c->srv->cfg->idle_timeout_s;
	struct timeval idle = { (time_t)idle_s, 0 };

	if (!c->reading && c->rev && event_add(c->rev, idle_s ? &idle : NULL) == 0)
		c->reading = true;
}

/*
 * Run the whole frames buffered, in order, budget at most (the rest in a deferred
 * turn, so that one busy client cannot starve the others); then close after a
 * half-close, time a part-read frame, and stop reading while the replies are not
 * read. The frames run.
 */
static int conn_run(struct conn *c, int budget)
{
	int frames = 0;
	bool more = false, fits = false;

	while (c->state == CONN_READING) {
		struct kvp_frame_hdr h;
		const uint8_t *f;
		size_t size;

		if (c->rlen - c->rpos < KVP_HDR_SIZE)
			break;
		if (frames == budget) {
			/* fairness: let other connections run, continue on the next turn */
			bufferevent_trigger(c->bev, EV_READ,
					    BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
			more = true;
			break;
		}
		if (read_header(c, &h) != KVP_OK) {
			conn_finish(c, "protocol error");
			return frames;
		}
		size = KVP_HDR_SIZE + (size_t)h.len;
		if (c->rlen - c->rpos < size) {
			c->rneed = size;   /* rbuf_room makes room for all of it */
			break;
		}
		f = c->rbuf + c->rpos;   /* stays put until the next read */
		c->rneed = 0;
		c->rpos += size;
		fits |= size <= RBUF_KEEP;
		frame_timer_stop(c);   /* the next frame's time starts now */
		frames++;
		if (!run_frame(c, &h, f + KVP_HDR_SIZE)) {
			conn_finish(c, "protocol error");
			return frames;
		}
	}
	if (c->state != CONN_READING)
		return frames;
	if (c->rpos == c->rlen)
		c->rpos = c->rlen = 0;
	if (c->peer_eof && !more) {
		/* half-closed peer: every complete frame is answered, and every generation it
		 * started runs to its end (generate.c finishes the connection after the last
		 * one); then flush and close */
		if (c->n_reqs == 0)
			conn_finish(c, "peer closed");
		return frames;
	}
	if (!more)
		frame_timer_arm(c);
	if (fits)
		rbuf_trim(c);
	if (!c->peer_eof && evbuffer_get_length(bufferevent_get_output(c->bev)) > OUTPUT_HIGH_WATER) {
		/* the client is not reading its replies: stop reading its requests, and stop
		 * timing the frame it sends meanwhile (the wait is ours) */
		read_stop(c);
		frame_timer_stop(c);
	}
	return frames;
}

/* The end of a callback that ran frames with their replies gathered (reply_cork):
 * write them. c is freed here instead where it closed meanwhile and conn_close could
 * not defer that. */
static void run_done(struct conn *c)
{
	if (c->free_pending) {
		conn_free_cb(-1, 0, c);
		return;
	}
	if (c->state == CONN_CLOSED) {
		c->corked = false;
		return;
	}
	if (reply_uncork(c) != KVP_OK)
		conn_close(c, "out of memory");
}

/* The deferred turn: frames left over from the last one, or reading enabled again. */
static void conn_run_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	reply_cork(c);
	(void)conn_run(c, FRAMES_PER_WAKEUP);
	run_done(c);
}

/* Read into the buffer and run the frames that completed; go on while each read got
 * all it asked for (more is likely waiting), up to FRAMES_PER_WAKEUP frames. */
static void read_and_run(struct conn *c, evutil_socket_t fd)
{
	int ran = 0;

	while (c->state == CONN_READING && c->reading) {
		size_t room;
		ssize_t r;

		if (rbuf_room(c, &room) != KVP_OK) {
			struct kvp_frame_hdr h = front_header(c);

			send_error(c, h.version, h.req_id, KVP_ENOMEM, "out of memory reading a frame");
			conn_finish(c, "out of memory");
			return;
		}
		if (room == 0) {   /* whole frames wait: run them, read next time */
			(void)conn_run(c, FRAMES_PER_WAKEUP - ran);
			return;
		}
		do
			r = read(fd, c->rbuf + c->rlen, room);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			/* a shutdown(SHUT_WR) still expects its replies: answer the frames
			 * already buffered, then finish */
			read_stop(c);
			c->peer_eof = true;
		} else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			conn_close(c, strerror(errno));
			return;
		}
		if (r > 0)
			c->rlen += (size_t)r;
		ran += conn_run(c, FRAMES_PER_WAKEUP - ran);
		if (r < (ssize_t)room) {   /* the socket is drained */
			if (c->state == CONN_READING)
				rbuf_trim(c);
			return;
		}
		if (ran >= FRAMES_PER_WAKEUP)
			return;
	}
}

/* The socket is readable: read and run what came, the replies written together when
 * done. Or nothing came for --idle-timeout. */
static void conn_readable_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	if (!(what & EV_READ)) {
		/* idle: nothing arrived for --idle-timeout; a running generation is not idle */
		if (c->n_reqs)
			return;
		kvp_debug("conn %llu: idle for %u s", (unsigned long long)c->id,
			  c->srv->cfg->idle_timeout_s);
		conn_close(c, "idle timeout");
		return;
	}
	reply_cork(c);
	read_and_run(c, fd);
	run_done(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	/* called when the output has drained */
	if (c->state == CONN_CLOSING) {
		conn_close(c, "flushed");
	} else if (c->state == CONN_READING && !c->peer_eof && !c->reading) {
		read_start(c);
		bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
	}
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	/* the bufferevent only writes: these are the write side's */
	if ((what & BEV_EVENT_EOF) && c->state == CONN_READING) {
		/* answer the frames already buffered (conn_run finishes the connection once
		 * they are done) */
		read_stop(c);
		c->peer_eof = true;
		reply_cork(c);
		(void)conn_run(c, FRAMES_PER_WAKEUP);
		run_done(c);
	} else if (what & BEV_EVENT_EOF)
		conn_close(c, "peer closed");
	else if (what & BEV_EVENT_TIMEOUT)
		conn_close(c, "flush timed out");
	else if (what & BEV_EVENT_ERROR)
		conn_close(c, strerror(EVUTIL_SOCKET_ERROR()));
}

void conn_apply_idle_timeout(struct server *s)
{
	const uint32_t idle_s = s->cfg->idle_timeout_s;
	struct timeval idle = { (time_t)idle_s, 0 };

	/* a connection not reading now takes the timeout when it reads again */
	for (struct conn *c = s->conns; c; c = c->next) {
		if (c->state != CONN_READING || !c->reading)
			continue;
		if (idle_s)
			(void)event_add(c->rev, &idle);
		else
			(void)event_remove_timer(c->rev);
	}
}

void conn_flush_all(struct server *s)
{
	for (struct conn *c = s->conns; c; c = c->next) {
		struct evbuffer *out = bufferevent_get_output(c->bev);

		if (c->state == CONN_CLOSED)
			continue;
		(void)reply_flush(c);
		if (evbuffer_get_length(out))
			(void)evbuffer_write(out, bufferevent_getfd(c->bev));
	}
}

/* ---- accepting ---------------------------------------------------------------- */

/* Answer a connection we will not serve with one ERROR frame, and close it. */
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

uint32_t conn_uid_limit(const struct kvp_config *cfg)
{
	uint32_t q = cfg->max_connections / 4;

	if (cfg->max_conns_per_uid)
		return cfg->max_conns_per_uid;
	return q ? q : 1;
}

void server_trim(void)
{
#ifdef KVP_SANITIZE_BUILD
	(void)malloc_trim(0);
#else
	mi_collect(true);
#endif
}

/* The server's out_bytes follows every connection's output buffer. */
static void out_bytes_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct server *s = arg;

	s->out_bytes += info->n_added;
	s->out_bytes -= info->n_deleted;
	if (s->out_bytes > ((uint64_t)s->cfg->max_output_mb << 20) &&
	    !event_pending(s->shed, EV_READ, NULL))
		event_active(s->shed, EV_READ, 0);   /* not here: a reply is being written */
}

void conn_shed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	const uint64_t budget = (uint64_t)s->cfg->max_output_mb << 20;
	bool closed = false;

	while (s->out_bytes > budget) {
		struct conn *worst = NULL;
		size_t most = 0;

		for (struct conn *c = s->conns; c; c = c->next) {
			size_t n = evbuffer_get_length(bufferevent_get_output(c->bev));
			if (n > most) {
				most = n;
				worst = c;
			}
		}
		if (!worst)
			break;
		kvp_warn_limited(&s->log_shed,
				 "conn %llu (uid %u): closed with %.1f MiB of replies it does not read; "
				 "all connections together hold %.1f MiB (--max-output-mb %u)",
				 (unsigned long long)worst->id, (unsigned)worst->uid,
				 (double)most / 1048576.0, (double)s->out_bytes / 1048576.0,
				 s->cfg->max_output_mb);
		conn_close(worst, "output budget");
		closed = true;
	}
	if (closed)
		server_trim();
}

/* Is uid at its connection limit? Then say so (rate-limited) and refuse fd. */
static bool uid_refused(struct server *s, evutil_socket_t fd, uid_t uid)
{
	const uint32_t limit = conn_uid_limit(s->cfg);
	const struct uid_entry *u = uid_table_find(&s->uids, uid);

	if (!u || u->conns < limit)
		return false;
	kvp_warn_limited(&s->log_refused, "refusing a connection of uid %u: it has %u open "
			 "(--max-connections-per-uid %u)", (unsigned)uid, u->conns, limit);
	refuse(fd, KVP_EBUSY, "too many connections from this uid");
	return true;
}

/* A new connection in READING, its tenant its peer uid, on the server's list. */
static void conn_register(struct server *s, struct conn *c, const struct ucred *cred)
{
	c->srv = s;
	c->id = ++s->next_conn_id;
	c->uid = cred->uid;
	c->gid = cred->gid;
	c->pid = cred->pid;
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
	s->stats.t.connections_total++;
}

/* Free what conn_open made, leaving fd open (the caller refuses it). */
static void conn_unopen(struct conn *c)
{
	if (c->out_cb)
		evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
	if (c->frame_timer)
		event_free(c->frame_timer);
	if (c->rev)
		event_free(c->rev);
	if (c->bev) {
		bufferevent_setfd(c->bev, -1);
		bufferevent_free(c->bev);
	}
	srv_free(c);
}

/* A connection on fd, with its bufferevent, read event and timers, counted against its
 * uid; NULL when out of memory (fd still open). */
static struct conn *conn_open(struct server *s, evutil_socket_t fd, uid_t uid)
{
	struct conn *c = srv_zalloc(sizeof(*c));
	struct uid_entry *u;

	if (!c)
		return NULL;
	c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->frame_timer = c->bev ? evtimer_new(s->base, frame_timeout_cb, c) : NULL;
	c->rev = c->frame_timer ? event_new(s->base, fd, EV_READ | EV_PERSIST, conn_readable_cb, c)
				: NULL;
	c->out_cb = c->rev ? evbuffer_add_cb(bufferevent_get_output(c->bev),
						     out_bytes_cb, s) : NULL;
	u = c->out_cb ? uid_table_get(&s->uids, uid) : NULL;
	if (!u) {
		conn_unopen(c);
		return NULL;
	}
	u->conns++;
	return c;
}

void conn_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		    int salen, void *arg)
{
	struct server *s = arg;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct conn *c;

	if (s->stopping) {
		refuse(fd, KVP_ESHUTDOWN, "kvprefixd is shutting down");
		return;
	}
	if (s->n_conns >= s->cfg->max_connections) {
		kvp_warn_limited(&s->log_refused, "refusing a connection: %u connections open "
				 "(--max-connections)", s->n_conns);
		refuse(fd, KVP_EBUSY, "too many connections");
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) {
		kvp_warn_limited(&s->log_refused, "refusing a connection: SO_PEERCRED: %s",
				 strerror(errno));
		evutil_closesocket(fd);
		return;
	}
	if (uid_refused(s, fd, cred.uid))
		return;
	c = conn_open(s, fd, cred.uid);
	if (!c) {
		refuse(fd, KVP_ENOMEM, "out of memory");
		return;
	}
	conn_register(s, c, &cred);
	bufferevent_setcb(c->bev, conn_run_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_WRITE);   /* reading is conn_readable_cb's */
	read_start(c);
	if (!c->reading) {
		conn_close(c, "cannot watch the socket");
		return;
	}
	kvp_debug("conn %llu: accepted (uid %u, pid %d)", (unsigned long long)c->id,
		  (unsigned)c->uid, (int)c->pid);
}

void conn_accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	evconnlistener_enable(s->listener);
}

void conn_accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct server *s = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, 100 * 1000 };

	/*
	 * EMFILE and friends leave the connection in the backlog, so the listening socket
	 * stays readable: keep listening and this callback spins the loop at 100% CPU.
	 * Pause accepting for 100 ms instead (closing connections free descriptors).
	 */
	kvp_warn_limited(&s->log_refused, "accept: %s; pausing accept for 100 ms",
			 evutil_socket_error_to_string(err));
	evconnlistener_disable(l);
	if (event_add(s->accept_pause, &tv) != 0)
		evconnlistener_enable(l);
}
