"""Export components to ONNX with the dynamo exporter at opset 23 (native RMSNormalization / Attention
nodes; bf16 Conv needs opset >= 22), then rename the dynamic axes to the spec's names and validate."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import torch

from vvtrt.errors import ExportError
from vvtrt.export.validate import validate_onnx
from vvtrt.precision import Precision
from vvtrt.spec import ComponentSpec
from vvtrt.workdir import Workdir, sha256_file

log = logging.getLogger(__name__)
for _noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
OPSET = 23
EXTERNAL_DATA_BYTES = 1 << 30  # weights above 1 GiB go to an external .data file (protobuf limit is 2 GiB)
EXPORT_FORMAT = 3  # bump when wrappers change in a way that invalidates old exports


@functools.lru_cache(maxsize=1)
def wrapper_code_hash() -> str:
    """sha256 over the traced wrapper code (vvtrt/components/*.py): editing a wrapper re-exports."""
    from vvtrt import components

    h = hashlib.sha256()
    for f in sorted(Path(components.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def export_key(spec: ComponentSpec, precision: Precision, source: dict) -> str:
    """What an export depends on. The spec's JSON carries every shape and profile derived from the export
    options (and the sampler's step count), so changing --steps re-exports the sampler alone; the wrapper
    code hash re-exports everything after a change to the traced code."""
    blob = json.dumps({"spec": spec.to_json(), "precision": precision.value, "source": source,
                       "format": EXPORT_FORMAT, "torch": torch.__version__, "code": wrapper_code_hash()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export_component(spec: ComponentSpec, model, precision: Precision, steps: int, path: Path) -> dict:
    """Trace `spec`'s wrapper on `model` (already cast to `precision`) and write `path`. Returns a record."""
    module = spec.make_module(model, steps).eval()
    gen = torch.Generator().manual_seed(0)
    sample = spec.sample(spec.export_dims, precision, gen)
    args = tuple(sample[t.name] for t in spec.inputs)
    dyn = {t.name: {i: torch.export.Dim.DYNAMIC for i in t.axes} or None for t in spec.inputs}
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
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
        raise ExportError(f"ONNX export of {spec.name} ({precision.value}) failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    validate_onnx(spec, precision, path)
    return {"component": spec.name, "precision": precision.value, "opset": OPSET,
            "export_seconds": round(seconds, 2), "onnx_sha256": sha256_file(path),
            "bytes": path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "*.data")),
            "spec": spec.to_json(), "export_dims": dict(spec.export_dims), "torch": torch.__version__}


def export_all(wd: Workdir, model_factory, specs: dict[str, ComponentSpec], precisions, steps: int,
               force: bool = False, progress=None) -> list[dict]:
    """Export every (component, precision), skipping those whose record matches the current inputs.

    `model_factory(precision)` returns the model cast to that precision (built lazily, once per precision).
    """
    meta = wd.meta()
    todo, records = [], []
    for p in precisions:
        for spec in specs.values():
            key = export_key(spec, p, meta["model"])
            rec = wd.export_record(spec.name, p)
            if not force and rec and rec.get("key") == key and wd.onnx_path(spec.name, p).is_file():
                log.info("skip %s.%s: up to date", spec.name, p.value)
                records.append({**rec, "skipped": True})
            else:
                todo.append((p, spec, key))
    model, model_p = None, None
    for p, spec, key in todo:
        if model_p != p:
            model = None
            model, model_p = model_factory(p), p
        if progress:
            progress(f"{spec.name}.{p.value}")
        path = wd.onnx_path(spec.name, p)
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
        rec = export_component(spec, model, p, steps, path)
        rec["key"] = key
        wd.export_record_path(spec.name, p).write_text(json.dumps(rec, indent=2))
        log.info("exported %s.%s in %.1fs", spec.name, p.value, rec["export_seconds"])
        records.append(rec)
    return records
