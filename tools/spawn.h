/*
 * spawn.h - start kvprefixd as a child process on a socket of its own, and stop it.
 * kvprefix-bench starts one when no --socket is given; the tests start one for each
 * test (tests/daemon_harness.h is a thin layer over this).
 *
 *   kvp_spawn_prepare   /tmp/<name>-XXXXXX (0700)   socket, log: paths in it
 *   kvp_spawn_start     fork; the child's stderr (and stdout, if asked) -> log; as
 *                       another user if asked; exec argv; poll every 10 ms until the
 *                       socket accepts, the child exits (its log printed) or wait_ms
 *                       pass
 *   kvp_spawn_stop      SIGTERM; poll every 10 ms for wait_ms; then SIGKILL
 *   kvp_spawn_remove    the directory and the files in it
 *
 * The caller builds argv (argv[0] the binary), so that it decides where --socket
 * d->socket goes among the other options. The layout of struct kvp_daemon is public
 * because the tests read its fields (and may reap the process themselves: pid 0).
 *
 * Messages go to stderr prefixed with prog, or nowhere when prog is NULL. Not
 * thread-safe: one thread starts and stops a given daemon; fork() happens in the
 * calling process; the child only opens the log and execs.
 */
#ifndef KVP_TOOL_SPAWN_H
#define KVP_TOOL_SPAWN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

struct kvp_daemon {
	pid_t pid;          /* > 0 running; < 0 exited and reaped (-pid); 0 none */
	char dir[64];       /* private temporary directory, removed by kvp_spawn_remove */
	char socket[108];   /* dir + "/kvprefixd.sock" */
	char log[128];      /* dir + "/kvprefixd.log": the daemon's stderr */
};

struct kvp_spawn_opts {
	const char *prog;   /* prefix of messages on stderr; NULL: print nothing */
	int wait_ms;        /* longest wait for the socket to accept */
	bool log_stdout;    /* the daemon's stdout goes to the log too (else inherited) */
	bool as_user;       /* run the daemon as uid:gid (no supplementary groups), with
			     * d->dir given to it; the caller must be root */
	uid_t uid;
	gid_t gid;
};

/* Make a private directory /tmp/<name>-XXXXXX into buf. 0, or -1 with errno set
 * (ENAMETOOLONG when buf is too small); buf is then "". */
int kvp_spawn_mkdtemp(char *buf, size_t cap, const char *name);

/* Remove dir and the files in it (one level deep: the daemon and its callers make no
 * subdirectories). 0, or -1 when something could not be removed. */
int kvp_spawn_rmdir(const char *dir);

/* Zero d, make its directory /tmp/<name>-XXXXXX and fill in the socket and log paths.
 * 0, or KVP_EIO (message printed with prog). */
int kvp_spawn_prepare(struct kvp_daemon *d, const char *name, const char *prog);

/*
 * Start argv[0] with argv (NULL-terminated) after kvp_spawn_prepare, and wait until
 * d->socket accepts a connection. 0: running (d->pid > 0). KVP_EIO: fork failed.
 * KVP_ECLOSED: it exited before accepting (d->pid < 0; with o->prog, its log is
 * printed). KVP_ETIMEDOUT: it did not accept within o->wait_ms (still running). On
 * failure nothing is cleaned up: kvp_spawn_stop and kvp_spawn_remove do that.
 */
int kvp_spawn_start(struct kvp_daemon *d, const char *const *argv,
		    const struct kvp_spawn_opts *o);

/* True while the daemon has not exited; reaps it (d->pid = -pid) when it has. */
bool kvp_spawn_alive(struct kvp_daemon *d);

/*
 * Stop the daemon: SIGTERM, up to wait_ms for it to exit, then SIGKILL (saying so with
 * prog). Returns its exit status, or -1 when it was killed, died of a signal or had
 * exited already (d->pid < 0); 0 when there was nothing to stop (d->pid == 0). d->pid
 * is 0 afterwards unless it was < 0.
 */
int kvp_spawn_stop(struct kvp_daemon *d, int wait_ms, const char *prog);

/* Copy the daemon's log to f, each line after indent. -1 when it cannot be read. */
int kvp_spawn_print_log(const struct kvp_daemon *d, FILE *f, const char *indent);

/* Remove d's directory (kvp_spawn_rmdir) and forget it. 0 also when there is none. */
int kvp_spawn_remove(struct kvp_daemon *d);

#endif
