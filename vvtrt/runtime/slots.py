"""The host side of the batched frame step: requests running in slots of one `FrameLoop`.

`SlotStepper` is the one loop both the single-request `Synthesizer` and the serving engine drive. Each
slot holds a `SlotRun`: its own prompt length, seed, guidance scale, frame budget, decision script or
forced frames, teacher latents and, once it ends, its stop reason. Decisions, step and frame counters and
stops live on the device (`vvtrt.runtime.slot_state`) and advance inside the step; the host reads back
one packed status tensor per step (token and stop code of every slot), then the audio when a slot made a
frame. Per step the host does a fixed number of tensor and numpy operations whatever the number of slots,
plus one event per slot that made a frame or ended (`events="all"`: every running slot, every step, for
the `Synthesizer`'s token log).

Noise. With the loop's `noise="host"` (the `Synthesizer`: parity with the original) each slot draws its
next noise on the host after each of its frames, from a generator seeded from the request alone (per
diffusion frame `randn(2, 64)[:1]` of `torch.Generator().manual_seed(seed)`, as transformers draws it).
With `noise="device"` (the serving engine) the step draws it from the seed and the slot's frame counter.

A slot can be held (`hold`: its reader is behind): its row then commits nothing and draws no noise until
it is resumed. The step runs the smallest (batch, KV) bucket holding the highest busy slot and the longest
context, so a slot's numbers never depend on which other slots are busy (up to batch-size-dependent GEMM
kernels on GPUs). With a loop of two KV groups (`vvtrt.runtime.kv_groups`) and a `GroupCost`, the step may
run as a low and a high group of slots, each at its own KV bucket (`plan_groups` decides on the host).

Pipelined (`pipeline=True`, device noise only: the serving engine's `pipeline` option), `step` launches the
next step before it reads the last one: the last step's status and audio were copied to (pinned) host
buffers behind it, so the host's work on them (events, joins, holds) runs while the device computes the next
step. Its events then come one step later; a slot whose run changed since a step was launched (it ended,
was cancelled, or another run joined) gets no event of that step. Nothing a step computes changes: a stopping
slot clears its own ACTIVE flag on the device, and joins, holds and leaves reach the device in stream order,
so they take effect from the step after the one already launched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vvtrt.runtime.frame_loop import FrameLoop
from vvtrt.runtime.kv_groups import GroupCost, KVGroup, plan_groups
from vvtrt.runtime.slot_state import FORCED, MODEL, NO_SPEECH, SCRIPTED, STOP_REASONS, TOKEN_BITS, slot_row

__all__ = ["NO_SPEECH", "SlotEvent", "SlotRun", "SlotStepper"]


@dataclass
class SlotRun:
    """One request's progress in a slot (host side)."""

    n_prompt: int  # prompt tokens, speech_start included
    limit: int  # frames to make (forced / max frames), or the decision script's diffusion frames
    max_steps: int  # LLM steps before the context is full (or the script ends)
    seed: int = 0
    cfg_scale: float = 1.3
    forced: bool = False  # force speech_diffusion every step (random-weight models)
    script: list[int] | None = None  # control index per step (parity's decision scripts)
    teacher: list | None = None  # reference latent [64] per diffusion frame (parity)
    keep_latents: bool = False
    tag: object = None  # the caller's handle for this run
    steps: int = 0  # LLM steps taken (brought up to date at each of its events)
    produced: int = 0
    tokens: list[str] = field(default_factory=list)  # with events="all" only
    stop_reason: str = ""
    gen: torch.Generator | None = None
    noise: torch.Tensor | None = None  # [64]: the next diffusion frame's noise (host noise only)

    @property
    def mode(self) -> int:
        return FORCED if self.forced else SCRIPTED if self.script is not None else MODEL

    def draw_noise(self, z: int) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(int(self.seed))
        self.noise = torch.randn(2, z, generator=self.gen)[0]


@dataclass
class SlotEvent:
    """What one step made for one slot."""

    slot: int
    run: SlotRun
    token: str
    audio: np.ndarray | None = None  # float32 [3200] on a diffusion step
    latent: np.ndarray | None = None  # float32 [64] with keep_latents
    stop_reason: str = ""  # set on the run's last step


@dataclass
class _Launched:
    """A launched step, until its outputs are read: its batch, the slots that computed and their run
    generations, their step counts after it, and (pipelined) its outputs' host copies and their event."""

    b: int
    act: np.ndarray
    gen: np.ndarray
    steps: np.ndarray
    staged: dict | None = None
    done: object = None  # torch.cuda.Event


class SlotStepper:
    """Runs requests in the slots of `loop`; `prefill(body [1,T,H]) -> (k, v)` fills a joining slot's cache.
    `events`: "changes" (a slot's event only when it made a frame or ended) or "all" (every running slot,
    every step). `cost`: the `GroupCost` that splits a step in KV groups where the loop has their shapes
    (None: one group, as the `Synthesizer` runs)."""

    def __init__(self, loop: FrameLoop, prefill, events: str = "changes", cost: GroupCost | None = None,
                 pipeline: bool = False):
        if events not in ("changes", "all"):
            raise ValueError(f"events must be 'changes' or 'all', got {events!r}")
        if pipeline and (not loop.device_noise or loop.teacher_forcing or events == "all"):
            raise ValueError("a pipelined step needs device noise, no teacher forcing and events='changes'")
        self.pipeline = pipeline
        self._inflight: _Launched | None = None
        self._staging = [_staging(loop) for _ in range(2)] if pipeline else []
        self._flip = 0
        self.loop = loop
        self.prefill = prefill
        self.every_step = events == "all"
        self.cost = cost if loop.shapes.top else None
        self.groups: tuple[KVGroup, ...] = ()  # the last step's runs
        self.split_steps = 0  # steps run as two KV groups
        self.names = loop.info.control_token_names
        self.runs: dict[int, SlotRun] = {}
        n, z = loop.slots, loop.info.latent_dim
        self.host_noise = not loop.device_noise
        self._noise = torch.zeros(n, z) if self.host_noise else None
        self._teacher = torch.zeros(n, 1, z) if loop.teacher_forcing else None
        self._use_teacher = torch.zeros(n, 1, 1, dtype=torch.bool) if loop.teacher_forcing else None
        self._busy = np.zeros(n, dtype=bool)    # a run holds the slot
        self._active = np.zeros(n, dtype=bool)  # ... and computes this step (not held)
        self._steps = np.zeros(n, dtype=np.int64)
        self._base = np.zeros(n, dtype=np.int64)  # prompt tokens + 1: KV need = base + steps
        self._gen = np.zeros(n, dtype=np.int64)   # bumped when a run joins or leaves the slot
        self.held: set[int] = set()
        self.prefill_tokens = 0
        self.last_active = 0  # slots that computed in the last step

    def free_slots(self) -> list[int]:
        return [int(s) for s in np.flatnonzero(~self._busy)]

    def join(self, slot: int, run: SlotRun, emb: torch.Tensor, kv=None) -> None:
        """Prefill `emb [1, L0, H]` (all but its final speech_start; or take the given `kv`) into `slot`
        and arm the slot for `run`. Runs between steps (a frame boundary)."""
        if slot in self.runs:
            raise RuntimeError(f"slot {slot} is busy")
        if self.pipeline and run.keep_latents:
            raise ValueError("a pipelined step stages no latents: keep_latents runs step unpipelined")
        if kv is None:
            body = emb[:, :-1]
            kv = self.prefill(body) if body.shape[1] > 0 else (None, None)
            self.prefill_tokens += body.shape[1]
        loop = self.loop
        loop.reset_slot(slot, kv[0], kv[1], emb[:, -1:], run.cfg_scale)
        if self.host_noise:
            run.draw_noise(loop.info.latent_dim)
            self._noise[slot] = run.noise
        if self._use_teacher is not None:
            self._use_teacher[slot] = run.teacher is not None
            self._set_teacher(slot, run)
        loop.arm_slot(slot, slot_row(run.seed, run.limit, run.max_steps, run.mode), run.script)
        self.held.discard(slot)
        self._busy[slot] = self._active[slot] = True
        self._gen[slot] += 1
        self._steps[slot], self._base[slot] = 0, run.n_prompt + 1
        self.runs[slot] = run

    def hold(self, slot: int, held: bool) -> None:
        """Hold (`held`) or resume a running slot: a held slot computes nothing and keeps its state."""
        if held and slot in self.runs:
            self.held.add(slot)
        else:
            self.held.discard(slot)
        active = slot in self.runs and slot not in self.held
        if active != self._active[slot]:
            self._active[slot] = active
            self.loop.set_active(slot, active)

    def leave(self, slot: int) -> SlotRun | None:
        """Free `slot` (cancellation, or its run ended): it commits nothing until the next run joins, and its
        lengths are zeroed so no step of a smaller KV bucket ever reads past the bucket for it."""
        self.loop.set_active(slot, False)
        self._busy[slot] = self._active[slot] = False
        self._gen[slot] += 1
        self.held.discard(slot)
        self.loop.cache.lengths[2 * slot:2 * slot + 2] = 0
        if self._use_teacher is not None:
            self._use_teacher[slot] = False
        return self.runs.pop(slot, None)

    def _set_teacher(self, slot: int, run: SlotRun) -> None:
        ref = run.teacher[run.produced] if run.teacher is not None and run.produced < len(run.teacher) else None
        self._teacher[slot] = 0 if ref is None else torch.as_tensor(np.asarray(ref), dtype=torch.float32).reshape(1, -1)

    def _plan(self) -> tuple[KVGroup, ...]:
        """This step's runs: one bucket (highest busy slot, longest context), or the KV groups' split."""
        loop = self.loop
        if self.cost is not None:
            return plan_groups(np.where(self._busy, self._base + self._steps, 0), loop.shapes, self.cost)
        busy = np.flatnonzero(self._busy)
        kv_needed = int((self._base[busy] + self._steps[busy]).max())
        b, s = loop.bucket_for(int(busy[-1]) + 1, kv_needed)
        return (KVGroup(0, b, s),)

    def _feed(self, top: int) -> None:
        """Copy host noise and teacher latents of the first `top` slots."""
        a = self.loop.all
        if self._noise is not None:
            a["noise"][:top].copy_(self._noise[:top])
        if self._teacher is not None:
            a["teacher"][:top].copy_(self._teacher[:top])
            a["use_teacher"][:top].copy_(self._use_teacher[:top])

    def step(self) -> list[SlotEvent]:
        """One frame step for every busy, unheld slot; finished runs leave their slots. Pipelined, the events
        returned are those of the step launched by the previous call."""
        launched = self._launch()
        if not self.pipeline:
            return self._collect(launched) if launched is not None else []
        last, self._inflight = self._inflight, launched
        return self._collect(last) if last is not None else []

    def _launch(self) -> _Launched | None:
        self.last_active = len(self.runs) - len(self.held)
        if not self.last_active:
            return None
        loop = self.loop
        self.groups = groups = self._plan()
        b = max(g.stop for g in groups)  # every busy slot is in a group; slots between groups are free
        self._feed(b)
        self.split_steps += len(groups) > 1
        for g in groups:
            loop.select(g.batch, g.kv, g.first)
            loop.step()
        act = self._active[:b].copy()
        self._steps[:b] += act
        rec = _Launched(b, act, self._gen[:b].copy(), self._steps[:b].copy())
        if self.pipeline:
            self._stage(rec)
        return rec

    def _stage(self, rec: _Launched) -> None:
        """Copy the step's status and audio to host buffers behind it (no wait), and mark their arrival."""
        a, b = self.loop.all, rec.b
        rec.staged = st = self._staging[self._flip]
        self._flip ^= 1
        st["status"][:b].copy_(a["status"][:b], non_blocking=True)
        st["audio"][:b].copy_(a["audio"][:b, 0].float(), non_blocking=True)
        if a["status"].is_cuda:
            rec.done = torch.cuda.Event()
            rec.done.record()

    def _collect(self, rec: _Launched) -> list[SlotEvent]:
        """The events of a launched step (the one host sync per step)."""
        loop, a, b = self.loop, self.loop.all, rec.b
        st = rec.staged
        if rec.done is not None:
            rec.done.synchronize()
        status = st["status"][:b].numpy() if st else a["status"][:b].cpu().numpy()  # token + 8 * stop code
        tok, stop = status % TOKEN_BITS, status // TOKEN_BITS
        act = rec.act & (self._gen[:b] == rec.gen)  # slots whose run is still the one that computed
        made = act & (tok == loop.diff_idx)
        audio = latents = None
        if made.any():
            audio = st["audio"][:b].numpy() if st else a["audio"][:b, 0].float().cpu().numpy()
            if not st and any(r.keep_latents for r in self.runs.values()):  # parity runs: never pipelined
                latents = a["latent"][:b, 0].float().cpu().numpy()
        which = act if self.every_step else act & (made | (stop > 0))
        return [self._event(int(s), int(tok[s]), int(stop[s]), audio, latents, int(rec.steps[s]))
                for s in np.flatnonzero(which)]

    def _event(self, slot: int, tok: int, stop: int, audio, latents, steps: int) -> SlotEvent:
        """Slot `slot`'s event of this step; its run leaves on a stop, else draws its next host noise."""
        run = self.runs[slot]
        run.steps = steps
        ev = SlotEvent(slot, run, self.names[tok], stop_reason=STOP_REASONS[stop])
        if self.every_step:
            run.tokens.append(ev.token)
        if tok == self.loop.diff_idx:
            run.produced += 1
            ev.audio = audio[slot].copy()
            if run.keep_latents:
                ev.latent = latents[slot].copy()
        if ev.stop_reason:
            run.stop_reason = ev.stop_reason
            self.leave(slot)
        elif ev.audio is not None:
            if self.host_noise:
                run.draw_noise(self.loop.info.latent_dim)
                self._noise[slot] = run.noise
            if self._teacher is not None:
                self._set_teacher(slot, run)
        return ev


def _staging(loop: FrameLoop) -> dict:
    """Host buffers for one launched step's status and audio (pinned on CUDA, so the copies are
    asynchronous)."""
    a = loop.all
    pin = a["status"].is_cuda
    n = a["status"].shape[0]
    return {"status": torch.empty(n, dtype=torch.int64, pin_memory=pin),
            "audio": torch.empty(n, a["audio"].shape[-1], dtype=torch.float32, pin_memory=pin)}
