"""The server's settings: one frozen dataclass, checked once when `vvtrt serve` starts."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import InputError

API_KEY_ENV = "VVTRT_API_KEY"
METRICS_KEY_ENV = "VVTRT_METRICS_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServerConfig:
    workdir: str
    host: str = "127.0.0.1"
    port: int = 8000
    voices_dir: str | None = None
    max_streams: int = 64
    max_context: int | None = None  # KV slots per stream (None: the largest exported bucket)
    max_queue: int = 256
    api_key: str | None = None
    backend: str = "torch"             # torch, torch-compile, onnxruntime or tensorrt
    compile_shapes: str = "dynamic-batch"  # torch-compile: which axes stay dynamic (see serving.engine)
    device: str | None = None
    dtype: str | None = None
    max_input_chars: int = 4096        # OpenAI's own limit for `input`
    max_body_bytes: int = 64 * 1024
    queue_timeout_s: float = 30.0      # a request not started by then is refused with 429
    grace_s: float = 10.0              # SIGTERM: running streams get this long to finish, then are cancelled
    retry_after_s: int = 2
    max_frames: int | None = None      # frame cap of every request (and its default max_frames)
    allow_frames: bool | None = None   # accept `frames` (None: only for a random-weight model)
    buffer_chunks: int = 256           # frames buffered per stream; a reader further behind is cancelled
    metrics_key: str | None = None     # a key for /metrics alone (the API key works there too)
    header_timeout_s: float = 10.0     # a request's headers must arrive within this
    body_timeout_s: float = 30.0       # and its body within this (each read)
    ws_origins: tuple[str, ...] = ()   # browser origins allowed on the WebSockets besides same-origin/loopback
    ws_max_pending: int = 64           # sentences queued per text-mode WebSocket
    insecure: bool = False             # allow a non-loopback --host without an API key
    stall_timeout_s: float = 30.0      # a stream whose client reads nothing is held this long, then cancelled
    deterministic: bool = False        # full-pool shapes: a request's audio equals its solo run bit for bit
    noise: str = "device"              # diffusion noise drawn in the step ("device") or on the host
    kv_groups: int = 1                 # long-form: KV groups a step may run as (short streams at their own bucket)
    pipeline: bool = False             # long-form: each step launched before the last one is read

    def check(self) -> "ServerConfig":
        """Self, or an InputError naming the option to fix."""
        if not (0 < self.port < 65536):
            raise InputError(f"--port {self.port} is not a TCP port (1-65535)")
        for name in ("max_streams", "max_queue", "max_input_chars", "max_body_bytes", "buffer_chunks",
                     "ws_max_pending"):
            if getattr(self, name) < (0 if name == "max_queue" else 1):
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.queue_timeout_s <= 0 or self.grace_s < 0:
            raise InputError("--queue-timeout must be > 0 and --grace >= 0 seconds")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise InputError("--header-timeout and --body-timeout must be > 0 seconds")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"--max-frames must be positive, got {self.max_frames}")
        if self.kv_groups not in (1, 2):
            raise InputError(f"--kv-groups must be 1 or 2, got {self.kv_groups}")
        if self.noise not in ("device", "host"):
            raise InputError(f"--noise must be device or host, got {self.noise!r}")
        if self.pipeline and self.noise != "device":
            raise InputError("--pipeline draws the noise in the step: use --noise device")
        if self.api_key is None and not self.insecure and not is_loopback(self.host):
            raise InputError(f"--host {self.host} is reachable from other machines: set {API_KEY_ENV} (or "
                             "--api-key), or pass --insecure to serve without a key")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError(f"the API key is empty: pass --api-key KEY or set {API_KEY_ENV}, or neither")
        if self.voices_dir is not None and not Path(self.voices_dir).expanduser().is_dir():
            raise InputError(f"--voices {self.voices_dir} is not a directory of .wav clips")
        return self


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_from_env(cli_value: str | None, env: str = API_KEY_ENV) -> str | None:
    """`--api-key` wins; else the environment variable; else no authentication."""
    if cli_value is not None:
        return cli_value
    return os.environ.get(env) or None
