"""Realtime components: explicit-state steps against the transformers reference, and ONNX export of every
tiny-realtime component with ONNX Runtime (CPU) parity on a shape grid unlike the export shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vvtrt.precision import Precision


@pytest.fixture(scope="module")
def rt_tiny():
    from vvtrt.realtime.presets import build_realtime_model

    return build_realtime_model("tiny-realtime")


@pytest.fixture(scope="module")
def rt_specs(rt_tiny):
    from vvtrt.realtime.specs import RealtimeExportOptions, build_realtime_specs

    cfg = rt_tiny.rt_config
    return build_realtime_specs(cfg, RealtimeExportOptions.for_config(cfg))


def _padded(branch, s):
    k = torch.zeros(branch.k.shape[0], 1, branch.k.shape[1], s, branch.k.shape[3])
    v = k.clone()
    k[:, 0, :, :branch.length], v[:, 0, :, :branch.length] = branch.k, branch.v
    return k, v


def test_steps_match_the_reference_with_per_row_positions(rt_tiny):
    from vvtrt.realtime.reference import _cache_of, _run
    from vvtrt.realtime.steps import ConnectorStep, TextWindowStep, TtsDecodeStep
    from vvtrt.realtime.synthetic import make_voice

    m, voice = rt_tiny, make_voice(rt_tiny, "s", 7, 19, seed=1)
    ids = torch.tensor([[5, 9, 77, 3]])
    (lk, lv), (tk, tv) = _padded(voice["lm"], 32), _padded(voice["tts_lm"], 32)
    h_step, _, _, tts_k, _ = TextWindowStep(m)(ids, lk, lv, torch.tensor([7]), tk, tv, torch.tensor([19]))
    lm_cache, tts_cache = _cache_of(voice["lm"], torch.float32, "cpu"), _cache_of(voice["tts_lm"], torch.float32, "cpu")
    h = _run(m.model.language_model, m.embed_text(ids), lm_cache)
    h = _run(m.model.tts_language_model, h + m.type_embedding(True), tts_cache)
    assert torch.allclose(h_step[:, 0], h[:, -1], atol=1e-5)
    assert torch.allclose(tts_k[:, 0], torch.stack([layer.keys[0, :, -4:] for layer in tts_cache.layers]), atol=1e-5)
    # positive (19 entries) and negative (1 entry) rows in one batch, each at its own position
    e = ConnectorStep(m)(torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0)))
    nk, nv = _padded(voice["neg_tts_lm"], 32)
    hd, eos, _, _ = TtsDecodeStep(m)(torch.cat([e, e]), torch.cat([tk, nk], 1), torch.cat([tv, nv], 1),
                                     torch.tensor([19, 1]))
    hp = _run(m.model.tts_language_model, e, _cache_of(voice["tts_lm"], torch.float32, "cpu"))[:, -1]
    hn = _run(m.model.tts_language_model, e, _cache_of(voice["neg_tts_lm"], torch.float32, "cpu"))[:, -1]
    assert torch.allclose(hd[0, 0], hp[0], atol=1e-5) and torch.allclose(hd[1, 0], hn[0], atol=1e-5)
    assert torch.allclose(torch.sigmoid(eos[0]), m.eos_probability(hp)[0], atol=1e-6)


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.mark.parametrize("name", ["rt_text_window", "rt_tts_decode", "rt_sampler", "rt_sampler_sde",
                                  "rt_decoder_step", "rt_connector"])
def test_export_and_ort_parity(tmp_path, rt_tiny, rt_specs, name):
    import onnxruntime as ort

    from vvtrt.export.onnx_export import export_component

    spec = rt_specs[name]
    path = tmp_path / f"{name}.onnx"
    export_component(spec, rt_tiny, Precision.FP32, 5, path)  # validates names, dtypes and dynamic axes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = spec.make_module(rt_tiny, 5).eval()
    gen = torch.Generator().manual_seed(1)
    for dims in spec.parity_grid:
        sample = spec.sample(dims, Precision.FP32, gen)
        with torch.no_grad():
            ref = module(*(sample[t.name] for t in spec.inputs))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(None, {k: v.numpy() for k, v in sample.items()})
        for t, r, g in zip(spec.outputs, ref, got):
            assert g.shape == tuple(r.shape), (name, t.name, dims)
            assert _rel_l2(g, r.numpy()) <= spec.tol(t.name, Precision.FP32), (name, t.name, dims)


@pytest.mark.parametrize("name", ["rt_sampler", "rt_sampler_sde"])
def test_sampler_takes_a_guidance_scale_per_row(rt_specs, name):
    """`cfg_scale` is `[batch]`: the engine profiles give it the batch range, and the parity samples give
    every row its own scale."""
    from vvtrt.engines.builder import profile_shapes

    spec = rt_specs[name]
    (prof,) = spec.profiles
    b = prof["batch"]
    assert profile_shapes(spec, prof)["cfg_scale"] == ((b.min,), (b.opt,), (b.max,)) and b.max > 1
    cfg = spec.sample({"batch": 3}, Precision.FP32, torch.Generator().manual_seed(0))["cfg_scale"]
    assert cfg.shape == (3,) and cfg.dtype == torch.float32 and len(set(cfg.tolist())) == 3
