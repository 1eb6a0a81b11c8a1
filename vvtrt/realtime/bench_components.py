"""Where a Realtime step's time goes: each component of the speech step (`rt_sampler`, `rt_decoder_step`,
`rt_connector`, `rt_tts_decode` on the 2b TTS rows) and of the text-window step, timed alone, on the
very feeds and output buffers the loop hands it (`RealtimeLoop._speech` / `_text` are run once with every
runner wrapped in a recorder, so the feeds are the loop's own views and buckets, not a copy of its code).

Each recorded call is then timed by itself: on CUDA captured alone in a CUDA graph and replayed `n` times
between CUDA events (a runner that cannot be captured, e.g. ONNX Runtime's, is run eagerly between the
same events); on the CPU by wall time. The whole step is timed as the loop runs it (`speech_step` /
`text_step`, a CUDA graph when the loop has them), and the glue (cache writes, the commit masks, the
copies out) is the whole step minus the components. No row is marked while this runs (`active` and
`win_n` are zero), so no stream's state moves.
"""
from __future__ import annotations

import time

import torch

from vvtrt.realtime.config import TEXT_WINDOW


class _Recorder:
    """Stands in for one runner of the loop: records `(name, feed, out)` of each `infer`, then runs it."""

    def __init__(self, name: str, runner, calls: list):
        self._name, self._runner, self._calls = name, runner, calls

    def infer(self, feed, out=None):
        self._calls.append((self._name, dict(feed), out))
        return self._runner.infer(feed, out)

    def __getattr__(self, attr):
        return getattr(self._runner, attr)


def _unmark(loop) -> None:
    for k in ("active", "win_n"):
        loop.inputs[k].zero_()


def record_calls(loop, step) -> list[tuple[str, dict, dict]]:
    """The component calls `step()` (an eager step of `loop`) makes, in order, with their feeds and outputs."""
    saved = dict(loop.r)
    calls: list = []
    loop.r.update({name: _Recorder(name, r, calls) for name, r in saved.items()})
    try:
        _unmark(loop)
        with torch.inference_mode():
            step()
    finally:
        loop.r.clear()
        loop.r.update(saved)
    return calls


def _events_ms(device, fn, n: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(torch.cuda.current_stream(device))
    for _ in range(n):
        fn()
    end.record(torch.cuda.current_stream(device))
    end.synchronize()
    return start.elapsed_time(end) / n


def _captured(device, fn, pool):
    """A CUDA graph of `fn` alone, or None if it cannot be captured."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            fn()
    except Exception:  # noqa: BLE001 - a runner that cannot be captured is timed eagerly
        torch.cuda.synchronize(device)
        return None
    torch.cuda.synchronize(device)
    return graph


@torch.inference_mode()
def time_call(device, fn, n: int, graphs: bool, pool=None) -> tuple[float, str]:
    """`(ms per call, method)` of `fn` over `n` runs after a warm-up one."""
    device = torch.device(device)
    if device.type != "cuda":
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1e3 / n, "wall"
    graph = _captured(device, fn, pool) if graphs else None
    if graph is not None:
        graph.replay()
        return _events_ms(device, graph.replay, n), "cuda-graph"
    fn()
    return _events_ms(device, fn, n), "cuda-events-eager"


def _rows(name: str, feed: dict) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.dim() else 1


def _breakdown(loop, whole_ms: float, calls, n: int, pool) -> dict:
    graphs = loop.use_graphs and loop.capture_error is None  # a loop whose capture failed runs eagerly
    comps, total = [], 0.0
    for name, feed, out in calls:
        runner = loop.r[name]
        ms, method = time_call(loop.device, lambda r=runner, f=feed, o=out: r.infer(f, o), n, graphs, pool)
        total += ms
        comps.append({"name": name, "rows": _rows(name, feed), "ms": round(ms, 4), "method": method})
    comps.append({"name": "glue", "rows": None, "ms": round(whole_ms - total, 4),
                  "method": "whole step minus the components"})
    for c in comps:
        c["share"] = round(c["ms"] / whole_ms, 4) if whole_ms > 0 else None
    return {"step_ms": round(whole_ms, 4), "components": comps}


def measure_components(loop, b: int, s_tts: int, s_lm: int, n: int, t: int = TEXT_WINDOW) -> dict:
    """The breakdown of the speech step (batch bucket `b`, TTS KV bucket `s_tts`) and of the `t`-token
    text-window step (text-LM KV bucket `s_lm`) of `loop`, each component timed over `n` runs."""
    pool = torch.cuda.graph_pool_handle() if loop.use_graphs else None
    _unmark(loop)
    speech_ms, speech_how = time_call(loop.device, lambda: loop.speech_step(b, s_tts), n, False)
    _unmark(loop)
    text_ms, _ = time_call(loop.device, lambda: loop.text_step(b, s_lm, s_tts, t), n, False)
    speech = _breakdown(loop, speech_ms, record_calls(loop, lambda: loop._speech(b, s_tts)), n, pool)
    text = _breakdown(loop, text_ms, record_calls(loop, lambda: loop._text(b, s_lm, s_tts, t)), n, pool)
    whole = "the loop's CUDA graph" if loop.graphs and loop.capture_error is None else speech_how.replace(
        "cuda-events-eager", "eager, CUDA events")
    if loop.device.type == "cuda":
        torch.cuda.synchronize(loop.device)
    return {"streams": b, "kv_bucket": s_tts, "lm_kv_bucket": s_lm, "text_tokens": t, "replays": n,
            "whole_step": whole, "speech": speech, "text_window": text}
