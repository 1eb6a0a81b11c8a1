"""bf16 parity on the CPU, honestly: run an exported ONNX graph with ONNX's own reference evaluator
(`onnx.reference.ReferenceEvaluator`), because onnxruntime's CPU provider has no bf16 kernels for these
graphs. It is pure numpy and slow, so it is meant for the tiny preset; a time budget stops it with a clear
error instead of running for hours on real sizes.

bf16 representation: onnx >= 1.19 (1.23 here) represents bf16 arrays with `ml_dtypes.bfloat16`
(`onnx.helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)` returns that dtype; older releases used a
custom `np.dtype([("bfloat16", np.uint16)])`). A torch bf16 tensor is handed over bit-exactly as
`t.view(torch.uint16).numpy().view(<that dtype>)`; results come back as torch float32 (integers as int64).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from vvtrt.errors import BackendUnavailableError, InputError, WorkdirError

log = logging.getLogger(__name__)
DEFAULT_MAX_SECONDS = 60.0
_CACHE: dict[tuple, object] = {}
_CACHE_SIZE = 4


class ReferenceEvalError(BackendUnavailableError):
    """The ONNX reference evaluator cannot run this graph here (unsupported op, or too slow)."""


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _bf16_np_dtype() -> np.dtype:
    from onnx import TensorProto

    return _np_dtype(TensorProto.BFLOAT16)


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy/view of `t` in the dtype the reference evaluator expects (bf16 bit-exact)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        bf16 = _bf16_np_dtype()
        if bf16.itemsize != 2:  # pragma: no cover - defensive: an onnx with an unexpected bf16 type
            raise ReferenceEvalError(f"unexpected numpy bf16 dtype {bf16!r} in this onnx release")
        return t.view(torch.uint16).numpy().view(bf16)
    return t.numpy()


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    """Reference results as torch: floating point (bf16 / fp16 / fp32) -> float32, integers -> int64."""
    a = np.asarray(a)
    if a.dtype == _bf16_np_dtype() or np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32)))
    if a.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(a))
    if np.issubdtype(a.dtype, np.integer):
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.int64)))
    raise ReferenceEvalError(f"reference output of unsupported dtype {a.dtype}")


def _load_evaluator(path: Path):
    """A `ReferenceEvaluator` for `path`, cached on (path, mtime, size); errors name the unsupported op."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    model = onnx.load(str(path))
    try:
        ev = ReferenceEvaluator(model)
    except Exception as exc:  # noqa: BLE001 - NotImplementedError/RuntimeError/TypeError from op loading
        bad = _unsupported_ops(model)
        what = f"unsupported op(s) {', '.join(bad)}" if bad else f"{type(exc).__name__}: {exc}"
        raise ReferenceEvalError(f"onnx.reference cannot evaluate {path.name}: {what}") from exc
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = ev
    return ev


def _unsupported_ops(model) -> list[str]:
    """`domain::Op(version)` of every node the reference evaluator has no implementation for."""
    from onnx.reference.ops import load_op

    versions = {o.domain: o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    bad: list[str] = []
    for node in model.graph.node:
        if (node.domain, node.op_type) in local:
            continue
        try:
            load_op(node.domain, node.op_type, versions.get(node.domain))
        except Exception:  # noqa: BLE001 - load_op raises several types for unknown ops
            tag = f"{node.domain + '::' if node.domain else ''}{node.op_type}({versions.get(node.domain)})"
            if tag not in bad:
                bad.append(tag)
    return bad


def _instrument(ev, deadline: float, max_seconds: float, name: str, per_op: dict) -> list:
    """Wrap each node's `run` to enforce the time budget and name the op in any failure. Returns undo info."""
    undo = []
    for node in getattr(ev, "rt_nodes_", []):
        orig = node.run
        op = getattr(node, "op_type", type(node).__name__)
        label = f"{op} node {getattr(getattr(node, 'onnx_node', None), 'name', '?')!r}"

        def run(*args, _orig=orig, _op=op, _label=label, **kwargs):
            if time.perf_counter() > deadline:
                slow = sorted(per_op.items(), key=lambda kv: -kv[1])[:3]
                raise ReferenceEvalError(
                    f"onnx.reference on {name} exceeded {max_seconds:.0f} s before {_label}; slowest ops so far: "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in slow) + " -- run bf16 parity on a GPU instead")
            t0 = time.perf_counter()
            try:
                return _orig(*args, **kwargs)
            except ReferenceEvalError:
                raise
            except Exception as exc:  # noqa: BLE001 - numpy / reference-op errors of every kind
                raise ReferenceEvalError(f"onnx.reference failed in {_label} of {name}: "
                                         f"{type(exc).__name__}: {exc}") from exc
            finally:
                per_op[_op] += time.perf_counter() - t0

        node.run = run
        undo.append((node, orig))
    return undo


def run_onnx_reference(onnx_path, feed: Mapping[str, torch.Tensor],
                       max_seconds: float = DEFAULT_MAX_SECONDS) -> dict[str, torch.Tensor]:
    """Run `onnx_path` on `feed` with ONNX's reference evaluator; outputs as CPU torch float32 / int64.

    Feeds must carry the graph's input dtypes (a bf16 graph takes torch bf16 tensors). Raises
    `ReferenceEvalError` (a `BackendUnavailableError`) naming the op when an op is unsupported or fails, or
    when the run exceeds `max_seconds`.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise WorkdirError(f"{path} does not exist: run `vvtrt export` first")
    ev = _load_evaluator(path)
    np_feed = {}
    for name, elem in zip(ev.input_names, [t.tensor_type.elem_type for t in ev.input_types]):
        if name not in feed:
            raise InputError(f"{path.name}: missing input {name!r}")
        arr = torch_to_numpy(feed[name])
        if elem and arr.dtype != _np_dtype(elem):
            raise InputError(f"{path.name}.{name}: dtype {feed[name].dtype} does not match the graph's "
                             f"{_np_dtype(elem)}")
        np_feed[name] = arr
    per_op: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    undo = _instrument(ev, t0 + max_seconds, max_seconds, path.name, per_op)
    try:
        results = ev.run(None, np_feed)
    finally:
        for node, orig in undo:
            node.run = orig
    seconds = time.perf_counter() - t0
    log.info("onnx.reference %s: %.2f s (slowest: %s)", path.name, seconds,
             ", ".join(f"{k} {v:.2f} s" for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:3]))
    return {name: numpy_to_torch(r) for name, r in zip(ev.output_names, results)}
