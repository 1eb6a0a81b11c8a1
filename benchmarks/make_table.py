"""Generate the result tables from the committed result JSONs:

- README.md, between `<!-- perf-table:start -->` / `<!-- perf-table:end -->`: the current performance
  table, the latest figure per GPU x model x precision x runtime at the default settings (K=10, one
  stream), with the baselines measured in the same run and a link to each JSON;
- docs/results.md, between `<!-- results-bench:start -->` / `<!-- results-bench:end -->`: every bench row
  ever committed (benchmarks/results/*/bench_*/*.json), and between `<!-- results-files:start -->` /
  `<!-- results-files:end -->` an index of every result JSON with its kind, device, commit and date.

    python benchmarks/make_table.py            # rewrite both files in place
    python benchmarks/make_table.py --check    # exit 1 if a generated block is stale

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
README, RESULTS_MD = ROOT / "README.md", ROOT / "docs" / "results.md"
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
    """Every bench row of every committed bench JSON (the history)."""
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for f in sorted(results.glob("*/bench_*/*.json")):
        lines += _rows(f, root)
    return "\n".join(lines)


CURRENT_HEADER = ("| GPU | model | precision | runtime | frame p50 (ms) | p99 | RTF | TTFA end to end, warm p50 (ms) "
                  "| TTFA prefill → first chunk, warm p50 (ms) | peak GPU memory (GiB): torch allocator / NVML, own "
                  "process | vs transformers `generate` (same run) | vs PyTorch eager (same run) | commit | result |")


def _latest(results: Path) -> dict:
    """(gpu, preset, dtype, label) -> (created, path, result, is_baseline): the latest single-stream row at
    the default K=10 of each runtime and baseline."""
    best: dict = {}
    for f in sorted(results.glob("*/bench_*/*.json")):
        d = json.loads(f.read_text())
        cfg = d["config"]
        if cfg.get("steps") != 10:
            continue
        gpu = (cfg.get("environment") or {}).get("gpu_name") or cfg.get("device")
        for r in d["results"] + d["baselines"]:
            if (r.get("streams") or 1) != 1:
                continue
            key = (gpu, cfg["preset"], cfg.get("dtype", "?"), r["label"])
            cand = (d.get("created") or "", f, r, r in d["baselines"])
            if key not in best or cand[0] > best[key][0]:
                best[key] = cand
    return best


def current_table(results: Path = RESULTS, root: Path = ROOT) -> str:
    """The latest figure per GPU x model x precision x runtime (K=10, one stream); speed-ups only against
    baselines of the same run (the same JSON), else "—"."""
    lines = [CURRENT_HEADER, "|" + "---|" * CURRENT_HEADER.count(" | ") + "---|"]
    for (gpu, preset, dtype, _), (_, f, r, is_base) in sorted(_latest(results).items(),
                                                               key=lambda kv: (kv[0][:3], kv[1][3], kv[0][3])):
        d = json.loads(f.read_text())
        cfg, base = d["config"], {b["label"]: b["frame"]["p50"] for b in d["baselines"]}
        p50 = r["frame"]["p50"]
        vs = [f"{base[k] / p50:.1f}×" if k in base and p50 and not is_base else "—"
              for k in ("transformers", "pytorch-eager")]
        commit = ((cfg.get("environment") or {}).get("git_commit") or "not recorded")[:12]
        warm = ((r.get("ttfa_e2e") or {}).get("warm") or {}).get("p50")
        rel = _rel(f, root)
        cells = [gpu, preset, dtype, f"baseline: {r['label']}" if is_base else r["label"], _num(p50, ".2f"),
                 _num(r["frame"]["p99"], ".2f"), _num(r["rtf"], ".3f"), _num(warm, ".1f"), _ttfa_prefill(r, cfg),
                 _mem(r["memory"]), *vs, commit[:7] if commit != "not recorded" else commit,
                 f"[json]({rel}) · [report]({rel.with_suffix('.md')})"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _describe(d) -> tuple[str, str, str, str]:
    """(kind, device, commit, date) of any result JSON, from whichever keys it records them under."""
    if not isinstance(d, dict):
        return "data", "not recorded", "not recorded", "not recorded"
    cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
    env = d.get("environment") if isinstance(d.get("environment"), dict) else cfg.get("environment") or {}
    kind = d.get("kind") or d.get("benchmark") or ("engine manifest" if "engines" in d else "measurement")
    device = env.get("gpu_name") or cfg.get("device") or d.get("device") or "not recorded"
    if isinstance(device, dict):
        device = device.get("name") or "not recorded"
    commit = (env.get("git_commit") or d.get("git_commit") or "")[:7] or "not recorded"
    date = str(d.get("created") or d.get("when") or "")[:10] or "not recorded"
    return str(kind), str(device), commit, date


def files_index(results: Path = RESULTS, root: Path = ROOT) -> str:
    """One row per result JSON under `results`: where it is, what it is, where and from which commit."""
    lines = ["| result | kind | device | commit | date |", "|---|---|---|---|---|"]
    for f in sorted(results.rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except ValueError:
            d = None
        kind, device, commit, date = _describe(d)
        rel = _rel(f, root)
        lines.append(f"| [{rel.relative_to('benchmarks/results') if str(rel).startswith('benchmarks/results') else rel}]"
                     f"({'../' + str(rel)}) | {kind} | {device} | {commit} | {date} |")
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def generated() -> dict[Path, str]:
    """The two files as they should read, generated blocks replaced."""
    readme = _replace(README.read_text(), START, END, current_table())
    results_md = RESULTS_MD.read_text()
    results_md = _replace(results_md, "<!-- results-bench:start -->", "<!-- results-bench:end -->",
                          table(root=ROOT).replace("](benchmarks/", "](../benchmarks/"))
    results_md = _replace(results_md, "<!-- results-files:start -->", "<!-- results-files:end -->", files_index())
    return {README: readme, RESULTS_MD: results_md}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    stale = [p for p, text in generated().items() if p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is stale: run python benchmarks/make_table.py", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for p, text in generated().items():
        p.write_text(text)


if __name__ == "__main__":
    main()
