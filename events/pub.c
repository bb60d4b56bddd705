/*
 * pub.c - the event publisher: batches queued by the loop, packed, sent and kept for
 * replays by a thread that owns the ZeroMQ sockets.
 *
 *   loop: submit(builder) / publish(bytes) ──lock──▶ pending list (sequence number
 *         assigned here), an empty builder back; the thread woken only when it sleeps
 *   thread: the whole pending list taken at once; each builder packed
 *           (kvp_evbatch_take), sent on PUB, kept in ring[seq % cap]; builders go
 *           back to a short free list
 *         zmq_poll(eventfd, ROUTER): a replay request [id, "", seq] gets every kept
 *         batch from seq on, [id, "", seq, payload] each, then [id, "", -1, ""]
 *
 * The loop's part is a few pointer moves under the mutex, so a busy thread never slows
 * it. When more than `buffer` batches wait (the thread a whole buffer behind), the
 * oldest waiting one is dropped, counted; its number is never sent, so subscribers see
 * the gap.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "kvp_be.h"
#include "kvp_events.h"
#include "kvp_evpub.h"

#define FREE_BUILDERS 8
#define KVP_EVPUB_GATHER_NS 4000000   /* 4 ms */

struct pending {
	struct pending *next;
	uint64_t seq;
	struct kvp_evbatch *b;     /* to pack; or NULL and: */
	uint8_t *buf;              /* packed bytes */
	size_t len;
	uint32_t n_events;
};

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
	uint32_t cap;
	struct slot *ring;         /* the thread's: the last cap batches sent */
	uint64_t sent_end;         /* the thread's: batches below this were sent */
	pthread_mutex_t mu;        /* guards everything below */
	struct pending *head, **tail;
	uint32_t n_pending;
	struct kvp_evbatch *free[FREE_BUILDERS];
	unsigned n_free;
	uint64_t next_seq;
	bool sleeping;             /* the thread waits in zmq_poll with nothing pending */
	bool stop;
	struct kvp_evpub_stats st;
};

static double wall_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the thread: sending ------------------------------------------------------------ */

/* Keep a sent batch for replays; the one it replaces is freed. */
static void keep(struct kvp_evpub *p, uint64_t seq, uint8_t *buf, size_t len)
{
	struct slot *s = &p->ring[seq % p->cap];

	free(s->buf);
	*s = (struct slot){ .seq = seq, .buf = buf, .len = len };
	p->sent_end = seq + 1;
}

static bool send_batch(struct kvp_evpub *p, uint64_t seq, const uint8_t *buf, size_t len)
{
	uint8_t seq8[8];

	kvp_be_put_u64(seq8, seq);
	return zmq_send(p->pub, p->topic, strlen(p->topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	       zmq_send(p->pub, seq8, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	       zmq_send(p->pub, buf, len, ZMQ_DONTWAIT) >= 0;
}

/* A builder done with: onto the free list, or freed. */
static void recycle(struct kvp_evpub *p, struct kvp_evbatch *b)
{
	if (!b)
		return;
	kvp_evbatch_reset(b);
	pthread_mutex_lock(&p->mu);
	if (p->n_free < FREE_BUILDERS) {
		p->free[p->n_free++] = b;
		b = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	kvp_evbatch_destroy(b);
}

/* Pack, send and keep every pending batch, oldest first. */
static void send_pending(struct kvp_evpub *p)
{
	struct pending *list;

	pthread_mutex_lock(&p->mu);
	list = p->head;
	p->head = NULL;
	p->tail = &p->head;
	p->n_pending = 0;
	pthread_mutex_unlock(&p->mu);
	while (list) {
		struct pending *x = list;
		bool packed = true, sent = false;

		list = x->next;
		if (x->b)
			packed = kvp_evbatch_take(x->b, wall_seconds(), &x->buf, &x->len) == 0;
		recycle(p, x->b);
		if (packed) {
			sent = send_batch(p, x->seq, x->buf, x->len);
			keep(p, x->seq, x->buf, x->len);
		}
		pthread_mutex_lock(&p->mu);
		if (sent)
			p->st.sent++;
		else
			p->st.dropped++;
		pthread_mutex_unlock(&p->mu);
		free(x);
	}
}

/* ---- the thread: replays ------------------------------------------------------------ */

/* One reply message to a replay client: [id, "", seq8, payload]. */
static bool reply(struct kvp_evpub *p, const zmq_msg_t *id, const uint8_t seq8[8],
		  const uint8_t *buf, size_t len)
{
	return zmq_send(p->router, zmq_msg_data((zmq_msg_t *)id), zmq_msg_size((zmq_msg_t *)id),
			ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	       zmq_send(p->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	       zmq_send(p->router, seq8, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
	       zmq_send(p->router, buf, len, ZMQ_DONTWAIT) >= 0;
}

/* Every kept batch from start on, then the end marker. */
static void replay_from(struct kvp_evpub *p, const zmq_msg_t *id, uint64_t start)
{
	const uint64_t end = p->sent_end;
	uint64_t seq = end > p->cap && start < end - p->cap ? end - p->cap : start, n = 0;
	uint8_t seq8[8];
	bool ok = true;

	for (; ok && seq < end; seq++) {
		const struct slot *s = &p->ring[seq % p->cap];

		if (!s->buf || s->seq != seq)
			continue;   /* dropped before it was sent */
		kvp_be_put_u64(seq8, seq);
		ok = reply(p, id, seq8, s->buf, s->len);
		n += ok;
	}
	if (ok) {
		memset(seq8, 0xff, 8);   /* -1: the end */
		ok = reply(p, id, seq8, (const uint8_t *)"", 0);
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
		if (n == 3 && zmq_msg_size(&f[1]) == 0 && zmq_msg_size(&f[2]) == 8) {
			replay_from(p, &f[0], kvp_be_get_u64(zmq_msg_data(&f[2])));
		} else {
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

	for (;;) {
		bool stop, idle;
		uint64_t v;

		send_pending(p);
		pthread_mutex_lock(&p->mu);
		stop = p->stop;
		idle = p->head == NULL;
		p->sleeping = idle && !stop;
		pthread_mutex_unlock(&p->mu);
		if (stop && idle)
			break;
		if (idle && zmq_poll(items, p->router ? 2 : 1, -1) < 0 && errno != EINTR)
			break;
		if (items[0].revents & ZMQ_POLLIN) {
			(void)!read(p->efd, &v, sizeof(v));
			/* woken for a batch: let those of the next moments join it in one pass */
			nanosleep(&(struct timespec){ .tv_nsec = KVP_EVPUB_GATHER_NS }, NULL);
		}
		pthread_mutex_lock(&p->mu);
		p->sleeping = false;
		pthread_mutex_unlock(&p->mu);
		if (p->router && (items[1].revents & ZMQ_POLLIN))
			serve_replays(p);
		items[0].revents = items[1].revents = 0;
	}
	return NULL;
}

/* ---- the loop's side ----------------------------------------------------------------- */

/* Queue x (its seq assigned here); wake the thread if it sleeps. */
static void enqueue(struct kvp_evpub *p, struct pending *x, uint32_t n_events)
{
	struct pending *drop = NULL;
	uint64_t one = 1;
	bool wake;

	pthread_mutex_lock(&p->mu);
	x->seq = p->next_seq++;
	x->next = NULL;
	*p->tail = x;
	p->tail = &x->next;
	if (++p->n_pending > p->cap) {   /* the thread a whole buffer behind */
		drop = p->head;
		p->head = drop->next;
		p->n_pending--;
		p->st.dropped++;
	}
	p->st.batches++;
	p->st.events += n_events;
	wake = p->sleeping;
	p->sleeping = false;
	pthread_mutex_unlock(&p->mu);
	if (drop) {
		kvp_evbatch_destroy(drop->b);
		free(drop->buf);
		free(drop);
	}
	if (wake)
		(void)!write(p->efd, &one, sizeof(one));
}

void kvp_evpub_publish(struct kvp_evpub *p, uint8_t *buf, size_t len, uint32_t n_events)
{
	struct pending *x = calloc(1, sizeof(*x));

	if (!x) {
		free(buf);
		pthread_mutex_lock(&p->mu);
		p->next_seq++;   /* a gap subscribers see */
		p->st.batches++;
		p->st.dropped++;
		pthread_mutex_unlock(&p->mu);
		return;
	}
	x->buf = buf;
	x->len = len;
	enqueue(p, x, n_events);
}

struct kvp_evbatch *kvp_evpub_submit(struct kvp_evpub *p, struct kvp_evbatch *b)
{
	struct pending *x = calloc(1, sizeof(*x));
	struct kvp_evbatch *fresh = NULL;

	pthread_mutex_lock(&p->mu);
	if (p->n_free)
		fresh = p->free[--p->n_free];
	pthread_mutex_unlock(&p->mu);
	if (!fresh && kvp_evbatch_create_like(b, &fresh) != 0)
		fresh = NULL;
	if (!x || !fresh) {
		free(x);
		if (fresh)
			recycle(p, fresh);
		return NULL;   /* b stays the caller's, its events kept */
	}
	x->b = b;
	enqueue(p, x, (uint32_t)kvp_evbatch_events(b));
	return fresh;
}

void kvp_evpub_stats(struct kvp_evpub *p, struct kvp_evpub_stats *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	st->next_seq = p->next_seq;
	pthread_mutex_unlock(&p->mu);
}

/* ---- open and close ------------------------------------------------------------------ */

bool kvp_ev_endpoint_binds(const char *endpoint)
{
	return strchr(endpoint, '*') || strstr(endpoint, "::") ||
	       strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0;
}

/* A socket of type on endpoint: bound, or (PUB to a host) connected. */
static void *bound_socket(void *ctx, int type, const char *endpoint, int hwm, const char *what,
			  char *err, size_t err_len)
{
	bool bind = type == ZMQ_ROUTER || kvp_ev_endpoint_binds(endpoint);
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
	if ((bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint)) != 0) {
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
	while (p->head) {
		struct pending *x = p->head;

		p->head = x->next;
		kvp_evbatch_destroy(x->b);
		free(x->buf);
		free(x);
	}
	for (unsigned i = 0; i < p->n_free; i++)
		kvp_evbatch_destroy(p->free[i]);
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
	p->tail = &p->head;
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
