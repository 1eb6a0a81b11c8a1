"""One bench job in its own process, so one variant's allocations never count in another's memory.

    python -m vvtrt.bench.worker JOB.json RESULT.json

The parent (`vvtrt.bench.run`) writes a :class:`BenchJob` as JSON and reads back ``{"pid", "result"}``
or ``{"pid", "error", "error_type"}``; no result file means the process died (its log is on stderr).
A :class:`~vvtrt.bench.memory_probe.MemoryProbe` measures the process's memory, over its whole life and from
the end of its load (on CUDA NVML is polled for this pid from before CUDA is touched); every job also reports
the process's peak host RSS.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("variant", "baseline", "floor")


@dataclass(frozen=True)
class BenchJob:
    """Everything a worker needs; `name` is the variant, the baseline kind, or "floor"."""

    kind: str
    name: str
    workdir: str
    device: str
    precision: str
    frames: int
    repeats: int
    cfg_scale: float
    prompt_tokens: int  # synthetic prompt for `ttfa_synthetic`; 0: none
    streams: int
    script: str  # the script's text
    voices: tuple[str, ...]  # voice files, in speaker order
    log_level: int = logging.WARNING
    tag: str = ""  # a compared work dir's quantization ("int8", "fp8", "none"); "" for the main work dir

    @property
    def label(self) -> str:
        base = f"vvtrt-{self.name}" if self.kind == "variant" else self.name
        return f"{base}-{self.tag}" if self.tag else base

    def device_index(self) -> int:
        head, _, index = self.device.partition(":")
        return int(index) if head == "cuda" and index.isdigit() else 0

    @classmethod
    def from_json(cls, d: dict) -> "BenchJob":
        return cls(**{**d, "voices": tuple(d["voices"])})


def run_in_subprocess(job: BenchJob, scratch: Path, index: int) -> dict:
    """Run `job` in a fresh Python process; ``{"pid", "result"}`` or ``{"pid", "error", ...}``."""
    from vvtrt.fsio import atomic_write_json

    spec, out = scratch / f"job_{index}.json", scratch / f"result_{index}.json"
    atomic_write_json(spec, dataclasses.asdict(job))
    # the child finds vvtrt where the parent did, also when that is not on the default path
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), package_root]))}
    proc = subprocess.run([sys.executable, "-m", "vvtrt.bench.worker", str(spec), str(out)],
                          stdin=subprocess.DEVNULL, env=env, check=False)
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    return {"pid": None, "error": f"the worker process died ({how}) before reporting; its log is above",
            "error_type": "WorkerDied"}


def _floor(job: BenchJob) -> dict:
    """The bandwidth floor: weights one frame must read / measured device bandwidth."""
    import torch

    from vvtrt.bench.timing import device_bandwidth_gbps, weight_bytes_per_frame
    from vvtrt.precision import Precision
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.workdir import Workdir

    device, precision = torch.device(job.device), Precision.parse(job.precision)
    bw = device_bandwidth_gbps(device)
    if not bw:
        return {"floor": None}
    wd = Workdir.open(job.workdir)
    wbytes = weight_bytes_per_frame(ModelCache(wd, init_on_device=True).get(precision, device),
                                    wd.options().steps, precision.torch_dtype.itemsize)
    return {"floor": {"weight_bytes_per_frame": wbytes, "bandwidth_gbps": bw, "floor_ms": wbytes / (bw * 1e9) * 1000}}


def run_job(job: BenchJob) -> dict:
    if job.kind not in KINDS:
        raise ValueError(f"unknown bench job kind {job.kind!r}")
    from vvtrt.bench.memory_probe import MemoryProbe

    probe = MemoryProbe(job.device, job.device_index())  # before CUDA is touched
    try:
        if job.kind == "variant":
            from vvtrt.bench.measure import bench_variant

            return bench_variant(job, probe)
        if job.kind == "baseline":
            from vvtrt.bench.baselines import bench_baseline

            return bench_baseline(job, probe)
        return _floor(job)
    finally:
        probe.stop()


def main(argv=None) -> None:
    from vvtrt.errors import VvtrtError
    from vvtrt.fsio import atomic_write_json

    spec, out = (argv or sys.argv[1:])[:2]
    job = BenchJob.from_json(json.loads(Path(spec).read_text(encoding="utf-8")))
    logging.basicConfig(level=job.log_level, format=f"%(levelname)s [bench {job.label}] %(name)s: %(message)s")
    reply: dict = {"pid": os.getpid()}
    try:
        reply["result"] = run_job(job)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent, which goes on
        if not isinstance(exc, VvtrtError):
            log.error("bench job %s failed:\n%s", job.label, traceback.format_exc())
        reply.update(error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
    from vvtrt.reports.schema import to_jsonable

    atomic_write_json(out, to_jsonable(reply))
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)  # no static destructors: ORT CUDA can abort at teardown (microsoft/onnxruntime#15174)


if __name__ == "__main__":
    main()
