"""kvprefixd --kv-events: a subscriber rebuilds the daemon's cache from its events."""
import os
import random
import time

import msgpack
import pytest
import zmq

from conftest import END_SEQ, Mirror, decode_events

BT = 4


class Subscriber:
    """Follows one daemon: SUB for the live stream, a DEALER for replays. A gap in the
    sequence numbers is filled from the replay socket; a live number at or below the
    last live one means the daemon restarted, and its stream is replayed from 0."""

    def __init__(self, ctx, endpoint, replay, drop_every=0):
        self.ctx = ctx
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(endpoint)
        self.replay_ep = replay
        self.mirror = Mirror()
        self.drop_every = drop_every
        self.received = 0
        self.dropped = 0
        self.replays = 0
        self.restarts = 0
        self.last_live = None
        self.topics = set()

    def close(self):
        self.sub.close(linger=0)

    def replay_from(self, start):
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.RCVTIMEO, 5000)
        d.connect(self.replay_ep)
        d.send_multipart([b"", start.to_bytes(8, "big")])
        while True:
            frames = d.recv_multipart()
            assert len(frames) == 3 and frames[0] == b""
            if frames[1] == END_SEQ:
                assert frames[2] == b""
                break
            seq = int.from_bytes(frames[1], "big")
            if seq == self.mirror.expect:
                self.mirror.apply(frames[2])
                self.mirror.expect += 1
        d.close(linger=0)
        self.replays += 1

    def handle(self, seq, payload):
        m = self.mirror
        if self.last_live is not None and seq <= self.last_live:
            # PUB never sends a number twice: a new process, its stream from the start
            self.restarts += 1
            m.expect = 0
            self.replay_from(0)
        elif seq > m.expect:        # missed batches
            self.replay_from(m.expect)
        self.last_live = seq
        if seq == m.expect:         # (below it: a batch a replay brought already)
            m.apply(payload)
            m.expect += 1

    def drain(self, quiet_ms=300):
        while self.sub.poll(quiet_ms):
            topic, seq8, payload = self.sub.recv_multipart()
            self.topics.add(topic)
            self.received += 1
            if self.drop_every and self.received % self.drop_every == 0:
                self.dropped += 1
                continue
            self.handle(int.from_bytes(seq8, "big"), payload)


def assert_same(d, mirror):
    """The mirror holds exactly the daemon's blocks: as many, and each leaf's whole
    path found by a LOOKUP."""
    assert d.stats()["tree_nodes"] == len(mirror.blocks)
    for path in mirror.paths():
        assert d.lookup(path) == len(path), "a block of the mirror is not in the daemon"


def random_prompt(rng, systems):
    base = rng.choice(systems)
    return base + [rng.randrange(1000, 1100) for _ in range(rng.randrange(0, 5 * BT))]


def endpoints(workdir):
    return ("ipc://" + os.path.join(workdir, "ev.ipc"),
            "ipc://" + os.path.join(workdir, "rp.ipc"))


def daemon_args(ev, rp, extra=()):
    return ["--index-only", "--block-tokens", str(BT), "--capacity-blocks", "40",
            "--kv-events", ev, "--kv-events-replay", rp, "--instance-id", "t1"] + list(extra)


def workload(d, sub, rng, n_ops, restart_at=None):
    systems = [[s * 100 + i for i in range(rng.choice([4, 8, 12]))] for s in range(1, 5)]
    prompts = []
    for op in range(n_ops):
        r = rng.random()
        if r < 0.70:
            p = random_prompt(rng, systems)
            d.insert(p)
            prompts.append(p)
        elif r < 0.80 and prompts:
            d.lookup(rng.choice(prompts))
        elif r < 0.88 and prompts:
            p = rng.choice(prompts)
            d.cli("admin", "evict", "--tokens", ",".join(map(str, p[:BT * rng.randrange(1, 3)])),
                  check=False)   # the prefix may be gone already: ENOTFOUND is fine
        elif r < 0.92:
            d.cli("admin", "clear", "--all")
        elif r < 0.94:
            d.cli("admin", "clear")
        if op % 10 == 9:
            sub.drain(quiet_ms=100)
        if restart_at is not None and op == restart_at:
            d.stop()
            d.start()
            time.sleep(0.3)   # the subscriber's socket reconnects
    sub.drain()
    return prompts


def settled_events(d):
    """STATS once the publisher's thread has sent or dropped every batch handed to it:
    the loop counts a batch when it hands it over, the thread when it sends it."""
    deadline = time.monotonic() + 10
    while True:
        st = d.stats()
        ke = st["kv_events"]
        if ke["sent"] + ke["dropped"] == ke["batches"] or time.monotonic() > deadline:
            return st
        time.sleep(0.02)


def test_subscriber_rebuilds_the_cache_through_evictions_clears_and_a_restart(workdir, daemons):
    ev, rp = endpoints(workdir)
    d = daemons(workdir, "d", daemon_args(ev, rp))
    ctx = zmq.Context()
    sub = Subscriber(ctx, ev, rp)
    try:
        time.sleep(0.3)
        workload(d, sub, random.Random(11), 160, restart_at=80)
        assert_same(d, sub.mirror)
        assert sub.restarts == 1
        st = settled_events(d)
        assert st["evictions"] > 0, "the workload must evict: make the pool smaller"
        assert sub.mirror.cleared >= 2    # at the start, and at least one clear
        assert sub.topics == {b"kv@t1@kvprefix"}
        ke = st["kv_events"]
        assert ke["batches"] == ke["next_seq"] and ke["sent"] == ke["batches"]
        assert ke["dropped"] == 0 and ke["lost_events"] == 0
    finally:
        sub.close()
        ctx.term()


def test_subscriber_that_loses_batches_catches_up_through_replays(workdir, daemons):
    ev, rp = endpoints(workdir)
    d = daemons(workdir, "d", daemon_args(ev, rp, ["--kv-events-array"]))
    ctx = zmq.Context()
    sub = Subscriber(ctx, ev, rp, drop_every=4)
    try:
        time.sleep(0.3)
        workload(d, sub, random.Random(5), 120)
        assert sub.dropped > 5
        assert sub.replays >= sub.dropped // 2
        assert_same(d, sub.mirror)
        assert d.stats()["kv_events"]["replays"] == sub.replays
    finally:
        sub.close()
        ctx.term()


def test_replay_starts_at_the_oldest_batch_kept(workdir, daemons):
    ev, rp = endpoints(workdir)
    d = daemons(workdir, "d", daemon_args(ev, rp, ["--kv-events-buffer", "3"]))
    for i in range(6):
        d.insert([i + 1] * BT)
        time.sleep(0.05)    # one batch each
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(rp)
    try:
        next_seq = d.stats()["kv_events"]["next_seq"]
        assert next_seq == 7     # AllBlocksCleared at start, then one per insert
        dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        seqs = []
        while True:
            f = dealer.recv_multipart()
            if f[1] == END_SEQ:
                break
            seqs.append(int.from_bytes(f[1], "big"))
            kinds = [t for t, _ in decode_events(f[2])]
            assert kinds == ["BlockStored"]
        assert seqs == [4, 5, 6]
        # a malformed request is ignored and counted; the socket keeps serving
        dealer.send_multipart([b"", b"xx"])
        dealer.send_multipart([b"", (6).to_bytes(8, "big")])
        f = dealer.recv_multipart()
        assert int.from_bytes(f[1], "big") == 6
    finally:
        dealer.close(linger=0)
        ctx.term()


def test_map_encoding_byte_for_byte(workdir, daemons):
    """The first batch of a daemon: [ts, [{"type": "AllBlocksCleared"}], nil]."""
    ev, rp = endpoints(workdir)
    d = daemons(workdir, "d", daemon_args(ev, rp))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(rp)
    try:
        dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        f = dealer.recv_multipart()
        assert f[1] == (0).to_bytes(8, "big")
        payload = f[2]
        assert payload[0] == 0x93 and payload[1] == 0xcb       # array of 3, f64
        ts = msgpack.unpackb(payload)[0]
        assert abs(ts - time.time()) < 60
        assert payload[10:] == (b"\x91\x81\xa4type\xb0AllBlocksCleared\xc0")
    finally:
        dealer.close(linger=0)
        ctx.term()


def test_no_subscriber_costs_nothing_and_a_bad_endpoint_is_refused(workdir, daemons):
    ev, rp = endpoints(workdir)
    d = daemons(workdir, "d", daemon_args(ev, rp))
    for i in range(20):
        d.insert([i + 7] * (3 * BT))
    ke = settled_events(d)["kv_events"]
    assert ke["sent"] == ke["batches"] and ke["dropped"] == 0
    assert "kv events: %d batches" % ke["batches"] in d.stat_view()
    import subprocess
    from conftest import KVPREFIXD
    r = subprocess.run([KVPREFIXD, "--index-only", "--socket", os.path.join(workdir, "x.sock"),
                        "--kv-events", "bogus://nowhere"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0
    assert "--kv-events" in r.stderr and "bogus://nowhere" in r.stderr
