"""A deadline for a request's headers: uvicorn times out idle keep-alive connections but not a client that
sends half a request line or half its headers and then waits (each such connection holds a socket and a
file descriptor forever). The body's deadline is the `BodyLimit` middleware's.

    uvicorn.Config(app, http=header_timeout_protocol(10.0))
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)


def _timeout_response() -> bytes:
    body = json.dumps({"error": {"message": "the request headers did not arrive in time",
                                 "type": "invalid_request_error", "code": 408}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def header_timeout_protocol(seconds: float):
    """uvicorn's httptools protocol class with a `seconds` deadline from a request's first byte (or the
    connection) to the end of its headers; past it: 408 and the connection is closed. None when httptools
    is not installed (uvicorn's h11 protocol is then used unchanged)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without httptools
        log.warning("httptools is not installed: request headers have no deadline")
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport is not None and not self.transport.is_closing():
                log.info("closing %s: headers not complete after %g s", self.client, seconds)
                self.transport.write(_timeout_response())
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
