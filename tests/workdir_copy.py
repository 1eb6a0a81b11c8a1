"""A partial copy of a work dir for tests that damage or rebuild files without touching the shared one."""
from __future__ import annotations

import shutil

from vvtrt.workdir import Workdir


def copy_workdir(wd: Workdir, dst, items=("connectors.fp32",)) -> Workdir:
    """Copy workdir.json and the ONNX files of `items` ("component.dtype") from `wd` into `dst`."""
    (dst / "onnx").mkdir(parents=True)
    shutil.copy(wd.meta_path, dst / "workdir.json")
    for item in items:
        for f in (wd.root / "onnx").glob(item + ".*"):
            shutil.copy(f, dst / "onnx" / f.name)
    return Workdir.open(dst)
