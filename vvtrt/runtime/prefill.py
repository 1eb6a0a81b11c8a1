"""The prompt prefill, graph-captured per padded length.

Eager, the 1.5B prefill is ~1100 small kernel launches: on a slow host CPU that is ~35 ms of Python and
launch overhead before the first frame, against a few ms of GPU work. Where the backend can be captured
(torch, tensorrt on CUDA), the prompt body is right-padded to a multiple of `quantum` tokens and each
padded length gets one CUDA graph, replayed for every later prompt of that length. Right padding is exact:
attention is causal, so the real positions never attend to the pads, and only the first T K/V entries are
kept.
"""
from __future__ import annotations

import logging
import math
import time

import torch

log = logging.getLogger(__name__)


class Prefill:
    """`prefill(body [1, T, H]) -> (k, v)`, each `[L, 1, Hkv, T, D]` (views; copy before the next call)."""

    def __init__(self, runner, max_len: int, graphs: bool, quantum: int = 64):
        self.runner = runner
        self.max_len = max_len
        self.quantum = quantum
        self.graphs_enabled = graphs and runner.device.type == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, dict]] = {}
        # One memory pool for every padded length (one per graph would hold up to max_len/quantum sets of
        # activations). Safe because graphs never run concurrently and a call's outputs are consumed
        # (copied) before the next call, whichever length replays next.
        self._pool = None
        self.capture_error: str | None = None
        self.capture_seconds = 0.0

    def padded_length(self, t: int) -> int:
        return min(self.max_len, max(self.quantum, math.ceil(t / self.quantum) * self.quantum))

    def __call__(self, body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = body.shape[1]
        if not self.graphs_enabled or self.capture_error is not None or t > self.max_len:
            out = self.runner.infer({"embeds": body.contiguous()})
            return out["k"], out["v"]
        p = self.padded_length(t)
        if p not in self._graphs:
            self._capture(p, body)
            if self.capture_error is not None:
                return self(body)
        graph, buf, out = self._graphs[p]
        buf[:, :t].copy_(body)
        buf[:, t:].zero_()
        graph.replay()
        return out["k"][:, :, :, :t], out["v"][:, :, :, :t]

    def _capture(self, p: int, body: torch.Tensor) -> None:
        """Warm up, then capture, the padded length `p`. The warm-up runs the very shapes and buffer about to be
        captured on the same runner just before the capture: torch's rule (warm up on a side stream) and
        TensorRT's (enqueue once after a shape change before capturing; `TrtRunner` then dedicates the warmed-up
        execution context to this length, see `vvtrt.runtime.trt_runner`)."""
        t0 = time.perf_counter()
        buf = torch.zeros(1, p, body.shape[-1], dtype=body.dtype, device=body.device)
        side = torch.cuda.Stream(body.device)
        side.wait_stream(torch.cuda.current_stream(body.device))
        with torch.cuda.stream(side):
            self.runner.infer({"embeds": buf})  # warm-up on a side stream, as torch requires
        torch.cuda.current_stream(body.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.runner.infer({"embeds": buf})
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured runs eagerly
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("prefill CUDA graph capture failed, running eagerly: %s", self.capture_error)
            torch.cuda.synchronize(body.device)
            return
        self._graphs[p] = (graph, buf, out)
        self.capture_seconds += time.perf_counter() - t0
