/*
 * fleet_sub.c - the fleet index's thread: one SUB socket per engine endpoint, each
 * engine's batches applied in order of their sequence numbers.
 *
 *   [topic, seq (u64 big-endian), payload] ──▶ the engine: the ID of a topic
 *   kv@ID@MODEL, else the topic, else the endpoint
 *     seq == last + 1 (or the first, or 0: the engine restarted)  apply
 *     seq <= last                                                 old: skip
 *     seq >  last + 1  a gap: counted; with a replay endpoint, ["", last + 1] is sent
 *                      there and the batches it returns up to seq are applied first
 *
 * Decoding runs outside the lock; applying one batch holds it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "fleet.h"
#include "kvp_be.h"
#include "kvp_evpub.h"
#include "kvp_log.h"

/* The engine a message comes from, into name (KVP_FLEET_NAME_MAX + 1 bytes). */
static void instance_name(const char *topic, size_t len, const char *endpoint, char *name)
{
	const char *first = len > 3 && memcmp(topic, "kv@", 3) == 0 ? topic + 3 : NULL;
	const char *last = first ? memrchr(first, '@', len - 3) : NULL;
	size_t n;

	if (first && last && last > first) {
		topic = first;
		len = (size_t)(last - first);
	} else if (len == 0) {
		topic = endpoint;
		len = strlen(endpoint);
	}
	n = len < KVP_FLEET_NAME_MAX ? len : KVP_FLEET_NAME_MAX;
	memcpy(name, topic, n);
	name[n] = '\0';
}

/* Decode one batch and apply it to engine inst. */
static void apply_batch(struct fleet *f, int inst, const uint8_t *buf, size_t len)
{
	const struct kvp_ev *ev;
	size_t n;
	int rc = kvp_evdecode(f->dec, buf, len, &ev, &n);

	pthread_mutex_lock(&f->mu);
	if (rc) {
		f->malformed++;
		pthread_mutex_unlock(&f->mu);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		size_t skipped;

		rc = kvp_fleet_apply(f->idx, (unsigned)inst, &ev[i], &skipped);
		if (rc == KVP_EINVAL || rc == KVP_ENOMEM)
			f->malformed++;
	}
	f->batches++;
	f->events += n;
	pthread_mutex_unlock(&f->mu);
}

/* All frames of the next message on s into m (at most max; the count in *n, more
 * are dropped). false: none waiting (flags ZMQ_DONTWAIT) or an error. */
static bool recv_message(void *s, zmq_msg_t *m, int max, int *n, int flags)
{
	int more = 1;

	*n = 0;
	while (more) {
		zmq_msg_t x;
		size_t sz = sizeof(more);

		zmq_msg_init(&x);
		if (zmq_msg_recv(&x, s, *n == 0 ? flags : 0) < 0) {
			zmq_msg_close(&x);
			for (int i = 0; i < *n && i < max; i++)
				zmq_msg_close(&m[i]);
			return false;
		}
		zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz);
		if (*n < max)
			m[*n] = x;
		else
			zmq_msg_close(&x);
		++*n;
	}
	return true;
}

static void close_frames(zmq_msg_t *m, int n, int max)
{
	for (int i = 0; i < n && i < max; i++)
		zmq_msg_close(&m[i]);
}

/* A fresh DEALER to the engine's replay endpoint: what a cut-short replay left
 * queued on the old one is dropped with it. */
static void dealer_reset(struct fleet *f, struct fleet_endpoint *e)
{
	int zero = 0;

	if (e->dealer)
		zmq_close(e->dealer);
	e->dealer = zmq_socket(f->ctx, ZMQ_DEALER);
	if (!e->dealer)
		return;
	zmq_setsockopt(e->dealer, ZMQ_LINGER, &zero, sizeof(zero));
	if (zmq_connect(e->dealer, e->replay) != 0) {
		zmq_close(e->dealer);
		e->dealer = NULL;
	}
}

/* Ask the engine for its batches from `from` on and apply those before `upto`. */
static void replay(struct fleet *f, struct fleet_endpoint *e, int inst, uint64_t from,
		   uint64_t upto)
{
	uint8_t req[8];
	uint64_t got = 0;

	if (!e->dealer)
		return;
	kvp_be_put_u64(req, from);
	if (zmq_send(e->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
	    zmq_send(e->dealer, req, 8, ZMQ_DONTWAIT) < 0) {
		dealer_reset(f, e);
		return;
	}
	for (;;) {
		zmq_pollitem_t it = { .socket = e->dealer, .events = ZMQ_POLLIN };
		zmq_msg_t m[3];
		uint64_t seq;
		int n;

		if (zmq_poll(&it, 1, FLEET_REPLAY_WAIT_MS) <= 0 ||
		    !recv_message(e->dealer, m, 3, &n, ZMQ_DONTWAIT)) {
			kvp_warn("fleet: replay from %s timed out", e->replay);
			dealer_reset(f, e);
			break;
		}
		if (n != 3 || zmq_msg_size(&m[1]) != 8) {
			close_frames(m, n, 3);
			continue;
		}
		seq = kvp_be_get_u64(zmq_msg_data(&m[1]));
		if (seq == UINT64_MAX) {
			close_frames(m, n, 3);
			break;   /* the end */
		}
		if (seq >= from && seq < upto) {
			apply_batch(f, inst, zmq_msg_data(&m[2]), zmq_msg_size(&m[2]));
			got++;
		}
		close_frames(m, n, 3);
	}
	pthread_mutex_lock(&f->mu);
	f->replays++;
	f->replayed += got;
	pthread_mutex_unlock(&f->mu);
}

/* One message from endpoint e. */
static void on_message(struct fleet *f, struct fleet_endpoint *e, zmq_msg_t *m, int n)
{
	char name[KVP_FLEET_NAME_MAX + 1];
	struct fleet_seq *sq;
	uint64_t seq, last;
	bool have;
	int inst;

	if (n != 3 || zmq_msg_size(&m[1]) != 8) {
		pthread_mutex_lock(&f->mu);
		f->malformed++;
		pthread_mutex_unlock(&f->mu);
		return;
	}
	instance_name(zmq_msg_data(&m[0]), zmq_msg_size(&m[0]), e->endpoint, name);
	seq = kvp_be_get_u64(zmq_msg_data(&m[1]));
	pthread_mutex_lock(&f->mu);
	inst = kvp_fleet_instance(f->idx, name);
	if (inst < 0) {
		f->malformed++;
		pthread_mutex_unlock(&f->mu);
		if (!f->full_logged)
			kvp_warn("fleet: engine '%s' not indexed: %u engines already are", name,
				 KVP_FLEET_MAX_INSTANCES);
		f->full_logged = true;
		return;
	}
	sq = &f->seq[inst];
	have = sq->have;
	last = sq->last;
	if (have && seq <= last && seq != 0) {
		pthread_mutex_unlock(&f->mu);
		return;   /* already applied (a replay overlapped) */
	}
	if (have && seq > last + 1)
		f->gaps++;
	pthread_mutex_unlock(&f->mu);
	if (have && seq > last + 1)
		replay(f, e, inst, last + 1, seq);
	apply_batch(f, inst, zmq_msg_data(&m[2]), zmq_msg_size(&m[2]));
	pthread_mutex_lock(&f->mu);
	sq->have = true;
	sq->last = seq;
	pthread_mutex_unlock(&f->mu);
}

static void *run(void *arg)
{
	struct fleet *f = arg;
	zmq_pollitem_t items[FLEET_MAX_ENDPOINTS + 1];
	bool stop = false;

	items[0] = (zmq_pollitem_t){ .fd = f->efd, .events = ZMQ_POLLIN };
	for (unsigned i = 0; i < f->n_ep; i++)
		items[i + 1] = (zmq_pollitem_t){ .socket = f->ep[i].sub, .events = ZMQ_POLLIN };
	while (!stop) {
		if (zmq_poll(items, (int)f->n_ep + 1, -1) < 0 && errno != EINTR)
			break;
		for (unsigned i = 0; i < f->n_ep; i++) {
			zmq_msg_t m[3];
			int n;

			/* a bounded turn per endpoint, so that none starves the others */
			for (int k = 0; k < 256; k++) {
				if (!recv_message(f->ep[i].sub, m, 3, &n, ZMQ_DONTWAIT))
					break;
				on_message(f, &f->ep[i], m, n);
				close_frames(m, n, 3);
			}
		}
		pthread_mutex_lock(&f->mu);
		stop = f->stop;
		pthread_mutex_unlock(&f->mu);
	}
	return NULL;
}

int fleet_sub_start(struct fleet *f)
{
	int zero = 0, hwm = 100000;

	f->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	f->ctx = zmq_ctx_new();
	if (f->efd < 0 || !f->ctx || kvp_evdecoder_create(&f->dec) != 0)
		return KVP_ENOMEM;
	for (unsigned i = 0; i < f->n_ep; i++) {
		struct fleet_endpoint *e = &f->ep[i];

		e->sub = zmq_socket(f->ctx, ZMQ_SUB);
		if (!e->sub)
			return KVP_ENOMEM;
		zmq_setsockopt(e->sub, ZMQ_LINGER, &zero, sizeof(zero));
		zmq_setsockopt(e->sub, ZMQ_RCVHWM, &hwm, sizeof(hwm));
		zmq_setsockopt(e->sub, ZMQ_SUBSCRIBE, "", 0);
		/* a wildcard address: engines connect to it (one socket, many engines) */
		if ((kvp_ev_endpoint_binds(e->endpoint) && strncmp(e->endpoint, "ipc://", 6) != 0
		     ? zmq_bind(e->sub, e->endpoint) : zmq_connect(e->sub, e->endpoint)) != 0) {
			kvp_err("--kv-events-sub '%s': %s", e->endpoint, zmq_strerror(zmq_errno()));
			return KVP_EINVAL;
		}
		if (e->replay) {
			dealer_reset(f, e);
			if (!e->dealer) {
				kvp_err("--kv-events-sub-replay '%s': %s", e->replay,
					  zmq_strerror(zmq_errno()));
				return KVP_EINVAL;
			}
		}
	}
	if (pthread_create(&f->thread, NULL, run, f) != 0) {
		kvp_err("fleet: cannot start the subscriber thread");
		return KVP_EIO;
	}
	return 0;
}

void fleet_sub_stop(struct fleet *f)
{
	uint64_t one = 1;

	pthread_mutex_lock(&f->mu);
	f->stop = true;
	pthread_mutex_unlock(&f->mu);
	(void)!write(f->efd, &one, sizeof(one));
	pthread_join(f->thread, NULL);
}
