"""What every endpoint shares: turning API fields into a `SpeechRequest`, admission (not ready / draining
-> 503, over `max_streams + max_queue` or queued past the timeout -> 429), and a stream of chunks that
records TTFA, inter-chunk gaps and the outcome, and cancels its engine request when the reader goes away.

    stream = await service.open(service.build_request(text, voice="alloy", seed=1))
    async for chunk in stream:        # Chunk(index, audio float32 [3200], t)
        ...
    stream.summary                    # RequestSummary once finished
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from vvtrt.errors import VvtrtError
from vvtrt.server import input_rules
from vvtrt.server.config import ServerConfig
from vvtrt.server.http_errors import classify
from vvtrt.server.metrics import ServerMetrics, outcome_label
from vvtrt.server.voices import VoiceLibrary, model_tag
from vvtrt.serving.api import Cancelled, EngineBusy, EngineNotReady, SpeechRequest

log = logging.getLogger(__name__)
_POLL_S = 0.01
DEFAULT_CFG = 1.3  # the long-form model's; HTTP and WebSocket alike


@dataclass
class SpeechService:
    config: ServerConfig
    engine: object
    voices: VoiceLibrary
    metrics: ServerMetrics
    draining: bool = False
    default_cfg = DEFAULT_CFG  # a class constant (the Realtime service has its own)

    @property
    def in_flight(self) -> int:
        """Requests queued or holding a slot in the engine: released when a request ends there, whoever
        still holds its socket."""
        return self.engine.in_flight()

    @property
    def ready(self) -> bool:
        return not self.draining and bool(self.engine.ready)

    def load_voices(self) -> VoiceLibrary:
        """The voices of `--voices` (start-up, off the event loop)."""
        c = self.config
        where = getattr(self.engine, "voice_device", c.device)  # a fleet front holds voices on its CPU
        return VoiceLibrary.load(c.voices_dir, self.engine, model_tag(c.workdir, c.backend, c.device, c.dtype), where)

    async def text_mode(self, ws) -> None:
        """WS /v1/audio/stream without `text`: text in several messages (`vvtrt.server.ws_text`)."""
        from vvtrt.server.ws_text import text_mode

        await text_mode(ws)

    def build_request(self, text, voice=None, seed=0, cfg_scale=None, max_frames=None, frames=None) -> SpeechRequest:
        """A checked SpeechRequest; an InputError names the field to fix (rules: `input_rules`)."""
        from vvtrt.runtime.script import parse_script

        script = parse_script(input_rules.check_text(text, self.config.max_input_chars))
        cfg_scale = self.default_cfg if cfg_scale is None else cfg_scale
        max_frames = check_request_numbers(self.config, seed, cfg_scale, max_frames, frames)
        voices = self.voices.resolve(voice, len(script.speakers))
        return SpeechRequest(script=text, voices=voices, seed=int(seed), cfg_scale=float(cfg_scale),
                             max_frames=max_frames, frames=frames)

    @staticmethod
    def engine_facts(engine) -> dict:
        """What the endpoints read of `engine` beyond its contract, as plain data (an engine in its own
        process reports it once at start-up: `facts`); none for the long-form engine."""
        return {}

    def facts(self) -> dict:
        """The engine's `engine_facts`, from the engine process when it runs in one."""
        got = getattr(self.engine, "facts", None)
        return got if isinstance(got, dict) else self.engine_facts(self.engine)

    @property
    def diffusion_steps(self) -> int | None:
        """The sampler's steps, fixed at export (WS `steps` must match)."""
        from vvtrt.workdir import Workdir

        try:
            return Workdir.open(self.config.workdir).options().steps
        except Exception as exc:  # an engine without a work dir (tests): any value is accepted
            log.debug("no work dir options: %s", exc)
            return None

    async def open(self, request: SpeechRequest) -> "Stream":
        """Admit and submit `request`, waiting (at most the queue timeout) until the engine starts it."""
        retry = self.config.retry_after_s
        if not self.ready:
            raise EngineNotReady("the server is " + ("shutting down" if self.draining else "not ready yet") +
                                 f": retry in {retry} s")
        try:
            t0 = time.perf_counter()
            try:
                handle = self.engine.submit(request)  # the engine counts every queued and running request
            except EngineBusy:
                raise EngineBusy(f"all {self.config.max_streams} streams are busy and the queue of "
                                 f"{self.config.max_queue} is full: retry in {retry} s") from None
            await self._wait_started(handle)
        except BaseException as exc:
            self.metrics.observe_done(classify(exc)[2] if isinstance(exc, Exception) else "cancelled")
            raise
        return Stream(self, handle, t0)

    async def _wait_started(self, handle) -> None:
        deadline = time.monotonic() + self.config.queue_timeout_s
        try:
            while not handle.done() and not handle.summary().started_t:
                if time.monotonic() > deadline:
                    handle.cancel()
                    raise EngineBusy(f"the request waited {self.config.queue_timeout_s:g} s in the queue without "
                                     f"a free stream: retry in {self.config.retry_after_s} s")
                await asyncio.sleep(_POLL_S)
        except asyncio.CancelledError:
            handle.cancel()
            raise
        refusal = getattr(handle, "refusal", None)  # a replica of `serve --ray` that did not take it
        if refusal is not None:
            raise refusal


class Stream:
    """The chunks of one admitted request. Leaving the iteration early (a disconnect, an error) cancels the
    engine request, so its slot is free for the next frame."""

    def __init__(self, service: SpeechService, handle, t0: float):
        self.service, self.handle, self.t0 = service, handle, t0
        self.summary = None
        self.error: BaseException | None = None
        self._closed = False

    @property
    def request_id(self) -> str:
        return self.handle.request_id

    async def __aiter__(self):
        metrics, last = self.service.metrics, None
        try:
            async for chunk in self.handle:
                if last is None:
                    metrics.observe_ttfa(time.perf_counter() - self.t0)
                else:
                    metrics.observe_gap(chunk.t - last)
                last = chunk.t
                yield chunk
        except VvtrtError as exc:  # Cancelled, SlowReader, a failed frame step: the stream ends here
            self.error = exc
            if not isinstance(exc, Cancelled):
                log.warning("request %s ended: %s", self.request_id, exc)
        except BaseException as exc:  # the reader went away (task cancelled, generator closed)
            self.error = exc
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the request if it still runs, and record its outcome (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.handle.done():
            self.handle.cancel()
        try:
            self.summary = self.handle.summary()
        except Exception as exc:  # a summary must never turn a finished stream into an error
            log.debug("no summary for %s: %s", self.request_id, exc)
            self.service.metrics.observe_done("error")
            return
        reason = self.summary.stop_reason or ("cancelled" if self.error else "unknown")
        rtf = self.summary.rtf if self.summary.frames else None
        self.service.metrics.observe_done(outcome_label(reason), rtf)

    def stop_reason(self) -> str:
        return (self.summary.stop_reason if self.summary else "") or ("cancelled" if self.error else "")


def check_request_numbers(config: ServerConfig, seed, cfg_scale, max_frames, frames):
    """Check the numeric fields of a request; the frame cap to use (`max_frames` or the server's cap)."""
    return input_rules.check_numbers(input_rules.Limits.of(config), seed, cfg_scale, max_frames, frames)
