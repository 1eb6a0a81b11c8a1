"""`vvtrt serve --engine-process` on a Realtime work dir (tiny-realtime on the CPU, voice presets from a
folder): POST speech and the WS text mode (text arriving in pieces into one running request in the engine
process) give the single-process server's bytes; a bad text is refused while another stream completes."""
from __future__ import annotations

import asyncio
import json
import pickle
import threading

import httpx
import pytest

from server_fixtures import FRAME_BYTES, ONE_THREAD, SPEECH, HeldStream, start_server, ws_session

PIECES = ["Hello th", "ere, this is", json.dumps({"type": "text", "text": " a test of streaming"}), " speech.",
          json.dumps({"type": "end"})]
TEXT = "Hello there, this is a test of streaming speech."
ARGS = ("--max-streams", 2, "--max-queue", 2, "--stream-buffer", 4)


@pytest.fixture(scope="module")
def rt_serve_dirs(tmp_path_factory):
    """A tiny-realtime work dir and a folder of two voice presets (v0, v1)."""
    import torch

    from vvtrt.model.resolve import ModelSource
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.realtime.synthetic import make_voice
    from vvtrt.realtime.voices import save_voice
    from vvtrt.workdir import Workdir

    tmp = tmp_path_factory.mktemp("eproc_rt")
    cfg = preset_config("tiny-realtime")
    Workdir.create(tmp / "wd").write_meta(ModelSource(preset="tiny-realtime"), RealtimeExportOptions.for_config(cfg), cfg)
    model = RealtimeRunner.from_preset("tiny-realtime").model
    (tmp / "voices").mkdir()
    for i, (lm, tts) in enumerate([(12, 30), (5, 21)]):
        save_voice(make_voice(model, f"v{i}", lm_len=lm, tts_len=tts, seed=i), tmp / "voices", dtype=torch.float32)
    return tmp


@pytest.fixture(scope="module")
def eproc_rt(rt_serve_dirs):
    srv = start_server(rt_serve_dirs / "wd", rt_serve_dirs, "--engine-process", "--voices", rt_serve_dirs / "voices",
                       *ARGS, env=ONE_THREAD)
    yield srv
    assert srv.stop(timeout=120) == 0, srv.log()[-3000:]


def _speech(srv, frames: int, **extra) -> httpx.Response:
    body = {"input": TEXT, "voice": "v1", "seed": 8, "max_frames": frames, "stream": True, "response_format": "pcm",
            **extra}
    return httpx.post(srv.url + SPEECH, json=body, timeout=300)


async def _ws(url: str, first=(), after_audio=()):
    """(audio bytes, log events, close code) of one WS session (`ws_session`)."""
    frames, events, code = await ws_session(url, first, after_audio)
    return b"".join(frames), events, code


def _text_mode(srv, frames: int):
    url = f"{srv.ws_url}/v1/audio/stream?max_frames={frames}&seed=8&voice=v1"
    return asyncio.run(asyncio.wait_for(_ws(url, PIECES[:2], PIECES[2:]), 120))


def test_speech_and_text_mode_equal_the_in_process_server(eproc_rt, rt_serve_dirs):
    single = start_server(rt_serve_dirs / "wd", rt_serve_dirs, "--voices", rt_serve_dirs / "voices", *ARGS,
                          env=ONE_THREAD)
    try:
        want_post, want_ws = _speech(single, 12), _text_mode(single, 20)
        want_voices = httpx.get(single.url + "/v1/audio/voices").json()
    finally:
        single.stop()
    got_post, got_ws = _speech(eproc_rt, 12), _text_mode(eproc_rt, 20)
    assert want_post.status_code == got_post.status_code == 200, got_post.text
    assert len(got_post.content) == 12 * FRAME_BYTES and got_post.content == want_post.content
    audio, events, code = got_ws
    names = [e["event"] for e in events]
    assert code == want_ws[2] == 1000 and names[-1] == "backend_stream_complete", events
    assert names.count("segment_started") == 1 and len(audio) == 20 * FRAME_BYTES and audio == want_ws[0]
    assert httpx.get(eproc_rt.url + "/v1/audio/voices").json() == want_voices
    other = _speech(eproc_rt, 12, voice="v0")  # the voice is the request's: another one, other audio
    assert other.status_code == 200 and other.content != got_post.content


def test_bad_text_is_refused_while_another_stream_completes(eproc_rt):
    held = HeldStream(eproc_rt.url, {"input": TEXT, "seed": 3, "max_frames": 30, "stream": True,
                                     "response_format": "pcm"})
    bad = httpx.post(eproc_rt.url + SPEECH, timeout=60, content=b'{"input": "\\ud800", "max_frames": 3}',
                     headers={"content-type": "application/json"})
    url = f"{eproc_rt.ws_url}/v1/audio/stream?max_frames=5"
    audio, events, code = asyncio.run(asyncio.wait_for(
        _ws(url, ["Hello", '{"type": "text", "text": "\\ud800"}']), 120))
    held.finish()
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error", bad.text
    assert code == 4400 and events[-1]["event"] == "generation_error", events
    assert held.error is None and held.bytes == 30 * FRAME_BYTES
    assert httpx.get(eproc_rt.url + "/ready").status_code == 200


def test_a_text_input_reaches_the_engine_process_empty_and_open_then_carries_pieces_and_its_end():
    from vvtrt.errors import InputError
    from vvtrt.realtime.engine import TextInput

    text = TextInput()
    text.push("gone")
    far = pickle.loads(pickle.dumps(text))  # what the engine process gets: empty, open
    assert type(far) is TextInput and not far.closed
    got = []
    reader = threading.Thread(target=lambda: got.extend(far))
    reader.start()
    far.push("a")
    far.push("b")
    far.close()
    reader.join(10)
    assert got == ["a", "b"] and not far.push("late")
    failed = TextInput()
    failed.close(InputError("ValueError: the producer broke"))
    with pytest.raises(InputError, match="producer broke"):
        next(failed)


def test_a_text_input_is_forwarded_as_pushed_without_a_thread_of_its_own():
    """The WS text mode's `TextInput` is relayed by its producer's pushes: no thread per open request."""
    from vvtrt.realtime.engine import TextInput
    from vvtrt.server.piped_text import forward_text

    text, sent = TextInput(), []
    text.push("early ")
    before = threading.active_count()
    forward_text(text, lambda msg: sent.append(msg) or True, "r1")
    assert threading.active_count() == before and sent == [("text", "r1", "early ")]
    text.push("late")
    text.close()
    text.close()  # the request's end closes it again: one end only
    assert sent[1:] == [("text", "r1", "late"), ("text_end", "r1", None)]


@pytest.mark.gpu
def test_on_cuda_speech_and_text_mode_equal_the_in_process_server(rt_serve_dirs, tmp_path):
    """The engine process owns the GPU: POST speech and the WS text mode give the single-process bytes."""
    got = {}
    for mode in ("in-process", "engine-process"):
        extra = ("--engine-process",) if mode == "engine-process" else ()
        srv = start_server(rt_serve_dirs / "wd", tmp_path, "--device", "cuda", "--voices", rt_serve_dirs / "voices",
                           *ARGS, *extra)
        try:
            got[mode] = (_speech(srv, 12), _text_mode(srv, 20))
        finally:
            assert srv.stop() == 0, srv.log()[-3000:]
    (post, ws), (want_post, want_ws) = got["engine-process"], got["in-process"]
    assert post.status_code == want_post.status_code == 200 and len(post.content) == 12 * FRAME_BYTES
    assert post.content == want_post.content
    assert ws[2] == want_ws[2] == 1000 and len(ws[0]) == 20 * FRAME_BYTES and ws[0] == want_ws[0]
