"""The load test spread over client processes, so the client is never what limits a test.

`--concurrency` streams are split as evenly as possible over `--processes` worker processes (spawned, one
event loop each). The workers import, then wait at one barrier and start together; each runs its share of
the streams for `--duration` and sends back its per-request records, its start and end times and its own
CPU time (user + system). The parent merges the records into one list, as one process would have produced.

The client's CPU use is reported per wall second: all processes together, and the busiest one (a single
event loop near 1.0 CPU second per second is saturated: its arrival times include its own queueing).
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass
from queue import Empty

from vvtrt.errors import VvtrtError

START_TIMEOUT_S = 120.0  # the workers' imports and the barrier


@dataclass(frozen=True)
class WorkerResult:
    results: list
    start: float   # time.time() when its load started
    end: float
    cpu_s: float   # user + system seconds of the process during its load
    streams: int   # its share of the concurrency


def default_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def split(total: int, parts: int) -> list[int]:
    """`total` streams over at most `parts` processes, as evenly as possible (none empty)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_share(run_load, spec) -> WorkerResult:
    """This process's share of the load (`run_load(spec)`, a coroutine, on its own event loop), timed and with
    its CPU time."""
    cpu0, start = _cpu(), time.time()
    results, _ = asyncio.run(run_load(spec))
    return WorkerResult(results, start, time.time(), _cpu() - cpu0, spec.concurrency)


def _worker(index: int, run_load, spec, barrier, queue) -> None:
    try:
        barrier.wait(START_TIMEOUT_S)
        queue.put((index, run_share(run_load, spec)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        queue.put(f"{type(exc).__name__}: {exc}")


def run_processes(run_load, spec, processes: int) -> list[WorkerResult]:
    """Run `run_load` (a module-level coroutine function: the workers import it) over `processes` spawned
    workers (1: in this process), each with its share of `spec.concurrency`; each one's result, in order."""
    shares = split(spec.concurrency, processes)
    if len(shares) == 1:
        return [run_share(run_load, spec)]
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads
    barrier, queue = ctx.Barrier(len(shares)), ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"vvtrt-loadtest-{i}", daemon=True,
                         args=(i, run_load, dataclasses.replace(spec, concurrency=n), barrier, queue))
             for i, n in enumerate(shares)]
    for p in procs:
        p.start()
    wait_s = START_TIMEOUT_S + spec.duration_s + spec.timeout_s + 30
    out = {}
    try:
        for _ in procs:
            try:
                item = queue.get(timeout=wait_s)
            except Empty:
                raise VvtrtError(f"a load test process sent no result within {wait_s:.0f} s") from None
            if isinstance(item, str):
                raise VvtrtError(f"a load test process failed: {item}")
            out[item[0]] = item[1]
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
    return [out[i] for i in sorted(out)]


def merge(workers: list[WorkerResult], parent_cpu_s: float = 0.0) -> tuple[list, float, dict]:
    """(every record, the wall time from the first start to the last end, the client's CPU use)."""
    results = [r for w in workers for r in w.results]
    wall = max(w.end for w in workers) - min(w.start for w in workers)
    cpu = sum(w.cpu_s for w in workers) + parent_cpu_s
    per_proc = [w.cpu_s / (w.end - w.start) if w.end > w.start else None for w in workers]
    return results, wall, {
        "processes": len(workers), "streams_per_process": [w.streams for w in workers],
        "cpu_s": round(cpu, 3), "cpu_s_per_wall_s": round(cpu / wall, 3) if wall > 0 else None,
        "busiest_process_cpu_s_per_wall_s": round(max((x for x in per_proc if x is not None), default=0.0), 3),
        "per_process_cpu_s_per_wall_s": [None if x is None else round(x, 3) for x in per_proc]}
