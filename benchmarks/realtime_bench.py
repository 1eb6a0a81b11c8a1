"""Benchmark of the Realtime runtime (issue 14 targets: TTFA p50 <= 20 ms / p99 <= 40 ms warm, frame step
<= 2 ms at one stream, >= 500 real-time streams per H100, <= 3 GB NVML memory for one stream).

    python benchmarks/realtime_bench.py --out DIR                                  # GPU: realtime-0.5b, bf16
    python benchmarks/realtime_bench.py --out DIR --device cpu --preset tiny-realtime --dtype fp32 \\
        --batches 1,2,4 --requests 3 --frames 12                                     # CPU plumbing

Random weights (seeded) and a synthetic voice (`vvtrt.realtime.synthetic`, lengths like the real presets').
K = 5, CFG 1.5, `dpmsolver++`; torch runners with CUDA graphs on a GPU (`--no-graphs`: eager;
`--compile`: torch.compile'd components). Measured, in this order, in one process:

1. TTFA: `--requests` warm single-stream requests (after `--warmup` ones that capture the graphs):
   time from handing the text to `RealtimeRunner.stream` to its first chunk (first window + first frame).
2. Frame step at one stream: the speech step and the 5-token text-window step replayed back to back
   (CUDA events; no row committed, so the state does not move), and the whole tick (host + device +
   audio hand-out) of the TTFA runs.
3. Memory of one stream: NVML's figure for this process (its pid in the device's process list; sampled
   from before CUDA starts) and torch's allocator peak, after the single-stream runs (loop capacity =
   the model's full context).
4. Batches: N streams (`--batches`) start together and run `--frames` frames; the second of two
   identical passes is timed tick by tick (the first captures the graphs). A tick makes one frame of
   every stream; every 6th also runs the text window. Real time needs the mean tick <= one frame of
   audio (hop / 24 kHz = 133.3 ms); the capacity is the largest measured N that meets it (never
   extrapolated).

Writes `realtime_bench.json` (with the environment) and `realtime_bench.md` into `--out`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE_RATE = 24000
TEXT = ("Streaming speech starts after the first few words, while the rest of the text is still arriving "
        "from the model that writes it.")


def _pct(xs, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(xs, dtype=float), q)), 3) if xs else None


def _mean(xs):
    return round(sum(xs) / len(xs), 3) if xs else None


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_ttfa(rt, voice, args) -> dict:
    ttfa, ticks = [], []
    for i in range(args.warmup + args.requests):
        t0 = time.perf_counter()
        gen = rt.stream(TEXT, voice, seed=i, cfg_scale=1.5, steps=5, max_frames=args.ttfa_frames)
        next(gen)
        first = time.perf_counter() - t0
        t_prev = time.perf_counter()
        per = []
        for _ in gen:
            now = time.perf_counter()
            per.append(now - t_prev)
            t_prev = now
        if i >= args.warmup:
            ttfa.append(first * 1e3)
            ticks += [p * 1e3 for p in per]
    return {"samples_ms": [round(x, 3) for x in ttfa], "p50_ms": _pct(ttfa, 50), "p99_ms": _pct(ttfa, 99),
            "mean_ms": _mean(ttfa), "tick_ms_p50": _pct(ticks, 50), "tick_ms_mean": _mean(ticks),
            "frames_per_request": args.ttfa_frames}


def _time_replays(loop, fn, n: int) -> float:
    """Mean ms of `fn()` over `n` back-to-back runs with no row marked (nothing commits)."""
    import torch

    for k in ("active", "win_n"):
        loop.inputs[k].zero_()
    fn()
    _sync(loop.device)
    if loop.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return round(start.elapsed_time(end) / n, 4)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t0) * 1e3 / n, 4)


def measure_step(rt, voice, args) -> dict:
    stepper = rt.checkout(1)
    try:
        stepper.open(rt.request(TEXT, voice, seed=0, max_frames=10 ** 6))
        for _ in range(7):  # one window and its six frames: the buckets of a running stream
            stepper.tick()
        loop = stepper.loop
        run = next(iter(stepper.runs.values()))
        s_tts, s_lm = loop.kv_bucket(run.pos_len + 5), loop.kv_bucket(run.lm_len)
        speech = _time_replays(loop, lambda: loop.speech_step(1, s_tts), args.replays)
        text = _time_replays(loop, lambda: loop.text_step(1, s_lm, s_tts, 5), args.replays)
        graphs = sorted(str(k) for k in loop.graphs)
    finally:
        rt.checkin(stepper)
    return {"speech_step_ms": speech, "text_window_step_ms": text, "replays": args.replays,
            "per_frame_ms_with_windows": round(speech + text / 6, 4), "kv_bucket": s_tts,
            "graphs": graphs, "cuda_graphs": loop.use_graphs and loop.capture_error is None,
            "capture_error": loop.capture_error}


def _batch_pass(rt, voice, n: int, args):
    stepper = rt.checkout(n, capacity=args.capacity)
    ticks, kinds = [], []
    try:
        for i in range(n):
            stepper.open(rt.request(TEXT, voice, seed=1000 + i, max_frames=args.frames))
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


def measure_batch(rt, voice, n: int, args) -> dict:
    import torch

    dev = rt.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _batch_pass(rt, voice, n, args)  # captures the graphs of the buckets this run uses
    loop, ticks, active = _batch_pass(rt, voice, n, args)
    full = [t for t, a in zip(ticks, active) if a == n]
    text_ticks = full[0::6]  # streams start together: every 6th tick runs the text window too
    speech_ticks = [t for i, t in enumerate(full) if i % 6]
    steady = full[:len(full) // 6 * 6] or full
    mean = sum(steady) / len(steady)
    frame_ms = 1e3 * rt.cfg.hop / SAMPLE_RATE
    out = {"streams": n, "ticks": len(full), "tick_ms_mean": round(mean, 3), "tick_ms_p50": _pct(steady, 50),
           "tick_ms_max": round(max(steady), 3), "text_tick_ms_mean": _mean(text_ticks),
           "speech_tick_ms_mean": _mean(speech_ticks),
           "realtime_factor": round(frame_ms / mean, 2), "realtime": mean <= frame_ms,
           "kv_bytes": loop.kv_bytes(), "capacity": loop.capacity, "graphs": len(loop.graphs),
           "capture_seconds": round(loop.capture_seconds, 2),
           "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None}
    rt.drop_kept()
    del loop
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="realtime-0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--batches", default="1,8,32,64,128,256,512")
    p.add_argument("--requests", type=int, default=20, help="timed TTFA requests")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ttfa-frames", type=int, default=7, help="frames per TTFA request")
    p.add_argument("--frames", type=int, default=30, help="frames per stream in the batch runs")
    p.add_argument("--capacity", type=int, default=1024, help="KV positions per row in the batch runs")
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--voice-lm-len", type=int, default=64)
    p.add_argument("--voice-tts-len", type=int, default=192)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the components (inductor)")
    args = p.parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    from vvtrt.fsio import atomic_write_json, atomic_write_text

    atomic_write_json(args.out / "realtime_bench.json", report)
    atomic_write_text(args.out / "realtime_bench.md", markdown(report))
    print(markdown(report))
    return report


def run(args) -> dict:
    import torch

    from vvtrt.reports.environment import collect_environment
    from vvtrt.reports.telemetry import ProcessMemorySampler

    dev = torch.device(args.device)
    sampler = ProcessMemorySampler(device_index=dev.index or 0).start() if dev.type == "cuda" else None
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.synthetic import make_voice

    t0 = time.perf_counter()
    rt = RealtimeRunner.from_preset(args.preset, device=dev, dtype=args.dtype, graphs=not args.no_graphs,
                                    compile=args.compile)
    voice = make_voice(rt.model, "synthetic", args.voice_lm_len, args.voice_tts_len, seed=0)
    load_s = time.perf_counter() - t0
    report = {"preset": args.preset, "device": str(dev), "dtype": args.dtype, "steps": 5, "cfg_scale": 1.5,
              "solver": "dpmsolver++", "cuda_graphs": not args.no_graphs and dev.type == "cuda",
              "compile": args.compile, "text": TEXT, "text_tokens": len(rt.tok.encode(TEXT)) + 1,
              "voice_lengths": voice.lengths(), "load_seconds": round(load_s, 2),
              "frame_ms": round(1e3 * rt.cfg.hop / SAMPLE_RATE, 3), "args": {k: str(v) for k, v in vars(args).items()}}
    report["ttfa"] = measure_ttfa(rt, voice, args)
    report["one_stream_step"] = measure_step(rt, voice, args)
    _sync(dev)
    mem = sampler.snapshot() if sampler else {"nvml_process_status": "not measured: not a CUDA run"}
    mem["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    mem["capacity"] = rt.capacity
    report["memory_one_stream"] = mem
    rt.drop_kept()
    report["batches"] = [measure_batch(rt, voice, int(n), args) for n in args.batches.split(",") if n.strip()]
    ok = [b["streams"] for b in report["batches"] if b["realtime"]]
    report["realtime_capacity_streams"] = max(ok) if ok else None
    if sampler:
        report["memory_peak_whole_run"] = sampler.snapshot()
        sampler.stop()
    report["environment"] = collect_environment()
    return report


def _gb(x):
    return "not measured" if x is None else f"{x / 2**30:.2f} GiB"


def markdown(r: dict) -> str:
    t, s, m = r["ttfa"], r["one_stream_step"], r["memory_one_stream"]
    env = r.get("environment") or {}
    lines = [f"# Realtime runtime: {r['preset']} {r['dtype']} on {env.get('gpu_name') or r['device']}",
             "", f"K = {r['steps']}, CFG {r['cfg_scale']}, {r['solver']}, CUDA graphs: {r['cuda_graphs']}, "
             f"compile: {r['compile']}; voice {r['voice_lengths']}; frame = {r['frame_ms']} ms of audio.", "",
             f"- TTFA (warm, {len(t['samples_ms'])} requests; p99 of so few samples is about the max): "
             f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, mean {t['mean_ms']} ms",
             f"- One stream: speech step {s['speech_step_ms']} ms, text-window step {s['text_window_step_ms']} ms "
             f"(per frame with windows {s['per_frame_ms_with_windows']} ms); whole tick p50 {t['tick_ms_p50']} ms",
             f"- Memory, one stream (capacity {m.get('capacity')}): NVML process "
             f"{_gb(m.get('nvml_process_peak_bytes'))} ({m.get('nvml_process_status')}); "
             f"torch peak {_gb(m.get('torch_peak_allocated_bytes'))}",
             f"- Real-time capacity (largest measured batch with mean tick <= {r['frame_ms']} ms): "
             f"{r['realtime_capacity_streams'] if r['realtime_capacity_streams'] is not None else 'none measured'}",
             "", "| streams | tick mean ms | p50 | max | speech tick | text tick | x real time | KV | torch peak |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in r["batches"]:
        lines.append(f"| {b['streams']} | {b['tick_ms_mean']} | {b['tick_ms_p50']} | {b['tick_ms_max']} | "
                     f"{b['speech_tick_ms_mean']} | {b['text_tick_ms_mean']} | {b['realtime_factor']} | "
                     f"{_gb(b['kv_bytes'])} | {_gb(b['torch_peak_allocated_bytes'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
