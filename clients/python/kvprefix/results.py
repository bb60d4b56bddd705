"""What the daemon answers, as Python values: the HELLO reply, a LOOKUP or INSERT
match, a generation's usage, an ADMIN reply and a FLEET reply's engines, with the
protocol's enumerations (finish reasons, ADMIN ops). Plain immutable data;
docs/protocol.md §4 gives the exact meaning of every field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["Finish", "AdminOp", "ServerInfo", "Match", "Usage", "AdminResult", "FleetMatch"]


class Finish(enum.IntEnum):
    """Why a generation ended (GENERATE_DONE ``finish``, §4.11)."""

    LENGTH = 0
    """``max_new`` tokens were generated (also when ``max_new`` is 0)."""
    STOP = 1
    """The last token generated is one of the stop ids."""
    CONTEXT = 2
    """The model's context is full."""


class AdminOp(enum.IntEnum):
    """The ops of an ADMIN request (§4.12)."""

    CLEAR = 1
    """Evict every unpinned cached block of a namespace (or, with ``all``, of all)."""
    EVICT = 2
    """Evict a cached prefix and what extends it."""
    PIN = 3
    """Pin a cached prefix until UNPIN or until the daemon stops."""
    UNPIN = 4
    """Remove one PIN of a prefix."""
    CONFIG = 5
    """List, show or set the daemon's options."""
    EXPLAIN = 6
    """Say what became of each block of a prompt (why it missed)."""


@dataclass(frozen=True)
class ServerInfo:
    """The HELLO reply (§4.2): what the daemon serves to this connection.

    Attributes:
        version: the protocol version both sides speak (1 to 4).
        block_tokens: tokens per cache block (``B``).
        capacity_blocks: blocks in the daemon's pool.
        max_tokens: most tokens one LOOKUP, INSERT or GENERATE may carry.
        index_only: True when the daemon runs without an engine (no GENERATE).
        tenant: the tenant id of the connection (its uid, or 0xFFFFFFFF with a salt).
        name: the index name (index-only) or the model name (engine mode).
        vocab_size: the model's vocabulary size (prompt token ids are below it); 0 in
            index-only mode; None when the reply's version is below 3 (the fields are
            in the replies of versions 3 and 4).
        ctx_tokens: the model's context length (prompt plus generated tokens); 0 in
            index-only mode; None when the reply's version is below 3.
    """

    version: int
    block_tokens: int
    capacity_blocks: int
    max_tokens: int
    index_only: bool
    tenant: int
    name: str
    vocab_size: Optional[int] = None
    ctx_tokens: Optional[int] = None


@dataclass(frozen=True)
class Match:
    """A LOOKUP or INSERT reply (§4.4).

    Attributes:
        matched_tokens: LOOKUP: tokens of the cached prefix; INSERT: tokens of the
            prefix cached now. A multiple of ``block_tokens``.
        prompt_tokens: the tokens sent.
        new_blocks: INSERT: blocks this call added; LOOKUP: 0.
        lease: the lease pinning the prefix when ``pin`` was asked and at least one
            block matched; otherwise 0. Give it to ``Client.release``.
        block_ids: the pool block ids of the prefix, first block first.
    """

    matched_tokens: int
    prompt_tokens: int
    new_blocks: int
    lease: int
    block_ids: Tuple[int, ...]

    @property
    def cached_tokens(self) -> int:
        """The same as :attr:`matched_tokens` (the name INSERT's reply gives it)."""
        return self.matched_tokens


@dataclass(frozen=True)
class Usage:
    """GENERATE_DONE (§4.11): how a generation's prompt was served and why it ended.

    Attributes:
        prompt_tokens: tokens of the prompt.
        cached_tokens: prompt positions whose KV came from the cache.
        computed_tokens: prompt positions the engine ran (``prompt - cached``, >= 1).
        generated_tokens: tokens generated (those the iterator yielded).
        finish: why generation ended.
        ttft_us: microseconds from the whole request to the first token ready.
        prefill_us: engine microseconds on the prompt.
        decode_us: engine microseconds on the later tokens.
        logits: the raw logits of the last prompt position, indexed by token id, when
            ``logits=True`` was asked; otherwise None.
    """

    prompt_tokens: int
    cached_tokens: int
    computed_tokens: int
    generated_tokens: int
    finish: Finish
    ttft_us: int
    prefill_us: int
    decode_us: int
    logits: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class AdminResult:
    """An ADMIN reply (§4.12).

    Attributes:
        op: the op that was done (an :class:`AdminOp`).
        blocks: CLEAR, EVICT: blocks evicted; PIN: blocks pinned; UNPIN: blocks
            unpinned; CONFIG: 0.
        text: CONFIG: ``key = value`` lines, each ending with a newline; other ops: empty
            or a note for people.
    """

    op: int
    blocks: int
    text: str


@dataclass(frozen=True)
class FleetMatch:
    """One engine of a FLEET reply (§4.13): how much of the asked tokens it has cached.

    Attributes:
        instance: the engine's name: the ``ID`` of its KV events' topic ``kv@ID@MODEL``,
            else the whole topic, else the endpoint it publishes on. The daemon sends
            bytes; they are decoded as UTF-8, a byte that is not UTF-8 replaced by
            U+FFFD.
        matched_tokens: the leading tokens of the request that engine has cached: a
            multiple of the fleet index's ``block_tokens``, 0 when none.
    """

    instance: str
    matched_tokens: int
