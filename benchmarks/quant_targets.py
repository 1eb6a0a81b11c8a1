"""The quantization targets of one model, met or missed, from one run's result files:

    python benchmarks/quant_targets.py RESULTS_DIR --tag 1.5b [--model 1.5b] [--out RESULTS_DIR/quant_targets_1.5b]

reads what the quantization stages of `benchmarks/device/gpu_all.sh` wrote into RESULTS_DIR:
`bench_<tag>_quant_*/*.json` (`vvtrt bench --compare-workdir`: the work dirs side by side),
`parity_<tag>_<mode>_torch_<device>.json` (`vvtrt parity --backend torch` on each work dir, `none` included: its
teacher-forced SNR is the bf16 reference), `quant_gate_<tag>_<mode>.json` and `quant_weights_<tag>.json`
(`quant_weights.py`), and writes OUT.json and OUT.md: one row per target and mode, with its value, its bound,
met / missed, and the file it came from. A target whose input is missing is "not measured", never met.

The targets (bench, not tests): frame p50 of the compiled torch loop, NVML memory of the process after load
against the unquantized work dir's, the weights the loop holds, the quality gate, and the teacher-forced
end-to-end SNR within 3 dB of bf16's on the same parity grid (the latents' SNR: the teacher-forced audio is
decoded from the reference latents, so its SNR cannot see the quantized GEMMs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# model -> (metric, mode) -> (op, bound, unit); the quality rows (gate, SNR) apply to every quantized mode
TARGETS = {
    "1.5b": {("frame_p50_ms", "fp8"): ("<=", 4.0, "ms"), ("nvml_after_load_vs_none", "fp8"): ("<=", 0.70, "×")},
    "7b": {("frame_p50_ms", "fp8"): ("<=", 9.0, "ms"), ("weights_gb", "fp8"): ("<=", 11.0, "GB")},
}
SNR_MARGIN_DB = 3.0


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def bench_rows(results: Path, tag: str) -> tuple[dict, str | None, dict]:
    """Per mode, the compiled loop's result (the uncompiled one where no compiled one ran) of the comparison,
    the file, and the environment the bench recorded (its GPU and commit)."""
    for backend in ("torch-compile", "torch"):
        for path in sorted(results.glob(f"bench_{tag}_quant_{backend}/*.json")):
            rep = _load(path)
            if rep and rep.get("kind") == "bench" and rep.get("quant"):
                rows = {r["quant"]: r for r in rep["results"] if r.get("quant") and r["backend"] == backend}
                if rows:
                    return rows, str(path.relative_to(results)), rep["config"].get("environment") or {}
    return {}, None, {}


def teacher_forced_snr(parity: dict | None) -> dict:
    """name -> latent SNR (dB) of the gated bf16 teacher-forced end-to-end rows of a parity report: the sampler's own
    latents against the reference's. (Their audio SNR is the decoder's alone: a teacher-forced run decodes the
    reference latents, so quantizing the LLM and the diffusion head cannot change it.)"""
    return {e["name"]: e["latent_snr_db"] for e in (parity or {}).get("e2e", [])
            if "teacher-forced" in e["name"] and e["precision"] == "bf16" and e.get("gated")
            and e.get("latent_snr_db") is not None}


def _row(name, mode, value, op, bound, unit, source, note=""):
    met = None if value is None or bound is None else (value <= bound if op == "<=" else value >= bound)
    return {"name": name, "mode": mode, "value": value, "op": op, "target": bound, "unit": unit, "met": met,
            "source": source, "note": note}


def quality_rows(results: Path, tag: str, mode: str, device: str) -> list[dict]:
    gate_file = f"quant_gate_{tag}_{mode}.json"
    gate = _load(results / gate_file)
    rows = [_row("quality gate passed", mode, None if gate is None else float(bool(gate.get("passed"))), ">=", 1.0,
                 "", gate_file if gate else None, "" if gate else "no gate recorded")]
    q_file, n_file = f"parity_{tag}_{mode}_torch_{device}.json", f"parity_{tag}_none_torch_{device}.json"
    quant, none = teacher_forced_snr(_load(results / q_file)), teacher_forced_snr(_load(results / n_file))
    for name in sorted(set(quant) | set(none)) or ["teacher-forced"]:
        q, n = quant.get(name), none.get(name)
        rows.append(_row(f"{name} latent SNR (dB)", mode, q, ">=", None if n is None else n - SNR_MARGIN_DB, "dB",
                         f"{q_file}, {n_file}", f"bf16 {n:.2f} dB" if n is not None else "no bf16 reference"))
    return rows


def speed_memory_rows(bench: dict, src: str | None, results: Path, tag: str, model: str) -> list[dict]:
    weights = {r["mode"]: r for r in (_load(results / f"quant_weights_{tag}.json") or {}).get("rows", [])}
    none_nvml = (bench.get("none") or {}).get("memory", {}).get("nvml_process_after_load_peak_bytes")
    rows = []
    modes = set(bench) | set(weights) | {m for _, m in TARGETS.get(model, {})}
    for mode in sorted(modes, key=lambda m: (m != "none", m)):  # none first: the others are compared with it
        r = bench.get(mode) or {}
        nvml = r.get("memory", {}).get("nvml_process_after_load_peak_bytes")
        held = (weights.get(mode) or {}).get("bytes")
        values = {"frame_p50_ms": ((r.get("frame") or {}).get("p50"), "ms"),
                  "nvml_after_load_vs_none": (nvml / none_nvml if nvml and none_nvml else None, "×"),
                  "weights_gb": (None if held is None else held / 1e9, "GB")}  # GB = 1e9 bytes, as the target
        for metric, (value, unit) in values.items():
            op, bound, _ = TARGETS.get(model, {}).get((metric, mode), ("<=", None, unit))
            source = f"quant_weights_{tag}.json" if metric == "weights_gb" else src
            rows.append(_row(metric, mode, value, op, bound, unit, source))
    return rows


def _status(r: dict) -> str:
    if r["target"] is None:
        return "no target (informational)" if r["value"] is not None else "not measured"
    word = "not measured" if r["met"] is None else ("✅ met" if r["met"] else "❌ missed")
    return f"{word} ({r['op']} {r['target']:.4g} {r['unit']})"


def markdown(rep: dict) -> str:
    from vvtrt.reports.render_md import table

    env = rep["bench_environment"]
    body = [[r["name"], r["mode"], "not measured" if r["value"] is None else f"{r['value']:.4g} {r['unit']}",
             _status(r), r["source"] or "—", r["note"]] for r in rep["rows"]]
    return "\n".join([f"# Quantization targets — {rep['model']} ({rep['tag']})", "",
                      f"The bench ran on {env.get('gpu_name') or 'no GPU'} at commit "
                      f"`{env.get('git_commit') or 'not recorded'}` (results in `{rep['results']}`).", "",
                      table(["target", "mode", "value", "status", "source", "note"], body)]) + "\n"


def main(argv=None) -> int:
    from vvtrt.reports.environment import collect_environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--tag", required=True)
    p.add_argument("--model", help="the preset whose targets apply (default: the tag)")
    p.add_argument("--device", default="cuda", help="the device in the parity files' names")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    model, out = args.model or args.tag, args.out or args.results / f"quant_targets_{args.tag}"
    modes = sorted({m for m in ("int8", "fp8") if (args.results / f"quant_gate_{args.tag}_{m}.json").is_file()}
                   | {m for _, m in TARGETS.get(model, {})})
    bench, src, bench_env = bench_rows(args.results, args.tag)
    rows = speed_memory_rows(bench, src, args.results, args.tag, model)
    for mode in modes:
        rows += quality_rows(args.results, args.tag, mode, args.device)
    rep = {"kind": "quant-targets", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "model": model, "tag": args.tag, "results": str(args.results), "bench_environment": bench_env,
           "environment": collect_environment(), "rows": rows}
    Path(f"{out}.json").write_text(json.dumps(rep, indent=1), encoding="utf-8")
    Path(f"{out}.md").write_text(markdown(rep), encoding="utf-8")
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
