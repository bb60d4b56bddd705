"""A GENERATE in progress: an iterator over its tokens as they stream in.

The daemon answers a GENERATE with token frames (each one or more token ids), then
exactly one GENERATE_DONE or one ERROR (docs/protocol.md §4.9 - §4.11):

    for tok in gen:          # each token id, as its frame arrives
        ...
    gen.done                 # the GENERATE_DONE, as a Usage: counts, finish, times

An ERROR ends the iteration by raising it (the tokens already yielded stand). The
frames are checked against the request as they come: no token after a stop id, no
more than max_new, and a GENERATE_DONE whose counts add up and whose finish agrees
with the last token; a frame that breaks this is a ProtocolError and closes the
client.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Deque, Iterator, List, Optional

from . import _wire
from .errors import KvprefixError, ProtocolError
from .results import Finish, Usage

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Generation"]


class Generation(Iterator[int]):
    """The tokens of one GENERATE, yielded as they arrive (made by
    :meth:`Client.generate`).

    Attributes:
        req_id: the request's id on its connection.
        tokens: the token ids yielded so far.
        done: the :class:`Usage` of the GENERATE_DONE once the iteration has ended
            normally; None before, and when it ended with an error.
        error: the :class:`KvprefixError` that ended the iteration, or None.

    Iterating reads frames from the client's connection, waiting at most the client's
    timeout for each. A timeout (:class:`TimedOutError`) abandons the generation: its
    remaining frames are dropped by later calls. Leaving a ``with`` block, :meth:`close`
    or dropping the object abandons it the same way when it has not ended.
    """

    def __init__(self, client: "Client", req_id: int, params: _wire.GenerateParams,
                 n_prompt: int) -> None:
        self.req_id = req_id
        self.tokens: List[int] = []
        self.done: Optional[Usage] = None
        self.error: Optional[KvprefixError] = None
        self._client: Optional["Client"] = client
        self._params = params
        self._n_prompt = n_prompt
        self._ready: Deque[int] = deque()   # tokens received, not yet yielded
        self._streamed = 0                  # tokens received in all
        self._stopped = False               # the last token received is a stop id
        self._finalizer = weakref.finalize(self, client._abandon, req_id)

    @property
    def finished(self) -> bool:
        """True once the generation has ended: done, failed or abandoned."""
        return self._client is None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> int:
        while not self._ready:
            client = self._client
            if client is None:
                raise StopIteration
            try:
                self._step(client)
            except KvprefixError as e:
                self.error = e
                self.close()
                raise
        tok = self._ready.popleft()
        self.tokens.append(tok)
        return tok

    def wait(self) -> Usage:
        """Read the generation to its end (the tokens still to come go to
        :attr:`tokens`) and return its :class:`Usage`; raise its error."""
        for _ in self:
            pass
        if self.error is not None:
            raise self.error
        if self.done is None:
            raise KvprefixError("the generation was abandoned", 9)
        return self.done

    def close(self) -> None:
        """Stop the iteration. A generation that has not ended is abandoned: the tokens
        received but not yet yielded are dropped, and so are the frames still to come,
        by the client's later calls. Idempotent."""
        if self._client is not None:
            self._client = None
            self._ready.clear()
            self._finalizer()

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self.error else \
            "abandoned" if self._client is None else "running"
        return "<kvprefix.Generation %d: %d tokens, %s>" % (self.req_id, len(self.tokens), state)

    # ---- frames -------------------------------------------------------------------------

    def _end(self, client: "Client") -> None:
        self._client = None
        self._finalizer.detach()
        client._generation_end(self.req_id)

    def _step(self, client: "Client") -> None:
        """Read one frame: queue its tokens, or end the generation."""
        h, payload = client._generation_frame(self.req_id)
        if h.type == _wire.T_GENERATE_TOKENS:
            self._tokens(client, client._decode(_wire.decode_token_chunk, payload))
            return
        self._end(client)
        if h.type == _wire.T_ERROR:
            raise client._error(payload)
        if h.type != _wire.T_GENERATE_DONE:
            raise client._fail("a frame of type 0x%02x in a GENERATE's answer" % h.type)
        self.done = self._check_done(client, client._decode(_wire.decode_generate_done, payload))

    def _broken(self, client: "Client", why: str) -> ProtocolError:
        self._end(client)
        return client._fail(why)

    def _tokens(self, client: "Client", ids: "tuple[int, ...]") -> None:
        p = self._params
        if len(ids) > p.max_new - self._streamed:
            raise self._broken(client, "%d tokens after %d, over max_new %d"
                               % (len(ids), self._streamed, p.max_new))
        for tok in ids:
            if self._stopped:
                raise self._broken(client, "token %d after a stop id" % tok)
            self._stopped = tok in p.stop
        self._streamed += len(ids)
        self._ready.extend(ids)

    def _check_done(self, client: "Client", d: Usage) -> Usage:
        """The GENERATE_DONE must add up with the request and what was streamed."""
        p = self._params
        if d.prompt_tokens != self._n_prompt or d.generated_tokens != self._streamed:
            raise self._broken(client, "GENERATE_DONE counts %d prompt and %d generated "
                               "tokens; %d and %d were sent"
                               % (d.prompt_tokens, d.generated_tokens, self._n_prompt,
                                  self._streamed))
        if d.cached_tokens + d.computed_tokens != d.prompt_tokens or d.computed_tokens == 0:
            raise self._broken(client, "GENERATE_DONE: %d cached + %d computed tokens are "
                               "not the prompt's %d (with at least 1 computed)"
                               % (d.cached_tokens, d.computed_tokens, d.prompt_tokens))
        if d.logits is not None and not p.flags & _wire.GEN_LOGITS:
            raise self._broken(client, "GENERATE_DONE carries logits that were not asked for")
        if d.finish == Finish.STOP:
            ok = self._stopped
        elif d.finish == Finish.LENGTH:
            ok = not self._stopped and self._streamed == p.max_new
        else:
            ok = not self._stopped and self._streamed < p.max_new
        if not ok:
            raise self._broken(client, "GENERATE_DONE says finish %s after %d of at most %d "
                               "tokens%s" % (d.finish.name.lower(), self._streamed, p.max_new,
                                             ", the last a stop id" if self._stopped
                                             else ", none a stop id"))
        return d
