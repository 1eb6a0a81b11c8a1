"""Load one runner per component for a backend, with per-component fallback (`{component: "torch"}`)."""
from __future__ import annotations

import logging
from typing import Mapping

import torch

from vvtrt.errors import InputError, WorkdirError
from vvtrt.model import kinds
from vvtrt.precision import Precision
from vvtrt.runtime.runner import BACKENDS, TorchRunner, check_backend
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)

# The components the synthesis loop calls (diffusion_head is for debugging/parity only). The LLM is one
# component, lm_decode, which also runs the prompt prefill in chunks (`vvtrt.runtime.prefill`): one graph, one
# engine, one copy of its weights on every backend.
LOOP_COMPONENTS = ("lm_decode", "token_embed", "diffusion_sampler", "acoustic_decoder_step",
                   "semantic_encoder_step", "acoustic_encoder", "connectors")


def parse_fallback(items) -> dict[str, str]:
    """`["lm_decode=torch", ...]` -> `{"lm_decode": "torch"}` with validation."""
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise InputError(f"bad --fallback {item!r}: use COMPONENT=BACKEND, e.g. lm_decode=torch")
        comp, backend = (s.strip() for s in item.split("=", 1))
        if comp not in LOOP_COMPONENTS:
            raise InputError(f"bad --fallback {item!r}: unknown component {comp!r}; "
                             f"choose from {', '.join(LOOP_COMPONENTS)}")
        out[comp] = check_backend(backend)
    return out


class ModelCache:
    """Loads the PyTorch model once per (precision, device), only if some component needs it.

    Random presets are initialised on the CPU by default, so their weights equal the exported ONNX
    graphs'. `init_on_device=True` initialises on the target device instead (much faster for 7B; other
    random values, fine for speed measurements, not for parity against exported graphs).
    """

    def __init__(self, wd: Workdir, init_on_device: bool = False):
        self.wd = wd
        self.init_on_device = init_on_device
        self._models: dict = {}

    def forget(self, precision: Precision, device) -> None:
        """Drop the model of (precision, device): the next `get` loads it again."""
        self._models.pop((precision, str(device)), None)

    def get(self, precision: Precision, device):
        key = (precision, str(device))
        if key not in self._models:
            from vvtrt.model.resolve import load_model

            log.info("loading the PyTorch model (%s, %s)", precision.value, device)
            self._models.clear()  # one model in memory at a time
            if self.wd.kind != kinds.LONGFORM:
                load_kind_model = kinds.get(self.wd.kind).load("load_model")
                self._models[key] = load_kind_model(self.wd.source(), precision, device)
                return self._models[key]
            init = device if self.init_on_device else None
            dtype = precision.torch_dtype if self.init_on_device else torch.float32
            self._models[key] = load_model(self.wd.source(), dtype=dtype, device=init).to(
                device=device, dtype=precision.torch_dtype)
        return self._models[key]


def load_runners(wd: Workdir, backend: str, precision: Precision, device, fallback: Mapping[str, str] = None,
                 components=LOOP_COMPONENTS, models: ModelCache | None = None, ort_cuda_graph: bool = False,
                 trt_flavor: str = "auto", compile: bool | str = False, dynamic_axes: tuple[str, ...] = (),
                 compile_components: tuple[str, ...] | None = None) -> dict:
    """One activated runner per component. `fallback` overrides the backend per component. With `compile`,
    the torch runners of `compile_components` (default: all but the voice encoder) are compiled, marking
    `dynamic_axes` (spec axis names, e.g. "batch") dynamic instead of compiling each size."""
    check_backend(backend)
    if wd.kind == "realtime":
        raise WorkdirError(f"{wd.root} is a Realtime work dir: the long-form runtime cannot run it (use `vvtrt synth "
                           "-w DIR`, `vvtrt.realtime.runtime.RealtimeRunner.from_workdir` or the Realtime server)")
    fallback = dict(fallback or {})
    specs = wd.specs()
    steps = wd.options().steps
    models = models or ModelCache(wd)
    device = torch.device(device)
    # the voice encoder sees a new length per prompt: keep it eager (the prefill runs lm_decode's module
    # eagerly, see vvtrt.runtime.prefill)
    compiled = set(compile_components if compile_components is not None else components) - {"acoustic_encoder"}
    runners = {}
    for comp in components:
        which = fallback.get(comp, backend)
        spec = specs[comp]
        if which == "torch":
            r = TorchRunner(spec, precision, device, models.get(precision, device), steps,
                            compile=compile if comp in compiled else False, dynamic_axes=dynamic_axes,
                            quant=wd.quant())
        elif which == "onnxruntime":
            path = wd.onnx_path(comp, precision)
            if not path.is_file():
                raise WorkdirError(f"{path.name} is missing: run `vvtrt export -w {wd.root} --dtype "
                                   f"{precision.value}` first")
            from vvtrt.runtime.ort_runner import OrtRunner

            # ORT CUDA graphs need fixed shapes: only the per-frame components use them (lm_decode's graph
            # slots are per shape, so the prefill's chunk shapes would each capture one: see ort_runner)
            r = OrtRunner(spec, precision, device, path,
                          cuda_graph=ort_cuda_graph and comp not in ("acoustic_encoder", "token_embed"))
        else:
            from vvtrt.runtime.trt_runner import TrtRunner

            r = TrtRunner.from_workdir(wd, spec, precision, device, flavor=trt_flavor)
        r.activate()
        runners[comp] = r
    assert set(BACKENDS) >= set(fallback.values())
    if wd.quant() is not None:
        _drop_quantized_float_weights(runners, models, precision, device)
    return runners


def _drop_quantized_float_weights(runners: dict, models: ModelCache, precision: Precision, device) -> None:
    """The quantized GEMMs' float weights freed once every runner is built; the cache forgets the model (its
    next `get` loads it whole again)."""
    from vvtrt.quant.torch_path import drop_float_weights

    modules = [r.module for r in runners.values() if isinstance(r, TorchRunner) and r.quant is not None]
    if not modules:
        return
    freed = drop_float_weights(modules, models.get(precision, device))
    models.forget(precision, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("quantized GEMMs: %.2f GiB of %s weights freed", freed / (1 << 30), precision.value)
