/*
 * kvp_sockpath.h - where kvprefixd's socket lives by default, and whether a directory
 * may hold it. Shared by the daemon (which binds there) and libkvprefix (which connects
 * there), so both agree on the path and on what makes its directory unsafe.
 *
 *   $XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock   XDG_RUNTIME_DIR set and absolute
 *   /run/kvprefix/kvprefixd.sock               effective uid 0
 *   /tmp/kvprefix-<uid>/kvprefixd.sock         anyone else: a directory in a shared /tmp,
 *                                              which another user could make first
 *
 * Reads the environment, the effective uid and (kvp_socket_dir_check) the file system
 * and the password database; keeps no state. Not safe against a concurrent setenv().
 */
#ifndef KVP_SOCKPATH_H
#define KVP_SOCKPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "kvp_status.h"

/*
 * The default socket path, written to buf (the table above). XDG_RUNTIME_DIR counts
 * only when absolute (an empty or relative value is ignored). Creates nothing.
 * KVP_ETOOBIG if it does not fit in cap bytes.
 */
int kvp_default_socket_path(char *buf, size_t cap);

/*
 * The directory of the default path when it is the shared-/tmp one, "/tmp/kvprefix-<uid>"
 * (neither XDG_RUNTIME_DIR nor root), written to buf: 0. KVP_ENOTFOUND when the default
 * path lies elsewhere; KVP_ETOOBIG if it does not fit in cap bytes.
 */
int kvp_default_socket_tmpdir(char *buf, size_t cap);

/*
 * Whether dir may hold a socket of uid's: a directory (not a symbolic link) owned by
 * uid or root and writable by no one else; with allow_sticky, a sticky directory may be
 * writable by all (as /tmp is: others cannot remove what is ours there). 0 when it may.
 * KVP_EPERM when it may not, with why (cap bytes, NUL-terminated) saying what is wrong
 * in words a user can act on, naming dir, its owner and its mode, e.g. "/tmp/kvprefix-
 * 1000 belongs to uid 1001 (bob), not uid 1000 or root". KVP_ENOTFOUND when dir does
 * not exist; KVP_EIO (errno kept) when it cannot be examined.
 */
int kvp_socket_dir_check(const char *dir, uid_t uid, bool allow_sticky, char *why, size_t cap);

/* "name" of uid from the password database, or "" when it has none: written to buf. */
void kvp_uid_name(uid_t uid, char *buf, size_t cap);

#endif
