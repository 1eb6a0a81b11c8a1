"""Realtime presets (`realtime-0.5b`, `tiny-realtime`) with a seeded, non-degenerate random init that
mirrors `vvtrt.model.presets` (fan-in scaled decoder weights, raised ConvNeXt layer scale, real latent
normalisation), plus one thing only this model needs: an EOS classifier biased towards "continue", so a
random model does not stop after its first frame by a coin flip (tests force EOS explicitly)."""
from __future__ import annotations

import dataclasses
import logging

from vvtrt.errors import InputError
from vvtrt.model.presets import LATENT_BIAS_1P5B, LATENT_SCALE_1P5B, RANDOM_LAYER_SCALE
from vvtrt.realtime.config import RealtimeConfig

log = logging.getLogger(__name__)

# sigmoid(-8) = 3e-4: a random EOS head says "continue" unless its inputs are far out of range
RANDOM_EOS_BIAS = -8.0

REALTIME_PRESETS: dict[str, RealtimeConfig] = {
    # the released model: Qwen2.5-0.5B split 4 + 20, head 896/2688 x4, σ-VAE decoder 32 filters, 8192 positions
    "realtime-0.5b": RealtimeConfig("realtime-0.5b", hidden=896, lm_layers=4, tts_layers=20, q_heads=14,
                                    kv_heads=2, ffn=4864, vocab=151936, context=8192, head_layers=4, head_ffn=2688),
    # CPU tests: every code path of the real one, small; 1024 positions so the length limit is testable
    "tiny-realtime": RealtimeConfig("tiny-realtime", hidden=64, lm_layers=2, tts_layers=2, q_heads=4, kv_heads=2,
                                    ffn=128, vocab=512, context=1024, head_layers=2, head_ffn=192, num_filters=4,
                                    depths=(1,) * 7, neg_token_id=500),
}
# latent normalisation of random presets: the real model's values are checkpoint buffers; like the 1.5B
# presets we use the 1.5B release's values for the full-size preset and the identity for the tiny one
_LATENT = {"realtime-0.5b": (LATENT_SCALE_1P5B, LATENT_BIAS_1P5B), "tiny-realtime": (1.0, 0.0)}


def is_realtime_preset(name: str) -> bool:
    return name.strip().lower() in REALTIME_PRESETS


def preset_config(name: str, **overrides) -> RealtimeConfig:
    key = name.strip().lower()
    if key not in REALTIME_PRESETS:
        raise InputError(f"unknown Realtime preset {name!r}: choose one of {', '.join(REALTIME_PRESETS)}")
    cfg = REALTIME_PRESETS[key]
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def new_model(cfg: RealtimeConfig, dtype=None, device=None):
    """`RealtimeModel(cfg)` built at default dtype `dtype` on `device` (the meta device for shapes only)."""
    import torch

    from vvtrt.realtime.model import RealtimeModel

    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype or torch.float32)
        with torch.device(device or "cpu"):
            return RealtimeModel(cfg)
    finally:
        torch.set_default_dtype(prev)


def build_realtime_model(preset: str | RealtimeConfig, seed: int = 0, dtype=None, device=None):
    """A random-weight Realtime model: seeded, non-degenerate, eval mode, no gradients."""
    import torch

    cfg = preset if isinstance(preset, RealtimeConfig) else preset_config(preset)
    torch.manual_seed(seed)
    model = new_model(cfg, torch.float32, device)
    _make_non_degenerate(model, _LATENT.get(cfg.name, (1.0, 0.0)))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def _make_non_degenerate(model, latent: tuple[float, float]) -> None:
    import torch

    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        # decoder: fan-in scaled init keeps every intermediate O(1) (vvtrt.model.presets, same reason)
        for mod in model.model.audio_tower.modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Linear, torch.nn.ConvTranspose1d)):
                w = mod.weight
                fan_in = w.shape[0] * w.shape[2] // mod.stride[0] if isinstance(mod, torch.nn.ConvTranspose1d) \
                    else w[0].numel()
                w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device) * fan_in ** -0.5)
        for name, param in model.model.audio_tower.named_parameters():
            if name.endswith(".gamma") or name.endswith(".ffn_gamma"):
                param.fill_(RANDOM_LAYER_SCALE)
        # the input-type rows: nn.Embedding's N(0, 1) would swamp the LM hidden states (O(0.1-1) here)
        model.model.tts_input_types.weight.mul_(0.1)
        model.tts_eos_classifier.fc2.bias.fill_(RANDOM_EOS_BIAS)
        model.model.latent_scaling_factor.fill_(latent[0])
        model.model.latent_bias_factor.fill_(latent[1])
