"""`StreamHandle`: one request's bounded output buffer between the engine thread and its reader.

The engine thread `push`es chunks and never blocks. When the buffer is full the engine holds the request's
run (it computes nothing until the reader takes a chunk), so a listener playing at real time receives every
frame and one slow reader never stalls the other streams; a reader that takes nothing for the stall timeout
is cancelled (`SlowReader`). Readers iterate with a plain
`for` (blocking, any thread) or `async for` (asyncio: the engine wakes the event loop with
`call_soon_threadsafe`, so the loop never blocks on the engine).
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import AsyncIterator, Callable, Iterator

from vvtrt.errors import VvtrtError
from vvtrt.serving.api import Chunk, RequestSummary, SpeechRequest


class StreamHandle:
    """The `RequestHandle` the engine returns from `submit`."""

    def __init__(self, request_id: str, request: SpeechRequest, max_buffered: int,
                 on_cancel: Callable[["StreamHandle"], None],
                 on_read: Callable[["StreamHandle"], None] | None = None):
        self.request_id = request_id
        self.request = request
        self.max_buffered = max_buffered
        self._on_cancel = on_cancel
        self._summary = RequestSummary(request_id, submitted_t=time.perf_counter())
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._cond = threading.Condition()
        self._finished = False
        self._error: VvtrtError | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_read = on_read
        self.last_read = time.monotonic()  # the reader's last progress (flow control)
        # engine-side bookkeeping (engine thread only)
        self.work = None  # the stepper's prepared request until it is admitted
        self.slot: int | None = None  # the slot it was admitted to
        self.held = False
        self.held_since = 0.0

    # -- engine side ------------------------------------------------------------------------------
    def push(self, chunk: Chunk, wakes: list | None = None) -> bool:
        """Buffer one chunk; False if the buffer is full (the reader fell behind) or the request ended. With
        `wakes`, the waiting readers are added to it for one `wake_all` after a whole step's chunks, instead
        of one cross-thread wake-up per stream."""
        with self._cond:
            if self._finished:
                return True  # cancelled meanwhile: the engine frees the slot at the next boundary
            if len(self._chunks) >= self.max_buffered:
                return False
            s = self._summary
            if s.frames:
                s.chunk_gaps_s.append(chunk.t - self._last_t)
            else:
                s.first_chunk_t = chunk.t
            self._last_t = chunk.t
            s.frames += 1
            self._chunks.append(chunk)
            self._cond.notify_all()
            if wakes is not None:
                wakes.extend(self._waiters)
                self._waiters = []
        if wakes is None:
            self._wake()
        return True

    def finish(self, stop_reason: str, error: VvtrtError | None = None) -> bool:
        """End the request (idempotent: the first reason wins). A client's or the engine's error is raised
        to the reader after the chunks already buffered (`Cancelled`: at once). True if this call ended it."""
        from vvtrt.serving.api import Cancelled

        with self._cond:
            if self._finished:
                return False
            self._finished = True
            self._error = error
            self._summary.stop_reason = stop_reason
            self._summary.finished_t = time.perf_counter()
            if isinstance(error, Cancelled):
                self._chunks.clear()
            self._cond.notify_all()
        self._wake()
        return True

    def started(self, prompt_tokens: int) -> None:
        self._summary.started_t = time.perf_counter()
        self._summary.prompt_tokens = prompt_tokens
        self._wake()  # a reader serving many handles (`next_or_wait`) hears it; async readers find no chunk yet

    @property
    def is_started(self) -> bool:
        return bool(self._summary.started_t)

    def _wake(self) -> None:
        with self._cond:
            waiters, self._waiters = self._waiters, []
        wake_all(waiters)

    # -- reader side ------------------------------------------------------------------------------
    def _next_or_none(self) -> Chunk | None:
        """A buffered chunk, None if none yet; raises StopIteration/the error once the request ended."""
        if self._chunks:
            self.last_read = time.monotonic()
            chunk = self._chunks.popleft()
            if self._on_read is not None:
                self._on_read(self)
            return chunk
        if self._finished:
            if self._error is not None:
                raise self._error
            raise StopIteration
        return None

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._chunks or self._finished)
                try:
                    chunk = self._next_or_none()
                except StopIteration:
                    return
            yield chunk

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            with self._cond:
                try:
                    chunk = self._next_or_none()
                except StopIteration:
                    return
                if chunk is None:
                    self._waiters.append((loop, event))
            if chunk is None:
                await event.wait()
                continue
            yield chunk

    def next_or_wait(self, waiter) -> Chunk | None:
        """Without blocking: the next buffered chunk, or None after registering `waiter`, a `(loop, event)` pair
        as an async reader's (`loop.call_soon_threadsafe` is called at the start, the next push or the end); raises
        StopIteration / the request's error once it ended and its buffer is empty. For a reader that serves
        many handles from one thread (the engine process of `vvtrt serve --engine-process`)."""
        with self._cond:
            chunk = self._next_or_none()
            if chunk is None:
                self._watch(waiter)
            return chunk

    def watch(self, waiter) -> None:
        """Register `waiter` (as `next_or_wait`) without taking a chunk."""
        with self._cond:
            self._watch(waiter)

    def _watch(self, waiter) -> None:
        if waiter not in self._waiters:
            self._waiters.append(waiter)

    def cancel(self) -> None:
        """Stop the request (the client's call, e.g. on disconnect); its slot is freed at the next frame."""
        self._on_cancel(self)

    def done(self) -> bool:
        with self._cond:
            return self._finished

    def buffered(self) -> int:
        with self._cond:
            return len(self._chunks)

    def summary(self) -> RequestSummary:
        with self._cond:
            s = self._summary
            return RequestSummary(s.request_id, s.stop_reason, s.frames, s.prompt_tokens, s.submitted_t, s.started_t,
                                  s.first_chunk_t, s.finished_t, list(s.chunk_gaps_s))


def wake_all(waiters) -> None:
    """Set the asyncio events of `(loop, event)` waiters: one `call_soon_threadsafe` per event loop."""
    by_loop: dict = {}
    for loop, event in waiters:
        by_loop.setdefault(loop, []).append(event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:  # that event loop is closed: its readers are gone
            pass


def _set_all(events) -> None:
    for event in events:
        event.set()
