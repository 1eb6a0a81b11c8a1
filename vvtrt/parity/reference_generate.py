"""transformers' own `generate` as the end-to-end reference, with the loop semantics vvtrt follows:
every decision is forced -- speech_diffusion on every step, or a decision script -- so token-level CFG,
which only mixes logits, cannot change a decision and stays out of the comparison; and each frame's
diffusion noise is fed from a seeded generator exactly as vvtrt's runtime draws it.

One emulation of Microsoft's original code: the original zeroes the acoustic and semantic streaming conv
caches when speech_end (`audio_eos`) is decided (`acoustic_cache.set_to_zero` / `semantic_cache.set_to_zero`
in its `generate`); the transformers port never resets them (a departure of the
port from the original). The released weights were trained and demoed with the original, and vvtrt
follows it, so on a forced speech_end this reference zeroes both of the port's padding caches in place
before they are next used (`original_resets=False` runs the port as it is). speech_start needs nothing:
for one stream the port does what the original does (the negative branch's mask keeps only the upcoming
position, and its next pass sees the positive step's input embedding). The model's code path is otherwise
untouched.

A second emulation, for voice prompts: the original encodes a voice clip at its own length, each causal
conv padding its own input (a strided conv's input also right-padded to a multiple of its stride), while
the port's encoder pads on the left only and expects clips zero-padded to a multiple of 3200
(`original_voice_padding`, `reference_voice_embeds`)."""
from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class ReferenceRun:
    """One `generate` run: per diffusion frame its latent `[64]`; the audio `[N]`; the control token
    decided at each LLM step, and why the run stopped ("eos" or "length limit")."""

    latents: list[torch.Tensor]
    audio: torch.Tensor
    tokens: list[str]
    stop_reason: str


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


def control_token_names(cfg) -> dict[int, str]:
    """vocab id -> vvtrt's name of each control token."""
    return {cfg.audio_bos_token_id: "speech_start", cfg.audio_eos_token_id: "speech_end",
            cfg.audio_token_id: "speech_diffusion", cfg.eos_token_id: "eos"}


def _zero_padding_cache(cache) -> None:
    """Zero every layer of a transformers `VibeVoiceAcousticTokenizerConv1dPaddingCache` in place (the
    original's `set_to_zero`); a cache not created yet (None, or layers not initialised) is zeros already."""
    for layer in (cache.layers.values() if cache is not None else ()):
        if getattr(layer, "cache", None) is not None:
            layer.cache.zero_()


def _force(cfg, decisions: list[str] | None, pending: dict):
    """A LogitsProcessor forcing step t's decision (`decisions[t]`, or speech_diffusion on every step);
    on a forced speech_end it arms the conv-cache reset (`pending`). Past the script it forces nothing."""
    from transformers import LogitsProcessor

    ids = {name: i for i, name in control_token_names(cfg).items()}

    class Force(LogitsProcessor):
        step = 0

        def __call__(self, input_ids, scores):
            t, self.step = self.step, self.step + 1
            if decisions is not None and t >= len(decisions):
                return scores
            name = decisions[t] if decisions is not None else "speech_diffusion"
            if name == "speech_end" and pending is not None:
                pending.update(acoustic=True, semantic=True)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, ids[name]] = 0.0
            return forced

    return Force()


def reference_run(model, ids: list[int], steps: int, cfg_scale: float, seed: int, *, frames: int | None = None,
                  decisions: list[str] | None = None, device=None, perturb: float = 0.0,
                  original_resets: bool = True) -> ReferenceRun:
    """Run `model.generate` with forced decisions: `frames` x speech_diffusion, or the `decisions` script
    (control-token names, one per LLM step; the run gets two steps of slack past it, so a missed eos shows).

    `perturb` scales frame 0's noise by (1 + perturb): a twin run that measures how much the model's own
    feedback loop amplifies a tiny difference (the harness's sensitivity check). `original_resets`: zero
    the conv caches on speech_end as Microsoft's original does (module doc)."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import LogitsProcessorList

    if (frames is None) == (decisions is None):
        raise ValueError("give exactly one of frames and decisions")
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    latents: list[torch.Tensor] = []
    pending = {"acoustic": False, "semantic": False} if original_resets else None
    original_sample = type(model)._sample_audio_latent
    original_decode = type(model)._decode_audio_latent

    def sample_audio_latent(self, *args, **kwargs):
        with _noise_from(gen, cfg.audio_config.hidden_size, 1.0 + perturb if not latents else 1.0):
            out = original_sample(self, *args, **kwargs)
        latents.append(out.reshape(-1).detach().float().cpu().clone())
        return out

    def decode_audio_latent(self, audio_latent, diffusion_mask, batch_size, acoustic_cache):
        if pending is not None and pending["acoustic"]:
            _zero_padding_cache(acoustic_cache)
            pending["acoustic"] = False
        return original_decode(self, audio_latent, diffusion_mask, batch_size, acoustic_cache)

    def semantic_pre_hook(module, args, kwargs):
        if pending is not None and pending["semantic"]:
            _zero_padding_cache(kwargs.get("padding_cache"))
            pending["semantic"] = False

    model._sample_audio_latent = types.MethodType(sample_audio_latent, model)
    model._decode_audio_latent = types.MethodType(decode_audio_latent, model)
    hook = model.model.semantic_tokenizer_encoder.register_forward_pre_hook(semantic_pre_hook, with_kwargs=True)
    try:
        device = device or next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        scheduler = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=frames if decisions is None else len(decisions) + 2,
                num_diffusion_steps=steps, guidance_scale=cfg_scale, noise_scheduler=scheduler,
                logits_processor=LogitsProcessorList([_force(cfg, decisions, pending)]), do_sample=False,
                return_dict_in_generate=True)
    finally:
        hook.remove()
        del model._sample_audio_latent, model._decode_audio_latent
    names = control_token_names(cfg)
    tokens = [names.get(int(t), f"token {int(t)}") for t in out.sequences[0, len(ids):]]
    audio = out.audio[0]
    audio = torch.zeros(0) if audio is None else audio.reshape(-1).float().cpu()
    return ReferenceRun(latents, audio, tokens, "eos" if tokens and tokens[-1] == "eos" else "length limit")


def reference_generate(model, ids: list[int], frames: int, steps: int, cfg_scale: float, seed: int,
                       device=None, perturb: float = 0.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`frames` forced speech_diffusion frames of `model.generate`: (per-frame latents [64], audio [N])."""
    run = reference_run(model, ids, steps, cfg_scale, seed, frames=frames, device=device, perturb=perturb)
    return run.latents, run.audio


def _original_extra_padding(length: int, kernel: int, stride: int, left: int) -> int:
    """The zeros the original's causal conv adds on the right so that its last window is complete: the
    smallest padding giving ceil((length - kernel + left) / stride) + 1 full windows."""
    import math

    windows = math.ceil((length - kernel + left) / stride) + 1
    return (windows - 1) * stride + kernel - left - length


@contextmanager
def original_voice_padding(model):
    """While active, each strided conv of the port's acoustic encoder right-pads its input as the
    original's does, so `audio_tower.encode` takes a clip of any length and gives ceil(N / 3200) frames."""
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
        VibeVoiceAcousticTokenizerCausalConv1d as CausalConv1d,
    )

    def pad_right(module, args, kwargs):
        x = args[0]
        (k,), (st,) = module.conv.kernel_size, module.conv.stride
        extra = _original_extra_padding(x.shape[-1], k, st, module.left_pad)
        return (torch.nn.functional.pad(x, (0, extra)), *args[1:]), kwargs

    hooks = [m.register_forward_pre_hook(pad_right, with_kwargs=True)
             for m in model.model.audio_tower.encoder.modules() if isinstance(m, CausalConv1d)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def reference_voice_embeds(model, clip, gen: torch.Generator) -> torch.Tensor:
    """A normalised voice clip (at its own length) through transformers' `get_audio_features`, encoded as
    the original encodes it (`original_voice_padding`), its σ-VAE noise drawn from `gen` in the order
    vvtrt draws it (scale `randn(1)`, then `randn(1, frames, 64)`). Returns the embeddings `[frames, H]`."""
    real_randn, real_like = torch.randn, torch.randn_like
    p = next(model.parameters())
    wav = torch.as_tensor(clip, dtype=torch.float32).reshape(1, 1, -1).to(p.device, p.dtype)

    def randn(*size, **kw):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return real_randn(tuple(shape), generator=gen).to(kw.get("device") or "cpu", kw.get("dtype") or torch.float32)

    def randn_like(x, **kw):
        return real_randn(tuple(x.shape), generator=gen).to(x.device, x.dtype)

    torch.randn, torch.randn_like = randn, randn_like
    try:
        with torch.inference_mode(), original_voice_padding(model):
            out = model.model.get_audio_features(wav, torch.ones(wav.shape[::2], dtype=torch.bool, device=p.device))
    finally:
        torch.randn, torch.randn_like = real_randn, real_like
    return out.pooler_output.float().cpu()
