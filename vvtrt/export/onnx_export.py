"""Export components to ONNX with the dynamo exporter at opset 23 (native RMSNormalization / Attention
nodes; bf16 Conv needs opset >= 22), then rename the dynamic axes to the spec's names and validate.

Crash safety: each graph is exported into a temporary folder inside onnx/ (its external-data file must
keep the name the graph refers to) and validated there; a failure or a kill up to this point leaves the
previous export as it was. Then the old record is removed, the files are moved into place one by one
through `fsio.atomic_path` (data first, graph last), and the new record, with the size and sha256 of every
file, is written last: a kill during the moves leaves files that no record matches, which `Workdir` never
takes as current; the next export re-exports them and sweeps the temporaries (under the work-dir lock,
which the caller holds).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vvtrt.errors import ExportError, WorkdirError
from vvtrt.export.validate import validate_onnx
from vvtrt.fsio import TMP_SUFFIX, atomic_path, atomic_write_json, is_temporary, sweep_temporaries
from vvtrt.model import kinds
from vvtrt.precision import Precision
from vvtrt.spec import ComponentSpec
from vvtrt.workdir import RECORD_FORMAT, Workdir, files_changed, sha256_file

log = logging.getLogger(__name__)
for _noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
OPSET = 23
EXTERNAL_DATA_BYTES = 1 << 30  # weights above 1 GiB go to an external .data file (protobuf limit is 2 GiB)
EXPORT_FORMAT = 3  # bump when wrappers change in a way that invalidates old exports



@functools.lru_cache(maxsize=2)
def wrapper_code_hash(kind: str = "longform") -> str:
    """sha256 over the traced wrapper code (vvtrt/components/*.py, and for Realtime graphs the Realtime
    modules they trace, named by its `vvtrt.model.kinds` entry): editing a wrapper re-exports."""
    from vvtrt import components

    h = hashlib.sha256()
    root = Path(components.__file__).parent
    files = sorted(root.glob("*.py")) + [root.parent / name for name in kinds.get(kind).traced_files]
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def export_key(spec: ComponentSpec, precision: Precision, source: dict, kind: str = "longform",
               quant=None) -> str:
    """What an export depends on. The spec's JSON carries every shape and profile derived from the export
    options (and the sampler's step count), so changing --steps re-exports the sampler alone; the wrapper
    code hash re-exports everything after a change to the traced code. `quant` (a `QuantMode`, only for a
    component the spec quantizes) re-exports the quantized components when --quant changes."""
    extra = {"quant": quant.value, "quant_code": quant_code_hash()} if quant is not None and spec.quant else {}
    blob = json.dumps({"spec": spec.to_json(), "precision": precision.value, "source": source,
                       "format": EXPORT_FORMAT, "torch": torch.__version__, "code": wrapper_code_hash(kind),
                       **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def quant_code_hash() -> str:
    """sha256 over the code that makes quantized graphs (vvtrt/quant: config, calibration, Q/DQ insertion):
    editing it re-exports them."""
    from vvtrt import quant

    h = hashlib.sha256()
    for f in (Path(quant.__file__).parent / n for n in ("config.py", "calibrate.py", "qdq.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `exc`'s chain, if the exporter failed because the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def export_component(spec: ComponentSpec, model, precision: Precision, steps: int, path: Path, quant=None,
                     calibration=None) -> dict:
    """Trace `spec`'s wrapper on `model` (already cast to `precision`) and write `path` (plus `path`.data
    when the weights exceed `EXTERNAL_DATA_BYTES`). Returns a record without the file list. `quant` (a
    `QuantMode`, for a component whose spec quantizes): calibrate the wrapper on `calibration[spec.name]` and
    insert Q/DQ nodes (`vvtrt.quant.qdq`); the record gets a "quant" entry."""
    module = spec.make_module(model, steps).eval()
    gen = torch.Generator().manual_seed(0)
    sample = spec.sample(spec.export_dims, precision, gen)
    args = tuple(sample[t.name] for t in spec.inputs)
    dyn = {t.name: {i: torch.export.Dim.DYNAMIC for i in t.axes} or None for t in spec.inputs}
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dyn, external_data=n_bytes > EXTERNAL_DATA_BYTES, verbose=False,
                report=False, optimize=True,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the component
        full = _disk_full(exc)
        if full is not None:
            raise WorkdirError(f"no space left on the device exporting {spec.name}.{precision.value} to "
                               f"{path.parent.parent}: free some disk space and re-run") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.debug("export of %s.%s failed", spec.name, precision.value, exc_info=True)
        raise ExportError(f"ONNX export of {spec.name} ({precision.value}) failed: {first} "
                          "(run with -vv for the exporter's details)") from exc
    quant_entry = _quantize(spec, module, precision, path, quant, calibration) if quant and spec.quant else None
    seconds = time.perf_counter() - t0
    validate_onnx(spec, precision, path)
    rec = {"component": spec.name, "precision": precision.value, "opset": OPSET,
           "export_seconds": round(seconds, 2), "spec": spec.to_json(), "export_dims": dict(spec.export_dims),
           "torch": torch.__version__}
    return {**rec, "quant": quant_entry} if quant_entry else rec


def _quantize(spec: ComponentSpec, module, precision: Precision, path: Path, quant, calibration) -> dict:
    """Calibrate `module` on the component's calibration feeds and rewrite the graph at `path` with Q/DQ."""
    from vvtrt.quant.calibrate import collect_amax
    from vvtrt.quant.qdq import insert_qdq

    feeds = (calibration or {}).get(spec.name)
    if not feeds:
        raise ExportError(f"{spec.name}: no calibration data for --quant {quant.value}")
    calibrated = collect_amax(module, spec.quant, feeds)
    entry = insert_qdq(path, quant, precision, calibrated, spec.quant)
    return {**entry, "calibration": calibration.get("_about", {})}


def _install(wd: Workdir, spec: ComponentSpec, model, precision: Precision, steps: int, key: str, quant=None,
             calibration=None) -> dict:
    """Export one graph into a temporary folder, then move it into onnx/ and write its record (module doc)."""
    final = wd.graph_path(spec.name, precision)
    record_path = wd.export_record_path(spec.name, precision)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    except OSError as exc:
        raise WorkdirError(f"cannot write {final.parent}: {exc.strerror or exc}") from None
    try:
        rec = export_component(spec, model, precision, steps, stage / final.name, quant, calibration)
        staged = sorted(stage.iterdir(), key=lambda f: f.name == final.name)  # the graph last
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in staged}
        record_path.unlink(missing_ok=True)  # from here on, nothing of this graph is current
        for f in staged:
            with atomic_path(final.parent / f.name) as tmp:
                os.replace(f, tmp)
        for old in final.parent.glob(final.name + "*"):  # e.g. a .data file the new graph no longer has
            if old.name not in files and not is_temporary(old) and old.is_file():
                old.unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    rec.update(record_format=RECORD_FORMAT, key=key, model=wd.source().identity(), files=files,
               onnx_sha256=files[final.name]["sha256"], bytes=sum(f["bytes"] for f in files.values()))
    atomic_write_json(record_path, rec)
    return rec


def sweep_export_temporaries(wd: Workdir) -> None:
    """Remove what a killed export left (temporary files and folders); hold the work-dir lock."""
    sweep_temporaries(wd.root)
    if wd.onnx_dir.is_dir():
        sweep_temporaries(wd.onnx_dir)
        for d in wd.onnx_dir.iterdir():
            if d.is_dir() and is_temporary(d):
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed the unfinished export folder %s", d)


def clear_strays(wd: Workdir, force: bool) -> None:
    """Refuse (or, with `force`, remove) files in onnx/ that no export owns; directories always refuse."""
    _, strays, dirs = wd.list_onnx()
    for d in dirs:
        raise WorkdirError(f"{d} is a directory where no directory belongs: remove it and re-run")
    if strays and not force:
        raise WorkdirError(f"{strays[0]} is not a file vvtrt writes ({len(strays)} such file(s) in "
                           f"{wd.onnx_dir}): remove it, or re-run with --force to remove them")
    for f in strays:
        log.warning("removing stray file %s", f)
        f.unlink()


def export_all(wd: Workdir, model_factory, specs: dict[str, ComponentSpec], precisions, steps: int,
               force: bool = False, progress=None, calibrate=None) -> list[dict]:
    """Export every (component, precision) of `specs` x `precisions` that is not current (all of them with
    `force`), and every other graph already in the work dir that is no longer current, e.g. one exported
    with another --steps than workdir.json now says, so that no two current graphs disagree on settings.

    A graph is current when its record matches the export key and every file matches the record's size and
    sha256. `model_factory(precision)` returns the model cast to that precision (called once per precision,
    fp32 first). The caller holds the work-dir lock. A quantized work dir (`Workdir.quant`) quantizes the
    components whose spec says so; `calibrate(model, precision)` gives their calibration feeds.
    """
    identity, kind, quant = wd.source().identity(), wd.kind, wd.quant()
    sweep_export_temporaries(wd)
    clear_strays(wd, force)
    scan = wd.scan()
    catalog = wd.specs()
    wanted = [(spec.name, p) for p in precisions for spec in specs.values()]
    todo, records = [], []
    for comp, p in wanted + sorted(set(scan.entries) - set(wanted), key=lambda cp: (cp[1].value, cp[0])):
        key = export_key(catalog[comp], p, identity, kind, quant)
        entry = scan.entries.get((comp, p))
        why = _stale_reason(wd, entry, key)
        if why is None and not (force and (comp, p) in wanted):
            log.info("skip %s.%s: up to date", comp, p.value)
            records.append({**entry.record, "skipped": True})
            continue
        if (comp, p) not in wanted:
            log.warning("also re-exporting %s.%s: %s", comp, p.value, why)
        todo.append((p, catalog[comp], key))
    wd.onnx_dir.mkdir(parents=True, exist_ok=True)
    todo.sort(key=lambda t: list(Precision).index(t[0]))  # fp32 first, from the fresh model
    model, model_p, calibration = None, None, None
    for p, spec, key in todo:
        if model_p != p:
            model = calibration = None
            model, model_p = model_factory(p), p
        if quant and spec.quant and calibration is None:
            calibration = calibrate(model, p)
        if progress:
            progress(f"{spec.name}.{p.value}")
        rec = _install(wd, spec, model, p, steps, key, quant if spec.quant else None, calibration)
        log.info("exported %s.%s in %.1fs", spec.name, p.value, rec["export_seconds"])
        records.append(rec)
    return records


def _stale_reason(wd: Workdir, entry, key: str) -> str | None:
    """Why an export is not current (None if it is)."""
    if entry is None:
        return "not exported"
    if entry.problem:
        return entry.problem
    if entry.record["key"] != key:
        return "exported with other settings, another torch or other wrapper code"
    return files_changed(wd.onnx_dir, entry.record)
