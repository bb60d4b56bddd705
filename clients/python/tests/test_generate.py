"""GENERATE against the real engine-mode daemon: streaming, usage, sampling options,
the C client's answer for the same prompt, and the session of docs/protocol.md §9.1."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import subprocess

import pytest

import kvprefix
from kvprefix import _wire
from kvp_testlib import Daemon, cli, doc_frame, doc_replay_output, make_model

PROMPT = [1, 2, 3, 4, 5]
VOCAB = 64
CTX = 64


def test_hello_engine(eclient):
    info = eclient.server_info
    assert (info.version, info.index_only, info.vocab_size, info.ctx_tokens, info.block_tokens) \
        == (4, False, VOCAB, CTX, 4)


def test_streams_max_new_tokens(eclient):
    gen = eclient.generate(PROMPT, max_new=12)
    assert isinstance(gen, kvprefix.Generation) and gen.done is None
    seen = []
    for tok in gen:
        seen.append(tok)
        assert gen.tokens == seen            # yielded as they come, one by one
        assert gen.done is None or len(seen) == 12
    assert len(seen) == 12 and all(0 <= t < VOCAB for t in seen)
    d = gen.done
    assert (d.prompt_tokens, d.generated_tokens, d.finish) == (5, 12, kvprefix.Finish.LENGTH)
    assert d.cached_tokens + d.computed_tokens == 5 and d.computed_tokens >= 1
    assert d.logits is None and d.ttft_us > 0
    assert gen.finished and gen.error is None


def test_greedy_is_deterministic_and_cached(eclient):
    first = eclient.generate(PROMPT * 2, max_new=8)
    toks = list(first)
    second = eclient.generate(PROMPT * 2, max_new=8)
    assert second.wait().finish == kvprefix.Finish.LENGTH
    assert second.tokens == toks
    # the prompt's two full blocks were cached by the first
    assert (first.done.cached_tokens, second.done.cached_tokens) == (0, 8)
    assert second.done.computed_tokens == 2


def test_same_tokens_as_the_c_client(engine_daemon, eclient):
    """kvprefix generate (libkvprefix) and this client agree, greedy."""
    prompt = [7, 3, 9, 30, 2, 5, 11]
    out = subprocess.run([cli(), "generate", "--socket", engine_daemon.socket, "--tokens",
                          ",".join(map(str, prompt)), "--max-new", "10", "--json"],
                         check=True, stdout=subprocess.PIPE, timeout=60).stdout
    want = json.loads(out)
    gen = eclient.generate(prompt, max_new=10)
    assert list(gen) == want["tokens"]
    assert gen.done.generated_tokens == want["generated_tokens"] == 10
    assert gen.done.finish.name.lower() == want["finish"]


def test_stop_id_ends_it(eclient):
    toks = list(eclient.generate(PROMPT, max_new=10))
    stop = toks[3]
    want = toks[:toks.index(stop) + 1]
    gen = eclient.generate(PROMPT, max_new=10, stop=[stop, VOCAB + 5])
    assert list(gen) == want
    assert gen.done.finish == kvprefix.Finish.STOP
    assert gen.done.generated_tokens == len(want)


def test_context_ends_it(eclient):
    """A prompt of n leaves room for ctx - n + 1 tokens."""
    prompt = [i % VOCAB for i in range(CTX - 3)]
    gen = eclient.generate(prompt, max_new=50)
    assert len(list(gen)) == 4
    assert gen.done.finish == kvprefix.Finish.CONTEXT


def test_max_new_zero_caches_the_prompt(eclient):
    prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    gen = eclient.generate(prompt, max_new=0)
    assert list(gen) == [] and gen.done.finish == kvprefix.Finish.LENGTH
    assert eclient.lookup(prompt).matched_tokens == 8


def test_logits(eclient):
    gen = eclient.generate(PROMPT, max_new=1, logits=True)
    (tok,) = list(gen)
    logits = gen.done.logits
    assert len(logits) == VOCAB and all(math.isfinite(x) for x in logits)
    best = max(logits)
    assert tok == logits.index(best)        # greedy: the most likely, lowest id first


def test_sampling_is_seeded(eclient):
    kw = dict(max_new=12, temperature=1.5, top_k=20, top_p=0.95)
    a = list(eclient.generate(PROMPT, seed=1, **kw))
    b = list(eclient.generate(PROMPT, seed=1, **kw))
    assert a == b and len(a) == 12


def test_bad_token_id(eclient):
    gen = eclient.generate([1, 2, VOCAB])
    with pytest.raises(kvprefix.InvalidArgumentError) as ei:
        list(gen)
    assert ei.value.code == 2 and "vocabulary" in ei.value.message
    assert gen.error is ei.value and gen.done is None and gen.tokens == []
    assert eclient.ping() > 0              # the connection stays usable


def test_prompt_over_the_context(eclient):
    with pytest.raises(kvprefix.TooBigError) as ei:
        eclient.generate([1] * (CTX + 1)).wait()
    assert ei.value.code == 4


def test_values_refused_before_sending(eclient):
    for kw in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0),
               dict(top_p=1.5), dict(max_new=(1 << 20) + 1), dict(stop=list(range(65)))):
        with pytest.raises(kvprefix.InvalidArgumentError):
            eclient.generate(PROMPT, **kw)
    with pytest.raises(kvprefix.InvalidArgumentError):
        eclient.generate([])
    assert eclient.ping() > 0


def test_insert_unsupported_in_engine_mode(eclient):
    with pytest.raises(kvprefix.UnsupportedError) as ei:
        eclient.insert(PROMPT)
    assert ei.value.code == 13


def test_generate_unsupported_index_only(client):
    gen = client.generate(PROMPT)
    with pytest.raises(kvprefix.UnsupportedError):
        next(gen)
    assert client.ping() > 0


def test_two_generations_interleaved(eclient):
    """Two GENERATEs and a LOOKUP in flight on one connection: each gets its frames."""
    alone_a = list(eclient.generate(PROMPT, max_new=6))
    alone_b = list(eclient.generate([9, 8, 7], max_new=5))
    a = eclient.generate(PROMPT, max_new=6)
    b = eclient.generate([9, 8, 7], max_new=5)
    assert eclient.lookup(PROMPT).prompt_tokens == 5
    assert list(b) == alone_b
    assert list(a) == alone_a
    assert a.done.generated_tokens == 6 and b.done.generated_tokens == 5


def test_abandoned_generation_is_dropped(eclient):
    gen = eclient.generate(PROMPT, max_new=20)
    next(gen)
    gen.close()
    assert gen.finished and list(gen) == [] and len(gen.tokens) == 1
    # its remaining frames are read and dropped on the way to the next answers
    assert eclient.lookup(PROMPT).prompt_tokens == 5
    assert len(list(eclient.generate(PROMPT, max_new=3))) == 3


def test_generation_as_context_manager(eclient):
    with eclient.generate(PROMPT, max_new=20) as gen:
        next(gen)
    assert gen.finished and gen.done is None
    assert eclient.ping() > 0


@pytest.fixture(scope="module")
def doc_daemon(models_dir):
    """The daemon of docs/protocol.md §9.1, serving its 8-token model."""
    model = make_model(models_dir / "doc-tiny.gguf",
                       ["--vocab", "8", "--dim", "8", "--layers", "1", "--heads", "2",
                        "--kv-heads", "1", "--ffn", "16", "--ctx", "64", "--seed", "8",
                        "--weight-std", "0.5", "--name", "tiny-llama"])
    d = Daemon(["--model", model, "--block-tokens", "4", "--capacity-blocks", "1024",
                "--max-tokens", "2048"])
    yield d
    d.stop_clean()


def test_doc_session_replayed(doc_daemon):
    """§9.1's commands, through this client: the same tokens, counts and logits."""
    with kvprefix.Client(doc_daemon.socket, timeout=30) as c:
        info = c.hello()
    # the page's version-4 reply, but for the tenant (the page's uid is 1000)
    page = _wire.decode_hello_reply(doc_frame("hello_reply_engine")[16:])
    assert info == dataclasses.replace(page, tenant=os.geteuid())
    assert (info.version, info.name, info.vocab_size, info.ctx_tokens) == \
        (4, "tiny-llama", 8, 64)
    with kvprefix.Client(doc_daemon.socket, timeout=30) as c:
        assert c.generate([1, 4, 2, 6], max_new=0).wait().computed_tokens == 4
    with kvprefix.Client(doc_daemon.socket, timeout=30) as c:
        gen = c.generate([1, 4, 2, 6, 3, 5], max_new=8, temperature=0.7, top_k=40,
                         top_p=0.9, seed=42, stop=[7], logits=True)
        tokens = list(gen)
        d = gen.done
    want = json.loads(doc_replay_output("generate"))
    assert tokens == want["tokens"]
    assert (d.prompt_tokens, d.cached_tokens, d.computed_tokens, d.generated_tokens) == \
        (want["prompt_tokens"], want["cached_tokens"], want["computed_tokens"],
         want["generated_tokens"])
    assert d.finish.name.lower() == want["finish"]
    page = doc_frame("generate_done")[16 + 52:]
    page_logits = struct.unpack("<8f", page)
    assert all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
               for a, b in zip(d.logits, page_logits)), (d.logits, page_logits)
    with kvprefix.Client(doc_daemon.socket, timeout=30) as c:
        with pytest.raises(kvprefix.InvalidArgumentError) as ei:
            c.generate([1, 4, 2, 6, 3, 5, 9]).wait()
        assert c.ping() > 0
    page_error = doc_frame("generate_error")
    assert ei.value.message == page_error[22:].decode()
