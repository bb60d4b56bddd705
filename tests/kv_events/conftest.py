"""Shared pieces of the KV-event tests: a real kvprefixd per test, the kvprefix CLI,
and a mirror that rebuilds a cache from vLLM-format event batches."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import msgpack
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("KVP_BUILD_DIR", os.path.join(HERE, "..", "..", "build"))
KVPREFIXD = os.environ.get("KVPREFIXD", os.path.join(BUILD, "kvprefixd"))
CLI = os.environ.get("KVPREFIX_CLI", os.path.join(BUILD, "kvprefix"))
MKMODEL = os.environ.get("KVPREFIX_MKMODEL", os.path.join(BUILD, "kvprefix-mkmodel"))
STAT = os.environ.get("KVPREFIX_STAT", os.path.join(BUILD, "kvprefix-stat"))
END_SEQ = b"\xff" * 8


class Daemon:
    """A kvprefixd on a private socket; stopped with SIGTERM."""

    def __init__(self, workdir, name, args):
        self.sock = os.path.join(workdir, name + ".sock")
        self.log = os.path.join(workdir, name + ".log")
        self.args = args
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [KVPREFIXD, "--socket", self.sock, "--log-level", "debug"] + self.args,
                stdout=log, stderr=log)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("kvprefixd exited: " + self.log_text())
            if os.path.exists(self.sock) and self.cli("ping", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise AssertionError("kvprefixd did not start: " + self.log_text())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def cli(self, *args, check=True):
        words = 2 if args[0] == "admin" else 1   # "admin clear" takes options after both
        r = subprocess.run([CLI] + list(args[:words]) + ["--socket", self.sock] +
                           list(args[words:]),
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError("kvprefix %s failed: %s %s\n%s" %
                                 (args, r.stdout, r.stderr, self.log_text()))
        return r

    def insert(self, tokens):
        return json.loads(self.cli("insert", "--json", "--tokens", tokens_arg(tokens)).stdout)

    def lookup(self, tokens):
        r = self.cli("lookup", "--json", "--tokens", tokens_arg(tokens))
        return json.loads(r.stdout)["matched_tokens"]

    def stat_view(self):
        """kvprefix-stat's table."""
        r = subprocess.run([STAT, "--socket", self.sock], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stats(self):
        return json.loads(self.cli("stats").stdout)

    def generate(self, tokens, max_new=2):
        return self.cli("generate", "--json", "--max-new", str(max_new), "--tokens",
                        tokens_arg(tokens))

    def fleet(self, tokens):
        r = self.cli("fleet", "--json", "--tokens", tokens_arg(tokens))
        return {e["instance"]: e["matched_tokens"] for e in json.loads(r.stdout)["instances"]}


def tokens_arg(tokens):
    return ",".join(str(t) for t in tokens)


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="kvp-events-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemons():
    started = []

    def make(workdir, name, args):
        d = Daemon(workdir, name, args)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


def decode_events(payload):
    """The events of a batch, each as (type, fields) whatever the encoding."""
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    events = batch["events"] if isinstance(batch, dict) else batch[1]
    out = []
    for e in events:
        if isinstance(e, dict):
            out.append((e["type"], e))
            continue
        t = e[0]
        if t == "BlockStored":
            f = dict(zip(["block_hashes", "parent_block_hash", "token_ids", "block_size",
                          "lora_id", "medium"], e[1:]))
        elif t == "BlockRemoved":
            f = dict(zip(["block_hashes", "medium"], e[1:]))
        else:
            f = {}
        out.append((t, f))
    return out


class Mirror:
    """A cache rebuilt from one publisher's events, per medium: block hash -> (parent
    hash, tokens). The pool's medium is a tree (a parent stored before its children,
    removed after them); a lower tier's blocks need not have their parents there."""

    def __init__(self, pool_medium="CPU"):
        self.pool_medium = pool_medium
        self.media = {}
        self.expect = 0          # the next sequence number
        self.applied = 0
        self.cleared = 0

    @property
    def blocks(self):
        return self.media.setdefault(self.pool_medium, {})

    def apply(self, payload):
        for t, f in decode_events(payload):
            blocks = self.media.setdefault(f.get("medium"), {})
            tree = f.get("medium") == self.pool_medium
            if t == "BlockStored":
                bs = f["block_size"]
                parent = f["parent_block_hash"]
                toks = f["token_ids"]
                assert len(toks) == bs * len(f["block_hashes"])
                for i, h in enumerate(f["block_hashes"]):
                    assert not tree or parent is None or parent in blocks, \
                        "stored under an unknown parent"
                    assert h not in blocks, "stored twice without a removal"
                    blocks[h] = (parent, tuple(toks[i * bs:(i + 1) * bs]))
                    parent = h
            elif t == "BlockRemoved":
                for h in f["block_hashes"]:
                    assert h in blocks, "removal of a block never stored"
                    assert not tree or not any(p == h for p, _ in blocks.values()), \
                        "a block removed before its children"
                    del blocks[h]
            elif t == "AllBlocksCleared":
                self.media.clear()
                self.cleared += 1
            else:
                raise AssertionError("unknown event " + t)
        self.applied += 1

    def paths(self):
        """The token path of every leaf block (every block is on one of them)."""
        parents = {p for p, _ in self.blocks.values() if p is not None}
        out = []
        for h in self.blocks:
            if h in parents:
                continue
            path, x = [], h
            while x is not None:
                p, toks = self.blocks[x]
                path[:0] = toks
                x = p
            out.append(path)
        return out
