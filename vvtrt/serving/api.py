"""The serving engine's public contract: what a server (or any client) submits and gets back.

    engine = Engine.from_workdir("work", backend="torch", device="cuda", max_streams=64)
    engine.start()                      # the engine thread now owns the GPU
    handle = engine.submit(SpeechRequest(script="Speaker 1: Hello.", voices=(voice,), seed=3))
    for chunk in handle:                # or `async for chunk in handle` in an event loop
        play(chunk.audio)               # float32 [3200] at 24 kHz, one model frame
    summary = handle.summary()          # stop reason, frames, TTFA, RTF
    engine.stop(grace_s=5.0)

Errors are typed (`vvtrt.errors`): a bad request raises `InputError` at `submit`; a full queue raises
`EngineBusy` (HTTP 429), an engine not started/being stopped raises `EngineNotReady` (HTTP 503); a request
that cannot be placed in GPU memory raises `CapacityError` (HTTP 413/507-style refusal, never a crash); a
reader a whole buffer behind holds its request (nothing computed, nothing lost) until it reads on; one that
reads nothing for the stall timeout is cancelled and its iterator raises `SlowReader`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Protocol

import numpy as np

from vvtrt.errors import VvtrtError

SAMPLE_RATE = 24000


class EngineBusy(VvtrtError):
    """The admission queue is full: retry later (HTTP 429 with Retry-After)."""


class EngineNotReady(VvtrtError):
    """The engine is not started, still capturing graphs, or shutting down (HTTP 503)."""


class CapacityError(VvtrtError):
    """The request cannot fit the KV pool / context even when running alone."""


class SlowReader(VvtrtError):
    """The request's reader took nothing from its full buffer for the stall timeout; it was cancelled."""


class Cancelled(VvtrtError):
    """The request was cancelled (by the client, a disconnect, or shutdown)."""


@dataclass(frozen=True)
class VoiceEmbedding:
    """A voice clip already encoded by the acoustic encoder: `embeds [frames, hidden]` (torch tensor on the
    engine device, model dtype) plus the clip's sha256, so servers can cache encoded voices."""
    embeds: Any
    sha256: str
    seconds: float


@dataclass(frozen=True)
class SpeechRequest:
    """One independent request. `voices`: one per speaker in order of first appearance, each a wav path,
    a float32 24 kHz mono array, or a `VoiceEmbedding`. `frames`: forced frame count (random-weight models
    never choose to speak); otherwise the model decides until eos, `max_frames` or the length cap."""
    script: str
    voices: tuple = ()
    seed: int = 0
    cfg_scale: float = 1.3
    max_frames: int | None = None
    frames: int | None = None
    request_id: str | None = None  # assigned by the engine when None
    # parity/testing: the control token of each LLM step ("speech_diffusion", "speech_end", ...), as
    # `Synthesizer.generate(decisions=...)`; excludes `frames`
    decisions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Chunk:
    index: int          # 0-based frame index within the request
    audio: np.ndarray   # float32 [3200], 24 kHz mono
    t: float            # time.perf_counter() when the engine handed it out


@dataclass
class RequestSummary:
    request_id: str
    stop_reason: str = ""        # "eos", "max frames", "frame budget", "length limit", "cancelled", "error: ..."
    frames: int = 0
    prompt_tokens: int = 0
    submitted_t: float = 0.0     # perf_counter at submit
    started_t: float = 0.0       # perf_counter when prefill began (queueing = started_t - submitted_t)
    first_chunk_t: float = 0.0
    finished_t: float = 0.0
    chunk_gaps_s: list[float] = field(default_factory=list)

    @property
    def ttfa_s(self) -> float:
        return self.first_chunk_t - self.submitted_t if self.first_chunk_t else float("nan")

    @property
    def audio_seconds(self) -> float:
        return self.frames * 3200 / SAMPLE_RATE

    @property
    def rtf(self) -> float:
        wall = self.finished_t - self.submitted_t
        return wall / self.audio_seconds if self.audio_seconds else float("inf")


class RequestHandle(Protocol):
    request_id: str

    def __iter__(self) -> Iterator[Chunk]: ...

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    def cancel(self) -> None: ...

    def done(self) -> bool: ...

    def summary(self) -> RequestSummary: ...


@dataclass(frozen=True)
class EngineStats:
    ready: bool
    active: int            # requests in slots
    queued: int            # admitted, waiting for a slot
    max_streams: int
    frames_total: int      # frames handed out since start
    prefill_tokens_total: int
    requests_by_outcome: dict  # stop reason -> count
    healthy: bool = True   # False after consecutive failed device steps (the engine refuses work)
    held: int = 0          # running requests held because their reader is a buffer behind
    step_failures: int = 0  # failed device steps since start


class EngineAPI(Protocol):
    def start(self) -> None: ...

    def stop(self, grace_s: float = 5.0) -> None: ...

    @property
    def ready(self) -> bool: ...

    def submit(self, request: SpeechRequest) -> RequestHandle: ...

    def encode_voice(self, wav: np.ndarray) -> VoiceEmbedding: ...

    def stats(self) -> EngineStats: ...
