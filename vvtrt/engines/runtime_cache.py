"""TensorRT-RTX's runtime cache: the kernels it compiles just in time, kept on disk between processes.

TensorRT-RTX compiles its kernels when an execution context first runs a shape (NVIDIA, "Working with Runtime
Cache"). An `IRuntimeCache` attached to each context's `IRuntimeConfig` collects them; `serialize()` turns it into
a blob that a later process `deserialize()`s instead of compiling again. NVIDIA's own TensorRT-Edge-LLM runtime
(`RtxRuntimeCache`) attaches one cache to the config of every context of every engine of a deployment and
writes it back when done; vvtrt does the same per engine folder and GPU:

    engines/<flavor>-<version>-<target>/runtime.<smXY>.<gpu-name>.cache

The blob is only valid for the GPU, TensorRT-RTX release and driver that made it: `deserialize` checks that and
returns False on any mismatch or a corrupt file, which is logged and answered with an empty cache (the file is
then rewritten). Writes are atomic (`vvtrt.fsio`), so a process killed mid-write leaves the old cache or the new
one. Full TensorRT compiles nothing at run time and has no runtime cache.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from vvtrt.errors import BackendUnavailableError, WorkdirError
from vvtrt.fsio import atomic_write_bytes

log = logging.getLogger(__name__)
CACHE_GLOB = "runtime.*.cache"
_OPEN: dict[Path, "RuntimeCacheFile"] = {}


def cache_path(folder: Path, compute_capability: str, gpu_name: str | None) -> Path:
    """Where the runtime cache of one engine folder lives for one GPU."""
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu_name or "gpu").lower()).strip("-") or "gpu"
    return Path(folder) / f"runtime.sm{compute_capability.replace('.', '')}.{slug}.cache"


def open_cache(path: Path) -> "RuntimeCacheFile":
    """The process's one `RuntimeCacheFile` for `path`: every runner of an engine folder shares it, so each save
    writes the kernels of all of them (separate objects would overwrite each other's kernels)."""
    key = Path(path).absolute()
    if key not in _OPEN:
        _OPEN[key] = RuntimeCacheFile(key)
    return _OPEN[key]


class RuntimeCacheFile:
    """One `IRuntimeCache` shared by every context attached to it, loaded from and saved to `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cache = None  # created by the first `attach`, from that context's runtime config

    def attach(self, rt_config) -> None:
        """Give `rt_config` (an `IRuntimeConfig`) this cache, loading the file on first use."""
        if self.cache is None:
            cache = rt_config.create_runtime_cache()
            if cache is None:
                raise BackendUnavailableError("TensorRT-RTX could not create a runtime cache")
            blob = self._read()
            if blob and not cache.deserialize(blob):
                log.warning("runtime cache %s was made for another GPU, driver or TensorRT-RTX release, or is "
                            "corrupt; compiling kernels afresh (the file is rewritten)", self.path)
                cache.reset()
            self.cache = cache
        if not rt_config.set_runtime_cache(self.cache):
            raise BackendUnavailableError(f"TensorRT-RTX refused the runtime cache {self.path}")

    def _read(self) -> bytes:
        if self.path.is_dir():
            raise WorkdirError(f"{self.path} is a directory where the TensorRT-RTX runtime cache belongs: remove "
                               f"it and re-run")
        try:
            return self.path.read_bytes() if self.path.is_file() else b""
        except OSError as exc:
            log.warning("cannot read runtime cache %s (%s); compiling kernels afresh", self.path, exc)
            return b""

    def save(self) -> bool:
        """Write the cache (atomically); False when nothing was attached yet or it serialises to nothing."""
        if self.cache is None:
            return False
        data = self.cache.serialize()
        if data is None or memoryview(data).nbytes == 0:
            return False
        atomic_write_bytes(self.path, memoryview(data))
        log.debug("saved runtime cache %s (%d bytes)", self.path, memoryview(data).nbytes)
        return True
