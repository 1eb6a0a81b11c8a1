"""One copy of the LLM weights on every backend: the LLM is one exported graph, lm_decode, which runs the decode
steps and the prompt prefill (in chunks, `vvtrt.runtime.prefill`). On ONNX Runtime that is one session holding
the weights once; the work dir holds one LLM graph per precision whose weights are the LLM's parameters once
(the former lm_prefill + lm_decode pair held them twice: 5.24 GB of initializers for 1.5B bf16,
benchmarks/results/h100/lm_weight_sharing_1.5b_bf16.json)."""
from __future__ import annotations

import onnx
import torch
from onnx import numpy_helper

from vvtrt.components.specs import COMPONENTS
from vvtrt.precision import Precision
from vvtrt.runtime.backends import LOOP_COMPONENTS, load_runners
from vvtrt.runtime.prefill import make_prefill


def test_one_llm_graph_holds_the_weights_once(tiny_workdir, tiny_model):
    wd = tiny_workdir
    llm = [c for c in COMPONENTS if c.startswith("lm_")]
    assert llm == ["lm_decode"] and [c for c in LOOP_COMPONENTS if c.startswith("lm_")] == ["lm_decode"]
    assert {c for c, _ in wd.exported() if c.startswith("lm_")} == {"lm_decode"}
    graph = onnx.load(str(wd.onnx_path("lm_decode", Precision.FP32))).graph
    init_bytes = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    layers = tiny_model.model.language_model.layers
    lm_bytes = sum(p.numel() * p.element_size() for p in layers.parameters())
    assert 0.95 * lm_bytes < init_bytes < 1.25 * lm_bytes  # every layer's weights once (two copies: 2x)


def test_prefill_runs_on_the_decode_session(tiny_workdir):
    """The prefill takes the loaded lm_decode runner itself: no second session, no second copy."""
    wd = tiny_workdir
    runners = load_runners(wd, "onnxruntime", Precision.FP32, "cpu", components=("lm_decode", "token_embed"))
    prefill = make_prefill(runners, wd.options(), graphs=False)
    assert prefill.runner is runners["lm_decode"] and "lm_prefill" not in runners
    info = wd.info()
    body = torch.randn(1, 20, info.hidden) * 0.5
    k, v = prefill(body)
    assert k.shape == v.shape == (info.layers, 1, info.kv_heads, 20, info.head_dim)
    # a decode step on the same session continues that prompt
    s = wd.options().kv_buckets[0]
    past = torch.zeros(info.layers, 1, info.kv_heads, s, info.head_dim)
    past_v = past.clone()
    past[:, :, :, :20], past_v[:, :, :, :20] = k, v
    out = runners["lm_decode"].infer({"embeds": body[:, -1:], "past_k": past, "past_v": past_v,
                                      "cache_len": torch.tensor([20])})
    assert out["new_k"].shape == (info.layers, 1, info.kv_heads, 1, info.head_dim)
    assert torch.isfinite(out["logits"]).all()
