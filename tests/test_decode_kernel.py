"""The "gemm" decode attention (`LMDecode.fast`, the kernel compiled CUDA decode steps use) is plain torch, so
its arithmetic is checked here on the CPU in fp32 against the exported SDPA path: rows of different cache
lengths (0, partial, full), slots past cache_len filled with huge values that must be masked."""
from __future__ import annotations

import pytest
import torch

from vvtrt.parity.compare import error_stats


@pytest.fixture(scope="module")
def tiny_lm():
    from vvtrt.components.info import ModelInfo
    from vvtrt.components.lm import LMDecode
    from vvtrt.model.presets import build_model

    model = build_model("tiny")
    info = ModelInfo.from_model(model)
    ref, fast = LMDecode(model, info).eval(), LMDecode(model, info).eval()
    fast.fast = True
    return info, ref, fast


def _poisoned_cache(layers, kv_heads, head_dim, s, lens, g):
    """Random K/V caches of `s` slots for rows of valid lengths `lens`, huge values in every slot past them."""
    shape = (layers, len(lens), kv_heads, s, head_dim)
    pk, pv = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for row, n in enumerate(lens):
        pk[:, row, :, n:], pv[:, row, :, n:] = 3e4, -3e4
    return pk, pv


def test_gemm_decode_matches_sdpa(tiny_lm, monkeypatch):
    monkeypatch.setenv("VVTRT_DECODE_KERNEL", "gemm")
    info, ref, fast = tiny_lm
    g = torch.Generator().manual_seed(0)
    lens = [0, 1, 40, 95, 96]
    pk, pv = _poisoned_cache(info.layers, info.kv_heads, info.head_dim, 96, lens, g)
    emb = torch.randn(len(lens), 1, info.hidden, generator=g)
    cache_len = torch.tensor(lens)
    with torch.inference_mode():
        want, got = ref(emb, pk, pv, cache_len), fast(emb, pk, pv, cache_len)
    for name, a, b in zip(("hidden", "logits", "new_k", "new_v"), want, got):
        assert error_stats(b, a).rel_l2 < 1e-5, name


def test_unknown_decode_kernel_is_refused(monkeypatch):
    from vvtrt.components.lm import decode_kernel

    monkeypatch.setenv("VVTRT_DECODE_KERNEL", "nope")
    with pytest.raises(ValueError, match="VVTRT_DECODE_KERNEL"):
        decode_kernel()


def test_realtime_tts_decode_fast_path_matches_the_exported_path():
    """`TtsDecodeStep.fast` (compiled CUDA runs) uses the same gemm attention: equal to the exported SDPA path
    on rows of different lengths with huge values past each row's cache_len."""
    from vvtrt.realtime.presets import new_model, preset_config
    from vvtrt.realtime.steps import TtsDecodeStep

    cfg = preset_config("tiny-realtime")
    model = new_model(cfg, device="cpu").eval()
    ref, fast = TtsDecodeStep(model).eval(), TtsDecodeStep(model).eval()
    fast.fast = True
    g = torch.Generator().manual_seed(1)
    lens = [0, 1, 20, 47, 48]
    pk, pv = _poisoned_cache(cfg.tts_layers, cfg.kv_heads, cfg.head_dim, 48, lens, g)
    emb = torch.randn(len(lens), 1, cfg.hidden, generator=g) * 0.5
    with torch.inference_mode():
        want, got = ref(emb, pk, pv, torch.tensor(lens)), fast(emb, pk, pv, torch.tensor(lens))
    for name, a, b in zip(("hidden", "eos_logit", "new_k", "new_v"), want, got):
        assert error_stats(b, a).rel_l2 < 1e-5, name
