"""The kvprefix client: one blocking connection to kvprefixd's Unix socket.

A call sends one request frame and reads frames until its reply; ``generate`` returns
at once with an iterator that reads its token frames as the caller asks for them.
Frames are matched to requests by ``req_id`` (1, 2, 3, ..., never 0), because the
daemon may answer a request sent after a GENERATE before that GENERATE is done
(docs/protocol.md §8):

    reading for request r, a frame with req_id
      r                  its answer (a reply other than ERROR must carry r's version)
      0, an ERROR        the daemon refused the connection as a whole: raised, closed
      a live GENERATE's  queued for that generation's iterator
      an owed one        dropped (a request that timed out, a generation abandoned),
                         until that request's final frame
      anything else      ProtocolError: the stream cannot be trusted, closed

Every request but ADMIN and FLEET goes in a version-1 header; ADMIN in a version-2
header, FLEET in a version-4 header. A client is not thread-safe: use one per thread.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket as _socket
import time
from collections import deque
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set,
                    Tuple, TypeVar, Union)

from . import _peer, _sockpath, _wire
from ._wire import Header
from .errors import (ConnectionClosedError, InvalidArgumentError, KvprefixConnectionError,
                     KvprefixError, ProtocolError, TimedOutError, TooBigError,
                     UntrustedServerError, VersionError, from_code)
from .generation import Generation
from .results import AdminOp, AdminResult, FleetMatch, Match, ServerInfo

__all__ = ["Client", "SocketPath"]

SocketPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Frame = Tuple[Header, bytes]

_T = TypeVar("_T")
_SUN_PATH_MAX = 108     # sizeof(sockaddr_un.sun_path), the terminating NUL included
_RECV_SIZE = 1 << 16
_OWED_MAX = 64          # requests whose answer was given up on, awaited at once


class Client:
    """A connection to kvprefixd.

    Args:
        socket: the daemon's socket path; None: the default (:func:`default_socket_path`:
            ``$XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock``, ``/run/kvprefix/kvprefixd.sock``
            for root, else ``/tmp/kvprefix-<uid>/kvprefixd.sock``, whose directory must
            then belong to this user or root and be writable by no one else).
        timeout: seconds to wait for each reply frame (and for each stalled write, and
            for the connection); None: wait forever. A call past it raises
            :class:`TimedOutError` and the client stays usable: the late answer is
            read and dropped by a later call. A GENERATE's deadline applies to each of
            its frames.
        server_uid: a uid to trust besides root, this user, the system user
            ``kvprefix`` and ``$KVP_SERVER_UID``.

    The constructor connects, then asks the kernel who serves the socket
    (SO_PEERCRED) and closes the connection before sending anything unless it is one
    of those: :class:`UntrustedServerError`. Other failures to connect raise
    :class:`KvprefixConnectionError`; a path too long for a Unix socket,
    :class:`TooBigError`.

    A client is a context manager: leaving the ``with`` block closes it, and closing
    releases every lease it holds. It is not thread-safe.
    """

    def __init__(self, socket: Optional[SocketPath] = None, *, timeout: Optional[float] = None,
                 server_uid: Optional[int] = None) -> None:
        self._sock: Optional[_socket.socket] = None
        self._buf = bytearray()
        self._next_id = 1
        self._owed: Set[int] = set()
        self._queues: Dict[int, Deque[Frame]] = {}
        self._unusable: Optional[str] = None
        self._refused = False
        self._info: Optional[ServerInfo] = None
        self._timeout = _check_timeout(timeout)
        if server_uid is not None and (not isinstance(server_uid, int)
                                       or not 0 <= server_uid < _wire.U32_MAX):
            raise InvalidArgumentError("server_uid must be a uid below %d" % _wire.U32_MAX)
        self._server_uid = server_uid
        self._path = self._address(socket)
        self._connect()

    # ---- connecting -------------------------------------------------------------------

    @staticmethod
    def _address(socket: Optional[SocketPath]) -> str:
        """Where to connect: socket, or the default path (its /tmp directory checked)."""
        if socket is not None:
            path = os.fsdecode(os.fspath(socket))
        else:
            path = _sockpath.default_socket_path()
            tmpdir = _sockpath.default_socket_tmpdir()
            why = tmpdir and _sockpath.socket_dir_problem(tmpdir, os.geteuid())
            if why:
                raise UntrustedServerError(
                    "not connecting to %s: %s, so another user may be listening there for "
                    "your prompts; remove %s and restart kvprefixd (it makes the directory "
                    "anew), or set XDG_RUNTIME_DIR, or give the socket path"
                    % (path, why, tmpdir))
        if len(os.fsencode(path)) >= _SUN_PATH_MAX:
            raise TooBigError("socket path %r is longer than a Unix socket's %d bytes"
                              % (path, _SUN_PATH_MAX - 1))
        return path

    def _connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            try:
                sock.connect(self._path)
            except _socket.timeout:
                raise TimedOutError("connecting to %s" % self._path) from None
            except OSError as e:
                raise KvprefixConnectionError("cannot connect to %s: %s"
                                              % (self._path, e.strerror or e),
                                              errno=e.errno) from None
            _peer.check_server(sock, self._path, self._server_uid)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    # ---- the client as an object ----------------------------------------------------------

    @property
    def socket_path(self) -> str:
        """The path this client connected to."""
        return self._path

    @property
    def timeout(self) -> Optional[float]:
        """Seconds to wait for each reply frame; None: forever. May be set."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = _check_timeout(value)

    @property
    def server_info(self) -> Optional[ServerInfo]:
        """The last HELLO reply (None before :meth:`hello`)."""
        return self._info

    @property
    def closed(self) -> bool:
        """True once the client is closed or no longer usable."""
        return self._sock is None

    @property
    def refused(self) -> bool:
        """True when the daemon refused the connection as a whole (an ERROR with req_id
        0: its connection limit, or a graceful stop). Connect again later."""
        return self._refused

    def close(self) -> None:
        """Close the connection; the daemon releases every lease it held. Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self._unusable is None:
                self._unusable = "the client is closed"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<kvprefix.Client %s%s>" % (self._path, " closed" if self.closed else "")

    # ---- requests -----------------------------------------------------------------------------

    def hello(self, adapter: Union[str, bytes] = "", salt: Union[str, bytes] = "", *,
              version: int = _wire.VERSION_MAX) -> ServerInfo:
        """Say HELLO (optional; at most once, as the first request): offer a protocol
        version (default 4, the highest this client speaks) and choose the namespace of
        the requests that follow: an adapter id (e.g. a LoRA name) and a cache salt
        that replaces the tenant (only for uids in the daemon's ``salt-uids``: else
        :class:`PermissionDeniedError`). Strings are sent as UTF-8, at most 255 bytes
        (:class:`TooBigError`).

        Returns the daemon's :class:`ServerInfo`, also kept as :attr:`server_info`.
        Its ``version`` is the one agreed (at most the offer): below 2 there is no
        :meth:`admin`, below 4 no :meth:`fleet`. A reply version this client did not
        offer closes the client (:class:`VersionError`)."""
        if not isinstance(version, int) or not 1 <= version <= _wire.VERSION_MAX:
            raise InvalidArgumentError("version must be 1 to %d" % _wire.VERSION_MAX)
        payload = _wire.encode_hello(version, _utf8("adapter", adapter), _utf8("salt", salt))
        reply = self._call(_wire.T_HELLO, [payload])
        info = self._decode(_wire.decode_hello_reply, reply)
        if not 1 <= info.version <= version:
            self._close_unusable("the daemon answered HELLO with version %d to an offer of %d"
                                 % (info.version, version))
            raise VersionError("the daemon answered version %d to an offer of %d"
                               % (info.version, version))
        self._info = info
        return info

    def lookup(self, tokens: Iterable[int], *, pin: bool = False) -> Match:
        """Which prefix of tokens is cached in this connection's namespace (only full
        blocks count). With ``pin``, the matched blocks are pinned under a new lease
        (``Match.lease``, 0 when nothing matched) until :meth:`release` or until the
        client closes."""
        return self._tokens_call(_wire.T_LOOKUP, tokens, pin)

    def insert(self, tokens: Iterable[int], *, pin: bool = False, keep_s: int = 0,
               priority: int = 0) -> Match:
        """Register the full blocks of tokens as computed by an external engine
        (index-only daemons; an engine-mode daemon raises :class:`UnsupportedError`).
        ``Match.matched_tokens`` is the prefix cached now: fewer than the full blocks
        when the pool is full of pinned blocks. ``pin`` as for :meth:`lookup`.

        ``keep_s`` (1 to 604800, a week; 0: no keep) keeps the blocks cached now for
        that many seconds: they are not evicted to make room while any block nobody
        keeps can go, and when nothing else can go the lowest ``priority`` is given up
        first (docs/protocol.md §4.3). Out of range raises
        :class:`InvalidArgumentError` before sending. A daemon older than KEEP refuses
        it as a reserved flag bit (:class:`InvalidArgumentError`) and closes the
        connection."""
        return self._tokens_call(_wire.T_INSERT, tokens, pin, _wire.encode_keep(keep_s,
                                                                               priority))

    @contextlib.contextmanager
    def lease(self, tokens: Iterable[int], *, insert: bool = False) -> Iterator[Match]:
        """``with client.lease(tokens) as m:`` pins the cached prefix of tokens (with
        ``insert``, registers it first) and releases the lease when the block ends,
        unless nothing matched or the client was closed meanwhile."""
        m = self._tokens_call(_wire.T_INSERT if insert else _wire.T_LOOKUP, tokens, True)
        try:
            yield m
        finally:
            if m.lease and not self.closed:
                self.release(m.lease)

    def release(self, lease: int) -> int:
        """Unpin a lease this connection holds; returns how many blocks it held. An
        unknown or already released lease raises :class:`NotFoundError`."""
        reply = self._call(_wire.T_RELEASE, [_wire.encode_release(lease)])
        return self._decode(_wire.decode_u32, "RELEASE reply", reply)

    def stats(self) -> Dict[str, Any]:
        """The daemon's statistics (docs/protocol.md §4.6), the JSON object parsed. Keys
        grow over time: ignore those you do not know."""
        reply = self._call(_wire.T_STATS, [])
        try:
            obj = json.loads(reply.decode("utf-8"))
        except ValueError as e:
            raise self._fail("a STATS reply that is not JSON: %s" % e) from None
        if not isinstance(obj, dict):
            raise self._fail("a STATS reply that is not a JSON object")
        return obj

    def fleet(self, tokens: Iterable[int]) -> List[FleetMatch]:
        """Ask a fleet index (``kvprefixd --index-only --kv-events-sub ...``, which
        follows the KV events other engines publish) how many leading tokens of tokens
        each engine it follows has cached, in whole blocks of its ``block_tokens``.

        Returns one :class:`FleetMatch` per engine the index follows (at most 64; none
        before the first engine's events), longest match first, equal matches by name
        (bytewise). Keys are those of the fleet, the same for every connection: a
        HELLO's adapter or salt does not change the answer.

        Sent in a version-4 header (docs/protocol.md §4.13). A daemon that is not a
        fleet index raises :class:`UnsupportedError` (the client stays usable); a
        daemon that said in HELLO it speaks a version below 4 is not asked:
        :class:`VersionError`, nothing sent. Without a HELLO the request is sent, and
        a daemon that does not speak version 4 answers :class:`VersionError` and
        closes the connection.
        """
        toks, n = _wire.tokens_bytes(tokens)
        if self._info is not None and self._info.version < _wire.VERSION_FLEET:
            raise VersionError("the daemon speaks protocol version %d, without FLEET"
                               % self._info.version)
        head = _wire.encode_tokens_head(0, n)
        reply = self._call(_wire.T_FLEET, [head, toks], version=_wire.VERSION_FLEET)
        r = self._decode(_wire.decode_fleet_reply, reply)
        if r.prompt_tokens != n:
            raise self._fail("a FLEET reply of %d prompt tokens to a request of %d"
                             % (r.prompt_tokens, n))
        for m in r.matches:
            if m.matched_tokens > n:
                raise self._fail("a FLEET reply of %d matched tokens for %r, of %d asked"
                                 % (m.matched_tokens, m.instance, n))
        return list(r.matches)

    def ping(self, data: bytes = b"") -> float:
        """Send data (any bytes) and check that the daemon echoes it; returns the round
        trip in seconds."""
        data = bytes(data)
        if len(data) > _wire.MAX_REPLY:
            raise TooBigError("a PING of more than %d bytes" % _wire.MAX_REPLY)
        start = time.monotonic()
        reply = self._call(_wire.T_PING, [data])
        elapsed = time.monotonic() - start
        if reply != data:
            raise self._fail("a PONG that does not echo the PING")
        return elapsed

    def generate(self, prompt: Iterable[int], *, max_new: int = 16, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop: Sequence[int] = (), logits: bool = False, keep_s: int = 0,
                 priority: int = 0) -> Generation:
        """Generate up to ``max_new`` tokens after prompt (at least one token), on a
        daemon that runs a model.

        Sampling: ``temperature`` 0 is greedy (the most likely token, the lowest id
        among equals); otherwise the logits divided by temperature, cut to the
        ``top_k`` most likely (0: off) and to the ``top_p`` nucleus (1: off), drawn with
        random numbers seeded by ``seed``. Generation ends after a token in ``stop``
        (that token is yielded), after ``max_new`` tokens or when the model's context
        is full. ``logits``: return the raw logits of the last prompt position in
        ``Usage.logits``. ``keep_s`` and ``priority``: keep the full blocks of the
        prompt cached when it completes, as :meth:`insert` keeps its blocks.

        The request is sent now (values the daemon would refuse raise
        :class:`InvalidArgumentError` here, before sending); the returned
        :class:`Generation` yields each token id as it arrives, then stops, and its
        ``done`` is the :class:`Usage`. The daemon's errors (a token id not below the
        vocabulary, a prompt over the context, an index-only daemon, ...) are raised
        by the iteration. Other requests may be made on this client meanwhile.
        """
        p = _wire.generate_params(max_new, temperature, top_k, top_p, seed, stop, logits,
                                  keep_s, priority)
        toks, n = _wire.tokens_bytes(prompt)
        if n == 0:
            raise InvalidArgumentError("a GENERATE needs at least one prompt token")
        req_id = self._send(_wire.VERSION, _wire.T_GENERATE,
                            [_wire.encode_generate_head(p, n), toks, p.keep])
        self._queues[req_id] = deque()
        return Generation(self, req_id, p, n)

    def admin(self, op: Union[AdminOp, int, str], *, tokens: Iterable[int] = (), text: str = "",
              tenant: Optional[int] = None, all: bool = False) -> AdminResult:
        """An administrative request (docs/protocol.md §4.12; root or the daemon's
        ``admin-group`` only, else :class:`PermissionDeniedError`), in a version-2
        header.

        Args:
            op: :class:`AdminOp` (CLEAR, EVICT, PIN, UNPIN, CONFIG), or its name
                (``"clear"``); any other number is sent, for the daemon to refuse.
            tokens: the prefix EVICT, PIN and UNPIN act on (at least one token).
            text: CONFIG's ``""`` (every option), ``"key"`` or ``"key=value"``.
            tenant: act on this tenant's namespace (with this connection's adapter)
                instead of the connection's own.
            all: CLEAR every namespace.

        A field the op does not take raises :class:`InvalidArgumentError` before
        sending, as does a daemon that said in HELLO it speaks only version 1
        (:class:`VersionError`).
        """
        flags = ((_wire.ADMIN_F_TENANT if tenant is not None else 0)
                 | (_wire.ADMIN_F_ALL if all else 0))
        tenant_v = _wire.check_u32("tenant", tenant) if tenant is not None else 0
        toks, n = _wire.tokens_bytes(tokens)
        raw_text = _utf8("text", text)
        if isinstance(op, str):
            try:
                op = AdminOp[op.upper()]
            except KeyError:
                raise InvalidArgumentError("no ADMIN op %r" % op) from None
        op_v = _wire.check_u32("op", op)
        payload = _wire.encode_admin(op_v, flags, tenant_v, toks, n, raw_text)
        if self._info is not None and self._info.version < _wire.VERSION_ADMIN:
            raise VersionError("the daemon speaks protocol version %d, without ADMIN"
                               % self._info.version)
        reply = self._call(_wire.T_ADMIN, [payload], version=_wire.VERSION_ADMIN)
        result = self._decode(_wire.decode_admin_reply, reply)
        if result.op != op_v:
            raise self._fail("an ADMIN reply for op %d to a request of op %d"
                             % (result.op, op_v))
        return result

    def admin_clear(self, *, tenant: Optional[int] = None, all: bool = False) -> int:
        """ADMIN CLEAR: evict every unpinned block of this connection's namespace (of
        ``tenant``'s, or with ``all`` of every namespace); returns how many."""
        return self.admin(AdminOp.CLEAR, tenant=tenant, all=all).blocks

    def admin_evict(self, tokens: Iterable[int], *, tenant: Optional[int] = None) -> int:
        """ADMIN EVICT: evict the cached prefix of tokens and what extends it (pinned
        blocks and blocks other chains go through stay); returns how many."""
        return self.admin(AdminOp.EVICT, tokens=tokens, tenant=tenant).blocks

    def admin_pin(self, tokens: Iterable[int], *, tenant: Optional[int] = None) -> int:
        """ADMIN PIN: pin the cached prefix of tokens until :meth:`admin_unpin` or until
        the daemon stops (it outlives this connection); returns the blocks pinned (0:
        nothing cached, and no pin made)."""
        return self.admin(AdminOp.PIN, tokens=tokens, tenant=tenant).blocks

    def admin_unpin(self, tokens: Iterable[int], *, tenant: Optional[int] = None) -> int:
        """ADMIN UNPIN: remove one pin of the prefix of tokens; returns the blocks it
        held. :class:`NotFoundError` when there is none."""
        return self.admin(AdminOp.UNPIN, tokens=tokens, tenant=tenant).blocks

    def admin_explain(self, tokens: Iterable[int], *, tenant: Optional[int] = None) -> str:
        """ADMIN EXPLAIN: what became of each block of tokens, one line per run of blocks
        of one fate (``blocks A-B tokens X-Y: FATE``, §4.12); changes nothing."""
        return self.admin(AdminOp.EXPLAIN, tokens=tokens, tenant=tenant).text

    def admin_config(self, text: str = "") -> str:
        """ADMIN CONFIG: ``""`` lists every option, ``"key"`` shows one, ``"key=value"``
        sets one that can change while the daemon runs (not written to the config
        file). Returns the daemon's ``key = value`` lines. An unknown key or a bad value
        raises :class:`InvalidArgumentError`; an option only a restart changes,
        :class:`UnsupportedError`."""
        return self.admin(AdminOp.CONFIG, text=text).text

    # ---- one request ------------------------------------------------------------------------

    def _tokens_call(self, ftype: int, tokens: Iterable[int], pin: bool,
                     keep: bytes = b"") -> Match:
        """LOOKUP or INSERT; keep: an INSERT's encode_keep bytes, sent with F_KEEP."""
        toks, n = _wire.tokens_bytes(tokens)
        flags = (_wire.F_PIN if pin else 0) | (_wire.F_KEEP if keep else 0)
        head = _wire.encode_tokens_head(flags, n)
        m = self._decode(_wire.decode_blocks_reply, self._call(ftype, [head, toks, keep]))
        if m.prompt_tokens != n or (m.lease and not pin):
            raise self._fail("a reply of %d prompt tokens%s to a request of %d"
                             % (m.prompt_tokens, ", with a lease," if m.lease and not pin
                                else "", n))
        return m

    def _call(self, ftype: int, parts: List[bytes], version: int = _wire.VERSION) -> bytes:
        """Send one request and return its reply's payload; raise its ERROR."""
        deadline = self._deadline()
        req_id = self._send(version, ftype, parts)
        h, payload = self._await(req_id, version, deadline)
        if h.type == _wire.T_ERROR:
            raise self._error(payload)
        if h.type != ftype | _wire.T_REPLY:
            raise self._fail("a frame of type 0x%02x answering a request of type 0x%02x"
                             % (h.type, ftype))
        return payload

    def _await(self, req_id: int, version: int, deadline: Optional[float]) -> Frame:
        """The next frame of req_id; a timeout leaves its answer owed."""
        try:
            return self._next_frame(req_id, version, deadline)
        except TimedOutError:
            self._owe(req_id)
            raise

    def _error(self, payload: bytes, refused: bool = False) -> KvprefixError:
        code, msg = self._decode(_wire.decode_error, payload)
        return from_code(code, msg, refused=refused)

    def _decode(self, fn: Callable[..., _T], *args: Any) -> _T:
        """fn(*args), a decoder: its ProtocolError makes the client unusable."""
        try:
            return fn(*args)
        except ProtocolError as e:
            self._fail(e.message)
            raise

    # ---- generations (called by Generation) ---------------------------------------------------

    def _generation_frame(self, req_id: int) -> Frame:
        """The next frame of the generation req_id, within the timeout."""
        return self._await(req_id, _wire.VERSION, self._deadline())

    def _generation_end(self, req_id: int) -> None:
        """The generation req_id read its final frame: stop queueing its frames."""
        self._queues.pop(req_id, None)

    def _abandon(self, req_id: int) -> None:
        """Give up on the generation req_id: the rest of its frames are dropped."""
        q = self._queues.pop(req_id, None)
        if q is not None and not any(_wire.is_final_type(h.type) for h, _ in q):
            self._owe(req_id)

    # ---- frames -------------------------------------------------------------------------------------

    def _deadline(self) -> Optional[float]:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _usable(self) -> _socket.socket:
        if self._sock is None:
            raise ConnectionClosedError("the connection is not usable: %s" % self._unusable)
        return self._sock

    def _fail(self, why: str) -> ProtocolError:
        """The daemon broke the protocol: close, and say why."""
        self._close_unusable(why)
        return ProtocolError(why)

    def _close_unusable(self, why: str) -> None:
        if self._sock is not None:
            self._unusable = why
            self._sock.close()
            self._sock = None

    def _owe(self, req_id: int) -> None:
        self._queues.pop(req_id, None)
        if len(self._owed) >= _OWED_MAX:
            self._close_unusable("%d requests went unanswered" % _OWED_MAX)
        else:
            self._owed.add(req_id)

    def _send(self, version: int, ftype: int, parts: List[bytes]) -> int:
        """Send one request; returns its req_id. Nothing went out when it raises,
        unless the client is then closed."""
        sock = self._usable()
        length = sum(len(p) for p in parts)
        if length > _wire.U32_MAX:
            raise TooBigError("a request of %d bytes" % length)
        req_id = self._next_id
        data = memoryview(b"".join([_wire.pack_header(version, ftype, req_id, length)] + parts))
        sent = 0
        sock.settimeout(self._timeout)
        try:
            while sent < len(data):
                sent += sock.send(data[sent:], _socket.MSG_NOSIGNAL)
        except _socket.timeout:
            if sent:
                self._close_unusable("a request was cut off part-way by the timeout")
            raise TimedOutError("sending a request") from None
        except (BrokenPipeError, ConnectionResetError):
            err = self._salvage(req_id)
            self._close_unusable("the daemon closed the connection")
            raise err from None
        except OSError as e:
            self._close_unusable("sending: %s" % e)
            raise KvprefixConnectionError("sending: %s" % e.strerror, errno=e.errno) from None
        self._next_id = (req_id + 1) & _wire.U32_MAX or 1
        return req_id

    def _salvage(self, req_id: int) -> KvprefixError:
        """The daemon closed while we were sending: it may have said why first (a frame
        over its limit gets ERROR 4 as soon as its header is read; a refused connection
        its unprompted ERROR). The ERROR already here for req_id or 0, else
        ConnectionClosedError."""
        sock = self._usable()
        try:
            sock.setblocking(False)
            while True:
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    break
                self._buf += chunk
        except OSError:
            pass
        off = 0
        while len(self._buf) - off >= _wire.HDR_SIZE:
            try:
                h = _wire.unpack_header(bytes(self._buf[off:off + _wire.HDR_SIZE]))
            except ProtocolError:
                break
            end = off + _wire.HDR_SIZE + h.len
            if end > len(self._buf):
                break
            if h.type == _wire.T_ERROR and h.req_id in (req_id, 0):
                try:
                    code, msg = _wire.decode_error(bytes(self._buf[off + _wire.HDR_SIZE:end]))
                except ProtocolError:
                    break
                self._refused = h.req_id == 0
                return from_code(code, msg, refused=self._refused)
            off = end
        return ConnectionClosedError("the daemon closed the connection")

    def _fill(self, deadline: Optional[float]) -> None:
        """Receive more bytes into the buffer, by the deadline."""
        sock = self._usable()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimedOutError("no reply within %g s" % self._timeout)
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(_RECV_SIZE)
        except _socket.timeout:
            raise TimedOutError("no reply within %g s" % self._timeout) from None
        except ConnectionResetError:
            chunk = b""
        except OSError as e:
            self._close_unusable("receiving: %s" % e)
            raise KvprefixConnectionError("receiving: %s" % e.strerror, errno=e.errno) from None
        if not chunk:
            self._close_unusable("the daemon closed the connection")
            raise ConnectionClosedError("the daemon closed the connection")
        self._buf += chunk

    def _read_frame(self, deadline: Optional[float]) -> Frame:
        while len(self._buf) < _wire.HDR_SIZE:
            self._fill(deadline)
        h = self._decode(_wire.unpack_header, bytes(self._buf[:_wire.HDR_SIZE]))
        need = _wire.HDR_SIZE + h.len
        while len(self._buf) < need:
            self._fill(deadline)
        payload = bytes(self._buf[_wire.HDR_SIZE:need])
        del self._buf[:need]
        return h, payload

    def _next_frame(self, req_id: int, version: int, deadline: Optional[float]) -> Frame:
        """The next frame of req_id, routing the frames of others as the module's
        docstring says."""
        q = self._queues.get(req_id)
        while True:
            if q:
                h, payload = q.popleft()
            else:
                h, payload = self._read_frame(deadline)
            if h.req_id == req_id:
                if h.type != _wire.T_ERROR and h.version != version:
                    raise self._fail("a reply in a version-%d header to a version-%d request"
                                     % (h.version, version))
                return h, payload
            if h.req_id == 0 and h.type == _wire.T_ERROR:
                err = self._error(payload, refused=True)
                self._refused = True
                self._close_unusable("the daemon refused the connection: %s" % err)
                raise err
            other = self._queues.get(h.req_id)
            if other is not None:
                other.append((h, payload))
            elif h.req_id in self._owed:
                if _wire.is_final_type(h.type):
                    self._owed.discard(h.req_id)
            else:
                raise self._fail("a frame of type 0x%02x for request %d, which is not awaited"
                                 % (h.type, h.req_id))


def _check_timeout(t: Optional[float]) -> Optional[float]:
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
        raise InvalidArgumentError("timeout must be a positive number of seconds or None, "
                                   "not %r" % (t,))
    return float(t)


def _utf8(what: str, s: Union[str, bytes]) -> bytes:
    if isinstance(s, str):
        return s.encode("utf-8")
    if isinstance(s, (bytes, bytearray)):
        return bytes(s)
    raise TypeError("%s must be str or bytes, not %s" % (what, type(s).__name__))
