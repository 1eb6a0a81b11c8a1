"""Our PyTorch reference of the Realtime windowed loop (5 text tokens, 6 frames), written against transformers'
own Qwen2 forward with a `DynamicCache` per branch, so its numerics are transformers' and its positions
are the caches' own contiguous ones (text LM from Llm, TTS LM from Ltts, negative TTS LM from 1).

    repeat:
        T = next <= 5 text tokens (none once the text is used up)
        if T: stop if the TTS cache would pass the position limit; h = LM(embed(T)); h_pos = TTS(h + type[1])[-1]
        6 times: z = sample(h_pos, h_neg); hand out decode(z); stop at the position limit;
                 e = connector(z) + type[0]; h_pos = TTS(e); h_neg = TTS_neg(e); stop if sigmoid(EOS(h_pos)) > 0.5

Noise is injectable (`NoiseSource`), EOS can be forced at a frame (parity against other backends), and
text may arrive while speech is produced (`TextFeed`): a window only waits for its own 5 tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from vvtrt.errors import InputError
from vvtrt.realtime.config import SPEECH_WINDOW, TEXT_WINDOW
from vvtrt.realtime.sampler import RealtimeSampler, check_algorithm
from vvtrt.realtime.voices import VoicePreset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopOptions:
    cfg_scale: float = 1.5
    steps: int = 5
    algorithm: str = "dpmsolver++"
    max_frames: int | None = None        # an extra cap (tests, benchmarks); None: until EOS or the limit
    force_eos_frame: int | None = None   # stop as if EOS fired after this frame (0-based), for parity

    def __post_init__(self):
        check_algorithm(self.algorithm)
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {self.max_frames}")


class NoiseSource(Protocol):
    def frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(noise [64], step_noise [K, 64] or None)` fp32 for frame `index`, asked for in order."""


class SeededNoise:
    """Fresh Gaussian noise from one seeded generator, frame by frame (step noise only for the SDE)."""

    def __init__(self, seed: int, latent_dim: int, steps: int, stochastic: bool):
        self.gen = torch.Generator().manual_seed(seed)
        self.dim, self.steps, self.stochastic = latent_dim, steps, stochastic

    def frame(self, index: int):
        noise = torch.randn(self.dim, generator=self.gen)
        step = torch.randn(self.steps, self.dim, generator=self.gen) if self.stochastic else None
        return noise, step


class TensorNoise:
    """Injected noise: `noise [N, 64]` and optionally `step_noise [N, K, 64]`."""

    def __init__(self, noise: torch.Tensor, step_noise: torch.Tensor | None = None):
        self.noise, self.step_noise = noise, step_noise

    def frame(self, index: int):
        if index >= self.noise.shape[0]:
            raise InputError(f"injected noise covers {self.noise.shape[0]} frames, frame {index} asked for more")
        return self.noise[index], None if self.step_noise is None else self.step_noise[index]


@dataclass(frozen=True)
class Chunk:
    index: int
    audio: torch.Tensor   # [hop] fp32
    latent: torch.Tensor  # [64] model dtype (unscaled)


def _cache_of(branch, dtype, device):
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    for i in range(branch.k.shape[0]):
        cache.update(branch.k[i][None].to(device, dtype).clone(), branch.v[i][None].to(device, dtype).clone(), i)
    return cache


class _State:
    """The three live caches, the conditions and the decoder's streaming cache of one request."""

    def __init__(self, model, voice: VoicePreset):
        dtype, device = model.dtype, model.device
        self.lm = _cache_of(voice["lm"], dtype, device)
        self.tts = _cache_of(voice["tts_lm"], dtype, device)
        self.neg = _cache_of(voice["neg_tts_lm"], dtype, device)
        self.h_pos = voice["tts_lm"].last_hidden().to(device, dtype)[None]  # [1, H]
        self.h_neg = voice["neg_tts_lm"].last_hidden().to(device, dtype)[None]
        self.decoder_cache = None

    @property
    def tts_len(self) -> int:
        return self.tts.get_seq_length()


def _run(lm, embeds, cache):
    return lm(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state


class RealtimeReference:
    """The loop for one request at a time (batch 1, as Microsoft's code)."""

    def __init__(self, model, opts: LoopOptions = LoopOptions()):
        self.model, self.opts = model, opts
        self.sampler = RealtimeSampler(model, opts.steps, opts.algorithm).eval()
        self.cfg = torch.tensor([opts.cfg_scale], dtype=torch.float32, device=model.device)  # one row's scale
        self.stop_reason: str | None = None

    @torch.no_grad()
    def stream(self, voice: VoicePreset, feed, noise: NoiseSource | None = None, seed: int = 0) -> Iterator[Chunk]:
        """Audio chunks as they are produced; `self.stop_reason` says why it ended ("eos", "forced_eos",
        "length", "max_frames"). `feed` is a `TextFeed` (or anything with `take(n)`)."""
        m, opts = self.model, self.opts
        noise = noise or SeededNoise(seed, m.rt_config.latent_dim, opts.steps, self.sampler.stochastic)
        st = _State(m, voice)
        frame, self.stop_reason = 0, None
        while self.stop_reason is None:
            ids = feed.take(TEXT_WINDOW)
            if ids:
                if st.tts_len + len(ids) > m.rt_config.context:
                    self.stop_reason = "length"
                    break
                self._text_window(st, ids)
            for _ in range(SPEECH_WINDOW):
                z = self._sample(st, *noise.frame(frame))
                yield Chunk(frame, self._decode(st, z), z[0])
                self.stop_reason = self._speech_step(st, z, frame)
                frame += 1
                if self.stop_reason:
                    break

    def _text_window(self, st: _State, ids: list[int]) -> None:
        m = self.model
        t = torch.tensor([ids], dtype=torch.long, device=m.device)
        h = _run(m.model.language_model, m.embed_text(t), st.lm)              # no final norm
        h = _run(m.model.tts_language_model, h + m.type_embedding(True), st.tts)
        st.h_pos = h[:, -1]

    def _sample(self, st: _State, noise, step_noise):
        dev = self.model.device
        step = None if step_noise is None else step_noise[None].to(dev, torch.float32)
        return self.sampler(st.h_pos, st.h_neg, noise[None].to(dev, torch.float32), self.cfg, step)[:, 0]

    def _decode(self, st: _State, z) -> torch.Tensor:
        from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
            VibeVoiceAcousticTokenizerConv1dPaddingCache as PaddingCache,
        )

        mm = self.model.model
        if st.decoder_cache is None:
            st.decoder_cache = PaddingCache()
        scaled = z[:, None] / mm.latent_scaling_factor - mm.latent_bias_factor  # [1, 1, 64]
        out = mm.audio_tower.decoder(scaled.permute(0, 2, 1), padding_cache=st.decoder_cache, use_cache=True)
        return out.audio[0, 0].float()

    def _speech_step(self, st: _State, z, frame: int) -> str | None:
        m, opts = self.model, self.opts
        if st.tts_len + 1 > m.rt_config.context:
            return "length"
        e = m.connector(z)[:, None]                                          # [1, 1, H]
        st.h_pos = _run(m.model.tts_language_model, e, st.tts)[:, -1]
        st.h_neg = _run(m.model.tts_language_model, e, st.neg)[:, -1]
        if opts.force_eos_frame is not None and frame >= opts.force_eos_frame:
            return "forced_eos"
        if float(m.eos_probability(st.h_pos)[0]) > 0.5:
            return "eos"
        if opts.max_frames is not None and frame + 1 >= opts.max_frames:
            return "max_frames"
        return None


@dataclass(frozen=True)
class RealtimeResult:
    audio: torch.Tensor     # [frames * hop] fp32
    latents: torch.Tensor   # [frames, 64]
    stop_reason: str
    frames: int


def synthesize(model, voice: VoicePreset, feed, opts: LoopOptions = LoopOptions(), noise: NoiseSource | None = None,
               seed: int = 0) -> RealtimeResult:
    """Run the whole loop and gather its audio."""
    ref = RealtimeReference(model, opts)
    chunks = list(ref.stream(voice, feed, noise, seed))
    if not chunks:
        return RealtimeResult(torch.zeros(0), torch.zeros(0, model.rt_config.latent_dim), ref.stop_reason or "length", 0)
    return RealtimeResult(torch.cat([c.audio for c in chunks]), torch.stack([c.latent for c in chunks]),
                          ref.stop_reason or "", len(chunks))
