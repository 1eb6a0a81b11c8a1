"""A parity check that did not run is a failure: TensorRT engines on a machine that cannot execute them,
a backend that cannot load a graph, a precision that was asked for and not exported -- each is a listed
failure, the counts say how many checks ran, and `vvtrt parity` exits non-zero."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vvtrt.parity.harness import ParityOptions, run_parity
from vvtrt.precision import Precision
from vvtrt.reports import render_markdown, validate, write_report
from workdir_copy import copy_workdir

ITEMS = ("connectors.fp32", "token_embed.fp32")



def _report(body: dict) -> dict:
    return {"kind": "parity", "version": 1, "created": "2026-01-01T00:00:00+00:00",
            "config": {"preset": "tiny", "dtypes": ["fp32"], "steps": 10, "cfg_scale": 1.3, "backends": ["x"],
                       "environment": {}}, **body}


@pytest.fixture(scope="module")
def built_copy(tiny_workdir, tmp_path_factory):
    """Two tiny components exported and built with the CPU-only TensorRT-RTX builder (engines this
    machine, without a GPU, cannot execute)."""
    from vvtrt.engines.trt_api import available_flavors

    if "tensorrt-rtx" not in available_flavors():
        pytest.skip("TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")
    from vvtrt.engines import build_engines

    wd = copy_workdir(tiny_workdir, tmp_path_factory.mktemp("wd_trt_cpu"), ITEMS)
    assert {r["status"] for r in build_engines(wd, "tensorrt-rtx")} == {"built"}
    return wd


def test_tensorrt_on_the_cpu_fails_every_check_and_says_why(built_copy, tmp_path):
    body = run_parity(built_copy, ParityOptions(backend="tensorrt", device="cpu"))
    assert body["passed"] is False
    total = body["counts"]["total"]
    assert total["run"] == total["passed"] == 0 and total["skipped"] == len(body["rows"]) + len(body["e2e"]) > 0
    assert {(r["component"], r["passed"]) for r in body["rows"]} == {("connectors", None), ("token_embed", None)}
    assert all("CUDA" in r["skipped"] for r in body["rows"])
    assert {r["name"] for r in body["e2e"]} >= {"free-running-fp32", "scripted-free-running-fp32"}
    assert all(r["passed"] is None and r["skipped"] for r in body["e2e"])
    assert body["failures"][-1] == "no check ran" and len(body["failures"]) == total["skipped"] + 1
    assert all("not run" in f for f in body["failures"][:-1])
    paths = write_report(_report(body), tmp_path, "p")
    md = paths["md"].read_text()
    assert "**FAILED**" in md and "⛔ not run" in md and "0 passed" in md


def test_cli_exits_non_zero_when_nothing_could_run(built_copy):
    proc = subprocess.run([sys.executable, "-m", "vvtrt", "parity", "-w", str(built_copy.root), "--backend",
                           "tensorrt", "--device", "cpu", "--no-e2e"], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "PASSED" not in proc.stdout and "Traceback" not in proc.stderr
    if proc.returncode == 1:  # ran, and every check is listed as not run, with why
        assert "connectors.fp32" in proc.stderr and "not run" in proc.stderr


def test_a_broken_graph_is_a_failure_never_a_pass(tiny_workdir, tmp_path):
    """A graph file that no longer loads: refused up front (naming it), or its check fails while the
    others still run and pass -- never a passed report."""
    from vvtrt.errors import VvtrtError

    wd = copy_workdir(tiny_workdir, tmp_path, ITEMS)
    wd.onnx_path("connectors", Precision.FP32).write_bytes(b"\x08\x07not an onnx graph")
    try:
        body = run_parity(wd, ParityOptions(backend="onnxruntime", device="cpu", e2e=False))
    except VvtrtError as exc:
        assert "connectors" in str(exc)
        return
    assert body["passed"] is False
    assert [r["component"] for r in body["rows"] if r["passed"] is None] == ["connectors"]
    assert any(f.startswith("connectors.fp32") and "not run" in f for f in body["failures"])
    assert {r["passed"] for r in body["rows"] if r["component"] == "token_embed"} == {True}


def test_a_requested_precision_with_nothing_exported_fails(tiny_workdir, tmp_path):
    wd = copy_workdir(tiny_workdir, tmp_path, ITEMS)
    body = run_parity(wd, ParityOptions(backend="onnxruntime", device="cpu", e2e=False,
                                        precisions=(Precision.FP32, Precision.BF16)))
    assert body["passed"] is False and all(r["passed"] for r in body["rows"])
    assert body["failures"] == ["precision bf16 was requested but has no exported graph: nothing of it was checked"]
    assert body["counts"]["total"]["run"] == body["counts"]["total"]["passed"] > 0


def test_forged_or_inconsistent_counts_are_refused():
    from vvtrt.errors import InputError

    skipped = {"component": "c", "precision": "fp32", "backend": "b", "method": "m", "dims": {}, "output": "*",
               "max_abs": None, "max_rel": None, "rel_l2": None, "cosine": None, "tolerance": None, "passed": None,
               "skipped": "no GPU"}
    counts = {s: {"run": 0, "passed": 0, "failed": 0, "skipped": 0, "informational": 0}
              for s in ("components", "streaming", "e2e", "total")}
    for s in ("components", "total"):
        counts[s]["skipped"] = 1
    report = _report({"rows": [skipped], "streaming": [], "e2e": [], "failures": ["c: not run"], "passed": False,
                      "counts": counts})
    validate(report)
    with pytest.raises(InputError, match="says passed but 0 check"):
        validate({**report, "passed": True, "failures": []})
    with pytest.raises(InputError, match="counts.components"):
        validate({**report, "counts": {**counts, "components": {**counts["components"], "skipped": 0}}})
    legacy = {k: v for k, v in report.items() if k != "counts"} | {"passed": True, "failures": []}
    validate(legacy)  # written before counts: read as it was, and the renderer says so
    assert "Counts not recorded" in render_markdown(legacy)
