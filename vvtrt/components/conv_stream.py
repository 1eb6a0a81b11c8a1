"""Streaming acoustic decoder / semantic encoder steps with the convolution state as one flat tensor,
and the non-streaming voice-prompt encoder (each clip at its own length, as Microsoft's original).

transformers keeps a lazily created dict of per-layer caches and updates them in place; here each causal
conv gets ``cat(state, x)`` and returns the last ``left_pad`` input samples as its new state. Transposed convolutions are computed as a matmul plus overlap-add over the last *one* previous
frame: bit-identical to ``ConvTranspose1d`` on the padded input, it builds in bf16 on TensorRT-RTX
(whose bf16 ConvTranspose1d does not build) and needs 1 frame of state instead of ``2r-1``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
    VibeVoiceAcousticTokenizerCausalConv1d as CausalConv1d,
    VibeVoiceAcousticTokenizerCausalConvTranspose1d as CausalConvT1d,
    VibeVoiceAcousticTokenizerConvNext1dLayer as ConvNextLayer,
)


def _ops(tokenizer) -> list[nn.Module]:
    """The tokenizer's stateful ops and blocks in execution order: stem conv, blocks, (up|down) convs, head."""
    ops: list[nn.Module] = [tokenizer.stem.conv, *tokenizer.stem.stage]
    for layer in tokenizer.conv_layers:
        ops.append(layer.convtr if hasattr(layer, "convtr") else layer.conv)
        ops.extend(layer.stage)
    ops.append(tokenizer.head)
    return ops


def _state_shape(op: nn.Module) -> tuple[str, int, int]:
    conv = op.mixer if isinstance(op, ConvNextLayer) else op
    if isinstance(conv, CausalConvT1d):
        return conv.cache_key, conv.in_channels, 1  # one previous frame is enough (see module doc)
    return conv.cache_key, conv.in_channels, conv.left_pad


def state_layout(tokenizer) -> list[tuple[str, int, int]]:
    """`(cache_key, channels, length)` of every streaming state, in execution order."""
    return [_state_shape(op) for op in _ops(tokenizer)]


def _conv_step(conv: CausalConv1d, x, state):
    xin = torch.cat([state, x], dim=-1)
    return conv.conv(xin), xin[..., xin.shape[-1] - conv.left_pad:]


def _convtr_step(conv: CausalConvT1d, x, state):
    # x: [B, C, T]; state: [B, C, 1] (the previous frame). y[j*r + m] = W[:, :, m]·x[j] + W[:, :, m+r]·x[j-1]
    r = conv.stride
    w = conv.convtr.weight  # [C_in, C_out, 2r]
    c_out = w.shape[1]
    xin = torch.cat([state, x], dim=-1)  # [B, C, T+1]
    t = x.shape[-1]
    z = torch.matmul(xin.transpose(1, 2), w.reshape(w.shape[0], c_out * 2 * r))  # [B, T+1, C_out*2r]
    z = z.view(z.shape[0], t + 1, c_out, 2 * r)
    y = z[:, 1:, :, :r] + z[:, :-1, :, r:]  # [B, T, C_out, r]
    y = y.permute(0, 2, 1, 3).reshape(y.shape[0], c_out, t * r) + conv.convtr.bias[None, :, None]
    return y, xin[..., -1:]


def _block_step(block: ConvNextLayer, x, state):
    residual = x
    h = block.norm(x.transpose(1, 2)).transpose(1, 2)
    h, new_state = _conv_step(block.mixer, h, state)
    x = residual + h * block.gamma.unsqueeze(-1)
    h = block.ffn(block.ffn_norm(x.transpose(1, 2))).transpose(1, 2)
    return x + h * block.ffn_gamma.unsqueeze(-1), new_state


MAX_CONCAT_INPUTS = 32  # ONNX Runtime's CUDA Concat cannot be graph-captured with more inputs


def _cat_capturable(parts: list[torch.Tensor]) -> torch.Tensor:
    """`cat(parts, 1)` as a tree of concats of <= 32 inputs each (the 1.5B tokenizers have 34 states)."""
    while len(parts) > MAX_CONCAT_INPUTS:
        parts = [torch.cat(parts[i:i + MAX_CONCAT_INPUTS], dim=1) for i in range(0, len(parts), MAX_CONCAT_INPUTS)]
    return torch.cat(parts, dim=1)


class _StreamingTokenizer(nn.Module):
    """Runs a tokenizer (decoder or encoder) one chunk at a time with a flat state `[B, N]`."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.layout = state_layout(tokenizer)
        self.state_size = sum(c * p for _, c, p in self.layout)

    def run(self, x, state):
        ops = _ops(self.tokenizer)
        b = x.shape[0]
        new_states = []
        offset = 0
        for op, (_, c, p) in zip(ops, self.layout):
            s = state[:, offset:offset + c * p].reshape(b, c, p)
            offset += c * p
            if isinstance(op, ConvNextLayer):
                x, ns = _block_step(op, x, s)
            elif isinstance(op, CausalConvT1d):
                x, ns = _convtr_step(op, x, s)
            else:
                x, ns = _conv_step(op, x, s)
            new_states.append(ns.reshape(b, c * p))
        return x, _cat_capturable(new_states)


class _FastSwitch(nn.Module):
    """`fast = True` (set by the torch runner when it compiles for CUDA; never exported) runs the step
    channels-last (`vvtrt.components.conv_fast`: im2col GEMMs, depthwise convs as fused multiply-adds),
    built once from the weights as they are when it is switched on; the flat state keeps its layout.
    VVTRT_CONV_KERNEL=exported keeps the exported ops instead."""

    def __init__(self, tokenizer):
        super().__init__()
        self.stream = _StreamingTokenizer(tokenizer)
        self.fast_stream = None
        self._fast = False

    @property
    def fast(self) -> bool:
        return self._fast

    @fast.setter
    def fast(self, on: bool) -> None:
        from vvtrt.components.conv_fast import ChannelsLastTokenizer, conv_kernel

        on = bool(on) and conv_kernel() == "channels-last"
        if on and self.fast_stream is None:
            tok = self.stream.tokenizer
            self.fast_stream = ChannelsLastTokenizer(_ops(tok), self.stream.layout)
        self._fast = on

    def fast_fallback(self) -> bool:
        """Drop the fast path's optional Triton kernels (the torch ops run instead); False if none was on."""
        return self.fast_stream is not None and self.fast_stream.drop_fused_ffn()

    @torch.inference_mode()
    def fast_error(self, batch: int = 2, frames: int = 3) -> float:
        """The largest relative-L2 gap between the fast path and the exported ops (output or state) over
        `frames` streamed frames of random inputs, each path carrying its own state: the torch runner's
        self-check before it compiles the fast path (on the device and in the dtype of the weights)."""
        p = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        x, state = self.sample_inputs(batch, p.device, p.dtype, gen)
        was, worst = self._fast, 0.0
        s_ref = s_fast = state
        try:
            for _ in range(frames):
                x = torch.randn(x.shape, generator=gen).to(x)
                self.fast = False
                y_ref, s_ref = self(x, s_ref)
                self.fast = True
                y_fast, s_fast = self(x, s_fast)
                for a, b in ((y_fast, y_ref), (s_fast, s_ref)):
                    ref = b.float().norm()
                    gap = float((a.float() - b.float()).norm() / ref) if ref > 0 else float(a.float().norm())
                    worst = max(worst, gap if gap == gap else float("inf"))
        finally:
            self.fast = was
        return worst

    def sample_inputs(self, batch: int, device, dtype, gen=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random `(input, state)` of this step's shapes (the fast path's self-check)."""
        shape = (batch, 1, self.input_width)
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        state = (torch.randn((batch, self.stream.state_size), generator=gen) * 0.5).to(device=device, dtype=dtype)
        return x, state


class AcousticDecoderStep(_FastSwitch):
    """`latent [B, 1, 64]` (diffusion output, LLM latent space), `state [B, Nd]` ->
    `audio [B, 1, 3200]`, `state_out [B, Nd]`. Applies ``z / scale - bias`` first, as transformers does.
    `fast`: see `_FastSwitch`."""

    def __init__(self, model):
        super().__init__(model.model.audio_tower.decoder)
        self.scale = model.model.latent_scaling_factor
        self.bias = model.model.latent_bias_factor
        self.input_width = self.stream.tokenizer.stem.conv.in_channels

    def forward(self, latent, state):
        z = latent / self.scale - self.bias
        if self._fast:  # [B, 1, Z] is already channels-last; the 1-channel audio [B, T, 1] is [B, 1, T]
            audio, new_state = self.fast_stream(z, state)
            return audio.transpose(1, 2), new_state
        return self.stream.run(z.permute(0, 2, 1), state)


class SemanticEncoderStep(_FastSwitch):
    """`audio [B, 1, 3200]`, `state [B, Ns]` -> `semantic [B, 1, Dsem]`, `state_out [B, Ns]`.
    `fast`: see `_FastSwitch`."""

    def __init__(self, model):
        super().__init__(model.model.semantic_tokenizer_encoder)
        ratios = self.stream.tokenizer.config.downsampling_ratios
        self.input_width = int(torch.tensor(list(ratios)).prod())

    def forward(self, audio, state):
        if self._fast:  # [B, 1, T] mono audio is [B, T, 1] channels-last; the output [B, 1, Dsem] already is
            return self.fast_stream(audio.transpose(1, 2), state)
        h, new_state = self.stream.run(audio, state)
        return h.permute(0, 2, 1), new_state


def encode_at_own_length(encoder, wav):
    """The acoustic encoder on `wav [S, 1, N]` for any N >= 1, as Microsoft's original encodes a voice clip:
    every causal conv pads its own input (zeros), and a strided conv's input is also right-padded up to a
    multiple of its stride (the original `SConv1d`'s "extra padding"), so the output has ceil(N / hop)
    frames. transformers' port pads on the left only and would drop a partial last frame (floor).

    A stride-s conv here has kernel 2s and left pad s: with s - 1 zeros on the right it outputs
    ceil(L / s) frames, and its last output reads inputs only up to ceil(L / s) * s - 1, exactly the
    original's padded length, so the static pad matches the original's data-dependent one. For N a
    multiple of the hop the extra zeros are never read: the result equals transformers' encoder.
    Returns the latents `[S, ceil(N / hop), D]`."""
    x = wav
    for op in _ops(encoder):
        if isinstance(op, CausalConv1d) and op.conv.stride[0] > 1:
            x = nn.functional.pad(x, (0, op.conv.stride[0] - 1))
        x = op(x)
    return x.permute(0, 2, 1)


class AcousticEncoder(nn.Module):
    """Voice prompts, non-streaming: `wav [S, 1, N]` (any N >= 1: each clip at its own length, as Microsoft's
    original encodes it; see `encode_at_own_length`), `noise_std [S]` (= vae_std * randn(S)),
    `noise [S, ceil(N/3200), 64]` -> `latents [S, T, 64]` (LLM latent space) and `embeds [S, T, H]` (what
    goes into the voice placeholder slots)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.audio_tower.encoder
        self.projector = model.model.multi_modal_projector
        self.scale = model.model.latent_scaling_factor
        self.bias = model.model.latent_bias_factor

    def forward(self, wav, noise_std, noise):
        z = encode_at_own_length(self.encoder, wav)
        z = z + noise_std.to(z.dtype)[:, None, None] * noise.to(z.dtype)  # as transformers: in z's dtype
        z = (z + self.bias) * self.scale
        return z, self.projector(z)


class Connectors(nn.Module):
    """`latent [B, 1, 64]`, `semantic [B, 1, Dsem]` -> next LLM input `embeds [B, 1, H]`."""

    def __init__(self, model):
        super().__init__()
        self.acoustic = model.model.multi_modal_projector
        self.semantic = model.model.semantic_connector

    def forward(self, latent, semantic):
        return self.acoustic(latent) + self.semantic(semantic)
