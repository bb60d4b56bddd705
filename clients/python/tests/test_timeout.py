"""Timeouts: a reply late past the client's timeout raises TimedOutError and is dropped
when it comes; a generation's deadline applies to each frame, not to the whole."""

from __future__ import annotations

import struct
import time

import pytest

import kvprefix
from kvp_testlib import FakeServer, frame


def _tokens(req_id, *ids):
    return frame(0x87, req_id, struct.pack("<%dI" % (len(ids) + 1), len(ids), *ids))


def _done(req_id, generated):
    return frame(0x88, req_id, struct.pack("<6I3QI", 2, 0, 2, generated, 0, 0, 1, 1, 1, 0))


def test_late_reply_is_dropped(tmp_path):
    srv = FakeServer(str(tmp_path), [("read",), ("sleep", 1.0), ("send", frame(0x86, 1, b"one")),
                                     ("read",), ("send", frame(0x86, 2, b"two"))])
    with kvprefix.Client(srv.path, timeout=0.2) as c:
        start = time.monotonic()
        with pytest.raises(kvprefix.TimedOutError) as ei:
            c.ping(b"one")
        assert 0.15 < time.monotonic() - start < 0.9
        assert ei.value.code == 10 and not c.closed
        c.timeout = 5
        assert c.ping(b"two") > 0      # after the late PONG of "one", dropped on the way
    srv.check()
    assert [r[16:] for r in srv.requests] == [b"one", b"two"]


def test_timeout_per_generation_frame(tmp_path):
    """Six frames 0.2 s apart under a 0.8 s timeout: 1.2 s in all, fine."""
    script = [("read",)]
    for i in range(6):
        script += [("sleep", 0.2), ("send", _tokens(1, i))]
    script += [("send", _done(1, 6))]
    srv = FakeServer(str(tmp_path), script)
    with kvprefix.Client(srv.path, timeout=0.8) as c:
        start = time.monotonic()
        gen = c.generate([1, 2], max_new=6)
        assert list(gen) == [0, 1, 2, 3, 4, 5] and gen.done.generated_tokens == 6
        assert time.monotonic() - start > 0.8
    srv.check()


def test_stalled_generation(tmp_path):
    """A generation whose next frame is late: TimedOutError, the generation is given up,
    and its late frames are dropped on the way to the next reply."""
    srv = FakeServer(str(tmp_path), [("read",), ("send", _tokens(1, 7)), ("sleep", 1.0),
                                     ("send", _tokens(1, 8)), ("send", _done(1, 2)),
                                     ("read",), ("send", frame(0x86, 2))])
    with kvprefix.Client(srv.path, timeout=0.3) as c:
        gen = c.generate([1, 2], max_new=2)
        assert next(gen) == 7
        with pytest.raises(kvprefix.TimedOutError):
            next(gen)
        assert gen.finished and isinstance(gen.error, kvprefix.TimedOutError)
        assert list(gen) == []
        c.timeout = 5
        assert c.ping() > 0
    srv.check()


def test_no_timeout_waits(tmp_path):
    srv = FakeServer(str(tmp_path), [("read",), ("sleep", 0.3), ("send", frame(0x86, 1))])
    with kvprefix.Client(srv.path) as c:
        assert c.timeout is None
        assert c.ping() >= 0.25
    srv.check()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1", True])
def test_bad_timeouts(index_daemon, bad):
    with pytest.raises(kvprefix.InvalidArgumentError):
        kvprefix.Client(index_daemon.socket, timeout=bad)


def test_real_daemon_within_timeout(eclient):
    eclient.timeout = 5
    gen = eclient.generate([1, 2, 3], max_new=30)
    assert len(list(gen)) == 30
