"""`/openapi.json` as the server behaves: errors are 400 with OpenAI's error body (never FastAPI's 422),
audio routes answer `audio/*`, every operation lists the refusals it can give (401 with a key, 429/503
with Retry-After on speech, 500), and the speech body carries this server's own limits (input length,
frame cap, the formats its libsndfile writes, whether `frames` is accepted)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from vvtrt.server import audio, input_rules

_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def _error(description: str, retry: bool = False) -> dict:
    out = {"description": description, "content": _ERROR_REF}
    if retry:
        out["headers"] = _RETRY
    return out


def build_schema(app: FastAPI, service) -> dict:
    """The OpenAPI document of `app` served by `service` (cached on the app by FastAPI's convention)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title="vvtrt", version="0.1.0", routes=app.routes,
                       description="OpenAI-compatible speech API of vvtrt (README: Serving API).")
    secured = service.config.api_key is not None
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            _fix_operation(path, method, op, secured)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    body = schemas.get("SpeechBody", {}).get("properties", {})
    patch = input_rules.schema_patch(input_rules.Limits.of(service.config), audio.supported_formats(),
                                     service.default_cfg)
    for field, keywords in patch.items():
        if field in body:
            if "type" in keywords:  # replaces the field's schema (e.g. frames: null only)
                body[field] = {"title": body[field].get("title", field), **keywords}
            else:
                body[field].update(keywords)
    if secured:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    app.openapi_schema = spec
    return spec


def _fix_operation(path: str, method: str, op: dict, secured: bool) -> None:
    responses = op.setdefault("responses", {})
    had_params = responses.pop("422", None) is not None
    if had_params or method in ("post", "put", "patch"):
        responses.setdefault("400", _error("Invalid request"))
    if method in ("post", "put", "patch"):
        responses.setdefault("408", _error("The request body did not arrive in time"))
        responses.setdefault("413", _error("The request body is too large"))
    if secured and path not in ("/health", "/ready"):
        responses.setdefault("401", _error("Missing or wrong API key"))
    elif not secured:
        responses.pop("401", None)
    for status in ("429", "503"):
        if status in responses:
            responses[status] = _error(responses[status].get("description", ""), retry=True)
    responses.setdefault("500", _error("Internal error"))
    if path == "/metrics":
        responses["200"]["content"] = _TEXT
    if path == "/ready":
        responses["503"] = {"description": "Not ready (starting, draining or failed)", "headers": _RETRY,
                            "content": {"application/json": {"schema": {"type": "object"}}}}
    if path in ("/health", "/ready"):
        op["security"] = []
