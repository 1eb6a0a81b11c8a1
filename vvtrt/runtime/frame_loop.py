"""The per-frame step of the 1.5B/7B loop on the device, with static buffers, no host sync, and optional
CUDA-graph capture of the whole step.

Rows of the LLM batch are `[positive streams..., negative streams...]`; both rows of a stream get the
same input embedding (the negative branch sees every diffusion step's input, shared doc §3). One step:

1. `lm_decode` on all rows -> hidden, control logits, new K/V (written at each row's length).
2. token = argmax of the positive row's 4 control logits, or forced: `speech_diffusion` on every step
   (`force`, the `frames=N` mode), or the step's entry of a decision script (`script[step]`, parity's
   scripted decisions; -1 = not scripted), picked on the device by a step counter: no host sync.
3. Positive rows always commit their K/V; negative rows only on `speech_diffusion`; `speech_start`
   empties the negative context (transformers masks it to the new token only: the same by RoPE's
   relative positions).
4. Speculatively: sampler(h+, h-, noise) -> latent -> decoder step -> semantic step -> connectors. The
   conv states advance only on `speech_diffusion` and are zeroed on `speech_end` (as the original).
5. Next input = connectors output on diffusion, else `token_embed(token)`.

Teacher forcing (parity only, `teacher=True`): the decoder, semantic encoder and connectors get the
reference latent of the frame instead of the sampler's, so each frame's error is measured one frame at a
time on the reference trajectory (no chaotic feedback); `latent` still holds the sampler's own output.
"""
from __future__ import annotations

import logging
import time

import torch

from vvtrt.components.info import ModelInfo
from vvtrt.runtime.kv_cache import StaticKVCache

log = logging.getLogger(__name__)


class FrameLoop:
    """Owns every per-frame buffer for `streams` streams and runs/captures one step."""

    def __init__(self, runners: dict, info: ModelInfo, streams: int, kv_len: int, dtype, device,
                 cfg_scale: float, noise: torch.Tensor, teacher: bool = False):
        self.r = runners
        self.info = info
        self.n = streams
        self.device = torch.device(device)
        dev, n, rows = self.device, streams, 2 * streams
        self.kv = StaticKVCache(info, rows, kv_len, dtype, dev)
        self.control_ids = torch.tensor(info.control_token_ids, device=dev)
        self.diff_idx = info.control_index("speech_diffusion")
        self.start_idx = info.control_index("speech_start")
        self.end_idx = info.control_index("speech_end")
        # noise[f, s, :] for frame f, stream s (pregenerated; picked on the device by the frame counter)
        self.noise_all = noise.to(dev, torch.float32)
        # teacher_all[f, s, 0, :]: the reference latent of frame f (teacher forcing only)
        self.teacher_all = (torch.zeros(noise.shape[0], n, 1, info.latent_dim, dtype=dtype, device=dev)
                            if teacher else None)
        self.frame_ctr = torch.zeros(1, dtype=torch.int64, device=dev)
        self.force = torch.zeros(n, dtype=torch.bool, device=dev)
        # script[t]: the control index forced at LLM step t (every stream), -1 where the loop decides itself
        self.script = torch.full((kv_len,), -1, dtype=torch.int64, device=dev)
        self.step_ctr = torch.zeros(1, dtype=torch.int64, device=dev)
        self.cfg = torch.tensor([cfg_scale], dtype=torch.float32, device=dev)
        z, h = info.latent_dim, info.hidden
        self.embeds = torch.zeros(rows, 1, h, dtype=dtype, device=dev)
        self.dec_state = torch.zeros(n, info.decoder_state, dtype=dtype, device=dev)
        self.sem_state = torch.zeros(n, info.semantic_state, dtype=dtype, device=dev)
        self.noise = torch.zeros(n, z, dtype=torch.float32, device=dev)
        alloc = lambda name, dims: self.r[name].alloc_outputs(dims)  # noqa: E731
        self.o_dec = alloc("lm_decode", {"batch": rows, "kv_len": kv_len})
        self.o_smp = alloc("diffusion_sampler", {"batch": n})
        self.o_ad = alloc("acoustic_decoder_step", {"batch": n})
        self.o_se = alloc("semantic_encoder_step", {"batch": n})
        self.o_cn = alloc("connectors", {"batch": n})
        self.o_te = alloc("token_embed", {"batch": n})
        self.token = torch.zeros(n, dtype=torch.int64, device=dev)  # control index chosen this step
        self.audio = torch.zeros(n, 1, info.hop, dtype=dtype, device=dev)
        self.latent = torch.zeros(n, 1, z, dtype=dtype, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds = 0.0
        self.capture_error: str | None = None

    # -- the step ---------------------------------------------------------------------------------
    def _step(self) -> None:
        n, kv = self.n, self.kv
        self.r["lm_decode"].infer({"embeds": self.embeds, "past_k": kv.k, "past_v": kv.v,
                                   "cache_len": kv.lengths}, self.o_dec)
        hidden, logits = self.o_dec["hidden"], self.o_dec["logits"]
        tok = torch.where(self.force, torch.full_like(self.token, self.diff_idx), logits[:n].argmax(dim=-1))
        scripted = self.script.index_select(0, self.step_ctr.clamp(max=self.script.shape[0] - 1))
        tok = torch.where(scripted >= 0, scripted, tok)
        self.step_ctr.add_(1)
        self.token.copy_(tok)
        is_diff = tok == self.diff_idx
        self._commit_kv(tok, is_diff)
        frame = self.frame_ctr.clamp(max=self.noise_all.shape[0] - 1)
        self.noise.copy_(self.noise_all.index_select(0, frame)[0])
        self.r["diffusion_sampler"].infer({"cond_pos": hidden[:n, 0], "cond_neg": hidden[n:, 0],
                                           "noise": self.noise, "cfg_scale": self.cfg}, self.o_smp)
        latent = self.o_smp["latent"]
        if self.teacher_all is not None:
            latent = self.teacher_all.index_select(0, frame)[0]
        self.r["acoustic_decoder_step"].infer({"latent": latent, "state": self.dec_state}, self.o_ad)
        audio = self.o_ad["audio"]
        self.r["semantic_encoder_step"].infer({"audio": audio, "state": self.sem_state}, self.o_se)
        self.r["connectors"].infer({"latent": latent, "semantic": self.o_se["semantic"]}, self.o_cn)
        self.r["token_embed"].infer({"token": self.control_ids[tok]}, self.o_te)
        self._advance_states(tok, is_diff)
        e = torch.where(is_diff.view(n, 1, 1), self.o_cn["embeds"], self.o_te["embeds"])
        self.embeds.copy_(torch.cat([e, e], dim=0))
        self.audio.copy_(audio)
        self.latent.copy_(self.o_smp["latent"])
        self.frame_ctr.add_(is_diff.any().to(torch.int64))

    def _commit_kv(self, tok: torch.Tensor, is_diff: torch.Tensor) -> None:
        """Positive rows always keep the step's K/V; negative rows only on speech_diffusion, and
        speech_start empties their context (the next negative step attends to itself only)."""
        n, kv = self.n, self.kv
        kv.write_step(self.o_dec["new_k"], self.o_dec["new_v"])
        neg_len = torch.where(tok == self.start_idx, torch.zeros_like(kv.lengths[n:]),
                              kv.lengths[n:] + is_diff.to(torch.int64))
        kv.lengths.copy_(torch.cat([kv.lengths[:n] + 1, neg_len]))

    def _advance_states(self, tok: torch.Tensor, is_diff: torch.Tensor) -> None:
        """The conv states advance on speech_diffusion and are zeroed on speech_end (as the original)."""
        keep = is_diff.view(self.n, 1)
        reset = (tok == self.end_idx).view(self.n, 1)
        zero = torch.zeros((), dtype=self.dec_state.dtype, device=self.device)
        self.dec_state.copy_(torch.where(reset, zero, torch.where(keep, self.o_ad["state_out"], self.dec_state)))
        self.sem_state.copy_(torch.where(reset, zero, torch.where(keep, self.o_se["state_out"], self.sem_state)))

    def component_calls(self) -> list[tuple[str, dict, dict]]:
        """(component, feed, out) of one step on the static buffers, for per-component timing."""
        n, kv, o = self.n, self.kv, self.o_dec
        return [
            ("lm_decode", {"embeds": self.embeds, "past_k": kv.k, "past_v": kv.v, "cache_len": kv.lengths}, o),
            ("diffusion_sampler", {"cond_pos": o["hidden"][:n, 0], "cond_neg": o["hidden"][n:, 0],
                                   "noise": self.noise, "cfg_scale": self.cfg}, self.o_smp),
            ("acoustic_decoder_step", {"latent": self.o_smp["latent"], "state": self.dec_state}, self.o_ad),
            ("semantic_encoder_step", {"audio": self.o_ad["audio"], "state": self.sem_state}, self.o_se),
            ("connectors", {"latent": self.o_smp["latent"], "semantic": self.o_se["semantic"]}, self.o_cn),
            ("token_embed", {"token": self.control_ids[self.token]}, self.o_te),
        ]

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    # -- CUDA graph -------------------------------------------------------------------------------
    def capture(self) -> None:
        """Capture one whole step as a CUDA graph. Buffers are saved/restored around the warm-up runs."""
        if self.device.type != "cuda":
            return
        t0 = time.perf_counter()
        saved = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up on a side stream, as torch requires before capture
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured runs eagerly
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("whole-frame CUDA graph capture failed, running eagerly: %s", self.capture_error)
            torch.cuda.synchronize(self.device)
            self._restore(saved)
            return
        self._restore(saved)
        self.graph = graph
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0

    def _buffers(self) -> list[torch.Tensor]:
        return [self.kv.k, self.kv.v, self.kv.lengths, self.embeds, self.dec_state, self.sem_state,
                self.frame_ctr, self.step_ctr, self.token, self.audio, self.latent]

    def _snapshot(self) -> list[torch.Tensor]:
        return [b.clone() for b in self._buffers()]

    def _restore(self, saved) -> None:
        for b, s in zip(self._buffers(), saved):
            b.copy_(s)
