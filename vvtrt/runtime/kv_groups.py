"""KV groups: a batched frame step split into at most two runs, so short streams do not pay for the
attention of a long one.

One step of `FrameLoop` runs `lm_decode` on a contiguous range of slots against one KV bucket (the longest
context of the range): with 255 short streams and one long one, every row reads the long bucket. Split in
two, the low slots run at their own (short) bucket and the high slots at the long one. Each run is one of a
fixed set of shapes, each one CUDA graph:

* low runs: `(batch bucket, KV bucket)` from slot 0, as without groups, plus the complement of each high
  run (`slots - b` slots from slot 0) at the KV buckets below the largest;
* high runs: the last `b` slots (`b` a batch bucket of at most half the slots) at the KV buckets above the
  smallest.

So the graphs stay bounded (at most three times the plain bucket grid) and the decision is a host-side
choice among those shapes: `plan_groups`, a pure function of the slots' KV needs and a cost model
(`GroupCost`: a run reads the weights once, each of its slots reads its KV bucket). The serving engine puts
a request whose prompt alone needs more than the smallest KV bucket in the highest free slot, the others in
the lowest, so long streams gather at the top.

A row's arithmetic is the same in either run apart from the batch size and KV bucket it runs with, which
the plain bucketed step already varies step by step (GEMM rounding). The deterministic mode runs one group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_KV_GROUPS = 2


@dataclass(frozen=True)
class KVGroup:
    """One run of the step: `batch` slots from slot `first`, attending over `kv` cache slots."""

    first: int
    batch: int
    kv: int

    @property
    def stop(self) -> int:
        return self.first + self.batch


@dataclass(frozen=True)
class GroupCost:
    """The cost of one run, in slot x KV-token reads: `fixed` for the run (its weights, launches) plus, per
    slot, its KV bucket and `per_slot` (the rest of its work). `margin`: the split must save this share of
    the single run's cost (a split that barely pays is not worth a second launch)."""

    fixed: float
    per_slot: float
    margin: float = 0.1

    def of(self, groups) -> float:
        return sum(self.fixed + g.batch * (g.kv + self.per_slot) for g in groups)


def estimate_cost(info, mlp_ratio: float = 5.5, flops_per_byte: float = 300.0) -> GroupCost:
    """A rough `GroupCost` from the model's sizes: the LM's weights (Qwen2-style layers, an MLP of
    `mlp_ratio` x hidden) against one slot's KV per token (both rows, K and V); the per-slot compute as bytes
    at `flops_per_byte` (a GPU's compute to bandwidth ratio). Only the ratios matter."""
    h, d = info.hidden, info.head_dim
    layer = 3 * mlp_ratio * h * h + 2 * h * info.q_heads * d + 2 * h * info.kv_heads * d
    weights = info.layers * layer
    kv_per_token = 4 * info.layers * info.kv_heads * d  # two rows (CFG), K and V
    return GroupCost(fixed=weights / kv_per_token, per_slot=4 * weights / flops_per_byte / kv_per_token)


@dataclass(frozen=True)
class GroupShapes:
    """The shapes a step may run with: `batch` and `kv` buckets (ascending; the last = the pool), and the
    high runs' batch buckets `top` (empty: one group only)."""

    batch: tuple[int, ...]
    kv: tuple[int, ...]
    top: tuple[int, ...] = ()

    @classmethod
    def for_pool(cls, batch, kv, max_groups: int) -> "GroupShapes":
        batch, kv = tuple(batch), tuple(kv)
        slots = batch[-1]
        top = tuple(b for b in batch if 2 * b <= slots) if max_groups >= 2 and len(kv) > 1 else ()
        return cls(batch, kv, top)

    @property
    def slots(self) -> int:
        return self.batch[-1]

    def all(self) -> list[tuple[int, int, int]]:
        """Every (batch, kv, first) a step may run, largest first (CUDA graphs are captured in this order)."""
        plain = [(b, s, 0) for b in reversed(self.batch) for s in reversed(self.kv)]
        high = [(b, s, self.slots - b) for b in reversed(self.top) for s in reversed(self.kv[1:])]
        low = [(self.slots - b, s, 0) for b in self.top for s in reversed(self.kv[:-1])
               if self.slots - b not in self.batch]
        return plain + high + low


def _bucket(buckets, n: int) -> int:
    return next((x for x in buckets if x >= n), buckets[-1])


def plan_groups(need: np.ndarray, shapes: GroupShapes, cost: GroupCost) -> tuple[KVGroup, ...]:
    """The runs of one step. `need[s]`: KV slots slot `s` needs (0: a free slot; every busy slot, held or
    not, has a need and lands in a run whose bucket holds it). One run from slot 0 (the smallest batch
    bucket holding the highest busy slot, the KV bucket of the longest need) unless a split into a low and a
    high run (or a high run alone) costs less by `cost.margin`. Empty when no slot is busy."""
    need = np.asarray(need, dtype=np.int64)
    busy = np.flatnonzero(need > 0)
    if busy.size == 0:
        return ()
    single = (KVGroup(0, _bucket(shapes.batch, int(busy[-1]) + 1), _bucket(shapes.kv, int(need.max()))),)
    if not shapes.top:
        return single
    n = shapes.slots
    high_max = np.maximum.accumulate(need[::-1])[::-1]  # high_max[f]: the longest need from slot f up
    low_max = np.concatenate([[0], np.maximum.accumulate(need)])  # low_max[f]: ... below slot f
    last_busy = np.concatenate([[-1], np.maximum.accumulate(np.where(need > 0, np.arange(n), -1))])
    best, best_cost = single, cost.of(single) * (1.0 - cost.margin)
    for b in shapes.top:
        first = n - b
        hi = int(high_max[first])
        if hi == 0 or hi > shapes.kv[-1]:
            continue
        high = KVGroup(first, b, _bucket(shapes.kv[1:], hi))
        groups = (high,)
        if last_busy[first] >= 0:
            s1 = _bucket(shapes.kv, int(low_max[first]))
            if s1 >= high.kv:
                continue  # the low run would read as much: no split
            b1 = _bucket(shapes.batch, int(last_busy[first]) + 1)
            groups = (KVGroup(0, b1 if b1 <= first else first, s1), high)
        c = cost.of(groups)
        if c < best_cost:
            best, best_cost = groups, c
    return best
