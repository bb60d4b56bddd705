/*
 * reply.c - a connection's replies: framed, then written to its socket straight away,
 * or gathered while its frames run and written together.
 *
 * While a connection's read callback runs its frames (reply_cork .. reply_uncork), the
 * replies go into a batch buffer of REPLY_BATCH bytes, and one sendmsg writes them all
 * when the callback returns. A client that pipelines then gets one write, and one
 * wake-up, for every frame that one read of ours brought, where it got one for each;
 * a client that waits for each reply gets its one reply, in one write, as before.
 *
 * Outside a read callback (a GENERATE's tokens, a deferred reply), a reply is written
 * at once when nothing is queued, which saves the write-readiness round through epoll.
 * Whatever the socket does not take is queued in the bufferevent's output behind what
 * is already there, so the order of replies is kept either way.
 *
 * Out of memory queueing a reply, the connection's stream may have lost bytes: nothing
 * more is written on it (send_frame and reply_flush answer KVP_ENOMEM), and the read
 * callback's uncork fails, which closes it.
 *
 * Memory: the batch buffer is allocated at a connection's first batched reply and kept
 * until it is freed: REPLY_BATCH bytes each (16 MiB at the default 1,024 connections).
 * A reply larger than the batch skips it, after what the batch holds.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "kvp_log.h"
#include "server.h"

#define REPLY_BATCH (16u << 10)

/* Write iov[0 .. n) without blocking where nothing is queued, and queue the rest behind
 * the output. 0 or KVP_ENOMEM. */
static int write_or_queue(struct conn *c, struct iovec *iov, int n)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	size_t sent = 0;

	if (evbuffer_get_length(out) == 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t r = sendmsg(bufferevent_getfd(c->bev), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (r > 0)
			sent = (size_t)r;
	}
	for (int i = 0; i < n; i++) {
		size_t skip = sent < iov[i].iov_len ? sent : iov[i].iov_len;

		sent -= skip;
		if (iov[i].iov_len > skip &&
		    evbuffer_add(out, (const uint8_t *)iov[i].iov_base + skip, iov[i].iov_len - skip))
			return KVP_ENOMEM;
	}
	return KVP_OK;
}

int reply_flush(struct conn *c)
{
	struct iovec iov = { .iov_base = c->wbuf, .iov_len = c->wlen };

	if (c->wfail)
		return KVP_ENOMEM;
	if (c->wlen == 0)
		return KVP_OK;
	c->wlen = 0;
	if (write_or_queue(c, &iov, 1) != KVP_OK)
		c->wfail = true;   /* the stream lost bytes: nothing more goes out */
	return c->wfail ? KVP_ENOMEM : KVP_OK;
}

void reply_cork(struct conn *c)
{
	c->corked = true;
}

int reply_uncork(struct conn *c)
{
	c->corked = false;
	return reply_flush(c);
}

void reply_discard(struct conn *c)
{
	c->wlen = 0;
}

void reply_free(struct conn *c)
{
	srv_free(c->wbuf);
	c->wbuf = NULL;
	c->wlen = 0;
}

/* Append a frame to the batch when it fits (the buffer allocated at first use; what it
 * holds written first when full). 1: appended; 0: it goes the other way; KVP_ENOMEM. */
static int batch_add(struct conn *c, const uint8_t *hdr, const void *payload, size_t len)
{
	if (!c->corked || KVP_HDR_SIZE + len > REPLY_BATCH)
		return 0;
	if (!c->wbuf && !(c->wbuf = srv_malloc(REPLY_BATCH)))
		return 0;
	if (c->wlen + KVP_HDR_SIZE + len > REPLY_BATCH && reply_flush(c) != KVP_OK)
		return KVP_ENOMEM;
	memcpy(c->wbuf + c->wlen, hdr, KVP_HDR_SIZE);
	if (len)
		memcpy(c->wbuf + c->wlen + KVP_HDR_SIZE, payload, len);
	c->wlen += KVP_HDR_SIZE + len;
	return 1;
}

int send_frame(struct conn *c, uint8_t version, uint8_t type, uint32_t req_id,
	       const void *payload, size_t len)
{
	struct kvp_frame_hdr h = {
		.version = version, .type = type, .req_id = req_id, .len = (uint32_t)len,
	};
	uint8_t hdr[KVP_HDR_SIZE];
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	int rc;

	if (c->wfail)
		return KVP_ENOMEM;
	kvp_hdr_encode(hdr, &h);
	rc = batch_add(c, hdr, payload, len);
	if (rc != 0)
		return rc < 0 ? rc : KVP_OK;
	if (reply_flush(c) != KVP_OK)   /* what the batch holds goes first */
		return KVP_ENOMEM;
	if (write_or_queue(c, iov, len ? 2 : 1) != KVP_OK)
		c->wfail = true;
	return c->wfail ? KVP_ENOMEM : KVP_OK;
}

int send_verror(struct conn *c, uint8_t version, uint32_t req_id, int status, const char *fmt,
		va_list ap)
{
	char msg[KVP_ERROR_MSG_MAX + 1];
	uint8_t buf[KVP_ERROR_MSG_MAX + 16];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = kvp_error_encode(buf, sizeof(buf), status, msg);
	kvp_stats_error(&c->srv->stats);
	kvp_debug("conn %llu: ERROR %d (%s): %s", (unsigned long long)c->id, -status,
		  kvp_strerror(status), msg);
	if (n)
		(void)send_frame(c, version, KVP_T_ERROR, req_id, buf, n);
	return status;
}

int send_error(struct conn *c, uint8_t version, uint32_t req_id, int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	status = send_verror(c, version, req_id, status, fmt, ap);
	va_end(ap);
	return status;
}
