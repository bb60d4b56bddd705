"""ADMIN (protocol version 2) against the real index-only daemon: CLEAR, EVICT, PIN,
UNPIN, CONFIG and EXPLAIN, and what is refused before sending."""

from __future__ import annotations

import os

import pytest

import kvprefix
from kvprefix import AdminOp
from kvp_testlib import Daemon

A = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]       # three blocks
B = [1, 2, 3, 4, 50, 60, 70, 80]                  # shares A's first block


def test_clear(client):
    client.insert(A)
    client.insert(B)
    assert client.admin_clear() == 4
    assert client.lookup(A).matched_tokens == 0
    assert client.admin_clear() == 0


def test_clear_other_tenant(index_daemon, client):
    """With tenant, CLEAR acts on that tenant's namespace with this connection's
    adapter: here our own uid's, so the same namespace."""
    client.insert(A)
    r = client.admin(AdminOp.CLEAR, tenant=os.geteuid())
    assert (r.op, r.blocks) == (AdminOp.CLEAR, 3)
    assert client.admin_clear(tenant=os.geteuid() + 1) == 0


def test_clear_all(index_daemon):
    d = Daemon(["--block-tokens", "4", "--admin-group", str(os.getgid())])
    try:
        with kvprefix.Client(d.socket) as one, kvprefix.Client(d.socket) as two:
            one.hello(adapter="one")
            two.hello(adapter="two")
            one.insert(A)
            two.insert(B)
            assert one.admin_clear(all=True) == 5
            assert two.lookup(B).matched_tokens == 0
    finally:
        d.stop_clean()


def test_explain(client):
    client.insert(A)
    assert client.admin_explain(A + [77]) == ("blocks 0-2 tokens 0-11: cached\n"
                                              "tokens 12-12: partial\n")
    client.admin_evict(A)
    r = client.admin(AdminOp.EXPLAIN, tokens=A)
    assert (r.op, r.blocks) == (AdminOp.EXPLAIN, 0)
    assert r.text == "blocks 0-2 tokens 0-11: evicted_admin\n"
    assert client.admin_explain([500, 501, 502, 503]) == "blocks 0-0 tokens 0-3: new\n"


def test_evict(client):
    client.insert(A)
    client.insert(B)
    # A's last two blocks go; its first stays, since B goes through it
    assert client.admin_evict(A) == 2
    assert client.lookup(A).matched_tokens == 4
    assert client.lookup(B).matched_tokens == 8
    assert client.admin_evict([99, 98, 97, 96]) == 0


def test_pin_unpin(client):
    client.insert(A)
    assert client.admin_pin(A[:8]) == 2
    assert client.stats()["blocks_pinned"] >= 2
    assert client.admin_clear() == 1                # the pinned two stay
    assert client.lookup(A).matched_tokens == 8
    assert client.admin_unpin(A) == 2
    with pytest.raises(kvprefix.NotFoundError) as ei:
        client.admin_unpin(A)
    assert ei.value.code == 6
    assert client.admin_clear() == 2


def test_pin_outlives_the_connection(index_daemon, client):
    client.insert(A)
    adapter = "pin-outlives"
    with kvprefix.Client(index_daemon.socket) as c:
        c.hello(adapter=adapter)
        c.insert(A)
        assert c.admin_pin(A) == 3
    with kvprefix.Client(index_daemon.socket) as c:
        c.hello(adapter=adapter)
        assert c.admin_clear() == 0
        assert c.admin_unpin(A) == 3
        assert c.admin_clear() == 3


def test_config(client):
    everything = client.admin_config()
    assert "max-leases = " in everything and everything.endswith("\n")
    one = client.admin_config("max-leases")
    assert one.startswith("max-leases = ") and one in everything
    assert client.admin_config("max-leases=1234") == "max-leases = 1234\n"
    assert client.admin_config("max-leases") == "max-leases = 1234\n"
    client.admin_config(one.strip().replace(" ", ""))


def test_config_errors(client):
    with pytest.raises(kvprefix.InvalidArgumentError) as ei:
        client.admin_config("no-such-option")
    assert ei.value.code == 2 and ei.value.message
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin_config("max-leases=many")
    with pytest.raises(kvprefix.UnsupportedError) as ei:
        client.admin_config("block-tokens=8")
    assert ei.value.code == 13
    assert client.ping() > 0


def test_op_by_name(client):
    client.insert(A)
    assert client.admin("evict", tokens=A).blocks == 3
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin("defragment")


def test_unknown_op(client):
    with pytest.raises(kvprefix.InvalidArgumentError) as ei:
        client.admin(77)
    assert ei.value.code == 2 and ei.value.message   # the daemon's answer


def test_refused_before_sending(client):
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin(AdminOp.EVICT)                   # no tokens
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin(AdminOp.CLEAR, tokens=A)
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin(AdminOp.CLEAR, tenant=5, all=True)
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin(AdminOp.CONFIG, text="a\tb")
    with pytest.raises(kvprefix.InvalidArgumentError):
        client.admin(AdminOp.PIN, tokens=A, all=True)
    with pytest.raises(kvprefix.TooBigError):
        client.admin_config("x" * 4097)
    assert client.ping() > 0


def test_version_1_has_no_admin(index_daemon):
    with kvprefix.Client(index_daemon.socket) as c:
        assert c.hello(version=1).version == 1
        with pytest.raises(kvprefix.VersionError) as ei:
            c.admin_clear()
        assert ei.value.code == 7
        assert c.ping() > 0


def test_admin_not_allowed(index_daemon):
    """A daemon whose admin group does not hold this process: EPERM, unless root."""
    d = Daemon(["--block-tokens", "4"])
    try:
        with kvprefix.Client(d.socket) as c:
            if os.geteuid() == 0:
                assert c.admin_clear() == 0
            else:
                with pytest.raises(kvprefix.PermissionDeniedError) as ei:
                    c.admin_clear()
                assert ei.value.code == 12
            assert c.ping() > 0
    finally:
        d.stop_clean()
