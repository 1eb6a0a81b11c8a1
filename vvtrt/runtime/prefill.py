"""The prompt prefill: the prompt in chunks through `lm_decode`, the LLM's one graph (one copy of its weights).

Chunk i (`chunk` tokens, the last one shorter) runs as one `lm_decode` call of batch 1 with `cache_len = i *
chunk` against a cache holding the K/V of every earlier chunk (the first chunk against one empty slot), and its
new K/V are appended to that cache. This is exactly the causal prefill of the whole prompt: each token attends
to the tokens before it, in earlier chunks through the cache, in its own chunk causally (tests compare it with
the unchunked reference and transformers).

Eager, the first chunk of the 1.5B is ~1100 small kernel launches: on a slow host CPU that is ~35 ms of Python
and launch overhead before the first frame, against a few ms of GPU work. Where the backend can be captured
(torch, tensorrt on CUDA), the first chunk is right-padded to a multiple of `quantum` tokens and each padded
length gets one CUDA graph, replayed for every later prompt of that length. Right padding is exact: attention
is causal, so the real positions never attend to the pads, and only the real K/V entries are kept. Later chunks
(prompts longer than one chunk) run eagerly: each is a full chunk attending to at least a chunk of cache, work
that hides its launch overhead, and their shapes (the cache so far) change from chunk to chunk.

On torch the module runs eagerly (not the runner's compiled call: `torch.compile(dynamic=False)` would compile
each chunk shape anew).
"""
from __future__ import annotations

import itertools
import logging
import math
import time

import torch

from vvtrt.errors import InputError

log = logging.getLogger(__name__)


class Prefill:
    """`prefill(body [1, T, H]) -> (k, v)`, each `[L, 1, Hkv, T, D]` (views; copy before the next call)."""

    def __init__(self, runner, max_len: int, graphs: bool, chunk: int | None = None, quantum: int = 64):
        self.runner = runner
        self.max_len = max_len
        self.chunk = min(chunk or max_len, max_len)
        self.quantum = min(quantum, self.chunk)
        self.graphs_enabled = graphs and runner.device.type == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict, dict]] = {}
        # One memory pool for every padded length (one per graph would hold up to chunk/quantum sets of
        # activations). Safe because graphs never run concurrently and a call's outputs are consumed
        # (copied) before the next call, whichever length replays next.
        self._pool = None
        self.capture_error: str | None = None
        self.capture_seconds = 0.0
        spec = runner.spec
        self._names = [t.name for t in spec.outputs]
        self._torch_module = runner.module if runner.backend == "torch" else None

    def padded_length(self, t: int) -> int:
        return min(self.chunk, max(self.quantum, math.ceil(t / self.quantum) * self.quantum))

    def __call__(self, body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        job = PrefillJob(self, body)
        while not job.done:
            job.advance()
        return job.k, job.v

    def first_many(self, bodies: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first chunks (at most one chunk each) of several prompts: on torch in one call, packed back to
        back with no padding (`LMDecode.prefill_packed`: every GEMM over the prompts' real tokens, attention
        per prompt by the variable-length kernel); `(k, v)` per prompt, views of one output (consume them
        before the next call), each its own causal prefill's up to the GEMMs' rounding. One prompt runs as
        `_first`; several need the torch backend (the serving engine batches prompts only there)."""
        lens = [b.shape[1] for b in bodies]
        if max(lens) > self.chunk or min(lens) < 1:
            raise InputError(f"batched prefill takes prompts of 1 to {self.chunk} tokens, got {lens}")
        if len(bodies) == 1:
            return [self._first(bodies[0])]
        if self._torch_module is None:
            raise ValueError(f"several prompts in one prefill call need the torch backend, not {self.runner.backend}")
        with torch.inference_mode():
            k, v = self._torch_module.prefill_packed(torch.cat(bodies, dim=1), lens)
        starts = [0, *itertools.accumulate(lens)]
        return [(k[:, :, :, o:o + n], v[:, :, :, o:o + n]) for o, n in zip(starts, lens)]

    def _feed(self, body, past_k, past_v, start: int) -> dict:
        feed = {"embeds": body, "past_k": past_k, "past_v": past_v,
                "cache_len": torch.full((body.shape[0],), start, dtype=torch.int64, device=body.device)}
        if self._torch_module is None:  # ONNX Runtime and TensorRT read dense buffers
            feed = {n: x.contiguous() for n, x in feed.items()}
        return feed

    def _run(self, feed: dict) -> dict:
        if self._torch_module is None:
            return self.runner.infer(feed)
        self.runner.check_feed(feed)
        with torch.inference_mode():
            res = self._torch_module(*(feed[t.name] for t in self.runner.spec.inputs))
        return dict(zip(self._names, res))

    def _infer(self, body, past_k, past_v, start: int) -> dict:
        return self._run(self._feed(body, past_k, past_v, start))

    def _empty_past(self, body: torch.Tensor) -> torch.Tensor:
        """One cache slot (masked out by cache_len 0): the past of the first chunk."""
        spec = self.runner.spec.input("past_k")
        shape = spec.resolve({"batch": 1, "kv_len": 1})
        return torch.zeros(shape, dtype=body.dtype, device=body.device)

    def _first(self, body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first chunk (cache_len 0), graph-captured per padded length where the backend allows."""
        t = body.shape[1]
        if not self.graphs_enabled or self.capture_error is not None:
            past = self._empty_past(body)
            out = self._infer(body, past, past, 0)
            return out["new_k"], out["new_v"]
        p = self.padded_length(t)
        if p not in self._graphs:
            self._capture(p, body)
            if self.capture_error is not None:
                return self._first(body)
        graph, feed, out = self._graphs[p]
        feed["embeds"][:, :t].copy_(body)
        feed["embeds"][:, t:].zero_()
        graph.replay()
        return out["new_k"][:, :, :, :t], out["new_v"][:, :, :, :t]

    def _capture(self, p: int, body: torch.Tensor) -> None:
        """Warm up, then capture, the padded length `p`. The warm-up runs the very shapes and buffers about to be
        captured on the same runner just before the capture: torch's rule (warm up on a side stream) and
        TensorRT's (enqueue once after a shape change before capturing; `TrtRunner` then dedicates the warmed-up
        execution context to this length, see `vvtrt.runtime.trt_runner`)."""
        t0 = time.perf_counter()
        buf = torch.zeros(1, p, body.shape[-1], dtype=body.dtype, device=body.device)
        past = self._empty_past(body)
        feed = self._feed(buf, past, past, 0)
        side = torch.cuda.Stream(body.device)
        side.wait_stream(torch.cuda.current_stream(body.device))
        with torch.cuda.stream(side):
            self._run(feed)  # warm-up on a side stream, as torch requires
        torch.cuda.current_stream(body.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._run(feed)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured runs eagerly
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("prefill CUDA graph capture failed, running eagerly: %s", self.capture_error)
            torch.cuda.synchronize(body.device)
            return
        self._graphs[p] = (graph, feed, out)
        self.capture_seconds += time.perf_counter() - t0


class PrefillJob:
    """One prompt body's prefill, advanced one chunk at a time (`advance`), so the serving engine can run
    frame steps between its chunks. `k, v [L, 1, Hkv, T, D]` once `done`: a prompt of one chunk gives views
    of the prefill's buffers (consume them before the next prefill call), a longer one its own buffers."""

    def __init__(self, prefill: Prefill, body: torch.Tensor):
        t = body.shape[1]
        if not 1 <= t <= prefill.max_len:
            raise InputError(f"a prompt of {t} tokens cannot be prefilled: the exported limit is {prefill.max_len} "
                             "(re-export with a larger --max-prompt)")
        self.prefill, self.body, self.total = prefill, body, t
        self.filled = 0
        self.k = self.v = None

    @property
    def done(self) -> bool:
        return self.filled >= self.total

    def first_body(self) -> torch.Tensor:
        return self.body[:, :self.prefill.chunk]

    def take_first(self, k: torch.Tensor, v: torch.Tensor) -> int:
        """The first chunk's K/V (computed here or in a batched call of several prompts' first chunks)."""
        n, t = k.shape[3], self.total
        if n == t:
            self.k, self.v = k, v
        else:
            shape = list(k.shape)
            shape[3] = t
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
            self.k[:, :, :, :n].copy_(k)
            self.v[:, :, :, :n].copy_(v)
        self.filled = n
        return n

    def next_tokens(self) -> int:
        return min(self.prefill.chunk, self.total - self.filled)

    def advance(self) -> int:
        """Run the next chunk; the number of tokens it prefilled."""
        p, o = self.prefill, self.filled
        if o == 0:
            return self.take_first(*p._first(self.first_body()))
        else:
            out = p._infer(self.body[:, o:o + p.chunk], self.k[:, :, :, :o], self.v[:, :, :, :o], o)
            n = out["new_k"].shape[3]
            self.k[:, :, :, o:o + n].copy_(out["new_k"])
            self.v[:, :, :, o:o + n].copy_(out["new_v"])
        self.filled += n
        return n


def make_prefill(runners: dict, options, graphs: bool) -> Prefill:
    """The prompt prefill for a loaded set of runners: `prefill(body [1, T, H]) -> (k, v)`, each
    `[L, 1, Hkv, T, D]`, run in chunks of `options.prefill_chunk` tokens through `runners["lm_decode"]` (the
    same graph, engine and weights as the decode steps). The one place that decides how a prefill runs."""
    return Prefill(runners["lm_decode"], options.max_prompt, graphs, chunk=options.prefill_chunk)
