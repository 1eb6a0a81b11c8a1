"""OrtRunner (onnxruntime backend) and the ONNX reference evaluator (bf16 on the CPU) against the fp32 torch
reference, on the tiny preset. Uses the session's tiny export (conftest `tiny_workdir`: every component in
fp32/fp16/bf16, a few minutes); set VVTRT_TEST_WORKDIR=DIR to export into / reuse DIR instead.
GPU tests (`-m gpu`) need CUDA and onnxruntime-gpu and skip otherwise."""
from __future__ import annotations

import os
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vvtrt.components.info import ModelInfo
from vvtrt.components.specs import COMPONENTS, ExportOptions, build_specs
from vvtrt.errors import BackendUnavailableError, InputError, WorkdirError
from vvtrt.export.onnx_export import export_all
from vvtrt.model.presets import build_model
from vvtrt.model.resolve import ModelSource
from vvtrt.parity.compare import error_stats
from vvtrt.parity.reference_eval import ReferenceEvalError, numpy_to_torch, run_onnx_reference, torch_to_numpy
from vvtrt.precision import Precision
from vvtrt.runtime.ort_runner import ONNX_ELEM, OrtRunner, available_providers
from vvtrt.workdir import Workdir

FP32, FP16, BF16 = Precision.FP32, Precision.FP16, Precision.BF16
HAS_CUDA_EP = torch.cuda.is_available() and "CUDAExecutionProvider" in available_providers()
gpu = pytest.mark.skipif(not HAS_CUDA_EP, reason="needs a CUDA GPU and onnxruntime-gpu")


@pytest.fixture(scope="module")
def tiny(request):
    """The session's shared tiny export (conftest `tiny_workdir`), or VVTRT_TEST_WORKDIR exported/reused here.
    The fp32 reference model is this module's own (a shared model could have been cast in place)."""
    model = build_model("tiny").eval()
    if os.environ.get("VVTRT_TEST_WORKDIR"):
        wd = Workdir.create(os.environ["VVTRT_TEST_WORKDIR"])
        opts = ExportOptions.for_preset("tiny")
        wd.write_meta(ModelSource(preset="tiny"), opts, ModelInfo.from_model(model))
        export_all(wd, lambda p: build_model("tiny").to(p.torch_dtype),
                   build_specs(wd.info(), opts), [FP32, FP16, BF16], opts.steps)
    else:
        wd = request.getfixturevalue("tiny_workdir")
    specs = build_specs(wd.info(), wd.options())
    return SimpleNamespace(wd=wd, specs=specs, model=model, steps=wd.options().steps)


def _reference(tiny, spec, feed):
    """fp32 torch wrapper on the CPU, fed the (precision-rounded) inputs upcast to fp32."""
    module = spec.make_module(tiny.model, tiny.steps).eval()
    f32 = {k: (v.cpu().float() if v.is_floating_point() else v.cpu()) for k, v in feed.items()}
    with torch.inference_mode():
        res = module(*(f32[t.name] for t in spec.inputs))
    res = res if isinstance(res, tuple) else (res,)
    return {t.name: r for t, r in zip(spec.outputs, res)}


def _sample(spec, dims, precision, seed=0, device="cpu"):
    feed = spec.sample(dims, precision, torch.Generator().manual_seed(seed))
    return {k: v.to(device) for k, v in feed.items()}


def _runner(tiny, name, precision, device="cpu", **kw):
    return OrtRunner(tiny.specs[name], precision, device, tiny.wd.onnx_path(name, precision), **kw)


def _assert_parity(spec, got, want, precision, tol=None, cap=None):
    for t in spec.outputs:
        st = error_stats(got[t.name], want[t.name])
        limit = spec.tol(t.name, precision) if tol is None else tol
        limit = limit if cap is None else min(limit, cap)
        assert st.passed(limit), f"{spec.name}.{t.name} {precision.value}: rel_l2 {st.rel_l2:.3e} > {limit:g}"


# -- CPU execution provider ------------------------------------------------------------------------
@pytest.mark.parametrize("precision", [FP32, FP16], ids=lambda p: p.value)
@pytest.mark.parametrize("name", COMPONENTS)
def test_cpu_parity(tiny, name, precision):
    spec = tiny.specs[name]
    with _runner(tiny, name, precision) as runner:
        assert runner.backend == "onnxruntime"
        for i, dims in enumerate(spec.parity_grid):
            feed = _sample(spec, dims, precision, seed=i)
            got = runner.infer(feed)
            for t in spec.outputs:
                assert got[t.name].dtype == t.torch_dtype(precision)
                assert tuple(got[t.name].shape) == t.resolve(dims)
            _assert_parity(spec, got, _reference(tiny, spec, feed), precision)


@pytest.mark.parametrize("name", ["connectors", "acoustic_decoder_step", "lm_decode"])
def test_out_path_writes_into_given_tensors(tiny, name):
    spec, dims = tiny.specs[name], tiny.specs[name].parity_grid[-1]
    feed = _sample(spec, dims, FP16)
    with _runner(tiny, name, FP16) as runner:
        fresh = runner.infer(feed)
        out = runner.alloc_outputs(dims)
        for y in out.values():
            y.fill_(float("nan"))
        ptrs = {n: y.data_ptr() for n, y in out.items()}
        res = runner.infer(feed, out)
        for t in spec.outputs:
            assert res[t.name] is out[t.name] and out[t.name].data_ptr() == ptrs[t.name]
            assert torch.equal(out[t.name], fresh[t.name])
        # a non-contiguous destination is filled through a temporary
        first = spec.outputs[0]
        shape = first.resolve(dims)
        strided = torch.empty(shape[::-1], dtype=first.torch_dtype(FP16)).permute(*range(len(shape) - 1, -1, -1))
        assert tuple(strided.shape) == shape and not strided.is_contiguous()
        out2 = {**runner.alloc_outputs(dims), first.name: strided}
        runner.infer(feed, out2)
        assert torch.equal(strided, fresh[first.name])


def test_bad_feeds_raise_input_error(tiny):
    spec = tiny.specs["acoustic_decoder_step"]
    dims = spec.parity_grid[0]
    feed = _sample(spec, dims, FP32)
    runner = _runner(tiny, "acoustic_decoder_step", FP32)
    bad_feeds = [
        {"latent": feed["latent"]},  # missing input
        {**feed, "latent": feed["latent"].half()},  # wrong dtype
        {**feed, "latent": feed["latent"][0]},  # wrong rank
        {**feed, "latent": torch.zeros(1, 1, feed["latent"].shape[-1] + 1)},  # fixed dim
        {**feed, "state": torch.zeros(dims["batch"] + 1, feed["state"].shape[1])},  # inconsistent axis
        {**feed, "latent": torch.empty(feed["latent"].shape, device="meta")},  # wrong device
    ]
    for bad in bad_feeds:
        with pytest.raises(InputError):
            runner.infer(bad)
    out = runner.alloc_outputs(dims)
    for bad_out in ({"audio": out["audio"]}, {**out, "audio": out["audio"].half()},
                    {**out, "state_out": torch.zeros(3, 3)}):
        with pytest.raises(InputError):
            runner.infer(feed, bad_out)
    runner.deactivate()


def test_bf16_on_cpu_is_unavailable(tiny):
    spec = tiny.specs["connectors"]
    runner = _runner(tiny, "connectors", BF16)
    with pytest.raises(BackendUnavailableError, match="bf16"):
        runner.activate()
    with pytest.raises(BackendUnavailableError):
        runner.infer(_sample(spec, spec.parity_grid[0], BF16))


def test_construction_and_lifecycle(tiny, tmp_path):
    spec = tiny.specs["connectors"]
    with pytest.raises(InputError):
        _runner(tiny, "connectors", FP32, cuda_graph=True)  # CUDA graphs need CUDA
    with pytest.raises(InputError):
        _runner(tiny, "connectors", FP32, device="meta")
    with pytest.raises(WorkdirError):
        OrtRunner(spec, FP32, "cpu", tmp_path / "missing.onnx").activate()
    runner = _runner(tiny, "connectors", FP32)
    assert runner.session is None
    feed = _sample(spec, spec.parity_grid[0], FP32)
    first = runner.infer(feed)  # activates lazily
    assert runner.active and runner.session is not None
    runner.deactivate()
    assert runner.session is None and not runner.active
    with runner:
        assert torch.equal(runner.infer(feed)["embeds"], first["embeds"])


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA EP")
def test_cuda_without_onnxruntime_gpu_says_how_to_install(tiny):
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        _runner(tiny, "connectors", FP16, device="cuda").activate()


def test_bf16_iobinding_by_onnx_element_type():
    """The mechanism the CUDA path uses: bind torch memory by pointer with an ONNX element-type integer
    (BFLOAT16 = 16), no numpy bf16 needed. Cast has bf16 kernels on the CPU EP, so it is provable here."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["y"], ["z"], to=TensorProto.BFLOAT16)], "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("z", TensorProto.BFLOAT16, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(37).bfloat16()
    y, z = torch.empty(37), torch.empty(37, dtype=torch.bfloat16)
    assert ONNX_ELEM[torch.bfloat16] == TensorProto.BFLOAT16
    b = sess.io_binding()
    b.bind_input("x", "cpu", 0, ONNX_ELEM[x.dtype], list(x.shape), x.data_ptr())
    b.bind_output("y", "cpu", 0, ONNX_ELEM[y.dtype], list(y.shape), y.data_ptr())
    b.bind_output("z", "cpu", 0, ONNX_ELEM[z.dtype], list(z.shape), z.data_ptr())
    sess.run_with_iobinding(b)
    assert torch.equal(y, x.float()) and torch.equal(z.view(torch.int16), x.view(torch.int16))


# -- ONNX reference evaluator (bf16 on the CPU) ----------------------------------------------------
@pytest.mark.parametrize("name", COMPONENTS)
def test_reference_eval_bf16(tiny, name):
    spec = tiny.specs[name]
    for i, dims in enumerate(spec.parity_grid):
        feed = _sample(spec, dims, BF16, seed=i)
        got = run_onnx_reference(tiny.wd.onnx_path(name, BF16), feed)
        for t in spec.outputs:
            assert got[t.name].dtype in (torch.float32, torch.int64)
        _assert_parity(spec, got, _reference(tiny, spec, feed), BF16, cap=2e-2)


@pytest.mark.parametrize("name", ["connectors", "diffusion_head"])
def test_reference_eval_fp32_agrees_with_onnxruntime(tiny, name):
    spec = tiny.specs[name]
    feed = _sample(spec, spec.parity_grid[-1], FP32)
    with _runner(tiny, name, FP32) as runner:
        _assert_parity(spec, run_onnx_reference(tiny.wd.onnx_path(name, FP32), feed), runner.infer(feed), FP32)


def test_reference_eval_errors(tiny, tmp_path):
    spec, path = tiny.specs["connectors"], tiny.wd.onnx_path("connectors", BF16)
    feed = _sample(spec, spec.parity_grid[0], BF16)
    with pytest.raises(ReferenceEvalError, match="exceeded"):
        run_onnx_reference(path, feed, max_seconds=0.0)
    with pytest.raises(InputError):
        run_onnx_reference(path, {"latent": feed["latent"]})
    with pytest.raises(InputError):
        run_onnx_reference(path, {**feed, "latent": feed["latent"].float()})
    with pytest.raises(WorkdirError):
        run_onnx_reference(tmp_path / "missing.onnx", feed)
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                    helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(ReferenceEvalError, match="Frobnicate"):
        run_onnx_reference(tmp_path / "custom.onnx", {"x": torch.zeros(2)})


def test_bf16_numpy_round_trip_is_bit_exact():
    x = torch.randn(5, 7).bfloat16()
    a = torch_to_numpy(x)
    assert a.dtype == helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16) and a.shape == (5, 7)
    assert torch.equal(numpy_to_torch(a), x.float())


# -- CUDA execution provider (run on the GPU machine) ----------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", [FP32, FP16, BF16], ids=lambda p: p.value)
@pytest.mark.parametrize("name", COMPONENTS)
def test_gpu_iobinding_parity(tiny, name, precision):
    spec = tiny.specs[name]
    side = torch.cuda.Stream()
    with _runner(tiny, name, precision, device="cuda") as runner:
        assert runner._stream is not None and runner._stream.cuda_stream != 0  # ORT ignores handle 0
        for i, dims in enumerate(spec.parity_grid):
            feed = _sample(spec, dims, precision, seed=i, device="cuda")
            got = {k: v.clone() for k, v in runner.infer(feed).items()}
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # a caller stream other than the session's
                out = runner.alloc_outputs(dims)
                res = runner.infer(feed, out)
            torch.cuda.synchronize()
            for t in spec.outputs:
                assert res[t.name] is out[t.name] and out[t.name].is_cuda
                assert torch.equal(out[t.name], got[t.name])
            _assert_parity(spec, {k: v.cpu() for k, v in got.items()}, _reference(tiny, spec, feed), precision)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", ["connectors", "lm_decode"])
def test_gpu_infer_orders_against_the_callers_stream(tiny, name):
    """The session runs on its own stream; a feed written on the caller's stream behind ~0.2 s of GPU work
    must be seen complete (event ordering, not luck). Each run ends with ORT's stream synchronisation (the
    module doc says why), so the results are ready when `infer` returns.
    On an H100 the previous form of this test asserted the host was *not* blocked and failed, which
    is what showed the synchronisation; this form has not yet run on a GPU."""
    spec = tiny.specs[name]
    dims = spec.parity_grid[0]
    feed = _sample(spec, dims, FP16, device="cuda")
    session_stream, caller = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(session_stream):
        runner = _runner(tiny, name, FP16, device="cuda")
        runner.activate()
        want = {k: v.clone() for k, v in runner.infer(feed).items()}
    torch.cuda.synchronize()
    out = runner.alloc_outputs(dims)
    with torch.cuda.stream(caller):
        staged = {k: torch.zeros_like(v) for k, v in feed.items()}
        torch.cuda._sleep(int(3e8))  # GPU work ahead of the feed write
        for k, v in staged.items():
            v.copy_(feed[k])
        runner.infer(staged, out)
        assert runner._stream == session_stream
    torch.cuda.synchronize()
    for t in spec.outputs:
        assert torch.equal(out[t.name], want[t.name])
    runner.deactivate()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", [FP16, BF16], ids=lambda p: p.value)
@pytest.mark.parametrize("name", COMPONENTS)
def test_gpu_cuda_graph_replay(tiny, name, precision):
    spec = tiny.specs[name]
    graph_runner = _runner(tiny, name, precision, device="cuda", cuda_graph=True)
    try:
        graph_runner.activate()
    except BackendUnavailableError as exc:  # ORT refuses capture for graphs with CPU/Memcpy nodes
        pytest.skip(f"ORT CUDA graph unavailable for {name}: {exc}")
    with graph_runner, _runner(tiny, name, precision, device="cuda") as plain:
        # graphs are captured for decode-shaped calls only (lm_decode's prompt chunks, seq > 1, run un-graphed)
        graphable = [d for d in spec.parity_grid if d.get("seq", 1) == 1]
        dims_a, dims_b = graphable[0], graphable[-1]
        feed_a1, feed_a2 = (_sample(spec, dims_a, precision, seed=s, device="cuda") for s in (1, 2))
        feed_b = _sample(spec, dims_b, precision, seed=3, device="cuda")
        first = graph_runner.infer(feed_a1)  # warm-up + capture (graph 1)
        second = graph_runner.infer(feed_a2)  # replay must read the new inputs
        other = graph_runner.infer(feed_b)  # another shape: graph 2
        out = graph_runner.alloc_outputs(dims_a)
        again = graph_runner.infer(feed_a1, out)  # back to graph 1
        torch.cuda.synchronize()
        assert len(graph_runner._slots) == 2
        for t in spec.outputs:
            assert torch.equal(again[t.name], first[t.name]) and again[t.name] is out[t.name]
        checks = [(feed_a1, first), (feed_a2, second), (feed_b, other)]
        for dims in (d for d in spec.parity_grid if d.get("seq", 1) > 1):  # un-graphed on the same session
            feed = _sample(spec, dims, precision, seed=4, device="cuda")
            checks.append((feed, graph_runner.infer(feed)))
        assert len(graph_runner._slots) == 2
        for feed, got in checks:
            _assert_parity(spec, got, plain.infer(feed), precision, tol=1e-3)
            _assert_parity(spec, {k: v.cpu() for k, v in got.items()}, _reference(tiny, spec, feed), precision)
