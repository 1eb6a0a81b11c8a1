"""ONNX Runtime backend of the runner contract (`vvtrt.runtime.runner`).

CPU: the CPU execution provider (fp32 and fp16; it has no bf16 kernels for these graphs, so bf16 on the CPU
raises `BackendUnavailableError` at `activate()` -- use `vvtrt.parity.reference_eval` there).

CUDA: the CUDA execution provider (needs `pip install onnxruntime-gpu`). Every input and every output is
bound with IOBinding straight to a torch tensor's memory -- no copies, no host round trip:

    binding.bind_input(name, "cuda", device_id, element_type, shape, tensor.data_ptr())

`element_type` is an ONNX `TensorProto` element-type *integer* (FLOAT=1, FLOAT16=10, BFLOAT16=16,
INT64=7). ORT's Python `IOBinding.bind_input/bind_output` document "either numpy type or an integer for onnx
type (like onnx.TensorProto.BFLOAT16)"; the pybind overload taking `int32_t element_type` maps it with
`OnnxTypeToOnnxRuntimeTensorType` (onnxruntime/python/onnxruntime_pybind_iobinding.cc). That is how bf16 is
bound although numpy has no bf16. The same call is used on the CPU, where the unit tests prove it.

Streams: the session is created with the CUDA EP options `user_compute_stream=str(stream.cuda_stream)` and
`do_copy_in_default_stream=1` (copies on that same compute stream). Runs keep ORT's end-of-run stream
synchronisation: with `disable_synchronize_execution_providers=1` ORT 1.31 frees pinned staging buffers
from a CUDA host callback, `cudaFreeHost` fails there with CUDA error 800 and the process aborts (seen on
the H200 in every multi-session run), so each `infer` blocks until its work is done. ORT treats a
stream handle of 0 as "no user stream" (`has_user_compute_stream = user_compute_stream != nullptr` in
cuda_execution_provider_info.cc; ORT PR #19229/#19636 discussion), and torch's default stream *is* handle 0,
so when the current torch stream is the default one the runner makes a private torch stream and orders it
against the caller's stream with events (`wait_stream`); it does the same whenever `infer` is called on a
stream other than the session's. The host does block at the end of each run (measured on the H100: a run
queued behind 1 s of GPU work returns after it); that per-call sync is part of the `onnxruntime` bench
variant's cost (ORT CUDA-graph replays go through the same `Run`; presumably the same sync, not
measured separately). `use_tf32=0` is the default so fp32
parity is fp32 (override with `provider_options`).

`cuda_graph=True` turns on ORT's own CUDA graphs (`enable_cuda_graph=1`). ORT replays the addresses it
captured, so each distinct shape (`dims`) gets a slot: persistent torch buffers bound once to one IOBinding
and its own `gpu_graph_id` run option (1, 2, ...). `infer` copies the feed into the slot's input buffers,
replays, and copies the slot's outputs into `out` (or returns clones). ORT's constraints: every compute node
on the CUDA EP (no Memcpy to/from host; CPU shape-only nodes are tolerated), no control flow (If/Loop/Scan),
tensor I/O only, fixed shapes per graph id, IOBinding required, replay from the thread that captured (the
graph lives in the EP's per-thread context), and the capture stream must not be the legacy default stream.
The first `infer` of a slot does ORT's warm-up run(s) (counted per graph id) and the capture inside one
`Run` call; later calls replay. Each slot holds its buffers and graph until `deactivate()`, so keep the set
of shapes small (one per bucket): only shapes whose axes have the spec's `default_dims` sizes get a slot
(lm_decode: decode steps, `seq` = 1); others (the prefill's prompt chunks, a new shape each) run un-graphed on
the same session with the run option `gpu_graph_id` = -1, ORT's "skip CUDA graph for this run" annotation
(`kCudaGraphAnnotationSkip` in onnxruntime/core/providers/cuda/cuda_graph.h).

Weights: the LLM is one graph (lm_decode serves the prompt prefill too), so one session holds the one copy of
its weights; no graph shares weights with another.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from vvtrt.errors import BackendUnavailableError, InputError, VvtrtError, WorkdirError
from vvtrt.precision import Precision
from vvtrt.runtime.runner import RunnerBase
from vvtrt.spec import ComponentSpec

log = logging.getLogger(__name__)

# torch dtype -> ONNX TensorProto element type (integers, so bf16 needs no numpy dtype)
ONNX_ELEM = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16, torch.int64: 7, torch.int32: 6,
             torch.bool: 9, torch.uint8: 2, torch.int8: 3}
INSTALL_HINT = "pip install onnxruntime-gpu (and uninstall the CPU-only onnxruntime package)"


_RETIRED_CUDA_SESSIONS: list = []  # see OrtRunner.deactivate


def cuda_sessions_used() -> bool:
    """True once any CUDA-provider session was created in this process."""
    return _CUDA_USED[0]


_CUDA_USED = [False]


class OrtRunError(VvtrtError):
    """ONNX Runtime failed while running a session (bad shapes for the graph, kernel failure...)."""


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailableError(f"onnxruntime is not installed ({exc}): pip install onnxruntime") from None
    return ort


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(_import_ort().get_available_providers())


class OrtRunner(RunnerBase):
    """One exported ONNX component run by ONNX Runtime, torch tensors in and out (see module docstring)."""

    backend = "onnxruntime"

    def __init__(self, spec: ComponentSpec, precision: Precision, device, onnx_path,
                 cuda_graph: bool = False, provider_options: Mapping[str, object] | None = None,
                 optimized_model_path=None, session_config: Mapping[str, str] | None = None):
        super().__init__(spec, Precision.parse(precision), device)
        if self.device.type not in ("cpu", "cuda"):
            raise InputError(f"onnxruntime runner: device {self.device} is not supported (use cpu or cuda)")
        if cuda_graph and self.device.type != "cuda":
            raise InputError("cuda_graph=True needs a CUDA device")
        self.onnx_path = Path(onnx_path)
        self.cuda_graph = bool(cuda_graph)
        self.provider_options = {k: str(v) for k, v in (provider_options or {}).items()}
        self.optimized_model_path = optimized_model_path  # debugging only: where ORT writes its optimized graph
        self.session_config = dict(session_config or {})  # extra `SessionOptions.add_session_config_entry` pairs
        self.session = None
        self._stream: torch.cuda.Stream | None = None
        self._run_options = None
        self._ungraphed_options = None  # run options of an un-graphed run on a CUDA-graph session
        self._inputs: list[str] = []
        self._slots: dict[tuple, dict] = {}

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def device_id(self) -> int:
        if self.device.type != "cuda":
            return 0
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def activate(self) -> None:
        """Create the InferenceSession (once); raises BackendUnavailableError if it cannot run here."""
        if self.session is not None:
            return
        ort = _import_ort()
        if not self.onnx_path.is_file():
            raise WorkdirError(f"{self.onnx_path} does not exist: run `vvtrt export` first")
        if self.device.type == "cpu" and self.precision is Precision.BF16:
            raise BackendUnavailableError(
                f"{self.spec.name}: onnxruntime's CPU execution provider has no bf16 kernels for these graphs; "
                "run bf16 on CUDA (onnxruntime-gpu) or check it with vvtrt.parity.reference_eval on the CPU")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 2  # warning
        if self.optimized_model_path:
            so.optimized_model_filepath = str(self.optimized_model_path)
        for key, value in self.session_config.items():
            so.add_session_config_entry(key, str(value))
        run_options = ort.RunOptions()
        run_options.log_severity_level = 2
        if self.device.type == "cuda":
            providers = [("CUDAExecutionProvider", self._cuda_options(ort)), "CPUExecutionProvider"]
        else:
            providers = [("CPUExecutionProvider", dict(self.provider_options))]
        try:
            if self.device.type == "cuda":
                _CUDA_USED[0] = True
            session = ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception classes (Fail, NotImplemented...)
            hint = (" (ORT CUDA graphs need every compute node on the CUDA EP and no control flow; "
                    "use cuda_graph=False for this component)") if self.cuda_graph and "graph" in str(exc) else ""
            raise BackendUnavailableError(
                f"onnxruntime cannot load {self.onnx_path.name} on {self.device}: {exc}{hint}") from exc
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise BackendUnavailableError(f"onnxruntime fell back to {session.get_providers()}: "
                                          f"the CUDA execution provider failed to load; {INSTALL_HINT}")
        self._check_io(session)
        self.session, self._run_options = session, run_options
        if self.cuda_graph:
            self._ungraphed_options = ort.RunOptions()
            self._ungraphed_options.log_severity_level = 2
            self._ungraphed_options.add_run_config_entry("gpu_graph_id", "-1")
        log.info("onnxruntime session %s on %s (%s%s)", self.onnx_path.name, self.device,
                 ",".join(session.get_providers()), ", cuda graph" if self.cuda_graph else "")
        super().activate()

    def _cuda_options(self, ort) -> dict[str, str]:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                                          f"(providers: {ort.get_available_providers()}): {INSTALL_HINT}")
        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device: the onnxruntime CUDA runner needs one")
        with torch.cuda.device(self.device_id):
            stream = torch.cuda.current_stream()
            if stream.cuda_stream == 0:  # ORT ignores a 0 handle and makes its own stream
                stream = torch.cuda.Stream()
                log.debug("%s: private CUDA stream %#x for onnxruntime", self.spec.name, stream.cuda_stream)
        self._stream = stream
        # kSameAsRequested: the arena grows by what is asked, not to the next power of two; sessions are
        # kept alive (see deactivate), and doubling arenas ran a 1.5B fp32+bf16 parity run out of 80 GB.
        opts = {"device_id": str(self.device_id), "user_compute_stream": str(stream.cuda_stream),
                "do_copy_in_default_stream": "1", "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested"}
        if self.cuda_graph:
            opts["enable_cuda_graph"] = "1"
        opts.update(self.provider_options)
        return opts

    def _check_io(self, session) -> None:
        names_in = [i.name for i in session.get_inputs()]
        names_out = {o.name for o in session.get_outputs()}
        missing = [t.name for t in self.spec.outputs if t.name not in names_out]
        unknown = [n for n in names_in if n not in {t.name for t in self.spec.inputs}]
        if missing or unknown:
            raise WorkdirError(f"{self.onnx_path.name} does not match the {self.spec.name} spec (missing outputs "
                               f"{missing}, unknown inputs {unknown}): re-run `vvtrt export --force`")
        unused = [t.name for t in self.spec.inputs if t.name not in names_in]
        if unused:
            log.debug("%s: inputs %s are not graph inputs (unused by the graph); not bound", self.spec.name, unused)
        self._inputs = [t.name for t in self.spec.inputs if t.name in names_in]

    def deactivate(self) -> None:
        """Drop the session, the CUDA graphs and their buffers (after the runner's stream is idle).

        Workaround: destroying a CUDA-provider session can abort the process in `cudaFreeHost` (CUDA
        error 800, microsoft/onnxruntime#15174; seen on the H200 with ORT 1.31). CUDA sessions are
        therefore kept alive until the process ends, and the CLI exits without running static
        destructors after ORT-CUDA use (`vvtrt.cli.main`).
        """
        if self._stream is not None:
            self._stream.synchronize()
        if self.session is not None and self.device.type == "cuda":
            _RETIRED_CUDA_SESSIONS.append((self.session, self._slots.copy()))
        self._slots.clear()
        self.session, self._run_options, self._ungraphed_options, self._stream = None, None, None, None
        super().deactivate()

    # -- inference --------------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, torch.Tensor],
              out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run once. Tensors must be on the runner's device in the spec's dtypes (InputError otherwise)."""
        dims = self.check_feed(feed)
        for t in self.spec.inputs:
            if not _same_device(feed[t.name].device, self.device):
                raise InputError(f"{self.spec.name}.{t.name}: tensor on {feed[t.name].device}, runner on {self.device}")
        if out is not None:
            self._check_out(out, dims)
        self.activate()
        if self.cuda_graph and self.graphed(dims):
            return self._infer_graph(feed, out, dims)
        return self._infer_direct(feed, out, dims)

    def graphed(self, dims: Mapping[str, int]) -> bool:
        """Whether a call of these axis sizes replays a CUDA graph (cuda_graph=True and the spec's default
        sizes; see the module docstring)."""
        return all(dims.get(a, n) == n for a, n in self.spec.default_dims.items())

    def _check_out(self, out: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> None:
        for t in self.spec.outputs:
            if t.name not in out:
                raise InputError(f"{self.spec.name}: out lacks {t.name!r}")
            o, shape, dtype = out[t.name], t.resolve(dims), t.torch_dtype(self.precision)
            if tuple(o.shape) != shape or o.dtype != dtype or not _same_device(o.device, self.device):
                raise InputError(f"{self.spec.name}: out[{t.name!r}] is {tuple(o.shape)} {o.dtype} on {o.device}, "
                                 f"needs {shape} {dtype} on {self.device}")

    def _bind(self, binding, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None:
        dev, idx = self.device.type, self.device_id
        for name in self._inputs:
            x = inputs[name]
            binding.bind_input(name, dev, idx, ONNX_ELEM[x.dtype], list(x.shape), x.data_ptr())
        for name, y in outputs.items():
            binding.bind_output(name, dev, idx, ONNX_ELEM[y.dtype], list(y.shape), y.data_ptr())

    def _run(self, binding, run_options) -> None:
        caller = torch.cuda.current_stream(self.device) if self._stream is not None else None
        if caller is not None and caller != self._stream:
            self._stream.wait_stream(caller)  # the feeds were written on the caller's stream
        try:
            self.session.run_with_iobinding(binding, run_options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise OrtRunError(f"onnxruntime failed running {self.spec.name} ({self.precision.value}): {exc}") from exc
        if caller is not None and caller != self._stream:
            caller.wait_stream(self._stream)  # results are ready for the caller's stream, host not blocked

    def _infer_direct(self, feed, out, dims) -> dict[str, torch.Tensor]:
        inputs = {n: feed[n].contiguous() for n in self._inputs}
        results = dict(out) if out is not None else self.alloc_outputs(dims)
        targets = {n: (y if y.is_contiguous() else torch.empty_like(y, memory_format=torch.contiguous_format))
                   for n, y in results.items() if n in {t.name for t in self.spec.outputs}}
        if self._stream is not None and torch.cuda.current_stream(self.device) != self._stream:
            for x in (*inputs.values(), *targets.values()):
                x.record_stream(self._stream)  # keep the caching allocator from reusing them too early
        binding = self.session.io_binding()
        self._bind(binding, inputs, targets)
        self._run(binding, self._ungraphed_options or self._run_options)
        for n, y in targets.items():
            if y.data_ptr() != results[n].data_ptr():
                results[n].copy_(y)
        return results

    def _infer_graph(self, feed, out, dims) -> dict[str, torch.Tensor]:
        slot = self._slot(dims)
        for n in self._inputs:
            slot["inputs"][n].copy_(feed[n])
        self._run(slot["binding"], slot["run_options"])
        if out is not None:
            for t in self.spec.outputs:
                out[t.name].copy_(slot["outputs"][t.name])
            return dict(out)
        return {n: y.clone() for n, y in slot["outputs"].items()}

    def _slot(self, dims: Mapping[str, int]) -> dict:
        """The persistent buffers, IOBinding and graph id of one shape (created on first use)."""
        key = tuple(sorted(dims.items()))
        slot = self._slots.get(key)
        if slot is None:
            ort = _import_ort()
            inputs = {t.name: torch.zeros(t.resolve(dims), dtype=t.torch_dtype(self.precision), device=self.device)
                      for t in self.spec.inputs if t.name in self._inputs}
            outputs = self.alloc_outputs(dims)
            binding = self.session.io_binding()
            self._bind(binding, inputs, outputs)
            run_options = ort.RunOptions()
            run_options.log_severity_level = 2
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._slots) + 1))
            slot = {"inputs": inputs, "outputs": outputs, "binding": binding, "run_options": run_options}
            self._slots[key] = slot
            log.info("%s: CUDA graph %d for %s", self.spec.name, len(self._slots), dict(dims))
        return slot


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index is None or b.index is None:
        return True
    return a.index == b.index
