"""The streaming conv steps alone: the exported ops vs the channels-last fast path (`vvtrt.components.conv_fast`),
with the Triton feed-forward (`conv_triton`, where it applies: CUDA, Triton) and without it ("fast-torch").

Times one acoustic decoder step (latent -> 3200 samples) and one semantic encoder step (3200 samples -> one
feature) per batch size, as the compiled torch runtime runs them: `torch.compile(dynamic=False)` of the
step module, then a CUDA graph of the call, replayed. Configs: the long-form tokenizers of a preset (`1.5b`:
decoder and semantic encoder; `tiny` for smoke runs) and the Realtime decoder (`realtime-0.5b`,
`tiny-realtime`), random fan-in scaled weights. Each row also records the fast path's self-check (its
relative-L2 gap to the exported ops over 3 streamed frames, as the runner checks it) and the allocator's peak.

    python benchmarks/conv_step_bench.py OUT.json                       # GPU: bf16, batches 1,64,256,512
    python benchmarks/conv_step_bench.py OUT.json --device cpu --configs tiny,tiny-realtime --batches 1,2 \\
        --dtype fp32 --iters 2                                          # CPU smoke: eager, no graphs

CPU figures are a smoke test of the script, never performance figures.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LONGFORM = ("1.5b", "7b", "tiny")
REALTIME = ("realtime-0.5b", "tiny-realtime")
PATHS = ("exported", "fast", "fast-torch")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _list(text, conv=str):
    return [conv(x.strip()) for x in text.split(",") if x.strip()]


def _tokenizers(config: str):
    """{component: (tokenizer config, module class)} and (latent scale, bias) of a config name."""
    from transformers.models.vibevoice_acoustic_tokenizer import modeling_vibevoice_acoustic_tokenizer as m

    if config in REALTIME:
        from vvtrt.realtime.presets import _LATENT, preset_config

        return {"decoder": (preset_config(config).decoder(), m.VibeVoiceAcousticTokenizerDecoderModel)}, \
            _LATENT.get(config, (1.0, 0.0))
    from vvtrt.model.presets import PRESETS, preset_config

    cfg, p = preset_config(PRESETS[config]), PRESETS[config]
    return {"decoder": (cfg.audio_config.decoder_config, m.VibeVoiceAcousticTokenizerDecoderModel),
            "semantic": (cfg.semantic_model_config, m.VibeVoiceAcousticTokenizerEncoderModel)}, \
        (p.latent_scale, p.latent_bias)


def _random_tokenizer(cls, cfg, dtype, device):
    """The tokenizer with fan-in scaled random weights and layer scale 0.5 (activations stay O(1))."""
    from vvtrt.model.presets import RANDOM_LAYER_SCALE

    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        with torch.device(device):
            tok = cls(cfg)
    finally:
        torch.set_default_dtype(prev)
    gen = torch.Generator(device=device).manual_seed(1234)
    with torch.no_grad():
        for mod in tok.modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Linear, torch.nn.ConvTranspose1d)):
                w = mod.weight
                fan_in = w.shape[0] * w.shape[2] // mod.stride[0] if isinstance(mod, torch.nn.ConvTranspose1d) \
                    else w[0].numel()
                w.copy_(torch.randn(w.shape, generator=gen, device=device) * fan_in ** -0.5)
        for name, param in tok.named_parameters():
            if name.endswith("gamma"):
                param.fill_(RANDOM_LAYER_SCALE)
    return tok.to(dtype).eval().requires_grad_(False)


def _step(component: str, tok, latent):
    """The runtime's step module around a bare tokenizer (the attributes the steps read of a model)."""
    from vvtrt.components.conv_stream import AcousticDecoderStep, SemanticEncoderStep

    if component == "decoder":
        inner = SimpleNamespace(audio_tower=SimpleNamespace(decoder=tok), latent_scaling_factor=latent[0],
                                latent_bias_factor=latent[1])
        return AcousticDecoderStep(SimpleNamespace(model=inner)).eval()
    return SemanticEncoderStep(SimpleNamespace(model=SimpleNamespace(semantic_tokenizer_encoder=tok))).eval()


def _time_ms(fn, iters: int, cuda: bool, graphs: bool) -> float:
    """Mean time of `fn`: replays of its CUDA graph (after 3 warm-up calls) on CUDA, else wall clock."""
    for _ in range(1 if not cuda else 3):
        fn()
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters
    call = fn
    if graphs:
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        call = g.replay
    call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench_step(step, batch: int, path: str, args, device) -> dict:
    """One (path, batch) row: compile (CUDA or --compile), capture, time."""
    cuda = device.type == "cuda"
    step.fast = path != "exported"
    if step.fast_stream is not None:
        step.fast_stream.drop_fused_ffn(path == "fast-torch")
    compiled = args.compile if args.compile is not None else cuda
    fn = torch.compile(step, dynamic=False, mode=args.mode) if compiled else step
    x, state = step.sample_inputs(batch, device, DTYPES[args.dtype], torch.Generator().manual_seed(0))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(x, state)  # compiles
        first_s = time.perf_counter() - t0
        ms = _time_ms(lambda: fn(x, state), args.iters, cuda, graphs=cuda and not args.no_graphs)
    row = {"path": path, "batch": batch, "step_ms": round(ms, 4), "per_stream_us": round(ms * 1e3 / batch, 3),
           "first_call_s": round(first_s, 2), "compiled": bool(compiled), "cuda_graph": cuda and not args.no_graphs,
           "fast_active": bool(step.fast),
           "triton_ffn_blocks": step.fast_stream.fused_ffn_blocks() if step.fast else 0}
    if cuda:
        row["peak_alloc_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return row


def bench_config(config: str, args, device) -> list[dict]:
    import torch._dynamo

    from vvtrt.runtime.runner import keep_every_bucket_compiled

    keep_every_bucket_compiled()
    comps, latent = _tokenizers(config)
    rows = []
    for component, (cfg, cls) in comps.items():
        if args.components and component not in args.components:
            continue
        step = _step(component, _random_tokenizer(cls, cfg, DTYPES[args.dtype], device), latent)
        step.fast = True
        check = step.fast_error()  # with the Triton feed-forward where it applies
        for batch in args.batches:
            for path in args.paths:
                torch._dynamo.reset()
                row = {"config": config, "component": component, "dtype": args.dtype, "state_size":
                       step.stream.state_size, "fast_self_check_rel_l2": round(check, 6),
                       **bench_step(step, batch, path, args, device)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del step
    return rows


def _speedups(rows: list[dict]) -> list[dict]:
    by = {(r["config"], r["component"], r["batch"], r["path"]): r["step_ms"] for r in rows}
    out = []
    for (cfg, comp, b, path), ms in by.items():
        if path != "exported" and (cfg, comp, b, "exported") in by:
            base = by[(cfg, comp, b, "exported")]
            out.append({"config": cfg, "component": comp, "batch": b, "path": path, "exported_ms": base,
                        "ms": ms, "speedup": round(base / ms, 2) if ms > 0 else None})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--configs", type=_list, default=["1.5b", "realtime-0.5b"],
                    help=f"comma list of {', '.join(LONGFORM + REALTIME)}")
    ap.add_argument("--components", type=_list, default=[], help="decoder,semantic (default: all of a config)")
    ap.add_argument("--batches", type=lambda t: _list(t, int), default=[1, 64, 256, 512])
    ap.add_argument("--paths", type=_list, default=list(PATHS),
                    help="exported (today's ops), fast (channels-last, Triton feed-forward where it applies), "
                         "fast-torch (channels-last, torch feed-forward)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: the runtime's, None)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the steps (default: on CUDA only)")
    ap.add_argument("--no-graphs", action="store_true", help="time plain calls instead of CUDA graph replays")
    args = ap.parse_args(argv)
    bad = [c for c in args.configs if c not in LONGFORM + REALTIME] + \
        [p for p in args.paths if p not in PATHS]
    if bad:
        ap.error(f"unknown config/path {', '.join(bad)}")
    from vvtrt.fsio import atomic_write_json
    from vvtrt.reports.environment import collect_environment

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: use --device cpu for a smoke run")
    env = collect_environment()
    rows = [r for c in args.configs for r in bench_config(c, args, device)]
    result = {"command": shlex.join([sys.executable, *sys.argv]), "commit": env.get("git_commit"),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({env.get('cpu')})",
              "note": None if device.type == "cuda" else "CPU smoke run: not a performance figure",
              "environment": env, "rows": rows, "speedups": _speedups(rows)}
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["speedups"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
