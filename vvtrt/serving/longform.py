"""The long-form (1.5B / 7B) `Stepper`: requests in the slots of one `FrameLoop`, driven by the same
`SlotStepper` the single-request `Synthesizer` uses.

A request is checked and sized on the caller's thread (`prepare`: script, voices, frame limit, KV need);
admitted into a reserved slot on the engine thread, where its voice clips are encoded and its prompt
body becomes a `PrefillJob`; the core then advances prompt work chunk by chunk between frame steps
(`prefill(budget)`), and a run whose prompt is done joins the step. Each request's audio depends only on
its own inputs and seed (with `deterministic`, bit for bit: every step runs the full pool's shapes). Its
noise is drawn on the device from its seed and frame index (`EngineConfig.noise = "device"`), or on the
host as the single-request `Synthesizer` draws it (`"host"`).

KV groups (`EngineConfig.kv_groups = 2`; 1, the default, until measured on a GPU; always 1 with
`deterministic`): a request whose prompt alone needs more than the smallest KV bucket takes the highest free
slot, the others the lowest, and each step may run the low and the high slots as two groups, each at its own
KV bucket (`vvtrt.runtime.kv_groups`).
"""
from __future__ import annotations

import collections
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from vvtrt.errors import InputError
from vvtrt.runtime.frame_loop import FrameLoop
from vvtrt.runtime.kv_cache import pick_bucket
from vvtrt.runtime.kv_groups import estimate_cost
from vvtrt.runtime.prefill import PrefillJob
from vvtrt.runtime.slots import SlotRun, SlotStepper
from vvtrt.serving.api import SAMPLE_RATE, CapacityError, SpeechRequest, VoiceEmbedding
from vvtrt.serving.config import EngineConfig, plan_pool
from vvtrt.serving.core import StepFailed
from vvtrt.serving.stepper import StepEvent

log = logging.getLogger(__name__)
MAX_PREFILL_ROWS = 64  # prompts in one batched prefill call
MAX_PREFILL_TOKENS = 16384  # prompt tokens in one batched call while no stream runs


@dataclass
class LongformWork:
    request: SpeechRequest
    plan: object          # PromptPlan (ids, voice clips)
    limit: int
    max_steps: int
    script: list | None

    @property
    def prompt_tokens(self) -> int:
        return len(self.plan.ids)


@dataclass
class _Pending:
    slot: int
    work: LongformWork
    emb: torch.Tensor
    job: PrefillJob | None  # None: an empty prompt body


class LongformStepper:
    """`Stepper` over a loaded `Synthesizer` (its runners, tokenizer and prefill); see module doc."""

    def __init__(self, synth, config: EngineConfig):
        self.synth = synth
        self.config = config
        self.plan = None
        self.slots = 0
        self.slot_stepper: SlotStepper | None = None
        self._pending: collections.OrderedDict = collections.OrderedDict()  # tag -> _Pending, FIFO
        self._slot_of: dict = {}  # tag -> slot of a running request
        self._reserved: set[int] = set()
        self.last_active = 0

    # -- engine-thread setup ------------------------------------------------------------------------
    def build(self, wake=None) -> None:
        """Size the KV pool (`CapacityError` if one stream does not fit), build the frame step, capture."""
        s = self.synth
        self.plan = p = plan_pool(self.config, s.info, s.options, s.runners, s.device, s.precision.torch_dtype.itemsize)
        loop = FrameLoop(s.runners, s.info, p.slots, p.kv_len, s.precision.torch_dtype, s.device,
                         batch_buckets=p.batch_buckets, kv_buckets=p.kv_buckets, noise=self.config.noise,
                         kv_groups=self.kv_groups)
        if s.cuda_graph:
            loop.capture_all()
            loop.cache.reset()
        elif any(getattr(r, "compiled", False) for r in s.runners.values()):
            loop.warm_all()  # compile every bucket's shapes before the first request
            loop.cache.reset()
        self.slot_stepper = SlotStepper(loop, s.prefill, cost=estimate_cost(s.info), pipeline=self.config.pipeline)
        self.slots = p.slots

    def describe(self) -> str:
        p, loop = self.plan, self.slot_stepper.loop
        err = f" (capture failed: {loop.capture_error})" if loop.capture_error else ""
        return (f"serving engine: {p.slots} slots, KV {p.kv_len} tokens a slot ({p.pool_bytes / (1 << 30):.2f} GiB "
                f"pool), buckets {p.batch_buckets} x {p.kv_buckets}, {self.kv_groups} KV group(s) a step, "
                f"graphs {len(loop.graphs)}{err}, "
                f"{self.config.noise} noise")

    @property
    def kv_groups(self) -> int:
        return 1 if self.config.deterministic else self.config.kv_groups

    @property
    def loop(self) -> FrameLoop:
        return self.slot_stepper.loop

    @property
    def prompt_tokens(self) -> int:
        return self.slot_stepper.prefill_tokens if self.slot_stepper else 0

    # -- caller's thread ----------------------------------------------------------------------------
    def prepare(self, r) -> LongformWork:
        """Validate a request on the caller's thread (host work only: script, tokens, limits)."""
        from vvtrt.option_checks import check_cfg, check_counts, check_text

        if not isinstance(r, SpeechRequest):
            raise InputError(f"submit takes a SpeechRequest, got {type(r).__name__}")
        check_counts(r, ("frames", "max_frames"), optional=True)
        if not isinstance(r.seed, int) or isinstance(r.seed, bool) or not 0 <= r.seed < 2 ** 63 - 8000:
            raise InputError(f"seed must be a non-negative integer, got {r.seed!r}")
        check_cfg(r.cfg_scale)
        check_text(r.script)
        plan = self.synth.plan_prompt(r.script, r.voices)
        n = len(plan.ids)
        script = self.synth._check_generate(plan.ids, r.frames, 1, None, r.decisions)
        limit = self.synth.frame_limit(n, r.frames, r.max_frames, script)
        need = n + (len(script) if script else limit) + 1  # as the Synthesizer sizes its KV bucket
        kv_len = self.plan.kv_len
        if need > kv_len:
            raise CapacityError(f"the request needs {need} KV slots ({n} prompt tokens + {need - n - 1} steps) "
                                f"but a stream holds {kv_len}: shorten the script or ask for fewer frames")
        buckets = self.synth.options.kv_buckets
        bucket = pick_bucket(buckets, need) if need <= buckets[-1] else kv_len
        max_steps = len(script) if script else min(bucket, kv_len) - n - 1
        return LongformWork(r, plan, limit, max_steps, script)

    def voice_job(self, wav):
        """Check a 24 kHz mono clip here; encode it (noise of seed 0) on the engine thread."""
        from vvtrt.runtime.audio_io import normalize_voice
        from vvtrt.runtime.prompt import frames_for_samples

        clip = normalize_voice(np.asarray(wav, dtype=np.float32))  # encoded at its own length, as the original
        n = len(clip)
        if frames_for_samples(n, self.synth.info.hop) > self.synth.options.max_voice_frames:
            raise InputError("the voice clip is longer than the exported max_voice_frames: trim it")
        sha = hashlib.sha256(np.ascontiguousarray(wav, np.float32).tobytes()).hexdigest()

        def encode():
            embeds = self.synth.encode_voice(clip, torch.Generator().manual_seed(7919)).clone()
            return VoiceEmbedding(embeds, sha, n / SAMPLE_RATE)
        return encode

    # -- engine thread ------------------------------------------------------------------------------
    def free(self) -> int:
        return self.slots - len(self.slot_stepper.runs) - len(self._reserved)

    def running(self) -> int:
        return len(self.slot_stepper.runs)

    def admit(self, work: LongformWork, tag) -> int:
        slot = self._free_slot(work)
        emb = self.synth.embed_prompt(work.plan, work.request.seed)  # encodes the voice clips
        body = emb[:, :-1]
        job = PrefillJob(self.synth.prefill, body) if body.shape[1] > 0 else None
        self._reserved.add(slot)
        self._pending[tag] = _Pending(slot, work, emb, job)
        return slot

    def _free_slot(self, work: LongformWork) -> int:
        """The lowest free slot; with KV groups, the highest for a prompt longer than the smallest KV bucket
        (long streams gather in the high group)."""
        taken = self.slot_stepper.runs.keys() | self._reserved
        order = range(self.slots)
        loop = self.loop
        if loop.shapes.top and work.prompt_tokens + 1 > loop.kv_buckets[0]:
            order = reversed(order)
        return next(s for s in order if s not in taken)

    def prefill(self, budget: int | None) -> list[StepEvent]:
        """Advance the oldest prompts within `budget` tokens (at least one chunk; None: all of them). Prompts
        that arrived together have their first chunks prefilled in one batched call (not with
        `deterministic`, where every prompt runs alone so its numbers never depend on its neighbours); the
        rest of a longer prompt follows chunk by chunk."""
        events, spent = [], 0
        while self._pending:
            left = None if budget is None else budget - spent
            if left is not None and left <= 0:
                break
            tag, p = next(iter(self._pending.items()))
            if p.job is None or p.job.done:
                self._join(tag, p, events)
                continue
            group = self._batch(left) if self._batched and p.job.filled == 0 else []
            if len(group) > 1:
                spent += self._prefill_group(group, events)
                continue
            if left is not None and spent and p.job.next_tokens() > left:
                break
            try:
                n = p.job.advance()
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                self.release(tag)
                events.append(StepEvent(tag, error=exc))
                continue
            spent += n
            self.slot_stepper.prefill_tokens += n
        return events

    @property
    def _batched(self) -> bool:
        return not self.config.deterministic and self.synth.prefill.runner.backend == "torch"

    def _batch(self, left: int | None) -> list:
        """The oldest unstarted prompts whose first chunks fit `left` tokens (at most MAX_PREFILL_ROWS)."""
        group, tokens = [], 0
        cap = left if left is not None else MAX_PREFILL_TOKENS
        for tag, p in self._pending.items():
            job = p.job
            if job is None or job.filled or len(group) >= MAX_PREFILL_ROWS:
                break
            n = job.next_tokens()
            if group and tokens + n > cap:
                break
            group.append((tag, p))
            tokens += n
        return group

    def _prefill_group(self, group: list, events: list) -> int:
        try:
            kvs = self.synth.prefill.first_many([p.job.first_body() for _, p in group])
        except Exception as exc:  # noqa: BLE001 - the requests of this call fail, the others go on
            for tag, _ in group:
                self.release(tag)
                events.append(StepEvent(tag, error=exc))
            return 0
        tokens = 0
        for (tag, p), (k, v) in zip(group, kvs):
            tokens += p.job.take_first(k, v)  # a longer prompt copies its first chunk out of the output
            if p.job.done:
                self._join(tag, p, events)  # copies its rows out of the batched output at once
        self.slot_stepper.prefill_tokens += tokens
        return tokens

    def _join(self, tag, p: _Pending, events: list) -> None:
        del self._pending[tag]
        self._reserved.discard(p.slot)
        w, r = p.work, p.work.request
        run = SlotRun(len(w.plan.ids), w.limit, w.max_steps, r.seed, r.cfg_scale, forced=r.frames is not None,
                      script=w.script, tag=tag)
        kv = (p.job.k, p.job.v) if p.job is not None else (None, None)
        try:
            self.slot_stepper.join(p.slot, run, p.emb, kv=kv)
        except Exception as exc:  # noqa: BLE001 - an arming failure ends this request alone
            self.slot_stepper.leave(p.slot)
            events.append(StepEvent(tag, error=exc))
            return
        self._slot_of[tag] = p.slot

    def step(self) -> list[StepEvent]:
        st = self.slot_stepper
        try:
            slot_events = st.step()
        except Exception as exc:
            raise StepFailed([r.tag for r in st.runs.values()], exc) from exc
        self.last_active = st.last_active
        out = []
        for ev in slot_events:
            if ev.stop_reason:
                self._slot_of.pop(ev.run.tag, None)
            index = ev.run.produced - 1 if ev.audio is not None else -1
            out.append(StepEvent(ev.run.tag, index, ev.audio, ev.stop_reason))
        return out

    def hold(self, tag, held: bool) -> None:
        slot = self._slot_of.get(tag)
        if slot is not None:
            self.slot_stepper.hold(slot, held)

    def release(self, tag) -> None:
        p = self._pending.pop(tag, None)
        if p is not None:
            self._reserved.discard(p.slot)
        slot = self._slot_of.pop(tag, None)
        if slot is not None:
            run = self.slot_stepper.runs.get(slot)
            if run is not None and run.tag is tag:
                self.slot_stepper.leave(slot)

