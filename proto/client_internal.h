/*
 * client_internal.h - what the files of libkvprefix share, private to proto/: the
 * client's struct and the frame I/O of client.c that client_generate.c uses.
 *
 *   client.c            connect, the frame I/O below, HELLO .. PING, FLEET, ADMIN
 *   client_generate.c   GENERATE: its request, the token frames, GENERATE_DONE's checks
 *
 * Every function is for the thread that owns the client (kvprefix.h: one per thread),
 * and returns 0 or a negative enum kvp_status as the public calls do. Where a failure
 * leaves the client unusable it says so by setting c->fatal, which every later call
 * returns.
 */
#ifndef KVP_CLIENT_INTERNAL_H
#define KVP_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "kvp_proto.h"
#include "kvprefix.h"

#define CLIENT_OWED_MAX 64u                  /* timed-out requests awaited at once */

struct kvp_client {
	int fd;
	int fatal;              /* 0, or the status every later call returns */
	uint32_t next_id;       /* req_id of the next request sent */
	uint32_t owed[CLIENT_OWED_MAX];   /* ids of timed-out requests whose final frame is due */
	uint32_t n_owed;
	uint32_t timeout_ms;    /* 0: wait forever */
	uint32_t server_version;   /* from the HELLO reply; 0: no HELLO yet */
	uint32_t server_uid;    /* with server_uid_set: a daemon uid trusted besides the usual */
	bool server_uid_set;
	bool refused;           /* the daemon refused the connection as a whole */
	bool trace;             /* KVP_TRACE_FRAMES: every frame to stderr, in hex */
	uint8_t *buf;           /* receive buffer; a frame starts at buf[0] */
	size_t cap;             /* bytes allocated */
	size_t have;            /* bytes received and held */
	size_t frame;           /* bytes of the frame the last call returned */
	uint8_t *scratch;       /* big-endian hosts: tokens converted for sending */
	size_t scratch_cap;
	float *logits;          /* the last GENERATE's logits (client_generate.c), aligned */
	size_t logits_cap;      /* floats allocated */
	char *names;            /* the last FLEET's engine names, each NUL-terminated */
	size_t names_cap;
	char err[KVP_ERROR_MSG_MAX + 1];
};

/* Start of a call: KVP_EINVAL for c NULL; clears the last error text. */
int kvp_cl_check(struct kvp_client *c);
/* CLOCK_MONOTONIC in milliseconds, for the deadlines below. */
int64_t kvp_cl_now_ms(void);
/* The daemon broke the protocol: say how, for kvp_client_error(); KVP_EPROTO, and the
 * client is unusable. */
__attribute__((format(printf, 2, 3)))
int kvp_cl_broken(struct kvp_client *c, const char *fmt, ...);
/* Remember that request id timed out: its frames are dropped by later calls. */
void kvp_cl_owe(struct kvp_client *c, uint32_t id);
/* An ERROR frame's payload answering our request: its code (negative), its message
 * kept for kvp_client_error(); KVP_EPROTO when it does not decode. */
int kvp_cl_take_error(struct kvp_client *c, const uint8_t *p, size_t n);
/*
 * Send one request in a header of this version: iov[0] begins with KVP_HDR_SIZE bytes
 * this function fills in, payload_len bytes follow over iov. *id gets the request's
 * id. On failure nothing went out unless c->fatal is set.
 */
int kvp_cl_send(struct kvp_client *c, uint8_t version, uint8_t type, struct iovec *iov,
		int iovcnt, size_t payload_len, uint32_t *id);
/*
 * Read the next frame of request id into c->buf, dropping the frames of owed requests
 * on the way (deadline: kvp_cl_now_ms() time, or 0 with no timeout). On 0, h is its
 * header; its payload follows at c->buf + KVP_HDR_SIZE until the next call. An ERROR
 * with req_id 0 is the daemon refusing the connection: its code. KVP_ETIMEDOUT: the
 * caller decides whether id is now owed.
 */
int kvp_cl_next_frame(struct kvp_client *c, uint32_t id, uint8_t version, int64_t deadline,
		      struct kvp_frame_hdr *h);
/* Point iov at tokens as little-endian bytes: the caller's array itself on a
 * little-endian host, a converted copy in c->scratch elsewhere (KVP_ENOMEM). */
int kvp_cl_tokens_iov(struct kvp_client *c, const uint32_t *tokens, size_t n_tokens,
		      struct iovec *iov);
/* The n token ids at raw, a 4-byte aligned offset of c->buf, in host order in place. */
const uint32_t *kvp_cl_host_ids(const uint8_t *raw, uint32_t n);

#endif
