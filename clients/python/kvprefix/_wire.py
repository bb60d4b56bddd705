"""The frames of kvprefixd's protocol, bytes in and out (docs/protocol.md §3, §4).

No I/O here: the client (client.py) moves the bytes. Every integer is little-endian
and unaligned; every decoder checks each length against the bytes left before it
reads them and insists that the fields end exactly at the payload's length:

    payload                       len
    |-- fixed --|n|-- n items --|             ok
    |-- fixed --|n|-- n it|                   ProtocolError: runs past len
    |-- fixed --|n|-- n items --|xx|          ProtocolError: trailing bytes

The encoders refuse, with the status the daemon's decoder would answer, what that
decoder would refuse and close the connection for (reserved bits, lengths that do not
fit their fields), and what libkvprefix refuses before sending (a GENERATE value out
of range, an ADMIN field its op does not take).
"""

from __future__ import annotations

import array
import math
import struct
import sys
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple

from .errors import InvalidArgumentError, ProtocolError, TooBigError
from .results import AdminOp, AdminResult, FleetMatch, Finish, Match, ServerInfo, Usage

# ---- the frame header (§3) -------------------------------------------------------

MAGIC = 0x3150564B            # the bytes "KVP1" read as a little-endian u32
VERSION = 1                   # the version of ordinary frames
VERSION_ADMIN = 2             # the first version with ADMIN
VERSION_SIZES = 3             # the first whose HELLO reply has vocab and context
VERSION_FLEET = 4             # the first version with FLEET
VERSION_MAX = 4               # the highest version this client speaks
HDR_SIZE = 16

T_HELLO = 0x01
T_LOOKUP = 0x02
T_INSERT = 0x03
T_RELEASE = 0x04
T_STATS = 0x05
T_PING = 0x06
T_GENERATE = 0x07
T_ADMIN = 0x09
T_FLEET = 0x0A
T_REPLY = 0x80                # or-ed into a request type
T_GENERATE_TOKENS = T_GENERATE | T_REPLY
T_GENERATE_DONE = 0x88
T_ERROR = 0xFF

# ---- limits and flags (§1, §4, §7) ------------------------------------------------

NAME_MAX = 255                # adapter, salt, name
ERROR_MSG_MAX = 1024
HELLO_INDEX_ONLY = 0x1        # HELLO reply flag
F_PIN = 0x1                   # LOOKUP / INSERT
F_KEEP = 0x2                  # INSERT only (a reserved bit of LOOKUP): keep_s, priority follow
KEEP_MAX_S = 604800           # the longest keep_s (INSERT and GENERATE), a week
KEEP_SIZE = 8                 # bytes of keep_s and priority after the tokens
GEN_LOGITS = 0x1              # GENERATE
GEN_KEEP = 0x2                # GENERATE: keep_s, priority follow the prompt
STOP_MAX = 64
GEN_MAX_NEW = 1 << 20
ADMIN_F_TENANT = 0x1
ADMIN_F_ALL = 0x2
ADMIN_TEXT_MAX = 4096
ADMIN_REPLY_TEXT_MAX = 65536
FLEET_MAX = 64                # engines in one FLEET reply
MAX_REPLY = 256 << 20         # payload bytes accepted in one reply, as libkvprefix
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

_HDR = struct.Struct("<IBBHII")
_LITTLE = sys.byteorder == "little"


class Header(NamedTuple):
    """A frame header (§3): version, type, req_id and payload length (flags are 0)."""

    version: int
    type: int
    req_id: int
    len: int


def pack_header(version: int, ftype: int, req_id: int, length: int) -> bytes:
    """The 16 bytes of a header."""
    return _HDR.pack(MAGIC, version, ftype, 0, req_id, length)


def is_request_type(ftype: int) -> bool:
    """True for the request types (HELLO .. GENERATE, ADMIN, FLEET), in some version."""
    return T_HELLO <= ftype <= T_GENERATE or ftype in (T_ADMIN, T_FLEET)


def is_reply_type(ftype: int, version: int) -> bool:
    """True for a type the daemon may send in a header of this version: a reply, a
    GENERATE token frame, GENERATE_DONE or ERROR (ADMIN's reply from version 2,
    FLEET's from version 4)."""
    if ftype in (T_ERROR, T_GENERATE_DONE):
        return True
    if not ftype & T_REPLY:
        return False
    req = ftype & ~T_REPLY
    if req == T_ADMIN:
        return version >= VERSION_ADMIN
    if req == T_FLEET:
        return version >= VERSION_FLEET
    return is_request_type(req)


def is_final_type(ftype: int) -> bool:
    """True for the frame that ends a request: any reply but a GENERATE token frame."""
    return ftype != T_GENERATE_TOKENS


def unpack_header(raw: bytes) -> Header:
    """Check a received header as §5 orders it, for a client: the magic, the version,
    a reply type known in that version, flags 0, a length within MAX_REPLY. A header
    that fails is a ProtocolError: the stream cannot be trusted after it."""
    magic, version, ftype, flags, req_id, length = _HDR.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError("a reply header with magic 0x%08x, not 0x%08x" % (magic, MAGIC))
    if not 1 <= version <= VERSION_MAX:
        raise ProtocolError("a reply header of version %d" % version)
    if not is_reply_type(ftype, version) or flags != 0:
        raise ProtocolError("a reply header of type 0x%02x, flags 0x%04x, in version %d"
                            % (ftype, flags, version))
    if length > MAX_REPLY:
        raise ProtocolError("a reply of %d bytes, over the %d accepted" % (length, MAX_REPLY))
    return Header(version, ftype, req_id, length)


# ---- token arrays ----------------------------------------------------------------------

_U32_CODE = "I" if array.array("I").itemsize == 4 else "L"
_F32_CODE = "f"


def tokens_bytes(tokens: Iterable[int]) -> Tuple[bytes, int]:
    """Token ids as little-endian u32 bytes, and their count. InvalidArgumentError for
    an id that is not a u32; TypeError for one that is not an integer."""
    if isinstance(tokens, array.array) and tokens.typecode == _U32_CODE:
        arr = tokens
    else:
        try:
            arr = array.array(_U32_CODE, tokens)
        except OverflowError:
            raise InvalidArgumentError("token ids are u32: 0 to %d" % U32_MAX) from None
    if not _LITTLE:
        arr = array.array(_U32_CODE, arr)
        arr.byteswap()
    return arr.tobytes(), len(arr)


def _u32s(raw: "bytes | memoryview") -> Tuple[int, ...]:
    arr = array.array(_U32_CODE)
    arr.frombytes(raw)
    if not _LITTLE:
        arr.byteswap()
    return tuple(arr)


def _f32s(raw: "bytes | memoryview") -> Tuple[float, ...]:
    arr = array.array(_F32_CODE)
    arr.frombytes(raw)
    if not _LITTLE:
        arr.byteswap()
    return tuple(arr)


def check_u32(name: str, v: int) -> int:
    """v, when it is a u32; else InvalidArgumentError naming it."""
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= U32_MAX:
        raise InvalidArgumentError("%s must be a u32 (0 to %d), not %r" % (name, U32_MAX, v))
    return v


def _f32(name: str, v: float) -> float:
    """v as the f32 the wire carries; InvalidArgumentError when it has none."""
    try:
        return struct.unpack("<f", struct.pack("<f", float(v)))[0]
    except (OverflowError, TypeError, ValueError):
        raise InvalidArgumentError("%s must be an f32, not %r" % (name, v)) from None


# ---- bounded reader -----------------------------------------------------------------------

class _Reader:
    """Reads fields from a payload, each checked against the bytes left."""

    def __init__(self, what: str, payload: "bytes | memoryview") -> None:
        self.what = what
        self.buf = memoryview(payload)
        self.off = 0

    def _take(self, n: int) -> memoryview:
        if len(self.buf) - self.off < n:
            raise ProtocolError("%s: %d bytes end before its fields do" % (self.what, len(self.buf)))
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "little")

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def u32s(self, count: int) -> Tuple[int, ...]:
        if (len(self.buf) - self.off) // 4 < count:
            raise ProtocolError("%s: %d bytes end before its %d ids do"
                                % (self.what, len(self.buf), count))
        return _u32s(self._take(4 * count))

    def end(self) -> None:
        if self.off != len(self.buf):
            raise ProtocolError("%s: %d bytes after its last field"
                                % (self.what, len(self.buf) - self.off))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


# ---- HELLO (§4.1, §4.2) --------------------------------------------------------------------

def encode_hello(version: int, adapter: bytes, salt: bytes) -> bytes:
    """A HELLO payload offering version, with an adapter id and a salt (empty: none)."""
    if len(adapter) > NAME_MAX or len(salt) > NAME_MAX:
        raise TooBigError("an adapter id or salt is at most %d bytes" % NAME_MAX)
    return (struct.pack("<IIH", version, 0, len(adapter)) + adapter
            + struct.pack("<H", len(salt)) + salt)


def decode_hello_reply(payload: bytes) -> ServerInfo:
    """A HELLO reply, laid out by its own version field."""
    r = _Reader("HELLO reply", payload)
    version, block_tokens, capacity, max_tokens, flags, tenant = (r.u32() for _ in range(6))
    name_len = r.u16()
    name = r.raw(name_len)
    vocab = ctx = None
    if version >= VERSION_SIZES:
        vocab, ctx = r.u32(), r.u32()
    r.end()
    if flags & ~HELLO_INDEX_ONLY:
        raise ProtocolError("HELLO reply flags 0x%x: reserved bits set" % flags)
    if name_len > NAME_MAX:
        raise ProtocolError("HELLO reply name of %d bytes" % name_len)
    return ServerInfo(version=version, block_tokens=block_tokens, capacity_blocks=capacity,
                      max_tokens=max_tokens, index_only=bool(flags & HELLO_INDEX_ONLY),
                      tenant=tenant, name=_text(name), vocab_size=vocab, ctx_tokens=ctx)


# ---- LOOKUP / INSERT / RELEASE (§4.3 - §4.5) ---------------------------------------------------

def encode_tokens_head(flags: int, n_tokens: int) -> bytes:
    """The fixed fields of a LOOKUP or INSERT, before its tokens."""
    return struct.pack("<II", flags, n_tokens)


def encode_keep(keep_s: int, priority: int) -> bytes:
    """What follows the tokens of an INSERT (F_KEEP) or a GENERATE (GEN_KEEP) that
    keeps its blocks: u32 keep_s and u32 priority; b"" for keep_s 0 (no keep).
    InvalidArgumentError for keep_s over KEEP_MAX_S (the daemon's decoder refuses it,
    as libkvprefix does before sending), a priority that is not a u32, or a priority
    without keep_s."""
    check_u32("keep_s", keep_s)
    check_u32("priority", priority)
    if keep_s > KEEP_MAX_S:
        raise InvalidArgumentError("keep_s %d is over %d (a week)" % (keep_s, KEEP_MAX_S))
    if keep_s == 0:
        if priority:
            raise InvalidArgumentError("a priority needs keep_s (1 to %d)" % KEEP_MAX_S)
        return b""
    return struct.pack("<II", keep_s, priority)


def decode_blocks_reply(payload: bytes) -> Match:
    """A LOOKUP or INSERT reply."""
    r = _Reader("LOOKUP/INSERT reply", payload)
    matched, prompt, new_blocks = r.u32(), r.u32(), r.u32()
    lease = r.u64()
    ids = r.u32s(r.u32())
    r.end()
    return Match(matched_tokens=matched, prompt_tokens=prompt, new_blocks=new_blocks,
                 lease=lease, block_ids=ids)


def encode_release(lease: int) -> bytes:
    """A RELEASE payload."""
    if not isinstance(lease, int) or not 0 <= lease <= U64_MAX:
        raise InvalidArgumentError("a lease is a u64, not %r" % (lease,))
    return struct.pack("<Q", lease)


def decode_u32(what: str, payload: bytes) -> int:
    """A payload of one u32 (the RELEASE reply)."""
    r = _Reader(what, payload)
    v = r.u32()
    r.end()
    return v


# ---- ERROR (§4.8) ----------------------------------------------------------------------------

def decode_error(payload: bytes) -> Tuple[int, str]:
    """An ERROR payload: its code and its message."""
    r = _Reader("ERROR", payload)
    code = r.u32()
    msg = r.raw(r.u16())
    r.end()
    if code == 0 or code > 0x7FFFFFFF:
        raise ProtocolError("an ERROR with code %d" % code)
    if len(msg) > ERROR_MSG_MAX:
        raise ProtocolError("an ERROR message of %d bytes" % len(msg))
    return code, _text(msg)


# ---- GENERATE (§4.9 - §4.11) --------------------------------------------------------------------

class GenerateParams(NamedTuple):
    """The sampling fields of a GENERATE, checked as the daemon checks them."""

    flags: int
    max_new: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: Tuple[int, ...]
    keep: bytes = b""         # encode_keep's: with GEN_KEEP, keep_s and priority


def generate_params(max_new: int, temperature: float, top_k: int, top_p: float, seed: int,
                    stop: Sequence[int], logits: bool, keep_s: int = 0,
                    priority: int = 0) -> GenerateParams:
    """Check a GENERATE's fields: InvalidArgumentError for what the daemon would refuse
    (§4.9: max_new over 2^20, temperature negative or not finite, top_p outside (0, 1],
    more than 64 stop ids, keep_s over a week), as libkvprefix refuses them before
    sending. keep_s 0 is no keep (and priority must be 0)."""
    check_u32("max_new", max_new)
    check_u32("top_k", top_k)
    if not isinstance(seed, int) or not 0 <= seed <= U64_MAX:
        raise InvalidArgumentError("seed must be a u64, not %r" % (seed,))
    if max_new > GEN_MAX_NEW:
        raise InvalidArgumentError("max_new %d is over %d" % (max_new, GEN_MAX_NEW))
    t = _f32("temperature", temperature)
    if not math.isfinite(t) or not t >= 0.0:
        raise InvalidArgumentError("temperature must be finite and >= 0, not %r" % temperature)
    p = _f32("top_p", top_p)
    if not 0.0 < p <= 1.0:
        raise InvalidArgumentError("top_p must be in (0, 1], not %r" % top_p)
    stop_ids = tuple(check_u32("stop id", s) for s in stop)
    if len(stop_ids) > STOP_MAX:
        raise InvalidArgumentError("%d stop ids, over %d" % (len(stop_ids), STOP_MAX))
    keep = encode_keep(keep_s, priority)
    flags = (GEN_LOGITS if logits else 0) | (GEN_KEEP if keep else 0)
    return GenerateParams(flags, max_new, t, top_k, p, seed, stop_ids, keep)


def encode_generate_head(p: GenerateParams, n_tokens: int) -> bytes:
    """A GENERATE payload up to its prompt (which follows as tokens_bytes, then
    p.keep)."""
    stop, _ = tokens_bytes(p.stop)
    return (struct.pack("<IIfIfQI", p.flags, p.max_new, p.temperature, p.top_k, p.top_p,
                        p.seed, len(p.stop))
            + stop + struct.pack("<I", n_tokens))


def decode_token_chunk(payload: bytes) -> Tuple[int, ...]:
    """A GENERATE token frame: its token ids (possibly none)."""
    r = _Reader("GENERATE token frame", payload)
    ids = r.u32s(r.u32())
    r.end()
    return ids


def decode_generate_done(payload: bytes) -> Usage:
    """A GENERATE_DONE payload."""
    r = _Reader("GENERATE_DONE", payload)
    prompt, cached, computed, generated, finish, reserved = (r.u32() for _ in range(6))
    ttft, prefill, decode = r.u64(), r.u64(), r.u64()
    n_logits = r.u32()
    if (len(r.buf) - r.off) // 4 < n_logits:
        raise ProtocolError("GENERATE_DONE: %d bytes end before its %d logits do"
                            % (len(r.buf), n_logits))
    logits = _f32s(r.raw(4 * n_logits)) if n_logits else None
    r.end()
    if reserved != 0 or finish > Finish.CONTEXT:
        raise ProtocolError("GENERATE_DONE with finish %d, reserved %d" % (finish, reserved))
    return Usage(prompt_tokens=prompt, cached_tokens=cached, computed_tokens=computed,
                 generated_tokens=generated, finish=Finish(finish), ttft_us=ttft,
                 prefill_us=prefill, decode_us=decode, logits=logits)


# ---- ADMIN (§4.12) ---------------------------------------------------------------------------------

def admin_check(op: int, flags: int, tenant: int, n_tokens: int, text: bytes) -> None:
    """Refuse what the daemon's decoder would (§4.12): reserved flags, a tenant without
    TENANT, a text byte below 0x20, a field the op does not take (InvalidArgumentError);
    a text over 4096 bytes (TooBigError). An unknown op is the daemon's to refuse."""
    if flags & ~(ADMIN_F_TENANT | ADMIN_F_ALL):
        raise InvalidArgumentError("ADMIN flags 0x%x: reserved bits set" % flags)
    if tenant and not flags & ADMIN_F_TENANT:
        raise InvalidArgumentError("an ADMIN tenant needs the TENANT flag")
    if any(b < 0x20 for b in text):
        raise InvalidArgumentError("an ADMIN text has no byte below 0x20")
    all_, by_tenant = bool(flags & ADMIN_F_ALL), bool(flags & ADMIN_F_TENANT)
    if op == AdminOp.CLEAR:
        bad = (all_ and by_tenant) or n_tokens or text
    elif op in (AdminOp.EVICT, AdminOp.PIN, AdminOp.UNPIN, AdminOp.EXPLAIN):
        bad = all_ or n_tokens == 0 or text
    elif op == AdminOp.CONFIG:
        bad = flags or n_tokens
    else:
        bad = False
    if bad:
        raise InvalidArgumentError("ADMIN op %d does not take these fields (flags 0x%x, "
                                   "%d tokens, %d bytes of text)"
                                   % (op, flags, n_tokens, len(text)))
    if len(text) > ADMIN_TEXT_MAX:
        raise TooBigError("an ADMIN text is at most %d bytes" % ADMIN_TEXT_MAX)


def encode_admin(op: int, flags: int, tenant: int, tokens: bytes, n_tokens: int,
                 text: bytes) -> bytes:
    """An ADMIN payload (checked by admin_check first)."""
    admin_check(op, flags, tenant, n_tokens, text)
    return (struct.pack("<IIII", op, flags, tenant, n_tokens) + tokens
            + struct.pack("<H", len(text)) + text)


def decode_admin_reply(payload: bytes) -> AdminResult:
    """An ADMIN reply."""
    r = _Reader("ADMIN reply", payload)
    op, blocks = r.u32(), r.u32()
    text_len = r.u32()
    text = r.raw(text_len)
    r.end()
    if text_len > ADMIN_REPLY_TEXT_MAX:
        raise ProtocolError("an ADMIN reply text of %d bytes" % text_len)
    known: Optional[AdminOp] = AdminOp(op) if op in AdminOp._value2member_map_ else None
    return AdminResult(op=known if known is not None else op, blocks=blocks, text=_text(text))


# ---- FLEET (§4.13) ---------------------------------------------------------------------------------

class FleetReply(NamedTuple):
    """A FLEET reply as it came: the request's token count and the engines' matches."""

    prompt_tokens: int
    matches: Tuple[FleetMatch, ...]


def decode_fleet_reply(payload: bytes) -> FleetReply:
    """A FLEET reply: prompt_tokens, then n (at most 64) entries of matched_tokens,
    name_len (at most 255) and name. Names are decoded as UTF-8, any byte that is not
    UTF-8 replaced by U+FFFD. The order (longest match first, equal matches by name
    bytewise) is checked too."""
    r = _Reader("FLEET reply", payload)
    prompt, count = r.u32(), r.u32()
    if count > FLEET_MAX:
        raise ProtocolError("a FLEET reply of %d engines, over %d" % (count, FLEET_MAX))
    entries = []
    for _ in range(count):
        matched, name_len = r.u32(), r.u32()
        if name_len > NAME_MAX:
            raise ProtocolError("a FLEET reply name of %d bytes" % name_len)
        entries.append((matched, r.raw(name_len)))
    r.end()
    for (m1, n1), (m2, n2) in zip(entries, entries[1:]):
        if m2 > m1 or (m2 == m1 and n2 < n1):
            raise ProtocolError("a FLEET reply out of order: %r (%d) before %r (%d)"
                                % (n1, m1, n2, m2))
    return FleetReply(prompt, tuple(FleetMatch(instance=_text(name), matched_tokens=matched)
                                    for matched, name in entries))
