"""What HTTP and WebSocket clients can rely on, against a real `vvtrt serve` (tiny model, CPU): a stream cut
short raises in httpx, the OpenAI SDK and a WebSocket client; input rules give 400 (never 500); the same
CFG default on both paths; `Allow` on 405; header and body deadlines; the Origin check."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server_fixtures import start_server

FRAME_BYTES = 3200 * 2
LONG = 800  # frames: a stream still running when the test cuts it


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("serve_contract"), "--max-streams", 3,
                       "--header-timeout", 1, "--body-timeout", 1,
                       "--ws-origin", "http://app.example")
    yield srv
    srv.stop()


def _stream_httpx(srv, out: dict, started: threading.Event) -> None:
    body = {"input": "Hello.", "frames": LONG, "response_format": "pcm", "stream": True}
    try:
        with httpx.stream("POST", srv.url + "/v1/audio/speech", json=body, timeout=120) as r:
            out["chunked"] = r.headers.get("transfer-encoding") == "chunked"
            for _ in r.iter_raw():
                started.set()
        out["httpx"] = "complete"
    except httpx.HTTPError as exc:
        out["httpx"] = exc


def _stream_sdk(srv, out: dict, started: threading.Event) -> None:
    import openai

    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="Hello.", response_format="wav",
                extra_body={"frames": LONG}) as resp:
            for _ in resp.iter_bytes():
                started.set()
        out["sdk"] = "complete"
    except Exception as exc:  # the SDK's own httpx (httpx or its httpx2 fork): its RemoteProtocolError
        out["sdk"] = exc


async def _stream_ws(srv, out: dict, started: threading.Event) -> None:
    events = []
    async with connect(f"{srv.ws_url}/v1/audio/stream?text=Hello.&frames={LONG}", max_size=None) as ws:
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    started.set()
                else:
                    events.append(json.loads(msg))
        except ConnectionClosed:
            pass
        out["ws"] = (events, ws.close_code)


def test_streams_cut_by_shutdown_raise_in_httpx_the_openai_sdk_and_websockets(tiny_workdir, tmp_path):
    srv = start_server(tiny_workdir.root, tmp_path, "--max-streams", 3, "--grace", 0)
    out, flags = {}, [threading.Event() for _ in range(3)]
    workers = [threading.Thread(target=_stream_httpx, args=(srv, out, flags[0])),
               threading.Thread(target=_stream_sdk, args=(srv, out, flags[1])),
               threading.Thread(target=lambda: asyncio.run(_stream_ws(srv, out, flags[2])))]
    try:
        for w in workers:
            w.start()
        assert all(f.wait(120) for f in flags), "the streams did not start"
        assert "vvtrt_streams_truncated" in httpx.get(srv.url + "/metrics").text
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
    finally:
        for w in workers:
            w.join(60)
        srv.stop()
    assert out["chunked"]
    # the chunked bodies end without their terminator: both clients raise instead of returning a short file
    assert isinstance(out["httpx"], httpx.RemoteProtocolError), out["httpx"]
    assert type(out["sdk"]).__name__ == "RemoteProtocolError", repr(out["sdk"])
    events, code = out["ws"]
    assert code == 1001, code  # "going away", not 1000
    assert events[-1]["event"] == "generation_error" and events[-1]["data"]["reason"] == "shutdown"
    log = srv.log()
    assert log.count("truncated") >= 3 and "(shutdown)" in log and "Traceback" not in log
    assert "without completing response" not in log  # a deliberate cut is a WARNING with its reason, not an ERROR


@pytest.mark.parametrize("raw, words", [
    (b'{"input": "\\ud800 hello"}', "unicode"),
    (b'{"input": "Hello.", "frames": true}', "frames"),
    (b'{"input": "Hello.", "seed": false}', "seed"),
    (b'{"input": "Hello.", "cfg_scale": true}', "cfg_scale"),
    (b'{"input": "Hello.", "stream": "yes"}', "stream"),
    (b'{"input": "Hello.", "instructions": "whisper"}', "instructions"),
    (b'{"input": "Hello.", "voice": ["a", "b", "c", "d", "e"]}', "voice"),
    (b'{"input": "Hello.", "frames": 1048577}', "frames"),
])
def test_input_rules_are_400_with_one_error_body(server, raw, words):
    r = httpx.post(server.url + "/v1/audio/speech", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["code"] == 400 and err["type"] == "invalid_request_error"
    assert words in err["message"].lower()
    assert "Traceback" not in server.log()


def test_bad_unicode_over_the_websocket_is_4400(server):
    async def session():
        async with connect(f"{server.ws_url}/v1/audio/stream?frames=2", max_size=None) as ws:
            await ws.recv()  # backend_ready
            await ws.send('{"type": "text", "text": "\\ud800 hi"}')
            msgs = []
            try:
                async for m in ws:
                    msgs.append(m)
            except ConnectionClosed:
                pass
            return msgs, ws.close_code

    msgs, code = asyncio.run(asyncio.wait_for(session(), 60))
    assert code == 4400 and "unicode" in json.loads(msgs[-1])["data"]["message"].lower()


def test_405_names_the_allowed_methods(server):
    r = httpx.get(server.url + "/v1/audio/speech")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == 405


def test_audio_is_chunked_by_default_and_the_cfg_default_is_the_same_on_both_paths(server):
    body = {"input": "Hello there.", "frames": 3, "seed": 5, "response_format": "pcm"}
    r = httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60)  # no `stream`: streamed as OpenAI does
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    whole = httpx.post(server.url + "/v1/audio/speech", json={**body, "stream": False}, timeout=60)
    assert "transfer-encoding" not in whole.headers and whole.content == r.content

    async def ws_audio():
        q = urlencode({"text": "Hello there.", "frames": 3, "seed": 5})
        async with connect(f"{server.ws_url}/v1/audio/stream?{q}", max_size=None) as ws:
            msgs = [m async for m in ws]
        return msgs

    msgs = asyncio.run(asyncio.wait_for(ws_audio(), 60))
    audio = b"".join(m for m in msgs if isinstance(m, bytes))
    received = next(json.loads(m) for m in msgs if isinstance(m, str) and "backend_request_received" in m)
    cfg = httpx.get(server.url + "/config").json()["default_cfg"]
    assert received["data"]["cfg_scale"] == cfg == 1.3
    assert audio == r.content  # same text, seed and default CFG: the same audio on both paths


def test_opus_is_streamed_as_it_is_encoded(server):
    import io

    import soundfile as sf

    if "opus" not in httpx.get(server.url + "/v1/models").json()["data"][0]["response_formats"]:
        pytest.skip("this libsndfile writes no Opus")
    body = {"input": "Hello there.", "frames": 12, "seed": 5, "response_format": "opus"}
    r = httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    assert r.headers["content-type"] == "audio/ogg"
    whole = httpx.post(server.url + "/v1/audio/speech", json={**body, "stream": False}, timeout=60)
    streamed, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 24000 and len(streamed) == len(sf.read(io.BytesIO(whole.content))[0]) == 12 * 3200


def _raw(server, data: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        t0, got = time.monotonic(), b""
        while chunk := s.recv(4096):
            got += chunk
        assert time.monotonic() - t0 < 8, "the server kept the connection open"
    return got


def test_partial_headers_and_short_bodies_time_out(server):
    partial = _raw(server, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert partial.startswith(b"HTTP/1.1 408")
    short = _raw(server, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"input\": ")
    assert short.startswith(b"HTTP/1.1 408") and b"did not arrive" in short


@pytest.mark.parametrize("origin, allowed", [
    (None, True), ("http://127.0.0.1:1234", True), ("http://localhost", True), ("http://app.example", True),
    ("http://evil.example", False), ("null", False)])
def test_websocket_origin_check(server, origin, allowed):
    async def session():
        headers = {"Origin": origin} if origin else None
        async with connect(f"{server.ws_url}/v1/audio/stream?text=Hi.&frames=1", additional_headers=headers,
                           origin=None) as ws:
            return [m async for m in ws]

    if allowed:
        assert len([m for m in asyncio.run(session()) if isinstance(m, bytes)]) == 1
    else:
        with pytest.raises(InvalidStatus) as exc:
            asyncio.run(session())
        assert exc.value.response.status_code == 403
    if origin == "http://evil.example":
        assert "origin" in server.log()


def test_only_a_deliberate_cut_silences_uvicorns_incomplete_response_error():
    import contextvars
    import logging

    from vvtrt.server import middleware

    def kept(msg: str, aborted: bool) -> bool:
        def check():
            middleware._aborted_here.set(aborted)
            return middleware._QUIET.filter(logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, msg, (), None))
        return contextvars.copy_context().run(check)  # a request's own context, as uvicorn's task has

    assert not kept(middleware.UVICORN_INCOMPLETE, aborted=True)
    assert kept(middleware.UVICORN_INCOMPLETE, aborted=False)  # an app that really failed to finish: logged
    assert kept("Exception in ASGI application\n", aborted=True)
