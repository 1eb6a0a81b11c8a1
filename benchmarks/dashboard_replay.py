"""Render vvtrt's own dashboard page from a recorded `/dashboard/data` answer and screenshot it.

The GPU machine has no browser (and no internet to fetch one), so the device run records what the live
dashboard polls — `curl "$URL/dashboard/data?seconds=600"` while the server is under load — and this
script shows that record through the unchanged page (vvtrt/server/static) in headless Chromium here:

    python benchmarks/dashboard_replay.py RECORD.json OUT.png --note "H100, vvtrt serve 1.5B bf16, loadtest c64"

A banner on the page says it is a replay and of what, so the picture cannot pass for a live capture.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("VVTRT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def replay_app(record: dict):
    """A Starlette app with the dashboard page, its static files and the recorded data."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from vvtrt.server.app import STATIC

    async def page(_):
        return FileResponse(STATIC / "dashboard.html")

    async def data(_):
        return JSONResponse(record)

    return Starlette(routes=[Route("/dashboard", page), Route("/dashboard/data", data),
                             Mount("/static", StaticFiles(directory=STATIC))])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            return server, thread
        time.sleep(0.05)
    raise RuntimeError("the replay server did not start")


def screenshot(url: str, out: Path, note: str, window_s: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.select_option("#window", str(window_s)) if page.query_selector(f"#window option[value='{window_s}']") else None
        page.wait_for_function("window.vvtrtDash && window.vvtrtDash.updates >= 2", timeout=20000)
        page.evaluate("""note => { const d = document.createElement('div'); d.textContent = note;
            d.style.cssText = 'padding:8px 16px;background:#fffbe6;color:#333;font:14px sans-serif;' +
              'border-bottom:1px solid #e0c060';
            document.body.prepend(d); }""", note)
        page.wait_for_timeout(1500)
        tmp = out.with_name(out.name + ".tmp.png")
        page.screenshot(path=str(tmp), full_page=True)
        os.replace(tmp, out)
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record", type=Path, help="a saved /dashboard/data JSON answer")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--note", default="", help="what the record is (device, model, load)")
    ap.add_argument("--window", type=int, default=300, help="seconds shown (the page's window selector)")
    args = ap.parse_args(argv)
    try:
        record = json.loads(args.record.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("series"), list) or not record["series"]:
            raise ValueError("no 'series' points")
    except (OSError, ValueError) as exc:
        print(f"error: {args.record} is not a recorded /dashboard/data answer ({exc})", file=sys.stderr)
        return 2
    port = _free_port()
    server, thread = serve_in_thread(replay_app(record), port)
    try:
        banner = f"REPLAY of a recorded /dashboard/data answer ({args.record.name}). {args.note}".strip()
        screenshot(f"http://127.0.0.1:{port}/dashboard", args.out, banner, args.window)
    finally:
        server.should_exit = True
        thread.join(timeout=5)
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
