"""One replica of `vvtrt serve --ray`: a Ray actor that holds the ordinary serving engine on its device
(the GPU Ray assigned it, or the CPU) and streams each request's chunks back to the front process.

The actor builds and starts the engine in its constructor, so when Ray restarts a replica that died the
new process serves again without the front's help. `stream()` is an actor generator; it yields tagged
tuples, never raising, so the front gets the engine's typed errors by name:

    ("refused", error_type, message)         the engine did not take the request (busy, bad input...)
    ("started",)                             the request holds a slot now
    ("chunk", index, audio float32 [3200])   one model frame
    ("end", stop_reason, error_type | None, message)
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import time

import ray

from vvtrt.errors import VvtrtError
from vvtrt.server.event_handle import BACKPRESSURE_CHUNKS, request_on_device, start_error_line
from vvtrt.server.metrics import ServerMetrics, outcome_label

log = logging.getLogger(__name__)
SAMPLE_EVERY_S = 1.0
_POLL_S = 0.01


class ReplicaServer:
    """The actor's class (`ray.remote` is applied by the fleet with the replica's resources)."""

    def __init__(self, name: str, config):
        logging.basicConfig(level=logging.INFO, format=f"%(levelname)s replica {name} %(name)s: %(message)s")
        self.name, self.config = name, config
        self.error: str | None = None
        self.handles: dict = {}
        self.metrics = ServerMetrics(None)
        self.last_point: dict = {}
        self.engine = None
        try:
            from vvtrt.server.serve import build_engine

            self.engine = build_engine(config)
            self.engine.start()
        except Exception as exc:  # reported by ready(): the front refuses to start with this line
            self.error = start_error_line(exc)
            log.error("replica %s failed to start: %s", name, self.error)
            return
        threading.Thread(target=self._sample_forever, name="vvtrt-replica-metrics", daemon=True).start()
        log.info("replica %s ready on %s (pid %d)", name, config.device, os.getpid())

    def _sample_forever(self) -> None:
        while True:
            try:
                self.last_point = self.metrics.sample(self.engine.stats())
            except Exception as exc:  # a sample must never end the replica
                log.debug("replica metrics: %s", exc)
            time.sleep(SAMPLE_EVERY_S)

    # -- calls from the front ------------------------------------------------------------------------
    async def ready(self) -> dict:
        """Where this replica runs, once its engine takes requests; raises its start-up error."""
        if self.error is not None:
            raise VvtrtError(self.error)
        return self._where()

    def _where(self) -> dict:
        return {"pid": os.getpid(), "node": socket.gethostname(), "device": self.config.device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    async def status(self) -> dict:
        """The engine's counters, this replica's metrics (Prometheus text) and its latest dashboard point."""
        if self.engine is None:
            return {"ok": False, "error": self.error}
        s = self.engine.stats()
        return {"ok": True, **self._where(), "stats": dataclasses.asdict(s), "point": self.last_point,
                "exposition": self.metrics.exposition().decode()}

    async def encode_voice(self, wav):
        emb = await asyncio.to_thread(self.engine.encode_voice, wav)
        return dataclasses.replace(emb, embeds=emb.embeds.detach().cpu())

    async def cancel(self, request_id: str) -> None:
        handle = self.handles.get(request_id)
        if handle is not None:
            handle.cancel()

    async def stop(self, grace_s: float) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop, grace_s)

    @ray.method(_generator_backpressure_num_objects=BACKPRESSURE_CHUNKS)
    async def stream(self, request):
        """The request's events (see module doc)."""
        try:
            handle = self.engine.submit(request_on_device(request, self.config.device))
        except Exception as exc:
            self.metrics.observe_done(outcome_label(type(exc).__name__))
            yield ("refused", type(exc).__name__, str(exc))
            return
        self.handles[handle.request_id] = handle
        try:
            while not handle.done() and not handle.summary().started_t:
                await asyncio.sleep(_POLL_S)
            yield ("started",)
            async for chunk in self._chunks(handle):
                yield chunk
            yield ("end", handle.summary().stop_reason, None, "")
        except VvtrtError as exc:  # SlowReader, Cancelled, a failed step: by name
            yield ("end", handle.summary().stop_reason, type(exc).__name__, str(exc))
        finally:
            self.handles.pop(handle.request_id, None)
            if not handle.done():  # the front went away (its generator was cancelled)
                handle.cancel()
            self._observe(handle)

    async def _chunks(self, handle):
        last = None
        async for chunk in handle:
            now = time.perf_counter()
            if last is None:
                self.metrics.observe_ttfa(now - handle.summary().submitted_t)
            else:
                self.metrics.observe_gap(now - last)
            last = now
            yield ("chunk", chunk.index, chunk.audio)

    def _observe(self, handle) -> None:
        s = handle.summary()
        reason = s.stop_reason or "cancelled"
        self.metrics.observe_done(outcome_label(reason), s.rtf if s.frames else None)
        if reason.startswith(("error", "cancelled: slow")):
            self.metrics.observe_truncated("error" if reason.startswith("error") else "slow_reader")
