"""The serving core with the long-form stepper on the tiny model (CPU): flow control (a slow reader is held,
not cancelled), admission that counts queued + running requests only, fault isolation (bad text, arming
and prefill failures end one request; failed steps end the runs in them and, repeated, turn the engine
unhealthy), free and held rows committing nothing, chunked prefill between frame steps, the deterministic
mode, and one generator at a time on a `Synthesizer`."""
from __future__ import annotations

import time

import numpy as np
import pytest

from vvtrt.errors import InputError, VvtrtError
from vvtrt.runtime.synthesizer import Synthesizer
from vvtrt.serving.api import EngineBusy, EngineNotReady, SpeechRequest
from vvtrt.serving.config import EngineConfig
from vvtrt.serving.engine import Engine

SHORT = SpeechRequest("Speaker 1: Hello there.", seed=1, frames=6)
LONG_TEXT = "Speaker 1: " + " ".join(["a long prompt keeps the prefill busy for several chunks"] * 5)


@pytest.fixture(scope="module")
def synth(tiny_workdir):
    return Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")


def _engine(synth, **cfg) -> Engine:
    eng = Engine(synth, EngineConfig(**{"max_streams": 4, **cfg}))
    eng.start()
    return eng


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _audio(handle) -> np.ndarray:
    return np.concatenate([c.audio for c in handle])


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_paced_reader_is_held_and_receives_every_frame(synth, pipeline):
    eng = _engine(synth, buffer_chunks=3, deterministic=True, pipeline=pipeline)
    try:
        want = _audio(eng.submit(SpeechRequest("Speaker 1: read me slowly", seed=4, frames=40)))
        handle = eng.submit(SpeechRequest("Speaker 1: read me slowly", seed=4, frames=40))
        # three chunks ahead of a reader that has not started; pipelined, the step already launched adds one
        _wait(lambda: eng.stats().held == 1 and handle.buffered() == 3 + pipeline)
        time.sleep(0.3)  # and no more come while it is held
        assert handle.buffered() == 3 + pipeline and not handle.done() and eng.stats().held == 1
        got = []
        for chunk in handle:
            got.append(chunk.audio)
            time.sleep(0.005)
        assert handle.summary().stop_reason == "frame budget"
        assert np.array_equal(np.concatenate(got), want)  # held rows resume exactly where they stopped
    finally:
        eng.stop()


def test_admission_takes_a_burst_the_slots_hold_and_counts_only_live_requests(synth):
    eng = _engine(synth, max_streams=4, max_queue=0)
    try:
        burst = [eng.submit(SpeechRequest("Speaker 1: burst", seed=i, frames=30)) for i in range(4)]
        with pytest.raises(EngineBusy):
            eng.submit(SHORT)
        for h in burst:  # ended in the engine; nobody read them: the count is free again
            _wait(h.done)
        assert eng.in_flight() == 0
        assert len(_audio(eng.submit(SHORT))) == 6 * 3200
    finally:
        eng.stop()


def test_bad_text_is_refused_at_submit_and_a_running_stream_is_untouched(synth):
    eng = _engine(synth, deterministic=True)
    try:
        want = _audio(eng.submit(SHORT))
        running = eng.submit(SHORT)
        with pytest.raises(InputError, match="not valid Unicode"):
            eng.submit(SpeechRequest("Speaker 1: \ud800 broken", frames=3))
        assert np.array_equal(_audio(running), want)
    finally:
        eng.stop()


def test_an_arming_failure_ends_its_request_alone(synth, monkeypatch):
    eng = _engine(synth, deterministic=True)
    try:
        want = _audio(eng.submit(SHORT))
        real = synth.embed_prompt

        def embed(plan, seed=0):
            if seed == 666:
                raise RuntimeError("injected arming failure")
            return real(plan, seed)

        monkeypatch.setattr(synth, "embed_prompt", embed)
        running = eng.submit(SHORT)
        doomed = eng.submit(SpeechRequest("Speaker 1: doomed", seed=666, frames=3))
        with pytest.raises(VvtrtError, match="injected arming failure"):
            _audio(doomed)
        assert np.array_equal(_audio(running), want) and eng.ready
    finally:
        eng.stop()


def test_repeated_step_failures_end_streams_as_errors_and_turn_the_engine_unhealthy(synth, monkeypatch):
    eng = _engine(synth, max_step_failures=2)
    try:
        monkeypatch.setattr(eng.stepper.loop, "step", lambda: (_ for _ in ()).throw(RuntimeError("injected")))
        for _ in range(2):
            h = eng.submit(SHORT)
            with pytest.raises(VvtrtError, match="device step failed"):
                _audio(h)
            assert h.summary().stop_reason == "error: RuntimeError"
        assert not eng.ready and not eng.stats().healthy and eng.stats().step_failures == 2
        with pytest.raises(EngineNotReady, match="unhealthy"):
            eng.submit(SHORT)
    finally:
        eng.stop(grace_s=0)


@pytest.mark.parametrize("pipeline", [False, True])
def test_free_and_held_rows_never_exceed_the_step_bucket(synth, pipeline):
    """A long request leaves a middle slot while short ones run around it in the 256 bucket: the freed
    rows are zeroed, so no row's length reaches past the bucket a step runs with (also with each step
    launched before the last one is read)."""
    eng = _engine(synth, max_streams=3, buffer_chunks=2, stall_timeout_s=600, pipeline=pipeline)
    loop = eng.stepper.loop
    seen: list[tuple[int, int]] = []
    real_step = loop.step

    def recording_step():
        seen.append((int(loop.kv.lengths.max()), loop.kv.capacity))
        real_step()

    loop.step = recording_step
    try:
        a = eng.submit(SpeechRequest("Speaker 1: first", seed=1, frames=120))
        long = eng.submit(SpeechRequest("Speaker 1: long one", seed=2, frames=260))
        c = eng.submit(SpeechRequest("Speaker 1: third", seed=3, frames=120))
        assert len(_audio(long)) == 260 * 3200  # a and c are held (never read) meanwhile
        assert len(_audio(a)) == 120 * 3200 and len(_audio(c)) == 120 * 3200
    finally:
        eng.stop()
    assert seen and all(length < cap for length, cap in seen), max(seen)
    assert any(cap == 1024 for _, cap in seen) and any(cap == 256 for _, cap in seen)


def test_a_long_prompt_is_prefilled_in_chunks_between_steps(synth):
    eng = _engine(synth, deterministic=True)
    chunk = synth.options.prefill_chunk
    try:
        running = eng.submit(SpeechRequest("Speaker 1: keep talking", seed=5, frames=60))
        it = iter(running)
        next(it)
        eng.iterations = []
        long = eng.submit(SpeechRequest(LONG_TEXT, seed=6, frames=2))
        assert len(_audio(long)) == 2 * 3200
        rest = list(it)
        record, eng.iterations = eng.iterations, None
    finally:
        eng.stop()
    assert len(rest) == 59
    prefilling = [tokens for tokens, stepped in record if tokens]
    assert len(prefilling) >= 3  # the long prompt took several iterations, a step after each
    assert all(tokens <= chunk for tokens, stepped in record if stepped)


def test_two_generators_on_one_synthesizer_are_refused(synth):
    first = synth.stream("Speaker 1: one", frames=3)
    next(first)
    with pytest.raises(InputError, match="already generating"):
        next(synth.stream("Speaker 1: two", frames=3))
    assert len(list(first)) == 2
    assert len(list(synth.stream("Speaker 1: three", frames=2))) == 2  # free again


def test_a_burst_of_short_prompts_is_prefilled_in_one_batched_call(synth, monkeypatch):
    """Default mode: prompts that arrive together share one prefill call; each request's audio equals its
    solo run up to the batched GEMMs' rounding (the bound of the default mode)."""
    import torch

    from vvtrt.parity.compare import error_stats

    reqs = [SpeechRequest(f"Speaker 1: burst number {i} " + "word " * (3 * i), seed=i, frames=5) for i in range(4)]
    eng = _engine(synth, deterministic=True)
    try:
        solo = [_audio(eng.submit(r)) for r in reqs]
    finally:
        eng.stop()
    sizes = []
    real = synth.prefill.first_many
    monkeypatch.setattr(synth.prefill, "first_many", lambda bodies: sizes.append(len(bodies)) or real(bodies))
    eng = _engine(synth)
    try:
        handles = eng._call(lambda: [eng.submit(r) for r in reqs])  # queued together, admitted together
        got = [_audio(h) for h in handles]
    finally:
        eng.stop()
    assert sizes == [4]
    for a, b in zip(got, solo):
        assert len(a) == len(b) and error_stats(torch.from_numpy(a), torch.from_numpy(b)).rel_l2 < 1e-4


def test_a_burst_arriving_at_an_idle_engine_starts_in_one_step(synth, monkeypatch):
    """Two requests queued together at an idle engine, then two more a few milliseconds apart: all four are
    prefilled in one call and take their first step together (the settle window is widened here so that a
    slow CI machine cannot split them)."""
    import dataclasses

    sizes = []
    real = synth.prefill.first_many
    monkeypatch.setattr(synth.prefill, "first_many", lambda bodies: sizes.append(len(bodies)) or real(bodies))
    eng = _engine(synth)
    eng.limits = dataclasses.replace(eng.limits, burst_settle_s=0.25, burst_wait_s=5.0)
    try:
        eng.iterations = []
        reqs = [SpeechRequest(f"Speaker 1: arrival {i}", seed=i, frames=3) for i in range(4)]
        handles = eng._call(lambda: [eng.submit(r) for r in reqs[:2]])  # the engine sees both at once
        for r in reqs[2:]:
            time.sleep(0.005)
            handles.append(eng.submit(r))
        for h in handles:
            assert len(_audio(h)) == 3 * 3200
        record, eng.iterations = eng.iterations, None
    finally:
        eng.stop()
    assert sizes == [4]
    assert [stepped for _, stepped in record if stepped][0] == 4


def test_a_pipelined_step_gives_each_request_its_solo_audio(synth):
    """Steps launched before the last one is read: requests of different lengths, joining and ending at
    different steps, one cancelled midway (its slot reused at once), each give their solo audio bit for bit
    (fixed shapes), which is the plain step's audio; a pipelined step needs device noise."""
    reqs = [SpeechRequest(f"Speaker 1: pipelined number {i}", seed=20 + i, frames=5 + 3 * i) for i in range(4)]
    late = SpeechRequest("Speaker 1: the late one", seed=30, frames=7)
    plain = _engine(synth, max_streams=4, deterministic=True)
    try:
        plain_solo = [_audio(plain.submit(r)) for r in (*reqs, late)]
    finally:
        plain.stop()
    eng = _engine(synth, max_streams=4, deterministic=True, pipeline=True)
    try:
        solo = [_audio(eng.submit(r)) for r in (*reqs, late)]  # one at a time, each in slot 0
        handles = [eng.submit(r) for r in reqs]
        doomed = eng.submit(SpeechRequest("Speaker 1: cancelled", seed=40, frames=50))  # queued: no free slot
        first = next(iter(handles[0]))
        _wait(lambda: doomed.summary().started_t > 0)
        doomed.cancel()
        tail = eng.submit(late)  # takes the cancelled request's slot
        got = [np.concatenate([first.audio, _audio(handles[0])]), *(_audio(h) for h in handles[1:]), _audio(tail)]
    finally:
        eng.stop()
    for i, (a, b, c) in enumerate(zip(got, solo, plain_solo)):
        assert np.array_equal(a, b) and np.array_equal(b, c), i
    with pytest.raises(InputError, match="noise"):
        EngineConfig(pipeline=True, noise="host")
