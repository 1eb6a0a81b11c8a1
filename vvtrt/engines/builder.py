"""Build TensorRT / TensorRT-RTX engines from the work directory's ONNX files.

For each exported (component, dtype): a strongly typed network parsed from the ONNX file (by path, so external
`.onnx.data` weights load; the graph's dtypes decide the precision), one optimization profile per
`spec.profiles` entry, the shared timing cache (full TensorRT only), and the engine plus its `manifest.json`
entry under `engines/<flavor>-<version>-<target>/`. TensorRT-RTX engines are built with
`REQUIRE_USER_ALLOCATION` so that they can be CUDA-graph captured (`TrtModule.require_user_allocation`).
Every TensorRT return value is checked; failures raise `BuildError` carrying every parser error or the
builder's logged errors.

An engine is skipped only when its manifest entry names the same source ONNX, TensorRT release and target and
the file still has the recorded size and sha256: a missing, truncated, corrupt or edited engine, or an unreadable
or edited manifest (`manifest.read_manifest` drops what it cannot trust), is rebuilt. Engine, manifest and timing
cache are written atomically (`vvtrt.fsio`), engine first: a build killed at any point leaves nothing that a
later run takes as current. A directory (or file) where the build must write is refused before building.

One copy of the LLM weights: the LLM is one exported graph, lm_decode (T new tokens against a KV cache), that
serves the decode steps and the prompt prefill, so it is one engine with several optimization profiles (TensorRT
shares weights only within one engine): one per KV bucket for decode steps (batch 1..max_batch, T = 1, the
bucket's length) and one for prefill chunks (batch 1, T 1..prefill_chunk, the cache so far 1..max_prompt); the
runner picks the profile by shape (`vvtrt.runtime.trt_runner.select_profile`). The profiles are in the engine
(`ICudaEngine.num_optimization_profiles`, checked at load) and in its manifest entry. Execution is not verified
on a GPU here.
"""
from __future__ import annotations

import hashlib
import logging
import resource
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from vvtrt.components.specs import check_components
from vvtrt.engines import manifest as mf
from vvtrt.engines.trt_api import TrtModule, load_trt, parse_sm, sm_tag
from vvtrt.errors import BackendUnavailableError, BuildError, InputError, WorkdirError
from vvtrt.fsio import atomic_write_bytes
from vvtrt.model import kinds
from vvtrt.precision import Precision, parse_precisions
from vvtrt.spec import AxisRange, ComponentSpec
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildTarget:
    """Where engines are meant to run: `target` is "portable" (RTX, no target set) or "smXY"."""

    flavor: str
    version: str
    target: str
    compute_capabilities: tuple[str, ...]
    gpu_name: str | None = None  # the GPU present at build time (None for a CPU-only RTX build)
    rtx_cc: str | None = None  # passed to `set_compute_capability` (RTX only)

    @property
    def key(self) -> str:
        return f"{self.flavor}-{self.version}-{self.target}"


def _gpu() -> tuple[str, str] | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}", torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" for the builder
        pass
    return None


def resolve_target(tm: TrtModule, target_sm=None) -> BuildTarget:
    """The engine target for `target_sm` (None, "current", or a capability such as 86 / "8.6")."""
    gpu = _gpu()
    if tm.is_rtx:
        if target_sm is None:
            return BuildTarget(tm.flavor, tm.version, "portable", tuple(tm.portable_capabilities()),
                               gpu[1] if gpu else None)
        if str(target_sm).lower() == "current":
            if gpu is None:
                raise InputError("--target-sm current needs a CUDA GPU; none is visible (give e.g. 86, or none "
                                 "for a portable engine)")
            cc = gpu[0]
        else:
            cc = parse_sm(target_sm)
        if cc not in tm.rtx_capabilities():
            raise InputError(f"TensorRT-RTX {tm.version} cannot target compute capability {cc}: choose one of "
                             f"{', '.join(tm.rtx_capabilities())} (datacenter GPUs such as the H100 (9.0) need "
                             f"--flavor tensorrt)")
        return BuildTarget(tm.flavor, tm.version, sm_tag(cc), (cc,), gpu[1] if gpu else None, cc)
    # Full TensorRT builds (and times kernels) on the GPU it targets.
    if gpu is None:
        raise BackendUnavailableError("full TensorRT builds engines on the GPU they will run on and no CUDA GPU "
                                      "is visible; use --flavor tensorrt-rtx for a CPU-only build")
    if target_sm not in (None, "current") and parse_sm(target_sm) != gpu[0]:
        raise InputError(f"full TensorRT builds for the GPU present ({gpu[1]}, {gpu[0]}), not "
                         f"{parse_sm(target_sm)}: drop --target-sm or build on that GPU")
    return BuildTarget(tm.flavor, tm.version, sm_tag(gpu[0]), (gpu[0],), gpu[1])


def profile_shapes(spec: ComponentSpec, profile: Mapping[str, AxisRange]) -> dict[str, tuple[tuple, tuple, tuple]]:
    """Input name -> (min, opt, max) shapes for one spec profile; fixed dims are used as they are."""
    out = {}
    for t in spec.inputs:
        mins, opts, maxs = [], [], []
        for d in t.shape:
            if isinstance(d, int):
                mins.append(d), opts.append(d), maxs.append(d)
                continue
            if d not in profile:
                raise BuildError(f"{spec.name}: profile {dict(profile)} has no range for axis {d!r} of input "
                                 f"{t.name!r}")
            r = profile[d]
            mins.append(r.min), opts.append(r.opt), maxs.append(r.max)
        out[t.name] = (tuple(mins), tuple(opts), tuple(maxs))
    return out


def layer_summary(tm: TrtModule, serialized, dump: str | None) -> dict:
    """Engine-inspector summary when the engine deserializes here; otherwise say why, plus the builder's log."""
    reason = "no CUDA GPU here: the engine inspector needs a deserialized engine"
    if _gpu() is not None:
        lg = tm.logger()
        lg.clear()
        runtime = tm.trt.Runtime(lg)
        invalid = tm.engine_validity(runtime, serialized) if runtime is not None else ["no runtime"]
        engine = None if invalid else runtime.deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector() if engine is not None else None
        text = inspector.get_engine_information(tm.trt.LayerInformationFormat.JSON) if inspector else None
        if text:
            return mf.summarize_inspector_json(text)
        reason = "engine does not load on this GPU: " + ("; ".join(invalid or lg.errors) or "no detail")
    out = mf.summarize_layer_log(dump) if dump else {"available": False}
    out["inspector"] = f"unavailable ({reason})"
    return out


# -- building ---------------------------------------------------------------------------------------
class TimingCache:
    """One timing cache shared by a build session: loaded from `path` if present, saved (atomically) after each
    build. An unreadable or corrupt file is logged and replaced by a new cache; a directory in its place is a
    `WorkdirError`."""

    def __init__(self, tm: TrtModule, path: Path):
        self.tm, self.path, self.cache = tm, Path(path), None

    def _read(self) -> bytes:
        if self.path.is_dir():
            raise WorkdirError(f"{self.path} is a directory where the timing cache belongs: remove it and re-run")
        try:
            return self.path.read_bytes() if self.path.is_file() else b""
        except OSError as exc:
            log.warning("cannot read timing cache %s (%s); starting a new one", self.path, exc)
            return b""

    def attach(self, config) -> str:
        if not self.tm.supports_timing_cache:
            return "not used (TensorRT-RTX does no build-time autotuning)"
        if self.cache is None:
            blob = self._read()
            self.cache = config.create_timing_cache(blob)
            if self.cache is None and blob:
                log.warning("timing cache %s is unreadable; starting a new one", self.path)
                self.cache = config.create_timing_cache(b"")
            if self.cache is None:
                raise BuildError("could not create a TensorRT timing cache")
        if not config.set_timing_cache(self.cache, False):
            raise BuildError(f"TensorRT rejected the timing cache {self.path}; delete it and rebuild")
        return str(self.path)

    def save(self) -> None:
        if self.cache is None:
            return
        data = self.cache.serialize()
        if data is None:
            raise BuildError("could not serialize the TensorRT timing cache")
        atomic_write_bytes(self.path, memoryview(data))


def _errors(lg, what: str) -> str:
    msgs = lg.errors or ["(TensorRT logged no error)"]
    return f"{what}:\n  " + "\n  ".join(msgs)


def parse_network(tm: TrtModule, lg, onnx_path: Path):
    """Builder, strongly typed network and parser for `onnx_path`; `BuildError` lists every parser error."""
    trt = tm.trt
    builder = trt.Builder(lg)
    if builder is None:
        raise BuildError(_errors(lg, f"{tm.flavor} could not create a builder"))
    network = builder.create_network(tm.network_flags())
    if network is None:
        raise BuildError(_errors(lg, "could not create a network"))
    parser = trt.OnnxParser(network, lg)
    if parser is None:
        raise BuildError(_errors(lg, "could not create an ONNX parser"))
    ok = parser.parse_from_file(str(onnx_path))
    if not ok or parser.num_errors:
        errs = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            where = f" at node {err.node()} {err.node_name()!r} ({err.node_operator()})" if err.node() >= 0 else ""
            errs.append(f"[{err.code()}] {err.desc()}{where}")
        errs = errs or lg.errors or ["parse returned False with no parser error (unreadable file?)"]
        raise BuildError(f"ONNX parser rejected {onnx_path} ({len(errs)} error(s)):\n  " + "\n  ".join(errs))
    return builder, network, parser


def _check_places(folder: Path, engine_path: Path) -> None:
    """Refuse before building (not after) when a directory or file sits where the build must write."""
    if folder.exists() and not folder.is_dir():
        raise WorkdirError(f"{folder} is a file where the engine folder belongs: remove it and re-run")
    for path in (engine_path, folder / mf.MANIFEST_NAME):
        if path.is_dir():
            raise WorkdirError(f"{path} is a directory where a file belongs: remove it and re-run")


def _io(tm: TrtModule, tensors) -> list[dict]:
    return [{"name": tensor.name, "dtype": tm.dtype_name(tensor.dtype), "shape": list(tensor.shape)}
            for tensor in tensors]


def _configure(tm: TrtModule, builder, lg, spec: ComponentSpec, target: BuildTarget, workspace_bytes):
    """`(builder config, the settings it records, per-profile input shapes)`: verbosity, workspace, TF32 off,
    user allocation (RTX), target, one optimization profile per spec profile."""
    config = builder.create_builder_config()
    if config is None:
        raise BuildError(_errors(lg, "could not create a builder config"))
    config.profiling_verbosity = tm.trt.ProfilingVerbosity.DETAILED  # for the inspector / layer report
    tm.set_workspace(config, workspace_bytes)
    settings = {"tf32": tm.set_tf32(config, False),
                "user_allocation": tm.require_user_allocation(config)}  # RTX: capturable (see TrtModule)
    tm.set_target(config, target.rtx_cc)
    shapes = []
    for prof in spec.profiles:
        opt_profile = builder.create_optimization_profile()
        per_input = profile_shapes(spec, prof)
        for name, (lo, opt, hi) in per_input.items():
            opt_profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(opt_profile) < 0:
            raise BuildError(_errors(lg, f"{spec.name}: TensorRT rejected optimization profile {dict(prof)}"))
        shapes.append({n: [list(s) for s in v] for n, v in per_input.items()})
    return config, settings, shapes


def build_one(wd: Workdir, spec: ComponentSpec, precision: Precision, tm: TrtModule | str = "auto",
              target: BuildTarget | None = None, force: bool = False, timing_cache: TimingCache | None = None,
              workspace_bytes: int | None = None, decomposable_attention: bool = True) -> dict:
    """Build (or skip, if up to date) the engine of one exported (component, precision); update the manifest.

    Returns `{"component", "dtype", "status": "built"|"skipped", "skipped", "engine", "key", "build_seconds",
    "engine_bytes", "peak_rss_mb"}`.
    """
    tm = load_trt(tm) if isinstance(tm, str) else tm
    target = target or resolve_target(tm)
    comp, dtype = spec.name, precision.value
    onnx_path, record = wd.onnx_path(comp, precision), wd.export_record(comp, precision)
    if record is None or not onnx_path.is_file():
        raise WorkdirError(f"{onnx_path.name} is not exported: run `vvtrt export -w {wd.root}` first")
    folder = wd.engines_dir / target.key
    engine_path = folder / mf.engine_filename(comp, dtype)
    _check_places(folder, engine_path)
    current = mf.read_manifest(folder)  # what it cannot trust is dropped (and so rebuilt), with a warning
    old = current["engines"].get(mf.entry_key(comp, dtype))
    result = {"component": comp, "dtype": dtype, "engine": str(engine_path), "key": target.key}
    if not force and mf.is_up_to_date(old, engine_path, record["onnx_sha256"], tm.flavor, tm.version, target.target):
        log.info("skip %s.%s: engine up to date", comp, dtype)
        return {**result, "status": "skipped", "skipped": True, "engine_bytes": old["engine_bytes"],
                "build_seconds": old.get("build_seconds")}

    lg = tm.logger()
    lg.clear()
    t0 = time.perf_counter()
    builder, network, parser = parse_network(tm, lg, onnx_path)  # the parser owns the weights: keep it alive
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [t.name for t in spec.inputs]:
        raise BuildError(f"{onnx_path.name}: network inputs {names} != spec {[t.name for t in spec.inputs]}; "
                         f"re-export with `vvtrt export -w {wd.root} --force`")
    n_attention = tm.allow_decomposed_attention(network) if decomposable_attention else 0
    config, settings, shapes = _configure(tm, builder, lg, spec, target, workspace_bytes)
    cache_note = timing_cache.attach(config) if timing_cache else "not used"
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(_errors(lg, f"{tm.flavor} {tm.version} failed to build {comp}.{dtype}"))
    seconds = time.perf_counter() - t0
    del parser  # weights are in the serialized engine now
    if timing_cache:
        timing_cache.save()

    view = memoryview(serialized)
    # Engine first, manifest second, each atomically: a crash in between leaves the old entry, whose sha256 no
    # longer matches the new bytes, so the runtime refuses the engine and the next build redoes it.
    atomic_write_bytes(engine_path, view)
    entry = _engine_entry(tm, spec, dtype, target, network, serialized, lg.layer_dump, (engine_path, onnx_path),
                          record)
    entry.update(settings, decomposable_attention=n_attention, build_seconds=round(seconds, 3),
                 timing_cache=cache_note, profile_shapes=shapes, builder_warnings=lg.warnings[:20])
    manifest = mf.merge_entries(current, [entry], key=target.key, flavor=tm.flavor,
                                trt_version=tm.version, target=target.target)
    mf.write_manifest(folder, manifest)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("built %s.%s in %.1fs: %.1f MB", comp, dtype, seconds, view.nbytes / 1e6)
    return {**result, "status": "built", "skipped": False, "build_seconds": round(seconds, 3),
            "engine_bytes": view.nbytes, "peak_rss_mb": round(rss, 1)}


def _engine_entry(tm: TrtModule, spec: ComponentSpec, dtype: str, target: BuildTarget, network, serialized,
                  layer_dump, paths: tuple[Path, Path], record: dict) -> dict:
    """The manifest entry of a freshly built engine (`serialized`; `paths`: its engine file and ONNX graph),
    less the build's own settings and timings."""
    engine_path, onnx_path = paths
    view = memoryview(serialized)
    return {
        "component": spec.name, "dtype": dtype, "engine": engine_path.name, "engine_bytes": view.nbytes,
        "engine_sha256": hashlib.sha256(view).hexdigest(), "onnx": onnx_path.name,
        "onnx_sha256": record["onnx_sha256"], "flavor": tm.flavor, "trt_version": tm.version,
        "target": target.target, "compute_capabilities": list(target.compute_capabilities),
        "gpu_name": target.gpu_name, "strongly_typed": True, "quant": (record.get("quant") or {}).get("mode"),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profiles": [{a: [r.min, r.opt, r.max] for a, r in p.items()} for p in spec.profiles],
        "inputs": _io(tm, (network.get_input(i) for i in range(network.num_inputs))),
        "outputs": _io(tm, (network.get_output(i) for i in range(network.num_outputs))),
        "layers": layer_summary(tm, serialized, layer_dump),
    }


def check_workdir_components(wd: Workdir, components) -> tuple[str, ...]:
    """A user's component list checked against the components of `wd`'s kind (long-form or Realtime)."""
    if wd.kind != kinds.LONGFORM:
        return kinds.get(wd.kind).load("check_components")(components)
    return check_components(components)


def build_engines(wd: Workdir, flavor: str = "auto", components=None, precisions=None, force: bool = False,
                  target_sm=None, progress: Callable[[str], None] | None = None,
                  workspace_bytes: int | None = None, decomposable_attention: bool = True) -> list[dict]:
    """Build every exported (component, precision), or the selected ones, for one flavor and target.

    A failing engine does not stop the others; after trying all, `BuildError` lists every failure (the engines
    that built are kept and in the manifest).
    """
    tm = load_trt(flavor)
    target = resolve_target(tm, target_sm)
    comps = check_workdir_components(wd, components) if components else None
    precs = parse_precisions(precisions) if precisions else None
    exported = wd.exported()
    todo = [(c, p) for c, p in exported if (comps is None or c in comps) and (precs is None or p in precs)]
    have = {(c, p) for c, p in exported}
    missing = [f"{c}.{p.value}" for c in (comps or ()) for p in (precs or ()) if (c, p) not in have]
    missing += [c for c in (comps or ()) if not precs and not any(hc == c for hc, _ in have)]
    missing += [p.value for p in (precs or ()) if not comps and not any(hp == p for _, hp in have)]
    if missing:
        raise WorkdirError(f"not exported: {', '.join(missing)}; run `vvtrt export -w {wd.root}` first")
    if not todo:
        raise WorkdirError(f"nothing to build in {wd.root}: run `vvtrt export -w {wd.root}` first")
    specs = wd.specs()
    order = {c: i for i, c in enumerate(specs)}
    todo.sort(key=lambda cp: (order.get(cp[0], 99), list(Precision).index(cp[1])))
    cache = TimingCache(tm, wd.engines_dir / "timing.cache")
    log.info("building %d engine(s) with %s %s for target %s", len(todo), tm.flavor, tm.version, target.target)
    results, failures = [], []
    for comp, p in todo:
        if comp not in specs:
            log.warning("skip %s.%s: no such component in this vvtrt", comp, p.value)
            continue
        if progress:
            progress(f"{comp}.{p.value}")
        try:
            results.append(build_one(wd, specs[comp], p, tm, target, force, cache, workspace_bytes,
                                     decomposable_attention))
        except BuildError as exc:
            log.error("%s.%s failed: %s", comp, p.value, exc)
            failures.append(f"{comp}.{p.value}: {exc}")
    if failures:
        raise BuildError(f"{len(failures)} of {len(todo)} engine(s) failed to build:\n" + "\n".join(failures))
    return results
