"""Realtime serving: `RealtimeEngine` (many requests on one loop, each giving its solo audio; cancellation,
the bounded queue, slow readers) and `vvtrt serve` on a tiny-realtime work dir (POST speech, the demo's WS
protocol, the WS text mode feeding one request), on the CPU in fp32."""
from __future__ import annotations

import asyncio
import io
import json
import time
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
import torch

from realtime_fixtures import one_torch_thread, rt, three_voices  # noqa: F401 - fixtures
from server_fixtures import start_server, wait_until, ws_session

TEXTS = ("Hello there, this is a test of streaming speech.", "Short one.", "Another voice speaks here, slowly!",
         "A fourth request waits for a free slot.")
FRAME_BYTES = 3200 * 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def voices(rt):
    return {v.name: v for v in three_voices(rt.model)}


def _engine(rt, voices, **config):
    from vvtrt.realtime.engine import RealtimeEngine, RealtimeEngineConfig

    eng = RealtimeEngine(rt, RealtimeEngineConfig(**{"max_streams": 3, **config}), voices)
    eng.start()
    return eng


@pytest.fixture(scope="module")
def engine(rt, voices):
    eng = _engine(rt, voices)
    yield eng
    eng.stop()


def _audio(handle) -> np.ndarray:
    return np.concatenate([c.audio for c in handle])


def test_interleaved_requests_equal_their_solo_runs(engine):
    from vvtrt.realtime.engine import RealtimeSpeechRequest, TextInput

    reqs = [RealtimeSpeechRequest(TEXTS[i], f"v{i % 3}", seed=20 + i, max_frames=14 - i) for i in range(4)]
    pieces = TextInput()  # the first one's text arrives in pieces while the others speak
    handles = [engine.submit(RealtimeSpeechRequest(pieces, "v0", seed=20, max_frames=14))]
    handles += [engine.submit(r) for r in reqs[1:]]  # 3 slots: the fourth waits for one
    for p in ["Hello th", "ere, this is", " a test of streaming", " speech."]:
        pieces.push(p)
        time.sleep(0.02)
    pieces.close()
    together = [_audio(h) for h in handles]
    for i, r in enumerate(reqs):
        assert handles[i].summary().stop_reason == "max_frames" and len(together[i]) == (14 - i) * 3200
        solo = _audio(engine.submit(r))
        assert np.array_equal(together[i], solo), i
    assert not np.allclose(together[0][:3200], together[1][:3200])
    stats = engine.stats()
    assert stats.active == 0 and stats.frames_total >= 2 * sum(14 - i for i in range(4))
    assert stats.prefill_tokens_total > 0 and stats.requests_by_outcome["max_frames"] >= 8


def test_an_arming_failure_or_bad_text_ends_one_request_alone(engine, voices, monkeypatch):
    from vvtrt.errors import InputError, VvtrtError
    from vvtrt.realtime.engine import RealtimeSpeechRequest, TextInput

    req = RealtimeSpeechRequest(TEXTS[0], "v0", seed=31, max_frames=12)
    want = _audio(engine.submit(req))
    loop = engine.stepper.loop
    real = loop.reset_slots

    def reset_slots(slots, voice, cfg_scales, rows):  # streams of one voice armed together, or one retried alone
        if voice is engine.stepper.inner._voices.get(id(voices["v2"]), (None, None))[1]:
            raise RuntimeError("injected arming failure")
        return real(slots, voice, cfg_scales, rows)

    monkeypatch.setattr(loop, "reset_slots", reset_slots)
    running = engine.submit(req)
    doomed = engine.submit(RealtimeSpeechRequest(TEXTS[2], "v2", seed=32, max_frames=5))
    with pytest.raises(InputError, match="not valid Unicode"):
        engine.submit(RealtimeSpeechRequest("broken \ud800 text", "v1"))
    pieces = TextInput()
    with pytest.raises(InputError, match="not valid Unicode"):
        pieces.push("broken \ud800 piece")
    with pytest.raises(VvtrtError, match="injected arming failure"):
        _audio(doomed)
    assert np.array_equal(_audio(running), want) and engine.ready


def test_requests_with_different_cfg_scales_run_together(engine):
    """A request with another cfg_scale joins the running ones at once (each slot keeps its own scale)
    and each gives its solo audio: the first one gets no text until the second has started."""
    from vvtrt.realtime.engine import RealtimeSpeechRequest, TextInput

    pieces = TextInput()
    first = engine.submit(RealtimeSpeechRequest(pieces, "v0", seed=8, cfg_scale=1.5, max_frames=8))
    wait_until(lambda: first.summary().started_t > 0, 30, "the first request's start")
    second_req = RealtimeSpeechRequest(TEXTS[1], "v1", seed=9, cfg_scale=3.0, max_frames=8)
    second = engine.submit(second_req)
    wait_until(lambda: second.summary().started_t > 0, 30, "the second request's start beside the first")
    pieces.push(TEXTS[0])
    pieces.close()
    together = [_audio(first), _audio(second)]
    solos = [_audio(engine.submit(RealtimeSpeechRequest(TEXTS[0], "v0", seed=8, cfg_scale=1.5, max_frames=8))),
             _audio(engine.submit(second_req))]
    for got, solo in zip(together, solos):
        assert len(got) == 8 * 3200 and np.array_equal(got, solo)


def test_cancel_frees_the_slot_and_the_queue_is_bounded(rt, voices):
    from vvtrt.realtime.engine import RealtimeSpeechRequest
    from vvtrt.serving.api import Cancelled, EngineBusy, EngineNotReady

    eng = _engine(rt, voices, max_streams=1, max_queue=1)
    try:
        endless = eng.submit(RealtimeSpeechRequest(TEXTS[0], "v0", seed=1))  # random weights: no EOS
        it = iter(endless)
        next(it)
        queued = eng.submit(RealtimeSpeechRequest(TEXTS[1], "v1", seed=2, max_frames=3))
        with pytest.raises(EngineBusy):
            eng.submit(RealtimeSpeechRequest(TEXTS[1], "v1", seed=3, max_frames=3))
        assert eng.stats().queued == 1 and not queued.summary().started_t
        endless.cancel()
        with pytest.raises(Cancelled):
            list(it)
        assert len(_audio(queued)) == 3 * 3200 and queued.summary().stop_reason == "max_frames"
        assert endless.summary().stop_reason == "cancelled" and eng.stats().requests_by_outcome.get("cancelled") == 1
        waiting_cancelled = eng.submit(RealtimeSpeechRequest(TEXTS[1], "v1", seed=4))
        waiting_cancelled.cancel()  # cancelled anywhere: never runs
        assert waiting_cancelled.done()
    finally:
        eng.stop(grace_s=0)
    with pytest.raises(EngineNotReady):
        eng.submit(RealtimeSpeechRequest(TEXTS[1], "v1"))


def test_a_stalled_reader_is_held_then_cancelled_without_stalling_another_stream(rt, voices):
    from vvtrt.realtime.engine import RealtimeSpeechRequest
    from vvtrt.serving.api import SlowReader

    eng = _engine(rt, voices, buffer_chunks=4, stall_timeout_s=1.0)
    try:
        slow = eng.submit(RealtimeSpeechRequest(TEXTS[0], "v0", seed=5, max_frames=30))
        fast_req = RealtimeSpeechRequest(TEXTS[2], "v2", seed=6, max_frames=20)
        fast = _audio(eng.submit(fast_req))  # read at once while nobody reads `slow`
        assert len(fast) == 20 * 3200
        wait_until(slow.done, 30, "the slow reader's cancellation")
        got = []
        with pytest.raises(SlowReader):
            for chunk in slow:
                got.append(chunk)
        assert len(got) == 4 and slow.summary().stop_reason == "cancelled: slow reader"
        assert np.array_equal(fast, _audio(eng.submit(fast_req)))
    finally:
        eng.stop()


def test_bad_requests_are_input_errors(engine, rt):
    from vvtrt.errors import InputError
    from vvtrt.realtime.engine import RealtimeSpeechRequest
    from vvtrt.realtime.synthetic import make_voice

    for bad, match in ((RealtimeSpeechRequest("  "), "empty"), (RealtimeSpeechRequest("Hi", "nope"), "unknown voice"),
                       (RealtimeSpeechRequest("Hi", seed=-1), "seed"), (RealtimeSpeechRequest("Hi", max_frames=0), "max_frames"),
                       (RealtimeSpeechRequest("Hi", cfg_scale=float("nan")), "cfg"),
                       (RealtimeSpeechRequest("Hi", make_voice(rt.model, "big", lm_len=8, tts_len=300)), "cache positions")):
        with pytest.raises(InputError, match=match):
            engine.submit(bad)
    with pytest.raises(InputError, match="empty"):  # text that turns out empty fails its own request only
        list(engine.submit(RealtimeSpeechRequest(iter([" ", "\n"]), max_frames=2)))
    with pytest.raises(InputError, match="presets"):
        engine.encode_voice(np.zeros(24000, np.float32))


# -- the server ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vvtrt serve` on a Realtime work dir of tiny-realtime (torch backend: workdir.json is all it reads),
    no --voices: the synthetic default voice."""
    from vvtrt.model.resolve import ModelSource
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.workdir import Workdir

    tmp = tmp_path_factory.mktemp("rt_serve")
    cfg = preset_config("tiny-realtime")
    Workdir.create(tmp / "wd").write_meta(ModelSource(preset="tiny-realtime"), RealtimeExportOptions.for_config(cfg), cfg)
    srv = start_server(tmp / "wd", tmp, "--max-streams", 2, "--max-queue", 2, env={"OMP_NUM_THREADS": "1"})
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


def _post(srv, **body):
    return httpx.post(srv.url + "/v1/audio/speech", json=body, timeout=120)


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def test_speech_whole_and_streamed(server):
    import soundfile as sf

    r = _post(server, input=TEXTS[0], max_frames=7, seed=3, stream=False)  # the whole file, with its headers
    assert r.status_code == 200, r.text
    assert r.headers["x-stop-reason"] == "max_frames" and r.headers["x-frames"] == "7"
    wav, sr = sf.read(io.BytesIO(r.content), dtype="int16")
    assert sr == 24000 and wav.shape == (7 * 3200,) and np.abs(wav).max() > 0
    s = _post(server, input=TEXTS[0], max_frames=7, seed=3, stream=True, response_format="pcm")
    assert s.status_code == 200 and np.array_equal(_pcm(s.content), wav)
    other = _post(server, input=TEXTS[0], max_frames=7, seed=4, voice="alloy", response_format="pcm")
    assert other.status_code == 200 and not np.array_equal(_pcm(other.content), wav)


def test_speech_refuses_bad_input(server):
    for body, word in (({"input": "  "}, "empty"), ({"input": "Hi", "voice": "nobody"}, "unknown voice"),
                       ({"input": "Hi", "voice": "default,alloy"}, "one voice"), ({"input": "Hi", "seed": -2}, "seed"),
                       ({"input": "Hi", "max_frames": 0}, "max_frames"), ({"input": "x" * 5000}, "limit")):
        r = _post(server, **body)
        assert r.status_code == 400 and word in r.json()["error"]["message"], (body, r.text)


def test_probes_voices_models_metrics(server):
    assert httpx.get(server.url + "/ready").json() == {"ready": True}
    voices = httpx.get(server.url + "/v1/audio/voices").json()["voices"]
    assert voices[0]["name"] == "default" and voices[0]["lengths"]["neg_tts_lm"] == 1
    assert {"name": "alloy", "alias_of": "default"} in voices
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "vvtrt"
    assert httpx.get(server.url + "/config").json()["voices"] == ["default"]
    assert 'vvtrt_requests_total{outcome="max_frames"}' in httpx.get(server.url + "/metrics").text


_ws = ws_session


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_ws_one_shot_follows_the_demo_protocol(server):
    q = urlencode({"text": TEXTS[0], "cfg": 1.5, "steps": 5, "voice": "default", "max_frames": 6, "seed": 3})
    frames, events, code = _run(_ws(f"{server.ws_url}/stream?{q}"))
    names = [e["event"] for e in events]
    assert code == 1000 and len(frames) == 6 and all(len(f) == FRAME_BYTES for f in frames)
    assert names[0] == "backend_request_received" and names[-1] == "backend_stream_complete"
    assert "backend_first_chunk_sent" in names and names.count("model_progress") == 6
    assert events[-1]["data"]["frames"] == 6 and events[-1]["data"]["stop_reason"] == "max_frames"
    whole = _pcm(_post(server, input=TEXTS[0], max_frames=6, seed=3, response_format="pcm").content)
    assert np.array_equal(_pcm(b"".join(frames)), whole)
    frames, events, code = _run(_ws(f"{server.ws_url}/stream?" + urlencode({"text": "Hi", "voice": "nobody"})))
    assert code == 4400 and frames == [] and events[-1]["event"] == "generation_error"


def test_ws_text_mode_speaks_one_request_as_text_arrives(server):
    url = f"{server.ws_url}/v1/audio/stream?max_frames=20&seed=8"
    pieces = ["Hello th", "ere, this is", json.dumps({"type": "text", "text": " a test of streaming"}), " speech.",
              "<|end|>"]
    # the rest of the text is sent only after the first audio came back: speech starts at the first window
    frames, events, code = _run(_ws(url, pieces[:2], pieces[2:]))
    names = [e["event"] for e in events]
    assert code == 1000 and names[0] == "backend_ready" and names[-1] == "backend_stream_complete"
    assert names.count("segment_started") == 1 and len(frames) == 20
    at_once, _, code = _run(_ws(url, [TEXTS[0], json.dumps({"type": "end"})]))
    assert code == 1000 and b"".join(at_once) == b"".join(frames)
    one_shot = _pcm(_post(server, input=TEXTS[0], max_frames=20, seed=8, response_format="pcm").content)
    assert np.array_equal(_pcm(b"".join(frames)), one_shot)
    frames, events, code = _run(_ws(url, [" ", json.dumps({"type": "end"})]))  # only white space
    assert code == 4400 and frames == [] and events[-1]["event"] == "generation_error"
    frames, events, code = _run(_ws(url, ["Hello", json.dumps({"type": "stop"})]))
    assert code == 1000 and events[-1]["data"]["stop_reason"] == "stop"


def test_voice_presets_of_a_folder(rt, voices, tmp_path):
    from vvtrt.errors import InputError
    from vvtrt.realtime.voices import save_voice
    from vvtrt.server.realtime_service import PresetLibrary, load_presets

    for v in voices.values():
        save_voice(v, tmp_path, dtype=torch.float32)
    loaded = load_presets(tmp_path, rt)
    assert sorted(loaded) == ["v0", "v1", "v2"]
    assert torch.equal(loaded["v1"]["tts_lm"].k, voices["v1"]["tts_lm"].k)
    lib = PresetLibrary.of(_FakeEngine(loaded))
    assert lib.resolve(None) == "v0" and lib.resolve("alloy") == "v0" and lib.resolve("ash") == "v1"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Realtime voice"):
        load_presets(tmp_path / "empty", rt)


class _FakeEngine:
    def __init__(self, voices):
        self.voices = voices
