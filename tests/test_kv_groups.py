"""KV groups: the host's split of a batched step (a pure function of the slots' KV needs and a cost model),
the bounded shape set, and the serving engine on the tiny model (CPU): long and short requests together
give the same audio with the step split in two KV groups as in one, each stream reading its own bucket."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vvtrt.errors import InputError
from vvtrt.parity.compare import error_stats
from vvtrt.runtime.kv_groups import GroupCost, GroupShapes, KVGroup, estimate_cost, plan_groups
from vvtrt.serving.api import SpeechRequest
from vvtrt.serving.config import EngineConfig
from vvtrt.serving.engine import Engine

SHAPES = GroupShapes.for_pool((1, 2, 4, 8), (256, 1024, 8192), 2)
COST = GroupCost(fixed=1000.0, per_slot=100.0)


def _need(*pairs, slots=8) -> np.ndarray:
    need = np.zeros(slots, dtype=np.int64)
    for s, n in pairs:
        need[s] = n
    return need


def test_shapes_are_the_bucket_grid_plus_the_groups_and_bounded():
    assert SHAPES.top == (1, 2, 4)
    shapes = SHAPES.all()
    assert len(shapes) == len(set(shapes))
    plain = [(b, s, 0) for b in (8, 4, 2, 1) for s in (8192, 1024, 256)]
    assert shapes[:12] == plain  # largest first, as before
    assert (1, 8192, 7) in shapes and (4, 1024, 4) in shapes and (7, 1024, 0) in shapes and (6, 256, 0) in shapes
    assert (1, 256, 7) not in shapes and (7, 8192, 0) not in shapes  # high runs never at the smallest bucket
    assert len(shapes) <= 3 * 12
    assert all(first + b <= 8 for b, _, first in shapes)
    assert GroupShapes.for_pool((1, 2, 4, 8), (256, 1024, 8192), 1).all() == plain  # one group: the old grid
    assert GroupShapes.for_pool((1, 2, 4, 8), (8192,), 2).top == ()  # one KV bucket: nothing to split


def test_one_long_stream_among_short_ones_runs_in_its_own_group():
    need = _need((0, 100), (1, 200), (2, 50), (3, 90), (4, 30), (7, 5000))
    assert plan_groups(need, SHAPES, COST) == (KVGroup(0, 7, 256), KVGroup(7, 1, 8192))
    # the low run takes the smallest batch bucket holding its slots when one fits below the high run
    need = _need((0, 100), (1, 200), (7, 5000))
    assert plan_groups(need, SHAPES, COST) == (KVGroup(0, 2, 256), KVGroup(7, 1, 8192))
    # only high slots busy: the high run alone
    assert plan_groups(_need((6, 3000), (7, 5000)), SHAPES, COST) == (KVGroup(6, 2, 8192),)


def test_every_busy_slot_lands_in_a_run_whose_bucket_holds_it():
    rng = np.random.default_rng(0)
    for _ in range(300):
        need = np.where(rng.random(8) < 0.6, rng.integers(1, 8193, 8), 0)
        groups = plan_groups(need, SHAPES, COST)
        covered = np.zeros(8, dtype=int)
        for g in groups:
            assert (g.batch, g.kv, g.first) in SHAPES.all()
            covered[g.first:g.stop] += 1
            assert need[g.first:g.stop].max(initial=0) <= g.kv
        assert covered.max(initial=0) <= 1 and all(covered[need > 0] == 1)
        assert len(groups) <= 2 and (len(groups) > 0) == bool((need > 0).any())


def test_no_split_when_it_does_not_pay():
    cheap = _need((0, 100), (1, 100), (7, 5000))
    assert len(plan_groups(cheap, SHAPES, GroupCost(fixed=1e6, per_slot=0.0))) == 1  # a run costs too much
    same = _need((0, 900), (7, 1000))  # both in one KV bucket: nothing to save
    assert plan_groups(same, SHAPES, COST) == (KVGroup(0, 8, 1024),)
    half = _need(*[(s, 5000) for s in range(1, 8)], (0, 10))  # one short among seven long: not worth a run
    assert plan_groups(half, SHAPES, COST) == (KVGroup(0, 8, 8192),)
    assert plan_groups(np.zeros(8, dtype=np.int64), SHAPES, COST) == ()
    one = GroupShapes.for_pool((1, 2, 4, 8), (256, 1024, 8192), 1)
    assert plan_groups(_need((0, 10), (7, 5000)), one, COST) == (KVGroup(0, 8, 8192),)


def test_the_estimated_cost_weighs_weights_against_kv(tiny_info):
    c = estimate_cost(tiny_info)
    assert c.fixed > c.per_slot > 0


def test_kv_groups_option_is_checked(tiny_workdir):
    from cli_helpers import one_clear_line, run

    for bad in (0, 3, True):
        with pytest.raises(InputError, match="kv_groups must be 1 or 2"):
            EngineConfig(kv_groups=bad)
    for verb in ("bench-serving", "serve"):
        assert "--kv-groups" in one_clear_line(run(verb, "-w", tiny_workdir.root, "--kv-groups", "3"))


LONG = "Speaker 0: " + " ".join(["a long opening line about rivers and stones"] * 7)
MIXED = [SpeechRequest("Speaker 1: short one.", seed=11, frames=12),
         SpeechRequest(LONG, seed=12, frames=8),
         SpeechRequest("Speaker 0: another short one", seed=13, frames=10),
         SpeechRequest("Speaker 1: and a third", seed=14, frames=6)]


def _run_mixed(synth, kv_groups: int):
    eng = Engine(synth, EngineConfig(max_streams=4, kv_groups=kv_groups))
    eng.start()
    try:
        handles = [eng.submit(r) for r in MIXED]
        audio = [np.concatenate([c.audio for c in h]) for h in handles]
        slots = [h.slot for h in handles]
        loop = eng.stepper.loop
        splits = eng.stepper.slot_stepper.split_steps
    finally:
        eng.stop()
    return audio, slots, loop, splits


def test_mixed_lengths_give_the_same_audio_with_and_without_groups(tiny_workdir):
    from vvtrt.runtime.synthesizer import Synthesizer

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    assert len(synth.plan_prompt(LONG).ids) > 256  # the long prompt alone needs the second KV bucket
    one, slots1, loop1, splits1 = _run_mixed(synth, 1)
    two, slots2, loop2, splits2 = _run_mixed(synth, 2)
    assert loop1.shapes.top == () and loop2.shapes.top == (1, 2)
    assert slots2[1] == 3 and slots1[1] != 3  # with groups the long prompt takes the highest slot
    assert splits1 == 0 and splits2 > 0  # ... and the short ones ran at their own KV bucket beside it
    assert [len(a) // 3200 for a in two] == [12, 8, 10, 6]
    for a, b in zip(one, two):
        assert a.shape == b.shape
        assert error_stats(torch.from_numpy(a), torch.from_numpy(b)).rel_l2 < 1e-4


def test_deterministic_runs_one_group(tiny_workdir):
    from vvtrt.runtime.synthesizer import Synthesizer

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    eng = Engine(synth, EngineConfig(max_streams=4, deterministic=True, kv_groups=2))
    eng.start()
    try:
        assert eng.stepper.kv_groups == 1 and eng.stepper.loop.shapes.top == ()
        assert eng.stepper.slot_stepper.cost is None
    finally:
        eng.stop()


@pytest.mark.gpu
def test_mixed_lengths_with_groups_on_cuda_graphs(tiny_workdir):
    """CUDA, bf16, every shape captured as a graph: the split step replays the groups' graphs and gives the
    one-group audio within bf16 rounding."""
    from vvtrt.runtime.synthesizer import Synthesizer

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="bf16")
    one, _, _, _ = _run_mixed(synth, 1)
    two, slots, loop, splits = _run_mixed(synth, 2)
    assert loop.capture_error is None and len(loop.graphs) == len(loop.shapes.all()) > len(loop.batch_buckets) * len(loop.kv_buckets)
    assert slots[1] == 3 and splits > 0
    for a, b in zip(one, two):
        assert error_stats(torch.from_numpy(a), torch.from_numpy(b)).rel_l2 < 0.05
