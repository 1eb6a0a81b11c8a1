"""`ModelInfo`: the shape facts of one VibeVoice model, read once from its config."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """Everything a spec needs to know about a model's sizes and special tokens."""

    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    latent_dim: int
    semantic_dim: int
    hop: int
    decoder_state: int  # flat streaming-state elements per batch row (compact ConvTranspose state)
    semantic_state: int
    control_token_ids: tuple[int, ...]  # ascending vocab order: argmax ties resolve as in transformers
    control_token_names: tuple[str, ...]
    pad_token_id: int
    eos_token_id: int
    audio_bos_token_id: int
    audio_eos_token_id: int
    audio_token_id: int
    vae_std: float

    @classmethod
    def from_model(cls, model) -> "ModelInfo":
        from vvtrt.components.conv_stream import state_layout

        cfg = model.config
        text = cfg.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        named = {
            "eos": cfg.eos_token_id,
            "speech_start": cfg.audio_bos_token_id,
            "speech_end": cfg.audio_eos_token_id,
            "speech_diffusion": cfg.audio_token_id,
        }
        order = sorted(named.items(), key=lambda kv: kv[1])
        dec = state_layout(model.model.audio_tower.decoder)
        sem = state_layout(model.model.semantic_tokenizer_encoder)
        return cls(
            hidden=text.hidden_size, layers=text.num_hidden_layers, q_heads=text.num_attention_heads,
            kv_heads=text.num_key_value_heads, head_dim=head_dim, vocab=text.vocab_size,
            context=text.max_position_embeddings, latent_dim=cfg.audio_config.hidden_size,
            semantic_dim=cfg.semantic_model_config.hidden_size, hop=cfg.audio_config.hop_length,
            decoder_state=sum(c * p for _, c, p in dec), semantic_state=sum(c * p for _, c, p in sem),
            control_token_ids=tuple(i for _, i in order), control_token_names=tuple(n for n, _ in order),
            pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id,
            audio_bos_token_id=cfg.audio_bos_token_id, audio_eos_token_id=cfg.audio_eos_token_id,
            audio_token_id=cfg.audio_token_id, vae_std=float(cfg.audio_config.vae_std),
        )

    def control_index(self, name: str) -> int:
        """Index of a control token ("eos", "speech_start", "speech_end", "speech_diffusion") in logits4."""
        return self.control_token_names.index(name)

    def weight_bytes_per_frame(self, params_touched: int, itemsize: int) -> int:
        return params_touched * itemsize
