"""The Realtime runtime (batched windowed loop on static buffers, per-stream state, text arriving while
speech is produced) against our PyTorch reference loop, on the CPU with tiny-realtime in fp32; one GPU
test that captured CUDA graphs give the eager loop's audio."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from vvtrt.errors import InputError

TEXTS = ("Hello there, this is a test of streaming speech.", "Short one.", "Another voice speaks here, slowly!")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """tiny-realtime's ops are microseconds: one intra-op thread is several times faster than two on a
    busy 2-core machine (threads spin-wait for each other); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rt():
    from vvtrt.realtime.runtime import RealtimeRunner

    # small KV buckets: streams cross bucket boundaries mid-stream
    return RealtimeRunner.from_preset("tiny-realtime", kv_buckets=(32, 48, 64, 128))


@pytest.fixture(scope="module")
def voices(rt):
    from vvtrt.realtime.synthetic import make_voice

    return [make_voice(rt.model, f"v{i}", lm_len=lm, tts_len=tts, seed=i)
            for i, (lm, tts) in enumerate([(12, 30), (5, 21), (17, 40)])]


def _reference(rt, text, voice, noise=None, seed=0, **opts):
    from vvtrt.realtime.reference import LoopOptions, synthesize
    from vvtrt.realtime.text_feed import TextFeed

    r = synthesize(rt.model, voice, TextFeed(text, rt.tok), LoopOptions(**opts), noise, seed)
    return r.audio.numpy(), r.stop_reason


def _close(got: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> None:
    assert got.shape == ref.shape
    peak = float(np.abs(ref).max())
    assert peak > 1e-3  # real audio, not silence
    assert float(np.abs(got - ref).max()) <= tol * peak, float(np.abs(got - ref).max()) / peak


@pytest.mark.parametrize("solver", ["dpmsolver++", "sde-dpmsolver++"])
def test_stream_matches_the_reference_loop(rt, voices, solver):
    from vvtrt.realtime.reference import TensorNoise

    g = torch.Generator().manual_seed(3)
    noise = TensorNoise(torch.randn(16, 64, generator=g), torch.randn(16, 5, 64, generator=g))
    # injected noise and a forced EOS frame
    got = np.concatenate(list(rt.stream(TEXTS[0], voices[0], solver=solver, noise=noise, force_eos_frame=9)))
    assert rt.last_stop_reason == "forced_eos" and got.shape == (10 * 3200,) and got.dtype == np.float32
    ref, reason = _reference(rt, TEXTS[0], voices[0], noise, algorithm=solver, force_eos_frame=9)
    assert reason == "forced_eos"
    _close(got, ref)
    # the request's own seed draws what the reference's SeededNoise draws
    got = np.concatenate(list(rt.stream(TEXTS[0], voices[0], seed=11, solver=solver, max_frames=8)))
    ref, _ = _reference(rt, TEXTS[0], voices[0], seed=11, algorithm=solver, max_frames=8)
    _close(got, ref)


def test_batched_streams_equal_their_solo_runs(rt, voices):
    """Three streams (different texts, voices, seeds, frame caps) in two slots. Streams 0 and 1 start
    together; at frame 12 stream 0 has a 5-token window and stream 1 its last, 1-token one (two text
    steps in one tick); stream 2 joins when stream 1 ends, so its windows fall on other ticks."""
    caps = (14, 13, 12)
    reqs = [rt.request(TEXTS[i], voices[i], seed=20 + i, max_frames=caps[i], tag=i) for i in range(3)]
    results = rt.synthesize_many(reqs, max_streams=2)
    for i, res in enumerate(results):
        assert res["error"] is None and res["stop_reason"] == "max_frames" and res["frames"] == caps[i]
        solo = np.concatenate(list(rt.stream(TEXTS[i], voices[i], seed=20 + i, max_frames=caps[i])))
        _close(res["audio"], solo)
        ref, _ = _reference(rt, TEXTS[i], voices[i], seed=20 + i, max_frames=caps[i])
        _close(res["audio"], ref)
    assert not np.allclose(results[0]["audio"][:3200], results[1]["audio"][:3200])


def test_streams_with_different_cfg_scales_run_together(rt, voices):
    """Each slot keeps its own guidance scale: two streams that differ only in cfg_scale run in one batch
    and each gives its solo run's audio (and the reference loop's)."""
    scales = (1.5, 2.5)
    reqs = [rt.request(TEXTS[0], voices[0], seed=4, cfg_scale=c, max_frames=8, tag=c) for c in scales]
    results = rt.synthesize_many(reqs)
    for res, c in zip(results, scales):
        assert res["error"] is None and res["frames"] == 8
        solo = np.concatenate(list(rt.stream(TEXTS[0], voices[0], seed=4, cfg_scale=c, max_frames=8)))
        _close(res["audio"], solo)
        ref, _ = _reference(rt, TEXTS[0], voices[0], seed=4, cfg_scale=c, max_frames=8)
        _close(res["audio"], ref)
    assert not np.allclose(results[0]["audio"], results[1]["audio"])


def test_text_pieces_from_an_iterator_start_speech_before_the_text_ends(rt, voices):
    first_chunk = threading.Event()
    pulled = []

    def pieces():
        for p in ["  Hello th", "ere, this is", " a te"]:
            pulled.append(p)
            yield p
        assert first_chunk.wait(60), "the runtime waited for the whole text before speaking"
        for p in ["st of streaming ", "speech.  "]:
            pulled.append(p)
            yield p

    chunks = []
    for chunk in rt.stream(pieces(), voices[0], seed=5, max_frames=14):
        if not chunks:
            assert len(pulled) <= 3
            first_chunk.set()
        chunks.append(chunk)
    whole = np.concatenate(list(rt.stream(TEXTS[0], voices[0], seed=5, max_frames=14)))
    assert np.array_equal(np.concatenate(chunks), whole)


def test_async_text_pieces_give_the_same_audio(rt, voices):
    async def pieces():
        for p in ["Hello there, ", "this is a test", " of streaming speech."]:
            await asyncio.sleep(0.01)
            yield p

    async def run():
        return [c async for c in rt.astream(pieces(), voices[0], seed=5, max_frames=10)]

    got = np.concatenate(asyncio.run(run()))
    whole = np.concatenate(list(rt.stream(TEXTS[0], voices[0], seed=5, max_frames=10)))
    _close(got, whole)  # not bit-equal: the loop runs in a worker thread, with its own intra-op thread count


def test_a_stream_waiting_for_text_does_not_hold_up_the_others(rt, voices):
    release = threading.Event()

    def slow():
        yield "Hello "  # no whole word yet: no tokens, so no first window
        assert release.wait(60)
        yield "there, this is slow."

    reqs = [rt.request(slow(), voices[0], seed=1, max_frames=8, tag="slow"),
            rt.request(TEXTS[1], voices[1], seed=2, max_frames=12, tag="fast")]
    made = {"slow": [], "fast": []}
    for ev in rt.stream_many(reqs):
        if ev.audio is not None:
            made[ev.tag].append(ev.audio)
        if len(made["fast"]) == 6:
            assert made["slow"] == []
            release.set()
    assert len(made["slow"]) == 8 and len(made["fast"]) == 12
    solo = np.concatenate(list(rt.stream("Hello there, this is slow.", voices[0], seed=1, max_frames=8)))
    _close(np.concatenate(made["slow"]), solo)


def test_eos_and_the_position_limit_stop_streams(rt, voices):
    from vvtrt.realtime.synthetic import make_voice

    fc2 = rt.model.tts_eos_classifier.fc2.bias
    saved = fc2.clone()
    try:
        fc2.fill_(50.0)  # every frame says EOS: one chunk, then the end
        assert len(list(rt.stream(TEXTS[0], voices[0]))) == 1 and rt.last_stop_reason == "eos"
    finally:
        fc2.copy_(saved)
    context = rt.model.rt_config.context
    long = make_voice(rt.model, "long", lm_len=4, tts_len=context - 9, seed=2)
    chunks = list(rt.stream("Hi there", long))  # 9 ids: 5 + 4 positions, then 5 frames (as the reference)
    assert rt.last_stop_reason == "length" and len(chunks) == 5
    ref, reason = _reference(rt, "Hi there", long)
    assert reason == "length"
    _close(np.concatenate(chunks), ref)


def test_bad_requests_are_input_errors(rt, voices):
    with pytest.raises(InputError, match="empty"):
        list(rt.stream(iter(["  ", "\n"]), voices[0]))
    with pytest.raises(InputError, match="unknown sampler"):
        list(rt.stream("Hi.", voices[0], solver="euler"))
    with pytest.raises(InputError, match="share steps and solver"):
        list(rt.stream_many([rt.request("Hi.", voices[0]), rt.request("Ho.", voices[1], steps=3)]))
    with pytest.raises(InputError, match="voice file not found"):
        rt.request("Hi.", "/nonexistent/voice.safetensors")
    with pytest.raises(InputError, match="text pieces must be strings"):
        list(rt.stream(iter([b"bytes"]), voices[0]))
    # the runner is still usable afterwards
    assert len(list(rt.stream("Hi.", voices[0], max_frames=2))) == 2


@pytest.mark.gpu
def test_cuda_graphs_match_the_eager_loop():
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.synthetic import make_voice

    runs = {}
    for graphs in (False, True):
        rt = RealtimeRunner.from_preset("tiny-realtime", device="cuda", graphs=graphs, kv_buckets=(32, 64, 128))
        voice = make_voice(rt.model, "v", lm_len=12, tts_len=30, seed=1)
        reqs = [rt.request(TEXTS[i], voice, seed=i, max_frames=14) for i in range(2)]
        runs[graphs] = rt.synthesize_many(reqs)
        solo = np.concatenate(list(rt.stream(TEXTS[0], voice, seed=0, max_frames=14)))
        runs[graphs].append({"audio": solo})
        if graphs:
            loops = [s.loop for v in rt._free.values() for s in v]
            assert loops and all(lp.capture_error is None and lp.graphs for lp in loops)
    for eager, captured in zip(runs[False], runs[True]):
        _close(captured["audio"], eager["audio"], tol=1e-4)


@pytest.mark.parametrize("stochastic", [False, True])
def test_block_noise_draws_what_the_reference_draws(stochastic):
    from vvtrt.realtime.reference import SeededNoise
    from vvtrt.realtime.streams import BLOCK, FrameNoise

    ours, ref = FrameNoise(9, 64, 5, stochastic), SeededNoise(9, 64, 5, stochastic)
    for i in range(2 * BLOCK + 3):  # across block boundaries
        (n, s), (rn, rs) = ours.next(), ref.frame(i)
        assert np.array_equal(n, rn.numpy()) and (s is None) == (rs is None)
        assert s is None or np.array_equal(s, rs.numpy())


def test_benchmark_runs_on_the_cpu(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "realtime_bench.py"
    spec = importlib.util.spec_from_file_location("realtime_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--out", str(tmp_path), "--device", "cpu", "--preset", "tiny-realtime", "--dtype", "fp32",
                "--batches", "1,3", "--requests", "2", "--warmup", "1", "--ttfa-frames", "3", "--frames", "7",
                "--replays", "2", "--capacity", "256", "--voice-lm-len", "8", "--voice-tts-len", "24"])
    r = json.loads((tmp_path / "realtime_bench.json").read_text())
    assert len(r["ttfa"]["samples_ms"]) == 2 and r["ttfa"]["p50_ms"] > 0
    assert r["one_stream_step"]["speech_step_ms"] > 0 and r["one_stream_step"]["cuda_graphs"] is False
    assert [b["streams"] for b in r["batches"]] == [1, 3] and all(b["ticks"] == 7 for b in r["batches"])
    assert r["memory_one_stream"]["nvml_process_status"].startswith("not measured")
    assert r["environment"]["python"] and "| 3 |" in (tmp_path / "realtime_bench.md").read_text()
