"""Q/DQ graphs following TensorRT's explicit-quantization rules: every quantized GEMM (MatMul or Gemm with a
constant weight) gets `QuantizeLinear -> DequantizeLinear` on its activation input (one static scale, amax /
qmax from calibration) and a `DequantizeLinear` on its weight, stored quantized (int8 or float8 E4M3) with one
scale per output channel. TensorRT fuses each DQ -> GEMM <- DQ into an INT8 / FP8 GEMM; ONNX Runtime runs the
same graph as quantize-dequantize (the numerics TensorRT reproduces). Scales are in the graph's own precision
(the DQ outputs keep the model dtype, so the rest of the graph is unchanged).

A GEMM of the graph is matched to its PyTorch module by the bytes of its weight (the exporter keeps a Linear's
weight as a named initializer for Gemm, or as a pre-transposed constant for MatMul), so only the modules the
component's `QuantSpec` selects, and that ran during calibration, are quantized."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from vvtrt.errors import ExportError
from vvtrt.quant.config import QuantMode

log = logging.getLogger(__name__)
_QTYPE = {QuantMode.INT8: TensorProto.INT8, QuantMode.FP8: TensorProto.FLOAT8E4M3FN}


def _fingerprint(arr_out_in) -> str:
    a = np.ascontiguousarray(arr_out_in)
    return f"{a.shape}:{hashlib.sha1(a.view(np.uint8).tobytes()).hexdigest()}"


def _torch_fingerprint(w: torch.Tensor) -> str:
    w = w.detach().contiguous().cpu()
    raw = w.view(torch.int16) if w.element_size() == 2 else w.view(torch.int32)
    return _fingerprint(raw.numpy())


def _weight_layout(node, inits) -> tuple[str, np.ndarray, int] | None:
    """(initializer name, weight as [out, in] raw bits, the output-channel axis of the stored tensor)."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    arr = numpy_helper.to_array(inits[node.input[1]])
    if arr.ndim != 2:
        return None
    raw = arr.view(np.int16) if arr.dtype.itemsize == 2 else arr.view(np.int32)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
    if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
        return None
    return (node.input[1], raw, 0) if trans_b else (node.input[1], raw.T, 1)


def quantize_weight(w: torch.Tensor, mode: QuantMode, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`w [out, in]` -> (quantized weight [out, in], per-output-channel scale in `dtype`), symmetric."""
    w32 = w.detach().float().cpu()
    scale = (w32.abs().amax(dim=1).clamp_min(1e-12) / mode.qmax).to(dtype)
    q = w32 / scale.float()[:, None]
    q = q.round().clamp(-127, 127).to(torch.int8) if mode is QuantMode.INT8 else \
        q.clamp(-mode.qmax, mode.qmax).to(torch.float8_e4m3fn)
    return q, scale


def _tensor(name: str, t: torch.Tensor, elem: int) -> TensorProto:
    raw = t.contiguous()
    raw = raw.view(torch.uint8) if raw.dtype == torch.float8_e4m3fn else raw
    raw = raw.view(torch.int16) if raw.dtype == torch.bfloat16 else raw
    return helper.make_tensor(name, elem, list(t.shape), raw.numpy().tobytes(), raw=True)


def insert_qdq(path: Path, mode: QuantMode, precision, calibrated: dict, qspec) -> dict:
    """Rewrite the graph at `path` in place with Q/DQ around every matched GEMM; returns the record's "quant"
    entry (mode, which modules were quantized with their activation amax)."""
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_print = {_torch_fingerprint(w): (name, w, amax) for name, (w, amax) in calibrated.items()}
    elem, dtype, qtype = precision.onnx_elem_type, precision.torch_dtype, _QTYPE[mode]
    nodes, done, used, shared = [], {}, set(), {}
    n_nodes = 0
    zero_dtype = torch.int8 if mode is QuantMode.INT8 else torch.float8_e4m3fn
    for i, node in enumerate(graph.node):
        hit = _weight_layout(node, inits) if node.op_type in qspec.ops else None
        match = by_print.get(_fingerprint(hit[1])) if hit else None
        if match is None:
            nodes.append(node)
            continue
        wname, axis = hit[0], hit[2]
        name, w, amax = match
        tag = f"vvtrt_q{i}"
        if wname not in shared:  # one quantized copy per weight, however many GEMMs read it (the sampler's K steps)
            q, scale = quantize_weight(w, mode, dtype)
            wt = f"vvtrt_w{len(shared)}"
            graph.initializer.extend([_tensor(f"{wt}_q", q if axis == 0 else q.T, qtype),
                                      _tensor(f"{wt}_s", scale, elem)])
            nodes.append(helper.make_node("DequantizeLinear", [f"{wt}_q", f"{wt}_s"], [f"{wt}_dq"], axis=axis,
                                          name=f"{wt}_DQw"))
            shared[wname] = f"{wt}_dq"
        graph.initializer.extend([_tensor(f"{tag}_as", torch.tensor(max(amax, 1e-8) / mode.qmax).to(dtype), elem),
                                  _tensor(f"{tag}_z", torch.zeros((), dtype=zero_dtype), qtype)])
        x = node.input[0]
        nodes += [helper.make_node("QuantizeLinear", [x, f"{tag}_as", f"{tag}_z"], [f"{tag}_xq"], name=f"{tag}_Q"),
                  helper.make_node("DequantizeLinear", [f"{tag}_xq", f"{tag}_as", f"{tag}_z"], [f"{tag}_x"],
                                   name=f"{tag}_DQx")]
        node.input[0], node.input[1] = f"{tag}_x", shared[wname]
        nodes.append(node)
        used.add(wname)
        done[name] = round(amax, 6)
        n_nodes += 1
    if not done:
        raise ExportError(f"{path.name}: no GEMM of the graph matched a calibrated module: nothing to quantize")
    still = {n for node in nodes for n in node.input}
    keep = [t for t in graph.initializer if t.name not in used or t.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(nodes)
    _save(model, path)
    log.info("%s: %d GEMM node(s), %d weight(s) quantized to %s", path.name, n_nodes, len(shared), mode.value)
    return {"mode": mode.value, "spec": qspec.to_json(), "gemm_nodes": n_nodes, "weights": len(shared),
            "activation_amax": done}


def _save(model, path: Path) -> None:
    """Write the graph back; weights above 1 GiB go to `<graph>.onnx.data`, as the export writes them (a
    protobuf cannot exceed 2 GiB)."""
    big = sum(len(t.raw_data) for t in model.graph.initializer) > (1 << 30)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
              location=data.name if big else None)
