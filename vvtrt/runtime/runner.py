"""One runner contract for every backend (torch / onnxruntime / tensorrt), after Polygraphy's:
`activate()` / `infer(feed, out=None) -> dict` / `deactivate()`, usable as a context manager.

Tensors in and out are torch tensors on the runner's device, in the dtypes the component's spec declares
for the runner's precision. When `out` is given, results are written into those preallocated tensors
(the zero-copy path the runtime and CUDA graphs use) and the same dict is returned. Work is enqueued on
the current torch CUDA stream; `infer` does not synchronise unless the backend forces it.
"""
from __future__ import annotations

import logging
from typing import Mapping, Protocol, runtime_checkable

import torch

from vvtrt.errors import InputError
from vvtrt.precision import Precision
from vvtrt.spec import ComponentSpec

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnxruntime", "tensorrt")


@runtime_checkable
class Runner(Protocol):
    spec: ComponentSpec
    precision: Precision
    device: torch.device
    backend: str

    def activate(self) -> None: ...

    def infer(self, feed: Mapping[str, torch.Tensor],
              out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]: ...

    def deactivate(self) -> None: ...


class RunnerBase:
    """Context-manager plumbing and feed checking shared by the backends."""

    backend = "base"

    def __init__(self, spec: ComponentSpec, precision: Precision, device):
        self.spec = spec
        self.precision = precision
        self.device = torch.device(device)
        self.active = False

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    def check_feed(self, feed: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Check names, dtypes and fixed dims of a feed; return the symbolic axis sizes it implies."""
        dims: dict[str, int] = {}
        for t in self.spec.inputs:
            if t.name not in feed:
                raise InputError(f"{self.spec.name}: missing input {t.name!r}")
            x = feed[t.name]
            want = t.torch_dtype(self.precision)
            if x.dtype != want:
                raise InputError(f"{self.spec.name}.{t.name}: dtype {x.dtype} != {want}")
            if x.dim() != len(t.shape):
                raise InputError(f"{self.spec.name}.{t.name}: rank {x.dim()} != {len(t.shape)}")
            for size, d in zip(x.shape, t.shape):
                if isinstance(d, int) and size != d:
                    raise InputError(f"{self.spec.name}.{t.name}: shape {tuple(x.shape)} != {t.shape}")
                if isinstance(d, str):
                    if dims.setdefault(d, size) != size:
                        raise InputError(f"{self.spec.name}: axis {d!r} is {dims[d]} and {size}")
        return dims

    def alloc_outputs(self, dims: Mapping[str, int]) -> dict[str, torch.Tensor]:
        dims = {**self.spec.default_dims, **dims}
        return {t.name: torch.empty(t.resolve(dims), dtype=t.torch_dtype(self.precision), device=self.device)
                for t in self.spec.outputs}


def keep_every_bucket_compiled(limit: int = 256) -> None:
    """dynamic=False compiles once per (batch, KV) bucket; dynamo's default recompile limit (8) would run
    every bucket past the eighth uncompiled. Raise it (never lower it) for this process."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


class TorchRunner(RunnerBase):
    """The reference modules (the spec's traceable wrapper) run by PyTorch, eagerly or `torch.compile`d.

    Compiled, shapes are static except the spec axes named in `dynamic_axes` (e.g. `("batch",)`): those are
    marked dynamic on every call, so one graph serves every size of at least 2 (size 1 is its own
    specialisation), instead of one compile per size."""

    backend = "torch"

    def __init__(self, spec: ComponentSpec, precision: Precision, device, model, steps: int = 10,
                 compile: bool | str = False, dynamic_axes: tuple[str, ...] = (), quant=None):
        super().__init__(spec, precision, device)
        self.module = spec.make_module(model, steps).eval()
        self.quant = quant if spec.quant else None  # a QuantMode: the spec's GEMMs run quantized
        if self.quant is not None:
            from vvtrt.quant.torch_path import quantize_module

            quantize_module(self.module, spec.quant, self.quant)
        self.mode = compile if isinstance(compile, str) else None
        self.compiled = bool(compile)
        self._dynamic = tuple((t.name, i) for t in spec.inputs for i, d in enumerate(t.shape)
                              if isinstance(d, str) and d in dynamic_axes) if compile else ()
        # kernels for the compiled CUDA path, never exported: the gemm decode attention in lm_decode, the
        # channels-last streaming conv steps (see LMDecode / conv_stream._FastSwitch; the conv steps check
        # themselves against the exported ops first). If they fail to compile, the first call falls back to
        # the exported path's ops (logged).
        self.fast_pending = bool(compile) and self.device.type == "cuda" and hasattr(self.module, "fast")
        if hasattr(self.module, "fast"):
            self.module.fast = self.fast_pending
        if self.module_fast() and hasattr(self.module, "fast_error"):
            self._check_fast()
        self.call = self._compiled() if compile else self.module

    def module_fast(self) -> bool:
        return bool(getattr(self.module, "fast", False))

    def _fast_error(self) -> float:
        try:
            return self.module.fast_error()
        except Exception as exc:  # noqa: BLE001 - a kernel that does not build is a failed check
            log.warning("%s: the fast path's self-check failed (%s: %s)", self.spec.name, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            return float("inf")

    def _check_fast(self) -> None:
        """A component whose fast path can check itself (the streaming conv steps: `fast_error`) runs it
        against the exported ops once, eagerly, before compiling it. Beyond the component's tolerance its
        optional kernels go first (`fast_fallback`: the Triton feed-forward), then the whole fast path
        (logged); the exported ops are compiled instead."""
        tol = min(self.spec.tol(t.name, self.precision) for t in self.spec.outputs)
        err = self._fast_error()
        while not err <= tol and self.module.fast_fallback():
            log.warning("%s: fast path off by %.3g (rel-L2, bound %.3g) with its Triton kernels: running it "
                        "without them", self.spec.name, err, tol)
            err = self._fast_error()
        if err <= tol:
            log.info("%s: fast path within %.2g of the exported ops (bound %.2g)", self.spec.name, err, tol)
            return
        log.warning("%s: the fast path differs from the exported ops by %.3g (rel-L2, bound %.3g); running the "
                    "exported path's ops", self.spec.name, err, tol)
        self.module.fast = False
        self.fast_pending = False

    def _compiled(self):
        # Inductor fuses the many small elementwise ops (RMSNorm upcasts, RoPE, adaLN modulation,
        # CFG/solver arithmetic) that otherwise dominate a CUDA-graphed frame; shapes are static.
        # A string picks the torch.compile mode (e.g. "max-autotune-no-cudagraphs": autotuned GEMMs).
        keep_every_bucket_compiled()
        return torch.compile(self.module, dynamic=False, mode=self.mode)

    def _run(self, args):
        if not self.fast_pending:
            return self.call(*args)
        try:
            res = self.call(*args)
        except Exception as exc:  # noqa: BLE001 - inductor raises many types; the plain path still works
            res = self._run_after_failure(args, exc)
        self.fast_pending = False
        return res

    def _mark_dynamic(self, feed) -> None:
        from torch._dynamo import maybe_mark_dynamic

        for name, dim in self._dynamic:
            x = feed[name]
            if x.shape[dim] >= 2:  # dynamo specialises sizes 0 and 1 anyway
                maybe_mark_dynamic(x, dim)

    def _run_after_failure(self, args, exc):
        """The compiled fast path failed: without its optional kernels if it has any, else the exported ops."""
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if getattr(self.module, "fast_fallback", lambda: False)():
            log.warning("%s: the compiled fast path failed (%s); compiling it without its Triton kernels",
                        self.spec.name, why)
            self.call = self._compiled()
            try:
                return self.call(*args)
            except Exception as again:  # noqa: BLE001
                why = f"{type(again).__name__}: {str(again).splitlines()[0] if str(again) else ''}"
        log.warning("%s: the compiled fast path failed (%s); compiling the exported path's ops instead",
                    self.spec.name, why)
        self.module.fast = False
        self.call = self._compiled()
        return self.call(*args)

    @torch.inference_mode()
    def infer(self, feed, out=None):
        self.check_feed(feed)
        if self._dynamic:
            self._mark_dynamic(feed)
        res = self._run(tuple(feed[t.name] for t in self.spec.inputs))
        res = res if isinstance(res, tuple) else (res,)
        if out is None:
            return {t.name: r for t, r in zip(self.spec.outputs, res)}
        for t, r in zip(self.spec.outputs, res):
            out[t.name].copy_(r)
        return dict(out)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name
