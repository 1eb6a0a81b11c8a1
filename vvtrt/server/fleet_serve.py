"""`vvtrt serve --ray`: the single-process server's app (routes, validation, admission, truncation, drain)
in the front process, over a `FleetEngine` whose replicas are Ray actors holding the serving engine.

The front joins the Ray cluster at `--address` or starts a local one (stopped with the server), places
the replicas (`fleet_config.place`), and serves until SIGTERM: then it stops admitting, lets running
streams finish within `--grace`, ends the replicas and the local cluster. Every HTTP response carries
`x-vvtrt-replica`: the replica that ran the request, or `front` for what the front answers itself.
"""
from __future__ import annotations

import dataclasses
import logging

from vvtrt.errors import InputError
from vvtrt.model.kinds import LONGFORM
from vvtrt.server.config import ServerConfig
from vvtrt.server.fleet_config import FleetOptions, place

log = logging.getLogger(__name__)
REPLICA_HEADER = b"x-vvtrt-replica"
FRONT = b"front"


class ReplicaHeader:
    """Pure-ASGI: `x-vvtrt-replica: front` on every response (and WebSocket accept) that names no replica."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)

        async def send_with_header(msg):
            if msg["type"] in ("http.response.start", "websocket.accept"):
                headers = list(msg.get("headers") or [])
                if not any(k.lower() == REPLICA_HEADER for k, _ in headers):
                    msg = {**msg, "headers": headers + [(REPLICA_HEADER, FRONT)]}
            await send(msg)

        await self.app(scope, receive, send_with_header)


def resolve_fleet_runtime(config: ServerConfig, device: str) -> ServerConfig:
    """`config` for the replicas: their device, its precision (bf16 on cuda, fp32 on cpu), `frames` allowed
    for a random-weight model (as `serve.resolve_runtime`, but the device is the cluster's, not this host's)."""
    from vvtrt.precision import Precision
    from vvtrt.server.serve import random_weights

    precision = Precision.parse(config.dtype or ("bf16" if device == "cuda" else "fp32"))
    allow = random_weights(config.workdir) if config.allow_frames is None else config.allow_frames
    return dataclasses.replace(config, device=device, dtype=precision.value, allow_frames=allow)


def run_ray_server(config: ServerConfig, options: FleetOptions) -> None:
    from vvtrt.server.fleet import FleetEngine, connect, ray_env

    ray_env()
    import ray

    from vvtrt.server.app import create_app
    from vvtrt.server.fleet_metrics import FleetMetrics
    from vvtrt.server.gpu import GpuMonitor
    from vvtrt.server.serve import FatalStop, check_port_free, configure_logging, serve_app, workdir_kind

    config, options = config.check(), options.check()
    kind = workdir_kind(config.workdir)
    if kind.name != LONGFORM:
        raise InputError(f"--ray serves long-form work dirs; {config.workdir} is a {kind.name} work dir: serve it "
                         "without --ray")
    configure_logging()
    check_port_free(config.host, config.port)
    own_cluster, gpus = connect(options, options.max_replicas or options.replicas or 1)
    try:
        placement = place(options, gpus, config.device)
        config = resolve_fleet_runtime(config, placement.device)
        log.info("Ray cluster %s: %g GPU(s); %d replica(s)%s, each %s%s", "started here" if own_cluster else
                 "joined", gpus, placement.initial, f" (autoscaling up to {placement.most})" if
                 options.autoscaling else "", placement.device, f" x {placement.num_gpus:g} GPU" if
                 placement.num_gpus else "")
        fleet = FleetEngine(config, options, placement)
        stopper = FatalStop()
        app = create_app(config, fleet, on_fatal=stopper, metrics=FleetMetrics(fleet, GpuMonitor()))
        app.add_middleware(ReplicaHeader)
        serve_app(config, app, on_server=stopper.attach)
        stopper.raise_first()
    finally:
        if own_cluster:
            ray.shutdown()
