"""`manifest.json`: what each engine in one `engines/<key>/` folder is, and whether it can run here.

Layout (one folder per flavor + version + target, so engines for several GPUs or releases coexist):

    engines/tensorrt-rtx-1.7.1.116-portable/manifest.json
        {"format": 1, "key": ..., "flavor": ..., "trt_version": ..., "target": ...,
         "engines": {"lm_decode.bf16": {<entry>}, ...}}

An entry records the component and dtype, the engine file's name/size/sha256, the source ONNX sha256, the
TensorRT flavor/version, the target ("portable" or "smXY") and the compute capabilities it runs on, the GPU it
was built on (None for CPU-only builds), profiles, I/O tensors and a per-layer precision summary. Everything
here is pure Python: the checks are unit-tested without TensorRT or a GPU.

Bad files: the runtime reads manifests strictly (an unreadable or edited manifest, or a directory in its place,
is an `EngineMismatchError`), checks the engine bytes it deserializes against their recorded size and sha256,
and names any engine file no manifest lists instead of loading it; every such error is one line naming the
`vvtrt build` command that fixes it. The builder drops what it cannot trust and rebuilds it (`read_manifest`,
`is_up_to_date`). Manifests are written atomically (`vvtrt.fsio`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import BackendUnavailableError, EngineMismatchError, WorkdirError
from vvtrt.fsio import atomic_write_json
from vvtrt.workdir import sha256_file

log = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def entry_key(component: str, dtype: str) -> str:
    return f"{component}.{dtype}"


def engine_filename(component: str, dtype: str) -> str:
    return f"{component}.{dtype}.engine"


def empty_manifest(key: str = "", flavor: str = "", version: str = "", target: str = "") -> dict:
    return {"format": MANIFEST_FORMAT, "key": key, "flavor": flavor, "trt_version": version, "target": target,
            "engines": {}}


def _build_command(folder: Path) -> str:
    flavor = "tensorrt-rtx" if Path(folder).name.startswith("tensorrt-rtx-") else "tensorrt"
    return f"vvtrt build -w {Path(folder).parent.parent} --flavor {flavor} --force"


def entry_problem(key: str, entry) -> str | None:
    """What is wrong with one manifest entry (None if nothing): every field the runtime trusts must be there, of
    its type, and the engine file name must be the one the builder writes (a tampered name cannot point
    elsewhere)."""
    if not isinstance(entry, dict):
        return f"entry {key!r} is not a table"
    comp, dtype = entry.get("component"), entry.get("dtype")
    if not (isinstance(comp, str) and isinstance(dtype, str) and key == entry_key(comp, dtype)):
        return f"entry {key!r} names component {comp!r} / dtype {dtype!r}"
    if entry.get("engine") != engine_filename(comp, dtype):
        return f"entry {key!r} points at {entry.get('engine')!r}, not {engine_filename(comp, dtype)!r}"
    size, sha = entry.get("engine_bytes"), entry.get("engine_sha256")
    if not (type(size) is int and size > 0):
        return f"entry {key!r} has engine_bytes {size!r}"
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return f"entry {key!r} has no valid engine_sha256"
    for field in ("flavor", "trt_version", "target", "onnx_sha256"):
        if not isinstance(entry.get(field), str):
            return f"entry {key!r} has {field} {entry.get(field)!r}"
    ccs = entry.get("compute_capabilities")
    if not (isinstance(ccs, list) and all(isinstance(c, str) for c in ccs)):
        return f"entry {key!r} has compute_capabilities {ccs!r}"
    return None


def read_manifest(folder: Path, strict: bool = False) -> dict:
    """The folder's manifest; an empty one if absent.

    A manifest that is unreadable, not a manifest, or a directory raises `EngineMismatchError` when `strict` (the
    runtime: never guess which engine is current); otherwise it is logged and read as empty (the builder then
    rebuilds every engine of the folder). A malformed entry (see `entry_problem`) is likewise an error when
    `strict`, else dropped with a warning (that engine is rebuilt).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return empty_manifest()
    try:
        if path.is_dir():
            raise ValueError("a directory where the manifest file belongs")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("engines"), dict):
            raise ValueError("no 'engines' table")
    except (OSError, ValueError) as exc:
        if strict:
            raise EngineMismatchError(f"{path} is unreadable ({exc}); remove it and rebuild the engines with "
                                      f"`{_build_command(folder)}`") from None
        log.warning("ignoring unreadable %s (%s): its engines will be rebuilt", path, exc)
        return empty_manifest()
    engines = {}
    for key, entry in data["engines"].items():
        problem = entry_problem(key, entry)
        if problem is None:
            engines[key] = entry
        elif strict:
            raise EngineMismatchError(f"{path}: {problem} (edited or corrupt); rebuild the engines with "
                                      f"`{_build_command(folder)}`")
        else:
            log.warning("%s: %s; that engine will be rebuilt", path, problem)
    return {**data, "engines": engines}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write atomically (`vvtrt.fsio`): a crash leaves the old manifest or the new one, never half of one."""
    return atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)


def merge_entries(manifest: dict, entries: list[dict], **header) -> dict:
    """Return `manifest` with `entries` added or replaced (keyed by component.dtype) and header fields set."""
    out = {**empty_manifest(), **manifest, **{k: v for k, v in header.items() if v is not None}}
    out["engines"] = dict(manifest.get("engines", {}))
    for e in entries:
        out["engines"][entry_key(e["component"], e["dtype"])] = e
    out["engines"] = dict(sorted(out["engines"].items()))
    return out


# -- run-time checks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeInfo:
    """The TensorRT and GPU an engine is about to run on."""

    flavor: str
    version: str
    compute_capability: str | None  # "9.0"; None without a CUDA GPU
    gpu_name: str | None = None

    @classmethod
    def current(cls, trt_module, device=None) -> "RuntimeInfo":
        """From the loaded `TrtModule` and torch's view of the CUDA device."""
        import torch

        if not torch.cuda.is_available():
            return cls(trt_module.flavor, trt_module.version, None, None)
        dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        major, minor = torch.cuda.get_device_capability(dev)
        return cls(trt_module.flavor, trt_module.version, f"{major}.{minor}", torch.cuda.get_device_name(dev))


def rebuild_command(workdir, flavor: str, component: str) -> str:
    return f"vvtrt build -w {workdir} --flavor {flavor} --components {component} --force"


def check_engine(entry: dict, runtime: RuntimeInfo, workdir="DIR") -> None:
    """Raise `EngineMismatchError` (with the exact rebuild command) unless `entry` can run on `runtime`."""
    name = entry_key(entry.get("component", "?"), entry.get("dtype", "?"))
    cmd = rebuild_command(workdir, runtime.flavor, entry.get("component", "COMPONENT"))
    if runtime.compute_capability is None:
        raise BackendUnavailableError(f"engine {name} needs a CUDA GPU and none is visible here")
    if entry.get("flavor") != runtime.flavor or entry.get("trt_version") != runtime.version:
        raise EngineMismatchError(
            f"engine {name} was built by {entry.get('flavor')} {entry.get('trt_version')}, but this runtime is "
            f"{runtime.flavor} {runtime.version} (engines only load in the exact release that built them); "
            f"rebuild it: `{cmd}`")
    ccs = entry.get("compute_capabilities") or []
    if runtime.compute_capability not in ccs:
        built_on = f" on {entry['gpu_name']}" if entry.get("gpu_name") else ""
        raise EngineMismatchError(
            f"engine {name} was built for compute capability {', '.join(ccs) or '?'} (target "
            f"{entry.get('target')}{built_on}), but {runtime.gpu_name or 'this GPU'} is "
            f"{runtime.compute_capability}; rebuild it: `{cmd}`")


def engine_file_problem(path: Path, entry: dict, verify_sha: bool = True, blob: bytes | None = None) -> str | None:
    """Why the engine file at `path` (or its bytes `blob`, already read) is not the one `entry` describes
    (missing, a directory, truncated, altered); None when it is. The sha256 is compared unless `verify_sha` is
    False (then only the size)."""
    path = Path(path)
    if blob is None:
        if path.is_dir():
            return f"{path} is a directory where the engine file belongs"
        if not path.is_file():
            return f"engine file {path} is missing"
    size = len(blob) if blob is not None else path.stat().st_size
    if size != entry.get("engine_bytes"):
        return (f"engine file {path} is {size} bytes but the manifest says {entry.get('engine_bytes')} "
                f"(truncated or replaced)")
    if verify_sha:
        sha = hashlib.sha256(blob).hexdigest() if blob is not None else sha256_file(path)
        if sha != entry.get("engine_sha256"):
            return f"engine file {path} does not match its manifest checksum (corrupt or replaced)"
    return None


def _mismatch(problem: str, entry: dict, workdir, flavor: str | None) -> EngineMismatchError:
    name = entry_key(entry.get("component", "?"), entry.get("dtype", "?"))
    cmd = rebuild_command(workdir, flavor or entry.get("flavor", "FLAVOR"), entry.get("component", "COMPONENT"))
    return EngineMismatchError(f"{problem} ({name}); rebuild it: `{cmd}`")


def check_engine_file(path: Path, entry: dict, verify_sha: bool = True, workdir="DIR", flavor: str | None = None):
    """Raise `EngineMismatchError` naming the rebuild command if the engine file is not the one the build wrote."""
    problem = engine_file_problem(path, entry, verify_sha)
    if problem:
        raise _mismatch(problem, entry, workdir, flavor)


def read_engine(path: Path, entry: dict, verify_sha: bool = True, workdir="DIR", flavor: str | None = None) -> bytes:
    """The engine's bytes, checked against `entry` after reading (what is checked is what gets deserialized)."""
    problem = engine_file_problem(path, entry, verify_sha=False)  # missing, directory, size: before reading
    if problem is None:
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            problem = f"engine file {path} is unreadable ({exc.strerror or exc})"
        else:
            problem = engine_file_problem(path, entry, verify_sha, blob)
    if problem:
        raise _mismatch(problem, entry, workdir, flavor)
    return blob


def list_entries(engines_dir: Path, strict: bool = False) -> list[tuple[Path, dict]]:
    """(folder, entry) for every engine of every manifest under `engines_dir` (see `read_manifest` for `strict`)."""
    out = []
    for mpath in sorted(Path(engines_dir).glob(f"*/{MANIFEST_NAME}")):
        for entry in read_manifest(mpath.parent, strict).get("engines", {}).values():
            out.append((mpath.parent, entry))
    return out


def unlisted_engines(engines_dir: Path, component: str, dtype: str) -> list[Path]:
    """Engine files for (component, dtype) that no manifest lists (stray: copied in, or left by an old build)."""
    listed = {folder / e["engine"] for folder, e in list_entries(engines_dir)}
    return [p for p in sorted(Path(engines_dir).glob(f"*/{engine_filename(component, dtype)}")) if p not in listed]


def find_engine(engines_dir: Path, runtime: RuntimeInfo, component: str, dtype: str,
                workdir="DIR") -> tuple[Path, dict]:
    """The best engine for (component, dtype) that can run on `runtime`: `(engine path, entry)`.

    Every manifest is read strictly (an unreadable or edited one is an `EngineMismatchError`). Prefers an engine
    built for exactly this GPU's compute capability over a portable one. If engines exist but none fits, raises
    the `EngineMismatchError` of the closest one (same flavor first), naming the rebuild command; if none exists,
    a `WorkdirError` saying to run `vvtrt build` (and naming any engine file that no manifest lists).
    """
    engines_dir = Path(engines_dir)
    if engines_dir.exists() and not engines_dir.is_dir():
        raise WorkdirError(f"{engines_dir} is a file where a directory belongs: remove it and re-run `vvtrt build`")
    found = [(f, e) for f, e in list_entries(engines_dir, strict=True)
             if e.get("component") == component and e.get("dtype") == dtype]
    if not found:
        build = f"vvtrt build -w {workdir} --flavor {runtime.flavor} --components {component}"
        stray = unlisted_engines(engines_dir, component, dtype) if engines_dir.is_dir() else []
        if stray:
            raise WorkdirError(f"{stray[0]} is not listed in its folder's manifest (a stray file, or one an "
                               f"interrupted build left); it is never loaded: run `{build} --force`")
        raise WorkdirError(f"no {runtime.flavor} engine for {component}.{dtype} under {engines_dir}: run "
                           f"`{build}` first")
    fits, first_error = [], None
    for folder, entry in sorted(found, key=lambda fe: fe[1].get("flavor") != runtime.flavor):
        try:
            check_engine(entry, runtime, workdir)
        except EngineMismatchError as exc:
            first_error = first_error or exc
            continue
        fits.append((folder, entry))
    if not fits:
        raise first_error
    want = "sm" + (runtime.compute_capability or "").replace(".", "")
    folder, entry = sorted(fits, key=lambda fe: fe[1].get("target") != want)[0]
    return folder / entry["engine"], entry


def is_up_to_date(entry: dict | None, engine_path: Path, onnx_sha256: str, flavor: str, version: str,
                  target: str) -> bool:
    """Whether a build can be skipped: same source ONNX, TensorRT release and target, and the engine file
    byte-for-byte the one the manifest describes (size and sha256: a tampered engine is rebuilt, never kept)."""
    if not entry:
        return False
    same = (entry.get("onnx_sha256") == onnx_sha256 and entry.get("flavor") == flavor
            and entry.get("trt_version") == version and entry.get("target") == target)
    if not same:
        return False
    problem = engine_file_problem(engine_path, entry)
    if problem:
        log.warning("%s: rebuilding it", problem)
    return problem is None


# -- per-layer precision summary -------------------------------------------------------------------
def norm_precision(s: str) -> str:
    """A TensorRT datatype/format string ("Half", "BFloat16", "Row major linear FP32 format") -> fp16/bf16/fp32..."""
    s = str(s).lower()
    for keys, name in ((("bf16", "bfloat"), "bf16"), (("fp16", "half"), "fp16"), (("fp8",), "fp8"),
                       (("fp32", "float"), "fp32"), (("int64",), "int64"), (("int32",), "int32"),
                       (("uint8",), "uint8"), (("int8",), "int8"), (("bool",), "bool")):
        if any(k in s for k in keys):
            return name
    return s or "none"


def _summary(types: Counter, precs: Counter, source: str, detailed: bool = True) -> dict:
    return {"available": True, "source": source, "detailed": detailed, "count": sum(types.values()),
            "by_precision": dict(precs.most_common()), "by_type": dict(types.most_common())}


def summarize_inspector_json(text: str) -> dict:
    """Count layers per type and per output precision from `IEngineInspector` JSON (TensorRT 10's
    "Format/Datatype" field or TensorRT 11's separate "Datatype"). Without DETAILED verbosity layers are names."""
    layers = json.loads(text).get("Layers", [])
    types, precs, detailed = Counter(), Counter(), True
    for layer in layers:
        if not isinstance(layer, dict):
            detailed = False
            types["unknown"] += 1
            continue
        types[layer.get("LayerType", "unknown")] += 1
        tensors = layer.get("Outputs") or layer.get("Inputs") or []
        t = tensors[0] if tensors and isinstance(tensors[0], dict) else {}
        precs[norm_precision(t.get("Datatype") or t.get("DataType") or t.get("Format/Datatype") or "")] += 1
    return _summary(types, precs, "engine_inspector", detailed)


_LINE_TYPE = re.compile(r"LayerType: ([^,]+)")
_LINE_OUT = re.compile(r"Outputs: \[(.*?)\], TacticName")
_LINE_DT = re.compile(r"Datatype: ([^,}]+)")


def summarize_layer_log(dump: str) -> dict:
    """The same counts from the builder's own per-layer report (logged at VERBOSE with DETAILED verbosity), used
    when no engine can be deserialized here (a CPU-only TensorRT-RTX build)."""
    types, precs = Counter(), Counter()
    for line in dump.splitlines():
        if not line.startswith("Name:"):
            continue
        m = _LINE_TYPE.search(line)
        types[m.group(1).strip() if m else "unknown"] += 1
        out = _LINE_OUT.search(line)
        dt = _LINE_DT.search(out.group(1)) if out else None
        precs[norm_precision(dt.group(1)) if dt else "none"] += 1
    return _summary(types, precs, "builder_log")
