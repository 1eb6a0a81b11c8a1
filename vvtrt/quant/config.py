"""The quantization modes and the per-component declaration of what they quantize."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from vvtrt.errors import InputError


class QuantMode(str, enum.Enum):
    """W8A8 GEMMs: weights per output channel, activations per tensor (a static scale from calibration)."""

    INT8 = "int8"
    FP8 = "fp8"  # OCP float8 E4M3 (ONNX FLOAT8E4M3FN, torch.float8_e4m3fn)

    @classmethod
    def parse(cls, value) -> "QuantMode | None":
        """`None`/""/"none" -> None (not quantized); "int8" / "fp8" -> the mode; anything else: `InputError`."""
        if value is None or isinstance(value, QuantMode):
            return value
        text = str(value).strip().lower()
        if text in ("", "none"):
            return None
        try:
            return cls(text)
        except ValueError:
            raise InputError(f"unknown quantization {value!r}: choose int8 or fp8 (or none)") from None

    @property
    def qmax(self) -> float:
        """The largest magnitude of the quantized type (symmetric: int8 uses -127..127)."""
        return 127.0 if self is QuantMode.INT8 else 448.0


def parse_quant_list(text) -> tuple["QuantMode | None", ...]:
    """`"none,int8,fp8"` -> (None, INT8, FP8), order kept, repeats dropped (bench's `--quant` list)."""
    out: list = []
    for item in (str(text).split(",") if text is not None else []):
        if item.strip() or not out:
            q = QuantMode.parse(item)
            if q not in out:
                out.append(q)
    return tuple(out) or (None,)


@dataclass(frozen=True)
class QuantSpec:
    """What a component quantizes: every GEMM with a constant weight (ONNX `ops`; in PyTorch the component's
    `nn.Linear` and fused linears) whose module name contains none of `exclude`. Everything else (norms,
    attention, softmax, the sampler's arithmetic, the 4-row control-token head) stays in the model dtype."""

    ops: tuple[str, ...] = ("MatMul", "Gemm")
    exclude: tuple[str, ...] = ()
    note: str = ""

    def wants(self, module_name: str) -> bool:
        return not any(x in module_name for x in self.exclude)

    def to_json(self) -> dict:
        return {"ops": list(self.ops), "exclude": list(self.exclude), "weights": "per output channel",
                "activations": "per tensor, static (calibrated)", "note": self.note}
