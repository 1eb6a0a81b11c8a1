"""The work directory: one folder holding every stage's files, so each stage can skip what is current.

    DIR/workdir.json                      model source, export options, model info
    DIR/onnx/<component>.<dtype>.onnx     (+ .onnx.data for large models) and <component>.<dtype>.json,
                                          the export record: sha256 and size of every file of the graph
    DIR/engines/<key>/<component>.<dtype>.engine + manifest.json; DIR/engines/timing.cache
    DIR/reports/                          parity / bench JSON, Markdown and plots

`Workdir.open` is the gate every consuming verb goes through: it refuses (one `WorkdirError` saying what to
run) a corrupt workdir.json, a stray file in onnx/, a directory where a file belongs, an export record that
is unreadable, names another graph, or was made with other settings than workdir.json, and a graph file
that is missing or has another size than its record. `onnx_path` also checks every file of the graph
against the sha256 in its record before handing the path out (once per process and file state), and
`verify` does so up front for the graphs a verb will read, so a graph changed since its export is never
used as current.

A Realtime work dir (workdir.json `"kind": "realtime"`, `vvtrt.realtime.workdir_meta`) is the same folder
with the Realtime components: `kind` says which, `specs()` gives that kind's component specs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vvtrt.components.info import ModelInfo
from vvtrt.components.specs import ExportOptions, build_specs
from vvtrt.errors import VvtrtError, WorkdirError
from vvtrt.fsio import LOCK_NAME, atomic_write_json, is_temporary
from vvtrt.model import kinds
from vvtrt.model.resolve import ModelSource
from vvtrt.precision import Precision
from vvtrt.workdir_files import export_command_tail, files_changed, lock_holder, sha256_file, sizes_changed  # noqa: F401 - re-exported

RECORD_FORMAT = 2  # 2: the record lists every file of the graph with its size and sha256
RECORD_KEYS = {"component": str, "precision": str, "record_format": int, "key": str, "onnx_sha256": str,
               "files": dict, "spec": dict, "model": dict}
_KINDS = {".onnx": "graph", ".onnx.data": "data", ".json": "record"}
_OWN_ENTRIES = ("workdir.json", "onnx", "engines", "reports", LOCK_NAME)


@dataclass(frozen=True)
class ExportEntry:
    """What the onnx/ folder holds for one (component, precision): its files by kind (graph, data,
    record), the parsed record, and the reason it is not current (None when it is, sha256 aside)."""

    component: str
    precision: Precision
    files: dict
    record: dict | None
    problem: str | None

    @property
    def name(self) -> str:
        return f"{self.component}.{self.precision.value}"


@dataclass(frozen=True)
class OnnxScan:
    entries: dict  # (component, Precision) -> ExportEntry
    strays: tuple  # files that no export owns
    misplaced_dirs: tuple  # directories where a graph, data file or record belongs (or unknown ones)


def parse_graph_file_name(name: str, components=None) -> tuple[str, Precision, str] | None:
    """`lm_decode.fp16.onnx` -> ("lm_decode", FP16, "graph"); None for a name no export of `components`
    (default: every kind's) writes."""
    components = kinds.all_components() if components is None else components
    for suffix, kind in _KINDS.items():
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            comp, _, dtype = stem.rpartition(".")
            if comp in components and dtype in {p.value for p in Precision}:
                return comp, Precision(dtype), kind
    return None


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def create(cls, path: str | os.PathLike) -> "Workdir":
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise WorkdirError(f"work directory {root} is a file: choose a directory with -w DIR")
        if root.is_dir() and not any((root / n).exists() for n in _OWN_ENTRIES) and \
                any(not p.name.startswith(".") for p in root.iterdir()):
            raise WorkdirError(f"{root} is not empty and not a vvtrt work directory: choose a new or empty "
                               "directory with -w DIR")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise WorkdirError(f"work directory {root} is not writable ({exc.strerror or exc}); "
                               "choose another -w DIR") from None
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Workdir":
        """The work dir at `path`, checked (see the module doc); a `WorkdirError` says what to re-run."""
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise WorkdirError(f"work directory {root} is a file: pass the directory `vvtrt export` made")
        if not (root / "workdir.json").exists():
            raise WorkdirError(f"{root} is not a vvtrt work directory (no workdir.json): "
                               f"run `vvtrt export -w {root} --model MODEL` first")
        wd = cls(root)
        try:
            wd.check()
        except WorkdirError as exc:
            holder = lock_holder(root)
            if holder:
                raise WorkdirError(f"work dir {root} is being written by {holder}: wait for it to finish, "
                                   f"then re-run ({exc})") from None
            raise
        return wd

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "workdir.json"

    def write_meta(self, source: ModelSource, options, info, quant=None) -> None:
        """workdir.json of a long-form model (`ExportOptions`, `ModelInfo`, the `QuantMode` or None) or a
        Realtime one (`RealtimeExportOptions`, `RealtimeConfig`)."""
        if isinstance(options, ExportOptions):
            meta = {"model": source.to_json(), "options": options.to_json(), "info": dataclasses.asdict(info)}
            if quant is not None:
                meta["quant"] = quant.value
        else:
            meta = kinds.get(kinds.REALTIME).load("to_meta")(source, options, info)
        atomic_write_json(self.meta_path, meta)

    def meta(self) -> dict:
        """workdir.json, validated: a `WorkdirError` saying to re-export when it is missing or corrupt."""
        p = self.meta_path
        redo = f"re-run `vvtrt export -w {self.root} --model MODEL` with the model it was exported from"
        if p.is_dir():
            raise WorkdirError(f"{p} is a directory where a file belongs: remove it and {redo}")
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
            _parse_meta(meta)
        except FileNotFoundError:
            raise WorkdirError(f"{p} is missing: {redo}") from None
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError, VvtrtError) as exc:
            raise WorkdirError(f"{p} is corrupt ({type(exc).__name__}: {_first_line(exc)}): {redo}") from None
        return meta

    def quant(self):
        """The work dir's `QuantMode` (`vvtrt export --quant`), None when it is not quantized."""
        from vvtrt.quant.config import QuantMode

        return QuantMode.parse(self.meta().get("quant"))

    @property
    def kind(self) -> str:
        """"longform" (VibeVoice 1.5B / 7B) or "realtime" (VibeVoice-Realtime), from workdir.json."""
        return kinds.meta_kind(self.meta())

    def source(self) -> ModelSource:
        return _parse_meta(self.meta())[0]

    def options(self):
        """`ExportOptions`, or `RealtimeExportOptions` for a Realtime work dir."""
        return _parse_meta(self.meta())[1]

    def info(self):
        """`ModelInfo`, or `RealtimeConfig` for a Realtime work dir."""
        return _parse_meta(self.meta())[2]

    def specs(self) -> dict:
        """The component specs of this work dir's kind and settings, by name."""
        meta = self.meta()
        _, options, info = _parse_meta(meta)
        kind = kinds.meta_kind(meta)
        if kind != kinds.LONGFORM:
            return kinds.get(kind).load("build_specs")(info, options)
        return build_specs(info, options)

    def component_names(self) -> tuple[str, ...]:
        """The components this kind of work dir exports (before workdir.json exists: every kind's)."""
        try:
            kind = self.kind
        except WorkdirError:
            return kinds.all_components()
        return kinds.get(kind).component_names()

    def export_command(self, component: str | None = None, precision: Precision | None = None) -> str:
        """The `vvtrt export` command line that re-exports (component, precision) with this dir's settings."""
        meta = self.meta()
        source, options, info = _parse_meta(meta)
        kind = kinds.meta_kind(meta)
        if kind != kinds.LONGFORM:
            return kinds.get(kind).load("export_command")(self.root, source, options, info, component, precision)
        cmd = f"vvtrt export -w {self.root} --model {source.label}"
        if options.steps != ExportOptions().steps:
            cmd += f" --steps {options.steps}"
        default = ExportOptions.for_preset(source.preset, options.steps, info.context)
        if options.max_prompt != default.max_prompt:
            cmd += f" --max-prompt {options.max_prompt}"
        if options.kv_buckets != default.kv_buckets:
            cmd += f" --kv-buckets {','.join(map(str, options.kv_buckets))}"
        if meta.get("quant"):
            cmd += f" --quant {meta['quant']}"
        return cmd + export_command_tail(source, component, precision)

    # -- exported graphs --------------------------------------------------------------------------
    @property
    def onnx_dir(self) -> Path:
        return self.root / "onnx"

    def graph_path(self, component: str, precision: Precision) -> Path:
        """Where the graph of (component, precision) lives, checked or not (writers use this)."""
        return self.onnx_dir / f"{component}.{precision.value}.onnx"

    def export_record_path(self, component: str, precision: Precision) -> Path:
        return self.onnx_dir / f"{component}.{precision.value}.json"

    def list_onnx(self) -> tuple[dict, tuple, tuple]:
        """onnx/'s files by (component, precision) and kind, stray files and misplaced directories,
        leaving out the temporaries of a running or killed export. Raises only for an unusable folder."""
        folder = self.onnx_dir
        if not folder.exists():
            return {}, (), ()
        if not folder.is_dir():
            raise WorkdirError(f"{folder} is a file where a directory belongs: remove it and re-run "
                               f"`vvtrt export -w {self.root} --model MODEL`")
        groups: dict[tuple, dict] = {}
        strays, dirs = [], []
        names = self.component_names()
        for p in sorted(folder.iterdir()):
            parsed = parse_graph_file_name(p.name, names)
            if is_temporary(p):
                continue
            if p.is_dir():
                dirs.append(p)
            elif parsed is None:
                strays.append(p)
            else:
                groups.setdefault(parsed[:2], {})[parsed[2]] = p
        return groups, tuple(strays), tuple(dirs)

    def scan(self) -> OnnxScan:
        """`list_onnx`, each (component, precision) judged against workdir.json (sizes, not hashes)."""
        groups, strays, dirs = self.list_onnx()
        source = self.source()
        specs = self.specs()
        entries = {}
        for (comp, prec), files in groups.items():
            record, problem = _judge(comp, prec, files, specs[comp].to_json(), source.identity())
            entries[(comp, prec)] = ExportEntry(comp, prec, files, record, problem)
        return OnnxScan(entries, strays, dirs)

    def check(self) -> OnnxScan:
        """`scan`, raising the first problem as a `WorkdirError` that says what to do."""
        scan = self.scan()
        for d in scan.misplaced_dirs:
            raise WorkdirError(f"{d} is a directory where no directory belongs: remove it, then re-run "
                               f"`{self.export_command()}`")
        for f in scan.strays:
            raise WorkdirError(f"{f} is not a file vvtrt writes: remove it, or re-run "
                               f"`{self.export_command()} --force` (which removes stray files and re-exports)")
        for e in scan.entries.values():
            if e.problem:
                raise WorkdirError(f"{self.onnx_dir / e.name}: {e.problem}; re-run "
                                   f"`{self.export_command(e.component, e.precision)}` to re-export it")
        return scan

    def exported(self) -> list[tuple[str, Precision]]:
        """(component, precision) of every export, in file order; raises if any is not current."""
        return sorted(self.check().entries, key=lambda cp: (cp[0], cp[1].value))

    def export_record(self, component: str, precision: Precision) -> dict | None:
        """The record of a current export, None if (component, precision) was never exported."""
        entry = self._entry(component, precision)
        return entry.record if entry else None

    def onnx_path(self, component: str, precision: Precision) -> Path:
        """The path of the current graph of (component, precision), after checking every file of it against
        the sha256 in its record; a `WorkdirError` says what to re-run when it is missing or changed."""
        entry = self._entry(component, precision)
        if entry is None:
            raise WorkdirError(f"{component}.{precision.value} is not exported in {self.root}: run "
                               f"`{self.export_command(component, precision)}`")
        problem = files_changed(self.onnx_dir, entry.record)
        if problem:
            raise WorkdirError(f"{self.onnx_dir / entry.name}: {problem}; re-run "
                               f"`{self.export_command(component, precision)}` to re-export it")
        return self.graph_path(component, precision)

    def verify(self, components=None, precisions=None) -> list[tuple[str, Precision]]:
        """Check every current export (or those of `components` x `precisions`) against the sha256 in its
        record, up front; returns the pairs checked. Verbs that read graphs call it before any work."""
        pairs = [(c, p) for c, p in self.exported() if (not components or c in components)
                 and (not precisions or p in precisions)]
        for comp, p in pairs:
            self.onnx_path(comp, p)
        return pairs

    def _entry(self, component: str, precision: Precision) -> ExportEntry | None:
        return self.check().entries.get((component, Precision(precision)))

    # -- other stages -----------------------------------------------------------------------------
    @property
    def engines_dir(self) -> Path:
        d = self.root / "engines"
        if d.exists() and not d.is_dir():
            raise WorkdirError(f"{d} is a file where a directory belongs: remove it and re-run")
        return d

    @property
    def reports_dir(self) -> Path:
        d = self.root / "reports"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkdirError(f"cannot create {d} ({exc.strerror or exc}): remove what is in its place") from None
        return d


def _parse_meta(meta) -> tuple:
    """The typed contents of workdir.json, `(ModelSource, ExportOptions, ModelInfo)` or for a Realtime work
    dir `(ModelSource, RealtimeExportOptions, RealtimeConfig)`; TypeError/KeyError/ValueError/InputError
    when malformed."""
    if not isinstance(meta, dict):
        raise TypeError("not a JSON object")
    kind = kinds.meta_kind(meta)
    if kind != kinds.LONGFORM:
        return kinds.get(kind).load("parse_meta")(meta)
    source = ModelSource(**meta["model"])
    if not (isinstance(source.preset, str) or isinstance(source.path, str)) or not isinstance(source.seed, int):
        raise ValueError("model needs a preset or a path, and an integer seed")
    opts = meta["options"]
    if not all(type(v) is int or (isinstance(v, list) and all(type(x) is int for x in v)) for v in opts.values()):
        raise TypeError("options must be integers")
    options = ExportOptions.from_json(opts)
    from vvtrt.quant.config import QuantMode

    QuantMode.parse(meta.get("quant"))  # an unknown mode: InputError, i.e. a corrupt workdir.json
    info = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["info"].items()}
    for f in dataclasses.fields(ModelInfo):
        if not _valid_field(str(f.type), info.get(f.name)):
            raise ValueError(f"info.{f.name} = {info.get(f.name)!r} is not a valid {f.type}")
    return source, options, ModelInfo(**info)


def _valid_field(type_name: str, v) -> bool:
    if type_name == "int":
        return type(v) is int and v >= 0
    if type_name == "float":
        return type(v) in (int, float) and v >= 0
    return isinstance(v, tuple) and len(v) > 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _judge(comp: str, precision: Precision, files: dict, spec_json: dict, model: dict) -> tuple:
    """(record, problem) of one export group: problem is None when the record is a valid record of this
    graph, made with the settings of workdir.json, and every file it lists is there with its size."""
    name = f"{comp}.{precision.value}"
    if "record" not in files:
        return None, "has no export record (an export was interrupted or is still running)"
    try:
        record = json.loads(files["record"].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"its export record is unreadable ({_first_line(exc)})"
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in RECORD_KEYS.items()):
        return None, "its export record is not a vvtrt export record of this version"
    if record["record_format"] != RECORD_FORMAT:
        return None, "its export record was written by another vvtrt version"
    if (record["component"], record["precision"]) != (comp, precision.value):
        return None, f"its export record describes {record['component']}.{record['precision']}"
    if record["model"] != model:
        return None, "it was exported from another model or seed than workdir.json names"
    if record["spec"] != json.loads(json.dumps(spec_json)):
        return None, "it was exported with other settings than workdir.json (e.g. --steps)"
    listed = set(record["files"])
    if f"{name}.onnx" not in listed or any(parse_graph_file_name(f) is None or not f.startswith(name + ".")
                                           for f in listed):
        return None, "its export record lists files of another graph"
    for kind, path in files.items():
        if kind != "record" and path.name not in listed:
            return None, f"{path.name} is not part of its export record"
    return record, sizes_changed(files["record"].parent, record)
