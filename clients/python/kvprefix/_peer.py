"""Whom a client talks to (docs/protocol.md §2), as libkvprefix checks it
(proto/client.c, check_server): right after connecting, ask the kernel who listens on
the socket (SO_PEERCRED) and go on only when it is

    root (uid 0)
    this process's effective uid
    the system user "kvprefix" (the packaged service's), when it exists
    the uid in the environment variable KVP_SERVER_UID
    the uid the caller names (Client(server_uid=...))

Anyone else could be an impostor waiting for prompts: another user can create
/tmp/kvprefix-<uid> before the daemon does. A KVP_SERVER_UID that is not a decimal uid
below 4294967295 is refused whoever serves, so that a mistake shows at once.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import struct
from typing import Mapping, NamedTuple, Optional

from ._sockpath import uid_name
from .errors import InvalidArgumentError, KvprefixConnectionError, UntrustedServerError

SERVICE_USER = "kvprefix"
_UID_MAX = 0xFFFFFFFF            # (uid_t)-1 is no uid
_UCRED = struct.Struct("=iII")   # struct ucred: pid_t pid; uid_t uid; gid_t gid
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)


class PeerCred(NamedTuple):
    """The credentials of the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected Unix socket: who listens on it."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCred(*_UCRED.unpack(raw))


def env_server_uid(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The uid in KVP_SERVER_UID (environ: default os.environ); None when unset or
    empty. InvalidArgumentError when it is not a decimal number below 4294967295."""
    env = os.environ if environ is None else environ
    v = env.get("KVP_SERVER_UID")
    if not v:
        return None
    if not _DECIMAL.fullmatch(v) or int(v) >= _UID_MAX:
        raise InvalidArgumentError("KVP_SERVER_UID='%.64s' is not a uid (a decimal number "
                                   "below %d)" % (v, _UID_MAX))
    return int(v)


def service_uid() -> Optional[int]:
    """The uid of the system user "kvprefix", or None when there is none."""
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def is_trusted(uid: int, *, euid: int, server_uid: Optional[int] = None,
               env_uid: Optional[int] = None, service: Optional[int] = None) -> bool:
    """Whether a server running as uid may be sent prompts by a process of effective
    uid euid that also trusts server_uid, env_uid (KVP_SERVER_UID) and the service
    user's uid (each None: none)."""
    return uid == 0 or uid == euid or uid in (x for x in (server_uid, env_uid, service)
                                               if x is not None)


def check_server(sock: socket.socket, path: str, server_uid: Optional[int] = None, *,
                 environ: Optional[Mapping[str, str]] = None,
                 euid: Optional[int] = None) -> int:
    """Check who serves the connected sock (at path, for the message) by the table of
    this module's docstring; returns the server's uid. UntrustedServerError when it is
    no one trusted; InvalidArgumentError for a bad KVP_SERVER_UID. environ and euid
    default to this process's."""
    env_uid = env_server_uid(environ)
    try:
        cred = peer_cred(sock)
    except OSError as e:
        raise KvprefixConnectionError("SO_PEERCRED on %s: %s" % (path, e.strerror),
                                      errno=e.errno) from None
    me = os.geteuid() if euid is None else euid
    if cred.uid in (0, me) or is_trusted(cred.uid, euid=me, server_uid=server_uid,
                                         env_uid=env_uid, service=service_uid()):
        return cred.uid
    name = uid_name(cred.uid)
    raise UntrustedServerError(
        "kvprefixd at %s runs as uid %d (%s), not root, you or the kvprefix user: "
        "refusing to send it your prompts; set KVP_SERVER_UID=%d or pass server_uid=%d "
        "if you trust it" % (path, cred.uid, name or "no name", cred.uid, cred.uid),
        uid=cred.uid)
