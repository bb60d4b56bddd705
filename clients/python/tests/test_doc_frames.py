"""The sessions of docs/protocol.md §9, frame by frame: a scripted server expects each
request the page shows, byte for byte, and answers with the page's reply, and the
client must send exactly those bytes and decode the replies to what the page says."""

from __future__ import annotations

import math
import struct

import pytest

import kvprefix
from kvp_testlib import FakeServer, doc_frame

SESSION_TOKENS = [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679]


def _script(pairs):
    """Expect each request of the page and answer with its replies."""
    script = []
    for req, replies in pairs:
        script.append(("expect", doc_frame(req)))
        for r in replies:
            script.append(("send", doc_frame(r)))
    return script


def _serve(tmp_path, pairs, more=()):
    """A fake server playing _script(pairs), then more steps."""
    return FakeServer(str(tmp_path), _script(pairs) + list(more))


def test_session_index_only(tmp_path):
    # the page's ERROR answers a second RELEASE of lease 1, req_id 7
    again = bytearray(doc_frame("release"))
    again[8:12] = struct.pack("<I", 7)
    srv = _serve(tmp_path, [("hello", ["hello_reply"]), ("insert", ["insert_reply"]),
                            ("lookup", ["lookup_reply"]), ("release", ["release_reply"]),
                            ("stats", ["stats_reply"]), ("ping", ["pong"])],
                 [("expect", bytes(again)), ("send", doc_frame("error"))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        info = c.hello("sql-lora", version=1)
        assert info == kvprefix.ServerInfo(version=1, block_tokens=4, capacity_blocks=1024,
                                           max_tokens=131072, index_only=True, tenant=1000,
                                           name="demo-index")
        m = c.insert(SESSION_TOKENS)
        assert (m.cached_tokens, m.prompt_tokens, m.new_blocks, m.lease, m.block_ids) == \
            (8, 10, 2, 0, (0, 1))
        m = c.lookup(SESSION_TOKENS, pin=True)
        assert (m.matched_tokens, m.new_blocks, m.lease, m.block_ids) == (8, 0, 1, (0, 1))
        assert c.release(m.lease) == 2
        assert c.stats() == {"lookups": 1, "hit_tokens": 8}
        assert c.ping(b"ping") >= 0
        with pytest.raises(kvprefix.NotFoundError) as ei:
            c.release(1)
        assert not c.closed
    srv.check()
    assert ei.value.code == 6 and ei.value.message == "no such lease"


def _as_req_id(frame, req_id):
    """A page frame with another req_id."""
    out = bytearray(frame)
    out[8:12] = struct.pack("<I", req_id)
    return bytes(out)


def test_session_insert_keep(tmp_path):
    """The page's INSERT with KEEP (req_id 8 there, a fresh client's first request
    here): keep_s and priority after the tokens."""
    srv = FakeServer(str(tmp_path), [("expect", _as_req_id(doc_frame("insert_keep"), 1)),
                                     ("send", _as_req_id(doc_frame("insert_keep_reply"), 1))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        m = c.insert(SESSION_TOKENS, keep_s=3600, priority=5)
    srv.check()
    assert (m.cached_tokens, m.prompt_tokens, m.new_blocks, m.lease, m.block_ids) == \
        (8, 10, 0, 0, (0, 1))


def test_session_generate(tmp_path):
    # the page's token frames bring 6, 2, 1, 7: the middle two are the first one's
    # with another token
    middle = []
    for tok in (2, 1):
        frame = bytearray(doc_frame("generate_tokens"))
        frame[20:24] = struct.pack("<I", tok)
        middle.append(("send", bytes(frame)))
    srv = FakeServer(str(tmp_path), [("expect", doc_frame("generate")),
                                     ("send", doc_frame("generate_tokens")), *middle,
                                     ("send", doc_frame("generate_tokens_2")),
                                     ("send", doc_frame("generate_done"))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        gen = c.generate([1, 4, 2, 6, 3, 5], max_new=8, temperature=0.7, top_k=40,
                         top_p=0.9, seed=42, stop=[7], logits=True)
        tokens = list(gen)
    srv.check()
    assert tokens == [6, 2, 1, 7] == gen.tokens
    d = gen.done
    assert (d.prompt_tokens, d.cached_tokens, d.computed_tokens, d.generated_tokens,
            d.finish, d.ttft_us, d.prefill_us, d.decode_us) == \
        (6, 4, 2, 4, kvprefix.Finish.STOP, 241, 209, 485)
    want = [-1.5804027, -0.78988755, -0.33217734, 0.5586902, 0.1496867, -1.4205025,
            2.265647, 0.09641647]
    assert len(d.logits) == 8
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(d.logits, want))


def test_session_generate_error(tmp_path):
    srv = FakeServer(str(tmp_path), [("expect", _generate_frame([1, 4, 2, 6, 3, 5, 9])),
                                     ("send", doc_frame("generate_error"))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        gen = c.generate([1, 4, 2, 6, 3, 5, 9])
        with pytest.raises(kvprefix.InvalidArgumentError) as ei:
            next(gen)
        assert gen.error is ei.value and gen.done is None
        assert list(gen) == []
    srv.check()
    assert ei.value.code == 2
    assert ei.value.message == "token 9 at position 6: the vocabulary has 8"


def _generate_frame(tokens):
    """GENERATE with the defaults of Client.generate (max_new 16, greedy), req_id 1."""
    payload = struct.pack("<IIfIfQI", 0, 16, 0.0, 0, 1.0, 0, 0) + struct.pack("<I", len(tokens))
    payload += struct.pack("<%dI" % len(tokens), *tokens)
    return struct.pack("<IBBHII", 0x3150564B, 1, 7, 0, 1, len(payload)) + payload


def test_hello_v4(tmp_path):
    """The default HELLO offers version 4, and the version-4 reply has the model's
    sizes (the layout of version 3)."""
    srv = _serve(tmp_path, [("hello_v4", ["hello_reply_engine"])])
    with kvprefix.Client(srv.path, timeout=10) as c:
        info = c.hello()
    srv.check()
    assert kvprefix.PROTOCOL_VERSION == 4
    assert info == kvprefix.ServerInfo(version=4, block_tokens=4, capacity_blocks=1024,
                                       max_tokens=2048, index_only=False, tenant=1000,
                                       name="tiny-llama", vocab_size=8, ctx_tokens=64)


def _as_version(frame, version):
    """A page frame whose HELLO (or HELLO reply) payload says another version."""
    out = bytearray(frame)
    out[16:20] = struct.pack("<I", version)
    return bytes(out)


def test_hello_settles_at_3(tmp_path):
    """A version-3 daemon answers an offer of 4 with 3, in the layout of version 3."""
    srv = FakeServer(str(tmp_path), [
        ("expect", doc_frame("hello_v4")),
        ("send", _as_version(doc_frame("hello_reply_engine"), 3))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        info = c.hello()
        assert not c.closed
    srv.check()
    assert (info.version, info.vocab_size, info.ctx_tokens) == (3, 8, 64)


def test_hello_offer_3(tmp_path):
    srv = FakeServer(str(tmp_path), [
        ("expect", _as_version(doc_frame("hello_v4"), 3)),
        ("send", _as_version(doc_frame("hello_reply_engine"), 3))])
    with kvprefix.Client(srv.path, timeout=10) as c:
        assert c.hello(version=3).version == 3
    srv.check()


def test_hello_reply_above_the_offer(tmp_path):
    """A reply version above the offer closes the client."""
    srv = FakeServer(str(tmp_path), [
        ("expect", _as_version(doc_frame("hello_v4"), 3)),
        ("send", doc_frame("hello_reply_engine"))])
    c = kvprefix.Client(srv.path, timeout=10)
    with pytest.raises(kvprefix.VersionError):
        c.hello(version=3)
    assert c.closed
    srv.check()


def test_session_admin(tmp_path):
    srv = _serve(tmp_path, [("hello_v2", ["hello_reply_v2"]),
                            ("admin_clear", ["admin_clear_reply"]),
                            ("admin_config", ["admin_config_reply"])])
    with kvprefix.Client(srv.path, timeout=10) as c:
        info = c.hello(version=2)
        assert (info.version, info.tenant, info.name, info.vocab_size) == (2, 0, "demo-index", None)
        assert c.admin_clear(tenant=1000) == 12
        assert c.admin_config("max-leases=128") == "max-leases = 128\n"
    srv.check()


def test_session_admin_refused(tmp_path):
    srv = _serve(tmp_path, [("hello_v2", ["hello_reply_v2"]),
                            ("admin_clear", ["admin_error"])])
    with kvprefix.Client(srv.path, timeout=10) as c:
        c.hello(version=2)
        with pytest.raises(kvprefix.PermissionDeniedError) as ei:
            c.admin(kvprefix.AdminOp.CLEAR, tenant=1000)
        assert not c.closed
    srv.check()
    assert (ei.value.code, ei.value.message) == (12, "not in the admin group")
