"""WS /v1/audio/stream (and /stream): Microsoft's realtime-demo protocol and vvtrt's text mode, against a
real `vvtrt serve` on the tiny model (CPU)."""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server_fixtures import start_server, write_voice_clip

FRAME_BYTES = 3200 * 2


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_ws")
    write_voice_clip(tmp / "voices" / "carol.wav", seed=3)
    srv = start_server(tiny_workdir.root, tmp, "--voices", tmp / "voices", "--max-streams", 2, "--max-queue", 2,
                       "--ws-max-pending", 4)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


async def _session(url: str, send=()):
    """Every message of one WebSocket session: (binary frames, log events, close code)."""
    frames, events = [], []
    async with connect(url, max_size=None) as ws:
        for m in send:
            await ws.send(m)
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    frames.append(msg)
                else:
                    events.append(json.loads(msg))
        except ConnectionClosed:
            pass
        code = ws.close_code
    return frames, events, code


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


@pytest.mark.parametrize("path", ["/v1/audio/stream", "/stream"])
def test_one_shot_follows_the_demo_protocol(server, path):
    q = urlencode({"text": "Speaker 1: Hello there.", "cfg": 1.5, "steps": 10, "voice": "carol", "frames": 5})
    frames, events, code = run(_session(f"{server.ws_url}{path}?{q}"))
    assert code == 1000
    assert len(frames) == 5 and all(len(f) == FRAME_BYTES for f in frames)
    names = [e["event"] for e in events]
    assert all(e["type"] == "log" and "timestamp" in e and "data" in e for e in events)
    assert names[0] == "backend_request_received" and names[-1] == "backend_stream_complete"
    assert "backend_first_chunk_sent" in names and names.count("model_progress") == 5
    done = events[-1]["data"]
    assert done["frames"] == 5 and done["stop_reason"] and done["rtf"] > 0


def test_text_mode_speaks_segments_as_text_arrives(server):
    msgs = ["Speaker 1: Hello there. How ", "are you", json.dumps({"type": "text", "text": " today? Fine"}),
            json.dumps({"type": "end"})]
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?frames=3&voice=carol", msgs))
    names = [e["event"] for e in events]
    assert code == 1000 and names[0] == "backend_ready" and names[-1] == "backend_stream_complete"
    assert names.count("segment_started") == 3 == names.count("segment_complete")
    assert len(frames) == 9 and events[-1]["data"] == {"stop_reason": "end", "segments": 3, "frames": 9}


def test_text_mode_end_marker_and_stop(server):
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?frames=2", ["Hi.", "<|end|>"]))
    assert code == 1000 and len(frames) == 2
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?frames=2",
                                        ["No full stop yet", json.dumps({"type": "stop"})]))
    assert code == 1000 and frames == [] and events[-1]["data"]["stop_reason"] == "stop"


@pytest.mark.parametrize("query, msgs", [
    ("text=Hello&cfg=abc", ()),
    ("text=Hello&steps=5", ()),  # the work dir runs 10 diffusion steps: another value is refused, not ignored
    ("text=Hello&voice=nobody", ()),
    ("text=Speaker%20X%3A%20hi", ()),
    ("frames=2", [json.dumps({"type": "bogus"})]),
    ("frames=2", [b"\x00\x01"]),
])
def test_bad_input_is_a_generation_error_and_close_4400(server, query, msgs):
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?{query}", msgs))
    assert code == 4400 and frames == []
    assert events[-1]["event"] == "generation_error" and events[-1]["data"]["message"]


def test_text_mode_takes_a_token_stream_split_anywhere(server):
    script = "Speaker 1: Hello there. Speaker 2: Hi, how are you?\nSpeaker 1: Fine."
    msgs = ["Speaker 1: ", *script[len("Speaker 1: "):], "<|end|>"]  # the label alone, then one character each
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?frames=2&voice=carol", msgs))
    names = [e["event"] for e in events]
    assert code == 1000 and "generation_error" not in names, events[-1]
    assert names.count("segment_complete") == 3 and len(frames) == 6
    assert events[-1]["data"] == {"stop_reason": "end", "segments": 3, "frames": 6}


def test_text_mode_queue_is_bounded(server):
    frames, events, code = run(_session(f"{server.ws_url}/v1/audio/stream?frames=2",
                                        ["One. Two. Three. Four. Five. Six. Seven. "]))
    assert code == 4400 and events[-1]["event"] == "generation_error"
    assert "4 sentences are already waiting" in events[-1]["data"]["message"]
