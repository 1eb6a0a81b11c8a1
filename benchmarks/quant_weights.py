"""Weight bytes the PyTorch backend holds for the frame loop of a model, per quantization (none, int8, fp8):
every tensor reachable from the loop's runners once they are built (parameters and buffers, each storage
counted once), and the part of it in the quantized GEMMs. The tensors' sizes do not depend on the device, so
the figure holds for a GPU too (the CUDA context, the KV pool and activations come on top there).

    python benchmarks/quant_weights.py OUT.json --model 1.5b [--modes none,int8,fp8] [--dtype bf16] [--device cuda]
    python benchmarks/quant_weights.py OUT.json --workdir WD_NONE --workdir WD_FP8 [--device cuda]

Each mode gets a work dir of the preset (only the connectors graph is exported: the torch path needs no other
graph), built under a temporary folder, or `--workdir` (repeatable) measures work dirs already exported (their
mode read from each). The model is initialised randomly in the target dtype, on `--device` (default cpu).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def held_bytes(runners: dict) -> dict:
    """Unique storage bytes reachable from the runners' modules, all and in `QuantLinear`s."""
    from vvtrt.quant.torch_path import QuantLinear

    seen: dict[int, int] = {}
    quant: dict[int, int] = {}
    for r in runners.values():
        for mod in r.module.modules():
            for t in (*mod.parameters(recurse=False), *mod.buffers(recurse=False)):
                if t is None or t.device.type == "meta":
                    continue
                s = t.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
                if isinstance(mod, QuantLinear):
                    quant[s.data_ptr()] = s.nbytes()
    return {"bytes": sum(seen.values()), "quantized_gemm_bytes": sum(quant.values())}


def export_workdir(model: str, mode: str, dtype: str, root: Path) -> Path:
    wd_path = root / f"wd_{mode}"
    cmd = [sys.executable, "-m", "vvtrt", "export", "--model", model, "-w", str(wd_path), "--dtype", dtype,
           "--components", "connectors"] + ([] if mode == "none" else ["--quant", mode])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return wd_path


def measure(wd_path: Path, dtype: str, device: str) -> dict:
    import torch

    from vvtrt.precision import Precision
    from vvtrt.runtime.backends import ModelCache, load_runners
    from vvtrt.workdir import Workdir

    wd = Workdir.open(wd_path)
    runners = load_runners(wd, "torch", Precision.parse(dtype), torch.device(device),
                           models=ModelCache(wd, init_on_device=True))
    mode = wd.quant().value if wd.quant() else "none"
    row = {"mode": mode, "model": wd.source().label, "workdir": str(wd_path), **held_bytes(runners)}
    del runners
    gc.collect()  # the next work dir's model must not meet this one's on the device
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    from vvtrt.reports.environment import collect_environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--model", default="1.5b")
    p.add_argument("--modes", default="none,int8,fp8")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", action="append", default=[], help="an exported work dir to measure (repeatable)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(w) for w in args.workdir] or [export_workdir(args.model, m, args.dtype, Path(tmp))
                                                   for m in args.modes.split(",")]
        for wd in dirs:
            rows.append(measure(wd, args.dtype, args.device))
            print(f"{rows[-1]['model']} {rows[-1]['mode']}: {rows[-1]['bytes'] / 2**30:.3f} GiB held "
                  f"({rows[-1]['quantized_gemm_bytes'] / 2**30:.3f} GiB in quantized GEMMs)", flush=True)
    base = next((r["bytes"] for r in rows if r["mode"] == "none"), None)
    for r in rows:
        r["vs_none"] = round(r["bytes"] / base, 4) if base else None
    res = {"kind": "quant-weights", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "command": shlex.join([sys.executable, *sys.argv]), "environment": collect_environment(),
           "model": rows[0]["model"] if rows else args.model, "dtype": args.dtype, "device": args.device,
           "rows": rows}
    Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
