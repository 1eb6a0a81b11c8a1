"""`TrtRunner`: one TensorRT / TensorRT-RTX engine behind the common runner contract (`vvtrt.runtime.runner`).

Lifecycle, after NVIDIA's demo/Diffusion engine wrapper:

- `activate()` checks the manifest entry against the running TensorRT and GPU (`check_engine`), the engine file
  against its recorded size and sha256 (`check_engine_file`), the header against TensorRT-RTX's
  `get_engine_validity`, then deserializes it and checks its I/O names, dtypes and profile count against the spec.
  Every mismatch is an `EngineMismatchError` naming the rebuild command; nothing here crashes on a bad file.
- `infer(feed, out=None)` picks the optimization profile that admits the feed's axis sizes (`select_profile`),
  uses one execution context per profile (created on first use, its profile selected with
  `set_optimization_profile_async` on the current torch CUDA stream), sets input shapes and the addresses of the
  torch tensors, and enqueues `execute_async_v3` on `torch.cuda.current_stream()`. It does not synchronise.

CUDA graphs are the caller's: run `infer(feed, out)` eagerly once for every profile and shape that will be
captured, then wrap the same call in `torch.cuda.graph(...)`. With `out` given, `infer` allocates nothing (it only
sets shapes and addresses, host-side, and enqueues the engine), so it is safe on the graph path; without `out` it
allocates the outputs and must stay off it. Creating a context for a new profile during capture is refused.
TensorRT-RTX engines may additionally need building with user allocation to be stream-capturable; when the
context reports it cannot be captured (`is_stream_capturable`), `infer` raises instead of corrupting the capture.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from vvtrt.engines.manifest import (RuntimeInfo, check_engine, check_engine_file, entry_key, find_engine,
                                    rebuild_command)
from vvtrt.errors import BackendUnavailableError, EngineMismatchError, InputError
from vvtrt.precision import Precision
from vvtrt.runtime.runner import RunnerBase
from vvtrt.spec import ComponentSpec

log = logging.getLogger(__name__)


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
        self.tm = self.logger = self.runtime = self.engine = None
        self.contexts: dict[int, object] = {}

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
        check_engine_file(self.engine_path, self.entry, self.verify_sha, self.workdir, tm.flavor)
        with torch.cuda.device(self.device):
            self.logger = tm.logger()
            self.runtime = tm.trt.Runtime(self.logger)
            if self.runtime is None:
                raise TrtExecutionError(f"{tm.flavor} could not create a runtime: {'; '.join(self.logger.errors)}")
            self.engine = deserialize_engine(tm, self.runtime, self.logger, self.engine_path.read_bytes(),
                                             self.name, self._rebuild())
        self._check_io()
        log.info("loaded %s (%s %s) from %s", self.name, tm.flavor, tm.version, self.engine_path)
        super().activate()

    def deactivate(self) -> None:
        self.contexts.clear()  # contexts before their engine, engine before its runtime
        self.engine = None
        self.runtime = None
        super().deactivate()

    def _check_io(self) -> None:
        e, tm = self.engine, self.tm
        io = {}
        for i in range(e.num_io_tensors):
            n = e.get_tensor_name(i)
            io[n] = (e.get_tensor_mode(n), tm.torch_dtype(e.get_tensor_dtype(n)))
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
        if e.num_optimization_profiles != len(self.spec.profiles):
            problems.append(f"{e.num_optimization_profiles} profiles, spec has {len(self.spec.profiles)}")
        if problems:
            raise EngineMismatchError(f"engine {self.name} does not match this vvtrt's spec ({'; '.join(problems)}); "
                                      f"rebuild it: `{self._rebuild()}`")

    def prepare(self, profiles=None) -> None:
        """Create the execution contexts for `profiles` (default: all) now, e.g. before a CUDA-graph capture."""
        for idx in (range(len(self.spec.profiles)) if profiles is None else profiles):
            self._context(idx)

    def _context(self, idx: int):
        ctx = self.contexts.get(idx)
        if ctx is not None:
            return ctx
        if torch.cuda.is_current_stream_capturing():
            raise TrtExecutionError(f"{self.name}: profile {idx} was first used inside a CUDA-graph capture; run "
                                    f"infer() eagerly once (or prepare()) before capturing")
        with torch.cuda.device(self.device):
            self.logger.clear()
            ctx = self.engine.create_execution_context()
            if ctx is None:
                raise TrtExecutionError(f"{self.name}: could not create an execution context (out of GPU memory?): "
                                        f"{'; '.join(self.logger.errors) or 'no detail logged'}")
            stream = torch.cuda.current_stream(self.device)
            if not ctx.set_optimization_profile_async(idx, stream.cuda_stream):
                raise TrtExecutionError(f"{self.name}: could not select profile {idx}: {'; '.join(self.logger.errors)}")
            stream.synchronize()  # the profile switch must land before any later stream uses this context
        self.contexts[idx] = ctx
        return ctx

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

    def infer(self, feed: Mapping[str, torch.Tensor],
              out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Enqueue one inference on the current CUDA stream. With `out`, writes into it and allocates nothing."""
        if not self.active:
            raise InputError(f"{self.name}: activate() the runner before infer()")
        dims = self.check_feed(feed)
        ctx = self._context(select_profile(self.spec, dims))
        self.logger.clear()
        for t in self.spec.inputs:
            x = feed[t.name]
            if not ctx.set_input_shape(t.name, tuple(x.shape)):
                raise InputError(f"{self.name}.{t.name}: engine rejected shape {tuple(x.shape)}: "
                                 f"{'; '.join(self.logger.errors) or 'outside the profile?'}")
            self._bind(ctx, t.name, x, "input")
        if out is None:
            out = self.alloc_outputs(dims)
        for t in self.spec.outputs:
            if t.name not in out:
                raise InputError(f"{self.name}: out has no tensor {t.name!r}")
            y, want = out[t.name], tuple(ctx.get_tensor_shape(t.name))
            if tuple(y.shape) != want or y.dtype != t.torch_dtype(self.precision):
                raise InputError(f"{self.name}.{t.name}: out tensor is {tuple(y.shape)} {y.dtype}, engine writes "
                                 f"{want} {t.torch_dtype(self.precision)}")
            self._bind(ctx, t.name, y, "output")
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if (torch.cuda.is_current_stream_capturing() and hasattr(ctx, "is_stream_capturable")
                and not ctx.is_stream_capturable(stream)):
            raise TrtExecutionError(f"{self.name}: this TensorRT-RTX context cannot be stream-captured; run it "
                                    f"outside the CUDA graph")
        if not ctx.execute_async_v3(stream):
            raise TrtExecutionError(f"{self.name}: execute_async_v3 failed: "
                                    f"{'; '.join(self.logger.errors) or 'no detail logged'}")
        return out if isinstance(out, dict) else dict(out)
