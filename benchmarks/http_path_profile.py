"""Where the HTTP serving path spends its CPU: a real `vvtrt serve` app (uvicorn, the serving engine) in this
process, loaded by `vvtrt loadtest` (its own processes) for `--duration` seconds.

Per thread of the server process (by Python thread name: the event loop's `MainThread`, `vvtrt-engine`,
asyncio's `to_thread` workers...): CPU seconds (user + system, from /proc) during the load and per frame
delivered; the event loop thread is profiled with cProfile on its CPU clock (the top functions by own
time). A thread near one CPU second per wall second is what limits the server; the engine thread's share
is the model's work.

    python benchmarks/http_path_profile.py WORKDIR OUT_DIR [--device cpu] [--concurrency 16] [--duration 20]
        [--frames 40] [--max-streams 64] [--processes 2] [--backend torch] [--no-cprofile]

Writes OUT_DIR/http_path_profile.json (with the command, commit and device) and OUT_DIR/http_path_profile.txt
(the cProfile table). Linux only (/proc).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread of this process, by Python thread name (native ids mapped)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def run_load(args, url: str, out_dir: Path, result: dict, server) -> None:
    import httpx

    try:
        while httpx.get(url + "/ready", timeout=5).status_code != 200:
            time.sleep(0.2)
    except httpx.HTTPError:
        time.sleep(1)
        return run_load(args, url, out_dir, result, server)
    result["before"], t0 = thread_cpu(), time.perf_counter()
    cmd = [sys.executable, "-m", "vvtrt", "loadtest", "--url", url, "--concurrency", str(args.concurrency),
           "--duration", str(args.duration), "--frames", str(args.frames), "--processes", str(args.processes),
           "--out", str(out_dir / "loadtest")]
    result["loadtest_rc"] = subprocess.run(cmd, capture_output=True, text=True).returncode
    result["after"], result["wall_s"] = thread_cpu(), time.perf_counter() - t0
    server.should_exit = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--port", type=int, default=8131)
    ap.add_argument("--no-cprofile", action="store_true",
                    help="Thread CPU only (cProfile slows the event loop thread by a large factor).")
    args = ap.parse_args()
    import uvicorn

    from vvtrt.fsio import atomic_write_json, atomic_write_text
    from vvtrt.reports.environment import collect_environment
    from vvtrt.server.app import create_app
    from vvtrt.server.config import ServerConfig
    from vvtrt.server.serve import build_engine, configure_logging, draining_server, resolve_runtime, workdir_kind

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = resolve_runtime(ServerConfig(workdir=args.workdir, port=args.port, device=args.device,
                                          backend=args.backend, max_streams=args.max_streams, max_queue=1024).check())
    configure_logging()
    engine = build_engine(config)
    app = create_app(config, engine, service_cls=workdir_kind(config.workdir).load("service_class"))
    server = draining_server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_config=None,
                                            access_log=False, lifespan="on"), app.state.lifecycle, 5.0)
    prof = cProfile.Profile(time.thread_time)  # CPU time of the event loop thread: waiting costs nothing
    result: dict = {}
    loader = threading.Thread(target=run_load, args=(args, f"http://127.0.0.1:{args.port}", out_dir, result, server),
                              name="profile-loader", daemon=True)
    loader.start()
    if not args.no_cprofile:
        prof.enable()  # this thread runs uvicorn's event loop (start-up included: small next to the load)
    server.run()
    prof.disable()
    loader.join()
    frames = json.loads((out_dir / "loadtest" / "loadtest.json").read_text())["frames"] if result.get(
        "loadtest_rc") == 0 else None
    cpu = {k: round(result["after"].get(k, 0.0) - result["before"].get(k, 0.0), 3) for k in result["after"]}
    text = io.StringIO()
    if not args.no_cprofile:
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
    report = {"command": " ".join(sys.argv), "cprofile": not args.no_cprofile, "environment": collect_environment(),
              "wall_s": result["wall_s"],
              "frames": frames, "thread_cpu_s": cpu,
              "thread_cpu_s_per_wall_s": {k: round(v / result["wall_s"], 3) for k, v in cpu.items()},
              "thread_cpu_us_per_frame": {k: round(v / frames * 1e6, 1) for k, v in cpu.items()} if frames else None,
              "loadtest": str(out_dir / "loadtest" / "loadtest.json")}
    atomic_write_json(out_dir / "http_path_profile.json", report)
    atomic_write_text(out_dir / "http_path_profile.txt", text.getvalue())
    print(json.dumps({k: report[k] for k in ("wall_s", "frames", "thread_cpu_s_per_wall_s",
                                              "thread_cpu_us_per_frame")}, indent=1))


if __name__ == "__main__":
    main()
