"""The front's handle on one request running in a replica of `serve --ray`: an `EventHandle`
(`vvtrt.server.event_handle`: the `RequestHandle` contract over a remote stream of events) whose source is
the replica's actor generator. A replica that fails before the request's first event (it died, or became
unreachable, before taking it) hands the request to another ready replica (`reroute`); from the first event
on the request stays on its replica, and a replica that dies mid-stream ends the stream with `ReplicaLost`.
"""
from __future__ import annotations

import asyncio
import logging

from vvtrt.server.event_handle import EngineLost, EventHandle

log = logging.getLogger(__name__)


class ReplicaLost(EngineLost):
    """The replica running a request died or became unreachable."""


def _replica_gone(exc: BaseException) -> bool:
    """The replica died or cannot be reached (Ray restarts it), not: the request failed in a live replica
    (`RayTaskError`), which another replica would fail the same way."""
    from ray import exceptions as rex

    return isinstance(exc, (rex.ActorDiedError, rex.ActorUnavailableError))


class RaySource:
    """The events of one request from its replica's actor generator. `reroute(replica, request_id,
    generator)`: when the replica died or became unreachable before the first event, the request on
    another ready replica, `(replica, request_id, generator)`, or None (none can take it); `moved(replica,
    request_id)` tells the handle where the request went."""

    def __init__(self, request_id: str, replica, generator, reroute=None):
        self.request_id, self.replica, self._gen = request_id, replica, generator
        self._reroute = reroute
        self.moved = None
        self._seen = False

    async def next(self):
        while True:
            try:
                ref = await self._gen.__anext__()
                event = await ref
                self._seen = True
                return event
            except StopAsyncIteration:
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RayActorError, ActorDiedError, ActorUnavailableError, a lost object
                lost = ReplicaLost(f"replica {self.replica.name} failed while running request {self.request_id} "
                                   f"({type(exc).__name__})")
                movable = not self._seen and self._reroute is not None and _replica_gone(exc)
                successor = self._reroute(self.replica, self.request_id, self._gen) if movable else None
                if successor is None:
                    raise lost from None
                log.warning("%s before it started: request moved to replica %s as %s", lost,
                            successor[0].name, successor[1])
                self.replica, self.request_id, self._gen = successor
                if self.moved is not None:
                    self.moved(self.replica, self.request_id)

    def cancel(self) -> None:
        import ray

        try:
            self.replica.actor.cancel.remote(self.request_id)  # the engine frees its slot now
            ray.cancel(self._gen)  # and the replica's generator stops (nobody reads it any more)
        except Exception as exc:  # the replica is gone: nothing runs there any more
            log.debug("cancel on %s: %s", self.replica.name, exc)


def remote_handle(request_id: str, replica, generator, on_end, reroute=None) -> EventHandle:
    """The handle of `request_id` running on `replica` (`x-vvtrt-replica` names it; `reroute`: see
    `RaySource`). `on_end(handle, replica)` gets the replica the request ended on."""
    source = RaySource(request_id, replica, generator, reroute)
    handle = EventHandle(request_id, source, lambda h: on_end(h, source.replica), where=f"replica {replica.name}",
                         replica=replica.name, lost_error=ReplicaLost)
    source.moved = lambda to, new_id: handle.moved(new_id, f"replica {to.name}", replica=to.name)
    return handle
