"""The Realtime model and its component runners from a Realtime work dir, for any backend.

    runners = load_realtime_runners(wd, "onnxruntime", "fp32", "cpu")   # keyed like runtime.torch_runners
    rt = RealtimeRunner.from_workdir(wd.root, "onnxruntime", "cpu", "fp32")  # the same, behind the runtime

Graph-backed runners (ONNX Runtime, TensorRT) run the exported sampler, whose K is the work dir's
`--steps`; torch runners may use another K.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from vvtrt.errors import InputError, WorkdirError
from vvtrt.precision import Precision

log = logging.getLogger(__name__)
SAMPLER_SPEC = {"dpmsolver++": "rt_sampler", "sde-dpmsolver++": "rt_sampler_sde"}
LOOP_PARTS = ("rt_text_window", "rt_tts_decode", "rt_decoder_step", "rt_connector")


def require_realtime(wd) -> None:
    """A `WorkdirError` unless `wd` is a Realtime work dir."""
    if wd.kind != "realtime":
        raise WorkdirError(f"{wd.root} is a long-form work dir, not a Realtime one: export a Realtime model into "
                           "it with `vvtrt export -w DIR --model tiny-realtime` (or realtime-0.5b, or a checkpoint dir)")


def load_realtime_model(source, precision: Precision = Precision.FP32, device="cpu"):
    """The `RealtimeModel` of a work dir's `ModelSource`: a preset initialised from its seed on the CPU in
    fp32 (so its weights equal the exported graphs'), or a checkpoint directory validated and loaded in
    place; then at `precision` on `device`, eval mode, no gradients."""
    precision = Precision.parse(precision) if not isinstance(precision, Precision) else precision
    if source.preset:
        from vvtrt.realtime.presets import build_realtime_model

        model = build_realtime_model(source.preset, seed=source.seed)
        return model.to(device=device, dtype=precision.torch_dtype)
    from vvtrt.realtime.checkpoint import load_realtime_checkpoint

    return load_realtime_checkpoint(source.path, dtype=precision.torch_dtype, device=device).eval().requires_grad_(False)


def realtime_tokenizer(source):
    """The text tokenizer of a work dir's source: bytes for presets without `--tokenizer`, else the
    tokenizer directory given, else the checkpoint's own files."""
    from vvtrt.model.text_tokenizer import ByteTokenizer, load_text_tokenizer

    if source.preset and not source.tokenizer:
        return ByteTokenizer()
    return load_text_tokenizer(source)


def _specs_for(wd, steps: int, graphs: bool) -> dict:
    opts = wd.options()
    if steps == opts.steps:
        return wd.specs()
    if graphs:
        raise InputError(f"the sampler of {wd.root} was exported with --steps {opts.steps}, not {steps}: use "
                         f"{opts.steps} with this backend, or re-export with --steps {steps}")
    from vvtrt.realtime.specs import build_realtime_specs

    return build_realtime_specs(wd.info(), dataclasses.replace(opts, steps=steps))


def load_realtime_runners(wd, backend: str, precision, device, steps: int | None = None,
                          solver: str = "dpmsolver++", compile: bool | str = False, models=None) -> dict:
    """Activated runners of the windowed loop's components (`LOOP_PARTS` and the sampler of `solver`) on
    `backend` ("torch", "onnxruntime", "tensorrt"), keyed like `vvtrt.realtime.runtime.torch_runners`.
    `steps`: the sampler's K (default: the work dir's). `models`: a `vvtrt.runtime.backends.ModelCache`
    to share the PyTorch model with (torch backend)."""
    from vvtrt.realtime.sampler import check_algorithm
    from vvtrt.runtime.runner import TorchRunner, check_backend

    check_backend(backend)
    check_algorithm(solver)
    require_realtime(wd)
    precision = precision if isinstance(precision, Precision) else Precision.parse(precision)
    device = torch.device(device)
    k = steps or wd.options().steps
    specs = _specs_for(wd, k, backend != "torch")
    out = {}
    for name in (*LOOP_PARTS, SAMPLER_SPEC[solver]):
        spec = specs[name]
        if backend == "torch":
            if models is None:
                from vvtrt.runtime.backends import ModelCache

                models = ModelCache(wd)
            r = TorchRunner(spec, precision, device, models.get(precision, device), k, compile=compile)
        elif backend == "onnxruntime":
            from vvtrt.runtime.ort_runner import OrtRunner

            r = OrtRunner(spec, precision, device, wd.onnx_path(name, precision))
        else:
            from vvtrt.runtime.trt_runner import TrtRunner

            r = TrtRunner.from_workdir(wd, spec, precision, device)
        r.activate()
        out[name] = r
    return out
