"""The runners `vvtrt parity` checks (a backend's runner of one exported component; bf16 on the CPU: ONNX's
reference evaluator), its options, and the loop over the (component, precision) pairs it checks."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vvtrt.errors import VvtrtError
from vvtrt.precision import Precision
from vvtrt.runtime.runner import TorchRunner
from vvtrt.workdir import Workdir

log = logging.getLogger("vvtrt.parity.harness")  # the name its warnings have always carried


@dataclass(frozen=True)
class ParityOptions:
    backend: str = "onnxruntime"
    device: str = "cpu"
    precisions: tuple[Precision, ...] | None = None  # None: every exported precision
    components: tuple[str, ...] | None = None
    stream_frames: int = 16
    e2e_frames: int = 16
    e2e: bool = True
    cfg_scale: float = 1.3
    seed: int = 0


def _method(backend: str, device: torch.device, precision: Precision) -> str:
    if backend == "torch":
        return f"torch-{device.type}"
    if backend == "onnxruntime" and device.type == "cpu" and precision is Precision.BF16:
        return "onnx-reference-evaluator"
    return f"{backend}-{device.type}"


def make_runner(wd: Workdir, spec, precision: Precision, backend: str, device, model=None):
    """A runner for one exported component; bf16 on the CPU uses ONNX's reference evaluator."""
    device = torch.device(device)
    if backend == "torch":
        return TorchRunner(spec, precision, device, model.to(device=device, dtype=precision.torch_dtype),
                           wd.options().steps, quant=wd.quant())
    if backend == "onnxruntime":
        if device.type == "cpu" and precision is Precision.BF16:
            return _ReferenceEvalRunner(spec, precision, wd.onnx_path(spec.name, precision))
        from vvtrt.runtime.ort_runner import OrtRunner

        return OrtRunner(spec, precision, device, wd.onnx_path(spec.name, precision))
    from vvtrt.runtime.trt_runner import TrtRunner

    return TrtRunner.from_workdir(wd, spec, precision, device)


class _ReferenceEvalRunner:
    """ONNX's reference evaluator as a runner: the honest CPU check of bf16 graphs (slow; tiny models)."""

    backend = "onnx-reference"

    def __init__(self, spec, precision, path):
        self.spec, self.precision, self.path = spec, precision, path

    def activate(self):
        pass

    def deactivate(self):
        pass

    def infer(self, feed, out=None):
        from vvtrt.parity.reference_eval import run_onnx_reference

        return run_onnx_reference(self.path, feed)


def checked_pairs(wd: Workdir, opts: ParityOptions) -> list[tuple[str, Precision]]:
    """Every exported (component, precision); on the torch backend of a quantized work dir also its quantized
    components at each exported precision, exported or not: the torch path quantizes the model's own GEMMs and
    runs no graph, so its gate needs none of the quantized graphs (`--components connectors` is enough)."""
    pairs = wd.exported()
    if opts.backend != "torch" or wd.quant() is None:
        return pairs
    precisions = {p for _, p in pairs}
    quantized = [(c, p) for c, spec in wd.specs().items() if spec.quant for p in precisions]
    return sorted({*pairs, *quantized}, key=lambda cp: (cp[0], cp[1].value))


def run_each(wd: Workdir, opts: ParityOptions, progress, label: str, check, skip_row, only=None) -> list[dict]:
    """`check(component, precision)`'s rows for every pair of `checked_pairs` the options select (and `only`
    allows); a pair that cannot run here (backend, device, missing or broken file: a VvtrtError) gets
    `skip_row(component, precision, why)` instead -- a skipped check, which fails the report."""
    rows = []
    for comp, precision in checked_pairs(wd, opts):
        if ((opts.precisions and precision not in opts.precisions) or (opts.components and comp not in opts.components)
                or (only is not None and comp not in only)):
            continue
        if progress:
            progress(f"{label}{comp}.{precision.value}")
        try:
            rows += check(comp, precision)
        except VvtrtError as exc:
            log.warning("parity %s%s.%s could not run: %s", label, comp, precision.value, exc)
            rows.append(skip_row(comp, precision, str(exc)))
    return rows
