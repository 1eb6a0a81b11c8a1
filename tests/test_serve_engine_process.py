"""`vvtrt serve --engine-process`: the serving engine in a process of its own behind the HTTP process, the
tiny model on the CPU, a real server on a real port, real HTTP clients. One server for the module."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import httpx
import pytest

from cli_helpers import one_clear_line, run
from server_fixtures import (FRAME_BYTES, ONE_THREAD, SPEECH, HeldStream, assert_same_stream_as_one_process,
                             assert_sigterm_drains, metric, one_voice_folder, start_server, wait_until)



@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return one_voice_folder(tmp_path_factory, "eproc_voices")


@pytest.fixture(scope="module")
def eproc(tiny_workdir, tmp_path_factory, voices):
    srv = start_server(tiny_workdir.root, tmp_path_factory.mktemp("eproc"), "--engine-process", "--voices", voices,
                       "--max-streams", 2, "--stream-buffer", 4, env=ONE_THREAD)
    yield srv
    srv.stop(timeout=120)


def _engine_pids(srv) -> list[int]:
    """The engine processes the server started, in order (from its log)."""
    return [int(p) for p in re.findall(r"vvtrt\.server\.engine_proc: engine process ready \(pid (\d+)\)", srv.log())]


def _body(frames: int, seed: int = 0, **extra) -> dict:
    return {"input": "Speaker 1: Hello there.", "frames": frames, "seed": seed, "stream": True,
            "response_format": "pcm", **extra}


def test_engine_process_excludes_ray(tiny_workdir):
    r = run("serve", "-w", tiny_workdir.root, "--engine-process", "--ray")
    assert r.exit_code == 2 and "--engine-process" in one_clear_line(r) and "--ray" in one_clear_line(r)


def test_stream_is_bit_equal_to_the_in_process_server(eproc, tiny_workdir, tmp_path, voices):
    body = _body(6, seed=7, voice="alice")
    assert_same_stream_as_one_process(eproc.url, tiny_workdir.root, tmp_path, body, 6, "--voices", voices,
                                      "--max-streams", 2, "--stream-buffer", 4)


def test_bad_requests_get_their_4xx_while_another_stream_completes(eproc):
    with httpx.stream("POST", eproc.url + SPEECH, timeout=300, json=_body(30)) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        got = len(next(chunks))
        empty = httpx.post(eproc.url + SPEECH, timeout=60, json=_body(3, input=""))
        too_long = httpx.post(eproc.url + SPEECH, timeout=60, json=_body(5000))  # refused in the engine process
        got += sum(len(b) for b in chunks)
    assert empty.status_code == 400 and too_long.status_code == 413, (empty.text, too_long.text)
    assert too_long.json()["error"]["type"] == "capacity_error"
    assert got == 30 * FRAME_BYTES


def test_a_slow_http_reader_receives_every_frame(eproc):
    frames, got = 100, 0
    with httpx.stream("POST", eproc.url + SPEECH, timeout=300, json=_body(frames)) as r:
        assert r.status_code == 200
        for b in r.iter_raw(FRAME_BYTES // 4):
            got += len(b)
            time.sleep(0.002)
    assert got == frames * FRAME_BYTES


def test_the_engine_process_holds_a_reader_that_stops_reading(tiny_workdir):
    """The front acks what its reader read: a reader that stops leaves its chunks in the engine process's
    buffer, which holds the request (nothing lost, nothing cancelled) until the reader reads on. (Over HTTP
    the kernel's socket buffers take hundreds of frames first.)"""
    from vvtrt.server.config import ServerConfig
    from vvtrt.server.engine_proc import ProcessEngine
    from vvtrt.server.serve import resolve_runtime
    from vvtrt.serving.api import SpeechRequest

    engine = ProcessEngine(resolve_runtime(ServerConfig(workdir=str(tiny_workdir.root), device="cpu", max_streams=2,
                                                        buffer_chunks=4)))
    engine.start()

    async def read_with_a_pause():
        handle = engine.submit(SpeechRequest(script="Speaker 1: Hello there.", frames=60, seed=3))
        chunks = handle.__aiter__()
        first = await chunks.__anext__()
        while engine.stats().held < 1:
            await asyncio.sleep(0.02)
        assert engine.stats().active == 1
        return [first] + [c async for c in chunks], handle.summary()

    try:
        got, summary = asyncio.run(asyncio.wait_for(read_with_a_pause(), 120))
    finally:
        engine.stop(0.0)
    assert [c.index for c in got] == list(range(60)) and summary.frames == 60
    assert not summary.stop_reason.startswith(("error", "cancelled")), summary.stop_reason


def test_a_request_the_engine_ended_is_not_in_flight_while_its_reader_is_stuck(tiny_workdir):
    """A reader stuck (a socket that takes nothing) past the stall timeout: the engine process cancels the
    request and the front stops counting it in flight at once, as in one process; the reader that reads on
    gets the buffered frames, then `SlowReader`."""
    from vvtrt.server.config import ServerConfig
    from vvtrt.server.engine_proc import ProcessEngine
    from vvtrt.server.serve import resolve_runtime
    from vvtrt.serving.api import SlowReader, SpeechRequest

    engine = ProcessEngine(resolve_runtime(ServerConfig(workdir=str(tiny_workdir.root), device="cpu", max_streams=1,
                                                        buffer_chunks=2, stall_timeout_s=1.0)))
    engine.start()

    async def read_then_get_stuck():
        handle = engine.submit(SpeechRequest(script="Speaker 1: Hello there.", frames=60, seed=3))
        chunks = handle.__aiter__()
        await chunks.__anext__()
        while engine.in_flight():  # the stall timeout ends it in the engine process
            await asyncio.sleep(0.05)
        with pytest.raises(SlowReader):
            async for _ in chunks:
                pass

    try:
        asyncio.run(asyncio.wait_for(read_then_get_stuck(), 120))
    finally:
        engine.stop(0.0)


def test_a_killed_engine_process_truncates_its_stream_and_is_replaced(eproc):
    first = _engine_pids(eproc)[-1]
    held = HeldStream(eproc.url, _body(700))  # held by flow control: one chunk read, then nothing until the kill
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: httpx.get(eproc.url + "/ready").status_code == 503, 60, "/ready to answer 503")
    held.finish()
    assert isinstance(held.error, httpx.RemoteProtocolError), held.error  # an aborted body, never a short "whole" one
    assert held.bytes < 700 * FRAME_BYTES
    # a new engine process (its "ready" line is logged just after its first status reaches the server)
    wait_until(lambda: _engine_pids(eproc)[-1] != first, 240, "a new engine process")
    wait_until(lambda: httpx.get(eproc.url + "/ready").status_code == 200, 60, "/ready to answer 200 again")
    assert metric(httpx.get(eproc.url + "/metrics").text, "vvtrt_streams_truncated_total", reason="error") >= 1
    again = httpx.post(eproc.url + SPEECH, timeout=300, json=_body(4, seed=1))
    assert again.status_code == 200 and len(again.content) == 4 * FRAME_BYTES


def test_sigterm_drains_then_exits_0_without_an_orphan(eproc):
    """Last in the module: SIGTERM stops admitting, a running stream finishes, the server exits 0 and its
    engine process is gone."""
    child = _engine_pids(eproc)[-1]
    assert_sigterm_drains(eproc, _body(40), 40)
    wait_until(lambda: not _running(child), 30, "the engine process to end")
    assert f"engine process (pid {child}) ended (exit code 0)" in eproc.log()


def test_sigterm_while_a_new_engine_process_starts_ends_it_too(tiny_workdir, tmp_path):
    """SIGTERM while a crashed engine process is being replaced: the server exits 0 (not waiting forever on
    the one starting), that one ends too, and the shared memory is gone."""
    srv = start_server(tiny_workdir.root, tmp_path, "--engine-process", "--max-streams", 1, env=ONE_THREAD)
    try:
        first = _engine_pids(srv)[-1]
        segment = _shm_segment(first)
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: _child_mapping(srv.proc.pid, segment, but=first), 120, "a new engine process")
        srv.proc.send_signal(signal.SIGTERM)  # most often before the new one is ready (either way: a clean end)
        assert srv.proc.wait(120) == 0, srv.log()[-3000:]
    finally:
        srv.stop()
    wait_until(lambda: not _running(second), 30, "the new engine process to end")
    assert not os.path.exists(f"/dev/shm/{segment}")


def test_a_killed_server_process_takes_its_engine_process_and_shared_memory_along(tiny_workdir, tmp_path):
    srv = start_server(tiny_workdir.root, tmp_path, "--engine-process", "--max-streams", 1, env=ONE_THREAD)
    child = _engine_pids(srv)[-1]
    segment = _shm_segment(child)
    srv.proc.kill()
    srv.proc.wait(30)
    wait_until(lambda: not _running(child), 60, "the engine process to end")
    wait_until(lambda: not os.path.exists(f"/dev/shm/{segment}"), 60, "the shared memory to be removed")


def _shm_segment(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return next(line.split("/dev/shm/")[1].split()[0] for line in f if "/dev/shm/psm_" in line)


def _child_mapping(parent: int, segment: str, but: int) -> int | None:
    """A child process of `parent` (other than `but`) that has mapped the shared memory `segment`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == but:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/maps") as f:
                if ppid == parent and segment in f.read():
                    return int(entry)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.gpu
def test_on_cuda_a_stream_is_bit_equal_to_the_in_process_server(tiny_workdir, tmp_path, voices):
    """The engine process owns the GPU (the HTTP process never touches it): the same bytes as one process."""
    body = _body(8, seed=5, voice="alice")
    got = {}
    for mode in ("in-process", "engine-process"):
        extra = ("--engine-process",) if mode == "engine-process" else ()
        srv = start_server(tiny_workdir.root, tmp_path, "--device", "cuda", "--voices", voices, "--max-streams", 4,
                           *extra)
        try:
            got[mode] = httpx.post(srv.url + SPEECH, timeout=300, json=body)
        finally:
            assert srv.stop() == 0, srv.log()[-3000:]
    assert got["in-process"].status_code == got["engine-process"].status_code == 200
    assert len(got["engine-process"].content) == 8 * FRAME_BYTES
    assert got["engine-process"].content == got["in-process"].content
