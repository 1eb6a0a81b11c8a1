"""transformers' own `generate` as the end-to-end reference, with the loop semantics vvtrt follows:
the speech_diffusion decision is forced (so token-level CFG, which only mixes logits, cannot change a
decision and stays out of the comparison), and each frame's diffusion noise is fed from a seeded
generator exactly as vvtrt's runtime draws it. The model's code path is otherwise untouched."""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch


@contextmanager
def _noise_from(gen: torch.Generator, latent_dim: int, scale: float = 1.0):
    """While transformers samples one frame, its `torch.randn(2, 64)` returns our seeded noise (x scale)."""
    real = torch.randn

    def fake(*args, **kwargs):
        noise = real(2, latent_dim, generator=gen)
        return (noise * scale if scale != 1.0 else noise).to(kwargs.get("dtype") or torch.float32)

    torch.randn = fake
    try:
        yield
    finally:
        torch.randn = real


def reference_generate(model, ids: list[int], frames: int, steps: int, cfg_scale: float, seed: int,
                       device=None, perturb: float = 0.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run `model.generate` for `frames` forced frames. Returns (per-frame latents [64], audio [N]).

    `perturb` scales frame 0's noise by (1 + perturb): a twin run that measures how much the model's own
    feedback loop amplifies a tiny difference (the harness's sensitivity check)."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import LogitsProcessor, LogitsProcessorList

    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    latents: list[torch.Tensor] = []
    original = type(model)._sample_audio_latent

    def sample_audio_latent(self, *args, **kwargs):
        with _noise_from(gen, cfg.audio_config.hidden_size, 1.0 + perturb if not latents else 1.0):
            out = original(self, *args, **kwargs)
        latents.append(out.reshape(-1).detach().float().cpu().clone())
        return out

    class ForceDiffusion(LogitsProcessor):
        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, float("-inf"))
            forced[:, cfg.audio_token_id] = 0.0
            return forced

    model._sample_audio_latent = types.MethodType(sample_audio_latent, model)
    try:
        device = device or next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        scheduler = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
        with torch.inference_mode():
            audio = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=frames,
                num_diffusion_steps=steps, guidance_scale=cfg_scale, noise_scheduler=scheduler,
                logits_processor=LogitsProcessorList([ForceDiffusion()]), do_sample=False)
    finally:
        del model._sample_audio_latent
    return latents, audio[0].reshape(-1).float().cpu()
