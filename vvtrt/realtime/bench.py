"""The Realtime benchmark (targets: TTFA p50 <= 20 ms / p99 <= 40 ms warm, frame step <= 2 ms at
one stream, >= 500 real-time streams per H100 through the engine, <= 3 GB NVML memory for one stream).

    settings = RealtimeBenchSettings(batches=(1, 64), engine_streams=(64, 256))
    report = run_realtime_bench(lambda: (runner, voice), settings, {"preset": ..., "backend": ...})

Measured, in this order, in one process (K, solver and guidance scale from the settings):

1. TTFA: `requests` warm single-stream requests (after `warmup` ones that capture the graphs): time from
   handing the text to `RealtimeRunner.stream` to its first chunk (first window + first frame).
2. Memory of one stream: NVML's figure for this process (sampled from before CUDA starts) and torch's
   allocator peak, after the single-stream runs (loop capacity = the runner's). Before step 3: its
   per-component graphs are the bench's, not a stream's (measuring after them overstated it once).
3. Frame step at one stream: the speech step and the 5-token text-window step replayed back to back, and
   each of their components alone with the glue between them (`vvtrt.realtime.bench_components`).
4. Batches: N streams (`batches`) run `frames` frames through one `RealtimeStepper`, the second of two
   identical passes timed tick by tick. Real time: mean tick <= one frame of audio (hop / 24 kHz).
   The component breakdown is measured again at the largest batch (`breakdown_largest`).
5. Engine: N streams (`engine_streams`) submitted at once to a `RealtimeEngine` (`vvtrt.realtime.bench_engine`).

Capacities are the largest measured N that is real time, never extrapolated.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

from vvtrt.errors import InputError

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000
TEXT = ("Streaming speech starts after the first few words, while the rest of the text is still arriving "
        "from the model that writes it.")
READERS = ("asyncio", "buffer")


@dataclass(frozen=True)
class RealtimeBenchSettings:
    """What one Realtime bench run measures (see module doc). `engine_frames`: frames per engine stream
    (None: `frames`); `engine_reader`: "asyncio" (one thread reads every stream as chunks come) or
    "buffer" (streams are read one after another, the rest buffered); `gap_p99_bound_ms`: the engine's
    inter-chunk gap p99 limit for real time (None: one frame of audio); `noise`: where the batch and engine
    runs draw their noise ("device" as the serving engine by default, or "host"; the one-stream TTFA and
    step runs draw on the host, as `RealtimeRunner.stream`)."""

    requests: int = 20
    warmup: int = 3
    ttfa_frames: int = 7
    frames: int = 30
    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512)
    engine_streams: tuple[int, ...] = ()
    engine_frames: int | None = None
    engine_reader: str = "asyncio"
    capacity: int = 1024
    replays: int = 200
    steps: int = 5
    cfg_scale: float = 1.5
    solver: str = "dpmsolver++"
    gap_p99_bound_ms: float | None = None
    breakdown_largest: bool = True
    noise: str = "device"

    def __post_init__(self):
        from vvtrt.option_checks import check_cfg, check_counts

        check_counts(self, ("requests", "ttfa_frames", "frames", "capacity", "replays", "steps"))
        check_counts(self, ("warmup",), lowest=0)
        for name in ("batches", "engine_streams"):
            if any(not isinstance(n, int) or n < 1 for n in getattr(self, name)):
                raise InputError(f"{name} must be stream counts >= 1, got {getattr(self, name)!r}")
        check_counts(self, ("engine_frames",), optional=True)
        if self.engine_reader not in READERS:
            raise InputError(f"engine_reader must be one of {', '.join(READERS)}, got {self.engine_reader!r}")
        if self.noise not in ("device", "host"):
            raise InputError(f"noise must be device or host, got {self.noise!r}")
        check_cfg(self.cfg_scale)


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32); an InputError naming `option` otherwise."""
    try:
        out = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} takes comma-separated stream counts, got {text!r}") from None
    if any(n < 1 for n in out):
        raise InputError(f"{option} takes stream counts >= 1, got {text!r}")
    return out


def powers_of_two_to(n: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `n`, then `n`."""
    return tuple(1 << i for i in range(max(0, math.ceil(math.log2(n))))) + (n,) if n > 1 else (1,)


def pct(xs, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(xs, dtype=float), q)), 3) if len(xs) else None


def mean(xs):
    return round(sum(xs) / len(xs), 3) if len(xs) else None


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_ttfa(rt, voice, s: RealtimeBenchSettings) -> dict:
    ttfa, ticks = [], []
    for i in range(s.warmup + s.requests):
        t0 = time.perf_counter()
        gen = rt.stream(TEXT, voice, seed=i, cfg_scale=s.cfg_scale, steps=s.steps, solver=s.solver,
                        max_frames=s.ttfa_frames)
        next(gen)
        first = time.perf_counter() - t0
        t_prev = time.perf_counter()
        per = []
        for _ in gen:
            now = time.perf_counter()
            per.append(now - t_prev)
            t_prev = now
        if i >= s.warmup:
            ttfa.append(first * 1e3)
            ticks += [p * 1e3 for p in per]
    return {"samples_ms": [round(x, 3) for x in ttfa], "p50_ms": pct(ttfa, 50), "p99_ms": pct(ttfa, 99),
            "mean_ms": mean(ttfa), "tick_ms_p50": pct(ticks, 50), "tick_ms_mean": mean(ticks),
            "frames_per_request": s.ttfa_frames}


def measure_step(rt, voice, s: RealtimeBenchSettings) -> tuple[dict, dict, dict]:
    """The one-stream step times, its component breakdown, and the buckets it used."""
    from vvtrt.realtime.bench_components import measure_components

    stepper = rt.checkout(1, s.steps, s.solver)
    try:
        stepper.open(rt.request(TEXT, voice, seed=0, cfg_scale=s.cfg_scale, steps=s.steps, solver=s.solver,
                                max_frames=10 ** 6))
        for _ in range(7):  # one window and its six frames: the buckets of a running stream
            stepper.tick()
        loop = stepper.loop
        lm, pos = stepper.lengths(next(iter(stepper.runs.values())))
        need = {"tts": pos + 5, "lm": lm}
        s_tts, s_lm = loop.kv_bucket(need["tts"]), loop.kv_bucket(need["lm"])
        parts = measure_components(loop, 1, s_tts, s_lm, s.replays)
        graphs = sorted(str(k) for k in loop.graphs)
    finally:
        rt.checkin(stepper)
    speech, text = parts["speech"]["step_ms"], parts["text_window"]["step_ms"]
    step = {"speech_step_ms": speech, "text_window_step_ms": text, "replays": s.replays,
            "per_frame_ms_with_windows": round(speech + text / 6, 4), "kv_bucket": s_tts,
            "graphs": graphs, "cuda_graphs": loop.use_graphs and loop.capture_error is None,
            "capture_error": loop.capture_error}
    return step, parts, need


def _batch_pass(rt, voice, n: int, s: RealtimeBenchSettings):
    stepper = rt.checkout(n, s.steps, s.solver, capacity=s.capacity, noise=s.noise)
    ticks, kinds = [], []
    try:
        for i in range(n):
            stepper.open(rt.request(TEXT, voice, seed=1000 + i, cfg_scale=s.cfg_scale, steps=s.steps,
                                    solver=s.solver, max_frames=s.frames))
        while stepper.busy:
            t0 = time.perf_counter()
            events = stepper.tick()
            ticks.append((time.perf_counter() - t0) * 1e3)
            kinds.append(stepper.last_active)
            if not events:
                break
    finally:
        rt.checkin(stepper)
    return stepper.loop, ticks, kinds


def measure_batch(rt, voice, n: int, s: RealtimeBenchSettings, need: dict | None = None) -> dict:
    """N streams through one stepper; with `need` (the one-stream positions) also the component
    breakdown at batch N on that loop (`breakdown`)."""
    import torch

    from vvtrt.realtime.bench_components import measure_components

    dev = rt.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _batch_pass(rt, voice, n, s)  # captures the graphs of the buckets this run uses
    loop, ticks, active = _batch_pass(rt, voice, n, s)
    full = [t for t, a in zip(ticks, active) if a == n]
    text_ticks = full[0::6]  # streams start together: every 6th tick runs the text window too
    speech_ticks = [t for i, t in enumerate(full) if i % 6]
    steady = full[:len(full) // 6 * 6] or full
    avg = sum(steady) / len(steady) if steady else float("nan")
    frame_ms = 1e3 * rt.cfg.hop / SAMPLE_RATE
    out = {"streams": n, "ticks": len(full), "tick_ms_mean": round(avg, 3), "tick_ms_p50": pct(steady, 50),
           "tick_ms_max": round(max(steady), 3) if steady else None, "text_tick_ms_mean": mean(text_ticks),
           "speech_tick_ms_mean": mean(speech_ticks),
           "realtime_factor": round(frame_ms / avg, 2) if steady else None, "realtime": bool(avg <= frame_ms),
           "kv_bytes": loop.kv_bytes(), "capacity": loop.capacity, "graphs": len(loop.graphs),
           "capture_seconds": round(loop.capture_seconds, 2),
           "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None}
    if need is not None:
        b = loop.batch_bucket(n)
        out["breakdown"] = measure_components(loop, b, loop.kv_bucket(need["tts"]), loop.kv_bucket(need["lm"]),
                                              s.replays)
    rt.drop_kept()
    del loop
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _guarded_batch(rt, voice, n: int, s: RealtimeBenchSettings, need) -> dict:
    """`measure_batch`, or the error of a batch that failed (out of memory, say): the others are kept."""
    try:
        return measure_batch(rt, voice, n, s, need)
    except Exception as exc:  # noqa: BLE001 - recorded in the report
        log.error("realtime bench: the batch of %d streams failed: %s: %s", n, type(exc).__name__, exc)
        rt.drop_kept()
        return {"streams": n, "error": f"{type(exc).__name__}: {exc}", "realtime": False}


def _memory(rt, sampler) -> dict:
    import torch

    dev = rt.device
    _sync(dev)
    mem = sampler.snapshot() if sampler else {"nvml_process_status": "not measured: not a CUDA run"}
    mem["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    mem["capacity"] = rt.capacity
    return mem


def _header(rt, voice, s: RealtimeBenchSettings, meta: dict, load_s: float) -> dict:
    return {**meta, "kind": "realtime-bench", "device": str(rt.device), "steps": s.steps,
            "cfg_scale": s.cfg_scale, "solver": s.solver,
            "cuda_graphs": bool(rt.graphs and rt.device.type == "cuda"), "compile": rt.compile, "text": TEXT,
            "text_tokens": len(rt.tok.encode(TEXT)) + 1, "voice_lengths": voice.lengths(),
            "load_seconds": round(load_s, 2), "frame_ms": round(1e3 * rt.cfg.hop / SAMPLE_RATE, 3),
            "settings": asdict(s)}


def run_realtime_bench(load, s: RealtimeBenchSettings, meta: dict, device) -> dict:
    """Every phase (module doc) on what `load()` returns, `(RealtimeRunner, VoicePreset)`; `meta` (preset,
    dtype, backend, ...) heads the report. NVML sampling starts before `load` on a CUDA `device`."""
    import torch

    from vvtrt.realtime.bench_engine import measure_engine
    from vvtrt.reports.environment import collect_environment
    from vvtrt.reports.telemetry import ProcessMemorySampler

    dev = torch.device(device)
    sampler = ProcessMemorySampler(device_index=dev.index or 0).start() if dev.type == "cuda" else None
    try:
        t0 = time.perf_counter()
        rt, voice = load()
        report = _header(rt, voice, s, meta, time.perf_counter() - t0)
        log.info("realtime bench: TTFA over %d requests", s.requests)
        report["ttfa"] = measure_ttfa(rt, voice, s)
        # before the step's component breakdown, whose per-component graphs one stream never holds
        report["memory_one_stream"] = _memory(rt, sampler)
        report["one_stream_step"], one, need = measure_step(rt, voice, s)
        rt.drop_kept()
        report["batches"] = []
        for i, n in enumerate(s.batches):
            log.info("realtime bench: %d streams through one stepper", n)
            last = s.breakdown_largest and n == max(s.batches) and i == s.batches.index(n)
            report["batches"].append(_guarded_batch(rt, voice, n, s, need if last else None))
        report["component_breakdown"] = [one] + [b.pop("breakdown") for b in report["batches"] if "breakdown" in b]
        ok = [b["streams"] for b in report["batches"] if b["realtime"]]
        report["realtime_capacity_streams"] = max(ok) if ok else None
        report["engine"] = measure_engine(rt, voice, TEXT, s)
        if sampler:
            report["memory_peak_whole_run"] = sampler.snapshot()
    finally:
        if sampler:
            sampler.stop()
    report["environment"] = collect_environment()
    return report
