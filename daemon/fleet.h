/*
 * fleet.h - the fleet index of an index-only kvprefixd (--kv-events-sub), private to
 * daemon/: fleet.c opens it and answers FLEET on the loop, fleet_sub.c is the thread that
 * subscribes to the engines' events and applies them.
 *
 * The thread and the loop share the index (events/kvp_fleet.h) under `mu`: the thread
 * holds it while it applies one batch, the loop while it answers one FLEET.
 */
#ifndef KVP_DAEMON_FLEET_H
#define KVP_DAEMON_FLEET_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvp_events.h"
#include "kvp_fleet.h"

#define FLEET_MAX_ENDPOINTS 64u
#define FLEET_REPLAY_WAIT_MS 2000   /* the longest wait for one batch of a replay */

struct fleet_endpoint {
	char *endpoint;              /* what SUB connects to */
	char *replay;                /* the engine's replay endpoint, or NULL */
	void *sub, *dealer;          /* the thread's */
};

struct fleet_seq {
	bool have;                   /* a batch was applied */
	uint64_t last;               /* its sequence number */
};

struct fleet {
	pthread_mutex_t mu;          /* guards idx, seq and the counters */
	struct kvp_fleet *idx;
	struct fleet_seq seq[KVP_FLEET_MAX_INSTANCES];
	uint64_t batches, events, malformed, gaps, replays, replayed;
	/* the thread's own */
	pthread_t thread;
	void *ctx;
	int efd;                     /* written to stop the thread */
	bool stop;                   /* under mu */
	struct fleet_endpoint ep[FLEET_MAX_ENDPOINTS];
	unsigned n_ep;
	struct kvp_evdecoder *dec;
	bool full_logged;            /* "more than 64 engines" said once */
	/* the loop's own: FLEET scratch */
	struct kvp_key *keys;
	uint8_t *reply;
	size_t reply_cap;
};

/* Connect the sockets and start the thread (fleet_sub.c). 0, or a status with the
 * reason logged. */
int fleet_sub_start(struct fleet *f);
/* Stop and join the thread, close the sockets. */
void fleet_sub_stop(struct fleet *f);

#endif
