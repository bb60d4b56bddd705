"""Errors surface as the class of their code: from the real daemon (limits, leases,
salts, refusals), from the library's own checks, and from replies that break the
protocol (a scripted server sends those)."""

from __future__ import annotations

import os
import struct
import time

import pytest

import kvprefix
from kvprefix import errors
from kvp_testlib import Daemon, FakeServer, error_frame, frame

CODES = {
    1: kvprefix.OutOfMemoryError, 2: kvprefix.InvalidArgumentError,
    3: kvprefix.MalformedFrameError, 4: kvprefix.TooBigError, 5: kvprefix.PoolFullError,
    6: kvprefix.NotFoundError, 7: kvprefix.VersionError, 8: kvprefix.DaemonIOError,
    9: kvprefix.ConnectionClosedError, 10: kvprefix.TimedOutError, 11: kvprefix.BusyError,
    12: kvprefix.PermissionDeniedError, 13: kvprefix.UnsupportedError,
    14: kvprefix.ShuttingDownError, 15: kvprefix.AlreadyExistsError,
    16: kvprefix.InternalError,
}


def test_error_classes():
    for code, cls in CODES.items():
        assert kvprefix.error_class(code) is cls
        e = errors.from_code(code, "why")
        assert type(e) is cls and isinstance(e, kvprefix.KvprefixError)
        assert (e.code, e.message) == (code, "why")
        assert str(e).endswith(": why") and e.name in str(e)
    odd = errors.from_code(99, "new")
    assert type(odd) is kvprefix.KvprefixError and odd.code == 99 and odd.name == "E99"
    assert kvprefix.ProtocolError("x").code == 3
    assert kvprefix.UntrustedServerError("x", uid=5).code == 12
    assert issubclass(kvprefix.UntrustedServerError, kvprefix.KvprefixConnectionError)
    assert issubclass(kvprefix.InvalidArgumentError, ValueError)


# ---- from the real daemon -------------------------------------------------------------------

def test_too_many_tokens(client):
    with pytest.raises(kvprefix.TooBigError) as ei:
        client.lookup(list(range(65)))             # max_tokens is 64
    assert ei.value.code == 4 and "64" in ei.value.message
    assert client.lookup(list(range(64))).prompt_tokens == 64   # still usable


def test_frame_over_the_limit(index_daemon):
    """A PING over --max-frame-bytes: ETOOBIG as soon as the header is read, then the
    daemon closes (the ERROR is read even when the write fails on the way)."""
    for size in (9000, 1 << 20):
        c = kvprefix.Client(index_daemon.socket, timeout=10)
        with pytest.raises(kvprefix.TooBigError) as ei:
            c.ping(b"x" * size)
        assert ei.value.code == 4 and not ei.value.refused
        with pytest.raises(kvprefix.ConnectionClosedError):
            c.ping()
        assert c.closed
        c.close()


def test_unknown_lease(client):
    with pytest.raises(kvprefix.NotFoundError):
        client.release(12345)
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.release(-1)                          # not a u64: not sent
    assert client.ping() > 0


def test_lease_of_another_connection(index_daemon, client):
    client.insert([1, 2, 3, 4])
    lease = client.lookup([1, 2, 3, 4], pin=True).lease
    with kvprefix.Client(index_daemon.socket) as other:
        other.hello(adapter="other")
        with pytest.raises(kvprefix.NotFoundError):
            other.release(lease)
    assert client.release(lease) == 1


def test_lease_limit():
    d = Daemon(["--block-tokens", "4", "--max-leases", "1"])
    try:
        with kvprefix.Client(d.socket) as c:
            first = c.insert([1, 2, 3, 4], pin=True)
            with pytest.raises(kvprefix.BusyError) as ei:
                c.lookup([1, 2, 3, 4], pin=True)
            assert ei.value.code == 11 and not ei.value.refused
            c.release(first.lease)
            assert c.lookup([1, 2, 3, 4], pin=True).lease != 0
    finally:
        d.stop_clean()


def test_pool_full_of_pins_caches_what_fits():
    """INSERT into a pool full of pinned blocks is not an error: it caches what fits."""
    d = Daemon(["--block-tokens", "4", "--capacity-blocks", "2"])
    try:
        with kvprefix.Client(d.socket) as c:
            assert c.insert(list(range(8)), pin=True).cached_tokens == 8
            m = c.insert(list(range(100, 112)))
            assert (m.cached_tokens, m.new_blocks) == (0, 0)
    finally:
        d.stop_clean()


def test_connection_refused_when_busy():
    d = Daemon(["--block-tokens", "4", "--max-connections", "1"])
    try:
        # the daemon may not yet have seen the start's probe connection close
        for _ in range(500):
            first = kvprefix.Client(d.socket, timeout=10)
            try:
                first.ping()
                break
            except kvprefix.BusyError:
                first.close()
                time.sleep(0.01)
        with first:
            second = kvprefix.Client(d.socket, timeout=10)
            with pytest.raises(kvprefix.BusyError) as ei:
                second.ping()
            assert ei.value.refused and ei.value.code == 11
            assert second.refused and second.closed
            with pytest.raises(kvprefix.ConnectionClosedError):
                second.ping()
            assert first.ping() > 0 and not first.refused
    finally:
        d.stop_clean()


def test_salt_refused(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:      # HELLO comes first, or not at all
        with pytest.raises(kvprefix.PermissionDeniedError) as ei:
            c.hello(salt="shared")
        assert ei.value.code == 12
        assert c.ping() > 0


def test_salt_allowed():
    d = Daemon(["--block-tokens", "4", "--salt-uids", str(os.geteuid())])
    try:
        with kvprefix.Client(d.socket) as c:
            assert c.hello(salt="shared").tenant == 0xFFFFFFFF
    finally:
        d.stop_clean()


def test_adapter_with_control_byte(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:
        with pytest.raises(kvprefix.InvalidArgumentError) as ei:
            c.hello(adapter="bad\x01name")
        assert ei.value.code == 2
        assert c.ping() > 0


def test_names_over_255_bytes(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:
        with pytest.raises(kvprefix.TooBigError):
            c.hello(adapter="a" * 256)
        with pytest.raises(kvprefix.TooBigError):
            c.hello(salt="\u00e9" * 128)                   # 256 bytes of UTF-8
        assert c.ping() > 0                                # nothing was sent


# ---- replies that break the protocol -----------------------------------------------------------

PONG_1 = frame(0x86, 1)


@pytest.mark.parametrize("reply", [
    b"XVP1" + PONG_1[4:],                               # bad magic
    PONG_1[:4] + b"\x05" + PONG_1[5:],                   # version 5
    PONG_1[:4] + b"\x00" + PONG_1[5:],                   # version 0
    frame(0x86, 1, version=2),                          # not the request's version
    frame(0x86, 1, version=4),                          # not the request's version
    frame(0x82, 1),                                     # another request's type
    frame(0x06, 1),                                     # a request type
    frame(0x86, 2),                                     # an id never sent
    frame(0x89, 1),                                     # ADMIN's reply in version 1
    frame(0x8A, 1, struct.pack("<II", 0, 0)),           # FLEET's reply in version 1
    frame(0x8A, 1, struct.pack("<II", 0, 0), version=3),  # ... in version 3
    frame(0x8A, 1, struct.pack("<II", 0, 0), version=4),  # ... to a PING
    frame(0x0A, 1, version=4),                          # FLEET, a request type
    frame(0x8B, 1, version=4),                          # no such reply
    PONG_1[:6] + b"\x01\x00" + PONG_1[8:],               # header flags
    frame(0x86, 1, b"extra"),                           # not the PING's bytes
    frame(0xFF, 1, struct.pack("<IH", 0, 0)),           # ERROR code 0
    frame(0xFF, 1, struct.pack("<IH", 2, 5) + b"abc"),  # ERROR shorter than its text
])
def test_broken_reply(tmp_path, reply):
    srv = FakeServer(str(tmp_path), [("read",), ("send", reply)])
    c = kvprefix.Client(srv.path, timeout=10)
    with pytest.raises(kvprefix.ProtocolError) as ei:
        c.ping()
    assert ei.value.code == 3 and ei.value.message
    assert c.closed
    with pytest.raises(kvprefix.ConnectionClosedError):
        c.ping()
    srv.check()


@pytest.mark.parametrize("payload", [
    struct.pack("<IIIQI", 4, 4, 0, 0, 1),              # 1 block id announced, none sent
    struct.pack("<IIIQII", 4, 4, 0, 0, 1, 0) + b"\0",  # a byte after the last field
    struct.pack("<IIIQII", 4, 9, 0, 0, 1, 0),          # prompt_tokens not the 4 sent
    struct.pack("<IIIQII", 4, 4, 0, 7, 1, 0),          # a lease not asked for
])
def test_broken_lookup_reply(tmp_path, payload):
    srv = FakeServer(str(tmp_path), [("read",), ("send", frame(0x82, 1, payload))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        with pytest.raises(kvprefix.ProtocolError):
            c.lookup([1, 2, 3, 4])
        assert c.closed
    srv.check()


def _done(prompt=3, cached=0, computed=3, generated=2, finish=0, reserved=0, logits=()):
    return frame(0x88, 1, struct.pack("<6I3QI", prompt, cached, computed, generated, finish,
                                      reserved, 1, 1, 1, len(logits))
                 + struct.pack("<%df" % len(logits), *logits))


def _tokens(*ids):
    return frame(0x87, 1, struct.pack("<%dI" % (len(ids) + 1), len(ids), *ids))


@pytest.mark.parametrize("frames", [
    [_tokens(1, 2, 3)],                                  # over max_new 2
    [_tokens(5, 1), _done(finish=1)],                    # a token after the stop id
    [_tokens(1, 2), _done(generated=3)],                 # counts that do not add up
    [_tokens(1, 2), _done(cached=1)],                    # cached + computed != prompt
    [_tokens(1, 2), _done(cached=3, computed=0)],        # nothing computed
    [_tokens(1), _done(generated=1)],                    # "length" with 1 of 2
    [_tokens(1, 2), _done(finish=2)],                    # "context" at max_new
    [_tokens(1, 2), _done(finish=1)],                    # "stop" without a stop id
    [_tokens(1, 2), _done(logits=(0.5,))],               # logits not asked for
    [_tokens(1, 2), _done(reserved=1)],                  # reserved field
    [_tokens(1, 2), _done(finish=3)],                    # no such finish
    [_tokens(1), frame(0x86, 1)],                        # a PONG in a GENERATE's answer
])
def test_broken_generation(tmp_path, frames):
    srv = FakeServer(str(tmp_path), [("read",)] + [("send", f) for f in frames])
    with kvprefix.Client(srv.path, timeout=10) as c:
        gen = c.generate([1, 2, 3], max_new=2, stop=[5])
        with pytest.raises(kvprefix.ProtocolError):
            list(gen)
        assert gen.error is not None and gen.done is None and c.closed
    srv.check()


def test_generation_that_adds_up(tmp_path):
    """The counterpart of test_broken_generation: the same frames, well formed, pass."""
    srv = FakeServer(str(tmp_path), [("read",), ("send", _tokens(1)), ("send", _tokens()),
                                     ("send", _tokens(5)), ("send", _done(finish=1))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        gen = c.generate([1, 2, 3], max_new=2, stop=[5])
        assert list(gen) == [1, 5] and gen.done.finish == kvprefix.Finish.STOP
    srv.check()


def test_unknown_error_code(tmp_path):
    srv = FakeServer(str(tmp_path), [("read",), ("send", error_frame(1, 4242, "new")),
                                     ("read",), ("send", frame(0x86, 2))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        with pytest.raises(kvprefix.KvprefixError) as ei:
            c.ping()
        assert type(ei.value) is kvprefix.KvprefixError
        assert (ei.value.code, ei.value.message) == (4242, "new")
        assert c.ping() >= 0
    srv.check()


def test_refusal_while_stopping(tmp_path):
    """An unprompted ERROR with req_id 0 answers whatever call meets it."""
    srv = FakeServer(str(tmp_path), [("send", error_frame(0, 14, "stopping")), ("read",),
                                     ("close",)])
    c = kvprefix.Client(srv.path, timeout=10)
    with pytest.raises(kvprefix.ShuttingDownError) as ei:
        c.stats()
    assert ei.value.refused and ei.value.message == "stopping"
    assert c.refused and c.closed
    srv.check()


def test_daemon_hangs_up(tmp_path):
    srv = FakeServer(str(tmp_path), [("read",), ("close",)])
    c = kvprefix.Client(srv.path, timeout=10)
    with pytest.raises(kvprefix.ConnectionClosedError) as ei:
        c.ping()
    assert ei.value.code == 9 and c.closed
    srv.check()
