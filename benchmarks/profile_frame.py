"""Where does a frame's time go, kernel by kernel? Profiles the torch backend (torch.compile) on the GPU
with the PyTorch profiler: per frame, how many kernels run, how long they take by kind (GEMM, attention,
fused Triton, convolution, copy/cat, other) and the top kernels. Once with the whole-frame CUDA graph
(what `vvtrt synth` runs) and once without it (the same kernels launched one by one).

    python benchmarks/profile_frame.py WORKDIR OUT.json [--frames 20]     # needs a CUDA GPU
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch

KINDS = (("gemm", r"gemm|gemv|cutlass|cublas|sm90_|sm80_|ampere|hopper|splitK|xmma"),
         ("attention", r"fmha|flash|attention|efficient"),
         ("conv", r"conv|cudnn|implicit|winograd"),
         ("triton", r"^triton"),
         ("copy/cat", r"copy|cat|Cat|memcpy|memset|fill"))


def kind(name: str) -> str:
    for k, pat in KINDS:
        if re.search(pat, name):
            return k
    return "other"


def profile(synth, frames: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as tprofile

    text = "Speaker 0: " + "profiling the frame " * 10
    sync = torch.cuda.synchronize if synth.device.type == "cuda" else (lambda: None)
    synth.synthesize(text, frames=4)  # warm-up, compile, capture
    sync()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        res = synth.synthesize(text, frames=frames)
        sync()
    steps = len(res.tokens)
    per_kernel: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for evt in prof.events():
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(evt, "device_time", None) or getattr(evt, "cuda_time", 0.0)
        per_kernel[evt.name][0] += 1
        per_kernel[evt.name][1] += us
    by_kind: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for name, (n, us) in per_kernel.items():
        by_kind[kind(name)][0] += n
        by_kind[kind(name)][1] += us
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:40]
    frame_ms = sorted(res.frame_s)[len(res.frame_s) // 2] * 1e3 if res.frame_s else None
    return {
        "steps": steps, "frame_wall_ms_p50": frame_ms,
        "kernels_per_step": sum(n for n, _ in per_kernel.values()) / steps,
        "kernel_ms_per_step": sum(us for _, us in per_kernel.values()) / steps / 1e3,
        "by_kind": {k: {"kernels_per_step": n / steps, "ms_per_step": us / steps / 1e3}
                    for k, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
        "top": [{"name": name[:160], "kind": kind(name), "calls_per_step": n / steps, "ms_per_step": us / steps / 1e3}
                for name, (n, us) in top],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--compile", default="1")
    args = ap.parse_args()
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.runtime.synthesizer import Synthesizer
    from vvtrt.workdir import Workdir

    compile_ = {"1": True, "0": False}.get(args.compile, args.compile)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only smoke-tests the script
    models = ModelCache(Workdir.open(args.workdir), init_on_device=True)
    out = {}
    for graph in (True, False):
        synth = Synthesizer.from_workdir(args.workdir, backend="torch", device=device, compile=compile_,
                                         cuda_graph=graph, models=models)
        out["graph" if graph else "no_graph"] = r = profile(synth, args.frames)
        print(f"== cuda_graph={graph}: {r['kernels_per_step']:.0f} kernels/step, "
              f"{r['kernel_ms_per_step']:.2f} ms kernel time/step, wall p50 {r['frame_wall_ms_p50']}")
        for k, v in r["by_kind"].items():
            print(f"  {k:10s} {v['kernels_per_step']:7.1f} kernels {v['ms_per_step']:7.3f} ms")
        for t in r["top"][:25]:
            print(f"  {t['ms_per_step']:7.3f} ms {t['calls_per_step']:6.1f}x {t['kind']:9s} {t['name'][:110]}")
        del synth
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
