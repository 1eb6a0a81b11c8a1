"""PNG plots of a validated report. Uses matplotlib's object API on the Agg canvas (imported lazily, no
pyplot global state, safe from threads and headless machines).

bench  -> latency_breakdown.png, frame_latency.png, ttfa.png and memory.png (reports with end-to-end TTFA /
          per-process memory), telemetry.png (only with samples)
parity -> parity_errors.png, parity_frames.png (only with streaming or end-to-end rows),
          parity_scripted.png (only with scripted end-to-end rows)
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

GIB = float(2**30)
TELEMETRY_SERIES = (("gpu_util", "GPU utilisation (%)", 1.0), ("mem_used_bytes", "memory used (GiB)", GIB),
                    ("temp_c", "temperature (°C)", 1.0), ("sm_clock_mhz", "SM clock (MHz)", 1.0),
                    ("power_w", "power (W)", 1.0))


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


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
def _zero_floor(values) -> float:
    """Where exact zeros are drawn on a log axis: a decade below the smallest positive value."""
    pos = [v for v in values if v is not None and v > 0]
    return 10.0 ** (math.floor(math.log10(min(pos))) - 1) if pos else 1e-8


def _log_value(v, floor: float):
    return floor if v is not None and v <= 0 else v


def plot_parity_errors(report: dict, path: Path) -> Path | None:
    rows = report["rows"]
    if not rows:
        return None
    comps = list(OrderedDict.fromkeys(r["component"] for r in rows))
    precs = list(OrderedDict.fromkeys(r["precision"] for r in rows))
    backends = list(OrderedDict.fromkeys(r["backend"] for r in rows))
    markers = dict(zip(backends, "o^sDvP*X"))
    pcolors = dict(zip(precs, _colors(len(precs))))
    width = 0.8 / len(precs)
    zf = _zero_floor([r["rel_l2"] for r in rows] + [r["tolerance"] for r in rows])
    if all(r["passed"] is None for r in rows):
        return None  # nothing was checked
    fig = _figure(max(8, 1.2 * len(comps) * max(1, len(precs)) / 2 + 3), 5.5)
    ax = fig.subplots()
    for i, comp in enumerate(comps):
        for j, prec in enumerate(precs):
            grp = [r for r in rows if r["component"] == comp and r["precision"] == prec]
            if not grp:
                continue
            x = i - 0.4 + width * (j + 0.5)
            finite = [_log_value(r["rel_l2"], zf) for r in grp if r["rel_l2"] is not None]
            bad = any(r["rel_l2"] is None and r["passed"] is not None for r in grp)
            failed = any(r["passed"] is False for r in grp)
            skipped = all(r["passed"] is None for r in grp)
            if skipped:
                ax.text(x, 0.02, "skipped", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                        va="bottom", fontsize=7, color="0.4")
                continue
            tol = max((r["tolerance"] for r in grp if r["tolerance"] is not None), default=None)
            worst = max(finite, default=tol or zf)  # all non-finite: drawn to the tolerance, hatched
            ax.bar(x, worst, width * 0.9, color=pcolors[prec], alpha=0.55, hatch="xx" if bad else None,
                   edgecolor="crimson" if failed or bad else "none", linewidth=1.5)
            for b in backends:
                vals = [_log_value(r["rel_l2"], zf) for r in grp if r["backend"] == b and r["rel_l2"] is not None]
                ax.scatter([x] * len(vals), vals, s=12, marker=markers.get(b, "o"), color="0.2", zorder=3)
            if tol is not None:
                ax.hlines(tol, x - width * 0.5, x + width * 0.5, color="black", linewidth=2, zorder=4)
            if failed or bad:
                text = " + ".join(t for t, on in (("FAIL", failed), ("non-finite", bad)) if on)
                ax.annotate(text, (x, max(worst, tol or 0)), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=7, color="crimson")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=pcolors[p], alpha=0.55, label=f"{p} (worst)") for p in precs]
    if any(r["rel_l2"] is None and r["passed"] is not None for r in rows):
        handles.append(Patch(facecolor="white", hatch="xx", edgecolor="crimson", label="has non-finite rel_l2"))
    handles += [Line2D([], [], marker=markers.get(b, "o"), color="0.2", linestyle="none", markersize=4,
                       label=f"{b} (each check)") for b in backends]
    handles.append(Line2D([], [], color="black", linewidth=2, label="tolerance"))
    ax.set_yscale("log")
    ax.set_xticks(range(len(comps)), comps, rotation=25, ha="right", fontsize=8)
    zeros = any(r["rel_l2"] == 0 for r in rows)
    ax.set_ylabel("relative L2 error (log" + (f"; exact 0 drawn at {zf:g})" if zeros else ")"))
    ax.set_title("Component parity vs PyTorch reference: worst rel_l2 per component and precision")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_parity_frames(report: dict, path: Path) -> Path | None:
    streaming, e2e = report["streaming"], report["e2e"]
    ran = {"streaming": any(r["passed"] is not None for r in streaming), "e2e": any(r["frames"] for r in e2e)}
    panels = [p for p in ("streaming", "e2e") if ran[p]]  # checks that did not run have nothing to draw
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    zf = _zero_floor([r["rel_l2"] for r in streaming] + [f["latent_rel_l2"] for run in e2e for f in run["frames"]])
    fig = _figure(11, 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        if panel == "streaming":
            groups: OrderedDict = OrderedDict()
            fails = []
            for r in streaming:
                g = groups.setdefault(f"{r['component']} · {r['precision']} · {r['backend']}", {})
                v = math.inf if r["rel_l2"] is None else _log_value(r["rel_l2"], zf)
                g[r["frame"]] = max(g.get(r["frame"], 0.0), v)
                if r["passed"] is False and math.isfinite(v):
                    fails.append((r["frame"], v))
            if fails:
                ax.scatter(*zip(*fails), marker="x", color="crimson", s=30, zorder=4, label="failed check")
            ax.set_title("Streaming parity: worst rel_l2 over outputs, per frame (state carried)")
            ax.set_ylabel("relative L2 error (log)")
        else:
            groups = OrderedDict((f"{run['name']} · {run['precision']} · {run['backend']}",
                                  {f["frame"]: _log_value(f["latent_rel_l2"], zf) for f in run["frames"]
                                   if f["latent_rel_l2"] is not None}) for run in e2e)
            for run in e2e:
                sens = {f["frame"]: _log_value(f["reference_sensitivity"], zf) for f in run["frames"]
                        if f.get("reference_sensitivity") is not None}
                if sens:
                    groups[f"{run['name']} · reference's own sensitivity (perturbed twin)"] = sens
            ax.set_title("End-to-end parity: latent rel_l2 per frame vs the reference run")
            ax.set_ylabel("latent relative L2 (log)")
        for name, pts in groups.items():
            xs = sorted(k for k, v in pts.items() if math.isfinite(v))
            style = dict(linestyle="--", color="grey") if "sensitivity" in name else dict(marker=".", markersize=4)
            ax.plot(xs, [pts[k] for k in xs], linewidth=1, label=name, **style)
        ax.set_yscale("log")
        ax.set_xlabel("frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


_DECISION_STYLE = {"speech_end": ("crimson", "end"), "speech_start": ("seagreen", "start"), "eos": ("0.2", "eos")}


def _gapped(points):
    """(xs, ys) with a NaN break wherever the steps are not consecutive (no line across other decisions)."""
    xs, ys = [], []
    for x, y in points:
        if xs and x != xs[-1] + 1:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(x)
        ys.append(y)
    return xs, ys


def plot_parity_scripted(report: dict, path: Path) -> Path | None:
    """Scripted end-to-end rows against the LLM step: each diffusion frame's latent rel_l2 (top) and its
    audio chunk's SNR (bottom); the script's other decisions are marked where they were taken."""
    runs = [r for r in report["e2e"] if r.get("script") and r["frames"]]
    if not runs:
        return None
    from matplotlib.ticker import MaxNLocator

    zf = _zero_floor([f["latent_rel_l2"] for r in runs for f in r["frames"]])
    fig = _figure(11, 6.5)
    ax_lat, ax_snr = fig.subplots(2, 1, sharex=True)
    for run, color in zip(runs, _colors(len(runs))):
        pts = [(f["step"], f) for f in run["frames"] if "step" in f]
        label = f"{run['name']} · {run['backend']}" + ("" if run["script"]["matched"] else " (decisions differ)")
        lat = [(s, _log_value(f["latent_rel_l2"], zf)) for s, f in pts if f["latent_rel_l2"] is not None]
        snr = [(s, f["audio_snr_db"]) for s, f in pts if f.get("audio_snr_db") is not None]
        for ax, series, lab in ((ax_lat, lat, label), (ax_snr, snr, None)):
            if series:
                ax.plot(*_gapped(series), marker=".", markersize=5, linewidth=1, color=color, label=lab)
    for step, decision in enumerate(runs[0]["script"]["decisions"]):
        if decision in _DECISION_STYLE:
            color, text = _DECISION_STYLE[decision]
            for ax in (ax_lat, ax_snr):
                ax.axvline(step, color=color, linestyle=":", linewidth=1.2)
            ax_lat.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                            textcoords="offset points", fontsize=8, color=color)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latent relative L2 (log)")
    ax_lat.set_title("Scripted decisions: per-frame error vs transformers generate (dotted: non-diffusion "
                     "decisions)")
    ax_snr.set_ylabel("audio chunk SNR (dB)")
    ax_snr.set_xlabel("LLM step (diffusion steps make the frames)")
    ax_snr.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_lat, ax_snr):
        ax.grid(alpha=0.3, which="major")
    ax_lat.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


PLOTS = {"bench": (("latency_breakdown", plot_latency_breakdown), ("frame_latency", plot_frame_latency),
                   ("ttfa", plot_ttfa), ("memory", plot_memory), ("telemetry", plot_telemetry)),
         "parity": (("parity_errors", plot_parity_errors), ("parity_frames", plot_parity_frames),
                    ("parity_scripted", plot_parity_scripted))}


def write_plots(report: dict, out_dir, prefix: str = "") -> list[Path]:
    """Write every plot that applies to `report` as ``{prefix}_{name}.png`` (or ``{name}.png``) in `out_dir`;
    return the written paths. A plot that fails is logged as a warning and skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PLOTS[report["kind"]]:
        path = out_dir / (f"{prefix}_{name}.png" if prefix else f"{name}.png")
        try:
            if fn(report, path) is not None:
                written.append(path)
        except Exception as e:  # noqa: BLE001 - a plot must never lose the JSON/Markdown of a long run
            log.warning("could not draw %s: %s: %s", path.name, type(e).__name__, e)
    return written
