"""The serving engine: many independent requests on one device, batched frame by frame (see `api`).

One thread (the engine thread) makes every device call. Requests wait in a bounded admission queue, join
free slots of one `FrameLoop` at frame boundaries (their prompts prefilled within a per-iteration token
budget) and leave on eos, their frame limit or cancellation; `SlotStepper` is the same driver the
single-request `Synthesizer` uses. Each request's audio depends only on its own inputs and seed.
"""
from __future__ import annotations

import collections
import gc
import hashlib
import itertools
import logging
import threading
import time
from concurrent.futures import Future

import numpy as np
import torch

from vvtrt.errors import InputError, VvtrtError
from vvtrt.runtime.frame_loop import FrameLoop
from vvtrt.runtime.kv_cache import pick_bucket
from vvtrt.runtime.slots import SlotRun, SlotStepper
from vvtrt.serving.api import (SAMPLE_RATE, CapacityError, Cancelled, Chunk, EngineBusy, EngineNotReady,
                               EngineStats, SlowReader, SpeechRequest, VoiceEmbedding)
from vvtrt.serving.config import EngineConfig, PoolPlan, plan_pool
from vvtrt.serving.handle import StreamHandle

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class Engine:
    """`EngineAPI` over a loaded `Synthesizer` (its runners, tokenizer and prefill)."""

    def __init__(self, synth, config: EngineConfig = EngineConfig()):
        self.synth = synth
        self.config = config
        self.plan: PoolPlan | None = None
        self.stepper: SlotStepper | None = None
        self._cond = threading.Condition()
        self._waiting: collections.deque[StreamHandle] = collections.deque()
        self._cancels: list[StreamHandle] = []
        self._calls: list[tuple] = []
        self._thread: threading.Thread | None = None
        self._ready = False
        self._stopping = False
        self._start_error: BaseException | None = None
        self._frames_total = 0
        self._outcomes: collections.Counter = collections.Counter()

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, fallback=None,
                     models=None, compile: bool | str = False, **config) -> "Engine":
        from vvtrt.runtime.synthesizer import Synthesizer

        cfg = EngineConfig(**config)
        synth = Synthesizer.from_workdir(path, backend=backend, device=device, precision=precision,
                                         fallback=fallback, models=models, compile=compile,
                                         cuda_graph=cfg.cuda_graph)
        return cls(synth, cfg)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        """Size the KV pool (`CapacityError` if one stream does not fit), then on the engine thread build
        the frame step and capture its graphs; returns once the engine takes requests."""
        if self._thread is not None:
            raise EngineNotReady("the engine was started already")
        self._prepare()
        started = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(started,), name="vvtrt-engine", daemon=True)
        self._thread.start()
        started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _prepare(self) -> None:
        """Host-side checks before the engine thread starts: size the KV pool."""
        s = self.synth
        self.plan = plan_pool(self.config, s.info, s.options, s.runners, s.device, s.precision.torch_dtype.itemsize)

    def _build(self) -> None:
        s, p = self.synth, self.plan
        loop = FrameLoop(s.runners, s.info, p.slots, p.kv_len, s.precision.torch_dtype, s.device,
                         batch_buckets=p.batch_buckets, kv_buckets=p.kv_buckets)
        if s.cuda_graph:
            loop.capture_all()
            loop.cache.reset()
        self.stepper = SlotStepper(loop, s.prefill)
        log.info("serving engine: %d slots, KV %d tokens a slot (%.2f GiB pool), buckets %s x %s, graphs %d%s",
                 p.slots, p.kv_len, p.pool_bytes / (1 << 30), p.batch_buckets, p.kv_buckets, len(loop.graphs),
                 f" (capture failed: {loop.capture_error})" if loop.capture_error else "")

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new requests, let running and queued ones finish for up to `grace_s`, cancel the rest
        (`Cancelled`), and end the engine thread."""
        self._ready = False
        deadline = time.monotonic() + max(0.0, grace_s)
        with self._cond:
            while (self._waiting or (self.stepper and self.stepper.runs)) and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- client calls (any thread) ----------------------------------------------------------------
    def submit(self, request: SpeechRequest) -> StreamHandle:
        """Queue a request; raises InputError (bad request), CapacityError (cannot fit the pool),
        EngineBusy (queue full) or EngineNotReady. Returns its handle at once."""
        if not self._ready:
            raise EngineNotReady("the serving engine is not running (starting or shutting down)")
        handle = self._new_handle(request)
        with self._cond:
            if not self._ready:
                raise EngineNotReady("the serving engine is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                raise EngineBusy(f"{len(self._waiting)} requests are queued already: retry later")
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def _new_handle(self, request: SpeechRequest) -> StreamHandle:
        """The checked request's handle (caller's thread)."""
        plan, limit, max_steps, script = self._check(request)
        rid = request.request_id or f"req-{next(_ids)}"
        handle = StreamHandle(rid, request, self.config.buffer_chunks, self._cancel)
        handle.plan, handle.limit, handle.max_steps, handle.script = plan, limit, max_steps, script
        return handle

    def _check(self, r: SpeechRequest):
        """Validate a request on the caller's thread (host work only)."""
        from vvtrt.option_checks import check_cfg, check_counts

        check_counts(r, ("frames", "max_frames"), optional=True)
        if not isinstance(r.seed, int) or isinstance(r.seed, bool) or not 0 <= r.seed < 2 ** 63 - 8000:
            raise InputError(f"seed must be a non-negative integer, got {r.seed!r}")
        check_cfg(r.cfg_scale)
        plan = self.synth.plan_prompt(r.script, r.voices)
        n = len(plan.ids)
        script = self.synth._check_generate(plan.ids, r.frames, 1, None, r.decisions)
        limit = self.synth.frame_limit(n, r.frames, r.max_frames, script)
        need = n + (len(script) if script else limit) + 1  # as the Synthesizer sizes its KV bucket
        kv_len = self.plan.kv_len
        if need > kv_len:
            raise CapacityError(f"the request needs {need} KV slots ({n} prompt tokens + {need - n - 1} steps) "
                                f"but a stream holds {kv_len}: shorten the script or ask for fewer frames")
        buckets = self.synth.options.kv_buckets
        bucket = pick_bucket(buckets, need) if need <= buckets[-1] else kv_len
        max_steps = len(script) if script else min(bucket, kv_len) - n - 1
        return plan, limit, max_steps, script

    def _cancel(self, handle: StreamHandle) -> None:
        if not handle.finish("cancelled", Cancelled(f"request {handle.request_id} was cancelled")):
            return
        with self._cond:
            self._outcomes["cancelled"] += 1
            if handle in self._waiting:
                self._waiting.remove(handle)
            else:
                self._cancels.append(handle)
            self._cond.notify_all()

    def encode_voice(self, wav: np.ndarray) -> VoiceEmbedding:
        """Encode a 24 kHz mono clip once (noise of seed 0), for reuse across requests."""
        from vvtrt.runtime.audio_io import normalize_voice
        from vvtrt.runtime.prompt import frames_for_samples

        clip = normalize_voice(np.asarray(wav, dtype=np.float32))  # encoded at its own length, as the original
        n = len(clip)
        if frames_for_samples(n, self.synth.info.hop) > self.synth.options.max_voice_frames:
            raise InputError("the voice clip is longer than the exported max_voice_frames: trim it")
        embeds = self._call(lambda: self.synth.encode_voice(clip, torch.Generator().manual_seed(7919)).clone())
        return VoiceEmbedding(embeds, hashlib.sha256(np.ascontiguousarray(wav, np.float32).tobytes()).hexdigest(),
                              n / SAMPLE_RATE)

    def _call(self, fn):
        """Run `fn` on the engine thread at the next frame boundary and return its result."""
        if not self._ready:
            raise EngineNotReady("the serving engine is not running")
        fut: Future = Future()
        with self._cond:
            self._calls.append((fn, fut))
            self._cond.notify_all()
        return fut.result()

    def stats(self) -> EngineStats:
        with self._cond:
            active = len(self.stepper.runs) if self.stepper else 0
            return EngineStats(self._ready, active, len(self._waiting), self.plan.slots if self.plan else 0,
                               self._frames_total, self.stepper.prefill_tokens if self.stepper else 0,
                               dict(self._outcomes))

    # -- the engine thread ------------------------------------------------------------------------
    def _main(self, started: threading.Event) -> None:
        try:
            with torch.inference_mode():
                self._build()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._start_error = exc if isinstance(exc, VvtrtError) else CapacityError(
                f"the serving engine could not start: {type(exc).__name__}: {exc}")
            started.set()
            return
        # The model, its compiled code and graphs are built: keep the collector's full (generation 2) passes
        # from walking those objects on every collection while streams run (a pause on the GPU thread).
        gc.collect()
        gc.freeze()
        self._ready = True
        started.set()
        with torch.inference_mode():
            while self._iteration():
                pass

    def _iteration(self) -> bool:
        """One engine iteration: calls, cancellations, admissions, one frame step. False: stop."""
        with self._cond:
            calls, self._calls = self._calls, []
            cancels, self._cancels = self._cancels, []
            if self._stopping:
                self._shutdown(calls)
                return False
            if not calls and not cancels and not self._waiting and not self.stepper.runs:
                self._cond.wait(timeout=0.1)
                return True
        for fn, fut in calls:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
        for h in cancels:
            self._drop(h)
        self._admit()
        try:
            events = self._step()
        except Exception as exc:  # noqa: BLE001 - every running request fails, the engine keeps serving
            log.exception("frame step failed")
            for h in self._leave_all():
                self._end(h, f"error: {type(exc).__name__}", VvtrtError(f"the frame step failed: {exc}"))
            return True
        self._deliver(events)
        with self._cond:
            self._cond.notify_all()  # stop() waits for the slots to drain
        return True

    # -- what a stepper of another model overrides (engine thread) ---------------------------------
    def _step(self):
        return self.stepper.step()

    def _drop(self, h: StreamHandle) -> None:
        """Free `h`'s slot if it still holds one."""
        run = self.stepper.runs.get(h.slot) if h.slot is not None else None
        if run is not None and run.tag is h:
            self.stepper.leave(h.slot)

    def _leave_all(self) -> list[StreamHandle]:
        """Empty every slot; the handles that held them."""
        return [self.stepper.leave(slot).tag for slot in list(self.stepper.runs)]

    def _admit(self) -> None:
        """Move queued requests into free slots (lowest first, so the batch bucket stays small), within
        the prefill token budget (at least one request per iteration)."""
        budget = self.config.prefill_budget_tokens
        admitted = 0
        while True:
            free = self.stepper.free_slots()
            with self._cond:
                if not free or not self._waiting:
                    return
                h = self._waiting[0]
                if admitted and len(h.plan.ids) > budget:
                    return
                self._waiting.popleft()
            budget -= len(h.plan.ids)
            admitted += 1
            self._join(h, free[0])

    def _join(self, h: StreamHandle, slot: int) -> None:
        r = h.request
        h.started(len(h.plan.ids))
        try:
            emb = self.synth.embed_prompt(h.plan, r.seed)
            run = SlotRun(len(h.plan.ids), h.limit, h.max_steps, r.seed, r.cfg_scale, forced=r.frames is not None,
                          script=h.script, tag=h)
            self.stepper.join(slot, run, emb)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others keep running
            log.exception("request %s failed to start", h.request_id)
            self._end(h, f"error: {type(exc).__name__}",
                      exc if isinstance(exc, VvtrtError) else VvtrtError(f"the request failed: {exc}"))
            return
        h.slot = slot
        h.plan = None  # the voice clips are no longer needed

    def _deliver(self, events) -> None:
        now = time.perf_counter()
        for ev in events:
            h: StreamHandle = ev.run.tag
            if ev.audio is not None and not self._push(h, Chunk(ev.run.produced - 1, ev.audio, now)):
                continue
            if ev.stop_reason:
                self._end(h, ev.stop_reason)

    def _push(self, h: StreamHandle, chunk: Chunk) -> bool:
        """Hand `chunk` to its reader; a reader too far behind is cancelled (`SlowReader`, slot freed)."""
        self._frames_total += 1
        if h.push(chunk):
            return True
        self._drop(h)
        self._end(h, "cancelled: slow reader", SlowReader(
            f"request {h.request_id}: the reader fell {h.max_buffered} chunks "
            f"({h.max_buffered * 3200 / SAMPLE_RATE:.0f} s of audio) behind and was cancelled"))
        return False

    def _end(self, h: StreamHandle, reason: str, error: VvtrtError | None = None) -> None:
        if h.finish(reason, error):
            with self._cond:
                self._outcomes[reason.split(":")[0] if reason.startswith("error") else reason] += 1

    def _shutdown(self, calls) -> None:
        """Cancel whatever is still queued or running (lock held)."""
        for fn, fut in calls:
            fut.set_exception(EngineNotReady("the serving engine stopped"))
        for h in list(self._waiting) + self._leave_all():
            if h.finish("cancelled: shutdown", Cancelled(f"request {h.request_id}: the engine shut down")):
                self._outcomes["cancelled: shutdown"] += 1
        self._waiting.clear()

