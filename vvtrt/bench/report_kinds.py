"""`vvtrt report` on any of our JSON reports: parity and bench (`vvtrt.reports`), and the verbs that write
their own formats: the Realtime bench
(`"kind": "realtime-bench"`, Markdown and plot) and `bench-serving` (`"kind": "bench-serving"`, plot).
A file of such a kind that lacks what its renderer reads is one `InputError`, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

from vvtrt.errors import InputError

KINDS = ("realtime-bench", "bench-serving")


def peek_kind(path: Path) -> str | None:
    """The `kind` of a JSON report file when it is one of `KINDS` (anything else: None)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if kind in KINDS else None


def render_other(kind: str, json_path: Path, out: Path) -> dict:
    """Re-render a `kind` report next to `out`: {"json", "md" (None for bench-serving), "plots"}."""
    from vvtrt.fsio import atomic_path, atomic_write_text

    report = json.loads(json_path.read_text(encoding="utf-8"))
    stem = json_path.stem
    try:
        if kind == "realtime-bench":
            from vvtrt.realtime.bench_report import markdown, plot

            with atomic_path(out / f"{stem}.png") as tmp:
                plot(report, tmp)
            md = atomic_write_text(out / f"{stem}.md", markdown(report, f"{stem}.png"))
            return {"json": json_path, "md": md, "plots": [out / f"{stem}.png"]}
        from vvtrt.bench.serving_plots import plot_serving

        png = plot_serving(report, out / f"{stem}.png")
        return {"json": json_path, "md": None, "plots": [png] if png else []}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"{json_path} says kind {kind!r} but is not a complete {kind} report ({type(exc).__name__}: "
                         f"{str(exc)[:120]}): re-run the bench that wrote it") from None


def render_any(json_file, out_dir=None) -> dict:
    """Re-render any report file next to it (or in `out_dir`): {"json", "md", "plots"}."""
    from vvtrt.reports import prepare_dir, render_report

    json_path = Path(json_file)
    kind = peek_kind(json_path)
    if kind is None:
        return render_report(json_path, out_dir)
    return render_other(kind, json_path, prepare_dir(out_dir if out_dir is not None else json_path.parent))
