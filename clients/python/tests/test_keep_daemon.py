"""Keeps against real daemons (§4.3, §4.9; docs/eviction.md §6): an INSERT or a
GENERATE with KEEP outlasts blocks nobody keeps, ends at its time, the lowest priority
is given up first when nothing else can make room, and a KEEP out of range is refused
with the connection kept."""

from __future__ import annotations

import socket
import struct
import time

import pytest

import kvprefix
from kvp_testlib import Daemon, frame


def _prompt(seed: int) -> list:
    return [seed * 100 + i for i in range(8)]          # two 4-token blocks


def _keeps(c: kvprefix.Client) -> tuple:
    s = c.stats()
    return s["keeps_active"], s["keeps_expired"], s["keeps_given_up"]


def test_insert_keep_outlasts_the_rest_then_ends():
    d = Daemon(["--block-tokens", "4", "--capacity-blocks", "4"])
    try:
        with kvprefix.Client(d.socket) as c:
            a = _prompt(1)
            c.insert(a, keep_s=1, priority=3)
            assert _keeps(c) == (1, 0, 0)
            c.insert(_prompt(2))
            c.insert(_prompt(3))                      # room from 2, although a is older
            assert c.lookup(a).matched_tokens == 8
            time.sleep(1.2)
            c.insert(_prompt(4))                      # a's keep has ended: a goes
            assert _keeps(c) == (0, 1, 0)
            c.insert(_prompt(5))
            assert c.lookup(a).matched_tokens == 0
    finally:
        d.stop_clean()


def test_lowest_priority_given_up_first():
    d = Daemon(["--block-tokens", "4", "--capacity-blocks", "4"])
    try:
        with kvprefix.Client(d.socket) as c:
            low, high = _prompt(1), _prompt(2)
            c.insert(low, keep_s=600, priority=1)
            c.insert(high, keep_s=600, priority=9)
            c.insert(_prompt(3))                      # only kept blocks: low's goes
            assert c.lookup(low).matched_tokens == 0
            assert c.lookup(high).matched_tokens == 8
            assert _keeps(c) == (1, 0, 1)
    finally:
        d.stop_clean()


def _recv_frame(sock: socket.socket) -> tuple:
    head = b""
    while len(head) < 16:
        head += sock.recv(16 - len(head))
    _, _, ftype, _, _, n = struct.unpack("<IBBHII", head)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return ftype, body


@pytest.mark.parametrize("keep_s", [0, 604801])
def test_keep_out_of_range_is_refused_and_the_connection_stays(index_daemon, keep_s):
    if keep_s:   # (keep_s 0 is "no keep" to the client; on the wire, with KEEP, a bad value)
        with pytest.raises(kvprefix.InvalidArgumentError):
            with kvprefix.Client(index_daemon.socket) as c:
                c.insert(_prompt(1), keep_s=keep_s)    # the client refuses before sending
    toks = _prompt(1)
    payload = struct.pack("<II", 0x2, len(toks)) + struct.pack("<%dI" % len(toks), *toks)
    payload += struct.pack("<II", keep_s, 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(index_daemon.socket)
        sock.sendall(frame(0x03, 7, payload))      # INSERT with KEEP out of range
        ftype, body = _recv_frame(sock)
        assert ftype == 0xFF and struct.unpack("<I", body[:4])[0] == 2, body  # EINVAL
        sock.sendall(frame(0x06, 8, b"still here"))                           # PING
        assert _recv_frame(sock) == (0x86, b"still here")


def test_generate_keep_keeps_its_prompt(tiny_model):
    d = Daemon(["--model", tiny_model, "--block-tokens", "4", "--capacity-blocks", "32",
                "--threads", "1", "--kv-dtype", "f32"])
    try:
        with kvprefix.Client(d.socket) as c:
            prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]        # two full blocks and one token
            c.generate(prompt, max_new=2, keep_s=600, priority=4).wait()
            assert _keeps(c) == (1, 0, 0)
            c.generate(prompt, max_new=2, keep_s=900, priority=1).wait()
            assert _keeps(c)[0] == 1, "the same prefix kept again is one keep"
            assert c.lookup(prompt).matched_tokens == 8
    finally:
        d.stop_clean()
