/*
 * test_daemon.c - the real kvprefixd on a temporary socket, driven through libkvprefix
 * (and raw frames where a misbehaving client is the point).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon_harness.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define B 16

static struct kvp_daemon d;

static void start(void)
{
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "4096",
			       "--max-tokens", "65536", "--max-frame-bytes", "1048576", NULL };
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

/* The daemon must exit 0 on SIGTERM: under sanitizers a report makes it exit non-zero. */
static void stop(void)
{
	if (d.pid > 0) {
		int st = kvp_daemon_stop(&d);
		cr_expect_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	}
}

static struct kvp_client *conn(void)
{
	struct kvp_client *c = NULL;
	int rc = kvp_client_connect(d.socket, &c);

	cr_assert_eq(rc, 0, "connect: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_set_timeout_ms(c, 10000), 0);
	return c;
}

static void fill(uint32_t *t, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		t[i] = (uint32_t)((seed * 2654435761u) ^ (uint32_t)(i * 40503u)) % 32000u;
}

/* A numeric field of the daemon's STATS object. */
static double stat_of(struct kvp_client *c, const char *key)
{
	char *json = NULL;
	cJSON *o, *v;
	double x;

	cr_assert_eq(kvp_client_stats(c, &json), 0);
	o = cJSON_Parse(json);
	cr_assert_not_null(o, "STATS is not JSON: %s", json);
	v = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert(cJSON_IsNumber(v), "STATS has no number '%s': %s", key, json);
	x = v->valuedouble;
	cJSON_Delete(o);
	free(json);
	return x;
}

static void assert_pool_balanced(struct kvp_client *c)
{
	double total = stat_of(c, "blocks_total"), f = stat_of(c, "blocks_free");
	double cached = stat_of(c, "blocks_cached"), pinned = stat_of(c, "blocks_pinned");

	cr_assert_eq(f + cached + pinned, total, "free %g + cached %g + pinned %g != total %g",
		     f, cached, pinned, total);
}

/* Poll until blocks_pinned reaches want (a closed connection is released by the loop). */
static void wait_pinned(struct kvp_client *c, double want)
{
	for (int i = 0; i < 500; i++) {
		if (stat_of(c, "blocks_pinned") == want)
			return;
		usleep(10000);
	}
	cr_assert_fail("blocks_pinned stayed at %g, want %g", stat_of(c, "blocks_pinned"), want);
}

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct timeval tv = { 10, 0 };

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.socket);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
	cr_assert_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Read one frame; returns its header, payload into buf. */
static struct kvp_frame_hdr raw_recv(int fd, uint8_t *buf, size_t cap)
{
	uint8_t hb[KVP_HDR_SIZE];
	struct kvp_frame_hdr h;
	size_t got = 0;

	while (got < sizeof(hb)) {
		ssize_t r = recv(fd, hb + got, sizeof(hb) - got, 0);
		cr_assert_gt(r, 0, "connection closed before a reply header");
		got += (size_t)r;
	}
	cr_assert_eq(kvp_hdr_decode(hb, sizeof(hb), (uint32_t)cap, &h), 0);
	for (got = 0; got < h.len;) {
		ssize_t r = recv(fd, buf + got, h.len - got, 0);
		cr_assert_gt(r, 0);
		got += (size_t)r;
	}
	return h;
}

static void raw_expect_error_then_close(int fd, uint32_t code)
{
	uint8_t buf[4096];
	struct kvp_frame_hdr h = raw_recv(fd, buf, sizeof(buf));
	struct kvp_error e;
	char sink;

	cr_assert_eq(h.type, KVP_T_ERROR);
	cr_assert_eq(kvp_error_decode(buf, h.len, &e), 0);
	cr_assert_eq(e.code, code, "ERROR code %u (%.*s), want %u", e.code, e.msg_len, e.msg, code);
	cr_assert_gt(e.msg_len, 0, "an ERROR carries a message");
	cr_assert_eq(recv(fd, &sink, 1, 0), 0, "the daemon should close after a fatal error");
}

TestSuite(daemon, .init = start, .fini = stop, .timeout = 60);

Test(daemon, hello_lookup_insert_release)
{
	struct kvp_client *c = conn();
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[100];

	cr_assert_eq(kvp_client_hello(c, NULL, NULL, &info), 0);
	cr_assert_eq(info.block_tokens, B);
	cr_assert_eq(info.capacity_blocks, 4096);
	cr_assert_eq(info.index_only, 1);
	cr_assert_eq(info.tenant, getuid());
	fill(t, 100, 1);

	cr_assert_eq(kvp_client_lookup(c, t, 100, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0);
	cr_assert_eq(m.prompt_tokens, 100);
	cr_assert_eq(kvp_client_insert(c, t, 100, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 96, "only full blocks are cached");
	cr_assert_eq(m.new_blocks, 6);
	cr_assert_eq(m.n_blocks, 6);
	uint32_t ids[6];
	memcpy(ids, m.block_ids, sizeof(ids));

	cr_assert_eq(kvp_client_lookup(c, t, 100, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_eq(m.matched_tokens, 96);
	cr_assert_neq(m.lease, 0);
	cr_assert_arr_eq(m.block_ids, ids, sizeof(ids), "lookup names the inserted blocks");
	cr_assert_eq(stat_of(c, "blocks_pinned"), 6);
	assert_pool_balanced(c);
	uint32_t n = 0;
	cr_assert_eq(kvp_client_release(c, m.lease, &n), 0);
	cr_assert_eq(n, 6);
	cr_assert_eq(kvp_client_release(c, m.lease, NULL), KVP_ENOTFOUND,
		     "a lease is released once");
	cr_assert_gt(strlen(kvp_client_error(c)), 0);
	cr_assert_eq(stat_of(c, "blocks_pinned"), 0);

	/* a diverging suffix matches only the shared full blocks */
	t[40] ^= 1;
	cr_assert_eq(kvp_client_lookup(c, t, 100, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 32);
	cr_assert_eq(stat_of(c, "lookups"), 3);
	cr_assert_eq(stat_of(c, "hit_tokens"), 96 + 32);
	cr_assert_eq(stat_of(c, "query_tokens"), 300);
	kvp_client_close(c);
}

/* The HELLO reply to an offer of `offer`, in a version-1 header with no adapter or salt;
 * its payload into buf, its length returned. */
static uint32_t raw_hello(uint32_t offer, uint8_t *buf, size_t cap)
{
	uint8_t f[KVP_HDR_SIZE + 12] = { 0 };
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_HELLO, .req_id = 5, .len = 12 };
	int fd = raw_connect();

	kvp_hdr_encode(f, &h);
	f[KVP_HDR_SIZE] = (uint8_t)offer;
	raw_send(fd, f, sizeof(f));
	h = raw_recv(fd, buf, cap);
	close(fd);
	cr_assert_eq(h.type, KVP_T_HELLO | KVP_T_REPLY);
	cr_assert_eq(h.version, 1, "the reply keeps its request's header version");
	cr_assert_eq(h.req_id, 5);
	return h.len;
}

/* Offers of 1 and 2 get exactly the reply they always got; 3 adds the model's sizes,
 * 0 and 0 without a model. */
Test(daemon, hello_reply_of_versions_1_and_2_unchanged_version_3_adds_sizes_4_as_3)
{
	static const char name[] = "kvprefix";   /* the default index name */
	const uint32_t n = sizeof(name) - 1;
	uint8_t want[64], got[128];
	uint32_t len;

	for (uint32_t offer = 1; offer <= 5; offer++) {
		uint32_t v = offer < 4 ? offer : 4;

		/* written out field by field, as protocol.md's table has it */
		memset(want, 0, sizeof(want));
		want[0] = (uint8_t)v;
		want[4] = B;
		want[8] = 0x00, want[9] = 0x10;        /* capacity_blocks 4096 */
		want[14] = 0x01;                       /* max_tokens 65536 */
		want[16] = KVP_HELLO_INDEX_ONLY;
		for (int i = 0; i < 4; i++)
			want[20 + i] = (uint8_t)(getuid() >> (8 * i));
		want[24] = (uint8_t)n;
		memcpy(want + 26, name, n);            /* then vocab_size 0, ctx_tokens 0 */
		len = raw_hello(offer, got, sizeof(got));
		cr_assert_eq(len, 26 + n + (v >= 3 ? 8 : 0), "offer %u: %u bytes", offer, len);
		cr_assert_arr_eq(got, want, len, "offer %u: the reply differs", offer);
	}
}

Test(daemon, adapters_do_not_share_blocks)
{
	struct kvp_client *a = conn(), *b = conn();
	struct kvp_match m;
	uint32_t t[64];

	fill(t, 64, 2);
	cr_assert_eq(kvp_client_hello(b, "lora-7", NULL, NULL), 0);
	cr_assert_eq(kvp_client_insert(a, t, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 64);
	cr_assert_eq(kvp_client_lookup(b, t, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0, "another adapter's namespace must not match");
	cr_assert_eq(kvp_client_insert(b, t, 64, 0, &m), 0);
	cr_assert_eq(m.new_blocks, 4, "the adapter gets blocks of its own");
	cr_assert_eq(kvp_client_hello(b, "", "some-salt", NULL), KVP_EPERM,
		     "a salt is refused unless allowed");
	kvp_client_close(a);
	kvp_client_close(b);
}

struct worker {
	int idx;
	int failures;
	char why[256];
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct kvp_client *c = NULL;
	uint32_t shared[256], mine[512];
	struct kvp_match m;

	if (kvp_client_connect(d.socket, &c) != 0) {
		w->failures++;
		snprintf(w->why, sizeof(w->why), "connect");
		return NULL;
	}
	fill(shared, 256, 99);
	memcpy(mine, shared, sizeof(shared));
	fill(mine + 256, 256, 1000 + (uint32_t)w->idx);
	for (int round = 0; round < 200; round++) {
		size_t n = 256 + (size_t)(round % 16) * 16;
		if (kvp_client_insert(c, mine, n, 0, &m) || m.matched_tokens != n) {
			w->failures++;
			snprintf(w->why, sizeof(w->why), "insert round %d: %u of %zu", round,
				 m.matched_tokens, n);
			break;
		}
		if (kvp_client_lookup(c, mine, 512, KVP_LOOKUP_PIN, &m) || m.matched_tokens < n ||
		    m.lease == 0) {
			w->failures++;
			snprintf(w->why, sizeof(w->why), "lookup round %d: %u < %zu", round,
				 m.matched_tokens, n);
			break;
		}
		if (kvp_client_release(c, m.lease, NULL)) {
			w->failures++;
			snprintf(w->why, sizeof(w->why), "release round %d", round);
			break;
		}
	}
	kvp_client_close(c);
	return NULL;
}

Test(daemon, concurrent_clients)
{
	enum { N = 8 };
	pthread_t th[N];
	struct worker w[N];
	struct kvp_client *c;
	struct kvp_match m;
	uint32_t shared[256];

	for (int i = 0; i < N; i++) {
		w[i] = (struct worker){ .idx = i };
		cr_assert_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(w[i].failures, 0, "worker %d: %s", i, w[i].why);
	}
	c = conn();
	fill(shared, 256, 99);
	cr_assert_eq(kvp_client_lookup(c, shared, 256, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 256, "the shared prefix is cached once for everyone");
	cr_assert_eq(stat_of(c, "blocks_pinned"), 0);
	cr_assert_eq(stat_of(c, "tree_nodes"), 16 + N * 15, "rounds insert up to 31 blocks");
	assert_pool_balanced(c);
	kvp_client_close(c);
}

Test(daemon, disconnect_with_lease_unpins)
{
	struct kvp_client *a = conn(), *obs = conn();
	struct kvp_match m;
	uint32_t t[160];

	fill(t, 160, 3);
	cr_assert_eq(kvp_client_insert(a, t, 160, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_neq(m.lease, 0);
	cr_assert_eq(kvp_client_lookup(a, t, 160, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_eq(stat_of(obs, "blocks_pinned"), 10);
	cr_assert_eq(stat_of(obs, "leases_active"), 2);
	kvp_client_close(a);   /* two leases held, never released */
	wait_pinned(obs, 0);
	cr_assert_eq(stat_of(obs, "leases_active"), 0);
	cr_assert_eq(stat_of(obs, "blocks_cached"), 10);
	assert_pool_balanced(obs);
	kvp_client_close(obs);
}

Test(daemon, pool_full_of_pinned_blocks_caches_what_fits)
{
	struct kvp_client *c = conn();
	struct kvp_match m;
	static uint32_t t[65536];

	/* 4096 blocks of capacity; pin 4000, then ask for 200 more */
	fill(t, 65536, 4);
	cr_assert_eq(kvp_client_insert(c, t, 4000 * B, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_eq(m.matched_tokens, 4000 * B);
	fill(t, 65536, 5);
	cr_assert_eq(kvp_client_insert(c, t, 200 * B, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 96 * B, "only the 96 free blocks can be used");
	cr_assert_eq(stat_of(c, "insert_full"), 1);
	assert_pool_balanced(c);
	kvp_client_close(c);
}

Test(daemon, eviction_makes_room)
{
	struct kvp_client *c = conn();
	struct kvp_match m;
	static uint32_t t[3000 * B];

	for (uint32_t s = 0; s < 3; s++) {
		fill(t, 3000 * B, 10 + s);
		cr_assert_eq(kvp_client_insert(c, t, 3000 * B, 0, &m), 0);
		cr_assert_eq(m.matched_tokens, 3000 * B);
	}
	cr_assert_eq(stat_of(c, "evictions"), 3 * 3000 - 4096);
	/* the newest prompt is whole; the oldest lost its tail first (leaf-first) */
	cr_assert_eq(kvp_client_lookup(c, t, 3000 * B, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 3000 * B);
	fill(t, 3000 * B, 10);
	cr_assert_eq(kvp_client_lookup(c, t, 3000 * B, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0, "the least recently used prompt is gone");
	assert_pool_balanced(c);
	kvp_client_close(c);
}

Test(daemon, malformed_header_gets_error_and_close)
{
	struct kvp_client *other = conn();
	struct kvp_match m;
	uint32_t t[32];
	int fd = raw_connect();
	uint8_t junk[KVP_HDR_SIZE] = "GET / HTTP/1.1\r\n";

	raw_send(fd, junk, sizeof(junk));
	raw_expect_error_then_close(fd, (uint32_t)-KVP_EPROTO);
	close(fd);
	fill(t, 32, 6);
	cr_assert_eq(kvp_client_insert(other, t, 32, 0, &m), 0, "other clients are unaffected");
	cr_assert_eq(m.matched_tokens, 32);
	kvp_client_close(other);
}

Test(daemon, oversized_frame_refused_before_buffering)
{
	int fd = raw_connect();
	uint8_t hb[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_LOOKUP, .req_id = 7,
				   .len = 1048577 };

	kvp_hdr_encode(hb, &h);
	raw_send(fd, hb, sizeof(hb));   /* no payload follows: the header alone is refused */
	raw_expect_error_then_close(fd, (uint32_t)-KVP_ETOOBIG);
	close(fd);
}

Test(daemon, malformed_payload_and_bad_version)
{
	uint8_t f[KVP_HDR_SIZE + 12];
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_LOOKUP, .req_id = 1, .len = 12 };
	int fd = raw_connect();

	/* LOOKUP claims 5 tokens but carries 1 */
	kvp_hdr_encode(f, &h);
	memset(f + KVP_HDR_SIZE, 0, 12);
	f[KVP_HDR_SIZE + 4] = 5;
	raw_send(fd, f, sizeof(f));
	raw_expect_error_then_close(fd, (uint32_t)-KVP_EPROTO);
	close(fd);

	fd = raw_connect();
	h.len = 0;
	h.type = KVP_T_PING;
	kvp_hdr_encode(f, &h);
	f[4] = 9;   /* version */
	raw_send(fd, f, KVP_HDR_SIZE);
	raw_expect_error_then_close(fd, (uint32_t)-KVP_EVERSION);
	close(fd);
}

Test(daemon, truncated_frame_then_hangup)
{
	struct kvp_client *c = conn();
	uint8_t f[KVP_HDR_SIZE + 50] = { 0 };
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_INSERT, .req_id = 1, .len = 400 };

	for (int i = 0; i < 20; i++) {
		int fd = raw_connect();
		kvp_hdr_encode(f, &h);
		raw_send(fd, f, sizeof(f));
		close(fd);
	}
	cr_assert_eq(kvp_client_ping(c, "x", 1), 0, "the daemon is still serving");
	cr_assert(kvp_daemon_alive(&d));
	kvp_client_close(c);
}

Test(daemon, request_over_token_limit_keeps_connection)
{
	struct kvp_client *c = conn();
	struct kvp_match m;
	static uint32_t t[65537];

	cr_assert_eq(kvp_client_lookup(c, t, 65537, 0, &m), KVP_ETOOBIG);
	cr_assert(strstr(kvp_client_error(c), "65536") != NULL, "message names the limit: %s",
		  kvp_client_error(c));
	cr_assert_eq(kvp_client_lookup(c, t, 16, 0, &m), 0, "the connection is still usable");
	kvp_client_close(c);
}

/* Eight PINGs and a malformed header in one write: the PONGs come in order (gathered
 * into one write by the daemon), then the ERROR, then the close. */
Test(daemon, pipelined_requests_answered_in_order_up_to_a_fatal_error)
{
	int fd = raw_connect();
	uint8_t out[8 * (KVP_HDR_SIZE + 8) + KVP_HDR_SIZE], buf[256];
	size_t off = 0;

	for (uint32_t i = 0; i < 8; i++) {
		struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_PING, .req_id = 100 + i, .len = 8 };
		kvp_hdr_encode(out + off, &h);
		memcpy(out + off + KVP_HDR_SIZE, "pingpong", 8);
		out[off + KVP_HDR_SIZE] = (uint8_t)i;
		off += KVP_HDR_SIZE + 8;
	}
	memcpy(out + off, "GET / HTTP/1.1\r\n", KVP_HDR_SIZE);
	raw_send(fd, out, off + KVP_HDR_SIZE);
	for (uint32_t i = 0; i < 8; i++) {
		struct kvp_frame_hdr h = raw_recv(fd, buf, sizeof(buf));
		cr_assert_eq(h.type, KVP_T_PING | KVP_T_REPLY);
		cr_assert_eq(h.req_id, 100 + i);
		cr_assert_eq(h.len, 8);
		cr_assert_eq(buf[0], i);
	}
	raw_expect_error_then_close(fd, (uint32_t)-KVP_EPROTO);
	close(fd);
}

/* Frames of every size, from empty to over the read buffer's 256 KiB, written back to
 * back in chunks of random sizes (a header split anywhere, a frame's end and the next
 * one's start in one write): every reply comes back whole and in order. */
Test(daemon, frames_of_any_size_split_anywhere_answered_in_order)
{
	static const uint32_t sizes[] = { 0, 1, 15, 16, 4095, 16381, 16384, 16389, 70000,
					  1, 300000, 0, 1u << 20, 8, 262144, 262145, 3, 65536 };
	const size_t n = sizeof(sizes) / sizeof(sizes[0]);
	size_t total = 0, off = 0, got;
	uint8_t *out, *buf = malloc((1u << 20) + 16);
	int fd = raw_connect();

	for (size_t i = 0; i < n; i++)
		total += KVP_HDR_SIZE + sizes[i];
	out = malloc(total);
	cr_assert(out && buf);
	for (size_t i = 0; i < n; i++) {
		struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_PING, .req_id = 500 + (uint32_t)i,
					   .len = sizes[i] };

		kvp_hdr_encode(out + off, &h);
		for (uint32_t k = 0; k < sizes[i]; k++)
			out[off + KVP_HDR_SIZE + k] = (uint8_t)(i * 31 + k * 7);
		off += KVP_HDR_SIZE + sizes[i];
	}
	srand(7);
	for (off = 0; off < total; off += got) {
		got = 1 + (size_t)rand() % (rand() % 4 ? 40 : 9000);   /* mostly tiny writes */
		if (got > total - off)
			got = total - off;
		raw_send(fd, out + off, got);
	}
	for (size_t i = 0; i < n; i++) {
		struct kvp_frame_hdr h = raw_recv(fd, buf, (1u << 20) + 16);

		cr_assert_eq(h.type, KVP_T_PING | KVP_T_REPLY, "frame %zu", i);
		cr_assert_eq(h.req_id, 500 + i);
		cr_assert_eq(h.len, sizes[i]);
		for (uint32_t k = 0; k < sizes[i]; k++)
			cr_assert_eq(buf[k], (uint8_t)(i * 31 + k * 7), "frame %zu, byte %u", i, k);
	}
	close(fd);
	free(out);
	free(buf);
}

Test(daemon, second_daemon_on_live_socket_refuses)
{
	char cmd[512], out[4096];
	int st;

	snprintf(cmd, sizeof(cmd), "%s --index-only --socket %s 2>&1", KVP_DAEMON_PATH, d.socket);
	st = kvp_run_capture(cmd, out, sizeof(out));
	cr_assert_neq(st, 0);
	cr_assert(strstr(out, "already listening") != NULL, "got: %s", out);
	cr_assert(kvp_daemon_alive(&d), "the live daemon is left alone");
	struct kvp_client *c = conn();
	cr_assert_eq(kvp_client_ping(c, "y", 1), 0);
	kvp_client_close(c);
}

Test(daemon, sigterm_exits_zero_and_removes_socket)
{
	struct stat sb;
	char sock[sizeof(d.socket)];

	snprintf(sock, sizeof(sock), "%s", d.socket);
	cr_assert_eq(stat(sock, &sb), 0);
	cr_assert(S_ISSOCK(sb.st_mode));
	cr_assert_eq(sb.st_mode & 0777, 0660);
	kill(d.pid, SIGTERM);
	for (int i = 0; i < 500 && kvp_daemon_alive(&d); i++)
		usleep(10000);
	cr_assert(!kvp_daemon_alive(&d));
	cr_assert_eq(access(sock, F_OK), -1, "socket file removed on exit");
	d.pid = 0;
	kvp_daemon_stop(&d);
}

/* ---- without a running daemon ------------------------------------------- */

TestSuite(cli, .timeout = 60);

Test(cli, stale_socket_is_replaced)
{
	char dir[] = "/tmp/kvp-stale-XXXXXX", sock[64], cmd[512], out[4096];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;
	pid_t pid;
	struct kvp_client *c = NULL;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	/* a socket file with nobody listening: what a crashed daemon leaves */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(KVP_DAEMON_PATH, KVP_DAEMON_PATH, "--index-only", "--socket", sock, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && kvp_client_connect(sock, &c) != 0; i++)
		usleep(10000);
	cr_assert_not_null(c, "the daemon did not replace the stale socket");
	cr_assert_eq(kvp_client_ping(c, "z", 1), 0);
	kvp_client_close(c);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

Test(cli, help_version_and_mode)
{
	char cmd[512], out[8192];

	snprintf(cmd, sizeof(cmd), "%s --help", KVP_DAEMON_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
	cr_assert(strstr(out, "--index-only") && strstr(out, "--socket"));
	snprintf(cmd, sizeof(cmd), "%s --version", KVP_DAEMON_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
	cr_assert(strstr(out, "kvprefixd") != NULL);
	snprintf(cmd, sizeof(cmd), "%s 2>&1", KVP_DAEMON_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 2);
	cr_assert(strstr(out, "--index-only") && strstr(out, "--model"),
		  "without a mode, both are explained: %s", out);
	snprintf(cmd, sizeof(cmd), "%s --index-only --block-tokens 0 2>&1", KVP_DAEMON_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 2);
	cr_assert(strstr(out, "--block-tokens") != NULL, "%s", out);
	snprintf(cmd, sizeof(cmd), "%s --index-only --block-tokens 4097 2>&1", KVP_DAEMON_PATH);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 2);
}

/* ---- regressions ---------------------------------------------------------- */

/* A client that sends its requests and then shuts down its writing side still gets
 * every reply (it used to lose the ones queued behind the per-wakeup frame cap). */
Test(daemon, half_closed_client_gets_every_reply)
{
	enum { N = 5000 };
	int fd = raw_connect();
	uint8_t *out = malloc((size_t)N * (KVP_HDR_SIZE + 4)), buf[64];
	size_t off = 0;

	for (uint32_t i = 0; i < N; i++) {
		struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_PING, .req_id = i, .len = 4 };
		kvp_hdr_encode(out + off, &h);
		memcpy(out + off + KVP_HDR_SIZE, &i, 4);
		off += KVP_HDR_SIZE + 4;
	}
	raw_send(fd, out, off);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	for (uint32_t i = 0; i < N; i++) {
		struct kvp_frame_hdr h = raw_recv(fd, buf, sizeof(buf));
		cr_assert_eq(h.req_id, i, "reply %u of %u missing", i, N);
	}
	char sink;
	cr_assert_eq(recv(fd, &sink, 1, 0), 0, "closed after the last reply");
	close(fd);
	free(out);
}

/* --socket naming a regular file must not delete it. */
Test(cli, regular_file_at_socket_path_is_kept)
{
	char dir[] = "/tmp/kvp-file-XXXXXX", path[64], cmd[256], out[4096];
	FILE *f;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/not-a-socket", dir);
	f = fopen(path, "w");
	fputs("precious", f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "timeout 10 %s --index-only --socket %s 2>&1", KVP_DAEMON_PATH, path);
	cr_assert_neq(kvp_run_capture(cmd, out, sizeof(out)), 0);
	cr_assert(strstr(out, "not a socket") != NULL, "%s", out);
	cr_assert_eq(access(path, F_OK), 0, "the file is still there");
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

static long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	p = strrchr(buf, ')');
	/* fields after the command: state(3) ... utime(14) stime(15) */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (long)(ut + st);
}

/* Out of file descriptors, the daemon used to spin on accept errors at 100% CPU. */
Test(cli, out_of_descriptors_does_not_spin)
{
	char dir[] = "/tmp/kvp-fd-XXXXXX", sock[64], cmd[256], out[64];
	int fds[40], n = 0;
	pid_t pid;
	long t0, t1;
	struct kvp_client *c = NULL;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	pid = fork();
	if (pid == 0) {
		struct rlimit rl = { 24, 24 };
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		close(null);
		setrlimit(RLIMIT_NOFILE, &rl);
		execl(KVP_DAEMON_PATH, KVP_DAEMON_PATH, "--index-only", "--socket", sock, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && kvp_client_connect(sock, &c) != 0; i++)
		usleep(10000);
	cr_assert_not_null(c);
	kvp_client_close(c);
	for (int i = 0; i < 40; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		fds[n] = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
		if (connect(fds[n], (struct sockaddr *)&sa, sizeof(sa)) == 0)
			n++;
		else
			close(fds[n]);
	}
	usleep(200000);
	t0 = cpu_ticks(pid);
	usleep(1000000);
	t1 = cpu_ticks(pid);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	/* a spinning loop burns ~100 ticks a second; an idle one close to none */
	cr_expect_lt(t1 - t0, 30, "the daemon used %ld ticks in 1 s while out of descriptors",
		     t1 - t0);
	usleep(300000);
	c = NULL;
	cr_assert_eq(kvp_client_connect(sock, &c), 0);
	cr_assert_eq(kvp_client_ping(c, "back", 4), 0, "accepting again once descriptors are free");
	kvp_client_close(c);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

/* ---- limits ----------------------------------------------------------------- */

Test(cli, idle_connection_is_closed_and_its_lease_released, .timeout = 60)
{
	struct kvp_daemon dd;
	const char *args[] = { "--idle-timeout", "1", NULL };
	struct kvp_client *a = NULL, *obs = NULL;
	struct kvp_match m;
	uint32_t t[64];

	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &a), 0);
	fill(t, 64, 77);
	cr_assert_eq(kvp_client_insert(a, t, 64, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_neq(m.lease, 0);
	usleep(2500000);   /* silent for longer than --idle-timeout */
	cr_assert_eq(kvp_client_connect(dd.socket, &obs), 0);
	cr_assert_eq(kvp_client_ping(obs, "x", 1), 0);
	char *json = NULL;
	cr_assert_eq(kvp_client_stats(obs, &json), 0);
	cr_assert(strstr(json, "\"blocks_pinned\":0") != NULL, "the idle client's lease is gone: %s", json);
	free(json);
	cr_assert_lt(kvp_client_ping(a, "y", 1), 0, "the idle connection was closed");
	kvp_client_close(a);
	kvp_client_close(obs);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}

/* ---- isolation between uids ----------------------------------------------- */

/* Runs in a child as uid/gid 65534 (nobody): what another user sees of root's cache.
 * Exit codes name the check that failed. */
static int as_nobody(const char *sock, const uint32_t *rootp, const uint32_t *fresh, size_t n)
{
	struct kvp_client *c = NULL;
	struct kvp_server_info info;
	struct kvp_match a, b;

	if (setgid(65534) != 0 || setuid(65534) != 0)
		return 10;
	if (kvp_client_connect(sock, &c) != 0)
		return 11;
	if (kvp_client_hello(c, NULL, NULL, &info) != 0 || info.tenant != 65534)
		return 12;
	/* root's prefix and a never-seen one must look exactly alike */
	if (kvp_client_lookup(c, rootp, n, KVP_LOOKUP_PIN, &a) != 0 ||
	    kvp_client_lookup(c, fresh, n, KVP_LOOKUP_PIN, &b) != 0)
		return 13;
	if (a.matched_tokens != 0 || a.n_blocks != 0 || a.lease != 0 ||
	    b.matched_tokens != 0 || b.n_blocks != 0 || b.lease != 0)
		return 14;
	/* caching the same tokens gives this user blocks of its own */
	if (kvp_client_insert(c, rootp, n, 0, &a) != 0 || a.new_blocks != n / B)
		return 15;
	kvp_client_close(c);
	return 0;
}

Test(daemon, two_uids_never_share_blocks)
{
	struct kvp_client *c = conn();
	struct kvp_match m;
	uint32_t rootp[96], fresh[96];
	pid_t pid;
	int st;

	if (getuid() != 0)
		cr_skip_test("needs root to run a client as another uid (nobody)");
	/* let nobody reach the socket: the test's directory and socket are private */
	cr_assert_eq(chmod(d.dir, 0755), 0);
	cr_assert_eq(chmod(d.socket, 0666), 0);
	fill(rootp, 96, 500);
	fill(fresh, 96, 501);
	cr_assert_eq(kvp_client_insert(c, rootp, 96, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 96);
	pid = fork();
	if (pid == 0)
		_exit(as_nobody(d.socket, rootp, fresh, 96));
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "check %d failed as nobody",
		  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	/* root still sees only its own blocks: nobody's insert added 6 more, not shared */
	cr_assert_eq(kvp_client_lookup(c, rootp, 96, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 96);
	cr_assert_eq(stat_of(c, "tree_nodes"), 12, "each uid holds its own 6 blocks");
	kvp_client_close(c);
}

/* A full disk for logs (stderr on /dev/full) costs log lines, nothing else. */
Test(cli, full_disk_for_logs_is_survived, .timeout = 60)
{
	char dir2[] = "/tmp/kvp-full-XXXXXX", sock[64], cmd[128], out[64];
	struct kvp_client *c = NULL;
	struct kvp_match m;
	uint32_t t[64];
	pid_t pid;
	int st;

	if (access("/dev/full", W_OK) != 0)
		cr_skip_test("/dev/full is not writable here");
	cr_assert_not_null(mkdtemp(dir2));
	snprintf(sock, sizeof(sock), "%s/s.sock", dir2);
	pid = fork();
	if (pid == 0) {
		int full = open("/dev/full", O_WRONLY);
		dup2(full, 2);
		close(full);
		execl(KVP_DAEMON_PATH, KVP_DAEMON_PATH, "--index-only", "--socket", sock,
		      "--log-level", "debug", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && kvp_client_connect(sock, &c) != 0; i++)
		usleep(10000);
	cr_assert_not_null(c, "the daemon did not come up with its log on a full disk");
	fill(t, 64, 900);
	for (int i = 0; i < 50; i++) {   /* every request logs at debug level */
		cr_assert_eq(kvp_client_insert(c, t, 64, 0, &m), 0);
		cr_assert_eq(kvp_client_lookup(c, t, 64, 0, &m), 0);
		cr_assert_eq(m.matched_tokens, 64);
	}
	kvp_client_close(c);
	kill(pid, SIGTERM);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir2);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0);
}

/* salt-uids: listed uids may choose a cache salt; connections with the same salt share
 * blocks, other salts and unsalted connections do not. */
Test(cli, cache_salts_share_only_within_a_salt, .timeout = 60)
{
	struct kvp_daemon dd;
	char uids[32];
	const char *args[] = { "--salt-uids", uids, NULL };
	struct kvp_client *a = NULL, *b = NULL, *other = NULL, *plain = NULL;
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[64];

	snprintf(uids, sizeof(uids), "7,%u", (unsigned)getuid());
	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &a), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &b), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &other), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &plain), 0);
	cr_assert_eq(kvp_client_hello(a, NULL, "team-a", &info), 0);
	cr_assert_eq(info.tenant, UINT32_MAX, "a salted connection has the salted tenant");
	cr_assert_eq(kvp_client_hello(b, NULL, "team-a", NULL), 0);
	cr_assert_eq(kvp_client_hello(other, NULL, "team-b", NULL), 0);
	cr_assert_eq(kvp_client_hello(plain, "x\x01y", NULL, NULL), KVP_EINVAL,
		     "control bytes are refused in adapter ids");
	fill(t, 64, 321);
	cr_assert_eq(kvp_client_insert(a, t, 64, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(b, t, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 64, "the same salt shares blocks");
	cr_assert_eq(kvp_client_lookup(other, t, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0, "another salt does not");
	cr_assert_eq(kvp_client_lookup(plain, t, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 0, "the unsalted namespace does not");
	kvp_client_close(a);
	kvp_client_close(b);
	kvp_client_close(other);
	kvp_client_close(plain);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}

/* ---- administrative requests, tenant quota, timing isolation ------------------------- */

/* Let processes of other uids reach dd's socket (the directory and socket are private). */
static void open_to_all(struct kvp_daemon *dd)
{
	cr_assert_eq(chmod(dd->dir, 0755), 0);
	cr_assert_eq(chmod(dd->socket, 0666), 0);
}

/* Drop to uid 65534 with the given primary group and supplementary groups. */
static int become(gid_t gid, const gid_t *groups, size_t n)
{
	if (setgroups(n, groups) != 0 || setgid(gid) != 0 || setuid(65534) != 0)
		return -1;
	return 0;
}

/* In a child as uid 65534: an ADMIN CLEAR and CONFIG; expect want (0 or a status);
 * exit 0 when the outcome matched and the connection stayed usable. */
static int admin_as(const char *sock, gid_t gid, const gid_t *groups, size_t n, int want)
{
	struct kvp_client *c = NULL;
	uint32_t blocks = 99;
	char *text = NULL;
	int rc;

	if (become(gid, groups, n) != 0)
		return 10;
	if (kvp_client_connect(sock, &c) != 0)
		return 11;
	rc = kvp_client_admin(c, KVP_ADMIN_CLEAR, 0, 0, NULL, 0, NULL, &blocks, NULL);
	if (rc != want)
		return 12;
	rc = kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, "max-leases", NULL, &text);
	if (rc != want || (rc == 0 && strcmp(text, "max-leases = 4096\n") != 0))
		return 13;
	free(text);
	if (kvp_client_ping(c, "x", 1) != 0)
		return 14;
	kvp_client_close(c);
	return 0;
}

static int run_child(int (*fn)(const char *, gid_t, const gid_t *, size_t, int), const char *sock,
		     gid_t gid, const gid_t *groups, size_t n, int want)
{
	pid_t pid = fork();
	int st;

	if (pid == 0)
		_exit(fn(sock, gid, groups, n, want));
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(admin, only_root_or_the_admin_group, .timeout = 60)
{
	struct kvp_daemon dd;
	const char *args[] = { "--admin-group", "65534", NULL };
	const gid_t other = 65533, admin = 65534;
	int rc;

	if (getuid() != 0)
		cr_skip_test("needs root to run clients as other uids and groups");
	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	open_to_all(&dd);
	rc = run_child(admin_as, dd.socket, other, NULL, 0, KVP_EPERM);
	cr_assert_eq(rc, 0, "a uid outside the admin group: check %d", rc);
	rc = run_child(admin_as, dd.socket, admin, NULL, 0, 0);
	cr_assert_eq(rc, 0, "primary group is the admin group: check %d", rc);
	rc = run_child(admin_as, dd.socket, other, &admin, 1, 0);
	cr_assert_eq(rc, 0, "a supplementary group is the admin group: check %d", rc);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}

Test(admin, admin_group_among_hundreds_of_groups, .timeout = 60)
{
	/* a member of many groups (directory users often are): the admin group is one of
	 * 300 supplementary groups, more than a small fixed buffer holds */
	struct kvp_daemon dd;
	const char *args[] = { "--admin-group", "65534", NULL };
	gid_t groups[300];
	int rc;

	if (getuid() != 0)
		cr_skip_test("needs root to run clients as other uids and groups");
	for (size_t i = 0; i < 300; i++)
		groups[i] = (gid_t)(40000 + i);
	groups[299] = 65534;
	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	open_to_all(&dd);
	rc = run_child(admin_as, dd.socket, 65533, groups, 300, 0);
	cr_assert_eq(rc, 0, "the admin group as the 300th supplementary group: check %d", rc);
	groups[299] = 40299;
	rc = run_child(admin_as, dd.socket, 65533, groups, 300, KVP_EPERM);
	cr_assert_eq(rc, 0, "300 groups, none of them the admin group: check %d", rc);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}

Test(admin, clear_evict_pin_unpin_config, .timeout = 60)
{
	struct kvp_daemon dd;
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "64", NULL };
	struct kvp_client *c = NULL, *o = NULL;
	struct kvp_match m;
	uint32_t a[64], b[64], blocks;
	char *text = NULL;

	if (getuid() != 0)
		cr_skip_test("administrative requests need root here (no admin group set)");
	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &c), 0);
	cr_assert_eq(kvp_client_connect(dd.socket, &o), 0);
	fill(a, 64, 31);
	fill(b, 64, 32);
	cr_assert_eq(kvp_client_insert(c, a, 64, 0, &m), 0);
	cr_assert_eq(kvp_client_insert(c, b, 64, 0, &m), 0);

	/* PIN a's first two blocks: they survive a CLEAR and the pinning connection */
	cr_assert_eq(kvp_client_admin(o, KVP_ADMIN_PIN, 0, 0, a, 32, NULL, &blocks, NULL), 0);
	cr_assert_eq(blocks, 2);
	kvp_client_close(o);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, 0, 0, NULL, 0, NULL, &blocks, NULL), 0);
	cr_assert_eq(blocks, 6, "a's last 2 and b's 4 go, the 2 pinned stay");
	cr_assert_eq(kvp_client_lookup(c, a, 64, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 32);
	cr_assert_eq(stat_of(c, "blocks_pinned"), 2);

	/* UNPIN, then EVICT the prefix; UNPIN again finds nothing */
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_UNPIN, 0, 0, a, 32, NULL, &blocks, NULL), 0);
	cr_assert_eq(blocks, 2);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_UNPIN, 0, 0, a, 32, NULL, &blocks, NULL),
		     KVP_ENOTFOUND);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_EVICT, 0, 0, a, 16, NULL, &blocks, NULL), 0);
	cr_assert_eq(blocks, 2);
	cr_assert_eq(stat_of(c, "tree_nodes"), 0);

	/* another tenant's namespace by uid, and CLEAR of every namespace */
	cr_assert_eq(kvp_client_insert(c, b, 64, 0, &m), 0);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 12345, NULL, 0, NULL,
				      &blocks, NULL), 0);
	cr_assert_eq(blocks, 0, "uid 12345 has nothing cached");
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, KVP_ADMIN_F_TENANT, 0, NULL, 0, NULL,
				      &blocks, NULL), 0);
	cr_assert_eq(blocks, 4, "root's own namespace named by uid");
	cr_assert_eq(kvp_client_insert(c, b, 64, 0, &m), 0);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CLEAR, KVP_ADMIN_F_ALL, 0, NULL, 0, NULL,
				      &blocks, NULL), 0);
	cr_assert_eq(blocks, 4);

	/* CONFIG: list, show, set a live option, refuse a restart-only one and bad values */
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, NULL, NULL, &text), 0);
	cr_assert(strstr(text, "block-tokens = 16\n") && strstr(text, "tenant-quota = 0\n"),
		  "%s", text);
	free(text);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, " tenant-quota = 50 ",
				      NULL, &text), 0);
	cr_assert_str_eq(text, "tenant-quota = 50\n");
	free(text);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, "block-tokens=8", NULL,
				      &text), KVP_EUNSUPPORTED);
	cr_assert(strstr(kvp_client_error(c), "restart"), "%s", kvp_client_error(c));
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, "tenant-quota=101", NULL,
				      &text), KVP_EINVAL);
	cr_assert_eq(kvp_client_admin(c, KVP_ADMIN_CONFIG, 0, 0, NULL, 0, "no-such", NULL, &text),
		     KVP_EINVAL);
	cr_assert_eq(kvp_client_ping(c, "still", 5), 0);
	kvp_client_close(c);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}

/* In a child as nobody: insert `want` distinct 1-block prompts (16 tokens each), a new
 * connection with a new adapter every 50: adapters are namespaces of their own, and
 * must not multiply the tenant's quota. */
static int flood_as(const char *sock, gid_t gid, const gid_t *groups, size_t n, int want)
{
	struct kvp_client *c = NULL;
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[16];
	char adapter[16];

	if (become(gid, groups, 0) != 0)
		return 10;
	for (int k = 0; k < want; k++) {
		if (k % 50 == 0) {
			kvp_client_close(c);
			c = NULL;
			snprintf(adapter, sizeof(adapter), "a%d", k / 50);
			if (kvp_client_connect(sock, &c) != 0 ||
			    kvp_client_hello(c, adapter, NULL, &info) != 0)
				return 11;
		}
		fill(t, 16, 1000 + (uint32_t)k);
		if (kvp_client_insert(c, t, 16, 0, &m) != 0 || m.new_blocks != 1)
			return 12;
	}
	kvp_client_close(c);
	return 0;
}

/* root caches 20 blocks, nobody inserts 300: how many of root's are left? */
static double flood_run(const char *quota, double *nobody_blocks)
{
	struct kvp_daemon dd;
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "64",
			       "--tenant-quota", quota, NULL };
	struct kvp_client *c = NULL;
	struct kvp_match m;
	uint32_t t[320];
	double kept;
	int rc;

	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	open_to_all(&dd);
	cr_assert_eq(kvp_client_connect(dd.socket, &c), 0);
	fill(t, 320, 7);
	cr_assert_eq(kvp_client_insert(c, t, 320, 0, &m), 0);
	cr_assert_eq(m.new_blocks, 20);
	rc = run_child(flood_as, dd.socket, 65534, NULL, 0, 300);
	cr_assert_eq(rc, 0, "nobody's inserts: check %d", rc);
	cr_assert_eq(kvp_client_lookup(c, t, 320, 0, &m), 0);
	kept = m.matched_tokens / 16.0;
	*nobody_blocks = stat_of(c, "tree_nodes") - kept;
	kvp_client_close(c);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
	return kept;
}

Test(quota, one_tenant_cannot_evict_the_others, .timeout = 60)
{
	double nobody;

	if (getuid() != 0)
		cr_skip_test("needs root to run a second uid (nobody)");
	/* 50% of 64 blocks: nobody recycles its own 32 (across its 6 adapters), root's 20
	 * all stay */
	cr_assert_eq(flood_run("50", &nobody), 20);
	cr_assert_eq(nobody, 32);
	/* the control, no quota: nobody's flood takes root's blocks */
	cr_assert_lt(flood_run("0", &nobody), 20);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median LOOKUP round trip, in ns, of each of two prompts, measured alternately. */
static void median_pair(struct kvp_client *c, const uint32_t *p, const uint32_t *q, size_t n,
			double *mp, double *mq)
{
	enum { N = 801 };
	static double tp[N], tq[N];
	struct kvp_match m;

	for (int i = 0; i < N; i++) {
		for (int k = 0; k < 2; k++) {
			struct timespec t0, t1;

			clock_gettime(CLOCK_MONOTONIC, &t0);
			cr_assert_eq(kvp_client_lookup(c, k ? q : p, n, 0, &m), 0);
			clock_gettime(CLOCK_MONOTONIC, &t1);
			(k ? tq : tp)[i] = (double)(t1.tv_sec - t0.tv_sec) * 1e9 +
					   (double)(t1.tv_nsec - t0.tv_nsec);
		}
	}
	qsort(tp, N, sizeof(double), cmp_double);
	qsort(tq, N, sizeof(double), cmp_double);
	*mp = tp[N / 2];
	*mq = tq[N / 2];
}

/* In a child as nobody: the ratio of medians, root's cached prompt over a fresh one,
 * written to the pipe. */
static int timing_as(const char *sock, gid_t gid, const gid_t *groups, size_t fd, int seed)
{
	static uint32_t p[4096], q[4096];
	struct kvp_client *c = NULL;
	double mp, mq, ratio;

	if (become(gid, groups, 0) != 0 || kvp_client_connect(sock, &c) != 0)
		return 10;
	fill(p, 4096, (uint32_t)seed);
	fill(q, 4096, (uint32_t)seed + 1);
	median_pair(c, p, q, 4096, &mp, &mq);
	ratio = mp / mq;
	if (write((int)fd, &ratio, sizeof(ratio)) != sizeof(ratio))
		return 11;
	kvp_client_close(c);
	return 0;
}

/*
 * Another uid's cached prefix costs the same as a prompt nobody has seen: namespaces
 * share no tree node, so both lookups miss at the first block. The check is a ratio of
 * medians over interleaved runs in one process, so machine load cancels out; and the
 * same measurement from root, whose prompt hits 4096 one-token blocks, must tell hit
 * from miss, which shows it could see a difference if there were one: nobody's ratio
 * must stay nearer 1 than a quarter of root's difference.
 */
Test(isolation, timing_does_not_tell_another_uids_prefix, .timeout = 120)
{
	struct kvp_daemon dd;
	const char *args[] = { "--block-tokens", "1", "--capacity-blocks", "16384", NULL };
	static uint32_t p[4096], q[4096];
	struct kvp_client *c = NULL;
	struct kvp_match m;
	double mp, mq, ratio = 0, bound;
	int fds[2], rc, ok = 0;

	if (getuid() != 0)
		cr_skip_test("needs root to run a second uid (nobody)");
	cr_assert_eq(kvp_daemon_start(&dd, args), 0);
	open_to_all(&dd);
	cr_assert_eq(kvp_client_connect(dd.socket, &c), 0);
	fill(p, 4096, 4242);
	fill(q, 4096, 4243);
	cr_assert_eq(kvp_client_insert(c, p, 4096, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 4096);
	median_pair(c, p, q, 4096, &mp, &mq);
	cr_assert_gt(mp / mq, 1.4, "root's own 4096-block hit (%.0f ns) vs a miss (%.0f ns): "
		     "the measurement cannot tell them apart", mp, mq);
	bound = (mp / mq - 1) / 4;
	/* nobody (up to three tries, for a noisy machine) */
	for (int attempt = 0; attempt < 3 && !ok; attempt++) {
		cr_assert_eq(pipe(fds), 0);
		rc = run_child(timing_as, dd.socket, 65534, NULL, (size_t)fds[1], 4242);
		close(fds[1]);
		cr_assert_eq(rc, 0, "nobody's lookups: check %d", rc);
		cr_assert_eq(read(fds[0], &ratio, sizeof(ratio)), (ssize_t)sizeof(ratio));
		close(fds[0]);
		ok = ratio > 1 - bound && ratio < 1 + bound;
	}
	cr_assert(ok, "as nobody, root's cached prompt takes %.3fx a fresh one (allowed 1 +- %.3f; "
		  "root's own hit takes %.2fx its miss)", ratio, bound, mp / mq);
	kvp_client_close(c);
	cr_assert_eq(kvp_daemon_stop(&dd), 0);
}
