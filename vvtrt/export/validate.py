"""Post-export validation, in the order optimum uses: names, then dtypes, then dynamic axes. Renames the
exporter's symbolic dims (s0, s1, ...) to the spec's axis names so engines and tools read them."""
from __future__ import annotations

from pathlib import Path

import onnx

from vvtrt.errors import ExportError
from vvtrt.precision import Precision
from vvtrt.spec import ComponentSpec

_ONNX_DTYPE = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


def _expected_elem(t, precision: Precision) -> int:
    return precision.onnx_elem_type if t.dtype == "model" else _ONNX_DTYPE[t.dtype]


def validate_onnx(spec: ComponentSpec, precision: Precision, path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    for kind, declared, actual in (("input", spec.inputs, graph.input), ("output", spec.outputs, graph.output)):
        names = [v.name for v in actual]
        if names != [t.name for t in declared]:
            raise ExportError(f"{spec.name}: exported {kind}s {names} != spec {[t.name for t in declared]}")
        for t, v in zip(declared, actual):
            tt = v.type.tensor_type
            if tt.elem_type != _expected_elem(t, precision):
                raise ExportError(f"{spec.name}.{t.name}: ONNX dtype {onnx.TensorProto.DataType.Name(tt.elem_type)}"
                                  f" != spec {t.dtype} at {precision.value}")
            dims = tt.shape.dim
            if len(dims) != len(t.shape):
                raise ExportError(f"{spec.name}.{t.name}: rank {len(dims)} != spec rank {len(t.shape)}")
            for d, want in zip(dims, t.shape):
                if isinstance(want, int):
                    if d.HasField("dim_value") and d.dim_value != want:
                        raise ExportError(f"{spec.name}.{t.name}: dim {d.dim_value} != spec {want}")
                    d.dim_value = want
                else:
                    if d.HasField("dim_value"):
                        raise ExportError(f"{spec.name}.{t.name}: axis {want!r} was exported static "
                                          f"({d.dim_value}); the wrapper specialised on the sample shape")
                    d.dim_param = want
    onnx.save(model, str(path)) if not any(Path(path).parent.glob(Path(path).name + "*.data")) else \
        _save_header_only(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{spec.name}: ONNX checker rejected {path.name}: {exc}") from exc


def _save_header_only(model, path: Path) -> None:
    """Rewrite the graph proto of a model whose weights live in external data, leaving the data file."""
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
