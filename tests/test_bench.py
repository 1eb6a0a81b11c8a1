"""`vvtrt bench` and `vvtrt report` on the tiny model, CPU (numbers are not targets here: the test checks
the report's structure, that every component appears, and that the plots exist)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vvtrt.cli import cli

PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_report_structure(tiny_workdir, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--backend", "torch,onnxruntime",
                                   "--device", "cpu", "--dtype", "fp32", "--frames", "4", "--prompt-tokens", "40",
                                   "--repeats", "1", "--baseline", "pytorch-eager", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["kind"] == "bench" and report["config"]["steps"] == 10
    for key in ("preset", "dtype", "cfg_scale", "frames", "prompt_tokens", "environment"):
        assert key in report["config"]
    labels = [r["label"] for r in report["results"]]
    assert labels == ["vvtrt-torch", "vvtrt-onnxruntime"]
    assert [b["label"] for b in report["baselines"]] == ["pytorch-eager"]
    for r in report["results"]:
        assert set(r["components"]) == {"lm_decode", "token_embed", "diffusion_sampler", "acoustic_decoder_step",
                                        "semantic_encoder_step", "connectors"}
        assert len(r["frame_ms"]) == 4 and r["frame"]["p50"] > 0 and r["rtf"] > 0 and r["ttfa"]["p50"] > 0
    for b in report["baselines"]:
        assert len(b["frame_ms"]) >= 3 and b["frame"]["p50"] > 0
    md = next(out.glob("*.md")).read_text()
    assert "vvtrt-torch" in md and "pytorch-eager" in md and "lm_decode" in md
    pngs = list(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"bench_tiny_fp32_k10_latency_breakdown.png", "bench_tiny_fp32_k10_frame_latency.png"}
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 1000 for p in pngs)
    # `vvtrt report` re-renders the same report elsewhere
    res = CliRunner().invoke(cli, ["report", str(next(out.glob("*.json"))), "--out", str(tmp_path / "again")])
    assert res.exit_code == 0 and list((tmp_path / "again").glob("*.md"))


def test_bench_rejects_unknown_backend(tiny_workdir):
    res = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--backend", "tpu", "--device", "cpu"])
    assert res.exit_code == 2 and "unknown backend" in res.output


def test_a_failing_variant_does_not_lose_the_others(tiny_workdir, tmp_path):
    """TensorRT cannot run on the CPU: its row is listed as failed, the torch row is still measured."""
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--backend", "tensorrt,torch",
                                   "--device", "cpu", "--dtype", "fp32", "--frames", "2", "--prompt-tokens", "20",
                                   "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(next(out.glob("*.json")).read_text())
    assert [r["label"] for r in report["results"]] == ["vvtrt-torch"]
    assert [f["label"] for f in report["failed"]] == ["vvtrt-tensorrt"] and report["failed"][0]["error"]
    assert "Failed variants" in next(out.glob("*.md")).read_text()
    # alone, the same failure is the command's error: exit 2 with one line
    res = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--backend", "tensorrt", "--device", "cpu",
                                   "--dtype", "fp32", "--frames", "2", "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_concurrent_streams_bench(tiny_workdir, tmp_path):
    """`--streams 2`: both streams advance per frame step; the report says so and counts their throughput."""
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--backend", "torch", "--device", "cpu",
                                   "--dtype", "fp32", "--frames", "3", "--prompt-tokens", "20", "--repeats", "1",
                                   "--streams", "2", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    path = next(out.glob("*_x2.json"))
    report = json.loads(path.read_text())
    r = report["results"][0]
    assert report["config"]["batch"] == 2 and r["streams"] == 2 and len(r["frame_ms"]) == 3
    assert r["throughput_x_realtime"] == pytest.approx(2 / r["rtf"])
    assert "Concurrency: 2 streams" in path.with_suffix(".md").read_text()
    bad = CliRunner().invoke(cli, ["bench", "-w", str(tiny_workdir.root), "--device", "cpu", "--streams", "2",
                                   "--baseline", "pytorch-eager"])
    assert bad.exit_code == 2 and "--streams 1" in bad.output
