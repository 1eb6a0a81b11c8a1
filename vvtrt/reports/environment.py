"""What the report's ``config.environment`` records: software versions, GPU, CPU, host and git commit.

Everything is looked up lazily and defensively: a missing package or GPU gives ``None``, never an error."""
from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ENV_KEYS = ("python", "platform", "hostname", "cpu", "torch", "torch_cuda", "transformers", "diffusers", "onnx",
            "onnxruntime", "onnxruntime_providers", "tensorrt", "tensorrt_rtx", "gpu_name",
            "gpu_compute_capability", "gpu_memory_bytes", "driver_version", "git_commit", "git_dirty")


def _dist_version(*dists: str):
    from importlib import metadata

    for d in dists:
        try:
            return metadata.version(d)
        except Exception:  # noqa: BLE001
            continue
    return None


def _module_version(*modules: str):
    """__version__ of the first importable module (imports it), else None."""
    import importlib

    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - ImportError, OSError from missing shared libraries, ...
            log.debug("cannot import %s: %s", name, e)
            continue
        version = getattr(mod, "__version__", None)
        if version:
            return str(version)
    return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _onnxruntime() -> tuple:
    try:
        import onnxruntime as ort

        return ort.__version__, list(ort.get_available_providers())
    except Exception as e:  # noqa: BLE001
        log.debug("onnxruntime unavailable: %s", e)
        return _dist_version("onnxruntime-gpu", "onnxruntime"), None


def _gpu() -> dict:
    info = {"torch_cuda": None, "gpu_name": None, "gpu_compute_capability": None, "gpu_memory_bytes": None,
            "driver_version": None}
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu_name=p.name, gpu_compute_capability=f"{p.major}.{p.minor}",
                        gpu_memory_bytes=int(p.total_memory))
    except Exception as e:  # noqa: BLE001
        log.debug("torch.cuda unavailable: %s", e)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            drv = pynvml.nvmlSystemGetDriverVersion()
            info["driver_version"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            if info["gpu_name"] is None:
                h = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(h)
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                info.update(gpu_name=name.decode() if isinstance(name, bytes) else str(name),
                            gpu_compute_capability=f"{major}.{minor}",
                            gpu_memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total))
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001
        log.debug("NVML unavailable: %s", e)
    return info


def collect_environment() -> dict:
    """A flat dict with every key of :data:`ENV_KEYS` (values None where unknown)."""
    ort_version, providers = _onnxruntime()
    # A copied work tree (the device machine's) can carry a stale .git: the launcher may pin the commit.
    commit = os.environ.get("VVTRT_GIT_COMMIT") or _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None and not os.environ.get("VVTRT_GIT_COMMIT"):
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": _dist_version("torch") or _module_version("torch"),
        "transformers": _dist_version("transformers"),
        "diffusers": _dist_version("diffusers"),
        "onnx": _dist_version("onnx"),
        "onnxruntime": ort_version,
        "onnxruntime_providers": providers,
        "tensorrt": _module_version("tensorrt", "tensorrt_bindings"),
        "tensorrt_rtx": _module_version("tensorrt_rtx", "tensorrt_rtx_bindings"),
        "git_commit": commit,
        "git_dirty": dirty,
        "executable": sys.executable,
    }
    env.update(_gpu())
    return {k: env.get(k) for k in ENV_KEYS} | {k: v for k, v in env.items() if k not in ENV_KEYS}
