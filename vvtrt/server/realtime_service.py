"""`vvtrt serve` on a Realtime work dir: the `RealtimeEngine`, its voices (presets, not clips) and the
service the endpoints call. The endpoints are the long-form server's; what differs:

- POST /v1/audio/speech and the WS one-shot mode take plain text (no `Speaker N:` script) and one voice:
  a preset name from `--voices DIR` (`<name>.safetensors` written by `vvtrt voices`), an OpenAI voice
  name (mapped onto the presets in sorted order), or none (the first preset). A random-weight model
  served without `--voices` speaks with a synthetic voice named "default".
- The WS text mode feeds every text message into ONE Realtime request as it arrives: speech starts after
  the first text window (5 tokens), not after a sentence or the whole text; `{"type": "flush"}` changes
  nothing (text is used as soon as it arrives); `{"type": "end"}` / `<|end|>` ends the text.
"""
from __future__ import annotations

import asyncio
import logging

from vvtrt.errors import InputError
from vvtrt.server.input_rules import check_text
from vvtrt.server.service import SpeechService, check_request_numbers
from vvtrt.server.voices import DEFAULT_VOICE, OPENAI_VOICES, VoiceLibrary, split_voice_names
from vvtrt.server.ws import completion, pump_audio, send_log
from vvtrt.server.ws_text import TextSession, _parse as parse_message
from vvtrt.server.truncation import truncation

log = logging.getLogger(__name__)
REALTIME_CFG = 1.5  # Microsoft's demos


def check_realtime_options(pipeline: bool) -> None:
    """Refuse the long-form-only serving options for a Realtime work dir."""
    if pipeline:
        raise InputError("--pipeline is for long-form work dirs: a Realtime work dir serves without it")


def build_realtime_engine(config):
    """The `RealtimeEngine` of `config.workdir` with its voices (see module doc)."""
    from vvtrt.realtime.engine import RealtimeEngine
    from vvtrt.realtime.runtime import RealtimeRunner

    check_realtime_options(config.pipeline)
    # deterministic: one batch and one cache bucket (sizes at or above the loop's own keep only its own)
    fixed = {"batch_buckets": (config.max_streams,), "kv_buckets": (1 << 30,)} if config.deterministic else {}
    compiled = config.backend == "torch-compile"
    if compiled:  # the compiled code is kept in the work dir for the next start
        from vvtrt.runtime.compile_cache import use_work_dir_cache

        use_work_dir_cache(config.workdir)
    runner = RealtimeRunner.from_workdir(config.workdir, "torch" if compiled else config.backend, config.device,
                                         config.dtype, compile=compiled, **fixed)
    voices = load_presets(config.voices_dir, runner)
    return RealtimeEngine(runner, _engine_config(config, runner), voices)


def _engine_config(config, runner):
    from vvtrt.realtime.engine import RealtimeEngineConfig

    return RealtimeEngineConfig(max_streams=config.max_streams, max_queue=config.max_queue,
                                stall_timeout_s=config.stall_timeout_s, buffer_chunks=config.buffer_chunks,
                                steps=runner.workdir.options().steps, capacity=config.max_context,
                                noise=config.noise)


def load_presets(folder, runner) -> dict:
    """name -> `VoicePreset` of every voice file in `folder`; without a folder, a synthetic "default"
    voice for a random-weight model (a checkpoint needs real presets)."""
    from vvtrt.realtime.voices import list_voices, read_voice

    if folder is not None:
        found = list_voices(folder)
        if not found:
            raise InputError(f"--voices {folder} holds no Realtime voice (.safetensors written by `vvtrt voices "
                             "import`): import Microsoft's .pt presets there first")
        return {v["name"]: read_voice(v["file"], runner.cfg) for v in found}
    source = runner.workdir.source()
    if not source.preset:
        raise InputError(f"{source.path} has real weights but no voice: pass --voices DIR of presets imported "
                         "with `vvtrt voices import`")
    return {DEFAULT_VOICE: synthetic_voice(runner, source)}


def synthetic_voice(runner, source=None):
    """The synthetic default voice of a random-weight model (its own prefill over seeded ids)."""
    from vvtrt.realtime.synthetic import make_voice

    model = runner.model
    if model is None:  # graph backends: the same seeded weights, on the CPU, only for this
        from vvtrt.realtime.backends import load_realtime_model

        model = load_realtime_model(source or runner.workdir.source())
    return make_voice(model, DEFAULT_VOICE)


class PresetLibrary(VoiceLibrary):
    """The engine's voice presets as the endpoints list and resolve them (one voice per request)."""

    @classmethod
    def of(cls, engine) -> "PresetLibrary":
        return cls.described(describe_presets(engine.voices))

    @classmethod
    def described(cls, presets: list[dict]) -> "PresetLibrary":
        """The library of `describe_presets`' list (what an engine process reports of its presets)."""
        lib = cls(voices={p["name"]: p for p in presets})
        names = lib.names()
        lib.aliases = {alias: names[i % len(names)] for i, alias in enumerate(OPENAI_VOICES) if alias not in names}
        return lib

    def describe(self) -> list[dict]:
        out = [{"name": n, "kind": "preset", "source": v["source"], "lengths": v["lengths"]}
               for n, v in self.voices.items()]
        return out + [{"name": a, "alias_of": n} for a, n in self.aliases.items()]

    def resolve(self, spec, speakers: int = 1) -> str:
        names = split_voice_names(spec)
        if len(names) > 1:
            raise InputError(f"{len(names)} voices given: a Realtime model speaks with one voice, give one name")
        if not names or (names == [DEFAULT_VOICE] and DEFAULT_VOICE not in self.voices):
            return self.names()[0]
        return self._canonical(names[0])


def describe_presets(voices: dict) -> list[dict]:
    """name, source and lengths of each `VoicePreset` (requests name their voice; the engine holds it)."""
    return [{"name": n, "source": v.source, "lengths": v.lengths()} for n, v in voices.items()]


class RealtimeSpeechService(SpeechService):
    """`SpeechService` over a `RealtimeEngine`: plain text (a string, or a `TextInput` in the WS text
    mode), one preset voice, Realtime's default cfg_scale."""

    default_cfg = REALTIME_CFG

    @staticmethod
    def engine_facts(engine) -> dict:
        return {"diffusion_steps": engine.config.steps, "voices": describe_presets(engine.voices)}

    @property
    def diffusion_steps(self) -> int | None:
        return self.facts().get("diffusion_steps")

    def load_voices(self) -> VoiceLibrary:
        return PresetLibrary.described(self.facts().get("voices", []))

    async def text_mode(self, ws) -> None:
        from vvtrt.server.ws_text import text_mode

        await text_mode(ws, RealtimeTextSession)

    def build_request(self, text, voice=None, seed=0, cfg_scale=None, max_frames=None, frames=None):
        from vvtrt.realtime.engine import RealtimeSpeechRequest, TextInput

        if not isinstance(text, TextInput):
            check_text(text, self.config.max_input_chars)
        cfg_scale = self.default_cfg if cfg_scale is None else cfg_scale
        max_frames = check_request_numbers(self.config, seed, cfg_scale, max_frames, frames)
        return RealtimeSpeechRequest(text, self.voices.resolve(voice), int(seed), float(cfg_scale), max_frames,
                                     frames)


class RealtimeTextSession(TextSession):
    """The WS text mode on a Realtime engine: every text message goes into one request's `TextInput`; the
    request opens with the first text (so an idle connection holds no stream)."""

    def __init__(self, ws, opts: dict):
        from vvtrt.realtime.engine import TextInput

        super().__init__(ws, opts)
        self.text = TextInput()
        self.has_text = asyncio.Event()
        self.chars = 0

    def _handle(self, text: str) -> str | None:
        kind, payload = parse_message(text)
        if kind == "stop":
            return "stop"
        if kind == "text":
            self.chars += len(payload)
            if self.chars > self.service.config.max_input_chars:
                raise InputError(f"the text has passed {self.service.config.max_input_chars} characters, the "
                                 "limit of one connection: open another connection for more")
            self.text.push(payload)
            if payload.strip():
                self.has_text.set()
        elif kind == "end":
            self.ended = True
            self.text.close()
            self.has_text.set()
        return None

    async def speak_all(self) -> None:
        await self.has_text.wait()
        try:
            self.current = opened = await self.service.open(self.service.build_request(self.text, **self.opts))
        except BaseException:
            self.text.close()
            raise
        await send_log(self.ws, "segment_started", segment=0, request_id=opened.request_id)
        frames = await pump_audio(self.ws, opened, progress=False)
        if isinstance(opened.error, InputError):
            raise opened.error  # e.g. text that was only white space: generation_error, close 4400
        cut = truncation(opened, self.service)
        if cut is not None:
            raise cut  # generation_error with the reason, a non-1000 close
        await send_log(self.ws, "segment_complete", segment=0, **completion(opened, frames))
        self.totals["segments"], self.totals["frames"] = 1, frames
        self.current = None
