"""A replica killed under load, against a running `vvtrt serve --ray` on this host: how fast its streams end
with the truncation signal, whether the other replicas' streams and new requests are untouched, and how long
until the killed replica is back and taking requests.

    python benchmarks/ray_failover.py http://127.0.0.1:8000 failover.json --streams 16 --frames 300

1. `--streams` streaming requests are started and read as fast as they come; once every stream has its first
   chunk and at least two replicas hold streams, the replica holding the most gets SIGKILL (its pid from
   `/dashboard/data`: the server must run on this host).
2. Each stream ends complete (all `--frames` frames) or cut (the client sees the aborted body). A cut
   stream's time from the kill to the client's error is its truncation time.
3. Meanwhile a short request every `--probe-interval` seconds checks that new requests keep succeeding; the
   killed replica counts as back once `/dashboard/data` shows it ready with a new pid.

Writes OUT (JSON) and prints a summary. Exit 1 when a stream on a surviving replica or a probe failed, when
a cut stream was not cut by the truncation signal, or when the replica was not back within `--restart-timeout`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import sys
import threading
import time

import httpx

SPEECH = "/v1/audio/speech"
FRAME_BYTES = 3200 * 2  # one frame of 16-bit PCM at 24 kHz


class Stream(threading.Thread):
    """One streaming request read to its end; what happened to it."""

    def __init__(self, url: str, frames: int, seed: int):
        super().__init__(daemon=True)
        self.url, self.frames, self.seed = url, frames, seed
        self.replica, self.bytes, self.error, self.first_t, self.end_t = None, 0, None, None, None

    def run(self) -> None:
        body = {"input": "Speaker 1: a story told while a replica fails.", "frames": self.frames, "seed": self.seed,
                "stream": True, "response_format": "pcm"}
        try:
            with httpx.stream("POST", self.url + SPEECH, json=body, timeout=600) as r:
                self.replica = r.headers.get("x-vvtrt-replica")
                if r.status_code != 200:
                    self.error = f"HTTP {r.status_code}"
                    return
                for chunk in r.iter_bytes():
                    self.bytes += len(chunk)
                    self.first_t = self.first_t or time.monotonic()
        except httpx.HTTPError as exc:
            self.error = type(exc).__name__
        finally:
            self.end_t = time.monotonic()

    @property
    def complete(self) -> bool:
        return self.error is None and self.bytes == self.frames * FRAME_BYTES


def replicas(url: str) -> dict[str, dict]:
    data = httpx.get(url + "/dashboard/data", timeout=30).json()
    return {r["name"]: r for r in data.get("replicas", [])}


def replica_now(url: str, name: str) -> dict | None:
    """`name`'s dashboard entry, or None when the front did not answer in time (counted, not fatal)."""
    try:
        return replicas(url).get(name, {})
    except (httpx.HTTPError, ValueError):
        return None


def probe(url: str) -> tuple[bool, str | None]:
    body = {"input": "Speaker 1: still here?", "frames": 2, "stream": False, "response_format": "pcm"}
    try:
        r = httpx.post(url + SPEECH, json=body, timeout=120)
        return r.status_code == 200, r.headers.get("x-vvtrt-replica")
    except httpx.HTTPError:
        return False, None


def _wait_for_streams(streams: list[Stream], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(s.first_t for s in streams) and len({s.replica for s in streams}) >= 2:
            return
        if any(not s.is_alive() and not s.first_t for s in streams):
            raise SystemExit("a stream ended before its first chunk: " + str([s.error for s in streams if s.error]))
        time.sleep(0.05)
    raise SystemExit("the streams did not all start on two or more replicas in time")


def run(args) -> dict:
    before = replicas(args.url)
    if sum(r["ok"] for r in before.values()) < 2:
        raise SystemExit(f"needs two or more ready replicas, got {sorted(before)}")
    streams = [Stream(args.url, args.frames, seed=i) for i in range(args.streams)]
    for s in streams:
        s.start()
    _wait_for_streams(streams, args.start_timeout)
    victim = max(before, key=lambda n: sum(s.replica == n for s in streams))
    kill_t = time.monotonic()
    os.kill(before[victim]["pid"], signal.SIGKILL)
    probes, back_t, dashboard_misses = [], None, 0
    while time.monotonic() - kill_t < args.restart_timeout:
        ok, served_by = probe(args.url)
        probes.append({"t": round(time.monotonic() - kill_t, 3), "ok": ok, "replica": served_by})
        r = replica_now(args.url, victim)
        dashboard_misses += r is None
        if back_t is None and r and r.get("ok") and r.get("pid") != before[victim]["pid"]:
            back_t = time.monotonic()
        if back_t is not None and all(not s.is_alive() for s in streams):
            break
        time.sleep(args.probe_interval)
    end = time.monotonic() + args.restart_timeout
    for s in streams:
        s.join(timeout=max(0.0, end - time.monotonic()))
    cut = [s for s in streams if s.replica == victim]
    others = [s for s in streams if s.replica != victim]
    cut_s = [s.end_t - kill_t for s in cut if s.end_t and not s.complete]
    return {
        "url": args.url, "streams": args.streams, "frames": args.frames, "victim": victim,
        "victim_streams": len(cut), "victim_streams_cut": sum(not s.complete for s in cut),
        "victim_streams_cut_by_error": sum(s.error is not None and not s.complete for s in cut),
        "truncation_s": {"p50": round(statistics.median(cut_s), 3), "max": round(max(cut_s), 3)} if cut_s else None,
        "other_streams": len(others), "other_streams_complete": sum(s.complete for s in others),
        "probes": len(probes), "probes_failed": sum(not p["ok"] for p in probes),
        "dashboard_unanswered": dashboard_misses,
        "restart_s": round(back_t - kill_t, 3) if back_t else None,
        "first_probe_on_victim_s": next((p["t"] for p in probes if p["ok"] and p["replica"] == victim), None),
        "probe_log": probes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--probe-interval", type=float, default=0.5)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--restart-timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    res = run(args)
    from vvtrt.reports.environment import collect_environment  # this host runs the server too

    res = {"kind": "ray-failover", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "command": shlex.join([sys.executable, *sys.argv]), "environment": collect_environment(), **res}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"killed {res['victim']} holding {res['victim_streams']} of {res['streams']} streams: "
          f"{res['victim_streams_cut_by_error']} cut by an error (truncation p50/max {res['truncation_s']} s); "
          f"other replicas: {res['other_streams_complete']}/{res['other_streams']} complete; probes failed "
          f"{res['probes_failed']}/{res['probes']}; back after {res['restart_s']} s "
          f"(first request served by it after {res['first_probe_on_victim_s']} s)")
    bad = (res["other_streams_complete"] < res["other_streams"] or res["probes_failed"]
           or res["victim_streams_cut_by_error"] < res["victim_streams_cut"] or res["restart_s"] is None)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
