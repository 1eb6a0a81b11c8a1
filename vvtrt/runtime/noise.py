"""Counter-based noise on the device: Philox-4x32-10 keyed by a request's seed, counted by its frame.

`frame_normals(seed, frame, width)` gives each row its `width` standard normals of diffusion frame `frame`
of the request with seed `seed`, computed from those two numbers alone: no generator state, no host
random numbers, nothing shared between rows. A request's noise therefore never depends on its
neighbours, its slot or the batch size, and the step that draws it can be captured in a CUDA graph (the
seeds and frame counters are device tensors the step itself advances).

The generator is Random123's Philox-4x32-10 (Salmon et al., SC'11): the counter is `(j, frame low 32
bits, frame high 32 bits, stream)` for the j-th group of four outputs, the key the seed's two 32-bit
halves. It is written in plain torch int64 arithmetic (32x32-bit products split into 16-bit halves, so no
intermediate leaves int64), so its integer outputs are the same bits on every device. Each pair of 32-bit
words becomes two normals by Box-Muller in float64 (uniforms `(x + 0.5) / 2**32`, never 0 or 1), rounded
to float32: libm differences between devices are far below float32's rounding, so the normals agree too
(the GPU tests compare CUDA with the CPU).

This is the serving engine's noise (`EngineConfig.noise = "device"`). The single-request `Synthesizer`
and the parity checks keep the original's host draws (`torch.Generator().manual_seed(seed)`, as
transformers draws them): see `vvtrt.runtime.slots`.
"""
from __future__ import annotations

import math

import torch

M32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
DIFFUSION_STREAM = 0  # the counter's 4th word: the diffusion sampler's starting noise
NOISE_SOURCES = ("host", "device")  # where a frame loop's noise comes from (see vvtrt.runtime.frame_loop)


def _pair(first: int, second: int, like: torch.Tensor) -> torch.Tensor:
    """`[first, second]` int64 on `like`'s device, built by a kernel (no host copy: capturable)."""
    return first + (second - first) * torch.arange(2, dtype=torch.int64, device=like.device)


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = ROUNDS) -> torch.Tensor:
    """Philox-4x32 of `counter [..., 4]` under `key [..., 2]` (int64 tensors holding 32-bit words;
    broadcastable) -> `[..., 4]` int64 words in [0, 2**32).

    The two multiplications of a round run as one on the pair `(c0, c2)` against `(M0, M1)`; each 32x32-bit
    product is taken as `lo16(a) * m + (hi16(a) * m) << 16` (both partial products < 2**48), so nothing leaves
    int64 and a round is 15 tensor operations."""
    counter, key = counter & M32, key & M32
    a = counter[..., 0::2]  # (c0, c2): multiplied
    b = counter[..., 1::2]  # (c1, c3): xored
    m = _pair(*PHILOX_M, counter)
    r = torch.arange(rounds, dtype=torch.int64, device=counter.device).view(-1, 1)
    keys = (key.unsqueeze(-2) + r * _pair(*PHILOX_W, counter)) & M32  # [..., rounds, 2]: every round's key
    for i in range(rounds):
        x, y = (a & 0xFFFF) * m, (a >> 16) * m
        t = x + ((y & 0xFFFF) << 16)
        hi, lo = (y >> 16) + (t >> 32), t & M32  # (hi0, hi1), (lo0, lo1)
        a, b = hi.flip(-1) ^ b ^ keys[..., i, :], lo.flip(-1)  # (hi1^c1^k0, hi0^c3^k1), (lo1, lo0)
    out = torch.stack(torch.broadcast_tensors(a, b), dim=-1)  # [..., pair, (a, b)]: c0, c1, c2, c3
    return out.reshape(*out.shape[:-2], 4)


def frame_words(seed: torch.Tensor, frame: torch.Tensor, width: int, stream: int = DIFFUSION_STREAM) -> torch.Tensor:
    """The raw 32-bit words behind `frame_normals`: `seed [N]`, `frame [N]` int64 -> `[N, 4 * ceil(width / 4)]`
    int64 in [0, 2**32)."""
    dev = seed.device
    groups = -(-width // 4)
    seed, frame = seed.to(torch.int64).view(-1, 1), frame.to(torch.int64).view(-1, 1)
    j = torch.arange(groups, dtype=torch.int64, device=dev).view(1, -1)
    zero = torch.zeros_like(j)
    ctr = torch.stack(torch.broadcast_tensors(j, frame & M32, (frame >> 32) & M32, zero + stream), dim=-1)
    key = torch.stack([seed & M32, (seed >> 32) & M32], dim=-1)  # [N, 1, 2]
    return philox4x32(ctr, key).reshape(seed.shape[0], 4 * groups)


def words_to_normals(words: torch.Tensor, width: int) -> torch.Tensor:
    """Box-Muller over consecutive word pairs `(a, b)`: `sqrt(-2 ln ua) * (cos, sin)(2 pi ub)` in float64,
    rounded to float32 -> `[N, width]`."""
    u = (words.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)
    ua, ub = u[:, 0::2], u[:, 1::2]
    r = torch.sqrt(-2.0 * torch.log(ua))
    theta = (2.0 * math.pi) * ub
    z = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).reshape(words.shape[0], -1)
    return z[:, :width].to(torch.float32)


def frame_normals(seed: torch.Tensor, frame: torch.Tensor, width: int, stream: int = DIFFUSION_STREAM) -> torch.Tensor:
    """`width` standard normals (float32) per row for (`seed`, `frame`): see the module doc."""
    return words_to_normals(frame_words(seed, frame, width, stream), width)
