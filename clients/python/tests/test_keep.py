"""KEEP on INSERT and GENERATE (docs/protocol.md §4.3, §4.9): the bytes the client
sends, what it refuses before sending, and a daemon never reached by a refused keep.

The encoders' bytes are checked against the layout of the page; a scripted server
reads what Client.insert and Client.generate send. Against the real daemon only the
refusals before sending are checked here: the connection stays as it was."""

from __future__ import annotations

import struct

import pytest

import kvprefix
from kvprefix import _wire
from kvp_testlib import FakeServer, frame

TOKENS = [10, 11, 12, 13, 14]


def test_encode_keep():
    assert _wire.encode_keep(0, 0) == b""
    assert _wire.encode_keep(1, 0) == struct.pack("<II", 1, 0)
    assert _wire.encode_keep(3600, 5) == bytes.fromhex("100e0000 05000000")
    assert _wire.encode_keep(_wire.KEEP_MAX_S, _wire.U32_MAX) == \
        struct.pack("<II", 604800, 0xFFFFFFFF)
    assert len(_wire.encode_keep(60, 1)) == _wire.KEEP_SIZE


@pytest.mark.parametrize("keep_s, priority", [
    (_wire.KEEP_MAX_S + 1, 0),   # over a week
    (_wire.U32_MAX, 0),
    (-1, 0),
    (0, 1),                      # a priority without a keep
    (60, -1),
    (60, 1 << 32),
    (True, 0),
    (60.0, 0),
])
def test_encode_keep_refuses(keep_s, priority):
    with pytest.raises(kvprefix.InvalidArgumentError):
        _wire.encode_keep(keep_s, priority)


def test_generate_params_keep():
    p = _wire.generate_params(8, 0.0, 0, 1.0, 0, (), False)
    assert (p.flags, p.keep) == (0, b"")
    p = _wire.generate_params(8, 0.0, 0, 1.0, 0, (), True, keep_s=60, priority=9)
    assert p.flags == _wire.GEN_LOGITS | _wire.GEN_KEEP
    assert p.keep == struct.pack("<II", 60, 9)
    with pytest.raises(kvprefix.InvalidArgumentError):
        _wire.generate_params(8, 0.0, 0, 1.0, 0, (), False, keep_s=0, priority=3)


def _insert_reply(req_id):
    """An INSERT reply: 4 tokens cached in block 3."""
    return frame(_wire.T_INSERT | _wire.T_REPLY, req_id,
                 struct.pack("<IIIQI", 4, 5, 1, 0, 1) + struct.pack("<I", 3))


def test_insert_sends_keep_after_the_tokens(tmp_path):
    srv = FakeServer(str(tmp_path), [("read",), ("send", _insert_reply(1)),
                                     ("read",), ("send", _insert_reply(2))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        c.insert(TOKENS, pin=True, keep_s=_wire.KEEP_MAX_S, priority=7)
        c.insert(TOKENS)
    srv.check()
    keep, plain = srv.requests
    assert keep[5] == _wire.T_INSERT and struct.unpack_from("<I", keep, 12)[0] == 16 + 20
    assert keep[16:] == struct.pack("<II", _wire.F_PIN | _wire.F_KEEP, 5) + \
        struct.pack("<5I", *TOKENS) + struct.pack("<II", 604800, 7)
    assert plain[16:] == struct.pack("<II", 0, 5) + struct.pack("<5I", *TOKENS)


def test_generate_sends_keep_after_the_prompt(tmp_path):
    done = struct.pack("<6I3QI", 2, 0, 2, 0, 0, 0, 1, 1, 1, 0)
    srv = FakeServer(str(tmp_path), [("read",),
                                     ("send", frame(_wire.T_GENERATE_DONE, 1, done))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        gen = c.generate([1, 2], max_new=0, keep_s=60, priority=9)
        assert list(gen) == [] and gen.done is not None
    srv.check()
    (req,) = srv.requests
    assert req[16:] == struct.pack("<IIfIfQI", _wire.GEN_KEEP, 0, 0.0, 0, 1.0, 0, 0) + \
        struct.pack("<I2I", 2, 1, 2) + struct.pack("<II", 60, 9)


def test_keep_out_of_range_is_refused_before_sending(client):
    """Against the daemon: nothing is sent, the connection is as it was."""
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.insert(TOKENS, keep_s=_wire.KEEP_MAX_S + 1)
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.insert(TOKENS, keep_s=0, priority=1)
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.generate(TOKENS, keep_s=_wire.KEEP_MAX_S + 1)
    assert not client.closed
    assert client.ping(b"still here") >= 0
    assert client.lookup(TOKENS).prompt_tokens == 5
