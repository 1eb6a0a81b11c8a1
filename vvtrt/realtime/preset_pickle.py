"""Read Microsoft's Realtime voice presets (`*.pt`, torch zip pickles) without executing anything from the
file.

Why not `torch.load`: a full unpickle runs whatever callable the pickle names (`os.system` included), and
`torch.load(weights_only=True)` refuses these files anyway (they hold transformers objects). So this
module reads the zip itself: `data.pkl` goes through a `pickle.Unpickler` whose `find_class` allows
exactly the five globals the presets contain, each replaced by a harmless stand-in of ours (plain
containers for the two transformers classes, our own tensor rebuild, a dtype marker for the storage
class); anything else, e.g. `os.system` or `builtins.eval`, is an `InputError` before it can be called.
Tensor storages are read as raw bytes from `<archive>/data/<key>` with their sizes checked against the
zip entry, and every view's bounds are checked before it is taken. Nothing is moved to a GPU (the files
say `cuda:0`).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from vvtrt.errors import InputError, require_file
from vvtrt.realtime.voices import BRANCHES, BranchCache, VoicePreset, is_wav_file

# A released preset is a few MB (a 100 KB pickle and bf16 storages); refuse absurd sizes before reading:
# every zip entry is read with a cap, whatever its header claims (a small file can inflate to gigabytes).
MAX_PICKLE_BYTES = 4 * 2**20
MAX_BYTES = 256 * 2**20  # all storages together


class _Output(dict):
    """Stand-in for `transformers.modeling_outputs.BaseModelOutputWithPast` (a dict of its fields)."""

    FIELDS = ("last_hidden_state", "past_key_values", "hidden_states", "attentions")

    def __init__(self, *args):
        super().__init__()
        if len(args) > len(self.FIELDS):
            raise pickle.UnpicklingError("BaseModelOutputWithPast with too many fields")
        for name, value in zip(self.FIELDS, args):
            if value is not None:
                self[name] = value

    def __setstate__(self, state):  # ModelOutput's pickled __dict__: nothing we need
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("unexpected BaseModelOutputWithPast state")


class _Cache:
    """Stand-in for `transformers.cache_utils.DynamicCache`: keeps `key_cache` / `value_cache` lists."""

    ALLOWED = {"key_cache", "value_cache", "_seen_tokens", "layers", "layer_class_to_replicate", "offloading",
               "is_compileable", "_distributed_cache_data"}

    def __setstate__(self, state):
        if not isinstance(state, dict) or not set(state) <= self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected DynamicCache state {sorted(state)[:6] if isinstance(state, dict) else type(state)}")
        self.key_cache = state.get("key_cache")
        self.value_cache = state.get("value_cache")


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """Our `torch._utils._rebuild_tensor_v2`: a bounds-checked strided view of a storage, copied."""
    if not isinstance(storage, torch.Tensor) or not all(isinstance(x, int) for x in (offset, *size, *stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    if len(size) != len(stride) or offset < 0 or min(size, default=1) < 0 or min(stride, default=0) < 0:
        raise pickle.UnpicklingError("malformed tensor shape")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.numel():
        raise pickle.UnpicklingError(f"tensor view {tuple(size)} runs past its storage of {storage.numel()} elements")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch", "BFloat16Storage"): _StorageType(torch.bfloat16),
    ("transformers.modeling_outputs", "BaseModelOutputWithPast"): _Output,
    ("transformers.cache_utils", "DynamicCache"): _Cache,
}


class _PresetUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, where: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.where = archive, prefix, where
        self.total = 0

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputError(f"{self.where}: the pickle asks for {module}.{name}, which a voice preset never "
                             "contains; refused (nothing from the file was run)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        name = f"{self.prefix}data/{key}"
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
        if info.file_size != numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {info.file_size} bytes, the pickle says {numel * itemsize}")
        self.total += info.file_size
        if self.total > MAX_BYTES:
            raise InputError(f"{self.where}: its tensors would take more than {MAX_BYTES // 2**20} MiB, far more "
                             "than a voice preset (a few MB): refused before reading them")
        raw = bytearray(read_capped(self.archive, info, info.file_size, self.where))
        return torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)


def read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where: str) -> bytes:
    """A zip entry's bytes, reading at most `cap` + 1 of them (an `InputError` past `cap`)."""
    if info.file_size > cap:
        raise InputError(f"{where}: {info.filename} declares {info.file_size:,} bytes, more than a voice preset "
                         f"holds ({cap:,} at most): refused before reading it")
    with archive.open(info) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise InputError(f"{where}: {info.filename} inflates past {cap:,} bytes, more than a voice preset holds: "
                         "refused")
    return data


def _wav_hint(path: Path) -> None:
    if is_wav_file(path):
        raise InputError(f"{path} is a .wav clip, not a voice preset: a Realtime voice is a prefilled cache, made from "
                         "Microsoft's .pt presets with `vvtrt voices import FILE.pt -o DIR` (a clip cannot be imported)")


def read_preset_pickle(path) -> dict:
    """The branches of a Microsoft preset as `{branch: {"hidden": [1, L, H], "k": [..], "v": [..]}}`."""
    path = require_file(path, "voice preset", "a .pt voice preset file")
    _wav_hint(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a torch zip archive ({exc}): pass a Realtime voice preset .pt file") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise InputError(f"{path}: expected one <archive>/data.pkl in the zip, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        order = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in archive.namelist() else "little"
        if order != "little":
            raise InputError(f"{path}: byte order {order!r} is not supported (little-endian only)")
        try:
            data = read_capped(archive, archive.getinfo(pkls[0]), MAX_PICKLE_BYTES, str(path))
            obj = _PresetUnpickler(data, archive, prefix, str(path)).load()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed pickle is the file's fault
            raise InputError(f"{path}: not a readable voice preset ({type(exc).__name__}: {exc})") from None
    return _branches(obj, path)


def _branches(obj, path: Path) -> dict:
    if not isinstance(obj, dict) or set(obj) != set(BRANCHES):
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: a voice preset maps {', '.join(BRANCHES)}; this file holds {keys}")
    out = {}
    for b in BRANCHES:
        o = obj[b]
        cache = o.get("past_key_values") if isinstance(o, _Output) else None
        hidden = o.get("last_hidden_state") if isinstance(o, _Output) else None
        if not isinstance(cache, _Cache) or not isinstance(hidden, torch.Tensor):
            raise InputError(f"{path}: branch {b!r} is not a model output with a KV cache")
        ks, vs = cache.key_cache, cache.value_cache
        if not (isinstance(ks, list) and isinstance(vs, list) and ks and len(ks) == len(vs)
                and all(isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == 1 for t in ks + vs)):
            raise InputError(f"{path}: branch {b!r} has a malformed KV cache")
        if hidden.dim() != 3 or hidden.shape[0] != 1:
            raise InputError(f"{path}: branch {b!r} hidden state has shape {tuple(hidden.shape)}, expected (1, L, H)")
        try:
            k, v = torch.stack([t[0] for t in ks]), torch.stack([t[0] for t in vs])
        except RuntimeError:
            raise InputError(f"{path}: branch {b!r} has KV layers of different shapes") from None
        out[b] = BranchCache(hidden[0], k, v)
    return out


def import_preset(path, name: str | None = None) -> VoicePreset:
    """A Microsoft `.pt` preset as a `VoicePreset` (shapes not yet checked against a model)."""
    import hashlib

    path = Path(path)
    branches = read_preset_pickle(path)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            sha.update(block)
    digest = sha.hexdigest()[:16]
    return VoicePreset(name or path.stem, branches, f"import {path.name} sha256:{digest}")
