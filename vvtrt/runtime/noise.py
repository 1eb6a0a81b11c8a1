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


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of `a * m` for `a` int64 in [0, 2**32) and a 32-bit constant `m`, without
    leaving int64 (16-bit partial products)."""
    a0, a1 = a & 0xFFFF, a >> 16
    m0, m1 = m & 0xFFFF, m >> 16
    mid = a1 * m0 + a0 * m1  # < 2**33
    t = a0 * m0 + ((mid & 0xFFFF) << 16)  # < 2**33
    hi = (a1 * m1 + (mid >> 16) + (t >> 32)) & M32
    return hi, t & M32


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = ROUNDS) -> torch.Tensor:
    """Philox-4x32 of `counter [..., 4]` under `key [..., 2]` (int64 tensors holding 32-bit words;
    broadcastable) -> `[..., 4]` int64 words in [0, 2**32)."""
    c0, c1, c2, c3 = (counter[..., i] & M32 for i in range(4))
    k0, k1 = key[..., 0] & M32, key[..., 1] & M32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & M32, (k1 + PHILOX_W[1]) & M32
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


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
