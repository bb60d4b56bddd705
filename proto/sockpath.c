/*
 * sockpath.c - the default socket path and the check of a socket's directory
 * (contract: kvp_sockpath.h).
 */
#include "kvp_sockpath.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PW_BUF 4096   /* getpwuid_r's strings; a longer entry is shown without a name */

/* The default path's parts: its directory into dir, and whether it is the /tmp one. */
static int default_dir(char *dir, size_t cap, bool *in_tmp)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	uid_t uid = geteuid();
	int len;

	*in_tmp = false;
	/* The XDG base directory spec says relative paths are invalid: ignore them. */
	if (xdg && xdg[0] == '/') {
		len = snprintf(dir, cap, "%s/kvprefix", xdg);
	} else if (uid == 0) {
		len = snprintf(dir, cap, "/run/kvprefix");
	} else {
		len = snprintf(dir, cap, "/tmp/kvprefix-%lu", (unsigned long)uid);
		*in_tmp = true;
	}
	if (len < 0 || (size_t)len >= cap)
		return KVP_ETOOBIG;
	return KVP_OK;
}

int kvp_default_socket_path(char *buf, size_t cap)
{
	char dir[4096];
	bool in_tmp;
	int len;

	if (default_dir(dir, sizeof(dir), &in_tmp) != KVP_OK)
		return KVP_ETOOBIG;
	len = snprintf(buf, cap, "%s/kvprefixd.sock", dir);
	if (len < 0 || (size_t)len >= cap)
		return KVP_ETOOBIG;
	return KVP_OK;
}

int kvp_default_socket_tmpdir(char *buf, size_t cap)
{
	bool in_tmp;
	int rc = default_dir(buf, cap, &in_tmp);

	if (rc == KVP_OK && !in_tmp)
		return KVP_ENOTFOUND;
	return rc;
}

void kvp_uid_name(uid_t uid, char *buf, size_t cap)
{
	struct passwd pw, *res = NULL;
	char strings[PW_BUF];

	if (cap == 0)
		return;
	buf[0] = '\0';
	if (getpwuid_r(uid, &pw, strings, sizeof(strings), &res) == 0 && res)
		snprintf(buf, cap, "%s", res->pw_name);
}

/* " (name)" of uid, or "" when it has none. */
static void owner_name(uid_t uid, char *buf, size_t cap)
{
	char name[256];

	kvp_uid_name(uid, name, sizeof(name));
	snprintf(buf, cap, name[0] ? " (%s)" : "%s", name);
}

int kvp_socket_dir_check(const char *dir, uid_t uid, bool allow_sticky, char *why, size_t cap)
{
	struct stat st;
	char owner[280];

	if (cap)
		why[0] = '\0';
	if (lstat(dir, &st) != 0)
		return errno == ENOENT ? KVP_ENOTFOUND : KVP_EIO;
	if (!S_ISDIR(st.st_mode)) {
		snprintf(why, cap, "%s is not a directory%s", dir,
			 S_ISLNK(st.st_mode) ? " but a symbolic link" : "");
		return KVP_EPERM;
	}
	if (st.st_uid != uid && st.st_uid != 0) {
		owner_name(st.st_uid, owner, sizeof(owner));
		snprintf(why, cap, "%s belongs to uid %lu%s, not uid %lu or root", dir,
			 (unsigned long)st.st_uid, owner, (unsigned long)uid);
		return KVP_EPERM;
	}
	if ((st.st_mode & 022) && !(allow_sticky && (st.st_mode & S_ISVTX))) {
		snprintf(why, cap, "%s is writable by %s (mode %04o)", dir,
			 (st.st_mode & 002) ? "every user" : "its group",
			 (unsigned)(st.st_mode & 07777));
		return KVP_EPERM;
	}
	return KVP_OK;
}
