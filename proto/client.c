/*
 * client.c - libkvprefix, the reference client of kvprefixd (contract: kvprefix.h).
 *
 * One call = one request frame out (a single sendmsg) and one reply frame in (GENERATE:
 * token frames, each handed to the caller's callback as it arrives, then DONE). The
 * reply lands in a buffer the client owns and keeps until the next call, so that
 * block ids can be handed out in place:
 *
 *   buf  0        16                40
 *        | header | fixed reply fields | block ids ... |  next frame bytes, if any |
 *        |<------------------ frame ----------------->|<-------- kept ---------->|
 *        ^ a frame always starts at buf[0]: the next call drops `frame` bytes first
 *
 * Syscalls on the fast path (no timeout): sendmsg + recv, usually one of each. With a
 * timeout, a poll() precedes each recv; the send side gets SO_SNDTIMEO once, when the
 * timeout is set.
 *
 * A call that times out after its request went out leaves that reply owed: its id goes
 * into a small set, and later calls read and drop every frame carrying an owed id (a
 * GENERATE's token frames too) until that request's final frame, so KVP_ETIMEDOUT
 * leaves the client usable. Frames are matched by req_id, not by order, because the
 * daemon may answer a request sent after a GENERATE before that GENERATE is done.
 * A request only partly sent cannot be taken back: the client is then unusable
 * (later calls: KVP_EIO). So is one that has CLIENT_OWED_MAX requests owed at once.
 * When the daemon hangs up mid-send (a frame over its limit), an ERROR it queued
 * before closing is still read and returned; later calls return KVP_ECLOSED.
 *
 * Versions: every request goes in a version-1 header but ADMIN, which needs version 2.
 * HELLO offers version 3 (whose reply carries the model's vocabulary and context); the
 * daemon's answer is remembered, so that ADMIN to a daemon known to speak only 1 fails
 * before it is sent. A reply must carry its request's version; an ERROR may carry
 * another (a version-1 daemon answers a version-2 header with ERROR EVERSION in a
 * version-1 header).
 *
 * GENERATE's request and answer are in client_generate.c; the struct and the frame I/O
 * both files use are declared in client_internal.h.
 */
#include "kvprefix.h"
#include "kvp_proto.h"
#include "kvp_sockpath.h"
#include "client_internal.h"
#include "dump_internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KVP_HOST_LE 1
#else
#define KVP_HOST_LE 0
#endif

#define CLIENT_MAX_REPLY (256u << 20)        /* payload bytes accepted in one reply */
#define CLIENT_BUF_INIT (16u << 10)          /* receive buffer at connect */
#define CLIENT_BUF_KEEP (4u << 20)           /* shrink back to INIT above this, when idle */
/* what a u32 payload length holds: the tokens of an INSERT with KEEP */
#define CLIENT_MAX_TOKENS ((UINT32_MAX - 8u - KVP_KEEP_SIZE) / 4u)
#define CLIENT_MAX_ADMIN_TOKENS ((UINT32_MAX - 18u - KVP_ADMIN_TEXT_MAX) / 4u)

static inline void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* ---- buffer ------------------------------------------------------------------------ */

static int buf_reserve(struct kvp_client *c, size_t need)
{
	size_t ncap = c->cap;
	uint8_t *nb;

	if (need <= c->cap)
		return 0;
	while (ncap < need)
		ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
	nb = realloc(c->buf, ncap);
	if (!nb)
		return KVP_ENOMEM;
	c->buf = nb;
	c->cap = ncap;
	return 0;
}

/* Drop the frame the previous call returned, keeping any bytes received after it. */
static void buf_consume(struct kvp_client *c)
{
	if (c->frame) {
		c->have -= c->frame;
		if (c->have)
			memmove(c->buf, c->buf + c->frame, c->have);
		c->frame = 0;
	}
	if (c->cap > CLIENT_BUF_KEEP && c->have <= CLIENT_BUF_INIT) {
		uint8_t *nb = realloc(c->buf, CLIENT_BUF_INIT);

		if (nb) {
			c->buf = nb;
			c->cap = CLIENT_BUF_INIT;
		}
	}
}

/* ---- time ---------------------------------------------------------------------------- */

int64_t kvp_cl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- I/O ------------------------------------------------------------------------------- */

static int fail(struct kvp_client *c, int status)
{
	c->fatal = status;
	return status;
}

int kvp_cl_broken(struct kvp_client *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
	return fail(c, KVP_EPROTO);
}

/* Send every byte of iov. On failure nothing is retried: a partial frame on the wire
 * makes the client unusable. */
static int send_all(struct kvp_client *c, struct iovec *iov, int iovcnt, size_t total)
{
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
	size_t sent = 0;

	for (;;) {
		ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);

		if (n < 0) {
			int e = errno;

			if (e == EINTR)
				continue;
			if (e == EAGAIN || e == EWOULDBLOCK) {
				if (sent == 0)
					return KVP_ETIMEDOUT;
				c->fatal = KVP_EIO;
				errno = ETIMEDOUT;
				return KVP_ETIMEDOUT;
			}
			if (e == EPIPE || e == ECONNRESET)
				return fail(c, KVP_ECLOSED);
			return fail(c, KVP_EIO);
		}
		sent += (size_t)n;
		if (sent == total)
			return 0;
		while ((size_t)n >= msg.msg_iov->iov_len) {
			n -= (ssize_t)msg.msg_iov->iov_len;
			msg.msg_iov++;
			msg.msg_iovlen--;
		}
		msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + n;
		msg.msg_iov->iov_len -= (size_t)n;
	}
}

/* Receive more bytes into the buffer (c->have < c->cap). */
static int fill(struct kvp_client *c, int64_t deadline)
{
	for (;;) {
		ssize_t n;

		if (c->timeout_ms) {
			struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
			int64_t left = deadline - kvp_cl_now_ms();
			int r;

			if (left <= 0)
				return KVP_ETIMEDOUT;
			r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				return fail(c, KVP_EIO);
			}
			if (r == 0)
				return KVP_ETIMEDOUT;
		}
		n = recv(c->fd, c->buf + c->have, c->cap - c->have, 0);
		if (n > 0) {
			c->have += (size_t)n;
			return 0;
		}
		if (n == 0)
			return fail(c, KVP_ECLOSED);
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			continue;
		if (errno == ECONNRESET)
			return fail(c, KVP_ECLOSED);
		return fail(c, KVP_EIO);
	}
}

/* Make buf[0 .. KVP_HDR_SIZE + h->len) one whole frame. */
static int read_frame(struct kvp_client *c, int64_t deadline, struct kvp_frame_hdr *h)
{
	size_t need;
	int rc;

	while (c->have < KVP_HDR_SIZE)
		if ((rc = fill(c, deadline)) < 0)
			return rc;
	if (kvp_hdr_decode(c->buf, c->have, CLIENT_MAX_REPLY, h) < 0)
		return fail(c, KVP_EPROTO);
	need = KVP_HDR_SIZE + (size_t)h->len;
	if ((rc = buf_reserve(c, need)) < 0)
		return fail(c, rc);
	while (c->have < need)
		if ((rc = fill(c, deadline)) < 0)
			return rc;
	return 0;
}

/* The frame that ends a request: a reply, DONE or ERROR; not a GENERATE token frame. */
static bool is_final_type(uint8_t type)
{
	if (type == KVP_T_ERROR || type == KVP_T_GENERATE_DONE)
		return true;
	return (type & KVP_T_REPLY) && type != (KVP_T_GENERATE | KVP_T_REPLY) &&
	       kvp_frame_is_request((uint8_t)(type & ~KVP_T_REPLY));
}

static bool is_reply_type(uint8_t type)
{
	return is_final_type(type) || type == (KVP_T_GENERATE | KVP_T_REPLY);
}

/* Remember that request id timed out: its frames are to be dropped. With the set full
 * the client gives up (the daemon has not answered CLIENT_OWED_MAX requests). */
void kvp_cl_owe(struct kvp_client *c, uint32_t id)
{
	if (c->fatal)
		return;
	if (c->n_owed == CLIENT_OWED_MAX) {
		c->fatal = KVP_EIO;
		return;
	}
	c->owed[c->n_owed++] = id;
}

/* Keep an ERROR frame's message for kvp_client_error() and its code in *code (as a
 * status, -code). 0, or KVP_EPROTO when it does not decode. */
static int keep_error(struct kvp_client *c, const uint8_t *p, size_t n, int *code)
{
	struct kvp_error e;

	if (kvp_error_decode(p, n, &e) < 0)
		return KVP_EPROTO;
	memcpy(c->err, e.msg, e.msg_len);
	c->err[e.msg_len] = '\0';
	*code = -(int)e.code;
	return 0;
}

/* An ERROR answering our request: its code. */
int kvp_cl_take_error(struct kvp_client *c, const uint8_t *p, size_t n)
{
	int code;

	if (keep_error(c, p, n, &code) < 0)
		return kvp_cl_broken(c, "an ERROR frame that does not decode");
	return code;
}

/*
 * An ERROR with req_id 0 that answers no request of ours: the daemon refused the
 * connection as a whole (its connection limit, a stop in progress) and closes it. Its
 * code is returned, its text kept; later calls return KVP_ECLOSED.
 */
static int take_refusal(struct kvp_client *c, const uint8_t *p, size_t n)
{
	int code;

	if (keep_error(c, p, n, &code) < 0)
		return kvp_cl_broken(c, "an ERROR frame that does not decode");
	c->refused = true;
	c->fatal = KVP_ECLOSED;
	return code;
}

/*
 * The daemon closed while we were still sending: it may have said why first (a frame
 * over its limit gets ERROR 4 as soon as its header is read; a refused connection its
 * unprompted ERROR). Take whatever is already queued, without waiting, and return that
 * ERROR's code if a whole one is there.
 */
static int salvage_error(struct kvp_client *c, uint32_t id)
{
	struct kvp_frame_hdr h;

	for (;;) {
		ssize_t n;

		if (c->have >= KVP_HDR_SIZE &&
		    kvp_hdr_decode(c->buf, c->have, (uint32_t)kvp_error_size(KVP_ERROR_MSG_MAX), &h) == 0 &&
		    c->have >= KVP_HDR_SIZE + (size_t)h.len) {
			if (h.type != KVP_T_ERROR || (h.req_id != id && h.req_id != 0))
				return KVP_ECLOSED;
			c->frame = KVP_HDR_SIZE + (size_t)h.len;
			if (c->trace)
				kvp_frame_dump(stderr, false, &(struct iovec){ c->buf, c->frame }, 1);
			if (h.req_id == 0)
				return take_refusal(c, c->buf + KVP_HDR_SIZE, h.len);
			return kvp_cl_take_error(c, c->buf + KVP_HDR_SIZE, h.len);
		}
		if (c->have == c->cap)
			return KVP_ECLOSED;
		n = recv(c->fd, c->buf + c->have, c->cap - c->have, MSG_DONTWAIT);
		if (n > 0)
			c->have += (size_t)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else
			return KVP_ECLOSED;
	}
}

/*
 * Send one request in a header of this version: iov[0] begins with KVP_HDR_SIZE bytes
 * this function fills in. *id gets the request's id. On failure nothing went out
 * unless c->fatal is set.
 */
int kvp_cl_send(struct kvp_client *c, uint8_t version, uint8_t type, struct iovec *iov,
		int iovcnt, size_t payload_len, uint32_t *id)
{
	struct kvp_frame_hdr h = {
		.version = version,
		.type = type,
		.req_id = c->next_id,
		.len = (uint32_t)payload_len,
	};
	int rc;

	if (c->fatal)
		return c->fatal;
	buf_consume(c);
	kvp_hdr_encode(iov[0].iov_base, &h);
	if (c->trace)
		kvp_frame_dump(stderr, true, iov, iovcnt);
	if ((rc = send_all(c, iov, iovcnt, KVP_HDR_SIZE + payload_len)) < 0) {
		if (rc == KVP_ECLOSED && !c->n_owed)
			return salvage_error(c, h.req_id);
		return rc;
	}
	*id = c->next_id++;
	if (c->next_id == 0)
		c->next_id = 1;   /* req_id 0 is the daemon's for frames that answer none */
	return 0;
}

/*
 * Read the next frame of request id, sent in a header of this version, into buf[0 ..),
 * dropping the frames of owed requests on the way. On 0, h is its header (type not yet
 * checked against the request) and c->frame covers it. An ERROR with req_id 0 is the
 * daemon refusing the connection: its code. A frame of any other request, or a reply
 * other than ERROR in another version, is KVP_EPROTO. KVP_ETIMEDOUT: the caller decides
 * whether id is now owed.
 */
int kvp_cl_next_frame(struct kvp_client *c, uint32_t id, uint8_t version, int64_t deadline,
		      struct kvp_frame_hdr *h)
{
	int rc;

	for (;;) {
		uint32_t i;

		buf_consume(c);
		if ((rc = read_frame(c, deadline, h)) < 0)
			return rc;
		c->frame = KVP_HDR_SIZE + (size_t)h->len;
		if (c->trace)
			kvp_frame_dump(stderr, false, &(struct iovec){ c->buf, c->frame }, 1);
		if (h->req_id == id) {
			if (h->type != KVP_T_ERROR && h->version != version)
				return kvp_cl_broken(c, "a reply in a version-%u header to a "
						     "version-%u request", h->version, version);
			return 0;
		}
		if (h->req_id == 0 && h->type == KVP_T_ERROR)
			return take_refusal(c, c->buf + KVP_HDR_SIZE, h->len);
		/* A frame for an earlier request that timed out: drop it. */
		for (i = 0; i < c->n_owed && c->owed[i] != h->req_id; i++)
			;
		if (i == c->n_owed || !is_reply_type(h->type))
			return fail(c, KVP_EPROTO);
		if (is_final_type(h->type))
			c->owed[i] = c->owed[--c->n_owed];
	}
}

/*
 * Send one request in a header of this version and wait for its single reply frame; on
 * 0, *payload / *len describe the reply payload inside c->buf.
 */
static int roundtrip_v(struct kvp_client *c, uint8_t version, uint8_t type, struct iovec *iov,
		       int iovcnt, size_t payload_len, const uint8_t **payload, uint32_t *len)
{
	struct kvp_frame_hdr h;
	int64_t deadline = 0;
	uint32_t id;
	int rc;

	*payload = NULL;
	*len = 0;
	if (c->timeout_ms)
		deadline = kvp_cl_now_ms() + c->timeout_ms;
	if ((rc = kvp_cl_send(c, version, type, iov, iovcnt, payload_len, &id)) < 0)
		return rc;
	if ((rc = kvp_cl_next_frame(c, id, version, deadline, &h)) < 0) {
		if (rc == KVP_ETIMEDOUT)
			kvp_cl_owe(c, id);
		return rc;
	}
	if (h.type == KVP_T_ERROR)
		return kvp_cl_take_error(c, c->buf + KVP_HDR_SIZE, h.len);
	if (h.type != (type | KVP_T_REPLY))
		return fail(c, KVP_EPROTO);
	*payload = c->buf + KVP_HDR_SIZE;
	*len = h.len;
	return 0;
}

/* Every request but ADMIN: a version-1 header. */
static int roundtrip(struct kvp_client *c, uint8_t type, struct iovec *iov, int iovcnt,
		     size_t payload_len, const uint8_t **payload, uint32_t *len)
{
	return roundtrip_v(c, KVP_PROTO_VERSION, type, iov, iovcnt, payload_len, payload, len);
}

int kvp_cl_check(struct kvp_client *c)
{
	if (!c)
		return KVP_EINVAL;
	c->err[0] = '\0';
	return 0;
}

/* ---- public API ---------------------------------------------------------------------- */

KVP_API int kvp_client_default_socket(char *buf, size_t cap)
{
	return kvp_default_socket_path(buf, cap);
}

KVP_API int kvp_client_new(struct kvp_client **out)
{
	struct kvp_client *c;

	if (!out)
		return KVP_EINVAL;
	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return KVP_ENOMEM;
	c->buf = malloc(CLIENT_BUF_INIT);
	if (!c->buf) {
		free(c);
		return KVP_ENOMEM;
	}
	c->cap = CLIENT_BUF_INIT;
	c->next_id = 1;
	c->fd = -1;
	c->fatal = KVP_ECLOSED;   /* until kvp_client_open succeeds */
	c->trace = kvp_trace_frames_wanted();
	*out = c;
	return 0;
}

KVP_API int kvp_client_set_server_uid(struct kvp_client *c, uint32_t uid)
{
	if (!c || uid == UINT32_MAX)
		return KVP_EINVAL;
	c->server_uid = uid;
	c->server_uid_set = true;
	return 0;
}

/* Where to connect: path, or the default one, whose directory is checked first when it
 * is the shared-/tmp one. */
static int socket_address(struct kvp_client *c, const char *path, struct sockaddr_un *sa)
{
	char dir[sizeof(sa->sun_path)], why[512];
	int rc;

	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	if (path) {
		if (strlen(path) >= sizeof(sa->sun_path))
			return KVP_ETOOBIG;
		memcpy(sa->sun_path, path, strlen(path) + 1);
		return 0;
	}
	if ((rc = kvp_default_socket_path(sa->sun_path, sizeof(sa->sun_path))) < 0)
		return rc;
	if (kvp_default_socket_tmpdir(dir, sizeof(dir)) != 0)
		return 0;
	rc = kvp_socket_dir_check(dir, geteuid(), false, why, sizeof(why));
	if (rc == KVP_EPERM) {
		snprintf(c->err, sizeof(c->err),
			 "not connecting to %s: %s, so another user may be listening there for "
			 "your prompts; remove %s and restart kvprefixd (it makes the directory "
			 "anew), or set XDG_RUNTIME_DIR, or give the socket path", sa->sun_path,
			 why, dir);
		return rc;
	}
	return 0;   /* missing: connect says so; unreadable: connect will fail too */
}

/* Connect c->fd to sa, waiting out an interrupted connect. 0 or KVP_EIO (errno kept). */
static int connect_socket(struct kvp_client *c, const struct sockaddr_un *sa)
{
	struct pollfd pfd = { .events = POLLOUT };
	socklen_t elen;
	int e = 0;

	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return KVP_EIO;
	if (connect(c->fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
		return 0;
	if (errno != EINTR)
		return KVP_EIO;
	/* Interrupted: the connection goes on without us; wait for its outcome. */
	pfd.fd = c->fd;
	while (poll(&pfd, 1, -1) < 0)
		if (errno != EINTR)
			return KVP_EIO;
	elen = sizeof(e);
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
		return KVP_EIO;
	if (e != 0) {
		errno = e;
		return KVP_EIO;
	}
	return 0;
}

/* A uid in KVP_SERVER_UID: 0 with *set; KVP_EINVAL (message kept) when it is not one. */
static int env_server_uid(struct kvp_client *c, uint32_t *uid, bool *set)
{
	const char *v = getenv("KVP_SERVER_UID");
	unsigned long long u = 0;
	char *end = NULL;

	*set = false;
	if (!v || !*v)
		return 0;
	errno = 0;
	if (*v >= '0' && *v <= '9')
		u = strtoull(v, &end, 10);
	if (!end || *end || errno || u >= UINT32_MAX) {
		snprintf(c->err, sizeof(c->err), "KVP_SERVER_UID='%.64s' is not a uid (a decimal "
			 "number below %u)", v, UINT32_MAX);
		return KVP_EINVAL;
	}
	*uid = (uint32_t)u;
	*set = true;
	return 0;
}

/* True when the system user "kvprefix" (the packaged service's) exists and is uid. */
static bool is_service_user(uid_t uid)
{
	struct passwd pw, *res = NULL;
	char strings[4096];

	return getpwnam_r("kvprefix", &pw, strings, sizeof(strings), &res) == 0 && res &&
	       res->pw_uid == uid;
}

/*
 * Whom the socket's server runs as (SO_PEERCRED: the process that listens) must be one
 * we trust with prompts: root, ourselves, the kvprefix service user, KVP_SERVER_UID or
 * kvp_client_set_server_uid's. 0, KVP_EPERM or KVP_EINVAL with the reason kept.
 */
static int check_server(struct kvp_client *c, const char *path)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uint32_t env_uid;
	bool env_set;
	char name[256];
	int rc;

	/* a bad KVP_SERVER_UID is refused whoever serves: a mistake should not wait for an
	 * impostor to show */
	if ((rc = env_server_uid(c, &env_uid, &env_set)) < 0)
		return rc;
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return KVP_EIO;
	if (cred.uid == 0 || cred.uid == geteuid() || is_service_user(cred.uid) ||
	    (c->server_uid_set && cred.uid == c->server_uid) || (env_set && cred.uid == env_uid))
		return 0;
	kvp_uid_name(cred.uid, name, sizeof(name));
	snprintf(c->err, sizeof(c->err),
		 "kvprefixd at %s runs as uid %lu (%s), not root, you or the kvprefix user: "
		 "refusing to send it your prompts; set KVP_SERVER_UID=%lu or --server-uid %lu "
		 "if you trust it", path, (unsigned long)cred.uid, name[0] ? name : "no name",
		 (unsigned long)cred.uid, (unsigned long)cred.uid);
	return KVP_EPERM;
}

/* The send timeout, once there is a socket to set it on. */
static int apply_timeout(struct kvp_client *c)
{
	struct timeval tv = { .tv_sec = c->timeout_ms / 1000,
			      .tv_usec = (c->timeout_ms % 1000) * 1000 };

	if (c->fd >= 0 && setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return KVP_EIO;
	return 0;
}

KVP_API int kvp_client_open(struct kvp_client *c, const char *path)
{
	struct sockaddr_un sa;
	int rc, e;

	if (!c)
		return KVP_EINVAL;
	c->err[0] = '\0';
	if (c->fd >= 0)
		return KVP_EINVAL;
	if ((rc = socket_address(c, path, &sa)) < 0)
		return rc;
	rc = connect_socket(c, &sa);
	if (rc == 0)
		rc = check_server(c, sa.sun_path);
	if (rc == 0 && c->timeout_ms)
		rc = apply_timeout(c);
	if (rc < 0) {
		e = errno;
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		errno = e;
		return rc;
	}
	c->fatal = 0;
	return 0;
}

KVP_API int kvp_client_connect(const char *path, struct kvp_client **out)
{
	struct kvp_client *c;
	int rc, e;

	if (!out)
		return KVP_EINVAL;
	*out = NULL;
	if ((rc = kvp_client_new(&c)) < 0)
		return rc;
	if ((rc = kvp_client_open(c, path)) < 0) {
		e = errno;
		kvp_client_close(c);
		errno = e;
		return rc;
	}
	*out = c;
	return 0;
}

KVP_API void kvp_client_close(struct kvp_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->logits);
	free(c->scratch);
	free(c->names);
	free(c->buf);
	free(c);
}

KVP_API int kvp_client_set_timeout_ms(struct kvp_client *c, uint32_t ms)
{
	uint32_t old;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	old = c->timeout_ms;
	c->timeout_ms = ms;
	if ((rc = apply_timeout(c)) < 0)
		c->timeout_ms = old;
	return rc;
}

KVP_API int kvp_client_refused(const struct kvp_client *c)
{
	return c && c->refused;
}

KVP_API int kvp_client_fd(const struct kvp_client *c)
{
	if (!c)
		return KVP_EINVAL;
	if (c->fatal)
		return c->fatal;
	return c->n_owed || c->have > c->frame ? KVP_EBUSY : c->fd;
}

KVP_API int kvp_client_hello(struct kvp_client *c, const char *adapter, const char *salt,
			     struct kvp_server_info *info)
{
	uint8_t frame[KVP_HDR_SIZE + 12 + 2 * KVP_NAME_MAX];
	struct kvp_hello m = { .version = KVP_PROTO_VERSION_MAX };
	struct kvp_hello_reply r;
	struct iovec iov;
	const uint8_t *p;
	size_t alen, slen, n;
	uint32_t len;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	alen = adapter ? strnlen(adapter, KVP_NAME_MAX + 1) : 0;
	slen = salt ? strnlen(salt, KVP_NAME_MAX + 1) : 0;
	if (alen > KVP_NAME_MAX || slen > KVP_NAME_MAX)
		return KVP_ETOOBIG;
	m.adapter = adapter;
	m.adapter_len = (uint16_t)alen;
	m.salt = salt;
	m.salt_len = (uint16_t)slen;
	n = kvp_hello_encode(frame + KVP_HDR_SIZE, sizeof(frame) - KVP_HDR_SIZE, &m);
	iov = (struct iovec){ frame, KVP_HDR_SIZE + n };

	if ((rc = roundtrip(c, KVP_T_HELLO, &iov, 1, n, &p, &len)) < 0)
		return rc;
	if (kvp_hello_reply_decode(p, len, &r) < 0)
		return fail(c, KVP_EPROTO);
	/* The daemon answers with the highest version both speak, never above the offer. */
	if (r.version < KVP_PROTO_VERSION || r.version > KVP_PROTO_VERSION_MAX)
		return KVP_EVERSION;
	c->server_version = r.version;
	if (info) {
		info->version = r.version;
		info->block_tokens = r.block_tokens;
		info->capacity_blocks = r.capacity_blocks;
		info->max_tokens = r.max_tokens;
		info->index_only = (r.flags & KVP_HELLO_INDEX_ONLY) ? 1 : 0;
		info->tenant = r.tenant;
		memcpy(info->name, r.name, r.name_len);
		info->name[r.name_len] = '\0';
		info->vocab_size = r.vocab_size;
		info->ctx_tokens = r.ctx_tokens;
	}
	return 0;
}

/* Point iov at tokens as little-endian bytes: the caller's array itself on a
 * little-endian host, a converted copy in c->scratch elsewhere. */
int kvp_cl_tokens_iov(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      struct iovec *iov)
{
	size_t tbytes = n_tokens * 4;

#if KVP_HOST_LE
	iov->iov_base = (void *)tokens;
#else
	if (tbytes > c->scratch_cap) {
		uint8_t *s = realloc(c->scratch, tbytes);

		if (!s)
			return KVP_ENOMEM;
		c->scratch = s;
		c->scratch_cap = tbytes;
	}
	kvp_store_u32s(c->scratch, tokens, n_tokens);
	iov->iov_base = c->scratch;
#endif
	iov->iov_len = tbytes;
	return 0;
}

/* The token ids of a frame, in host order, in place: ids sits at a 4-byte aligned
 * offset of c->buf (malloc'd), and the bytes are ours until the next call. */
const uint32_t *kvp_cl_host_ids(const uint8_t *raw, uint32_t n)
{
	uint32_t *ids = (uint32_t *)(void *)(uintptr_t)raw;

#if !KVP_HOST_LE
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *b = raw + 4 * (size_t)i;

		ids[i] = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
			 (uint32_t)b[3] << 24;
	}
#else
	(void)n;
#endif
	return ids;
}

/* LOOKUP and INSERT: header and fixed fields from the stack, tokens from the caller,
 * then, for an INSERT with keep (keep_s, priority; NULL: none), KVP_F_KEEP's fields. */
static int tokens_call(struct kvp_client *c, uint8_t type, const uint32_t *tokens,
		       size_t n_tokens, uint32_t flags, const uint32_t *keep,
		       struct kvp_match *out)
{
	uint8_t head[KVP_HDR_SIZE + 8], tail[KVP_KEEP_SIZE];
	struct iovec iov[3] = { { head, sizeof(head) } };
	struct kvp_blocks_reply r;
	const uint8_t *p;
	size_t tbytes, tn = 0;
	uint32_t len;
	int rc, iovcnt = 1;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if ((flags & ~(uint32_t)KVP_LOOKUP_PIN) || (!tokens && n_tokens))
		return KVP_EINVAL;
	if (keep && (keep[0] == 0 || keep[0] > KVP_KEEP_MAX_S))
		return KVP_EINVAL;   /* as the daemon's decoder would */
	if (n_tokens > CLIENT_MAX_TOKENS)
		return KVP_ETOOBIG;
	tbytes = n_tokens * 4;
	put_le32(head + KVP_HDR_SIZE, keep ? flags | KVP_F_KEEP : flags);
	put_le32(head + KVP_HDR_SIZE + 4, (uint32_t)n_tokens);
	if ((rc = kvp_cl_tokens_iov(c, tokens, n_tokens, &iov[1])) < 0)
		return rc;
	if (tbytes)
		iovcnt++;
	if (keep) {
		put_le32(tail, keep[0]);
		put_le32(tail + 4, keep[1]);
		tn = sizeof(tail);
		iov[iovcnt++] = (struct iovec){ tail, tn };
	}

	if ((rc = roundtrip(c, type, iov, iovcnt, 8 + tbytes + tn, &p, &len)) < 0)
		return rc;
	if (kvp_blocks_reply_decode(p, len, &r) < 0)
		return fail(c, KVP_EPROTO);
	if (!out)
		return 0;
	out->matched_tokens = r.matched_tokens;
	out->prompt_tokens = r.prompt_tokens;
	out->new_blocks = r.new_blocks;
	out->lease = r.lease;
	out->n_blocks = r.n_blocks;
	/* The ids sit at buf + 40: 4-byte aligned, since buf comes from malloc. */
	out->block_ids = kvp_cl_host_ids(r.block_ids, r.n_blocks);
	return 0;
}

KVP_API int kvp_client_lookup(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
			      uint32_t flags, struct kvp_match *out)
{
	return tokens_call(c, KVP_T_LOOKUP, tokens, n_tokens, flags, NULL, out);
}

KVP_API int kvp_client_insert(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
			      uint32_t flags, struct kvp_match *out)
{
	return tokens_call(c, KVP_T_INSERT, tokens, n_tokens, flags, NULL, out);
}

KVP_API int kvp_client_insert_keep(struct kvp_client *c, const uint32_t *tokens,
				   size_t n_tokens, uint32_t flags, uint32_t keep_s,
				   uint32_t priority, struct kvp_match *out)
{
	const uint32_t keep[2] = { keep_s, priority };

	return tokens_call(c, KVP_T_INSERT, tokens, n_tokens, flags & ~(uint32_t)KVP_F_KEEP,
			   keep, out);
}

/* The FLEET reply's names, NUL-terminated, into c->names; out[i].name points there. */
static int fleet_names(struct kvp_client *c, const struct kvp_fleet_entry *e, uint32_t n,
		       struct kvp_fleet_match *out)
{
	size_t need = 0, off = 0;

	for (uint32_t i = 0; i < n; i++)
		need += e[i].name_len + 1;
	if (need > c->names_cap) {
		char *p = realloc(c->names, need);

		if (!p)
			return KVP_ENOMEM;
		c->names = p;
		c->names_cap = need;
	}
	for (uint32_t i = 0; i < n; i++) {
		memcpy(c->names + off, e[i].name, e[i].name_len);
		c->names[off + e[i].name_len] = '\0';
		out[i].matched_tokens = e[i].matched_tokens;
		out[i].name = c->names + off;
		off += e[i].name_len + 1;
	}
	return 0;
}

KVP_API int kvp_client_fleet(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
			     struct kvp_fleet_match *out, size_t max, size_t *n)
{
	uint8_t head[KVP_HDR_SIZE + 8];
	struct iovec iov[2] = { { head, sizeof(head) } };
	struct kvp_fleet_entry e[64];
	const uint8_t *p;
	uint32_t len, prompt, count;
	int rc;

	*n = 0;
	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if ((!tokens && n_tokens) || (!out && max))
		return KVP_EINVAL;
	if (n_tokens > CLIENT_MAX_TOKENS)
		return KVP_ETOOBIG;
	if (c->server_version && c->server_version < KVP_PROTO_VERSION_FLEET)
		return KVP_EVERSION;
	put_le32(head + KVP_HDR_SIZE, 0);
	put_le32(head + KVP_HDR_SIZE + 4, (uint32_t)n_tokens);
	if ((rc = kvp_cl_tokens_iov(c, tokens, n_tokens, &iov[1])) < 0)
		return rc;
	rc = roundtrip_v(c, KVP_PROTO_VERSION_FLEET, KVP_T_FLEET, iov, n_tokens ? 2 : 1,
			 8 + n_tokens * 4, &p, &len);
	if (rc < 0)
		return rc;
	if (kvp_fleet_reply_decode(p, len, &prompt, e, 64, &count) < 0)
		return fail(c, KVP_EPROTO);
	if (count > max)
		count = (uint32_t)max;
	if ((rc = fleet_names(c, e, count, out)) < 0)
		return rc;
	*n = count;
	return 0;
}

KVP_API int kvp_client_release(struct kvp_client *c, uint64_t lease, uint32_t *n_blocks)
{
	uint8_t frame[KVP_HDR_SIZE + 8];
	struct iovec iov = { frame, sizeof(frame) };
	const uint8_t *p;
	uint32_t len, v;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	kvp_release_encode(frame + KVP_HDR_SIZE, 8, lease);
	if ((rc = roundtrip(c, KVP_T_RELEASE, &iov, 1, 8, &p, &len)) < 0)
		return rc;
	if (kvp_u32_decode(p, len, &v) < 0)
		return fail(c, KVP_EPROTO);
	if (n_blocks)
		*n_blocks = v;
	return 0;
}

KVP_API int kvp_client_stats(struct kvp_client *c, char **json)
{
	uint8_t frame[KVP_HDR_SIZE];
	struct iovec iov = { frame, sizeof(frame) };
	const uint8_t *p;
	uint32_t len;
	char *s;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if (!json)
		return KVP_EINVAL;
	*json = NULL;
	if ((rc = roundtrip(c, KVP_T_STATS, &iov, 1, 0, &p, &len)) < 0)
		return rc;
	s = malloc((size_t)len + 1);
	if (!s)
		return KVP_ENOMEM;
	memcpy(s, p, len);
	s[len] = '\0';
	*json = s;
	return 0;
}

KVP_API int kvp_client_ping(struct kvp_client *c, const void *data, size_t n)
{
	uint8_t frame[KVP_HDR_SIZE];
	struct iovec iov[2] = { { frame, sizeof(frame) }, { (void *)data, n } };
	const uint8_t *p;
	uint32_t len;
	int rc;

	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if (!data && n)
		return KVP_EINVAL;
	if (n > CLIENT_MAX_REPLY)
		return KVP_ETOOBIG;
	if ((rc = roundtrip(c, KVP_T_PING, iov, n ? 2 : 1, n, &p, &len)) < 0)
		return rc;
	if (len != n || (n && memcmp(p, data, n) != 0))
		return fail(c, KVP_EPROTO);
	return 0;
}

/* ---- ADMIN ------------------------------------------------------------------------------ */

KVP_API int kvp_client_admin(struct kvp_client *c, uint32_t op, uint32_t flags,
			     uint32_t tenant, const uint32_t *tokens, size_t n_tokens,
			     const char *text, uint32_t *blocks, char **reply_text)
{
	struct kvp_admin_req m;
	struct kvp_admin_reply r;
	struct iovec iov;
	const uint8_t *p;
	uint8_t *frame;
	size_t tlen, n;
	uint32_t len;
	char *s;
	int rc;

	if (reply_text)
		*reply_text = NULL;
	if ((rc = kvp_cl_check(c)) < 0)
		return rc;
	if (!tokens && n_tokens)
		return KVP_EINVAL;
	if (n_tokens > CLIENT_MAX_ADMIN_TOKENS)
		return KVP_ETOOBIG;
	tlen = text ? strnlen(text, KVP_ADMIN_TEXT_MAX + 1) : 0;
	if (tlen > KVP_ADMIN_TEXT_MAX)
		return KVP_ETOOBIG;
	m = (struct kvp_admin_req){
		.op = op,
		.flags = flags,
		.tenant = tenant,
		.n_tokens = (uint32_t)n_tokens,
		.text_len = (uint16_t)tlen,
		.text = text,
	};
	/* What the daemon's decoder would refuse is refused here, with its status. */
	if ((rc = kvp_admin_req_check(&m)) < 0)
		return rc;
	if (c->server_version && c->server_version < KVP_PROTO_VERSION_ADMIN)
		return KVP_EVERSION;

	n = kvp_admin_req_size(&m);
	frame = malloc(KVP_HDR_SIZE + n);
	if (!frame)
		return KVP_ENOMEM;
	if (kvp_admin_req_encode(frame + KVP_HDR_SIZE, n, &m, tokens) != n) {
		free(frame);
		return KVP_EINVAL;
	}
	iov = (struct iovec){ frame, KVP_HDR_SIZE + n };
	rc = roundtrip_v(c, KVP_PROTO_VERSION_ADMIN, KVP_T_ADMIN, &iov, 1, n, &p, &len);
	free(frame);
	if (rc < 0)
		return rc;
	if (kvp_admin_reply_decode(p, len, &r) < 0 || r.op != op)
		return fail(c, KVP_EPROTO);
	if (reply_text) {
		s = malloc((size_t)r.text_len + 1);
		if (!s)
			return KVP_ENOMEM;
		if (r.text_len)
			memcpy(s, r.text, r.text_len);
		s[r.text_len] = '\0';
		*reply_text = s;
	}
	if (blocks)
		*blocks = r.blocks;
	return 0;
}

KVP_API const char *kvp_client_error(const struct kvp_client *c)
{
	return c ? c->err : "";
}
