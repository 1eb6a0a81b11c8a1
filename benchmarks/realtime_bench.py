"""Benchmark of the Realtime runtime on a preset with random weights (targets: TTFA p50 <= 20 ms /
p99 <= 40 ms warm, frame step <= 2 ms at one stream, >= 500 real-time streams per H100 through the engine,
<= 3 GB NVML memory for one stream). A thin command line over `vvtrt.realtime.bench` (what is measured and
how: its module doc); `vvtrt bench -w <Realtime work dir>` runs the same measurements on a work dir.

    python benchmarks/realtime_bench.py --out DIR                                  # GPU: realtime-0.5b, bf16
    python benchmarks/realtime_bench.py --out DIR --engine-streams 64,256,512 --compile
    python benchmarks/realtime_bench.py --out DIR --device cpu --preset tiny-realtime --dtype fp32 \\
        --batches 1,2,4 --requests 3 --frames 12                                     # CPU plumbing

Random weights (seeded) and a synthetic voice (`vvtrt.realtime.synthetic`, lengths like the real presets').
K = 5, CFG 1.5, `dpmsolver++`, noise drawn on the device in the batch and engine runs (`--noise host`: the
reference's host draws, as before); torch runners with CUDA graphs on a GPU (`--no-graphs`: eager;
`--compile`: torch.compile'd components). Writes `realtime_bench.json` (with the environment),
`realtime_bench.md` and `realtime_bench.png` into `--out`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vvtrt.realtime.bench import TEXT, RealtimeBenchSettings, parse_counts, run_realtime_bench  # noqa: E402,F401


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="realtime-0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--batches", default="1,8,32,64,128,256,512", help="streams through one stepper")
    p.add_argument("--engine-streams", default="auto",
                   help="streams through the RealtimeEngine, comma-separated (auto: 64,256,512 on CUDA, none on "
                        "the CPU; empty: none)")
    p.add_argument("--engine-frames", type=int, default=None, help="frames per engine stream (default --frames)")
    p.add_argument("--engine-reader", default="asyncio", choices=("asyncio", "buffer"))
    p.add_argument("--requests", type=int, default=20, help="timed TTFA requests")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ttfa-frames", type=int, default=7, help="frames per TTFA request")
    p.add_argument("--frames", type=int, default=30, help="frames per stream in the batch runs")
    p.add_argument("--capacity", type=int, default=1024, help="KV positions per row in the batch and engine runs")
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--voice-lm-len", type=int, default=64)
    p.add_argument("--voice-tts-len", type=int, default=192)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the components (inductor)")
    p.add_argument("--noise", default="device", choices=("device", "host"),
                   help="where the batch and engine runs draw each stream's noise (the engine's --noise)")
    return p


def settings_of(args) -> RealtimeBenchSettings:
    engine = args.engine_streams
    if engine == "auto":
        engine = "64,256,512" if args.device.startswith("cuda") else ""
    return RealtimeBenchSettings(
        requests=args.requests, warmup=args.warmup, ttfa_frames=args.ttfa_frames, frames=args.frames,
        batches=parse_counts(args.batches, "--batches"), engine_streams=parse_counts(engine, "--engine-streams"),
        engine_frames=args.engine_frames, engine_reader=args.engine_reader, capacity=args.capacity,
        replays=args.replays, cfg_scale=args.cfg, noise=args.noise)


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    settings = settings_of(args)

    def load():
        import torch

        from vvtrt.realtime.runtime import RealtimeRunner
        from vvtrt.realtime.synthetic import make_voice

        rt = RealtimeRunner.from_preset(args.preset, device=torch.device(args.device), dtype=args.dtype,
                                        graphs=not args.no_graphs, compile=args.compile)
        return rt, make_voice(rt.model, "synthetic", args.voice_lm_len, args.voice_tts_len, seed=0)

    meta = {"preset": args.preset, "dtype": args.dtype, "backend": "torch",
            "args": {k: str(v) for k, v in vars(args).items()}}
    report = run_realtime_bench(load, settings, meta, args.device)
    from vvtrt.realtime.bench_report import markdown, write_outputs

    write_outputs(report, args.out, "realtime_bench")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
