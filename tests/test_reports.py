"""Report layer: schema validation, JSON round trip, Markdown and PNG rendering, telemetry, environment."""
from __future__ import annotations

import copy
import json
import sys
import threading
import types

import numpy as np
import pytest

from vvtrt.errors import InputError
from vvtrt.reports import (TelemetrySampler, collect_environment, load_report, new_report, percentiles,
                           render_markdown, render_report, summary, validate, write_report)
from vvtrt.reports.environment import ENV_KEYS
from vvtrt.reports.plots import plot_telemetry
from vvtrt.reports.schema import parity_counts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPONENTS = {"lm_decode": 2.0, "diffusion_sampler": 1.0, "acoustic_decoder_step": 1.0,
              "semantic_encoder_step": 1.0, "connectors": 1.0}
STATEFUL = ("acoustic_decoder_step", "semantic_encoder_step")


def _config(**extra):
    return {"preset": "vibevoice-1.5b", "dtypes": ["bf16", "fp16"], "steps": 10, "cfg_scale": 1.3,
            "backends": ["tensorrt", "onnxruntime-cuda"],
            "environment": {"python": "3.11.7", "gpu_name": "NVIDIA H100 80GB HBM3", "git_commit": "abc123"}, **extra}


def _result(rng, label, backend, precision, scale, components=True, frames=64):
    comps = {}
    if components:
        for i, (name, calls) in enumerate(COMPONENTS.items()):
            lat = rng.gamma(8.0, scale * (i + 1) / 8.0, 200)
            s = summary(lat)
            comps[name] = {"calls_per_frame": calls, "p50_ms": s["p50"], "p90_ms": s["p90"], "p99_ms": s["p99"],
                           "mean_ms": s["mean"]}
    base = sum(c["mean_ms"] * c["calls_per_frame"] for c in comps.values()) if comps else 60.0 * scale
    frame_ms = (base * 1.05 + rng.exponential(0.05 * base, frames)).tolist()
    ttfa = (3 * base + rng.exponential(0.1 * base, 8)).tolist()
    gpu = backend != "pytorch-cpu"
    return {"backend": backend, "precision": precision, "label": label, "components": comps,
            "frame_ms": frame_ms, "frame": summary(frame_ms), "rtf": float(np.median(frame_ms)) / 133.33,
            "ttfa_ms": ttfa, "ttfa": percentiles(ttfa),
            "memory": {"peak_allocated_bytes": 7.2e9 if gpu else None, "peak_reserved_bytes": 8.0e9 if gpu else None,
                       "nvml_peak_used_bytes": 9.1e9 if gpu else None, "graph_pool_bytes": 2.5e8 if gpu else None},
            "setup": {"load_s": 4.2, "build_s": 310.0 if backend == "tensorrt" else None, "capture_s": 1.5},
            "floor_gap": None, "notes": f"{label} notes"}


@pytest.fixture()
def bench_report():
    rng = np.random.default_rng(0)
    results = [_result(rng, "trt-bf16-graphs", "tensorrt", "bf16", 1.0),
               _result(rng, "ort-cuda-fp16", "onnxruntime-cuda", "fp16", 2.5)]
    baselines = [_result(rng, "pytorch-eager", "pytorch", "bf16", 9.0),
                 _result(rng, "transformers-generate", "transformers", "bf16", 12.0, components=False)]
    samples = [{"t": 0.05 * i, "gpu_util": float(min(100, 40 + i)), "mem_used_bytes": 6e9 + 1e7 * i,
                "temp_c": 45 + i * 0.1, "sm_clock_mhz": 1980.0, "power_w": 250 + 2.0 * (i % 30)} for i in range(200)]
    floor = {"weight_bytes_per_frame": 3.4e10, "bandwidth_gbps": 3350.0, "floor_ms": 10.1}
    results[0]["floor_gap"] = results[0]["frame"]["p50"] / floor["floor_ms"]
    targets = [{"name": "frame p50 (trt)", "target": 20.0, "value": results[0]["frame"]["p50"], "unit": "ms",
                "met": results[0]["frame"]["p50"] <= 20.0, "op": "<="},
               {"name": "speed-up vs pytorch-eager", "target": 20.0, "value": 8.7, "unit": "x", "met": False}]
    return new_report("bench", _config(), results=results, baselines=baselines,
                      telemetry={"interval_s": 0.05, "samples": samples}, floor=floor, targets=targets)


@pytest.fixture()
def parity_report():
    rng = np.random.default_rng(1)
    rows, streaming, e2e = [], [], []
    tol = {"bf16": 2e-2, "fp16": 5e-3}
    for comp in COMPONENTS:
        for prec in ("bf16", "fp16"):
            for backend, method in (("onnxruntime", "onnxruntime-cpu"), ("tensorrt", "tensorrt-fp32-io")):
                for batch in (1, 4):
                    err = float(tol[prec] * rng.uniform(0.01, 0.8))
                    rows.append({"component": comp, "precision": prec, "backend": backend, "method": method,
                                 "dims": {"batch": batch, "seq": 1}, "output": "out", "max_abs": err * 3,
                                 "max_rel": err * 10, "rel_l2": err, "cosine": 1 - err**2 / 2,
                                 "tolerance": tol[prec], "passed": True})
    rows[-1].update(rel_l2=0.09, passed=False)  # one failure
    rows[0].update(rel_l2=0.0, max_rel=None)  # exact match, non-finite max_rel
    for k, comp in enumerate(STATEFUL):
        for frame in range(20):
            err = 1e-3 * (1 + 0.05 * frame) * (1 + 3 * k) * rng.uniform(0.8, 1.2)
            streaming.append({"component": comp, "precision": "bf16", "backend": "tensorrt", "frame": frame,
                              "output": "audio" if "decoder" in comp else "feature", "rel_l2": err,
                              "max_abs": err * 4, "passed": err < 8e-3})
    for k, (name, backend) in enumerate((("short-1spk", "tensorrt"), ("long-2spk", "onnxruntime"))):
        frames = [{"frame": i, "latent_rel_l2": 1e-3 * ((1.02 + 0.03 * k)**i), "latent_max_abs": 2e-3 * (1.02**i),
                   **({"reference_sensitivity": 1e-4 * 1.03**i} if k else {})} for i in range(40)]
        e2e.append({"name": name, "backend": backend, "precision": "bf16", "frames": frames, "snr_db": 31.5,
                    "passed": True, "notes": "greedy, seed 0"})
    e2e.append(_scripted_row())
    failures = [f"{rows[-1]['component']} {rows[-1]['precision']} {rows[-1]['backend']}: rel_l2 0.09 > 0.005"]
    report = new_report("parity", _config(), rows=rows, streaming=streaming, e2e=e2e, passed=False, failures=failures)
    return {**report, "counts": parity_counts(report)}


def _scripted_row():
    """A decision-script row: 3 diffusion steps, speech_end, speech_start, 2 diffusion steps, eos."""
    script = ["speech_diffusion"] * 3 + ["speech_end", "speech_start"] + ["speech_diffusion"] * 2 + ["eos"]
    steps = [i for i, t in enumerate(script) if t == "speech_diffusion"]
    frames = [{"frame": f, "step": s, "latent_rel_l2": 1e-7 * (f + 1), "latent_max_abs": 1e-7,
               "audio_rel_l2": 1e-6, "audio_snr_db": 120.0 - f} for f, s in enumerate(steps)]
    return {"name": "scripted-free-running-fp32", "backend": "onnxruntime", "precision": "fp32", "frames": frames,
            "snr_db": 118.0, "worst_chunk_snr_db": 116.0, "passed": True, "gated": True,
            "script": {"decisions": script, "ours": script, "reference": script, "stop_reason": "eos",
                       "reference_stop_reason": "eos", "matched": True}, "notes": "scripted"}


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, path


def test_stats():
    p = percentiles([1, 2, 3, 4, 5, None, float("nan")])
    assert p == {"p50": 3.0, "p90": pytest.approx(4.6), "p99": pytest.approx(4.96)}
    s = summary([])
    assert s["p50"] is None and s["mean"] is None and s["n"] == 0
    assert summary(np.arange(10.0))["mean"] == 4.5


def test_bench_roundtrip_markdown_plots(tmp_path, bench_report):
    paths = write_report(bench_report, tmp_path, "bench")
    assert paths["json"] == tmp_path / "bench.json" and paths["md"] == tmp_path / "bench.md"
    loaded = load_report(paths["json"])
    assert loaded == json.loads(json.dumps(bench_report))
    md = paths["md"].read_text()
    for r in bench_report["results"] + bench_report["baselines"]:
        assert r["label"] in md and r["backend"] in md
        for comp in r["components"]:
            assert comp in md
    for r in bench_report["results"]:
        for b in bench_report["baselines"]:
            assert f"{b['frame']['p50'] / r['frame']['p50']:.2f}×" in md
    assert "missed by" in md and "speed-up vs pytorch-eager" in md
    names = {p.name for p in paths["plots"]}
    assert names == {"bench_latency_breakdown.png", "bench_frame_latency.png", "bench_telemetry.png"}
    for p in paths["plots"]:
        _check_png(p)
        assert f"]({p.name})" in md
    again = render_report(paths["json"], tmp_path / "re")
    assert again["md"].read_text() == md
    assert sorted(p.name for p in again["plots"]) == sorted(names)


def test_parity_roundtrip_markdown_plots(tmp_path, parity_report):
    paths = write_report(parity_report, tmp_path, "parity")
    assert load_report(paths["json"]) == json.loads(json.dumps(parity_report))
    md = paths["md"].read_text()
    assert "FAILED" in md and parity_report["failures"][0] in md
    for comp in COMPONENTS:
        assert comp in md
    for name in ("onnxruntime-cpu", "tensorrt-fp32-io", "short-1spk", "long-2spk", "31.5"):
        assert name in md
    assert {p.name for p in paths["plots"]} == {"parity_parity_errors.png", "parity_parity_frames.png",
                                                 "parity_parity_scripted.png"}
    for p in paths["plots"]:
        _check_png(p)
    total = parity_report["counts"]["total"]
    assert f"| total | {total['run']} | {total['passed']} | {total['failed']} | 0 | 0 |" in md
    assert "### Scripted decisions" in md and "| 3 | speech_end | speech_end | speech_end |  |  |  |" in md
    assert "| 5 | speech_diffusion | speech_diffusion | speech_diffusion | 3 | 4.00e-07 | 117.0 |" in md


def test_skipped_parity_checks_render(tmp_path, parity_report):
    """passed=None marks a check that could not run (e.g. backend unavailable): it is counted as not run and
    fails the report; an ungated row is informational (neither pass nor fail)."""
    parity_report["rows"].append({"component": "token_embed", "precision": "bf16", "backend": "tensorrt",
                                  "method": "tensorrt", "dims": {}, "output": "*", "max_abs": None, "max_rel": None,
                                  "rel_l2": None, "cosine": None, "tolerance": None, "passed": None,
                                  "skipped": "no GPU"})
    parity_report["e2e"].append({"name": "generate-bf16", "backend": "tensorrt", "precision": "bf16", "frames": [],
                                 "snr_db": None, "passed": None, "gated": True, "skipped": "no GPU",
                                 "notes": "not run: no GPU"})
    parity_report["e2e"].append({"name": "free-running-bf16", "backend": "tensorrt", "precision": "bf16",
                                 "frames": [], "snr_db": 20.0, "passed": None, "gated": False, "notes": "info"})
    with pytest.raises(InputError, match="counts.components"):  # the recorded counts no longer match the rows
        validate(parity_report)
    parity_report["counts"] = parity_counts(parity_report)
    assert parity_report["counts"]["total"]["skipped"] == 2 and parity_report["counts"]["e2e"]["informational"] == 1
    paths = write_report(parity_report, tmp_path, "skip")
    md = paths["md"].read_text()
    assert "token_embed" in md and "⛔ not run" in md and "not run: no GPU" in md and "ℹ info" in md
    assert "2 not run, 1 informational" in md
    for p in paths["plots"]:
        _check_png(p)


def test_committed_parity_reports_still_render():
    """Every committed parity report (benchmarks/results) loads and renders. Those written before counts
    existed get their counts computed from their rows, and say so; newer ones show the recorded counts."""
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "benchmarks" / "results").glob("**/parity*.json"))
    old = [f for f in files if "counts" not in load_report(f)]
    assert old and len(old) < len(files)  # both kinds are committed
    for f in files:
        report = load_report(f)
        md = render_markdown(report)
        assert f"**{'PASSED' if report['passed'] else 'FAILED'}**" in md
        assert ("Counts not recorded" in md) == ("counts" not in report)


def test_numpy_and_nonfinite_values_are_normalised(tmp_path, bench_report):
    bench_report["results"][0]["rtf"] = np.float32(0.12)
    bench_report["results"][0]["frame_ms"] = np.asarray(bench_report["results"][0]["frame_ms"])
    bench_report["results"][1]["floor_gap"] = float("inf")
    paths = write_report(bench_report, tmp_path, "np")
    loaded = load_report(paths["json"])  # strict JSON: no NaN/Infinity tokens
    assert "Infinity" not in paths["json"].read_text()
    assert loaded["results"][1]["floor_gap"] is None
    assert loaded["results"][0]["rtf"] == pytest.approx(0.12)


def test_sparse_bench_report_renders(tmp_path, bench_report):
    """CPU-only run: no telemetry samples, no floor, no baselines, no targets."""
    bench_report.update(baselines=[], telemetry={"interval_s": 0.05, "samples": []}, floor=None)
    bench_report.pop("targets")
    paths = write_report(bench_report, tmp_path, "cpu")
    assert {p.name for p in paths["plots"]} == {"cpu_latency_breakdown.png", "cpu_frame_latency.png"}
    assert "no telemetry samples" in paths["md"].read_text()
    assert plot_telemetry(bench_report, tmp_path / "x.png") is None


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["results"][1].pop("frame"), "results[1].frame"),
    (lambda r: r["results"][0]["components"]["lm_decode"].pop("p90_ms"), "results[0].components.lm_decode.p90_ms"),
    (lambda r: r.pop("baselines"), "baselines"),
    (lambda r: r["config"].pop("cfg_scale"), "config.cfg_scale"),
    (lambda r: r.update(kind="speed"), "kind"),
    (lambda r: r["results"][0].update(rtf="fast"), "results[0].rtf"),
    (lambda r: r.update(created="yesterday"), "created"),
])
def test_validate_rejects(bench_report, mutate, key):
    validate(bench_report)
    bad = copy.deepcopy(bench_report)
    mutate(bad)
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate(bad)


def test_validate_rejects_parity(parity_report):
    validate(parity_report)
    parity_report["streaming"][3].pop("passed")
    with pytest.raises(InputError, match=r"streaming\[3\]\.passed"):
        validate(parity_report)


def test_load_report_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_report(bad)
    bad.write_text(json.dumps({"kind": "bench", "version": 1}))
    with pytest.raises(InputError, match="created"):
        load_report(bad)


def test_markdown_without_images(parity_report):
    md = render_markdown(parity_report)
    assert "## Plots" not in md and "## Streaming" in md


def test_telemetry_without_gpu_is_silent():
    before = threading.active_count()
    with TelemetrySampler(interval_s=0.01) as tel:
        pass
    assert tel.samples == [] and tel.peak_mem_used() is None
    assert tel.to_dict() == {"interval_s": 0.01, "samples": []}
    assert threading.active_count() == before


def test_telemetry_with_fake_nvml(monkeypatch):
    """The sampling thread collects samples while the context is open and stops when it exits."""
    used = iter(range(10**9, 10**12, 10**6))
    fake = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: "h", nvmlDeviceGetHandleByUUID=lambda u: "h",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=next(used)),
        nvmlDeviceGetTemperature=lambda h, s: 55, nvmlDeviceGetClockInfo=lambda h, c: 1980,
        nvmlDeviceGetPowerUsage=lambda h: (_ for _ in ()).throw(RuntimeError("not supported")))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    import time

    with TelemetrySampler(interval_s=0.005) as tel:
        time.sleep(0.1)
    n = len(tel.samples)
    assert n >= 3 and not any(t.name == "vvtrt-telemetry" for t in threading.enumerate())
    time.sleep(0.03)
    assert len(tel.samples) == n
    s = tel.samples[-1]
    assert s["gpu_util"] == 87 and s["temp_c"] == 55 and s["sm_clock_mhz"] == 1980 and s["power_w"] is None
    assert tel.peak_mem_used() == s["mem_used_bytes"]
    assert [x["t"] for x in tel.samples] == sorted(x["t"] for x in tel.samples)


def test_collect_environment():
    env = collect_environment()
    assert set(ENV_KEYS) <= set(env)
    for key in ("python", "torch", "onnx", "onnxruntime", "hostname"):
        assert env[key], key
    json.dumps(env)  # JSON-serialisable


def test_readme_performance_table_matches_the_committed_results():
    """The README's performance table is generated from benchmarks/results/*/bench_*/*.json."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "benchmarks/make_table.py", "--check"], cwd=root, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ab_summary_lists_each_tree_over_its_repeats(tmp_path):
    """benchmarks/ab_summary.py reads the `ab` stage's directories and gives each tree's median and range."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def level(n, ttfa, gap):
        return {"level": n, "ttfa_ms": {"p99": ttfa}, "gap_ms": {"p99": gap}}
    for tree, i, ttfa in (("new", 1, 600.0), ("new", 2, 700.0), ("new", 3, 650.0), ("base", 1, 640.0)):
        d = tmp_path / f"serving_ab_{tree}_{i}"
        d.mkdir()
        doc = {"levels": [level(1.0, 20.0, 13.0), level(128.0, ttfa, 70.0 + i)]}
        (d / "serving_1.5b_bf16_concurrency.json").write_text(json.dumps(doc))
    d = tmp_path / "realtime_ab_new_1"
    d.mkdir()
    (d / "realtime_bench.json").write_text(json.dumps({"engine": {"passes": [
        {"streams": 256, "ttfa_ms": {"p99": 80.0}, "gap_ms": {"p99": 60.0}}]}}))
    res = subprocess.run([sys.executable, "benchmarks/ab_summary.py", str(tmp_path)], cwd=root,
                         capture_output=True, text=True, check=True)
    assert "| 128 | 3 / 1 | 650.0 (600.0–700.0) | 640.0 (640.0–640.0) | 72.0 (71.0–73.0) | 71.0 (71.0–71.0) |" \
        in res.stdout, res.stdout
    assert "| 256 | 1 / 0 | 80.0 (80.0–80.0) | — | 60.0 (60.0–60.0) | — |" in res.stdout, res.stdout
    bad = subprocess.run([sys.executable, "benchmarks/ab_summary.py", str(tmp_path / "missing")], cwd=root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")
