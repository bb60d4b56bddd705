/*
 * test_hostile.c - what a hostile local user or a careless client did to kvprefixd, one
 * regression test each, named after what broke: quotas that salts got around, STATS
 * showing other tenants, leases, unread replies and slow frames without bounds, one
 * uid taking every connection (and flooding the log), a half-closed client losing its
 * generation, a graceful stop leaving connections hanging and cut generations without
 * an ERROR, and the finish reason of a generation that fills the context.
 *
 * Each starts the real daemon (tests/daemon_harness.h) and talks to it through
 * libkvprefix or raw frames; second uids are uid 65534 in a forked child, which needs
 * root (the tests that need it skip, saying so, otherwise).
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon_harness.h"
#include "kvp_le.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define B 16

static struct kvp_daemon d;

static void stop(void)
{
	if (d.pid > 0) {
		int st = kvp_daemon_stop(&d);
		cr_expect_eq(st, 0, "kvprefixd exited with %d (its log is above)", st);
	}
}

static void start(const char *const *args)
{
	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
	/* other uids reach the socket (the directory and the socket are private) */
	cr_assert_eq(chmod(d.dir, 0755), 0);
	cr_assert_eq(chmod(d.socket, 0666), 0);
}

static void fill(uint32_t *t, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		t[i] = seed * 7919u + (uint32_t)i * 31u + 1u;
}

static struct kvp_client *conn(void)
{
	struct kvp_client *c = NULL;
	int rc = kvp_client_connect(d.socket, &c);

	cr_assert_eq(rc, 0, "connect: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_set_timeout_ms(c, 60000), 0);
	return c;
}

static cJSON *stats(struct kvp_client *c)
{
	char *json = NULL;
	cJSON *o;

	cr_assert_eq(kvp_client_stats(c, &json), 0);
	o = cJSON_Parse(json);
	cr_assert_not_null(o, "%s", json);
	free(json);
	return o;
}

static double stat_of(struct kvp_client *c, const char *key)
{
	cJSON *o = stats(c), *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double x;

	cr_assert(cJSON_IsNumber(v), "STATS has no number '%s'", key);
	x = v->valuedouble;
	cJSON_Delete(o);
	return x;
}

/* Lines of the daemon's log that contain needle. */
static int log_lines_with(const char *needle)
{
	FILE *f = fopen(d.log, "r");
	char line[2048];
	int n = 0;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	fclose(f);
	return n;
}

/* Run fn(arg) in a child as uid 65534; its exit status (0: every check held). */
static int as_nobody(int (*fn)(void *arg), void *arg)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
			_exit(90);
		_exit(fn(arg));
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define NEED_ROOT()                                                                   \
	do {                                                                          \
		if (getuid() != 0)                                                    \
			cr_skip_test("needs root to run a second uid (nobody)");      \
	} while (0)

/* ---- raw frames --------------------------------------------------------------------- */

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.socket);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
	return fd;
}

static void write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t w = write(fd, b, n);
		cr_assert_gt(w, 0, "write: %s", strerror(errno));
		b += w;
		n -= (size_t)w;
	}
}

/* Read exactly n bytes within ms; false on EOF, an error or the deadline. */
static bool read_all(int fd, void *p, size_t n, int ms)
{
	uint8_t *b = p;

	while (n) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pf, 1, ms) != 1)
			return false;
		r = read(fd, b, n);
		if (r <= 0)
			return false;
		b += r;
		n -= (size_t)r;
	}
	return true;
}

/* The next frame's header and its payload (up to cap bytes kept); false on EOF. */
static bool read_frame(int fd, struct kvp_frame_hdr *h, uint8_t *payload, size_t cap, int ms)
{
	uint8_t hb[KVP_HDR_SIZE];
	static uint8_t sink[65536];

	if (!read_all(fd, hb, sizeof(hb), ms))
		return false;
	cr_assert_eq(kvp_hdr_decode(hb, sizeof(hb), UINT32_MAX, h), 0);
	for (uint32_t left = h->len; left;) {
		uint32_t k = left < sizeof(sink) ? left : (uint32_t)sizeof(sink);
		if (!read_all(fd, sink, k, ms))
			return false;
		if (payload && h->len - left < cap)
			memcpy(payload + (h->len - left), sink,
			       k < cap - (h->len - left) ? k : cap - (h->len - left));
		left -= k;
	}
	return true;
}

/* The code of an ERROR payload. */
static uint32_t error_code(const uint8_t *p, uint32_t len)
{
	struct kvp_error e;

	cr_assert_eq(kvp_error_decode(p, len, &e), 0);
	return e.code;
}

/* True when the peer closed fd (EOF, or a reset) within ms. */
static bool closed_within(int fd, int ms)
{
	uint8_t b[4096];
	struct pollfd pf = { .fd = fd, .events = POLLIN };

	for (;;) {
		if (poll(&pf, 1, ms) != 1)
			return false;
		ssize_t r = read(fd, b, sizeof(b));
		if (r <= 0)
			return true;
	}
}

/* ---- a model for the generation tests ------------------------------------------------- */

static const char *model(const char *tag, const char *args)
{
	static char path[256];
	char cmd[768], out[1024];
	struct stat st;

	cr_assert_eq(stat(KVP_MKMODEL_PATH, &st), 0);
	mkdir(KVP_TEST_MODEL_DIR, 0755);
	/* keyed by the generator's build and the arguments: a file made with other ones is
	 * never taken for this one */
	uint64_t h = 1469598103934665603ull;
	for (const char *a = args; *a; a++)
		h = (h ^ (uint8_t)*a) * 1099511628211ull;
	snprintf(path, sizeof(path), "%s/%s-%lld-%016llx.gguf", KVP_TEST_MODEL_DIR, tag,
		 (long long)st.st_mtime, (unsigned long long)h);
	if (stat(path, &st) == 0)
		return path;
	snprintf(cmd, sizeof(cmd), "%s --out %s %s --quiet 2>&1", KVP_MKMODEL_PATH, path, args);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0, "mkmodel failed: %s", out);
	return path;
}

/* ctx 64, so that a generation can fill the context */
static const char *tiny_model(void)
{
	return model("hostile-tiny", "--vocab 512 --dim 64 --layers 1 --heads 4 --kv-heads 2 "
				     "--ffn 128 --ctx 64 --dtype f32 --seed 3");
}

/* ctx 8192 and some width: generations long enough to stop in the middle of */
static const char *long_model(void)
{
	return model("hostile-long", "--vocab 512 --dim 256 --layers 4 --heads 4 --kv-heads 2 "
				     "--ffn 512 --ctx 8192 --dtype f32 --seed 5");
}

TestSuite(hostile, .fini = stop, .timeout = 120);

/* ---- 2: a uid's quota covers all its salts --------------------------------------------- */

/* As nobody: insert 400 distinct 1-block prompts under 8 cache salts and 2 adapters,
 * a connection per (salt, adapter). */
static int salt_flood(void *arg)
{
	const char *sock = arg;
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[B];

	for (int k = 0; k < 400; k++) {
		static struct kvp_client *c;
		char salt[16], adapter[16];

		if (k % 25 == 0) {
			kvp_client_close(c);
			c = NULL;
			snprintf(salt, sizeof(salt), "s%d", k / 50);
			snprintf(adapter, sizeof(adapter), "a%d", (k / 25) % 2);
			if (kvp_client_connect(sock, &c) != 0 ||
			    kvp_client_hello(c, adapter, salt, &info) != 0)
				return 11;
		}
		fill(t, B, 5000 + (uint32_t)k);
		if (kvp_client_insert(c, t, B, 0, &m) != 0 || m.new_blocks != 1)
			return 12;
	}
	return 0;
}

Test(hostile, salts_do_not_multiply_a_uids_quota)
{
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "64",
			       "--tenant-quota", "50", "--salt-uids", "65534", NULL };
	struct kvp_client *c;
	struct kvp_match m;
	uint32_t t[20 * B];

	NEED_ROOT();
	start(args);
	c = conn();
	fill(t, 20 * B, 1);
	cr_assert_eq(kvp_client_insert(c, t, 20 * B, 0, &m), 0);
	cr_assert_eq(m.new_blocks, 20);
	cr_assert_eq(as_nobody(salt_flood, d.socket), 0);
	cr_assert_eq(kvp_client_lookup(c, t, 20 * B, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 20 * B, "root kept %u of its 20 blocks",
		     m.matched_tokens / B);
	/* 50% of 64: nobody holds 32 blocks over all its salts and adapters together */
	cr_assert_eq(stat_of(c, "tree_nodes"), 20 + 32);
	kvp_client_close(c);
}

/* ---- 3: STATS shows a client its own namespaces only ----------------------------------- */

/* As nobody: STATS must list nobody's namespace, and no other. */
static int stats_as_nobody(void *arg)
{
	struct kvp_client *c = NULL;
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[B];
	char *json = NULL;
	cJSON *o, *arr, *x;
	int n = 0;

	fill(t, B, 77);
	if (kvp_client_connect(arg, &c) != 0 || kvp_client_hello(c, "mine", NULL, &info) != 0 ||
	    kvp_client_lookup(c, t, B, 0, &m) != 0 || kvp_client_stats(c, &json) != 0)
		return 11;
	o = cJSON_Parse(json);
	arr = cJSON_GetObjectItem(o, "namespaces");
	if (!cJSON_IsArray(arr))
		return 12;
	cJSON_ArrayForEach(x, arr) {
		cJSON *tenant = cJSON_GetObjectItem(x, "tenant");
		if (!cJSON_IsNumber(tenant) || tenant->valuedouble != 65534)
			return 13;   /* someone else's (or the mixed "other") */
		n++;
	}
	if (n != 1 || cJSON_GetObjectItem(o, "namespaces_tracked")->valuedouble != 1)
		return 14;
	/* the totals are global: root's lookups count too */
	if (cJSON_GetObjectItem(o, "lookups")->valuedouble < 3)
		return 15;
	cJSON_Delete(o);
	free(json);
	kvp_client_close(c);
	return 0;
}

Test(hostile, stats_hide_other_tenants_namespaces)
{
	struct kvp_client *c;
	struct kvp_server_info info;
	struct kvp_match m;
	uint32_t t[B];
	cJSON *o, *arr;

	NEED_ROOT();
	start(NULL);
	c = conn();
	fill(t, B, 1);
	cr_assert_eq(kvp_client_hello(c, "secret-adapter", NULL, &info), 0);
	cr_assert_eq(kvp_client_lookup(c, t, B, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(c, t, B, 0, &m), 0);
	cr_assert_eq(as_nobody(stats_as_nobody, d.socket), 0);
	/* root sees both tenants */
	o = stats(c);
	arr = cJSON_GetObjectItem(o, "namespaces");
	cr_assert_eq(cJSON_GetArraySize(arr), 2);
	cJSON_Delete(o);
	kvp_client_close(c);
}

/* An empty HOST in --metrics-listen is this machine only. */
Test(hostile, metrics_without_a_host_listen_on_localhost_only)
{
	const char *args[] = { "--metrics-listen", ":0", NULL };

	start(args);
	cr_assert_eq(log_lines_with("serving /metrics on 127.0.0.1:"), 1,
		     "the log does not show a localhost listener");
	cr_assert_eq(log_lines_with("0.0.0.0"), 0);
}

/* ---- 4: leased blocks are bounded per connection and per uid --------------------------- */

Test(hostile, leases_on_long_prefixes_are_bounded_in_blocks)
{
	const char *args[] = { "--block-tokens", "16", "--capacity-blocks", "1024",
			       "--max-leased-blocks", "100", "--max-leased-blocks-per-uid", "150",
			       NULL };
	static uint32_t t[64 * B];
	struct kvp_client *c, *c2, *c3;
	struct kvp_match m;
	uint64_t lease;
	uint32_t n;

	start(args);
	c = conn();
	c2 = conn();
	fill(t, 64 * B, 9);
	cr_assert_eq(kvp_client_insert(c, t, 64 * B, 0, &m), 0);
	/* 64 blocks pinned, then a second lease of 64 more would make 128 > 100 */
	cr_assert_eq(kvp_client_lookup(c, t, 64 * B, KVP_LOOKUP_PIN, &m), 0);
	cr_assert_eq(m.n_blocks, 64);
	lease = m.lease;
	cr_assert_eq(kvp_client_lookup(c, t, 64 * B, KVP_LOOKUP_PIN, &m), KVP_EBUSY);
	cr_assert(strstr(kvp_client_error(c), "max-leased-blocks"), "%s", kvp_client_error(c));
	/* unpinned lookups still work, and so does a smaller pin */
	cr_assert_eq(kvp_client_lookup(c, t, 64 * B, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(c, t, 32 * B, KVP_LOOKUP_PIN, &m), 0);
	/* the uid holds 96: another connection of it may pin 54 more, not 64 */
	cr_assert_eq(kvp_client_lookup(c2, t, 64 * B, KVP_LOOKUP_PIN, &m), KVP_EBUSY);
	cr_assert(strstr(kvp_client_error(c2), "per-uid"), "%s", kvp_client_error(c2));
	cr_assert_eq(kvp_client_lookup(c2, t, 50 * B, KVP_LOOKUP_PIN, &m), 0);
	/* releasing gives the room back: c holds 32 + 64, the uid 146 */
	cr_assert_eq(kvp_client_release(c, lease, &n), 0);
	cr_assert_eq(n, 64);
	cr_assert_eq(kvp_client_lookup(c, t, 64 * B, KVP_LOOKUP_PIN, &m), 0);
	c3 = conn();
	cr_assert_eq(kvp_client_lookup(c3, t, 5 * B, KVP_LOOKUP_PIN, &m), KVP_EBUSY);
	kvp_client_close(c2);   /* closing gives its 50 back */
	usleep(100 * 1000);
	cr_assert_eq(kvp_client_lookup(c3, t, 5 * B, KVP_LOOKUP_PIN, &m), 0);
	kvp_client_close(c3);
	kvp_client_close(c);
}

/* ---- 5: replies nobody reads are bounded, all connections together --------------------- */

Test(hostile, clients_that_never_read_are_closed_at_the_output_budget)
{
	const char *args[] = { "--max-output-mb", "4", "--max-frame-bytes", "1048576",
			       "--max-tokens", "65536", NULL };
	static uint8_t frame[KVP_HDR_SIZE + 1000000];
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_PING, .len = 1000000 };
	int fds[4];
	struct kvp_client *c;

	start(args);
	kvp_hdr_encode(frame, &h);
	/* 4 clients each send 8 pings of ~1 MB and never read: 32 MB of replies */
	for (int i = 0; i < 4; i++) {
		fds[i] = raw_connect();
		fcntl(fds[i], F_SETFL, O_NONBLOCK);
		for (int k = 0; k < 8; k++) {
			size_t off = 0;

			while (off < sizeof(frame)) {
				ssize_t w = send(fds[i], frame + off, sizeof(frame) - off,
						 MSG_NOSIGNAL);
				if (w > 0)
					off += (size_t)w;
				else if (errno == EAGAIN)
					usleep(1000);
				else
					break;   /* closed by the daemon: what this test wants */
			}
		}
	}
	usleep(300 * 1000);
	cr_assert_geq(log_lines_with("of replies it does not read"), 1,
		      "no connection was closed for its unread replies");
	/* the daemon serves others, and holds less than the budget plus one round */
	c = conn();
	cr_assert_eq(kvp_client_ping(c, "ok", 2), 0);
	kvp_client_close(c);
	for (int i = 0; i < 4; i++)
		close(fds[i]);
}

/* ---- 6: a frame must arrive whole within --frame-timeout -------------------------------- */

Test(hostile, a_frame_sent_a_byte_at_a_time_times_out)
{
	const char *args[] = { "--frame-timeout", "1", NULL };
	uint8_t frame[KVP_HDR_SIZE + 8 + 4 * B], payload[256];
	uint32_t t[B];
	struct kvp_frame_hdr h;
	struct timespec t0, t1;
	int fd;

	start(args);
	fill(t, B, 3);
	h = (struct kvp_frame_hdr){ .version = 1, .type = KVP_T_LOOKUP, .req_id = 42,
				    .len = 8 + 4 * B };
	kvp_hdr_encode(frame, &h);
	cr_assert_eq(kvp_tokens_req_encode(frame + KVP_HDR_SIZE, sizeof(frame) - KVP_HDR_SIZE, 0,
					   t, B), 8 + 4 * B);
	fd = raw_connect();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* the header and then a byte every 300 ms: each byte resets no clock */
	write_all(fd, frame, KVP_HDR_SIZE);
	for (size_t i = KVP_HDR_SIZE; i < KVP_HDR_SIZE + 12; i++) {
		usleep(300 * 1000);
		if (send(fd, frame + i, 1, MSG_NOSIGNAL) != 1)
			break;
	}
	cr_assert(read_frame(fd, &h, payload, sizeof(payload), 5000), "no ERROR came");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_eq(h.type, KVP_T_ERROR);
	cr_assert_eq(h.req_id, 42, "the request's id, its header being whole");
	cr_assert_eq(error_code(payload, h.len), (uint32_t)-KVP_ETIMEDOUT);
	cr_assert(closed_within(fd, 5000), "the connection stayed open");
	cr_assert_lt(t1.tv_sec - t0.tv_sec, 4, "it took %ld s", (long)(t1.tv_sec - t0.tv_sec));
	close(fd);
}

/* A frame whose header itself dribbles in gets the ERROR with request id 0. */
Test(hostile, a_header_sent_a_byte_at_a_time_times_out_with_id_0)
{
	const char *args[] = { "--frame-timeout", "1", NULL };
	uint8_t hb[KVP_HDR_SIZE], payload[256];
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_PING, .req_id = 7, .len = 4 };
	int fd;

	start(args);
	kvp_hdr_encode(hb, &h);
	fd = raw_connect();
	for (size_t i = 0; i < 8; i++) {
		if (send(fd, hb + i, 1, MSG_NOSIGNAL) != 1)
			break;
		usleep(300 * 1000);
	}
	cr_assert(read_frame(fd, &h, payload, sizeof(payload), 5000), "no ERROR came");
	cr_assert_eq(h.type, KVP_T_ERROR);
	cr_assert_eq(h.req_id, 0);
	cr_assert_eq(error_code(payload, h.len), (uint32_t)-KVP_ETIMEDOUT);
	close(fd);
}

/* ---- 7: one uid cannot take every connection; refusals do not flood the log ------------ */

static int hog_connections(void *arg)
{
	int fds[40], kept = 0, refused = 0;

	for (int i = 0; i < 40; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		struct kvp_frame_hdr h;
		uint8_t p[256];

		fds[i] = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", (const char *)arg);
		if (connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) != 0)
			return 11;
		/* a refused one gets an unprompted ERROR (EBUSY, id 0), then EOF */
		struct pollfd pf = { .fd = fds[i], .events = POLLIN };
		if (poll(&pf, 1, 200) == 1 && read_frame(fds[i], &h, p, sizeof(p), 1000)) {
			if (h.type != KVP_T_ERROR || h.req_id != 0 ||
			    error_code(p, h.len) != (uint32_t)-KVP_EBUSY)
				return 12;
			refused++;
		} else {
			kept++;
		}
	}
	/* 4 per uid of 16: the rest refused */
	return kept == 4 && refused == 36 ? 0 : 13;
}

Test(hostile, one_uid_cannot_take_every_connection)
{
	const char *args[] = { "--max-connections", "16", "--max-connections-per-uid", "4", NULL };
	struct kvp_client *c[4];

	NEED_ROOT();
	start(args);
	cr_assert_eq(as_nobody(hog_connections, d.socket), 0);
	/* nobody's connections are gone with its process; root connects 4 at once */
	for (int i = 0; i < 4; i++) {
		c[i] = conn();
		cr_assert_eq(kvp_client_ping(c[i], "x", 1), 0);
	}
	for (int i = 0; i < 4; i++)
		kvp_client_close(c[i]);
}

Test(hostile, refused_connections_do_not_flood_the_log)
{
	const char *args[] = { "--max-connections", "1", NULL };
	struct kvp_client *hold;
	int lines;

	start(args);
	/* the harness's own probe may still hold the one slot for a moment */
	for (int tries = 0;; tries++) {
		hold = conn();
		if (kvp_client_ping(hold, "x", 1) == 0)
			break;
		kvp_client_close(hold);
		cr_assert_lt(tries, 100, "no slot came free");
		usleep(20 * 1000);
	}
	for (int i = 0; i < 500; i++) {
		int fd = raw_connect();
		close(fd);
	}
	cr_assert_eq(kvp_client_ping(hold, "y", 1), 0);   /* the loop has seen them all */
	usleep(1100 * 1000);
	{
		int fd = raw_connect();   /* one more, a second later: it carries the count */
		struct kvp_frame_hdr h;
		uint8_t p[256];
		cr_assert(read_frame(fd, &h, p, sizeof(p), 2000));
		close(fd);
	}
	cr_assert_eq(kvp_client_ping(hold, "z", 1), 0);
	lines = log_lines_with("refusing a connection");
	cr_assert_leq(lines, 4, "%d log lines for 501 refusals", lines);
	cr_assert_geq(log_lines_with("more like this suppressed"), 1);
	kvp_client_close(hold);
}

/* ---- generations over raw frames ------------------------------------------------------- */

/* Send GENERATE (req_id id, greedy, max_new) of prompt on fd. */
static void send_generate(int fd, uint32_t id, const uint32_t *prompt, uint32_t n,
			  uint32_t max_new)
{
	static uint8_t buf[KVP_HDR_SIZE + 65536];
	struct kvp_generate_req m = { .max_new = max_new, .top_p = 1.0f, .n_tokens = n };
	size_t len = kvp_generate_req_encode(buf + KVP_HDR_SIZE, sizeof(buf) - KVP_HDR_SIZE, &m,
					     NULL, prompt);
	struct kvp_frame_hdr h = { .version = 1, .type = KVP_T_GENERATE, .req_id = id,
				   .len = (uint32_t)len };

	cr_assert_gt(len, 0);
	kvp_hdr_encode(buf, &h);
	write_all(fd, buf, KVP_HDR_SIZE + len);
}

/* Read a generation's frames on fd until it ends: tokens received added to *tokens, and
 * the last frame's type and (for an ERROR) code, or (for GENERATE_DONE) finish. false
 * on EOF. */
static bool read_generation(int fd, uint32_t *tokens, uint8_t *last_type, uint32_t *last_code,
			    int ms)
{
	static uint8_t p[1 << 20];
	struct kvp_frame_hdr h;

	for (;;) {
		if (!read_frame(fd, &h, p, sizeof(p), ms))
			return false;
		*last_type = h.type;
		if (h.type == (KVP_T_GENERATE | KVP_T_REPLY)) {
			struct kvp_token_chunk ch;
			cr_assert_eq(kvp_token_chunk_decode(p, h.len, &ch), 0);
			*tokens += ch.n;
			continue;
		}
		if (h.type == KVP_T_ERROR) {
			*last_code = error_code(p, h.len);
		} else {
			struct kvp_generate_done dn;
			cr_assert_eq(h.type, KVP_T_GENERATE_DONE);
			cr_assert_eq(kvp_generate_done_decode(p, h.len, &dn), 0);
			cr_assert_eq(dn.generated_tokens, *tokens, "usage says %u, %u came",
				     dn.generated_tokens, *tokens);
			*last_code = dn.finish;
		}
		return true;
	}
}

/* ---- 9: a half-closed client still gets its generation ---------------------------------- */

Test(hostile, half_closed_client_gets_its_whole_generation)
{
	const char *args[] = { "--model", tiny_model(), "--threads", "2", NULL };
	uint32_t prompt[20], tokens = 0, code;
	uint8_t type;
	int fd;

	start(args);
	fill(prompt, 20, 4);
	for (int i = 0; i < 20; i++)
		prompt[i] %= 512;
	fd = raw_connect();
	send_generate(fd, 5, prompt, 20, 30);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	cr_assert(read_generation(fd, &tokens, &type, &code, 30000),
		  "EOF before the generation ended");
	cr_assert_eq(type, KVP_T_GENERATE_DONE);
	cr_assert_eq(tokens, 30);
	cr_assert(closed_within(fd, 5000), "the connection stayed open after it");
	close(fd);
}

/* ---- 10: a graceful stop answers new connections and cut generations -------------------- */

Test(hostile, graceful_stop_refuses_new_connections_and_ends_cut_generations)
{
	const char *args[] = { "--model", long_model(), "--threads", "1", "--stop-timeout", "1",
			       NULL };
	uint32_t prompt[16], tokens = 0, code = 0;
	struct kvp_frame_hdr h;
	uint8_t type = 0, p[256];
	struct timespec t0, t1;
	int fd, late, st;

	start(args);
	fill(prompt, 16, 6);
	for (int i = 0; i < 16; i++)
		prompt[i] %= 512;
	fd = raw_connect();
	send_generate(fd, 9, prompt, 16, 100000);   /* to the context: ~8,000 tokens */
	cr_assert(read_frame(fd, &h, p, sizeof(p), 30000));   /* it is generating */
	cr_assert_eq(h.type, KVP_T_GENERATE | KVP_T_REPLY);
	tokens = kvp_le_get_u32(p);
	cr_assert_eq(kill(d.pid, SIGTERM), 0);
	usleep(200 * 1000);
	/* a connection during the stop is told so at once, not left in the backlog */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	late = raw_connect();
	cr_assert(read_frame(late, &h, p, sizeof(p), 5000), "no answer during the stop");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_eq(h.type, KVP_T_ERROR);
	cr_assert_eq(h.req_id, 0);
	cr_assert_eq(error_code(p, h.len), (uint32_t)-KVP_ESHUTDOWN);
	cr_assert_lt(t1.tv_sec - t0.tv_sec, 2);
	cr_assert(closed_within(late, 5000));
	close(late);
	/* the generation runs past the stop timeout: it ends with ESHUTDOWN, not EOF */
	cr_assert(read_generation(fd, &tokens, &type, &code, 30000),
		  "EOF with no ERROR after %u tokens", tokens);
	cr_assert_eq(type, KVP_T_ERROR);
	cr_assert_eq(code, (uint32_t)-KVP_ESHUTDOWN);
	close(fd);
	cr_assert_eq(waitpid(d.pid, &st, 0), d.pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvprefixd exited %d", st);
	d.pid = 0;
}

/* ---- 12: a generation that fills the context says so --------------------------------------- */

Test(hostile, a_full_context_before_max_new_is_finish_context)
{
	const char *args[] = { "--model", tiny_model(), "--threads", "2", NULL };
	struct kvp_client *c;
	struct kvp_generate_params gp;
	struct kvp_usage u;
	uint32_t prompt[60];
	char cmd[2048], out[4096], list[1024];
	size_t n = 0;

	start(args);
	fill(prompt, 60, 8);
	for (int i = 0; i < 60; i++) {
		prompt[i] %= 512;
		n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%u", i ? "," : "", prompt[i]);
	}
	c = conn();
	kvp_generate_params_init(&gp);
	gp.max_new = 50;
	/* ctx 64: positions 60..63 take 4 more, and a 5th token is drawn at the end */
	cr_assert_eq(kvp_client_generate(c, prompt, 60, &gp, NULL, NULL, &u), 0,
		     "%s", kvp_client_error(c));
	cr_assert_eq(u.generated_tokens, 5);
	cr_assert_eq(u.finish, KVP_FINISH_CONTEXT);
	/* exactly what the context allows, asked for: that is max_new's end */
	gp.max_new = 5;
	cr_assert_eq(kvp_client_generate(c, prompt, 60, &gp, NULL, NULL, &u), 0);
	cr_assert_eq(u.finish, KVP_FINISH_LENGTH);
	kvp_client_close(c);
	snprintf(cmd, sizeof(cmd), "%s generate --socket %s --tokens %s --max-new 50 --json 2>&1",
		 KVP_CLI_PATH, d.socket, list);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0, "%s", out);
	cr_assert(strstr(out, "\"finish\":\"context\""), "%s", out);
}

/* ---- 8: a generation holds blocks for what it computed, not for max_new ----------------- */

/* A 16-token prompt with max_new 4000 in a pool of 64 blocks (1,024 positions) used to be
 * refused before its first token (it pinned 251 blocks up front); it runs now, and when
 * the pool has no block for its next tokens it ends with EFULL after the ~1,000 it got.
 * Meanwhile another client's generation still gets its blocks. */
Test(hostile, a_generation_takes_blocks_as_it_fills_them)
{
	const char *args[] = { "--model", long_model(), "--threads", "1", "--block-tokens", "16",
			       "--capacity-blocks", "64", "--kv-dtype", "f32", NULL };
	uint32_t prompt[16], tokens = 0, code = 0;
	struct kvp_generate_params gp;
	struct kvp_usage u;
	struct kvp_client *c;
	uint8_t type = 0;
	int fd;

	start(args);
	fill(prompt, 16, 12);
	for (int i = 0; i < 16; i++)
		prompt[i] %= 512;
	fd = raw_connect();
	send_generate(fd, 3, prompt, 16, 4000);
	/* while it runs, a short generation of another client is served */
	c = conn();
	kvp_generate_params_init(&gp);
	gp.max_new = 8;
	prompt[0] ^= 1;
	cr_assert_eq(kvp_client_generate(c, prompt, 16, &gp, NULL, NULL, &u), 0,
		     "%s", kvp_client_error(c));
	cr_assert_eq(u.generated_tokens, 8);
	kvp_client_close(c);
	cr_assert(read_generation(fd, &tokens, &type, &code, 60000), "EOF after %u", tokens);
	cr_assert_eq(type, KVP_T_ERROR, "it finished with %u tokens in 64 blocks", tokens);
	cr_assert_eq(code, (uint32_t)-KVP_EFULL);
	cr_assert_geq(tokens, 900, "only %u tokens before EFULL", tokens);
	close(fd);
}
