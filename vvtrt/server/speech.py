"""The OpenAI-compatible HTTP API: POST /v1/audio/speech, GET /v1/audio/voices, GET /v1/models."""
from __future__ import annotations

import asyncio
from typing import Literal, Union

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from vvtrt.errors import InputError, VvtrtError
from vvtrt.server import audio
from vvtrt.serving.api import Cancelled, EngineNotReady

router = APIRouter()
MODEL_ID = "vvtrt"
STREAMING_ACCEPT = ("audio/pcm", "audio/l16")


class SpeechBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str
    model: str = MODEL_ID
    voice: Union[str, list[str], None] = None
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    stream_format: Literal["audio"] = "audio"
    instructions: str | None = None
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default (1.3 long-form, 1.5 Realtime)
    max_frames: int | None = Field(default=None)
    frames: int | None = Field(default=None)


def _service(request: Request):
    return request.app.state.service


def _wants_stream(body: SpeechBody, request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return body.stream or any(t in accept for t in STREAMING_ACCEPT)


@router.post("/v1/audio/speech")
async def speech(body: SpeechBody, request: Request):
    service = _service(request)
    if body.speed != 1.0:
        raise InputError(f"speed {body.speed:g} is not supported: vvtrt speaks at speed 1.0 only")
    stream = _wants_stream(body, request)
    enc = audio.pick_encoding(body.response_format, stream)
    req = service.build_request(body.input, body.voice, body.seed, body.cfg_scale, body.max_frames, body.frames)
    opened = await service.open(req)
    headers = {"X-Request-Id": opened.request_id, "Cache-Control": "no-store"}
    if stream:
        return StreamingResponse(_stream_bytes(opened, enc), media_type=enc.media_type, headers=headers)
    return await _whole(opened, enc, request, headers)


async def _stream_bytes(opened, enc):
    """Chunked transfer: a WAV header with an open length (wav) and int16 PCM, one model frame a chunk."""
    try:
        if enc.name == "wav":
            yield audio.wav_header()
        async for chunk in opened:
            yield audio.to_pcm16(chunk.audio)
    finally:
        opened.close()


async def _whole(opened, enc, request: Request, headers: dict):
    """Collect every chunk (cancelling the request if the client disconnects meanwhile) and encode."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, opened))
    parts = []
    try:
        async for chunk in opened:
            parts.append(chunk.audio)
    finally:
        watcher.cancel()
        opened.close()
    if isinstance(opened.error, VvtrtError) and not isinstance(opened.error, Cancelled):
        raise opened.error  # SlowReader or a failed frame step: a 500 that says so
    reason = opened.stop_reason()
    if reason.startswith("error"):
        raise RuntimeError(f"synthesis failed ({reason})")
    if isinstance(opened.error, Cancelled) and not request.app.state.service.ready:
        raise EngineNotReady("the server is shutting down: the request was cancelled")
    if not parts:
        raise InputError(f"no audio was produced (stop: {opened.stop_reason() or 'unknown'}); with a "
                         "random-weight model pass `frames`")
    clip = np.concatenate(parts)
    s = opened.summary
    headers = {**headers, "X-Stop-Reason": reason.encode("ascii", "replace").decode(), "X-Frames": str(len(parts))}
    if s is not None:
        headers.update({"X-TTFA-Ms": f"{s.ttfa_s * 1000:.1f}", "X-RTF": f"{s.rtf:.4f}"})
    data = await asyncio.to_thread(audio.encode_file, clip, enc)
    return Response(content=data, media_type=enc.media_type, headers=headers)


async def _cancel_on_disconnect(request: Request, opened) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            opened.handle.cancel()
            return


@router.get("/v1/audio/voices")
async def voices(request: Request):
    return {"voices": _service(request).voices.describe()}


@router.get("/v1/models")
async def models(request: Request):
    cfg = _service(request).config
    return JSONResponse({"object": "list", "data": [{
        "id": MODEL_ID, "object": "model", "owned_by": "vvtrt", "workdir": str(cfg.workdir),
        "backend": cfg.backend, "response_formats": audio.supported_formats()}]})
