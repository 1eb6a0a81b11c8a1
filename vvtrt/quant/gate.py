"""The quality gate of a quantized work dir. `vvtrt parity` checks each quantized component against the fp32
PyTorch reference on its parity grid, with a bound set from PyTorch's *own* bf16 error on the same inputs:
quantized rel-L2 <= K[mode] x bf16 rel-L2 (`bound`); the end-to-end teacher-forced rows get the same factor on
the bf16 bounds (`e2e_bounds`). The result is written to DIR/quant_gate.json; `vvtrt synth` / `serve` refuse a
quantized work dir whose gate failed or never ran (`check_gate`) unless told `--allow-failed-quant`."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from vvtrt.errors import InputError
from vvtrt.fsio import atomic_write_json
from vvtrt.quant.config import QuantMode

GATE_FILE = "quant_gate.json"
# K: how many times PyTorch's own bf16 error a quantized component may have. Set from the unit roundoff of
# each format against bf16's (8 significant bits, relative rounding error <= 2^-8), never tuned on a gated run:
# - fp8 E4M3 keeps 4 significant bits (relative rounding error <= 2^-4): 2^4 = 16 times bf16's, on weights and
#   activations alike, so a GEMM's output error is ~16x bf16's -> K = 16.
# - int8 (symmetric, per output channel / per tensor) has a step of amax/127; for values of rms sigma with
#   amax ~ 4 sigma its rms error is (4 sigma / 127) / sqrt(12) ~ 0.009 sigma, ~4x bf16's rms relative error
#   (2^-8 / sqrt(3) ~ 0.0023); activations with outliers (amax up to ~8 sigma) double that -> K = 8.
K = {QuantMode.INT8: 8.0, QuantMode.FP8: 16.0}
K_NOTE = ("quantized rel-L2 <= K x PyTorch's own bf16 rel-L2 on the same inputs; K = 8 (int8: step amax/127, "
          "~4x bf16's rounding for amax ~ 4 sigma, x2 for outliers), 16 (fp8 E4M3: 2^-4 vs bf16's 2^-8 "
          "unit roundoff)")
BF16_FLOOR = 1e-6  # a bf16 error this small (exact outputs) still leaves the quantized one a non-zero bound


def bound(mode: QuantMode, bf16_rel_l2: float) -> float:
    return K[mode] * max(bf16_rel_l2, BF16_FLOOR)


def e2e_bounds(mode: QuantMode, bf16_latent_tol: float, bf16_min_snr_db: float) -> tuple[float, float]:
    """Teacher-forced end-to-end bounds: the bf16 latent bound times K, and the bf16 SNR bound lowered by
    20 log10 K dB (an error K times larger)."""
    return K[mode] * bf16_latent_tol, bf16_min_snr_db - 20.0 * math.log10(K[mode])


def write_gate(wd, report: dict) -> dict:
    """Record the gate of a parity report on a quantized work dir (DIR/quant_gate.json); returns it."""
    mode = wd.quant()
    rows = [r for r in report["rows"] if r.get("quant")]
    tf = [r for r in report.get("e2e", []) if r.get("quant") and r.get("gated")]
    gate = {"quant": mode.value, "passed": bool(report["passed"] and rows), "k": K[mode], "rule": K_NOTE,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backend": report["config"]["backends"][0], "device": report["config"]["device"],
            "components": sorted({f"{r['component']}.{r['precision']}" for r in rows}),
            "worst": [{k: r.get(k) for k in ("component", "precision", "output", "dims", "rel_l2", "bf16_rel_l2",
                                               "tolerance", "passed")} for r in _worst(rows)],
            "e2e": [{k: r.get(k) for k in ("name", "latent_snr_db", "snr_db", "passed", "notes")} for r in tf],
            "failures": report["failures"][:20]}
    atomic_write_json(wd.root / GATE_FILE, gate)
    return gate


def _worst(rows):
    by = {}
    for r in rows:
        key = (r["component"], r["precision"])
        ratio = (r["rel_l2"] or 0) / (r["tolerance"] or 1)
        if key not in by or ratio > by[key][0]:
            by[key] = (ratio, r)
    return [r for _, r in by.values()]


def read_gate(wd) -> dict | None:
    path = wd.root / GATE_FILE
    try:
        gate = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"passed": False, "quant": None, "failures": [f"{path} is unreadable"]}
    return gate if isinstance(gate, dict) else {"passed": False, "quant": None, "failures": ["not a gate record"]}


def check_gate(wd, allow_failed: bool = False) -> None:
    """Refuse (`InputError`, exit 2) a quantized work dir whose gate failed, is stale or never ran."""
    mode = wd.quant()
    if mode is None or allow_failed:
        return
    gate = read_gate(wd)
    hint = (f"run `vvtrt parity -w {wd.root}` (the quantization gate), or pass --allow-failed-quant to use it "
            "anyway")
    if gate is None:
        raise InputError(f"{wd.root} is quantized ({mode.value}) but its quality gate never ran: {hint}")
    if gate.get("quant") != mode.value:
        raise InputError(f"{wd.root} is quantized ({mode.value}) but its gate record is for "
                         f"{gate.get('quant')}: {hint}")
    if not gate.get("passed"):
        why = (gate.get("failures") or ["no detail"])[0]
        raise InputError(f"{wd.root}: the {mode.value} quantization failed its quality gate ({why}): {hint}")
