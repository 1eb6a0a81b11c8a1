"""`RealtimeRunner`: the Python API of the Realtime runtime.

    rt = RealtimeRunner.from_preset("tiny-realtime")            # or "realtime-0.5b", or a checkpoint dir
    rt = RealtimeRunner.from_workdir("W", "onnxruntime", "cpu", "fp32")   # a Realtime work dir's graphs
    for chunk in rt.stream("Hello there.", voice, seed=0):      # float32 [3200] chunks, 24 kHz
        ...
    async for chunk in rt.astream(llm_pieces(), voice): ...     # text may arrive while speech is produced
    for ev in rt.stream_many(requests): ...                     # many streams in one batched loop

Components run through torch runners (`vvtrt.runtime.runner.TorchRunner`, optionally `torch.compile`d)
of the Realtime component specs, or any backend's runners of a work dir (`from_workdir`,
`vvtrt.realtime.backends.load_realtime_runners`); the windowed loop is `RealtimeLoop` (CUDA graphs on a GPU) driven by
`RealtimeStepper`. Loops are kept per (streams, K, solver, capacity) and reused; a loop serves one call
at a time.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vvtrt.errors import InputError
from vvtrt.precision import Precision
from vvtrt.realtime.reference import LoopOptions, NoiseSource
from vvtrt.realtime.stepper import RealtimeStepper, StreamEvent
from vvtrt.realtime.streams import StreamRequest
from vvtrt.realtime.voices import VoicePreset, read_voice
from vvtrt.realtime.window_loop import RealtimeLoop

from vvtrt.realtime.backends import LOOP_PARTS, SAMPLER_SPEC  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


def load_realtime(source, device="cpu", dtype="fp32", seed: int = 0, tokenizer=None):
    """`(model, tokenizer)` of a preset name (random weights, initialised on the CPU in fp32 so they equal
    the reference's, then moved) or an original Realtime checkpoint directory (its tokenizer: the
    directory given as `tokenizer`, else the checkpoint's own files)."""
    from vvtrt.model.resolve import ModelSource
    from vvtrt.model.text_tokenizer import ByteTokenizer, load_text_tokenizer
    from vvtrt.realtime.presets import build_realtime_model, is_realtime_preset

    prec = Precision.parse(dtype) if not isinstance(dtype, torch.dtype) else _precision_of(dtype)
    if is_realtime_preset(str(source)):
        model = build_realtime_model(str(source), seed=seed).to(device=device, dtype=prec.torch_dtype)
        if tokenizer:
            return model, load_text_tokenizer(ModelSource(preset=str(source), tokenizer=tokenizer))
        return model, ByteTokenizer()
    from vvtrt.realtime.checkpoint import load_realtime_checkpoint

    path = Path(source).expanduser()
    if not path.is_dir():
        raise InputError(f"unknown Realtime model {source!r}: use a preset (realtime-0.5b, tiny-realtime) or an "
                         "original VibeVoice-Realtime checkpoint directory")
    model = load_realtime_checkpoint(path, dtype=prec.torch_dtype, device=device).eval().requires_grad_(False)
    return model, load_text_tokenizer(ModelSource(path=str(path), tokenizer=tokenizer))


def _precision_of(dtype: torch.dtype) -> Precision:
    for p in Precision:
        if p.torch_dtype == dtype:
            return p
    raise InputError(f"unsupported dtype {dtype}: use fp32, fp16 or bf16")


def torch_runners(model, steps: int, solver: str, compile: bool | str = False) -> dict:
    """Activated torch runners of the loop's components for K = `steps` and `solver`."""
    from vvtrt.realtime.specs import RealtimeExportOptions, build_realtime_specs
    from vvtrt.runtime.runner import TorchRunner

    specs = build_realtime_specs(model.rt_config, RealtimeExportOptions.for_config(model.rt_config, steps))
    prec = _precision_of(model.dtype)
    out = {}
    for name in (*LOOP_PARTS, SAMPLER_SPEC[solver]):
        out[name] = TorchRunner(specs[name], prec, model.device, model, steps, compile=compile)
        out[name].activate()
    return out


class RealtimeRunner:
    """Streams of one Realtime model on one device (see module doc)."""

    def __init__(self, model, tokenizer, capacity: int | None = None, graphs: bool = True,
                 compile: bool | str = False, batch_buckets=None, kv_buckets=None, runner_factory=None,
                 cfg=None, dtype=None, device=None, max_streams: int | None = None):
        """`model`: the PyTorch `RealtimeModel` whose torch runners run the loop; or None with
        `runner_factory(steps, solver) -> runners` (keyed like `torch_runners`) and the model's `cfg`,
        `dtype` and `device`. `max_streams`: the most slots a loop may have (exported batch profiles)."""
        self.model, self.tok = model, tokenizer
        if model is None and (runner_factory is None or cfg is None or dtype is None or device is None):
            raise ValueError("RealtimeRunner without a model needs runner_factory, cfg, dtype and device")
        self.cfg = cfg or model.rt_config
        self.dtype = dtype or model.dtype
        self._device = torch.device(device) if device is not None else model.device
        self.runner_factory = runner_factory
        self.max_streams = max_streams
        self.capacity = min(capacity or self.cfg.context, self.cfg.context)
        self.graphs, self.compile = graphs, compile
        self.batch_buckets, self.kv_buckets = batch_buckets, kv_buckets
        self._runners: dict = {}
        self._free: dict = {}
        self._lock = threading.Lock()
        self.last_stop_reason = ""

    @classmethod
    def from_preset(cls, source, device="cpu", dtype="fp32", seed: int = 0, tokenizer=None, **kw) -> "RealtimeRunner":
        """A runner of a preset (random weights from `seed`) or an original checkpoint directory."""
        model, tok = load_realtime(source, device, dtype, seed, tokenizer)
        return cls(model, tok, **kw)

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, dtype=None, compile: bool | str = False,
                     models=None, **kw) -> "RealtimeRunner":
        """A runner of a Realtime work dir on `backend` (torch, onnxruntime, tensorrt) at `dtype` (default
        bf16 on CUDA, fp32 on the CPU) on `device` (default CUDA when available): graph backends need
        current exports of that dtype (a `WorkdirError` / `InputError` says what to run otherwise).
        Other keywords as for the constructor (graph backends default to the exported KV buckets)."""
        from vvtrt.option_checks import check_precisions_exported, resolve_device
        from vvtrt.realtime.backends import load_realtime_runners, realtime_tokenizer, require_realtime
        from vvtrt.runtime.backends import ModelCache
        from vvtrt.runtime.runner import check_backend
        from vvtrt.workdir import Workdir

        check_backend(backend)
        wd = Workdir.open(path)
        require_realtime(wd)
        dev = resolve_device(device)
        prec = Precision.parse(dtype or ("bf16" if dev.type == "cuda" else "fp32"))
        opts = wd.options()
        if backend != "torch":
            check_precisions_exported(wd, [prec])
            wd.verify(precisions=[prec])
            kw.setdefault("kv_buckets", opts.kv_buckets)
            kw.setdefault("max_streams", opts.max_batch // 2)
            kw.setdefault("graphs", backend == "tensorrt")  # ONNX Runtime runs are not torch-capturable
        models = models or ModelCache(wd)
        model = models.get(prec, dev) if backend == "torch" else None

        def factory(steps: int, solver: str) -> dict:
            return load_realtime_runners(wd, backend, prec, dev, steps, solver, compile, models)

        rt = cls(model, realtime_tokenizer(wd.source()), compile=compile, runner_factory=factory, cfg=wd.info(),
                 dtype=prec.torch_dtype, device=dev, **kw)
        rt.backend, rt.precision, rt.workdir = backend, prec, wd
        return rt

    @property
    def device(self) -> torch.device:
        return self._device

    # -- loops ----------------------------------------------------------------------------------------
    def runners(self, steps: int, solver: str) -> dict:
        key = (steps, solver)
        with self._lock:
            if key not in self._runners:
                make = self.runner_factory or (lambda k, s: torch_runners(self.model, k, s, self.compile))
                self._runners[key] = make(steps, solver)
            return self._runners[key]

    def checkout(self, streams: int, steps: int = 5, solver: str = "dpmsolver++",
                 capacity: int | None = None, noise: str = "host") -> RealtimeStepper:
        """A stepper over a loop of `streams` slots for K = `steps` and `solver` with `capacity` cache
        positions per row (default: the runner's), a kept one if free. `noise`: "host" (the reference's
        `torch.Generator(seed)` draws: `stream`, `stream_many`, parity) or "device" (drawn in the step from
        (seed, frame): the serving engine)."""
        LoopOptions(steps=steps, algorithm=solver)  # validates the solver
        if self.max_streams is not None and streams > self.max_streams:
            raise InputError(f"{streams} streams in one loop, but the exported graphs take at most "
                             f"{self.max_streams}: re-export with a larger batch or run fewer streams")
        cap = min(capacity or self.capacity, self.cfg.context)
        key = (streams, steps, solver, cap, noise)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        loop = RealtimeLoop(self.runners(steps, solver), self.cfg, streams, cap, self.dtype,
                            self.device, steps, self.batch_buckets, self.kv_buckets, self.graphs, noise)
        return RealtimeStepper(loop, self.tok)

    def checkin(self, stepper: RealtimeStepper, keep: bool = True) -> None:
        """Give a stepper back (its streams are cancelled): kept for reuse, or dropped (`keep=False`)."""
        for run in [*stepper.runs.values(), *stepper.pending]:
            stepper.cancel(run)
        if not keep:
            return
        loop = stepper.loop
        key = (loop.streams, loop.steps, "sde-dpmsolver++" if loop.stochastic else "dpmsolver++", loop.capacity,
               "device" if loop.device_noise else "host")
        with self._lock:
            self._free.setdefault(key, []).append(stepper)

    def drop_kept(self) -> None:
        """Forget every kept loop (their buffers and graphs are freed once unreferenced)."""
        with self._lock:
            self._free.clear()

    def voice(self, voice) -> VoicePreset:
        """A `VoicePreset`, or the path of a voice file written by `vvtrt voices`."""
        if isinstance(voice, VoicePreset):
            return voice
        if isinstance(voice, (str, Path)):
            return read_voice(voice, self.cfg)
        raise InputError(f"voice must be a VoicePreset or a voice file path, got {type(voice).__name__}")

    def request(self, text, voice, seed: int = 0, cfg_scale: float = 1.5, steps: int = 5,
                solver: str = "dpmsolver++", max_frames: int | None = None, force_eos_frame: int | None = None,
                noise: NoiseSource | None = None, tag=None) -> StreamRequest:
        opts = LoopOptions(cfg_scale=cfg_scale, steps=steps, algorithm=solver, max_frames=max_frames,
                           force_eos_frame=force_eos_frame)
        return StreamRequest(text, self.voice(voice), int(seed), opts, noise, tag)

    # -- one stream -----------------------------------------------------------------------------------
    def stream(self, text, voice, seed: int = 0, cfg_scale: float = 1.5, steps: int = 5,
               solver: str = "dpmsolver++", **kw) -> Iterator[np.ndarray]:
        """Audio chunks (float32 [hop]) of one stream as they are made. `text`: a string, or an iterator
        or async iterator of pieces (speech starts once the first 5 tokens are in). Other keywords:
        `max_frames`, `force_eos_frame`, `noise` (see `request`). `self.last_stop_reason` says why it ended."""
        req = self.request(text, voice, seed, cfg_scale, steps, solver, **kw)
        stepper = self.checkout(1, steps, solver)
        try:
            stepper.open(req)
            while stepper.busy:
                for ev in _tick_or_wait(stepper):
                    yield from _chunk_or_end(self, ev)
        finally:
            self.checkin(stepper)

    async def astream(self, text, voice, seed: int = 0, cfg_scale: float = 1.5, steps: int = 5,
                      solver: str = "dpmsolver++", **kw) -> AsyncIterator[np.ndarray]:
        """`stream` for asyncio: an async iterator of pieces is read on the running loop, the device work
        runs in a worker thread."""
        req = self.request(text, voice, seed, cfg_scale, steps, solver, **kw)
        stepper = await asyncio.to_thread(self.checkout, 1, steps, solver)
        try:
            stepper.open(req, asyncio.get_running_loop())
            while stepper.busy:
                events = await asyncio.to_thread(_tick_or_wait, stepper)
                for ev in events:
                    for chunk in _chunk_or_end(self, ev):
                        yield chunk
        finally:
            self.checkin(stepper)

    # -- many streams ---------------------------------------------------------------------------------
    def stream_many(self, requests: Iterable[StreamRequest], max_streams: int | None = None) -> Iterator[StreamEvent]:
        """Events of many streams run together (at most `max_streams` at once; the rest wait for a slot).
        They must share K and solver; each keeps its own cfg_scale."""
        reqs = list(requests)
        if not reqs:
            return
        o = reqs[0].options
        if any((r.options.steps, r.options.algorithm) != (o.steps, o.algorithm) for r in reqs):
            raise InputError("streams run together must share steps and solver")
        stepper = self.checkout(min(len(reqs), max_streams or len(reqs)), o.steps, o.algorithm)
        try:
            for r in reqs:
                stepper.open(r)
            while stepper.busy:
                yield from _tick_or_wait(stepper)
        finally:
            self.checkin(stepper)

    def synthesize_many(self, requests: Iterable[StreamRequest], max_streams: int | None = None) -> list[dict]:
        """Run streams to their end: per request `{"audio": float32 [n * hop], "stop_reason", "frames",
        "error"}` in the order given."""
        reqs = list(requests)
        chunks: dict[int, list] = {i: [] for i in range(len(reqs))}
        ends: dict[int, StreamEvent] = {}
        index = {id(r): i for i, r in enumerate(reqs)}
        for ev in self.stream_many(reqs, max_streams):
            i = index[id(ev.run.request)]
            if ev.audio is not None:
                chunks[i].append(ev.audio)
            if ev.stop_reason:
                ends[i] = ev
        hop = self.cfg.hop
        return [{"audio": np.concatenate(chunks[i]) if chunks[i] else np.zeros(0, np.float32),
                 "frames": len(chunks[i]), "stop_reason": ends[i].stop_reason if i in ends else "",
                 "error": ends[i].error if i in ends else None, "hop": hop} for i in range(len(reqs))]


def _tick_or_wait(stepper: RealtimeStepper) -> list[StreamEvent]:
    events = stepper.tick()
    if not stepper.last_active and not events and stepper.busy:
        stepper.wait()
    return events


def _chunk_or_end(runner: RealtimeRunner, ev: StreamEvent):
    if ev.error is not None:
        raise ev.error
    if ev.audio is not None:
        yield ev.audio
    if ev.stop_reason:
        runner.last_stop_reason = ev.stop_reason
