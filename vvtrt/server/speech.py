"""The OpenAI-compatible HTTP API: POST /v1/audio/speech, GET /v1/audio/voices, GET /v1/models."""
from __future__ import annotations

import asyncio
from typing import Annotated, Literal, Optional, Union

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from vvtrt.errors import InputError, VvtrtError
from vvtrt.option_checks import CFG_MAX, SEED_MAX
from vvtrt.server import audio, input_rules
from vvtrt.server.truncation import truncation
from vvtrt.serving.api import Cancelled, EngineNotReady

router = APIRouter()
MODEL_ID = "vvtrt"
STREAMING_ACCEPT = ("audio/pcm", "audio/l16")
REPLICA_HEADER = "X-Vvtrt-Replica"
_INT = {"strict": True}  # JSON true/false are not numbers


class SpeechBody(BaseModel):
    """POST /v1/audio/speech (OpenAI's fields, plus vvtrt's seed, cfg_scale, max_frames and frames). The
    server's own limits (input length, frame cap, formats) are in `/openapi.json`."""
    model_config = ConfigDict(extra="ignore")

    input: str = Field(description="The text, or a script of `Speaker N:` turns.",
                       json_schema_extra={"minLength": 1, "pattern": r"\S"})
    model: str = Field(MODEL_ID, max_length=input_rules.MODEL_NAME_MAX, description="Any name; one model.")
    voice: Union[Annotated[str, Field(max_length=input_rules.VOICE_NAME_MAX * input_rules.MAX_VOICES)],
                 Annotated[list[Annotated[str, Field(max_length=input_rules.VOICE_NAME_MAX)]],
                           Field(min_length=1, max_length=input_rules.MAX_VOICES)], None] = Field(
        None, description="A voice name, or one per speaker (a list or comma-separated); see GET /v1/audio/voices.")
    response_format: str = Field("wav", description="wav, pcm (int16 LE, 24 kHz mono), flac, mp3, opus.")
    speed: float = Field(1.0, strict=True, description="Only 1.0 (anything else: 400).",
                         json_schema_extra={"minimum": 1.0, "maximum": 1.0})
    stream: Optional[bool] = Field(None, strict=True, description=(
        "Chunked audio as it is produced. Default: streamed for wav, pcm and opus; flac and mp3 whole."))
    stream_format: Literal["audio"] = "audio"
    instructions: Optional[str] = Field(None, description="Not supported: leave it out (or empty).",
                                        json_schema_extra={"maxLength": 0})
    seed: int = Field(0, ge=0, le=SEED_MAX, **_INT)
    cfg_scale: Optional[float] = Field(None, ge=0.0, le=CFG_MAX, allow_inf_nan=False, strict=True)
    max_frames: Optional[int] = Field(None, ge=1, le=input_rules.FRAMES_LIMIT, **_INT,
                                      description="Cap on the frames (133 ms each) of this request.")
    frames: Optional[int] = Field(None, ge=1, le=input_rules.FRAMES_LIMIT, **_INT)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """Every error the server sends (OpenAI's shape)."""
    error: ErrorDetail


_AUDIO = {"schema": {"type": "string", "format": "binary"}}
_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "Invalid request (a field outside its rules, unknown voice, bad JSON)"),
    (401, "Missing or wrong API key (servers started with a key)"),
    (408, "The request body did not arrive in time"), (413, "The request body is too large"),
    (429, "All streams busy and the queue full (Retry-After)"),
    (500, "Internal error"), (503, "Not ready yet or shutting down (Retry-After)"))}
SPEECH_RESPONSES = {200: {"description": "Audio: chunked while it is produced (streams), or the whole file; "
                                         "an aborted chunked body means the stream was cut short.",
                          "content": {m: _AUDIO for m in ("audio/wav", "audio/pcm", "audio/flac", "audio/mpeg",
                                                          "audio/ogg")}},
                    **_ERRORS}


def _service(request: Request):
    return request.app.state.service


def _wants_stream(body: SpeechBody, request: Request, enc) -> bool:
    if body.stream is not None:
        return body.stream
    accept = request.headers.get("accept", "").lower()
    return enc.streamable or any(t in accept for t in STREAMING_ACCEPT)


@router.post("/v1/audio/speech", response_class=Response, responses=SPEECH_RESPONSES)
async def speech(body: SpeechBody, request: Request):
    service = _service(request)
    input_rules.check_openai_fields(body.speed, body.instructions)
    enc = audio.pick_encoding(body.response_format, False)
    stream = _wants_stream(body, request, enc)
    enc = audio.pick_encoding(body.response_format, stream)
    req = service.build_request(body.input, body.voice, body.seed, body.cfg_scale, body.max_frames, body.frames)
    opened = await service.open(req)
    headers = {"X-Request-Id": opened.request_id, "Cache-Control": "no-store"}
    replica = getattr(opened.handle, "replica", None)  # `serve --ray`: the replica that ran it
    if replica is not None:
        headers[REPLICA_HEADER] = replica
    if stream:
        return StreamingResponse(_stream_bytes(opened, enc, service), media_type=enc.media_type, headers=headers)
    return await _whole(opened, enc, request, headers)


async def _stream_bytes(opened, enc, service):
    """Chunked transfer: a WAV header with an open length (wav) and int16 PCM, one model frame a chunk, or
    Ogg Opus pages as they fill. A stream cut short raises `StreamTruncated`: the connection closes without
    the terminating chunk."""
    encoder = audio.StreamEncoder(enc) if enc.sf_format not in (None, "WAV") else None
    try:
        if enc.name == "wav":
            yield audio.wav_header()
        async for chunk in opened:
            data = encoder.feed(chunk.audio) if encoder else audio.to_pcm16(chunk.audio)
            if data:
                yield data
    finally:
        opened.close()
    cut = truncation(opened, service)
    if cut is None and encoder is not None:
        yield encoder.close()
    if cut is not None:
        raise cut


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
    if isinstance(opened.error, Cancelled):  # never a 200 with part of the audio
        draining = not request.app.state.service.ready
        raise EngineNotReady("the request was cancelled" + (": the server is shutting down" if draining else ""))
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


@router.get("/v1/audio/voices", responses={401: _ERRORS[401]})
async def voices(request: Request):
    return {"voices": _service(request).voices.describe()}


@router.get("/v1/models", responses={401: _ERRORS[401]})
async def models(request: Request):
    service = _service(request)
    return JSONResponse({"object": "list", "data": [{
        "id": MODEL_ID, "object": "model", "owned_by": "vvtrt", "backend": service.config.backend,
        "response_formats": audio.supported_formats(), "default_cfg": service.default_cfg}]})
