"""`RealtimeEngine`: the serving engine (`vvtrt.serving.api.EngineAPI`) for VibeVoice-Realtime.

    engine = RealtimeEngine(RealtimeRunner.from_preset("tiny-realtime"), voices={"default": voice})
    engine.start()                                  # the engine thread now owns the device
    text = TextInput()                              # or a whole string, or any (async) iterable of pieces
    handle = engine.submit(RealtimeSpeechRequest(text, voice="default", seed=3))
    text.push("Hello there, "); text.push("this arrives while speech is made."); text.close()
    for chunk in handle: play(chunk.audio)          # float32 [3200] at 24 kHz, from the first text window

The long-form `Engine`'s lifecycle, admission queue (`EngineBusy`, `EngineNotReady`), cancellation and
slow-reader handling, driving a `RealtimeStepper` (one frame per tick for every stream whose text allows
it) instead of the long-form slot stepper. Each request's audio depends only on its text, voice, seed and
cfg_scale; requests with different cfg_scale run together (each slot keeps its own guidance scale), and
queued requests take free slots first come, first served.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from vvtrt.errors import InputError, VvtrtError
from vvtrt.realtime.reference import LoopOptions
from vvtrt.realtime.streams import PieceSource, Starved, StreamRequest
from vvtrt.realtime.text_feed import normalize_text
from vvtrt.realtime.voices import VoicePreset, check_voice
from vvtrt.serving.api import Chunk, EngineStats, SpeechRequest
from vvtrt.serving.engine import Engine
from vvtrt.serving.handle import StreamHandle

log = logging.getLogger(__name__)
_ids = itertools.count(1)
SEED_LIMIT = 2 ** 63


@dataclass(frozen=True)
class RealtimeEngineConfig:
    """`max_streams`: slots of the loop (clamped to what exported graphs take); `max_queue`: requests
    waiting for a slot; `buffer_chunks`: a request's output buffer (a reader further behind is cancelled);
    `steps` / `solver`: the sampler every request runs; `capacity`: cache positions a stream may use
    (None: the model's context); `capture`: capture the loop's CUDA graphs at start (else at first use)."""

    max_streams: int = 64
    max_queue: int = 256
    buffer_chunks: int = 256
    steps: int = 5
    solver: str = "dpmsolver++"
    capacity: int | None = None
    capture: bool = True

    def __post_init__(self):
        from vvtrt.option_checks import check_counts

        check_counts(self, ("max_streams", "max_queue", "buffer_chunks", "steps"))
        LoopOptions(steps=self.steps, algorithm=self.solver)  # an unknown solver is an InputError


@dataclass(frozen=True)
class RealtimeSpeechRequest:
    """`text`: a string, a `TextInput`, or an (async) iterable of string pieces; `voice`: a `VoicePreset`,
    the name of one of the engine's voices, or None (its default). `max_frames`: a frame cap; `frames`:
    stop after this many frames as if EOS fired (random-weight models never stop on their own)."""

    text: Any
    voice: Any = None
    seed: int = 0
    cfg_scale: float = 1.5
    max_frames: int | None = None
    frames: int | None = None
    request_id: str | None = None


class TextInput(PieceSource):
    """Text a producer pushes while speech is made (`push` pieces from any thread, then `close`); the
    engine reads it as a blocking iterator of pieces. Pieces pushed after `close` (or after the request
    ended) are dropped."""

    def push(self, piece: str) -> bool:
        """Queue `piece`; False if the text was closed already."""
        if not isinstance(piece, str):
            raise InputError(f"text pieces must be strings, got {type(piece).__name__}")
        if self.closed:
            return False
        super().push(piece)
        return True

    def __next__(self) -> str:
        while True:
            self.wake.clear()
            try:
                return super().__next__()
            except Starved:
                self.wake.wait()


def _as_realtime(request) -> RealtimeSpeechRequest:
    if isinstance(request, RealtimeSpeechRequest):
        return request
    if isinstance(request, SpeechRequest):  # the long-form shape: its script is the text, one voice at most
        if len(request.voices) > 1:
            raise InputError("Realtime speaks with one voice: give one voice")
        return RealtimeSpeechRequest(request.script, request.voices[0] if request.voices else None, request.seed,
                                     request.cfg_scale, request.max_frames, request.frames, request.request_id)
    raise InputError(f"submit takes a RealtimeSpeechRequest, got {type(request).__name__}")


def _check_request(r: RealtimeSpeechRequest) -> None:
    from vvtrt.option_checks import check_cfg, check_counts

    check_counts(r, ("max_frames", "frames"), optional=True)
    if not isinstance(r.seed, int) or isinstance(r.seed, bool) or not 0 <= r.seed < SEED_LIMIT:
        raise InputError(f"seed must be a non-negative integer below 2**63, got {r.seed!r}")
    check_cfg(r.cfg_scale)
    if isinstance(r.text, str) and not normalize_text(r.text).strip():
        raise InputError("the text is empty: give some words to speak")
    if r.text is None or isinstance(r.text, (bytes, dict)):
        raise InputError(f"text must be a string or an (async) iterable of strings, got {type(r.text).__name__}")


class RealtimeEngine(Engine):
    """`EngineAPI` over a `RealtimeRunner` (see module doc). `voices`: name -> `VoicePreset` (checked here);
    `default_voice`: the name used when a request names none (default: the first)."""

    def __init__(self, runner, config: RealtimeEngineConfig = RealtimeEngineConfig(), voices: dict | None = None,
                 default_voice: str | None = None):
        super().__init__(runner, config)
        self.runner = runner
        self.voices: dict[str, VoicePreset] = dict(voices or {})
        for name, voice in self.voices.items():
            check_voice(voice, runner.cfg, f"voice {name!r}")
        self.default_voice = default_voice or next(iter(self.voices), None)
        if self.default_voice is not None and self.default_voice not in self.voices:
            raise InputError(f"default voice {self.default_voice!r} is not one of the engine's voices")
        self.streams = min(config.max_streams, runner.max_streams or config.max_streams)
        self._text_tokens = 0
        self._fed: dict[StreamHandle, int] = {}

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, voices=None,
                     default_voice=None, compile: bool | str = False, **config) -> "RealtimeEngine":
        from vvtrt.realtime.runtime import RealtimeRunner

        runner = RealtimeRunner.from_workdir(path, backend, device, precision, compile=compile)
        return cls(runner, RealtimeEngineConfig(**config), voices, default_voice)

    # -- client side (any thread) -------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.streams < self.config.max_streams:
            log.info("Realtime engine: %d streams (the exported graphs take at most %d)", self.streams,
                     self.runner.max_streams)

    def _new_handle(self, request) -> StreamHandle:
        r = _as_realtime(request)
        _check_request(r)
        voice = self._voice(r.voice)
        opts = LoopOptions(cfg_scale=float(r.cfg_scale), steps=self.config.steps, algorithm=self.config.solver,
                           max_frames=r.max_frames, force_eos_frame=None if r.frames is None else r.frames - 1)
        handle = StreamHandle(r.request_id or f"rt-{next(_ids)}", r, self.config.buffer_chunks, self._cancel)
        handle.plan = StreamRequest(r.text, voice, int(r.seed), opts, tag=handle)
        return handle

    def _voice(self, spec) -> VoicePreset:
        if isinstance(spec, VoicePreset):
            check_voice(spec, self.runner.cfg, f"voice {spec.name!r}")
            voice = spec
        elif spec is None or isinstance(spec, str):
            name = spec or self.default_voice
            if name not in self.voices:
                names = ", ".join(self.voices) or "none"
                raise InputError(f"unknown voice {name!r}: this engine has {names}")
            voice = self.voices[name]
        else:
            raise InputError(f"voice must be a voice name or a VoicePreset, got {type(spec).__name__}")
        longest = max(voice["lm"].length, voice["tts_lm"].length)
        limit = min(self.runner.cfg.context, self.config.capacity or self.runner.capacity)
        if longest >= limit:
            raise InputError(f"voice {voice.name!r} fills {longest} of the {limit} cache positions a stream has")
        return voice

    def encode_voice(self, wav):
        raise InputError("VibeVoice-Realtime speaks with voice presets, not voice clips: import Microsoft's "
                         ".pt presets with `vvtrt voices import` and pass their folder")

    def stats(self) -> EngineStats:
        s = self.stepper
        with self._cond:
            active = len(s.runs) + len(s.pending) if s is not None else 0
            return EngineStats(self._ready, active, len(self._waiting), self.streams, self._frames_total,
                               self._text_tokens, dict(self._outcomes))

    # -- the engine thread --------------------------------------------------------------------------
    def _build(self) -> None:
        c = self.config
        self.stepper = self.runner.checkout(self.streams, c.steps, c.solver, c.capacity)
        loop = self.stepper.loop
        if c.capture and loop.use_graphs:
            loop.capture_buckets()
        log.info("Realtime engine: %d streams, %d cache positions each, K=%d %s, graphs %d%s", loop.streams,
                 loop.capacity, loop.steps, c.solver, len(loop.graphs),
                 f" (capture failed: {loop.capture_error})" if loop.capture_error else "")

    def _step(self):
        events = self.stepper.tick()
        if not events and not self.stepper.last_active and self.stepper.busy:
            self.stepper.wait(0.02)  # every stream waits for text: sleep until some arrives
        return events

    def _admit(self) -> None:
        """Open queued requests in free slots, first come first served."""
        s = self.stepper
        while len(s.runs) + len(s.pending) < s.loop.streams:
            with self._cond:
                if not self._waiting:
                    return
                h = self._waiting.popleft()
            self._join(h)

    def _join(self, h: StreamHandle) -> None:
        h.started(0)
        try:
            h.run = self.stepper.open(h.plan)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others keep running
            self._end(h, f"error: {type(exc).__name__}",
                      exc if isinstance(exc, VvtrtError) else VvtrtError(f"the request failed: {exc}"))
            return
        self._fed[h] = h.run.lm_len
        h.plan = None

    def _deliver(self, events) -> None:
        now = time.perf_counter()
        for ev in events:
            h: StreamHandle = ev.tag
            self._text_tokens += ev.run.lm_len - self._fed.get(h, ev.run.lm_len)
            self._fed[h] = ev.run.lm_len
            if ev.audio is not None and not self._push(h, Chunk(ev.index, ev.audio, now)):
                continue
            if ev.error is not None:
                err = ev.error if isinstance(ev.error, VvtrtError) else VvtrtError(f"the stream failed: {ev.error}")
                self._end(h, f"error: {type(err).__name__}", err)
            elif ev.stop_reason:
                self._end(h, ev.stop_reason)

    def _end(self, h: StreamHandle, reason: str, error: VvtrtError | None = None) -> None:
        super()._end(h, reason, error)
        self._release(h)

    def _drop(self, h: StreamHandle) -> None:
        if h.run is not None:
            self.stepper.cancel(h.run)
        self._release(h)

    def _leave_all(self) -> list[StreamHandle]:
        handles = [r.request.tag for r in (*self.stepper.runs.values(), *self.stepper.pending)]
        for h in handles:
            self._drop(h)
        return handles

    def _release(self, h: StreamHandle) -> None:
        """Forget `h` and close its `TextInput`, so the thread reading it ends."""
        self._fed.pop(h, None)
        text = h.request.text
        if isinstance(text, TextInput):
            text.close()
