"""Side by side: `vvtrt bench-serving` reports of two code trees run on the same GPU in the same session.

    python3 benchmarks/serving_compare.py NEW.json BASE.json [NEW2.json BASE2.json ...] > compare.md

Every figure comes from the JSON files (level, TTFA and inter-chunk gap p50/p99, RTF p50, completed,
refused, failed, real time by the bench's own rule), with each file's commit and GPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(x, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _source(d: dict) -> str:
    env = d.get("config", {}).get("environment", {})
    return f"commit `{env.get('git_commit') or 'not recorded'}` on {env.get('gpu_name') or 'an unknown device'}"


def rows(path: Path, label: str) -> list[str]:
    d = json.loads(path.read_text())
    load = d["config"]["load"]
    out = []
    for lv in d["levels"]:
        t, g = lv["ttfa_ms"], lv["gap_ms"]
        out.append(f"| {label} | {int(lv['level'])} | {'/'.join(map(str, load['prompt_words']))} | "
                   f"{_fmt(t['p50'])} / {_fmt(t['p99'])} | {_fmt(g['p50'], 1)} / {_fmt(g['p99'], 1)} | "
                   f"{_fmt(lv['rtf']['p50'], 2)} | {lv['completed']} | {lv['refused']} | {len(lv['failed'])} | "
                   f"{'yes' if lv['realtime'] else 'no'} | `{path.name}` |")
    return out


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv]
    if not paths or len(paths) % 2:
        raise SystemExit("usage: serving_compare.py NEW.json BASE.json [NEW.json BASE.json ...]")
    print("| tree | held streams | prompt words | TTFA p50 / p99 (ms) | gap p50 / p99 (ms) | RTF p50 | completed "
          "| refused | failed | real time | file |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sources = []
    for new, base in zip(paths[0::2], paths[1::2]):
        for p, label in ((new, "this tree"), (base, "baseline")):
            print("\n".join(rows(p, label)))
            sources.append(f"- `{p.name}`: {_source(json.loads(p.read_text()))}")
    print("\nReal time by the bench's rule: every request completed, none refused or failed, inter-chunk gap p99 "
          "< 133 ms and TTFA p99 < 1 s.\n")
    print("\n".join(sources))


if __name__ == "__main__":
    main(sys.argv[1:])
