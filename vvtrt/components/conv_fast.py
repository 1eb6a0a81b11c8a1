"""The streaming tokenizer steps of compiled CUDA runs, channels-last (torch runtime only; never exported).

The exported steps (`conv_stream`) keep the transformers layout `[B, C, T]`: every ConvNeXt block transposes
around its two RMSNorms and its feed-forward, and its depthwise convolution is a grouped Conv1d, which cuDNN
runs (bf16) with layout conversions around it. Here activations are `[B, T, C]` from the step's input to its
output, so:

- RMSNorm and the feed-forward Linears read contiguous rows (the FFN is two plain GEMMs over `B*T` rows);
- a depthwise causal conv is `K` multiply-adds over the window `cat(state, norm(x))`, in fp32, which
  torch.compile fuses with the norm, its bias, the layer scale and the residual;
- a dense causal conv (stem, strided down-sampling, head) is one GEMM of the im2col rows
  `[B*T_out, C_in*K]` (unfold: a view of the window) with the weight as it is (`[C_out, C_in*K]`), bias in the
  GEMM; a conv much narrower out than in multiplies first and sums the `K` shifted products instead; the
  1-channel ends (the decoder's head, the encoder's stem) are fused multiply-adds, not GEMMs (`_DenseStep`);
- on CUDA in bf16/fp16, a block of 32 ... 128 channels runs its feed-forward half (norm, GEMM, GELU, GEMM,
  layer scale, residual) as one Triton kernel (`conv_triton`): the 4C-wide hidden rows never reach memory;
- a transposed conv (stride r, kernel 2r) is one GEMM of the pairs `[x[j-1], x[j]]` with the weight laid out
  once as `[r*C_out, C_in*2]`: its output rows are already the `r` output samples of each input sample, so
  no overlap-add and no permute.

The flat state keeps the exported layout (each op's `[C, P]` block), so states move freely between this
path and the exported one; each block is read and written transposed (fused into the kernels around it).
Every output is the same sum of products as the exported step's, accumulated in another order (fp32:
~1e-7 relative; tests/test_conv_fast.py compares the two over streamed frames).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
    VibeVoiceAcousticTokenizerCausalConv1d as CausalConv1d,
    VibeVoiceAcousticTokenizerCausalConvTranspose1d as CausalConvT1d,
    VibeVoiceAcousticTokenizerConvNext1dLayer as ConvNextLayer,
)

from vvtrt.components import conv_triton

CONV_KERNELS = ("channels-last", "exported")


def conv_kernel() -> str:
    """The streaming conv steps of compiled CUDA runs: "channels-last" (this module, the default) or
    "exported" (the exported graphs' ops, compiled); VVTRT_CONV_KERNEL picks one for comparisons."""
    name = os.environ.get("VVTRT_CONV_KERNEL", "channels-last")
    if name not in CONV_KERNELS:
        raise ValueError(f"VVTRT_CONV_KERNEL must be one of {', '.join(CONV_KERNELS)}, got {name!r}")
    return name


class _DenseStep(nn.Module):
    """A dense causal Conv1d over `cat(state, x)` (`[B, P+T, C_in]`) -> `[B, T_out, C_out]`, one of:
    "reduce" (C_out = 1: the window times the weight, summed: one fused reduction), "pointwise" (C_in*K <= 16,
    the encoder's 1-channel stem: C_in*K fused multiply-adds instead of a GEMM of inner size 7), "shifted"
    (stride 1, C_out*K < C_in: one GEMM to `[.., K*C_out]`, then the K shifted products summed) or "im2col"
    (one GEMM of the unfolded window rows with the weight as it is)."""

    def __init__(self, op: CausalConv1d):
        super().__init__()
        c = op.conv
        if c.groups != 1 or c.dilation != (1,) or c.padding != (0,):
            raise NotImplementedError(f"{op.cache_key}: only plain dense convolutions have a GEMM step")
        self.conv = c
        (self.k,), (self.stride,) = c.kernel_size, c.stride
        c_in, c_out = c.in_channels, c.out_channels
        w = c.weight.detach()
        if c_out == 1:
            self.mode = "reduce"
            self.register_buffer("w_r", w[0], persistent=False)  # [C_in, K], as the unfolded window
        elif c_in * self.k <= 16:
            self.mode = "pointwise"
            self.register_buffer("w_r", w.reshape(c_out, c_in * self.k).t().contiguous(), persistent=False)
        elif self.stride == 1 and c_out * self.k < c_in:
            self.mode = "shifted"  # [(k, co), ci]
            self.register_buffer("w_r", w.permute(2, 0, 1).reshape(self.k * c_out, c_in).contiguous(),
                                 persistent=False)
        else:
            self.mode = "im2col"

    def _bias(self, y, dtype):
        b = self.conv.bias
        return (y + b.float()).to(dtype) if b is not None else y.to(dtype)

    def forward(self, xin):
        b = xin.shape[0]
        c = self.conv
        if self.mode == "shifted":
            t = xin.shape[1] - self.k + 1
            z = F.linear(xin, self.w_r).view(b, xin.shape[1], self.k, c.out_channels).float()
            y = z[:, 0:t, 0]
            for i in range(1, self.k):
                y = y + z[:, i:i + t, i]
            return self._bias(y, xin.dtype)
        cols = xin.unfold(1, self.k, self.stride)  # [B, T_out, C_in, K]: (ci, k) as the weight's rows
        if self.mode == "reduce":
            return self._bias((cols.float() * self.w_r.float()).sum((-1, -2)).unsqueeze(-1), xin.dtype)
        cols = cols.reshape(b, cols.shape[1], c.in_channels * self.k)
        if self.mode == "pointwise":
            w = self.w_r.float()
            y = cols[..., 0:1].float() * w[0]
            for j in range(1, w.shape[0]):
                y = y + cols[..., j:j + 1].float() * w[j]
            return self._bias(y, xin.dtype)
        return F.linear(cols, c.weight.view(c.out_channels, c.in_channels * self.k), c.bias)


class _TransposedStep(nn.Module):
    """A causal ConvTranspose1d (kernel 2r, stride r) over `cat(prev, x)` (`[B, T+1, C_in]`) -> `[B, T*r, C_out]`.
    y[j*r + m] = W[:, :, m]·x[j] + W[:, :, m+r]·x[j-1] + b: one GEMM of the rows `[x[j-1], x[j]]`."""

    def __init__(self, op: CausalConvT1d):
        super().__init__()
        ct = op.convtr
        r = op.stride
        w = ct.weight.detach()  # [C_in, C_out, 2r]
        if w.shape[-1] != 2 * r or ct.padding != (0,) or ct.dilation != (1,) or ct.groups != 1:
            raise NotImplementedError(f"{op.cache_key}: only kernel = 2 * stride transposed convs have a GEMM step")
        self.r, self.c_out, self.c_in = r, w.shape[1], w.shape[0]
        # rows (m, co), columns (ci, q): q = 0 multiplies x[j-1] (taps m + r), q = 1 multiplies x[j] (taps m)
        wt = torch.stack([w[:, :, r:], w[:, :, :r]], dim=-1)  # [C_in, C_out, r, 2]
        self.register_buffer("w", wt.permute(2, 1, 0, 3).reshape(r * self.c_out, 2 * self.c_in).contiguous(),
                             persistent=False)
        self.register_buffer("b", ct.bias.detach().repeat(r) if ct.bias is not None else None, persistent=False)

    def forward(self, xin):
        b, t = xin.shape[0], xin.shape[1] - 1
        cols = xin.unfold(1, 2, 1).reshape(b, t, 2 * self.c_in)  # [B, T, (ci, q)]
        return F.linear(cols, self.w, self.b).view(b, t * self.r, self.c_out)


class _BlockStep(nn.Module):
    """A ConvNeXt block on `x [B, T, C]` with its depthwise conv's window state `[B, P, C]`."""

    def __init__(self, block: ConvNextLayer):
        super().__init__()
        self.block = block
        conv = block.mixer.conv
        if conv.groups != conv.in_channels or conv.stride != (1,) or conv.padding != (0,):
            raise NotImplementedError(f"{block.mixer.cache_key}: only stride-1 depthwise mixers have a fused step")
        (self.k,), (self.dil,) = conv.kernel_size, conv.dilation
        self.register_buffer("w_dw", conv.weight.detach()[:, 0, :].t().contiguous(), persistent=False)  # [K, C]
        self.fused_ffn = None
        if conv_triton.usable(block):
            self.fused_ffn = conv_triton.FusedFFN(block)
        self.use_fused = self.fused_ffn is not None

    def forward(self, x, s):
        blk = self.block
        t = x.shape[1]
        xin = torch.cat([s, blk.norm(x)], dim=1)  # [B, P+T, C]
        w = self.w_dw.float()
        y = xin[:, 0:t].float() * w[0]
        for i in range(1, self.k):
            y = y + xin[:, i * self.dil:i * self.dil + t].float() * w[i]
        bias = blk.mixer.conv.bias
        y = (y + bias.float()).to(x.dtype) if bias is not None else y.to(x.dtype)
        x = x + y * blk.gamma
        if self.use_fused:
            x = self.fused_ffn(x)
        else:
            x = x + blk.ffn(blk.ffn_norm(x)) * blk.ffn_gamma
        return x, xin[:, xin.shape[1] - s.shape[1]:]


def _fast_op(op: nn.Module) -> nn.Module:
    if isinstance(op, ConvNextLayer):
        return _BlockStep(op)
    if isinstance(op, CausalConvT1d):
        return _TransposedStep(op)
    return _DenseStep(op)


class ChannelsLastTokenizer(nn.Module):
    """A tokenizer's streaming step on `x [B, T, C]` and the flat state `[B, N]` of `conv_stream`'s layout:
    `ops` and `layout` are `conv_stream._ops(tokenizer)` and `conv_stream.state_layout(tokenizer)`.
    Built once from the loaded weights (dtype and device as they are then); the ConvTranspose weights are
    re-laid-out copies (the 1.5B decoder's: ~40M values), everything else is used in place."""

    def __init__(self, ops, layout):
        super().__init__()
        self.layout = list(layout)
        self.steps = nn.ModuleList(_fast_op(op) for op in ops)

    def fused_ffn_blocks(self) -> int:
        """How many blocks run their feed-forward through the Triton kernel (`conv_triton`)."""
        return sum(1 for s in self.steps if isinstance(s, _BlockStep) and s.use_fused)

    def drop_fused_ffn(self, drop: bool = True) -> bool:
        """Turn the Triton feed-forward off (the torch ops run instead; `drop=False`: back on where it was
        built); whether any block ran it before."""
        on = self.fused_ffn_blocks() > 0
        for s in self.steps:
            if isinstance(s, _BlockStep):
                s.use_fused = not drop and s.fused_ffn is not None
        return on

    def forward(self, x, state):
        b = x.shape[0]
        new_states = []
        offset = 0
        for step, (_, c, p) in zip(self.steps, self.layout):
            s = state[:, offset:offset + c * p].view(b, c, p).transpose(1, 2)  # [B, P, C]
            offset += c * p
            if isinstance(step, _BlockStep):
                x, ns = step(x, s)
            else:
                xin = torch.cat([s, x], dim=1)
                ns = xin[:, xin.shape[1] - p:]
                x = step(xin)
            new_states.append(ns.transpose(1, 2).reshape(b, c * p))
        return x, torch.cat(new_states, dim=1)
