"""lm_prefill and lm_decode on ONNX Runtime hold ONE copy of the LLM weights (`vvtrt.runtime.ort_weights`), on
the CPU: both sessions run on the very same memory (zeroing a shared tensor in place changes both sessions'
outputs), outputs are bit-identical to unshared sessions on the same kernels, the host memory saving is
measured in separate processes, and `benchmarks/lm_weight_sharing.py` runs end to end on the tiny work dir."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vvtrt.components.specs import build_specs
from vvtrt.precision import Precision
from vvtrt.runtime.backends import LM_COMPONENTS, load_runners
from vvtrt.runtime.ort_runner import DISABLE_PREPACKING, OrtRunner
from vvtrt.runtime.ort_weights import SHARE_MIN_BYTES

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"lm_prefill": {"batch": 1, "seq": 9}, "lm_decode": {"batch": 2, "kv_len": None}}


def _feeds(wd):
    specs = build_specs(wd.info(), wd.options())
    feeds = {}
    for comp in LM_COMPONENTS:
        dims = dict(DIMS[comp])
        if comp == "lm_decode":
            dims["kv_len"] = specs[comp].profiles[0]["kv_len"].min
        feeds[comp] = specs[comp].sample(dims, Precision.FP32, torch.Generator().manual_seed(1))
    return specs, feeds


def _run(runners, feeds):
    return {c: {k: v.clone() for k, v in runners[c].infer(feeds[c]).items()} for c in LM_COMPONENTS}


def test_prefill_and_decode_run_on_one_copy_of_the_weights(tiny_workdir):
    wd = tiny_workdir
    specs, feeds = _feeds(wd)
    runners = load_runners(wd, "onnxruntime", Precision.FP32, "cpu", components=LM_COMPONENTS)
    shared = runners["lm_prefill"].shared
    assert shared is not None and shared is runners["lm_decode"].shared
    got = _run(runners, feeds)
    # every weight of the prefill graph (q|k|v, o, gate|up, down per layer, the 4-token head) is shared
    big = [t for t in onnx.load(str(wd.onnx_path("lm_prefill", Precision.FP32))).graph.initializer
           if numpy_helper.to_array(t).nbytes >= SHARE_MIN_BYTES]
    assert shared.stats["shared_tensors"] == len(big) >= 9
    assert shared.stats["shared_bytes"] == sum(numpy_helper.to_array(t).nbytes for t in big)
    # sharing itself changes nothing: unshared sessions on the same CPU kernels (prepacking off) agree bit for bit
    plain = {c: OrtRunner(specs[c], Precision.FP32, "cpu", wd.onnx_path(c, Precision.FP32),
                          session_config={DISABLE_PREPACKING: "1"}) for c in LM_COMPONENTS}
    for c in LM_COMPONENTS:
        plain[c].activate()
        want = plain[c].infer(feeds[c])
        for k in want:
            assert torch.equal(got[c][k], want[k]), (c, k)
    # both sessions read the shared memory itself: zero each shared tensor in place, both outputs move
    for key, tensor in shared.tensors.items():
        keep = tensor.clone()
        tensor.zero_()
        zeroed = _run(runners, feeds)
        tensor.copy_(keep)
        for c in LM_COMPONENTS:
            assert any(not torch.equal(zeroed[c][k], got[c][k]) for k in got[c]), (c, key[0])
    again = _run(runners, feeds)
    assert all(torch.equal(again[c][k], got[c][k]) for c in got for k in got[c])


def test_no_sharing_when_asked_or_when_one_graph_runs_elsewhere(tiny_workdir):
    wd = tiny_workdir
    runners = load_runners(wd, "onnxruntime", Precision.FP32, "cpu", components=LM_COMPONENTS, share_lm_weights=False)
    assert runners["lm_prefill"].shared is None and runners["lm_decode"].shared is None
    mixed = load_runners(wd, "onnxruntime", Precision.FP32, "cpu", components=LM_COMPONENTS,
                         fallback={"lm_decode": "torch"})
    assert mixed["lm_prefill"].shared is None  # the torch runner keeps its own (the model's) weights


_RSS_CHILD = textwrap.dedent("""
    import sys, numpy as np, onnx, onnxruntime, torch  # everything imported before the baseline
    from vvtrt.precision import Precision
    from vvtrt.runtime.ort_runner import OrtRunner
    from vvtrt.runtime.ort_weights import SharedInitializers
    from vvtrt.spec import ComponentSpec, TensorSpec

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    paths, share = sys.argv[1:3], sys.argv[3] == "1"
    spec = ComponentSpec("mlp", "mlp", (TensorSpec("x", ("n", 1024)),), (TensorSpec("y", ("n", 1024)),),
                         None, None, ({},), {}, ())
    base = rss()
    store = SharedInitializers(paths, "cpu") if share else None
    runners = [OrtRunner(spec, Precision.FP32, "cpu", p, shared=store) for p in paths]
    x = torch.ones(4, 1024)
    ys = [r.infer({"x": x})["y"] for r in runners]
    print(rss() - base, float(ys[0].sum()), float(ys[1].sum()))
""")


def _mlp_graph(path: Path, prefix: str, weights, extra_add: bool) -> None:
    """An LLM-like pair: the same weights under exporter-style names, in an external .onnx.data file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"{prefix}_{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"{prefix}_{i}"], [f"h{i}"]))
        cur = f"h{i}"
    inits.append(numpy_helper.from_array(np.full((1024,), 0.5 if extra_add else 0.0, np.float32), "b"))
    nodes.append(helper.make_node("Add", [cur, "b"], ["y"]))
    graph = helper.make_graph(nodes, prefix, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1024])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location=path.name + ".data", size_threshold=1024)


def test_sharing_saves_one_copy_of_host_memory_with_external_weights(tmp_path):
    """Measured in a fresh process per variant: with the weights in .onnx.data files (as every exported graph
    above 1 GiB, e.g. the 1.5B and 7B LLM graphs), two sessions hold one copy instead of two."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((1024, 1024)) * 0.03).astype(np.float32) for _ in range(8)]  # 32 MiB
    paths = [tmp_path / "prefill.onnx", tmp_path / "decode.onnx"]
    _mlp_graph(paths[0], "val", weights, False)
    _mlp_graph(paths[1], "w", weights, True)
    out = {}
    for share in ("0", "1"):
        proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, *map(str, paths), share], capture_output=True,
                              text=True, check=True)
        delta, *sums = proc.stdout.split()
        out[share] = (int(delta), [float(s) for s in sums])
    assert out["0"][1] == pytest.approx(out["1"][1], rel=1e-5)  # same results (prepacking aside)
    weight_bytes = sum(w.nbytes for w in weights)
    saved = out["0"][0] - out["1"][0]
    assert saved > 0.75 * weight_bytes, f"separate {out['0'][0] / 2**20:.1f} MiB, shared {out['1'][0] / 2**20:.1f} MiB"


def test_weight_sharing_benchmark_runs_on_the_cpu(tiny_workdir, tmp_path):
    out = tmp_path / "sharing.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lm_weight_sharing.py"), str(tiny_workdir.root),
                           str(out), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    sep, sh = rep["variants"]["separate"], rep["variants"]["shared"]
    assert rep["dtype"] == "fp32" and sep["shared"] is None and sh["shared"]["shared_tensors"] >= 9
    read = sh["sessions_read_shared_memory"]
    assert read["all_read_by_both"], read
    assert sep["host_rss_after_run_bytes"] > 0 and sh["host_rss_after_run_bytes"] > 0
    assert "nvml_process_peak_bytes" not in sh  # no GPU here: not measured, never faked
    # CPU: shared sessions run without MatMul prepacking, another GEMM path: rounding-level differences only
    # (up to 6e-8 on the tiny fp32 logits, prepacking on vs off with nothing shared; sharing alone is bit-exact,
    # test_prefill_and_decode_run_on_one_copy_of_the_weights)
    assert max(rep["outputs_shared_vs_separate"]["max_abs_diff"].values()) < 1e-5
    assert set(rep["environment"]) >= {"git_commit", "onnxruntime", "torch", "gpu_name"}
