"""PyTorch's own error at a reduced precision: each component's torch wrapper in `--dtype` against the same
wrapper in fp32, on the parity grid's inputs (the same seeds `vvtrt parity` uses). This is the floor an
exported graph at that precision cannot beat; the specs' bf16/fp16 tolerances are set from it.

    python benchmarks/precision_floor.py --model 1.5b --dtype bf16 --out benchmarks/results/cpu/precision_floor_1.5b_bf16.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vvtrt.components.info import ModelInfo
from vvtrt.components.specs import ExportOptions, build_specs
from vvtrt.model.presets import build_model
from vvtrt.parity.compare import error_stats
from vvtrt.precision import Precision
from vvtrt.runtime.runner import TorchRunner


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = Precision.parse(args.dtype)
    m32 = build_model(args.model)
    info = ModelInfo.from_model(m32)
    opts = ExportOptions.for_preset(args.model)
    specs = build_specs(info, opts)
    mp = build_model(args.model).to(p.torch_dtype)
    rows = []
    for name, spec in specs.items():
        t0 = time.time()
        ref = TorchRunner(spec, Precision.FP32, "cpu", m32, opts.steps)
        low = TorchRunner(spec, p, "cpu", mp, opts.steps)
        for i, dims in enumerate(spec.parity_grid):
            gen = torch.Generator().manual_seed(i)  # the harness's seeds (seed 0)
            feed = spec.sample(dims, p, gen)
            feed32 = {k: (v.float() if v.is_floating_point() else v) for k, v in feed.items()}
            want, got = ref.infer(feed32), low.infer(feed)
            for t in spec.outputs:
                st = error_stats(got[t.name], want[t.name])
                rows.append({"component": name, "dims": dict(dims), "output": t.name, **st.to_json()})
        print(f"{name}: worst rel_l2 {max(r['rel_l2'] for r in rows if r['component'] == name):.3g} "
              f"({time.time() - t0:.0f} s)", flush=True)
    with open(args.out, "w") as f:
        json.dump({"model": args.model, "dtype": p.value, "device": "cpu", "torch": torch.__version__,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
