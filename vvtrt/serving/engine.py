"""The long-form serving engine: the serving core (`vvtrt.serving.core`) driving a `LongformStepper`.

    engine = Engine.from_workdir("work", backend="torch", device="cuda", max_streams=64)
    engine.start()
    handle = engine.submit(SpeechRequest(script="Speaker 1: Hello.", seed=3))

One thread (the engine thread) makes every device call. Requests wait in a bounded admission queue, take
free slots of one `FrameLoop` at frame boundaries, have their prompts prefilled in chunks between frame
steps (within a per-step token budget) and leave on eos, their frame limit or cancellation.

With `compile`, the per-frame torch runners are `torch.compile`d over a bounded set of shapes
(`compile_shapes`: "dynamic-batch" marks the batch axis dynamic, one graph for every batch bucket of at least
2 streams and one for a single stream; "dynamic" also the KV length; "static" compiles every bucket), and
every bucket is compiled (and captured, on CUDA) before the engine takes requests. The compiled code is
cached in `<work dir>/compile-cache`, so a second start loads it; `startup` says how long the start took and
whether the cache served it.
"""
from __future__ import annotations

import logging
import time

from vvtrt.errors import InputError
from vvtrt.serving.config import EngineConfig
from vvtrt.serving.core import CoreLimits, EngineCore
from vvtrt.serving.longform import LongformStepper

log = logging.getLogger(__name__)
COMPILE_SHAPES = {"dynamic-batch": ("batch",), "dynamic": ("batch", "kv_len"), "static": ()}


class Engine(EngineCore):
    """`EngineAPI` over a loaded `Synthesizer` (its runners, tokenizer and prefill). Only the constructor
    differs from `EngineCore`: it builds the long-form stepper and the core's limits from `config`."""

    def __init__(self, synth, config: EngineConfig = EngineConfig()):
        self.synth = synth
        self.config = config
        self.startup: dict = {"load_s": None, "build_s": None, "total_s": None, "compile": None}
        self._cache_probe = None
        budget = config.prefill_budget_tokens or synth.options.prefill_chunk
        super().__init__(LongformStepper(synth, config), CoreLimits(
            max_queue=config.max_queue, buffer_chunks=config.buffer_chunks, stall_timeout_s=config.stall_timeout_s,
            prefill_budget=budget, max_step_failures=config.max_step_failures))

    @property
    def plan(self):
        """The KV pool plan (slots, KV length, buckets), once started."""
        return self.stepper.plan

    def start(self) -> None:
        """`EngineCore.start`, timed: `startup["build_s"]` is sizing, compiling and capturing."""
        t0 = time.perf_counter()
        super().start()
        s = self.startup
        s["build_s"] = round(time.perf_counter() - t0, 3)
        s["total_s"] = round((s["load_s"] or 0.0) + s["build_s"], 3)
        s["capture_s"] = round(self.stepper.loop.capture_seconds, 3)
        if self._cache_probe is not None:
            s["compile"]["cache"] = self._cache_probe.result().as_dict()
        log.info("engine start-up: %.1f s (load %.1f s, build %.1f s)%s", s["total_s"], s["load_s"] or 0.0,
                 s["build_s"], describe_cache(s["compile"]))

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, fallback=None,
                     models=None, compile: bool | str = False, compile_shapes: str = "dynamic-batch",
                     compile_components: tuple[str, ...] | None = None, **config) -> "Engine":
        t0 = time.perf_counter()
        from vvtrt.runtime.synthesizer import Synthesizer

        if compile_shapes not in COMPILE_SHAPES:
            raise InputError(f"compile_shapes must be one of {', '.join(COMPILE_SHAPES)}, got {compile_shapes!r}")
        cfg = EngineConfig(**config)
        probe = _compile_cache(path) if compile else None
        synth = Synthesizer.from_workdir(path, backend=backend, device=device, precision=precision,
                                         fallback=fallback, models=models, compile=compile,
                                         cuda_graph=cfg.cuda_graph, dynamic_axes=COMPILE_SHAPES[compile_shapes],
                                         compile_components=compile_components)
        engine = cls(synth, cfg)
        engine.startup["load_s"] = round(time.perf_counter() - t0, 3)
        if probe is not None:
            engine._cache_probe = probe
            engine.startup["compile"] = {"mode": compile if isinstance(compile, str) else "default",
                                         "shapes": compile_shapes}
        return engine


def _compile_cache(path):
    from vvtrt.runtime.compile_cache import CacheProbe, use_work_dir_cache
    from vvtrt.workdir import Workdir

    return CacheProbe(use_work_dir_cache(Workdir.open(path).root))


def describe_cache(compile_info: dict | None) -> str:
    """"; compile cache hit (12 hits, 0 misses)" or "" without compiling."""
    cache = (compile_info or {}).get("cache")
    if not cache:
        return ""
    hits, misses = cache["fx_graph_hits"] + cache["aot_hits"], cache["fx_graph_misses"] + cache["aot_misses"]
    return (f"; {cache.get('graphs', 0)} graphs compiled, compile cache {cache['state']} ({hits} hits, {misses} "
            f"misses) in {cache['dir']}")
