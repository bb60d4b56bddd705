/*
 * spawn.c - start kvprefixd in a private temporary directory and stop it; see spawn.h
 * for the contracts.
 */
#include "spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvp_status.h"

#define POLL_MS 10   /* between two looks at the socket or the child */

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

int kvp_spawn_mkdtemp(char *buf, size_t cap, const char *name)
{
	if (cap == 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if ((size_t)snprintf(buf, cap, "/tmp/%s-XXXXXX", name) >= cap) {
		buf[0] = '\0';
		errno = ENAMETOOLONG;
		return -1;
	}
	if (!mkdtemp(buf)) {
		buf[0] = '\0';
		return -1;
	}
	return 0;
}

int kvp_spawn_rmdir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[512];
	int ret = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= sizeof(p) ||
		    unlink(p) != 0)
			ret = -1;
	}
	closedir(d);
	if (rmdir(dir) != 0)
		ret = -1;
	return ret;
}

int kvp_spawn_prepare(struct kvp_daemon *d, const char *name, const char *prog)
{
	memset(d, 0, sizeof(*d));
	if (kvp_spawn_mkdtemp(d->dir, sizeof(d->dir), name) < 0) {
		if (prog)
			fprintf(stderr, "%s: mkdtemp: %s\n", prog, strerror(errno));
		return KVP_EIO;
	}
	snprintf(d->socket, sizeof(d->socket), "%s/kvprefixd.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvprefixd.log", d->dir);
	return KVP_OK;
}

/* In the child: become uid:gid, giving it the directory the daemon binds in. */
static void drop_to(const struct kvp_daemon *d, uid_t uid, gid_t gid)
{
	if (chown(d->dir, uid, gid) != 0 || setgroups(0, NULL) != 0 || setgid(gid) != 0 ||
	    setuid(uid) != 0) {
		fprintf(stderr, "cannot run as uid %lu: %s\n", (unsigned long)uid, strerror(errno));
		_exit(126);
	}
}

/* In the child: stderr (and stdout) into the log, then the daemon. Never returns. */
static void exec_daemon(const struct kvp_daemon *d, const char *const *argv,
			const struct kvp_spawn_opts *o)
{
	int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd >= 0) {
		if (o->log_stdout)
			dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		close(fd);
	}
	if (o->as_user)
		drop_to(d, o->uid, o->gid);
	execv(argv[0], (char *const *)argv);
	fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

int kvp_spawn_start(struct kvp_daemon *d, const char *const *argv,
		    const struct kvp_spawn_opts *o)
{
	fflush(NULL);   /* what is buffered here must not be written twice */
	d->pid = fork();
	if (d->pid < 0) {
		if (o->prog)
			fprintf(stderr, "%s: fork: %s\n", o->prog, strerror(errno));
		d->pid = 0;
		return KVP_EIO;
	}
	if (d->pid == 0)
		exec_daemon(d, argv, o);
	for (int i = 0; i < o->wait_ms / POLL_MS; i++) {
		if (socket_accepts(d->socket))
			return KVP_OK;
		if (!kvp_spawn_alive(d)) {
			if (o->prog) {
				fprintf(stderr, "%s: %s exited at start; its log:\n", o->prog,
					argv[0]);
				kvp_spawn_print_log(d, stderr, "  ");
			}
			return KVP_ECLOSED;
		}
		sleep_ms(POLL_MS);
	}
	if (o->prog)
		fprintf(stderr, "%s: %s did not accept on %s within %d s\n", o->prog, argv[0],
			d->socket, o->wait_ms / 1000);
	return KVP_ETIMEDOUT;
}

bool kvp_spawn_alive(struct kvp_daemon *d)
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

int kvp_spawn_stop(struct kvp_daemon *d, int wait_ms, const char *prog)
{
	int st = 0;

	if (d->pid == 0)
		return 0;   /* never started, or its caller stopped and reaped it */
	if (d->pid < 0)
		return -1;  /* exited on its own earlier; its status is gone */
	kill(d->pid, SIGTERM);
	for (int i = 0; i < wait_ms / POLL_MS; i++) {
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		}
		sleep_ms(POLL_MS);
	}
	if (prog)
		fprintf(stderr, "%s: kvprefixd did not stop on SIGTERM; killing it\n", prog);
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &st, 0);
	d->pid = 0;
	return -1;
}

int kvp_spawn_print_log(const struct kvp_daemon *d, FILE *f, const char *indent)
{
	FILE *in = fopen(d->log, "r");
	char line[1024];

	if (!in)
		return -1;
	while (fgets(line, sizeof(line), in))
		fprintf(f, "%s%s", indent, line);
	fclose(in);
	return 0;
}

int kvp_spawn_remove(struct kvp_daemon *d)
{
	int ret;

	if (!d->dir[0])
		return 0;
	ret = kvp_spawn_rmdir(d->dir);
	d->dir[0] = '\0';
	return ret;
}
