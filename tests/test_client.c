/*
 * test_client.c - the daemon and its clients facing a socket directory they should not
 * trust.
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

/* ---- socket directories ---------------------------------------------------------- */

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

