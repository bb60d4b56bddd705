"""Fixtures: one index-only and one engine-mode kvprefixd for the whole run (each test
talks to them in a namespace of its own: an adapter id named after the test), the
models they serve, and clients connected to them. Tests that need other options start
a daemon of their own with kvp_testlib.Daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import kvprefix
from kvp_testlib import Daemon, make_model, safe_name

# index-only: 4-token blocks, small limits that the error tests reach
INDEX_ARGS = ["--block-tokens", "4", "--capacity-blocks", "256", "--max-tokens", "64",
              "--max-frame-bytes", "8192", "--admin-group", str(os.getgid())]
# engine mode: the tiny model, 4-token blocks
ENGINE_ARGS = ["--block-tokens", "4", "--capacity-blocks", "128", "--threads", "1",
               "--kv-dtype", "f32", "--admin-group", str(os.getgid())]
# a vocabulary of 64 tokens and a context of 64, so that the context fills quickly
TINY_MODEL = ["--vocab", "64", "--dim", "16", "--layers", "1", "--heads", "2",
              "--kv-heads", "1", "--ffn", "32", "--ctx", "64", "--seed", "3",
              "--weight-std", "0.5"]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> str:
    """The engine daemon's model (vocabulary 64, context 64)."""
    return make_model(models_dir / "tiny.gguf", TINY_MODEL)


@pytest.fixture(scope="session")
def index_daemon() -> Iterator[Daemon]:
    """An index-only kvprefixd (INDEX_ARGS), shared by the run."""
    d = Daemon(INDEX_ARGS)
    yield d
    d.stop_clean()


@pytest.fixture(scope="session")
def engine_daemon(tiny_model: str) -> Iterator[Daemon]:
    """An engine-mode kvprefixd serving the tiny model (ENGINE_ARGS), shared by the run."""
    d = Daemon(["--model", tiny_model, *ENGINE_ARGS])
    yield d
    d.stop_clean()


def _namespaced(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[kvprefix.Client]:
    with kvprefix.Client(daemon.socket, timeout=30) as c:
        c.hello(adapter=safe_name(request.node.name))
        yield c


@pytest.fixture
def client(index_daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[kvprefix.Client]:
    """A client of the index-only daemon, in a namespace of this test's own."""
    yield from _namespaced(index_daemon, request)


@pytest.fixture
def eclient(engine_daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[kvprefix.Client]:
    """A client of the engine daemon, in a namespace of this test's own."""
    yield from _namespaced(engine_daemon, request)
