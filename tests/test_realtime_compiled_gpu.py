"""The Realtime loop as GPU serving runs it with `compile=True`: torch.compile'd components (TTS decode with
the gemm decode attention, the decoder's convolutions as GEMMs) inside the loop's CUDA graphs, against the
eager loop (marked gpu; needs CUDA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vvtrt.parity.compare import error_stats

pytestmark = pytest.mark.gpu
TEXTS = ("Hello there, this is a test of streaming speech.", "Short one.")


def test_compiled_tts_decode_fast_path_matches_sdpa():
    """bf16, rows with an empty cache, a partial and a full one; the long-form decode kernel's bound (2e-2,
    tests/test_gpu.py::test_compiled_flex_decode_matches_sdpa)."""
    from vvtrt.realtime.presets import new_model, preset_config
    from vvtrt.realtime.steps import TtsDecodeStep

    cfg = preset_config("tiny-realtime")
    model = new_model(cfg, device="cuda").to(torch.bfloat16).eval()
    ref, fast = TtsDecodeStep(model).eval(), TtsDecodeStep(model).eval()
    fast.fast = True
    fast = torch.compile(fast, dynamic=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (cfg.tts_layers, 4, cfg.kv_heads, 256, cfg.head_dim)
    pk = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    pv = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    emb = torch.randn(4, 1, cfg.hidden, generator=g, device="cuda", dtype=torch.bfloat16) * 0.5
    lens = torch.tensor([200, 0, 256, 1], device="cuda")
    with torch.inference_mode():
        want, got = ref(emb, pk, pv, lens), fast(emb, pk, pv, lens)
    for name, a, b in zip(("hidden", "eos_logit", "new_k", "new_v"), want, got):
        assert error_stats(b.float(), a.float()).rel_l2 < 2e-2, name


def test_compiled_graphed_loop_matches_the_eager_loop():
    """fp32 (TF32 off): two streams of different cfg_scale batched plus a solo run, compiled + CUDA graphs against eager. Bound 1e-3
    of the peak, as the long-form CUDA backends against generate (tests/test_gpu.py): fused kernels sum in
    another order than eager ones."""
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.synthetic import make_voice

    runs = {}
    for compiled in (False, True):
        rt = RealtimeRunner.from_preset("tiny-realtime", device="cuda", graphs=compiled, compile=compiled,
                                        kv_buckets=(32, 64, 128))
        voice = make_voice(rt.model, "v", lm_len=12, tts_len=30, seed=1)
        reqs = [rt.request(TEXTS[i], voice, seed=i, cfg_scale=(1.5, 2.5)[i], max_frames=14) for i in range(2)]
        runs[compiled] = [r["audio"] for r in rt.synthesize_many(reqs)]
        runs[compiled].append(np.concatenate(list(rt.stream(TEXTS[0], voice, seed=0, max_frames=14))))
        if compiled:
            loops = [s.loop for v in rt._free.values() for s in v]
            assert loops and all(lp.capture_error is None and lp.graphs for lp in loops)
            assert rt.runners(5, "dpmsolver++")["rt_tts_decode"].module.fast  # the fast path compiled
    for eager, compiled in zip(runs[False], runs[True]):
        assert eager.shape == compiled.shape
        peak = float(np.abs(eager).max())
        assert peak > 1e-3 and float(np.abs(compiled - eager).max()) <= 1e-3 * peak
