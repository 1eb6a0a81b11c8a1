"""`RealtimeStepper`: independent Realtime streams sharing one `RealtimeLoop`, one frame per tick.

A tick, on the host: admit waiting streams into free slots (their voices' caches and state rows written
into the slot); take the next text window of the streams at a window boundary (every 6th frame while
text remains: its next 5 tokens, fewer at the end; a stream whose tokens have not arrived yet sits this
tick out, the others go on); stage the marks and window ids (and, with host noise, each stream's noise);
then on the device the text-window step(s) and the speech step of the smallest buckets that hold them,
which also book every stream's frame and find its stop (`vvtrt.realtime.stream_state`: the position
limit `min(model context, loop capacity)`, a forced EOS frame, EOS (sigmoid > 0.5), its frame cap), and
one host copy that reads every frame's audio with its stop code. Each stream's chunk of the frame is
handed out, with its end when it stopped.

The host's own per-step work is a fixed number of numpy operations over per-slot arrays (marks, lengths,
frame counters, buckets, stops), plus what each stream inherently needs: tokenizing its text at a window
boundary, its host noise (host noise only) and its event. Host and device agree on every length without
reading the device: the host knows each stream's voice lengths, the tokens of its windows and its frames.
A stream's numbers depend only on its own rows, its text and its noise, so it gives the same audio alone
or in any batch (up to the batch-size-dependent choice of GEMM kernels on GPUs).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from vvtrt.errors import InputError
from vvtrt.realtime.config import SPEECH_WINDOW
from vvtrt.realtime.stream_state import STOP_REASONS, stream_row
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
        self.limit = loop.limit
        self.runs: dict[int, StreamRun] = {}
        self.pending: deque[StreamRun] = deque()
        self.wake = threading.Event()
        self._voices: dict[int, tuple] = {}
        n = loop.streams
        self._run_at: list[StreamRun | None] = [None] * n
        self._busy = np.zeros(n, dtype=bool)    # a stream holds the slot
        self._held = np.zeros(n, dtype=bool)    # ... and its reader is behind: it sits ticks out
        self._talk = np.zeros(n, dtype=bool)    # ... and its text is not used up
        self._frames = np.zeros(n, dtype=np.int64)
        self._lm = np.zeros(n, dtype=np.int64)   # text-LM row length
        self._pos = np.zeros(n, dtype=np.int64)  # positive TTS row length
        self.ended: list[StreamRun] = []  # streams that ended in the last tick
        self.text_tokens = 0  # text tokens the streams' windows consumed so far
        self.last_active = 0  # streams that made a frame in the last tick

    @property
    def held(self) -> set[int]:
        return {int(s) for s in np.flatnonzero(self._held)}

    # -- streams ----------------------------------------------------------------------------------------
    def check(self, req: StreamRequest) -> None:
        """Refuse a request this loop cannot run (wrong K / solver, a voice of another model or too long
        for the cache, injected noise on a loop that draws its own) with an `InputError`. Each stream
        keeps its own guidance scale."""
        opts, loop = req.options, self.loop
        if opts.algorithm != ("sde-dpmsolver++" if loop.stochastic else "dpmsolver++") or opts.steps != loop.steps:
            raise InputError(f"this loop runs {loop.sampler} with K={loop.steps}, not {opts.algorithm} with "
                             f"K={opts.steps}: open a loop for it")
        if req.noise is not None and loop.device_noise:
            raise InputError("injected noise needs a loop that draws noise on the host (noise='host')")
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
        loop = self.loop
        noise = None if loop.device_noise else FrameNoise(req.seed, loop.cfg.latent_dim, req.options.steps,
                                                          loop.stochastic, req.noise)
        run = StreamRun(req, TextFeed(source, self.tok), source, noise)
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
            self._free(run)

    def hold(self, run: StreamRun, held: bool) -> None:
        """Hold (`held`) or resume a running stream: a held stream sits ticks out with its state as it was."""
        if self.runs.get(run.slot) is run:
            self._held[run.slot] = held

    def lengths(self, run: StreamRun) -> tuple[int, int]:
        """`(text-LM row length, positive TTS row length)` of a running stream."""
        return int(self._lm[run.slot]), int(self._pos[run.slot])

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

    def admit(self, events: list, make=StreamEvent) -> None:
        """Arm waiting streams in free slots, those of one voice together (`RealtimeLoop.reset_slots`: a few
        device copies for all of them, not a dozen per stream); a stream whose slot fails to arm ends with an
        error event (a group that fails is armed again one stream at a time, so the failure stays its own)."""
        free = np.flatnonzero(~self._busy).tolist()
        taken: list = []
        while self.pending and len(taken) < len(free):
            taken.append((free[len(taken)], self.pending.popleft()))
        groups: dict = {}
        for slot, run in taken:
            groups.setdefault(id(run.request.voice), []).append((slot, run))
        for group in groups.values():
            try:
                self._arm([s for s, _ in group], [r.request for _, r in group])
            except Exception:  # noqa: BLE001 - retried alone below: only the stream that fails ends
                for slot, run in group:
                    self._arm_one(slot, run, events, make)
                continue
            for slot, run in group:
                self._start(slot, run)

    def _arm(self, slots: list, reqs: list) -> None:
        voice = self._device_voice(reqs[0].voice)
        rows = [stream_row(r.seed, r.options.force_eos_frame, r.options.max_frames) for r in reqs]
        self.loop.reset_slots(slots, voice, [r.options.cfg_scale for r in reqs], rows)

    def _arm_one(self, slot: int, run: StreamRun, events: list, make) -> None:
        try:
            self._arm([slot], [run.request])
        except Exception as exc:  # noqa: BLE001 - this stream fails alone; the slot stays free
            log.warning("a Realtime stream failed to start: %s: %s", type(exc).__name__, exc)
            run.stop_reason, run.error = "error", exc
            run.source.close()
            self.ended.append(run)
            events.append(make(run, run.frames, None, "error", exc))
            return
        self._start(slot, run)

    def _start(self, slot: int, run: StreamRun) -> None:
        req = run.request
        run.slot = slot
        self.runs[slot] = run
        self._run_at[slot] = run
        self._busy[slot], self._held[slot], self._talk[slot] = True, False, True
        self._frames[slot] = 0
        self._lm[slot], self._pos[slot] = req.voice["lm"].length, req.voice["tts_lm"].length

    def _free(self, run: StreamRun) -> None:
        s = run.slot
        run.frames = int(self._frames[s])
        del self.runs[s]
        self._run_at[s] = None
        self._busy[s] = self._held[s] = False

    def _finish(self, run: StreamRun, reason: str, error: BaseException | None = None) -> None:
        run.stop_reason, run.error = reason, error
        run.source.close()
        self._free(run)
        self.ended.append(run)

    # -- the tick -----------------------------------------------------------------------------------------
    def tick(self, make=StreamEvent) -> list:
        """One frame for every running stream whose text allows it; the events of this tick, each made by
        `make(run, index, audio, stop_reason, error=None)` (a `StreamEvent` by default)."""
        self.wake.clear()
        self.ended = []
        events: list = []
        self.admit(events, make)
        loop = self.loop
        h = loop.host
        h["active"][:] = False
        h["win_n"][:] = 0
        slots = self._plan(events, make)
        self.last_active = len(slots)
        if not len(slots):
            return events
        b = loop.batch_bucket(int(slots[-1]) + 1)
        win = h["win_n"][slots]
        s_tts = loop.kv_bucket(int((self._pos[slots] + win).max()))
        h["active"][slots] = True
        if not loop.device_noise:
            self._stage_noise(slots)
        loop.upload(b)
        texts = win > 0
        if texts.any():
            s_lm = loop.kv_bucket(int(self._lm[slots[texts]].max()))
            for t in np.unique(win[texts]).tolist():
                loop.text_step(b, s_lm, s_tts, t)
        loop.speech_step(b, s_tts)
        audio, code = loop.fetch(b)
        return events + self._hand_out(slots, win, audio, code[slots], make)

    def _plan(self, events: list, make) -> np.ndarray:
        """The slots that make a frame this tick (sorted); the window of each one at a boundary is staged."""
        go = self._busy & ~self._held
        due = np.flatnonzero(go & self._talk & (self._frames % SPEECH_WINDOW == 0))
        h = self.loop.host
        for s in due.tolist():
            run = self._run_at[s]
            try:
                ids = run.take_window()
            except Exception as exc:  # noqa: BLE001 - bad text (or any host failure) ends this stream alone
                self._finish(run, "error", exc)
                events.append(make(run, run.frames, None, "error", exc))
                go[s] = False
                continue
            if ids is None:
                go[s] = False
                continue
            if not ids:
                self._talk[s] = False
                continue
            n = len(ids)
            if max(self._pos[s], self._lm[s]) + n > self.limit:
                self._finish(run, "length")
                events.append(make(run, run.frames, None, "length"))
                go[s] = False
                continue
            h["win_n"][s] = n
            h["win_ids"][s, :n] = ids
            h["win_ids"][s, n:] = 0
        return np.flatnonzero(go)

    def _stage_noise(self, slots: np.ndarray) -> None:
        """Host noise: each stream's next frame noise (and SDE step noise) into the staging buffers."""
        h = self.loop.host
        for s in slots.tolist():
            noise, step = self._run_at[s].noise.next()
            h["noise"][s] = noise
            if step is not None:
                h["step_noise"][s] = step

    def _hand_out(self, slots: np.ndarray, win: np.ndarray, audio: np.ndarray, code: np.ndarray, make) -> list:
        """Book the frame of every stream in `slots` (lengths, counters), end those the device stopped, and
        make each one's event (its chunk, a copy)."""
        index = self._frames[slots]
        self._frames[slots] = index + 1
        self._lm[slots] += win
        self._pos[slots] += win + 1
        self.text_tokens += int(win.sum())
        runs = self._run_at
        out = [make(runs[s], i, audio[s].copy(), STOP_REASONS[c])
               for s, i, c in zip(slots.tolist(), index.tolist(), code.tolist())]
        stopped = code > 0
        for s, c in zip(slots[stopped].tolist(), code[stopped].tolist()):
            self._finish(runs[s], STOP_REASONS[c])
        return out
