"""The benchmark: one Synthesizer per backend on one prompt, timed per frame and per component, with
telemetry, memory, the bandwidth floor and the baselines measured in the same process."""
from __future__ import annotations

import gc
import logging
import time
from datetime import datetime, timezone

import numpy as np
import torch

from vvtrt.bench.timing import ComponentTimer, device_bandwidth_gbps, graphed_component_ms, weight_bytes_per_frame
from vvtrt.errors import InputError, VvtrtError
from vvtrt.precision import Precision
from vvtrt.reports.stats import component_stats
from vvtrt.runtime.backends import ModelCache
from vvtrt.runtime.synthesizer import SAMPLE_RATE, SynthesisResult, Synthesizer
from vvtrt.workdir import Workdir

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


def _prompt(synth: Synthesizer, prompt_tokens: int, seed: int) -> list[int]:
    """`prompt_tokens` ids ending with speech_start (text bytes; the content does not change the cost)."""
    if prompt_tokens < 2:
        raise InputError(f"--prompt-tokens must be >= 2, got {prompt_tokens}")
    if prompt_tokens > synth.options.max_prompt:
        raise InputError(f"--prompt-tokens {prompt_tokens} exceeds the exported max_prompt "
                         f"{synth.options.max_prompt}")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.integers(32, 127, prompt_tokens - 1)] + [synth.info.audio_bos_token_id]


def _pcts(values) -> dict:
    from vvtrt.reports.stats import summary

    return summary(values) if len(values) else {"p50": None, "p90": None, "p99": None, "mean": None}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backend(wd: Workdir, variant: str, device, precision: Precision, frames: int, prompt_tokens: int,
                  repeats: int, cfg_scale: float, models: ModelCache, streams: int = 1) -> dict:
    device = torch.device(device)
    backend, extra = VARIANTS[variant]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    synth = Synthesizer.from_workdir(wd.root, backend=backend, device=device, precision=precision, models=models,
                                     **extra)
    load_s = time.perf_counter() - t0
    ids = _prompt(synth, prompt_tokens, 0)

    def one_run(seed: int) -> SynthesisResult:
        res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
        _sync(device)
        t_start = time.perf_counter()
        emb = synth.runners["token_embed"].infer({"token": torch.tensor(ids, device=device)})["embeds"]
        emb = emb[:, 0].unsqueeze(0)
        for _ in synth.generate(ids, emb, frames=frames, cfg_scale=cfg_scale, seed=seed, result=res,
                                t_start=t_start, streams=streams):
            pass
        return res

    mem_before_capture = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    warm = one_run(0)  # warm-up: graph capture, autotuning, allocator growth
    graph_pool = (torch.cuda.memory_allocated(device) - mem_before_capture) if device.type == "cuda" else None
    runs = [one_run(r + 1) for r in range(repeats)]
    frame_ms = [t * 1000 for r in runs for t in r.frame_s]
    ttfa_ms = [r.ttfa_s * 1000 for r in runs]
    # per-component latency: each component graphed alone where the frame is graphed (what it costs
    # inside the frame graph), else one eager pass timed with CUDA events
    comp = {}
    loop = next(iter(synth._loops.values()))
    if loop.graph is not None:
        timing = "each component captured alone in a CUDA graph, 50 replays"
        per = graphed_component_ms(loop)
    else:
        timing = "eager calls timed with CUDA events" if device.type == "cuda" else "eager calls, host clock"
        timer = ComponentTimer(synth.runners, device)
        with timer.active():
            for _ in range(min(frames, 20)):
                loop.step()
        per = timer.milliseconds()
    for name, ms in per.items():
        if ms and name not in ("lm_prefill", "acoustic_encoder"):
            comp[name] = component_stats(ms[2:] or ms, 1)
    audio_s = frames * synth.info.hop / SAMPLE_RATE
    mem = {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "nvml_peak_used_bytes": None,
           "graph_pool_bytes": graph_pool}
    if device.type == "cuda":
        mem["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        mem["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    stats = _pcts(frame_ms)
    mean_total = sum(r.total_s for r in runs) / len(runs) if runs else None
    result = {"backend": backend, "precision": precision.value, "label": f"vvtrt-{variant}",
              "components": comp, "frame_ms": frame_ms, "frame": stats,
              "rtf": mean_total / audio_s if runs else None,
              # concurrency: `streams` streams batched per frame step; audio seconds made per second, all streams
              "streams": streams, "throughput_x_realtime": streams * audio_s / mean_total if runs else None,
              "ttfa_ms": ttfa_ms, "ttfa": _pcts(ttfa_ms), "memory": mem,
              "setup": {"load_s": load_s, "build_s": None, "capture_s": synth.capture_seconds,
                        "warmup_s": warm.total_s},
              "floor_gap": None,
              "notes": (f"whole-frame CUDA graph: {loop.graph is not None}; options {extra or 'default'}; "
                        f"components: {timing}" + (f"; {streams} concurrent streams per frame step" if streams > 1
                                                    else ""))}
    del synth, loop
    gc.collect()
    return result


def bench_baseline(wd: Workdir, kind: str, device, precision: Precision, frames: int, prompt_tokens: int,
                   repeats: int, cfg_scale: float, models: ModelCache) -> dict:
    from vvtrt.bench.baselines import run_baseline

    device = torch.device(device)
    model = models.get(precision, device)
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(32, 127, prompt_tokens - 1)] + [model.config.audio_bos_token_id]
    token_cfg = kind == "transformers"
    runs = [run_baseline(model, ids, frames, wd.options().steps, cfg_scale, token_cfg, device)
            for _ in range(repeats + 1)][1:]
    frame_ms = [t for r in runs for t in r["frame_ms"]]
    audio_s = frames * wd.info().hop / SAMPLE_RATE
    return {"backend": "torch", "precision": precision.value, "label": kind, "components": {},
            "frame_ms": frame_ms, "frame": _pcts(frame_ms),
            "rtf": float(np.mean([r["total_s"] for r in runs])) / audio_s, "ttfa_ms": [r["ttfa_s"] * 1000 for r in runs],
            "ttfa": _pcts([r["ttfa_s"] * 1000 for r in runs]),
            "memory": {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "nvml_peak_used_bytes": None,
                       "graph_pool_bytes": None},
            "setup": {"load_s": None, "build_s": None, "capture_s": None}, "floor_gap": None,
            "notes": ("transformers generate with guidance_scale (adds token-level CFG: a third LLM pass)"
                      if token_cfg else "transformers modules, transformers' loop, diffusion-only CFG, eager")}


def run_bench(wd: Workdir, backends, device, precision: Precision, frames: int, prompt_tokens: int, repeats: int,
              cfg_scale: float, baselines=(), streams: int = 1) -> dict:
    from vvtrt.reports.environment import collect_environment
    from vvtrt.reports.telemetry import TelemetrySampler

    device = torch.device(device)
    models = ModelCache(wd, init_on_device=True)  # speed does not depend on weight values
    results, base, failed = [], [], []
    with TelemetrySampler(interval_s=0.05, device_index=device.index or 0) as tel:
        for b in backends:
            try:
                results.append(bench_backend(wd, b, device, precision, frames, prompt_tokens, repeats, cfg_scale,
                                             models, streams))
            except (VvtrtError, RuntimeError) as exc:  # one variant failing must not lose the others
                if len(backends) == 1 and not baselines:
                    raise
                log.error("bench variant %s failed: %s", b, exc)
                failed.append({"label": f"vvtrt-{b}", "error": f"{type(exc).__name__}: {exc}"})
        for kind in baselines:
            base.append(bench_baseline(wd, kind, device, precision, frames, prompt_tokens, repeats, cfg_scale,
                                       models))
    floor = None
    bw = device_bandwidth_gbps(device)
    if bw:
        wbytes = weight_bytes_per_frame(models.get(precision, device), wd.options().steps,
                                        precision.torch_dtype.itemsize)
        floor = {"weight_bytes_per_frame": wbytes, "bandwidth_gbps": bw, "floor_ms": wbytes / (bw * 1e9) * 1000}
        for r in results + base:
            if r["frame"]["p50"]:
                r["floor_gap"] = r["frame"]["p50"] / floor["floor_ms"]
    peak = tel.peak_mem_used() if hasattr(tel, "peak_mem_used") else None
    for r in results:
        r["memory"]["nvml_peak_used_bytes"] = peak
    meta = wd.meta()
    return {"kind": "bench", "version": 1, "created": datetime.now(timezone.utc).isoformat(),
            "config": {"preset": meta["model"]["preset"] or meta["model"]["path"], "model": meta["model"],
                       "dtype": precision.value, "dtypes": [precision.value], "steps": meta["options"]["steps"],
                       "cfg_scale": cfg_scale, "backends": list(backends), "baselines": list(baselines),
                       "batch": streams, "frames": frames, "prompt_tokens": prompt_tokens, "repeats": repeats,
                       "device": str(device), "environment": collect_environment()},
            "results": results, "baselines": base, "failed": failed,
            "telemetry": {"interval_s": 0.05, "samples": list(getattr(tel, "samples", []))},
            "floor": floor}


def run_bench_cli(workdir, backends="torch", device=None, dtype=None, frames=60, prompt_tokens=512, repeats=3,
                  cfg_scale=1.3, baselines=(), out_dir=None, streams: int = 1) -> dict:
    from vvtrt.reports import write_report

    wd = Workdir.open(workdir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = Precision.parse(dtype or ("bf16" if device.type == "cuda" else "fp32"))
    names = [b.strip() for b in str(backends).split(",") if b.strip()]
    for b in names:
        if b not in VARIANTS:
            raise InputError(f"unknown backend {b!r}: choose from {', '.join(VARIANTS)}")
    if frames < 1 or repeats < 1 or streams < 1:
        raise InputError("--frames, --repeats and --streams must be >= 1")
    if streams > 1 and baselines:
        raise InputError("--baseline runs one stream: measure baselines with --streams 1")
    report = run_bench(wd, names, device, precision, frames, prompt_tokens, repeats, cfg_scale, tuple(baselines),
                       streams)
    from pathlib import Path

    out = Path(out_dir) if out_dir else wd.reports_dir
    stem = f"bench_{report['config']['preset']}_{precision.value}_k{report['config']['steps']}"
    if streams > 1:
        stem += f"_x{streams}"
    return write_report(report, out, stem)
