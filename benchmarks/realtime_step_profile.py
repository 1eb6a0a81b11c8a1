"""Host time per step of the Realtime serving stepper, batch size by batch size.

Per B: a `RealtimeServingStepper` of B slots (what `RealtimeEngine`'s thread drives) on a random-weight
preset, every slot running a long text with a forced end far away. After `--warmup` steps, `--steps`
steps are timed: `step_ms` is the wall time of `step()` (host and device, as the engine runs it) and
`device_ms` the time inside the loop's text-window and speech steps (on the CPU, where they run
synchronously; on CUDA the launch/replay only). Then the host alone: `--host-steps` steps with the loop's
device steps skipped (every stream goes on as after the last real step: the same windows, noise, stops
and events), `host_ms` (median) and `host_ms_min`: the tick's planning, staging, host noise, the status
and audio read-back, the stops and the events handed to the core, free of the device's time (which a
busy CPU makes noisy).

    python benchmarks/realtime_step_profile.py --batches 1,64,256 [--noise device|host] [--device cpu]

Prints one JSON line per B (medians over the timed steps); `--out FILE` also writes them as a JSON list.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = ("The quick brown fox jumps over the lazy dog while the band plays on, and everybody listens. " * 40)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-realtime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--batches", default="1,64,256")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--host-steps", type=int, default=60)
    p.add_argument("--noise", default=None, choices=("device", "host"), help="default: the engine's default")
    p.add_argument("--out", type=Path, default=None)
    return p


def _timed_loop(loop, spent: list) -> None:
    """Count the time spent inside the loop's device steps (an instance attribute over `_run`)."""
    inner = loop._run

    def run(key):
        t0 = time.perf_counter()
        inner(key)
        spent[0] += time.perf_counter() - t0

    loop._run = run


def profile_batch(runner, voice, b: int, args) -> dict:
    from vvtrt.realtime.engine import RealtimeEngineConfig
    from vvtrt.realtime.serving_stepper import RealtimeServingStepper
    from vvtrt.realtime.speech_request import RealtimeSpeechRequest

    extra = {"noise": args.noise} if args.noise else {}
    config = RealtimeEngineConfig(max_streams=b, max_queue=b, capacity=1024, **extra)
    stepper = RealtimeServingStepper(runner, config, {"v": voice}, "v")
    stepper.build()
    for i in range(b):
        work = stepper.prepare(RealtimeSpeechRequest(TEXT, "v", seed=100 + i, frames=10 ** 6))
        stepper.admit(work, tag=i)
    spent = [0.0]
    _timed_loop(stepper.loop, spent)
    steps, devs, events = [], [], []
    for i in range(args.warmup + args.steps):
        spent[0] = 0.0
        t0 = time.perf_counter()
        out = stepper.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            steps.append(dt * 1e3)
            devs.append(spent[0] * 1e3)
            events.append(len(out))
    stepper.loop._run = lambda key: None  # the host alone
    hosts = []
    for _ in range(args.host_steps):
        t0 = time.perf_counter()
        stepper.step()
        hosts.append((time.perf_counter() - t0) * 1e3)
    runner.checkin(stepper.inner, keep=False)
    med = statistics.median
    return {"batch": b, "noise": args.noise or "default", "step_ms": round(med(steps), 3),
            "device_ms": round(med(devs), 3), "host_ms": round(med(hosts), 3), "host_ms_min": round(min(hosts), 3),
            "host_us_per_stream": round(1e3 * med(hosts) / b, 2), "events_per_step": med(events)}


def main(argv=None) -> list:
    args = _parser().parse_args(argv)
    import torch

    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.synthetic import make_voice

    torch.set_num_threads(max(1, torch.get_num_threads()))
    runner = RealtimeRunner.from_preset(args.preset, device=torch.device(args.device), dtype=args.dtype)
    voice = make_voice(runner.model, "v", 32, 64, seed=0)
    rows = []
    for b in [int(x) for x in args.batches.split(",") if x.strip()]:
        rows.append(profile_batch(runner, voice, b, args))
        print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
