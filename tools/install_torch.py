"""Install PyTorch into the running interpreter's environment in the build that fits the machine.

    python tools/install_torch.py "torch==2.13.0" [--cpu-index URL] [--probe-timeout 5]

- A torch that satisfies the requirement is already installed: nothing to do.
- An NVIDIA GPU is visible (`nvidia-smi -L`), or the platform is not Linux: the default package index
  (on Linux that is the CUDA build; on macOS and Windows the only build).
- Linux without a GPU: the CPU build from PyTorch's CPU index, so no multi-GB CUDA wheels are fetched.
  When that index cannot be reached (a probe with a short timeout, so this costs seconds), or installing
  from it fails, the default package index is used instead.

Standard library only: it runs before anything else is installed (`make install`).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import time
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def satisfied(requirement: str) -> str | None:
    """The installed torch version when it satisfies `requirement`, else None."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:  # no pip to judge with: any installed torch will do
        return version
    return version if Requirement(requirement).specifier.contains(version, prereleases=True) else None


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def reachable(index: str, timeout: float) -> bool:
    """Whether `index`'s page for torch answers within `timeout` seconds."""
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def plan(gpu: bool, platform: str, cpu_index_reachable) -> str:
    """"default" (the package index as configured) or "cpu-index"; `cpu_index_reachable` is only called
    where the CPU index would be used."""
    if gpu or not platform.startswith("linux"):
        return "default"
    return "cpu-index" if cpu_index_reachable() else "default"


def pip_install(requirement: str, *options: str) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *options, requirement]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("requirement", nargs="?", default="torch")
    ap.add_argument("--cpu-index", default=CPU_INDEX, help="PyTorch's CPU wheel index.")
    ap.add_argument("--probe-timeout", type=float, default=5.0, help="Seconds to wait for the CPU index.")
    args = ap.parse_args(argv)
    have = satisfied(args.requirement)
    if have:
        print(f"torch {have} is installed and satisfies {args.requirement}: kept")
        return 0
    gpu = has_nvidia_gpu()
    t0 = time.monotonic()
    how = plan(gpu, sys.platform, lambda: reachable(args.cpu_index, args.probe_timeout))
    if how == "cpu-index":
        print(f"no NVIDIA GPU: installing the CPU build of {args.requirement} from {args.cpu_index}")
        if pip_install(args.requirement, "--index-url", args.cpu_index, "--timeout", "30", "--retries", "1") == 0:
            return 0
        print(f"installing from {args.cpu_index} failed: using the default package index")
    elif not gpu and sys.platform.startswith("linux"):
        print(f"{args.cpu_index} is unreachable ({time.monotonic() - t0:.1f} s): installing {args.requirement} "
              "from the default package index")
    return pip_install(args.requirement)


if __name__ == "__main__":
    sys.exit(main())
