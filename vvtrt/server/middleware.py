"""Pure-ASGI middleware (so streaming and WebSockets pass through untouched): a JSON-lines access log,
a request body limit and deadline, bearer-token authentication, and the abort of a stream cut short."""
from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import time
from urllib.parse import parse_qs

from vvtrt.server.truncation import StreamTruncated

access_log = logging.getLogger("vvtrt.access")

# Open without a key: liveness, readiness, and the static shells of the pages (HTML, JS and CSS shipped
# in the package, no data: the pages send the key on every call they make). Everything else needs it.
OPEN_EXACT = ("/health", "/ready", "/", "/dashboard", "/docs", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)
METRICS_PATH = "/metrics"


async def _send_json(send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + ([(b"www-authenticate", b"Bearer")] if status == 401 else [])})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """One JSON line per request on the `vvtrt.access` logger: time, client, method, path, status,
    bytes sent and duration (for a stream: until its last byte)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        t0, info = time.perf_counter(), {"status": None, "bytes": 0}

        async def logged_send(msg):
            kind = msg["type"]
            if kind == "http.response.start":
                info["status"] = msg["status"]
            elif kind == "http.response.body":
                info["bytes"] += len(msg.get("body", b""))
            elif kind == "websocket.accept":
                info["status"] = 101
            elif kind == "websocket.close" and info["status"] is None:
                info["status"] = 403
            elif kind == "websocket.send":
                info["bytes"] += len(msg.get("bytes") or b"") + len((msg.get("text") or "").encode())
            await send(msg)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("", 0)
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}",
                "method": scope.get("method", "WS"), "path": scope.get("path"), "status": info["status"],
                "bytes": info["bytes"], "ms": round((time.perf_counter() - t0) * 1000, 1)}))


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413 before any handler runs (Content-Length or not), and
    one that does not arrive within `timeout_s` (a part at a time, e.g. shorter than its Content-Length)
    with 408."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_json(send, 413, f"the request body is over the {self.max_bytes}-byte limit",
                                    "invalid_request_error")
        body, more = b"", True
        while more:
            try:
                msg = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                return await _send_json(send, 408, f"the request body did not arrive within {self.timeout_s:g} s",
                                        "invalid_request_error")
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _send_json(send, 413, f"the request body is over the {self.max_bytes}-byte limit",
                                        "invalid_request_error")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BearerAuth:
    """With a key, every route but liveness, readiness and the static page shells needs
    `Authorization: Bearer KEY`; WebSockets may instead pass `?api_key=KEY` (browsers cannot set headers on
    a WebSocket); `/metrics` also takes the separate metrics key."""

    def __init__(self, app, api_key: str | None, metrics_key: str | None = None):
        self.app, self.key, self.metrics_key = app, api_key, metrics_key

    def _allowed(self, scope) -> bool:
        path = scope.get("path", "")
        keys = [k for k in (self.key, self.metrics_key if path == METRICS_PATH else None) if k]
        if not keys or path in OPEN_EXACT or path.startswith(OPEN_PREFIXES):
            return True
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token and scope["type"] == "websocket":
            token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key") or [""])[0]
        return bool(token) and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
        await _send_json(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                         "authentication_error")


# uvicorn's ERROR for an app that returned with its response incomplete: for a stream this server cut on
# purpose (its own WARNING says why) it is dropped; for any other response it stays
UVICORN_INCOMPLETE = "ASGI callable returned without completing response."
_aborted_here: contextvars.ContextVar[bool] = contextvars.ContextVar("vvtrt_aborted_here", default=False)


class _QuietDeliberateAbort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_aborted_here.get() and record.getMessage() == UVICORN_INCOMPLETE)


_QUIET = _QuietDeliberateAbort()


class AbortTruncated:
    """Turns `StreamTruncated` (raised by a streaming body after its headers went out) into a connection
    closed without the final chunk: the ASGI app returns with the response incomplete, which uvicorn
    answers by closing the transport. One log line (the truncation's WARNING), no traceback, no ERROR:
    uvicorn logs the incomplete response in the same task, where `_aborted_here` marks it deliberate."""

    def __init__(self, app):
        self.app = app
        # once (addFilter ignores a filter already there); uvicorn's logging set-up keeps a logger's filters
        logging.getLogger("uvicorn.error").addFilter(_QUIET)

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except StreamTruncated as exc:
            _aborted_here.set(True)
            access_log.debug("aborted %s: %s", scope.get("path"), exc)
