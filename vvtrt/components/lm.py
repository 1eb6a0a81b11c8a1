"""The Qwen2 LLM as two explicit-KV components: `LMPrefill` (prompt -> KV entries) and `LMDecode` (one
token for a batch of rows against a static, preallocated cache). Built from the transformers layers'
own submodules so numerics match `Qwen2Model` while the cache is a plain tensor.

KV layout everywhere: ``[layers, batch, kv_heads, length, head_dim]`` in the model dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from vvtrt.components.fused_linear import FusedLinear, swiglu
from vvtrt.components.info import ModelInfo


class _LMCore(nn.Module):
    """Shared pieces: the decoder layers, final norm, rotary embedding and the 4-row control-token head."""

    def __init__(self, model, info: ModelInfo):
        super().__init__()
        lm = model.model.language_model
        self.layers = lm.layers
        self.norm = lm.norm
        self.rotary = lm.rotary_emb
        self.info = info
        # q|k|v and gate|up as one matmul each (views of the same weights, see fused_linear)
        self.qkv = nn.ModuleList(FusedLinear(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj)
                                 for l in self.layers)
        self.gate_up = nn.ModuleList(FusedLinear(l.mlp.gate_proj, l.mlp.up_proj) for l in self.layers)
        ids = torch.tensor(info.control_token_ids)
        # Only the 4 control-token rows of lm_head: never the 151k-row vocabulary.
        self.register_buffer("head4", model.lm_head.weight.detach()[ids].clone(), persistent=False)
        self.groups = info.q_heads // info.kv_heads
        self.scale = info.head_dim ** -0.5

    def _qkv(self, i, x, cos, sin):
        b, t, _ = x.shape
        q, k, v = (y.reshape(b, t, -1, self.info.head_dim).transpose(1, 2) for y in self.qkv[i](x))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v  # q: [B, Hq, T, D]; k, v: [B, Hkv, T, D]

    def _attend(self, layer, q, k, v, mask, causal: bool):
        kk = k.repeat_interleave(self.groups, dim=1)
        vv = v.repeat_interleave(self.groups, dim=1)
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=causal, scale=self.scale)
        b, _, t, _ = out.shape
        return layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _attend_one(self, layer, q, k, v, mask):
        """Decode (one query per row) without expanding K/V for GQA: the G query heads that share a KV
        head become G query positions of that head, so K/V are read once, never repeated."""
        b, hq, _, d = q.shape
        qg = q.reshape(b, hq // self.groups, self.groups, d)  # head h = kv_head * G + g
        # ONNX's Attention op wants the mask's query axis spelled out (no broadcast): [B, 1, G, S]
        mask = mask.expand(-1, -1, self.groups, -1)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=self.scale)  # [B, Hkv, G, D]
        return layer.self_attn.o_proj(out.reshape(b, 1, hq * d))

    def _mlp(self, i, layer, x):
        return x + swiglu(layer.mlp, self.gate_up[i], layer.post_attention_layernorm(x))

    def _logits4(self, h_last):
        # h_last: [B, H] -> [B, 4] fp32 (transformers computes lm_head in the model dtype, then upcasts)
        return F.linear(h_last, self.head4).float()


class LMPrefill(_LMCore):
    """`embeds [B, T, H]` -> `hidden [B, 1, H]` (post-norm, last position), `logits [B, 4]` fp32,
    `k, v [L, B, Hkv, T, D]` (the entries to write into cache slots 0..T-1)."""

    def forward(self, embeds):
        b, t, _ = embeds.shape
        pos = torch.arange(t, device=embeds.device).unsqueeze(0).expand(b, t)
        cos, sin = self.rotary(embeds, pos)
        x = embeds
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x), cos, sin)
            x = x + self._attend(layer, q, k, v, None, causal=True)
            x = self._mlp(i, layer, x)
            ks.append(k)
            vs.append(v)
        h = self.norm(x)[:, -1:, :]
        return h, self._logits4(h[:, 0]), torch.stack(ks), torch.stack(vs)


class LMDecode(_LMCore):
    """One step for a batch of rows (positive and negative CFG rows of each stream are rows of one batch).

    Inputs: `embeds [B, 1, H]`, `past_k/past_v [L, B, Hkv, S, D]` (a static cache of length bucket S),
    `cache_len [B]` int64 (valid entries per row; also the row's position id).
    Outputs: `hidden [B, 1, H]`, `logits [B, 4]` fp32, `new_k/new_v [L, B, Hkv, 1, D]` to be written at
    slot `cache_len` by the caller (keeps the graph free of in-place scatters).

    `fast = True` (set by the torch runner when it compiles for CUDA; never exported) attends with
    FlexAttention's split-KV decoding kernel instead of SDPA over `cat(cache, new)`: one query row per KV
    head leaves SDPA's kernels with a handful of thread blocks walking the whole bucket (measured on the
    H100: 26 us a layer, 0.77 ms of a 1.5B frame). The cache part and the new token are merged exactly
    by their log-sum-exps, so nothing is copied and the cache is read once.
    """

    fast = False

    def forward(self, embeds, past_k, past_v, cache_len):
        s = past_k.shape[3]
        pos = cache_len.unsqueeze(1)  # [B, 1]
        cos, sin = self.rotary(embeds, pos)
        mask = None if self.fast else self._mask(s, cache_len)
        x = embeds
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x), cos, sin)
            if self.fast:
                x = x + self._attend_split(layer, q, past_k[i], past_v[i], k, v, cache_len)
            else:
                kk = torch.cat([past_k[i], k], dim=2)
                vv = torch.cat([past_v[i], v], dim=2)
                x = x + self._attend_one(layer, q, kk, vv, mask)
            x = self._mlp(i, layer, x)
            ks.append(k)
            vs.append(v)
        h = self.norm(x)
        return h, self._logits4(h[:, 0]), torch.stack(ks), torch.stack(vs)

    @staticmethod
    def _mask(s: int, cache_len):
        """`[B, 1, 1, S+1]` bool: each row's valid cache slots, then the new token itself."""
        slots = torch.arange(s, device=cache_len.device).unsqueeze(0) < cache_len.unsqueeze(1)  # [B, S]
        return torch.cat([slots, torch.ones_like(slots[:, :1])], dim=1)[:, None, None, :]

    def _attend_split(self, layer, q, past_k, past_v, k, v, cache_len):
        """softmax over [cache slots < cache_len ; new token] as FlexAttention over the cache, merged in
        fp32 with the new token's own score through the log-sum-exps."""
        from torch.nn.attention import flex_attention as fa

        def valid(score, b, h, q_idx, kv_idx):
            return torch.where(kv_idx < cache_len[b], score, -float("inf"))

        b, hq, _, d = q.shape
        if hasattr(fa, "AuxRequest"):  # torch >= 2.9
            out, aux = fa.flex_attention(q, past_k, past_v, score_mod=valid, scale=self.scale, enable_gqa=True,
                                         return_aux=fa.AuxRequest(lse=True))
            lse = aux.lse
        else:
            out, lse = fa.flex_attention(q, past_k, past_v, score_mod=valid, scale=self.scale, enable_gqa=True,
                                         return_lse=True)
        # out [B, Hq, 1, D]; lse [B, Hq, 1] fp32
        k_self = k.repeat_interleave(self.groups, dim=1).float()  # [B, Hq, 1, D]: 1 token, tiny
        v_self = v.repeat_interleave(self.groups, dim=1).float()
        s_self = (q.float() * k_self).sum(-1) * self.scale  # [B, Hq, 1]
        m = torch.maximum(lse, s_self)
        w_past = torch.exp(lse - m)  # 0 for a row with an empty cache (lse = -inf)
        w_self = torch.exp(s_self - m)
        past = torch.where(w_past[..., None] > 0, out.float() * w_past[..., None], 0.0)
        merged = (past + v_self * w_self[..., None]) / (w_past + w_self)[..., None]
        return layer.self_attn.o_proj(merged.to(q.dtype).transpose(1, 2).reshape(b, 1, hq * d))


class TokenEmbed(nn.Module):
    """`token [B]` int64 -> `embeds [B, 1, H]` (the LLM's input embedding table)."""

    def __init__(self, model):
        super().__init__()
        self.table = model.model.language_model.embed_tokens

    def forward(self, token):
        return self.table(token).unsqueeze(1)
