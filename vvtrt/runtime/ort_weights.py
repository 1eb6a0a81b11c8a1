"""One copy of the weights that several ONNX Runtime sessions share (the LLM's lm_prefill and lm_decode).

The two LLM graphs are exported from the same modules, so they hold the same weights, but under exporter-made
names (`val_113` in one graph is `val_152` in the other). `SharedInitializers` matches them by content: every
initializer of at least `SHARE_MIN_BYTES` is keyed by (ONNX element type, dims, sha256 of its bytes), and each
content found in more than one graph is loaded once, as a torch tensor on the runner's device. Each session gets
it under its own name through ONNX Runtime's documented sharing API, `SessionOptions.add_initializer(name,
OrtValue)` ("ORT will use this initializer instance instead of deserializing one from the model file. This is
useful when you want to share the same initializer across sessions"; the buffer must be owned by the caller and
outlive the sessions: the OrtValue wraps the torch tensor through DLPack, without a copy).

What is and is not shared (ONNX Runtime 1.32, CPU, measured by the tests):

- ORT only uses a shared initializer in place when it lives where the session plans it (its
  `SaveInitializedTensors`: "In case a cross-device copy is required, sharing cannot be accomplished"): the
  tensors are made on the runner's device, so CUDA sessions get CUDA tensors. Whether ORT's CUDA provider then
  really runs on them is measured on a GPU by `benchmarks/lm_weight_sharing.py` (it zeroes each shared tensor in
  place and checks both sessions' outputs change); it is not verified on a CPU-only machine.
- The CPU provider prepacks MatMul weights into a per-session copy; shared sessions on the CPU are therefore
  created with prepacking off (`session.disable_prepacking`), otherwise they would hold the shared copy plus one
  packed copy each. Disabling prepacking changes float results at rounding level (another GEMM path; tiny
  fp32: up to 6e-8 on the logits in the runs measured).
- ORT keeps the bytes of a graph's *inline* initializers (those stored inside the .onnx protobuf) in host memory
  even when they are overridden, so on the CPU sharing lowers memory only for graphs whose weights are in an
  external `.onnx.data` file (graphs above `vvtrt.export`'s EXTERNAL_DATA_BYTES, e.g. the 1.5B and 7B LLM; the tests
  measure a saving of one copy there); for inline graphs it does not lower host memory (measured with 48 MB of
  inline fp32 weights: more resident memory shared than unshared). GPU memory is not affected by that.

Building the index reads both graphs' weights once and hashes them (sha256, in threads): a load-time cost that
grows with the model (`stats["index_seconds"]`; the benchmark records it).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from vvtrt.errors import WorkdirError

log = logging.getLogger(__name__)
SHARE_MIN_BYTES = 1024  # smaller constants (shapes, scalars) stay in their graphs
# ONNX TensorProto element type -> torch dtype (the types a weight can have; bool is never shared)
TORCH_OF_ONNX = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16, 11: torch.float64, 7: torch.int64,
                 6: torch.int32, 3: torch.int8, 2: torch.uint8}


def _tensor_bytes(t, base: Path) -> np.ndarray:
    """The raw little-endian bytes of one initializer, as a uint8 array (memory-mapped for external data)."""
    from onnx import TensorProto, numpy_helper

    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        path = base / info["location"]
        offset, length = int(info.get("offset", 0)), info.get("length")
        if not path.is_file():
            raise WorkdirError(f"external data {path} of {t.name!r} is missing: re-run `vvtrt export --force`")
        size = int(length) if length is not None else path.stat().st_size - offset
        return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(size,))
    if t.raw_data:
        return np.frombuffer(t.raw_data, dtype=np.uint8)
    return np.ascontiguousarray(numpy_helper.to_array(t)).view(np.uint8).reshape(-1)


def _index(path: Path) -> list[tuple[str, tuple, np.ndarray]]:
    """`(name, (element type, dims), bytes)` of every shareable initializer of one graph (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = []
    for t in model.graph.initializer:
        if t.data_type not in TORCH_OF_ONNX:
            continue
        n = int(np.prod(t.dims, dtype=np.int64)) * torch.empty((), dtype=TORCH_OF_ONNX[t.data_type]).element_size()
        if n >= SHARE_MIN_BYTES:
            data = _tensor_bytes(t, path.parent)
            if data.size != n:
                raise WorkdirError(f"{path}: initializer {t.name!r} has {data.size} bytes, its dims say {n}: "
                                   f"re-run `vvtrt export --force`")
            out.append((t.name, (t.data_type, tuple(t.dims)), data))
    return out


def ortvalue_of(tensor: torch.Tensor):
    """An OrtValue over `tensor`'s memory (DLPack, no copy); the OrtValue keeps the tensor alive."""
    import onnxruntime as ort

    if hasattr(ort.OrtValue, "from_dlpack"):  # onnxruntime >= 1.22's public wrapper
        try:
            return ort.OrtValue.from_dlpack(tensor)
        except TypeError:  # older signature (capsule, is_bool_tensor)
            pass
    from onnxruntime.capi import _pybind_state as C  # DLPack is in every build since onnxruntime 1.21 (#23110)

    return ort.OrtValue(C.OrtValue.from_dlpack(tensor.__dlpack__(), False))


class SharedInitializers:
    """The weights that several ONNX graphs have in common, loaded once on `device` (see the module docstring).

    Built lazily, on the first `initializers_for` call. `stats` reports what was shared.
    """

    def __init__(self, onnx_paths, device):
        self.paths = [Path(p).absolute() for p in onnx_paths]
        self.device = torch.device(device)
        self.tensors: dict[tuple, torch.Tensor] = {}  # content key -> the one copy
        self._values: dict[tuple, object] = {}  # content key -> OrtValue over that tensor
        self._names: dict[Path, dict[str, tuple]] = {}  # graph -> {initializer name: content key}
        self.stats: dict = {}

    def initializers_for(self, onnx_path) -> dict[str, object]:
        """`{initializer name: OrtValue}` for one of the graphs, for `SessionOptions.add_initializer`."""
        path = Path(onnx_path).absolute()
        if path not in self.paths:
            raise ValueError(f"{path} is not one of the graphs these initializers were built for")
        if not self.stats:
            self._build()
        return {name: self._values[key] for name, key in self._names[path].items()}

    def _build(self) -> None:
        t0 = time.perf_counter()
        graphs = {p: _index(p) for p in self.paths}
        items = [(p, name, meta, data) for p, entries in graphs.items() for name, meta, data in entries]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(lambda it: hashlib.sha256(memoryview(it[3])).hexdigest(), items))
        keys = [(meta, digest) for (_, _, meta, _), digest in zip(items, digests)]
        owners: dict[tuple, set] = {}
        for (p, *_), key in zip(items, keys):
            owners.setdefault(key, set()).add(p)
        shared = {key for key, ps in owners.items() if len(ps) > 1}
        for (p, name, meta, data), key in zip(items, keys):
            if key not in shared:
                continue
            if key not in self.tensors:
                (etype, dims) = meta
                with warnings.catch_warnings():  # read-only source (a mapped file): copied right away
                    warnings.simplefilter("ignore", UserWarning)
                    src = torch.from_numpy(np.asarray(data)).view(TORCH_OF_ONNX[etype]).reshape(dims)
                self.tensors[key] = src.to(self.device, copy=True)
                self._values[key] = ortvalue_of(self.tensors[key])
            self._names.setdefault(p, {})[name] = key
        for p in self.paths:
            self._names.setdefault(p, {})
        if self.device.type == "cuda":  # the copies were queued on torch's stream; ORT reads them on its own
            torch.cuda.synchronize(self.device)
        total = sum(int(d.size) for *_, d in items)
        self.stats = {"graphs": len(self.paths), "shared_tensors": len(self.tensors),
                      "shared_bytes": sum(t.numel() * t.element_size() for t in self.tensors.values()),
                      "initializer_bytes_all_graphs": total, "index_seconds": round(time.perf_counter() - t0, 3)}
        log.info("shared %d initializers (%.1f MB) between %s in %.1fs", self.stats["shared_tensors"],
                 self.stats["shared_bytes"] / 1e6, ", ".join(p.name for p in self.paths), self.stats["index_seconds"])
