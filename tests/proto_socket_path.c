/*
 * proto_socket_path.c - kvp_default_socket_path (proto/kvp_proto.h): under
 * XDG_RUNTIME_DIR, and the fallbacks without a usable one.
 *
 * One of the proto_*.c files of test_proto.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvp_proto.h"

/* ---- default socket path ---------------------------------------------------------------------- */

Test(socket_path, xdg_runtime_dir)
{
	char buf[256];

	setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/run/user/4242/kvprefix/kvprefixd.sock");
	/* Exactly enough room for the NUL, then one byte short. */
	cr_assert_eq(kvp_default_socket_path(buf, strlen(buf) + 1), 0);
	cr_assert_eq(kvp_default_socket_path(buf, strlen("/run/user/4242/kvprefix/kvprefixd.sock")),
		     KVP_ETOOBIG);
	cr_assert_eq(kvp_default_socket_path(NULL, 0), KVP_ETOOBIG);
}

Test(socket_path, without_xdg)
{
	char buf[256], want[256];

	unsetenv("XDG_RUNTIME_DIR");
	if (geteuid() == 0)
		snprintf(want, sizeof(want), "/run/kvprefix/kvprefixd.sock");
	else
		snprintf(want, sizeof(want), "/tmp/kvprefix-%u/kvprefixd.sock", (unsigned)geteuid());
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
	/* Empty or relative values are not paths: ignored, as the XDG spec asks. */
	setenv("XDG_RUNTIME_DIR", "", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
	setenv("XDG_RUNTIME_DIR", "run/user/1", 1);
	cr_assert_eq(kvp_default_socket_path(buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, want);
}
