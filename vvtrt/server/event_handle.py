"""The front's handle on a request that runs in another process: the engine's `RequestHandle` contract
(async iteration of chunks, `cancel`, `done`, `summary`) over that process's stream of tagged events, so
the server's endpoints use it unchanged. Transport-neutral: a Ray replica of `serve --ray` and the engine
process of `serve --engine-process` each give it a *source* of events.

    ("refused", error_type, message)         the engine did not take the request (busy, bad input...)
    ("started",) or ("started", prompt_tokens)  the request holds a slot now
    ("chunk", index, audio float32 [3200])   one model frame
    ("end", stop_reason, error_type | None, message)

A source has `async next()` (the next event; None once its stream ended; raises `EngineLost` when the
process died or became unreachable) and `cancel()` (stop the request over there). Times are the front's
own (submit, start, each chunk's arrival). A process that dies mid-stream ends the stream with its
`EngineLost` (a failed request: the server's truncation signal); one that refuses the request before it
starts hands the engine's typed error to the admission (`refusal`: 429, 400, 503...).
"""
from __future__ import annotations

import asyncio
import time

from vvtrt.errors import VvtrtError
from vvtrt.serving.api import Cancelled, Chunk, RequestSummary

BACKPRESSURE_CHUNKS = 8   # chunks the remote engine runs ahead of the front's reader (then its own buffer holds it)


class EngineLost(VvtrtError):
    """The process running a request died or became unreachable."""


def error_of(type_name: str | None, message: str):
    """The engine's typed error named `type_name` (a `VvtrtError` for any other name)."""
    from vvtrt import errors
    from vvtrt.serving import api

    cls = getattr(api, type_name or "", None) or getattr(errors, type_name or "", None)
    if not (isinstance(cls, type) and issubclass(cls, VvtrtError)):
        cls = VvtrtError
    return cls(message)


def start_error_line(exc: BaseException) -> str:
    """An engine's start-up failure as the one line the front reports: a `VvtrtError`'s own message, any
    other error with its type."""
    return str(exc) if isinstance(exc, VvtrtError) else f"{type(exc).__name__}: {exc}"


def request_on_device(request, device):
    """`request` with its encoded voices on the engine's `device` (the front holds them on the CPU)."""
    import dataclasses

    if not getattr(request, "voices", None):  # none, or a request of one named voice (Realtime)
        return request
    voices = tuple(dataclasses.replace(v, embeds=v.embeds.to(device)) if hasattr(v, "embeds") else v
                   for v in request.voices)
    return dataclasses.replace(request, voices=voices)


class EventHandle:
    """`RequestHandle` over a source of events (see module doc). `where` names the process in messages
    ("replica r0", "the engine process"); `replica`, when given, is the `x-vvtrt-replica` header."""

    def __init__(self, request_id: str, source, on_end, where: str, replica: str | None = None,
                 lost_error: type = EngineLost):
        self.request_id = request_id
        self.replica = replica
        self.where = where
        self._source = source
        self._on_end = on_end
        self._lost_error = lost_error
        self._summary = RequestSummary(request_id, submitted_t=time.perf_counter())
        self._done = False
        self._error: VvtrtError | None = None
        self._last_t = 0.0
        self.refusal: VvtrtError | None = None   # the engine did not take it (raised at admission)
        self.lost = False                        # the process died or became unreachable meanwhile
        self._start = asyncio.ensure_future(self._await_start())

    def moved(self, request_id: str, where: str, replica: str | None = None) -> None:
        """The source handed the request, before its first event, to another process (`serve --ray`)."""
        self.request_id = self._summary.request_id = request_id
        self.where, self.replica = where, replica

    async def _next(self):
        """The source's next event (None once it ended); its `EngineLost` if the process died."""
        try:
            return await self._source.next()
        except EngineLost:
            self.lost = True
            raise

    async def _await_start(self) -> None:
        try:
            event = await self._next()
        except EngineLost as exc:
            event = ("refused", "EngineNotReady", f"{exc}: retry")
        if event is None or event[0] != "started":
            kind, message = ("EngineNotReady", "")
            if event and event[0] == "refused":
                kind, message = event[1], event[2]
            elif event and event[0] == "end" and event[2]:  # it ended in the queue (e.g. the engine stopped)
                kind, message = event[2], event[3]
            self.refusal = error_of(kind, message or f"{self.where} did not start the request: retry")
            self._finish("refused", self.refusal)
            return
        self._summary.started_t = time.perf_counter()
        if len(event) > 1:
            self._summary.prompt_tokens = int(event[1])

    async def __aiter__(self):
        await asyncio.shield(self._start)
        if self.refusal is not None:
            raise self.refusal
        try:
            while not self._done:
                try:
                    event = await self._next()
                except EngineLost as exc:
                    self._finish(f"error: {type(exc).__name__}", exc)
                    break
                if event is None:
                    lost = self._lost_error(f"{self.where} ended request {self.request_id} without its end")
                    self._finish(f"error: {type(lost).__name__}", lost)
                elif event[0] == "chunk":
                    yield self._chunk(event[1], event[2])
                elif event[0] == "end":
                    self._finish(event[1], error_of(event[2], event[3]) if event[2] else None)
        except BaseException:  # the reader went away (a disconnect): the remote run stops too
            self.cancel()
            raise
        if self._error is not None:
            raise self._error

    def _chunk(self, index: int, audio) -> Chunk:
        s, now = self._summary, time.perf_counter()
        if s.frames:
            s.chunk_gaps_s.append(now - self._last_t)
        else:
            s.first_chunk_t = now
        self._last_t, s.frames = now, s.frames + 1
        return Chunk(index, audio, now)

    def _finish(self, stop_reason: str, error: VvtrtError | None = None) -> bool:
        if self._done:
            return False
        self._done = True
        self._error = error
        self._summary.stop_reason = stop_reason
        self._summary.finished_t = time.perf_counter()
        self._on_end(self)
        return True

    def cancel(self) -> None:
        """Stop the request here and in its process."""
        if self._finish("cancelled", Cancelled(f"request {self.request_id} was cancelled")):
            self._start.cancel()
            self._source.cancel()

    def done(self) -> bool:
        return self._done

    def summary(self) -> RequestSummary:
        s = self._summary
        return RequestSummary(s.request_id, s.stop_reason, s.frames, s.prompt_tokens, s.submitted_t, s.started_t,
                              s.first_chunk_t, s.finished_t, list(s.chunk_gaps_s))
