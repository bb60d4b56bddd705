/*
 * kvp_evpub.h - publishing event batches over ZeroMQ (docs/kv-events.md): a PUB socket
 * (bound, or connected to a subscriber that binds) sends each batch as three frames (topic, sequence number as a u64 big-endian,
 * payload), and an optional ROUTER socket replays the batches still buffered to a
 * client that asks for them from a sequence number on.
 *
 * Threads: kvp_evpub_submit, kvp_evpub_publish and kvp_evpub_stats are called from one
 * thread (the daemon's loop) and never block on the network: they take a mutex held
 * only for pointer moves. A thread of the publisher's own packs the submitted builders,
 * owns both sockets, sends each batch once, keeps the last `buffer` batches for replay,
 * and serves replays; it is woken only when it has nothing left to do. Nothing waits
 * for a subscriber: PUB drops what a slow one cannot take (it sees the gap in the
 * sequence numbers), and when more than `buffer` batches wait for the thread, the
 * oldest waiting one is dropped, counted.
 *
 * Errors: 0 or a negative enum kvp_status; open explains a failure in err.
 */
#ifndef KVP_EVPUB_H
#define KVP_EVPUB_H

#include <stddef.h>
#include <stdint.h>

#include "kvp_status.h"

struct kvp_evpub_config {
	const char *endpoint;          /* PUB: bound (a wildcard address, an ipc path) or
					* connected (a host): kvp_ev_endpoint_binds */
	const char *replay_endpoint;   /* ROUTER, always bound; NULL: no replay */
	const char *topic;             /* first frame of each message */
	uint32_t buffer;               /* batches kept for replay (and in flight), >= 1 */
	uint32_t hwm;                  /* PUB's send high-water mark, messages */
};

struct kvp_evpub_stats {
	uint64_t batches;          /* handed to publish */
	uint64_t events;           /* events in them */
	uint64_t sent;             /* batches sent on PUB */
	uint64_t dropped;          /* batches lost before they were sent (numbered, unsent) */
	uint64_t replays;          /* replay requests served */
	uint64_t replayed;         /* batches sent in replies */
	uint64_t replay_bad;       /* malformed replay requests, ignored */
	uint64_t replay_cut;       /* replies cut short: the client went or stopped reading */
	uint64_t next_seq;         /* the sequence number the next batch gets */
};

struct kvp_evpub;

/* Whether a socket takes an endpoint by binding it (a wildcard address, "*" or "::", or
 * an ipc:// or inproc:// path) or by connecting to it (a host to reach), as vLLM's
 * publisher decides. */
bool kvp_ev_endpoint_binds(const char *endpoint);

/* Open the sockets and start the thread. KVP_EINVAL (a bad endpoint: err says which
 * and why), KVP_ENOMEM, KVP_EIO. */
int kvp_evpub_open(const struct kvp_evpub_config *cfg, struct kvp_evpub **out, char *err,
		   size_t err_len);
/* Queue one batch (msgpack bytes; ownership of buf, a malloc'd block, passes to the
 * publisher) of n_events events. It gets the next sequence number, starting at 0. */
void kvp_evpub_publish(struct kvp_evpub *p, uint8_t *buf, size_t len, uint32_t n_events);
/* Queue b's events as the next batch, packed on the publisher's thread (b passes to the
 * publisher); returns an empty builder like b for the next events, or NULL when memory
 * ran out: then nothing was queued and b is still the caller's. */
struct kvp_evbatch;
struct kvp_evbatch *kvp_evpub_submit(struct kvp_evpub *p, struct kvp_evbatch *b);
void kvp_evpub_stats(struct kvp_evpub *p, struct kvp_evpub_stats *st);
/* Send what is queued (waiting up to 1 s for slow subscribers), stop the thread,
 * close. NULL is fine. */
void kvp_evpub_close(struct kvp_evpub *p);

#endif
