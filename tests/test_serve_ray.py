"""`vvtrt serve --ray` on a real local Ray cluster: two tiny CPU replicas behind one front process on a
real port, driven by real HTTP clients. One cluster and server for the module (Ray starts slowly)."""
from __future__ import annotations

import importlib.util
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cli_helpers import one_clear_line, run
from server_fixtures import (FRAME_BYTES, ONE_THREAD, SPEECH, HeldStream, assert_same_stream_as_one_process,
                             assert_sigterm_drains, metric, one_voice_folder, start_server, wait_until)

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the `serve --ray` tests: install the `ray` extra (make test does)")
    pytest.skip("needs the `ray` extra (pip install -e \".[ray]\")", allow_module_level=True)

READY_S = 900  # a local Ray cluster and two replicas on a busy 2-core machine


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return one_voice_folder(tmp_path_factory, "ray_voices")


@pytest.fixture(scope="module")
def fleet(tiny_workdir, tmp_path_factory, voices):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("ray"), "--ray", "--replicas", 2, "--voices", voices,
                       "--max-streams", 2, "--stream-buffer", 4, env=ONE_THREAD, ready_timeout=READY_S)
    yield srv
    code = srv.stop(timeout=120)
    assert code == 0, srv.log()[-3000:]


def _replicas(srv) -> dict:
    data = httpx.get(srv.url + "/dashboard/data", timeout=30).json()
    return {r["name"]: r for r in data["replicas"]}


def _speech(srv, frames: int, seed: int = 0) -> httpx.Response:
    return httpx.post(srv.url + SPEECH, timeout=300, json={"input": "Speaker 1: Hello there.", "frames": frames,
                                                            "seed": seed, "stream": True, "response_format": "pcm"})


def test_fleet_options_need_ray_and_fit_together(tiny_workdir):
    r = run("serve", "-w", tiny_workdir.root, "--replicas", 2)
    assert r.exit_code == 2 and "--ray" in one_clear_line(r)
    r = run("serve", "-w", tiny_workdir.root, "--ray", "--min-replicas", 3, "--max-replicas", 2)
    assert r.exit_code == 2 and "--min-replicas" in one_clear_line(r)


def test_without_ray_installed_serve_ray_names_the_extra(tiny_workdir, monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    line = one_clear_line(run("serve", "-w", tiny_workdir.root, "--ray"))
    assert "`ray` extra" in line and 'pip install -e ".[ray]"' in line, line


def test_joining_a_cluster_that_refuses_says_what_to_set(monkeypatch):
    """A joined cluster that refuses the front (token authentication, Ray's default for `ray start`) is one line
    naming the setting; the front's calls fail at once when a replica dies (no wait for the death's cause)."""
    import ray

    from vvtrt.errors import InputError
    from vvtrt.server.fleet import DEATH_INFO_VAR, connect
    from vvtrt.server.fleet_config import FleetOptions

    for var in ("RAY_AUTH_MODE", DEATH_INFO_VAR, "RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS", "RAY_COLOR_PREFIX"):
        monkeypatch.setenv(var, "")  # restored (or removed) after the test
        monkeypatch.delenv(var)

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379\nmore")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(InputError) as err:
        connect(FleetOptions(address="10.0.0.1:6379"), 2)
    assert "Failed to connect" in str(err.value) and "RAY_AUTH_MODE=token" in str(err.value)
    assert "\n" not in str(err.value) and os.environ[DEATH_INFO_VAR] == "0"


def test_placement_shares_gpus_when_replicas_outnumber_them():
    from vvtrt.server.fleet_config import FleetOptions, place

    two_on_one = place(FleetOptions(replicas=2), 1, None)
    assert (two_on_one.initial, two_on_one.device, two_on_one.num_gpus) == (2, "cuda", 0.5)
    per_gpu = place(FleetOptions(), 4, None)
    assert (per_gpu.initial, per_gpu.num_gpus) == (4, 1.0)
    auto = place(FleetOptions(min_replicas=1, max_replicas=3), 2, None)
    assert (auto.initial, auto.most, auto.num_gpus) == (1, 3, 0.5)
    cpu = place(FleetOptions(replicas=2), 0, None)
    assert (cpu.device, cpu.num_gpus) == ("cpu", 0.0)


def test_autoscaling_follows_the_queue():
    from vvtrt.server.fleet_config import FleetOptions, ScaleTimer

    timer = ScaleTimer(FleetOptions(min_replicas=1, max_replicas=2, upscale_after_s=5, downscale_after_s=60), 1, 2)
    assert timer.decide([(2, 3, True)], 0.0) is None          # one request waits for a slot...
    assert timer.decide([(2, 3, True)], 5.0) == "up"          # ...for 5 s: one more replica
    assert timer.decide([(2, 3, True), (2, 0, False)], 20.0) is None   # never again while one is starting
    assert timer.decide([(2, 3, True), (2, 3, True)], 21.0) is None
    assert timer.decide([(2, 3, True), (2, 3, True)], 29.0) is None    # queued 8 s, but the most run already
    assert timer.decide([(2, 0, True), (2, 1, True)], 30.0) is None    # a replica's worth idle...
    assert timer.decide([(2, 0, True), (2, 1, True)], 90.0) == "down"  # ...for 60 s: one fewer
    assert timer.decide([(2, 2, True)], 200.0) is None        # the least replicas


class _Call:
    def __init__(self, fn):
        self.remote = fn


class _Actor:
    """A replica's actor: `fails` (an exception) ends every stream before its first event, as a killed
    replica's (`ActorUnavailableError` while Ray restarts it) or a failing request's (`RayTaskError`) does."""

    def __init__(self, fails: BaseException | None = None):
        self.fails, self.cancelled = fails, []
        self.stream = _Call(self._stream)
        self.cancel = _Call(self.cancelled.append)

    def _stream(self, request):
        events = [("started", 3), ("chunk", 0, None), ("end", "frame budget", None, "")]

        class Gen:
            async def __anext__(gen):
                if self.fails is not None:
                    raise self.fails
                if not events:
                    raise StopAsyncIteration

                async def ref(event=events.pop(0)):
                    return event
                return ref()
        return Gen()


def test_a_request_whose_replica_dies_before_taking_it_runs_on_another():
    """Before its first event a request moves to another ready replica (the header and id follow it, each
    replica's count stays right); with no other replica ready it fails as before, and a request that failed
    in a live replica (`RayTaskError`) never moves."""
    import asyncio
    import types

    from ray import exceptions as rex

    from vvtrt.server.fleet import FleetEngine, Replica
    from vvtrt.server.fleet_config import FleetOptions, Placement
    from vvtrt.serving.api import SpeechRequest

    fleet = FleetEngine(types.SimpleNamespace(max_queue=8), FleetOptions(replicas=2), Placement(2, 2, "cpu", 0, 1))
    gone = rex.ActorUnavailableError("the replica is restarting", None)
    dead, live = Replica("r0", _Actor(gone), ok=True, slots=4), Replica("r1", _Actor(), ok=True, slots=2)
    fleet.replicas, fleet._started = [dead, live], True

    async def run_one():
        handle = fleet.submit(SpeechRequest("Speaker 1: hi", frames=1))
        assert handle.replica == "r0"  # the most free slots
        chunks = [c async for c in handle]
        return handle, chunks

    handle, chunks = asyncio.run(run_one())
    assert len(chunks) == 1 and handle.replica == "r1" and handle.request_id.startswith("r1-")
    assert handle.summary().request_id == handle.request_id
    assert dead.actor.cancelled == ["r0-1"] and not dead.ok and (dead.in_flight, live.in_flight) == (0, 0)

    async def fails_on_r0():
        handle = fleet.submit(SpeechRequest("Speaker 1: hi", frames=1))
        with pytest.raises(Exception, match="replica r0 failed"):
            [c async for c in handle]
        return handle
    dead.ok, live.ok = True, False  # the dead replica marked ready again, the live one gone: nothing to move to
    handle = asyncio.run(fails_on_r0())
    assert handle.replica == "r0" and (dead.in_flight, live.in_flight) == (0, 0)

    dead.actor.fails = rex.RayTaskError("stream", "Traceback: the request failed", ValueError("bad"))
    dead.ok, live.ok = True, True
    handle = asyncio.run(fails_on_r0())  # a live replica's failure of this request: not moved
    assert handle.replica == "r0" and live.routed == 1 and (dead.in_flight, live.in_flight) == (0, 0)


def test_a_status_asked_before_a_replica_failed_does_not_make_it_ready_again():
    import time
    import types

    from vvtrt.server.fleet import FleetEngine, Replica
    from vvtrt.server.fleet_config import FleetOptions, Placement

    fleet = FleetEngine(types.SimpleNamespace(max_queue=8), FleetOptions(replicas=1), Placement(1, 1, "cpu", 0, 1))
    r = Replica("r0", _Actor(), ok=True, slots=2, asked_t=time.monotonic())
    status = {"ok": True, "pid": 1, "node": "n", "device": "cpu", "gpu_ids": [], "exposition": "", "point": None,
              "stats": {"ready": True, "healthy": True, "max_streams": 2}}
    with fleet._lock:
        fleet._mark_lost(r)  # a request failed there after that status was asked
    fleet._update(r, status)
    assert not r.ok
    r.asked_t = time.monotonic()  # the next poll's answer decides
    fleet._update(r, status)
    assert r.ok


def test_a_burst_reaches_both_replicas_and_metrics_show_both(fleet):
    assert set(_replicas(fleet)) == {"r0", "r1"}
    wait_until(lambda: all(r["ok"] for r in _replicas(fleet).values()), 120, "both replicas to take requests")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: _speech(fleet, 3, seed=i), range(8)))
    assert all(r.status_code == 200 and len(r.content) == 3 * FRAME_BYTES for r in responses)
    served = [r.headers["x-vvtrt-replica"] for r in responses]
    assert set(served) == {"r0", "r1"}, served
    assert httpx.get(fleet.url + "/health").headers["x-vvtrt-replica"] == "front"

    def both_counted():
        text = httpx.get(fleet.url + "/metrics", timeout=30).text
        return text if all(_requests(text, n) for n in ("r0", "r1")) else None
    text = wait_until(both_counted, 60, "both replicas' requests in /metrics")
    assert 'vvtrt_active_streams{replica="r0"}' in text and 'vvtrt_active_streams{replica="r1"}' in text
    assert 'replica="front"' in text
    for r in httpx.get(fleet.url + "/dashboard/data?seconds=600", timeout=30).json()["replicas"]:
        times = [p["t"] for p in r["series"]]
        assert times and len(times) == len(set(times)), (r["name"], times)  # each point once


def test_loadtest_reports_requests_per_replica(fleet, tmp_path):
    import json

    r = run("loadtest", "--url", fleet.url, "--concurrency", 4, "--duration", 1, "--frames", 2, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    spread = json.loads((tmp_path / "loadtest.json").read_text())["requests_per_replica"]
    assert set(spread) == {"r0", "r1"} and "Requests per replica: r0:" in r.output, r.output


def test_streamed_bytes_equal_the_single_process_server(fleet, tiny_workdir, tmp_path, voices):
    body = {"input": "Speaker 1: Hello there.", "voice": "alice", "frames": 6, "seed": 7, "stream": True,
            "response_format": "pcm"}
    assert_same_stream_as_one_process(fleet.url, tiny_workdir.root, tmp_path, body, 6, "--voices", voices)


def test_a_killed_replica_truncates_its_stream_and_the_other_completes(fleet):
    pids = {name: r["pid"] for name, r in _replicas(fleet).items()}
    # held by flow control: one chunk read, then nothing until the kill
    held = HeldStream(fleet.url, {"input": "Speaker 1: a long story.", "frames": 700, "stream": True,
                                  "response_format": "pcm"})
    victim = held.headers["x-vvtrt-replica"]
    other = _speech_stream_start(fleet)
    os.kill(pids[victim], signal.SIGKILL)
    held.finish()
    with other as r:
        assert r.headers["x-vvtrt-replica"] != victim
        assert r.status_code == 200 and len(r.read()) == 60 * FRAME_BYTES
    assert isinstance(held.error, httpx.RemoteProtocolError), held.error  # an aborted body, never a short "whole" one
    assert held.bytes < 700 * FRAME_BYTES
    # Ray restarts the replica; it takes requests again
    wait_until(lambda: _replicas(fleet)[victim]["ok"] and _replicas(fleet)[victim]["pid"] !=
               pids[victim], READY_S, "the killed replica to restart")
    text = httpx.get(fleet.url + "/metrics").text
    assert metric(text, "vvtrt_streams_truncated_total", reason="error", replica="front") >= 1
    with ThreadPoolExecutor(4) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda i: _speech(fleet, 2, seed=i), range(4)))


def _requests(text: str, replica: str) -> float:
    """vvtrt_requests_total of one replica, every outcome."""
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("vvtrt_requests_total{") and f'replica="{replica}"' in line)


def _speech_stream_start(srv):
    """A 60-frame stream, its headers read (the client reads the body later)."""
    client = httpx.Client(timeout=300)
    req = client.build_request("POST", srv.url + SPEECH, json={"input": "Speaker 1: Hello.", "frames": 60,
                                                               "stream": True, "response_format": "pcm"})
    return _Closing(client, client.send(req, stream=True))


class _Closing:
    def __init__(self, client, response):
        self.client, self.response = client, response

    def __enter__(self):
        return self.response

    def __exit__(self, *exc):
        self.response.close()
        self.client.close()


def test_sigterm_drains_running_streams_then_exits_0(fleet):
    """Last in the module: SIGTERM stops admitting, a running stream finishes, the server exits 0."""
    assert_sigterm_drains(fleet, {"input": "Speaker 1: Hello.", "frames": 40, "stream": True, "response_format": "pcm"},
                          40)
