"""kvprefixd --kv-events with a model and a disk tier: the pool's blocks (medium CPU)
and the disk tier's (medium DISK), rebuilt by a subscriber, through evictions to the
disk, promotions back, and a warm restart."""
import os
import random
import subprocess
import time

import pytest
import zmq

from conftest import MKMODEL
from test_publish import Subscriber, assert_same

BT = 4


@pytest.fixture
def model(workdir):
    path = os.path.join(workdir, "tiny.gguf")
    subprocess.run([MKMODEL, "--out", path, "--vocab", "64", "--dim", "16", "--layers", "1",
                    "--heads", "2", "--kv-heads", "1", "--ffn", "32", "--ctx", "256",
                    "--quiet"], check=True, timeout=60)
    return path


def assert_disk_same(d, mirror):
    disk = mirror.media.get("DISK", {})
    assert d.stats()["tiers"]["disk"]["blocks"] == len(disk)
    return disk


def test_the_disk_tier_is_published_as_medium_disk(workdir, daemons, model):
    ev = "ipc://" + os.path.join(workdir, "ev.ipc")
    rp = "ipc://" + os.path.join(workdir, "rp.ipc")
    disk = os.path.join(workdir, "disk")
    d = daemons(workdir, "d", ["--model", model, "--block-tokens", str(BT),
                               "--capacity-blocks", "24", "--max-seqs", "2",
                               "--threads", "1", "--disk-cache", disk,
                               "--disk-cache-gb", "1", "--kv-events", ev,
                               "--kv-events-replay", rp, "--instance-id", "tier-test"])
    ctx = zmq.Context()
    sub = Subscriber(ctx, ev, rp)
    rng = random.Random(9)
    systems = [[rng.randrange(1, 64) for _ in range(8)] for _ in range(3)]
    prompts = []
    try:
        time.sleep(0.3)
        for i in range(30):
            p = rng.choice(systems) + [rng.randrange(1, 64) for _ in range(rng.randrange(4, 14))]
            d.generate(p)
            prompts.append(p)
            if i % 5 == 4:
                sub.drain(quiet_ms=100)
        time.sleep(0.5)     # the disk tier's writes land
        sub.drain()
        assert_same(d, sub.mirror)
        on_disk = assert_disk_same(d, sub.mirror)
        assert len(on_disk) > 0, "the workload must evict to the disk: make the pool smaller"
        # a stop flushes the pool to the disk; the warm start publishes what the disk holds
        d.stop()
        d.start()
        # the subscriber learns of the restart from the new process's next batch
        for p in prompts:
            d.generate(p)
            sub.drain(quiet_ms=100)
            if sub.restarts:
                break
        assert sub.restarts == 1
        time.sleep(0.5)
        sub.drain()
        assert_same(d, sub.mirror)
        on_disk = assert_disk_same(d, sub.mirror)
        assert d.stats()["tiers"]["disk"]["warm_blocks"] > 0
        assert len(on_disk) > 0
    finally:
        sub.close()
        ctx.term()
