"""Parity plots: error per component and dtype, error per frame, scripted decisions (see plots.py)."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

from vvtrt.reports.canvas import _figure, _save, _colors


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
