"""Generate the README's performance table from the committed bench JSONs (between the
`<!-- perf-table:start -->` / `<!-- perf-table:end -->` markers).

    python benchmarks/make_table.py            # rewrite README.md in place
    python benchmarks/make_table.py --check    # exit 1 if README's table is stale

Every cell comes from a result file; a figure a report does not contain (older reports predate
end-to-end TTFA and per-process memory) reads "not measured", never a number from elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
NM = "not measured"
HEADER = ("| GPU | preset | K | runtime | frame p50 (ms) | p99 | RTF | TTFA end to end (ms): cold / warm p50 "
          "| TTFA prefill → first chunk, warm p50 (ms) | peak GPU memory (GiB): torch allocator / NVML, own process "
          "| vs transformers `generate` | vs PyTorch eager | floor (ms) | commit | report |")


def _num(x, spec: str) -> str:
    return NM if x is None else f"{x:{spec}}"


def _gb(x) -> str:
    return NM if x is None else f"{x / 2**30:.2f}"


def _ttfa_e2e(r: dict) -> str:
    e2e = r.get("ttfa_e2e")
    if not e2e:
        return NM
    return f"{_num(e2e.get('cold_ms'), '.1f')} / {_num((e2e.get('warm') or {}).get('p50'), '.1f')}"


def _ttfa_prefill(r: dict, cfg: dict) -> str:
    """The script prompt's warm prefill figure and the synthetic prompt's (older reports: only the latter,
    their `ttfa`)."""
    parts = []
    pre = r.get("ttfa_prefill")
    if pre and (pre.get("warm") or {}).get("p50") is not None:
        parts.append(f"{pre['warm']['p50']:.1f} ({pre.get('prompt_tokens', '?')}-token script)")
    syn = r.get("ttfa_synthetic") if "ttfa_e2e" in r else {"warm": r.get("ttfa"), "prompt_tokens": cfg.get("prompt_tokens")}
    if syn and (syn.get("warm") or {}).get("p50") is not None:
        parts.append(f"{syn['warm']['p50']:.1f} ({syn.get('prompt_tokens', '?')}-token synthetic)")
    return "; ".join(parts) or NM


def _mem(m: dict) -> str:
    """torch's allocator (ORT and TensorRT allocate outside it) / NVML's figure for the measuring
    process's own pid (reports before per-process measurement: not measured)."""
    return f"{_gb(m.get('peak_allocated_bytes'))} / {_gb(m.get('nvml_process_peak_bytes'))}"


def _rows(path: Path, root: Path) -> list[str]:
    d = json.loads(path.read_text())
    cfg, env = d["config"], d["config"].get("environment") or {}
    gpu = env.get("gpu_name") or cfg.get("device")
    base = {b["label"]: b["frame"]["p50"] for b in d["baselines"]}
    floor = (d.get("floor") or {}).get("floor_ms")
    commit = (env.get("git_commit") or "—")[:7]
    try:
        rel = path.relative_to(root).with_suffix(".md")
    except ValueError:
        rel = path.with_suffix(".md")
    rows = []
    for r in d["results"] + d["baselines"]:
        p50, is_base = r["frame"]["p50"], r in d["baselines"]
        vs = [f"{base[k] / p50:.1f}×" if k in base and p50 and not is_base else "—"
              for k in ("transformers", "pytorch-eager")]
        label = f"baseline: {r['label']}" if is_base else r["label"]
        if (r.get("streams") or 1) > 1:  # frame time is per batched step; RTF per stream
            label += f", {r['streams']} streams ({r['throughput_x_realtime']:.0f}× real time in all)"
        cells = [gpu, cfg["preset"], cfg["steps"], label, _num(p50, ".2f"), _num(r["frame"]["p99"], ".2f"),
                 _num(r["rtf"], ".3f"), _ttfa_e2e(r), _ttfa_prefill(r, cfg), _mem(r["memory"]), *vs,
                 _num(floor, ".2f") if floor else "—", commit, f"[{rel.parent.name}]({rel})"]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def table(results: Path = RESULTS, root: Path = ROOT) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for f in sorted(results.glob("*/bench_*/*.json")):
        lines += _rows(f, root)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
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
