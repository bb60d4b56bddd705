/*
 * pub.c - the event publisher: a ring of batches shared by the loop and a thread that
 * owns the ZeroMQ sockets.
 *
 *   loop: publish ──lock──▶ ring[seq % cap] = batch; next_seq++ ──eventfd──▶
 *   thread: zmq_poll(eventfd, ROUTER)
 *             ├─ ring[sent_seq] copied under the lock, sent on PUB outside it
 *             └─ a replay request [id, "", seq]: every sent batch from seq on that the
 *                ring still holds, [id, "", seq, payload] each, then [id, "", -1, ""]
 *
 * A slot keeps its batch after it is sent, for replays, until the batch cap later
 * overwrites it. Overwriting one not yet sent drops it (counted) and moves sent_seq on.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "kvp_evpub.h"

struct slot {
	uint64_t seq;
	uint8_t *buf;              /* NULL: empty */
	size_t len;
};

struct kvp_evpub {
	void *ctx, *pub, *router;
	int efd;
	pthread_t thread;
	char *topic;
	pthread_mutex_t mu;        /* guards everything below */
	struct slot *ring;
	uint32_t cap;
	uint64_t next_seq;         /* the next batch's number */
	uint64_t sent_seq;         /* the next batch to send */
	bool stop;
	struct kvp_evpub_stats st;
};

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* A copy of the batch numbered seq while the ring still holds it (and it was sent,
 * when sent_only), into a new message. false: gone. */
static bool copy_batch(struct kvp_evpub *p, uint64_t seq, bool sent_only, zmq_msg_t *m)
{
	const struct slot *s;
	bool ok = false;

	pthread_mutex_lock(&p->mu);
	s = &p->ring[seq % p->cap];
	if (s->buf && s->seq == seq && (!sent_only || seq < p->sent_seq) &&
	    zmq_msg_init_size(m, s->len) == 0) {
		memcpy(zmq_msg_data(m), s->buf, s->len);
		ok = true;
	}
	pthread_mutex_unlock(&p->mu);
	return ok;
}

/* ---- the thread ---------------------------------------------------------------------- */

/* Send every batch queued since the last call, oldest first. */
static void send_pending(struct kvp_evpub *p)
{
	for (;;) {
		uint8_t seq8[8];
		uint64_t seq;
		zmq_msg_t m;
		bool ok;

		pthread_mutex_lock(&p->mu);
		seq = p->sent_seq;
		if (seq == p->next_seq) {
			pthread_mutex_unlock(&p->mu);
			return;
		}
		p->sent_seq++;
		pthread_mutex_unlock(&p->mu);
		if (!copy_batch(p, seq, false, &m))
			continue;   /* overwritten meanwhile: counted by publish */
		put_be64(seq8, seq);
		ok = zmq_send(p->pub, p->topic, strlen(p->topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
		     zmq_send(p->pub, seq8, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
		     zmq_msg_send(&m, p->pub, ZMQ_DONTWAIT) >= 0;
		if (!ok)
			zmq_msg_close(&m);
		pthread_mutex_lock(&p->mu);
		if (ok)
			p->st.sent++;
		else
			p->st.dropped++;
		pthread_mutex_unlock(&p->mu);
	}
}

/* One reply message to a replay client: [id, "", seq8, payload]. */
static bool reply(struct kvp_evpub *p, const zmq_msg_t *id, const uint8_t seq8[8], zmq_msg_t *m)
{
	zmq_msg_t idc;
	bool ok;

	zmq_msg_init(&idc);
	zmq_msg_copy(&idc, (zmq_msg_t *)id);
	ok = zmq_msg_send(&idc, p->router, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	     zmq_send(p->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	     zmq_send(p->router, seq8, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	     zmq_msg_send(m, p->router, ZMQ_DONTWAIT) >= 0;
	if (!ok) {
		zmq_msg_close(&idc);
		zmq_msg_close(m);
	}
	return ok;
}

/* Every sent batch from start on that the ring holds, then the end marker. */
static void replay_from(struct kvp_evpub *p, const zmq_msg_t *id, uint64_t start)
{
	uint64_t seq, end;
	uint8_t seq8[8];
	zmq_msg_t m;
	uint64_t n = 0;
	bool ok = true;

	pthread_mutex_lock(&p->mu);
	end = p->sent_seq;
	seq = end > p->cap && start < end - p->cap ? end - p->cap : start;
	pthread_mutex_unlock(&p->mu);
	for (; ok && seq < end; seq++) {
		if (!copy_batch(p, seq, true, &m))
			continue;
		put_be64(seq8, seq);
		ok = reply(p, id, seq8, &m);
		n += ok;
	}
	if (ok) {
		memset(seq8, 0xff, 8);   /* -1: the end */
		zmq_msg_init_size(&m, 0);
		ok = reply(p, id, seq8, &m);
	}
	pthread_mutex_lock(&p->mu);
	p->st.replays++;
	p->st.replayed += n;
	p->st.replay_cut += !ok;
	pthread_mutex_unlock(&p->mu);
}

/* Serve the replay requests waiting on ROUTER. */
static void serve_replays(struct kvp_evpub *p)
{
	for (;;) {
		zmq_msg_t f[3];
		int n = 0, more = 1;
		bool well_formed;

		while (more) {
			zmq_msg_t x;
			size_t sz = sizeof(more);

			zmq_msg_init(&x);
			if (zmq_msg_recv(&x, p->router, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
				zmq_msg_close(&x);
				for (int i = 0; i < n && i < 3; i++)
					zmq_msg_close(&f[i]);
				return;   /* nothing (more) waiting */
			}
			zmq_getsockopt(p->router, ZMQ_RCVMORE, &more, &sz);
			if (n < 3)
				f[n] = x;
			else
				zmq_msg_close(&x);
			n++;
		}
		well_formed = n == 3 && zmq_msg_size(&f[1]) == 0 && zmq_msg_size(&f[2]) == 8;
		if (well_formed)
			replay_from(p, &f[0], get_be64(zmq_msg_data(&f[2])));
		else {
			pthread_mutex_lock(&p->mu);
			p->st.replay_bad++;
			pthread_mutex_unlock(&p->mu);
		}
		for (int i = 0; i < n && i < 3; i++)
			zmq_msg_close(&f[i]);
	}
}

static void *run(void *arg)
{
	struct kvp_evpub *p = arg;
	zmq_pollitem_t items[2] = {
		{ .fd = p->efd, .events = ZMQ_POLLIN },
		{ .socket = p->router, .events = ZMQ_POLLIN },
	};
	bool stop = false;

	while (!stop) {
		uint64_t v;

		if (zmq_poll(items, p->router ? 2 : 1, -1) < 0 && errno != EINTR)
			break;
		if (items[0].revents & ZMQ_POLLIN)
			(void)!read(p->efd, &v, sizeof(v));
		pthread_mutex_lock(&p->mu);
		stop = p->stop;
		pthread_mutex_unlock(&p->mu);
		send_pending(p);
		if (p->router && (items[1].revents & ZMQ_POLLIN))
			serve_replays(p);
	}
	return NULL;
}

/* ---- the loop's side ----------------------------------------------------------------- */

void kvp_evpub_publish(struct kvp_evpub *p, uint8_t *buf, size_t len, uint32_t n_events)
{
	uint64_t one = 1;
	struct slot *s;
	uint8_t *old;

	pthread_mutex_lock(&p->mu);
	s = &p->ring[p->next_seq % p->cap];
	old = s->buf;
	if (old && s->seq >= p->sent_seq) {
		p->st.dropped++;             /* never sent: the thread fell a whole ring behind */
		p->sent_seq = s->seq + 1;
	}
	s->seq = p->next_seq++;
	s->buf = buf;
	s->len = len;
	p->st.batches++;
	p->st.events += n_events;
	pthread_mutex_unlock(&p->mu);
	free(old);
	(void)!write(p->efd, &one, sizeof(one));
}

void kvp_evpub_stats(struct kvp_evpub *p, struct kvp_evpub_stats *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	st->next_seq = p->next_seq;
	pthread_mutex_unlock(&p->mu);
}

/* ---- open and close ------------------------------------------------------------------ */

static void *bound_socket(void *ctx, int type, const char *endpoint, int hwm, const char *what,
			  char *err, size_t err_len)
{
	void *s = zmq_socket(ctx, type);
	int linger = 1000, one = 1;

	if (!s) {
		snprintf(err, err_len, "%s socket: %s", what, zmq_strerror(zmq_errno()));
		return NULL;
	}
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	if (type == ZMQ_ROUTER)
		zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
	if (zmq_bind(s, endpoint) != 0) {
		snprintf(err, err_len, "%s endpoint '%s': %s", what, endpoint,
			 zmq_strerror(zmq_errno()));
		zmq_close(s);
		return NULL;
	}
	return s;
}

static void free_all(struct kvp_evpub *p)
{
	if (p->pub)
		zmq_close(p->pub);
	if (p->router)
		zmq_close(p->router);
	if (p->ctx)
		zmq_ctx_term(p->ctx);
	if (p->efd >= 0)
		close(p->efd);
	for (uint32_t i = 0; p->ring && i < p->cap; i++)
		free(p->ring[i].buf);
	free(p->ring);
	free(p->topic);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

int kvp_evpub_open(const struct kvp_evpub_config *cfg, struct kvp_evpub **out, char *err,
		   size_t err_len)
{
	struct kvp_evpub *p;
	int hwm = cfg->hwm ? (int)cfg->hwm : 100000;

	*out = NULL;
	snprintf(err, err_len, "out of memory");
	if (!cfg->endpoint || !cfg->topic || cfg->buffer == 0) {
		snprintf(err, err_len, "an endpoint, a topic and a buffer of 1 or more");
		return KVP_EINVAL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return KVP_ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	p->cap = cfg->buffer;
	p->ring = calloc(p->cap, sizeof(*p->ring));
	p->topic = strdup(cfg->topic);
	p->ctx = zmq_ctx_new();
	if (p->efd < 0 || !p->ring || !p->topic || !p->ctx) {
		free_all(p);
		return KVP_ENOMEM;
	}
	p->pub = bound_socket(p->ctx, ZMQ_PUB, cfg->endpoint, hwm, "events", err, err_len);
	if (p->pub && cfg->replay_endpoint)
		p->router = bound_socket(p->ctx, ZMQ_ROUTER, cfg->replay_endpoint,
					 (int)(p->cap < 1000000 ? 2 * p->cap + 16 : 2000016),
					 "replay", err, err_len);
	if (!p->pub || (cfg->replay_endpoint && !p->router)) {
		free_all(p);
		return KVP_EINVAL;
	}
	if (pthread_create(&p->thread, NULL, run, p) != 0) {
		snprintf(err, err_len, "cannot start the publisher thread");
		free_all(p);
		return KVP_EIO;
	}
	*out = p;
	return 0;
}

void kvp_evpub_close(struct kvp_evpub *p)
{
	uint64_t one = 1;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_mutex_unlock(&p->mu);
	(void)!write(p->efd, &one, sizeof(one));
	pthread_join(p->thread, NULL);
	free_all(p);
}
