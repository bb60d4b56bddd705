"""kvprefix: a Python client of kvprefixd, the KV block cache daemon.

It speaks the daemon's binary protocol (docs/protocol.md, versions 1 to 4) over its
Unix socket, with the standard library only::

    import kvprefix

    with kvprefix.Client() as c:              # the default socket, as libkvprefix's
        info = c.hello()
        m = c.lookup([1, 2, 3, 4], pin=True)  # a Match; m.lease pins its blocks
        c.release(m.lease)
        gen = c.generate([1, 2, 3], max_new=8)
        for tok in gen:                       # token ids as they stream
            print(tok)
        print(gen.done.finish, gen.done.cached_tokens)

A fleet index (``kvprefixd --index-only --kv-events-sub ...``) answers
``c.fleet(tokens)``: a list of :class:`FleetMatch`, each engine's cached prefix,
longest first.

Errors are :class:`KvprefixError` subclasses carrying the protocol's ``code`` and the
daemon's ``message`` (see :mod:`kvprefix.errors`).
"""

from ._sockpath import default_socket_path
from .client import Client
from .errors import (AlreadyExistsError, BusyError, ConnectionClosedError, DaemonIOError,
                     InternalError, InvalidArgumentError, KvprefixConnectionError,
                     KvprefixError, MalformedFrameError, NotFoundError, OutOfMemoryError,
                     PermissionDeniedError, PoolFullError, ProtocolError, ShuttingDownError,
                     TimedOutError, TooBigError, UnsupportedError, UntrustedServerError,
                     VersionError, error_class)
from .generation import Generation
from .results import AdminOp, AdminResult, Finish, FleetMatch, Match, ServerInfo, Usage

__version__ = "0.1.0"

PROTOCOL_VERSION = 4
"""The highest protocol version this client speaks (and offers in HELLO)."""

__all__ = [
    "Client", "Generation", "default_socket_path", "PROTOCOL_VERSION",
    "ServerInfo", "Match", "Usage", "AdminResult", "FleetMatch", "Finish", "AdminOp",
    "KvprefixError", "OutOfMemoryError", "InvalidArgumentError", "MalformedFrameError",
    "TooBigError", "PoolFullError", "NotFoundError", "VersionError", "DaemonIOError",
    "ConnectionClosedError", "TimedOutError", "BusyError", "PermissionDeniedError",
    "UnsupportedError", "ShuttingDownError", "AlreadyExistsError", "InternalError",
    "ProtocolError", "KvprefixConnectionError", "UntrustedServerError", "error_class",
]
