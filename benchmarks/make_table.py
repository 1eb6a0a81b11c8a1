"""Generate the README's performance table from the committed bench JSONs (between the
`<!-- perf-table:start -->` / `<!-- perf-table:end -->` markers).

    python benchmarks/make_table.py            # rewrite README.md in place
    python benchmarks/make_table.py --check    # exit 1 if README's table is stale
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


def _gb(x):
    return f"{x / 2**30:.2f}" if x else "—"


def _mem(m) -> str:
    """ORT and TensorRT allocate outside torch's allocator: NVML (whole device, incl. the CUDA context)
    is the number to read for them."""
    if not m or not m.get("peak_allocated_bytes"):
        return "—"
    return f"{_gb(m['peak_allocated_bytes'])} / {_gb(m.get('nvml_peak_used_bytes'))}"


def table() -> str:
    lines = ["| GPU | preset | K | runtime | frame p50 (ms) | p99 | RTF | TTFA p50 (ms, 512-token prompt) "
             "| peak GPU memory (GiB: torch allocator / NVML) | vs transformers `generate` | vs PyTorch eager | floor (ms) | commit | report |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*/bench_*/*.json")):
        d = json.loads(f.read_text())
        cfg = d["config"]
        gpu = (cfg.get("environment") or {}).get("gpu_name") or cfg.get("device")
        base = {b["label"]: b["frame"]["p50"] for b in d["baselines"]}
        floor = (d.get("floor") or {}).get("floor_ms")
        commit = ((cfg.get("environment") or {}).get("git_commit") or "—")[:7]
        for r in d["results"] + d["baselines"]:
            p50 = r["frame"]["p50"]
            is_base = r in d["baselines"]
            vs_t = f"{base['transformers'] / p50:.1f}×" if "transformers" in base and not is_base else "—"
            vs_e = f"{base['pytorch-eager'] / p50:.1f}×" if "pytorch-eager" in base and not is_base else "—"
            label = f"baseline: {r['label']}" if is_base else r["label"]
            if (r.get("streams") or 1) > 1:  # frame time is per batched step; RTF per stream
                label += f", {r['streams']} streams ({r['throughput_x_realtime']:.0f}× real time in all)"
            rel = f.relative_to(ROOT).with_suffix(".md")
            lines.append(f"| {gpu} | {cfg['preset']} | {cfg['steps']} | {label} | {p50:.2f} | {r['frame']['p99']:.2f} "
                         f"| {r['rtf']:.3f} | {r['ttfa']['p50']:.1f} | {_mem(r['memory'])} "
                         f"| {vs_t} | {vs_e} | {floor:.2f} | {commit} | [{rel.parent.name}]({rel}) |" if floor else
                         f"| {gpu} | {cfg['preset']} | {cfg['steps']} | {label} | {p50:.2f} | {r['frame']['p99']:.2f} "
                         f"| {r['rtf']:.3f} | {r['ttfa']['p50']:.1f} | {_mem(r['memory'])} "
                         f"| {vs_t} | {vs_e} | — | {commit} | [{rel.parent.name}]({rel}) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if args.check:
        sys.exit(0 if new == text else 1)
    readme.write_text(new)


if __name__ == "__main__":
    main()
