"""The front's handle on one request running in a replica of `serve --ray`: an `EventHandle`
(`vvtrt.server.event_handle`: the `RequestHandle` contract over a remote stream of events) whose source is
the replica's actor generator. The request stays on its replica from submit to end; a replica that dies
mid-stream ends the stream with `ReplicaLost`.
"""
from __future__ import annotations

import asyncio
import logging

from vvtrt.server.event_handle import EngineLost, EventHandle

log = logging.getLogger(__name__)


class ReplicaLost(EngineLost):
    """The replica running a request died or became unreachable."""


class RaySource:
    """The events of one request from its replica's actor generator."""

    def __init__(self, request_id: str, replica, generator):
        self.request_id, self.replica, self._gen = request_id, replica, generator

    async def next(self):
        try:
            ref = await self._gen.__anext__()
            return await ref
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError, ActorDiedError, ActorUnavailableError, a lost object
            raise ReplicaLost(f"replica {self.replica.name} failed while running request {self.request_id} "
                              f"({type(exc).__name__})") from None

    def cancel(self) -> None:
        import ray

        try:
            self.replica.actor.cancel.remote(self.request_id)  # the engine frees its slot now
            ray.cancel(self._gen)  # and the replica's generator stops (nobody reads it any more)
        except Exception as exc:  # the replica is gone: nothing runs there any more
            log.debug("cancel on %s: %s", self.replica.name, exc)


def remote_handle(request_id: str, replica, generator, on_end) -> EventHandle:
    """The handle of `request_id` running on `replica` (`x-vvtrt-replica` names it)."""
    return EventHandle(request_id, RaySource(request_id, replica, generator), on_end, where=f"replica {replica.name}",
                       replica=replica.name, lost_error=ReplicaLost)
