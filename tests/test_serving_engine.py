"""The serving engine on the tiny model (CPU): independent requests interleaved in one batched frame step
reproduce their solo runs bit for bit (torch and ONNX Runtime; the device noise of each request's own seed),
the host-noise option matches the single-request Synthesizer, join/leave/cancel, slot reuse, a slow reader
that cannot stall the others, the memory refusal, the async iterator and shutdown."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from vvtrt.errors import InputError
from vvtrt.parity.compare import error_stats
from vvtrt.runtime.synthesizer import Synthesizer
from vvtrt.serving.api import (CapacityError, Cancelled, EngineBusy, EngineNotReady, SlowReader, SpeechRequest)
from vvtrt.serving.config import EngineConfig
from vvtrt.serving.engine import Engine

SCRIPTED = ("speech_diffusion",) * 3 + ("speech_end", "speech_start") + ("speech_diffusion",) * 2 + ("eos",)
REQUESTS = [
    SpeechRequest("Speaker 1: Hello there.", seed=1, cfg_scale=1.3, frames=6),
    SpeechRequest("Speaker 0: a much longer script about many things, going on and on.", seed=2, cfg_scale=2.0,
                  frames=9),
    SpeechRequest("Speaker 1: third one", seed=3, cfg_scale=1.0, decisions=SCRIPTED),  # its own resets
    SpeechRequest("Speaker 1: four", seed=4, cfg_scale=1.5, frames=4),
]
# every step runs the full pool (the same kernels for all) and every prompt is prefilled alone: the bit-exact
# mode (by default prompts arriving together are prefilled packed, equal to their solo prefill up to rounding)
FIXED = {"deterministic": True}


@pytest.fixture(scope="module")
def synths(tiny_workdir):
    return {b: Synthesizer.from_workdir(tiny_workdir.root, backend=b, device="cpu", precision="fp32")
            for b in ("torch", "onnxruntime")}


def _engine(synth, **cfg) -> Engine:
    eng = Engine(synth, EngineConfig(**{"max_streams": 4, **cfg}))
    eng.start()
    return eng


def _audio(handle) -> np.ndarray:
    return np.concatenate([c.audio for c in handle])


def _interleaved(eng) -> list[np.ndarray]:
    """Two requests, then two more once the first has made 3 frames: all four run in different slots."""
    first, second = eng.submit(REQUESTS[0]), eng.submit(REQUESTS[1])
    it = iter(first)
    head = [next(it).audio for _ in range(3)]
    late = [eng.submit(r) for r in REQUESTS[2:]]
    return [np.concatenate(head + [c.audio for c in it])] + [_audio(h) for h in [second] + late]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_interleaved_requests_equal_their_solo_runs_bit_for_bit(synths, backend):
    eng = _engine(synths[backend], **FIXED)
    try:
        solo = [_audio(eng.submit(r)) for r in REQUESTS]  # one at a time, each in slot 0
        mixed = _interleaved(eng)
        stats = eng.stats()
    finally:
        eng.stop()
    assert [len(a) // 3200 for a in solo] == [6, 9, 5, 4]
    for a, b in zip(mixed, solo):
        assert np.array_equal(a, b)
    assert error_stats(torch.from_numpy(mixed[3]), torch.from_numpy(mixed[0][:len(mixed[3])])).rel_l2 > 0.1
    assert stats.frames_total == 2 * 24 and stats.requests_by_outcome == {"frame budget": 6, "eos": 2}


def test_batch_buckets_and_the_synthesizer_agree_within_rounding(synths):
    """With per-bucket shapes (1, 2, 4 slots; KV 256/1024) a request's numbers may change by GEMM
    rounding with the batch size only; with the host noise, the single-request Synthesizer (same step, one
    slot, the same generator draws) agrees too."""
    synth = synths["torch"]
    eng = _engine(synth, noise="host")
    try:
        assert eng.plan.batch_buckets == (1, 2, 4) and eng.plan.kv_buckets == (256, 1024)
        mixed = _interleaved(eng)
    finally:
        eng.stop()
    for r, got in zip(REQUESTS, mixed):
        ids, emb = synth.prompt_embeds(r.script, seed=r.seed)
        want = np.concatenate(list(synth.generate(ids, emb, frames=r.frames, cfg_scale=r.cfg_scale, seed=r.seed,
                                                  decisions=r.decisions)))
        assert error_stats(torch.from_numpy(got), torch.from_numpy(want)).rel_l2 < 1e-4


def test_device_noise_is_the_requests_own_and_not_the_synthesizers(synths):
    """The default device noise: a request alone (slot 0) and among three others (slot 3, joined last) gives the
    same audio bit for bit, and a different seed changes it; it is not the host generator's noise."""
    synth = synths["torch"]
    r = SpeechRequest("Speaker 1: my own noise", seed=77, frames=5)
    eng = _engine(synth, **FIXED)
    try:
        assert eng.config.noise == "device" and eng.stepper.loop.device_noise
        alone = _audio(eng.submit(r))
        others = [eng.submit(SpeechRequest(f"Speaker 0: neighbour {i}", seed=i, frames=30)) for i in range(3)]
        mine = eng.submit(r)
        mixed = _audio(mine)
        assert mine.slot == 3 and all(len(_audio(h)) == 30 * 3200 for h in others)
        other_seed = _audio(eng.submit(SpeechRequest(r.script, seed=78, frames=5)))
    finally:
        eng.stop()
    assert np.array_equal(alone, mixed)
    assert error_stats(torch.from_numpy(other_seed), torch.from_numpy(alone)).rel_l2 > 0.1
    ids, emb = synth.prompt_embeds(r.script, seed=r.seed)
    host = np.concatenate(list(synth.generate(ids, emb, frames=5, seed=r.seed)))
    assert error_stats(torch.from_numpy(host), torch.from_numpy(alone)).rel_l2 > 0.1


def test_noise_option_is_checked():
    with pytest.raises(InputError, match="noise must be one of host, device"):
        EngineConfig(noise="gpu")


def test_cancel_frees_the_slot_and_reuse_is_clean(synths):
    eng = _engine(synths["torch"], **FIXED)
    try:
        want = _audio(eng.submit(REQUESTS[3]))
        long = eng.submit(SpeechRequest("Speaker 1: cancel me", seed=9, frames=40))
        other = eng.submit(REQUESTS[0])
        it = iter(long)
        next(it), next(it)
        slot = long.slot
        long.cancel()
        with pytest.raises(Cancelled):
            next(it)
        assert long.done() and long.summary().stop_reason == "cancelled" and long.summary().frames >= 2
        again = eng.submit(REQUESTS[3])  # lands in the freed slot, whose cache and states were reset
        got = _audio(again)
        assert again.slot == slot and np.array_equal(got, want)
        assert len(_audio(other)) == 6 * 3200
    finally:
        eng.stop()


def test_a_stalled_reader_is_held_then_cancelled_without_stalling_the_others(synths):
    eng = _engine(synths["torch"], buffer_chunks=2, stall_timeout_s=1.0, **FIXED)
    try:
        want = _audio(eng.submit(REQUESTS[1]))
        stuck = eng.submit(SpeechRequest("Speaker 1: nobody reads me", seed=5, frames=30))
        got = _audio(eng.submit(REQUESTS[1]))  # runs to the end while `stuck` is held, never read
        assert np.array_equal(got, want)
        assert stuck.buffered() == 2 and not stuck.done()  # held: a full buffer, nothing lost
        deadline = time.monotonic() + 30
        while not stuck.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        it = iter(stuck)
        assert [c.index for c in (next(it), next(it))] == [0, 1]  # what was buffered, then the error
        with pytest.raises(SlowReader, match="took no audio"):
            next(it)
        assert stuck.summary().stop_reason == "cancelled: slow reader"
    finally:
        eng.stop()


def test_async_iteration(synths):
    eng = _engine(synths["torch"], **FIXED)

    async def read(handle):
        return [c async for c in handle]

    try:
        want = _audio(eng.submit(REQUESTS[0]))
        chunks = asyncio.run(read(eng.submit(REQUESTS[0])))
    finally:
        eng.stop()
    assert [c.index for c in chunks] == list(range(6)) and np.array_equal(np.concatenate([c.audio for c in chunks]),
                                                                           want)


def test_refusals_are_typed(synths, tiny_workdir):
    synth = synths["torch"]
    with pytest.raises(CapacityError, match="does not fit"):
        _engine(synth, max_pool_gib=1e-6)
    eng = Engine(synth, EngineConfig(max_streams=1, max_queue=1, max_context=256))
    with pytest.raises(EngineNotReady):
        eng.submit(REQUESTS[0])
    eng.start()
    try:
        assert eng.plan.slots == 1 and eng.plan.kv_len == 256
        with pytest.raises(CapacityError, match="KV slots"):
            eng.submit(SpeechRequest("Speaker 1: hi", frames=100))  # the prompt alone is ~170 tokens
        for bad, match in [({"frames": 0}, "frames"), ({"cfg_scale": float("nan")}, "--cfg"),
                           ({"voices": (np.zeros(10),)}, "silent|voice"), ({"script": "  "}, "empty")]:
            with pytest.raises(InputError, match=match):
                eng.submit(SpeechRequest(**{"script": "Speaker 1: hi", "frames": 2, **bad}))
        busy = []
        handles = []
        for _ in range(3):
            try:
                handles.append(eng.submit(SpeechRequest("Speaker 1: hi", frames=40)))
            except EngineBusy:
                busy.append(1)
        assert busy  # one slot and a queue of one cannot take three long requests
    finally:
        eng.stop(grace_s=0)
    assert all(h.done() for h in handles)
    with pytest.raises(Cancelled, match="shut down"):
        for _ in handles[-1]:
            pass
    with pytest.raises(EngineNotReady):
        eng.submit(REQUESTS[0])


def test_pool_is_sized_from_the_memory_budget(synths):
    from vvtrt.runtime.kv_cache import kv_bytes_per_row

    synth = synths["torch"]
    per_slot = 2 * kv_bytes_per_row(synth.info, 1024, 4)
    eng = _engine(synth, max_streams=8, max_pool_gib=3.5 * per_slot / (1 << 30))
    try:
        assert eng.plan.slots == 3 and eng.stats().max_streams == 3
        assert eng.stepper.loop.cache.k.shape[1] == 6
    finally:
        eng.stop()
