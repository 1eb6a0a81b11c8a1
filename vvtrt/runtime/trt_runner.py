"""`TrtRunner`: one TensorRT / TensorRT-RTX engine behind the common runner contract (`vvtrt.runtime.runner`).

Lifecycle, after NVIDIA's demo/Diffusion engine wrapper:

- `activate()` checks the manifest entry against the running TensorRT and GPU (`check_engine`), reads the engine
  file and checks those bytes against their recorded size and sha256 (`read_engine`), the header against
  TensorRT-RTX's `get_engine_validity`, then deserializes it and checks its I/O names, dtypes and profile count
  against the spec. Every mismatch is an `EngineMismatchError` naming the rebuild command.
- `infer(feed, out=None)` picks the optimization profile that admits the feed's axis sizes (`select_profile`:
  the first in spec order; lm_decode's engine has one profile per KV bucket for decode steps, T = 1, and one
  last profile for the prefill's prompt chunks, batch 1 and T up to the chunk size), sets input shapes and the addresses of the torch tensors on an execution context (see below) and enqueues
  `execute_async_v3`. It does not synchronise. With `out` given it allocates nothing.
- `deactivate()` synchronises the device, saves the TensorRT-RTX runtime cache, then frees contexts, engine and
  runtime in that order.

CUDA graphs are the caller's (`torch.cuda.graph`); the runner keeps NVIDIA's rules for capturing TensorRT
(TensorRT developer guide, "CUDA Graphs"; TensorRT-RTX guide, "Working with RTX CUDA Graphs"):

- Enqueue once, outside any capture, with the shapes about to be captured, then capture: the first enqueue after
  a shape change does shape-dependent set-up that a capture must not record (and TensorRT-RTX compiles that
  shape's kernels then, see `TrtModule.create_context`).
- A graph is only valid for the input shapes and context state it was captured with: one execution context per
  captured shape (and buffer set). Eager calls run on one context per profile whose shapes change freely. When
  a capture begins with the shapes that context last ran (the warm-up), that context is handed over to the
  captured shapes and buffers and never runs anything else again (an eager call of the same shapes and buffers,
  which is what a replay does, may still use it); a later eager call of other shapes gets a fresh context.
  `prepare(shapes)` creates dedicated contexts up front instead (then warm up and capture on them). No context
  is ever created inside a capture, and capturing shapes that were not run eagerly just before is refused.
  Each context holds its own activation memory, sized for its own profile (`ON_PROFILE_CHANGE` allocation, set
  in `TrtModule.create_context`: the default static allocation would give every context the largest profile's
  memory, i.e. the prefill chunk's), so capture few shapes.
- Never the legacy default stream: work goes on the caller's current stream, unless that is a default stream
  (torch's default stream is CUDA's legacy stream, handle 0), in which case the runner enqueues on its own
  stream, ordered after the caller's work with an event and the caller ordered after it in turn (`wait_stream`;
  no host blocking). A capture always runs on a non-default stream, so captured work is the caller's.
- TensorRT-RTX: engines are built with `REQUIRE_USER_ALLOCATION` (`vvtrt.engines.builder`) and a context that
  reports it cannot be captured (`is_stream_capturable`) makes `infer` raise instead of corrupting the capture.

None of this executes here (CPU-only CI; TensorRT-RTX refuses the H100's sm_90): it is written to NVIDIA's
documentation and checked against the installed TensorRT-RTX bindings' API (tests/test_trt_api_surface.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from vvtrt.engines.manifest import (RuntimeInfo, check_engine, entry_key, find_engine, read_engine,
                                    rebuild_command)
from vvtrt.errors import BackendUnavailableError, EngineMismatchError, InputError, WorkdirError
from vvtrt.precision import Precision
from vvtrt.runtime.runner import RunnerBase
from vvtrt.spec import ComponentSpec

log = logging.getLogger(__name__)
# CUDA's default streams: 0 (the legacy default stream, torch's default), cudaStreamLegacy, cudaStreamPerThread
DEFAULT_STREAM_HANDLES = (0, 1, 2)


class TrtExecutionError(BackendUnavailableError):
    """TensorRT refused to set up or enqueue an inference (logged TensorRT errors are in the message)."""


def select_profile(spec: ComponentSpec, dims: Mapping[str, int]) -> int:
    """Index of the first optimization profile admitting `dims`; `InputError` listing the ranges otherwise."""
    idx = spec.profile_for(dims)
    if idx < 0:
        ranges = "; ".join(", ".join(f"{a} in [{r.min}, {r.max}]" for a, r in p.items()) for p in spec.profiles)
        raise InputError(f"{spec.name}: axis sizes {dict(dims)} fit no engine profile ({ranges})")
    return idx


def deserialize_engine(tm, runtime, logger, blob: bytes, name: str, rebuild: str):
    """Header check (TensorRT-RTX) then `deserialize_cuda_engine`; a None result is an `EngineMismatchError`."""
    reasons = tm.engine_validity(runtime, blob)
    if reasons:
        raise EngineMismatchError(f"engine {name} cannot run here ({', '.join(reasons)}); rebuild it: `{rebuild}`")
    logger.clear()
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        detail = "; ".join(logger.errors) or "no detail logged"
        raise EngineMismatchError(f"engine {name} failed to deserialize ({detail}); rebuild it: `{rebuild}`")
    return engine


def shape_key(profile: int, dims: Mapping[str, int]) -> tuple:
    """What fixes a context's input shapes: the profile and the feed's axis sizes."""
    return profile, tuple(sorted(dims.items()))


@dataclass
class _Context:
    """One execution context, the shapes it last ran, and (once captured) the buffer addresses it is bound to."""

    ctx: object
    config: object = None  # TensorRT-RTX IRuntimeConfig (kept alive with the context), None for full TensorRT
    key: tuple | None = None
    captured: tuple | None = None  # data pointers of the captured I/O; None until a capture used it


class ContextPool:
    """Which execution context each call runs on (the rules in the module docstring), apart from TensorRT:
    `create(profile)` makes a context, and is never called while `capturing`."""

    def __init__(self, create: Callable[[int], _Context], name: str = "engine"):
        self.create, self.name = create, name
        self.eager: dict[int, _Context] = {}  # profile -> the context eager calls use
        self.pinned: dict[tuple, list[_Context]] = {}  # shape_key -> contexts each reserved for one capture

    def all(self) -> list[_Context]:
        return [*self.eager.values(), *(c for cs in self.pinned.values() for c in cs)]

    def clear(self) -> None:
        self.eager.clear()
        self.pinned.clear()

    def prepare(self, key: tuple | None = None, profile: int | None = None) -> None:
        """A dedicated context for the shapes `key`, or the eager context of `profile`."""
        if key is not None:
            self.pinned.setdefault(key, []).append(self.create(key[0]))
        elif profile not in self.eager:
            self.eager[profile] = self.create(profile)

    def get(self, key: tuple, ptrs: tuple, capturing: bool) -> _Context:
        """A context bound to exactly these shapes and buffers (or a prepared one not captured yet), else the
        profile's eager context; inside a capture, the eager context warmed up with these shapes is handed over
        to them for good."""
        pinned = self.pinned.setdefault(key, [])
        slot = next((c for c in pinned if c.captured == ptrs), None) or \
            next((c for c in pinned if c.captured is None), None)
        if slot is not None:
            if capturing:
                slot.captured = ptrs
            return slot
        eager = self.eager.get(key[0])
        if capturing:
            if eager is None or eager.key != key:
                raise TrtExecutionError(f"{self.name}: shapes {dict(key[1])} were not run eagerly just before this "
                                        f"capture; call infer() once with the same shapes outside the capture "
                                        f"(TensorRT's documented warm-up), or prepare() them, then capture")
            del self.eager[key[0]]
            eager.captured = ptrs
            pinned.append(eager)
            return eager
        if eager is None:
            eager = self.eager[key[0]] = self.create(key[0])
        eager.key = key
        return eager


class TrtRunner(RunnerBase):
    """Runs one built engine. Build it with `vvtrt build`; construct with `TrtRunner.from_workdir`."""

    backend = "tensorrt"

    def __init__(self, spec: ComponentSpec, precision: Precision, device, engine_path: Path, entry: dict,
                 flavor: str = "auto", workdir="DIR", verify_sha: bool = True):
        super().__init__(spec, precision, device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"{spec.name}: the TensorRT backend runs on a CUDA device, not "
                                          f"{self.device}")
        self.engine_path, self.entry = Path(engine_path), entry
        self.flavor = entry.get("flavor", flavor) if flavor == "auto" else flavor
        self.workdir, self.verify_sha = workdir, verify_sha
        self.tm = self.logger = self.runtime = self.engine = self.cache = None
        self.pool = ContextPool(self._new_context, self.name)
        self._own_stream: torch.cuda.Stream | None = None

    @classmethod
    def from_workdir(cls, wd, spec: ComponentSpec, precision: Precision, device, flavor: str = "auto",
                     verify_sha: bool = True) -> "TrtRunner":
        """Pick the best engine for this GPU and TensorRT from `wd`'s manifests (see `find_engine`)."""
        from vvtrt.engines.trt_api import load_trt

        tm = load_trt(flavor)
        info = RuntimeInfo.current(tm, device)
        path, entry = find_engine(wd.engines_dir, info, spec.name, precision.value, wd.root)
        return cls(spec, precision, device, path, entry, tm.flavor, wd.root, verify_sha)

    @property
    def name(self) -> str:
        return entry_key(self.spec.name, self.precision.value)

    @property
    def contexts(self) -> list:
        """Every live execution context (eager and captured)."""
        return [c.ctx for c in self.pool.all()]

    def _rebuild(self) -> str:
        return rebuild_command(self.workdir, self.flavor, self.spec.name)

    # -- lifecycle --------------------------------------------------------------------------------
    def activate(self) -> None:
        from vvtrt.engines.trt_api import load_trt

        if self.active:
            return
        self.tm = tm = load_trt(self.flavor)
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{self.name}: the TensorRT backend needs a CUDA GPU; none is visible")
        if self.device.index is None:  # "cuda" -> "cuda:N", so tensor device checks compare equal
            self.device = torch.device("cuda", torch.cuda.current_device())
        info = RuntimeInfo.current(tm, self.device)
        check_engine(self.entry, info, self.workdir)
        blob = read_engine(self.engine_path, self.entry, self.verify_sha, self.workdir, tm.flavor)
        with torch.cuda.device(self.device):
            self.logger = tm.logger()
            self.runtime = tm.trt.Runtime(self.logger)
            if self.runtime is None:
                raise TrtExecutionError(f"{tm.flavor} could not create a runtime: {'; '.join(self.logger.errors)}")
            self.engine = deserialize_engine(tm, self.runtime, self.logger, blob, self.name, self._rebuild())
            self._own_stream = torch.cuda.Stream(self.device)
        if tm.is_rtx:
            from vvtrt.engines.runtime_cache import cache_path, open_cache

            self.cache = open_cache(cache_path(self.engine_path.parent, info.compute_capability, info.gpu_name))
        self._check_io()
        log.info("loaded %s (%s %s) from %s", self.name, tm.flavor, tm.version, self.engine_path)
        super().activate()

    def deactivate(self) -> None:
        """Wait for all work on the device (eager calls and replays may still be in flight on any stream), save
        the runtime cache, then free contexts before their engine and the engine before its runtime. Captured
        graphs that replay this runner's contexts must be dropped first."""
        if self.active:
            torch.cuda.synchronize(self.device)
            if self.cache is not None:
                try:
                    self.cache.save()
                except WorkdirError as exc:  # a speed-up lost, not a failure of this run
                    log.warning("%s: runtime cache not saved: %s", self.name, exc)
        self.pool.clear()
        self.engine = None
        self.runtime = None
        self._own_stream = None
        super().deactivate()

    def _check_io(self) -> None:
        engine, tm = self.engine, self.tm
        io = {}
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            io[n] = (engine.get_tensor_mode(n), tm.torch_dtype(engine.get_tensor_dtype(n)))
        problems = []
        for mode, tensors in ((tm.trt.TensorIOMode.INPUT, self.spec.inputs), (tm.trt.TensorIOMode.OUTPUT,
                                                                             self.spec.outputs)):
            for t in tensors:
                want = t.torch_dtype(self.precision)
                if t.name not in io:
                    problems.append(f"no tensor {t.name!r}")
                elif io[t.name] != (mode, want):
                    got_mode, got_dtype = io[t.name]
                    problems.append(f"{t.name!r} is {got_mode.name} {got_dtype}, spec wants {mode.name} {want}")
        if extra := set(io) - {t.name for t in (*self.spec.inputs, *self.spec.outputs)}:
            problems.append(f"unexpected tensors {sorted(extra)}")
        if engine.num_optimization_profiles != len(self.spec.profiles):
            problems.append(f"{engine.num_optimization_profiles} profiles, spec has {len(self.spec.profiles)}")
        if problems:
            raise EngineMismatchError(f"engine {self.name} does not match this vvtrt's spec ({'; '.join(problems)}); "
                                      f"rebuild it: `{self._rebuild()}`")

    # -- contexts ---------------------------------------------------------------------------------
    def prepare(self, shapes=None) -> None:
        """Create contexts now, outside any capture: with `shapes` (axis-size mappings, e.g. `[{"batch": 2,
        "kv_len": 256}]`) one dedicated context per shape, to be warmed up and captured; without, the eager
        context of every profile."""
        if not self.active:
            raise InputError(f"{self.name}: activate() the runner before prepare()")
        if shapes is None:
            for idx in range(len(self.spec.profiles)):
                self.pool.prepare(profile=idx)
            return
        for dims in shapes:
            dims = {**self.spec.default_dims, **dims}  # the axis sizes `infer` will see for these shapes
            self.pool.prepare(key=shape_key(select_profile(self.spec, dims), dims))

    def _new_context(self, idx: int) -> _Context:
        if torch.cuda.is_current_stream_capturing():
            raise TrtExecutionError(f"{self.name}: a new execution context (profile {idx}) was needed inside a "
                                    f"CUDA-graph capture; run infer() once with these shapes before capturing, or "
                                    f"prepare() them")
        with torch.cuda.device(self.device):
            self.logger.clear()
            ctx, rt_config = self.tm.create_context(self.engine, self.cache)
            if ctx is None:
                raise TrtExecutionError(f"{self.name}: could not create an execution context (out of GPU memory?): "
                                        f"{'; '.join(self.logger.errors) or 'no detail logged'}")
            stream = self._streams()[0]
            if not ctx.set_optimization_profile_async(idx, stream.cuda_stream):
                raise TrtExecutionError(f"{self.name}: could not select profile {idx}: {'; '.join(self.logger.errors)}")
            stream.synchronize()  # the profile switch must land before any later stream uses this context
        return _Context(ctx, rt_config)

    def _streams(self) -> tuple[torch.cuda.Stream, torch.cuda.Stream | None]:
        """`(stream to enqueue on, caller stream to order against or None)`: never a default stream."""
        caller = torch.cuda.current_stream(self.device)
        if caller.cuda_stream in DEFAULT_STREAM_HANDLES:
            return self._own_stream, caller
        return caller, None

    # -- inference --------------------------------------------------------------------------------
    def _bind(self, ctx, name: str, x: torch.Tensor, what: str) -> None:
        if x.device != self.device:
            raise InputError(f"{self.name}.{name}: {what} is on {x.device}, the engine runs on {self.device}")
        if not x.is_contiguous():
            raise InputError(f"{self.name}.{name}: {what} must be contiguous (TensorRT reads dense row-major "
                             f"buffers); pass x.contiguous()")
        if not ctx.set_tensor_address(name, x.data_ptr()):
            raise TrtExecutionError(f"{self.name}: set_tensor_address({name!r}) failed: "
                                    f"{'; '.join(self.logger.errors) or 'no detail logged'}")

    def _check_out(self, ctx, out: Mapping[str, torch.Tensor]) -> None:
        for t in self.spec.outputs:
            if t.name not in out:
                raise InputError(f"{self.name}: out has no tensor {t.name!r}")
            y, want = out[t.name], tuple(ctx.get_tensor_shape(t.name))
            if tuple(y.shape) != want or y.dtype != t.torch_dtype(self.precision):
                raise InputError(f"{self.name}.{t.name}: out tensor is {tuple(y.shape)} {y.dtype}, engine writes "
                                 f"{want} {t.torch_dtype(self.precision)}")

    def infer(self, feed: Mapping[str, torch.Tensor],
              out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Enqueue one inference (see the module docstring for streams and contexts). With `out`, writes into
        it and allocates nothing."""
        if not self.active:
            raise InputError(f"{self.name}: activate() the runner before infer()")
        dims = self.check_feed(feed)
        out = self.alloc_outputs(dims) if out is None else out
        tensors = [feed[t.name] for t in self.spec.inputs] + [out[t.name] for t in self.spec.outputs
                                                               if t.name in out]
        slot = self.pool.get(shape_key(select_profile(self.spec, dims), dims), tuple(x.data_ptr() for x in tensors),
                             torch.cuda.is_current_stream_capturing())
        ctx = slot.ctx
        self.logger.clear()
        for t in self.spec.inputs:
            x = feed[t.name]
            if not ctx.set_input_shape(t.name, tuple(x.shape)):
                raise InputError(f"{self.name}.{t.name}: engine rejected shape {tuple(x.shape)}: "
                                 f"{'; '.join(self.logger.errors) or 'outside the profile?'}")
            self._bind(ctx, t.name, x, "input")
        self._check_out(ctx, out)
        for t in self.spec.outputs:
            self._bind(ctx, t.name, out[t.name], "output")
        self._enqueue(ctx, tensors)
        return out if isinstance(out, dict) else dict(out)

    def _enqueue(self, ctx, tensors: list[torch.Tensor]) -> None:
        stream, caller = self._streams()
        if torch.cuda.is_current_stream_capturing() and hasattr(ctx, "is_stream_capturable") \
                and not ctx.is_stream_capturable(stream.cuda_stream):
            raise TrtExecutionError(f"{self.name}: this TensorRT-RTX context cannot be stream-captured; run it "
                                    f"outside the CUDA graph")
        if caller is not None:  # the caller is on a default stream: run on ours, ordered both ways by events
            stream.wait_stream(caller)
            for x in tensors:
                x.record_stream(stream)  # the caching allocator must not hand these out before our work ends
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise TrtExecutionError(f"{self.name}: execute_async_v3 failed: "
                                    f"{'; '.join(self.logger.errors) or 'no detail logged'}")
        if caller is not None:
            caller.wait_stream(stream)
