"""TensorRT on a GPU (marked gpu + trt; never runs on the CPU-only CI): TrtRunner against the torch runner,
and its CUDA-graph capture rules (one context per captured shape, the runner's own stream)."""
from __future__ import annotations

import pytest

from vvtrt.engines.trt_api import available_flavors
from vvtrt.errors import InputError
from vvtrt.precision import Precision
from vvtrt.runtime.trt_runner import TrtExecutionError, TrtRunner
from workdir_copy import copy_workdir

@pytest.mark.gpu
@pytest.mark.trt
def test_trt_runner_matches_torch_and_replays_in_a_cuda_graph(tiny_workdir, tiny_model, tmp_path):
    import copy

    import torch

    from vvtrt.components.specs import build_specs
    from vvtrt.engines import build_engines
    from vvtrt.runtime.runner import TorchRunner

    flavors = available_flavors()
    if not flavors:
        pytest.skip("no TensorRT installed")
    flavor = "tensorrt" if "tensorrt" in flavors else "tensorrt-rtx"
    wd = copy_workdir(tiny_workdir, tmp_path, ("diffusion_head.fp32",))
    try:
        build_engines(wd, flavor, target_sm="current" if flavor == "tensorrt-rtx" else None)
    except InputError as exc:  # e.g. TensorRT-RTX on an H100
        pytest.skip(str(exc))
    spec, dev = build_specs(wd.info(), wd.options())["diffusion_head"], torch.device("cuda")

    def sample(rows, seed):
        gen = torch.Generator().manual_seed(seed)
        return {k: v.to(dev) for k, v in spec.sample({"rows": rows}, Precision.FP32, gen).items()}

    feed = sample(3, 0)
    ref = TorchRunner(spec, Precision.FP32, dev, copy.deepcopy(tiny_model).to(dev), wd.options().steps)
    with TrtRunner.from_workdir(wd, spec, Precision.FP32, dev, flavor=flavor) as runner:
        got, want = runner.infer(feed)["v"], ref.infer(feed)["v"]
        assert ((got - want).norm() / want.norm()).item() < spec.tol("v", Precision.FP32) * 10
        out = runner.alloc_outputs({"rows": 3})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # eager warm-up off the default stream, as torch requires
            runner.infer(feed, out)
        torch.cuda.current_stream().wait_stream(side)
        eager = out["v"].clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            assert runner.infer(feed, out) is out
        out["v"].zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out["v"], eager)
        # other shapes run eagerly on a fresh context; the captured one (and its graph) stays as captured
        runner.infer(sample(2, 1))  # on the default stream: enqueued on the runner's own stream, ordered by events
        assert len(runner.contexts) == 2
        out["v"].zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out["v"], eager)
        fresh = sample(5, 2)
        with pytest.raises(TrtExecutionError, match="warm-up"):  # shapes not run just before: refused
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                runner.infer(fresh)
