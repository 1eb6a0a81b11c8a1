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


def test_rows_decode_matches_sdpa_on_views_of_a_larger_cache(tiny_lm, monkeypatch):
    """The "rows" kernel (each row at its own cache length) on the CPU, where its custom op runs the
    variable-length sequences in plain torch: the same layout arithmetic as on CUDA. The cache is a view of the
    engine's shape (rows from an offset, a shorter KV bucket than the buffer), huge values past cache_len."""
    monkeypatch.setenv("VVTRT_DECODE_KERNEL", "rows")
    info, ref, fast = tiny_lm
    g = torch.Generator().manual_seed(2)
    lens = [0, 1, 40, 95, 96, 7]
    pk, pv = _poisoned_cache(info.layers, info.kv_heads, info.head_dim, 160, [0, 0] + lens, g)
    pk, pv = pk[:, 2:, :, :96], pv[:, 2:, :, :96]  # rows 2.. and the first 96 of 160 slots: not contiguous
    emb = torch.randn(len(lens), 1, info.hidden, generator=g)
    cache_len = torch.tensor(lens)
    with torch.inference_mode():
        want, got = ref(emb, pk.contiguous(), pv.contiguous(), cache_len), fast(emb, pk, pv, cache_len)
    for name, a, b in zip(("hidden", "logits", "new_k", "new_v"), want, got):
        assert error_stats(b, a).rel_l2 < 1e-5, name


def test_rows_attention_op_reports_empty_rows_and_traces_whole():
    """An empty row: zero output and -inf log-sum-exp (the merge then takes the new token alone); under
    torch.compile the op stays one opaque call (its fake implementation gives the shapes)."""
    from vvtrt.components.rows_attention import cache_rows_attention

    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 4, 1, 8, generator=g)
    pk, pv = torch.randn(3, 2, 16, 8, generator=g), torch.randn(3, 2, 16, 8, generator=g)
    lens = torch.tensor([0, 16, 5])
    out, lse = cache_rows_attention(q, pk, pv, lens, 0.35)
    assert out.shape == (3, 4, 8) and lse.shape == (3, 4)
    assert torch.equal(out[0], torch.zeros(4, 8)) and torch.isneginf(lse[0]).all() and torch.isfinite(lse[1:]).all()
    compiled = torch.compile(lambda *a: cache_rows_attention(*a, 0.35), backend="eager", fullgraph=True)
    out2, lse2 = compiled(q, pk, pv, lens)
    assert torch.equal(out2, out) and torch.equal(lse2, lse)


def test_rows_attention_bench_smoke_run_on_the_cpu(tmp_path):
    """The kernels' benchmark runs end to end on the CPU (a smoke run, marked as not a performance figure)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rows_attention_bench.py"
    spec = importlib.util.spec_from_file_location("rows_attention_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    assert bench.main([str(out), "--device", "cpu", "--streams", "2", "--bucket", "256", "--iters", "1",
                       "--mixes", "mixed,full"]) == 0
    result = json.loads(out.read_text())
    assert "not a performance figure" in result["note"]
    want = {(m, k) for m in ("mixed", "full") for k in ("gemm", "rows")}
    assert {(r["mix"], r["kernel"]) for r in result["rows"]} == want
    assert min(r["max_len"] for r in result["rows"] if r["mix"] == "full") > 192
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 0


def test_rows_attention_op_takes_any_cache_layout():
    """Caches the engine never passes (one KV head transposed from [B, S, 1, D], K and V laid out apart) give
    what the same values packed give."""
    from vvtrt.components.rows_attention import cache_rows_attention

    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 2, 1, 8, generator=g)
    k_bshd, v_bshd = torch.randn(3, 16, 1, 8, generator=g), torch.randn(3, 16, 1, 8, generator=g)
    lens = torch.tensor([4, 16, 9])
    k, v = k_bshd.transpose(1, 2), v_bshd.transpose(1, 2)  # [3, 1, 16, 8], strides (128, 8, 8, 1)
    packed = {"memory_format": torch.contiguous_format}
    want = cache_rows_attention(q, k.clone(**packed), v.clone(**packed), lens, 0.3)
    for pk, pv in ((k, v), (k, v.clone(**packed))):
        got = cache_rows_attention(q, pk, pv, lens, 0.3)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


def test_rows_plan_made_once_serves_every_layer_and_any_layout():
    """The step's plan (made once from one layer's cache) gives each layer what the op's own plan gives, and a
    plan made for another layout (S_max) is not trusted: the op finds its own sequence starts."""
    from vvtrt.components.rows_attention import cache_rows_attention, rows_plan

    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 4, 1, 8, generator=g)
    pool_k, pool_v = torch.randn(2, 3, 2, 32, 8, generator=g), torch.randn(2, 3, 2, 32, 8, generator=g)
    lens = torch.tensor([0, 12, 7])
    k, v = pool_k[:, :, :, :12], pool_v[:, :, :, :12]  # the engine's bucket view: S = 12 of S_max = 32
    plan = rows_plan(lens, k[0], groups=2)
    assert plan.kv_stride == 32
    for layer in range(2):
        got = cache_rows_attention(q, k[layer], v[layer], None, 0.3, plan)
        want = cache_rows_attention(q, k[layer], v[layer], lens, 0.3)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    packed = k[0].contiguous(), v[0].contiguous()
    got = cache_rows_attention(q, *packed, None, 0.3, plan)  # S_max 12, not the plan's 32
    want = cache_rows_attention(q, *packed, lens, 0.3)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
