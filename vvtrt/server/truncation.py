"""A stream cut short must look cut short: the reason a stream ended early (the reader fell behind, the
server shut down, a frame step failed), logged, counted in `/metrics` (`vvtrt_streams_truncated_total`)
and raised as `StreamTruncated`. HTTP aborts the chunked body (no terminating chunk: curl, httpx and the
OpenAI SDK raise); a WebSocket gets a `generation_error` event and a non-1000 close code.
"""
from __future__ import annotations

import logging

from vvtrt.serving.api import Cancelled, SlowReader

log = logging.getLogger(__name__)

# reason -> WebSocket close code
CLOSE_CODES = {"slow_reader": 1008, "shutdown": 1001, "cancelled": 1011, "error": 1011}


class StreamTruncated(Exception):
    """A stream that ended before its audio was complete. Deliberately not a VvtrtError: once a response's
    headers are sent no error handler may turn it into a response; the connection is aborted instead."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    @property
    def close_code(self) -> int:
        return CLOSE_CODES.get(self.reason, 1011)


def truncation(opened, service) -> StreamTruncated | None:
    """Why the finished `opened` stream ended early (None if it ended normally or its client stopped it),
    logged and counted once."""
    err, stop = opened.error, opened.stop_reason()
    if err is None and not stop.startswith("error"):
        return None
    if isinstance(err, SlowReader):
        reason = "slow_reader"
    elif isinstance(err, Cancelled):
        reason = "shutdown" if service.draining else "cancelled"
    elif isinstance(err, Exception) or stop.startswith("error"):
        reason = "error"
    else:  # the reader itself went away (a disconnect): nobody is left to tell
        return None
    frames = opened.summary.frames if opened.summary is not None else 0
    message = f"the stream was cut short after {frames} frames ({reason}): {err or stop}"
    log.warning("request %s truncated: %s", opened.request_id, message)
    service.metrics.observe_truncated(reason)
    return StreamTruncated(reason, message)
