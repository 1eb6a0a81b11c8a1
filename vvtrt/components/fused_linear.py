"""Projections that read the same input (q|k|v of an attention layer, gate|up of a SwiGLU MLP) as one
matmul: one weight read and one kernel instead of three or two. At batch 1-2 every GEMM of a step is a
memory-bound GEMV, and in a CUDA-graphed step each kernel also costs a few microseconds of its own, so
fewer, wider GEMMs are faster. Every output element is still the same dot product.

The fused weight is made once per set of Linears and the Linears' own weights become views of it, so
the model holds each weight once (a 1.5B model would otherwise carry a second 2.6 GB copy) and the
transformers modules that share them (the reference) see the same values. A later `model.to(dtype)`
gives the Linears fresh tensors again; the next FusedLinear then fuses anew.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor whose row blocks `tensors` already are (one storage, back to back), else None."""
    first = tensors[0]
    ptr, end = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (t.untyped_storage().data_ptr() != ptr or t.storage_offset() != end or not t.is_contiguous()
                or t.shape[1:] != first.shape[1:] or t.dtype != first.dtype):
            return None
        end += t.numel()
    if end * first.element_size() > first.untyped_storage().nbytes():
        return None
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    return first.as_strided(shape, torch.empty(shape, device="meta").stride(), first.storage_offset())


def _fuse_into(params: list[nn.Parameter]) -> torch.Tensor:
    """One tensor holding `params` back to back; each parameter becomes a view of its block."""
    whole = _stacked([p.data for p in params])
    if whole is None:
        whole = torch.cat([p.detach() for p in params], dim=0)
        start = 0
        for p in params:
            p.data = whole[start:start + p.shape[0]]
            start += p.shape[0]
    return whole


class FusedLinear(nn.Module):
    """`x -> (lin_1(x), ..., lin_n(x))` computed as one `F.linear` over the concatenated weights."""

    def __init__(self, *linears: nn.Linear):
        super().__init__()
        if not linears:
            raise ValueError("FusedLinear needs at least one Linear")
        has_bias = [lin.bias is not None for lin in linears]
        if any(has_bias) and not all(has_bias):
            raise ValueError("FusedLinear: either every Linear has a bias or none does")
        self.sizes = [lin.out_features for lin in linears]
        with torch.no_grad():
            weight = _fuse_into([lin.weight for lin in linears])
            bias = _fuse_into([lin.bias for lin in linears]) if all(has_bias) else None
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


def swiglu(mlp: nn.Module, gate_up: FusedLinear, x):
    """`mlp`'s SwiGLU (`down_proj(act_fn(gate) * up)`, as transformers' Qwen2 MLP and the diffusion head's
    FFN compute it) with gate|up as one matmul."""
    gate, up = gate_up(x)
    return mlp.down_proj(mlp.act_fn(gate) * up)
