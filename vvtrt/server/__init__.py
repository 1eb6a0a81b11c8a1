"""`vvtrt serve`: an HTTP/WebSocket speech server on the serving engine (`vvtrt.serving`).

    config = ServerConfig(workdir="work", port=8000)
    app = create_app(config, engine)          # FastAPI; `serve(config)` also builds the engine and runs uvicorn

Endpoints: POST /v1/audio/speech (OpenAI-compatible), GET /v1/audio/voices, GET /v1/models,
WS /v1/audio/stream (and /stream, Microsoft's realtime demo protocol), /health, /ready, /metrics,
the try-it page `/` and the live `/dashboard`.
"""
