"""How much memory lm_prefill + lm_decode take on ONNX Runtime with one shared copy of the LLM weights vs two.

    python benchmarks/lm_weight_sharing.py WORKDIR OUT_JSON [--device cuda] [--dtype bf16]
    python benchmarks/lm_weight_sharing.py WORKDIR OUT_JSON --device cpu          # fp32 (no bf16 on ORT's CPU)

Each variant runs in its own process (a fresh interpreter, so neither inherits the other's allocations): it
loads both LLM sessions the way `vvtrt synth` does (`load_runners(..., share_lm_weights=...)`), runs each once on
fixed inputs, and records

- GPU: NVML's figure for this process (its pid in `nvmlDeviceGetComputeRunningProcesses`, peak over the run;
  `vvtrt.reports.telemetry.ProcessMemorySampler`), next to torch's allocator (the shared copy lives there);
- host: resident memory before/after loading (`/proc/self/status`) and the process's peak;
- load time, and what was shared (tensors, bytes, index time).

The shared variant then proves that both sessions really run on the shared memory: it zeroes each shared tensor
in place, one at a time, reruns both sessions and counts, per graph, the tensors whose zeroing changed its
outputs (a session holding its own copy would not notice). The outputs of the two variants are compared.
With `--device cpu` the GPU fields are None (see `vvtrt.runtime.ort_weights` for what sharing saves on the CPU).
The result JSON carries the environment (versions, GPU, git commit) of the run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("separate", "shared")
LM = ("lm_prefill", "lm_decode")
DIMS = {"lm_prefill": {"batch": 1, "seq": 64}, "lm_decode": {"batch": 2, "kv_len": None}}  # kv_len: first bucket


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _feeds(wd, precision, device):
    import torch

    from vvtrt.components.specs import build_specs

    specs = build_specs(wd.info(), wd.options())
    feeds = {}
    for comp in LM:
        dims = dict(DIMS[comp])
        if comp == "lm_decode":
            dims["kv_len"] = specs[comp].profiles[0]["kv_len"].min
        gen = torch.Generator().manual_seed(0)
        feeds[comp] = {k: v.to(device) for k, v in specs[comp].sample(dims, precision, gen).items()}
    return feeds


def _run(runners, feeds) -> dict:
    import torch

    out = {c: {k: v.clone() for k, v in runners[c].infer(feeds[c]).items()} for c in LM}
    if any(v.is_cuda for o in out.values() for v in o.values()):
        torch.cuda.synchronize()
    return out


def _read_by(runners, feeds, ref) -> dict:
    """Per graph, how many shared tensors its outputs depend on (zeroed in place one at a time)."""
    import torch

    shared = runners["lm_prefill"].shared
    counts = {c: 0 for c in LM}
    for tensor in shared.tensors.values():
        keep = tensor.clone()
        tensor.zero_()
        got = _run(runners, feeds)
        tensor.copy_(keep)
        for c in LM:
            counts[c] += any(not torch.equal(got[c][k], ref[c][k]) for k in ref[c])
    return {"shared_tensors": len(shared.tensors), "changed_outputs_when_zeroed": counts,
            "all_read_by_both": all(n == len(shared.tensors) for n in counts.values())}


def child(workdir: str, out_dir: str, variant: str, device: str, dtype: str) -> dict:
    import onnx  # noqa: F401 - imported before the baseline by both variants (sharing reads the graphs)
    import onnxruntime  # noqa: F401
    import torch

    from vvtrt.precision import Precision
    from vvtrt.reports.telemetry import ProcessMemorySampler, peak_rss_bytes
    from vvtrt.runtime.backends import load_runners
    from vvtrt.workdir import Workdir

    dev, prec = torch.device(device), Precision.parse(dtype)
    sampler = ProcessMemorySampler(device_index=dev.index or 0).start() if dev.type == "cuda" else None
    wd = Workdir.open(workdir)
    rss0, t0 = _rss_bytes(), time.perf_counter()
    runners = load_runners(wd, "onnxruntime", prec, dev, components=LM, share_lm_weights=variant == "shared")
    load_s = time.perf_counter() - t0
    feeds = _feeds(wd, prec, dev)
    out = _run(runners, feeds)
    rss1 = _rss_bytes()
    res = {"variant": variant, "load_seconds": round(load_s, 3), "host_rss_before_load_bytes": rss0,
           "host_rss_after_run_bytes": rss1, "host_peak_rss_bytes": peak_rss_bytes(),
           "shared": runners["lm_prefill"].shared.stats if variant == "shared" else None}
    if sampler is not None:
        snap = sampler.snapshot()
        sampler.stop()
        res |= {"nvml_process_peak_bytes": snap["nvml_process_peak_bytes"],
                "nvml_process_status": snap["nvml_process_status"],
                "torch_allocated_bytes": torch.cuda.memory_allocated(dev),
                "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(dev)}
    if variant == "shared":
        res["sessions_read_shared_memory"] = _read_by(runners, feeds, out)
    torch.save({c: {k: v.cpu() for k, v in o.items()} for c, o in out.items()}, Path(out_dir) / f"{variant}.pt")
    return res


def _compare(a: dict, b: dict) -> dict:
    import torch

    diffs = {f"{c}.{k}": (a[c][k].float() - b[c][k].float()).abs().max().item() for c in a for k in a[c]}
    return {"bitwise_equal": all(torch.equal(a[c][k], b[c][k]) for c in a for k in a[c]),
            "max_abs_diff": diffs}


def _saving(sep: dict, sh: dict, key: str):
    return sep[key] - sh[key] if sep.get(key) is not None and sh.get(key) is not None else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("out_json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    if args.child:  # one variant; out_json is the scratch folder
        res = child(args.workdir, args.out_json, args.child, args.device, args.dtype)
        print(json.dumps(res))
        return 0
    import torch

    from vvtrt.fsio import atomic_write_json
    from vvtrt.reports.environment import collect_environment

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, args.workdir, tmp, "--device", args.device, "--dtype", args.dtype,
                   "--child", variant]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                print(f"variant {variant} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs = _compare(*(torch.load(Path(tmp) / f"{v}.pt") for v in VARIANTS))
    sep, sh = results["separate"], results["shared"]
    report = {"benchmark": "lm_weight_sharing", "workdir": str(Path(args.workdir).resolve()), "device": args.device,
              "dtype": args.dtype, "backend": "onnxruntime", "variants": results, "outputs_shared_vs_separate": outputs,
              "saving_bytes": {k: _saving(sep, sh, k) for k in ("nvml_process_peak_bytes", "host_rss_after_run_bytes",
                                                                 "host_peak_rss_bytes")},
              "environment": collect_environment()}
    atomic_write_json(args.out_json, report)
    print(json.dumps({"saving_bytes": report["saving_bytes"], "outputs": outputs["bitwise_equal"],
                      "read_by_both": sh.get("sessions_read_shared_memory", {}).get("all_read_by_both")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
