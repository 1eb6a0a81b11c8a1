"""`vvtrt serve` and `vvtrt loadtest`: the HTTP/WebSocket server and its load generator."""
from __future__ import annotations

import logging

import click

from vvtrt.cli_errors import one_line_errors as _friendly, require_extra as _require_extra
from vvtrt.cli_types import (COUNT, FiniteFloat as _FiniteFloat, serving_backend_opts, serving_step_opts,
                             workdir_opt)


@click.command()
@workdir_opt
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--voices", "voices_dir", default=None, type=click.Path(file_okay=False),
              help="Directory of .wav voice clips (encoded once, cached as safetensors).")
@click.option("--max-streams", default=64, show_default=True, type=COUNT, help="Concurrent streams (engine slots).")
@click.option("--max-context", default=None, type=click.IntRange(min=8),
              help="KV slots per stream (prompt + generated steps); default: the largest exported KV bucket. "
                   "Smaller contexts fit more streams in the KV pool.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting for a slot; beyond it 429.")
@click.option("--queue-timeout", default=30.0, show_default=True, type=_FiniteFloat(0.01, 3600.0),
              help="Seconds a request may wait for a slot before 429.")
@click.option("--grace", "grace_s", default=10.0, show_default=True, type=_FiniteFloat(0.0, 3600.0),
              help="On SIGTERM, seconds running streams get to finish before they are cancelled.")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on every route but /health and "
              "/ready. Prefer the VVTRT_API_KEY environment variable: a command line is visible to every user.")
@serving_backend_opts
@click.option("--device", default=None, help="cpu or cuda[:N] (default: cuda when available).")
@click.option("--dtype", "dtype", default=None, help="Precision (default: bf16 on cuda, fp32 on cpu).")
@click.option("--max-input-chars", default=4096, show_default=True, type=COUNT, help="Longest `input` text.")
@click.option("--max-frames", default=None, type=COUNT,
              help="Frame cap of every request (133 ms each); also the default `max_frames` (default: none).")
@click.option("--allow-frames/--no-allow-frames", default=None,
              help="Accept the `frames` field that forces a length (default: only for random-weight models).")
@click.option("--stream-buffer", default=256, show_default=True, type=COUNT,
              help="Frames buffered per stream; a stream this far ahead of its reader is held until the reader "
                   "takes more.")
@click.option("--metrics-key", default=None, help="A key for /metrics alone (or VVTRT_METRICS_KEY).")
@click.option("--header-timeout", default=10.0, show_default=True, type=_FiniteFloat(0.1, 3600.0),
              help="Seconds a request's headers may take to arrive (then 408).")
@click.option("--body-timeout", default=30.0, show_default=True, type=_FiniteFloat(0.1, 3600.0),
              help="Seconds to wait for each part of a request body (then 408).")
@click.option("--ws-origin", "ws_origins", multiple=True,
              help="A browser origin allowed on the WebSockets besides the server's own and loopback ones "
                   "(repeatable; '*' allows any).")
@click.option("--ws-max-pending", default=64, show_default=True, type=COUNT,
              help="Sentences waiting to be spoken per text-mode WebSocket.")
@click.option("--insecure", is_flag=True, envvar="VVTRT_INSECURE",
              help="Serve a non-loopback --host without an API key (refused otherwise).")
@click.option("--stall-timeout", "stall_timeout_s", default=30.0, show_default=True, type=_FiniteFloat(0.1, 3600.0),
              help="Seconds a stream whose client reads nothing (its buffer full) is held before it is cancelled.")
@click.option("--deterministic", is_flag=True,
              help="Run every step at the full pool's shapes: a request's audio is bit-equal to its solo run "
                   "(where the GEMMs compute a row alike in any batch position).")
@click.option("--engine-process", is_flag=True,
              help="Run the serving engine in a process of its own, so this process's interpreter does only the HTTP "
                   "and WebSocket work (long-form and Realtime work dirs; not with --ray).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Serve with a fleet of replicas on a Ray cluster (one per GPU; the `ray` extra); "
                   "--max-streams and --max-queue are per replica.")
@click.option("--replicas", default=None, type=click.IntRange(1, 256),
              help="With --ray: this many replicas (default: one per GPU; more than the GPUs share them).")
@click.option("--min-replicas", default=None, type=click.IntRange(1, 256),
              help="With --ray: autoscale on queue depth between --min-replicas and --max-replicas.")
@click.option("--max-replicas", default=None, type=click.IntRange(1, 256), help="With --ray: see --min-replicas.")
@click.option("--address", default=None,
              help="With --ray: join this Ray cluster (e.g. auto, or HEAD:6379) instead of starting a local one.")
@click.option("--allow-failed-quant", is_flag=True,
              help="Serve a quantized work dir whose quality gate (vvtrt parity) failed or never ran.")
@click.option("--noise", default="device", show_default=True, type=click.Choice(["device", "host"]),
              help="Where each request's diffusion noise is drawn (long-form and Realtime). device: in the step, from "
                   "the request's seed and frame index (no host work per frame); host: the generator `vvtrt synth` "
                   "draws from, so a seed gives `vvtrt synth`'s audio.")
@serving_step_opts
@_friendly
def serve(workdir, host, port, voices_dir, max_streams, max_context, max_queue, queue_timeout, grace_s, api_key,
          backend, compile_shapes, device, dtype, max_input_chars, max_frames, allow_frames, stream_buffer, metrics_key,
          header_timeout, body_timeout, ws_origins, ws_max_pending, insecure, stall_timeout_s, deterministic,
          engine_process, use_ray, replicas, min_replicas, max_replicas, address, allow_failed_quant,
          noise, kv_groups, pipeline):
    """Serve speech over HTTP and WebSocket (OpenAI-compatible), with /metrics, a try-it page and a dashboard."""
    _require_extra("vvtrt serve", "serve", "fastapi", "uvicorn", "prometheus_client")
    from vvtrt.server.config import METRICS_KEY_ENV, ServerConfig, api_key_from_env
    from vvtrt.pipeline import is_realtime_workdir
    from vvtrt.server.voices import check_serve_settings

    if engine_process and use_ray:
        from vvtrt.errors import InputError

        raise InputError("--engine-process and --ray exclude each other: a Ray replica is its own engine process")
    fleet = _fleet_options(use_ray, replicas, min_replicas, max_replicas, address)
    check_serve_settings(workdir, voices_dir, max_context)  # what would fail every request: refused before start
    if is_realtime_workdir(workdir):
        from vvtrt.server.realtime_service import check_realtime_options

        check_realtime_options(pipeline)
    else:
        from vvtrt.quant.gate import check_gate
        from vvtrt.workdir import Workdir

        check_gate(Workdir.open(workdir), allow_failed_quant)

    if api_key is not None:
        logging.getLogger("vvtrt.server").warning("--api-key on the command line is visible to other users (ps); "
                                                  "prefer the VVTRT_API_KEY environment variable")
    config = ServerConfig(workdir=workdir, host=host, port=port, voices_dir=voices_dir, max_streams=max_streams,
                          max_context=max_context, max_queue=max_queue, api_key=api_key_from_env(api_key),
                          backend=backend, compile_shapes=compile_shapes, device=device, dtype=dtype,
                          max_input_chars=max_input_chars,
                          queue_timeout_s=queue_timeout, grace_s=grace_s, max_frames=max_frames,
                          allow_frames=allow_frames, buffer_chunks=stream_buffer,
                          metrics_key=api_key_from_env(metrics_key, METRICS_KEY_ENV),
                          header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                          ws_origins=tuple(ws_origins), ws_max_pending=ws_max_pending, insecure=insecure,
                          stall_timeout_s=stall_timeout_s, deterministic=deterministic, noise=noise,
                          kv_groups=kv_groups, pipeline=pipeline)
    if fleet is not None:
        from vvtrt.server.fleet_serve import run_ray_server

        return run_ray_server(config, fleet)
    from vvtrt.server.serve import run_server

    run_server(config, engine_process=engine_process)


def _fleet_options(use_ray, replicas, min_replicas, max_replicas, address):
    """`FleetOptions` with --ray (the `ray` extra checked); without it, any fleet option is refused."""
    given = [f"--{n}" for n, v in (("replicas", replicas), ("min-replicas", min_replicas),
                                   ("max-replicas", max_replicas), ("address", address)) if v is not None]
    if not use_ray:
        if given:
            from vvtrt.errors import InputError

            raise InputError(f"{', '.join(given)} only apply with --ray")
        return None
    _require_extra("vvtrt serve --ray", "ray", "ray")
    from vvtrt.server.fleet_config import FleetOptions

    return FleetOptions(replicas, min_replicas, max_replicas, address).check()


@click.command()
@click.option("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000")
@click.option("--concurrency", default=8, show_default=True, type=COUNT, help="Concurrent client streams.")
@click.option("--duration", default=30.0, show_default=True, type=_FiniteFloat(0.1, 86400.0), help="Seconds.")
@click.option("--ws", "use_ws", is_flag=True, help="Use WS /v1/audio/stream instead of streaming HTTP.")
@click.option("--text", default="Speaker 1: Hello there, this is a load test of the speech server.",
              show_default=True, help="Text of every request.")
@click.option("--frames", default=None, type=COUNT, help="Forced frames per request (random-weight models).")
@click.option("--max-frames", default=None, type=COUNT, help="Frame cap per request.")
@click.option("--voice", default=None, help="Voice name.")
@click.option("--api-key", default=None, help="Bearer key (or VVTRT_API_KEY).")
@click.option("--processes", default=None, type=click.IntRange(1, 64),
              help="Client processes the streams are spread over (default: min(4, CPUs)); the report gives the "
                   "client's CPU use.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write JSON + Markdown here.")
@_friendly
def loadtest(url, concurrency, duration, use_ws, text, frames, max_frames, voice, api_key, processes, out_dir):
    """Load a running server: TTFA and inter-chunk percentiles, per-stream RTF, errors by kind."""
    _require_extra("vvtrt loadtest", "serve", "httpx", "websockets")
    from vvtrt.server.config import api_key_from_env
    from vvtrt.server.loadtest import LoadSpec, run_loadtest_cli
    from vvtrt.server.loadtest_procs import default_processes

    spec = LoadSpec(url=url, concurrency=concurrency, duration_s=duration, ws=use_ws, text=text, frames=frames,
                    max_frames=max_frames, voice=voice, api_key=api_key_from_env(api_key),
                    processes=processes or default_processes())
    md = run_loadtest_cli(spec, out_dir)
    click.echo(md)
