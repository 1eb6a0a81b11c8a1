"""The declarative description of one exported component. One `ComponentSpec` drives the ONNX dynamic
axes, the TensorRT optimization profiles, the runtime buffer shapes and the parity tolerances."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from vvtrt.precision import Precision

Dim = "int | str"  # a fixed size or the name of a symbolic axis


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dtype` is "model" (the export precision), "float32" or "int64"."""

    name: str
    shape: tuple  # of int | str
    dtype: str = "model"

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for the given axis sizes."""
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)

    def torch_dtype(self, precision: Precision):
        import torch

        return {"model": precision.torch_dtype, "float32": torch.float32, "int64": torch.int64}[self.dtype]

    @property
    def axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class AxisRange:
    """min/opt/max of a symbolic axis in one optimization profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"bad axis range {self}")


@dataclass(frozen=True)
class ComponentSpec:
    """Everything vvtrt knows about one component.

    - `make_module(model, steps)` returns the traceable `nn.Module` (its forward takes the inputs in order).
    - `sample(dims, precision, generator)` returns realistic inputs for the given axis sizes.
    - `profiles`: one dict axis -> `AxisRange` per TensorRT optimization profile.
    - `export_dims`: axis sizes used when tracing; `parity_grid`: different sizes that prove the axes.
    - `tolerance`: relative-L2 bound per precision, for every output unless `output_tolerance` says more.
    - `state`: (input, output) pairs that carry streaming state from one call to the next.
    - `default_dims`: the size of an axis when a caller leaves it out (lm_decode's `seq` is 1: a decode step).
    """

    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_module: Callable
    sample: Callable
    profiles: tuple[Mapping[str, AxisRange], ...]
    export_dims: Mapping[str, int]
    parity_grid: tuple[Mapping[str, int], ...]
    tolerance: Mapping[Precision, float] = field(default_factory=dict)
    output_tolerance: Mapping[str, Mapping[Precision, float]] = field(default_factory=dict)
    state: tuple[tuple[str, str], ...] = ()
    tolerance_notes: str = ""
    default_dims: Mapping[str, int] = field(default_factory=dict)  # sizes of axes a caller may leave out
    quant: object = None  # a `vvtrt.quant.config.QuantSpec`: the GEMMs `--quant int8|fp8` quantizes (None: none)

    @property
    def axis_names(self) -> tuple[str, ...]:
        seen: list[str] = []
        for t in (*self.inputs, *self.outputs):
            for d in t.shape:
                if isinstance(d, str) and d not in seen:
                    seen.append(d)
        return tuple(seen)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def tol(self, output: str, precision: Precision) -> float:
        per = self.output_tolerance.get(output, {})
        return per.get(precision, self.tolerance.get(precision, DEFAULT_TOLERANCE[precision]))

    def profile_for(self, dims: Mapping[str, int]) -> int:
        """Index of the first profile that admits these axis sizes (-1 if none)."""
        for i, prof in enumerate(self.profiles):
            if all(prof[a].min <= dims[a] <= prof[a].max for a in prof if a in dims):
                return i
        return -1

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.outputs],
            "profiles": [{a: [r.min, r.opt, r.max] for a, r in p.items()} for p in self.profiles],
            "state": [list(s) for s in self.state],
        }


# Thresholds on relative L2 error against the fp32 PyTorch reference (the starting values).
DEFAULT_TOLERANCE = {Precision.FP32: 1e-5, Precision.FP16: 2e-2, Precision.BF16: 2e-2}
