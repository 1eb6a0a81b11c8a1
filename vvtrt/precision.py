"""The three export precisions and their mappings to torch, numpy and ONNX."""
from __future__ import annotations

import enum

from vvtrt.errors import InputError


class Precision(str, enum.Enum):
    """Weight/activation precision of an exported component (norms and scheduler stay fp32 inside)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        if isinstance(value, Precision):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InputError(
                f"unknown dtype {value!r}: choose one of {', '.join(p.value for p in cls)}"
            ) from None

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]

    @property
    def onnx_elem_type(self) -> int:
        from onnx import TensorProto

        return {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[self.value]


def parse_precisions(values) -> tuple[Precision, ...]:
    """Parse a comma-separated string or an iterable of dtype names, keeping order, dropping repeats."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    out: list[Precision] = []
    for v in values:
        p = Precision.parse(v.strip() if isinstance(v, str) else v)
        if p not in out:
            out.append(p)
    if not out:
        raise InputError("no dtype given: choose from fp32, fp16, bf16")
    return tuple(out)
