"""The front's handle on one request running in a replica: the engine's `RequestHandle` contract (async
iteration of chunks, `cancel`, `done`, `summary`) over the replica's actor generator, so the server's
endpoints use it unchanged.

Times are the front's own (submit, start, each chunk's arrival). The request stays on its replica from
submit to end. A replica that dies mid-stream ends the stream with `ReplicaLost` (a failed request: the
server's truncation signal); one that refuses it before it starts hands the engine's typed error to the
admission (`refusal`: 429, 400, ...).
"""
from __future__ import annotations

import asyncio
import logging
import time

from vvtrt.errors import VvtrtError
from vvtrt.serving.api import Cancelled, Chunk, RequestSummary

log = logging.getLogger(__name__)


class ReplicaLost(VvtrtError):
    """The replica running a request died or became unreachable."""


class RemoteHandle:
    def __init__(self, request_id: str, replica, generator, on_end):
        self.request_id = request_id
        self.replica = replica.name          # the `x-vvtrt-replica` header
        self._replica = replica
        self._gen = generator
        self._on_end = on_end
        self._summary = RequestSummary(request_id, submitted_t=time.perf_counter())
        self._done = False
        self._error: VvtrtError | None = None
        self._last_t = 0.0
        self.refusal: VvtrtError | None = None   # the replica did not take it (raised at admission)
        self.lost = False                        # the replica died or became unreachable meanwhile
        self._start = asyncio.ensure_future(self._await_start())

    async def _next(self):
        """The replica's next event (None once its generator ended); `ReplicaLost` if it died."""
        try:
            ref = await self._gen.__anext__()
            return await ref
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError, ActorDiedError, ActorUnavailableError, a lost object
            self.lost = True
            raise ReplicaLost(f"replica {self.replica} failed while running request {self.request_id} "
                              f"({type(exc).__name__})") from None

    async def _await_start(self) -> None:
        from vvtrt.server.fleet_replica import error_of

        try:
            event = await self._next()
        except ReplicaLost as exc:
            event = ("refused", "EngineNotReady", f"{exc}: retry")
        if event is None or event[0] != "started":
            kind, message = (event[1], event[2]) if event and event[0] == "refused" else ("EngineNotReady", "")
            self.refusal = error_of(kind, message or f"replica {self.replica} did not start the request: retry")
            self._finish("refused", self.refusal)
            return
        self._summary.started_t = time.perf_counter()

    async def __aiter__(self):
        from vvtrt.server.fleet_replica import error_of

        await asyncio.shield(self._start)
        if self.refusal is not None:
            raise self.refusal
        s = self._summary
        try:
            while not self._done:
                try:
                    event = await self._next()
                except ReplicaLost as exc:
                    self._finish("error: ReplicaLost", exc)
                    break
                if event is None:
                    self._finish("error: ReplicaLost", ReplicaLost(f"replica {self.replica} ended request "
                                                                   f"{self.request_id} without its end"))
                elif event[0] == "chunk":
                    now = time.perf_counter()
                    if s.frames:
                        s.chunk_gaps_s.append(now - self._last_t)
                    else:
                        s.first_chunk_t = now
                    self._last_t, s.frames = now, s.frames + 1
                    yield Chunk(event[1], event[2], now)
                elif event[0] == "end":
                    self._finish(event[1], error_of(event[2], event[3]) if event[2] else None)
        except BaseException:  # the reader went away (a disconnect): the replica stops the run too
            self.cancel()
            raise
        if self._error is not None:
            raise self._error

    def _finish(self, stop_reason: str, error: VvtrtError | None = None) -> bool:
        if self._done:
            return False
        self._done = True
        self._error = error
        self._summary.stop_reason = stop_reason
        self._summary.finished_t = time.perf_counter()
        self._on_end(self)
        return True

    def cancel(self) -> None:
        """Stop the request here and in its replica."""
        if self._finish("cancelled", Cancelled(f"request {self.request_id} was cancelled")):
            import ray

            self._start.cancel()
            try:
                self._replica.actor.cancel.remote(self.request_id)  # the engine frees its slot now
                ray.cancel(self._gen)  # and the replica's generator stops (nobody reads it any more)
            except Exception as exc:  # the replica is gone: nothing runs there any more
                log.debug("cancel on %s: %s", self.replica, exc)

    def done(self) -> bool:
        return self._done

    def summary(self) -> RequestSummary:
        s = self._summary
        return RequestSummary(s.request_id, s.stop_reason, s.frames, s.prompt_tokens, s.submitted_t, s.started_t,
                              s.first_chunk_t, s.finished_t, list(s.chunk_gaps_s))

