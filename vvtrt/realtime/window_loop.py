"""The device side of the Realtime windowed loop for a batch of streams: static buffers, the text-window
step and the speech step built on the components' runners (`vvtrt.runtime.runner` contract, so ONNX
Runtime / TensorRT runners can replace the torch ones), and CUDA graphs of both steps per bucket.

Layout. Stream (slot) s owns text-LM row s, TTS rows 2s (positive) and 2s + 1 (negative, the CFG
branch) and its guidance scale `cfg_scale[s]` (set by `reset_slots`), so batch bucket b is a prefix of
every buffer. Each row keeps its own length (= its next RoPE
position); K/V buffers hold `capacity + TEXT_WINDOW` slots, the extra ones take the never-committed
entries a step computes for rows it does not advance.

Steps (b = batch bucket, s = KV bucket: the first s cache slots are read):

- text window, once per distinct window length t among the rows due: `rt_text_window` over the first b
  text-LM rows and the positive TTS rows; rows with `win_n == t` commit their t entries, take the
  window's last hidden state as their positive condition and advance both lengths by t.
- speech: `rt_sampler[_sde]` -> `rt_decoder_step` (audio) and `rt_connector` -> `rt_tts_decode` on the
  2b TTS rows (the same input for both rows of a stream) -> new conditions and the EOS probability. Rows
  with `active` set commit; the others keep every state unchanged. Then each stream's frame counter and
  stop are booked on the device (`vvtrt.realtime.stream_state`).

Noise. `noise="host"` (the single-request and parity paths): the host writes each stream's frame noise
(and SDE step noise) into `noise` / `step_noise` before the step (`torch.Generator(seed)` draws, as the
reference). `noise="device"` (the serving engine): the speech step draws it itself from the stream's
seed and frame counter (`vvtrt.runtime.noise`, Philox keyed by (seed, frame)): no host work and no copy
per step, and a stream's noise depends on its seed alone.

A step only commits rows the host marked, so a capture's warm-up runs (with nothing marked) leave every
stream's state as it was; the host marks rows by writing `active`, `win_n`, `win_ids` (and host noise)
before a step and reads `out` after it (`fetch`: the one host sync and the one copy of a frame: every
stream's audio with its stop code in the last column); `latent_out` keeps the step's latents for parity
checks.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np
import torch

from vvtrt.realtime.config import TEXT_WINDOW, RealtimeConfig
from vvtrt.realtime.stream_state import COLUMNS, FRAME, SEED, book_frame
from vvtrt.runtime.noise import NOISE_SOURCES, frame_normals

log = logging.getLogger(__name__)
SAMPLERS = ("rt_sampler", "rt_sampler_sde")
NEEDED = ("rt_text_window", "rt_tts_decode", "rt_decoder_step", "rt_connector")


def default_buckets(top: int, first: int = 1, factor: int = 2) -> tuple[int, ...]:
    """`first, first*factor, ...` below `top`, then `top`."""
    out, x = [], first
    while x < top:
        out.append(x)
        x *= factor
    return tuple(out) + (top,)


def _write_entries(cache, new, lens) -> None:
    """Write `new [L, R, KV, T, D]` into `cache [L, R, KV, P, D]` at slots `lens[r] .. lens[r] + T - 1`."""
    t = new.shape[3]
    pos = lens.view(1, -1, 1, 1, 1) + torch.arange(t, device=lens.device).view(1, 1, 1, t, 1)
    cache.scatter_(3, pos.expand_as(new), new)


class RealtimeLoop:
    """Buffers and steps of up to `streams` Realtime streams on one device (see module doc)."""

    def __init__(self, runners: Mapping, cfg: RealtimeConfig, streams: int, capacity: int, dtype, device,
                 steps: int, batch_buckets=None, kv_buckets=None, graphs: bool = True, noise: str = "host"):
        if noise not in NOISE_SOURCES:
            raise ValueError(f"noise must be one of {NOISE_SOURCES}, got {noise!r}")
        self.device_noise = noise == "device"
        missing = [n for n in NEEDED if n not in runners]
        samplers = [n for n in SAMPLERS if n in runners]
        if missing or len(samplers) != 1:
            raise ValueError(f"RealtimeLoop needs runners {NEEDED} and one of {SAMPLERS}, got {sorted(runners)}")
        self.r = dict(runners)
        self.sampler = samplers[0]
        self.stochastic = self.sampler == "rt_sampler_sde"
        self.cfg, self.streams, self.capacity = cfg, streams, capacity
        self.limit = min(cfg.context, capacity)  # a stream's positions (its "length" stop)
        self.dtype, self.device = dtype, torch.device(device)
        self.batch_buckets = tuple(sorted({b for b in (batch_buckets or default_buckets(streams)) if b < streams}
                                          | {streams}))
        self.kv_buckets = tuple(sorted({s for s in (kv_buckets or default_buckets(capacity, 256)) if s < capacity}
                                       | {capacity}))
        self.steps = steps  # K of the sampler runner (its module has it built in)
        if self.stochastic and self.r[self.sampler].spec.input("step_noise").shape[1] != steps:
            raise ValueError(f"the {self.sampler} runner is not built for K={steps}")
        self.use_graphs = graphs and self.device.type == "cuda"
        self._alloc()
        self._views: dict = {}
        self._outs: dict = {}
        self.graphs: dict = {}
        self._pool = None
        self.capture_seconds = 0.0
        self.capture_error: str | None = None

    # -- buffers ------------------------------------------------------------------------------------
    def _alloc(self) -> None:
        c, n, dev, dt = self.cfg, self.streams, self.device, self.dtype
        p = self.capacity + TEXT_WINDOW
        nd = self.r["rt_decoder_step"].spec.input("state").shape[1]
        z = torch.zeros
        self.lm_k = z(c.lm_layers, n, c.kv_heads, p, c.head_dim, dtype=dt, device=dev)
        self.lm_v = torch.zeros_like(self.lm_k)
        self.tts_k = z(c.tts_layers, 2 * n, c.kv_heads, p, c.head_dim, dtype=dt, device=dev)
        self.tts_v = torch.zeros_like(self.tts_k)
        self.lm_len = z(n, dtype=torch.int64, device=dev)
        self.tts_len = z(2 * n, dtype=torch.int64, device=dev)
        self.h_pos = z(n, c.hidden, dtype=dt, device=dev)
        self.h_neg = z(n, c.hidden, dtype=dt, device=dev)
        self.dec_state = z(n, nd, dtype=dt, device=dev)
        self.cfg_scale = torch.full((n,), 1.5, dtype=torch.float32, device=dev)  # each slot's guidance scale
        self.state = z(n, COLUMNS, dtype=torch.int64, device=dev)  # stream_state columns
        self.out = z(n, c.hop + 1, dtype=torch.float32, device=dev)  # audio, then the stop code
        self.audio_out = self.out[:, :c.hop]
        self.latent_out = z(n, c.latent_dim, dtype=torch.float32, device=dev)  # the last step's latents (parity)
        self.eos_out = z(n, dtype=torch.float32, device=dev)
        # host-fed inputs of a step: device buffers and (pinned on CUDA) host staging with numpy views
        shapes = {"active": ((n,), torch.bool), "win_n": ((n,), torch.int64),
                  "win_ids": ((n, TEXT_WINDOW), torch.int64), "noise": ((n, c.latent_dim), torch.float32)}
        if self.stochastic:
            shapes["step_noise"] = ((n, self.steps, c.latent_dim), torch.float32)
        pin = dev.type == "cuda"
        self.inputs = {k: z(s, dtype=d, device=dev) for k, (s, d) in shapes.items()}
        self._staged = {k: z(s, dtype=d, pin_memory=pin) for k, (s, d) in shapes.items()}
        self.host = {k: t.numpy() for k, t in self._staged.items()}
        self._out_host = z(n, c.hop + 1, dtype=torch.float32, pin_memory=pin)
        self._uploaded = tuple(k for k in shapes if not (self.device_noise and k in ("noise", "step_noise")))

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.lm_k, self.lm_v, self.tts_k, self.tts_v))

    def reset_slots(self, slots: list, voice, cfg_scales: list, rows: list) -> None:
        """Arm `slots` (streams of one voice, a `VoicePreset` already on this device and dtype) for new streams:
        the voice's prefilled caches in each slot's rows, their lengths, the conditions, a zero decoder state,
        each stream's guidance scale and state row (`stream_state.stream_row`: seed, no frame yet, its limits),
        each written for all the slots by one indexed copy."""
        dev = self.state.device
        idx = torch.tensor(slots, device=dev)
        lm, pos, neg = voice["lm"], voice["tts_lm"], voice["neg_tts_lm"]
        for cache_k, cache_v, at, br in ((self.lm_k, self.lm_v, idx, lm), (self.tts_k, self.tts_v, 2 * idx, pos),
                                         (self.tts_k, self.tts_v, 2 * idx + 1, neg)):
            cache_k[:, at, :, :br.length] = br.k.unsqueeze(1)
            cache_v[:, at, :, :br.length] = br.v.unsqueeze(1)
        self.lm_len[idx] = lm.length
        self.tts_len[2 * idx] = pos.length
        self.tts_len[2 * idx + 1] = neg.length
        self.h_pos[idx] = pos.hidden[-1]
        self.h_neg[idx] = neg.hidden[-1]
        self.dec_state[idx] = 0
        self.cfg_scale[idx] = torch.tensor(cfg_scales, dtype=self.cfg_scale.dtype).to(dev)
        self.state[idx] = torch.stack(rows).to(dev)

    # -- buckets --------------------------------------------------------------------------------------
    def batch_bucket(self, slots_needed: int) -> int:
        return next(b for b in self.batch_buckets if b >= slots_needed)

    def kv_bucket(self, needed: int) -> int:
        return next((s for s in self.kv_buckets if s >= needed), self.capacity)

    # -- host <-> device ------------------------------------------------------------------------------
    def upload(self, b: int) -> None:
        """Copy the host-staged inputs of the first `b` slots to the device (asynchronous on CUDA); with
        device noise the noise is not the host's to send."""
        for k in self._uploaded:
            self.inputs[k][:b].copy_(self._staged[k][:b], non_blocking=True)

    def fetch(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """`(audio [b, hop], stop code [b])` of the last speech step (`stream_state.STOP_REASONS`): one
        copy, the frame's one host sync (none on the CPU). Views of a buffer the next step overwrites."""
        if self.device.type == "cpu":  # already host memory: no copy
            out = self.out[:b].numpy()
        else:
            self._out_host[:b].copy_(self.out[:b], non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            out = self._out_host[:b].numpy()
        return out[:, :-1], out[:, -1].astype(np.int64)

    # -- the steps ------------------------------------------------------------------------------------
    def text_step(self, b: int, s_lm: int, s_tts: int, t: int) -> None:
        self._run(("text", b, s_lm, s_tts, t))

    def speech_step(self, b: int, s_tts: int) -> None:
        self._run(("speech", b, s_tts))

    def _out(self, name: str, dims: dict) -> dict:
        key = (name, tuple(sorted(dims.items())))
        if key not in self._outs:
            self._outs[key] = self.r[name].alloc_outputs(dims)
        return self._outs[key]

    def _view(self, key):
        if key not in self._views:
            kind, b, s = key
            if kind == "lm":
                self._views[key] = (self.lm_k[:, :b, :, :s], self.lm_v[:, :b, :, :s])
            elif kind == "pos":
                self._views[key] = (self.tts_k[:, 0:2 * b:2, :, :s], self.tts_v[:, 0:2 * b:2, :, :s])
            else:
                self._views[key] = (self.tts_k[:, :2 * b, :, :s], self.tts_v[:, :2 * b, :, :s])
        return self._views[key]

    def _text(self, b: int, s_lm: int, s_tts: int, t: int) -> None:
        lk, lv = self._view(("lm", b, s_lm))
        tk, tv = self._view(("pos", b, s_tts))
        lm_len, pos_len = self.lm_len[:b], self.tts_len[0:2 * b:2]
        o = self._out("rt_text_window", {"batch": b, "text": t, "lm_kv": s_lm, "tts_kv": s_tts})
        self.r["rt_text_window"].infer({"ids": self.inputs["win_ids"][:b, :t], "lm_k": lk, "lm_v": lv,
                                        "lm_len": lm_len, "tts_k": tk, "tts_v": tv, "tts_len": pos_len}, o)
        _write_entries(self.lm_k[:, :b], o["lm_new_k"], lm_len)
        _write_entries(self.lm_v[:, :b], o["lm_new_v"], lm_len)
        _write_entries(self.tts_k[:, 0:2 * b:2], o["tts_new_k"], pos_len)
        _write_entries(self.tts_v[:, 0:2 * b:2], o["tts_new_v"], pos_len)
        commit = self.inputs["win_n"][:b] == t
        lm_len.add_(commit.to(torch.int64) * t)
        pos_len.add_(commit.to(torch.int64) * t)
        h = self.h_pos[:b]
        h.copy_(torch.where(commit[:, None], o["hidden"][:, 0], h))

    def _draw_noise(self, b: int) -> None:
        """The frame's noise (and SDE step noise) of the first `b` slots from their seeds and frame
        counters, into the sampler's input buffers (device noise)."""
        z, inp = self.cfg.latent_dim, self.inputs
        width = z * (1 + self.steps) if self.stochastic else z
        draw = frame_normals(self.state[:b, SEED], self.state[:b, FRAME], width)
        inp["noise"][:b].copy_(draw[:, :z])
        if self.stochastic:
            inp["step_noise"][:b].copy_(draw[:, z:].view(b, self.steps, z))

    def _speech(self, b: int, s: int) -> None:
        inp = self.inputs
        if self.device_noise:
            self._draw_noise(b)
        feed = {"cond_pos": self.h_pos[:b], "cond_neg": self.h_neg[:b], "noise": inp["noise"][:b],
                "cfg_scale": self.cfg_scale[:b]}
        if self.stochastic:
            feed["step_noise"] = inp["step_noise"][:b]
        o_smp = self._out(self.sampler, {"batch": b})
        self.r[self.sampler].infer(feed, o_smp)
        latent = o_smp["latent"]
        o_dec = self._out("rt_decoder_step", {"batch": b})
        self.r["rt_decoder_step"].infer({"latent": latent, "state": self.dec_state[:b]}, o_dec)
        o_con = self._out("rt_connector", {"batch": b})
        self.r["rt_connector"].infer({"latent": latent}, o_con)
        k, v = self._view(("tts", b, s))
        lens = self.tts_len[:2 * b]
        o_tts = self._out("rt_tts_decode", {"batch": 2 * b, "kv_len": s})
        self.r["rt_tts_decode"].infer({"embeds": o_con["embeds"].repeat_interleave(2, dim=0), "past_k": k,
                                       "past_v": v, "cache_len": lens}, o_tts)
        _write_entries(self.tts_k[:, :2 * b], o_tts["new_k"], lens)
        _write_entries(self.tts_v[:, :2 * b], o_tts["new_v"], lens)
        act = inp["active"][:b]
        lens.add_(act.repeat_interleave(2).to(torch.int64))
        st = self.dec_state[:b]
        st.copy_(torch.where(act[:, None], o_dec["state_out"], st))
        h = o_tts["hidden"][:, 0]
        for mine, new in ((self.h_pos[:b], h[0::2]), (self.h_neg[:b], h[1::2])):
            mine.copy_(torch.where(act[:, None], new, mine))
        self.audio_out[:b].copy_(o_dec["audio"][:, 0])
        self.latent_out[:b].copy_(latent[:, 0])
        eos = self.eos_out[:b]
        eos.copy_(torch.sigmoid(o_tts["eos_logit"][0::2]))
        stop = book_frame(self.state[:b], act, lens[0::2], eos, self.limit)
        self.out[:b, -1].copy_(stop)

    def _call(self, key) -> None:
        if key[0] == "text":
            self._text(*key[1:])
        else:
            self._speech(*key[1:])

    @torch.inference_mode()
    def _run(self, key) -> None:
        if self.use_graphs and self.capture_error is None and key not in self.graphs:
            self.capture(key)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            self._call(key)

    # -- CUDA graphs ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def capture(self, key) -> None:
        """Capture one step (`("text", b, s_lm, s_tts, t)` or `("speech", b, s)`) into the loop's one
        memory pool. The warm-up runs before it have no row marked, so they change no stream's state."""
        if not self.use_graphs or key in self.graphs or self.capture_error is not None:
            return
        t0 = time.perf_counter()
        marks = {k: self.inputs[k].clone() for k in ("active", "win_n")}
        for k in marks:
            self.inputs[k].zero_()
        cur = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            for _ in range(2):  # torch wants warm-up runs on a side stream before a capture
                self._call(key)
        cur.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                self._call(key)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured runs eagerly
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("Realtime step capture failed, running eagerly: %s", self.capture_error)
        for k, saved in marks.items():
            self.inputs[k].copy_(saved)
        torch.cuda.synchronize(self.device)
        if self.capture_error is None:
            self.graphs[key] = graph
        self.capture_seconds += time.perf_counter() - t0

    def capture_buckets(self, batch_buckets=None, kv_buckets=None, lm_kv=None, text_lengths=(TEXT_WINDOW,)) -> None:
        """Capture the speech step and the text-window steps (`text_lengths` tokens, text-LM bucket
        `lm_kv`, default the first) of the given buckets, largest first (smaller graphs reuse the pool)."""
        lm = lm_kv or self.kv_buckets[0]
        for b in sorted(batch_buckets or self.batch_buckets, reverse=True):
            for s in sorted(kv_buckets or self.kv_buckets, reverse=True):
                self.capture(("speech", b, s))
                for t in text_lengths:
                    self.capture(("text", b, lm, s, t))
