"""`vvtrt serve` on the serving core, real servers on real ports (tiny and tiny-realtime, CPU): bad text is
a 400 for that request alone while a running stream finishes bit-equal to its solo run; a client reading at
real-time pace receives every frame of a long request; a client that never reads holds no capacity once its
request has ended in the engine; failing device steps end streams as errors and turn `/ready` to 503."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from server_fixtures import free_port, metric, start_server, wait_until

FRAME_BYTES = 3200 * 2  # one frame of 16-bit PCM
FRAME_S = 3200 / 24000
BAD_TEXT = b'{"input": "Speaker 1: broken \\ud800 text", "frames": 3}'  # a lone surrogate: no text at all


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("serve_core"), "--max-streams", 2,
                       "--max-queue", 0, "--deterministic")
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def rt_server(tmp_path_factory):
    from vvtrt.model.resolve import ModelSource
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.workdir import Workdir

    tmp = tmp_path_factory.mktemp("rt_serve_core")
    cfg = preset_config("tiny-realtime")
    Workdir.create(tmp / "wd").write_meta(ModelSource(preset="tiny-realtime"), RealtimeExportOptions.for_config(cfg), cfg)
    srv = start_server(tmp / "wd", tmp, "--max-streams", 2, "--max-queue", 0, "--deterministic",
                       env={"OMP_NUM_THREADS": "1"})
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


def _post_bad_text(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", content=BAD_TEXT, headers={"Content-Type": "application/json"},
                      timeout=60)


def _bad_text_leaves_a_running_stream_untouched(srv, body: dict) -> None:
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        solo = c.post("/v1/audio/speech", json=body)
        assert solo.status_code == 200, solo.text
        with c.stream("POST", "/v1/audio/speech", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()
            got = [next(chunks)]
            bad = _post_bad_text(srv.url)
            assert bad.status_code == 400 and "Unicode" in bad.json()["error"]["message"], bad.text
            got += list(chunks)
    assert b"".join(got) == solo.content
    assert "Traceback" not in srv.log()


def test_bad_text_is_a_400_and_a_running_stream_stays_bit_equal(server):
    _bad_text_leaves_a_running_stream_untouched(
        server, {"input": "Speaker 1: keep on talking.", "frames": 40, "seed": 3, "response_format": "pcm"})


def test_bad_text_is_a_400_and_a_running_realtime_stream_stays_bit_equal(rt_server):
    _bad_text_leaves_a_running_stream_untouched(
        rt_server, {"input": "Keep on talking while a bad request arrives.", "frames": 30, "seed": 3,
                    "response_format": "pcm"})


def test_a_client_that_never_reads_holds_no_capacity_after_its_request_ended(server):
    """Two sockets take both slots and never read; their requests end in the engine (their audio fits
    the buffers), and a third client is served at once although both sockets stay open."""
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"input": "Speaker 1: nobody reads this.", "frames": 6, "stream": true, "response_format": "pcm"}'
    done_before = _ended(server)
    idle = []
    for _ in range(2):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        idle.append(s)
    try:
        wait_until(lambda: _ended(server) >= done_before + 2, 60, "the idle sockets' requests to end")
        r = httpx.post(server.url + "/v1/audio/speech", json={"input": "Speaker 1: my turn.", "frames": 3},
                       timeout=60)
        assert r.status_code == 200, r.text
    finally:
        for s in idle:
            s.close()


def test_a_client_reading_at_real_time_pace_receives_every_frame(server):
    """700 frames read at 133 ms a frame: generation runs far ahead, the request is held (not cancelled)
    whenever its buffer is full, and every frame arrives."""
    total = 0
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120,
                      json={"input": "Speaker 1: a long story.", "frames": 700, "stream": True,
                            "response_format": "pcm"}) as r:
        assert r.status_code == 200
        t0 = time.monotonic()
        for chunk in r.iter_bytes(FRAME_BYTES):
            total += len(chunk)
            time.sleep(max(0.0, t0 + total / FRAME_BYTES * FRAME_S - time.monotonic()))
        assert r.headers.get("x-stop-reason") in (None, "frame budget")
    assert total == 700 * FRAME_BYTES


def test_failing_device_steps_end_streams_as_errors_and_turn_ready_to_503(tiny_workdir):
    import uvicorn

    from vvtrt.server.app import create_app
    from vvtrt.server.config import ServerConfig
    from vvtrt.serving.engine import Engine

    engine = Engine.from_workdir(tiny_workdir.root, device="cpu", precision="fp32", max_streams=2,
                                 max_step_failures=2)
    port = free_port()
    app = create_app(ServerConfig(workdir=str(tiny_workdir.root), port=port, device="cpu", dtype="fp32",
                                           allow_frames=True), engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _status(url + "/ready") == 200, 120, "the server to be ready")
        engine.stepper.loop.step = lambda: (_ for _ in ()).throw(RuntimeError("injected device failure"))
        r = httpx.post(url + "/v1/audio/speech", json={"input": "Speaker 1: hi.", "frames": 3, "stream": False},
                       timeout=60)
        assert r.status_code >= 500 and "device step failed" in r.text, r.text
        try:  # a stream fails as an error: an error status, or a body cut without its terminator
            r = httpx.post(url + "/v1/audio/speech", json={"input": "Speaker 1: hi.", "frames": 3, "stream": True},
                           timeout=60)
            assert r.status_code >= 500, r.status_code
        except httpx.RemoteProtocolError:
            pass
        ready = httpx.get(url + "/ready", timeout=10)
        assert ready.status_code == 503 and "unhealthy" in ready.json()["phase"]
        r = httpx.post(url + "/v1/audio/speech", json={"input": "Speaker 1: hi.", "frames": 3}, timeout=60)
        assert r.status_code == 503
        wait_until(lambda: metric(httpx.get(url + "/metrics").text, "vvtrt_step_failures") == 2, 10, "metrics")
        assert metric(httpx.get(url + "/metrics").text, "vvtrt_engine_healthy") == 0
    finally:
        server.should_exit = True
        thread.join(30)
        engine.stop(grace_s=0)


def _ended(srv) -> float:
    return metric(httpx.get(srv.url + "/metrics", timeout=10).text, "vvtrt_requests_total", outcome="frame_budget")


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_burst_as_large_as_the_slots_is_admitted_at_once(server):
    """`--max-streams 2 --max-queue 0`: two simultaneous requests both get their audio (none a 429)."""
    import concurrent.futures

    def one(i):
        return httpx.post(server.url + "/v1/audio/speech", timeout=120,
                          json={"input": f"Speaker 1: burst {i}.", "frames": 8, "seed": i, "stream": False})

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            codes = [r.status_code for r in pool.map(one, range(2))]
        assert codes == [200, 200]
