/*
 * unix_listen.c - a listening Unix stream socket at a path (kvp_unix_listen.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvp_log.h"
#include "kvp_unix_listen.h"

static int unix_socket(const char *log_prefix)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		kvp_err("%ssocket: %s", log_prefix, strerror(errno));
	return fd;
}

/* Make sa's path free to bind: nothing there, or a stale socket file (removed). */
static int clear_path(const struct sockaddr_un *sa, const char *log_prefix,
		      const char *occupant)
{
	const char *path = sa->sun_path;
	struct stat st;
	int fd = unix_socket(log_prefix), err;

	if (fd < 0)
		return KVP_EIO;
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 || errno == EAGAIN) {
		kvp_err("%s%s is already listening on %s", log_prefix, occupant, path);
		close(fd);
		return KVP_EEXIST;
	}
	err = errno;
	close(fd);
	if (err == ENOENT)
		return KVP_OK;
	if (err != ECONNREFUSED) {
		kvp_err("%scannot probe %s: %s", log_prefix, path, strerror(err));
		return KVP_EIO;
	}
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		kvp_err("%s%s exists and is not a socket; not replacing it", log_prefix, path);
		return KVP_EEXIST;
	}
	if (unlink(path) == 0)
		kvp_info("%sremoved a stale socket file at %s", log_prefix, path);
	return KVP_OK;
}

int kvp_unix_listen(const char *path, mode_t mode, int backlog, const char *log_prefix,
		    const char *occupant, int *fd_out, struct kvp_unix_file *file)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int fd, rc;

	*file = (struct kvp_unix_file){ 0 };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		kvp_err("%s%s: a Unix socket path is at most %zu bytes", log_prefix, path,
			sizeof(sa.sun_path) - 1);
		return KVP_EINVAL;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	rc = clear_path(&sa, log_prefix, occupant);
	if (rc)
		return rc;
	fd = unix_socket(log_prefix);
	if (fd < 0)
		return KVP_EIO;
	old = umask(0777 & ~mode);   /* the mode from the start, not after a chmod */
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc != 0) {
		kvp_err("%scannot bind %s: %s", log_prefix, path, strerror(errno));
		close(fd);
		return KVP_EIO;
	}
	if (lstat(path, &st) == 0) {
		file->bound = true;
		file->dev = st.st_dev;
		file->ino = st.st_ino;
		snprintf(file->path, sizeof(file->path), "%s", path);
	}
	if (chmod(path, mode) != 0)
		kvp_warn("%schmod %s: %s", log_prefix, path, strerror(errno));
	/* listen now: between bind and listen a connect is refused, which a second
	 * process starting at that moment would take for a stale socket and unlink */
	if (listen(fd, backlog) != 0) {
		kvp_err("%scannot listen on %s: %s", log_prefix, path, strerror(errno));
		close(fd);
		return KVP_EIO;
	}
	*fd_out = fd;
	return KVP_OK;
}

void kvp_unix_unlink(const struct kvp_unix_file *file, const char *log_prefix)
{
	struct stat st;

	if (!file->bound)
		return;
	if (lstat(file->path, &st) == 0 && st.st_dev == file->dev && st.st_ino == file->ino &&
	    unlink(file->path) != 0)
		kvp_warn("%scannot remove %s: %s", log_prefix, file->path, strerror(errno));
}
