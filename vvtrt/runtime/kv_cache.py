"""Static KV cache: one preallocated buffer per length bucket, written in place at per-row positions, so
every decode step has the same shapes and can be graph-captured (gpt-fast style)."""
from __future__ import annotations

import torch

from vvtrt.components.info import ModelInfo
from vvtrt.errors import InputError


def pick_bucket(buckets: tuple[int, ...], needed: int) -> int:
    """Smallest bucket holding `needed` tokens."""
    for b in buckets:
        if b >= needed:
            return b
    raise InputError(f"script too long: needs {needed} KV slots but the largest KV bucket is {buckets[-1]}; "
                     "shorten the script or re-export with larger --kv-buckets")


class StaticKVCache:
    """`k, v [L, rows, Hkv, S, D]` and `lengths [rows]` (int64) on one device.

    Rows are laid out `[positive streams..., negative streams...]`.
    """

    def __init__(self, info: ModelInfo, rows: int, length: int, dtype, device):
        shape = (info.layers, rows, info.kv_heads, length, info.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.int64, device=device)
        self.capacity = length

    def write_prefix(self, row: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write a prefill's entries `k, v [L, 1, Hkv, T, D]` into slots 0..T-1 of `row`."""
        t = k.shape[3]
        if t > self.capacity:
            raise InputError(f"prompt of {t} tokens does not fit the KV bucket of {self.capacity}")
        self.k[:, row:row + 1, :, :t].copy_(k)
        self.v[:, row:row + 1, :, :t].copy_(v)
        self.lengths[row] = t

    def write_step(self, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """Write one step's `new_k/new_v [L, rows, Hkv, 1, D]` at each row's current length (no host sync).

        Positions are clamped to the last slot; the host stops generation before a row is full.
        """
        pos = self.lengths.clamp(max=self.capacity - 1).view(1, -1, 1, 1, 1).expand_as(new_k)
        self.k.scatter_(3, pos, new_k)
        self.v.scatter_(3, pos, new_v)

    def reset(self) -> None:
        self.lengths.zero_()
