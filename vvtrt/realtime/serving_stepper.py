"""The Realtime `Stepper` of the serving core: `RealtimeStepper` (one frame per tick for every stream
whose text allows it) behind the core's protocol.

A request is checked on the caller's thread (`prepare`: numbers, text that is valid Unicode, its voice,
its loop options); admitted into a slot on the engine thread (the voice's caches written into the slot's
rows; a failure there ends that request alone); its text is tokenized as it arrives, and any failure of
one stream's host work ends that stream alone. The number of slots is bounded by the exported graphs and
by device memory (a refusal at start, never an out-of-memory error in the middle of a stream).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from vvtrt.errors import InputError
from vvtrt.realtime.config import TEXT_WINDOW
from vvtrt.realtime.reference import LoopOptions
from vvtrt.realtime.streams import StreamRequest
from vvtrt.realtime.text_feed import normalize_text
from vvtrt.realtime.voices import VoicePreset
from vvtrt.serving.api import CapacityError, SpeechRequest
from vvtrt.serving.core import StepFailed
from vvtrt.serving.stepper import StepEvent

log = logging.getLogger(__name__)
SEED_LIMIT = 2 ** 63
GIB = 1 << 30


def stream_bytes(cfg, capacity: int, itemsize: int) -> int:
    """Device bytes of one stream's caches (LM rows, positive and negative TTS rows) at `capacity`."""
    p = capacity + TEXT_WINDOW
    per_pos = cfg.kv_heads * p * cfg.head_dim * itemsize * 2  # K and V
    return per_pos * (cfg.lm_layers + 2 * cfg.tts_layers)


class RealtimeServingStepper:
    """`Stepper` over a `RealtimeRunner` and its voices (name -> `VoicePreset`, checked by the engine)."""

    def __init__(self, runner, config, voices: dict, default_voice: str | None):
        self.runner = runner
        self.config = config
        self.voices = voices
        self.default_voice = default_voice
        self.slots = min(config.max_streams, runner.max_streams or config.max_streams)
        self.inner = None
        self._runs: dict = {}  # tag -> StreamRun
        self.prompt_tokens = 0
        self.last_active = 0

    # -- engine-thread setup ------------------------------------------------------------------------
    def build(self, wake=None) -> None:
        c = self.config
        self.slots = self._fit_memory(self.slots)
        self.inner = self.runner.checkout(self.slots, c.steps, c.solver, c.capacity, c.noise)
        self._tokens0 = self.inner.text_tokens  # a kept stepper counted its earlier streams' tokens
        if wake is not None:
            self.inner.wake = wake  # text arriving wakes the engine thread at once
        loop = self.inner.loop
        if c.capture and loop.use_graphs:
            loop.capture_buckets()

    def _fit_memory(self, slots: int) -> int:
        """Slots clamped to what fits the device memory (minus the headroom); CapacityError if none."""
        dev = torch.device(self.runner.device)
        if dev.type != "cuda":
            return slots
        cap = min(self.runner.cfg.context, self.config.capacity or self.runner.capacity)
        per = stream_bytes(self.runner.cfg, cap, torch.tensor([], dtype=self.runner.dtype).element_size())
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free - int(self.config.memory_headroom_gib * GIB)
        fit = max(0, budget) // per
        if fit < 1:
            raise CapacityError(f"one Realtime stream's caches ({per / GIB:.2f} GiB for {cap} positions) do not fit "
                                f"the {max(budget, 0) / GIB:.2f} GiB free: lower --max-context or free GPU memory")
        if fit < slots:
            log.warning("serving %d Realtime streams, not the %d asked for: device memory holds %d", fit, slots, fit)
        return min(slots, fit)

    def describe(self) -> str:
        loop = self.inner.loop
        err = f" (capture failed: {loop.capture_error})" if loop.capture_error else ""
        return (f"Realtime engine: {loop.streams} streams, {loop.capacity} cache positions each, K={loop.steps} "
                f"{self.config.solver}, graphs {len(loop.graphs)}{err}, {self.config.noise} noise")

    @property
    def loop(self):
        return self.inner.loop

    # -- caller's thread ----------------------------------------------------------------------------
    def prepare(self, request) -> StreamRequest:
        from vvtrt.realtime.speech_request import RealtimeSpeechRequest

        r = _as_realtime(request, RealtimeSpeechRequest)
        _check_request(r)
        voice = self._voice(r.voice)
        opts = LoopOptions(cfg_scale=float(r.cfg_scale), steps=self.config.steps, algorithm=self.config.solver,
                           max_frames=r.max_frames, force_eos_frame=None if r.frames is None else r.frames - 1)
        return StreamRequest(r.text, voice, int(r.seed), opts)

    def _voice(self, spec) -> VoicePreset:
        from vvtrt.realtime.voices import check_voice

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
            raise InputError(f"voice {voice.name!r} fills {longest} of the {limit} cache positions a stream has: "
                             "use a shorter voice preset or serve with a larger --max-context")
        return voice

    def voice_job(self, wav):
        raise InputError("VibeVoice-Realtime speaks with voice presets, not voice clips: import Microsoft's "
                         ".pt presets with `vvtrt voices import` and pass their folder")

    # -- engine thread ------------------------------------------------------------------------------
    def free(self) -> int:
        return self.inner.loop.streams - len(self.inner.runs) - len(self.inner.pending)

    def running(self) -> int:
        return len(self.inner.runs) + len(self.inner.pending)

    def admit(self, work: StreamRequest, tag) -> None:
        """Queue the run for the next tick, which arms every run admitted since the last one together (the
        core admits only while a slot is free; an arming failure ends that run alone, as a step event)."""
        self._runs[tag] = self.inner.open(dataclasses.replace(work, tag=tag))

    def prefill(self, budget):
        return []  # a voice's caches are written when its slot is armed

    def step(self) -> list[StepEvent]:
        """One tick of the inner stepper; its events become the core's `StepEvent`s directly (one object a
        stream), and the streams that ended are forgotten."""
        inner = self.inner
        try:
            events = inner.tick(_step_event)
        except Exception as exc:
            raise StepFailed([r.request.tag for r in inner.runs.values()], exc) from exc
        self.last_active = inner.last_active
        self.prompt_tokens = inner.text_tokens - self._tokens0
        for run in inner.ended:
            self._forget(run.request.tag)
        return events

    def hold(self, tag, held: bool) -> None:
        run = self._runs.get(tag)
        if run is not None:
            self.inner.hold(run, held)

    def release(self, tag) -> None:
        run = self._runs.get(tag)
        if run is not None:
            self.inner.cancel(run)
        self._forget(tag)

    def _forget(self, tag) -> None:
        self._runs.pop(tag, None)
        text = getattr(getattr(tag, "request", None), "text", None)
        if hasattr(text, "close") and hasattr(text, "push"):  # a TextInput: its producer learns the end
            text.close()


def _step_event(run, index: int, audio, stop_reason: str, error: BaseException | None = None) -> StepEvent:
    return StepEvent(run.request.tag, index, audio, "" if error is not None else stop_reason, error)


def _as_realtime(request, cls):
    if isinstance(request, cls):
        return request
    if isinstance(request, SpeechRequest):  # the long-form shape: its script is the text, one voice at most
        if len(request.voices) > 1:
            raise InputError("Realtime speaks with one voice: give one voice")
        return cls(request.script, request.voices[0] if request.voices else None, request.seed,
                   request.cfg_scale, request.max_frames, request.frames, request.request_id)
    raise InputError(f"submit takes a RealtimeSpeechRequest, got {type(request).__name__}")


def _check_request(r) -> None:
    from vvtrt.option_checks import check_cfg, check_counts, check_text

    check_counts(r, ("max_frames", "frames"), optional=True)
    if not isinstance(r.seed, int) or isinstance(r.seed, bool) or not 0 <= r.seed < SEED_LIMIT:
        raise InputError(f"seed must be a non-negative integer below 2**63, got {r.seed!r}")
    check_cfg(r.cfg_scale)
    if r.text is None or isinstance(r.text, (bytes, dict)):
        raise InputError(f"text must be a string or an (async) iterable of strings, got {type(r.text).__name__}")
    if isinstance(r.text, str):
        check_text(r.text)
        if not normalize_text(r.text).strip():
            raise InputError("the text is empty: give some words to speak")
