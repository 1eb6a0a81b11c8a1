"""The per-frame step of the 1.5B/7B loop for a batch of independent streams ("slots"), with static buffers
and optional CUDA-graph capture of the whole step, one graph per (batch bucket, KV bucket).

Slot s owns LLM rows 2s (positive) and 2s + 1 (negative): `[pos0, neg0, pos1, neg1, ...]`, so batch
bucket b is the first 2b rows, a contiguous prefix of every buffer. Both rows of a slot get the same input
embedding (the negative branch sees every diffusion step's input, as in the original). One step on bucket b:

1. `lm_decode` on the 2b rows (against the first `kv_len` slots of the cache) -> hidden, control logits,
   new K/V (written at each row's length).
2. token = argmax of the slot's positive row's 4 control logits, unless the slot's mode decides it
   (a forced frame budget or a decision script: `vvtrt.runtime.slot_state.decide`).
3. Positive rows always commit their K/V; negative rows only on `speech_diffusion`; `speech_start`
   empties the negative context (transformers masks it to the new token only: the same by RoPE's
   relative positions).
4. Speculatively: sampler(h+, h-, noise, cfg per slot) -> latent -> decoder step -> semantic step ->
   connectors. The conv states advance only on `speech_diffusion` and are zeroed on `speech_end`.
5. Next input = connectors output on diffusion, else `token_embed(token)`.
6. The slot's counters and stop are booked on the device (`vvtrt.runtime.slot_state.advance`), leaving one
   small `status` tensor for the host to read.

A slot whose ACTIVE flag is 0 (free, prefilling, finished, or held because its reader is behind) commits
nothing: its KV lengths, conv states, counters and next input stay as they were, so it resumes exactly
where it stopped. The host writes a slot's state row when it arms it (`arm_slot`) and its ACTIVE flag when
it holds or frees it (`vvtrt.runtime.slots` drives it), so slots are independent: a slot's numbers depend
only on its own rows.

Noise. `noise="host"` (the single-request `Synthesizer`, parity): the host writes each slot's next noise
into `noise` before the step (the original's `torch.Generator` draws). `noise="device"` (the serving
engine): the step draws it itself from the slot's seed and frame counter (`vvtrt.runtime.noise`), so no
host work and no copy per step, and a request's noise depends on its seed alone. Teacher forcing (parity only): the decoder, semantic encoder and connectors of a slot with
`use_teacher` get the host's reference latent instead of the sampler's; `latent` still holds the
sampler's own output.
"""
from __future__ import annotations

import logging
import time

import torch

from vvtrt.components.info import ModelInfo
from vvtrt.runtime.kv_cache import StaticKVCache
from vvtrt.runtime.kv_groups import GroupShapes
from vvtrt.runtime.noise import NOISE_SOURCES, frame_normals
from vvtrt.runtime.slot_state import ACTIVE, COLUMNS, FRAME, SEED, advance, decide

log = logging.getLogger(__name__)

_VIEWED = ("embeds", "dec_state", "sem_state", "noise", "cfg", "state", "script", "status", "teacher",
           "use_teacher", "token", "audio", "latent")
_ROWS2 = ("embeds",)  # two rows per slot


class FrameLoop:
    """Owns every per-frame buffer for `streams` slots and runs/captures one step on the first slots.

    `batch_buckets` (slot counts, ascending, the last = `streams`) and `kv_buckets` (cache lengths, the last
    = `kv_len`) are the shapes a step may run with; `select(b, s)` picks one. With `kv_groups` 2 a step may
    also run as two groups of slots (`vvtrt.runtime.kv_groups`): `select(b, s, first)` then picks `b` slots
    from slot `first`. Attributes named in `_VIEWED` (and `kv`, `n`, the `o_*` outputs) are views of the
    selected shape; `all` holds the full buffers.
    """

    def __init__(self, runners: dict, info: ModelInfo, streams: int, kv_len: int, dtype, device,
                 teacher: bool = False, batch_buckets=None, kv_buckets=None, noise: str = "host",
                 kv_groups: int = 1):
        if noise not in NOISE_SOURCES:
            raise ValueError(f"noise must be one of {NOISE_SOURCES}, got {noise!r}")
        self.device_noise = noise == "device"
        self.r = runners
        self.info = info
        self.slots = streams
        self.kv_len = kv_len
        self.device = dev = torch.device(device)
        self.batch_buckets = tuple(sorted({b for b in (batch_buckets or ()) if b < streams} | {streams}))
        self.kv_buckets = tuple(sorted({s for s in (kv_buckets or ()) if s < kv_len} | {kv_len}))
        self.shapes = GroupShapes.for_pool(self.batch_buckets, self.kv_buckets, kv_groups)
        n, z, h = streams, info.latent_dim, info.hidden
        self.cache = StaticKVCache(info, 2 * n, kv_len, dtype, dev)
        self.control_ids = torch.tensor(info.control_token_ids, device=dev)
        self.diff_idx = info.control_index("speech_diffusion")
        self.start_idx = info.control_index("speech_start")
        self.end_idx = info.control_index("speech_end")
        self.eos_idx = info.control_index("eos")
        self.all = {
            "embeds": torch.zeros(2 * n, 1, h, dtype=dtype, device=dev),
            "dec_state": torch.zeros(n, info.decoder_state, dtype=dtype, device=dev),
            "sem_state": torch.zeros(n, info.semantic_state, dtype=dtype, device=dev),
            "noise": torch.zeros(n, z, dtype=torch.float32, device=dev),  # host-fed per step, or drawn
            "cfg": torch.full((n,), 1.3, dtype=torch.float32, device=dev),  # host-fed, per request
            "state": torch.zeros(n, COLUMNS, dtype=torch.int64, device=dev),  # slot_state columns
            "script": torch.full((n, kv_len), -1, dtype=torch.int8, device=dev),  # decision scripts
            "status": torch.zeros(n, dtype=torch.int64, device=dev),  # token + 8 * stop code, per step
            "teacher": torch.zeros(n, 1, z, dtype=dtype, device=dev) if teacher else None,
            "use_teacher": torch.zeros(n, 1, 1, dtype=torch.bool, device=dev) if teacher else None,
            "token": torch.zeros(n, dtype=torch.int64, device=dev),  # control index chosen this step
            "audio": torch.zeros(n, 1, info.hop, dtype=dtype, device=dev),
            "latent": torch.zeros(n, 1, z, dtype=dtype, device=dev),
        }
        self.teacher_forcing = teacher
        self._outs: dict[int, dict] = {}
        self._views: dict[tuple, StaticKVCache] = {}
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}  # (b, s) from slot 0, (b, s, first) above
        self._pool = None
        self.capture_seconds = 0.0
        self.capture_error: str | None = None
        self.select(streams, kv_len)

    # -- buckets ----------------------------------------------------------------------------------
    def bucket_for(self, slots_needed: int, kv_needed: int) -> tuple[int, int]:
        """The smallest (batch, KV) bucket holding `slots_needed` slots and `kv_needed` cache slots."""
        b = next(x for x in self.batch_buckets if x >= slots_needed)
        s = next((x for x in self.kv_buckets if x >= kv_needed), self.kv_len)
        return b, s

    def select(self, b: int, s: int, first: int = 0) -> None:
        """Point the step's views at `b` slots from slot `first` (default: the first `b`) and `s` cache slots."""
        if first < 0 or first + b > self.slots:
            raise ValueError(f"{b} slots from slot {first} exceed the loop's {self.slots}")
        self.key = key = (b, s) if first == 0 else (b, s, first)
        self.n = b
        if key not in self._views:
            self._views[key] = self.cache.view(2 * b, s, 2 * first)
        self.kv = self._views[key]
        for name in _VIEWED:
            full = self.all[name]
            two = 2 if name in _ROWS2 else 1
            setattr(self, name, None if full is None else full[two * first:two * (first + b)])
        if b not in self._outs:
            alloc = lambda name, dims: self.r[name].alloc_outputs(dims)  # noqa: E731
            self._outs[b] = {"dec": alloc("lm_decode", {"batch": 2 * b, "kv_len": s}),
                             "smp": alloc("diffusion_sampler", {"batch": b}),
                             "ad": alloc("acoustic_decoder_step", {"batch": b}),
                             "se": alloc("semantic_encoder_step", {"batch": b}),
                             "cn": alloc("connectors", {"batch": b}), "te": alloc("token_embed", {"batch": b})}
        o = self._outs[b]
        self.o_dec, self.o_smp, self.o_ad, self.o_se, self.o_cn, self.o_te = (
            o["dec"], o["smp"], o["ad"], o["se"], o["cn"], o["te"])

    # -- slots ------------------------------------------------------------------------------------
    def reset_slot(self, s: int, k, v, last: torch.Tensor, cfg_scale: float) -> None:
        """Arm slot `s` for a new request: a clean cache with the prompt body's K/V (`k, v [L,1,Hkv,T,D]`,
        or None for an empty body) in the positive row, zero conv states, `last` (the prompt's final
        speech_start embedding `[1, 1, H]`) as both rows' next input, and its guidance scale."""
        self.cache.clear_rows(2 * s, 2)
        if k is not None and k.shape[3] > 0:
            self.cache.write_prefix(2 * s, k, v)
        self.all["embeds"][2 * s:2 * s + 2].copy_(last.reshape(1, 1, -1).expand(2, 1, last.shape[-1]))
        self.all["dec_state"][s].zero_()
        self.all["sem_state"][s].zero_()
        self.all["cfg"][s] = float(cfg_scale)

    def arm_slot(self, s: int, row: torch.Tensor, script=None) -> None:
        """Write slot `s`'s state row (`slot_state.slot_row`) and decision script (control indices, or None)."""
        if script is not None:
            if len(script) > self.kv_len:
                raise ValueError(f"a decision script of {len(script)} steps exceeds the loop's {self.kv_len}")
            line = torch.full((self.kv_len,), -1, dtype=torch.int8)
            line[:len(script)] = torch.tensor(script, dtype=torch.int8)
            self.all["script"][s].copy_(line)
        self.all["state"][s].copy_(row)

    def set_active(self, s: int, active: bool) -> None:
        """Let slot `s` run (True) or freeze it (False: held, free or finished) from the next step on."""
        self.all["state"][s, ACTIVE] = int(active)

    # -- the step ---------------------------------------------------------------------------------
    def _step(self) -> None:
        n, kv = self.n, self.kv
        act = self.state[:, ACTIVE] > 0
        if self.device_noise:
            self.noise.copy_(frame_normals(self.state[:, SEED], self.state[:, FRAME], self.info.latent_dim))
        self.r["lm_decode"].infer({"embeds": self.embeds, "past_k": kv.k, "past_v": kv.v,
                                   "cache_len": kv.lengths}, self.o_dec)
        hidden, logits = self.o_dec["hidden"], self.o_dec["logits"]
        forced = decide(self.state, self.script, self.diff_idx)
        tok = torch.where(forced >= 0, forced, logits[0::2].argmax(dim=-1))
        self.token.copy_(tok)
        is_diff = tok == self.diff_idx
        self._commit_kv(tok, is_diff, act)
        self.r["diffusion_sampler"].infer({"cond_pos": hidden[0::2, 0].contiguous(),
                                           "cond_neg": hidden[1::2, 0].contiguous(),
                                           "noise": self.noise, "cfg_scale": self.cfg}, self.o_smp)
        latent = self.o_smp["latent"]
        if self.teacher is not None:
            latent = torch.where(self.use_teacher, self.teacher, latent)
        self.r["acoustic_decoder_step"].infer({"latent": latent, "state": self.dec_state}, self.o_ad)
        audio = self.o_ad["audio"]
        self.r["semantic_encoder_step"].infer({"audio": audio, "state": self.sem_state}, self.o_se)
        self.r["connectors"].infer({"latent": latent, "semantic": self.o_se["semantic"]}, self.o_cn)
        self.r["token_embed"].infer({"token": self.control_ids[tok]}, self.o_te)
        self._advance_states(tok, is_diff, act)
        e = torch.where(is_diff.view(n, 1, 1), self.o_cn["embeds"], self.o_te["embeds"])
        act2 = act.repeat_interleave(2).view(2 * n, 1, 1)
        self.embeds.copy_(torch.where(act2, e.repeat_interleave(2, dim=0), self.embeds))  # [pos0, neg0, ...]
        self.audio.copy_(audio)
        self.latent.copy_(self.o_smp["latent"])
        advance(self.state, tok, self.status, self.diff_idx, self.eos_idx)

    def _commit_kv(self, tok: torch.Tensor, is_diff: torch.Tensor, act: torch.Tensor) -> None:
        """Positive rows always keep the step's K/V; negative rows only on speech_diffusion, and
        speech_start empties their context (the next negative step attends to itself only). Inactive slots
        keep their lengths (the entry written at their length is overwritten when they next commit)."""
        kv = self.kv
        kv.write_step(self.o_dec["new_k"], self.o_dec["new_v"])
        lens = kv.lengths.view(self.n, 2)
        neg = torch.where(tok == self.start_idx, torch.zeros_like(lens[:, 1]), lens[:, 1] + is_diff.to(torch.int64))
        new = torch.stack([lens[:, 0] + 1, neg], dim=1)
        kv.lengths.copy_(torch.where(act.view(self.n, 1), new, lens).view(-1))

    def _advance_states(self, tok: torch.Tensor, is_diff: torch.Tensor, act: torch.Tensor) -> None:
        """The conv states advance on speech_diffusion and are zeroed on speech_end (as the original)."""
        act = act.view(self.n, 1)
        keep = is_diff.view(self.n, 1) & act
        reset = (tok == self.end_idx).view(self.n, 1) & act
        zero = torch.zeros((), dtype=self.dec_state.dtype, device=self.device)
        self.dec_state.copy_(torch.where(reset, zero, torch.where(keep, self.o_ad["state_out"], self.dec_state)))
        self.sem_state.copy_(torch.where(reset, zero, torch.where(keep, self.o_se["state_out"], self.sem_state)))

    def component_calls(self) -> list[tuple[str, dict, dict]]:
        """(component, feed, out) of one step on the selected bucket's buffers, for per-component timing."""
        kv, o = self.kv, self.o_dec
        return [
            ("lm_decode", {"embeds": self.embeds, "past_k": kv.k, "past_v": kv.v, "cache_len": kv.lengths}, o),
            ("diffusion_sampler", {"cond_pos": o["hidden"][0::2, 0].contiguous(),
                                   "cond_neg": o["hidden"][1::2, 0].contiguous(),
                                   "noise": self.noise, "cfg_scale": self.cfg}, self.o_smp),
            ("acoustic_decoder_step", {"latent": self.o_smp["latent"], "state": self.dec_state}, self.o_ad),
            ("semantic_encoder_step", {"audio": self.o_ad["audio"], "state": self.sem_state}, self.o_se),
            ("connectors", {"latent": self.o_smp["latent"], "semantic": self.o_se["semantic"]}, self.o_cn),
            ("token_embed", {"token": self.control_ids[self.token]}, self.o_te),
        ]

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The selected bucket's captured graph (None: it runs eagerly)."""
        return self.graphs.get(self.key)

    def step(self) -> None:
        graph = self.graphs.get(self.key)
        if graph is not None:
            graph.replay()
        else:
            self._step()

    # -- CUDA graphs ------------------------------------------------------------------------------
    def capture(self, snapshot: bool = True) -> None:
        """Capture one whole step of the selected bucket as a CUDA graph, into the loop's one memory pool.
        With `snapshot`, the selected bucket's buffers are saved/restored around the warm-up runs (the
        serving engine captures before any request, then resets every slot, and skips the copy)."""
        if self.device.type != "cuda" or self.capture_error is not None or self.key in self.graphs:
            return
        t0 = time.perf_counter()
        saved = self._snapshot() if snapshot else None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up on a side stream, as torch requires before capture
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        if saved is not None:
            self._restore(saved)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                self._step()
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured runs eagerly
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("whole-frame CUDA graph capture failed, running eagerly: %s", self.capture_error)
        torch.cuda.synchronize(self.device)
        if saved is not None:
            self._restore(saved)
        if self.capture_error is None:
            self.graphs[self.key] = graph
        self.capture_seconds += time.perf_counter() - t0

    def capture_all(self) -> None:
        """Capture every shape a step may run (`shapes.all()`: the (batch, KV) buckets, then the groups'),
        largest first so the smaller graphs reuse its pool memory."""
        for shape in self.shapes.all():
            self.select(*shape)
            self.capture(snapshot=False)

    def warm_all(self) -> None:
        """Run one step of every shape, largest first, so compiled runners compile each shape now rather
        than at a request's first step (where graphs are captured, the capture did this)."""
        for shape in self.shapes.all():
            self.select(*shape)
            self._step()

    def _buffers(self) -> list[torch.Tensor]:
        return [self.kv.k, self.kv.v, self.kv.lengths, self.embeds, self.dec_state, self.sem_state, self.token,
                self.audio, self.latent, self.noise, self.state, self.status]

    def _snapshot(self) -> list[torch.Tensor]:
        return [b.clone() for b in self._buffers()]

    def _restore(self, saved) -> None:
        for b, s in zip(self._buffers(), saved):
            b.copy_(s)
