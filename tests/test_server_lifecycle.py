"""`vvtrt serve` around the requests: API-key auth, refusals at start-up (exit 2, one line), the load test
client, and SIGTERM draining (exit 0) — a real server on the tiny model (CPU)."""
from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from cli_helpers import one_clear_line, run
from server_fixtures import free_port, start_server

KEY = "s3cret-key"
METRICS_KEY = "scrape-only"


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("serve_auth"), "--max-streams", 2,
                       "--grace", 30, env={"VVTRT_API_KEY": KEY, "VVTRT_METRICS_KEY": METRICS_KEY})
    yield srv
    srv.stop()


def test_api_key_is_required_everywhere_but_the_probes(server):
    body = {"input": "Hello.", "frames": 2}
    r = httpx.post(server.url + "/v1/audio/speech", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "key" in r.json()["error"]["message"]
    bad = httpx.post(server.url + "/v1/audio/speech", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.post(server.url + "/v1/audio/speech", json=body, headers=server.headers(), timeout=60)
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav"
    for closed in ("/v1/models", "/v1/audio/voices", "/metrics", "/config", "/dashboard/data", "/openapi.json"):
        r = httpx.get(server.url + closed)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", closed
        assert "voices" not in r.text and "default_voice" not in r.text
        assert httpx.get(server.url + closed, headers=server.headers()).status_code == 200, closed
    for open_path in ("/health", "/ready", "/", "/dashboard", "/static/app.js"):  # probes and static page shells
        assert httpx.get(server.url + open_path).status_code == 200, open_path
    assert "workdir" not in httpx.get(server.url + "/v1/models", headers=server.headers()).text
    scrape = {"Authorization": f"Bearer {METRICS_KEY}"}  # the metrics key opens /metrics and nothing else
    assert httpx.get(server.url + "/metrics", headers=scrape).status_code == 200
    assert httpx.get(server.url + "/config", headers=scrape).status_code == 401


def test_websocket_auth_by_header_or_query(server):
    import asyncio

    async def frames(url, headers=None):
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            return [m async for m in ws if isinstance(m, bytes)]

    url = f"{server.ws_url}/v1/audio/stream?text=Hello.&frames=2"
    with pytest.raises(InvalidStatus) as exc:
        asyncio.run(frames(url))
    assert exc.value.response.status_code == 403
    assert len(asyncio.run(frames(url, server.headers()))) == 2
    assert len(asyncio.run(frames(url + f"&api_key={KEY}"))) == 2


def test_loadtest_http_and_ws(server, tmp_path):
    # HTTP from 2 client processes (3 streams: 2 + 1), their records merged; WS from one
    for extra, procs in (([], 2), (["--ws"], 1)):
        out = tmp_path / ("ws" if extra else "http")
        r = run("loadtest", "--url", server.url, "--concurrency", 3, "--duration", 0.5, "--frames", 3,
                "--api-key", KEY, "--out", out, "--processes", procs, *extra)
        assert r.exit_code == 0, r.output
        rep = json.loads((out / "loadtest.json").read_text())
        assert rep["ok"] >= 3 and rep["errors"] == {} and rep["frames"] == 3 * rep["ok"]
        assert rep["ttfa_ms"]["p50"] > 0 and rep["inter_chunk_ms"]["p99"] is not None
        assert len(rep["rtf"]["per_stream"]) == rep["ok"] and rep["spec"]["api_key"] == "***"
        client = rep["client"]
        assert client["processes"] == procs and client["streams_per_process"] == ([2, 1] if procs == 2 else [3])
        assert client["cpu_s"] > 0 and client["cpu_s_per_wall_s"] > 0
        assert len(client["per_process_cpu_s_per_wall_s"]) == procs
        md = (out / "loadtest.md").read_text()
        assert "TTFA" in md and "TTFA" in r.output and f"Client: {procs} process" in md
    r = run("loadtest", "--url", server.url, "--concurrency", 1, "--duration", 0.3, "--frames", 2)
    assert "--api-key" in one_clear_line(r)  # no key: every request would be refused, so none is sent


def test_serve_refuses_bad_settings_with_one_line(tiny_workdir, tmp_path):
    assert "work" in one_clear_line(run("serve", "-w", tmp_path / "missing", "--port", free_port())).lower()
    assert "--voices" in one_clear_line(run("serve", "-w", tiny_workdir.root, "--voices", tmp_path / "none"))
    assert "--port" in one_clear_line(run("serve", "-w", tiny_workdir.root, "--port", 70000))
    exposed = one_clear_line(run("serve", "-w", tiny_workdir.root, "--host", "0.0.0.0", "--port", free_port()))
    assert "VVTRT_API_KEY" in exposed and "--insecure" in exposed  # no key on a public address: refused
    assert "--url" in one_clear_line(run("loadtest", "--url", "ftp://x", "--duration", 1))


def test_sigterm_drains_running_streams_and_exits_0(tiny_workdir, tmp_path):
    srv = start_server(tiny_workdir.root, tmp_path, "--grace", 30)
    got = {}

    def stream():
        with httpx.stream("POST", srv.url + "/v1/audio/speech", timeout=120,
                          json={"input": "Hello.", "frames": 40, "stream": True, "response_format": "pcm"}) as r:
            got["status"] = r.status_code
            got["bytes"] = sum(len(b) for b in r.iter_raw())

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        import time

        deadline = time.monotonic() + 60
        while "status" not in got and time.monotonic() < deadline:
            time.sleep(0.02)
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(90)
    finally:
        reader.join(120)
        srv.stop()
    log = srv.log()
    assert code == 0, log[-3000:]
    assert got["status"] == 200 and got["bytes"] == 40 * 3200 * 2, got  # finished within the grace period
    assert "Traceback" not in log
    access = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    assert any(a["path"] == "/v1/audio/speech" and a["status"] == 200 and a["bytes"] == 40 * 6400 for a in access)
