"""The PyTorch reference's own bf16 error per Realtime component: each component's module in bf16 against
the same module in fp32 on the same inputs (sampled as parity samples them), on the CPU, for a preset's
random weights and the spec's parity grid. Evidence for parity bounds that is independent of any backend
run: an exported graph cannot be expected to beat the bf16 arithmetic of the model itself.

    python benchmarks/rt_bf16_error.py OUT.json [--preset realtime-0.5b] [--components rt_text_window,...]
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def component_errors(model32, model16, spec, steps: int) -> list[dict]:
    from vvtrt.parity.compare import error_stats
    from vvtrt.precision import Precision

    m32, m16 = spec.make_module(model32, steps).eval(), spec.make_module(model16, steps).eval()
    rows = []
    for i, dims in enumerate((spec.export_dims, *spec.parity_grid)):
        feed = spec.sample(dict(dims), Precision.BF16, torch.Generator().manual_seed(i))
        f32 = [v.float() if v.is_floating_point() else v for v in feed.values()]
        with torch.inference_mode():
            want, got = m32(*f32), m16(*feed.values())
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        errs = {t.name: round(error_stats(g.float(), w.float()).rel_l2, 5) for t, w, g in zip(spec.outputs, want, got)}
        rows.append({"dims": dict(dims), "rel_l2": errs})
        print(spec.name, dict(dims), errs, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", default="realtime-0.5b")
    ap.add_argument("--components", default="rt_text_window,rt_tts_decode")
    args = ap.parse_args(argv)
    from vvtrt.fsio import atomic_write_json
    from vvtrt.realtime.presets import build_realtime_model
    from vvtrt.realtime.specs import RealtimeExportOptions, build_realtime_specs
    from vvtrt.reports.environment import collect_environment

    torch.manual_seed(0)
    model32 = build_realtime_model(args.preset).eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    opts = RealtimeExportOptions.for_config(model32.rt_config)
    specs = build_realtime_specs(model32.rt_config, opts)
    result = {"command": shlex.join([sys.executable, *sys.argv]), "environment": collect_environment(),
              "preset": args.preset, "components": {}}
    for name in args.components.split(","):
        result["components"][name] = component_errors(model32, model16, specs[name], opts.steps)
    atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
