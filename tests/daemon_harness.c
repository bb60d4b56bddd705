#include "daemon_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static bool socket_accepts(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0)
		return false;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

int kvp_daemon_start(struct kvp_daemon *d, const char *const *args)
{
	const char *argv[64];
	int argc = 0;

	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "/tmp/kvp-test-XXXXXX");
	if (!mkdtemp(d->dir))
		return -1;
	snprintf(d->socket, sizeof(d->socket), "%s/kvprefixd.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvprefixd.log", d->dir);

	bool model = false;

	for (int i = 0; args && args[i]; i++)
		model |= strcmp(args[i], "--model") == 0;
	argv[argc++] = KVP_DAEMON_PATH;
	if (!model)
		argv[argc++] = "--index-only";
	argv[argc++] = "--socket";
	argv[argc++] = d->socket;
	argv[argc++] = "--log-level";
	argv[argc++] = "info";
	for (int i = 0; args && args[i] && argc < 62; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;

	d->pid = fork();
	if (d->pid < 0)
		return -1;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		if (socket_accepts(d->socket))
			return 0;
		if (!kvp_daemon_alive(d))
			return -1;
		sleep_ms(10);
	}
	return -1;
}

bool kvp_daemon_alive(struct kvp_daemon *d)
{
	int st;

	if (d->pid <= 0)
		return false;
	if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
		d->pid = -d->pid;   /* reaped: remember it exited */
		return false;
	}
	return true;
}

int kvp_daemon_stop(struct kvp_daemon *d)
{
	int st = 0, ret = -1;
	char cmd[256];

	if (d->pid == 0)
		ret = 0;   /* the caller stopped and reaped it itself */
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		for (int i = 0; i < 1000; i++) {
			pid_t r = waitpid(d->pid, &st, WNOHANG);
			if (r == d->pid) {
				ret = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
				break;
			}
			sleep_ms(10);
		}
		if (ret == -1 && kill(d->pid, 0) == 0) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
		}
		d->pid = 0;
	}
	if (d->dir[0]) {
		if (ret != 0) {
			/* show why (a sanitizer report, a crash) before the log goes */
			snprintf(cmd, sizeof(cmd), "echo '--- kvprefixd log:' >&2; cat '%s' >&2", d->log);
			if (system(cmd) != 0)
				ret = -1;
		}
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
		if (system(cmd) != 0)
			ret = -1;
		d->dir[0] = '\0';
	}
	return ret;
}

int kvp_run_capture(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	int st;

	if (!p)
		return -1;
	while (n + 1 < cap) {
		size_t r = fread(out + n, 1, cap - 1 - n, p);
		if (r == 0)
			break;
		n += r;
	}
	out[n] = '\0';
	/* drain the rest so the child does not block on a full pipe */
	for (char sink[4096]; fread(sink, 1, sizeof(sink), p) > 0;)
		;
	st = pclose(p);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

int kvp_tmpdir_make(char *buf, size_t cap, const char *tag)
{
	if ((size_t)snprintf(buf, cap, "/tmp/kvp-%s-XXXXXX", tag) >= cap)
		return -1;
	return mkdtemp(buf) ? 0 : -1;
}

void kvp_tmpdir_remove(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[512];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
	rmdir(dir);
}
