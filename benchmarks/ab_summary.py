"""Summarise repeated A/B runs of this tree against a baseline tree (the `ab` stage of
`benchmarks/device/gpu_all.sh`): for each load level, each tree's TTFA p99 and inter-chunk gap p99 over the
repeats (median and range), so a difference can be read beside the run-to-run spread.

    python benchmarks/ab_summary.py RESULTS_DIR > ab_summary.md

RESULTS_DIR holds `serving_ab_<tree>_<i>/serving_*_concurrency.json` (`vvtrt bench-serving`) and/or
`realtime_ab_<tree>_<i>/realtime_bench.json` (`benchmarks/realtime_bench.py`), tree `new` or `base`.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TREES = ("new", "base")


def _serving_levels(path: Path) -> dict[float, tuple[float, float]]:
    doc = json.loads(path.read_text())
    return {lv["level"]: (lv["ttfa_ms"]["p99"], lv["gap_ms"]["p99"]) for lv in doc["levels"]}


def _realtime_levels(path: Path) -> dict[float, tuple[float, float]]:
    doc = json.loads(path.read_text())
    return {p["streams"]: (p["ttfa_ms"]["p99"], p["gap_ms"]["p99"]) for p in doc["engine"]["passes"]
            if p.get("ttfa_ms", {}).get("p99") is not None}


def collect(root: Path, kind: str) -> dict[str, dict[float, list[tuple[float, float]]]]:
    """{tree: {level: [(ttfa p99, gap p99) per repeat]}} for `kind` "serving" or "realtime"."""
    out: dict[str, dict[float, list]] = {t: {} for t in TREES}
    for tree in TREES:
        for run in sorted(root.glob(f"{kind}_ab_{tree}_*")):
            files = sorted(run.glob("serving_*_concurrency.json" if kind == "serving" else "realtime_bench.json"))
            for f in files:
                levels = _serving_levels(f) if kind == "serving" else _realtime_levels(f)
                for level, pair in levels.items():
                    out[tree].setdefault(level, []).append(pair)
    return out


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"


def table(title: str, data: dict) -> list[str]:
    levels = sorted(set(data["new"]) | set(data["base"]))
    if not levels:
        return []
    lines = [f"### {title}", "",
             "| level | runs new / base | TTFA p99 ms, new | TTFA p99 ms, base | gap p99 ms, new | gap p99 ms, base |",
             "|---:|---|---|---|---|---|"]
    for lv in levels:
        new, base = data["new"].get(lv, []), data["base"].get(lv, [])
        lines.append(f"| {lv:g} | {len(new)} / {len(base)} | {_cell([p[0] for p in new])} | "
                     f"{_cell([p[0] for p in base])} | {_cell([p[1] for p in new])} | {_cell([p[1] for p in base])} |")
    return lines + [""]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/ab_summary.py RESULTS_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    lines = ["Median over the repeats (range in brackets); each repeat ran this tree, then the baseline, in turn.", ""]
    lines += table("1.5B held streams (`vvtrt bench-serving`)", collect(root, "serving"))
    lines += table("Realtime engine streams (`benchmarks/realtime_bench.py`)", collect(root, "realtime"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
