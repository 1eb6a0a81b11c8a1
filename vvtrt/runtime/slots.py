"""The host side of the batched frame step: requests running in slots of one `FrameLoop`.

`SlotStepper` is the one loop both the single-request `Synthesizer` and the serving engine drive. Each
slot holds a `SlotRun`: its own prompt length, noise generator (seeded from the request alone: per
diffusion frame `randn(2, 64)[:1]` of `torch.Generator().manual_seed(seed)`, as transformers draws it),
guidance scale, frame budget, decision script or forced frames, teacher latents, step/frame counters and
stop reason. A slot can be held (`hold`: its reader is behind): its row then commits nothing and draws no
noise until it is resumed. Before each step the host writes every slot's decision, next noise and active
flag into the loop's static buffers; after it, one host sync reads the tokens (and the audio, when a slot made a frame). The step runs
the smallest (batch, KV) bucket holding the highest busy slot and the longest context, so a slot's numbers
never depend on which other slots are busy (up to batch-size-dependent GEMM kernels on GPUs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vvtrt.runtime.frame_loop import FrameLoop

NO_SPEECH = "no speech (random weights never choose to speak: pass --frames N)"


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
    steps: int = 0
    produced: int = 0
    tokens: list[str] = field(default_factory=list)
    stop_reason: str = ""
    gen: torch.Generator | None = None
    noise: torch.Tensor | None = None  # [64]: the next diffusion frame's noise

    def draw_noise(self, z: int) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(int(self.seed))
        self.noise = torch.randn(2, z, generator=self.gen)[0]

    def finish(self, token: str) -> str:
        """Book one step's token; return the stop reason if the run ends here ("" otherwise)."""
        self.steps += 1
        self.tokens.append(token)
        scripted = self.script is not None
        if token == "speech_diffusion":
            self.produced += 1
            if self.produced >= self.limit and not scripted:
                return "frame budget" if self.forced else "max frames"
        elif token == "eos":
            return "eos"
        if not scripted and self.steps >= self.limit * 4 + 16 and self.produced == 0:
            return NO_SPEECH
        if self.steps >= self.max_steps:
            return "end of decision script" if scripted else "length limit"
        return ""


@dataclass
class SlotEvent:
    """What one step made for one slot."""

    slot: int
    run: SlotRun
    token: str
    audio: np.ndarray | None = None  # float32 [3200] on a diffusion step
    latent: np.ndarray | None = None  # float32 [64] with keep_latents
    stop_reason: str = ""  # set on the run's last step


class SlotStepper:
    """Runs requests in the slots of `loop`; `prefill(body [1,T,H]) -> (k, v)` fills a joining slot's cache."""

    def __init__(self, loop: FrameLoop, prefill):
        self.loop = loop
        self.prefill = prefill
        self.names = loop.info.control_token_names
        self.runs: dict[int, SlotRun] = {}
        z = loop.info.latent_dim
        self._noise = torch.zeros(loop.slots, z)
        self._decide = torch.full((loop.slots,), loop.end_idx, dtype=torch.int64)  # free slots: speech_end
        self._teacher = torch.zeros(loop.slots, 1, z) if loop.teacher_forcing else None
        self._use_teacher = torch.zeros(loop.slots, 1, 1, dtype=torch.bool) if loop.teacher_forcing else None
        self._active = torch.zeros(loop.slots, dtype=torch.bool)
        self.held: set[int] = set()
        self.prefill_tokens = 0
        self.last_active = 0  # slots that computed in the last step

    def free_slots(self) -> list[int]:
        return [s for s in range(self.loop.slots) if s not in self.runs]

    def join(self, slot: int, run: SlotRun, emb: torch.Tensor, kv=None) -> None:
        """Prefill `emb [1, L0, H]` (all but its final speech_start; or take the given `kv`) into `slot`
        and arm the slot for `run`. Runs between steps (a frame boundary)."""
        if slot in self.runs:
            raise RuntimeError(f"slot {slot} is busy")
        if kv is None:
            body = emb[:, :-1]
            kv = self.prefill(body) if body.shape[1] > 0 else (None, None)
            self.prefill_tokens += body.shape[1]
        self.loop.reset_slot(slot, kv[0], kv[1], emb[:, -1:], run.cfg_scale)
        run.draw_noise(self.loop.info.latent_dim)
        self._noise[slot] = run.noise
        if self._use_teacher is not None:
            self._use_teacher[slot] = run.teacher is not None
            self._set_teacher(slot, run)
        self.held.discard(slot)
        self._active[slot] = True
        self.runs[slot] = run

    def hold(self, slot: int, held: bool) -> None:
        """Hold (`held`) or resume a running slot: a held slot computes nothing and keeps its state."""
        if held and slot in self.runs:
            self.held.add(slot)
        else:
            self.held.discard(slot)
        self._active[slot] = slot in self.runs and slot not in self.held

    def leave(self, slot: int) -> SlotRun | None:
        """Free `slot` (cancellation, or its run ended): it commits nothing until the next run joins, and its
        lengths are zeroed so no step of a smaller KV bucket ever reads past the bucket for it."""
        self._decide[slot] = self.loop.end_idx
        self._active[slot] = False
        self.held.discard(slot)
        self.loop.cache.lengths[2 * slot:2 * slot + 2] = 0
        if self._use_teacher is not None:
            self._use_teacher[slot] = False
        return self.runs.pop(slot, None)

    def _set_teacher(self, slot: int, run: SlotRun) -> None:
        ref = run.teacher[run.produced] if run.teacher is not None and run.produced < len(run.teacher) else None
        self._teacher[slot] = 0 if ref is None else torch.as_tensor(np.asarray(ref), dtype=torch.float32).reshape(1, -1)

    def _feed(self) -> None:
        """Write every slot's decision, noise (and teacher latent) for the next step; select the bucket."""
        loop = self.loop
        kv_needed = max(r.n_prompt + r.steps + 1 for r in self.runs.values())
        loop.select(*loop.bucket_for(max(self.runs) + 1, kv_needed))
        diff = loop.diff_idx
        for slot, run in self.runs.items():
            if run.forced:
                self._decide[slot] = diff
            elif run.script is not None:
                self._decide[slot] = run.script[run.steps] if run.steps < len(run.script) else -1
            else:
                self._decide[slot] = -1
        b = loop.n
        loop.active.copy_(self._active[:b])
        loop.decide.copy_(self._decide[:b])
        loop.noise.copy_(self._noise[:b])
        if self._teacher is not None:
            loop.teacher.copy_(self._teacher[:b])
            loop.use_teacher.copy_(self._use_teacher[:b])

    def step(self) -> list[SlotEvent]:
        """One frame step for every busy, unheld slot; finished runs leave their slots."""
        self.last_active = len(self.runs) - len(self.held)
        if not self.last_active:
            return []
        self._feed()
        loop = self.loop
        loop.step()
        tokens = loop.token.cpu().tolist()  # the one host sync per step
        diff = loop.diff_idx
        made = any(tokens[s] == diff for s in self.runs if s not in self.held)
        audio = loop.audio[:, 0].float().cpu().numpy() if made else None
        keep = made and any(r.keep_latents for r in self.runs.values())
        latents = loop.latent[:, 0].float().cpu().numpy() if keep else None
        events = []
        for slot, run in list(self.runs.items()):
            if slot in self.held:
                continue
            ev = SlotEvent(slot, run, self.names[tokens[slot]])
            if tokens[slot] == diff:
                ev.audio = audio[slot].copy()
                if run.keep_latents:
                    ev.latent = latents[slot].copy()
            ev.stop_reason = run.finish(ev.token)
            if ev.stop_reason:
                run.stop_reason = ev.stop_reason
                self.leave(slot)
            elif ev.audio is not None:
                run.draw_noise(loop.info.latent_dim)
                self._noise[slot] = run.noise
                if self._teacher is not None:
                    self._set_teacher(slot, run)
            events.append(ev)
        return events
