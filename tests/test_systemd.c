/*
 * test_systemd.c - kvprefixd as a systemd service: the notify protocol, socket
 * activation, graceful stop on SIGTERM and reload on SIGHUP, each against the real
 * daemon (no systemd needed: the test plays its part).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

#include "daemon_harness.h"
#include "kvprefix.h"

static char dir[64];

static void mkdir_tmp(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kvp-sd-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void rm_tmp(void)
{
	char cmd[128], out[64];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	kvp_run_capture(cmd, out, sizeof(out));
}

static pid_t spawn(const char *const *argv, const char *const *env_add, const char *log)
{
	pid_t pid = fork();

	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		for (int i = 0; env_add && env_add[i]; i += 2)
			setenv(env_add[i], env_add[i + 1], 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static struct kvp_client *connect_retry(const char *sock)
{
	struct kvp_client *c = NULL;

	for (int i = 0; i < 1000; i++) {
		if (kvp_client_connect(sock, &c) == 0)
			return c;
		usleep(10000);
	}
	cr_assert_fail("cannot connect to %s", sock);
	return NULL;
}

static int wait_exit(pid_t pid, int seconds)
{
	int st;

	for (int i = 0; i < seconds * 100; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

TestSuite(systemd, .init = mkdir_tmp, .fini = rm_tmp, .timeout = 120);

/* READY=1 once listening, WATCHDOG=1 from the loop, STOPPING=1 on SIGTERM, in order. */
Test(systemd, notify_protocol_in_order)
{
	char ns[96], sock[96], log[96], buf[512];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 5, 0 };
	int rfd, saw_ready = 0, saw_watchdog = 0, saw_stopping = 0, saw_status = 0;
	pid_t pid;

	snprintf(ns, sizeof(ns), "%s/notify", dir);
	snprintf(sock, sizeof(sock), "%s/d.sock", dir);
	snprintf(log, sizeof(log), "%s/d.log", dir);
	rfd = socket(AF_UNIX, SOCK_DGRAM, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", ns);
	cr_assert_eq(bind(rfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(rfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

	const char *argv[] = { KVP_DAEMON_PATH, "--index-only", "--socket", sock, NULL };
	const char *env[] = { "NOTIFY_SOCKET", ns, "WATCHDOG_USEC", "200000", NULL };
	pid = spawn(argv, env, log);

	while (!saw_stopping) {
		ssize_t n = recv(rfd, buf, sizeof(buf) - 1, 0);
		cr_assert_gt(n, 0, "no notification within 5 s (ready %d, watchdog %d)", saw_ready,
			     saw_watchdog);
		buf[n] = '\0';
		if (strstr(buf, "READY=1")) {
			struct stat st;
			cr_assert_eq(saw_ready, 0);
			cr_assert_eq(stat(sock, &st), 0, "READY=1 only once the socket listens");
			struct kvp_client *c = connect_retry(sock);
			cr_assert_eq(kvp_client_ping(c, "r", 1), 0);
			kvp_client_close(c);
			saw_ready = 1;
		}
		if (strstr(buf, "STATUS="))
			saw_status++;
		if (strstr(buf, "WATCHDOG=1")) {
			cr_assert(saw_ready, "WATCHDOG=1 before READY=1");
			if (++saw_watchdog == 2)
				kill(pid, SIGTERM);
		}
		if (strstr(buf, "STOPPING=1")) {
			cr_assert_geq(saw_watchdog, 2);
			saw_stopping = 1;
		}
	}
	cr_assert_gt(saw_status, 0, "a STATUS= line for systemctl status");
	cr_assert_eq(wait_exit(pid, 10), 0);
	close(rfd);
}

/* Started by systemd-socket-activate, the daemon serves on the socket it is given. */
Test(systemd, socket_activation)
{
	char sock[96], log[96];
	struct kvp_client *c;
	struct kvp_match m;
	uint32_t t[32];

	if (access("/usr/bin/systemd-socket-activate", X_OK) != 0)
		cr_skip_test("systemd-socket-activate is not installed (package systemd)");
	snprintf(sock, sizeof(sock), "%s/act.sock", dir);
	snprintf(log, sizeof(log), "%s/d.log", dir);
	const char *argv[] = { "/usr/bin/systemd-socket-activate", "-l", sock, KVP_DAEMON_PATH,
			       "--index-only", "--socket", "/nonexistent/ignored.sock", NULL };
	pid_t pid = spawn(argv, NULL, log);
	c = connect_retry(sock);
	for (int i = 0; i < 32; i++)
		t[i] = (uint32_t)i * 7;
	cr_assert_eq(kvp_client_insert(c, t, 32, 0, &m), 0);
	cr_assert_eq(kvp_client_lookup(c, t, 32, 0, &m), 0);
	cr_assert_eq(m.matched_tokens, 32);
	kvp_client_close(c);
	kill(pid, SIGTERM);
	cr_assert_eq(wait_exit(pid, 10), 0);
	char out[4096], cmd[256];
	snprintf(cmd, sizeof(cmd), "cat %s", log);
	kvp_run_capture(cmd, out, sizeof(out));
	cr_assert(strstr(out, "from systemd") != NULL, "the log says the socket came from systemd: %s", out);
}

struct gen_arg {
	const char *sock;
	int rc;
	uint32_t n;
	struct kvp_usage u;
};

static void count(void *arg, const uint32_t *t, uint32_t n)
{
	((struct gen_arg *)arg)->n += n;
}

static void *gen_main(void *p)
{
	struct gen_arg *g = p;
	struct kvp_client *c = connect_retry(g->sock);
	struct kvp_generate_params gp;
	uint32_t t[200];

	for (int i = 0; i < 200; i++)
		t[i] = (uint32_t)(i * 37) % 512;
	kvp_generate_params_init(&gp);
	gp.max_new = 1500;
	g->rc = kvp_client_generate(c, t, 200, &gp, count, g, &g->u);
	kvp_client_close(c);
	return NULL;
}

/* SIGTERM while a generation runs: it finishes, new requests are refused, exit 0. */
Test(systemd, sigterm_lets_a_running_request_finish)
{
	char sock[96], log[96], model[96], cmd[512], out[1024];
	struct gen_arg g = { 0 };
	struct kvp_client *other;
	struct kvp_match m;
	uint32_t t[16] = { 1, 2, 3 };
	pthread_t th;
	pid_t pid;

	snprintf(sock, sizeof(sock), "%s/g.sock", dir);
	snprintf(log, sizeof(log), "%s/d.log", dir);
	snprintf(model, sizeof(model), "%s/m.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --out %s --vocab 512 --dim 128 --layers 4 --heads 4 "
		 "--kv-heads 2 --ffn 384 --ctx 2048 --quiet 2>&1", KVP_MKMODEL_PATH, model);
	cr_assert_eq(kvp_run_capture(cmd, out, sizeof(out)), 0, "%s", out);
	const char *argv[] = { KVP_DAEMON_PATH, "--model", model, "--socket", sock, "--threads",
			       "1", NULL };
	pid = spawn(argv, NULL, log);
	other = connect_retry(sock);
	g.sock = sock;
	cr_assert_eq(pthread_create(&th, NULL, gen_main, &g), 0);
	/* wait until the generation is streaming, then ask the daemon to stop */
	for (int i = 0; i < 1000 && g.n < 5; i++)
		usleep(5000);
	cr_assert_geq(g.n, 5, "the generation did not start");
	kill(pid, SIGTERM);
	/* new work is refused while the running request goes on */
	int rc = 0;
	uint32_t seen_at = 0;
	for (int i = 0; i < 2000 && rc != KVP_ESHUTDOWN; i++) {
		rc = kvp_client_lookup(other, t, 16, 0, &m);
		seen_at = g.n;
		if (rc != KVP_ESHUTDOWN)
			usleep(1000);
	}
	cr_assert_eq(rc, KVP_ESHUTDOWN, "new work is refused while stopping: %s", kvp_strerror(rc));
	cr_assert_lt(seen_at, 1500, "refused while the generation was still running");
	pthread_join(th, NULL);
	cr_assert_eq(g.rc, 0, "the running request was cut: %s", kvp_strerror(g.rc));
	cr_assert_eq(g.n, 1500, "every token of the running request arrived");
	cr_assert_eq(g.u.generated_tokens, 1500);
	kvp_client_close(other);
	cr_assert_eq(wait_exit(pid, 30), 0);
	cr_assert_eq(access(sock, F_OK), -1, "socket removed");
}

/* SIGHUP re-reads the config file: a live option applies, others are logged. */
Test(systemd, sighup_applies_a_changed_option)
{
	char sock[96], log[96], conf[96], cmd[512], out[8192];
	struct kvp_client *a, *b = NULL;
	FILE *f;
	pid_t pid;

	snprintf(sock, sizeof(sock), "%s/h.sock", dir);
	snprintf(log, sizeof(log), "%s/d.log", dir);
	snprintf(conf, sizeof(conf), "%s/kvprefixd.conf", dir);
	f = fopen(conf, "w");
	fprintf(f, "index-only = true\nmax-connections = 8\nblock-tokens = 16\n");
	fclose(f);
	const char *argv[] = { KVP_DAEMON_PATH, "--config", conf, "--socket", sock, NULL };
	pid = spawn(argv, NULL, log);
	a = connect_retry(sock);
	cr_assert_eq(kvp_client_ping(a, "a", 1), 0);

	f = fopen(conf, "w");
	fprintf(f, "index-only = true\nmax-connections = 1\nblock-tokens = 32\n");
	fclose(f);
	kill(pid, SIGHUP);
	usleep(300000);
	/* one connection is open: with max-connections 1 a second is refused */
	cr_assert_eq(kvp_client_connect(sock, &b), 0);
	cr_assert_lt(kvp_client_ping(b, "b", 1), 0, "the new limit applies at once");
	kvp_client_close(b);
	cr_assert_eq(kvp_client_ping(a, "a", 1), 0, "the open connection is kept");
	kvp_client_close(a);
	kill(pid, SIGTERM);
	cr_assert_eq(wait_exit(pid, 10), 0);
	snprintf(cmd, sizeof(cmd), "cat %s", log);
	kvp_run_capture(cmd, out, sizeof(out));
	cr_assert(strstr(out, "max-connections changed, applied") != NULL, "%s", out);
	cr_assert(strstr(out, "block-tokens changed, needs a restart") != NULL, "%s", out);
}
