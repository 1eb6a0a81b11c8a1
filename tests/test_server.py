"""`vvtrt serve` over HTTP: a real server (uvicorn on a free localhost port) on the real serving engine, tiny
model, CPU. Every endpoint, streaming and not, bad input as 4xx JSON, metrics, 429 under overload and a
disconnect that frees its slot."""
from __future__ import annotations

import asyncio
import io
import struct

import httpx
import numpy as np
import pytest
import soundfile as sf

from server_fixtures import metric, start_server, wait_until, write_voice_clip

FRAME = 3200
LONG = 800  # frames of a request that keeps its slot for the whole test


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    voices = tmp / "voices"
    write_voice_clip(voices / "alice.wav", seed=1)
    write_voice_clip(voices / "bob.wav", seed=2)
    srv = start_server(tiny_workdir.root, tmp, "--voices", voices, "--max-streams", 2, "--max-queue", 1,
                       "--queue-timeout", 60)
    yield srv
    code = srv.stop()
    assert code == 0, srv.log()[-3000:]


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def speech(client, **body):
    return client.post("/v1/audio/speech", json={"input": "Speaker 1: Hello there.", "frames": 4, **body})


def test_probes_models_voices_config(client):
    assert client.get("/health").json()["status"] == "alive"
    ready = client.get("/ready").json()
    assert ready["ready"] is True and ready["startup_s"] > 0 and ready["compile_cache"] is None
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "vvtrt"
    assert {"wav", "pcm", "flac"} <= set(models["data"][0]["response_formats"])
    voices = client.get("/v1/audio/voices").json()["voices"]
    names = {v["name"]: v for v in voices}
    assert {"alice", "bob"} <= set(names) and len(names["alice"]["sha256"]) == 64
    assert names["alloy"]["alias_of"] in ("alice", "bob")
    cfg = client.get("/config").json()  # Microsoft's demo page asks for this
    assert cfg["voices"] == ["alice", "bob"] and cfg["default_voice"] == "alice"


def test_voices_are_cached_as_safetensors(server):
    from pathlib import Path

    cached = list(Path(server.log_path.parent, "voices", ".vvtrt-voice-cache").glob("*.safetensors"))
    assert len(cached) == 2


def test_speech_wav_is_the_requested_frames(client):
    r = speech(client, frames=5, voice="alice", seed=3, stream=False)  # the whole file, with its headers
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    wav, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 24000 and wav.shape == (5 * FRAME,)
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert r.headers["x-frames"] == "5" and r.headers["x-stop-reason"]


def test_formats_pcm_flac_and_mp3_opus_or_a_clear_400(client):
    ref = sf.read(io.BytesIO(speech(client, seed=7).content), dtype="int16")[0]
    pcm = speech(client, seed=7, response_format="pcm")
    assert pcm.headers["content-type"] == "audio/pcm"
    assert np.array_equal(np.frombuffer(pcm.content, "<i2"), ref)
    flac = speech(client, seed=7, response_format="flac")
    assert np.array_equal(sf.read(io.BytesIO(flac.content), dtype="int16")[0], ref)
    supported = client.get("/v1/models").json()["data"][0]["response_formats"]
    for fmt in ("mp3", "opus"):
        r = speech(client, seed=7, response_format=fmt)
        if fmt in supported:
            assert r.status_code == 200 and len(sf.read(io.BytesIO(r.content))[0]) > 0
        else:
            assert r.status_code == 400 and "libsndfile" in r.json()["error"]["message"]


def test_streaming_wav_has_an_open_length_header_and_chunked_frames(client):
    with client.stream("POST", "/v1/audio/speech", json={"input": "Hello.", "frames": 6, "seed": 7,
                                                          "stream": True}) as r:
        assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
        body = b"".join(r.iter_raw())
    assert body[:4] == b"RIFF" and struct.unpack("<I", body[40:44])[0] == 0xFFFFFFFF
    assert len(body) == 44 + 6 * FRAME * 2
    pcm = client.post("/v1/audio/speech", json={"input": "Hello.", "frames": 6, "seed": 7, "stream": True,
                                                "response_format": "pcm"})
    assert len(pcm.content) == 6 * FRAME * 2
    accept = client.post("/v1/audio/speech", json={"input": "Hello.", "frames": 2, "response_format": "pcm"},
                         headers={"Accept": "audio/pcm"})
    assert accept.headers.get("transfer-encoding") == "chunked" and len(accept.content) == 2 * FRAME * 2


@pytest.mark.parametrize("body, status, words", [
    ({"speed": 1.5}, 400, "speed"),
    ({"response_format": "aac"}, 400, "response_format"),
    ({"response_format": "flac", "stream": True}, 400, "cannot be streamed"),
    ({"input": ""}, 400, "empty"),
    ({"input": "x" * 5000}, 400, "limit"),
    ({"voice": "nobody"}, 400, "unknown voice"),
    ({"voice": "alice,bob"}, 400, "speaker"),
    ({"seed": "abc"}, 400, "seed"),
    ({"seed": -1}, 400, "seed"),
    ({"cfg_scale": 1e9}, 400, "cfg_scale"),
    ({"frames": 0}, 400, "frames"),
    ({"input": "Speaker X: hi"}, 400, "Speaker"),
])
def test_bad_requests_are_4xx_json(client, body, status, words):
    r = speech(client, **body)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"]["message"].lower()


def test_malformed_bodies_and_unknown_routes(client):
    r = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "json" in r.json()["error"]["message"].lower()
    r = client.post("/v1/audio/speech", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert client.post("/v1/audio/speech", json={}).status_code == 400
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
    assert client.get("/v1/audio/speech").status_code == 405


def test_metrics_count_requests_and_latencies(client):
    assert speech(client).status_code == 200
    text = client.get("/metrics").text
    assert sum(metric(text, "vvtrt_requests_total", outcome=o) for o in
               ("frame_budget", "eos", "max_frames", "length_limit")) >= 1
    assert metric(text, "vvtrt_requests_total", outcome="bad_request") >= 0
    assert metric(text, "vvtrt_ttfa_seconds_count") >= 1
    assert metric(text, "vvtrt_inter_chunk_seconds_count") >= 1
    assert metric(text, "vvtrt_request_rtf_count") >= 1
    for name in ("vvtrt_active_streams", "vvtrt_queue_depth", "vvtrt_frames_per_second",
                 "vvtrt_prefill_tokens_per_second"):
        assert f"\n{name} " in text
    data = client.get("/dashboard/data?seconds=60").json()
    assert data["series"] and data["max_streams"] == 2 and "fps" in data["series"][-1]


async def _drain(response):
    async for _ in response.aiter_raw():
        pass


async def _overload(server):
    body = {"input": "Hello.", "frames": LONG, "response_format": "pcm", "stream": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        held, readers = [], []
        for _ in range(2):  # both slots, read as they stream (a reader that falls behind would be cancelled)
            req = c.build_request("POST", "/v1/audio/speech", json=body)
            held.append(await c.send(req, stream=True))
            assert held[-1].status_code == 200
            readers.append(asyncio.create_task(_drain(held[-1])))
        queued = asyncio.create_task(c.post("/v1/audio/speech", json={**body, "frames": 2}))
        await asyncio.to_thread(wait_until, lambda: httpx.get(server.url + "/dashboard/data?seconds=2").json()
                                ["series"][-1].get("queued") == 1, 60, "a queued request")
        over = await c.post("/v1/audio/speech", json={**body, "frames": 2})
        for task, r in zip(readers, held):  # the client goes away mid-stream: both slots must be freed
            assert not task.done(), "a long stream ended before the test disconnected it"
            task.cancel()
            await r.aclose()
        done = await queued
        return over, done


def test_overload_is_429_and_disconnect_frees_the_slot(server, client):
    before = metric(client.get("/metrics").text, "vvtrt_requests_total", outcome="cancelled")
    over, queued = asyncio.run(_overload(server))
    assert over.status_code == 429, over.text
    assert int(over.headers["retry-after"]) >= 1 and "busy" in over.json()["error"]["message"]
    assert queued.status_code == 200 and len(queued.content) == 2 * FRAME * 2
    wait_until(lambda: metric(client.get("/metrics").text, "vvtrt_requests_total", outcome="cancelled")
               >= before + 2, 30, "the disconnected streams to be cancelled")
    wait_until(lambda: client.get("/dashboard/data?seconds=2").json()["series"][-1]["active"] == 0, 30,
               "free slots")
    assert speech(client).status_code == 200


def test_a_client_gone_while_queued_is_cancelled_when_its_turn_comes(server, client):
    """A streamed request whose client closed its socket while queued: once a slot frees, the server finds no
    one to send to before the first byte and cancels it there, instead of running it for nobody until the
    stall timeout."""
    import json
    import socket

    from server_fixtures import HeldStream

    body = {"input": "Speaker 1: Hello there.", "frames": LONG, "stream": True}
    held = [HeldStream(server.url, {**body, "frames": 60}) for _ in range(2)]  # both slots, until read
    before = metric(client.get("/metrics").text, "vvtrt_requests_total", outcome="cancelled")
    payload = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        wait_until(lambda: client.get("/dashboard/data?seconds=2").json()["series"][-1].get("queued") == 1, 60,
                   "the request to queue")
    for h in held:
        h._go.set()  # read the rest: both slots free while the gone client's request waits
    wait_until(lambda: metric(client.get("/metrics").text, "vvtrt_requests_total", outcome="cancelled")
               >= before + 1, 20, "the gone client's request to be cancelled")
    for h in held:
        assert h.finish().error is None
    wait_until(lambda: client.get("/dashboard/data?seconds=2").json()["series"][-1]["active"] == 0, 30,
               "free slots")
