"""`RealtimeSpeechRequest`: what `RealtimeEngine.submit` takes (`vvtrt.realtime.engine`); its own module so
that the engine and its stepper (`vvtrt.realtime.serving_stepper`) both import it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
