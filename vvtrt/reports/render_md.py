"""Render a validated report (see :mod:`vvtrt.reports.schema`) as GitHub-flavoured Markdown."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

from vvtrt.reports.stats import speedup

GIB = float(2**30)
MIN_STREAM_FRAMES = 16
TELEMETRY_UNITS = OrderedDict([("gpu_util", ("GPU utilisation", "%", 1)),
                               ("mem_used_bytes", ("memory used", "GiB", GIB)),
                               ("temp_c", ("temperature", "°C", 1)), ("sm_clock_mhz", ("SM clock", "MHz", 1)),
                               ("power_w", ("power", "W", 1))])


def fmt(x, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    """Format a number (None -> "—")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return f"{x / scale:{spec}}{suffix}"


def _e(x) -> str:
    return fmt(x, ".2e")


def _cell(v) -> str:
    if isinstance(v, (list, tuple)):
        v = ", ".join(str(x) for x in v) if v else "—"
    elif isinstance(v, float):
        v = fmt(v, ".6g")
    elif v is None:
        v = "—"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _status(passed) -> str:
    """One check's verdict; None means the check was skipped (why: the notes / failures list)."""
    return "⏭ skipped" if passed is None else "✅ pass" if passed else "❌ FAIL"


def _group_status(rows) -> str:
    """"k/n ✅ pass" over the checks that ran; FAIL if any failed; "skipped" if none ran."""
    ran = [r["passed"] for r in rows if r["passed"] is not None]
    skipped = len(rows) - len(ran)
    if not ran:
        return _status(None)
    text = f"{sum(ran)}/{len(ran)} {_status(all(ran))}"
    return text + (f" ({skipped} skipped)" if skipped else "")


def _counts(rows) -> str:
    ran = [r["passed"] for r in rows if r["passed"] is not None]
    info = sum(1 for r in rows if r.get("gated") is False)
    skipped = len(rows) - len(ran) - info
    extra = [f"{skipped} skipped"] * bool(skipped) + [f"{info} informational"] * bool(info)
    return f"{sum(ran)}/{len(ran)} passed" + (f" ({', '.join(extra)})" if extra else "")


def _worst(values, key, highest: bool = True):
    """The row with the worst value of `key` (None counts as worst: it means non-finite or missing)."""
    def rank(r):
        v = r.get(key)
        if v is None:
            return math.inf
        return v if highest else -v
    return max(values, key=rank)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _group(rows, *keys) -> "OrderedDict[tuple, list]":
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _header(report: dict, title: str) -> list[str]:
    cfg = report["config"]
    dtypes = cfg.get("dtype") or ", ".join(cfg.get("dtypes", []))
    return [f"# {title}", "",
            f"Created {report['created']} · preset `{cfg['preset']}` · {dtypes} · {cfg['steps']} steps · "
            f"CFG {fmt(cfg['cfg_scale'])} · backends {', '.join(cfg['backends']) or '—'}", ""]


def _config_block(report: dict) -> list[str]:
    return ["## Configuration", "", table(["key", "value"], _flatten(report["config"])), ""]


def _images(images: Sequence | None) -> list[str]:
    if not images:
        return []
    lines = ["## Plots", ""]
    for img in images:
        name = Path(img).name
        lines += [f"![{name}]({name})", ""]
    return lines


# --------------------------------------------------------------------------------------- parity ----
def _render_parity(report: dict, images) -> str:
    rows, streaming, e2e = report["rows"], report["streaming"], report["e2e"]
    out = _header(report, "vvtrt parity report")
    out += [f"**{'PASSED' if report['passed'] else 'FAILED'}** — component checks {_counts(rows)}, "
            f"streaming frames {_counts(streaming)}, end-to-end runs {_counts(e2e)}; "
            f"{len(report['failures'])} failure(s).", ""]
    out += ["## Components", "",
            "Worst value over every checked shape and output; rel_l2 is compared with the tolerance; "
            "— means missing or non-finite (NaN/inf), which counts as worst.", ""]
    body = []
    for (comp, prec, backend, method), grp in _group(rows, "component", "precision", "backend", "method").items():
        w = _worst(grp, "rel_l2")
        dims = ", ".join(f"{k}={v}" for k, v in w["dims"].items())
        body.append([comp, prec, backend, method, len(grp), _e(w["rel_l2"]), _e(max(
            (r["max_abs"] for r in grp if r["max_abs"] is not None), default=None)),
            fmt(_worst(grp, "cosine", highest=False)["cosine"], ".6f"), _e(w["tolerance"]),
            f"{w['output']} ({dims})" if dims else w["output"], _group_status(grp)])
    out += [table(["component", "precision", "backend", "method", "checks", "worst rel_l2", "worst max_abs",
                   "min cosine", "tolerance", "worst at", "status"], body) if body else "_no component rows_", ""]
    out += ["## Streaming", ""]
    if streaming:
        body = []
        for (comp, prec, backend), grp in _group(streaming, "component", "precision", "backend").items():
            w = _worst(grp, "rel_l2")
            frames = len({r["frame"] for r in grp})
            note = "" if frames >= MIN_STREAM_FRAMES else f"⚠ only {frames} frames (< {MIN_STREAM_FRAMES})"
            body.append([comp, prec, backend, frames, w["frame"], w["output"], _e(w["rel_l2"]),
                         _e(_worst(grp, "max_abs")["max_abs"]), _group_status(grp), note])
        out += [table(["component", "precision", "backend", "frames", "worst frame", "output", "worst rel_l2",
                       "worst max_abs", "status", "notes"], body), ""]
    else:
        out += ["_no streaming checks_", ""]
    out += ["## End to end", ""]
    if e2e:
        body = []
        for run in e2e:
            fr = run["frames"]
            first, last = (fr[0], fr[-1]) if fr else ({}, {})
            w = _worst(fr, "latent_rel_l2") if fr else {}
            worst = f"#{w['frame']}: {_e(w['latent_rel_l2'])}" if fr else "—"
            body.append([run["name"], run["backend"], run["precision"], len(fr), _e(first.get("latent_rel_l2")),
                         _e(last.get("latent_rel_l2")), worst, _e(max((f["latent_max_abs"] for f in fr
                         if f["latent_max_abs"] is not None), default=None)), fmt(run["snr_db"], ".1f"),
                         "ℹ info" if run.get("gated") is False else _status(run["passed"]), run["notes"]])
        out += ["Latent rel_l2 against the reference run at the first, last and worst frame.", "",
                table(["run", "backend", "precision", "frames", "first", "last", "worst", "worst max_abs",
                       "SNR (dB)", "status", "notes"], body), ""]
    else:
        out += ["_no end-to-end runs_", ""]
    if report["failures"]:
        out += ["## Failures", ""] + [f"- {f}" for f in report["failures"]] + [""]
    out += _images(images)
    out += _config_block(report)
    if rows:
        detail = [[r["component"], r["precision"], r["backend"], r["method"], r["output"],
                   ", ".join(f"{k}={v}" for k, v in r["dims"].items()), _e(r["max_abs"]), _e(r["max_rel"]),
                   _e(r["rel_l2"]), fmt(r["cosine"], ".6f"), _e(r["tolerance"]), _status(r["passed"])] for r in rows]
        out += ["<details><summary>All component checks</summary>", "",
                table(["component", "precision", "backend", "method", "output", "dims", "max_abs", "max_rel",
                       "rel_l2", "cosine", "tolerance", "status"], detail), "", "</details>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- bench ----
def _all_results(report: dict) -> list[tuple[dict, bool]]:
    return [(r, False) for r in report["results"]] + [(b, True) for b in report["baselines"]]


def _gap(r: dict, floor) -> float | None:
    if r.get("floor_gap") is not None:
        return r["floor_gap"]
    if floor and floor.get("floor_ms") and r["frame"].get("p50") is not None:
        return r["frame"]["p50"] / floor["floor_ms"]
    return None


def _target_status(t: dict) -> str:
    value, target = t["value"], t["target"]
    if value is None or target is None:
        return _status(t["met"]) if value is not None else "— no value"
    op = t.get("op") or (("<=" if value <= target else ">=") if t["met"] else ("<=" if value > target else ">="))
    diff = abs(value - target)
    rel = f" ({diff / abs(target) * 100:.1f}%)" if target else ""
    word = "margin" if t["met"] else "missed by"
    return f"{'✅ met' if t['met'] else '❌ missed'} ({op} {fmt(target)}; {word} {fmt(diff)} {t['unit']}{rel})"


def _render_bench(report: dict, images) -> str:
    results, baselines, floor = report["results"], report["baselines"], report.get("floor")
    out = _header(report, "vvtrt benchmark report")
    best = min((r for r in results if r["frame"]["p50"] is not None), key=lambda r: r["frame"]["p50"], default=None)
    if best is not None:
        ups = [f"{speedup(b['frame']['p50'], best['frame']['p50']):.2f}× vs {b['label']}"
               for b in baselines if speedup(b["frame"]["p50"], best["frame"]["p50"]) is not None]
        out += [f"Fastest: **{best['label']}** at {fmt(best['frame']['p50'], '.2f')} ms/frame p50, "
                f"RTF {fmt(best['rtf'], '.3f')}" + (f" — {', '.join(ups)}." if ups else "."), ""]
    out += ["## Backends", "", "Frame = one acoustic latent (3200 samples ≈ 133 ms of 24 kHz audio); speed-up = baseline "
            "frame p50 / this frame p50; RTF = compute time / audio time (< 1 is faster than real time); "
            "TTFA = time to first audio; floor gap = frame p50 / bandwidth floor.", ""]
    headers = ["label", "backend", "precision", "frame p50 (ms)", "p90", "p99", "RTF", "TTFA p50 (ms)", "p90",
               "p99", "peak alloc (GiB)"] + [f"speed-up vs {b['label']}" for b in baselines] + ["floor gap"]
    body = []
    for r, is_base in _all_results(report):
        f, tt = r["frame"], r["ttfa"]
        body.append([r["label"] + (" (baseline)" if is_base else ""), r["backend"], r["precision"],
                     fmt(f["p50"], ".2f"), fmt(f["p90"], ".2f"), fmt(f["p99"], ".2f"), fmt(r["rtf"], ".3f"),
                     fmt(tt["p50"], ".1f"), fmt(tt["p90"], ".1f"), fmt(tt["p99"], ".1f"),
                     fmt(r["memory"]["peak_allocated_bytes"], ".2f", GIB)]
                    + [fmt(speedup(b["frame"]["p50"], f["p50"]), ".2f", suffix="×") for b in baselines]
                    + [fmt(_gap(r, floor), ".2f", suffix="×")])
    out += [table(headers, body), ""]
    batched = [r for r in results if (r.get("streams") or 1) > 1]
    if batched:
        out += [f"Concurrency: {report['config'].get('batch')} streams batched into each frame step; frame "
                "latency and RTF are per step (every stream advances one frame), throughput counts all streams.",
                "", table(["label", "streams", "throughput (× real time, all streams)", "RTF per stream"],
                          [[r["label"], r["streams"], fmt(r.get("throughput_x_realtime"), ".1f", suffix="×"),
                            fmt(r["rtf"], ".3f")] for r in batched]), ""]
    if report.get("failed"):
        out += ["### Failed variants", ""] + [f"- **{f['label']}**: {f['error']}" for f in report["failed"]] + [""]
    out += ["### Memory and setup", "", table(
        ["label", "peak allocated (GiB)", "peak reserved (GiB)", "NVML peak used (GiB)", "graph pool (GiB)",
         "load (s)", "build (s)", "capture (s)", "frames", "notes"],
        [[r["label"]] + [fmt(r["memory"][k], ".2f", GIB) for k in ("peak_allocated_bytes", "peak_reserved_bytes",
                                                                     "nvml_peak_used_bytes", "graph_pool_bytes")]
         + [fmt(r["setup"][k], ".1f") for k in ("load_s", "build_s", "capture_s")] + [len(r["frame_ms"]), r["notes"]]
         for r, _ in _all_results(report)]), ""]
    comp_rows = []
    for r, _ in _all_results(report):
        for name, c in r["components"].items():
            per_frame = None if c["mean_ms"] is None else c["mean_ms"] * c["calls_per_frame"]
            share = (per_frame / r["frame"]["mean"] * 100) if per_frame is not None and r["frame"]["mean"] else None
            comp_rows.append([r["label"], name, fmt(c["calls_per_frame"], "g"), fmt(c["p50_ms"], ".3f"),
                              fmt(c["p90_ms"], ".3f"), fmt(c["p99_ms"], ".3f"), fmt(c["mean_ms"], ".3f"),
                              fmt(per_frame, ".2f"), fmt(share, ".1f", suffix="%")])
    out += ["## Components", ""]
    out += [table(["label", "component", "calls/frame", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)",
                   "ms/frame (mean × calls)", "share of frame mean"], comp_rows) if comp_rows
            else "_no per-component timings_", ""]
    if floor:
        out += ["## Bandwidth floor", "", f"{fmt(floor['weight_bytes_per_frame'], '.3f', GIB)} GiB of weights read per "
                f"frame at {fmt(floor['bandwidth_gbps'], '.0f')} GB/s → floor {fmt(floor['floor_ms'], '.2f')} "
                "ms/frame.", ""]
    if report.get("targets"):
        out += ["## Targets", "", table(["target", "value", "unit", "status"],
                                        [[t["name"], fmt(t["value"], ".4g"), t["unit"], _target_status(t)]
                                         for t in report["targets"]]), ""]
    tel = report.get("telemetry") or {}
    samples = tel.get("samples") or []
    out += ["## GPU telemetry", ""]
    if samples:
        span = samples[-1]["t"] - samples[0]["t"]
        body = []
        for key, (label, unit, scale) in TELEMETRY_UNITS.items():
            vals = [s[key] for s in samples if s.get(key) is not None]
            if vals:
                body.append([label, unit, fmt(sum(vals) / len(vals), ".4g", scale), fmt(max(vals), ".4g", scale)])
        out += [f"{len(samples)} samples every {fmt(tel['interval_s'])} s over {span:.1f} s.", "",
                table(["series", "unit", "mean", "max"], body), ""]
    else:
        out += ["_no telemetry samples (no GPU / NVML)_", ""]
    out += _images(images)
    out += _config_block(report)
    return "\n".join(out)


def render_markdown(report: dict, images: Sequence | None = None) -> str:
    """Markdown for a parity or bench report. `images`: plot files to link (by file name, so the PNGs are
    expected next to the Markdown file)."""
    if report["kind"] == "parity":
        return _render_parity(report, images)
    return _render_bench(report, images)
