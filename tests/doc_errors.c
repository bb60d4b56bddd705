/*
 * doc_errors.c - docs/protocol.md §5.1, the table of every ERROR the daemon sends, row
 * by row against real daemons: the code, the req_id, the header version and whether
 * the connection stays open are read from the page, and each row this file knows how
 * to provoke is sent as raw bytes. A row it cannot provoke must be named in
 * not_provoked[] with the reason, so a new row on the page fails the test until it is
 * checked or explained.
 *
 * Three daemons: index-only (small limits, one lease a connection), engine mode (the
 * 8-token model of §9.1, a pool of 4 blocks of 4 tokens) and one that takes a single
 * connection.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "doc_test_util.h"
#include "kvp_le.h"
#include "kvp_proto.h"

#define BAD_ID 7        /* req_id of the frame under test */
#define PROBE_ID 8      /* req_id of the PING that tells whether the connection stays */
#define RECV_MS 5000

enum daemon_kind { D_INDEX, D_ENGINE, D_ONE_CONN, D_KINDS };

/* One row of the page's table. */
struct row {
	char id[64];
	int code;           /* -1: no ERROR */
	int req_id;         /* 0, BAD_ID ("echoed"), or -1 ("—") */
	bool version_1;     /* the ERROR's header says 1, whatever the request's said */
	bool stays;
};

/* How to provoke a row: setup frames may come first; the bad frame goes last. */
struct provoker {
	const char *id;
	enum daemon_kind kind;
	uint8_t version;    /* of the bad frame's header */
	bool root;          /* only an admin peer gets this far */
	void (*send)(int fd, uint8_t version);
};

static const char *const not_provoked[][2] = {
	{ "generate-inflight-limit", "needs generations held running; test_generate checks it" },
	{ "generate-failed", "needs an engine failure or a stop cutting a generation short" },
	{ "admin-not-allowed", "needs a peer of another uid; test_daemon's admin suite checks it" },
	{ "stopping", "needs a stop held open by a running generation; test_systemd checks it" },
	{ "out-of-memory", "no memory to run out of on demand" },
	{ "frame-out-of-memory", "no memory to run out of on demand" },
	{ "refused-stopping", "needs a stop held open by a running generation; test_hostile "
			      "checks it" },
	{ "leased-blocks-limit", "needs a daemon with a small --max-leased-blocks; test_hostile "
				 "checks it" },
	{ "frame-timeout", "takes --frame-timeout (10 s) to see; test_hostile checks it" },
	{ "unread-replies", "sends no frame: a close; test_hostile checks it" },
	{ "refused-no-memory", "no memory to run out of on demand" },
};

static struct kvp_daemon daemons[D_KINDS];

/* ---- the page's table ------------------------------------------------------------ */

/* The cells of a table line "| a | b | ... |", trimmed, into cells (at most max). */
static int split_cells(char *line, char **cells, int max)
{
	int n = 0;
	char *p = strchr(line, '|');

	while (p && n < max) {
		char *next = strchr(p + 1, '|'), *a = p + 1, *z;

		if (!next)
			break;
		*next = '\0';
		while (*a == ' ')
			a++;
		for (z = next; z > a && z[-1] == ' ';)
			*--z = '\0';
		cells[n++] = a;
		p = next;
	}
	return n;
}

static int parse_table(const char *doc, struct row *rows, int max)
{
	const char *a = strstr(doc, "<!-- error-table -->"), *z = strstr(doc, "<!-- /error-table -->");
	int n = 0;

	cr_assert(a && z && a < z, "protocol.md has no error table");
	for (const char *p = a; p < z && n < max;) {
		const char *eol = strchr(p, '\n');
		char line[1024], *cells[8];

		snprintf(line, sizeof(line), "%.*s", (int)(eol - p), p);
		p = eol + 1;
		if (strncmp(line, "| `", 3) != 0)
			continue;
		cr_assert_eq(split_cells(line, cells, 8), 6, "a row of 6 cells: %s", line);
		snprintf(rows[n].id, sizeof(rows[n].id), "%.*s", (int)strlen(cells[0]) - 2,
			 cells[0] + 1);
		rows[n].code = strcmp(cells[2], "none") == 0 ? -1 : atoi(cells[2]);
		rows[n].req_id = strcmp(cells[3], "0") == 0 ? 0 :
				 strcmp(cells[3], "echoed") == 0 ? BAD_ID : -1;
		rows[n].version_1 = strcmp(cells[4], "1") == 0;
		rows[n].stays = strncmp(cells[5], "open", 4) == 0;
		cr_assert(rows[n].stays || strncmp(cells[5], "closed", 6) == 0, "%s", cells[5]);
		n++;
	}
	return n;
}

/* ---- raw frames ------------------------------------------------------------------- */

static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
	cr_assert_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* A frame with this header and payload. */
static void send_frame(int fd, uint8_t version, uint8_t type, uint32_t id, const void *p,
		       size_t n)
{
	uint8_t b[KVP_HDR_SIZE + 8192];
	struct kvp_frame_hdr h = { .version = version, .type = type, .req_id = id,
				   .len = (uint32_t)n };

	cr_assert(n <= sizeof(b) - KVP_HDR_SIZE);
	kvp_hdr_encode(b, &h);
	if (n)
		memcpy(b + KVP_HDR_SIZE, p, n);
	raw_send(fd, b, KVP_HDR_SIZE + n);
}

/* n bytes, or false at EOF (or a reset) before them. */
static bool recv_all(int fd, uint8_t *p, size_t n)
{
	for (size_t got = 0; got < n;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		cr_assert_eq(poll(&pfd, 1, RECV_MS), 1, "nothing from the daemon in %d ms", RECV_MS);
		r = recv(fd, p + got, n - got, 0);
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	return true;
}

/* The next frame's header (its payload in buf), or false at EOF. */
static bool recv_frame(int fd, struct kvp_frame_hdr *h, uint8_t *buf, size_t cap)
{
	uint8_t hb[KVP_HDR_SIZE];

	if (!recv_all(fd, hb, sizeof(hb)))
		return false;
	cr_assert_eq(kvp_hdr_decode(hb, sizeof(hb), (uint32_t)cap, h), 0);
	cr_assert(recv_all(fd, buf, h->len), "EOF inside a frame from the daemon");
	return true;
}

static void tokens_payload(uint8_t *p, uint32_t flags, uint32_t n, uint32_t first)
{
	kvp_le_put_u32(p, flags);
	kvp_le_put_u32(p + 4, n);
	for (uint32_t i = 0; i < n; i++)
		kvp_le_put_u32(p + 8 + 4 * i, first + i);
}

/* Send a setup request and read its reply, which must not be an ERROR. */
static void setup(int fd, uint8_t type, const uint8_t *p, size_t n)
{
	struct kvp_frame_hdr h;
	uint8_t buf[4096];

	send_frame(fd, 1, type, 100, p, n);
	cr_assert(recv_frame(fd, &h, buf, sizeof(buf)));
	cr_assert_eq(h.type, type | KVP_T_REPLY, "setup request 0x%02x refused", type);
}

/* ---- the provokers ------------------------------------------------------------------ */

static void p_bad_magic(int fd, uint8_t v)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { .version = v, .type = KVP_T_PING, .req_id = BAD_ID };

	kvp_hdr_encode(b, &h);
	b[3] = '2';   /* "KVP2" */
	raw_send(fd, b, sizeof(b));
}

static void p_bad_version(int fd, uint8_t v)
{
	send_frame(fd, KVP_PROTO_VERSION_MAX + 1, KVP_T_PING, BAD_ID, NULL, 0);
}

static void p_unknown_type(int fd, uint8_t v)
{
	send_frame(fd, v, 0x0b, BAD_ID, NULL, 0);
}

static void p_fleet_below_v4(int fd, uint8_t v)
{
	uint8_t p[8 + 4 * 4];

	tokens_payload(p, 0, 4, 1);
	send_frame(fd, v, KVP_T_FLEET, BAD_ID, p, sizeof(p));
}

static void p_admin_v1(int fd, uint8_t v)
{
	send_frame(fd, 1, KVP_T_ADMIN, BAD_ID, NULL, 0);
}

static void p_header_flags(int fd, uint8_t v)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { .version = v, .type = KVP_T_PING, .req_id = BAD_ID, .flags = 1 };

	kvp_hdr_encode(b, &h);
	raw_send(fd, b, sizeof(b));
}

static void p_frame_too_big(int fd, uint8_t v)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { .version = v, .type = KVP_T_PING, .req_id = BAD_ID,
				   .len = 1u << 20 };

	kvp_hdr_encode(b, &h);
	raw_send(fd, b, sizeof(b));   /* and not the megabyte it announces */
}

static void p_reply_type(int fd, uint8_t v)
{
	send_frame(fd, v, KVP_T_LOOKUP | KVP_T_REPLY, BAD_ID, NULL, 0);
}

static void p_error_type(int fd, uint8_t v)
{
	send_frame(fd, v, KVP_T_ERROR, BAD_ID, NULL, 0);
}

static void p_eof_in_frame(int fd, uint8_t v)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { .version = v, .type = KVP_T_PING, .req_id = BAD_ID, .len = 8 };

	kvp_hdr_encode(b, &h);
	raw_send(fd, b, sizeof(b));
	raw_send(fd, "half", 4);
	shutdown(fd, SHUT_WR);
}

static void p_bad_layout(int fd, uint8_t v)
{
	uint8_t p[12];

	tokens_payload(p, 0, 1, 1);
	kvp_le_put_u32(p + 4, 5);   /* says 5 tokens, carries 1 */
	send_frame(fd, v, KVP_T_LOOKUP, BAD_ID, p, sizeof(p));
}

static void p_reserved_flags(int fd, uint8_t v)
{
	uint8_t p[8];

	tokens_payload(p, 0x2, 0, 0);
	send_frame(fd, v, KVP_T_LOOKUP, BAD_ID, p, sizeof(p));
}

static void p_stats_payload(int fd, uint8_t v)
{
	send_frame(fd, v, KVP_T_STATS, BAD_ID, "x", 1);
}

/* HELLO offering version with this adapter and salt. */
static void hello(int fd, uint8_t v, uint32_t version, const char *adapter, size_t alen,
		  const char *salt)
{
	struct kvp_hello m = { version, 0, adapter, (uint16_t)alen, salt, (uint16_t)strlen(salt) };
	uint8_t p[12 + 2 * 300];
	size_t n = 12 + alen + m.salt_len;

	/* the encoder refuses names over 255 bytes: lay it out by hand */
	kvp_le_put_u32(p, m.version);
	kvp_le_put_u32(p + 4, 0);
	kvp_le_put_u16(p + 8, m.adapter_len);
	memcpy(p + 10, adapter, alen);
	kvp_le_put_u16(p + 10 + alen, m.salt_len);
	memcpy(p + 12 + alen, salt, m.salt_len);
	send_frame(fd, v, KVP_T_HELLO, BAD_ID, p, n);
}

static void p_hello_version_0(int fd, uint8_t v)
{
	hello(fd, v, 0, "", 0, "");
}

static void p_hello_long_name(int fd, uint8_t v)
{
	char a[256];

	memset(a, 'a', sizeof(a));
	hello(fd, v, 3, a, sizeof(a), "");
}

static void p_hello_control_byte(int fd, uint8_t v)
{
	hello(fd, v, 3, "a\x01", 2, "");
}

static void p_hello_salt_refused(int fd, uint8_t v)
{
	hello(fd, v, 3, "", 0, "salt");
}

static void p_too_many_tokens(int fd, uint8_t v)
{
	uint8_t p[8 + 4 * 65];

	tokens_payload(p, 0, 65, 1);   /* the daemon takes 64 */
	send_frame(fd, v, KVP_T_LOOKUP, BAD_ID, p, sizeof(p));
}

static void p_unknown_lease(int fd, uint8_t v)
{
	uint8_t p[8];

	kvp_le_put_u64(p, 12345);
	send_frame(fd, v, KVP_T_RELEASE, BAD_ID, p, sizeof(p));
}

static void p_lease_limit(int fd, uint8_t v)
{
	uint8_t p[8 + 16];

	tokens_payload(p, 0, 4, 500);
	setup(fd, KVP_T_INSERT, p, sizeof(p));
	tokens_payload(p, KVP_F_PIN, 4, 500);
	setup(fd, KVP_T_LOOKUP, p, sizeof(p));   /* the one lease allowed */
	send_frame(fd, v, KVP_T_LOOKUP, BAD_ID, p, sizeof(p));
}

static void p_insert_bad_keep(int fd, uint8_t v)
{
	static const uint32_t t[4] = { 1, 2, 3, 4 };
	uint8_t p[16 + 16];

	cr_assert_eq(kvp_tokens_req_encode_keep(p, sizeof(p), KVP_F_KEEP, t, 4, 60, 1),
		     sizeof(p));
	kvp_le_put_u32(p + 8 + 16, 0);   /* keep_s 0: out of range, the layout sound */
	send_frame(fd, v, KVP_T_INSERT, BAD_ID, p, sizeof(p));
}

static void p_insert_engine(int fd, uint8_t v)
{
	uint8_t p[8 + 16];

	tokens_payload(p, 0, 4, 1);
	send_frame(fd, v, KVP_T_INSERT, BAD_ID, p, sizeof(p));
}

/* A GENERATE of an n-token prompt (its last token `last`, unless 0), greedy, with this
 * max_new and top_p (written as is, even where the encoder would refuse it). */
static void generate(int fd, uint8_t v, uint32_t n, uint32_t last, uint32_t max_new, float top_p)
{
	struct kvp_generate_req m = { .max_new = max_new, .top_p = 1.0f, .n_tokens = n };
	uint32_t t[128];
	uint8_t p[36 + 4 * 128];
	size_t len = kvp_generate_req_size(0, n);

	cr_assert(n <= 128);
	for (uint32_t i = 0; i < n; i++)
		t[i] = (i % 7) + 1;
	if (last)
		t[n - 1] = last;
	cr_assert_eq(kvp_generate_req_encode(p, sizeof(p), &m, NULL, t), len);
	kvp_le_put_f32(p + 16, top_p);
	send_frame(fd, v, KVP_T_GENERATE, BAD_ID, p, len);
}

static void p_fleet_ok(int fd, uint8_t v)
{
	uint8_t p[8 + 4 * 4];

	tokens_payload(p, 0, 4, 1);
	send_frame(fd, v, KVP_T_FLEET, BAD_ID, p, sizeof(p));
}

static void p_generate_ok(int fd, uint8_t v)
{
	generate(fd, v, 4, 0, 1, 1.0f);
}

static void p_generate_bad_value(int fd, uint8_t v)
{
	generate(fd, v, 4, 0, 1, 0.0f);   /* top_p 0 */
}

static void p_generate_over_context(int fd, uint8_t v)
{
	generate(fd, v, 65, 0, 1, 1.0f);   /* the model's context is 64 */
}

static void p_generate_bad_token(int fd, uint8_t v)
{
	generate(fd, v, 2, 9, 1, 1.0f);    /* its vocabulary is 8 */
}

static void p_generate_no_blocks(int fd, uint8_t v)
{
	generate(fd, v, 20, 0, 1, 1.0f);   /* a prompt of 5 blocks, a pool of 4 */
}

/* ADMIN op with flags/tenant, tokens 1..n, text. */
static void admin(int fd, uint8_t v, uint32_t op, uint32_t flags, uint32_t tenant, uint32_t n,
		  const char *text, size_t tlen)
{
	static uint8_t p[18 + 4 * 8 + 5000];
	size_t len = 18 + 4 * (size_t)n + tlen;

	kvp_le_put_u32(p, op);
	kvp_le_put_u32(p + 4, flags);
	kvp_le_put_u32(p + 8, tenant);
	kvp_le_put_u32(p + 12, n);
	for (uint32_t i = 0; i < n; i++)
		kvp_le_put_u32(p + 16 + 4 * i, i + 1);
	kvp_le_put_u16(p + 16 + 4 * n, (uint16_t)tlen);
	memcpy(p + 18 + 4 * n, text, tlen);
	send_frame(fd, v, KVP_T_ADMIN, BAD_ID, p, len);
}

static void p_admin_bad_value(int fd, uint8_t v)
{
	admin(fd, v, KVP_ADMIN_CLEAR, 0, 5, 0, "", 0);   /* a tenant without TENANT */
}

static void p_admin_text_too_long(int fd, uint8_t v)
{
	static char text[KVP_ADMIN_TEXT_MAX + 1];

	memset(text, 'k', sizeof(text));
	admin(fd, v, KVP_ADMIN_CONFIG, 0, 0, 0, text, sizeof(text));
}

static void p_admin_unpin_none(int fd, uint8_t v)
{
	admin(fd, v, KVP_ADMIN_UNPIN, 0, 0, 4, "", 0);
}

static void p_admin_config_bad(int fd, uint8_t v)
{
	admin(fd, v, KVP_ADMIN_CONFIG, 0, 0, 0, "no-such-key", 11);
}

static void p_admin_config_restart(int fd, uint8_t v)
{
	admin(fd, v, KVP_ADMIN_CONFIG, 0, 0, 0, "block-tokens=8", 14);
}

static void p_nothing(int fd, uint8_t v)
{
}

static const struct provoker provokers[] = {
	{ "bad-magic", D_INDEX, 2, false, p_bad_magic },
	{ "bad-version", D_INDEX, 2, false, p_bad_version },
	{ "unknown-type", D_INDEX, 2, false, p_unknown_type },
	{ "admin-in-version-1", D_INDEX, 1, false, p_admin_v1 },
	{ "fleet-below-version-4", D_INDEX, 3, false, p_fleet_below_v4 },
	{ "header-flags", D_INDEX, 2, false, p_header_flags },
	{ "frame-too-big", D_INDEX, 2, false, p_frame_too_big },
	{ "reply-type", D_INDEX, 2, false, p_reply_type },
	{ "error-type", D_INDEX, 3, false, p_error_type },
	{ "eof-in-frame", D_INDEX, 2, false, p_eof_in_frame },
	{ "bad-layout", D_INDEX, 2, false, p_bad_layout },
	{ "reserved-flags", D_INDEX, 3, false, p_reserved_flags },
	{ "stats-payload", D_INDEX, 2, false, p_stats_payload },
	{ "hello-version-0", D_INDEX, 2, false, p_hello_version_0 },
	{ "hello-long-name", D_INDEX, 2, false, p_hello_long_name },
	{ "hello-control-byte", D_INDEX, 2, false, p_hello_control_byte },
	{ "hello-salt-refused", D_INDEX, 3, false, p_hello_salt_refused },
	{ "too-many-tokens", D_INDEX, 2, false, p_too_many_tokens },
	{ "unknown-lease", D_INDEX, 2, false, p_unknown_lease },
	{ "lease-limit", D_INDEX, 2, false, p_lease_limit },
	{ "insert-bad-keep", D_INDEX, 3, false, p_insert_bad_keep },
	{ "insert-engine-mode", D_ENGINE, 2, false, p_insert_engine },
	{ "generate-index-only", D_INDEX, 2, false, p_generate_ok },
	{ "fleet-no-index", D_INDEX, 4, false, p_fleet_ok },
	{ "generate-bad-value", D_INDEX, 2, false, p_generate_bad_value },
	{ "generate-over-context", D_ENGINE, 2, false, p_generate_over_context },
	{ "generate-bad-token", D_ENGINE, 3, false, p_generate_bad_token },
	{ "generate-no-blocks", D_ENGINE, 2, false, p_generate_no_blocks },
	{ "admin-bad-value", D_INDEX, 2, false, p_admin_bad_value },
	{ "admin-text-too-long", D_INDEX, 2, false, p_admin_text_too_long },
	{ "admin-unpin-none", D_INDEX, 2, true, p_admin_unpin_none },
	{ "admin-config-bad", D_INDEX, 3, true, p_admin_config_bad },
	{ "admin-config-restart", D_INDEX, 2, true, p_admin_config_restart },
	{ "refused-busy", D_ONE_CONN, 1, false, p_nothing },
};
#define N_PROVOKERS (sizeof(provokers) / sizeof(provokers[0]))

/* ---- the checks ------------------------------------------------------------------ */

static const struct provoker *provoker_of(const char *id)
{
	for (size_t i = 0; i < N_PROVOKERS; i++)
		if (strcmp(provokers[i].id, id) == 0)
			return &provokers[i];
	return NULL;
}

static const char *why_not_provoked(const char *id)
{
	for (size_t i = 0; i < sizeof(not_provoked) / sizeof(not_provoked[0]); i++)
		if (strcmp(not_provoked[i][0], id) == 0)
			return not_provoked[i][1];
	return NULL;
}

/* A PING gets its PONG: the connection is usable. */
static void ping_pong(int fd, const char *id)
{
	struct kvp_frame_hdr h;
	uint8_t buf[64];

	send_frame(fd, 1, KVP_T_PING, PROBE_ID, "p", 1);
	cr_assert(recv_frame(fd, &h, buf, sizeof(buf)), "%s: the connection was closed", id);
	cr_assert(h.type == (KVP_T_PING | KVP_T_REPLY) && h.req_id == PROBE_ID,
		  "%s: type 0x%02x req_id %u after the ERROR, want a PONG", id, h.type, h.req_id);
}

/* Provoke row r and check what the daemon does against the page. */
static void check_row(const struct row *r, const struct provoker *pv)
{
	const char *sock = daemons[pv->kind].socket;
	uint8_t buf[4096];
	struct kvp_frame_hdr h;
	struct kvp_error e;
	int held = -1, fd;

	if (pv->kind == D_ONE_CONN) {
		held = raw_connect(sock);
		ping_pong(held, "the connection held");
	}
	fd = raw_connect(sock);
	pv->send(fd, pv->version);
	if (r->code < 0) {
		cr_assert(!recv_frame(fd, &h, buf, sizeof(buf)), "%s: a frame (type 0x%02x) where "
			  "the page says none", r->id, h.type);
		goto out;
	}
	cr_assert(recv_frame(fd, &h, buf, sizeof(buf)), "%s: closed without an ERROR", r->id);
	cr_assert_eq(h.type, KVP_T_ERROR, "%s: type 0x%02x, not an ERROR", r->id, h.type);
	cr_assert_eq(kvp_error_decode(buf, h.len, &e), 0);
	cr_assert_eq((int)e.code, r->code, "%s: code %u (%.*s), the page says %d", r->id, e.code,
		     e.msg_len, e.msg, r->code);
	cr_assert_eq((int)h.req_id, r->req_id, "%s: req_id %u, the page says %d", r->id, h.req_id,
		     r->req_id);
	cr_assert_eq(h.version, r->version_1 ? 1 : pv->version, "%s: an ERROR of version %u to a "
		     "version-%u frame", r->id, h.version, pv->version);
	if (r->stays)
		ping_pong(fd, r->id);
	else
		cr_assert(!recv_frame(fd, &h, buf, sizeof(buf)), "%s: still open after the ERROR",
			  r->id);
out:
	close(fd);
	if (held >= 0)
		close(held);
}

/* The 8-token model of protocol.md §9.1. */
static const char *tiny_model(void)
{
	return kvp_test_model("doc-tiny", "--vocab 8 --dim 8 --layers 1 --heads 2 --kv-heads 1 "
			      "--ffn 16 --ctx 64 --seed 8 --weight-std 0.5");
}

static void start_all(void)
{
	const char *index_args[] = { "--block-tokens", "4", "--max-tokens", "64",
				     "--max-frame-bytes", "8192", "--max-leases", "1", NULL };
	const char *engine_args[] = { "--model", tiny_model(), "--block-tokens", "4",
				      "--capacity-blocks", "4", "--max-tokens", "2048",
				      "--threads", "1", NULL };
	const char *one_args[] = { "--max-connections", "1", NULL };

	cr_assert_eq(kvp_daemon_start(&daemons[D_INDEX], index_args), 0);
	cr_assert_eq(kvp_daemon_start(&daemons[D_ENGINE], engine_args), 0);
	cr_assert_eq(kvp_daemon_start(&daemons[D_ONE_CONN], one_args), 0);
}

static void stop_all(void)
{
	for (int i = 0; i < D_KINDS; i++)
		if (daemons[i].pid > 0)
			cr_expect_eq(kvp_daemon_stop(&daemons[i]), 0, "daemon %d exited badly", i);
}

/* Every row is provoked here or says why not, and nothing here is off the page. */
Test(error_table, every_row_is_provoked_or_explained)
{
	char *doc = dt_read_doc("protocol.md");
	struct row rows[64];
	int n = parse_table(doc, rows, 64);

	cr_assert_geq(n, 30, "the table has %d rows", n);
	for (int i = 0; i < n; i++)
		cr_assert(provoker_of(rows[i].id) || why_not_provoked(rows[i].id),
			  "row %s: neither provoked nor explained", rows[i].id);
	for (size_t k = 0; k < N_PROVOKERS; k++) {
		bool found = false;

		for (int i = 0; i < n; i++)
			found |= strcmp(rows[i].id, provokers[k].id) == 0;
		cr_assert(found, "%s is not on the page", provokers[k].id);
	}
	free(doc);
}

Test(error_table, each_row_is_what_the_daemon_does, .init = start_all, .fini = stop_all,
     .timeout = 120)
{
	char *doc = dt_read_doc("protocol.md");
	struct row rows[64];
	int n = parse_table(doc, rows, 64), checked = 0;

	for (int i = 0; i < n; i++) {
		const struct provoker *pv = provoker_of(rows[i].id);

		if (!pv || (pv->root && geteuid() != 0))
			continue;
		check_row(&rows[i], pv);
		checked++;
	}
	cr_assert_geq(checked, 25, "only %d rows checked", checked);
	free(doc);
}
