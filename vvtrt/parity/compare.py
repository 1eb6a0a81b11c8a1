"""Error metrics between an output and its fp32 reference (Polygraphy-style: every output's numbers,
not just pass/fail)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    max_rel: float  # max |a-b| / max |ref| (relative to the reference's scale; robust near zeros)
    rel_l2: float  # ||a-b|| / ||ref||
    cosine: float
    finite: bool

    def passed(self, tolerance: float) -> bool:
        return self.finite and self.rel_l2 <= tolerance

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def error_stats(out: torch.Tensor, ref: torch.Tensor) -> ErrorStats:
    """Compare `out` with `ref` in float64 on the CPU."""
    a = out.detach().to("cpu", torch.float64).reshape(-1)
    b = ref.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(out.shape)} vs {tuple(ref.shape)}")
    finite = bool(torch.isfinite(a).all())
    if a.numel() == 0:
        return ErrorStats(0.0, 0.0, 0.0, 1.0, finite)
    diff = (a - b).abs()
    ref_scale = float(b.abs().max())
    ref_norm = float(b.norm())
    max_abs = float(diff.max())
    rel_l2 = float((a - b).norm()) / ref_norm if ref_norm > 0 else float(max_abs > 0)
    denom = float(a.norm()) * ref_norm
    cosine = float(a @ b) / denom if denom > 0 else float(max_abs == 0)
    return ErrorStats(max_abs, max_abs / ref_scale if ref_scale > 0 else max_abs, rel_l2, cosine, finite)


def snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-noise ratio of `out` against `ref` in dB (inf when identical)."""
    a = out.detach().to("cpu", torch.float64).reshape(-1)
    b = ref.detach().to("cpu", torch.float64).reshape(-1)
    n = min(a.numel(), b.numel())
    noise = float((a[:n] - b[:n]).pow(2).sum())
    sig = float(b[:n].pow(2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * math.log10(sig / noise) if sig > 0 else float("-inf")
