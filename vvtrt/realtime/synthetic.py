"""Synthetic voice presets for random-weight models (Microsoft never released the tool that makes presets
from audio): the model's own prefill over seeded token ids, at lengths like the real presets'
(Llm 49-120, Ltts 148-303).

    lm:          LM over embed(ids)                                  (Llm positions)
    tts_lm:      TTS over [LM(embed(ids)) + type[1] ; connector(z) + type[0]]   (Llm text + the rest speech,
                 z ~ N(0, 1) latents: real presets end in the voice's speech frames)
    neg_lm:      LM over embed([neg_token])                          (1 position)
    neg_tts_lm:  TTS over LM(embed([neg_token])) + type[1]           (1 position)
"""
from __future__ import annotations

import torch

from vvtrt.errors import InputError
from vvtrt.realtime.voices import BranchCache, VoicePreset

DEFAULT_LM_LEN, DEFAULT_TTS_LEN = 64, 192


def _prefill(lm, embeds) -> BranchCache:
    out = lm(inputs_embeds=embeds, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    k = torch.stack([layer.keys[0] for layer in cache.layers])
    v = torch.stack([layer.values[0] for layer in cache.layers])
    return BranchCache(out.last_hidden_state[0], k, v)


@torch.no_grad()
def make_voice(model, name: str, lm_len: int = DEFAULT_LM_LEN, tts_len: int = DEFAULT_TTS_LEN,
               seed: int = 0) -> VoicePreset:
    cfg = model.rt_config
    if not 1 <= lm_len <= tts_len < cfg.context:
        raise InputError(f"voice lengths must satisfy 1 <= lm_len ({lm_len}) <= tts_len ({tts_len}) < "
                         f"{cfg.context} (the model's positions)")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(cfg.vocab, 256), (1, lm_len), generator=gen).to(model.device)
    z = torch.randn(1, tts_len - lm_len, cfg.latent_dim, generator=gen).to(model.device, model.dtype)
    text_lm, tts = model.model.language_model, model.model.tts_language_model
    lm = _prefill(text_lm, model.embed_text(ids))
    text_h = text_lm(inputs_embeds=model.embed_text(ids)).last_hidden_state + model.type_embedding(True)
    tts_lm = _prefill(tts, torch.cat([text_h, model.connector(z)], dim=1))
    neg_ids = torch.tensor([[cfg.neg_token_id]], device=model.device)
    neg_lm = _prefill(text_lm, model.embed_text(neg_ids))
    neg_tts = _prefill(tts, neg_lm.hidden[None] + model.type_embedding(True))
    return VoicePreset(name, {"lm": lm, "tts_lm": tts_lm, "neg_lm": neg_lm, "neg_tts_lm": neg_tts},
                       f"synthetic {cfg.name} seed={seed} lm_len={lm_len} tts_len={tts_len}")
