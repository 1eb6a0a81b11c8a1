"""`vvtrt serve --ray`: its settings (how many replicas, autoscaling bounds, which Ray cluster) and where
the replicas go (one GPU each, a share of one when there are more replicas than GPUs, CPU replicas on a
machine without GPUs)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from vvtrt.errors import InputError

MAX_REPLICAS = 256


@dataclass(frozen=True)
class FleetOptions:
    """`replicas`: a fixed count (None: one per GPU of the cluster, or one on a CPU cluster);
    `min_replicas`/`max_replicas`: autoscale between these on queue depth (both or neither);
    `address`: an existing Ray cluster to join (None: start a local one, stopped with the server)."""

    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    address: str | None = None
    upscale_after_s: float = 5.0     # requests queued this long on every replica: one more replica
    downscale_after_s: float = 60.0  # this long with a replica's worth of idle slots: one fewer

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def check(self) -> "FleetOptions":
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise InputError("--min-replicas and --max-replicas go together (autoscaling between them)")
        if self.autoscaling and self.replicas is not None:
            raise InputError("--replicas is a fixed count: give it, or --min-replicas/--max-replicas, not both")
        for name in ("replicas", "min_replicas", "max_replicas"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_REPLICAS:
                raise InputError(f"--{name.replace('_', '-')} must be from 1 to {MAX_REPLICAS}, got {value}")
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise InputError(f"--min-replicas {self.min_replicas} is above --max-replicas {self.max_replicas}")
        if self.address is not None and not self.address.strip():
            raise InputError("--address is empty: give the Ray cluster's address (e.g. ray://head:10001 or auto)")
        return self


@dataclass(frozen=True)
class Placement:
    """How many replicas start, the most there may be, and what each asks Ray for."""

    initial: int
    most: int
    device: str          # "cuda" (each replica sees its own GPU as cuda:0) or "cpu"
    num_gpus: float      # per replica: 1, or a share of one GPU
    num_cpus: float


def place(options: FleetOptions, cluster_gpus: float, device: str | None) -> Placement:
    """Where the replicas go on a cluster with `cluster_gpus` GPUs; `device` is `--device` (None: cuda
    when the cluster has a GPU)."""
    gpus = int(cluster_gpus)
    if device is not None and not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device {device!r} with --ray: give cpu or cuda (Ray assigns each replica its GPU)")
    use_cuda = device != "cpu" and gpus > 0
    if device is not None and device.startswith("cuda") and gpus == 0:
        raise InputError("--device cuda with --ray, but the Ray cluster has no GPU: use --device cpu, or join a "
                         "cluster with GPUs (--address)")
    initial = options.min_replicas or options.replicas or (gpus if use_cuda else 1)
    most = options.max_replicas or initial
    if not use_cuda:
        return Placement(initial, most, "cpu", 0.0, 1.0)
    per_gpu = math.ceil(most / gpus)  # replicas sharing one GPU when there are more replicas than GPUs
    return Placement(initial, most, "cuda", 1.0 / per_gpu, 1.0)


class ScaleTimer:
    """Autoscaling on queue depth. `decide(live, now)` with `(slots, in_flight, ok)` of each replica not
    draining: "up" once requests have waited for a slot for `upscale_after_s` (while no replica is still
    starting and there are fewer than the most), "down" once a whole replica's slots have been idle for
    `downscale_after_s` (and there are more than the least), else None."""

    def __init__(self, options: FleetOptions, least: int, most: int):
        self.options, self.least, self.most = options, least, most
        self.busy_since: float | None = None
        self.idle_since: float | None = None

    def decide(self, live: list[tuple[int, int, bool]], now: float) -> str | None:
        up = [(slots, busy) for slots, busy, ok in live if ok]
        queued = sum(max(0, busy - slots) for slots, busy in up)
        idle = sum(max(0, slots - busy) for slots, busy in up)
        starting = len(up) < len(live)
        self.busy_since = (now if self.busy_since is None else self.busy_since) if queued and not starting else None
        if self.busy_since is not None and now - self.busy_since >= self.options.upscale_after_s \
                and len(live) < self.most:
            self.busy_since = None
            return "up"
        one = max((slots for slots, _ in up), default=0)
        spare = len(live) > self.least and not queued and not starting and one > 0 and idle >= one
        self.idle_since = (now if self.idle_since is None else self.idle_since) if spare else None
        if self.idle_since is not None and now - self.idle_since >= self.options.downscale_after_s:
            self.idle_since = None
            return "down"
        return None
