"""FLEET (protocol version 4): against a daemon that is no fleet index, against a real
fleet index fed by publishers of vLLM-format KV events (python3-zmq, python3-msgpack),
and replies a daemon does not send on demand (a scripted server)."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

import pytest

import kvprefix
from kvprefix import FleetMatch, _wire
from kvp_testlib import Daemon, FakeServer, doc_frame, error_frame, frame

BT = 4                          # the fleet index's block size, and the engines'
TOKENS = list(range(1, 10))     # two whole blocks and one token more

# ---- a daemon without a fleet index --------------------------------------------------------


def test_no_fleet_index(client):
    """An index-only daemon without --kv-events-sub: EUNSUPPORTED, the client usable."""
    assert client.server_info.version == 4
    with pytest.raises(kvprefix.UnsupportedError) as ei:
        client.fleet(TOKENS)
    assert ei.value.code == 13 and ei.value.message and not ei.value.refused
    assert not client.closed
    assert client.insert(TOKENS).cached_tokens == 8
    with pytest.raises(kvprefix.UnsupportedError):
        client.fleet([])
    assert client.lookup(TOKENS).matched_tokens == 8


def test_no_fleet_index_without_hello(engine_daemon):
    """Without HELLO the request is sent all the same, in its version-4 header."""
    with kvprefix.Client(engine_daemon.socket, timeout=30) as c:
        with pytest.raises(kvprefix.UnsupportedError):
            c.fleet(TOKENS)
        assert c.ping() > 0


def test_fleet_after_hello_of_version_3(index_daemon):
    """A HELLO that settled below 4: VersionError, nothing sent (the daemon would
    have closed the connection on a FLEET in a version-3 header)."""
    for offer in (1, 2, 3):
        with kvprefix.Client(index_daemon.socket, timeout=30) as c:
            assert c.hello(version=offer).version == offer
            with pytest.raises(kvprefix.VersionError) as ei:
                c.fleet(TOKENS)
            assert ei.value.code == 7
            assert c.ping() > 0 and not c.closed


def test_bad_tokens_are_not_sent(client):
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.fleet([1, -1])
    with pytest.raises(TypeError):
        client.fleet(["1"])
    assert client.ping() > 0


# ---- a real fleet index ------------------------------------------------------------------------


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


class Publisher:
    """vLLM's KV event publisher: a PUB socket bound at an endpoint, and per engine
    (topic kv@<id>@m) a sequence number; each message is [topic, seq as an 8-byte
    big-endian number, msgpack [time, events, data-parallel rank]]."""

    def __init__(self, endpoint: str) -> None:
        self.zmq = pytest.importorskip("zmq")
        self.msgpack = pytest.importorskip("msgpack")
        self.ctx = self.zmq.Context()
        self.pub = self.ctx.socket(self.zmq.PUB)
        self.pub.bind(endpoint)
        self.seq: Dict[str, int] = {}

    def batch(self, engine: str, events: List[dict]) -> None:
        """Publish one batch of events as engine, with its next sequence number."""
        seq = self.seq.get(engine, 0)
        self.seq[engine] = seq + 1
        payload = self.msgpack.packb([time.time(), events, None])
        self.pub.send_multipart([b"kv@%s@m" % engine.encode(), seq.to_bytes(8, "big"),
                                 payload])

    @staticmethod
    def stored(hashes: List[int], parent: Optional[int], tokens: List[int]) -> dict:
        """A BlockStored event of BT-token blocks, as vLLM sends it."""
        return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
                "token_ids": tokens, "block_size": BT, "lora_id": None, "medium": "GPU",
                "lora_name": None}

    def close(self) -> None:
        self.pub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def fleet_index() -> Iterator[tuple]:
    """A fleet index (--max-tokens 64) following ipc://DIR/ev.ipc, and the publisher
    bound there."""
    directory = tempfile.mkdtemp(prefix="kvp-py-ev-")
    endpoint = "ipc://" + os.path.join(directory, "ev.ipc")
    pub = d = None
    try:
        pub = Publisher(endpoint)
        d = Daemon(["--block-tokens", str(BT), "--max-tokens", "64",
                    "--kv-events-sub", endpoint])
        yield d, pub
    finally:
        if pub is not None:
            pub.close()
        if d is not None:
            d.stop_clean()
        shutil.rmtree(directory, ignore_errors=True)


def test_fleet_index(fleet_index):
    """Two engines publish their blocks; the fleet index answers each one's prefix,
    longest first."""
    d, pub = fleet_index
    with kvprefix.Client(d.socket, timeout=30) as c:
        assert c.hello(adapter="any").version == 4
        assert c.fleet(TOKENS) == []                       # no engine seen yet

        # the SUB socket joins late: announce both engines until the index follows them
        def both_seen() -> bool:
            for engine in ("eng-a", "eng-b"):
                pub.batch(engine, [{"type": "AllBlocksCleared"}])
            return c.stats()["fleet"]["instances"] == 2
        _wait_for(both_seen, "the fleet index to follow eng-a and eng-b")

        pub.batch("eng-a", [pub.stored([1, 2], None, [1, 2, 3, 4, 5, 6, 7, 8])])
        pub.batch("eng-b", [pub.stored([11], None, [1, 2, 3, 4])])
        _wait_for(lambda: c.stats()["fleet"]["blocks"] == 3, "the three blocks stored")

        got = c.fleet(TOKENS)
        assert got == [FleetMatch("eng-a", 8), FleetMatch("eng-b", 4)]
        assert isinstance(got, list) and isinstance(got[0].instance, str)
        # equal matches by name; none; fewer tokens than a block
        assert c.fleet([1, 2, 3, 4, 99]) == [FleetMatch("eng-a", 4), FleetMatch("eng-b", 4)]
        assert c.fleet([5, 6, 7, 8]) == [FleetMatch("eng-a", 0), FleetMatch("eng-b", 0)]
        assert c.fleet([1, 2, 3]) == [FleetMatch("eng-a", 0), FleetMatch("eng-b", 0)]
        assert c.fleet([]) == [FleetMatch("eng-a", 0), FleetMatch("eng-b", 0)]

        # eng-b catches up and passes eng-a
        pub.batch("eng-b", [pub.stored([12, 13], 11, [5, 6, 7, 8, 9, 10, 11, 12])])
        _wait_for(lambda: c.stats()["fleet"]["blocks"] == 5, "eng-b's two blocks more")
        assert c.fleet(list(range(1, 13))) == [FleetMatch("eng-b", 12), FleetMatch("eng-a", 8)]

    # the same answer on another connection, without the first one's adapter (no HELLO)
    with kvprefix.Client(d.socket, timeout=30) as c:
        assert c.fleet(TOKENS) == [FleetMatch("eng-a", 8), FleetMatch("eng-b", 8)]
        with pytest.raises(kvprefix.TooBigError) as ei:     # over --max-tokens
            c.fleet([1] * 65)
        assert ei.value.code == 4 and not c.closed
        assert c.fleet(list(range(1, 13)))[0] == FleetMatch("eng-b", 12)


# ---- scripted replies ----------------------------------------------------------------------------

HELLO_V4 = doc_frame("hello_v4")


def _hello_reply(version: int) -> bytes:
    """The page's version-4 HELLO reply (an engine's; enough here), as version."""
    out = bytearray(doc_frame("hello_reply_engine"))
    out[16:20] = struct.pack("<I", version)
    return bytes(out)


def _fleet_request(req_id: int, tokens: List[int]) -> bytes:
    payload = struct.pack("<II%dI" % len(tokens), 0, len(tokens), *tokens)
    return struct.pack("<IBBHII", 0x3150564B, 4, 0x0A, 0, req_id, len(payload)) + payload


def _entry(matched: int, name: bytes, name_len: int = -1) -> bytes:
    return struct.pack("<II", matched, len(name) if name_len < 0 else name_len) + name


def _fleet_reply(prompt: int, entries: List[bytes], count: int = -1, req_id: int = 2,
                 version: int = 4) -> bytes:
    payload = struct.pack("<II", prompt, len(entries) if count < 0 else count)
    return frame(0x8A, req_id, payload + b"".join(entries), version)


def _scripted(tmp_path, reply: bytes, tokens: List[int] = TOKENS) -> FakeServer:
    """HELLO at version 4, then one FLEET of tokens answered with reply."""
    return FakeServer(str(tmp_path), [("expect", HELLO_V4), ("send", _hello_reply(4)),
                                      ("expect", _fleet_request(2, tokens)),
                                      ("send", reply)])


def test_fleet_reply_decoded(tmp_path):
    """The well-formed counterparts of test_broken_fleet_reply pass: 64 engines, a
    255-byte name, an empty one, a name that is not UTF-8, equal matches by name."""
    names = [b"e%02d" % i for i in range(60)]
    entries = ([_entry(8, b"a" * 255), _entry(8, b"b"), _entry(4, b"\xffx\xc3\xa9")]
               + [_entry(0, b"")] + [_entry(0, n) for n in names])
    srv = _scripted(tmp_path, _fleet_reply(9, entries))
    with kvprefix.Client(srv.path, timeout=10) as c:
        c.hello()
        got = c.fleet(TOKENS)
        assert not c.closed
    srv.check()
    assert len(got) == 64
    assert got[:4] == [FleetMatch("a" * 255, 8), FleetMatch("b", 8),
                       FleetMatch("\ufffdx\u00e9", 4), FleetMatch("", 0)]
    assert [m.instance for m in got[4:]] == [n.decode() for n in names]


def test_fleet_reply_without_engines(tmp_path):
    srv = _scripted(tmp_path, _fleet_reply(3, []), tokens=[7, 8, 9])
    with kvprefix.Client(srv.path, timeout=10) as c:
        c.hello()
        assert c.fleet([7, 8, 9]) == []
    srv.check()


def test_fleet_error_reply(tmp_path):
    """An ERROR in a version-1 header answers a version-4 request too."""
    srv = _scripted(tmp_path, error_frame(2, 13, "no fleet index"))
    with kvprefix.Client(srv.path, timeout=10) as c:
        c.hello()
        with pytest.raises(kvprefix.UnsupportedError) as ei:
            c.fleet(TOKENS)
        assert ei.value.message == "no fleet index" and not c.closed
    srv.check()


def _relength(reply: bytes, payload: bytes) -> bytes:
    """reply's header with payload, its len field set to payload's length."""
    return reply[:12] + struct.pack("<I", len(payload)) + payload


E = _entry
GOOD = _fleet_reply(9, [E(8, b"a")])     # what the broken replies below are cut from
BROKEN = {
    "trailing byte": _relength(GOOD, GOOD[16:] + b"\0"),
    "one byte short": _relength(GOOD, GOOD[16:-1]),
    "entry cut": _fleet_reply(9, [E(8, b"a"), struct.pack("<I", 4)]),
    "count over entries": _fleet_reply(9, [E(8, b"a")], count=2),
    "count under entries": _fleet_reply(9, [E(8, b"a"), E(4, b"b")], count=1),
    "name over the payload": _fleet_reply(9, [E(8, b"abc", name_len=4)]),
    "name_len 256": _fleet_reply(9, [E(8, b"a" * 256)]),
    "65 engines": _fleet_reply(9, [E(0, b"e%02d" % i) for i in range(65)]),
    "count 2^32-1": _fleet_reply(9, [], count=0xFFFFFFFF),
    "empty payload": frame(0x8A, 2, b"", 4),
    "prompt_tokens not the request's": _fleet_reply(8, [E(8, b"a")]),
    "more matched than asked": _fleet_reply(9, [E(12, b"a")]),
    "shorter match first": _fleet_reply(9, [E(4, b"a"), E(8, b"b")]),
    "equal matches not by name": _fleet_reply(9, [E(8, b"b"), E(8, b"a")]),
    "equal matches, a name before its prefix": _fleet_reply(9, [E(8, b"ab"), E(8, b"a")]),
    "reply in a version-1 header": _fleet_reply(9, [E(8, b"a")], version=1),
    "reply in a version-3 header": _fleet_reply(9, [E(8, b"a")], version=3),
    "LOOKUP's reply": frame(0x82, 2, struct.pack("<IIIQI", 8, 9, 0, 0, 0), 4),
}


@pytest.mark.parametrize("reply", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_fleet_reply(tmp_path, reply):
    srv = _scripted(tmp_path, reply)
    c = kvprefix.Client(srv.path, timeout=10)
    c.hello()
    with pytest.raises(kvprefix.ProtocolError) as ei:
        c.fleet(TOKENS)
    assert ei.value.code == 3 and ei.value.message
    assert c.closed
    with pytest.raises(kvprefix.ConnectionClosedError):
        c.ping()
    srv.check()


def test_well_formed_counterparts_pass(tmp_path):
    """The one-entry reply the broken ones are cut from, and the orders they break, as
    they should be."""
    for reply in (GOOD, _fleet_reply(9, [E(8, b"b"), E(4, b"a")]),
                  _fleet_reply(9, [E(8, b"a"), E(8, b"ab"), E(8, b"b")]),
                  _fleet_reply(9, [E(9, b"a")])):
        srv = _scripted(tmp_path, reply)
        with kvprefix.Client(srv.path, timeout=10) as c:
            c.hello()
            assert c.fleet(TOKENS)
            assert not c.closed
        srv.check()
        os.unlink(srv.path)


def test_fleet_after_hello_settled_at_3(tmp_path):
    """A HELLO answered with version 3: fleet raises VersionError without sending
    anything; the next request is the one the server reads."""
    srv = FakeServer(str(tmp_path), [("expect", HELLO_V4), ("send", _hello_reply(3)),
                                     ("read",), ("send", frame(0x86, 2))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        assert c.hello().version == 3
        with pytest.raises(kvprefix.VersionError) as ei:
            c.fleet(TOKENS)
        assert ei.value.code == 7 and not c.closed
        assert c.ping() >= 0
    srv.check()
    assert srv.requests == [frame(0x06, 2)]     # the PING, req_id 2: no FLEET went out


def test_fleet_without_hello_to_a_version_3_daemon(tmp_path):
    """No HELLO: the FLEET goes out in its version-4 header; a version-3 daemon answers
    EVERSION (in a version-1 header) and closes."""
    srv = FakeServer(str(tmp_path), [("expect", _fleet_request(1, TOKENS)),
                                     ("send", error_frame(1, 7, "version 4")),
                                     ("close",)])
    with kvprefix.Client(srv.path, timeout=10) as c:
        with pytest.raises(kvprefix.VersionError):
            c.fleet(TOKENS)
    srv.check()


def test_reply_header_types_by_version():
    """§3: FLEET's reply exists only in version-4 headers, ADMIN's from version 2; the
    request types and 0x8b are no reply in any version."""
    for version in (1, 2, 3, 4):
        assert _wire.is_reply_type(0x8A, version) == (version >= 4)
        assert _wire.is_reply_type(0x89, version) == (version >= 2)
        for ftype in (0x0A, 0x8B, 0x80, 0x08):
            assert not _wire.is_reply_type(ftype, version)
        raw = frame(0x8A, 1, version=version)
        if version == 4:
            assert _wire.unpack_header(raw) == (4, 0x8A, 1, 0)
        else:
            with pytest.raises(kvprefix.ProtocolError):
                _wire.unpack_header(raw)
    with pytest.raises(kvprefix.ProtocolError):
        _wire.unpack_header(frame(0x8A, 1, version=5))
