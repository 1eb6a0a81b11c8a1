"""Render a validated report (see :mod:`vvtrt.reports.schema`) as GitHub-flavoured Markdown."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence


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
