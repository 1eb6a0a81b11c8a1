"""Server metrics: Prometheus series (`/metrics`) and a short history for the live dashboard.

A sampler calls `sample()` once a second: it reads the engine's counters (active streams, queue depth,
frames and prefill tokens handed out) and NVML, turns counter deltas into frames/s and prefill tokens/s,
and keeps the last `HISTORY_S` seconds of points (with TTFA / inter-chunk percentiles of the chunks seen
in the last window) for `/dashboard/data`.
"""
from __future__ import annotations

import collections
import math
import re
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

HISTORY_S = 600
WINDOW_S = 10.0
_LATENCY_BUCKETS = (.005, .01, .02, .04, .06, .08, .1, .133, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 30)
_RTF_BUCKETS = (.05, .1, .2, .3, .5, .7, .85, 1, 1.2, 1.5, 2, 3, 5, 10)


def outcome_label(stop_reason: str) -> str:
    """A stop reason as a Prometheus label value: 'max frames' -> max_frames, 'error: …' -> error."""
    head = (stop_reason or "unknown").split(":")[0].strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", head).strip("_") or "unknown"


class ServerMetrics:
    def __init__(self, gpu_monitor=None):
        self.registry = r = CollectorRegistry()
        self.gpu = gpu_monitor
        self.requests = Counter("vvtrt_requests", "Requests by outcome (stop reason or refusal).", ["outcome"],
                                registry=r)
        self.truncated = Counter("vvtrt_streams_truncated", "Streams cut short, by reason (slow_reader, shutdown, "
                                 "cancelled, error): the client got an aborted body or a non-1000 close.",
                                 ["reason"], registry=r)
        self.active = Gauge("vvtrt_active_streams", "Requests holding an engine slot.", registry=r)
        self.queued = Gauge("vvtrt_queue_depth", "Requests admitted and waiting for a slot.", registry=r)
        self.max_streams = Gauge("vvtrt_max_streams", "Engine slots.", registry=r)
        self.ttfa = Histogram("vvtrt_ttfa_seconds", "Time from request to first audio chunk.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.gap = Histogram("vvtrt_inter_chunk_seconds", "Time between consecutive chunks of a stream.",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram("vvtrt_request_rtf", "Real-time factor of finished requests (wall / audio).",
                             buckets=_RTF_BUCKETS, registry=r)
        self.fps = Gauge("vvtrt_frames_per_second", "Frames handed out per second (all streams).", registry=r)
        self.prefill_tps = Gauge("vvtrt_prefill_tokens_per_second", "Prompt tokens prefilled per second.",
                                 registry=r)
        self.ready = Gauge("vvtrt_ready", "1 when the engine accepts requests.", registry=r)
        self.healthy = Gauge("vvtrt_engine_healthy", "0 after consecutive failed device steps (restart it).",
                             registry=r)
        self.held = Gauge("vvtrt_held_streams", "Streams held because their client reads slower than real time.",
                          registry=r)
        self.step_failures = Gauge("vvtrt_step_failures", "Failed device steps since start.", registry=r)
        self.startup = Gauge("vvtrt_startup_seconds", "Engine start-up time by phase (load: model and runners; "
                             "build: sizing, compiling, capturing; total).", ["phase"], registry=r)
        self.compile_cache = Gauge("vvtrt_compile_cache_lookups", "torch.compile cache lookups during start-up, by "
                                   "result (hit, miss); none without torch-compile.", ["result"], registry=r)
        self._gpu_gauges = {k: Gauge(f"vvtrt_gpu_{k}", h, ["gpu"], registry=r) for k, h in (
            ("utilization_percent", "GPU utilisation (NVML)."), ("memory_used_bytes", "GPU memory used."),
            ("memory_total_bytes", "GPU memory total."), ("temperature_celsius", "GPU temperature."),
            ("power_watts", "GPU power draw."), ("sm_clock_mhz", "GPU SM clock."))}
        self.history = collections.deque(maxlen=HISTORY_S)
        self._recent = {"ttfa": collections.deque(), "gap": collections.deque(), "rtf": collections.deque()}
        self._last = None  # (t, frames_total, prefill_tokens_total)

    # -- observations from request handlers ----------------------------------------------------------
    def set_startup(self, startup: dict | None) -> None:
        """The engine's start-up record (`Engine.startup`), once it is ready."""
        if not startup:
            return
        for phase in ("load", "build", "total"):
            if startup.get(f"{phase}_s") is not None:
                self.startup.labels(phase).set(startup[f"{phase}_s"])
        cache = (startup.get("compile") or {}).get("cache")
        if cache:
            self.compile_cache.labels("hit").set(cache["fx_graph_hits"] + cache["aot_hits"])
            self.compile_cache.labels("miss").set(cache["fx_graph_misses"] + cache["aot_misses"])

    def observe_ttfa(self, seconds: float) -> None:
        self.ttfa.observe(seconds)
        self._recent["ttfa"].append((time.monotonic(), seconds))

    def observe_gap(self, seconds: float) -> None:
        self.gap.observe(seconds)
        self._recent["gap"].append((time.monotonic(), seconds))

    def observe_done(self, outcome: str, rtf: float | None = None) -> None:
        self.requests.labels(outcome=outcome).inc()
        if rtf is not None and math.isfinite(rtf):
            self.rtf.observe(rtf)
            self._recent["rtf"].append((time.monotonic(), rtf))

    def observe_truncated(self, reason: str) -> None:
        self.truncated.labels(reason=reason).inc()

    # -- the once-a-second sampler ---------------------------------------------------------------------
    def sample(self, stats) -> dict:
        """Update gauges from `stats` (EngineStats or None) and NVML; append and return a history point."""
        now = time.monotonic()
        point = {"t": time.time()}
        if stats is not None:
            self._engine_point(now, stats, point)
        self._window_point(now, point)
        gpus = self.gpu.read() if self.gpu is not None else []
        for g in gpus:
            self._set_gpu(g)
        point["gpus"] = [{"index": g.index, "name": g.name, "util": g.util_percent,
                          "mem_used": g.memory_used_bytes, "mem_total": g.memory_total_bytes,
                          "temp": g.temperature_c, "power": g.power_w, "sm_clock": g.sm_clock_mhz} for g in gpus]
        self.history.append(point)
        return point

    def _engine_point(self, now: float, stats, point: dict) -> None:
        self.active.set(stats.active)
        self.queued.set(stats.queued)
        self.max_streams.set(stats.max_streams)
        self.ready.set(1 if stats.ready else 0)
        self.healthy.set(1 if stats.healthy else 0)
        self.held.set(stats.held)
        self.step_failures.set(stats.step_failures)
        fps = tps = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            fps = max(0, stats.frames_total - self._last[1]) / dt
            tps = max(0, stats.prefill_tokens_total - self._last[2]) / dt
        self._last = (now, stats.frames_total, stats.prefill_tokens_total)
        self.fps.set(fps)
        self.prefill_tps.set(tps)
        point.update(active=stats.active, queued=stats.queued, max_streams=stats.max_streams, ready=stats.ready,
                     fps=round(fps, 3), prefill_tps=round(tps, 1), frames_total=stats.frames_total)

    def _window_point(self, now: float, point: dict) -> None:
        for key, dq in self._recent.items():
            while dq and dq[0][0] < now - WINDOW_S:
                dq.popleft()
            vals = np.array([v for _, v in dq], dtype=np.float64)
            point[f"{key}_p50"] = float(np.percentile(vals, 50)) if len(vals) else None
            point[f"{key}_p99"] = float(np.percentile(vals, 99)) if len(vals) else None

    def _set_gpu(self, g) -> None:
        lab = str(g.index)
        for key, val in (("utilization_percent", g.util_percent), ("memory_used_bytes", g.memory_used_bytes),
                         ("memory_total_bytes", g.memory_total_bytes), ("temperature_celsius", g.temperature_c),
                         ("power_watts", g.power_w), ("sm_clock_mhz", g.sm_clock_mhz)):
            self._gpu_gauges[key].labels(gpu=lab).set(val)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def recent(self, seconds: float) -> list[dict]:
        cutoff = time.time() - seconds
        return [p for p in self.history if p["t"] >= cutoff]
