"""Per-component timing with CUDA events (or the host clock on the CPU), by wrapping runners' `infer`."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class ComponentTimer:
    """Wraps each runner's `infer` to record one (start, end) event pair per call."""

    def __init__(self, runners: dict, device):
        self.runners = runners
        self.device = torch.device(device)
        self.events: dict[str, list] = {name: [] for name in runners}
        self._orig = {}

    @contextmanager
    def active(self):
        for name, r in self.runners.items():
            self._orig[name] = r.infer
            r.infer = self._wrap(name, r.infer)
        try:
            yield self
        finally:
            for name, r in self.runners.items():
                r.infer = self._orig[name]

    def _wrap(self, name, fn):
        cuda = self.device.type == "cuda"

        def timed(*args, **kwargs):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                out = fn(*args, **kwargs)
                b.record()
                self.events[name].append((a, b))
            else:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                self.events[name].append((t0, time.perf_counter()))
            return out
        return timed

    def milliseconds(self) -> dict[str, list[float]]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {n: [a.elapsed_time(b) for a, b in ev] for n, ev in self.events.items()}
        return {n: [(b - a) * 1000 for a, b in ev] for n, ev in self.events.items()}


def device_bandwidth_gbps(device, n_bytes: int = 1 << 30, repeats: int = 10) -> float | None:
    """Measured device-to-device copy bandwidth (bytes read + written), GB/s."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(repeats):
        dst.copy_(src)
    b.record()
    torch.cuda.synchronize(device)
    secs = a.elapsed_time(b) / 1000 / repeats
    del src, dst
    return n_bytes / secs / 1e9


def weight_bytes_per_frame(model, steps: int, itemsize: int) -> int:
    """Weights one frame must read at least once (batched pos/neg LLM, lm_head cut to 4 rows, head x K)."""
    m = model.model
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    llm = count(m.language_model) - m.language_model.embed_tokens.weight.numel()
    llm += 4 * model.config.text_config.hidden_size
    head = count(m.diffusion_head) * steps
    codec = count(m.audio_tower.decoder) + count(m.semantic_tokenizer_encoder)
    conn = count(m.multi_modal_projector) + count(m.semantic_connector)
    return (llm + head + codec + conn) * itemsize


def graphed_component_ms(loop, repeats: int = 50) -> dict[str, list[float]]:
    """Each component of the frame step captured alone in a CUDA graph and timed over `repeats` replays
    (what it costs inside the whole-frame graph, launch gaps included). Buffers are restored after."""
    device = loop.device
    out: dict[str, list[float]] = {}
    saved = loop._snapshot()
    for name, feed, dest in loop.component_calls():
        runner = loop.r[name]
        if runner.backend not in ("torch", "tensorrt"):
            continue
        runner.infer(feed, dest)  # warm-up outside capture
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            runner.infer(feed, dest)
        times = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            times.append((a, b))
        torch.cuda.synchronize(device)
        out[name] = [a.elapsed_time(b) for a, b in times]
        del graph
    loop._restore(saved)
    return out
