"""One Triton kernel for a ConvNeXt block's feed-forward half on channels-last rows (CUDA only, optional).

`x + ffn_gamma * linear2(gelu(linear1(rmsnorm(x))))` over rows `x [M, C]`: each program loads `BM` rows once,
normalises them, and walks the `4C` hidden units in chunks of `BH` (GEMM, bias, GELU, GEMM accumulated in
fp32), so the `[M, 4C]` hidden activations never reach memory. In the tokenizers' late stages (C = 32 ... 128
over 800 ... 3200 samples a frame) that tensor is most of a step's memory traffic: at 256 streams and C = 32 it
is 210 MB per block, written twice and read twice by the GEMM / GELU / GEMM sequence.

It rounds where the modules round (the norm's output, linear1's output, GELU's output, linear2's output,
the layer scale product and the residual sum, each to the activation dtype), accumulates in fp32, and is
checked against the modules' torch path (`ConvNextLayer.ffn` etc., what CPU CI runs) by the GPU tests and,
at load, by the steps' self-check. Triton is imported lazily; without it (CPU) nothing here is used.
"""
from __future__ import annotations

import functools
import os

import torch

FFN_KERNELS = ("triton", "torch")
# Wider blocks run few samples a frame (the hidden tensor is small) and would read their weights from L2
# more often than the hidden rows cost in HBM (see _launch_config): plain GEMMs there.
MAX_CHANNELS = 128


def ffn_kernel() -> str:
    """The feed-forward of the channels-last steps: "triton" (this module, where Triton and CUDA are there)
    or "torch" (the modules' ops, compiled); VVTRT_CONV_FFN picks one for comparisons."""
    name = os.environ.get("VVTRT_CONV_FFN", "triton")
    if name not in FFN_KERNELS:
        raise ValueError(f"VVTRT_CONV_FFN must be one of {', '.join(FFN_KERNELS)}, got {name!r}")
    return name


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def usable(block) -> bool:
    """Whether a ConvNeXt block (weights as loaded) can use the kernel: CUDA, bf16/fp16, exact GELU, C a power
    of two in 32..128, 4C a multiple of 64, Triton importable, VVTRT_CONV_FFN not "torch"."""
    ffn = block.ffn
    w = ffn.linear1.weight
    c, h = ffn.linear1.in_features, ffn.linear1.out_features
    return (w.device.type == "cuda" and w.dtype in (torch.bfloat16, torch.float16) and ffn_kernel() == "triton"
            and getattr(ffn.activation, "act", None) is torch.nn.functional.gelu
            and 32 <= c <= MAX_CHANNELS and c & (c - 1) == 0 and h % 64 == 0 and triton_available())


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ffn_block(x_ptr, out_ptr, nw_ptr, w1t_ptr, b1_ptr, w2t_ptr, b2_ptr, g_ptr, M, eps,
                  C: tl.constexpr, H: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.arange(0, C)
        rmask = rows[:, None] < M
        x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=rmask, other=0.0)
        dt = x.dtype
        xf = x.to(tl.float32)
        inv = tl.rsqrt(tl.sum(xf * xf, axis=1) / C + eps)
        xn = ((xf * inv[:, None]).to(dt).to(tl.float32) * tl.load(nw_ptr + cols).to(tl.float32)[None, :]).to(dt)
        acc = tl.zeros([BM, C], dtype=tl.float32)
        for h0 in range(0, H, BH):
            hs = h0 + tl.arange(0, BH)
            w1 = tl.load(w1t_ptr + cols[:, None] * H + hs[None, :])  # [C, BH] of W1^T
            z = tl.dot(xn, w1) + tl.load(b1_ptr + hs).to(tl.float32)[None, :]
            z = z.to(dt).to(tl.float32)
            z = (0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))).to(dt)
            w2 = tl.load(w2t_ptr + hs[:, None] * C + cols[None, :])  # [BH, C] of W2^T
            acc += tl.dot(z, w2)
        y = (acc + tl.load(b2_ptr + cols).to(tl.float32)[None, :]).to(dt).to(tl.float32)
        y = (y * tl.load(g_ptr + cols).to(tl.float32)[None, :]).to(dt).to(tl.float32)
        tl.store(out_ptr + rows[:, None] * C + cols[None, :], (xf + y).to(dt), mask=rmask)

    return ffn_block


def _launch_config(channels: int) -> tuple[int, int, int]:
    """(rows per program, hidden chunk, warps). Every program reads both weights (16*C^2 bytes, from L2)
    for its BM rows and saves ~32*C bytes of HBM traffic per row, so BM must be well above C/7; the fp32
    accumulator [BM, C] stays in registers (<= 64 a thread)."""
    return 128, 64, (4 if channels <= 64 else 8)


class FusedFFN(torch.nn.Module):
    """A ConvNeXt block's `x + ffn_gamma * ffn(ffn_norm(x))` with the weights laid out once for the kernel
    (W1^T `[C, 4C]`, W2^T `[4C, C]`, contiguous)."""

    def __init__(self, block):
        super().__init__()
        ffn = block.ffn
        self.channels, self.hidden = ffn.linear1.in_features, ffn.linear1.out_features
        self.eps = float(block.ffn_norm.variance_epsilon)
        w = ffn.linear1.weight.detach()
        self.register_buffer("w1t", w.t().contiguous(), persistent=False)
        self.register_buffer("w2t", ffn.linear2.weight.detach().t().contiguous(), persistent=False)
        zeros = torch.zeros(self.hidden, dtype=w.dtype, device=w.device)
        self.register_buffer("b1", ffn.linear1.bias.detach() if ffn.linear1.bias is not None else zeros,
                             persistent=False)
        self.register_buffer("b2", ffn.linear2.bias.detach() if ffn.linear2.bias is not None
                             else zeros[:self.channels], persistent=False)
        self.norm_weight, self.gamma = block.ffn_norm.weight, block.ffn_gamma
        self.kernel = _kernel()  # built here, eagerly: compiled graphs call the JIT function itself

    def forward(self, x):
        x = x.contiguous()
        m = x.numel() // self.channels
        out = torch.empty_like(x)
        bm, bh, warps = _launch_config(self.channels)
        self.kernel[((m + bm - 1) // bm,)](x, out, self.norm_weight, self.w1t, self.b1, self.w2t, self.b2, self.gamma,
                                          m, self.eps, C=self.channels, H=self.hidden, BM=bm, BH=bh, num_warps=warps)
        return out
