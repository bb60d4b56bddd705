"""The exceptions of the kvprefix client.

Every failure is a :class:`KvprefixError`, whose ``code`` is a status of
docs/protocol.md §4.8 (the positive value the daemon sends in an ERROR frame) and
whose ``message`` is the daemon's text, or the library's own reason for a failure
it found itself. Each code the protocol lists has a subclass, so a caller can catch
exactly what it expects::

    code  name           class
       1  ENOMEM         OutOfMemoryError
       2  EINVAL         InvalidArgumentError   (also a ValueError)
       3  EPROTO         MalformedFrameError    (the daemon says a request was malformed)
       4  ETOOBIG        TooBigError            (also a ValueError)
       5  EFULL          PoolFullError
       6  ENOTFOUND      NotFoundError
       7  EVERSION       VersionError
       8  EIO            DaemonIOError
       9  ECLOSED        ConnectionClosedError  (a KvprefixConnectionError)
      10  ETIMEDOUT      TimedOutError
      11  EBUSY          BusyError
      12  EPERM          PermissionDeniedError
      13  EUNSUPPORTED   UnsupportedError
      14  ESHUTDOWN      ShuttingDownError
      15  EEXIST         AlreadyExistsError
      16  EINTERNAL      InternalError

A code the table does not know (the protocol allows new ones) is a plain
:class:`KvprefixError`. Three more classes are the library's own:
:class:`ProtocolError` (code 3: a reply broke the protocol; the connection cannot be
trusted any more), :class:`KvprefixConnectionError` (code 8: the socket could not be
reached or failed) and :class:`UntrustedServerError` (code 12: the daemon, or the
directory of the default socket, belongs to a user this process does not trust).
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "KvprefixError",
    "OutOfMemoryError",
    "InvalidArgumentError",
    "MalformedFrameError",
    "TooBigError",
    "PoolFullError",
    "NotFoundError",
    "VersionError",
    "DaemonIOError",
    "ConnectionClosedError",
    "TimedOutError",
    "BusyError",
    "PermissionDeniedError",
    "UnsupportedError",
    "ShuttingDownError",
    "AlreadyExistsError",
    "InternalError",
    "ProtocolError",
    "KvprefixConnectionError",
    "UntrustedServerError",
    "error_class",
    "from_code",
    "code_name",
]

# code -> (name, text), as kvp_strerror() says them
_NAMES: Dict[int, "tuple[str, str]"] = {
    1: ("ENOMEM", "out of memory"),
    2: ("EINVAL", "invalid argument"),
    3: ("EPROTO", "malformed frame"),
    4: ("ETOOBIG", "length over limit"),
    5: ("EFULL", "block pool full of pinned blocks"),
    6: ("ENOTFOUND", "not found"),
    7: ("EVERSION", "unsupported protocol version"),
    8: ("EIO", "I/O error"),
    9: ("ECLOSED", "connection closed"),
    10: ("ETIMEDOUT", "timed out"),
    11: ("EBUSY", "limit on concurrent work reached"),
    12: ("EPERM", "permission denied"),
    13: ("EUNSUPPORTED", "not supported"),
    14: ("ESHUTDOWN", "daemon shutting down"),
    15: ("EEXIST", "already exists"),
    16: ("EINTERNAL", "internal invariant violated"),
}


def code_name(code: int) -> str:
    """The protocol's name of an error code (``2`` -> ``"EINVAL"``), or ``"E<code>"``
    for a code the protocol does not list."""
    entry = _NAMES.get(code)
    return entry[0] if entry else "E%d" % code


class KvprefixError(Exception):
    """Base of every error of the kvprefix client.

    Attributes:
        code: the protocol's error code (positive, docs/protocol.md §4.8).
        message: the daemon's ERROR text, or why the library failed; may be empty.
        refused: True when the daemon refused the whole connection (an ERROR with
            ``req_id`` 0: its connection limit, or a graceful stop); the client is
            closed then, and a new connection may be tried later.
    """

    code: int = 0

    def __init__(self, message: str = "", code: Optional[int] = None, *,
                 refused: bool = False) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.refused = refused
        super().__init__(message)

    @property
    def name(self) -> str:
        """The protocol's name of :attr:`code`, e.g. ``"ENOTFOUND"``."""
        return code_name(self.code)

    def __str__(self) -> str:
        entry = _NAMES.get(self.code)
        text = entry[1] if entry else "error"
        head = "%s (%d, %s)" % (text, self.code, self.name)
        return "%s: %s" % (head, self.message) if self.message else head

    def __repr__(self) -> str:
        return "%s(code=%d, message=%r)" % (type(self).__name__, self.code, self.message)


class OutOfMemoryError(KvprefixError):
    """ENOMEM (1): the daemon ran out of memory; nothing was changed."""
    code = 1


class InvalidArgumentError(KvprefixError, ValueError):
    """EINVAL (2): a field out of range, from the daemon or refused before sending."""
    code = 2


class MalformedFrameError(KvprefixError):
    """EPROTO (3) from the daemon: it found a request malformed and closed the
    connection."""
    code = 3


class TooBigError(KvprefixError, ValueError):
    """ETOOBIG (4): a length over its limit (more than ``max_tokens`` tokens, a frame
    over the daemon's limit, a name over 255 bytes, ...)."""
    code = 4


class PoolFullError(KvprefixError):
    """EFULL (5): the pool has no free or evictable block for this request."""
    code = 5


class NotFoundError(KvprefixError):
    """ENOTFOUND (6): no such lease, block or ADMIN pin."""
    code = 6


class VersionError(KvprefixError):
    """EVERSION (7): a protocol version one side does not speak."""
    code = 7


class DaemonIOError(KvprefixError):
    """EIO (8) from the daemon: a system call failed inside it."""
    code = 8


class KvprefixConnectionError(KvprefixError):
    """The socket could not be connected to, or failed while in use (code 8, EIO, or a
    subclass's). ``errno`` is the system's error number when there is one."""
    code = 8

    def __init__(self, message: str = "", code: Optional[int] = None, *,
                 refused: bool = False, errno: Optional[int] = None) -> None:
        super().__init__(message, code, refused=refused)
        self.errno = errno


class ConnectionClosedError(KvprefixConnectionError):
    """ECLOSED (9): the daemon closed the connection, or the client is closed or no
    longer usable (after a broken reply or a half-sent request)."""
    code = 9


class TimedOutError(KvprefixError):
    """ETIMEDOUT (10): a deadline passed: the client's timeout for a reply (the client
    stays usable), or the daemon's ``--frame-timeout`` for a request."""
    code = 10


class BusyError(KvprefixError):
    """EBUSY (11): a limit on concurrent work (leases, leased blocks, generations in
    flight, connections)."""
    code = 11


class PermissionDeniedError(KvprefixError):
    """EPERM (12): not allowed for this peer (a salt or an ADMIN request)."""
    code = 12


class UntrustedServerError(KvprefixConnectionError):
    """EPERM (12), found by the library: the process serving the socket runs as a user
    this client does not trust, or the default socket's directory in /tmp is not safe.
    Nothing was sent. ``uid`` is the server's uid (None for a directory refused)."""
    code = 12

    def __init__(self, message: str = "", uid: Optional[int] = None) -> None:
        super().__init__(message)
        self.uid = uid


class UnsupportedError(KvprefixError):
    """EUNSUPPORTED (13): not offered by this daemon (GENERATE without an engine, INSERT
    with one, a CONFIG option only a restart changes)."""
    code = 13


class ShuttingDownError(KvprefixError):
    """ESHUTDOWN (14): the daemon is stopping."""
    code = 14


class AlreadyExistsError(KvprefixError):
    """EEXIST (15): the thing being added already exists."""
    code = 15


class InternalError(KvprefixError):
    """EINTERNAL (16): an invariant check failed inside the daemon (a daemon bug)."""
    code = 16


class ProtocolError(KvprefixError):
    """EPROTO (3), found by the library: a reply broke the protocol (bad header, a
    payload that does not decode, counts that do not add up). The connection is no
    longer usable."""
    code = 3


_BY_CODE: Dict[int, Type[KvprefixError]] = {
    cls.code: cls
    for cls in (OutOfMemoryError, InvalidArgumentError, MalformedFrameError, TooBigError,
                PoolFullError, NotFoundError, VersionError, DaemonIOError,
                ConnectionClosedError, TimedOutError, BusyError, PermissionDeniedError,
                UnsupportedError, ShuttingDownError, AlreadyExistsError, InternalError)
}


def error_class(code: int) -> Type[KvprefixError]:
    """The class that an ERROR frame with this code is raised as: the subclass of the
    table above, or :class:`KvprefixError` for a code the protocol does not list."""
    return _BY_CODE.get(code, KvprefixError)


def from_code(code: int, message: str = "", *, refused: bool = False) -> KvprefixError:
    """An exception for an ERROR frame's code and message (not raised)."""
    cls = error_class(code)
    if cls is KvprefixError:
        return KvprefixError(message, code, refused=refused)
    return cls(message, refused=refused)
