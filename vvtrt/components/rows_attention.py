"""Decode attention at each row's own length: one query token per row against the row's first `cache_len` cache
slots, read through FlashAttention's variable-length kernel with `seqused_k`, so a step of short and long rows
costs what their contexts cost, not rows x the bucket (the "rows" kernel of `vvtrt.components.lm`).

The cache is `[B, Hkv, S, D]` per layer, a view of a larger `[rows, Hkv, S_max, D]` buffer (the serving
engine's KV bucket). Every (row, KV head) pair is one sequence of the variable-length batch, with its G query
heads as G query tokens (GQA without repeating K/V): the keys are the cache's own memory seen as one head of
`(row * Hkv + head) * S_max + slot` tokens, with sequence starts `j * S_max` and used lengths `cache_len`, so
nothing is copied. Exposed as the custom op `vvtrt::cache_rows_attention` so `torch.compile` keeps it whole;
on a device without FlashAttention (the CPU) the op runs the same sequences one by one in plain torch, which
is what the CPU tests check the layout arithmetic with.

The same kernel, causal, runs the packed prefill (`packed_causal_attention`): several prompts back to back
without padding, each attending within itself.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def _layout_stride(cache: torch.Tensor, s: int) -> int:
    """S_max of `cache [B, Hkv, S, D]` read in place (the slots between one (row, head) sequence's start and
    the next), or `s` where its layout does not allow that (`_flat` then packs it)."""
    b, hkv, _, d = cache.shape
    step = cache.stride(1) if hkv > 1 else cache.stride(0) if b > 1 else s * d  # a size-1 axis's stride is free
    smax = step // d
    laid_out = (cache.stride(3) == 1 and cache.stride(2) == d and step % d == 0 and smax >= s
                and (hkv == 1 or b == 1 or cache.stride(0) == hkv * step))
    return smax if laid_out else 0


def _flat(cache: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
    """`cache [B, Hkv, S, D]` as `[tokens, 1, D]` over its own memory (no copy) and S_max; a cache laid out
    otherwise is copied to that layout."""
    b, hkv, _, d = cache.shape
    smax = _layout_stride(cache, s)
    if not smax:
        cache, smax = cache.clone(memory_format=torch.contiguous_format), s
    return cache.as_strided(((b * hkv - 1) * smax + s, 1, d), (d, d, 1)), smax


def _varlen_torch(q, k, v, cu_q, cu_k, used, scale):
    """The variable-length kernel's arithmetic in plain torch, one sequence at a time (devices without it)."""
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.full((q.shape[0],), float("inf"), dtype=torch.float32, device=q.device)  # as the kernel: +inf
    for j in range(cu_q.numel() - 1):
        q0, q1, k0, n = int(cu_q[j]), int(cu_q[j + 1]), int(cu_k[j]), int(used[j])
        if n == 0:
            continue
        scores = torch.matmul(q[q0:q1, 0].float(), k[k0:k0 + n, 0].float().T) * scale  # [G, n]
        lse[q0:q1] = torch.logsumexp(scores, dim=-1)
        out[q0:q1, 0] = torch.matmul(torch.softmax(scores, dim=-1), v[k0:k0 + n, 0].float()).to(q.dtype)
    return out, lse


def _varlen_flash(q, k, v, cu_q, cu_k, used, max_q, max_k, scale):
    out, lse = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False,
                                                        scale=scale, seqused_k=used)[:2]
    return out, lse.reshape(-1)  # [H=1, total_q] or [seqs, 1, max_q]: both in (sequence, query) order


class RowsPlan(NamedTuple):
    """A step's variable-length metadata, computed once and shared by every layer (each layer's cache is laid
    out alike): per (row, KV head) sequence its used length, whether its G queries see any slot, and the query
    and key sequence starts; `kv_stride` is S_max, the slots between one sequence's start and the next."""
    used: torch.Tensor  # [B * Hkv] int32
    live: torch.Tensor  # [B * Hq] bool
    cu_q: torch.Tensor  # [B * Hkv + 1] int32
    cu_k: torch.Tensor  # [B * Hkv + 1] int32
    kv_stride: int


def rows_plan(cache_len: torch.Tensor, past_k: torch.Tensor, groups: int) -> RowsPlan:
    """The plan of a step over caches laid out as `past_k [B, Hkv, S, D]` (one layer's) for `cache_len [B]`."""
    b, hkv, s, _ = past_k.shape
    smax = _layout_stride(past_k, s) or s  # a cache that is not laid out is packed by _flat: S_max = S
    step = torch.arange(b * hkv + 1, device=cache_len.device, dtype=torch.int32)
    used = cache_len.clamp(0, s).to(torch.int32).repeat_interleave(hkv)
    return RowsPlan(used, used.repeat_interleave(groups) > 0, step * groups, step * smax, smax)


def cache_rows_attention(q, past_k, past_v, cache_len, scale: float, plan: RowsPlan | None = None):
    """`q [B, Hq, 1, D]` against each row's slots `< cache_len` of `past_k/past_v [B, Hkv, S, D]` -> `out
    [B, Hq, D]` (zeros for an empty row) and `lse [B, Hq]` fp32 (-inf for an empty row). `plan`: the step's
    `rows_plan` (computed here when not given)."""
    if plan is None:
        plan = rows_plan(cache_len, past_k, q.shape[1] // past_k.shape[1])
    return _rows_op(q, past_k, past_v, plan.used, plan.live, plan.cu_q, plan.cu_k, plan.kv_stride, scale)


@torch.library.custom_op("vvtrt::cache_rows_attention", mutates_args=())
def _rows_op(q: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, used: torch.Tensor, live: torch.Tensor,
             cu_q: torch.Tensor, cu_k: torch.Tensor, kv_stride: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, hq, _, d = q.shape
    hkv, s = past_k.shape[1], past_k.shape[2]
    groups, seqs = hq // hkv, b * hkv
    kf, smax = _flat(past_k, s)
    vf, vmax = _flat(past_v, s)
    if vmax != smax:  # K and V laid out differently: both packed (never in the engine's cache)
        (kf, smax), (vf, _) = _flat(past_k.contiguous(), s), _flat(past_v.contiguous(), s)
    if smax != kv_stride:  # this layer's cache is laid out unlike the plan's
        cu_k = torch.arange(seqs + 1, device=q.device, dtype=torch.int32) * smax
    qf = q.reshape(seqs * groups, 1, d).contiguous()  # (row, kv head, g): head h = kv_head * G + g
    if q.is_cuda:
        out, lse = _varlen_flash(qf, kf, vf, cu_q, cu_k, used, groups, s, scale)
    else:
        out, lse = _varlen_torch(qf, kf, vf, cu_q, cu_k, used, scale)
    lse = torch.where(live, lse.float(), float("-inf"))
    return out.reshape(b, hq, d), lse.reshape(b, hq)


@_rows_op.register_fake
def _(q, past_k, past_v, used, live, cu_q, cu_k, kv_stride, scale):
    b, hq, _, d = q.shape
    return q.new_empty(b, hq, d), q.new_empty(b, hq, dtype=torch.float32)


def merge_new_token(out, lse, q, k, v, scale: float, groups: int):
    """softmax over [cache part ; the row's new token] from the cache part's `out [B, Hq, D]` and `lse [B, Hq]`
    (-inf: empty) and the new token's `k/v [B, Hkv, 1, D]`, exactly, in fp32 -> `[B, 1, Hq*D]`."""
    b, hq, d = out.shape
    k_self = k.repeat_interleave(groups, dim=1)[:, :, 0].float()  # [B, Hq, D]: one token, tiny
    v_self = v.repeat_interleave(groups, dim=1)[:, :, 0].float()
    s_self = (q[:, :, 0].float() * k_self).sum(-1) * scale  # [B, Hq]
    m = torch.maximum(lse, s_self)  # finite: the new token is always there
    w_past, w_self = torch.exp(lse - m), torch.exp(s_self - m)  # w_past 0 for an empty row
    past = torch.where(w_past[..., None] > 0, out.float() * w_past[..., None], 0.0)
    merged = (past + v_self * w_self[..., None]) / (w_past + w_self)[..., None]
    return merged.to(q.dtype).reshape(b, 1, hq * d)


def packed_starts(lens: list[int], device) -> torch.Tensor:
    """The sequence starts `[S + 1]` int32 of prompts of `lens` packed back to back (computed once per call,
    shared by every layer)."""
    return torch.tensor([0, *lens], dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)


def packed_causal_attention(q, k, v, lens: list[int], scale: float, starts: torch.Tensor | None = None):
    """Prompts packed back to back (no padding): `q [N, Hq, D]`, `k/v [N, Hkv, D]`, sequence `i` the next
    `lens[i]` tokens, each token attending causally within its own sequence -> `[N, Hq, D]`. FlashAttention's
    variable-length kernel on CUDA (fp16/bf16; K/V repeated to the query heads, a small copy beside the
    GEMMs; `starts`: `packed_starts(lens)` on the device); one sequence at a time by SDPA elsewhere, what the
    CPU tests check the packing with."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1).contiguous(), v.repeat_interleave(groups, dim=1).contiguous()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        if starts is None:
            starts = packed_starts(lens, q.device)
        top = max(lens)
        return torch.ops.aten._flash_attention_forward(q.contiguous(), k, v, starts, starts, top, top, 0.0, True,
                                                        False, scale=scale)[0]
    out, o = torch.empty_like(q), 0
    for n in lens:
        seq = (x[o:o + n].transpose(0, 1) for x in (q, k, v))  # [H, n, D]
        out[o:o + n] = F.scaled_dot_product_attention(*seq, is_causal=True, scale=scale).transpose(0, 1)
        o += n
    return out
