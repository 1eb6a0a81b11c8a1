"""End-to-end parity of a Realtime work dir: the windowed loop (`RealtimeRunner.from_workdir`: the backend's
runners in `RealtimeLoop`) against our PyTorch reference loop (`vvtrt.realtime.reference`, transformers'
Qwen2 with a cache per branch) in the same precision, frame by frame (each frame's latent and its audio
chunk), with the same injected noise, a synthetic voice and the EOS forced at the last frame, so both
sides run exactly `--frames` frames over several text windows.

Rows per precision p: `windowed-loop-p`. Gated in fp32 (latent rel-L2 <= 1e-4, SNR >= 60 dB for the run and
every chunk, the long-form free-running bounds); fp16 and bf16 rows are informational: rounding
differences between two implementations of the same precision are fed back through the loop's caches,
as in the long-form free-running rows (`vvtrt.parity.e2e`). Every component of every precision is gated
in the component rows. bf16 on the CPU with ONNX Runtime (no bf16 kernels) runs the torch runners.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from vvtrt.errors import InputError, VvtrtError
from vvtrt.parity.e2e import E2E_LATENT_TOL, E2E_MIN_SNR_DB, compare_run, e2e_backend, not_run_row
from vvtrt.precision import Precision

log = logging.getLogger(__name__)
TEXT = "Parity check of the windowed loop, window after window of text."
VOICE_LM_LEN, VOICE_TTS_LEN = 16, 48
SOLVER = "dpmsolver++"


def frames_limit(cfg, n_text: int) -> int:
    """The most frames the parity run can make: the TTS positions left after the voice and the text."""
    return cfg.context - 1 - VOICE_TTS_LEN - n_text


def check_parity_frames(wd, frames: int) -> None:
    from vvtrt.realtime.backends import realtime_tokenizer
    from vvtrt.realtime.text_feed import whole_text_ids

    top = frames_limit(wd.info(), len(whole_text_ids(TEXT, realtime_tokenizer(wd.source()))))
    if not 16 <= frames <= top:
        raise InputError(f"--frames must be from 16 to {top} (the positions the model of {wd.root} leaves after "
                         f"the parity voice and text), got {frames}")


def _loop_run(rt, voice, noise, n: int, cfg_scale: float, steps: int):
    """One stream through the windowed loop: audio, each frame's latent and the stop reason."""
    req = rt.request(TEXT, voice, cfg_scale=cfg_scale, steps=steps, solver=SOLVER, noise=noise, force_eos_frame=n - 1)
    stepper = rt.checkout(1, steps, SOLVER)
    audio, latents, reason = [], [], ""
    try:
        stepper.open(req)
        while stepper.busy:
            for ev in stepper.tick():
                if ev.error is not None:
                    raise ev.error
                if ev.audio is not None:
                    audio.append(torch.from_numpy(ev.audio))
                    latents.append(stepper.loop.latent_out[0].detach().float().cpu().clone())
                reason = ev.stop_reason or reason
    finally:
        rt.checkin(stepper, keep=False)
    return SimpleNamespace(audio=torch.cat(audio) if audio else torch.zeros(0), latents=latents, stop_reason=reason)


def _reference_run(model, tok, voice, noise, n: int, cfg_scale: float, steps: int):
    from vvtrt.realtime.reference import LoopOptions, synthesize
    from vvtrt.realtime.text_feed import TextFeed

    opts = LoopOptions(cfg_scale=cfg_scale, steps=steps, algorithm=SOLVER, force_eos_frame=n - 1)
    r = synthesize(model, voice, TextFeed(TEXT, tok), opts, noise)
    return SimpleNamespace(audio=r.audio.float(), latents=list(r.latents.float()), stop_reason=r.stop_reason)


def _row(wd, backend: str, precision: Precision, model32, voice, noise, opts, models) -> dict:
    from vvtrt.realtime.runtime import RealtimeRunner

    n, steps, device = opts.e2e_frames, wd.options().steps, torch.device(opts.device)
    rt = RealtimeRunner.from_workdir(wd.root, backend, device, precision.value, models=models, graphs=False)
    ours = _loop_run(rt, voice, noise, n, opts.cfg_scale, steps)
    model = models.get(precision, device) if precision is not Precision.FP32 or device.type != "cpu" else model32
    ref = _reference_run(model, rt.tok, voice, noise, n, opts.cfg_scale, steps)
    bounds = (E2E_LATENT_TOL[precision], E2E_MIN_SNR_DB[precision]) if precision in E2E_LATENT_TOL else None
    row = compare_run(f"windowed-loop-{precision.value}", backend, precision, ours, ref, n, bounds,
                      f"windowed loop on {backend} runners vs the PyTorch reference loop in {precision.value}: "
                      f"{n} frames over several text windows, same injected noise, EOS forced at frame {n - 1}",
                      hop=wd.info().hop)
    if (ours.stop_reason, ref.stop_reason) != ("forced_eos", "forced_eos") and row["passed"] is not None:
        row["passed"] = False
        row["notes"] += (f"; FAILED: stop reasons {ours.stop_reason!r} (loop) and {ref.stop_reason!r} (reference), "
                         "both must be 'forced_eos'")
    return row


def realtime_e2e_rows(wd, model32, opts, models, progress=None) -> list[dict]:
    """One `windowed-loop-p` row per requested precision; one that cannot run here is a not-run row (a
    failure) naming why."""
    from vvtrt.realtime.synthetic import make_voice

    device = torch.device(opts.device)
    precisions = opts.precisions or sorted({p for _, p in wd.exported()}, key=lambda p: p.value)
    gen = torch.Generator().manual_seed(opts.seed)
    noise_t = torch.randn(opts.e2e_frames, wd.info().latent_dim, generator=gen)
    from vvtrt.realtime.reference import TensorNoise

    noise = TensorNoise(noise_t)
    voice = make_voice(model32, "parity", VOICE_LM_LEN, VOICE_TTS_LEN, seed=opts.seed)
    rows = []
    for precision in precisions:
        if progress:
            progress(f"e2e {opts.backend} {precision.value}")
        backend = e2e_backend(opts.backend, device, precision)
        try:
            rows.append(_row(wd, backend, precision, model32, voice, noise, opts, models))
        except VvtrtError as exc:
            log.warning("e2e %s %s could not run: %s", backend, precision.value, exc)
            rows.append(not_run_row(f"windowed-loop-{precision.value}", backend, precision, str(exc)))
    return rows
