"""The FastAPI application: routes, middleware, the engine's start-up in the background (liveness answers at
once, readiness once the engine is loaded and the voices are encoded), the metrics sampler, and draining.

    app = create_app(config, engine)        # engine: vvtrt.serving Engine (not yet started)
"""
from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from vvtrt.server import audio, http_errors, openapi, speech, ws
from vvtrt.server.config import ServerConfig
from vvtrt.server.gpu import GpuMonitor
from vvtrt.server.metrics import ServerMetrics
from vvtrt.server.middleware import AbortTruncated, AccessLog, BearerAuth, BodyLimit
from vvtrt.server.service import SpeechService
from vvtrt.server.voices import DEFAULT_VOICE, VoiceLibrary

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SAMPLE_EVERY_S = 1.0


class Lifecycle:
    """Start-up and drain state shared by the app and the uvicorn runner."""

    def __init__(self, service: SpeechService, on_fatal=None):
        self.service, self.on_fatal = service, on_fatal
        self.phase = "starting"          # starting -> ready -> draining, or failed
        self.error: BaseException | None = None
        self._stopper: threading.Thread | None = None

    async def start(self) -> None:
        s = self.service
        try:
            await asyncio.to_thread(s.engine.start)
            while not s.engine.ready:
                await asyncio.sleep(0.05)
            s.voices = await asyncio.to_thread(s.load_voices)
            s.metrics.set_startup(getattr(s.engine, "startup", None))
            self.phase = "ready" if self.phase == "starting" else self.phase
            log.info("ready: %s", s.config.workdir)
        except Exception as exc:
            self.phase, self.error = "failed", exc
            log.error("start-up failed: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def drain(self) -> None:
        """Stop admitting now; let running streams finish for `grace_s`, then cancel them (in a thread, so
        the event loop keeps sending their audio meanwhile)."""
        if self._stopper is not None:
            return
        self.phase = "draining"
        self.service.draining = True
        self._stopper = threading.Thread(target=self._stop_engine, name="vvtrt-drain", daemon=True)
        self._stopper.start()

    def _stop_engine(self) -> None:
        try:
            self.service.engine.stop(grace_s=self.service.config.grace_s)
        except Exception as exc:
            log.error("engine stop failed: %s", exc)

    def join(self, timeout: float | None = None) -> None:
        if self._stopper is not None:
            self._stopper.join(timeout)


async def _sample_forever(service: SpeechService) -> None:
    while True:
        try:
            stats = service.engine.stats()
        except Exception as exc:  # an engine still loading may not have stats yet
            log.debug("engine stats unavailable: %s", exc)
            stats = None
        await asyncio.to_thread(service.metrics.sample, stats)
        await asyncio.sleep(SAMPLE_EVERY_S)


def create_app(config: ServerConfig, engine, on_fatal=None, service_cls=SpeechService, metrics=None) -> FastAPI:
    """`metrics`: the server's `ServerMetrics` (default: a new one reading this host's GPUs)."""
    service = service_cls(config, engine, VoiceLibrary(), metrics or ServerMetrics(GpuMonitor()))
    life = Lifecycle(service, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = [asyncio.create_task(life.start()), asyncio.create_task(_sample_forever(service))]
        yield
        life.drain()
        for t in tasks:
            t.cancel()
        await asyncio.to_thread(life.join, config.grace_s + 10)
        if service.metrics.gpu is not None:
            service.metrics.gpu.close()

    app = FastAPI(title="vvtrt", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service, app.state.lifecycle = service, life
    http_errors.install(app, config.retry_after_s)
    app.include_router(speech.router)
    app.include_router(ws.router)
    _add_probes(app, service, life)
    _add_pages(app, service)
    app.openapi = lambda: openapi.build_schema(app, service)
    app.add_middleware(AbortTruncated)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(BearerAuth, api_key=config.api_key, metrics_key=config.metrics_key)
    app.add_middleware(AccessLog)
    return app


def _add_probes(app: FastAPI, service: SpeechService, life: Lifecycle) -> None:
    @app.get("/health")
    async def health():
        return {"status": "alive", "phase": life.phase}

    @app.get("/ready")
    async def ready():
        if life.phase == "ready" and service.ready:
            return {"ready": True, **startup_summary(service.engine)}
        reason = "failed" if life.error else life.phase  # the reason is in the log (it may name host paths)
        health = getattr(service.engine, "health", None)
        if health is not None and not health.ok:
            reason = "unhealthy"  # consecutive failed device steps: the log and vvtrt_engine_healthy say more
        return JSONResponse({"ready": False, "phase": reason}, status_code=503,
                            headers={"Retry-After": str(service.config.retry_after_s)})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        """Prometheus exposition (the API key or the metrics key when the server has one)."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def startup_summary(engine) -> dict:
    """How long the engine took to start and, compiled, whether its compile cache served it (no paths:
    /ready is open to every caller)."""
    s = getattr(engine, "startup", None)
    if not isinstance(s, dict) or s.get("total_s") is None:
        return {}
    cache = (s.get("compile") or {}).get("cache")
    return {"startup_s": s["total_s"], "compile_cache": cache["state"] if cache else None}


def _add_pages(app: FastAPI, service: SpeechService) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard():
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/dashboard/data")
    async def dashboard_data(seconds: float = Query(300.0, ge=1.0, le=600.0, allow_inf_nan=False)):
        extra = getattr(service.metrics, "dashboard_extra", None)  # a fleet's replicas (`serve --ray`)
        return {"series": service.metrics.recent(seconds), "gpu_available": bool(service.metrics.gpu and
                service.metrics.gpu.available), "max_streams": service.config.max_streams,
                "ready": service.ready, **(extra(seconds) if extra else {})}

    @app.get("/config")
    async def demo_config():
        """Microsoft's demo page asks for this: the voices and the default one."""
        names = service.voices.names()
        return {"voices": names or [DEFAULT_VOICE], "default_voice": names[0] if names else DEFAULT_VOICE,
                "response_formats": audio.supported_formats(), "default_cfg": service.default_cfg,
                "allow_frames": bool(service.config.allow_frames), "max_frames": service.config.max_frames,
                "auth": service.config.api_key is not None}
