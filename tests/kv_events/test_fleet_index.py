"""kvprefixd --index-only --kv-events-sub: a fleet index fed by publishers that emit
events as vLLM does, checked against a model of the same events."""
import os
import random
import threading
import time

import msgpack
import pytest
import zmq

from conftest import END_SEQ

BT = 4


class Engine:
    """One vLLM-like instance: a topic on a PUB socket, every batch kept for its replay
    socket (ROUTER), served on a thread."""

    def __init__(self, ctx, pub, topic, encoding, replay=None, hash_kind="int"):
        self.pub, self.topic, self.encoding = pub, topic, encoding
        self.hash_kind = hash_kind
        self.seq = 0
        self.kept = {}
        self.model = {}            # engine id -> token path (tuple), as the index keys it
        self.replay_ep = replay
        self.stop = threading.Event()
        self.thread = None
        if replay:
            self.router = ctx.socket(zmq.ROUTER)
            self.router.bind(replay)
            self.thread = threading.Thread(target=self.serve, daemon=True)
            self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            if not self.router.poll(50):
                continue
            ident, empty, start = self.router.recv_multipart()
            first = int.from_bytes(start, "big")
            for seq in sorted(self.kept):
                if seq >= first:
                    self.router.send_multipart([ident, b"", seq.to_bytes(8, "big"),
                                                self.kept[seq]])
            self.router.send_multipart([ident, b"", END_SEQ, b""])

    def close(self):
        self.stop.set()
        if self.thread:
            self.thread.join()
            self.router.close(linger=0)

    def h(self, n):
        """An engine's block id as it sends it."""
        if self.hash_kind == "bytes":
            return n.to_bytes(32, "big")
        return n - (1 << 63) if self.hash_kind == "signed" else n

    def event(self, kind, **f):
        if self.encoding == "array":
            order = {"BlockStored": ["block_hashes", "parent_block_hash", "token_ids",
                                     "block_size", "lora_id", "medium"],
                     "BlockRemoved": ["block_hashes", "medium"],
                     "AllBlocksCleared": []}[kind]
            return [kind] + [f[k] for k in order]
        return dict(type=kind, **f)

    def batch(self, events, lose=False, raw=None):
        """Publish one batch (lose: it gets a number and is kept for replays, but is not
        sent, as when a subscriber's queue overflows)."""
        if raw is None:
            ts = time.time()
            if self.encoding == "array":
                payload = msgpack.packb([ts, events])          # the rank omitted
            else:
                payload = msgpack.packb({"ts": ts, "events": events,
                                         "data_parallel_rank": 0})
        else:
            payload = raw
        self.kept[self.seq] = payload
        if not lose:
            self.pub.send_multipart([self.topic, self.seq.to_bytes(8, "big"), payload])
        self.seq += 1

    # --- what the model learns from each event (as the index does) ---
    def stored(self, ids, parent, tokens, medium="GPU"):
        evs = self.event("BlockStored", block_hashes=[self.h(i) for i in ids],
                         parent_block_hash=None if parent is None else self.h(parent),
                         token_ids=tokens, block_size=BT, lora_id=None, medium=medium,
                         lora_name=None)
        return evs

    def learn_stored(self, ids, parent, tokens):
        if parent is not None and parent not in self.model:
            return              # an unknown parent: the index skips the event
        path = () if parent is None else self.model[parent]
        for k, i in enumerate(ids):
            path = path + tuple(tokens[k * BT:(k + 1) * BT])
            self.model[i] = path

    def learn_removed(self, ids):
        for i in ids:
            self.model.pop(i, None)

    def matched(self, query):
        held = set(self.model.values())
        n = 0
        while (n + 1) * BT <= len(query) and tuple(query[:(n + 1) * BT]) in held:
            n += 1
        return n * BT


def name_of(engine):
    t = engine.topic.decode()
    return t.split("@")[1] if t.startswith("kv@") else t


def wait_for(cond, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


@pytest.fixture
def fleet_setup(workdir, daemons):
    ctx = zmq.Context()
    eps = ["ipc://" + os.path.join(workdir, "e%d.ipc" % i) for i in range(3)]
    reps = ["ipc://" + os.path.join(workdir, "r%d.ipc" % i) for i in range(3)]
    pubs = []
    for ep in eps:
        s = ctx.socket(zmq.PUB)
        s.bind(ep)
        pubs.append(s)
    engines = [
        Engine(ctx, pubs[0], b"kv@vllm-a@llama", "array", replay=reps[0]),
        Engine(ctx, pubs[1], b"kv@vllm-b@llama", "map", hash_kind="signed"),
        Engine(ctx, pubs[2], b"kv@sglang-c@llama", "map", replay=reps[2], hash_kind="bytes"),
        Engine(ctx, pubs[2], b"kv@sglang-d@llama", "array", replay=None),
    ]
    d = daemons(workdir, "fleet", ["--index-only", "--block-tokens", str(BT),
                                   "--kv-events-sub", ",".join(eps),
                                   "--kv-events-sub-replay", "%s,-,%s" % (reps[0], reps[2])])
    # the subscriptions take a moment: announce every engine until all are seen
    def all_seen():
        for e in engines:
            e.batch([e.event("AllBlocksCleared")])
        return d.stats()["fleet"]["instances"] == len(engines)
    wait_for(all_seen, "the fleet index to see every engine")
    yield d, engines
    for e in engines:
        e.close()
    for s in pubs:
        s.close(linger=0)
    ctx.term()


def random_workload(engines, rng, n_ops):
    systems = [[s * 50 + i for i in range(BT * 3)] for s in range(1, 4)]
    next_id = [1000 * (k + 1) for k in range(len(engines))]
    chains = [[] for _ in engines]      # per engine: lists of ids, a prompt's blocks
    for op in range(n_ops):
        k = rng.randrange(len(engines))
        e = engines[k]
        r = rng.random()
        if r < 0.6:
            toks = rng.choice(systems) + [rng.randrange(300, 320) for _ in range(BT * rng.randrange(0, 4))]
            nb = len(toks) // BT
            # an engine sends a prompt's new blocks under the last block it had
            have = 0
            for c in chains[k]:
                m = 0
                while m < min(len(c), nb) and e.model.get(c[m]) == tuple(toks[:(m + 1) * BT]):
                    m += 1
                if m > have:
                    have, parent_chain = m, c
            ids = []
            for _ in range(nb - have):
                next_id[k] += 1
                ids.append(next_id[k])
            if not ids:
                continue
            parent = parent_chain[have - 1] if have else None
            chain = (parent_chain[:have] if have else []) + ids
            e.batch([e.stored(ids, parent, toks[have * BT:])])
            e.learn_stored(ids, parent, toks[have * BT:])
            chains[k].append(chain)
        elif r < 0.85:
            held = [i for i in e.model]
            if held:
                gone = rng.sample(held, min(len(held), rng.randrange(1, 4)))
                e.batch([e.event("BlockRemoved", block_hashes=[e.h(i) for i in gone],
                                 medium="GPU")])
                e.learn_removed(gone)
        elif r < 0.9:
            e.batch([e.event("AllBlocksCleared")])
            e.model.clear()
            chains[k] = []
    return systems


def check_answers(d, engines, queries):
    nonzero = 0
    for q in queries:
        got = d.fleet(q)
        want = {name_of(e): e.matched(q) for e in engines}
        assert got == want, "query %s" % (q,)
        nonzero += sum(1 for v in want.values() if v)
    assert nonzero >= len(queries), "the workload must leave engines holding prefixes"


def sent_batches(engines):
    return sum(e.seq for e in engines)


def test_fleet_index_equals_a_model_of_the_events(fleet_setup):
    d, engines = fleet_setup
    rng = random.Random(3)
    systems = random_workload(engines, rng, 300)
    wait_for(lambda: d.stats()["fleet"]["batches"] >= sent_batches(engines),
             "every batch applied")
    queries = [s + [rng.randrange(300, 320) for _ in range(BT * 3)] for s in systems]
    queries += [s[:BT * 2] for s in systems] + [[1, 2, 3]]
    for e in engines:       # every prompt an engine still holds, whole
        queries += [list(p) for p in list(e.model.values())[:20]]
    check_answers(d, engines, queries)
    # longest first
    got = d.cli("fleet", "--json", "--tokens", ",".join(map(str, queries[0])))
    import json
    lens = [x["matched_tokens"] for x in json.loads(got.stdout)["instances"]]
    assert lens == sorted(lens, reverse=True)
    st = d.stats()["fleet"]
    assert st["instances"] == 4 and st["gaps"] == 0 and st["malformed"] == 0
    assert "fleet index: 4 engines, %d blocks" % st["blocks"] in d.stat_view()


def test_a_gap_is_repaired_through_the_replay_socket_where_there_is_one(fleet_setup):
    d, engines = fleet_setup
    a, b = engines[0], engines[1]              # a has a replay socket, b none
    toks = list(range(1, 1 + 3 * BT))
    for e in (a, b):
        e.batch([e.stored([1], None, toks[:BT])])
        e.learn_stored([1], None, toks[:BT])
        e.batch([e.stored([2], 1, toks[BT:2 * BT])], lose=True)    # never arrives
        e.batch([e.stored([3], 2, toks[2 * BT:])])
    a.learn_stored([2], 1, toks[BT:2 * BT])
    a.learn_stored([3], 2, toks[2 * BT:])
    # b: block 3's parent never arrived; the index skips it, as the model does
    b.learn_stored([3], 2, toks[2 * BT:])
    wait_for(lambda: d.stats()["fleet"]["gaps"] >= 2, "both gaps seen")
    wait_for(lambda: d.stats()["fleet"]["replayed"] >= 1, "a's replay")
    got = d.fleet(toks)
    assert got[name_of(a)] == 3 * BT
    assert got[name_of(b)] == BT
    assert got == {name_of(e): e.matched(toks) for e in engines}
    st = d.stats()["fleet"]
    assert st["replays"] >= 1 and st["gaps"] == 2


def test_a_block_in_two_media_is_held_until_both_go(fleet_setup):
    d, engines = fleet_setup
    e = engines[2]                        # map encoding, hashes as bytes
    toks = list(range(90, 90 + 3 * BT))
    e.batch([e.stored([1, 2], None, toks[:2 * BT])])
    e.batch([e.stored([2], 1, toks[BT:2 * BT], medium="DISK")])    # also on its disk
    e.batch([e.stored([3], 2, toks[2 * BT:], medium="CPU")])       # its parent: GPU, DISK
    wait_for(lambda: d.fleet(toks)[name_of(e)] == 3 * BT, "three blocks held")
    e.batch([e.event("BlockRemoved", block_hashes=[e.h(2)], medium="GPU")])
    time.sleep(0.3)
    assert d.fleet(toks)[name_of(e)] == 3 * BT, "block 2 is still on the disk"
    e.batch([e.event("BlockRemoved", block_hashes=[e.h(2)], medium="DISK")])
    wait_for(lambda: d.fleet(toks)[name_of(e)] == BT, "block 2 gone from both")
    assert d.stats()["fleet"]["malformed"] == 0


MALFORMED = [
    b"\xc1",                                           # never used in msgpack
    b"\x93\xcb" + b"\x00" * 8,                         # cut short
    msgpack.packb([0.0, [["BlockStored", [1], None, ["x"] * BT, BT, None, "GPU"]]]),
    msgpack.packb([0.0, [["BlockStored", [1], None, [1] * (BT + 1), BT, None, "GPU"]]]),
    msgpack.packb([0.0, [["BlockStored", [1], None, [1] * BT, 0, None, "GPU"]]]),
    msgpack.packb([0.0, [{"type": "BlockMoved", "block_hashes": [1]}]]),
    msgpack.packb([0.0, [{"block_hashes": [1]}]]),
    msgpack.packb([0.0, "events"]),
    b"\x93\xcb" + b"\x00" * 8 + b"\xdd\xff\xff\xff\xff",   # 4 billion events declared
    msgpack.packb([0.0, [], None]) + b"\x00",          # trailing bytes
    msgpack.packb([0.0, [[1, 2, 3]] * 3]),
]


def test_malformed_batches_are_counted_and_skipped(fleet_setup):
    d, engines = fleet_setup
    e = engines[1]
    before = d.stats()["fleet"]
    for raw in MALFORMED:
        e.batch(None, raw=raw)
    toks = list(range(40, 40 + 2 * BT))
    e.batch([e.stored([7, 8], None, toks)])
    e.learn_stored([7, 8], None, toks)
    wait_for(lambda: d.stats()["fleet"]["malformed"] - before["malformed"] >= len(MALFORMED),
             "every malformed batch counted")
    wait_for(lambda: d.fleet(toks)[name_of(e)] == 2 * BT, "the good batch after them")
    st = d.stats()["fleet"]
    assert st["malformed"] - before["malformed"] == len(MALFORMED)
    # a block size other than the index's is not this index's business: skipped, counted
    e.batch([e.event("BlockStored", block_hashes=[e.h(9)], parent_block_hash=None,
                     token_ids=[1] * 8, block_size=8, lora_id=None, medium="GPU",
                     lora_name=None)])
    wait_for(lambda: d.stats()["fleet"]["malformed"] - st["malformed"] == 1,
             "the foreign block size counted")
    assert d.fleet([1] * 8)[name_of(e)] == 0


def test_fleet_needs_a_fleet_index(workdir, daemons):
    d = daemons(workdir, "plain", ["--index-only", "--block-tokens", str(BT)])
    r = d.cli("fleet", "--tokens", "1,2,3,4", check=False)
    assert r.returncode == 1
    assert "--kv-events-sub" in r.stderr


def test_a_kvprefixd_feeds_a_fleet_index_over_tcp(workdir, daemons):
    """The other way round from the tests above: the fleet index binds a wildcard
    address and a kvprefixd connects its publisher to it (as engines do when a router
    collects their events on one socket)."""
    import socket as pysocket
    s = pysocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    fleet = daemons(workdir, "fleet", ["--index-only", "--block-tokens", str(BT),
                                       "--kv-events-sub", "tcp://*:%d" % port])
    eng = daemons(workdir, "eng", ["--index-only", "--block-tokens", str(BT),
                                   "--kv-events", "tcp://127.0.0.1:%d" % port,
                                   "--instance-id", "node-7"])
    # the subscription reaches the publisher a moment after it connects
    k = 0
    def seen():
        nonlocal k
        k += 1
        eng.insert([500 + k] * BT)
        return d_instances(fleet) == 1
    wait_for(seen, "the fleet index to hear the engine")
    toks = list(range(200, 200 + 3 * BT))
    eng.insert(toks)
    wait_for(lambda: fleet.fleet(toks + [1]).get("node-7") == 3 * BT,
             "the engine's prompt in the fleet index")
    assert eng.lookup(toks) == 3 * BT


def d_instances(d):
    return d.stats()["fleet"]["instances"]
