"""The traceable wrappers against transformers' own modules (the numerics every export inherits)."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from vvtrt.components.conv_stream import AcousticDecoderStep, SemanticEncoderStep
from vvtrt.components.diffusion import DiffusionSampler, schedule
from vvtrt.components.lm import LMDecode, LMPrefill
from vvtrt.parity.compare import error_stats


def test_presets_are_non_degenerate(tiny_model):
    z = torch.randn(1, 3, 64)
    audio = tiny_model.model.audio_tower.decode(z).audio
    sem = tiny_model.model.semantic_tokenizer_encoder(audio).latents
    assert audio.std() > 0.1 and sem.std() > 0.1  # the default init gives ~1e-6 / ~1e-8
    assert all(float(p.std()) > 0 for n, p in tiny_model.named_parameters() if p.dim() > 1)


def test_presets_are_seeded():
    from vvtrt.model.presets import build_model

    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    c = build_model("tiny", seed=4)
    pa, pb, pc = (next(m.model.diffusion_head.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("fast", [False, True], ids=["sdpa", "flex"])
@pytest.mark.filterwarnings("ignore::UserWarning")  # eager (uncompiled) FlexAttention warns; exact all the same
def test_lm_prefill_and_decode_match_qwen2(tiny_model, tiny_info, fast):
    """Both decode attention paths (SDPA over cat(cache, new); FlexAttention over the cache merged with the
    new token by log-sum-exp) against Qwen2 with a DynamicCache, including a row with an empty cache."""
    lm = tiny_model.model.language_model
    t = 13
    e = torch.randn(1, t, tiny_info.hidden) * 0.5
    cache = DynamicCache(config=tiny_model.config.text_config)
    ref1 = lm(inputs_embeds=e[:, :t - 1], past_key_values=cache, use_cache=True)
    ref2 = lm(inputs_embeds=e[:, t - 1:], past_key_values=cache, use_cache=True)
    logits_ref = tiny_model.lm_head(ref2.last_hidden_state)[:, -1].float()[:, list(tiny_info.control_token_ids)]
    h, _, k, v = LMPrefill(tiny_model, tiny_info)(e[:, :t - 1])
    assert error_stats(h, ref1.last_hidden_state[:, -1:]).rel_l2 < 1e-6
    s = 20
    pk = torch.randn(tiny_info.layers, 2, tiny_info.kv_heads, s, tiny_info.head_dim)  # garbage beyond lengths
    pv = torch.randn_like(pk)
    pk[:, 0, :, :t - 1], pv[:, 0, :, :t - 1] = k[:, 0], v[:, 0]
    emb = e[:, t - 1:].expand(2, 1, -1)
    dec = LMDecode(tiny_model, tiny_info)
    dec.fast = fast
    h2, lg2, nk, _ = dec(emb, pk, pv, torch.tensor([t - 1, 0]))
    assert error_stats(h2[:1], ref2.last_hidden_state).rel_l2 < 1e-6
    assert error_stats(lg2[:1], logits_ref).rel_l2 < 1e-6
    assert error_stats(h2[1:], lm(inputs_embeds=e[:, t - 1:]).last_hidden_state).rel_l2 < 1e-6  # empty context
    ref_k = torch.stack([layer.keys[0, :, -1] for layer in cache.layers])
    assert error_stats(nk[:, 0, :, 0], ref_k).rel_l2 < 1e-6


def test_lm_decode_chunk_of_new_tokens_matches_qwen2(tiny_model, tiny_info):
    """T > 1 new tokens per row (the prefill's chunks) after a cache of another length per row, with garbage
    beyond each row's cache_len: causal among the new tokens, positions from cache_len, K/V of every token."""
    lm = tiny_model.model.language_model
    e = torch.randn(1, 14, tiny_info.hidden, generator=torch.Generator().manual_seed(5)) * 0.5
    past, new = 9, 5
    cache = DynamicCache(config=tiny_model.config.text_config)
    with torch.no_grad():
        lm(inputs_embeds=e[:, :past], past_key_values=cache, use_cache=True)
        ref = lm(inputs_embeds=e[:, past:], past_key_values=cache, use_cache=True).last_hidden_state
        alone = lm(inputs_embeds=e[:, past:]).last_hidden_state  # the same chunk with no context
    s = 24
    pk = torch.randn(tiny_info.layers, 2, tiny_info.kv_heads, s, tiny_info.head_dim)
    pv = torch.randn_like(pk)
    pk[:, 0, :, :past] = torch.stack([layer.keys[0, :, :past] for layer in cache.layers])
    pv[:, 0, :, :past] = torch.stack([layer.values[0, :, :past] for layer in cache.layers])
    dec = LMDecode(tiny_model, tiny_info)
    with torch.no_grad():
        h, logits, nk, nv = dec(e[:, past:].expand(2, new, -1), pk, pv, torch.tensor([past, 0]))
    assert h.shape == (2, 1, tiny_info.hidden) and nk.shape[3] == new and logits.shape == (2, 4)
    assert error_stats(h[:1], ref[:, -1:]).rel_l2 < 1e-6
    assert error_stats(h[1:], alone[:, -1:]).rel_l2 < 1e-6
    ref_k = torch.stack([layer.keys[0, :, past:] for layer in cache.layers])
    ref_v = torch.stack([layer.values[0, :, past:] for layer in cache.layers])
    assert error_stats(nk[:, 0], ref_k).rel_l2 < 1e-6 and error_stats(nv[:, 0], ref_v).rel_l2 < 1e-6


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_matches_transformers(tiny_model, steps, dtype):
    """bf16: bit-identical. fp32: within a few ulp (the conditioning matmuls are batched over the K steps,
    and a matmul with more rows may block its reduction differently)."""
    from diffusers import DPMSolverMultistepScheduler

    m = tiny_model.to(dtype)
    try:
        pos, neg = torch.randn(1, 64).to(dtype), torch.randn(1, 64).to(dtype)
        torch.manual_seed(11)
        noise = torch.randn(2, 64)
        torch.manual_seed(11)
        sch = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
        ref = m._sample_audio_latent(pos, neg, sch, steps, 1.3)
        out = DiffusionSampler(m, steps)(pos, neg, noise[:1], torch.tensor([1.3]))
        if dtype is torch.bfloat16:
            assert torch.equal(out, ref)
        else:
            assert error_stats(out, ref).rel_l2 < 1e-6
    finally:
        tiny_model.to(torch.float32)


def test_schedule_matches_shared_doc_table():
    k10 = schedule(10)
    assert [c.timestep for c in k10] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert k10[0].order == 1 and k10[-1].order == 1 and all(c.order == 2 for c in k10[1:-1])
    assert abs(k10[1].a - 0.963493) < 1e-5 and abs(-k10[1].b - 0.15712) < 1e-5


@pytest.mark.parametrize("fast", [False, True], ids=["conv", "channels-last"])
def test_streaming_steps_match_transformers_cache(tiny_model, tiny_info, fast):
    """>= 16 consecutive frames of the explicit-state steps vs transformers' lazy padding caches, with
    cuDNN-style Conv1d and channels-last (`conv_fast`: the compiled CUDA path)."""
    m = tiny_model.model
    dec, sem = AcousticDecoderStep(tiny_model), SemanticEncoderStep(tiny_model)
    dec.fast = sem.fast = fast
    b, frames = 2, 20
    z = torch.randn(b, frames, 64)
    ds = torch.zeros(b, tiny_info.decoder_state)
    ss = torch.zeros(b, tiny_info.semantic_state)
    cache = scache = None
    chunks = []
    for f in range(frames):
        ref = m.audio_tower.decode(z[:, f:f + 1] / m.latent_scaling_factor - m.latent_bias_factor,
                                   padding_cache=cache, use_cache=True)
        cache = ref.padding_cache
        rsem = m.semantic_tokenizer_encoder(ref.audio, padding_cache=scache, use_cache=True)
        scache = rsem.padding_cache
        audio, ds = dec(z[:, f:f + 1], ds)
        s, ss = sem(audio, ss)
        chunks.append(audio)
        assert error_stats(audio, ref.audio).rel_l2 < 1e-5
        assert error_stats(s, rsem.latents).rel_l2 < 1e-5
    whole = m.audio_tower.decode(z / m.latent_scaling_factor - m.latent_bias_factor).audio
    assert error_stats(torch.cat(chunks, -1), whole).rel_l2 < 1e-5  # streaming == whole sequence


def test_state_layout_sizes(tiny_info):
    # tiny: 15 stateful convs per side, 6,182 encoder state elements; the decoder's
    # ConvTranspose states hold 1 frame instead of 2r-1 (compact, bit-identical).
    assert tiny_info.semantic_state == 6182
    assert tiny_info.decoder_state < 9320


def test_state_concat_stays_capturable(monkeypatch):
    """The 1.5B tokenizers carry 34 states: the flat-state concat is split so no ONNX Concat has more
    than 32 inputs (ONNX Runtime's CUDA Concat refuses more under CUDA-graph capture)."""
    from vvtrt.components.conv_stream import MAX_CONCAT_INPUTS, _cat_capturable

    parts = [torch.randn(2, i + 1) for i in range(70)]
    want = torch.cat(parts, dim=1)
    sizes, real = [], torch.cat
    monkeypatch.setattr(torch, "cat", lambda ts, dim=0: sizes.append(len(ts)) or real(ts, dim=dim))
    assert torch.equal(_cat_capturable(parts), want)
    assert sizes and max(sizes) <= MAX_CONCAT_INPUTS
