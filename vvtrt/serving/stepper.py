"""The contract between the serving core and a model kind: a `Stepper` runs the kind's requests in the
slots of one batched device step; the core (`vvtrt.serving.core`) owns everything else (the engine thread,
admission, handles, flow control, health, drain) and never imports a model kind.

A request's life on the engine thread, as the core drives it:

    work = stepper.prepare(request)        # caller's thread: validate, tokenize, size (InputError/CapacityError)
    slot = stepper.admit(work, tag)        # a free slot is reserved for it (a failure ends this request only)
    stepper.prefill(budget)                # prompt work in chunks, at most `budget` tokens per call
    stepper.hold(tag, True)                # its reader is behind: its row computes nothing until released
    stepper.step()                         # one batched step over every armed, unheld run -> StepEvents
    stepper.release(tag)                   # cancelled or ended: the slot is free again

`StepEvent`s carry the run's tag (the core's handle), a chunk of audio and/or the run's end (a stop reason,
or an error that ends that run alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


@dataclass
class StepEvent:
    tag: Any                       # the handle the core gave `admit`
    index: int = -1                # 0-based frame index of `audio` within its request
    audio: np.ndarray | None = None  # float32 [3200] at 24 kHz
    stop_reason: str = ""          # set when the run ended with this event
    error: BaseException | None = None  # the run failed (its own failure: text, arming, prefill)


class Stepper(Protocol):
    slots: int            # runs the step can hold at once (known after `build`)
    prompt_tokens: int    # prompt or text tokens consumed so far (a statistic)

    def build(self, wake) -> None:
        """Engine thread, once: allocate the slots' buffers, capture graphs. `wake` (a threading.Event):
        set it when outside input (text) arrives, so an engine waiting for input steps at once."""

    def prepare(self, request) -> Any:
        """Caller's thread: a checked, tokenized request (raises InputError / CapacityError)."""

    def admit(self, work, tag) -> int | None:
        """Engine thread: reserve a free slot for `work` and return it, or None where the slot is chosen when
        the run is armed at the next step (the core admits only while `free() > 0`)."""

    def prefill(self, budget: int | None) -> list[StepEvent]:
        """Engine thread: advance admitted runs' prompt work by at most `budget` tokens (None: all);
        runs whose prompt is done join the step. Failures come back as events of their run."""

    def step(self) -> list[StepEvent]:
        """Engine thread: one batched step over every running, unheld run; finished runs leave."""

    def hold(self, tag, held: bool) -> None:
        """Freeze (`held`) or resume a run: a held row commits nothing and draws no noise."""

    def release(self, tag) -> None:
        """Forget a run wherever it is (prefilling, running, held); its slot is free at once."""

    def free(self) -> int:
        """Slots a newly admitted request could take now."""

    def running(self) -> int:
        """Runs that hold a slot (prefilling or stepping)."""

    def idle(self) -> bool:
        """True when no run can make progress without outside input (the core then sleeps briefly)."""

    def voice_job(self, wav) -> Callable[[], Any]:
        """Caller's thread: check a voice clip and return the engine-thread work that encodes it."""

    def describe(self) -> str:
        """One log line: slots, buckets, graphs."""
