"""`vvtrt loadtest`: N concurrent async clients against a running `vvtrt serve` for S seconds, spread over
`processes` client processes (`vvtrt.server.loadtest_procs`: their records merged, the client's CPU reported).

Each client sends one streaming request after another (HTTP `stream: true` raw PCM, or WS one-shot) until
the duration is over, then finishes the one it is on. A frame is one model frame of audio (6400 bytes of
int16 PCM); its arrival time is when its last byte was read. Per stream: TTFA (request sent -> first whole
frame), inter-chunk gaps (between frame arrivals; frames read together give 0) and RTF (wall time / audio
time). Errors are counted by kind (http_429, ws_close_1013, timeout, connect_error...). Against a
`serve --ray` fleet, requests are also counted per replica (the `x-vvtrt-replica` header, or the WS
completion event's `replica`).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from vvtrt.errors import InputError

FRAME_BYTES = 3200 * 2
SAMPLE_RATE = 24000
GRACE_S = 10.0  # after --duration, the streams in flight get this long to finish; then they are cut off
PROBE_TIMEOUT_S = 3.0
MAX_CONCURRENCY = 4096
MAX_PROCESSES = 64


@dataclass(frozen=True)
class LoadSpec:
    url: str
    concurrency: int = 8
    duration_s: float = 30.0
    ws: bool = False
    text: str = "Speaker 1: Hello there, this is a load test of the speech server."
    frames: int | None = None
    max_frames: int | None = None
    voice: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    processes: int = 1  # client processes the streams are spread over (see loadtest_procs)

    def check(self) -> "LoadSpec":
        from urllib.parse import urlsplit

        if not self.url.startswith(("http://", "https://")):
            raise InputError(f"--url {self.url!r} must start with http:// or https://")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - a port that is no number raises here
        except ValueError:
            raise InputError(f"--url {self.url!r} is not a valid URL (e.g. http://127.0.0.1:8000)") from None
        if not parts.hostname or any(c.isspace() for c in self.url):
            raise InputError(f"--url {self.url!r} names no host (e.g. http://127.0.0.1:8000)")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise InputError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, got {self.concurrency}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise InputError(f"--processes must be from 1 to {MAX_PROCESSES}, got {self.processes}")
        return self


@dataclass
class StreamResult:
    ok: bool = False
    error: str | None = None
    ttfa_s: float | None = None
    gaps_s: list = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0
    stop_reason: str = ""
    replica: str | None = None  # `x-vvtrt-replica` (a `serve --ray` fleet): the replica that ran it

    @property
    def audio_s(self) -> float:
        return self.frames * 3200 / SAMPLE_RATE

    @property
    def rtf(self) -> float | None:
        return self.wall_s / self.audio_s if self.frames else None


class FrameClock:
    """Turns byte arrivals into per-frame arrival times."""

    def __init__(self, res: StreamResult, t0: float, skip: int = 0):
        self.res, self.t0, self.bytes, self.skip, self.last = res, t0, 0, skip, None

    def feed(self, n: int) -> None:
        now = time.perf_counter()
        before = max(0, self.bytes - self.skip) // FRAME_BYTES
        self.bytes += n
        after = max(0, self.bytes - self.skip) // FRAME_BYTES
        for _ in range(after - before):
            if self.last is None:
                self.res.ttfa_s = now - self.t0
            else:
                self.res.gaps_s.append(now - self.last)
            self.last = now
            self.res.frames += 1


def _body(spec: LoadSpec) -> dict:
    body = {"model": "vvtrt", "input": spec.text, "response_format": "pcm", "stream": True}
    body.update({k: v for k, v in (("frames", spec.frames), ("max_frames", spec.max_frames),
                                   ("voice", spec.voice)) if v is not None})
    return body


def _headers(spec: LoadSpec) -> dict:
    return {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}


async def http_stream(client, spec: LoadSpec) -> StreamResult:
    res, t0 = StreamResult(), time.perf_counter()
    clock = FrameClock(res, t0)
    async with client.stream("POST", spec.url.rstrip("/") + "/v1/audio/speech", json=_body(spec),
                             headers=_headers(spec)) as resp:
        res.replica = resp.headers.get("x-vvtrt-replica")
        if resp.status_code != 200:
            await resp.aread()
            res.error = f"http_{resp.status_code}"
            return res
        async for data in resp.aiter_raw():
            clock.feed(len(data))
    res.wall_s = time.perf_counter() - t0
    res.ok = res.frames > 0
    res.error = None if res.ok else "no_audio"
    return res


def ws_url(spec: LoadSpec) -> str:
    q = {"text": spec.text, "cfg": 1.5}
    q.update({k: v for k, v in (("frames", spec.frames), ("max_frames", spec.max_frames), ("voice", spec.voice))
              if v is not None})
    base = spec.url.rstrip("/").replace("http", "ws", 1)
    return f"{base}/v1/audio/stream?{urlencode(q)}"


async def ws_stream(spec: LoadSpec) -> StreamResult:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedError

    res, t0 = StreamResult(), time.perf_counter()
    clock = FrameClock(res, t0)
    try:
        async with connect(ws_url(spec), additional_headers=_headers(spec), max_size=None,
                           open_timeout=spec.timeout_s) as conn:
            async for msg in conn:
                if isinstance(msg, bytes):
                    clock.feed(len(msg))
                    continue
                event = json.loads(msg)
                if event.get("event") == "backend_stream_complete":
                    res.stop_reason = event.get("data", {}).get("stop_reason", "")
                    res.replica = event.get("data", {}).get("replica")
                elif event.get("event") in ("backend_busy", "generation_error"):
                    res.error = event["event"]
    except ConnectionClosedError as exc:
        code = exc.rcvd.code if exc.rcvd is not None else "none"
        res.error = res.error or f"ws_close_{code}"
    res.wall_s = time.perf_counter() - t0
    res.ok = res.error is None and res.frames > 0
    if not res.ok and res.error is None:
        res.error = "no_audio"
    return res


def _error_kind(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) or "Timeout" in name:
        return "timeout"
    if "Connect" in name or isinstance(exc, ConnectionError):
        return "connect_error"
    if "Protocol" in name or "InvalidStatus" in name:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"http_{status}" if status else "protocol_error"
    return name


async def _worker(spec: LoadSpec, client, deadline: float, results: list) -> None:
    """Requests one after another until `deadline`; none waits past `deadline + GRACE_S`."""
    while time.perf_counter() < deadline:
        left = deadline + GRACE_S - time.perf_counter()
        try:
            one = ws_stream(spec) if spec.ws else http_stream(client, spec)
            results.append(await asyncio.wait_for(one, max(0.1, min(spec.timeout_s, left))))
        except Exception as exc:
            results.append(StreamResult(error=_error_kind(exc)))
            await asyncio.sleep(0.05)  # a refused connection must not spin


def probe_server(spec: LoadSpec) -> None:
    """The target must answer GET /health as a vvtrt server does, within PROBE_TIMEOUT_S: a closed port,
    a server that never answers and one that is not vvtrt are refused before the load starts."""
    import httpx

    url = spec.url.rstrip("/") + "/health"
    try:
        resp = httpx.get(url, headers=_headers(spec), timeout=PROBE_TIMEOUT_S)
    except httpx.TimeoutException:
        raise InputError(f"{spec.url} did not answer GET /health within {PROBE_TIMEOUT_S:g} s: is it a running "
                         "`vvtrt serve`? Check --url") from None
    except (httpx.HTTPError, OSError, ValueError) as exc:
        raise InputError(f"cannot reach {spec.url} ({type(exc).__name__}): start the server with `vvtrt serve -w DIR` "
                         "or check --url") from None
    if resp.status_code in (401, 403):
        raise InputError(f"{spec.url} refused GET /health with {resp.status_code}: pass its key with --api-key "
                         "(or VVTRT_API_KEY)")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "alive":
        raise InputError(f"{spec.url} is not a vvtrt server (GET /health answered {resp.status_code} without "
                         "vvtrt's status): check --url")
    if not spec.api_key and _needs_key(httpx, spec.url.rstrip("/") + "/config"):
        raise InputError(f"{spec.url} requires an API key and none was given: every request would be refused "
                         "(401); pass --api-key KEY (or set VVTRT_API_KEY)")


def _needs_key(httpx, url: str) -> bool:
    """True when the server's data routes need a key: `/config` answers 401 without one (or, on servers
    that keep it open, says `"auth": true`)."""
    try:
        resp = httpx.get(url, timeout=PROBE_TIMEOUT_S)
        if resp.status_code == 401:
            return True
        body = resp.json()
    except (httpx.HTTPError, OSError, ValueError):
        return False  # an older server without /config: the requests will say
    return isinstance(body, dict) and body.get("auth") is True


async def run_load(spec: LoadSpec) -> tuple[list, float]:
    """Every stream's result and the wall time of the whole test (at most --duration + GRACE_S)."""
    import httpx

    spec.check()
    results: list[StreamResult] = []
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=spec.concurrency + 4, max_keepalive_connections=spec.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(spec.timeout_s)) as client:
        workers = [asyncio.ensure_future(_worker(spec, client, t0 + spec.duration_s, results))
                   for _ in range(spec.concurrency)]
        _, late = await asyncio.wait(workers, timeout=spec.duration_s + GRACE_S + 1.0)
        for task in late:  # a stream stuck past its own deadline (never expected): cut off too
            task.cancel()
        if late:
            await asyncio.wait(late)
            results.extend(StreamResult(error="timeout") for _ in late)
    return results, time.perf_counter() - t0


def run_client(spec: LoadSpec) -> tuple[list, float, dict]:
    """The load over `spec.processes` client processes: (every record, wall time, the client's CPU use)."""
    import os

    from vvtrt.server.loadtest_procs import merge, run_processes

    t = os.times()
    workers = run_processes(run_load, spec, spec.processes)
    parent = os.times()
    parent_cpu = 0.0 if len(workers) == 1 else (parent.user + parent.system) - (t.user + t.system)
    return merge(workers, parent_cpu)


def run_loadtest_cli(spec: LoadSpec, out_dir=None) -> str:
    """Run the test, write `loadtest.json` / `loadtest.md` to `out_dir` when given; the Markdown."""
    from vvtrt.server.loadtest_report import render_markdown, summarize

    if out_dir is not None:
        from vvtrt.option_checks import check_output_dir

        check_output_dir(out_dir, "--out directory")
    spec.check()
    probe_server(spec)
    results, wall, client = run_client(spec)
    report = summarize(spec, results, wall)
    report["client"] = client
    md = render_markdown(report)
    if out_dir is not None:
        from pathlib import Path

        from vvtrt.fsio import atomic_write_json, atomic_write_text

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out_dir) / "loadtest.json", report)
        atomic_write_text(Path(out_dir) / "loadtest.md", md)
    if results and report["ok"] == 0:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(report["errors"].items(), key=lambda kv: -kv[1])[:3])
        raise InputError(f"all {len(results)} requests to {spec.url} failed ({kinds}): check --text, --voice, "
                         "--frames and the server's log" + (f"; report in {out_dir}" if out_dir is not None else ""))
    return md
