"""The host side of one Realtime stream: its request, its text (arriving as a string, an iterator or an
async iterator of pieces, never blocking the batch it runs in), its host noise (drawn from its own seed) and
its end (stop reason).

Text. A `PieceSource` is a thread-safe queue of pieces that a `TextFeed` (the reference loop's own
tokenization, so the ids equal the whole text's) pulls from; when the queue is empty but the text has not
ended, the pull raises `Starved`, `TextFeed.take` leaves its state as it was, and the stream simply waits
for its window while the other streams go on. Pieces come from a feeder thread (a plain iterator), a
task on the caller's event loop (an async iterator, `attach_async`) or at once (a string, a list).

Noise, when the loop draws it on the host (`FrameNoise`). Per frame `randn(64)` and, for
`sde-dpmsolver++`, `randn(K, 64)` from `torch.Generator().manual_seed(seed)`, exactly the reference's
`SeededNoise`, drawn `BLOCK` frames at a time (one draw of n·64 normals equals n draws of 64 on the CPU
generator), or an injected `NoiseSource` (parity). A loop that draws noise on the device needs none.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vvtrt.errors import InputError
from vvtrt.realtime.config import TEXT_WINDOW
from vvtrt.realtime.reference import LoopOptions, NoiseSource
from vvtrt.realtime.text_feed import TextFeed
from vvtrt.realtime.voices import VoicePreset

BLOCK = 64  # frames of seeded noise drawn at once


class Starved(Exception):
    """The text has not ended but no piece is queued yet."""


class PieceSource:
    """Pieces of text pushed by a producer, pulled (never blocking) by a `TextFeed`."""

    def __init__(self, wake: threading.Event | None = None):
        self._q: deque = deque()
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.wake = wake or threading.Event()
        self._on_change = None

    def __reduce__(self):
        """Pickles to a fresh, open, empty text of its class (a request sent to another process: its
        pieces follow as messages)."""
        return (type(self), ())

    def push(self, piece) -> None:
        with self._lock:
            self._q.append(piece)
        self._changed()

    def close(self, error: BaseException | None = None) -> None:
        with self._lock:
            self._closed, self._error = True, error
        self._changed()

    def follow(self, on_change) -> None:
        """Call `on_change()` after every later push and the close, on the pusher's thread (a reader that
        pulls with `poll` then, without a thread of its own waiting on the text)."""
        self._on_change = on_change

    def poll(self):
        """The next piece without waiting: None while none is queued; StopIteration (or the text's error)
        once it ended."""
        try:
            return PieceSource.__next__(self)
        except Starved:
            return None

    def _changed(self) -> None:
        self.wake.set()
        if self._on_change is not None:
            self._on_change()

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self._q:
                return self._q.popleft()
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopIteration
        raise Starved()


def _is_async(text) -> bool:
    return hasattr(text, "__aiter__")


def attach_text(text, source: PieceSource) -> None:
    """Start feeding `text` (a string, a sequence, an iterator of strings, or an async iterator: then
    on a private event loop in a thread; see `attach_async` to use the caller's loop) into `source`."""
    if isinstance(text, str):
        source.push(text)
        source.close()
    elif isinstance(text, (list, tuple)):
        for piece in text:
            source.push(piece)
        source.close()
    elif _is_async(text):
        threading.Thread(target=lambda: asyncio.run(_pump_async(text, source)), daemon=True,
                         name="rt-text-async").start()
    elif hasattr(text, "__iter__"):
        threading.Thread(target=_pump, args=(iter(text), source), daemon=True, name="rt-text").start()
    else:
        raise InputError(f"text must be a string or an (async) iterable of strings, got {type(text).__name__}")


def attach_async(text, source: PieceSource, loop: asyncio.AbstractEventLoop) -> None:
    """Feed an async iterator of pieces into `source` from a task on `loop` (the caller's)."""
    asyncio.run_coroutine_threadsafe(_pump_async(text, source), loop)


def _pump(it, source: PieceSource) -> None:
    try:
        for piece in it:
            if source.closed:
                return
            source.push(piece)
        source.close()
    except Exception as exc:  # noqa: BLE001 - the producer's failure ends its stream, not the batch
        source.close(InputError(f"the text iterator failed: {type(exc).__name__}: {exc}"))


async def _pump_async(ait, source: PieceSource) -> None:
    try:
        async for piece in ait:
            if source.closed:
                return
            source.push(piece)
        source.close()
    except Exception as exc:  # noqa: BLE001
        source.close(InputError(f"the text iterator failed: {type(exc).__name__}: {exc}"))


class FrameNoise:
    """Noise of one stream, frame after frame: `next() -> (noise [Z], step_noise [K, Z] | None)` fp32."""

    def __init__(self, seed: int, dim: int, steps: int, stochastic: bool, injected: NoiseSource | None = None):
        self.dim, self.steps, self.stochastic = dim, steps, stochastic
        self.per_frame = dim * (1 + steps if stochastic else 1)
        self.injected = injected
        self.gen = torch.Generator().manual_seed(int(seed)) if injected is None else None
        self._block: np.ndarray | None = None
        self._at = BLOCK
        self.frame = 0

    def next(self) -> tuple[np.ndarray, np.ndarray | None]:
        i, self.frame = self.frame, self.frame + 1
        if self.injected is not None:
            noise, step = self.injected.frame(i)
            if self.stochastic and step is None:
                raise InputError("sde-dpmsolver++ needs injected step noise [frames, K, 64] too")
            return np.asarray(noise, np.float32), np.asarray(step, np.float32) if self.stochastic else None
        if self._at == BLOCK:
            self._block = torch.randn(BLOCK * self.per_frame, generator=self.gen).numpy().reshape(BLOCK, -1)
            self._at = 0
        row, self._at = self._block[self._at], self._at + 1
        if not self.stochastic:
            return row, None
        return row[:self.dim], row[self.dim:].reshape(self.steps, self.dim)


@dataclass(frozen=True)
class StreamRequest:
    """One stream: text (see `attach_text`), a voice, the seed of its noise, loop options, optionally
    injected noise (parity) and a tag the caller gets back with every chunk."""

    text: Any
    voice: VoicePreset
    seed: int = 0
    options: LoopOptions = LoopOptions()
    noise: NoiseSource | None = None
    tag: Any = None


@dataclass
class StreamRun:
    """A stream on the host; the device holds its caches (slot `slot`) and the `RealtimeStepper` its
    lengths and frame counter while it runs (`frames` is brought up to date when it ends). `noise`: its
    host noise (None when the loop draws noise on the device)."""

    request: StreamRequest
    feed: TextFeed
    source: PieceSource
    noise: FrameNoise | None
    slot: int = -1
    frames: int = 0
    text_done: bool = False
    stop_reason: str = ""
    error: BaseException | None = None

    def take_window(self) -> list[int] | None:
        """At a window boundary while text remains: the window's ids ([] when the text is used up), or
        None when its 5 tokens have not arrived yet (the stream waits)."""
        try:
            ids = self.feed.take(TEXT_WINDOW)
        except Starved:
            return None
        if not ids:
            self.text_done = True
        return ids
