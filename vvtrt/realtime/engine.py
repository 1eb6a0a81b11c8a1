"""`RealtimeEngine`: the serving engine (`vvtrt.serving.api.EngineAPI`) for VibeVoice-Realtime.

    engine = RealtimeEngine(RealtimeRunner.from_preset("tiny-realtime"), voices={"default": voice})
    engine.start()                                  # the engine thread now owns the device
    text = TextInput()                              # or a whole string, or any (async) iterable of pieces
    handle = engine.submit(RealtimeSpeechRequest(text, voice="default", seed=3))
    text.push("Hello there, "); text.push("this arrives while speech is made."); text.close()
    for chunk in handle: play(chunk.audio)          # float32 [3200] at 24 kHz, from the first text window

The serving core (`vvtrt.serving.core`: lifecycle, admission, cancellation, flow control, health) driving
a `RealtimeServingStepper` (one frame per tick for every stream whose text allows it). Each request's
audio depends only on its text, voice, seed and cfg_scale (its noise is drawn on the device from its seed
and frame index, or on the host as `RealtimeRunner.stream` draws it: `RealtimeEngineConfig.noise`);
requests with different cfg_scale run together (each slot keeps its own guidance scale), and queued
requests take free slots first come, first served.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from vvtrt.errors import InputError
from vvtrt.realtime.reference import LoopOptions
from vvtrt.realtime.serving_stepper import RealtimeServingStepper
from vvtrt.realtime.speech_request import RealtimeSpeechRequest  # noqa: F401 - re-exported
from vvtrt.realtime.streams import PieceSource, Starved
from vvtrt.realtime.voices import VoicePreset, check_voice
from vvtrt.runtime.noise import NOISE_SOURCES
from vvtrt.serving.core import CoreLimits, EngineCore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealtimeEngineConfig:
    """`max_streams`: slots of the loop (clamped to what exported graphs take); `max_queue`: requests
    waiting for a slot; `buffer_chunks`: a request's output buffer (a reader further behind is cancelled);
    `steps` / `solver`: the sampler every request runs; `capacity`: cache positions a stream may use
    (None: the model's context); `capture`: capture the loop's CUDA graphs at start (else at first use);
    `stall_timeout_s`, `max_step_failures`: as the long-form `EngineConfig`; `memory_headroom_gib`
    (CUDA): memory left free after the streams' caches (fewer streams are served when they do not fit).
    `noise`: where each request's diffusion noise comes from. "device" (default): drawn inside the speech
    step from the request's seed and frame index (`vvtrt.runtime.noise`, Philox-4x32-10): no host work or
    copy per frame, and a request's audio for a seed never depends on the other requests. "host": the
    reference's `torch.Generator(seed)` draws on the host, as `RealtimeRunner.stream` (and `vvtrt synth`,
    parity) makes them, so a request's audio matches theirs for the same seed (one host draw and copy per
    frame)."""

    max_streams: int = 64
    max_queue: int = 256
    buffer_chunks: int = 256
    steps: int = 5
    solver: str = "dpmsolver++"
    capacity: int | None = None
    capture: bool = True
    stall_timeout_s: float = 30.0
    max_step_failures: int = 3
    memory_headroom_gib: float = 2.0
    noise: str = "device"

    def __post_init__(self):
        from vvtrt.option_checks import check_counts

        check_counts(self, ("max_streams", "buffer_chunks", "steps", "max_step_failures"))
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InputError(f"max_queue must be a count >= 0, got {self.max_queue!r}")
        if not self.stall_timeout_s > 0 or self.memory_headroom_gib < 0:
            raise InputError("stall_timeout_s must be > 0 and memory_headroom_gib >= 0")
        LoopOptions(steps=self.steps, algorithm=self.solver)  # an unknown solver is an InputError
        if self.noise not in NOISE_SOURCES:
            raise InputError(f"noise must be one of {', '.join(NOISE_SOURCES)}, got {self.noise!r}")


class TextInput(PieceSource):
    """Text a producer pushes while speech is made (`push` pieces from any thread, then `close`); the
    engine reads it as a blocking iterator of pieces. Pieces pushed after `close` (or after the request
    ended) are dropped."""

    def push(self, piece: str) -> bool:
        """Queue `piece`; False if the text was closed already. A piece that is not valid Unicode text is
        refused here (InputError), before it reaches the engine."""
        from vvtrt.option_checks import check_text

        if not isinstance(piece, str):
            raise InputError(f"text pieces must be strings, got {type(piece).__name__}")
        check_text(piece)
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


class RealtimeEngine(EngineCore):
    """`EngineAPI` over a `RealtimeRunner`: the serving core driving a `RealtimeServingStepper`. `voices`:
    name -> `VoicePreset` (checked here); `default_voice`: the name used when a request names none
    (default: the first). Only the constructor differs from `EngineCore`."""

    def __init__(self, runner, config: RealtimeEngineConfig = RealtimeEngineConfig(), voices: dict | None = None,
                 default_voice: str | None = None):
        self.runner = runner
        self.config = config
        self.voices: dict[str, VoicePreset] = dict(voices or {})
        for name, voice in self.voices.items():
            check_voice(voice, runner.cfg, f"voice {name!r}")
        self.default_voice = default_voice or next(iter(self.voices), None)
        if self.default_voice is not None and self.default_voice not in self.voices:
            raise InputError(f"default voice {self.default_voice!r} is not one of the engine's voices")
        stepper = RealtimeServingStepper(runner, config, self.voices, self.default_voice)
        if stepper.slots < config.max_streams:
            log.info("Realtime engine: %d streams (the exported graphs take at most %d)", stepper.slots,
                     runner.max_streams)
        super().__init__(stepper, CoreLimits(max_queue=config.max_queue, buffer_chunks=config.buffer_chunks,
                                             stall_timeout_s=config.stall_timeout_s,
                                             max_step_failures=config.max_step_failures), id_prefix="rt")

    @property
    def streams(self) -> int:
        return self.stepper.slots

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, voices=None,
                     default_voice=None, compile: bool | str = False, **config) -> "RealtimeEngine":
        from vvtrt.realtime.runtime import RealtimeRunner

        runner = RealtimeRunner.from_workdir(path, backend, device, precision, compile=compile)
        return cls(runner, RealtimeEngineConfig(**config), voices, default_voice)
