"""A lazy facade over the two TensorRT Python APIs vvtrt builds and runs with.

- ``tensorrt``: full TensorRT 10.x / 11.x (datacenter GPUs such as the H100; builds need that GPU).
- ``tensorrt-rtx``: TensorRT for RTX 1.x (GeForce/RTX GPUs, compute capability 8.0-12.x; its builder runs on
  the CPU alone, "ahead of time", and emits engines that are portable across the supported GPUs).

Both expose NVIDIA's documented TensorRT 10 API (`Builder`, `OnnxParser`, `Runtime`, `ICudaEngine`,
`IExecutionContext`, named I/O tensors, `execute_async_v3`). `TrtModule` wraps whichever is installed and puts
the few places where they differ behind small, commented methods, so the builder and the runner have one code
path. Nothing here imports TensorRT until `load_trt` is called: `import vvtrt` never needs it.
"""
from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from vvtrt.errors import BackendUnavailableError, BuildError, InputError

log = logging.getLogger(__name__)

FLAVORS = ("tensorrt", "tensorrt-rtx")
# Import names, in order of preference. NVIDIA documents the RTX module as `tensorrt_rtx`; the standalone
# `tensorrt-rtx-cu13-bindings` wheel installs it as `tensorrt_rtx_bindings`.
_MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
# Binding names the engine code uses only on full TensorRT (`not tm.is_rtx` branches), which TensorRT-RTX may
# lack; tests/test_trt_api_surface.py checks every other class, enum member and method the engine code uses
# against the installed TensorRT-RTX bindings. Empty today: the timing-cache calls exist in both (no-ops in RTX).
FULL_TRT_ONLY: frozenset[str] = frozenset()
_PIP = {"tensorrt": "pip install 'tensorrt>=10'  (or: pip install 'vvtrt[tensorrt]')",
        "tensorrt-rtx": "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings  "
                        "(or: pip install 'vvtrt[tensorrt-rtx]')"}


def parse_sm(value: "str | int | tuple") -> str:
    """Normalise a compute capability: ``86``, ``"86"``, ``"sm86"``, ``"sm_86"``, ``"8.6"``, ``(8, 6)`` -> ``"8.6"``."""
    if isinstance(value, tuple):
        return f"{int(value[0])}.{int(value[1])}"
    s = str(value).strip().lower().removeprefix("sm").lstrip("_")
    if "." in s:
        major, _, minor = s.partition(".")
    else:
        major, minor = s[:-1], s[-1:]
    if not (major.isdigit() and minor.isdigit()):
        raise InputError(f"bad compute capability {value!r}: use e.g. 86, sm86 or 8.6")
    return f"{int(major)}.{int(minor)}"


def sm_tag(cc: str) -> str:
    """``"8.6"`` -> ``"sm86"`` (used in engine folder names)."""
    return "sm" + cc.replace(".", "")


@dataclass(frozen=True)
class TrtModule:
    """One imported TensorRT flavor: the module itself plus the shims where the two APIs differ."""

    trt: ModuleType
    flavor: str  # "tensorrt" | "tensorrt-rtx"
    version: str
    module_name: str

    @property
    def is_rtx(self) -> bool:
        return self.flavor == "tensorrt-rtx"

    # -- network / builder config ---------------------------------------------------------------
    def network_flags(self) -> int:
        """Creation flags for a strongly typed network (the ONNX dtypes decide every precision).

        TensorRT 10 (>= 10.0) needs `STRONGLY_TYPED` set explicitly; TensorRT 11 makes every network strongly typed
        and keeps the flag only for compatibility (ignored); TensorRT-RTX accepts it. A future release may drop the
        enum member, in which case 0 is right (strong typing is then the only mode).
        """
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def set_workspace(self, config, nbytes: int | None) -> None:
        """Cap the builder's scratch memory. Both APIs use `set_memory_pool_limit(WORKSPACE)` (the TensorRT 8
        `max_workspace_size` is gone); the default (whole device memory, 64 GiB on a CPU-only RTX build) is kept
        when `nbytes` is None."""
        if nbytes is not None:
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(nbytes))

    def set_tf32(self, config, enabled: bool) -> bool:
        """Allow (or forbid) TF32 math for fp32 matmuls/convolutions; returns the flag's final state.

        `BuilderFlag.TF32` is on by default in both APIs (even for strongly typed networks, where it is the one
        precision choice left to the builder). vvtrt turns it off so an fp32 engine is the full-precision reference
        the parity tolerances (1e-5 rel-L2) assume; fp16/bf16 engines are unaffected.
        """
        flag = getattr(self.trt.BuilderFlag, "TF32", None)
        if flag is None:
            return False
        (config.set_flag if enabled else config.clear_flag)(flag)
        return bool(config.get_flag(flag))

    def rtx_capabilities(self) -> list[str]:
        """Compute capabilities this TensorRT-RTX can target, from its `ComputeCapability` enum (e.g. 7.5 ... 12.1)."""
        if not self.is_rtx:
            return []
        out = []
        for name in self.trt.ComputeCapability.__members__:
            if name.startswith("SM") and name[2:].isdigit():
                out.append(parse_sm(name[2:]))
        return sorted(out, key=lambda s: tuple(map(int, s.split("."))))

    def portable_capabilities(self) -> list[str]:
        """GPUs a TensorRT-RTX engine built with no target runs on: NVIDIA documents "compute capability 8.0, 8.6,
        8.9, 12.0 and later" (Turing, 7.5, only when asked for explicitly)."""
        return [cc for cc in self.rtx_capabilities() if tuple(map(int, cc.split("."))) >= (8, 0)]

    def set_target(self, config, cc: str | None) -> None:
        """TensorRT-RTX only: build for one compute capability instead of the portable default.

        Full TensorRT has no such setting: it always builds for the GPU it runs on (hardware-compatibility levels
        aside), so the builder resolves its target from that GPU instead.
        """
        if cc is None or not self.is_rtx:
            return
        member = getattr(self.trt.ComputeCapability, sm_tag(cc).upper(), None)
        if member is None:
            raise InputError(f"TensorRT-RTX {self.version} cannot target compute capability {cc}: choose one of "
                             f"{', '.join(self.rtx_capabilities())}")
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(member, 0):
            raise InputError(f"TensorRT-RTX refused target compute capability {cc}")

    def allow_decomposed_attention(self, network) -> int:
        """Mark every `IAttention` (parsed from ONNX `Attention` nodes) decomposable; return how many changed.

        By default TensorRT requires a single fused attention kernel and fails the build when none fits the shapes
        and dtype (TensorRT-RTX 1.7, fp32 causal prefill: "Attention operation was not supported by a dedicated
        kernel"). Decomposable attention still uses the fused kernel when there is one and otherwise falls back to
        matmul + softmax + matmul, which is numerically the same operation. Releases without `IAttention` (TensorRT
        < 10.14) return 0. The Python bindings hand layers back as the base `ILayer`, so each attention boundary
        layer is downcast by setting `__class__`, as Polygraphy does.
        """
        out_type = getattr(self.trt.LayerType, "ATTENTION_OUTPUT", None)
        if out_type is None:
            return 0
        changed = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type != out_type:
                continue
            layer.__class__ = self.trt.IAttentionOutputLayer
            attention = layer.attention
            if attention is not None and not attention.decomposable:
                attention.decomposable = True
                if not attention.decomposable:
                    raise BuildError(f"TensorRT refused to make attention {attention.name!r} decomposable")
                changed += 1
        return changed

    def require_user_allocation(self, config) -> bool:
        """TensorRT-RTX: build with `BuilderFlag.REQUIRE_USER_ALLOCATION`; returns whether the flag is set.

        NVIDIA (TensorRT-RTX 1.2 release notes; the flag's binding doc): an engine that will be CUDA-stream
        captured must use application-provided memory, never memory the runtime allocates during enqueue; with
        the flag, the build fails instead if the network needs runtime allocation (data-dependent shapes).
        Every vvtrt engine may be captured (whole-frame and prefill graphs), so every RTX engine gets it. Full
        TensorRT has no such flag: its contexts allocate their memory when created, and its CUDA-graph guidance
        needs nothing at build time.
        """
        if not self.is_rtx:
            return False
        flag = self.trt.BuilderFlag.REQUIRE_USER_ALLOCATION
        config.set_flag(flag)
        return bool(config.get_flag(flag))

    def create_context(self, engine, cache=None):
        """`(execution context, runtime config)` for `engine`; None for the context if TensorRT refused one.

        TensorRT-RTX compiles kernels just in time, so before any capture the context is given (NVIDIA, "Working
        with Runtime Cache" / "Working with Dynamic Shapes" in the TensorRT-RTX guide) an `IRuntimeConfig` with
        `DynamicShapesKernelSpecializationStrategy.EAGER` (a new shape's specialised kernels are compiled, blocking,
        at its first enqueue, so the eager warm-up run compiles them and the capture records them, not the
        fallback kernels the default LAZY strategy would swap out later), the runtime cache `cache`
        (`RuntimeCacheFile`: compiled kernels persist across processes), and its own CUDA-graph capture
        (`CudaGraphStrategy`) off, since vvtrt captures whole frames itself. The config is returned so it stays
        alive as long as the context. Full TensorRT compiles nothing at run time: a plain context.

        Both: device memory `ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE` ("reallocate for a profile when
        it's selected"): a context gets the activation memory of the one profile the runner selects right after
        creating it (`set_optimization_profile_async`, never inside a capture), not the largest profile's
        (`STATIC`, the default). lm_decode's engine has decode profiles and a prefill-chunk profile whose
        activations are far larger; every decode context would otherwise hold the prefill's.
        """
        strategy = self.trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE
        if not self.is_rtx:
            return engine.create_execution_context(strategy), None
        rt_config = engine.create_runtime_config()
        if rt_config is None:
            return None, None
        rt_config.set_execution_context_allocation_strategy(strategy)
        rt_config.dynamic_shapes_kernel_specialization_strategy = \
            self.trt.DynamicShapesKernelSpecializationStrategy.EAGER
        rt_config.cuda_graph_strategy = self.trt.CudaGraphStrategy.DISABLED
        if cache is not None:
            cache.attach(rt_config)
        return engine.create_execution_context(runtime_config=rt_config), rt_config

    @property
    def supports_timing_cache(self) -> bool:
        """Only full TensorRT uses a timing cache. TensorRT-RTX does no autotuning at build time: its
        `ITimingCache` calls are no-ops (deprecated since RTX 1.2) and, per NVIDIA, setting one forces a GPU query
        that breaks CPU-only ahead-of-time builds. RTX's JIT kernels go to a *runtime* cache instead."""
        return not self.is_rtx

    def engine_validity(self, runtime, blob) -> list[str]:
        """Reasons a serialized engine cannot run here, from the header alone ([] = fine or unknown).

        TensorRT-RTX has `IRuntime.get_engine_validity` (version, compute capability, CUDA driver/runtime, malformed
        header); full TensorRT does not, so there the deserialize call is the check.
        """
        check = getattr(runtime, "get_engine_validity", None)
        if check is None:
            return []
        validity, diagnostics = check(blob)
        if validity != self.trt.EngineValidity.INVALID:
            return []
        flags = self.trt.EngineInvalidityDiagnostics.__members__
        reasons = [name.lower() for name, bit in flags.items() if int(diagnostics) & int(bit)]
        return reasons or ["invalid (no diagnostic given)"]

    def dtype_name(self, dt) -> str:
        """TensorRT `DataType` -> the torch-style name used in manifests (``float16``, ``bfloat16``, ``int64``...)."""
        names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}
        return names.get(dt.name, dt.name.lower())

    def torch_dtype(self, dt):
        import torch

        return getattr(torch, self.dtype_name(dt))

    # -- logging --------------------------------------------------------------------------------
    def logger(self) -> "CaptureLogger":
        """The process-wide `ILogger` for this module: forwards to `logging`, keeps errors for exception messages.

        TensorRT registers the first logger it is given and ignores later ones ("The logger passed into
        createInferBuilder differs from one already registered ... the current new logger is ignored"), so vvtrt
        hands the same object to every builder, parser and runtime and calls `clear()` before each operation
        (builds and loads are therefore not thread-safe within one process).
        """
        return _shared_logger(self.trt)


class CaptureLogger:  # documentation stub; the real class subclasses the loaded module's `ILogger`
    """Attributes: `errors` (messages at ERROR/INTERNAL_ERROR), `warnings`, `layer_dump` (the builder's per-layer
    report, logged at VERBOSE when profiling verbosity is DETAILED; None if it never came)."""

    errors: list[str]
    warnings: list[str]
    layer_dump: str | None

    def clear(self) -> None: ...


@functools.lru_cache(maxsize=None)
def _shared_logger(trt: ModuleType):
    sev = trt.ILogger.Severity
    levels = {int(sev.INTERNAL_ERROR): logging.ERROR, int(sev.ERROR): logging.ERROR,
              int(sev.WARNING): logging.WARNING, int(sev.INFO): logging.DEBUG, int(sev.VERBOSE): 5}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.clear()

        def clear(self) -> None:
            self.errors: list[str] = []
            self.warnings: list[str] = []
            self.layer_dump: str | None = None

        def log(self, severity, msg):  # called from C++: must never raise
            try:
                s = int(severity)
                if s <= int(sev.ERROR):
                    self.errors.append(msg)
                elif s == int(sev.WARNING) and len(self.warnings) < 200:
                    self.warnings.append(msg)
                elif msg.startswith("Layers:"):
                    self.layer_dump = msg
                    return  # large; not forwarded
                log.log(levels.get(s, 5), "[TRT] %s", msg)
            except Exception:  # noqa: BLE001
                pass

    return _Logger()


def _import(flavor: str) -> TrtModule | None:
    for name in _MODULES[flavor]:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer, bad CUDA) raises OSError etc.
            raise BackendUnavailableError(f"{flavor} is installed but fails to import ({type(exc).__name__}: "
                                          f"{exc}); reinstall it: {_PIP[flavor]}") from exc
        version = str(getattr(mod, "__version__", "unknown"))
        return TrtModule(mod, flavor, version, name)
    return None


@functools.lru_cache(maxsize=None)
def load_trt(flavor: str = "auto") -> TrtModule:
    """Import TensorRT (`"tensorrt"`), TensorRT-RTX (`"tensorrt-rtx"`), or the first of those found (`"auto"`).

    Raises `BackendUnavailableError` naming the pip command when the requested flavor is not installed.
    """
    flavor = (flavor or "auto").lower().replace("_", "-")
    if flavor == "tensorrt_rtx" or flavor == "rtx":
        flavor = "tensorrt-rtx"
    if flavor not in (*FLAVORS, "auto"):
        raise InputError(f"unknown TensorRT flavor {flavor!r}: choose tensorrt, tensorrt-rtx or auto")
    for f in (FLAVORS if flavor == "auto" else (flavor,)):
        mod = _import(f)
        if mod is not None:
            log.debug("using %s %s (module %s)", mod.flavor, mod.version, mod.module_name)
            return mod
    if flavor == "auto":
        raise BackendUnavailableError("neither TensorRT nor TensorRT-RTX is installed: " + " | ".join(_PIP.values()))
    raise BackendUnavailableError(f"{flavor} is not installed: {_PIP[flavor]}")


def available_flavors() -> list[str]:
    """The flavors importable here (never raises)."""
    out = []
    for f in FLAVORS:
        try:
            if _import(f) is not None:
                out.append(f)
        except BackendUnavailableError:
            pass
    return out
