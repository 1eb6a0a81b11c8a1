"""`vvtrt serve --ray`: the engine the front process's server sees. It has the serving engine's contract
(start, stop, ready, submit, in_flight, stats, encode_voice), and behind it a fleet of replicas, Ray actors
each holding a serving engine on its own GPU (or the CPU).

    connect(options, most)                  # join --address, or start a local Ray cluster
    fleet = FleetEngine(config, options, placement)
    fleet.start()                           # replicas up and ready (or the first start-up error)
    handle = fleet.submit(request)          # an EventHandle on the replica with the most free slots

Routing: a request goes to the ready replica with the most free slots (its slots minus the requests the
front has running or queued there; ties: the one that got fewer requests); a replica that is starting,
restarting, unreachable or reports itself unhealthy gets nothing; a request stays on its replica. A poll
thread reads each replica's status every `POLL_S` (counters, metrics, a dashboard point), kills a replica
that reports itself unhealthy so Ray restarts it, and autoscales between --min-replicas and
--max-replicas on queue depth.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from vvtrt.errors import InputError, VvtrtError
from vvtrt.server.fleet_config import FleetOptions, Placement, ScaleTimer
from vvtrt.serving.api import EngineBusy, EngineNotReady, EngineStats

log = logging.getLogger(__name__)
POLL_S = 0.5
STATUS_TIMEOUT_S = 5.0      # a replica that does not answer its status for this long gets no new requests
START_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 30.0
FIRST_STATUS_S = 60.0       # start-up waits this long for every first replica's status (then serves with those up)
HISTORY = 600
DEATH_INFO_VAR = "RAY_timeout_ms_task_wait_for_death_info"


def ray_env() -> None:
    """Ray's settings for this process, before Ray is first imported (it reads some of them then): replicas'
    log lines as written, and a replica's death ending its streams at once. Ray otherwise waits up to a second
    for the death's cause before failing the calls in flight (KubeRay sets the same for Ray Serve clusters).
    A cluster joined with --address keeps its own settings for its processes; these are the front's, which
    makes the calls."""
    for var in ("RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS", "RAY_COLOR_PREFIX", DEATH_INFO_VAR):
        os.environ.setdefault(var, "0")


def connect(options: FleetOptions, most_replicas: int) -> tuple[bool, float]:
    """Join `options.address` or start a local Ray cluster; (whether this process started it, its GPUs)."""
    ray_env()
    import ray

    common = {"namespace": "vvtrt", "include_dashboard": False, "log_to_driver": True}
    try:
        if options.address is not None:
            ray.init(address=options.address, **common)
        else:
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, most_replicas + 1), **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray cluster"
        hint = "" if options.address is None or os.environ.get("RAY_AUTH_MODE") else (
            " (a cluster started with token authentication, as `ray start` of Ray 2.60 does by default, needs "
            "RAY_AUTH_MODE=token here, and RAY_AUTH_TOKEN unless its token is in ~/.ray/auth_token)")
        raise InputError(f"cannot start or join {where}: {str(exc).splitlines()[0] if str(exc) else exc}{hint}") \
            from None
    return options.address is None, float(ray.cluster_resources().get("GPU", 0))


def _cause(exc: BaseException) -> str:
    """The message of an error raised inside a replica (Ray wraps it)."""
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@dataclass
class Replica:
    name: str
    actor: object
    info: dict = field(default_factory=dict)      # pid, node, device, gpu_ids
    ok: bool = False          # answered its last status, its engine ready and healthy
    draining: bool = False    # autoscaled away: no new requests, removed once idle
    slots: int = 0
    in_flight: int = 0        # requests the front has running or queued there
    routed: int = 0
    stats: dict = field(default_factory=dict)
    exposition: str = ""
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    pending: object = None    # the status call in flight
    asked_t: float = 0.0      # when the status call in flight (or last answered) was made
    lost_t: float = 0.0       # when the front last saw a request fail on it
    killed_unhealthy_pid: int | None = None

    def view(self) -> dict:
        return {"name": self.name, "ok": self.ok, "draining": self.draining, "pid": self.info.get("pid"),
                "node": self.info.get("node"), "gpu_ids": self.info.get("gpu_ids", []), "slots": self.slots,
                "in_flight": self.in_flight, "routed": self.routed}


class _Health:
    """The engine's `health`: unhealthy once started with no replica taking requests."""

    def __init__(self, fleet: "FleetEngine"):
        self.fleet = fleet

    @property
    def ok(self) -> bool:
        return not self.fleet._started or any(r.ok for r in self.fleet.replicas)


class FleetEngine:
    def __init__(self, config, options: FleetOptions, placement: Placement):
        self.config, self.options, self.placement = config, options, placement
        self.replicas: list[Replica] = []
        self.health = _Health(self)
        self.voice_device = "cpu"  # voices are encoded by a replica and held here on the CPU
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._names = itertools.count(0)
        self._started = self._stopping = False
        self._poller: threading.Thread | None = None
        self._scaler = ScaleTimer(options, placement.initial, placement.most)

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._started and not self._stopping and any(r.ok for r in self.replicas)

    def start(self) -> None:
        """Start the first replicas and wait until each is ready; the first start-up error is raised."""
        import ray

        for _ in range(self.placement.initial):
            self._spawn()
        try:
            infos = ray.get([r.actor.ready.remote() for r in self.replicas], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise VvtrtError(f"the replicas did not start within {START_TIMEOUT_S:g} s: does the Ray cluster have "
                             f"{self.placement.num_gpus:g} GPU and {self.placement.num_cpus:g} CPU free per "
                             "replica?") from None
        except Exception as exc:
            raise VvtrtError(f"a replica failed to start: {_cause(exc)}") from None
        for r, info in zip(self.replicas, infos):
            r.info = info
        deadline = time.monotonic() + FIRST_STATUS_S  # each has answered ready(): its status follows at once
        while not all(r.ok for r in self.replicas) and time.monotonic() < deadline:
            self._poll_once()
        self._started = True
        self._poller = threading.Thread(target=self._poll_forever, name="vvtrt-fleet-poll", daemon=True)
        self._poller.start()
        log.info("%d replica(s) ready: %s", len(self.replicas), ", ".join(
            f"{r.name} (pid {r.info.get('pid')} on {r.info.get('node')}, {self.placement.device}"
            f"{' gpu ' + ','.join(r.info['gpu_ids']) if r.info.get('gpu_ids') else ''})" for r in self.replicas))

    def _spawn(self) -> Replica:
        import ray

        from vvtrt.server.fleet_replica import ReplicaServer

        name = f"r{next(self._names)}"
        p = self.placement
        actor = ray.remote(ReplicaServer).options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, max_restarts=-1,
                                                  max_task_retries=0, max_concurrency=10_000).remote(name, self.config)
        replica = Replica(name, actor)
        with self._lock:
            self.replicas.append(replica)
        return replica

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new requests; let running ones finish for `grace_s`; then the replicas cancel the rest
        (their clients see the shutdown truncation) and are ended."""
        import ray

        self._stopping = True
        deadline = time.monotonic() + max(0.0, grace_s)
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        refs = [r.actor.stop.remote(0.0) for r in self.replicas]
        try:
            ray.get(refs, timeout=STOP_TIMEOUT_S)
        except Exception as exc:  # a replica already gone: nothing left to stop there
            log.debug("replica stop: %s", exc)
        deadline = time.monotonic() + 5.0
        while self.in_flight() and time.monotonic() < deadline:  # the cancelled streams hear their end
            time.sleep(0.05)
        for r in self.replicas:
            ray.kill(r.actor, no_restart=True)

    # -- requests ------------------------------------------------------------------------------------
    def submit(self, request):
        """A `remote_handle` of `request` on the chosen replica (EngineBusy / EngineNotReady as the engine)."""
        from vvtrt.server.fleet_handle import remote_handle

        if not self._started or self._stopping:
            raise EngineNotReady("the replicas are not running (starting or shutting down)")
        replica = self._pick()
        rid, gen = self._send(replica, request)
        return remote_handle(rid, replica, gen, on_end=lambda h, where: self._release(where, h.lost),
                             reroute=lambda failed, failed_id, gen: self._reroute(request, failed, failed_id, gen))

    def _send(self, replica: Replica, request) -> tuple[str, object]:
        """`request` started on `replica` (already counted there): its id there and its event generator."""
        rid = f"{replica.name}-{next(self._ids)}"
        try:
            return rid, replica.actor.stream.remote(dataclasses.replace(request, request_id=rid))
        except Exception as exc:
            self._release(replica)
            raise EngineNotReady(f"replica {replica.name} is unreachable ({type(exc).__name__}): retry") from None

    def _reroute(self, request, failed: Replica, failed_id: str, failed_gen):
        """A request whose replica died or became unreachable before its first event, on another ready
        replica: (replica, id, generator), or None when none can take it (the request then fails as the failed
        replica left it). An unreachable replica that is alive after all is told to drop the request."""
        import ray

        if self._stopping:
            return None
        try:
            failed.actor.cancel.remote(failed_id)
            ray.cancel(failed_gen)
        except Exception as exc:
            log.debug("cancel on %s: %s", failed.name, exc)
        with self._lock:
            self._mark_lost(failed)
        try:
            replica = self._pick()
            rid, gen = self._send(replica, request)
        except (EngineBusy, EngineNotReady):
            return None  # the request ends on the failed replica, whose count its end releases
        self._release(failed)  # the request left it
        return replica, rid, gen

    def _pick(self) -> Replica:
        with self._lock:
            live = [r for r in self.replicas if r.ok and not r.draining]
            if not live:
                raise EngineNotReady("no replica is ready (starting, restarting or unhealthy): retry in a moment")
            best = max(live, key=lambda r: (r.slots - r.in_flight, -r.routed))
            if best.in_flight >= best.slots + self.config.max_queue:
                raise EngineBusy(f"all {sum(r.slots for r in live)} streams of {len(live)} replicas are busy and "
                                 "their queues are full")
            best.in_flight += 1
            best.routed += 1
            return best

    def _release(self, replica: Replica, lost: bool = False) -> None:
        with self._lock:
            replica.in_flight -= 1
            if lost:
                self._mark_lost(replica)

    @staticmethod
    def _mark_lost(replica: Replica) -> None:
        """No new requests until its status answers again (the caller holds the lock)."""
        replica.lost_t = time.monotonic()
        if replica.ok:
            replica.ok = False
            log.warning("replica %s is unreachable: no new requests until it is back", replica.name)

    def in_flight(self) -> int:
        with self._lock:
            return sum(r.in_flight for r in self.replicas)

    def encode_voice(self, wav):
        import ray

        live = [r for r in self.replicas if r.ok] or self.replicas
        try:
            return ray.get(live[0].actor.encode_voice.remote(wav), timeout=START_TIMEOUT_S)
        except Exception as exc:
            raise VvtrtError(_cause(exc)) from None

    def stats(self) -> EngineStats:
        """The fleet's counters: the sum over the replicas that answered."""
        with self._lock:
            got = [r.stats for r in self.replicas if r.stats]
        outcomes: collections.Counter = collections.Counter()
        for s in got:
            outcomes.update(s.get("requests_by_outcome", {}))

        def total(key):
            return sum(int(s.get(key, 0)) for s in got)
        return EngineStats(self.ready, total("active"), total("queued"), sum(r.slots for r in self.replicas if r.ok),
                           total("frames_total"), total("prefill_tokens_total"), dict(outcomes),
                           healthy=self.health.ok, held=total("held"), step_failures=total("step_failures"))

    def views(self) -> list[dict]:
        with self._lock:
            return [r.view() for r in self.replicas]

    def expositions(self) -> dict[str, str]:
        with self._lock:
            return {r.name: r.exposition for r in self.replicas if r.exposition}

    def histories(self, since_t: float) -> dict[str, list]:
        with self._lock:
            return {r.name: [p for p in r.history if p.get("t", 0) >= since_t] for r in self.replicas}

    # -- the poll thread -----------------------------------------------------------------------------
    def _poll_forever(self) -> None:
        while not self._stopping:
            try:
                self._poll_once()
                self._autoscale(time.monotonic())
            except Exception as exc:  # the poll must outlive any one replica's trouble
                log.warning("replica poll: %s", exc)
            time.sleep(POLL_S)

    def _poll_once(self) -> None:
        import ray

        now = time.monotonic()
        for r in list(self.replicas):
            if r.pending is None:
                r.pending, r.asked_t = r.actor.status.remote(), now
        pending = [r.pending for r in self.replicas if r.pending is not None]
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        done = set(done)
        for r in list(self.replicas):
            if r.pending in done:
                ref, r.pending = r.pending, None
                try:
                    self._update(r, ray.get(ref))
                except Exception as exc:  # died or restarting: Ray restarts it; it gets nothing meanwhile
                    if r.ok:
                        log.warning("replica %s is unreachable (%s): no new requests until it is back", r.name,
                                    type(exc).__name__)
                    r.ok = False
            elif r.pending is not None and now - r.asked_t > STATUS_TIMEOUT_S:
                r.ok = False

    def _update(self, r: Replica, status: dict) -> None:
        if not status.get("ok"):
            r.ok = False
            return
        stats = status["stats"]
        if r.info.get("pid") not in (None, status["pid"]):
            log.warning("replica %s restarted (pid %s -> %s)", r.name, r.info.get("pid"), status["pid"])
        r.info.update({k: status[k] for k in ("pid", "node", "device", "gpu_ids")})
        was_ok = r.ok
        with self._lock:  # a status asked before a request failed there is old news: the next one decides
            r.ok = bool(stats["ready"] and stats["healthy"]) and r.asked_t >= r.lost_t
        r.slots, r.stats, r.exposition = int(stats["max_streams"]), stats, status["exposition"]
        point = status.get("point")  # a replica makes a point a second; it is polled more often than that
        if point and (not r.history or r.history[-1].get("t") != point.get("t")):
            r.history.append(point)
        if r.ok and not was_ok and self._started:
            log.info("replica %s takes requests (pid %s)", r.name, status["pid"])
        if not stats["healthy"] and r.killed_unhealthy_pid != status["pid"]:
            import ray

            log.error("replica %s reports itself unhealthy: restarting it", r.name)
            r.killed_unhealthy_pid = status["pid"]
            ray.kill(r.actor, no_restart=False)

    def _autoscale(self, now: float) -> None:
        """`ScaleTimer`'s step: one more replica, or one drained (and ended once idle)."""
        import ray

        if not self.options.autoscaling or self._stopping:
            return
        with self._lock:
            live = [r for r in self.replicas if not r.draining]
            gone = [r for r in self.replicas if r.draining and r.in_flight == 0]
            for r in gone:
                self.replicas.remove(r)
            step = self._scaler.decide([(r.slots, r.in_flight, r.ok) for r in live], now)
            if step == "down":
                victim = min(live, key=lambda r: r.in_flight)
                victim.draining = True
        for r in gone:
            log.info("replica %s drained: ending it", r.name)
            ray.kill(r.actor, no_restart=True)
        if step == "up":
            log.info("requests wait for a slot on every replica: starting one more (%d -> %d)", len(live),
                     len(live) + 1)
            self._spawn()
        elif step == "down":
            log.info("a replica's worth of slots is idle: draining %s", victim.name)
