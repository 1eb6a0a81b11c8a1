"""The serving core: one engine thread drives a model kind's `Stepper` for many independent requests.

It knows nothing about any model. It owns the engine thread (every device call), the admission queue and
the one count of in-flight work (queued + holding a slot: released the moment a request ends in the
engine, whoever still holds its socket), the handles and their bounded buffers, flow control (a run whose
reader is a buffer behind is held, not cancelled; only a reader that makes no progress for
`stall_timeout_s` is cancelled), cancellation, graceful drain, and health (after `max_step_failures`
consecutive failed device steps the engine reports unhealthy and refuses work).

One iteration: engine-thread calls, cancellations, (at an idle engine) a moment for a burst of arrivals to
settle, admissions into free slots, prompt work within the per-step token budget (all of it while no run is
stepping), hold/resume by each reader's progress, one batched step, delivery. A failure in one run's host
work ends that run; a failed step ends the runs in it.
"""
from __future__ import annotations

import collections
import gc
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from vvtrt.errors import VvtrtError
from vvtrt.serving.api import SAMPLE_RATE, Cancelled, Chunk, EngineBusy, EngineNotReady, EngineStats, SlowReader
from vvtrt.serving.handle import StreamHandle, wake_all
from vvtrt.serving.health import Health

log = logging.getLogger(__name__)
_ids = itertools.count(1)
IDLE_WAIT_S = 0.02


class StepFailed(Exception):
    """A stepper's device step failed; `tags` are the runs that were in it."""

    def __init__(self, tags, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.tags = list(tags)
        self.cause = cause


@dataclass(frozen=True)
class CoreLimits:
    """`max_queue`: requests waiting for a slot; `buffer_chunks`: a request's output buffer (frames of
    133 ms; a run this far ahead of its reader is held); `stall_timeout_s`: a held run whose reader takes
    nothing for this long is cancelled (`SlowReader`); `prefill_budget`: prompt tokens of prompt work
    between two steps while runs are stepping (None: no limit); `max_step_failures`: consecutive failed
    steps before the engine reports unhealthy; `burst_settle_s` / `burst_wait_s`: requests arriving together
    at an idle engine start together (see `EngineCore._settle_burst`)."""

    max_queue: int = 256
    buffer_chunks: int = 256
    stall_timeout_s: float = 30.0
    prefill_budget: int | None = None
    max_step_failures: int = 3
    burst_settle_s: float = 0.002
    burst_wait_s: float = 0.05


class EngineCore:
    """`EngineAPI` over one `Stepper` (see module doc)."""

    def __init__(self, stepper, limits: CoreLimits, id_prefix: str = "req"):
        self.stepper = stepper
        self.limits = limits
        self._prefix = id_prefix
        self.health = Health(limits.max_step_failures)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._waiting: collections.deque[StreamHandle] = collections.deque()
        self._admitted: dict[StreamHandle, None] = {}
        self._cancels: list[StreamHandle] = []
        self._calls: list[tuple] = []
        self._thread: threading.Thread | None = None
        self._ready = False
        self._stopping = False
        self._start_error: BaseException | None = None
        self._frames_total = 0
        self._outcomes: collections.Counter = collections.Counter()
        self._idle = True  # the last iteration found nothing to do (see `_settle_burst`)
        self.iterations: list[tuple[int, int]] | None = None  # (prompt tokens, stepped runs) per iteration, if kept

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready and self.health.ok

    def start(self) -> None:
        """Build the stepper on the engine thread (sizing, graphs); returns once requests are taken, or
        raises what the build raised (`CapacityError` when not one stream fits)."""
        if self._thread is not None:
            raise EngineNotReady("the engine was started already")
        started = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(started,), name="vvtrt-engine", daemon=True)
        self._thread.start()
        started.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new requests, let running and queued ones finish for up to `grace_s`, cancel the rest
        (`Cancelled`), and end the engine thread."""
        self._ready = False
        deadline = time.monotonic() + max(0.0, grace_s)
        with self._cond:
            while (self._waiting or self._admitted) and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- client calls (any thread) ----------------------------------------------------------------
    def submit(self, request) -> StreamHandle:
        """Check and queue a request; returns its handle at once. Raises InputError / CapacityError (this
        request can never run), EngineBusy (every slot and the queue are taken) or EngineNotReady."""
        self._check_ready()
        work = self.stepper.prepare(request)
        rid = getattr(request, "request_id", None) or f"{self._prefix}-{next(_ids)}"
        # room for one chunk past the hold: a pipelined stepper has the next step in flight when a run is held
        handle = StreamHandle(rid, request, self.limits.buffer_chunks + 1, self._cancel, on_read=self._on_read)
        handle.work = work
        with self._cond:
            self._check_ready()
            capacity = self.stepper.slots + self.limits.max_queue
            if len(self._waiting) + len(self._admitted) >= capacity:
                raise EngineBusy(f"all {self.stepper.slots} streams are busy and {len(self._waiting)} requests "
                                 "are queued: retry later")
            self._waiting.append(handle)
        self._wake.set()
        return handle

    def _check_ready(self) -> None:
        if not self.health.ok:
            raise EngineNotReady(f"the engine is unhealthy: {self.health.reason}; restart it")
        if not self._ready:
            raise EngineNotReady("the serving engine is not running (starting or shutting down)")

    def _cancel(self, handle: StreamHandle) -> None:
        if not handle.finish("cancelled", Cancelled(f"request {handle.request_id} was cancelled")):
            return
        with self._cond:
            self._outcomes["cancelled"] += 1
            if handle in self._waiting:
                self._waiting.remove(handle)
            else:
                self._cancels.append(handle)
        self._wake.set()

    def _on_read(self, handle: StreamHandle) -> None:
        if handle.held:
            self._wake.set()

    def encode_voice(self, wav):
        """Encode a voice clip once on the engine thread (see the stepper's `voice_job`)."""
        return self._call(self.stepper.voice_job(wav))

    def _call(self, fn):
        """Run `fn` on the engine thread at the next step boundary and return its result."""
        if not self._ready:
            raise EngineNotReady("the serving engine is not running")
        fut: Future = Future()
        with self._cond:
            self._calls.append((fn, fut))
        self._wake.set()
        return fut.result()

    def in_flight(self) -> int:
        """Requests queued or holding a slot (what admission counts)."""
        with self._cond:
            return len(self._waiting) + len(self._admitted)

    def stats(self) -> EngineStats:
        with self._cond:
            held = sum(1 for h in self._admitted if h.held)
            return EngineStats(self.ready, len(self._admitted), len(self._waiting), self.stepper.slots,
                               self._frames_total, self.stepper.prompt_tokens, dict(self._outcomes),
                               healthy=self.health.ok, held=held, step_failures=self.health.failures_total)

    # -- the engine thread ------------------------------------------------------------------------
    def _main(self, started: threading.Event) -> None:
        try:
            with torch.inference_mode():
                self.stepper.build(self._wake)
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._start_error = exc if isinstance(exc, VvtrtError) else VvtrtError(
                f"the serving engine could not start: {type(exc).__name__}: {exc}")
            started.set()
            return
        log.info("%s", self.stepper.describe())
        # The model, its compiled code and graphs are built: keep the collector's full passes from walking
        # those objects on every collection while streams run (a pause on the engine thread).
        gc.collect()
        gc.freeze()
        self._ready = True
        started.set()
        with torch.inference_mode():
            while self._iteration():
                pass

    def _iteration(self) -> bool:
        """One engine iteration (see module doc). False: stop."""
        self._wake.clear()
        with self._cond:
            calls, self._calls = self._calls, []
            cancels, self._cancels = self._cancels, []
            if self._stopping:
                self._shutdown(calls)
                return False
            idle = not (calls or cancels or self._waiting or self._admitted)
        if idle:
            self._idle = True
            self._wake.wait(0.1)
            return True
        for fn, fut in calls:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
        for h in cancels:
            self._forget(h)
        self._settle_burst()
        self._idle = False
        self._admit()
        stepping = self.stepper.running() > 0
        tokens = self.stepper.prompt_tokens
        events = self.stepper.prefill(self.limits.prefill_budget if stepping else None)
        self._flow()
        events += self._step()
        if self.iterations is not None:
            self.iterations.append((self.stepper.prompt_tokens - tokens, self.stepper.last_active))
        self._deliver(events)
        if not events and not self.stepper.last_active:
            self._wake.wait(IDLE_WAIT_S)  # every run waits for its reader or its text
        with self._cond:
            self._cond.notify_all()  # stop() waits for the slots to drain
        return True

    def _settle_burst(self) -> None:
        """A burst arriving at an idle engine starts whole: when the engine was idle, no run is admitted and
        more than one request waits, wait until none has arrived for `burst_settle_s` (at most
        `burst_wait_s`). Otherwise the first few arrivals take a step (or a prefill) of their own and the rest
        of the burst waits a whole step behind them. A lone request, one arriving while runs step, or a queue
        left when every run ended at once never waits."""
        with self._cond:
            if not self._idle or self._admitted or len(self._waiting) < 2:
                return
        settle, end = self.limits.burst_settle_s, time.monotonic() + self.limits.burst_wait_s
        while (left := end - time.monotonic()) > 0:
            self._wake.clear()
            if not self._wake.wait(min(settle, left)):
                return  # quiet for `settle`: the burst is in

    def _admit(self) -> None:
        """Queued requests into free slots, first come first served (each arming failure is its own)."""
        while self.stepper.free() > 0:
            with self._cond:
                if not self._waiting:
                    return
                h = self._waiting.popleft()
                self._admitted[h] = None
            h.started(getattr(h.work, "prompt_tokens", 0))
            try:
                h.slot = self.stepper.admit(h.work, h)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others keep running
                log.warning("request %s failed to start: %s", h.request_id, exc)
                self._forget(h)
                self._end(h, f"error: {type(exc).__name__}", _as_error(exc, "the request failed to start"))
            h.work = None

    def _flow(self) -> None:
        """Hold runs whose reader is a buffer behind, resume those it caught up with, cancel stalled ones."""
        now = time.monotonic()
        cap, stall = self.limits.buffer_chunks, self.limits.stall_timeout_s
        for h in list(self._admitted):
            full = h.buffered() >= cap
            if full != h.held:
                h.held = full
                h.held_since = now
                self.stepper.hold(h, full)
            if h.held and now - max(h.held_since, h.last_read) > stall:
                self._forget(h)
                self._end(h, "cancelled: slow reader", SlowReader(
                    f"request {h.request_id}: the reader took no audio for {stall:g} s with "
                    f"{cap * 3200 / SAMPLE_RATE:.1f} s of audio buffered and was cancelled"))

    def _step(self) -> list:
        try:
            events = self.stepper.step()
        except Exception as exc:  # noqa: BLE001 - the runs in the step fail; the engine keeps serving
            failed = exc.tags if isinstance(exc, StepFailed) else list(self._admitted)
            cause = exc.cause if isinstance(exc, StepFailed) else exc
            log.error("device step failed (%d runs end): %s: %s", len(failed), type(cause).__name__, cause)
            self.health.failed(cause)
            for h in failed:
                self._forget(h)
                self._end(h, f"error: {type(cause).__name__}", VvtrtError(f"the device step failed: {cause}"))
            return []
        if self.stepper.last_active:
            self.health.succeeded()
        return events

    def _deliver(self, events) -> None:
        now = time.perf_counter()
        wakes: list = []  # the readers to wake: once per event loop after the step's chunks, not per stream
        try:
            self._deliver_events(events, now, wakes)
        finally:
            wake_all(wakes)

    def _deliver_events(self, events, now: float, wakes: list) -> None:
        for ev in events:
            h: StreamHandle = ev.tag
            if ev.audio is not None:
                self._frames_total += 1
                if not h.push(Chunk(ev.index, ev.audio, now), wakes):  # held runs never get here: a safety net
                    self._forget(h)
                    self._end(h, "cancelled: slow reader", SlowReader(f"request {h.request_id}: buffer overflow"))
                    continue
            if ev.error is not None:
                self._forget(h, release=False)
                self._end(h, f"error: {type(ev.error).__name__}", _as_error(ev.error, "the request failed"))
            elif ev.stop_reason:
                self._forget(h, release=False)
                self._end(h, ev.stop_reason)

    def _forget(self, h: StreamHandle, release: bool = True) -> None:
        """`h` no longer holds a slot (its run ended, failed or was cancelled)."""
        if release:
            try:
                self.stepper.release(h)
            except Exception as exc:  # noqa: BLE001 - freeing one run must not stop the engine
                log.warning("releasing request %s: %s", h.request_id, exc)
        with self._cond:
            self._admitted.pop(h, None)

    def _end(self, h: StreamHandle, reason: str, error: VvtrtError | None = None) -> None:
        if h.finish(reason, error):
            with self._cond:
                self._outcomes[reason.split(":")[0] if reason.startswith("error") else reason] += 1

    def _shutdown(self, calls) -> None:
        """Cancel whatever is still queued or running (lock held)."""
        for fn, fut in calls:
            fut.set_exception(EngineNotReady("the serving engine stopped"))
        for h in list(self._waiting) + list(self._admitted):
            try:
                self.stepper.release(h)
            except Exception as exc:  # noqa: BLE001
                log.debug("release at shutdown: %s", exc)
            if h.finish("cancelled: shutdown", Cancelled(f"request {h.request_id}: the engine shut down")):
                self._outcomes["cancelled: shutdown"] += 1
        self._waiting.clear()
        self._admitted.clear()


def _as_error(exc: BaseException, what: str) -> VvtrtError:
    return exc if isinstance(exc, VvtrtError) else VvtrtError(f"{what}: {type(exc).__name__}: {exc}")
