"""Realtime components with explicit state, for export: every cache is a plain tensor in and the new
entries are outputs (the caller writes them at slot `cache_len`), so graphs hold no in-place scatters.

KV layout: `[layers, batch, kv_heads, length, head_dim]` in the model dtype; `cache_len [B]` int64 is each
row's number of valid entries and so its next position (rows have their own positions: the positive and
negative TTS rows of one stream, or rows of different streams, share a batch).

`TtsDecodeStep.fast = True` (set by the torch runner when it compiles for CUDA, as for the long-form
`LMDecode`; never exported) attends with `vvtrt.components.lm.gqa_decode_attention`: K/V read once, never
concatenated with the new entry. The exported path concatenates the cache bucket with the new entries in
every layer; neither path repeats K/V per query head (`gqa_rows_attention`: the query heads of a KV head are
rows of one attention). q|k|v and gate|up are one matmul each (`FusedLinear`).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from vvtrt.components.conv_stream import AcousticDecoderStep
from vvtrt.components.fused_linear import FusedLinear, swiglu
from vvtrt.components.lm import gqa_decode_attention, gqa_rows_attention


class _Stack(nn.Module):
    """A Qwen2 decoder stack (`Qwen2Model` minus its embedding) over `T` new tokens per row against a
    static cache: `x [B, T, H]`, `past_k/v [L, B, KV, S, D]`, `cache_len [B]` -> `h [B, T, H]` (after the
    stack's final norm, Identity for the text LM), `new_k/v [L, B, KV, T, D]`."""

    def __init__(self, qwen, cfg):
        super().__init__()
        self.layers, self.norm, self.rotary = qwen.layers, qwen.norm, qwen.rotary_emb
        # q|k|v and gate|up as one matmul each (views of the same weights, see fused_linear)
        self.qkv = nn.ModuleList(FusedLinear(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj)
                                 for l in self.layers)
        self.gate_up = nn.ModuleList(FusedLinear(l.mlp.gate_proj, l.mlp.up_proj) for l in self.layers)
        self.q_heads, self.kv_heads, self.head_dim = cfg.q_heads, cfg.kv_heads, cfg.head_dim
        self.groups = cfg.q_heads // cfg.kv_heads

    @staticmethod
    def _mask(s: int, t: int, cache_len):
        """`[B, 1, T, S+T]` bool: each row's valid cache slots, then causal over the new tokens."""
        b = cache_len.shape[0]
        slots = torch.arange(s, device=cache_len.device)[None, :] < cache_len[:, None]              # [B, S]
        causal = torch.ones(t, t, dtype=torch.bool, device=cache_len.device).tril()                 # [T, T]
        return torch.cat([slots[:, None, None, :].expand(b, 1, t, s), causal[None, None].expand(b, 1, t, t)], -1)

    def forward(self, x, past_k, past_v, cache_len, fast: bool = False):
        """`fast` (decode only, T = 1): the gemm decode attention instead of SDPA over cat(cache, new)."""
        b, t, _ = x.shape
        s, scale = past_k.shape[3], self.head_dim ** -0.5
        pos = cache_len[:, None] + torch.arange(t, device=x.device)[None, :]                         # [B, T]
        cos, sin = self.rotary(x, pos)
        fast = fast and t == 1
        mask = None if fast else self._mask(s, t, cache_len)
        valid = (torch.arange(s, device=x.device) < cache_len.view(b, 1, 1, 1)) if fast else None
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            q, k, v = (y.reshape(b, t, -1, self.head_dim).transpose(1, 2)
                       for y in self.qkv[i](layer.input_layernorm(x)))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if fast:
                o = gqa_decode_attention(q, past_k[i], past_v[i], k, v, valid, scale, self.groups)
            else:
                kk, vv = torch.cat([past_k[i], k], dim=2), torch.cat([past_v[i], v], dim=2)
                o = gqa_rows_attention(q, kk, vv, mask, scale, self.groups)
            x = x + att.o_proj(o)
            x = x + swiglu(layer.mlp, self.gate_up[i], layer.post_attention_layernorm(x))
            ks.append(k)
            vs.append(v)
        return self.norm(x), torch.stack(ks), torch.stack(vs)


class TextWindowStep(nn.Module):
    """One text window: `ids [B, T]` (T <= 5) through the text LM, then the TTS LM with the text type.
    Inputs: ids, `lm_k/lm_v`, `lm_len`, `tts_k/tts_v`, `tts_len`. Outputs: `hidden [B, 1, H]` (the TTS LM's
    last position: the next positive condition), `lm_new_k/v`, `tts_new_k/v` (T entries per layer)."""

    def __init__(self, model):
        super().__init__()
        cfg = model.rt_config
        self.embed = model.model.language_model.embed_tokens
        self.text_type = model.model.tts_input_types
        self.lm = _Stack(model.model.language_model, cfg)
        self.tts = _Stack(model.model.tts_language_model, cfg)

    def forward(self, ids, lm_k, lm_v, lm_len, tts_k, tts_v, tts_len):
        h, lk, lv = self.lm(self.embed(ids), lm_k, lm_v, lm_len)
        h, tk, tv = self.tts(h + self.text_type.weight[1], tts_k, tts_v, tts_len)
        return h[:, -1:], lk, lv, tk, tv


class TtsDecodeStep(nn.Module):
    """One speech position for a batch of rows (positive and negative rows alike): `embeds [B, 1, H]`
    (connector output, type included), `past_k/v`, `cache_len [B]` -> `hidden [B, 1, H]`,
    `eos_logit [B]` fp32 (the EOS head on `hidden`; speech ends when it is > 0, i.e. sigmoid > 0.5;
    meaningful for positive rows; a logit, not a probability, keeps the decision's margin absolute), `new_k/v`.
    `fast`: see the module doc."""

    fast = False

    def __init__(self, model):
        super().__init__()
        self.tts = _Stack(model.model.tts_language_model, model.rt_config)
        self.eos = model.tts_eos_classifier

    def forward(self, embeds, past_k, past_v, cache_len):
        h, k, v = self.tts(embeds, past_k, past_v, cache_len, self.fast)
        return h, self.eos(h[:, 0]).float()[:, 0], k, v


class ConnectorStep(nn.Module):
    """`latent [B, 1, 64]` (unscaled) -> `embeds [B, 1, H]`: the next TTS input, speech type included."""

    def __init__(self, model):
        super().__init__()
        self.proj = model.model.multi_modal_projector
        self.types = model.model.tts_input_types

    def forward(self, latent):
        return self.proj(latent) + self.types.weight[0]


class RealtimeDecoderStep(AcousticDecoderStep):
    """vvtrt's streaming σ-VAE decoder step (`latent [B, 1, 64]`, `state [B, N]` -> `audio [B, 1, 3200]`,
    `state_out`): the Realtime model carries the decoder under the same names."""
