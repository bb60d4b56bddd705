"""The decoders of the daemon's bytes, on random and mutated payloads: each either
decodes or raises ProtocolError, never anything else (the library's fuzz test; the
daemon's own decoders have libFuzzer targets in fuzz/)."""

from __future__ import annotations

import random
import struct

from kvprefix import ProtocolError, _wire
from kvp_testlib import doc_frame

DECODERS = {
    "hello_reply": _wire.decode_hello_reply,
    "hello_reply_engine": _wire.decode_hello_reply,
    "insert_reply": _wire.decode_blocks_reply,
    "release_reply": lambda p: _wire.decode_u32("RELEASE reply", p),
    "error": _wire.decode_error,
    "generate_tokens": _wire.decode_token_chunk,
    "generate_done": _wire.decode_generate_done,
    "admin_config_reply": _wire.decode_admin_reply,
}

# no FLEET reply is on the page: one of three engines, made here
FLEET_REPLY = (struct.pack("<II", 9, 3)
               + struct.pack("<II", 8, 5) + b"eng-a"
               + struct.pack("<II", 4, 5) + b"eng-b"
               + struct.pack("<II", 0, 8) + b"\xffeng-c\xc3\xa9")


def _mutations(rng: random.Random, seed: bytes, count: int):
    for _ in range(count):
        b = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            what = rng.random()
            if what < 0.4 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif what < 0.6 and b:
                del b[rng.randrange(len(b)):]
            elif what < 0.8:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif len(b) >= 4:
                at = rng.randrange(len(b) - 3)
                b[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                           b"\x01\x00\x00\x00", b"\x00\x00\x01\x00"])
        yield bytes(b)


def test_decoders_fail_only_as_protocol_errors():
    rng = random.Random(20240601)
    decoded = refused = 0
    seeds = [(doc_frame(name)[16:], decode) for name, decode in DECODERS.items()]
    seeds.append((FLEET_REPLY, _wire.decode_fleet_reply))
    for seed, decode in seeds:
        decode(seed)                                  # the unmutated payload decodes
        for payload in _mutations(rng, seed, 1500):
            try:
                decode(payload)
                decoded += 1
            except ProtocolError:
                refused += 1
    assert decoded > 100 and refused > 1000


def test_header_check_fails_only_as_protocol_errors():
    rng = random.Random(7)
    seed = doc_frame("pong")[:16]
    assert _wire.unpack_header(seed).type == 0x86
    outcomes = set()
    for raw in _mutations(rng, seed, 3000):
        raw = (raw + bytes(16))[:16]
        try:
            h = _wire.unpack_header(raw)
            assert _wire.is_reply_type(h.type, h.version) and 1 <= h.version <= 4
            outcomes.add("ok")
        except ProtocolError:
            outcomes.add("refused")
    assert outcomes == {"ok", "refused"}
