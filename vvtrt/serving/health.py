"""The engine's health: consecutive failed device steps. After `limit` in a row the engine is unhealthy
(`/ready` answers 503 and `vvtrt_engine_healthy` is 0) so a load balancer stops sending it work; a step
that succeeds in between resets the count. Unhealthy is final for the process: restart it."""
from __future__ import annotations

import threading


class Health:
    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.consecutive = 0
        self.failures_total = 0
        self.reason = ""
        self._ok = True
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return self._ok

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.consecutive += 1
            self.failures_total += 1
            if self.consecutive >= self.limit and self._ok:
                self._ok = False
                self.reason = (f"{self.consecutive} consecutive device steps failed "
                               f"(last: {type(exc).__name__}: {exc})")

    def succeeded(self) -> None:
        with self._lock:
            self.consecutive = 0
