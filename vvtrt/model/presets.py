"""Model presets (`tiny`, `1.5b`, `7b`): their numbers, their transformers config, and the model built from
them as transformers `VibeVoiceForConditionalGeneration` with a seeded, non-degenerate random init.

Verbs never come here directly: a model source (preset or checkpoint directory) is resolved by
`vvtrt.model.resolve`, the one front door for models."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from vvtrt.errors import InputError

log = logging.getLogger(__name__)

# Latent normalisation of the released 1.5B checkpoint (the 7B's is unpublished; we reuse it).
LATENT_SCALE_1P5B = 0.1962890625
LATENT_BIAS_1P5B = -0.04931640625
# Raised ConvNeXt layer scale: the default 1e-6 makes random decoders output ~1e-5 and hides errors.
RANDOM_LAYER_SCALE = 0.5


@dataclass(frozen=True)
class PresetSpec:
    """The numbers that define one preset."""

    name: str
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    ffn: int
    vocab: int
    context: int
    tie: bool
    head_ffn: int
    head_layers: int = 4
    semantic_dim: int = 128
    num_filters: int = 32
    depths: tuple[int, ...] | None = None
    latent_scale: float = LATENT_SCALE_1P5B
    latent_bias: float = LATENT_BIAS_1P5B
    token_ids: tuple[tuple[str, int], ...] = ()


PRESETS: dict[str, PresetSpec] = {
    "tiny": PresetSpec(
        "tiny", 64, 2, 4, 2, 128, 512, 4096, True, 192, head_layers=2, semantic_dim=16, num_filters=4,
        depths=(1,) * 7, latent_scale=1.0, latent_bias=0.0,
        token_ids=(("pad_token_id", 256), ("eos_token_id", 256), ("audio_bos_token_id", 257),
                   ("audio_eos_token_id", 258), ("audio_token_id", 259)),
    ),
    "1.5b": PresetSpec("1.5b", 1536, 28, 12, 2, 8960, 151936, 65536, True, 4608),
    "7b": PresetSpec("7b", 3584, 28, 28, 4, 18944, 152064, 32768, False, 10752),
}


def preset_config(p: PresetSpec):
    """The transformers `VibeVoiceConfig` of a preset (the released models' configs, or a small one)."""
    from transformers import VibeVoiceConfig

    text = dict(model_type="qwen2", hidden_size=p.hidden, num_hidden_layers=p.layers,
                num_attention_heads=p.q_heads, num_key_value_heads=p.kv_heads, intermediate_size=p.ffn,
                vocab_size=p.vocab, max_position_embeddings=p.context, tie_word_embeddings=p.tie,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    tok = {} if p.depths is None else dict(num_filters=p.num_filters, depths=list(p.depths))
    head = dict(hidden_size=p.hidden, intermediate_size=p.head_ffn, num_hidden_layers=p.head_layers)
    return VibeVoiceConfig(text_config=text, audio_config=dict(tok),
                           semantic_model_config=dict(tok, hidden_size=p.semantic_dim),
                           diffusion_head_config=head, **dict(p.token_ids))


def build_model(preset: str, seed: int = 0, dtype=None, device=None):
    """A random-weight preset model: seeded, non-degenerate, eval mode, with real latent scale/bias."""
    import torch
    from transformers import VibeVoiceForConditionalGeneration

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    config = preset_config(p)
    torch.manual_seed(seed)
    dtype = dtype or torch.float32
    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            model = VibeVoiceForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    _make_non_degenerate(model, p)
    return model.eval().requires_grad_(False)


def _make_non_degenerate(model, p: PresetSpec) -> None:
    """Raise tokenizer layer scales and set the latent normalisation (random init would otherwise give silence or overflow)."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    tokenizers = (model.model.audio_tower, model.model.semantic_tokenizer_encoder)
    with torch.no_grad():
        for tokenizer in tokenizers:
            # transformers inits these N(0, 0.01)/N(0, 0.02): activations shrink ~10x per layer. A fan-in
            # scaled init keeps every intermediate O(1) so errors cannot hide below float noise.
            for mod in tokenizer.modules():
                if isinstance(mod, (torch.nn.Conv1d, torch.nn.Linear, torch.nn.ConvTranspose1d)):
                    w = mod.weight
                    if isinstance(mod, torch.nn.ConvTranspose1d):
                        fan_in = w.shape[0] * w.shape[2] // mod.stride[0]
                    else:
                        fan_in = w[0].numel()
                    noise = torch.randn(w.shape, generator=gen, dtype=torch.float32)
                    w.copy_(noise * fan_in ** -0.5)
        for name, param in model.named_parameters():
            if name.endswith(".gamma") or name.endswith(".ffn_gamma"):
                param.fill_(RANDOM_LAYER_SCALE)
        model.model.latent_scaling_factor.fill_(p.latent_scale)
        model.model.latent_bias_factor.fill_(p.latent_bias)
