"""Markdown of a bench report: speed, time to first audio, memory, components, telemetry, targets."""
from __future__ import annotations

from vvtrt.reports.stats import speedup
from vvtrt.reports.render_md import GIB, TELEMETRY_UNITS, fmt, table, _status, _header, _config_block, _images


NOT_MEASURED = "not measured"


def _all_results(report: dict) -> list[tuple[dict, bool]]:
    return [(r, False) for r in report["results"]] + [(b, True) for b in report["baselines"]]


def _gap(r: dict, floor) -> float | None:
    if r.get("floor_gap") is not None:
        return r["floor_gap"]
    if floor and floor.get("floor_ms") and r["frame"].get("p50") is not None:
        return r["frame"]["p50"] / floor["floor_ms"]
    return None


def _nm(x, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    """A figure that may not have been measured (missing in older reports, or null): say so."""
    return NOT_MEASURED if x is None else fmt(x, spec, scale, suffix)


def _ttfa_cells(r: dict, config: dict) -> list[str]:
    """TTFA e2e cold, warm p50 and p99, prefill warm p50 and p99, synthetic warm p50 (ms)."""
    e2e, pre, syn = r.get("ttfa_e2e") or {}, r.get("ttfa_prefill") or {}, r.get("ttfa_synthetic")
    if syn is None and "ttfa_e2e" not in r and r.get("ttfa"):  # an older report: its only TTFA was this
        syn = {"warm": r["ttfa"], "prompt_tokens": config.get("prompt_tokens")}
    syn_p50 = (syn or {}).get("warm", {}).get("p50")
    return [_nm(e2e.get("cold_ms"), ".1f"), _nm(e2e.get("warm", {}).get("p50"), ".1f"),
            _nm(e2e.get("warm", {}).get("p99"), ".1f"), _nm(pre.get("warm", {}).get("p50"), ".1f"),
            _nm(pre.get("warm", {}).get("p99"), ".1f"),
            NOT_MEASURED if syn_p50 is None else f"{syn_p50:.1f} ({syn.get('prompt_tokens') or '?'} tok)"]


def _target_status(t: dict) -> str:
    value, target = t["value"], t["target"]
    if value is None or target is None:
        return _status(t["met"]) if value is not None else "— no value"
    op = t.get("op") or (("<=" if value <= target else ">=") if t["met"] else ("<=" if value > target else ">="))
    diff = abs(value - target)
    rel = f" ({diff / abs(target) * 100:.1f}%)" if target else ""
    word = "margin" if t["met"] else "missed by"
    return f"{'✅ met' if t['met'] else '❌ missed'} ({op} {fmt(target)}; {word} {fmt(diff)} {t['unit']}{rel})"


def _bench_speed(report: dict) -> list[str]:
    results, baselines, floor = report["results"], report["baselines"], report.get("floor")
    out = ["## Backends", "", "Frame = one acoustic latent (3200 samples ≈ 133 ms of 24 kHz audio); speed-up = "
           "baseline frame p50 / this frame p50; RTF = request time / audio time (< 1 is faster than real "
           "time); floor gap = frame p50 / bandwidth floor.", ""]
    headers = (["label", "backend", "precision", "frame p50 (ms)", "p90", "p99", "RTF", "peak alloc (GiB)"]
               + [f"speed-up vs {b['label']}" for b in baselines] + ["floor gap"])
    body = [[r["label"] + (" (baseline)" if is_base else ""), r["backend"], r["precision"], fmt(r["frame"]["p50"], ".2f"),
             fmt(r["frame"]["p90"], ".2f"), fmt(r["frame"]["p99"], ".2f"), fmt(r["rtf"], ".3f"),
             fmt(r["memory"]["peak_allocated_bytes"], ".2f", GIB)]
            + [fmt(speedup(b["frame"]["p50"], r["frame"]["p50"]), ".2f", suffix="×") for b in baselines]
            + [fmt(_gap(r, floor), ".2f", suffix="×")] for r, is_base in _all_results(report)]
    out += [table(headers, body), ""]
    batched = [r for r in results if (r.get("streams") or 1) > 1]
    if batched:
        out += [f"Concurrency: {report['config'].get('batch')} streams batched into each frame step; frame "
                "latency and RTF are per step (every stream advances one frame), throughput counts all streams.",
                "", table(["label", "streams", "throughput (× real time, all streams)", "RTF per stream"],
                          [[r["label"], r["streams"], fmt(r.get("throughput_x_realtime"), ".1f", suffix="×"),
                            fmt(r["rtf"], ".3f")] for r in batched]), ""]
    return out


def _bench_ttfa(report: dict) -> list[str]:
    cfg = report["config"]
    out = ["## Time to first audio", "", "Milliseconds until the first audio chunk is on the host. *End to end*: "
           "script text and voice wavs in (tokenize, read and encode the voices, build the prompt, prefill, first "
           "frame); *cold* is the first request after load (graph capture and compilation included), *warm* the "
           f"{cfg.get('repeats', '?')} after it. *Prefill*: warm, from the prefill of the same prompt (its "
           "embeddings ready) to the first chunk. *Synthetic*: warm prefill-to-first-chunk of a prompt of random "
           "text tokens.", ""]
    body = [[r["label"]] + _ttfa_cells(r, cfg) for r, _ in _all_results(report)]
    out += [table(["label", "end to end, cold", "end to end, warm p50", "p99", "prefill → first chunk, warm p50",
                   "p99", "synthetic prompt, warm p50"], body), ""]
    parts = [[r["label"], _nm((e.get("prompt_build") or {}).get("p50"), ".1f"), len(e["voice_encoder_ms"]),
              _nm(sum(e["voice_encoder_ms"]) / len(e["voice_encoder_ms"]) if e["voice_encoder_ms"] else None, ".1f")]
             for r, _ in _all_results(report) if "voice_encoder_ms" in (e := r.get("ttfa_e2e") or {})]
    if parts:
        out += ["What end to end adds to the prefill figure (warm): building the prompt (tokenize, read and encode "
                "the voices, embed), timed alone; the voice encoder's calls inside the end-to-end requests.", "",
                table(["label", "prompt build p50 (ms)", "voice encoder calls", "voice encoder mean per call (ms)"],
                      parts), ""]
    prompt = cfg.get("prompt")
    if prompt:
        voices = "; ".join(f"{v['file']} {fmt(v['seconds'], '.2f')} s" + (f" (cut from {fmt(v['source_seconds'], '.2f')} "
                           "s to the work dir's limit)" if v.get("trimmed") else "") for v in prompt["voices"])
        out += [f"Script: {prompt['script_source']}, {prompt['turns']} turns, {prompt['prompt_tokens']} prompt tokens "
                f"of which {prompt['voice_tokens']} voice tokens; voices: {voices or 'none'}.", ""]
    else:
        out += [f"_This report predates end-to-end TTFA: its only TTFA is the synthetic prompt's "
                f"({cfg.get('prompt_tokens', '?')} tokens)._", ""]
    return out


def _bench_memory(report: dict) -> list[str]:
    isolated = any("pid" in r for r, _ in _all_results(report))
    out = ["### Memory and setup", "",
           ("Each variant and baseline ran in its own process (pid). *NVML, this process*: NVML's figure for that "
            "pid (its CUDA context included); *NVML, whole device*: the device's used memory while that process "
            "ran, and before it touched CUDA: any other process on the GPU included, and the memory the driver "
            "reserves (NVML's v1 `used` counts it: an idle GPU reads a few hundred MiB)." if isolated else
            "This report predates per-process measurement: every variant ran in one process, so the whole-"
            "device NVML figure covers all of them."),
           "Torch's allocator does not see ONNX Runtime's or TensorRT's memory. The peaks cover the whole process, "
           "its load included; *after load*: from the end of the load on, what the process holds while it serves "
           "(loading a quantized work dir holds the float weights next to the 8-bit ones until its runners are "
           "built).", ""]
    body = []
    for r, _ in _all_results(report):
        m, st = r["memory"], r["setup"]
        body.append([r["label"], r.get("pid", NOT_MEASURED)]
                    + [_nm(m.get(k), ".2f", GIB) for k in ("peak_allocated_bytes", "after_load_peak_allocated_bytes",
                                                           "peak_reserved_bytes", "nvml_process_peak_bytes",
                                                           "nvml_process_after_load_peak_bytes", "nvml_peak_used_bytes",
                                                           "nvml_device_baseline_bytes", "host_peak_rss_bytes")]
                    + [fmt(m["graph_pool_bytes"], ".2f", GIB)]
                    + [fmt(st.get(k), ".1f") for k in ("load_s", "build_s", "capture_s", "cold_request_s")]
                    + [len(r["frame_ms"]), "; ".join(x for x in (r["notes"], m.get("nvml_process_status")) if x)])
    out += [table(["label", "pid", "torch allocator peak (GiB)", "after load", "reserved (GiB)",
                   "NVML, this process (GiB)", "after load", "NVML, whole device (GiB)", "whole device before (GiB)",
                   "host peak RSS (GiB)", "cold-request growth (GiB)", "load (s)", "build (s)", "capture (s)",
                   "cold request (s)", "frames", "notes"], body), ""]
    return out


def _bench_components(report: dict) -> list[str]:
    rows = []
    for r, _ in _all_results(report):
        for name, c in r["components"].items():
            per_frame = None if c["mean_ms"] is None else c["mean_ms"] * c["calls_per_frame"]
            share = (per_frame / r["frame"]["mean"] * 100) if per_frame is not None and r["frame"]["mean"] else None
            rows.append([r["label"], name, fmt(c["calls_per_frame"], "g"), fmt(c["p50_ms"], ".3f"), fmt(c["p90_ms"], ".3f"),
                         fmt(c["p99_ms"], ".3f"), fmt(c["mean_ms"], ".3f"), fmt(per_frame, ".2f"),
                         fmt(share, ".1f", suffix="%")])
    return ["## Components", "", table(["label", "component", "calls/frame", "p50 (ms)", "p90 (ms)", "p99 (ms)",
                                        "mean (ms)", "ms/frame (mean × calls)", "share of frame mean"], rows)
            if rows else "_no per-component timings_", ""]


def _bench_telemetry(report: dict) -> list[str]:
    tel = report.get("telemetry") or {}
    samples = tel.get("samples") or []
    if not samples:
        return ["## GPU telemetry", "", "_no telemetry samples (no GPU / NVML)_", ""]
    span = samples[-1]["t"] - samples[0]["t"]
    body = []
    for key, (label, unit, scale) in TELEMETRY_UNITS.items():
        vals = [s[key] for s in samples if s.get(key) is not None]
        if vals:
            body.append([label, unit, fmt(sum(vals) / len(vals), ".4g", scale), fmt(max(vals), ".4g", scale)])
    return ["## GPU telemetry", "", f"{len(samples)} samples of the whole device every {fmt(tel['interval_s'])} s "
            f"over {span:.1f} s, across every process of the run.", "", table(["series", "unit", "mean", "max"], body), ""]


def _gate_verdict(g) -> str:
    if g is None:
        return "not gated"
    worst = max(((w.get("rel_l2") or 0) / (w.get("tolerance") or 1) for w in g.get("worst") or []), default=None)
    return ("passed" if g.get("passed") else "FAILED") + (f" (worst {worst:.2f}× its bound)" if worst else "")


def _vs(x, base) -> str:
    return "—" if x is None or not base else f"{(x / base - 1) * 100:+.1f} %"


def _bench_quant(report: dict) -> list[str]:
    """The compared work dirs (`vvtrt bench --compare-workdir`) side by side: per variant, speed, TTFA and the
    memory held after load against the unquantized work dir's, then each work dir's quality-gate verdict."""
    rows = report.get("quant") or []
    if not rows:
        return []
    def variant(r):  # the label without its quantization
        return r["label"].removesuffix("-" + r["quant"])

    runs = [r for r in report["results"] if r.get("quant")]
    base = {variant(r): r for r in runs if r["quant"] == "none"}
    body = []
    for r in runs:
        b, m = base.get(variant(r)), r["memory"]
        held, b_held = m.get("nvml_process_after_load_peak_bytes"), (b or {}).get("memory", {}).get(
            "nvml_process_after_load_peak_bytes")
        body.append([r["label"], r["quant"], fmt(r["frame"]["p50"], ".2f"), fmt(r["frame"]["p99"], ".2f"),
                     _vs(r["frame"]["p50"], b and b["frame"]["p50"]),
                     _nm((r.get("ttfa_e2e") or {}).get("warm", {}).get("p50"), ".1f"),
                     _nm(m.get("after_load_peak_allocated_bytes"), ".2f", GIB), _nm(held, ".2f", GIB),
                     _vs(held, b_held)])
    gates = [[r["quant"], r["workdir"], "—" if r["quant"] == "none" else _gate_verdict(r["gate"])] for r in rows]
    return ["## Quantization", "", "The same variants on each work dir, side by side; memory after load (what the "
            "process holds while it serves); *vs none*: against the same variant on the unquantized work dir.", "",
            table(["label", "quant", "frame p50 (ms)", "p99", "p50 vs none", "TTFA e2e warm p50 (ms)",
                   "torch allocator after load (GiB)", "NVML, this process, after load (GiB)", "NVML vs none"], body),
            "", table(["quant", "work dir", "quality gate (vvtrt parity)"], gates), ""]


def render_bench(report: dict, images) -> str:
    results, baselines, floor = report["results"], report["baselines"], report.get("floor")
    out = _header(report, "vvtrt benchmark report")
    best = min((r for r in results if r["frame"]["p50"] is not None), key=lambda r: r["frame"]["p50"], default=None)
    if best is not None:
        ups = [f"{speedup(b['frame']['p50'], best['frame']['p50']):.2f}× vs {b['label']}"
               for b in baselines if speedup(b["frame"]["p50"], best["frame"]["p50"]) is not None]
        out += [f"Fastest: **{best['label']}** at {fmt(best['frame']['p50'], '.2f')} ms/frame p50, "
                f"RTF {fmt(best['rtf'], '.3f')}" + (f" — {', '.join(ups)}." if ups else "."), ""]
    out += _bench_speed(report) + _bench_ttfa(report) + _bench_quant(report)
    if report.get("failed"):
        out += ["### Failed variants", ""] + [f"- **{f['label']}**: {f['error']}" for f in report["failed"]] + [""]
    out += _bench_memory(report) + _bench_components(report)
    if floor:
        out += ["## Bandwidth floor", "", f"{fmt(floor['weight_bytes_per_frame'], '.3f', GIB)} GiB of weights read per "
                f"frame at {fmt(floor['bandwidth_gbps'], '.0f')} GB/s → floor {fmt(floor['floor_ms'], '.2f')} "
                "ms/frame.", ""]
    if report.get("targets"):
        out += ["## Targets", "", table(["target", "value", "unit", "status"],
                                        [[t["name"], fmt(t["value"], ".4g"), t["unit"], _target_status(t)]
                                         for t in report["targets"]]), ""]
    out += _bench_telemetry(report) + _images(images) + _config_block(report)
    return "\n".join(out)
