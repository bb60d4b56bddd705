/*
 * listen.c - the listening socket: the one systemd passes (socket activation,
 * LISTEN_FDS), or one bound at --socket in a directory that must be ours.
 *
 *   --socket PATH: the directory (created if missing) must belong to this user or root
 *   and be writable by no one else (kvp_socket_dir_check; a sticky one such as /tmp may
 *   be writable by all), else the log says what to do; then kvp_unix_listen.h's rules:
 *   a live daemon on PATH is left alone (we exit), a stale socket file is replaced,
 *   anything else at PATH is not ours to remove, and at exit only the file we bound is
 *   removed.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/util.h>
#include <systemd/sd-daemon.h>

#include "kvp_log.h"
#include "kvp_unix_listen.h"
#include "server.h"

#define LISTEN_BACKLOG 128

/* Create the missing directories of path, one component at a time (the runtime dir
 * itself usually exists). 0, or KVP_EIO with errno set. */
static int make_dirs(char *dir)
{
	for (char *q = dir + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(dir, 0755) != 0 && errno != EEXIST)
			return KVP_EIO;
		*q = '/';
	}
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		return KVP_EIO;
	return KVP_OK;
}

/*
 * The socket's own directory must be ours and writable by no one else: in a shared
 * /tmp (the default path without XDG_RUNTIME_DIR) another user can create
 * /tmp/kvprefix-<uid> first and later swap our socket for theirs, receiving every
 * client's prompts. 0; or KVP_EPERM / KVP_EIO with why (cap bytes) saying what is wrong.
 */
static int make_parent_dir(const char *path, char *why, size_t cap)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	int rc;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return KVP_OK;
	*slash = '\0';
	if (make_dirs(dir) != 0) {
		snprintf(why, cap, "cannot create %s: %s", dir, strerror(errno));
		return KVP_EIO;
	}
	rc = kvp_socket_dir_check(dir, geteuid(), true, why, cap);
	if (rc == KVP_ENOTFOUND || rc == KVP_EIO)
		snprintf(why, cap, "cannot examine %s: %s", dir, strerror(errno));
	return rc == KVP_ENOTFOUND ? KVP_EIO : rc;
}

/* The socket systemd passed; --socket then names it. */
static int take_activated(struct server *s, evutil_socket_t *out)
{
	evutil_socket_t fd = SD_LISTEN_FDS_START;
	struct sockaddr_un sa;
	socklen_t sl = sizeof(sa);

	if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
		kvp_err("the socket systemd passed is not a listening Unix stream socket");
		return KVP_EINVAL;
	}
	evutil_make_socket_nonblocking(fd);
	evutil_make_socket_closeonexec(fd);
	s->activated = true;
	if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_path[0])
		snprintf(s->cfg->socket_path, sizeof(s->cfg->socket_path), "%s", sa.sun_path);
	*out = fd;
	return KVP_OK;
}

int listen_open(struct server *s, evutil_socket_t *fd)
{
	const char *path = s->cfg->socket_path;
	int n_fds = sd_listen_fds(1), rc;
	char why[512];

	if (n_fds > 1) {
		kvp_err("systemd passed %d sockets; kvprefixd listens on one", n_fds);
		return KVP_EINVAL;
	}
	if (n_fds == 1)
		return take_activated(s, fd);
	rc = make_parent_dir(path, why, sizeof(why));
	if (rc == KVP_EPERM) {
		kvp_err("not listening at %s: %s, so another user could put a socket of theirs "
			"there and receive the clients' prompts; remove it and start again "
			"(kvprefixd then makes it, private), or give --socket a path in a "
			"directory of this user's (e.g. under $XDG_RUNTIME_DIR)", path, why);
		return rc;
	}
	if (rc != KVP_OK) {
		kvp_err("not listening at %s: %s", path, why);
		return rc;
	}
	return kvp_unix_listen(path, s->cfg->socket_mode, LISTEN_BACKLOG, "", "another kvprefixd",
			       fd, &s->sock);
}

void listen_remove(struct server *s)
{
	kvp_unix_unlink(&s->sock, "");
}
