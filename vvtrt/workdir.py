"""The work directory: one folder holding every stage's files, so each stage can skip what is current.

    DIR/workdir.json                      model source, export options, model info
    DIR/onnx/<component>.<dtype>.onnx     (+ .onnx.data for large models) and <component>.<dtype>.json
    DIR/engines/<key>/<component>.<dtype>.engine + manifest.json; DIR/engines/timing.cache
    DIR/reports/                          parity / bench JSON, Markdown and plots
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vvtrt.components.info import ModelInfo
from vvtrt.components.specs import ExportOptions
from vvtrt.errors import WorkdirError
from vvtrt.model.presets import ModelSource
from vvtrt.precision import Precision


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def create(cls, path: str | os.PathLike) -> "Workdir":
        root = Path(path).expanduser()
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
        root = Path(path).expanduser()
        if not (root / "workdir.json").is_file():
            raise WorkdirError(f"{root} is not a vvtrt work directory (no workdir.json): "
                               f"run `vvtrt export -w {root}` first")
        return cls(root)

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "workdir.json"

    def write_meta(self, source: ModelSource, options: ExportOptions, info: ModelInfo) -> None:
        meta = {"model": source.to_json(), "options": options.to_json(), "info": dataclasses.asdict(info)}
        self.meta_path.write_text(json.dumps(meta, indent=2))

    def meta(self) -> dict:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkdirError(f"{self.meta_path} is unreadable ({exc}); re-run `vvtrt export`") from None

    def source(self) -> ModelSource:
        return ModelSource(**self.meta()["model"])

    def options(self) -> ExportOptions:
        return ExportOptions.from_json(self.meta()["options"])

    def info(self) -> ModelInfo:
        d = self.meta()["info"]
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return ModelInfo(**d)

    # -- stage files ------------------------------------------------------------------------------
    def onnx_path(self, component: str, precision: Precision) -> Path:
        return self.root / "onnx" / f"{component}.{precision.value}.onnx"

    def export_record_path(self, component: str, precision: Precision) -> Path:
        return self.root / "onnx" / f"{component}.{precision.value}.json"

    def export_record(self, component: str, precision: Precision) -> dict | None:
        p = self.export_record_path(component, precision)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def exported(self) -> list[tuple[str, Precision]]:
        """(component, precision) of every completed export, in file order."""
        out = []
        for rec in sorted((self.root / "onnx").glob("*.json")):
            comp, dtype = rec.stem.rsplit(".", 1)
            if self.onnx_path(comp, Precision(dtype)).is_file():
                out.append((comp, Precision(dtype)))
        return out

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"

    @property
    def reports_dir(self) -> Path:
        d = self.root / "reports"
        d.mkdir(parents=True, exist_ok=True)
        return d


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
