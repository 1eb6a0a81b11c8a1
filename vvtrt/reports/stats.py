"""Pure-numpy summary statistics for latency series (timing itself lives with the producers)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _clean(values: Iterable) -> np.ndarray:
    """Finite float64 values; None/NaN/inf are dropped."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def percentiles(values: Iterable, pcts: Sequence[float] = (50, 90, 99)) -> dict:
    """``{"p50": ..., "p90": ..., "p99": ...}`` (linear interpolation); None values when `values` is empty.

    Keys are ``p{pct:g}``, so 99.9 gives ``"p99.9"``. None/NaN/inf entries are ignored."""
    arr = _clean(values)
    keys = [f"p{p:g}" for p in pcts]
    if arr.size == 0:
        return dict.fromkeys(keys)
    return {k: float(v) for k, v in zip(keys, np.percentile(arr, list(pcts)))}


def summary(values: Iterable, pcts: Sequence[float] = (50, 90, 99)) -> dict:
    """Percentiles plus ``mean``, ``std``, ``min``, ``max`` and ``n`` (the count of finite values).

    The result fits the report's ``frame`` / ``ttfa`` objects (extra keys are allowed there)."""
    arr = _clean(values)
    out = percentiles(arr, pcts)
    if arr.size == 0:
        out.update(mean=None, std=None, min=None, max=None, n=0)
    else:
        out.update(mean=float(arr.mean()), std=float(arr.std()), min=float(arr.min()), max=float(arr.max()),
                   n=int(arr.size))
    return out


def component_stats(values_ms: Iterable, calls_per_frame: float) -> dict:
    """One entry of a bench result's ``components``: calls_per_frame and p50/p90/p99/mean in ms."""
    s = summary(values_ms)
    return {"calls_per_frame": float(calls_per_frame), "p50_ms": s["p50"], "p90_ms": s["p90"],
            "p99_ms": s["p99"], "mean_ms": s["mean"]}


def speedup(baseline_ms, candidate_ms):
    """baseline / candidate, or None when either is missing or the candidate is not positive."""
    if baseline_ms is None or candidate_ms is None or not candidate_ms > 0:
        return None
    return float(baseline_ms) / float(candidate_ms)
