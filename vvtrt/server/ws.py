"""WS /v1/audio/stream (also /stream): the protocol of Microsoft's realtime demo (demo/web/app.py), so its
page and clients work against vvtrt, plus a text mode for text that arrives while speech is produced.

One-shot mode (`?text=...`): query `text`, `cfg` (default: the model's, as over HTTP), `steps` (only the
model's own value), `voice` (+ vvtrt's `seed`, `frames`, `max_frames`). The server sends binary messages
of int16 little-endian PCM, 24 kHz mono, one model frame (3200 samples) each, and text messages
`{"type": "log", "event", "data", "timestamp"}` with the events backend_request_received,
backend_first_chunk_sent, model_progress, backend_stream_complete and generation_error; a full server
answers backend_busy and closes with 1013. Bad input: generation_error then close code 4400. A stream cut
short: generation_error with its `reason`, then close 1008 (slow reader), 1001 (shutdown) or 1011. The
client may send `{"type": "stop"}` to cancel.

A browser page may connect only from the server's own origin, a loopback origin or one of `--ws-origin`
(a request without `Origin` is not from a browser and is accepted); others are refused with HTTP 403.

Text mode (no `text`): see `vvtrt.server.ws_text` (a Realtime model: `vvtrt.server.realtime_service`).
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from vvtrt.errors import InputError, VvtrtError
from vvtrt.server import audio, input_rules
from vvtrt.server.config import is_loopback
from vvtrt.server.truncation import StreamTruncated, truncation
from vvtrt.serving.api import SAMPLE_RATE, EngineBusy, EngineNotReady

log = logging.getLogger(__name__)
router = APIRouter()
CLOSE_BUSY, CLOSE_BAD_INPUT, CLOSE_ERROR = 1013, 4400, 1011


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


async def send_log(ws: WebSocket, event: str, **data) -> None:
    if ws.client_state == WebSocketState.CONNECTED:
        await ws.send_text(json.dumps({"type": "log", "event": event, "data": data, "timestamp": timestamp()}))


def query_options(ws: WebSocket) -> dict:
    """Request fields from the query string; malformed numbers are an InputError (the demo's page sends
    only valid ones)."""
    q = ws.query_params

    def num(name, cast, default):
        raw = q.get(name)
        if raw in (None, ""):
            return default
        try:
            return cast(raw)
        except ValueError:
            raise InputError(f"query parameter {name}={raw!r} is not a valid {cast.__name__}") from None
    return {"voice": q.get("voice") or None, "cfg_scale": num("cfg", float, None), "seed": num("seed", int, 0),
            "frames": num("frames", int, None), "max_frames": num("max_frames", int, None)}


async def close(ws: WebSocket, code: int = 1000, reason: str = "") -> None:
    if ws.client_state == WebSocketState.CONNECTED:
        try:
            await ws.close(code=code, reason=reason[:120])
        except (RuntimeError, WebSocketDisconnect):
            pass


async def refuse(ws: WebSocket, exc: BaseException) -> None:
    """Tell the client why its request was not run, in the demo's vocabulary, and close."""
    if isinstance(exc, StreamTruncated):
        await send_log(ws, "generation_error", message=str(exc), reason=exc.reason)
        await close(ws, exc.close_code, f"stream cut short: {exc.reason}")
    elif isinstance(exc, (EngineBusy, EngineNotReady)):
        await send_log(ws, "backend_busy", message=str(exc))
        await close(ws, CLOSE_BUSY, "Service busy")
    elif isinstance(exc, InputError):
        await send_log(ws, "generation_error", message=str(exc))
        await close(ws, CLOSE_BAD_INPUT, "bad request")
    else:
        log.error("websocket request failed: %r", exc, exc_info=not isinstance(exc, VvtrtError))
        await send_log(ws, "generation_error", message=str(exc) if isinstance(exc, VvtrtError) else "internal error")
        await close(ws, CLOSE_ERROR, "internal error")


async def pump_audio(ws: WebSocket, opened, progress: bool = True) -> int:
    """Send every chunk of `opened` as a binary message; returns the number of frames sent."""
    sent = samples = 0
    try:
        async for chunk in opened:
            await ws.send_bytes(audio.to_pcm16(chunk.audio))
            sent += 1
            samples += len(chunk.audio)
            if sent == 1:
                await send_log(ws, "backend_first_chunk_sent")
            if progress:
                await send_log(ws, "model_progress", generated_sec=samples / SAMPLE_RATE,
                               chunk_sec=len(chunk.audio) / SAMPLE_RATE)
    finally:
        opened.close()
    return sent


def completion(opened, frames: int) -> dict:
    s = opened.summary
    out = {"stop_reason": opened.stop_reason(), "frames": frames, "request_id": opened.request_id}
    replica = getattr(opened.handle, "replica", None)  # `serve --ray`: the replica that ran it
    if replica is not None:
        out["replica"] = replica
    if s is not None and s.frames:
        out.update(ttfa_ms=round(s.ttfa_s * 1000, 1), rtf=round(s.rtf, 4))
    return out


async def watch_client(ws: WebSocket, on_gone) -> None:
    """Until the client disconnects or sends {"type": "stop"}: then `on_gone()`."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("text") and _is_stop(msg["text"]):
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    on_gone()


def _is_stop(text: str) -> bool:
    try:
        return json.loads(text).get("type") == "stop"
    except (ValueError, AttributeError):
        return False


async def one_shot(ws: WebSocket, text: str) -> None:
    service = ws.app.state.service
    try:
        opts = query_options(ws)
        input_rules.check_steps(ws.query_params.get("steps"), service.diffusion_steps)
        cfg = service.default_cfg if opts["cfg_scale"] is None else opts["cfg_scale"]
        await send_log(ws, "backend_request_received", text_length=len(text), cfg_scale=cfg,
                       inference_steps=service.diffusion_steps, voice=opts["voice"])
        opened = await service.open(service.build_request(text, **opts))
    except Exception as exc:
        return await refuse(ws, exc)
    stopped = asyncio.Event()

    def on_gone():
        stopped.set()
        opened.handle.cancel()

    watcher = asyncio.create_task(watch_client(ws, on_gone))
    try:
        frames = await pump_audio(ws, opened)
        cut = None if stopped.is_set() else truncation(opened, service)
        if cut is not None:
            return await refuse(ws, cut)
        await send_log(ws, "backend_stream_complete", **completion(opened, frames))
    except (WebSocketDisconnect, RuntimeError, OSError):
        log.info("client of %s went away", opened.request_id)
    except Exception as exc:
        await refuse(ws, exc)
    finally:
        watcher.cancel()
        opened.close()
    await close(ws)


def origin_allowed(ws: WebSocket) -> bool:
    """No `Origin` (not a browser), the server's own origin, a loopback origin, or one of `--ws-origin`."""
    origin = ws.headers.get("origin")
    if not origin:
        return True
    allowed = ws.app.state.service.config.ws_origins
    if "*" in allowed or origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}:
        return True
    parts = urlsplit(origin)
    if parts.netloc and parts.netloc.lower() == ws.headers.get("host", "").lower():
        return True
    return bool(parts.hostname) and is_loopback(parts.hostname)


@router.websocket("/v1/audio/stream")
@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    if not origin_allowed(ws):
        log.warning("refused a WebSocket from origin %r (allow it with --ws-origin)", ws.headers.get("origin"))
        return await ws.close(code=1008, reason="origin not allowed")
    await ws.accept()
    text = ws.query_params.get("text")
    if text:
        await one_shot(ws, text)
    else:
        await ws.app.state.service.text_mode(ws)
