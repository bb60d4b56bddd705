"""Where kvprefixd's socket lives by default, and whether its directory is safe
(docs/protocol.md §2), exactly as libkvprefix decides (proto/sockpath.c):

    $XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock   XDG_RUNTIME_DIR set and absolute
    /run/kvprefix/kvprefixd.sock               effective uid 0
    /tmp/kvprefix-<uid>/kvprefixd.sock         anyone else: a directory in a shared /tmp,
                                               which another user could make first

An empty or relative XDG_RUNTIME_DIR is ignored, as the XDG base directory spec asks.
The last directory is used only when it belongs to this user or root and no one else
can write to it (socket_dir_problem).
"""

from __future__ import annotations

import os
import pwd
import stat
from typing import Mapping, Optional, Tuple

SOCKET_NAME = "kvprefixd.sock"


def _default_dir(environ: Optional[Mapping[str, str]], euid: Optional[int]) -> Tuple[str, bool]:
    """The default path's directory, and whether it is the shared-/tmp one."""
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        return xdg + "/kvprefix", False
    if uid == 0:
        return "/run/kvprefix", False
    return "/tmp/kvprefix-%d" % uid, True


def default_socket_path(environ: Optional[Mapping[str, str]] = None,
                        euid: Optional[int] = None) -> str:
    """The default socket path, from environ (default: os.environ) and the effective uid
    (default: this process's), by the table of this module's docstring."""
    d, _ = _default_dir(environ, euid)
    return d + "/" + SOCKET_NAME


def default_socket_tmpdir(environ: Optional[Mapping[str, str]] = None,
                          euid: Optional[int] = None) -> Optional[str]:
    """``/tmp/kvprefix-<uid>`` when the default path lies there (neither
    XDG_RUNTIME_DIR nor root), else None."""
    d, in_tmp = _default_dir(environ, euid)
    return d if in_tmp else None


def uid_name(uid: int) -> str:
    """The user name of uid from the password database, or "" when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


def socket_dir_problem(path: str, uid: int, allow_sticky: bool = False) -> Optional[str]:
    """Why path may not hold a socket of uid's, or None when it may (or when it does not
    exist or cannot be examined: connecting will then fail on its own).

    It may when it is a directory (not a symbolic link) owned by uid or root that no
    one else can write to; with allow_sticky, a sticky directory may be writable by all.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory%s" % (path, " but a symbolic link"
                                            if stat.S_ISLNK(st.st_mode) else "")
    if st.st_uid not in (uid, 0):
        name = uid_name(st.st_uid)
        return "%s belongs to uid %d%s, not uid %d or root" % (
            path, st.st_uid, " (%s)" % name if name else "", uid)
    if st.st_mode & 0o022 and not (allow_sticky and st.st_mode & stat.S_ISVTX):
        return "%s is writable by %s (mode %04o)" % (
            path, "every user" if st.st_mode & 0o002 else "its group",
            stat.S_IMODE(st.st_mode))
    return None
