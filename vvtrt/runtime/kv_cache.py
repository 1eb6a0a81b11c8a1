"""Static KV cache: one preallocated buffer, written in place at per-row positions, so every decode step has
the same shapes and can be graph-captured (gpt-fast style). The serving engine runs a step on the first
rows and the first slots of the cache (`view`), so a small batch or short contexts read less of it."""
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


def kv_bytes_per_row(info: ModelInfo, length: int, itemsize: int) -> int:
    """Bytes of K and V for one row of `length` slots."""
    return 2 * info.layers * info.kv_heads * length * info.head_dim * itemsize


class StaticKVCache:
    """`k, v [L, rows, Hkv, S, D]` and `lengths [rows]` (int64) on one device.

    Rows are laid out `[pos0, neg0, pos1, neg1, ...]`: stream (slot) s owns rows 2s (positive, CFG
    conditional) and 2s + 1 (negative), so the first `b` streams are the first `2b` rows.
    """

    def __init__(self, info: ModelInfo | None, rows: int, length: int, dtype, device, *, _views=None):
        if _views is not None:  # a view of another cache (see `view`)
            self.k, self.v, self.lengths = _views
        else:
            shape = (info.layers, rows, info.kv_heads, length, info.head_dim)
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
            self.lengths = torch.zeros(rows, dtype=torch.int64, device=device)
        self.capacity = length

    def view(self, rows: int, length: int, first: int = 0) -> "StaticKVCache":
        """`rows` rows from row `first` and the first `length` slots, sharing this cache's storage (no copy)."""
        end = first + rows
        if first < 0 or end > self.k.shape[1] or length > self.capacity:
            raise ValueError(f"view ({rows} rows from {first}, {length} slots) exceeds the cache "
                             f"({self.k.shape[1]} rows, {self.capacity} slots)")
        return StaticKVCache(None, rows, length, None, None,
                             _views=(self.k[:, first:end, :, :length], self.v[:, first:end, :, :length],
                                     self.lengths[first:end]))

    def write_prefix(self, row: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write a prefill's entries `k, v [L, 1, Hkv, T, D]` into slots 0..T-1 of `row`."""
        t = k.shape[3]
        if t > self.capacity:
            raise InputError(f"prompt of {t} tokens does not fit the KV bucket of {self.capacity}")
        self.k[:, row:row + 1, :, :t].copy_(k)
        self.v[:, row:row + 1, :, :t].copy_(v)
        self.lengths[row] = t

    def clear_rows(self, first: int, count: int) -> None:
        """Zero `count` rows from `first` (K, V and lengths): a reused slot starts from a clean cache."""
        self.k[:, first:first + count].zero_()
        self.v[:, first:first + count].zero_()
        self.lengths[first:first + count] = 0

    def write_step(self, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """Write one step's `new_k/new_v [L, rows, Hkv, 1, D]` at each row's current length (no host sync).

        Positions are clamped to the last slot; the host stops generation before a row is full.
        """
        pos = self.lengths.clamp(max=self.capacity - 1).view(1, -1, 1, 1, 1).expand_as(new_k)
        self.k.scatter_(3, pos, new_k)
        self.v.scatter_(3, pos, new_v)

    def reset(self) -> None:
        self.lengths.zero_()
