"""PNG plots of a validated report. Uses matplotlib's object API on the Agg canvas (imported lazily, no
pyplot global state, safe from threads and headless machines).

bench  -> latency_breakdown.png, frame_latency.png, ttfa.png and memory.png (reports with end-to-end TTFA /
          per-process memory), telemetry.png (only with samples)
parity -> parity_errors.png, parity_frames.png (only with streaming or end-to-end rows),
          parity_scripted.png (only with scripted end-to-end rows)
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from vvtrt.reports.canvas import _colors, _figure, _save  # noqa: F401 - re-exported for other plots

log = logging.getLogger(__name__)

GIB = float(2**30)
TELEMETRY_SERIES = (("gpu_util", "GPU utilisation (%)", 1.0), ("mem_used_bytes", "memory used (GiB)", GIB),
                    ("temp_c", "temperature (°C)", 1.0), ("sm_clock_mhz", "SM clock (MHz)", 1.0),
                    ("power_w", "power (W)", 1.0))


def _entries(report):
    return [(r, False) for r in report["results"]] + [(b, True) for b in report["baselines"]]


def _name(r: dict, baseline: bool) -> str:
    return f"{r['label']}{' (baseline)' if baseline else ''}\n{r['backend']} · {r['precision']}"


# ---------------------------------------------------------------------------------------- bench ----
def plot_latency_breakdown(report: dict, path: Path) -> Path | None:
    entries = [(r, b) for r, b in _entries(report) if r["components"] or r["frame"]["mean"] is not None]
    if not entries:
        return None
    comps = list(OrderedDict.fromkeys(c for r, _ in entries for c in r["components"]))
    colors = dict(zip(comps, _colors(len(comps))))
    fig = _figure(13, 1.0 + 0.75 * len(entries))
    ax_abs, ax_rel = fig.subplots(1, 2, width_ratios=(3, 2), sharey=True)
    labels = [_name(r, b) for r, b in entries]
    seen = set()
    for y, (r, _) in enumerate(entries):
        segs = [(c, (s["mean_ms"] or 0.0) * s["calls_per_frame"]) for c, s in r["components"].items()]
        total = sum(v for _, v in segs)
        frame_mean = r["frame"]["mean"]
        rest = (frame_mean - total) if frame_mean is not None else 0.0
        if rest > 0.005 * max(frame_mean or 0, 1e-9):
            segs.append(("unattributed" if segs else "whole frame (no breakdown)", rest))
        full = sum(v for _, v in segs) or 1.0
        left_abs = left_rel = 0.0
        for c, v in segs:
            style = dict(color=colors.get(c, "0.85"), edgecolor="white", linewidth=0.5)
            if c == "unattributed":
                style.update(hatch="//", edgecolor="0.5")
            elif c not in colors:  # a baseline without a component breakdown
                style.update(color="0.65", hatch="..", edgecolor="0.4")
            lab = c if c not in seen else None
            seen.add(c)
            ax_abs.barh(y, v, left=left_abs, label=lab, **style)
            ax_rel.barh(y, 100 * v / full, left=left_rel, **style)
            left_abs += v
            left_rel += 100 * v / full
        ax_abs.text(left_abs, y, f" {left_abs:.1f} ms", va="center", fontsize=8)
    ax_abs.set_yticks(range(len(entries)), labels, fontsize=8)
    ax_abs.invert_yaxis()
    ax_abs.set_xlabel("ms per frame (component mean × calls per frame)")
    ax_abs.set_title("Per-frame latency breakdown")
    ax_abs.margins(x=0.15)
    ax_rel.set_xlabel("share of frame (%)")
    ax_rel.set_xlim(0, 100)
    ax_rel.set_title("Share per component")
    fig.legend(loc="outside lower center", ncol=min(5, max(1, len(seen))), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_frame_latency(report: dict, path: Path) -> Path | None:
    import numpy as np

    entries = [(r, b) for r, b in _entries(report) if any(v is not None for v in r["frame_ms"])]
    if not entries:
        return None
    data = [[v for v in r["frame_ms"] if v is not None] for r, _ in entries]
    fig = _figure(11, 1.2 + 0.7 * len(entries))
    ax = fig.subplots()
    kw = dict(whis=(1, 99), patch_artist=True, widths=0.6, flierprops=dict(marker=".", markersize=3, alpha=0.5))
    try:
        bp = ax.boxplot(data, orientation="horizontal", **kw)  # matplotlib >= 3.10
    except TypeError:
        bp = ax.boxplot(data, vert=False, **kw)
    palette = _colors(len(entries))
    for patch, (r, base), c in zip(bp["boxes"], entries, palette):
        patch.set_facecolor("0.8" if base else c)
        patch.set_alpha(0.8)
    medians = [float(np.median(d)) for d in data]
    if min(medians) > 0 and max(medians) / min(medians) > 20:
        ax.set_xscale("log")
    for y, (d, p50) in enumerate(zip(data, medians), start=1):
        ax.annotate(f"p50 {p50:.2f} ms", (max(d), y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)
    floor = report.get("floor") or {}
    if floor.get("floor_ms"):
        ax.axvline(floor["floor_ms"], color="crimson", linestyle="--", linewidth=1,
                   label=f"bandwidth floor {floor['floor_ms']:.2f} ms")
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    ax.set_yticks(range(1, len(entries) + 1), [_name(r, b) for r, b in entries], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("frame latency (ms)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_title("Per-frame latency distribution (box: p25–p75, whiskers: p1–p99)")
    ax.grid(axis="x", which="both", alpha=0.3)
    return _save(fig, path)


def _shade_jobs(ax, report: dict) -> None:
    """Mark each process of the run (variant, baseline, floor) on a telemetry axis."""
    for i, job in enumerate(report.get("jobs") or []):
        ax.axvspan(job["t_start_s"], job["t_end_s"], color="0.5" if i % 2 else "0.8", alpha=0.15, linewidth=0)
        ax.text((job["t_start_s"] + job["t_end_s"]) / 2, 0.98, job["label"], transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=6, rotation=90, color="0.3")


def plot_telemetry(report: dict, path: Path) -> Path | None:
    tel = report.get("telemetry") or {}
    samples = tel.get("samples") or []
    series = [(k, lab, sc) for k, lab, sc in TELEMETRY_SERIES if any(s.get(k) is not None for s in samples)]
    if not samples or not series:
        return None
    fig = _figure(10, 1.0 + 1.6 * len(series))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, label, scale) in zip(axes, series):
        pts = [(s["t"], s[key] / scale) for s in samples if s.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        _shade_jobs(ax, report)
    axes[-1].set_xlabel("time since sampling started (s)")
    axes[0].set_title(f"GPU telemetry, whole device ({len(samples)} samples, every {tel.get('interval_s', 0):g} s)")
    return _save(fig, path)


def _grouped_barh(entries, series, spec: str, title: str, xlabel: str, hatched=()):
    """One group of horizontal bars per entry, one bar per series `(name, label, value(r) -> number | None)`;
    a None value draws no bar (not measured). Returns the figure."""
    fig = _figure(11, 1.2 + 0.9 * len(entries))
    ax = fig.subplots()
    height = 0.8 / len(series)
    for j, ((name, label, value), color) in enumerate(zip(series, _colors(len(series)))):
        pts = [(y - 0.4 + height * (j + 0.5), v) for y, (r, _) in enumerate(entries) if (v := value(r)) is not None]
        ax.barh([p[0] for p in pts], [p[1] for p in pts], height * 0.9, color=color, label=label,
                hatch="//" if name in hatched else None)
        for y, v in pts:
            ax.annotate(f"{v:{spec}}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(entries)), [_name(r, b) for r, b in entries], fontsize=8)
    ax.invert_yaxis()
    vals = [v for r, _ in entries for *_, value in series if (v := value(r))]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 50:
        ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel(xlabel + (", log scale" if ax.get_xscale() == "log" else "") + " (no bar: not measured)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def _ttfa(block: str, cold: bool = False):
    def value(r):
        b = r.get(block) or {}
        return b.get("cold_ms") if cold else (b.get("warm") or {}).get("p50")
    return value


TTFA_BARS = (("e2e_cold", "end to end, cold", _ttfa("ttfa_e2e", cold=True)),
             ("e2e_warm", "end to end, warm p50", _ttfa("ttfa_e2e")),
             ("prefill", "prefill → first chunk, warm p50", _ttfa("ttfa_prefill")),
             ("synthetic", "synthetic prompt, warm p50", _ttfa("ttfa_synthetic")))
MEMORY_BARS = (("peak_allocated_bytes", "torch allocator peak"), ("nvml_process_peak_bytes", "NVML, this process"),
               ("nvml_process_after_load_peak_bytes", "NVML, this process, after load"),
               ("nvml_peak_used_bytes", "NVML, whole device"), ("host_peak_rss_bytes", "host peak RSS"))


def plot_ttfa(report: dict, path: Path) -> Path | None:
    """Time to first audio per variant: cold and warm end to end, warm prefill, synthetic. None for reports
    without end-to-end figures."""
    entries = [(r, b) for r, b in _entries(report) if r.get("ttfa_e2e")]
    if not entries:
        return None
    return _save(_grouped_barh(entries, TTFA_BARS, ".1f", "Time to first audio", "ms"), path)


def plot_memory(report: dict, path: Path) -> Path | None:
    """Memory per variant, each measured in its own process. None for reports from before that."""
    entries = [(r, b) for r, b in _entries(report) if "host_peak_rss_bytes" in r["memory"]]
    series = [(k, lab, lambda r, k=k: None if r["memory"].get(k) is None else r["memory"][k] / GIB)
              for k, lab in MEMORY_BARS if any(r["memory"].get(k) is not None for r, _ in entries)]
    if not entries or not series:
        return None
    return _save(_grouped_barh(entries, series, ".2f", "Peak memory, one process per variant (hatched: the whole "
                               "device, not just this process)", "GiB", hatched=("nvml_peak_used_bytes",)), path)


# --------------------------------------------------------------------------------------- parity ----
def _plots(kind: str):
    if kind == "bench":
        return (("latency_breakdown", plot_latency_breakdown), ("frame_latency", plot_frame_latency),
                ("ttfa", plot_ttfa), ("memory", plot_memory), ("telemetry", plot_telemetry))
    from vvtrt.reports.plots_parity import plot_parity_errors, plot_parity_frames, plot_parity_scripted

    return (("parity_errors", plot_parity_errors), ("parity_frames", plot_parity_frames),
            ("parity_scripted", plot_parity_scripted))


def write_plots(report: dict, out_dir, prefix: str = "") -> list[Path]:
    """Write every plot that applies to `report` as ``{prefix}_{name}.png`` (or ``{name}.png``) in `out_dir`;
    return the written paths. A plot that fails is logged as a warning and skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in _plots(report["kind"]):
        path = out_dir / (f"{prefix}_{name}.png" if prefix else f"{name}.png")
        try:
            if fn(report, path) is not None:
                written.append(path)
        except Exception as e:  # noqa: BLE001 - a plot must never lose the JSON/Markdown of a long run
            log.warning("could not draw %s: %s: %s", path.name, type(e).__name__, e)
    return written
