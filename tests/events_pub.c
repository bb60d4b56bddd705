/*
 * events_pub.c - the publisher (kvp_evpub_*) through real ZeroMQ sockets on ipc://
 * endpoints in a temporary directory: a SUB receives [topic, seq (u64 BE), payload] for
 * every batch, numbered from 0, in order; a DEALER's replay request ["", seq] gets the
 * batches still buffered from seq on, then the end marker (seq all ones, empty
 * payload); the ring keeps the last `buffer` batches; close sends what is queued; bad
 * endpoints and configurations are refused with a reason; the stats count all of it.
 *
 * One of the files of test_events; see events_unit.c.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "kvp_events.h"
#include "kvp_evpub.h"

/* ---- the publisher -------------------------------------------------------------------------- */

struct pubt {
	char dir[64];
	char ep[128], rep[128];
	void *ctx;
};

/* This test's directory (each test runs in a process of its own), removed by the
 * suite's fini even when the test failed half-way. */
static char test_dir[64];

static void dir_remove(void)
{
	char path[160];

	if (!test_dir[0])
		return;
	snprintf(path, sizeof(path), "%s/pub", test_dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/replay", test_dir);
	unlink(path);
	rmdir(test_dir);
	test_dir[0] = 0;
}

TestSuite(evpub, .fini = dir_remove);

static void pubt_init(struct pubt *t)
{
	strcpy(t->dir, "/tmp/kvp-evpub-XXXXXX");
	cr_assert_not_null(mkdtemp(t->dir));
	strcpy(test_dir, t->dir);
	snprintf(t->ep, sizeof(t->ep), "ipc://%s/pub", t->dir);
	snprintf(t->rep, sizeof(t->rep), "ipc://%s/replay", t->dir);
	t->ctx = zmq_ctx_new();
	cr_assert_not_null(t->ctx);
}

static void pubt_fini(struct pubt *t)
{
	zmq_ctx_term(t->ctx);
	dir_remove();
}

static void *zsock(struct pubt *t, int type, const char *ep)
{
	void *s = zmq_socket(t->ctx, type);
	int timeout = 5000, linger = 0;

	cr_assert_not_null(s);
	zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
	if (type == ZMQ_SUB)
		cr_assert_eq(zmq_setsockopt(s, ZMQ_SUBSCRIBE, "kv", 2), 0);
	cr_assert_eq(zmq_connect(s, ep), 0, "connect %s: %s", ep, zmq_strerror(zmq_errno()));
	return s;
}

/* Receive one frame into buf (room cap); its length, or -1 on timeout. *more: more
 * frames follow. */
static int zrecv(void *s, void *buf, size_t cap, bool *more)
{
	int n = zmq_recv(s, buf, cap, 0), m = 0;
	size_t sz = sizeof(m);

	if (n < 0)
		return -1;
	cr_assert_leq((size_t)n, cap, "frame of %d bytes truncated", n);
	zmq_getsockopt(s, ZMQ_RCVMORE, &m, &sz);
	*more = m != 0;
	return n;
}

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* Batch k's payload: distinct bytes of a length that varies with k. */
static size_t payload(uint32_t k, uint8_t *out)
{
	size_t len = 1 + (k * 37) % 300;

	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)(k * 131 + i);
	return len;
}

static void publish_k(struct kvp_evpub *p, uint32_t k)
{
	uint8_t tmp[512], *buf;
	size_t len = payload(k, tmp);

	buf = malloc(len);
	cr_assert_not_null(buf);
	memcpy(buf, tmp, len);
	kvp_evpub_publish(p, buf, len, k % 5);
}

/* Receive [topic, seq, payload] on SUB and check it is batch seq's. false: timeout. */
static bool sub_recv(void *sub, uint64_t *seq)
{
	uint8_t topic[16], s8[16], pl[512], want[512];
	bool more;
	int n = zrecv(sub, topic, sizeof(topic), &more);

	if (n < 0)
		return false;
	cr_assert_eq(n, 2);
	cr_assert_eq(memcmp(topic, "kv", 2), 0);
	cr_assert(more);
	cr_assert_eq(zrecv(sub, s8, sizeof(s8), &more), 8, "the sequence number: 8 bytes");
	cr_assert(more);
	*seq = be64(s8);
	n = zrecv(sub, pl, sizeof(pl), &more);
	cr_assert_not(more, "three frames");
	cr_assert_eq((size_t)n, payload((uint32_t)*seq, want), "batch %llu's length",
		     (unsigned long long)*seq);
	cr_assert_eq(memcmp(pl, want, (size_t)n), 0, "batch %llu's bytes",
		     (unsigned long long)*seq);
	return true;
}

/* Ask for a replay from seq; the sequence numbers that come, into got (the end marker
 * not included); their count. */
static size_t replay(void *dealer, uint64_t from, uint64_t *got, size_t max)
{
	uint8_t s8[8], f[512], want[512];
	size_t n = 0;
	bool more;

	for (int i = 7; i >= 0; i--, from >>= 8)
		s8[i] = (uint8_t)from;
	cr_assert_eq(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
	cr_assert_eq(zmq_send(dealer, s8, 8, 0), 8);
	for (;;) {
		int len;
		uint64_t seq;

		cr_assert_eq(zrecv(dealer, f, sizeof(f), &more), 0, "the empty delimiter");
		cr_assert(more);
		cr_assert_eq(zrecv(dealer, f, sizeof(f), &more), 8, "the sequence number");
		cr_assert(more);
		seq = be64(f);
		len = zrecv(dealer, f, sizeof(f), &more);
		cr_assert_not(more);
		if (seq == UINT64_MAX) {
			cr_assert_eq(len, 0, "the end marker's payload is empty");
			return n;
		}
		cr_assert_eq((size_t)len, payload((uint32_t)seq, want));
		cr_assert_eq(memcmp(f, want, (size_t)len), 0, "replayed batch %llu's bytes",
			     (unsigned long long)seq);
		cr_assert_lt(n, max);
		got[n++] = seq;
	}
}

static void stats(struct kvp_evpub *p, struct kvp_evpub_stats *st)
{
	memset(st, 0xee, sizeof(*st));
	kvp_evpub_stats(p, st);
}

/* Wait until the thread has served `replays` replay requests in all (it counts one
 * after sending its end marker). */
static void wait_replays(struct kvp_evpub *p, uint64_t replays, struct kvp_evpub_stats *st)
{
	for (int i = 0; i < 5000; i++) {
		stats(p, st);
		if (st->replays >= replays)
			return;
		usleep(1000);
	}
	cr_assert_fail("%llu replays counted, want %llu", (unsigned long long)st->replays,
		       (unsigned long long)replays);
}

/* Wait until the thread has sent (or dropped) every batch published. */
static void wait_sent(struct kvp_evpub *p)
{
	struct kvp_evpub_stats st;

	for (int i = 0; i < 5000; i++) {
		stats(p, &st);
		if (st.sent + st.dropped == st.batches)
			return;
		usleep(1000);
	}
	cr_assert_fail("the publisher thread sent %llu of %llu", (unsigned long long)st.sent,
		       (unsigned long long)st.batches);
}

Test(evpub, publish_subscribe_and_replay)
{
	struct pubt t;
	struct kvp_evpub_config cfg = { 0 };
	struct kvp_evpub *p = NULL;
	struct kvp_evpub_stats st;
	char err[256] = "";
	void *sub, *dealer;
	uint64_t seq, got[256], events = 0;
	uint32_t k = 0, first = 0;
	bool joined = false;

	pubt_init(&t);
	cfg.endpoint = t.ep;
	cfg.replay_endpoint = t.rep;
	cfg.topic = "kv";
	cfg.buffer = 256;   /* holds every batch of the test */
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), 0, "open: %s", err);
	stats(p, &st);
	cr_assert_eq(st.next_seq, 0);
	cr_assert_eq(st.batches, 0);
	sub = zsock(&t, ZMQ_SUB, t.ep);
	/* A subscription takes a moment to reach PUB: publish until one arrives. Every
	 * batch that arrives must carry its own number, counted from 0. */
	{
		int timeout = 20;

		zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	}
	for (; k < 200 && !joined; k++) {
		publish_k(p, k);
		events += k % 5;
		joined = sub_recv(sub, &seq);
	}
	cr_assert(joined, "no batch reached the subscriber");
	first = (uint32_t)seq;
	cr_assert_lt(first, k);
	for (uint64_t s = seq + 1; s < k; s++) {
		cr_assert(sub_recv(sub, &seq), "batch %llu", (unsigned long long)s);
		cr_assert_eq(seq, s, "in order");
	}
	{
		int timeout = 5000;

		zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	}
	/* now every batch arrives, in order */
	for (uint32_t i = 0; i < 10; i++, k++) {
		publish_k(p, k);
		events += k % 5;
	}
	for (uint32_t s = k - 10; s < k; s++) {
		cr_assert(sub_recv(sub, &seq), "batch %u", s);
		cr_assert_eq(seq, s);
	}
	wait_sent(p);
	stats(p, &st);
	cr_assert_eq(st.batches, k);
	cr_assert_eq(st.next_seq, k);
	cr_assert_eq(st.sent, k);
	cr_assert_eq(st.dropped, 0);
	cr_assert_eq(st.events, events);

	/* replay: every batch from 0 (the buffer holds all), then from k - 3, then from
	 * the future (only the end marker) */
	dealer = zsock(&t, ZMQ_DEALER, t.rep);
	cr_assert_eq(replay(dealer, 0, got, 256), k);
	for (uint32_t i = 0; i < k; i++)
		cr_assert_eq(got[i], i);
	cr_assert_eq(replay(dealer, k - 3, got, 64), 3);
	cr_assert_eq(got[0], k - 3);
	cr_assert_eq(replay(dealer, k + 100, got, 64), 0);
	/* a malformed request is counted and answered with nothing */
	cr_assert_eq(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
	cr_assert_eq(zmq_send(dealer, "abc", 3, 0), 3);
	cr_assert_eq(zmq_send(dealer, "x", 1, ZMQ_SNDMORE), 1);
	cr_assert_eq(zmq_send(dealer, "12345678", 8, 0), 8);
	cr_assert_eq(replay(dealer, k - 1, got, 64), 1, "the next reply is the next request's");
	cr_assert_eq(got[0], k - 1);
	wait_replays(p, 4, &st);
	cr_assert_eq(st.replays, 4);
	cr_assert_eq(st.replayed, k + 3 + 0 + 1);
	cr_assert_eq(st.replay_bad, 2);
	cr_assert_eq(st.replay_cut, 0);

	/* close sends what is still queued */
	for (uint32_t i = 0; i < 5; i++, k++)
		publish_k(p, k);
	kvp_evpub_close(p);
	for (uint32_t s = k - 5; s < k; s++) {
		cr_assert(sub_recv(sub, &seq), "batch %u, queued at close", s);
		cr_assert_eq(seq, s);
	}
	zmq_close(sub);
	zmq_close(dealer);
	pubt_fini(&t);
}

Test(evpub, replay_starts_at_the_oldest_kept)
{
	struct pubt t;
	struct kvp_evpub_config cfg = { 0 };
	struct kvp_evpub *p = NULL;
	struct kvp_evpub_stats st;
	char err[256] = "";
	uint64_t got[16];
	void *dealer;

	pubt_init(&t);
	cfg.endpoint = t.ep;
	cfg.replay_endpoint = t.rep;
	cfg.topic = "kv";
	cfg.buffer = 4;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), 0, "open: %s", err);
	/* no subscriber: PUB sends into the void, and the ring keeps the last 4 */
	for (uint32_t k = 0; k < 10; k++) {
		publish_k(p, k);
		wait_sent(p);
	}
	dealer = zsock(&t, ZMQ_DEALER, t.rep);
	cr_assert_eq(replay(dealer, 0, got, 16), 4);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(got[i], 6 + i, "replayed %llu want %u", (unsigned long long)got[i],
			     6 + i);
	cr_assert_eq(replay(dealer, 5, got, 16), 4);
	cr_assert_eq(got[0], 6);
	cr_assert_eq(replay(dealer, 8, got, 16), 2);
	cr_assert_eq(got[0], 8);
	cr_assert_eq(got[1], 9);
	wait_replays(p, 3, &st);
	cr_assert_eq(st.batches, 10);
	cr_assert_eq(st.sent, 10);
	cr_assert_eq(st.dropped, 0);
	cr_assert_eq(st.replays, 3);
	cr_assert_eq(st.replayed, 10);
	cr_assert_eq(st.next_seq, 10);
	kvp_evpub_close(p);
	zmq_close(dealer);
	pubt_fini(&t);
}

Test(evpub, bad_endpoints_and_config)
{
	struct pubt t;
	struct kvp_evpub_config cfg = { .topic = "kv", .buffer = 8 };
	struct kvp_evpub *p = (struct kvp_evpub *)&p;
	char err[256], bad_dir[160];

	pubt_init(&t);
	cfg.endpoint = "nonsense";
	err[0] = 0;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), KVP_EINVAL);
	cr_assert_null(p);
	cr_assert(strstr(err, "nonsense"), "err names the endpoint: '%s'", err);

	snprintf(bad_dir, sizeof(bad_dir), "ipc://%s/no/such/dir/pub", t.dir);
	cfg.endpoint = bad_dir;
	err[0] = 0;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), KVP_EINVAL);
	cr_assert_gt(strlen(err), 0);

	/* a good PUB endpoint and a bad replay one */
	cfg.endpoint = t.ep;
	cfg.replay_endpoint = "tcp://127.0.0.1:notaport";
	err[0] = 0;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), KVP_EINVAL);
	cr_assert(strstr(err, "replay"), "err says which endpoint: '%s'", err);

	cfg.replay_endpoint = NULL;
	cfg.buffer = 0;
	err[0] = 0;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), KVP_EINVAL);
	cr_assert_gt(strlen(err), 0);
	cfg.buffer = 8;
	cfg.topic = NULL;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), KVP_EINVAL);

	/* and after all that, the endpoint is free to bind */
	cfg.topic = "kv";
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), 0, "open: %s", err);
	kvp_evpub_close(p);
	kvp_evpub_close(NULL);
	pubt_fini(&t);
}

/* Publish raw batches 0, 1, ... until the subscriber gets one, then take the rest of
 * them; returns how many were published. */
static uint32_t join(struct kvp_evpub *p, void *sub)
{
	int timeout = 20;
	uint64_t seq;
	uint32_t k = 0;
	bool joined = false;

	zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	for (; k < 200 && !joined; k++) {
		publish_k(p, k);
		joined = sub_recv(sub, &seq);
	}
	cr_assert(joined, "no batch reached the subscriber");
	for (uint64_t s = seq + 1; s < k; s++) {
		cr_assert(sub_recv(sub, &seq), "batch %llu", (unsigned long long)s);
		cr_assert_eq(seq, s);
	}
	timeout = 5000;
	zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	return k;
}

Test(evpub, submitted_builders_are_packed_and_replaced)
{
	/* Builders go to the publisher's thread and come back empty, like the first (the
	 * free list's ones too); each arrives as one batch, its ts the wall clock. */
	const uint32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct pubt t;
	struct kvp_evpub_config cfg = { .topic = "kv", .buffer = 256 };
	struct kvp_evpub *p = NULL;
	struct kvp_evpub_stats st;
	struct kvp_evbatch *b = NULL;
	struct kvp_evdecoder *d = NULL;
	char err[256] = "";
	uint64_t events;
	uint32_t k;
	void *sub;

	pubt_init(&t);
	cfg.endpoint = t.ep;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), 0, "open: %s", err);
	cr_assert_eq(kvp_evdecoder_create(&d), 0);
	sub = zsock(&t, ZMQ_SUB, t.ep);
	k = join(p, sub);
	stats(p, &st);
	events = st.events;
	cr_assert_eq(kvp_evbatch_create(KVP_EV_ARRAY, 4, &b), 0);
	for (uint32_t i = 0; i < 20; i++, k++) {
		struct kvp_evbatch *next;
		const struct kvp_ev *ev;
		uint8_t topic[8], s8[8], pl[4096];
		double ts;
		uint64_t bits = 0;
		bool more;
		size_t n;
		int len;

		/* a chain of two, a removal: two events */
		cr_assert_eq(kvp_evbatch_stored(b, 100 + i, false, 0, tok, KVP_EV_GPU), 0);
		cr_assert_eq(kvp_evbatch_stored(b, 200 + i, true, 100 + i, tok + 4, KVP_EV_GPU), 0);
		cr_assert_eq(kvp_evbatch_removed(b, 7, KVP_EV_CPU), 0);
		cr_assert_eq(kvp_evbatch_events(b), 2);
		next = kvp_evpub_submit(p, b);
		cr_assert_not_null(next);
		cr_assert_neq(next, b);
		cr_assert_eq(kvp_evbatch_events(next), 0, "the builder back is empty");
		b = next;
		events += 2;

		cr_assert_eq(zrecv(sub, topic, sizeof(topic), &more), 2);
		cr_assert_eq(zrecv(sub, s8, sizeof(s8), &more), 8);
		cr_assert_eq(be64(s8), k, "batch %u's number", k);
		len = zrecv(sub, pl, sizeof(pl), &more);
		cr_assert_gt(len, 10);
		cr_assert_eq(pl[0], 0x93);
		cr_assert_eq(pl[1], 0xcb);
		for (int j = 0; j < 8; j++)
			bits = bits << 8 | pl[2 + j];
		memcpy(&ts, &bits, 8);
		cr_assert(ts > (double)time(NULL) - 60 && ts < (double)time(NULL) + 60,
			  "ts %f is not the wall clock", ts);
		cr_assert_eq(kvp_evdecode(d, pl, (size_t)len, &ev, &n), 0);
		cr_assert_eq(n, 2);
		cr_assert_eq(ev[0].type, KVP_EV_STORED);
		cr_assert_eq(ev[0].n_hashes, 2);
		cr_assert_eq(ev[0].hashes[1], 200 + i);
		cr_assert_eq(ev[0].block_size, 4);
		cr_assert_eq(memcmp(ev[0].tokens, tok, sizeof(tok)), 0);
		cr_assert_eq(ev[1].type, KVP_EV_REMOVED);
		cr_assert_eq(ev[1].medium, KVP_EV_CPU);
		/* the array form: the event is an array, not a map */
		cr_assert_eq(pl[11] & 0xf0, 0x90, "the builder back keeps the encoding");
	}
	/* an empty builder is an empty batch */
	b = kvp_evpub_submit(p, b);
	cr_assert_not_null(b);
	{
		uint64_t seq;
		uint8_t topic[8], s8[8], pl[64];
		bool more;

		cr_assert_eq(zrecv(sub, topic, sizeof(topic), &more), 2);
		cr_assert_eq(zrecv(sub, s8, sizeof(s8), &more), 8);
		seq = be64(s8);
		cr_assert_eq(seq, k);
		cr_assert_eq(zrecv(sub, pl, sizeof(pl), &more), 12);
		cr_assert_eq(pl[10], 0x90);
	}
	k++;
	wait_sent(p);
	stats(p, &st);
	cr_assert_eq(st.batches, k);
	cr_assert_eq(st.sent, k);
	cr_assert_eq(st.events, events);
	kvp_evbatch_destroy(b);
	kvp_evpub_close(p);
	kvp_evdecoder_destroy(d);
	zmq_close(sub);
	pubt_fini(&t);
}

Test(evpub, overflow_drops_the_oldest_waiting)
{
	/* A buffer of 2 and 3000 batches as fast as the loop can: some may wait for the
	 * thread more than 2 deep and go, counted. Whatever went, every batch is sent or
	 * dropped, the numbers are 0..2999, and the newest is never the one dropped: a
	 * replay returns the last two sent, 2999 last. */
	struct pubt t;
	struct kvp_evpub_config cfg = { .topic = "kv", .buffer = 2 };
	struct kvp_evpub *p = NULL;
	struct kvp_evpub_stats st;
	char err[256] = "";
	uint64_t got[4];
	size_t n;
	void *dealer;

	pubt_init(&t);
	cfg.endpoint = t.ep;
	cfg.replay_endpoint = t.rep;
	cr_assert_eq(kvp_evpub_open(&cfg, &p, err, sizeof(err)), 0, "open: %s", err);
	for (uint32_t k = 0; k < 3000; k++)
		publish_k(p, k);
	wait_sent(p);
	stats(p, &st);
	cr_assert_eq(st.batches, 3000);
	cr_assert_eq(st.next_seq, 3000);
	cr_assert_eq(st.sent + st.dropped, 3000);
	dealer = zsock(&t, ZMQ_DEALER, t.rep);
	n = replay(dealer, 0, got, 4);
	cr_assert(n >= 1 && n <= 2, "replayed %zu", n);
	cr_assert_eq(got[n - 1], 2999, "the newest batch was sent");
	if (n == 2)
		cr_assert_lt(got[0], 2999);
	kvp_evpub_close(p);
	zmq_close(dealer);
	pubt_fini(&t);
}
