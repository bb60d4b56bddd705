/*
 * daemon_harness.h - start the real kvprefixd on a temporary socket for a test, and
 * stop it. Tests talk to it through libkvprefix or the real tools, as users do. A thin
 * layer over tools/spawn.h, which also starts kvprefix-bench's own daemon: struct
 * kvp_daemon (pid, dir, socket, log) is defined there.
 */
#ifndef KVP_DAEMON_HARNESS_H
#define KVP_DAEMON_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

#include "spawn.h"

/* Start KVP_DAEMON_PATH --index-only (unless args has --model) --socket <tmp>
 * --log-level info plus args (a NULL-
 * terminated list, may be NULL) and wait up to 10 s until the socket accepts. 0 or -1. */
int kvp_daemon_start(struct kvp_daemon *d, const char *const *args);
/* The same, the daemon running as uid:gid (the test must be root): its directory is
 * given to that user. */
int kvp_daemon_start_as(struct kvp_daemon *d, const char *const *args, uid_t uid, gid_t gid);
/* SIGTERM, wait up to 10 s (then SIGKILL); returns the exit status (-1 if killed or it
 * did not exit cleanly; 0 when pid is 0: the caller reaped it). Unless 0, the daemon's
 * log goes to stderr first. Removes the temporary directory. */
int kvp_daemon_stop(struct kvp_daemon *d);
/* True while the daemon process has not exited. */
bool kvp_daemon_alive(struct kvp_daemon *d);
/* A private temporary directory /tmp/kvp-<tag>-XXXXXX in buf (cap >= 32): 0 or -1. */
int kvp_tmpdir_make(char *buf, size_t cap, const char *tag);
/* Remove such a directory and the files in it (one level deep, as tests make them). */
void kvp_tmpdir_remove(const char *dir);
/* Run a command line via sh -c with stdout captured into out (NUL-terminated, cut at
 * cap). Returns the exit status, or -1. */
int kvp_run_capture(const char *cmd, char *out, size_t cap);

#ifdef KVP_MKMODEL_PATH
/* A random-weight model made by kvprefix-mkmodel with args (--out and --quiet added),
 * once per build of the generator: KVP_TEST_MODEL_DIR/<tag>-<its mtime>.gguf, shared by
 * the tests of a run (mkmodel writes atomically, so two making it at once is fine).
 * Returns its path, in static storage overwritten by the next call; fails the test
 * when mkmodel does. */
const char *kvp_test_model(const char *tag, const char *args);
#endif

#endif
