/*
 * listen.c - the listening socket: the one systemd passes (socket activation,
 * LISTEN_FDS), or one bound at --socket in a directory that must be ours.
 *
 *   --socket PATH: the directory (created if missing) must belong to this user or root
 *   and be writable by no one else; then kvp_unix_listen.h's rules: a live daemon on
 *   PATH is left alone (we exit), a stale socket file is replaced, anything else at
 *   PATH is not ours to remove, and at exit only the file we bound is removed.
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
 * client's prompts. 0, or KVP_EPERM / KVP_EIO with errno set.
 */
static int make_parent_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat st;
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return KVP_OK;
	*slash = '\0';
	if (make_dirs(dir) != 0 || lstat(dir, &st) != 0)
		return KVP_EIO;
	if (!S_ISDIR(st.st_mode) || (st.st_uid != geteuid() && st.st_uid != 0) ||
	    ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))) {
		errno = EPERM;
		return KVP_EPERM;
	}
	return KVP_OK;
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
	int n_fds = sd_listen_fds(1);

	if (n_fds > 1) {
		kvp_err("systemd passed %d sockets; kvprefixd listens on one", n_fds);
		return KVP_EINVAL;
	}
	if (n_fds == 1)
		return take_activated(s, fd);
	if (make_parent_dir(path) != KVP_OK) {
		kvp_err("cannot use the directory of %s: %s (it must exist or be creatable, belong "
			"to this user or root, and not be writable by others)", path, strerror(errno));
		return KVP_EPERM;
	}
	return kvp_unix_listen(path, s->cfg->socket_mode, LISTEN_BACKLOG, "", "another kvprefixd",
			       fd, &s->sock);
}

void listen_remove(struct server *s)
{
	kvp_unix_unlink(&s->sock, "");
}
