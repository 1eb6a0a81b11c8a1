"""safetensors files read without the safetensors library's memory map: headers alone (names, dtypes,
shapes, byte ranges) for validation, then one tensor at a time straight from the file into its own
buffer.

Reading through a memory map would keep every touched page of a shard resident until the file is
closed (a 2 GB shard on top of the weights already loaded); reading each tensor into a fresh buffer
costs at most one tensor beyond the weights themselves, and nothing when no cast is needed.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data;
offsets are relative to the first byte after the header.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import ModelError

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit (safetensors refuses larger headers)
# safetensors dtype tag -> (torch dtype attribute, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I64": ("int64", 8),
    "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorEntry:
    """Where one stored tensor lives: file, absolute byte offset and length, dtype tag and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    def torch_dtype(self):
        import torch

        return getattr(torch, DTYPES[self.dtype][0])


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Every tensor entry of one safetensors file, checked against the file's size (a truncated or
    header-only file is a `ModelError` naming it). Reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelError(f"{path} is not a safetensors file (bad header length): re-download it")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{path} has a corrupt safetensors header (not JSON): re-download it") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a corrupt safetensors header (not a JSON object): re-download it")
    start, data_len = 8 + n, size - 8 - n
    entries = {name: _entry(path, name, spec, start) for name, spec in header.items() if name != "__metadata__"}
    declared = max((e.offset - start + e.nbytes for e in entries.values()), default=0)
    if declared > data_len:
        raise ModelError(f"{path} is truncated: its header declares {declared:,} bytes of tensor data, the file "
                         f"holds {data_len:,}: re-download it")
    return entries


def _entry(path: Path, name: str, spec, start: int) -> TensorEntry:
    bad = f"{path}: tensor {name!r} has a malformed header entry {spec!r}: re-download the file"
    if not isinstance(spec, dict):
        raise ModelError(bad)
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPES:
        raise ModelError(f"{path}: tensor {name!r} has dtype {dtype!r}, which vvtrt cannot read "
                         f"(known: {', '.join(DTYPES)})")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise ModelError(bad)
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != nbytes:
        raise ModelError(f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but {dtype} "
                         f"{tuple(shape)} needs {nbytes}: the file is corrupt, re-download it")
    return TensorEntry(name, dtype, tuple(shape), path, start + offsets[0], nbytes)


def weight_files(root: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the shards its index names (each must exist),
    else `model.safetensors`, else every `*.safetensors` file. None at all is a `ModelError`."""
    index = root / INDEX_NAME
    if index.is_file():
        names = sorted(set(_index_map(index).values()))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ModelError(f"{index} names {len(missing)} weight file(s) that are not in {root}: "
                             f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: download them")
        return [root / n for n in names]
    if (root / SINGLE_NAME).is_file():
        return [root / SINGLE_NAME]
    files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if files:
        return files
    if any(root.glob("*.bin")):
        raise ModelError(f"{root} has only PyTorch *.bin weight files: vvtrt reads safetensors weights "
                         "(the released VibeVoice checkpoints ship them); convert the .bin files to safetensors")
    raise ModelError(f"{root} has no *.safetensors weight files")


def _index_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a valid safetensors index ({exc}): re-download it") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index} has no weight_map: re-download it")
    return weight_map


def scan_checkpoint(root: Path) -> dict[str, TensorEntry]:
    """Every stored tensor of a checkpoint directory, from the headers alone. A name stored twice, or
    an index that disagrees with the files' headers, is a `ModelError`."""
    entries: dict[str, TensorEntry] = {}
    for path in weight_files(root):
        for name, entry in read_header(path).items():
            if name in entries:
                raise ModelError(f"tensor {name!r} is stored twice: in {entries[name].file.name} and {path.name}")
            entries[name] = entry
    index = root / INDEX_NAME
    if index.is_file():
        wrong = [(k, f) for k, f in _index_map(index).items() if k not in entries or entries[k].file.name != f]
        if wrong:
            shown = ", ".join(f"{k} (in {f})" for k, f in wrong[:4])
            raise ModelError(f"{index} lists {len(wrong)} tensor(s) its shard headers do not hold: {shown}: "
                             "the index and the shards come from different downloads; re-download them")
    return entries


class TensorReader:
    """Reads stored tensors one at a time, each into a buffer of its own (files stay open until
    `close`; use as a context manager)."""

    def __init__(self):
        if sys.byteorder != "little":
            raise ModelError("safetensors data is little-endian; this host is big-endian")
        self._files: dict[Path, object] = {}

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def read(self, entry: TensorEntry, dtype=None, device=None):
        """The tensor of `entry`, cast to `dtype` and moved to `device` when given (one copy at a time)."""
        import torch

        f = self._files.get(entry.file)
        if f is None:
            f = self._files[entry.file] = open(entry.file, "rb")  # noqa: SIM115 - closed in close()
        raw = torch.empty(entry.nbytes, dtype=torch.uint8)
        f.seek(entry.offset)
        got = f.readinto(raw.numpy()) if entry.nbytes else 0
        if got != entry.nbytes:
            raise ModelError(f"{entry.file} ended inside tensor {entry.name!r}: the file is truncated, re-download it")
        t = raw.view(entry.torch_dtype()).reshape(entry.shape)
        if (dtype is not None and dtype != t.dtype) or device is not None:
            t = t.to(device=device, dtype=dtype)
        return t


def require_finite(entry: TensorEntry, tensor) -> None:
    """A floating tensor with a NaN or an infinity is a damaged checkpoint: a `ModelError` naming it."""
    import torch

    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ModelError(f"{entry.file}: tensor {entry.name!r} holds NaN or infinite values: the checkpoint is "
                         "damaged (or was saved from a diverged run); re-download it")
