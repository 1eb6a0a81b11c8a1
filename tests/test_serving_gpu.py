"""GPU tier (marked `gpu`): the serving engine on CUDA with graphs per (batch, KV) bucket, bf16. With one
fixed shape, interleaved requests equal their solo runs bit for bit; with per-bucket shapes a request's
numbers change only by batch-size-dependent GEMM rounding: measured here and bounded (the measured figure
is printed and, with VVTRT_SERVING_BOUND_OUT=FILE, written as JSON). The step's device noise, drawn inside
the captured graph, is the CPU generator's."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from vvtrt.parity.compare import error_stats
from vvtrt.runtime.synthesizer import Synthesizer
from vvtrt.serving.api import SpeechRequest
from vvtrt.serving.config import EngineConfig
from vvtrt.serving.engine import Engine

pytestmark = pytest.mark.gpu
SCRIPTED = ("speech_diffusion",) * 4 + ("speech_end", "speech_start") + ("speech_diffusion",) * 4 + ("eos",)
REQUESTS = [SpeechRequest(f"Speaker 1: request number {i} " + "word " * (5 * i), seed=i, cfg_scale=1.0 + 0.25 * i,
                          frames=12 + 3 * i) for i in range(5)] + [
    SpeechRequest("Speaker 1: scripted", seed=11, cfg_scale=1.3, decisions=SCRIPTED)]
BF16_BOUND = 0.05  # rel-L2 of a whole request's audio, interleaved vs solo, tiny model, bf16


@pytest.fixture(scope="module")
def synth(tiny_workdir):
    return Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="bf16")


def _run(synth, **cfg):
    eng = Engine(synth, EngineConfig(max_streams=8, **cfg))
    eng.start()
    try:
        assert eng.stepper.loop.capture_error is None, eng.stepper.loop.capture_error
        assert len(eng.stepper.loop.graphs) == len(eng.stepper.loop.shapes.all())  # buckets and KV groups
        solo = [np.concatenate([c.audio for c in eng.submit(r)]) for r in REQUESTS]
        first = eng.submit(REQUESTS[0])
        it = iter(first)
        head = [next(it).audio for _ in range(4)]
        rest = [eng.submit(r) for r in REQUESTS[1:]]
        mixed = [np.concatenate(head + [c.audio for c in it])] + [np.concatenate([c.audio for c in h]) for h in rest]
    finally:
        eng.stop()
    return solo, mixed, eng.plan


def test_fixed_shape_interleaving_is_bit_exact_on_cuda(synth):
    """The deterministic mode: full-pool shapes and every prompt prefilled alone (by default, prompts that
    arrive together are prefilled packed, within the bound below)."""
    solo, mixed, _ = _run(synth, deterministic=True)
    for a, b in zip(mixed, solo):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_bucketed_interleaving_bound_bf16(synth):
    solo, mixed, plan = _run(synth)
    assert plan.batch_buckets == (1, 2, 4, 8)
    errs = [error_stats(torch.from_numpy(a), torch.from_numpy(b)).rel_l2 for a, b in zip(mixed, solo)]
    exact = sum(np.array_equal(a, b) for a, b in zip(mixed, solo))
    print(f"interleaved vs solo (bf16, buckets {plan.batch_buckets} x {plan.kv_buckets}): "
          f"max rel-L2 {max(errs):.3g}, {exact}/{len(errs)} bit-exact")
    out = os.environ.get("VVTRT_SERVING_BOUND_OUT")
    if out:
        from vvtrt.fsio import atomic_write_json
        from vvtrt.reports.environment import collect_environment

        atomic_write_json(out, {"rel_l2": errs, "bit_exact": exact, "device": torch.cuda.get_device_name(),
                                "batch_buckets": plan.batch_buckets, "kv_buckets": plan.kv_buckets,
                                "environment": collect_environment()})  # commit and device of the run
    assert all(a.shape == b.shape for a, b in zip(mixed, solo))
    assert max(errs) < BF16_BOUND


def test_the_captured_step_draws_the_cpu_generators_noise(synth):
    """The default device noise inside the CUDA graph of the step: after a request's last frame, its slot's
    noise buffer holds `frame_normals(seed, 5)` of the CPU (the draw of the step that made frame 5) and its
    counters say 6 frames in 6 steps."""
    from vvtrt.runtime.noise import frame_normals
    from vvtrt.runtime.slot_state import FRAME, STEPS

    eng = Engine(synth, EngineConfig(max_streams=4, batch_buckets=(), kv_buckets=()))
    eng.start()
    try:
        loop = eng.stepper.loop
        assert loop.device_noise and loop.capture_error is None and len(loop.graphs) == 1
        h = eng.submit(SpeechRequest("Speaker 1: graph noise", seed=123, frames=6))
        assert len([c for c in h]) == 6 and h.slot == 0
        torch.cuda.synchronize()
        noise, state = loop.all["noise"][0].cpu(), loop.all["state"][0].cpu()
    finally:
        eng.stop()
    want = frame_normals(torch.tensor([123]), torch.tensor([5]), noise.shape[-1])[0]
    torch.testing.assert_close(noise, want, rtol=2 ** -22, atol=2 ** -22)
    assert int(state[FRAME]) == 6 and int(state[STEPS]) == 6
