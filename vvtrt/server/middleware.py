"""Pure-ASGI middleware (so streaming and WebSockets pass through untouched): a JSON-lines access log,
a request body limit, and bearer-token authentication of the API routes."""
from __future__ import annotations

import hmac
import json
import logging
import time
from urllib.parse import parse_qs

access_log = logging.getLogger("vvtrt.access")

# Routes open without a key: liveness, readiness, metrics, the pages and their assets.
OPEN_PREFIXES = ("/health", "/ready", "/metrics", "/static/", "/dashboard", "/favicon", "/config")
OPEN_EXACT = ("/",)


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
    """Refuses a request body over `max_bytes` with 413 before any handler runs (Content-Length or not)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_json(send, 413, f"the request body is over the {self.max_bytes}-byte limit",
                                    "invalid_request_error")
        body, more = b"", True
        while more:
            msg = await receive()
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
    """`Authorization: Bearer KEY` on the API routes; WebSockets may instead pass `?api_key=KEY` (browsers
    cannot set headers on a WebSocket)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, api_key

    def _allowed(self, scope) -> bool:
        path = scope.get("path", "")
        if path in OPEN_EXACT or path.startswith(OPEN_PREFIXES):
            return True
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token and scope["type"] == "websocket":
            token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key") or [""])[0]
        return bool(token) and hmac.compare_digest(token.encode(), self.key.encode())

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
        await _send_json(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                         "authentication_error")
