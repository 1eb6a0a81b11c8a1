"""One vvtrt variant, measured inside its own process (`vvtrt.bench.worker`).

In order, on the real script with its voice clips (`vvtrt.bench.inputs`):

1. load the `Synthesizer` (``setup.load_s``);
2. the **cold** request: the first one after load, end to end, so CUDA-graph capture and `torch.compile`
   are in it (``ttfa_e2e.cold_ms``);
3. `repeats` **warm** end-to-end requests of `frames` frames: text and voice wavs in, the first chunk out
   (``ttfa_e2e.warm``), every frame timed (``frame_ms``, ``rtf``), the voice encoder timed on the side;
   then `repeats` times the prompt building alone (``ttfa_e2e.prompt_build_ms``: tokenize, read and
   encode the voices, embed: what end to end adds to the prefill figure);
4. with `prompt_tokens`, a synthetic prompt of that length (warm-up, then `repeats` first chunks:
   ``ttfa_synthetic``), the long-prompt prefill figure of earlier reports;
5. `repeats` **warm prefill-to-first-chunk** requests: the prompt's embeddings ready (tokenized, voices
   encoded), timed from the prefill to the first chunk on the host (``ttfa_prefill.warm``);
6. memory (before step 7, whose extra graphs a server never holds), over the process's life and from the end
   of step 1 (``memory.after_load_*``: what it holds while serving, without the load's transient copies),
   then per-component timings.

An end-to-end request is `Synthesizer.stream(script, voices)` (for `streams` > 1 the same two calls,
`prompt_embeds` then `generate(..., streams=N)`), timed from before the prompt is built.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from vvtrt.bench.timing import ComponentTimer, graphed_component_ms
from vvtrt.reports.stats import component_stats, summary

log = logging.getLogger(__name__)

# Bench variants: name -> (backend, Synthesizer options)
VARIANTS = {
    "torch": ("torch", {}),
    "torch-compile": ("torch", {"compile": True}),
    "torch-max-autotune": ("torch", {"compile": "max-autotune-no-cudagraphs"}),
    "onnxruntime": ("onnxruntime", {}),
    "onnxruntime-graph": ("onnxruntime", {"ort_cuda_graph": True}),
    "tensorrt": ("tensorrt", {}),
}


SYNTHETIC_NOTE = "warm prefill-to-first-chunk of a synthetic prompt (random text bytes, no voices)"


def synthetic_prompt(prompt_tokens: int, bos: int, seed: int = 0) -> list[int]:
    """`prompt_tokens` ids ending with speech_start (text bytes; the content does not change the cost)."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.integers(32, 127, prompt_tokens - 1)] + [bos]


def ttfa_block(warm_ms: list[float], cold_ms: float | None = None, **extra) -> dict:
    """A report TTFA object: the cold figure (one request, or None), the warm series and its summary."""
    return {"cold_ms": cold_ms, "warm_ms": list(warm_ms), "warm": summary(warm_ms), **extra}


class _Requests:
    """Timed requests on one loaded synthesizer."""

    def __init__(self, synth, job):
        self.synth, self.job = synth, job
        self.device = synth.device
        self.voice_timer = ComponentTimer({"acoustic_encoder": synth.runners["acoustic_encoder"]}, self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _result(self):
        from vvtrt.runtime.synthesizer import SynthesisResult

        return SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0.0, 0.0)

    def _drain(self, chunks, first_only: bool) -> None:
        for _ in chunks:
            if first_only:
                break
        chunks.close()

    def e2e(self, seed: int, first_only: bool = False):
        """Script text and voice files in -> chunks out, timed from before the prompt is built."""
        j, res = self.job, self._result()
        self._sync()
        with self.voice_timer.active():
            if j.streams == 1:
                chunks = self.synth.stream(j.script, list(j.voices), frames=j.frames, cfg_scale=j.cfg_scale,
                                           seed=seed, result=res)
            else:
                t_start = time.perf_counter()
                ids, emb = self.synth.prompt_embeds(j.script, list(j.voices), seed)
                chunks = self.synth.generate(ids, emb, frames=j.frames, cfg_scale=j.cfg_scale, seed=seed,
                                             result=res, t_start=t_start, streams=j.streams)
            self._drain(chunks, first_only)
        return res

    def prompt_build_ms(self, seed: int) -> float:
        """The part of an end-to-end request before the prefill: tokenize, read and encode the voices, embed."""
        j = self.job
        self._sync()
        t0 = time.perf_counter()
        self.synth.prompt_embeds(j.script, list(j.voices), seed)
        self._sync()
        return (time.perf_counter() - t0) * 1000

    def from_embeds(self, ids, emb, seed: int):
        """Prefill to the first chunk: the prompt's embeddings are ready; timed from the prefill."""
        j, res = self.job, self._result()
        self._sync()
        t_start = time.perf_counter()
        chunks = self.synth.generate(ids, emb, frames=j.frames, cfg_scale=j.cfg_scale, seed=seed,
                                     result=res, t_start=t_start, streams=j.streams)
        self._drain(chunks, True)
        return res


def _synthetic_ttfa(req: _Requests, synth, job) -> dict | None:
    if not job.prompt_tokens:
        return None
    ids = synthetic_prompt(job.prompt_tokens, synth.info.audio_bos_token_id)
    emb = synth.runners["token_embed"].infer({"token": torch.tensor(ids, device=synth.device)})["embeds"]
    emb = emb[:, 0].unsqueeze(0).clone()
    req.from_embeds(ids, emb, 0)  # warm-up: this prompt's KV bucket may be a new graph
    warm = [req.from_embeds(ids, emb, r + 1).ttfa_s * 1000 for r in range(job.repeats)]
    return ttfa_block(warm, prompt_tokens=job.prompt_tokens, note=SYNTHETIC_NOTE)


def _components(synth, n_prompt: int, streams: int, frames: int) -> tuple[dict, str]:
    """Per-component latency on the real script's loop (left one frame into a request by the caller):
    each component graphed alone where the frame is graphed (its cost inside the frame graph), else eager
    calls timed with CUDA events (host clock on the CPU), the first two calls dropped."""
    from vvtrt.runtime.kv_cache import pick_bucket

    kv_len = pick_bucket(synth.options.kv_buckets, n_prompt + frames + 1)
    loop = synth._loop(kv_len, False, streams)
    if loop.graph is not None:
        timing, per = "each component captured alone in a CUDA graph, 50 replays", graphed_component_ms(loop)
    else:
        timing = "eager calls timed with CUDA events" if synth.device.type == "cuda" else "eager calls, host clock"
        timer = ComponentTimer(synth.runners, synth.device)
        with timer.active():
            for _ in range(min(20, frames + 2, kv_len - n_prompt - 2)):  # within the KV bucket
                loop.step()
        per = timer.milliseconds()
    comp = {name: component_stats(ms[2:] or ms, 1) for name, ms in per.items()
            if ms and name not in ("lm_prefill", "acoustic_encoder")}
    return comp, f"whole-frame CUDA graph: {loop.graph is not None}; components: {timing}"


def allocator_peaks(device) -> dict:
    """torch's allocator peaks in this process (None off CUDA: there is no GPU allocator to read)."""
    if device.type != "cuda":
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def bench_variant(job, probe) -> dict:
    """Measure variant `job.name`; `probe`: the process's `MemoryProbe` (marked once the synthesizer is loaded)."""
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.runtime.synthesizer import SAMPLE_RATE, Synthesizer
    from vvtrt.workdir import Workdir

    backend, extra = VARIANTS[job.name]
    device = torch.device(job.device)
    wd = Workdir.open(job.workdir)
    t0 = time.perf_counter()
    synth = Synthesizer.from_workdir(wd.root, backend=backend, device=device, precision=job.precision,
                                     models=ModelCache(wd, init_on_device=True), **extra)  # speed only
    load_s = time.perf_counter() - t0
    probe.mark_loaded()
    req = _Requests(synth, job)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    cold = req.e2e(seed=0)
    graph_pool = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
    voice_cold = req.voice_timer.milliseconds()["acoustic_encoder"]
    req.voice_timer.events["acoustic_encoder"].clear()
    warm = [req.e2e(seed=r + 1) for r in range(job.repeats)]
    voice_ms = req.voice_timer.milliseconds()["acoustic_encoder"]
    build_ms = [req.prompt_build_ms(r + 1) for r in range(job.repeats)]
    synthetic = _synthetic_ttfa(req, synth, job)
    ids, emb = synth.prompt_embeds(job.script, list(job.voices), 0)
    prefill = [req.from_embeds(ids, emb, r + 1).ttfa_s * 1000 for r in range(job.repeats)]
    mem = {**probe.fields(), "graph_pool_bytes": graph_pool}
    comp, notes = _components(synth, len(ids), job.streams, job.frames)
    audio_s = job.frames * synth.info.hop / SAMPLE_RATE
    mean_total = float(np.mean([r.total_s for r in warm]))
    frame_ms = [t * 1000 for r in warm for t in r.frame_s]
    return {
        "backend": backend, "precision": job.precision, "label": f"vvtrt-{job.name}", "components": comp,
        "frame_ms": frame_ms, "frame": summary(frame_ms), "rtf": mean_total / audio_s,
        "streams": job.streams, "throughput_x_realtime": job.streams * audio_s / mean_total,
        "ttfa_e2e": ttfa_block([r.ttfa_s * 1000 for r in warm], cold.ttfa_s * 1000,
                               prompt_tokens=cold.prompt_tokens, voices=len(job.voices),
                               voice_encoder_calls=len(voice_ms), voice_encoder_ms=voice_ms,
                               voice_encoder_cold_ms=voice_cold, prompt_build_ms=build_ms,
                               prompt_build=summary(build_ms)),
        "ttfa_prefill": ttfa_block(prefill, prompt_tokens=len(ids)),
        "ttfa_synthetic": synthetic, "memory": mem,
        "setup": {"load_s": load_s, "build_s": None, "capture_s": synth.capture_seconds,
                  "cold_request_s": cold.total_s},
        "floor_gap": None,
        "notes": f"{notes}; options {extra or 'default'}"
                 + (f"; {job.streams} concurrent streams per frame step" if job.streams > 1 else ""),
    }
