"""Streaming parity: the exported decoder/semantic steps, fed their own state for many consecutive frames,
against transformers' own lazily-created padding caches (the real streaming reference)."""
from __future__ import annotations

import torch

from vvtrt.components.specs import build_specs
from vvtrt.errors import BackendUnavailableError
from vvtrt.parity.compare import error_stats
from vvtrt.workdir import Workdir

STREAMING = {"acoustic_decoder_step": ("latent", "audio"), "semantic_encoder_step": ("audio", "semantic")}


def _reference_stream(model32, comp: str, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """transformers' streaming path: one call per frame with its padding cache."""
    outs, cache = [], None
    m = model32.model
    with torch.inference_mode():
        for x in chunks:
            if comp == "acoustic_decoder_step":
                z = x / m.latent_scaling_factor - m.latent_bias_factor
                o = m.audio_tower.decode(z, padding_cache=cache, use_cache=True)
                outs.append(o.audio)
            else:
                o = m.semantic_tokenizer_encoder(x, padding_cache=cache, use_cache=True)
                outs.append(o.latents)
            cache = o.padding_cache
    return outs


def streaming_rows(wd: Workdir, model32, opts, models, progress=None) -> list[dict]:
    from vvtrt.parity.harness import _method, make_runner

    specs = build_specs(wd.info(), wd.options())
    device = torch.device(opts.device)
    rows = []
    for comp, precision in wd.exported():
        if comp not in STREAMING or (opts.precisions and precision not in opts.precisions):
            continue
        spec = specs[comp]
        in_name, out_name = STREAMING[comp]
        if progress:
            progress(f"streaming {comp}.{precision.value}")
        gen = torch.Generator().manual_seed(opts.seed + 17)
        shape = spec.input(in_name).resolve({"batch": 1})
        chunks = [torch.randn(shape, generator=gen) * (1.0 if comp == "acoustic_decoder_step" else 0.5)
                  for _ in range(opts.stream_frames)]
        ref = _reference_stream(model32.to("cpu"), comp, chunks)
        try:
            model = models.get(precision, device) if opts.backend == "torch" else None
            runner = make_runner(wd, spec, precision, opts.backend, device, model)
            runner.activate()
        except BackendUnavailableError:
            continue
        state_dim = spec.input("state").resolve({"batch": 1})
        state = torch.zeros(state_dim, dtype=precision.torch_dtype, device=device)
        for f, x in enumerate(chunks):
            out = runner.infer({in_name: x.to(device, precision.torch_dtype), "state": state})
            state = out["state_out"].to(device, precision.torch_dtype)  # the reference evaluator returns fp32
            st = error_stats(out[out_name], ref[f])
            tol = spec.tol(out_name, precision)
            rows.append({"component": comp, "precision": precision.value, "backend": opts.backend,
                         "method": _method(opts.backend, device, precision), "frame": f, "output": out_name,
                         "rel_l2": st.rel_l2, "max_abs": st.max_abs, "passed": st.passed(tol)})
        runner.deactivate()
    return rows
