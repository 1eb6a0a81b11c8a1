"""The serving engine's settings and its memory plan: how many streams (slots) the KV pool holds."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vvtrt.errors import InputError
from vvtrt.runtime.noise import NOISE_SOURCES
from vvtrt.runtime.kv_cache import kv_bytes_per_row
from vvtrt.runtime.kv_groups import MAX_KV_GROUPS
from vvtrt.serving.api import CapacityError

log = logging.getLogger(__name__)
GIB = 1 << 30
FRAME_COMPONENTS = ("lm_decode", "diffusion_sampler", "acoustic_decoder_step", "semantic_encoder_step",
                    "connectors", "token_embed")


@dataclass(frozen=True)
class EngineConfig:
    """`max_streams`: slots (concurrent requests) at most; fewer if the KV pool does not fit.
    `max_context`: KV slots per stream (prompt + generated steps); None = the largest exported KV bucket.
    `batch_buckets` / `kv_buckets`: the (slots, KV length) shapes a step may run with, each a CUDA graph;
    None = powers of two up to `max_streams` and the export's KV buckets where every per-frame component
    runs on torch (other backends: the full pool only); `()` = the full pool only.
    `prefill_budget_tokens`: prompt tokens prefilled between two frame steps while streams run (whole
    chunks, at least one; None = one prefill chunk of the export), so a joining long prompt delays running
    streams by one chunk at most.
    `buffer_chunks`: per-request output buffer (chunks of 133 ms); a request this far ahead of its reader
    is held (computes nothing) until the reader takes a chunk. `stall_timeout_s`: a held request whose
    reader takes nothing for this long is cancelled (`SlowReader`).
    `max_step_failures`: consecutive failed frame steps before the engine reports unhealthy.
    `deterministic`: every step runs the full pool's shapes (one batch and one KV bucket), so a request's
    audio is bit-equal to its solo run whatever runs beside it (other buckets may differ by GEMM rounding), where
    the GEMM library computes a row alike in every position of the batch (a CPU GEMM at 3 slots did not).
    `memory_headroom_gib` (CUDA): memory left free after the KV pool, for graphs, activations and the
    prefill. `max_pool_gib` (CPU, or a CUDA cap): the KV pool's size limit.
    `noise`: where each request's diffusion noise comes from. "device" (default): drawn inside the step from
    the request's seed and frame index (`vvtrt.runtime.noise`, Philox-4x32-10): no host work or copy per step,
    and a request's audio for a seed never depends on the other requests. "host": the original's
    `torch.Generator(seed)` draws on the host, as the single-request `Synthesizer` (and `vvtrt synth`, parity)
    makes them, so a request's audio matches `vvtrt synth` with the same seed (one host draw and one copy per
    frame).
    `kv_groups`: 1 or 2 KV groups a step may run as (`vvtrt.runtime.kv_groups`): with 2, short streams run at
    their own KV bucket beside long ones when the cost model says it pays, at the price of up to three times the
    CUDA graphs. `deterministic` runs one group.
    `pipeline` (long-form, device noise): each frame step is launched before the previous one's outputs are
    read (`vvtrt.runtime.slots`), so the host's per-step work overlaps the device's; chunks reach their
    readers one step later. Audio is unchanged."""

    max_streams: int = 64
    max_queue: int = 256
    max_context: int | None = None
    batch_buckets: tuple[int, ...] | None = None
    kv_buckets: tuple[int, ...] | None = None
    prefill_budget_tokens: int | None = None
    buffer_chunks: int = 256
    stall_timeout_s: float = 30.0
    max_step_failures: int = 3
    deterministic: bool = False
    memory_headroom_gib: float = 4.0
    max_pool_gib: float | None = None
    cuda_graph: bool | str = "auto"
    noise: str = "device"
    kv_groups: int = 1
    pipeline: bool = False

    def __post_init__(self):
        for name in ("max_streams", "max_queue", "prefill_budget_tokens", "buffer_chunks", "max_step_failures"):
            if getattr(self, name) is not None and int(getattr(self, name)) < (0 if name == "max_queue" else 1):
                raise InputError(f"{name} must be >= {0 if name == 'max_queue' else 1}, got {getattr(self, name)}")
        if self.max_context is not None and self.max_context < 8:
            raise InputError(f"max_context must be >= 8 KV slots, got {self.max_context}")
        if not self.stall_timeout_s > 0:
            raise InputError(f"stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        if self.memory_headroom_gib < 0 or (self.max_pool_gib is not None and self.max_pool_gib <= 0):
            raise InputError("memory_headroom_gib must be >= 0 and max_pool_gib > 0")
        if self.kv_groups not in (1, MAX_KV_GROUPS) or isinstance(self.kv_groups, bool):
            raise InputError(f"kv_groups must be 1 or {MAX_KV_GROUPS}, got {self.kv_groups!r}")
        if self.pipeline and self.noise != "device":
            raise InputError("a pipelined step draws its noise on the device: use noise='device'")
        if self.noise not in NOISE_SOURCES:
            raise InputError(f"noise must be one of {', '.join(NOISE_SOURCES)}, got {self.noise!r}")
        for name in ("batch_buckets", "kv_buckets"):
            vals = getattr(self, name)
            if vals is not None and any(int(v) < 1 for v in vals):
                raise InputError(f"{name} must be positive sizes, got {vals}")


@dataclass(frozen=True)
class PoolPlan:
    slots: int
    kv_len: int
    batch_buckets: tuple[int, ...]
    kv_buckets: tuple[int, ...]
    pool_bytes: int
    budget_bytes: int


def plan_pool(cfg: EngineConfig, info, options, runners: dict, device, itemsize: int) -> PoolPlan:
    """Size the KV pool from free GPU memory minus the headroom (CUDA) or `max_pool_gib` (CPU, default
    2 GiB); raise `CapacityError` if not even one stream fits."""
    device = torch.device(device)
    kv_len = cfg.max_context or options.kv_buckets[-1]
    per_slot = 2 * kv_bytes_per_row(info, kv_len, itemsize)  # positive and negative rows
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free - int(cfg.memory_headroom_gib * GIB)
        if cfg.max_pool_gib is not None:
            budget = min(budget, int(cfg.max_pool_gib * GIB))
    else:
        budget = int((cfg.max_pool_gib or 2.0) * GIB)
    fit = max(0, budget) // per_slot
    if fit < 1:
        raise CapacityError(f"one stream's KV cache ({per_slot / GIB:.2f} GiB for {kv_len} tokens) does not fit "
                            f"the {max(budget, 0) / GIB:.2f} GiB left for the pool: lower max_context or the "
                            "memory headroom, or free GPU memory")
    slots = min(cfg.max_streams, fit)
    backends = {runners[c].backend for c in FRAME_COMPONENTS}
    if "tensorrt" in backends:  # engines are built for at most max_batch LLM rows
        slots = min(slots, options.max_batch // 2)
    if slots < cfg.max_streams:
        log.warning("serving %d streams, not the %d asked for: the KV pool is limited by %s", slots,
                    cfg.max_streams, "memory" if fit < cfg.max_streams else "the engines' max batch")
    buckets = _buckets(cfg, slots, kv_len, options, backends == {"torch"})
    return PoolPlan(slots, kv_len, buckets[0], buckets[1], slots * per_slot, budget)


def _buckets(cfg: EngineConfig, slots: int, kv_len: int, options, torch_only: bool):
    if cfg.deterministic:
        return (slots,), (kv_len,)
    if cfg.batch_buckets is not None:
        batch = tuple(b for b in cfg.batch_buckets if b < slots) + (slots,)
    elif torch_only:
        batch = tuple(1 << i for i in range(slots.bit_length()) if (1 << i) < slots) + (slots,)
    else:
        batch = (slots,)
    if cfg.kv_buckets is not None:
        kv = tuple(s for s in cfg.kv_buckets if s < kv_len) + (kv_len,)
    elif torch_only:
        kv = tuple(s for s in options.kv_buckets if s < kv_len) + (kv_len,)
    else:
        kv = (kv_len,)
    return tuple(sorted(set(batch))), tuple(sorted(set(kv)))
