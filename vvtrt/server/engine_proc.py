"""`vvtrt serve --engine-process`: the engine the server's endpoints see, with the serving engine's contract
(start, stop, ready, health, submit, in_flight, stats, encode_voice, startup), while the engine itself
runs in a process of its own (`vvtrt.server.engine_child`), so the HTTP process's interpreter does only
HTTP and WebSocket work and the engine process's only the engine's.

    engine = ProcessEngine(config)     # config: the resolved ServerConfig (as build_engine takes it)
    engine.start()                     # the engine process is up and its engine takes requests
    handle = engine.submit(request)    # an EventHandle: async iteration of chunks, cancel, done, summary

Refusals (busy, bad input, not ready) come back as the engine's typed errors at admission. Stats are
polled every `POLL_S`. An engine process that dies ends its running streams with `EngineLost` (their
clients see a truncated stream), `/ready` answers 503, and a new engine process is started (after
`MAX_FAILED_STARTS` failed starts in a row the server stays unhealthy). One that reports itself unhealthy
(consecutive failed device steps) is ended and replaced the same way.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import threading
import time

from vvtrt.server.event_handle import BACKPRESSURE_CHUNKS, EngineLost, EventHandle
from vvtrt.server.piped_text import end_text, forward_text, live_text
from vvtrt.serving.api import EngineNotReady, EngineStats

log = logging.getLogger(__name__)
POLL_S = 0.5
MAX_FAILED_STARTS = 5
RESTART_BACKOFF_S = (1.0, 5.0, 15.0, 30.0, 60.0)
WHERE = "the engine process"


class _Health:
    """`health.ok`: false while no engine process takes requests (dead, restarting, unhealthy)."""

    def __init__(self, engine: "ProcessEngine"):
        self.engine = engine

    @property
    def ok(self) -> bool:
        e = self.engine
        return not e._started or e._stopping or (e.link is not None and e.link.alive and e._child_healthy)


class ProcessSource:
    """The events of one request, handed over by the reader thread; reading a chunk acks it."""

    def __init__(self, engine: "ProcessEngine", rid: str, loop):
        self.engine, self.rid, self.loop = engine, rid, loop
        self.events: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self.unacked = 0
        self.text = None  # the request's text while it still arrives
        self.engine_done = False  # the engine ended it; its last chunks and end wait for the reader

    def push(self, events) -> None:
        self.events.extend(events)
        self.arrived.set()

    async def next(self):
        if self.unacked:  # the reader took the last chunk: the engine may send one more
            self.engine.ack(self.rid, self.unacked, self.loop)
            self.unacked = 0
        while not self.events:
            self.arrived.clear()
            await self.arrived.wait()
        event = self.events.popleft()
        if event[0] == "lost":
            raise EngineLost(event[1])
        if event[0] == "chunk":
            self.unacked = 1
        return event

    def cancel(self) -> None:
        self.engine.cancel_remote(self.rid)


class ProcessEngine:
    def __init__(self, config):
        self.config = config
        self.health = _Health(self)
        self.voice_device = "cpu"  # voices are encoded in the engine process and held here on the CPU
        self.link = None
        self.ring = None
        self.startup: dict | None = None
        self.facts: dict = {}  # what the endpoints read of the engine (`SpeechService.engine_facts`), at start-up
        self._sources: dict[str, ProcessSource] = {}
        self._acks: dict = {}
        self._ack_loops: set = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stats: dict = {}
        self._child_healthy = True
        self._started = self._stopping = False
        self._lost_since: float | None = None
        self._failed_starts = 0
        self._link_lock = threading.Lock()  # `stop` against a restart: no new engine process once stopping
        self._starting = None               # the link whose process is starting
        self._poll_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._started and not self._stopping and self.health.ok and bool(self._stats.get("ready"))

    def start(self) -> None:
        """Start the engine process and wait until its engine takes requests (raises its start-up error)."""
        from vvtrt.server.chunk_ring import ChunkRing

        self.ring = ChunkRing.create(min(2048, max(64, BACKPRESSURE_CHUNKS * self.config.max_streams)))
        try:
            self._start_link()
        except BaseException:
            self.ring.close()
            raise
        self._started = True
        self._poll_thread = threading.Thread(target=self._poll_forever, name="vvtrt-engine-poll", daemon=True)
        self._poll_thread.start()

    def _start_link(self) -> None:
        from vvtrt.server.engine_link import EngineLink

        link = EngineLink(self.config, self.ring, self._on_events, self._on_status, self._on_lost)
        with self._link_lock:
            if self._stopping:
                raise EngineNotReady("the server is shutting down")
            self._starting = link
        try:
            link.start()  # `stop` meanwhile kills its process: then this raises
        finally:
            with self._link_lock:
                self._starting, stopping = None, self._stopping
        if stopping:  # `stop` ran while it started: it must not outlive the server
            link.stop(0.0)
            raise EngineNotReady("the server is shutting down")
        self.link, self.startup, self.facts = link, link.info.get("startup"), link.info.get("facts") or {}
        self._child_healthy, self._stats = True, {}
        link.send(("status",))
        deadline = time.monotonic() + 30.0
        while not self._stats and link.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("engine process ready (pid %s)", link.pid)

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new requests, let the engine process stop its engine (running requests get `grace_s`,
        then are cancelled), end the process and free the shared memory."""
        from vvtrt.serving.api import Cancelled

        from vvtrt.server.engine_link import describe_exit

        with self._link_lock:
            self._stopping, starting = True, self._starting
        if starting is not None:  # a new engine process is starting (a restart): it is not wanted any more
            starting.abort()
        if self._poll_thread is not None and self._poll_thread is not threading.current_thread():
            self._poll_thread.join(60.0)  # no restart runs once the shared memory goes
        if self.link is not None:
            self.link.stop(grace_s)
            log.info("the engine process (pid %s) ended (%s)", self.link.pid, describe_exit(self.link.proc.exitcode))
        self._end_all(Cancelled, "the server shut down")
        deadline = time.monotonic() + 5.0
        while self.in_flight() and time.monotonic() < deadline:  # the streams hear their end
            time.sleep(0.05)
        if self.ring is not None:
            self.ring.close()

    # -- requests -------------------------------------------------------------------------------------
    def submit(self, request) -> EventHandle:
        """An `EventHandle` of `request` in the engine process (its refusal is raised at admission)."""
        link = self.link
        if not self._started or self._stopping or link is None or not link.alive:
            raise EngineNotReady("the engine process is not running (starting, restarting or shutting down)")
        rid = f"req-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        source = ProcessSource(self, rid, loop)
        with self._lock:
            self._sources[rid] = source
        handle = EventHandle(rid, source, self._release, where=WHERE)
        text = live_text(request)  # text still arriving (the Realtime WS text mode): its pieces follow
        source.text = text  # pickled, the request takes an empty, open copy of it to the engine process
        if not link.send(("submit", rid, dataclasses.replace(request, request_id=rid))):
            source.push([("lost", f"{WHERE} ended before it got request {rid}")])
        elif text is not None:
            forward_text(text, link.send, rid)
        return handle

    def _release(self, handle) -> None:
        with self._lock:
            source = self._sources.pop(handle.request_id, None)
            self._acks.pop(handle.request_id, None)
        if source is not None and source.text is not None:
            end_text(source.text)  # its producer learns the end, as from the engine in one process

    def cancel_remote(self, rid: str) -> None:
        if self.link is not None:
            self.link.send(("cancel", rid))

    def ack(self, rid: str, n: int, loop) -> None:
        """Record chunks read (on the event loop); one message per loop iteration carries them all."""
        self._acks[rid] = self._acks.get(rid, 0) + n
        if loop not in self._ack_loops:
            self._ack_loops.add(loop)
            loop.call_soon(self._flush_acks, loop)

    def _flush_acks(self, loop) -> None:
        self._ack_loops.discard(loop)
        acks, self._acks = self._acks, {}
        if acks and self.link is not None:
            self.link.send(("ack", acks))

    def in_flight(self) -> int:
        """Requests queued or running in the engine: released when one ends there, whoever still holds
        its socket."""
        with self._lock:
            return sum(1 for s in self._sources.values() if not s.engine_done)

    def encode_voice(self, wav):
        if self.link is None:
            raise EngineNotReady("the engine process is not running")
        return self.link.call("encode", wav)

    def stats(self) -> EngineStats:
        s = self._stats
        return EngineStats(self.ready, int(s.get("active", 0)), int(s.get("queued", 0)),
                           int(s.get("max_streams", self.config.max_streams)), int(s.get("frames_total", 0)),
                           int(s.get("prefill_tokens_total", 0)), dict(s.get("requests_by_outcome", {})),
                           healthy=self.health.ok, held=int(s.get("held", 0)),
                           step_failures=int(s.get("step_failures", 0)))

    # -- the reader thread's callbacks ----------------------------------------------------------------
    def _on_events(self, batch) -> None:
        """Hand a message's events to their handles: one wake-up per event loop for the whole batch."""
        by_loop: dict = {}
        with self._lock:
            for rid, event in batch:
                source = self._sources.get(rid)
                if source is not None and event[0] == "finished":
                    source.engine_done = True
                elif source is not None:  # else: cancelled here meanwhile
                    by_loop.setdefault(source.loop, {}).setdefault(source, []).append(event)
        for loop, items in by_loop.items():
            _deliver_threadsafe(loop, items)

    def _on_status(self, stats: dict) -> None:
        self._stats = stats
        if not stats.get("healthy", True) and self._child_healthy:
            self._child_healthy = False
            log.error("the engine process (pid %s) reports itself unhealthy: ending it for a new one", stats.get("pid"))
            threading.Thread(target=self.link.kill, name="vvtrt-engine-kill", daemon=True).start()

    def _on_lost(self, link) -> None:
        from vvtrt.server.engine_link import describe_exit

        link.proc.join(5.0)
        log.error("the engine process (pid %s) died (%s): its running streams end with an error; starting a new "
                  "one", link.pid, describe_exit(link.proc.exitcode))
        self._lost_since = time.monotonic()
        self._end_all(EngineLost, f"{WHERE} died")

    def _end_all(self, error, message: str) -> None:
        """End every request the front still has: `EngineLost` (a failed stream) or `Cancelled` (shutdown)."""
        event = ("lost", message) if error is EngineLost else ("end", "cancelled", error.__name__, message)
        with self._lock:
            sources = list(self._sources.values())
        by_loop: dict = {}
        for s in sources:
            by_loop.setdefault(s.loop, {})[s] = [event]
        for loop, items in by_loop.items():
            _deliver_threadsafe(loop, items)

    # -- the poll thread ------------------------------------------------------------------------------
    def _poll_forever(self) -> None:
        while not self._stopping:
            link = self.link
            if link.alive:
                link.send(("status",))
            elif self._failed_starts < MAX_FAILED_STARTS:
                self._restart()
            time.sleep(POLL_S)

    def _restart(self) -> None:
        wait = RESTART_BACKOFF_S[min(self._failed_starts, len(RESTART_BACKOFF_S) - 1)]
        if time.monotonic() - (self._lost_since or 0.0) < wait and self._failed_starts:
            return
        self.link.close()
        try:
            self._start_link()
            self._failed_starts = 0
        except Exception as exc:
            if self._stopping:
                return
            self._failed_starts += 1
            self._lost_since = time.monotonic()
            if self._failed_starts >= MAX_FAILED_STARTS:
                log.error("the engine process failed to start %d times in a row (last: %s): the server stays "
                          "unhealthy (/ready 503); restart it", self._failed_starts, exc)
            else:
                log.error("the engine process failed to start (%s): trying again", exc)


def _deliver_threadsafe(loop, items: dict) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # that event loop is closed: its readers are gone
        pass


def _deliver(items: dict) -> None:
    for source, events in items.items():
        source.push(events)
