"""Our PyTorch modules of VibeVoice-Realtime-0.5B, built from transformers' pieces (Qwen2 for both LMs,
the VibeVoice diffusion head, connector and σ-VAE decoder) under transformers' VibeVoice names, so that
vvtrt's decoder/sampler wrappers and the original-layout key mapping apply unchanged.

    RealtimeModel
      .model.language_model        Qwen2Model, the lower `lm_layers` layers, final norm = Identity
      .model.tts_language_model    Qwen2Model, the upper `tts_layers` layers + final RMSNorm (no embed_tokens:
                                   Microsoft's stores one that is never used)
      .model.tts_input_types       Embedding(2, H): row 1 is added to text positions, row 0 to speech
      .model.multi_modal_projector latent (64) -> LM input (Microsoft: acoustic_connector)
      .model.diffusion_head        v-prediction head (Microsoft: prediction_head)
      .model.audio_tower.decoder   streaming σ-VAE decoder (Microsoft: acoustic_tokenizer.decoder)
      .model.latent_scaling_factor / latent_bias_factor   (Microsoft: speech_scaling/bias_factor)
      .tts_eos_classifier          fc2(relu(fc1(h))): sigmoid > 0.5 ends speech
"""
from __future__ import annotations

import torch
from torch import nn

from vvtrt.realtime.config import RealtimeConfig


class EosClassifier(nn.Module):
    """`h [..., H]` -> EOS logit `[..., 1]` (sigmoid > 0.5 ends the speech)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, h):
        return self.fc2(torch.relu(self.fc1(h)))


class _AudioTower(nn.Module):
    """Holds the decoder only (the Realtime checkpoint has no acoustic encoder)."""

    def __init__(self, cfg: RealtimeConfig):
        super().__init__()
        from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
            VibeVoiceAcousticTokenizerDecoderModel,
        )

        self.decoder = VibeVoiceAcousticTokenizerDecoderModel(cfg.decoder())


class RealtimeBackbone(nn.Module):
    """Every part except the EOS classifier (state-dict prefix `model.`)."""

    def __init__(self, cfg: RealtimeConfig):
        super().__init__()
        from transformers import Qwen2Model
        from transformers.models.vibevoice.modeling_vibevoice import (
            VibeVoiceDiffusionHead,
            VibeVoiceMultiModalProjector,
        )

        self.language_model = Qwen2Model(cfg.qwen2(cfg.lm_layers))
        self.language_model.norm = nn.Identity()
        self.tts_language_model = Qwen2Model(cfg.qwen2(cfg.tts_layers))
        self.tts_language_model.embed_tokens = None  # never used: both LMs read language_model's table
        self.tts_input_types = nn.Embedding(2, cfg.hidden)
        self.multi_modal_projector = VibeVoiceMultiModalProjector(cfg.latent_dim, cfg.hidden)
        self.diffusion_head = VibeVoiceDiffusionHead(cfg.head())
        self.audio_tower = _AudioTower(cfg)
        self.register_buffer("latent_scaling_factor", torch.tensor(1.0))
        self.register_buffer("latent_bias_factor", torch.tensor(0.0))


class RealtimeModel(nn.Module):
    """The whole Realtime model. Helpers below are the per-step maths the reference loop and the export
    wrappers share; all take and return tensors in the model dtype."""

    def __init__(self, cfg: RealtimeConfig):
        super().__init__()
        self.rt_config = cfg
        self.model = RealtimeBackbone(cfg)
        self.tts_eos_classifier = EosClassifier(cfg.hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.tts_input_types.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.tts_input_types.weight.device

    def embed_text(self, ids):
        """`ids [B, T]` int64 -> `[B, T, H]` (language_model's table, used by both LMs)."""
        return self.model.language_model.embed_tokens(ids)

    def type_embedding(self, is_text: bool):
        """`[H]`: the input-type row added to every TTS-LM input (1 = text, 0 = speech)."""
        return self.model.tts_input_types.weight[1 if is_text else 0]

    def connector(self, latent):
        """`latent [..., 64]` (diffusion output, unscaled) -> speech input of the TTS LM `[..., H]`
        (the speech type row included)."""
        return self.model.multi_modal_projector(latent) + self.type_embedding(False)

    def eos_probability(self, h):
        """`h [..., H]` -> `[...]` fp32 sigmoid of the EOS classifier."""
        return torch.sigmoid(self.tts_eos_classifier(h).float())[..., 0]


def parameter_count(model: RealtimeModel) -> int:
    return sum(p.numel() for p in model.parameters())
