"""The same quantization in the PyTorch backend: each GEMM the component's `QuantSpec` selects becomes a
`QuantLinear` holding its weight quantized per output channel (the scales of `vvtrt.quant.qdq`).

- fp8 on a GPU of compute capability >= 8.9: W8A8 with `torch._scaled_mm` (float8 E4M3 weights, activations
  quantized per row on the fly, bf16/fp16 output).
- everywhere else (int8, fp8 below sm_89, the CPU): weight-only -- the weight is dequantized to the activation
  dtype and multiplied in it (a dequant matmul; activations are not quantized).

Both are plain tensor ops with no host sync, so they run inside the whole-frame CUDA graph. The module is
replaced in place: the wrapper shares its submodules with the model, so the model's own Linears become
`QuantLinear`s (done once; a second wrapper over the same model reuses them). Linears whose weights are views
of a fused linear's (q|k|v, gate|up) run inside it and are left alone. Once every runner over a model is
built, `drop_float_weights` frees the float weights the quantized GEMMs replaced (until then another wrapper
may still fuse its projections from them)."""
from __future__ import annotations

import torch
from torch import nn

from vvtrt.quant.config import QuantMode
from vvtrt.quant.qdq import quantize_weight


class QuantLinear(nn.Module):
    """`F.linear` with a quantized weight; `sizes` (a fused linear's outputs) splits the result like it."""

    def __init__(self, weight: torch.Tensor, bias, mode: QuantMode, sizes=None):
        super().__init__()
        q, scale = quantize_weight(weight, mode, torch.float32)
        self.mode, self.sizes = mode, sizes
        self.out_features, self.in_features = weight.shape
        self.register_buffer("qweight", q.to(weight.device))
        self.register_buffer("scale", scale.to(weight.device))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # the float weight stays reachable: another wrapper over the same model (the sampler and the head step
        # share the head) fuses its projections from it before quantizing its own copy
        self.register_buffer("weight", weight.detach(), persistent=False)

    def _scaled_mm_ok(self, x: torch.Tensor) -> bool:
        return (self.mode is QuantMode.FP8 and x.is_cuda and x.dtype == torch.bfloat16  # row-wise scales: bf16 out
                and torch.cuda.get_device_capability(x.device) >= (8, 9) and self.in_features % 16 == 0
                and self.out_features % 16 == 0)

    def _fp8(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        amax = x2.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12)
        xs = amax / QuantMode.FP8.qmax
        xq = (x2.float() / xs).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(xq, self.qweight.t(), scale_a=xs, scale_b=self.scale.view(1, -1), out_dtype=x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x):
        if self._scaled_mm_ok(x):
            y = self._fp8(x)
        else:
            w = self.qweight.to(x.dtype) * self.scale.to(x.dtype)[:, None]
            y = nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        return y.split(self.sizes, dim=-1) if self.sizes else y


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def quantize_module(module: nn.Module, qspec, mode: QuantMode) -> int:
    """Replace the selected GEMMs of `module` (see the module doc); returns how many were replaced."""
    from vvtrt.quant.calibrate import gemm_modules, is_fused_linear

    n = 0
    gemms = gemm_modules(module, qspec)
    fused = {_storage(m.weight) for m in gemms.values() if is_fused_linear(m)}
    for name, child in list(gemms.items()):
        if not is_fused_linear(child) and _storage(child.weight) in fused:
            continue  # a view of a fused linear's weight: it runs inside that one
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        sizes = child.sizes if is_fused_linear(child) else None
        setattr(parent, attr, QuantLinear(child.weight.detach(), child.bias, mode, sizes))
        n += 1
    return n


def drop_float_weights(modules, model: nn.Module) -> int:
    """Free the float weights that the `QuantLinear`s of `modules` replaced, in them and in `model` (whose
    Linears are views of fused weights): each such Linear of `model` gets an empty meta weight, so a later use
    fails loudly instead of computing with freed memory. Call it once every runner over `model` is built (the
    model must not build another wrapper afterwards). Returns the bytes freed."""
    dropped: dict[int, int] = {}
    for module in modules:
        for q in module.modules():
            if isinstance(q, QuantLinear) and q.weight is not None:
                dropped[_storage(q.weight)] = q.weight.untyped_storage().nbytes()
                q.weight = None
    for lin in model.modules():
        if isinstance(lin, nn.Linear) and lin.weight.device.type != "meta" and _storage(lin.weight) in dropped:
            lin.weight = nn.Parameter(torch.empty(0, dtype=lin.weight.dtype, device="meta"), requires_grad=False)
    return sum(dropped.values())
