"""`RealtimeStepper`: independent Realtime streams sharing one `RealtimeLoop`, one frame per tick.

A tick, on the host: admit waiting streams into free slots (their voices' caches written into the slot's
rows); for every running stream decide its window (at every 6th frame while text remains: its next 5
tokens, fewer at the end; a stream whose tokens have not arrived yet sits this tick out, the others go
on); stage the marks, window ids and noise of the streams that make a frame; then on the device the
text-window step(s) and the speech step of the smallest buckets that hold them, and one host sync that
reads every frame's audio together with its EOS probability. Each stream then stops as the reference
loop does: the position limit (`min(model context, loop capacity)`), a forced EOS frame, EOS
(sigmoid > 0.5), or its frame cap; its chunk of the frame is handed out first.

Host and device agree on every length without reading the device: the host knows each stream's voice
lengths, the tokens of its windows and its frames. A stream's numbers depend only on its own rows, its
text and its noise, so it gives the same audio alone or in any batch (up to the batch-size-dependent
choice of GEMM kernels on GPUs).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from vvtrt.errors import InputError
from vvtrt.realtime.streams import FrameNoise, PieceSource, StreamRequest, StreamRun, attach_async, attach_text
from vvtrt.realtime.text_feed import TextFeed
from vvtrt.realtime.voices import check_voice
from vvtrt.realtime.window_loop import RealtimeLoop

log = logging.getLogger(__name__)
MAX_DEVICE_VOICES = 32


@dataclass
class StreamEvent:
    """A chunk of one stream (`audio` float32 [hop]) and/or its end (`stop_reason`, or `error` when the
    stream failed, e.g. its text was empty)."""

    run: StreamRun
    index: int
    audio: np.ndarray | None
    stop_reason: str = ""
    error: BaseException | None = None

    @property
    def tag(self):
        return self.run.request.tag


class RealtimeStepper:
    """Runs `StreamRequest`s in the slots of `loop` (see module doc). Not thread-safe: one driver calls
    `open`, `cancel` and `tick`; text producers may push from any thread."""

    def __init__(self, loop: RealtimeLoop, tokenizer):
        self.loop = loop
        self.tok = tokenizer
        cfg = loop.cfg
        self.limit = min(cfg.context, loop.capacity)
        self.runs: dict[int, StreamRun] = {}
        self.pending: deque[StreamRun] = deque()
        self.wake = threading.Event()
        self._voices: dict[int, tuple] = {}
        self.held: set[int] = set()  # slots whose reader is behind: they sit ticks out, state unchanged
        self.last_active = 0  # streams that made a frame in the last tick

    # -- streams ----------------------------------------------------------------------------------------
    def check(self, req: StreamRequest) -> None:
        """Refuse a request this loop cannot run (wrong K / solver, a voice of another model or too long
        for the cache) with an `InputError`. Each stream keeps its own guidance scale."""
        opts, loop = req.options, self.loop
        if opts.algorithm != ("sde-dpmsolver++" if loop.stochastic else "dpmsolver++") or opts.steps != loop.steps:
            raise InputError(f"this loop runs {loop.sampler} with K={loop.steps}, not {opts.algorithm} with "
                             f"K={opts.steps}: open a loop for it")
        if id(req.voice) not in self._voices:  # voices already on the device were checked then
            check_voice(req.voice, loop.cfg, f"voice {req.voice.name!r}")
        longest = max(req.voice["tts_lm"].length, req.voice["lm"].length)
        if longest >= self.limit:
            raise InputError(f"voice {req.voice.name!r} fills {longest} of the {self.limit} cache positions: "
                             "give the loop a larger capacity")

    def open(self, req: StreamRequest, event_loop=None) -> StreamRun:
        """Queue a stream; it joins at the next tick with a free slot. An async text iterator is read on
        `event_loop` when given, else on a private loop in a thread."""
        self.check(req)
        source = PieceSource(self.wake)
        v = req.voice
        run = StreamRun(req, TextFeed(source, self.tok), source,
                        FrameNoise(req.seed, self.loop.cfg.latent_dim, req.options.steps, self.loop.stochastic,
                                   req.noise),
                        v["lm"].length, v["tts_lm"].length, v["neg_tts_lm"].length)
        if event_loop is not None and hasattr(req.text, "__aiter__"):
            attach_async(req.text, source, event_loop)
        else:
            attach_text(req.text, source)
        self.pending.append(run)
        return run

    def cancel(self, run: StreamRun) -> None:
        run.source.close()
        run.stop_reason = run.stop_reason or "cancelled"
        if run in self.pending:
            self.pending.remove(run)
        if self.runs.get(run.slot) is run:
            del self.runs[run.slot]
            self.held.discard(run.slot)

    def hold(self, run: StreamRun, held: bool) -> None:
        """Hold (`held`) or resume a running stream: a held stream sits ticks out with its state as it was."""
        if held and self.runs.get(run.slot) is run:
            self.held.add(run.slot)
        else:
            self.held.discard(run.slot)

    @property
    def busy(self) -> bool:
        return bool(self.runs or self.pending)

    def wait(self, timeout: float = 0.05) -> None:
        """Block until some stream's text moves (or `timeout`): call it when a tick made no frame."""
        self.wake.wait(timeout)

    def _device_voice(self, voice):
        hit = self._voices.get(id(voice))
        if hit is None or hit[0] is not voice:
            if len(self._voices) >= MAX_DEVICE_VOICES:
                self._voices.pop(next(iter(self._voices)))
            hit = (voice, voice.to(self.loop.dtype, self.loop.device))
            self._voices[id(voice)] = hit
        return hit[1]

    def admit(self, events: list) -> None:
        """Arm waiting streams in free slots; a stream whose slot fails to arm ends with an error event."""
        free = [s for s in range(self.loop.streams) if s not in self.runs]
        while self.pending and free:
            run = self.pending.popleft()
            slot = free.pop(0)
            try:
                self.loop.reset_slot(slot, self._device_voice(run.request.voice), run.request.options.cfg_scale)
            except Exception as exc:  # noqa: BLE001 - this stream fails alone; the slot stays free
                free.insert(0, slot)
                log.warning("a Realtime stream failed to start: %s: %s", type(exc).__name__, exc)
                run.stop_reason, run.error = "error", exc
                run.source.close()
                events.append(StreamEvent(run, run.frames, None, "error", exc))
                continue
            run.slot = slot
            self.runs[slot] = run

    # -- the tick -----------------------------------------------------------------------------------------
    def tick(self) -> list[StreamEvent]:
        """One frame for every running stream whose text allows it; the events of this tick."""
        self.wake.clear()
        events: list[StreamEvent] = []
        self.admit(events)
        active = self._plan(events)
        self.last_active = len(active)
        if not active:
            return events
        loop = self.loop
        b = loop.batch_bucket(max(r.slot for r in active) + 1)
        s_tts = loop.kv_bucket(max(r.pos_len + len(r.window) for r in active))
        texts = [r for r in active if r.window]
        self._stage(active, b)
        loop.upload(b)
        if texts:
            s_lm = loop.kv_bucket(max(r.lm_len for r in texts))
            for t in sorted({len(r.window) for r in texts}):
                loop.text_step(b, s_lm, s_tts, t)
        loop.speech_step(b, s_tts)
        audio, eos = loop.fetch(b)
        for r in active:
            events.append(self._hand_out(r, audio[r.slot].copy(), float(eos[r.slot])))
        return events

    def _finish(self, run: StreamRun, reason: str, error: BaseException | None = None) -> None:
        run.stop_reason, run.error = reason, error
        run.source.close()
        self.runs.pop(run.slot, None)
        self.held.discard(run.slot)

    def _plan(self, events: list[StreamEvent]) -> list[StreamRun]:
        active = []
        for run in list(self.runs.values()):
            if run.slot in self.held:
                continue
            try:
                ids = run.due_window()
            except Exception as exc:  # noqa: BLE001 - bad text (or any host failure) ends this stream alone
                self._finish(run, "error", exc)
                events.append(StreamEvent(run, run.frames, None, "error", exc))
                continue
            if ids is None:
                continue
            if ids and max(run.pos_len, run.lm_len) + len(ids) > self.limit:
                self._finish(run, "length")
                events.append(StreamEvent(run, run.frames, None, "length"))
                continue
            run.window = ids
            active.append(run)
        return active

    def _stage(self, active: list[StreamRun], b: int) -> None:
        h = self.loop.host
        h["active"][:b] = False
        h["win_n"][:b] = 0
        for r in active:
            s = r.slot
            h["active"][s] = True
            if r.window:
                h["win_n"][s] = len(r.window)
                h["win_ids"][s, :len(r.window)] = r.window
                h["win_ids"][s, len(r.window):] = 0
            noise, step = r.noise.next()
            h["noise"][s] = noise
            if step is not None:
                h["step_noise"][s] = step

    def _hand_out(self, run: StreamRun, audio: np.ndarray, eos: float) -> StreamEvent:
        n = len(run.window)
        run.lm_len += n
        run.pos_len += n
        run.window = []
        index, run.frames = run.frames, run.frames + 1
        opts = run.request.options
        reason = ""
        if run.pos_len + 1 > self.limit:
            reason = "length"
        else:
            run.pos_len += 1
            run.neg_len += 1
            if opts.force_eos_frame is not None and index >= opts.force_eos_frame:
                reason = "forced_eos"
            elif eos > 0.5:
                reason = "eos"
            elif opts.max_frames is not None and run.frames >= opts.max_frames:
                reason = "max_frames"
        if reason:
            self._finish(run, reason)
        return StreamEvent(run, index, audio, reason)
