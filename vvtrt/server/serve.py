"""`vvtrt serve`: build the engine, the app, and run uvicorn until SIGTERM/SIGINT.

On the first SIGTERM the server stops admitting (503), stops listening, lets running streams finish
within `grace_s` (then cancels them), stops the engine and returns normally (exit code 0).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import sys
import time

from vvtrt.errors import InputError, VvtrtError
from vvtrt.server.config import ServerConfig

log = logging.getLogger(__name__)
WS_FLUSH_S = 2.0  # after the drain, how long WebSockets get to send their last events and close


def resolve_runtime(config: ServerConfig) -> ServerConfig:
    """`config` with the device and precision resolved (cuda when available, bf16 on cuda, fp32 on cpu), so
    the voice cache key and the engine agree; an unknown device/dtype is an InputError."""
    from vvtrt.option_checks import resolve_device
    from vvtrt.precision import Precision

    dev = resolve_device(config.device)
    precision = Precision.parse(config.dtype or ("bf16" if dev.type == "cuda" else "fp32"))
    allow = config.allow_frames
    if allow is None:  # `frames` forces the length of random-weight models; real ones decide themselves
        allow = random_weights(config.workdir)
    return dataclasses.replace(config, device=str(dev), dtype=precision.value, allow_frames=allow)


def random_weights(workdir) -> bool:
    """True for a work dir exported from a random-weight preset (tiny, tiny-realtime, ...)."""
    from vvtrt.workdir import Workdir

    try:
        return bool(Workdir.open(workdir).source().preset)
    except Exception as exc:  # a missing work dir is reported by the engine with its own message
        log.debug("work dir source unknown: %s", exc)
        return False


def workdir_kind(path):
    """The `vvtrt.model.kinds` entry of the work dir at `path` (its own errors, e.g. a missing work dir,
    propagate)."""
    from vvtrt.model import kinds
    from vvtrt.workdir import Workdir

    return kinds.get(Workdir.open(path).kind)


def build_engine(config: ServerConfig):
    """The serving engine for the work dir (its own errors, e.g. a missing work dir, propagate): the builder
    its kind registers, a `RealtimeEngine` for a Realtime work dir, else the long-form `Engine`."""
    return workdir_kind(config.workdir).load("build_engine")(config)


def build_longform_engine(config: ServerConfig):
    """The long-form `Engine` of `config.workdir` (the builder `vvtrt.model.kinds` registers for it)."""
    from vvtrt.serving.engine import Engine

    compiled = config.backend == "torch-compile"
    return Engine.from_workdir(config.workdir, backend="torch" if compiled else config.backend,
                               compile=compiled, compile_shapes=config.compile_shapes, device=config.device,
                               precision=config.dtype, max_streams=config.max_streams,
                               max_context=config.max_context, max_queue=config.max_queue,
                               buffer_chunks=config.buffer_chunks, stall_timeout_s=config.stall_timeout_s,
                               deterministic=config.deterministic, noise=config.noise, kv_groups=config.kv_groups,
                               pipeline=config.pipeline)


def configure_logging() -> None:
    """JSON access lines on stdout; the server's own messages on stderr at INFO."""
    access = logging.getLogger("vvtrt.access")
    if not access.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
    access.setLevel(logging.INFO)
    access.propagate = False
    for name in ("vvtrt.server", "vvtrt.serving"):
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"--host {host!r} does not resolve ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port") from None


def _is_websocket(connection) -> bool:
    return "websocket" in type(connection).__module__


def draining_server(uv_config, life, grace_s: float):
    """A uvicorn server whose SIGTERM drains (`Lifecycle.drain`) and exits 0, and whose shutdown waits for
    the drain before uvicorn closes the connections (so WebSockets are told why their stream ended)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            life.drain()
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal after shutting down; a drained SIGTERM is a clean exit (0)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list) and sig == signal.SIGTERM:
                captured[:] = [s for s in captured if s != signal.SIGTERM]

        async def shutdown(self, sockets=None):
            for srv in self.servers:  # stop accepting first
                srv.close()
            await asyncio.to_thread(life.join, grace_s + 10)
            deadline = time.monotonic() + WS_FLUSH_S
            while time.monotonic() < deadline and any(_is_websocket(c) for c in self.server_state.connections):
                await asyncio.sleep(0.05)
            await super().shutdown(sockets)

    return DrainingServer(uv_config)


def run_server(config: ServerConfig, engine_process: bool = False) -> None:
    """`engine_process`: the engine in a process of its own (`vvtrt.server.engine_proc`; either kind)."""
    from vvtrt.server.app import create_app

    config = resolve_runtime(config.check())
    kind = workdir_kind(config.workdir)
    configure_logging()
    check_port_free(config.host, config.port)
    if engine_process:
        from vvtrt.server.engine_proc import ProcessEngine

        engine = ProcessEngine(config)
    else:
        engine = build_engine(config)
    stopper = FatalStop()
    app = create_app(config, engine, on_fatal=stopper, service_cls=kind.load("service_class"))
    serve_app(config, app, on_server=stopper.attach)
    stopper.raise_first()


class FatalStop:
    """The app's `on_fatal`: a start-up failure stops the server, and `raise_first()` raises it after."""

    def __init__(self):
        self.errors: list[BaseException] = []
        self.server = None

    def attach(self, server) -> None:
        self.server = server

    def __call__(self, exc: BaseException) -> None:
        self.errors.append(exc)
        if self.server is not None:
            self.server.should_exit = True

    def raise_first(self) -> None:
        if self.errors:
            exc = self.errors[0]
            raise exc if isinstance(exc, VvtrtError) else VvtrtError(f"the engine failed to start: {exc}")


def serve_app(config: ServerConfig, app, on_server=None):
    """Run `app` under uvicorn until SIGTERM/SIGINT (draining first) or a fatal start-up error; the
    uvicorn server. `on_server(server)` is called before it runs (so a fatal error can stop it)."""
    import uvicorn

    from vvtrt.server.timeouts import header_timeout_protocol

    life = app.state.lifecycle

    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False,
                        timeout_graceful_shutdown=config.grace_s + 5, lifespan="on",
                        http=header_timeout_protocol(config.header_timeout_s) or "auto")
    server = draining_server(uv, life, config.grace_s)
    if on_server is not None:
        on_server(server)
    log.info("serving %s on http://%s:%d (max %d streams, queue %d)", config.workdir, config.host, config.port,
             config.max_streams, config.max_queue)
    if config.api_key is None and config.insecure:
        log.warning("serving %s without an API key (--insecure): anyone who can reach it can use it", config.host)
    server.run()
    life.drain()
    life.join(config.grace_s + 10)
    return server
