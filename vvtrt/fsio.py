"""Crash-safe file writes and the work-dir lock.

Every file a stage leaves for a later stage is written to a temporary name in the same directory, flushed
to disk and renamed over the target (`os.replace` is atomic on POSIX), so a process killed mid-write
leaves either the old file or the new one, never half of one. Temporary names start with `.` and end in
`.tmp`, so no stage ever takes one for a stage output; `sweep_temporaries` removes those a killed process
left behind.

    with atomic_path(wd.root / "onnx" / "x.onnx") as tmp:   # a writer that wants a path
        torch.onnx.export(..., str(tmp))
    atomic_write_json(path, record)                         # small files

    with WorkdirLock(root, "export"):                       # one writer per work dir at a time
        ...
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from vvtrt.errors import InputError, WorkdirError

log = logging.getLogger(__name__)
TMP_SUFFIX = ".tmp"
LOCK_NAME = ".vvtrt.lock"
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, a finished file gets the usual 0666 & ~umask


def _disk_error(path: Path, exc: OSError) -> WorkdirError:
    if exc.errno == errno.ENOSPC:
        return WorkdirError(f"no space left on the device writing {path}: free some disk space and re-run")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WorkdirError(f"cannot write {path} ({exc.strerror}): choose a writable location")
    return WorkdirError(f"cannot write {path}: {exc.strerror or exc}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is renamed over `path`, on any error it is
    removed. A missing parent directory is created when `mkdir`, else it is an error naming it. Errors of
    the disk (full, read-only) become a `WorkdirError` saying what to fix."""
    path = Path(path)
    if path.is_dir():
        raise WorkdirError(f"{path} is a directory where a file belongs: remove it and re-run")
    parent = path.parent
    if not parent.is_dir():
        if not mkdir:
            raise WorkdirError(f"directory {parent} does not exist: create it or choose another path")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(parent, exc) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=parent)
        os.close(fd)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    tmp = Path(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise WorkdirError(f"nothing was written for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data, mkdir: bool = True) -> Path:
    """Write `data` (bytes, bytearray or memoryview) to `path` atomically."""
    with atomic_path(path, mkdir) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise _disk_error(Path(path), exc) from None
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, mkdir: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mkdir)


def atomic_write_json(path: str | os.PathLike, obj, mkdir: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n", mkdir)


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove temporaries a killed writer left in `folder` (call only while holding the work-dir lock)."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and is_temporary(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.info("removed %d unfinished temporary file(s) from %s", len(removed), folder)
    return removed


class WorkdirLock:
    """An exclusive `flock` on `root/.vvtrt.lock` for a stage that writes the work dir. A second process
    waits up to `wait_s` seconds, then gets a `WorkdirError` naming the holder; the kernel drops the lock
    when its holder dies, so a crashed process never leaves the work dir locked."""

    def __init__(self, root: str | os.PathLike, stage: str, wait_s: float = 0.0):
        self.path = Path(root) / LOCK_NAME
        self.stage, self.wait_s = stage, wait_s
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _disk_error(self.path, exc) from None
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise WorkdirError(f"work dir {self.path.parent} is in use by {holder}; wait for it to "
                                       f"finish, or use another -w DIR") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.stage})".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_wait_s() -> float:
    """How long a second export/build on one work dir waits for the first before refusing: 10 s, or
    VVTRT_LOCK_WAIT_S."""
    text = os.environ.get("VVTRT_LOCK_WAIT_S", "10")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise InputError(f"VVTRT_LOCK_WAIT_S must be a number of seconds (0 to 86400), got {text!r}")
    return value
