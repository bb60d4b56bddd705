/*
 * test_client.c - libkvprefix and the tools facing a server they should not trust or
 * that answers oddly: a daemon run by another user, a socket directory another user
 * made, a daemon that refuses the connection, and a GENERATE that ends with a full
 * context; and the bytes of a KEEP that the library and the CLI send, or refuse to.
 * Real daemons where the daemon can say it; a scripted server on a socket of the
 * test's own (fake_*) where the daemon cannot, or not yet.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "kvp_proto.h"
#include "kvprefix.h"

#define NOBODY 65534

static struct kvp_daemon d;

static void stop(void)
{
	if (d.pid > 0)
		cr_expect_eq(kvp_daemon_stop(&d), 0, "kvprefixd exited badly (its log is above)");
}

static void need_root(void)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a process as another uid (nobody)");
}

/* Run cmd (through sh, stderr into the output) and return its exit status. */
static int run(char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int run(char *out, size_t cap, const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	return kvp_run_capture(cmd, out, cap);
}

/* Fork; in the child become uid/gid NOBODY and return fn()'s value as the exit status. */
static int as_nobody(int (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
			_exit(100);
		_exit(fn(arg));
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a daemon run by another user -------------------------------------------------- */

static void start_as_nobody(void)
{
	need_root();
	cr_assert_eq(kvp_daemon_start_as(&d, NULL, NOBODY, NOBODY), 0,
		     "kvprefixd did not start as nobody");
}

TestSuite(server_uid, .init = start_as_nobody, .fini = stop, .timeout = 60);

/* root's client, and root's tools, refuse a daemon of nobody's before sending anything */
Test(server_uid, another_users_daemon_is_refused)
{
	struct kvp_client *c = NULL;
	char out[4096], *json = NULL;
	int rc;

	unsetenv("KVP_SERVER_UID");
	cr_assert_eq(kvp_client_new(&c), 0);
	rc = kvp_client_open(c, d.socket);
	cr_assert_eq(rc, KVP_EPERM, "open: %s", kvp_strerror(rc));
	cr_assert(strstr(kvp_client_error(c), "runs as uid 65534 (nobody), not root, you or "
				"the kvprefix user: refusing to send it your prompts"),
		  "%s", kvp_client_error(c));
	cr_assert(strstr(kvp_client_error(c), "set KVP_SERVER_UID=65534 or --server-uid 65534 "
				"if you trust it"), "%s", kvp_client_error(c));
	cr_assert_eq(kvp_client_ping(c, "x", 1), KVP_ECLOSED, "an unopened client sends nothing");
	kvp_client_close(c);
	cr_assert_eq(kvp_client_connect(d.socket, &c), KVP_EPERM);
	cr_assert_null(c);

	rc = run(out, sizeof(out), "'%s' insert --socket '%s' --tokens 1,2,3,4", KVP_CLI_PATH,
		 d.socket);
	cr_assert_eq(rc, 1, "kvprefix insert: %d\n%s", rc, out);
	cr_assert(strstr(out, "kvprefix: kvprefixd at ") && strstr(out, "runs as uid 65534"),
		  "%s", out);
	rc = run(out, sizeof(out), "'%s' --socket '%s'", KVP_STAT_PATH, d.socket);
	cr_assert_eq(rc, 1, "kvprefix-stat: %d\n%s", rc, out);
	cr_assert(strstr(out, "--server-uid 65534 if you trust it"), "%s", out);

	/* nothing reached the daemon: trusted now, it has seen no insert */
	cr_assert_eq(kvp_client_new(&c), 0);
	cr_assert_eq(kvp_client_set_server_uid(c, NOBODY), 0);
	cr_assert_eq(kvp_client_open(c, d.socket), 0, "%s", kvp_client_error(c));
	cr_assert_eq(kvp_client_stats(c, &json), 0);
	cr_assert(strstr(json, "\"inserts\":0,"), "%s", json);
	free(json);
	kvp_client_close(c);
}

/* KVP_SERVER_UID, --server-uid and kvp_client_set_server_uid each make it trusted */
Test(server_uid, named_uid_is_trusted)
{
	struct kvp_client *c = NULL;
	char out[4096];
	int rc;

	setenv("KVP_SERVER_UID", "65534", 1);
	rc = kvp_client_connect(d.socket, &c);
	cr_assert_eq(rc, 0, "with KVP_SERVER_UID: %s", kvp_strerror(rc));
	cr_assert_eq(kvp_client_ping(c, "x", 1), 0);
	kvp_client_close(c);
	rc = run(out, sizeof(out), "'%s' --socket '%s' --json", KVP_STAT_PATH, d.socket);
	cr_assert_eq(rc, 0, "KVP_SERVER_UID=65534 kvprefix-stat: %d\n%s", rc, out);

	setenv("KVP_SERVER_UID", "1", 1);
	cr_assert_eq(kvp_client_connect(d.socket, &c), KVP_EPERM, "another uid named");
	unsetenv("KVP_SERVER_UID");
	rc = run(out, sizeof(out), "'%s' ping --server-uid 65534 --socket '%s'", KVP_CLI_PATH,
		 d.socket);
	cr_assert_eq(rc, 0, "kvprefix ping --server-uid: %d\n%s", rc, out);
	rc = run(out, sizeof(out), "'%s' --server-uid 65534 --socket '%s'", KVP_STAT_PATH,
		 d.socket);
	cr_assert_eq(rc, 0, "kvprefix-stat --server-uid: %d\n%s", rc, out);
	rc = run(out, sizeof(out), "'%s' ping --server-uid nobody --socket '%s'", KVP_CLI_PATH,
		 d.socket);
	cr_assert_eq(rc, 2, "a --server-uid that is not a number is a usage error\n%s", out);

	cr_assert_eq(kvp_client_new(&c), 0);
	cr_assert_eq(kvp_client_set_server_uid(c, NOBODY), 0);
	cr_assert_eq(kvp_client_open(c, d.socket), 0, "%s", kvp_client_error(c));
	cr_assert_eq(kvp_client_ping(c, "x", 1), 0);
	cr_assert_eq(kvp_client_open(c, d.socket), KVP_EINVAL, "already open");
	kvp_client_close(c);
}

Test(server_uid, bad_kvp_server_uid_is_refused)
{
	struct kvp_client *c = NULL;

	setenv("KVP_SERVER_UID", "nobody", 1);
	cr_assert_eq(kvp_client_new(&c), 0);
	cr_assert_eq(kvp_client_open(c, d.socket), KVP_EINVAL);
	cr_assert(strstr(kvp_client_error(c), "KVP_SERVER_UID='nobody' is not a uid"), "%s",
		  kvp_client_error(c));
	kvp_client_close(c);
}

static int own_daemon(void *arg)
{
	struct kvp_client *c = NULL;
	struct kvp_server_info info;

	if (kvp_client_connect(arg, &c) != 0)
		return 1;
	if (kvp_client_hello(c, NULL, NULL, &info) != 0 || info.tenant != NOBODY)
		return 2;
	kvp_client_close(c);
	return 0;
}

/* a user's own daemon is trusted without being named */
Test(server_uid, own_daemon_is_trusted)
{
	unsetenv("KVP_SERVER_UID");
	cr_assert_eq(as_nobody(own_daemon, d.socket), 0);
}

/* ---- socket directories ---------------------------------------------------------- */

#define NOBODY_TMPDIR "/tmp/kvprefix-65534"

/* As nobody, without XDG_RUNTIME_DIR: the default path is in NOBODY_TMPDIR. Exit 0 when
 * the library and `kvprefix ping` refuse it with a message that has want and says what
 * to do (want NULL: accept it, and fail only to connect, as nothing listens). */
static int default_dir_as_nobody(void *arg)
{
	const char *want = arg;
	struct kvp_client *c = NULL;
	char out[4096];
	int rc;

	unsetenv("XDG_RUNTIME_DIR");
	unsetenv("KVP_SERVER_UID");
	if (kvp_client_new(&c) != 0)
		return 1;
	rc = kvp_client_open(c, NULL);
	if (!want)
		return rc == KVP_EIO && !kvp_client_error(c)[0] ? 0 : 2;
	if (rc != KVP_EPERM || !strstr(kvp_client_error(c), want) ||
	    !strstr(kvp_client_error(c), "remove " NOBODY_TMPDIR " and restart kvprefixd"))
		return 3;
	kvp_client_close(c);
	rc = run(out, sizeof(out), "'%s' ping", KVP_CLI_PATH);
	if (rc != 1 || !strstr(out, "not connecting to " NOBODY_TMPDIR "/kvprefixd.sock") ||
	    !strstr(out, want))
		return 4;
	return 0;
}

Test(socket_dir, shared_tmp_dir_of_another_user_or_open_to_all_is_refused)
{
	struct stat st;

	need_root();
	if (lstat(NOBODY_TMPDIR, &st) == 0)
		cr_skip_test(NOBODY_TMPDIR " exists already; not touching it");
	cr_assert_eq(mkdir(NOBODY_TMPDIR, 0700), 0);
	cr_assert_eq(chown(NOBODY_TMPDIR, NOBODY, NOBODY), 0);
	cr_assert_eq(as_nobody(default_dir_as_nobody, NULL), 0, "a private one is used");
	cr_assert_eq(chmod(NOBODY_TMPDIR, 0777), 0);
	cr_assert_eq(as_nobody(default_dir_as_nobody,
			       NOBODY_TMPDIR " is writable by every user (mode 0777)"), 0);
	cr_assert_eq(chmod(NOBODY_TMPDIR, 0775), 0);
	cr_assert_eq(as_nobody(default_dir_as_nobody,
			       NOBODY_TMPDIR " is writable by its group (mode 0775)"), 0);
	cr_assert_eq(chmod(NOBODY_TMPDIR, 0755), 0);
	cr_assert_eq(chown(NOBODY_TMPDIR, NOBODY - 1, NOBODY - 1), 0);
	cr_assert_eq(as_nobody(default_dir_as_nobody,
			       NOBODY_TMPDIR " belongs to uid 65533"), 0);
	cr_assert_eq(rmdir(NOBODY_TMPDIR), 0);
}

/* the daemon refuses a directory others can write to, and its log says what to do */
Test(socket_dir, daemon_refuses_a_directory_open_to_all, .fini = stop)
{
	char dir[64], path[128], args_sock[160], log[8192];
	const char *args[] = { "--socket", args_sock, NULL };
	FILE *f;
	size_t n;

	cr_assert_eq(kvp_tmpdir_make(dir, sizeof(dir), "opendir"), 0);
	cr_assert_eq(chmod(dir, 0777), 0);
	snprintf(args_sock, sizeof(args_sock), "%s/kvprefixd.sock", dir);
	cr_assert_neq(kvp_daemon_start(&d, args), 0, "kvprefixd listened in a 0777 directory");
	snprintf(path, sizeof(path), "%s", d.log);
	f = fopen(path, "r");
	cr_assert_not_null(f);
	n = fread(log, 1, sizeof(log) - 1, f);
	log[n] = '\0';
	fclose(f);
	cr_assert(strstr(log, "is writable by every user (mode 0777)") &&
		  strstr(log, "remove it and start again") && strstr(log, "--socket"),
		  "the log does not say what to do:\n%s", log);
	kvp_spawn_stop(&d, 1000, NULL);
	kvp_spawn_remove(&d);
	kvp_tmpdir_remove(dir);
}

/* ---- a scripted server ------------------------------------------------------------------ */

/* Accepts `conns` connections one after the other; on each, reads one request frame
 * first (unless !read_first; kept in req, the last connection's) and sends `script`,
 * then closes. */
struct fake {
	char dir[64], path[108];
	int lfd, conns;
	bool read_first;
	uint8_t script[1024];
	size_t len;
	uint8_t req[4096];   /* the request frame read, header first */
	size_t req_len;      /* its bytes: 0 when none came whole */
	pthread_t th;
};

static void fake_read_frame(struct fake *f, int fd)
{
	struct kvp_frame_hdr h;
	size_t got = 0;

	f->req_len = 0;
	while (got < KVP_HDR_SIZE) {
		ssize_t r = recv(fd, f->req + got, KVP_HDR_SIZE - got, 0);

		if (r <= 0)
			return;
		got += (size_t)r;
	}
	if (kvp_hdr_decode(f->req, KVP_HDR_SIZE, sizeof(f->req) - KVP_HDR_SIZE, &h) != 0)
		return;
	for (got = 0; got < h.len;) {
		ssize_t r = recv(fd, f->req + KVP_HDR_SIZE + got, h.len - got, 0);

		if (r <= 0)
			return;
		got += (size_t)r;
	}
	f->req_len = KVP_HDR_SIZE + h.len;
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;

	for (int i = 0; i < f->conns; i++) {
		int fd = accept(f->lfd, NULL, NULL);

		if (fd < 0)
			break;
		if (f->read_first)
			fake_read_frame(f, fd);
		(void)send(fd, f->script, f->len, MSG_NOSIGNAL);
		close(fd);
	}
	return NULL;
}

/* Append one frame (version 1) to the script. */
static void fake_add(struct fake *f, uint8_t type, uint32_t req_id, const uint8_t *p, size_t n)
{
	struct kvp_frame_hdr h = { .version = 1, .type = type, .req_id = req_id,
				   .len = (uint32_t)n };

	cr_assert(f->len + KVP_HDR_SIZE + n <= sizeof(f->script));
	kvp_hdr_encode(f->script + f->len, &h);
	memcpy(f->script + f->len + KVP_HDR_SIZE, p, n);
	f->len += KVP_HDR_SIZE + n;
}

static void fake_start(struct fake *f, int conns)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	cr_assert_eq(kvp_tmpdir_make(f->dir, sizeof(f->dir), "fake"), 0);
	snprintf(f->path, sizeof(f->path), "%s/fake.sock", f->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert(f->lfd >= 0);
	cr_assert_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(f->lfd, 8), 0);
	f->conns = conns;
	cr_assert_eq(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->th, NULL);
	close(f->lfd);
	kvp_tmpdir_remove(f->dir);
}

/* ---- a refused connection ------------------------------------------------------------ */

static void start_one_connection(void)
{
	const char *args[] = { "--max-connections", "1", NULL };

	cr_assert_eq(kvp_daemon_start(&d, args), 0, "kvprefixd did not start");
}

/* At its connection limit the daemon sends an ERROR with req_id 0 and closes: the call
 * returns its code with its text, and the tools say the connection was refused. */
Test(refused, connection_limit_is_reported_as_such, .init = start_one_connection,
     .fini = stop, .timeout = 60)
{
	struct kvp_client *held = NULL, *c = NULL;
	char out[4096];
	int rc;

	/* the harness's own probe may hold the one slot for a moment after start */
	for (int tries = 0;; tries++) {
		cr_assert_eq(kvp_client_connect(d.socket, &held), 0);
		if (kvp_client_ping(held, "x", 1) == 0)
			break;
		kvp_client_close(held);
		cr_assert_lt(tries, 100, "the one connection allowed never came free");
		usleep(20 * 1000);
	}

	cr_assert_eq(kvp_client_connect(d.socket, &c), 0);
	rc = kvp_client_ping(c, "x", 1);
	cr_assert_eq(rc, KVP_EBUSY, "ping: %s (%s)", kvp_strerror(rc), kvp_client_error(c));
	cr_assert_str_eq(kvp_client_error(c), "too many connections");
	cr_assert(kvp_client_refused(c));
	cr_assert_eq(kvp_client_ping(c, "x", 1), KVP_ECLOSED);
	kvp_client_close(c);

	for (int i = 0; i < 2; i++) {
		rc = i == 0 ? run(out, sizeof(out), "'%s' ping --socket '%s'", KVP_CLI_PATH, d.socket)
			    : run(out, sizeof(out), "'%s' --socket '%s'", KVP_STAT_PATH, d.socket);
		cr_assert_eq(rc, 1, "%s: exit %d\n%s", i ? "kvprefix-stat" : "kvprefix ping", rc,
			     out);
		cr_assert(strstr(out, "kvprefixd refused the connection (limit on concurrent work "
				 "reached): too many connections"), "%s", out);
		cr_assert_null(strstr(out, "malformed"), "%s", out);
	}
	cr_assert_eq(kvp_client_ping(held, "x", 1), 0, "the held connection is untouched");
	kvp_client_close(held);
}

/* The same unprompted ERROR during a graceful stop (ESHUTDOWN), from a scripted server:
 * before the request is read, and after it. */
Test(refused, shutting_down_is_reported_as_such, .timeout = 60)
{
	uint8_t p[64];
	struct fake f = { .read_first = false };
	struct kvp_client *c = NULL;
	char out[4096];
	size_t n = kvp_error_encode(p, sizeof(p), KVP_ESHUTDOWN, "kvprefixd is stopping");
	int rc;

	fake_add(&f, KVP_T_ERROR, 0, p, n);
	fake_start(&f, 3);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(kvp_client_connect(f.path, &c), 0);
		if (i == 1)
			usleep(50000);   /* the server has closed before the request is sent */
		rc = kvp_client_ping(c, "x", 1);
		cr_assert_eq(rc, KVP_ESHUTDOWN, "try %d: %s", i, kvp_strerror(rc));
		cr_assert_str_eq(kvp_client_error(c), "kvprefixd is stopping");
		cr_assert(kvp_client_refused(c));
		kvp_client_close(c);
	}
	rc = run(out, sizeof(out), "'%s' stats --socket '%s'", KVP_CLI_PATH, f.path);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "kvprefix: stats: kvprefixd refused the connection (daemon "
			 "shutting down): kvprefixd is stopping"), "%s", out);
	fake_stop(&f);
}

/* ---- GENERATE that fills the context ----------------------------------------------------- */

/* A GENERATE (req_id 1) answered with tokens 5 6 7 and a GENERATE_DONE saying finish. */
static void fake_generation(struct fake *f, uint32_t finish)
{
	static const uint32_t toks[3] = { 5, 6, 7 };
	struct kvp_generate_done done = { 2, 0, 2, 3, finish, 10, 20, 30, 0, NULL };
	uint8_t p[128];
	size_t n;

	n = kvp_token_chunk_encode(p, sizeof(p), toks, 3);
	fake_add(f, KVP_T_GENERATE | KVP_T_REPLY, 1, p, n);
	n = kvp_generate_done_encode(p, sizeof(p), &done, NULL);
	fake_add(f, KVP_T_GENERATE_DONE, 1, p, n);
}

static int generate_8(const char *path, struct kvp_usage *u, char *err, size_t cap)
{
	static const uint32_t prompt[2] = { 1, 2 };
	struct kvp_generate_params gp;
	struct kvp_client *c = NULL;
	int rc;

	kvp_generate_params_init(&gp);
	gp.max_new = 8;
	cr_assert_eq(kvp_client_connect(path, &c), 0);
	rc = kvp_client_generate(c, prompt, 2, &gp, NULL, NULL, u);
	snprintf(err, cap, "%s", kvp_client_error(c));
	kvp_client_close(c);
	return rc;
}

/* finish 2 (context) with fewer tokens than max_new is a correct ending */
Test(generate_finish, context_full_before_max_new_is_accepted, .timeout = 60)
{
	struct fake f = { .read_first = true };
	struct kvp_usage u;
	char out[4096], err[1100];
	int rc;

	fake_generation(&f, KVP_FINISH_CONTEXT);
	fake_start(&f, 2);
	rc = generate_8(f.path, &u, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s: %s", kvp_strerror(rc), err);
	cr_assert_eq(u.finish, KVP_FINISH_CONTEXT);
	cr_assert_eq(u.generated_tokens, 3);
	rc = run(out, sizeof(out), "'%s' generate --socket '%s' --tokens 1,2 --max-new 8 --json",
		 KVP_CLI_PATH, f.path);
	cr_assert_eq(rc, 0, "kvprefix generate: %d\n%s", rc, out);
	cr_assert(strstr(out, "\"tokens\":[5,6,7]") && strstr(out, "\"finish\":\"context\""),
		  "%s", out);
	fake_stop(&f);
}

/* finish 0 (length) after fewer than max_new tokens does not add up: refused, and the
 * refusal says what is wrong rather than only "malformed frame" */
Test(generate_finish, length_before_max_new_is_refused_saying_why, .timeout = 60)
{
	struct fake f = { .read_first = true };
	struct kvp_usage u;
	char out[4096], err[1100];
	int rc;

	fake_generation(&f, KVP_FINISH_LENGTH);
	fake_start(&f, 2);
	rc = generate_8(f.path, &u, err, sizeof(err));
	cr_assert_eq(rc, KVP_EPROTO, "%s", kvp_strerror(rc));
	cr_assert_str_eq(err, "GENERATE_DONE says finish 0 (length) after 3 of at most 8 "
			 "tokens, none a stop id");
	rc = run(out, sizeof(out), "'%s' generate --socket '%s' --tokens 1,2 --max-new 8",
		 KVP_CLI_PATH, f.path);
	cr_assert_eq(rc, 1, "%s", out);
	cr_assert(strstr(out, "kvprefix: generate: malformed frame: GENERATE_DONE says finish 0 "
			 "(length) after 3 of at most 8 tokens"), "%s", out);
	fake_stop(&f);
}

/* ---- KEEP: what goes out ------------------------------------------------------------ */

/* The request the scripted server read is one frame of type, req_id 1, whose payload
 * is want[0..n). */
static void assert_request(const struct fake *f, uint8_t type, const uint8_t *want, size_t n)
{
	struct kvp_frame_hdr h;

	cr_assert_eq(f->req_len, KVP_HDR_SIZE + n, "request of %zu bytes, want %zu",
		     f->req_len, KVP_HDR_SIZE + n);
	cr_assert_eq(kvp_hdr_decode(f->req, f->req_len, UINT32_MAX, &h), 0);
	cr_assert_eq(h.type, type);
	cr_assert_eq(h.req_id, 1, "refused calls sent nothing before it");
	cr_assert(memcmp(f->req + KVP_HDR_SIZE, want, n) == 0, "the payload differs");
}

/* An INSERT reply (req_id 1): 4 tokens cached in one block, id 3. */
static void fake_insert_reply(struct fake *f)
{
	static const uint32_t ids[1] = { 3 };
	struct kvp_blocks_reply r = { 4, 5, 1, 0, 1, NULL };
	uint8_t p[64];

	fake_add(f, KVP_T_INSERT | KVP_T_REPLY, 1, p,
		 kvp_blocks_reply_encode(p, sizeof(p), &r, ids));
}

/* kvp_client_insert_keep refuses keep_s out of range before sending, and sends
 * keep_s and priority after the tokens, with KVP_F_KEEP. */
Test(keep, insert_keep_bytes_and_refusals, .timeout = 60)
{
	static const uint32_t toks[5] = { 10, 11, 12, 13, 14 };
	struct fake f = { .read_first = true };
	struct kvp_client *c = NULL;
	struct kvp_match m;
	uint8_t want[64];
	size_t n;

	fake_insert_reply(&f);
	fake_start(&f, 1);
	cr_assert_eq(kvp_client_connect(f.path, &c), 0);
	cr_assert_eq(kvp_client_insert_keep(c, toks, 5, 0, 0, 1, &m), KVP_EINVAL, "keep_s 0");
	cr_assert_eq(kvp_client_insert_keep(c, toks, 5, 0, KVP_KEEP_MAX_S + 1, 1, &m),
		     KVP_EINVAL);
	cr_assert_eq(kvp_client_insert_keep(c, toks, 5, 0x4u, 60, 1, &m), KVP_EINVAL,
		     "a reserved flag");
	cr_assert_eq(kvp_client_insert(c, toks, 5, KVP_F_KEEP, &m), KVP_EINVAL,
		     "KEEP without its fields");
	cr_assert_eq(kvp_client_lookup(c, toks, 5, KVP_F_KEEP, &m), KVP_EINVAL,
		     "KEEP is not LOOKUP's");
	cr_assert_eq(kvp_client_insert_keep(c, toks, 5, KVP_LOOKUP_PIN, KVP_KEEP_MAX_S,
					    UINT32_MAX, &m), 0, "%s", kvp_client_error(c));
	cr_assert_eq(m.matched_tokens, 4);
	kvp_client_close(c);
	fake_stop(&f);
	n = kvp_tokens_req_encode_keep(want, sizeof(want), KVP_F_PIN | KVP_F_KEEP, toks, 5,
				       KVP_KEEP_MAX_S, UINT32_MAX);
	cr_assert_eq(n, 16 + 20);
	assert_request(&f, KVP_T_INSERT, want, n);
}

/* The same through the CLI: kvprefix insert --keep --priority. */
Test(keep, cli_insert_keep_bytes, .timeout = 60)
{
	static const uint32_t toks[3] = { 1, 2, 3 };
	struct fake f = { .read_first = true };
	uint8_t want[64];
	char out[4096];
	size_t n;
	int rc;

	fake_insert_reply(&f);
	fake_start(&f, 1);
	rc = run(out, sizeof(out), "'%s' insert --socket '%s' --tokens 1,2,3 --keep 3600 "
		 "--priority 7", KVP_CLI_PATH, f.path);
	cr_assert_eq(rc, 0, "%s", out);
	fake_stop(&f);
	n = kvp_tokens_req_encode_keep(want, sizeof(want), KVP_F_KEEP, toks, 3, 3600, 7);
	assert_request(&f, KVP_T_INSERT, want, n);
}

/* kvp_client_generate with keep_s: KVP_GEN_KEEP, keep_s and priority after the prompt;
 * out of range, or a priority without keep_s, refused before sending. */
Test(keep, generate_keep_bytes_and_refusals, .timeout = 60)
{
	static const uint32_t prompt[2] = { 1, 2 };
	struct fake f = { .read_first = true };
	struct kvp_generate_params gp;
	struct kvp_generate_req m;
	struct kvp_client *c = NULL;
	struct kvp_usage u;
	uint8_t want[128];
	size_t n;

	fake_generation(&f, KVP_FINISH_CONTEXT);
	fake_start(&f, 1);
	cr_assert_eq(kvp_client_connect(f.path, &c), 0);
	kvp_generate_params_init(&gp);
	cr_assert(gp.keep_s == 0 && gp.priority == 0, "no keep by default");
	gp.max_new = 8;
	gp.priority = 5;
	cr_assert_eq(kvp_client_generate(c, prompt, 2, &gp, NULL, NULL, &u), KVP_EINVAL,
		     "a priority without keep_s");
	gp.keep_s = KVP_KEEP_MAX_S + 1;
	cr_assert_eq(kvp_client_generate(c, prompt, 2, &gp, NULL, NULL, &u), KVP_EINVAL);
	gp.keep_s = 0;
	gp.priority = 0;
	gp.flags = KVP_GEN_KEEP;
	cr_assert_eq(kvp_client_generate(c, prompt, 2, &gp, NULL, NULL, &u), KVP_EINVAL,
		     "KEEP without keep_s");
	gp.flags = 0;
	gp.keep_s = 60;
	gp.priority = 9;
	cr_assert_eq(kvp_client_generate(c, prompt, 2, &gp, NULL, NULL, &u), 0, "%s",
		     kvp_client_error(c));
	cr_assert_eq(u.generated_tokens, 3);
	kvp_client_close(c);
	fake_stop(&f);
	m = (struct kvp_generate_req){ .flags = KVP_GEN_KEEP, .max_new = 8, .top_p = 1.0f,
				       .n_tokens = 2, .keep_s = 60, .priority = 9 };
	n = kvp_generate_req_encode(want, sizeof(want), &m, NULL, prompt);
	cr_assert_eq(n, 36 + 8 + 8);
	assert_request(&f, KVP_T_GENERATE, want, n);
}

/* The same through the CLI: kvprefix generate --keep --priority. */
Test(keep, cli_generate_keep_bytes, .timeout = 60)
{
	static const uint32_t prompt[2] = { 1, 2 };
	struct kvp_generate_req m = { .flags = KVP_GEN_KEEP, .max_new = 8, .top_p = 1.0f,
				      .n_tokens = 2, .keep_s = 604800, .priority = 0 };
	struct fake f = { .read_first = true };
	uint8_t want[128];
	char out[4096];
	size_t n;
	int rc;

	fake_generation(&f, KVP_FINISH_CONTEXT);
	fake_start(&f, 1);
	rc = run(out, sizeof(out), "'%s' generate --socket '%s' --tokens 1,2 --max-new 8 "
		 "--keep 604800", KVP_CLI_PATH, f.path);
	cr_assert_eq(rc, 0, "%s", out);
	fake_stop(&f);
	n = kvp_generate_req_encode(want, sizeof(want), &m, NULL, prompt);
	assert_request(&f, KVP_T_GENERATE, want, n);
}
