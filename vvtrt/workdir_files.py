"""The files of a work dir's exports, checked against their records: sizes, sha256 (remembered per file
state for the life of the process), and who holds the work-dir lock. Used by `vvtrt.workdir`."""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from vvtrt.fsio import LOCK_NAME

_VERIFIED: dict[tuple, str] = {}  # (path, stat) -> sha256 already checked in this process


def sizes_changed(folder: Path, record: dict) -> str | None:
    for fname, want in sorted(record["files"].items()):
        p = folder / fname
        if not isinstance(want, dict) or not isinstance(want.get("bytes"), int):
            return "its export record is not a vvtrt export record of this version"
        if not p.is_file():
            return f"{fname} is missing"
        size = p.stat().st_size
        if size != want["bytes"]:
            return f"{fname} has {size} bytes, its export record says {want['bytes']} (truncated or changed)"
    return None


def files_changed(folder: Path, record: dict) -> str | None:
    """None when every file `record` lists is in `folder` with its recorded size and sha256, else what
    differs. Hashes are remembered per (path, size, mtime, ctime, inode) for the life of the process."""
    problem = sizes_changed(folder, record)
    if problem:
        return problem
    for fname, want in sorted(record["files"].items()):
        p = folder / fname
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        if key not in _VERIFIED:
            _VERIFIED[key] = sha256_file(p)
        if _VERIFIED[key] != want.get("sha256"):
            return f"{fname} does not match the sha256 in its export record (changed or damaged since export)"
    return None


def lock_holder(root: Path) -> str | None:
    """Who holds the work-dir lock (`fsio.WorkdirLock`) right now, or None; takes nothing."""
    try:
        fd = os.open(Path(root) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def export_command_tail(source, component=None, precision=None) -> str:
    """The options every re-export line ends with: seed, tokenizer, and the (component, precision) to redo."""
    cmd = ""
    if source.seed:
        cmd += f" --seed {source.seed}"
    if source.tokenizer:
        cmd += f" --tokenizer {source.tokenizer}"
    if component:
        cmd += f" --components {component}"
    if precision:
        cmd += f" --dtype {precision.value}"
    return cmd
