"""Reports: the JSON formats of parity and benchmark runs (:mod:`.schema`), their Markdown and PNG
renderings, GPU telemetry sampling and environment capture.

    report = new_report("bench", config, results=[...], baselines=[...], telemetry=..., floor=...)
    paths = write_report(report, "benchmarks/results", "h100_bf16")   # .json, .md, _*.png
    paths = render_report("benchmarks/results/h100_bf16.json")          # `vvtrt report FILE.json`
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from vvtrt.errors import InputError, WorkdirError
from vvtrt.reports.environment import collect_environment
from vvtrt.reports.schema import VERSION, load_report, new_report, now_iso, to_jsonable, validate
from vvtrt.reports.stats import component_stats, percentiles, speedup, summary
from vvtrt.reports.telemetry import TelemetrySampler

__all__ = ["VERSION", "TelemetrySampler", "collect_environment", "component_stats", "load_report",
           "new_report", "now_iso", "percentiles", "render_markdown", "render_report", "speedup", "summary",
           "to_jsonable", "validate", "write_plots", "write_report"]


def render_markdown(report: dict, images=None) -> str:
    """Markdown for a parity or bench report. `images`: plot files to link (by file name, so the PNGs are
    expected next to the Markdown file)."""
    if report["kind"] == "parity":
        from vvtrt.reports.render_parity import render_parity

        return render_parity(report, images)
    from vvtrt.reports.render_bench import render_bench

    return render_bench(report, images)


def write_plots(report: dict, out_dir, prefix: str = "") -> list[Path]:
    from vvtrt.reports.plots import write_plots as _write

    return _write(report, out_dir, prefix)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create report directory {out_dir}: {e}") from None
    return out_dir


def _render(report: dict, out_dir: Path, stem: str) -> dict:
    plots = write_plots(report, out_dir, stem)
    md = out_dir / f"{stem}.md"
    _atomic_write(md, render_markdown(report, [p.name for p in plots]))
    return {"md": md, "plots": plots}


def write_report(report: dict, out_dir, stem: str) -> dict:
    """Validate `report` and write ``stem.json``, ``stem.md`` and ``stem_<plot>.png`` into `out_dir`.

    numpy scalars/arrays, tuples and enums are converted and NaN/inf become null first. The JSON is
    written before anything is drawn, so a plotting problem never loses a run's data. Returns
    ``{"json": Path, "md": Path, "plots": [Path, ...]}``."""
    if not stem or any(c in stem for c in "/\\") or stem.startswith("."):
        raise InputError(f"report stem {stem!r} must be a plain file name without extension")
    report = to_jsonable(report)
    validate(report)
    out_dir = prepare_dir(out_dir)
    json_path = out_dir / f"{stem}.json"
    _atomic_write(json_path, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return {"json": json_path, **_render(report, out_dir, stem)}


def render_report(json_path, out_dir=None) -> dict:
    """Re-render the Markdown and plots of a saved report next to it (or in `out_dir`), named after the JSON
    file's stem. Returns ``{"json": Path, "md": Path, "plots": [Path, ...]}``."""
    json_path = Path(json_path)
    report = load_report(json_path)
    out = prepare_dir(out_dir if out_dir is not None else json_path.parent)
    return {"json": json_path, **_render(report, out, json_path.stem)}
