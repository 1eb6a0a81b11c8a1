"""The engine phase of the Realtime bench: N streams through `RealtimeEngine`, as a server would run them.

For each N: an engine of N slots, a warm pass of N streams as long as the timed one (with torch.compile'd
runners the engine captures lazily, so this pass compiles and captures exactly the buckets the timed pass
uses, and the engine's loop has the one batch bucket N, so streams admitted over several ticks cannot ask
for a shape the warm pass did not compile; otherwise every bucket's graphs are captured at start), then N
requests submitted at once, each forced to `frames` frames (`RealtimeSpeechRequest.frames`), and
read by one host thread: "asyncio" (every handle read as chunks come, by one event loop: what a server
does) or "buffer" (handles read one after another, the rest held in their buffers: the least reader
work, to see what reading costs the engine thread through the GIL). Times are the engine's own (the
handle's summary: submit, each chunk's hand-out), so a late reader does not change them; the reader lag
(hand-out -> the reader has it) says what reading costs.

Real time for N streams: every stream's steady chunk rate (chunks after the first over the time they
took) is at least one frame per frame of audio (hop / 24 kHz = 133.3 ms), AND the inter-chunk gap p99
over all streams is within `gap_p99_bound_ms` (default one frame), AND every stream ended ok.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from vvtrt.reports.stats import summary
from vvtrt.serving.api import SAMPLE_RATE

log = logging.getLogger(__name__)


def _stats(values, keys=("p50", "p99", "max")) -> dict:
    s = summary(values, (50, 99))
    return {k: None if s[k] is None else round(s[k], 3) for k in keys}


def _config(rt, n: int, frames: int, s):
    from vvtrt.realtime.engine import RealtimeEngineConfig

    return RealtimeEngineConfig(max_streams=n, max_queue=max(n, 1), buffer_chunks=frames + 8, steps=s.steps,
                                solver=s.solver, capacity=s.capacity, capture=not rt.compile, noise=s.noise)


def _submit(engine, text: str, n: int, frames: int, s, seed0: int) -> list:
    from vvtrt.realtime.engine import RealtimeSpeechRequest

    return [engine.submit(RealtimeSpeechRequest(text, "bench", seed=seed0 + i, cfg_scale=s.cfg_scale, frames=frames))
            for i in range(n)]


async def _read_async(handles) -> list[float]:
    lags: list[float] = []

    async def one(h):
        async for chunk in h:
            lags.append(time.perf_counter() - chunk.t)

    await asyncio.gather(*(one(h) for h in handles), return_exceptions=True)
    return lags


def _read_buffered(handles) -> list[float]:
    lags: list[float] = []
    for h in handles:
        try:
            for chunk in h:
                lags.append(time.perf_counter() - chunk.t)
        except Exception:  # noqa: BLE001 - the summary says how the stream ended
            pass
    return lags


def _read(handles, reader: str) -> list[float]:
    return asyncio.run(_read_async(handles)) if reader == "asyncio" else _read_buffered(handles)


class GcPauses:
    """The garbage collector's pauses while in use (`gc.callbacks`), any thread: count, generation-2
    count, max ms; a tick that a collection stretches shows up as one long inter-chunk gap."""

    def __init__(self):
        self.pauses: list[tuple[int, float]] = []
        self._t0 = None

    def _callback(self, phase, info) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.pauses.append((info["generation"], (time.perf_counter() - self._t0) * 1e3))
            self._t0 = None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict:
        ms = [p for _, p in self.pauses]
        return {"count": len(ms), "generation2": sum(g == 2 for g, _ in self.pauses),
                "max_ms": round(max(ms), 3) if ms else None, "total_ms": round(sum(ms), 3)}


def _stream_rates(summaries) -> list[float]:
    """Chunks a second of each stream after its first chunk."""
    out = []
    for m in summaries:
        span = sum(m.chunk_gaps_s)  # first chunk -> last chunk
        if m.frames > 1 and span > 0:
            out.append((m.frames - 1) / span)
    return out


def _playback(summaries, frame_ms: float) -> dict:
    """Informational (not the real-time rule): a client that starts playing a stream one frame after its first
    chunk runs dry when chunk i arrives later than (i + 1) frames after the first; streams that would, and the
    latest chunk's lateness."""
    late, worst = 0, 0.0
    for m in summaries:
        t, over = 0.0, 0.0
        for i, gap in enumerate(m.chunk_gaps_s, start=1):
            t += gap * 1e3
            over = max(over, t - (i + 1) * frame_ms)
        late += over > 0
        worst = max(worst, over)
    return {"start_buffer_ms": round(frame_ms, 3), "streams_running_dry": late, "worst_lateness_ms": round(worst, 3)}


def _summarise(n: int, frames: int, summaries, lags, t_submit: float, s, frame_ms: float) -> dict:
    ok = sum(m.frames == frames and m.stop_reason == "forced_eos" for m in summaries)
    ttfa = [m.ttfa_s * 1e3 for m in summaries if m.first_chunk_t]
    gaps = [g * 1e3 for m in summaries for g in m.chunk_gaps_s]
    rates = _stream_rates(summaries)
    last = max((m.first_chunk_t + sum(m.chunk_gaps_s) for m in summaries if m.first_chunk_t), default=t_submit)
    chunks = sum(m.frames for m in summaries)
    bound = s.gap_p99_bound_ms or frame_ms
    need_rate = 1e3 / frame_ms
    gap = _stats(gaps, ("p50", "p99", "max", "mean"))
    realtime = (ok == n and len(rates) == n and min(rates) >= need_rate
                and gap["p99"] is not None and gap["p99"] <= bound)
    return {"streams": n, "frames_per_stream": frames, "ok": ok,
            "outcomes": sorted({m.stop_reason for m in summaries}), "ttfa_ms": _stats(ttfa), "gap_ms": gap,
            "chunks_per_s": round(chunks / (last - t_submit), 2) if last > t_submit else None,
            "stream_rate_per_s": {**_stats(rates, ("min", "p50")), "needed": round(need_rate, 3)},
            "rtf": _stats([m.rtf for m in summaries if m.frames], ("p50", "max")),
            "reader_lag_ms": _stats([x * 1e3 for x in lags], ("p50", "p99")),
            "gap_p99_bound_ms": round(bound, 3), "playback": _playback(summaries, frame_ms),
            "realtime": bool(realtime)}


def engine_pass(rt, voice, text: str, n: int, s) -> dict:
    """One engine of `n` slots: start (capture), a warm pass, the timed pass; its figures."""
    from vvtrt.realtime.engine import RealtimeEngine

    frames = s.engine_frames or s.frames
    frame_ms = 1e3 * rt.cfg.hop / SAMPLE_RATE
    saved_buckets = rt.batch_buckets
    if rt.compile:
        rt.batch_buckets = (n,)  # see the module doc
    engine = RealtimeEngine(rt, _config(rt, n, frames, s), voices={"bench": voice})
    t0 = time.perf_counter()
    try:
        engine.start()
        start_s = time.perf_counter() - t0
        loop = engine.stepper.loop
        t_warm = time.perf_counter()
        _read(_submit(engine, text, n, frames, s, 5000), s.engine_reader)
        warm_s = time.perf_counter() - t_warm
        t_submit = time.perf_counter()
        handles = _submit(engine, text, n, frames, s, 9000)
        submit_s = time.perf_counter() - t_submit
        with GcPauses() as pauses:
            lags = _read(handles, s.engine_reader)
        out = _summarise(n, frames, [h.summary() for h in handles], lags, t_submit, s, frame_ms)
        out.update({"engine_streams": engine.streams, "start_seconds": round(start_s, 2),
                    "warm_pass_seconds": round(warm_s, 2), "capture": "lazy" if rt.compile else "at start",
                    "batch_buckets": list(loop.batch_buckets), "gc_pauses": pauses.summary(),
                    "submit_ms": round(submit_s * 1e3, 3), "graphs": len(loop.graphs),
                    "capture_error": loop.capture_error, "reader": s.engine_reader})
    finally:
        engine.stop(grace_s=0.0)
        rt.drop_kept()
        rt.batch_buckets = saved_buckets
    out["stats"] = dict(engine.stats().requests_by_outcome)  # after stop: every outcome is counted
    return out


def measure_engine(rt, voice, text: str, s) -> dict:
    """`text` spoken by every N of `s.engine_streams` streams; the capacity through the engine is the largest
    real-time N measured. A pass that fails (out of memory, say) is listed with its error; the others stay."""
    import gc

    import torch

    passes = []
    for n in s.engine_streams:
        log.info("realtime bench: %d streams through the engine", n)
        try:
            passes.append(engine_pass(rt, voice, text, n, s))
        except Exception as exc:  # noqa: BLE001 - recorded; the passes already measured are kept
            log.error("realtime bench: the engine pass of %d streams failed: %s: %s", n, type(exc).__name__, exc)
            passes.append({"streams": n, "error": f"{type(exc).__name__}: {exc}", "realtime": False})
        gc.collect()  # the engine, its handles and its loop, before the next engine allocates its own
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()
    ok = [p["streams"] for p in passes if p["realtime"]]
    frame_ms = 1e3 * rt.cfg.hop / SAMPLE_RATE
    return {"passes": passes, "realtime_capacity_streams": max(ok) if ok else None,
            "realtime_definition": (
                f"every stream ended ok with its frames, every stream's chunk rate after its first chunk >= "
                f"{1e3 / frame_ms:.2f} chunks/s (one frame of audio, {frame_ms:.1f} ms, per chunk), and the "
                f"inter-chunk gap p99 over all streams <= {s.gap_p99_bound_ms or frame_ms:.1f} ms"),
            "reader": s.engine_reader}
