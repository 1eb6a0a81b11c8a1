"""`vvtrt bench-serving`: open-loop load on the serving engine.

At each load level, requests with different prompt lengths (scripts of `prompt_words` words, cycled)
either arrive as a Poisson process at `level` requests a second (`mode="rate"`), or are held at `level`
in flight (`mode="concurrency"`: a new one is submitted as soon as one ends). One asyncio reader per
request reads its chunks as a server would. Per level: TTFA p50/p99 (from submit, queueing included),
inter-chunk gap p50/p99 at the reader, per-stream RTF, refusals, and the streams in flight. The largest
level at which every stream stays real time (p99 gap < 133 ms and TTFA p99 < 1 s) is the headline.
Random-weight models never choose to speak: every request forces `frames` frames.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vvtrt.errors import InputError
from vvtrt.reports.stats import summary

log = logging.getLogger(__name__)
FRAME_S = 3200 / 24000
MODES = ("rate", "concurrency")
WORDS = ("alpha", "river", "stone", "light", "seven", "market", "window", "quiet", "garden", "orbit")


@dataclass(frozen=True)
class ServingLoad:
    mode: str = "concurrency"
    levels: tuple[float, ...] = (1, 4, 16, 64)
    requests: int = 32  # per level (concurrency mode: at least 2 x the level are run)
    frames: int = 64
    prompt_words: tuple[int, ...] = (8, 64, 256)
    cfg_scale: float = 1.3
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_levels(self.mode, self.levels, self.requests)
        if self.requests < 1 or self.frames < 1 or not self.prompt_words or min(self.prompt_words) < 1:
            raise InputError("--requests, --frames and every --prompt-words must be >= 1")
        if max(self.prompt_words) > MAX_PROMPT_WORDS or len(self.prompt_words) > MAX_LEVELS:
            raise InputError(f"--prompt-words: at most {MAX_LEVELS} lengths of at most {MAX_PROMPT_WORDS} words, "
                             f"got {','.join(map(str, self.prompt_words))}")


MAX_LEVELS = 32
MAX_CONCURRENCY = 4096  # streams held in flight (far above any engine's slots)
MAX_REQUESTS = 100_000
MAX_ARRIVAL_S = 600.0  # rate mode: the arrivals of one level span --requests / rate seconds at most this
MAX_PROMPT_WORDS = 100_000


def check_levels(mode: str, levels, requests: int) -> None:
    """Load levels a run can finish: finite, positive, bounded (a vanishing rate would wait for ever, a
    huge concurrency would create its tasks all at once)."""
    import math

    shown = ",".join(f"{x:g}" for x in levels)
    if not levels or len(levels) > MAX_LEVELS:
        raise InputError(f"--levels must list 1 to {MAX_LEVELS} load levels, got {len(levels)}")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in levels):
        raise InputError(f"--levels must be finite positive numbers, got {shown}")
    if type(requests) is not int or not 1 <= requests <= MAX_REQUESTS:
        raise InputError(f"--requests must be from 1 to {MAX_REQUESTS}, got {requests!r}")
    if mode == "concurrency":
        if any(x != int(x) or x > MAX_CONCURRENCY for x in levels):
            raise InputError(f"concurrency levels are whole numbers of streams from 1 to {MAX_CONCURRENCY}, got {shown}")
        return
    slowest = min(levels)
    if requests / slowest > MAX_ARRIVAL_S:
        raise InputError(f"--levels {slowest:g} requests/s would take {requests / slowest:.0f} s to send --requests "
                         f"{requests}: use rates of at least {requests / MAX_ARRIVAL_S:.3g}/s (at most "
                         f"{MAX_ARRIVAL_S:.0f} s of arrivals per level)")
    if max(levels) > 1e6:
        raise InputError(f"rate levels must be at most 1e6 requests/s, got {max(levels):g}")


def make_script(words: int, i: int) -> str:
    return "Speaker 1: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)) + "."


async def _one(engine, request, t_submit: float, rec: dict) -> None:
    from vvtrt.serving.api import CapacityError, EngineBusy

    try:
        handle = engine.submit(request)
    except (EngineBusy, CapacityError) as exc:
        rec["refused"].append(type(exc).__name__)
        return
    times = []
    try:
        async for _ in handle:
            times.append(time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - recorded: a failed stream counts against the level
        rec["failed"].append(f"{type(exc).__name__}: {exc}")
    s = handle.summary()
    if times:
        rec["ttfa"].append(times[0] - t_submit)
        rec["gaps"].extend(np.diff(times).tolist())
        rec["rtf"].append((times[-1] - t_submit) / (len(times) * FRAME_S))
        rec["prompt_tokens"].append(s.prompt_tokens)


def _request(load: ServingLoad, i: int):
    from vvtrt.serving.api import SpeechRequest

    words = load.prompt_words[i % len(load.prompt_words)]
    return SpeechRequest(make_script(words, i), seed=load.seed + i, cfg_scale=load.cfg_scale, frames=load.frames)


async def _drive(engine, load: ServingLoad, level: float, rec: dict) -> None:
    rng = np.random.default_rng(load.seed)
    tasks = []
    if load.mode == "rate":
        t = time.perf_counter()
        for i in range(load.requests):
            t += rng.exponential(1.0 / level)
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            tasks.append(asyncio.ensure_future(_one(engine, _request(load, i), time.perf_counter(), rec)))
        await asyncio.gather(*tasks)
        return
    total = max(load.requests, 2 * int(level))
    sem = asyncio.Semaphore(int(level))

    async def held(i):
        async with sem:
            await _one(engine, _request(load, i), time.perf_counter(), rec)

    await asyncio.gather(*(held(i) for i in range(total)))


async def _sample_active(engine, out: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        out.append(engine.stats().active)
        await asyncio.sleep(0.05)


def run_level(engine, load: ServingLoad, level: float) -> dict:
    rec = {"ttfa": [], "gaps": [], "rtf": [], "prompt_tokens": [], "refused": [], "failed": []}
    active: list[int] = []

    async def main():
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(_sample_active(engine, active, stop))
        await _drive(engine, load, level, rec)
        stop.set()
        await sampler

    t0 = time.perf_counter()
    asyncio.run(main())
    ttfa = summary([x * 1000 for x in rec["ttfa"]], (50, 99))
    gap = summary([x * 1000 for x in rec["gaps"]], (50, 99))
    ok = bool(rec["ttfa"]) and not rec["failed"] and not rec["refused"] and \
        gap["p99"] is not None and gap["p99"] < FRAME_S * 1000 and ttfa["p99"] < 1000
    return {"level": level, "wall_s": time.perf_counter() - t0, "completed": len(rec["ttfa"]),
            "refused": len(rec["refused"]), "failed": rec["failed"][:5], "ttfa_ms": ttfa, "gap_ms": gap,
            "rtf": summary(rec["rtf"], (50, 99)), "prompt_tokens": sorted(set(rec["prompt_tokens"])),
            "active_streams": {"mean": float(np.mean(active)) if active else 0.0, "max": max(active, default=0)},
            "realtime": ok}


def run_serving_bench(workdir, backend="torch", device=None, dtype=None, load: ServingLoad = ServingLoad(),
                      out_dir=None, compile: bool | str = False, **engine_config) -> dict:
    """Load the engine, run every level, write ``serving_<preset>_<dtype>_<mode>.{json,png}``."""
    from vvtrt.fsio import atomic_write_json
    from vvtrt.reports.environment import collect_environment
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.serving.engine import Engine
    from vvtrt.workdir import Workdir

    wd = Workdir.open(workdir)
    t0 = time.perf_counter()
    engine = Engine.from_workdir(wd.root, backend=backend, device=device, precision=dtype, compile=compile,
                                 models=ModelCache(wd, init_on_device=True), **engine_config)
    engine.start()
    setup_s = time.perf_counter() - t0
    try:
        levels = []
        for level in load.levels:
            log.info("serving bench: %s %g", load.mode, level)
            levels.append(run_level(engine, load, level))
    finally:
        engine.stop(grace_s=0)
    ok = [x["active_streams"]["max"] if load.mode == "rate" else x["level"] for x in levels if x["realtime"]]
    synth, plan = engine.synth, engine.plan
    meta = wd.meta()
    report = {"kind": "bench-serving", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
              "config": {"preset": meta["model"]["preset"] or meta["model"]["path"], "backend": backend,
                         "compile": compile, "dtype": synth.precision.value, "device": str(synth.device),
                         "steps": meta["options"]["steps"], "load": asdict(load),
                         "engine": {**asdict(engine.config), "slots": plan.slots, "kv_len": plan.kv_len,
                                    "batch_buckets": plan.batch_buckets, "kv_buckets": plan.kv_buckets,
                                    "pool_bytes": plan.pool_bytes, "graphs": len(engine.stepper.loop.graphs),
                                    "split_steps": getattr(getattr(engine.stepper, "slot_stepper", None),
                                                           "split_steps", None)},
                         "setup_s": setup_s, "startup": engine.startup, "environment": collect_environment()},
              "levels": levels, "realtime_criterion": "p99 inter-chunk gap < 133 ms and TTFA p99 < 1 s",
              "max_realtime_concurrency": max(ok, default=None)}
    out = Path(out_dir) if out_dir else wd.reports_dir
    stem = f"serving_{report['config']['preset']}_{report['config']['dtype']}_{load.mode}"
    paths = {"json": atomic_write_json(out / f"{stem}.json", report)}
    from vvtrt.bench.serving_plots import plot_serving

    png = plot_serving(report, out / f"{stem}.png")
    if png:
        paths["png"] = png
    return paths
