"""Peak host memory of loading a checkpoint directory at a dtype (target: 1.5B in bf16 must peak at
<= 1.3x its weight bytes of host RAM).

    python benchmarks/load_memory.py CKPT_DIR --dtype bf16 [--device cuda] --out load_memory.json
    python benchmarks/load_memory.py --make DIR --preset 1.5b [--layers 2] [--filters 4]   # random weights

The load runs in this process after torch and transformers are imported; the kernel's peak-RSS counter
(VmHWM) is reset just before it (`/proc/self/clear_refs`), so the peak is the load's own. Reported:
the weight bytes at the target dtype, the RSS before, the peak, and peak / weight bytes both as the
process total and as the load's growth. `--make` writes a random-weight checkpoint in transformers'
layout of a preset's sizes (optionally fewer layers / filters), one shard of at most ~1 GB at a time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vvtrt.reports.environment import collect_environment  # noqa: E402

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1])


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux >= 4.0: VmHWM := VmRSS
        f.write("5")


def measure(root: Path, dtype: str, device: str | None) -> dict:
    import torch
    from transformers import VibeVoiceForConditionalGeneration  # noqa: F401 - imported before the baseline

    from vvtrt.model.checkpoint import load_checkpoint, plan_checkpoint

    torch_dtype = getattr(torch, DTYPES[dtype])
    t0 = time.perf_counter()
    plan = plan_checkpoint(root)
    t_plan = time.perf_counter() - t0
    reset_peak()
    base = status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    model = load_checkpoint(plan, dtype=torch_dtype, device=device)
    t_load = time.perf_counter() - t0
    peak = status_kb("VmHWM") * 1024
    seen, weight_bytes = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            weight_bytes += t.numel() * t.element_size()
    stored = {e.dtype for e in plan.entries.values()}
    return {"checkpoint": str(root), "layout": plan.layout.name, "stored_dtypes": sorted(stored), "dtype": dtype,
            "device": device or "cpu", "tensors": len(plan.entries), "weight_bytes": weight_bytes,
            "rss_before_bytes": base, "peak_rss_bytes": peak, "peak_over_weights": round(peak / weight_bytes, 4),
            "load_growth_over_weights": round((peak - base) / weight_bytes, 4), "validate_s": round(t_plan, 3),
            "load_s": round(t_load, 3), "host": platform.node(), "torch": torch.__version__,
            "environment": collect_environment()}


def make_random(out: Path, preset: str, layers: int | None, filters: int | None, store: str) -> None:
    import torch
    from safetensors.torch import save_file

    from vvtrt.fsio import atomic_path, atomic_write_json, atomic_write_text
    from vvtrt.model.checkpoint import meta_model
    from vvtrt.model.layouts import TRANSFORMERS
    from vvtrt.model.presets import PRESETS, preset_config

    spec = PRESETS[preset]
    if layers:
        spec = dataclasses.replace(spec, layers=layers)
    if filters:
        spec = dataclasses.replace(spec, num_filters=filters, depths=(1,) * 7)
    config = preset_config(spec)
    shapes = {k: tuple(v.shape) for k, v in meta_model(TRANSFORMERS, config).state_dict().items()
              if not (k == "lm_head.weight" and spec.tie)}
    dtype, gen = getattr(torch, DTYPES[store]), torch.Generator().manual_seed(0)
    shards, cur, size = [], {}, 0
    for k, shape in shapes.items():
        cur[k] = shape
        size += torch.Size(shape).numel() * dtype.itemsize
        if size > 2**30:
            shards.append(cur)
            cur, size = {}, 0
    shards += [cur] if cur else []
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in keys.items()}
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    atomic_write_json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    config.architectures = ["VibeVoiceForConditionalGeneration"]
    atomic_write_text(out / "config.json", config.to_json_string())
    print(f"wrote {len(shapes)} random {store} tensors in {len(shards)} shard(s) to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--device", default=None, help="cpu (default) or cuda")
    ap.add_argument("--out", type=Path, default=Path("load_memory.json"))
    ap.add_argument("--make", type=Path, help="write a random-weight checkpoint to this directory and exit")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--filters", type=int)
    ap.add_argument("--store-dtype", choices=sorted(DTYPES), default="bf16")
    args = ap.parse_args()
    if args.make:
        make_random(args.make, args.preset, args.layers, args.filters, args.store_dtype)
        return
    if args.checkpoint is None:
        ap.error("give a checkpoint directory (or --make DIR)")
    from vvtrt.fsio import atomic_write_json

    result = measure(args.checkpoint, args.dtype, args.device)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
