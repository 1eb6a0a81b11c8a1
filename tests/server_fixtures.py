"""A real `vvtrt serve` (uvicorn on a free localhost port, the real serving engine on the tiny model on the
CPU) as a subprocess for the server and browser tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

READY_TIMEOUT_S = 240
FRAME_BYTES = 3200 * 2                 # one model frame of 16-bit PCM
SPEECH = "/v1/audio/speech"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}   # what Ray gives a 1-CPU replica; a server compared with one alike


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_voice_folder(tmp_path_factory, name: str) -> Path:
    """A folder holding one 1-second voice clip, `alice.wav` (for `--voices`)."""
    folder = tmp_path_factory.mktemp(name)
    write_voice_clip(folder / "alice.wav", 1.0)
    return folder


def write_voice_clip(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    """A speech-like test clip (modulated noise, not silence) at 24 kHz."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    wav = 0.3 * rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.2 * np.sin(2 * np.pi * 180 * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.astype(np.float32), 24000)
    return path


@dataclass
class ServerProc:
    proc: subprocess.Popen
    url: str
    log_path: Path
    api_key: str | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(workdir, tmp: Path, *args, env=None, ready_timeout: float = READY_TIMEOUT_S) -> ServerProc:
    """`python -m vvtrt serve -w WORKDIR --port FREE --device cpu ARGS...`, waited until /ready is 200."""
    port = free_port()
    log_path = tmp / f"serve-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    if "VVTRT_API_KEY" not in (env or {}):
        full_env.pop("VVTRT_API_KEY", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vvtrt", "serve", "-w", str(workdir), "--port", str(port),
                                 "--device", "cpu", *[str(a) for a in args]], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    srv = ServerProc(proc, f"http://127.0.0.1:{port}", log_path, (env or {}).get("VVTRT_API_KEY"))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vvtrt serve exited with {proc.returncode}:\n{srv.log()[-4000:]}")
        try:
            if httpx.get(srv.url + "/ready", timeout=2).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise RuntimeError(f"vvtrt serve not ready after {ready_timeout} s:\n{srv.log()[-4000:]}")


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll `predicate()` until it returns a truthy value (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample in an exposition `text` (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(val)
    return 0.0


class HeldStream:
    """A streamed speech request read in a thread: its first chunk, then nothing until `finish()` (flow
    control holds the request in the engine meanwhile), then the rest. After `finish()`: `bytes` read,
    `headers`, and `error` (the client's httpx error, None for a clean end)."""

    def __init__(self, url: str, body: dict, timeout: float = 300):
        self.bytes, self.headers, self.error = 0, None, None
        self._opened, self._go = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, body, timeout), daemon=True)
        self._thread.start()
        assert self._opened.wait(timeout) and self.headers is not None, self.error

    def _read(self, url: str, body: dict, timeout: float) -> None:
        try:
            with httpx.stream("POST", url + SPEECH, timeout=timeout, json=body) as r:
                self.headers = r.headers
                chunks = r.iter_raw()
                self.bytes = len(next(chunks))
                self._opened.set()
                self._go.wait(120)
                for b in chunks:
                    self.bytes += len(b)
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self._opened.set()

    def finish(self, timeout: float = 300) -> "HeldStream":
        self._go.set()
        self._thread.join(timeout)
        return self


def assert_same_stream_as_one_process(url: str, workdir, tmp: Path, body: dict, frames: int, *args) -> None:
    """The server at `url` streams the bytes a plain single-process server (started with `args`) streams for
    `body`, `frames` whole frames."""
    single = start_server(workdir, tmp, *args, env=ONE_THREAD)
    try:
        want = httpx.post(single.url + SPEECH, timeout=300, json=body)
    finally:
        single.stop()
    got = httpx.post(url + SPEECH, timeout=300, json=body)
    assert want.status_code == got.status_code == 200
    assert len(got.content) == frames * FRAME_BYTES and got.content == want.content


def assert_sigterm_drains(srv: ServerProc, body: dict, frames: int) -> None:
    """SIGTERM while a `frames`-frame stream of `body` runs: the stream still gets every frame, the server
    exits 0."""
    with httpx.stream("POST", srv.url + SPEECH, timeout=300, json=body) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        got = len(next(chunks))
        srv.proc.send_signal(signal.SIGTERM)
        got += sum(len(b) for b in chunks)
    assert got == frames * FRAME_BYTES
    assert srv.proc.wait(180) == 0, srv.log()[-3000:]


async def ws_session(url: str, first=(), after_audio=()):
    """(binary frames, log events, close code) of one WebSocket session: `first` sent at once, `after_audio`
    only once the first binary frame came back (the request is running in the engine then)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got = []
    async with connect(url, max_size=None) as ws:
        for m in first:
            await ws.send(m)
        if after_audio:
            while not got or not isinstance(got[-1], bytes):
                got.append(await ws.recv())
            for m in after_audio:
                await ws.send(m)
        try:
            async for m in ws:
                got.append(m)
        except ConnectionClosed:
            pass
        code = ws.close_code
    return [m for m in got if isinstance(m, bytes)], [json.loads(m) for m in got if isinstance(m, str)], code
