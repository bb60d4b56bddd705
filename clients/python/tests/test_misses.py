"""Why queries missed, against real daemons: STATS "misses" by cause (daemon-wide and per
namespace), the larger-pool estimates, ADMIN EXPLAIN's lines for each cause, and a
tenant that never learns another tenant's blocks (§4.6, §4.12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kvprefix
from kvp_testlib import Daemon

A = list(range(100, 116))            # four 4-token blocks
B = list(range(200, 208))            # two
C = list(range(300, 310))            # two blocks and a partial one


def _stats(client: kvprefix.Client, adapter: str) -> tuple:
    s = client.stats()
    ns = [e for e in s["namespaces"] if e["adapter"] == adapter]
    assert len(ns) == 1, s["namespaces"]
    return s, ns[0]


def test_evicted_to_make_room_and_a_larger_pool():
    d = Daemon(["--block-tokens", "4", "--capacity-blocks", "4"])
    try:
        with kvprefix.Client(d.socket) as c:
            c.hello(adapter="room")
            c.insert(A)
            c.insert(B)                  # A's last two blocks go, its last first
            assert c.lookup(A).matched_tokens == 8
            s, ns = _stats(c, "room")
            assert s["misses"]["evicted_pool"] == 8
            assert ns["misses"] == s["misses"]
            assert s["hit_rate"] == 0.5
            assert s["hit_rate_if_2x"] == 1.0 and s["hit_rate_if_4x"] == 1.0
            assert s["diagnostics_bytes"] > 0
            assert c.admin_explain(A) == (
                "blocks 0-1 tokens 0-7: cached\n"
                "blocks 2-3 tokens 8-15: evicted_pool age 0-1 "
                "(a pool 1.50x as large would hold them)\n")
            assert c.lookup(A).matched_tokens == 8, "EXPLAIN changed nothing"
    finally:
        d.stop_clean()


def test_evicted_by_the_quota():
    d = Daemon(["--block-tokens", "4", "--capacity-blocks", "8", "--tenant-quota", "50"])
    try:
        with kvprefix.Client(d.socket) as c:
            c.hello(adapter="quota")
            c.insert(A)                  # four blocks: the quota
            c.insert(B)                  # at it: two of A's go
            assert c.lookup(A).matched_tokens == 8
            s, _ = _stats(c, "quota")
            assert s["misses"]["evicted_quota"] == 8
            assert s["hit_rate_if_2x"] == s["hit_rate"], "a larger pool lifts no quota"
            assert "evicted_quota" in c.admin_explain(A)
    finally:
        d.stop_clean()


NOBODY = (65534, 65534)
_AS_NOBODY = """
import json, sys, kvprefix
with kvprefix.Client(sys.argv[1]) as c:
    c.hello(adapter="two")
    c.lookup([int(t) for t in sys.argv[2].split(",")])
    print(json.dumps(c.stats()))
"""


def test_another_namespace_is_for_root_only():
    d = Daemon(["--block-tokens", "4", "--socket-mode", "0666"])
    try:
        with kvprefix.Client(d.socket) as one, kvprefix.Client(d.socket) as two:
            one.hello(adapter="one")
            two.hello(adapter="two")
            one.insert(C)
            assert two.lookup(C).matched_tokens == 0
            s, ns = _stats(two, "two")      # root sees every cause
            assert s["misses"]["other_namespace"] == 8
            assert s["misses"]["partial"] == 2 and s["misses"]["new"] == 0
            assert ns["misses"]["other_namespace"] == 8
            assert two.admin_explain(C) == ("blocks 0-1 tokens 0-7: other_namespace\n"
                                            "tokens 8-9: partial\n")
            one.admin_clear()
            assert two.admin_explain(C) == ("blocks 0-1 tokens 0-7: new\n"
                                            "tokens 8-9: partial\n")
        if os.geteuid() != 0:
            pytest.skip("needs root to query as another uid")
        with kvprefix.Client(d.socket) as one:
            one.hello(adapter="one")
            one.insert(C)
        os.chmod(d.dir, 0o755)
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kvprefix.__file__)))
        out = subprocess.run([sys.executable, "-c", _AS_NOBODY, d.socket,
                              ",".join(map(str, C))], user=NOBODY[0], group=NOBODY[1],
                             extra_groups=[], env=env, capture_output=True, check=True,
                             timeout=60)
        s = json.loads(out.stdout)
        assert "other_namespace" not in s["misses"], s["misses"]
        mine = [e for e in s["namespaces"] if e["tenant"] == NOBODY[0]]
        assert len(mine) == 1 and "other_namespace" not in mine[0]["misses"]
        assert mine[0]["misses"]["new"] == 8, "another tenant's block is new to this one"
    finally:
        d.stop_clean()
