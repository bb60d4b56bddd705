/*
 * kvp_unix_listen.h - a listening Unix stream socket at a path, for the client socket
 * (listen.c) and /metrics (metrics.c): the same rules for both.
 *
 *   a live listener at path   ──▶ KVP_EEXIST, left alone
 *   a stale socket file       ──▶ removed (logged), then bound
 *   any other file            ──▶ KVP_EEXIST, not ours to remove
 *   bound with mode from the start (umask), listening before anyone can take a refused
 *   connect for a stale file; kvp_unix_unlink removes only the file we bound (same
 *   device and inode), never one a later process put there.
 *
 * Errors are logged, each message starting with log_prefix ("" or "metrics: ").
 * Main thread or event loop thread; no allocation.
 */
#ifndef KVP_UNIX_LISTEN_H
#define KVP_UNIX_LISTEN_H

#include <stdbool.h>
#include <sys/types.h>

#include "kvp_status.h"

struct kvp_unix_file {
	bool bound;
	dev_t dev;
	ino_t ino;
	char path[108];   /* sizeof(sockaddr_un.sun_path) */
};

/* 0 and a non-blocking, close-on-exec listening fd in *fd, file filled; or KVP_EINVAL
 * (path too long), KVP_EEXIST (something is there, see above), KVP_EIO (logged).
 * occupant names what a live listener probably is, for the log ("another kvprefixd"). */
int kvp_unix_listen(const char *path, mode_t mode, int backlog, const char *log_prefix,
		    const char *occupant, int *fd, struct kvp_unix_file *file);
/* Remove the socket file if it is still the one bound. */
void kvp_unix_unlink(const struct kvp_unix_file *file, const char *log_prefix);

#endif
