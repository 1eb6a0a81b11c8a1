"""INT8 / FP8 quantization on the tiny model: Q/DQ exports, the quality gate through ONNX Runtime on the CPU,
TensorRT-RTX CPU builds whose layer report shows the quantized precisions, the PyTorch int8 path on the CPU,
and the refusal of a work dir whose gate failed or never ran."""
from __future__ import annotations

import json
import os

import onnx
import pytest
import torch

from cli_helpers import one_clear_line, run
from vvtrt.engines.trt_api import available_flavors
from vvtrt.precision import Precision
from vvtrt.quant.config import QuantMode
from vvtrt.workdir import Workdir

QUANTIZED = "lm_decode,diffusion_head,diffusion_sampler"


def _export(root, mode: str, components: str) -> Workdir:
    from vvtrt.pipeline import run_export

    run_export("tiny", root, "fp32", 10, components, 0, False, None, quant=mode)
    return Workdir.open(root)


@pytest.fixture(scope="module")
def wd_int8(tmp_path_factory):
    base = os.environ.get("VVTRT_TINY_WORKDIR")
    root = f"{base}_int8" if base else tmp_path_factory.mktemp("wd_int8")
    return _export(root, "int8", QUANTIZED)


@pytest.fixture(scope="module")
def wd_fp8(tmp_path_factory):
    base = os.environ.get("VVTRT_TINY_WORKDIR")
    root = f"{base}_fp8" if base else tmp_path_factory.mktemp("wd_fp8")
    return _export(root, "fp8", "lm_decode,diffusion_head")


def _qdq(path):
    g = onnx.load(str(path))
    ops = [n.op_type for n in g.graph.node]
    types = {t.data_type for t in g.graph.initializer}
    return ops, types


@pytest.mark.parametrize("which, elem", [("wd_int8", onnx.TensorProto.INT8),
                                         ("wd_fp8", onnx.TensorProto.FLOAT8E4M3FN)])
def test_quantized_export_writes_qdq_graphs_and_records_the_mode(request, which, elem):
    wd = request.getfixturevalue(which)
    mode = wd.quant()
    assert json.loads(wd.meta_path.read_text())["quant"] == mode.value
    assert f"--quant {mode.value}" in wd.export_command()
    for comp in ("lm_decode", "diffusion_head"):
        ops, types = _qdq(wd.onnx_path(comp, Precision.FP32))
        rec = wd.export_record(comp, Precision.FP32)
        assert rec["quant"]["mode"] == mode.value and rec["quant"]["gemm_nodes"] == ops.count("QuantizeLinear") > 0
        assert elem in types and "DequantizeLinear" in ops
        assert rec["quant"]["calibration"]["text"].endswith("dialogue.txt")
        # the diffusion head's timestep MLP stays in the model dtype
        assert not any("timestep" in n for n in rec["quant"]["activation_amax"])


def test_quantized_export_is_deterministic(wd_int8, tmp_path):
    again = _export(tmp_path / "again", "int8", "diffusion_head")
    a = wd_int8.export_record("diffusion_head", Precision.FP32)
    b = again.export_record("diffusion_head", Precision.FP32)
    assert a["onnx_sha256"] == b["onnx_sha256"] and a["quant"] == b["quant"]


@pytest.mark.parametrize("which", ["wd_int8", "wd_fp8"])
def test_gate_passes_through_onnxruntime_on_the_cpu_and_is_recorded(request, which):
    from vvtrt.pipeline import run_parity_cli
    from vvtrt.quant.gate import GATE_FILE, K

    wd = request.getfixturevalue(which)
    report, _ = run_parity_cli(wd.root, "onnxruntime", "cpu", "fp32", 16, e2e=False)
    rows = [r for r in report["rows"] if r.get("quant")]
    assert rows and all(r["tolerance"] == pytest.approx(K[wd.quant()] * max(r["bf16_rel_l2"], 1e-6)) for r in rows)
    assert all(r["rel_l2"] > 0 for r in rows)  # quantized: never the fp32 graph by mistake
    gate = json.loads((wd.root / GATE_FILE).read_text())
    assert report["passed"], report["failures"]
    assert gate["passed"] and gate["quant"] == wd.quant().value and gate["k"] == K[wd.quant()]


def test_torch_int8_path_runs_on_the_cpu_within_the_gate(wd_int8, tiny_model):
    from vvtrt.parity.compare import error_stats
    from vvtrt.quant.gate import bound
    from vvtrt.quant.torch_path import QuantLinear
    from vvtrt.runtime.runner import TorchRunner
    from vvtrt.model.presets import build_model

    spec = wd_int8.specs()["diffusion_head"]
    model = build_model("tiny")
    q = TorchRunner(spec, Precision.FP32, "cpu", model, quant=QuantMode.INT8)
    assert sum(isinstance(m, QuantLinear) for m in q.module.modules()) >= 4
    ref = TorchRunner(spec, Precision.FP32, "cpu", tiny_model)
    b16 = TorchRunner(spec, Precision.BF16, "cpu", build_model("tiny").to(torch.bfloat16))
    feed = spec.sample(spec.parity_grid[1], Precision.FP32, torch.Generator().manual_seed(3))
    want = ref.infer(feed)["v"]
    got = q.infer(feed)["v"]
    own = b16.infer({k: (v.bfloat16() if k != "timestep" else v) for k, v in feed.items()})["v"].float()
    err = error_stats(got, want).rel_l2
    assert 0 < err <= bound(QuantMode.INT8, error_stats(own, want).rel_l2)


def test_torch_gate_needs_no_quantized_graph(tmp_path):
    """The torch path quantizes the model's GEMMs itself: a quantized work dir with only the connectors graph
    is gated on every quantized component by `--backend torch`; ONNX Runtime, which runs graphs, gates none."""
    from vvtrt.pipeline import run_parity_cli
    from vvtrt.quant.gate import read_gate

    wd = _export(tmp_path / "wd", "fp8", "connectors")
    report, _ = run_parity_cli(wd.root, "onnxruntime", "cpu", "fp32", 16, e2e=False)
    assert report["passed"] and not read_gate(wd)["passed"]  # no quantized component checked: no gate
    report, _ = run_parity_cli(wd.root, "torch", "cpu", "fp32", 16, e2e=False)
    gate = read_gate(wd)
    assert report["passed"], report["failures"]
    assert gate["passed"] and gate["components"] == [f"{c}.fp32" for c in sorted(QUANTIZED.split(","))]
    assert all(r["rel_l2"] > 0 for r in report["rows"] if r.get("quant"))  # quantized, not the fp32 model


def test_torch_path_quantizes_each_gemm_once_then_frees_the_float_weights(wd_int8):
    """lm_decode's q|k|v and gate|up run fused: their Linears (views of the fused weights) are not quantized a
    second time. Once the loop's runners are built the float weights the quantized GEMMs replaced are gone,
    the model cache forgets the model, and the outputs are those of a runner that kept them."""
    from vvtrt.model.presets import build_model
    from vvtrt.quant.torch_path import QuantLinear
    from vvtrt.runtime.backends import ModelCache, load_runners
    from vvtrt.runtime.runner import TorchRunner

    models = ModelCache(wd_int8)
    runners = load_runners(wd_int8, "torch", Precision.FP32, "cpu", models=models)
    lm = runners["lm_decode"].module
    quantized = [n for n, m in lm.named_modules() if isinstance(m, QuantLinear)]
    layers = wd_int8.info().layers
    assert len(quantized) == 4 * layers, quantized  # qkv, o_proj, gate_up, down_proj
    assert not any(n.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")) for n in quantized)
    assert all(m.weight is None for r in runners.values() for m in r.module.modules() if isinstance(m, QuantLinear))
    assert lm.layers[0].self_attn.q_proj.weight.device.type == "meta" and not models._models
    spec = wd_int8.specs()["lm_decode"]
    kept = TorchRunner(spec, Precision.FP32, "cpu", build_model("tiny"), quant=QuantMode.INT8)
    feed = spec.sample(spec.parity_grid[0], Precision.FP32, torch.Generator().manual_seed(5))
    for name, want in kept.infer(feed).items():
        assert torch.equal(runners["lm_decode"].infer(feed)[name], want), name


@pytest.mark.trt
@pytest.mark.skipif("tensorrt-rtx" not in available_flavors(), reason="TensorRT-RTX is not installed")
@pytest.mark.parametrize("which, prec", [("wd_int8", "int8"), ("wd_fp8", "fp8")])
def test_tensorrt_rtx_builds_quantized_engines_with_quantized_layers(request, which, prec):
    from vvtrt.engines import build_engines
    from vvtrt.engines import manifest as mf

    wd = request.getfixturevalue(which)
    results = build_engines(wd, "tensorrt-rtx", components=("diffusion_head",), precisions=("fp32",))
    assert [r["component"] for r in results] == ["diffusion_head"]
    (folder,) = [p.parent for p in wd.engines_dir.glob(f"*-portable/{mf.MANIFEST_NAME}")]
    entry = mf.read_manifest(folder, strict=True)["engines"]["diffusion_head.fp32"]
    assert entry["quant"] == prec and entry["strongly_typed"]
    assert entry["layers"]["available"] and entry["layers"]["by_precision"].get(prec, 0) > 0, entry["layers"]


def test_synth_refuses_a_failed_or_ungated_quantization(wd_int8, tmp_path):
    from vvtrt.quant.gate import GATE_FILE

    gate = wd_int8.root / GATE_FILE
    saved = gate.read_bytes() if gate.exists() else None
    args = ("synth", "-w", wd_int8.root, "--device", "cpu", "--text", "Speaker 1: Hi.", "--frames", "2",
            "-o", tmp_path / "x.wav")
    try:
        gate.unlink(missing_ok=True)
        assert "quality gate never ran" in one_clear_line(run(*args))
        gate.write_text(json.dumps({"quant": "int8", "passed": False, "failures": ["diffusion_head: rel_l2 > bound"]}))
        line = one_clear_line(run(*args))
        assert "failed its quality gate" in line and "--allow-failed-quant" in line
        assert not (tmp_path / "x.wav").exists()
        ok = run(*args, "--allow-failed-quant")
        assert ok.exit_code == 0, ok.output
        assert (tmp_path / "x.wav").stat().st_size > 44
    finally:
        gate.unlink(missing_ok=True)
        if saved is not None:
            gate.write_bytes(saved)


def test_bench_compares_quantized_work_dirs_side_by_side(tiny_workdir, wd_int8, tmp_path):
    from vvtrt.bench.run import run_bench_cli

    paths = run_bench_cli(tiny_workdir.root, "torch", "cpu", "fp32", 3, 16, 1, 1.3, (), tmp_path,
                          compare_workdirs=(wd_int8.root,))
    report = json.loads(open(paths["json"]).read())
    assert [r["label"] for r in report["results"]] == ["vvtrt-torch-none", "vvtrt-torch-int8"]
    assert all(r["frame"]["p50"] > 0 for r in report["results"])
    assert [q["quant"] for q in report["quant"]] == ["none", "int8"]
    md = open(paths["md"]).read()
    assert "## Quantization" in md and "p50 vs none" in md
    row = next(line for line in md.splitlines() if line.startswith("| vvtrt-torch-int8 | int8 |"))
    assert "%" in row and row.count("not measured") == 2  # CPU: no GPU memory, never a made-up figure


def test_quant_targets_come_from_the_runs_own_files(tmp_path):
    """benchmarks/quant_targets.py over a real tiny run, as the device stages make it: export, parity with the
    torch backend and the side-by-side bench through the CLI, then quant_weights.py. Every row names its file;
    the latent SNR (what quantization changes in a teacher-forced run) is compared with the unquantized work
    dir's; what a CPU cannot measure (GPU memory) is "not measured", never met."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    res = tmp_path / "results"
    res.mkdir()
    for mode in ("none", "int8"):
        assert run("export", "--model", "tiny", "-w", tmp_path / mode, "--dtype", "bf16", "--components",
                   "connectors", "--quant", mode).exit_code == 0
        assert run("parity", "-w", tmp_path / mode, "--backend", "torch", "--dtype", "bf16",
                   "--json", res / f"parity_tiny_{mode}_torch_cpu.json").exit_code == 0
    shutil.copy(tmp_path / "int8" / "quant_gate.json", res / "quant_gate_tiny_int8.json")
    assert run("bench", "-w", tmp_path / "none", "--compare-workdir", tmp_path / "int8", "--backend", "torch",
               "--dtype", "bf16", "--frames", 3, "--prompt-tokens", 16, "--repeats", 1,
               "--out", res / "bench_tiny_quant_torch").exit_code == 0
    root = Path(__file__).resolve().parents[1]
    for script, args in (("quant_weights.py", [res / "quant_weights_tiny.json", "--workdir", tmp_path / "none",
                                               "--workdir", tmp_path / "int8"]),
                         ("quant_targets.py", [res, "--tag", "tiny", "--device", "cpu"])):
        subprocess.run([sys.executable, str(root / "benchmarks" / script), *map(str, args)], check=True,
                       stdout=subprocess.DEVNULL)
    rep = json.loads((res / "quant_targets_tiny.json").read_text())
    rows = {(r["name"], r["mode"]): r for r in rep["rows"]}
    assert rows[("frame_p50_ms", "int8")]["value"] > 0 and rows[("weights_gb", "int8")]["value"] > 0
    assert rows[("weights_gb", "int8")]["value"] < rows[("weights_gb", "none")]["value"]
    assert rows[("nvml_after_load_vs_none", "int8")]["value"] is None  # CPU: no GPU memory
    assert rows[("quality gate passed", "int8")]["met"] is True
    snr = [r for r in rep["rows"] if r["name"].endswith("latent SNR (dB)")]
    assert {r["name"] for r in snr} == {"teacher-forced-bf16 latent SNR (dB)",
                                        "scripted-teacher-forced-bf16 latent SNR (dB)"}
    none = json.loads((res / "parity_tiny_none_torch_cpu.json").read_text())
    ref = next(e["latent_snr_db"] for e in none["e2e"] if e["name"] == "teacher-forced-bf16")
    tf = next(r for r in snr if r["name"].startswith("teacher-forced"))
    assert tf["target"] == pytest.approx(ref - 3.0) and tf["met"] == (tf["value"] >= ref - 3.0)
    assert all(r["source"] for r in rep["rows"])
    assert "| quality gate passed | int8 |" in (res / "quant_targets_tiny.md").read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [QuantMode.INT8, QuantMode.FP8])
def test_torch_quant_path_on_the_gpu_in_a_cuda_graph(mode):
    from vvtrt.quant.torch_path import QuantLinear

    lin = torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16)
    q = QuantLinear(lin.weight, lin.bias, mode)
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    want = lin(x).float()
    eager = q(x)
    graph, static_x = torch.cuda.CUDAGraph(), x.clone()
    q(static_x)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out = q(static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    rel = ((eager.float() - want).norm() / want.norm()).item()
    assert rel < (0.02 if mode is QuantMode.INT8 else 0.1)
    if mode is QuantMode.FP8 and torch.cuda.get_device_capability() >= (8, 9):
        assert q._scaled_mm_ok(x)  # the FP8 GEMM path, not the weight-only fallback
