"""The long-form serving engine: the serving core (`vvtrt.serving.core`) driving a `LongformStepper`.

    engine = Engine.from_workdir("work", backend="torch", device="cuda", max_streams=64)
    engine.start()
    handle = engine.submit(SpeechRequest(script="Speaker 1: Hello.", seed=3))

One thread (the engine thread) makes every device call. Requests wait in a bounded admission queue, take
free slots of one `FrameLoop` at frame boundaries, have their prompts prefilled in chunks between frame
steps (within a per-step token budget) and leave on eos, their frame limit or cancellation.
"""
from __future__ import annotations

from vvtrt.serving.config import EngineConfig
from vvtrt.serving.core import CoreLimits, EngineCore
from vvtrt.serving.longform import LongformStepper


class Engine(EngineCore):
    """`EngineAPI` over a loaded `Synthesizer` (its runners, tokenizer and prefill). Only the constructor
    differs from `EngineCore`: it builds the long-form stepper and the core's limits from `config`."""

    def __init__(self, synth, config: EngineConfig = EngineConfig()):
        self.synth = synth
        self.config = config
        budget = config.prefill_budget_tokens or synth.options.prefill_chunk
        super().__init__(LongformStepper(synth, config), CoreLimits(
            max_queue=config.max_queue, buffer_chunks=config.buffer_chunks, stall_timeout_s=config.stall_timeout_s,
            prefill_budget=budget, max_step_failures=config.max_step_failures))

    @property
    def plan(self):
        """The KV pool plan (slots, KV length, buckets), once started."""
        return self.stepper.plan

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, fallback=None,
                     models=None, compile: bool | str = False, **config) -> "Engine":
        from vvtrt.runtime.synthesizer import Synthesizer

        cfg = EngineConfig(**config)
        synth = Synthesizer.from_workdir(path, backend=backend, device=device, precision=precision,
                                         fallback=fallback, models=models, compile=compile,
                                         cuda_graph=cfg.cuda_graph)
        return cls(synth, cfg)
