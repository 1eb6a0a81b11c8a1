"""The Qwen2 LLM as one explicit-KV component, `LMDecode`: T new tokens for a batch of rows against a static,
preallocated cache. Decode is T = 1 for every row of the batch; the prompt prefill is the same component run
on chunks of the prompt (batch 1, T up to the export's chunk size), each chunk writing its K/V into the cache
the next chunk attends to (`vvtrt.runtime.prefill`). One graph, so one copy of the LLM weights on every backend.
Built from the transformers layers' own submodules so numerics match `Qwen2Model` while the cache is a plain
tensor. `LMPrefill` (a whole prompt at once) is kept as a torch-only reference for tests; it is not exported.

KV layout everywhere: ``[layers, batch, kv_heads, length, head_dim]`` in the model dtype.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from vvtrt.components.fused_linear import FusedLinear, swiglu
from vvtrt.components.info import ModelInfo
from vvtrt.components.rows_attention import (cache_rows_attention, merge_new_token, packed_causal_attention,
                                             packed_starts, rows_plan)

KV_BLOCK = 128  # FlexAttention's KV block: the decode kernel reads the cache in blocks of this many slots
DECODE_KERNELS = ("gemm", "flex", "rows")


def decode_kernel() -> str:
    """The attention of compiled CUDA decode steps (`LMDecode.fast`): "gemm" (GQA-folded batched matmuls over
    the bucket), "flex" (FlexAttention split-KV over the listed blocks) or "rows" (FlashAttention's
    variable-length kernel over each row's own cache length, `vvtrt.components.rows_attention`). On an H100
    (`e7a0d21`, benchmarks/decode_cost.py) flex took 1.31 ms per layer at a 64k context against 0.28 ms for
    SDPA over the whole bucket; VVTRT_DECODE_KERNEL picks one for comparisons."""
    name = os.environ.get("VVTRT_DECODE_KERNEL", "gemm")
    if name not in DECODE_KERNELS:
        raise ValueError(f"VVTRT_DECODE_KERNEL must be one of {', '.join(DECODE_KERNELS)}, got {name!r}")
    return name


def gqa_decode_attention(q, past_k, past_v, k, v, valid, scale: float, groups: int):
    """One decode token per row: softmax over [cache slots where `valid` ; the new token], GQA folded into the
    rows of two batched matmuls (the G query heads of a KV head are G rows against that head's cache: K and V
    read once, never concatenated or repeated); scores, softmax and the merge with the new token in fp32.
    q [B, Hq, 1, D], past_k/v [B, Hkv, S, D], k/v [B, Hkv, 1, D], valid [B, 1, 1, S] bool -> [B, 1, Hq*D].
    Reads the whole bucket: the frame loop's KV buckets (powers of 2) keep that within 2x the context."""
    b, hq, _, d = q.shape
    qg = q.reshape(b, hq // groups, groups, d)  # head h = kv_head * G + g, as repeat_interleave lays them out
    scores = torch.matmul(qg, past_k.transpose(-1, -2)).float() * scale  # [B, Hkv, G, S]
    scores = scores.masked_fill(~valid, float("-inf"))
    s_self = (qg.float() * k.float()).sum(-1, keepdim=True) * scale  # [B, Hkv, G, 1]
    m = torch.maximum(scores.amax(-1, keepdim=True), s_self)  # finite: the new token is always there
    e_past, e_self = torch.exp(scores - m), torch.exp(s_self - m)
    denom = e_past.sum(-1, keepdim=True) + e_self
    out = (torch.matmul(e_past.to(q.dtype), past_v).float() + e_self * v.float()) / denom  # [B, Hkv, G, D]
    return out.to(q.dtype).reshape(b, 1, hq * d)


def gqa_rows_attention(q, k, v, mask, scale: float, groups: int):
    """GQA without expanding K/V: the G query heads that share a KV head, times the T new tokens, become G*T
    query rows of that head (row g*T + t), so K/V are read once, never repeated. q [B, Hq, T, D], k/v
    [B, Hkv, S, D], `mask [B, 1, T, S]` bool -> [B, T, Hq*D]. Exportable (ONNX Attention)."""
    b, hq, t, d = q.shape
    qg = q.reshape(b, hq // groups, groups * t, d)  # head h = kv_head * G + g
    # ONNX's Attention op wants the mask's query axis spelled out (no broadcast): [B, 1, G*T, S]
    mask = mask.unsqueeze(2).expand(-1, -1, groups, -1, -1).reshape(b, 1, groups * t, mask.shape[-1])
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)  # [B, Hkv, G*T, D]
    return out.reshape(b, hq, t, d).transpose(1, 2).reshape(b, t, hq * d)


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

    def _attend_rows(self, layer, q, k, v, mask):
        return layer.self_attn.o_proj(gqa_rows_attention(q, k, v, mask, self.scale, self.groups))

    def _mlp(self, i, layer, x):
        return x + swiglu(layer.mlp, self.gate_up[i], layer.post_attention_layernorm(x))

    def _logits4(self, h_last):
        # h_last: [B, H] -> [B, 4] fp32 (transformers computes lm_head in the model dtype, then upcasts)
        return F.linear(h_last, self.head4).float()


class LMPrefill(_LMCore):
    """Reference only (tests): `embeds [B, T, H]` -> `hidden [B, 1, H]` (post-norm, last position), `logits
    [B, 4]` fp32, `k, v [L, B, Hkv, T, D]`, the whole prompt in one causal pass."""

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
    """T new tokens for a batch of rows (decode: T = 1, the positive and negative CFG rows of each stream are
    rows of one batch; prefill: one row, a chunk of the prompt).

    Inputs: `embeds [B, T, H]`, `past_k/past_v [L, B, Hkv, S, D]` (a static cache of length S),
    `cache_len [B]` int64 (valid cache entries per row; the new tokens' positions are cache_len + 0..T-1).
    Outputs: `hidden [B, 1, H]` (post-norm, last new token), `logits [B, 4]` fp32 (of that token),
    `new_k/new_v [L, B, Hkv, T, D]` to be written at slots cache_len.. by the caller (keeps the graph free of
    in-place scatters). Each new token attends to its row's cache slots < cache_len and, causally, to the new
    tokens up to itself.

    `fast = True` (set by the torch runner when it compiles for CUDA; never exported) runs decode steps (T = 1)
    with FlexAttention's split-KV decoding kernel instead of SDPA over `cat(cache, new)`, with a block-sparse
    mask built on the device from cache_len (`_block_mask`): only the KV blocks below each row's cache_len are
    read, so a frame costs what the actual context costs, not the bucket. The cache part and the new token are
    merged exactly by their log-sum-exps, so nothing is copied. Chunks (T > 1) always take the SDPA path.
    """

    fast = False

    def forward(self, embeds, past_k, past_v, cache_len):
        b, t, _ = embeds.shape
        s = past_k.shape[3]
        fast = decode_kernel() if self.fast and t == 1 else ""
        pos = cache_len.unsqueeze(1) + torch.arange(t, device=embeds.device).unsqueeze(0)  # [B, T]
        cos, sin = self.rotary(embeds, pos)
        mask = None if fast else self._mask(s, t, cache_len)
        blocks = self._block_mask(s, cache_len) if fast == "flex" else None
        valid = (torch.arange(s, device=embeds.device) < cache_len.view(b, 1, 1, 1)) if fast == "gemm" else None
        plan = rows_plan(cache_len, past_k[0], self.groups) if fast == "rows" else None  # once for every layer
        x = embeds
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x), cos, sin)
            if fast == "gemm":
                x = x + self._attend_gemm(layer, q, past_k[i], past_v[i], k, v, valid)
            elif fast == "rows":
                x = x + self._attend_cache_rows(layer, q, past_k[i], past_v[i], k, v, plan)
            elif fast:
                x = x + self._attend_split(layer, q, past_k[i], past_v[i], k, v, blocks)
            else:
                kk = torch.cat([past_k[i], k], dim=2)
                vv = torch.cat([past_v[i], v], dim=2)
                x = x + self._attend_rows(layer, q, kk, vv, mask)
            x = self._mlp(i, layer, x)
            ks.append(k)
            vs.append(v)
        h = self.norm(x[:, -1:])  # per-position RMSNorm: the last position's norm alone is the same
        return h, self._logits4(h[:, 0]), torch.stack(ks), torch.stack(vs)

    def prefill_packed(self, embeds, lens: list[int]):
        """The first chunks of several prompts packed back to back, no padding (torch only, never exported):
        `embeds [1, N, H]`, prompt `i` the next `lens[i]` tokens from position 0 -> `k, v [L, 1, Hkv, N, D]`
        in the same packing. Each prompt's K/V are its own causal prefill's, up to the GEMMs' rounding."""
        dev = embeds.device
        pos = torch.cat([torch.arange(n) for n in lens]).to(dev).unsqueeze(0)  # [1, N]: one host-to-device copy
        cos, sin = self.rotary(embeds, pos)
        starts = packed_starts(lens, dev)  # one host-to-device copy for every layer
        x, ks, vs = embeds, [], []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x), cos, sin)  # [1, H, N, D]
            out = packed_causal_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                          lens, self.scale, starts)  # [N, Hq, D]
            x = x + layer.self_attn.o_proj(out.reshape(1, out.shape[0], -1))
            x = self._mlp(i, layer, x)
            ks.append(k)
            vs.append(v)
        return torch.stack(ks), torch.stack(vs)

    @staticmethod
    def _mask(s: int, t: int, cache_len):
        """`[B, 1, T, S+T]` bool: each row's valid cache slots, then the new tokens, causally."""
        dev = cache_len.device
        slots = torch.arange(s, device=dev).unsqueeze(0) < cache_len.unsqueeze(1)  # [B, S]
        new = torch.arange(t, device=dev)
        causal = new.unsqueeze(1) >= new.unsqueeze(0)  # [T, T]
        b = cache_len.shape[0]
        return torch.cat([slots[:, None, :].expand(b, t, s), causal[None].expand(b, t, t)], dim=2)[:, None]

    @staticmethod
    def _block_mask(s: int, cache_len):
        """FlexAttention `BlockMask` over a cache of `s` slots for one query per row: the blocks wholly below
        cache_len are full (no mask evaluated), the one it ends in is partial (masked per slot), the rest are
        never listed and never read. Its tensors are computed here, on the device, from cache_len: no host
        sync, so a CUDA graph replays it for any cache_len."""
        from torch.nn.attention.flex_attention import BlockMask

        b, n = cache_len.shape[0], -(-s // KV_BLOCK)
        full = (cache_len // KV_BLOCK).to(torch.int32)  # [B]
        part = (cache_len % KV_BLOCK != 0).to(torch.int32)
        order = torch.arange(n, device=cache_len.device, dtype=torch.int32)
        full_idx = order.expand(b, n)
        part_idx = (full.unsqueeze(1) + order).clamp(max=n - 1)  # the partial block first

        def valid(bi, h, q_idx, kv_idx):
            return kv_idx < cache_len[bi]

        shape = (b, 1, 1)
        return BlockMask.from_kv_blocks(part.view(shape), part_idx.reshape(b, 1, 1, n).contiguous(),
                                        full.view(shape), full_idx.reshape(b, 1, 1, n).contiguous(),
                                        BLOCK_SIZE=KV_BLOCK, mask_mod=valid, seq_lengths=(1, s),
                                        compute_q_blocks=False)

    def _attend_gemm(self, layer, q, past_k, past_v, k, v, valid):
        return layer.self_attn.o_proj(gqa_decode_attention(q, past_k, past_v, k, v, valid, self.scale, self.groups))

    def _attend_split(self, layer, q, past_k, past_v, k, v, blocks):
        """softmax over [cache slots < cache_len ; new token] as FlexAttention over the listed cache blocks,
        merged in fp32 with the new token's own score through the log-sum-exps."""
        from torch.nn.attention import flex_attention as fa

        if hasattr(fa, "AuxRequest"):  # torch >= 2.9
            out, aux = fa.flex_attention(q, past_k, past_v, block_mask=blocks, scale=self.scale, enable_gqa=True,
                                         return_aux=fa.AuxRequest(lse=True))
            lse = aux.lse
        else:
            out, lse = fa.flex_attention(q, past_k, past_v, block_mask=blocks, scale=self.scale, enable_gqa=True,
                                         return_lse=True)
        # out [B, Hq, 1, D]; lse [B, Hq, 1] fp32 (-inf for a row with an empty cache)
        merged = merge_new_token(out[:, :, 0], lse[:, :, 0], q, k, v, self.scale, self.groups)
        return layer.self_attn.o_proj(merged)

    def _attend_cache_rows(self, layer, q, past_k, past_v, k, v, plan):
        """softmax over [cache slots < cache_len ; new token]: the cache part by FlashAttention at each row's
        own length (the step's `plan`), merged in fp32 with the new token's own score through the log-sum-exps."""
        out, lse = cache_rows_attention(q, past_k, past_v, None, self.scale, plan)
        return layer.self_attn.o_proj(merge_new_token(out, lse, q, k, v, self.scale, self.groups))


class TokenEmbed(nn.Module):
    """`token [B]` int64 -> `embeds [B, 1, H]` (the LLM's input embedding table)."""

    def __init__(self, model):
        super().__init__()
        self.table = model.model.language_model.embed_tokens

    def forward(self, token):
        return self.table(token).unsqueeze(1)
