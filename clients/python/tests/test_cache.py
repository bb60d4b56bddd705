"""HELLO, LOOKUP, INSERT, leases, STATS and PING against the real index-only daemon."""

from __future__ import annotations

import os
import time

import pytest

import kvprefix

TOKENS = list(range(100, 110))   # two full 4-token blocks and a partial one


def test_hello(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:
        assert c.server_info is None
        info = c.hello()
        assert c.server_info is info
    assert info == kvprefix.ServerInfo(version=4, block_tokens=4, capacity_blocks=256,
                                       max_tokens=64, index_only=True, tenant=os.geteuid(),
                                       name="kvprefix", vocab_size=0, ctx_tokens=0)


@pytest.mark.parametrize("offer", [1, 2])
def test_hello_older_version(index_daemon, offer):
    """An offer of 1 or 2 gets that version, without the model's sizes."""
    with kvprefix.Client(index_daemon.socket) as c:
        info = c.hello(version=offer)
    assert (info.version, info.vocab_size, info.ctx_tokens) == (offer, None, None)


def test_hello_offer_3(index_daemon):
    """An offer of 3 gets 3, with the model's sizes (0 in index-only mode)."""
    with kvprefix.Client(index_daemon.socket) as c:
        info = c.hello(version=3)
    assert (info.version, info.vocab_size, info.ctx_tokens) == (3, 0, 0)


def test_hello_offer_out_of_range(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:
        for offer in (0, 5):
            with pytest.raises(kvprefix.InvalidArgumentError):
                c.hello(version=offer)                 # not sent
        assert c.hello(version=4).version == 4


def test_insert_then_lookup(client):
    m = client.insert(TOKENS)
    assert (m.cached_tokens, m.prompt_tokens, m.new_blocks, m.lease) == (8, 10, 2, 0)
    assert len(m.block_ids) == 2 and len(set(m.block_ids)) == 2
    again = client.insert(TOKENS)
    assert (again.cached_tokens, again.new_blocks, again.block_ids) == (8, 0, m.block_ids)
    found = client.lookup(TOKENS[:7])
    assert (found.matched_tokens, found.prompt_tokens, found.new_blocks, found.lease,
            found.block_ids) == (4, 7, 0, 0, m.block_ids[:1])


def test_lookup_miss_and_empty(client):
    assert client.lookup([9, 9, 9, 9, 9]) == kvprefix.Match(0, 5, 0, 0, ())
    assert client.lookup([]) == kvprefix.Match(0, 0, 0, 0, ())
    assert client.insert([1, 2, 3]).new_blocks == 0   # no full block


def test_namespaces_do_not_share(index_daemon, client):
    client.insert(TOKENS)
    with kvprefix.Client(index_daemon.socket) as other:
        other.hello(adapter="another-namespace")
        assert other.lookup(TOKENS).matched_tokens == 0


def test_pin_and_release(client):
    m = client.insert(TOKENS, pin=True)
    assert m.lease != 0 and m.cached_tokens == 8
    pinned = client.lookup(TOKENS, pin=True)
    assert pinned.lease not in (0, m.lease) and pinned.block_ids == m.block_ids
    assert client.stats()["leases_active"] >= 2
    assert client.release(m.lease) == 2
    assert client.release(pinned.lease) == 2
    with pytest.raises(kvprefix.NotFoundError) as ei:
        client.release(m.lease)
    assert ei.value.code == 6 and ei.value.name == "ENOTFOUND" and ei.value.message


def test_pin_nothing_cached_gives_no_lease(client):
    m = client.lookup([7, 7, 7, 7, 7, 7, 7, 7], pin=True)
    assert (m.matched_tokens, m.lease) == (0, 0)


def test_lease_context_manager(client):
    client.insert(TOKENS)
    with client.lease(TOKENS) as m:
        assert m.lease != 0 and m.matched_tokens == 8
    with pytest.raises(kvprefix.NotFoundError):
        client.release(m.lease)   # released when the block ended


def test_pinned_blocks_survive_clear(client):
    """A leased prefix is not evicted: CLEAR leaves it, and lookups still find it."""
    m = client.insert(TOKENS, pin=True)
    assert client.admin_clear() == 0
    assert client.lookup(TOKENS).block_ids == m.block_ids
    client.release(m.lease)
    assert client.admin_clear() == 2
    assert client.lookup(TOKENS).matched_tokens == 0


def test_close_releases_leases(index_daemon, client):
    before = client.stats()["leases_active"]
    with kvprefix.Client(index_daemon.socket) as other:
        other.insert(TOKENS, pin=True)
        assert client.stats()["leases_active"] == before + 1
    # the daemon releases them when it sees the close, maybe after this STATS
    for _ in range(200):
        if client.stats()["leases_active"] == before:
            break
        time.sleep(0.01)
    assert client.stats()["leases_active"] == before


def test_stats(client):
    client.insert(TOKENS)
    client.lookup(TOKENS)
    s = client.stats()
    assert s["mode"] == "index-only" and s["block_tokens"] == 4
    assert s["blocks_total"] == 256
    assert s["blocks_free"] + s["blocks_cached"] + s["blocks_pinned"] == s["blocks_total"]
    assert s["lookups"] >= 1 and s["inserts"] >= 1


def test_ping(client):
    assert client.ping() > 0
    assert client.ping(bytes(range(256)) * 4) > 0


def test_token_ids_are_u32(client):
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.lookup([1, -1])
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.lookup([1 << 32])
    with pytest.raises(TypeError):
        client.lookup(["1"])
    assert client.lookup([0xFFFFFFFF] * 4).prompt_tokens == 4   # nothing was sent wrong


def test_request_ids_keep_order(client):
    """Many requests in a row each get their own answer."""
    for i in range(200):
        assert client.lookup([i] * 4).prompt_tokens == 4

