"""Errors as HTTP: every refusal is a JSON body `{"error": {"message", "type", "code"}}` (OpenAI's shape)
with the right 4xx/5xx status; bad input is never a 500 and never a traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vvtrt.errors import InputError, VvtrtError
from vvtrt.serving.api import CapacityError, EngineBusy, EngineNotReady

log = logging.getLogger(__name__)

# exception class -> (status, type, outcome label)
_STATUS = (
    (InputError, 400, "invalid_request_error", "bad_request"),
    (EngineBusy, 429, "rate_limit_error", "rejected_busy"),
    (EngineNotReady, 503, "unavailable_error", "rejected_not_ready"),
    (CapacityError, 413, "capacity_error", "rejected_capacity"),
)


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error type, metrics outcome) of an exception."""
    for cls, status, kind, outcome in _STATUS:
        if isinstance(exc, cls):
            return status, kind, outcome
    return 500, "server_error", "error"


def error_response(status: int, message: str, kind: str, retry_after: int | None = None,
                   headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def response_for(exc: BaseException, retry_after: int) -> JSONResponse:
    status, kind, _ = classify(exc)
    if status == 500:
        log.error("internal error: %r", exc, exc_info=not isinstance(exc, VvtrtError))
        return error_response(500, f"internal error: {exc}" if isinstance(exc, VvtrtError) else "internal error",
                              kind)
    return error_response(status, str(exc), kind, retry_after if status in (429, 503) else None)


def _validation_message(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "malformed request"
    e = errs[0]
    where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
    if e.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return f"{where}: {e.get('msg', 'invalid')}"


def install(app: FastAPI, retry_after: int) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(400, _validation_message(exc), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # keeps the exception's headers: `Allow` on a 405
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error"
                              if exc.status_code < 500 else "server_error", headers=exc.headers)

    @app.exception_handler(VvtrtError)
    async def _vvtrt(request: Request, exc: VvtrtError):
        return response_for(exc, retry_after)

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception):
        return response_for(exc, retry_after)
