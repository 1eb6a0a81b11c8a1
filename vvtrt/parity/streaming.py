"""Streaming parity: the exported decoder/semantic steps, fed their own state for many consecutive frames,
against transformers' own lazily-created padding caches (the real streaming reference)."""
from __future__ import annotations

import torch

from vvtrt.components.specs import build_specs
from vvtrt.parity.compare import error_stats
from vvtrt.parity.runners import _method, make_runner, run_each
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


def _stream(wd: Workdir, spec, precision, opts, models, model32) -> list[dict]:
    """Rows of one stateful component fed its own state over many frames; raises VvtrtError if it cannot
    run (before the reference is computed)."""
    device = torch.device(opts.device)
    in_name, out_name = STREAMING[spec.name]
    model = models.get(precision, device) if opts.backend == "torch" else None
    runner = make_runner(wd, spec, precision, opts.backend, device, model)
    runner.activate()
    rows = []
    try:
        gen = torch.Generator().manual_seed(opts.seed + 17)
        shape = spec.input(in_name).resolve({"batch": 1})
        chunks = [torch.randn(shape, generator=gen) * (1.0 if spec.name == "acoustic_decoder_step" else 0.5)
                  for _ in range(opts.stream_frames)]
        ref = _reference_stream(model32.to("cpu"), spec.name, chunks)
        state = torch.zeros(spec.input("state").resolve({"batch": 1}), dtype=precision.torch_dtype, device=device)
        for f, x in enumerate(chunks):
            out = runner.infer({in_name: x.to(device, precision.torch_dtype), "state": state})
            state = out["state_out"].to(device, precision.torch_dtype)  # the reference evaluator returns fp32
            st, tol = error_stats(out[out_name], ref[f]), spec.tol(out_name, precision)
            rows.append({"component": spec.name, "precision": precision.value, "backend": opts.backend,
                         "method": _method(opts.backend, device, precision), "frame": f, "output": out_name,
                         "rel_l2": st.rel_l2, "max_abs": st.max_abs, "passed": st.passed(tol)})
    finally:
        runner.deactivate()
    return rows


def streaming_rows(wd: Workdir, model32, opts, models, progress=None) -> list[dict]:
    """Each exported stateful step over `opts.stream_frames` frames; one that cannot run here is a skipped
    row (frame 0, no metrics) naming why: a failure of the report."""
    specs = build_specs(wd.info(), wd.options())

    def skip(comp, precision, why):
        return {"component": comp, "precision": precision.value, "backend": opts.backend,
                "method": _method(opts.backend, torch.device(opts.device), precision), "frame": 0,
                "output": STREAMING[comp][1], "rel_l2": None, "max_abs": None, "passed": None, "skipped": why}

    return run_each(wd, opts, progress, "streaming ", lambda c, p: _stream(wd, specs[c], p, opts, models, model32),
                    skip, only=STREAMING)
