"""`Synthesizer`: script + voices -> 24 kHz audio, streamed one 3200-sample chunk per frame.

    synth = Synthesizer.from_workdir("work", backend="onnxruntime", device="cuda",
                                     fallback={"lm_decode": "torch"})
    result = synth.synthesize("Speaker 1: Hello there.", voices=["alice.wav"])
    for chunk in synth.stream(script, voices): ...
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from vvtrt.errors import InputError
from vvtrt.precision import Precision
from vvtrt.runtime.backends import ModelCache, load_runners
from vvtrt.runtime.frame_loop import FrameLoop
from vvtrt.runtime.kv_cache import pick_bucket
from vvtrt.runtime.prefill import Prefill
from vvtrt.workdir import Workdir

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono at 24 kHz
    frames: int
    tokens: list[str]  # control token chosen at each LLM step
    forced: bool  # True when --frames forced the speech_diffusion decision
    stop_reason: str
    prompt_tokens: int
    ttfa_s: float  # prompt submitted -> first audio chunk on the host
    total_s: float
    frame_s: list[float] = field(default_factory=list)  # wall time of each LLM step (incl. the host sync)
    latents: list[np.ndarray] = field(default_factory=list)

    streams: int = 1  # > 1: `audio` is [streams, samples] (batched concurrent streams, forced frames)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio per stream."""
        return self.audio.shape[-1] / SAMPLE_RATE

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_seconds if self.audio_seconds else float("inf")


class Synthesizer:
    """Runs the whole VibeVoice 1.5B/7B loop on any mix of backends."""

    loop_class = FrameLoop  # the per-frame step (parity tests swap in deliberately wrong ones)

    def __init__(self, wd: Workdir, runners: dict, precision: Precision, device, cuda_graph="auto",
                 prefill_graph=None):
        from vvtrt.model.text_tokenizer import load_text_tokenizer

        self.wd = wd
        self.info = wd.info()
        self.options = wd.options()
        self.runners = runners
        self.precision = precision
        self.device = torch.device(device)
        if cuda_graph == "auto":  # whole-frame capture where the backends are known to be capturable
            cuda_graph = all(r.backend in ("torch", "tensorrt") for r in runners.values())
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.tokenizer = load_text_tokenizer(wd.source())
        self._loops: dict[tuple[int, bool], FrameLoop] = {}
        # the prefill follows the frame graph unless told otherwise (tests compare eager and graphed frames
        # on the same prefill)
        prefill_graph = self.cuda_graph if prefill_graph is None else bool(prefill_graph)
        self.prefill = Prefill(runners["lm_prefill"], self.options.max_prompt, prefill_graph)
        self.capture_seconds = 0.0

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, fallback=None,
                     cuda_graph="auto", ort_cuda_graph: bool = False, models: ModelCache | None = None,
                     compile: bool | str = False, prefill_graph=None):
        wd = Workdir.open(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision is None:
            precision = Precision.BF16 if device.type == "cuda" else Precision.FP32
        precision = Precision.parse(precision)
        runners = load_runners(wd, backend, precision, device, fallback, models=models,
                               ort_cuda_graph=ort_cuda_graph, compile=compile)
        return cls(wd, runners, precision, device, cuda_graph, prefill_graph)

    # -- prompt and voices ------------------------------------------------------------------------
    def _voice_embeds(self, voices, seed: int) -> list[torch.Tensor]:
        from vvtrt.runtime.audio_io import prepare_voice, read_voice

        out = []
        gen = torch.Generator().manual_seed(seed + 7919)
        for v in voices:
            wav = read_voice(v) if isinstance(v, (str, bytes)) or hasattr(v, "__fspath__") else np.asarray(v)
            padded, _ = prepare_voice(wav)
            frames = len(padded) // self.info.hop
            if frames > self.options.max_voice_frames:
                raise InputError(f"voice prompt of {frames * self.info.hop / SAMPLE_RATE:.1f} s is longer than "
                                 f"the exported limit of {self.options.max_voice_frames * self.info.hop / SAMPLE_RATE:.1f} s;"
                                 " trim it or re-export with a larger max_voice_frames")
            feed = {"wav": torch.from_numpy(padded).view(1, 1, -1).to(self.device, self.precision.torch_dtype),
                    "noise_std": (torch.randn(1, generator=gen) * self.info.vae_std).to(self.device),
                    "noise": torch.randn(1, frames, self.info.latent_dim, generator=gen).to(self.device)}
            out.append(self.runners["acoustic_encoder"].infer(feed)["embeds"][0])
        return out

    def prompt_embeds(self, script, voices=None, seed: int = 0):
        """(prompt ids, embeds [1, L0, H]) with voice embeddings scattered into their slots."""
        from vvtrt.runtime.prompt import build_prompt
        from vvtrt.runtime.script import Script, parse_script

        script = script if isinstance(script, Script) else parse_script(script)
        voices = list(voices or [])
        if voices and len(voices) != len(script.speakers):
            raise InputError(f"the script has {len(script.speakers)} speaker(s) but {len(voices)} voice(s) "
                             "were given: pass one --voice per speaker, in order of first appearance")
        venc = self._voice_embeds(voices, seed) if voices else []
        prompt = build_prompt(script, self.tokenizer, self.info, [v.shape[0] for v in venc] or None)
        if len(prompt.ids) > self.options.max_prompt:
            raise InputError(f"script too long: {len(prompt.ids)} prompt tokens exceed the exported limit of "
                             f"{self.options.max_prompt}; shorten it or re-export with a larger max_prompt")
        ids = torch.tensor(prompt.ids, dtype=torch.int64, device=self.device)
        emb = self.runners["token_embed"].infer({"token": ids})["embeds"][:, 0].unsqueeze(0).clone()
        for (start, count), v in zip(prompt.voice_slots, venc):
            emb[0, start:start + count] = v[:count].to(emb.dtype)
        return prompt.ids, emb

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self, kv_len: int, teacher: bool = False, streams: int = 1) -> FrameLoop:
        key = (kv_len, teacher, streams)
        if key not in self._loops:
            noise = torch.zeros(kv_len, streams, self.info.latent_dim)
            self._loops[key] = self.loop_class(self.runners, self.info, streams, kv_len, self.precision.torch_dtype,
                                         self.device, 1.3, noise, teacher=teacher)
        return self._loops[key]

    def stream(self, script, voices=None, *, frames: int | None = None, max_frames: int | None = None,
               cfg_scale: float = 1.3, seed: int = 0, result: SynthesisResult | None = None,
               keep_latents: bool = False) -> Iterator[np.ndarray]:
        """Yield one 3200-sample float32 chunk per generated frame, as soon as it exists.

        `frames=N` forces the speech_diffusion decision for N frames (random-weight models never choose
        to speak); otherwise the model's own decisions run until eos, the length limit or `max_frames`.
        Pass a `SynthesisResult` to collect timings and tokens.
        """
        t_start = time.perf_counter()
        ids, emb = self.prompt_embeds(script, voices, seed)
        yield from self.generate(ids, emb, frames=frames, max_frames=max_frames, cfg_scale=cfg_scale,
                                 seed=seed, result=result, t_start=t_start, keep_latents=keep_latents)

    def generate(self, ids, emb, *, frames=None, max_frames=None, cfg_scale=1.3, seed=0, result=None,
                 t_start=None, keep_latents: bool = False, teacher_latents=None,
                 streams: int = 1, decisions=None) -> Iterator[np.ndarray]:
        """The loop from prompt ids and embeddings `[1, L0, H]` (ending with speech_start).

        `keep_latents` also copies each frame's latent to the host (parity); off by default to keep the
        audio hand-out the only host sync per frame. `teacher_latents` (parity: one reference latent
        `[64]` per diffusion frame, at least as many as the run makes) feeds the reference latent, not the
        sampler's, to the decoder / semantic encoder / connectors of each frame.

        `decisions` (parity: control-token names, one per LLM step, e.g. 5 x "speech_diffusion",
        "speech_end", "speech_start", 9 x "speech_diffusion", "eos") forces each step's decision from a
        script on the device (no host sync; CUDA-graph capture keeps working). The run stops at the script's
        eos (its last entry, if any) or where the script ends.

        `streams=N` (with `frames`) runs N concurrent streams of this prompt as rows of one batched frame
        step, stream s with the noise of seed `seed + s`; each chunk is then `[N, 3200]`. This is what a
        server batching N requests does per frame; the concurrency benchmark uses it."""
        script = self._check_generate(ids, frames, streams, teacher_latents, decisions)
        t_start = t_start or time.perf_counter()
        n_prompt = len(ids)
        if script is not None:
            limit = script.count(self.info.control_index("speech_diffusion"))  # the script's diffusion frames
        else:  # the original caps generation at the prompt length (<= 2x prompt in total)
            limit = frames if frames is not None else (max_frames or n_prompt)
        kv_len = pick_bucket(self.options.kv_buckets, n_prompt + (len(script) if script else limit) + 1)
        loop = self._loop(kv_len, teacher=teacher_latents is not None, streams=streams)
        if teacher_latents is not None:
            self._set_teacher(loop, teacher_latents, limit)
        self._reset(loop, emb, cfg_scale, seed, forced=frames is not None, n_noise=limit, script=script)
        res = result if result is not None else SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0, 0)
        res.forced, res.prompt_tokens, res.streams = frames is not None, n_prompt, streams
        chunks: list[np.ndarray] = []
        max_steps = len(script) if script is not None else kv_len - n_prompt - 1
        res.stop_reason = "length limit"
        for chunk in self._run(loop, res, max_steps, limit, script is not None, frames is not None, keep_latents,
                               t_start):
            chunks.append(chunk)
            yield chunk
        res.frames = len(chunks)
        empty = np.zeros((0,) if streams == 1 else (streams, 0), np.float32)
        res.audio = np.concatenate(chunks, axis=-1) if chunks else empty
        res.total_s = time.perf_counter() - t_start

    def _run(self, loop: FrameLoop, res: SynthesisResult, max_steps: int, limit: int, scripted: bool,
             forced: bool, keep_latents: bool, t_start: float) -> Iterator[np.ndarray]:
        """Step the loop, yielding each diffusion frame's chunk; sets `res.stop_reason`."""
        names = self.info.control_token_names
        produced = steps = 0
        while steps < max_steps:
            t0 = time.perf_counter()
            loop.step()
            tok = names[int(loop.token[0])]  # the one host sync per frame: hand out the audio
            steps += 1
            res.tokens.append(tok)
            if tok == "speech_diffusion":
                rows = 0 if loop.n == 1 else slice(None)  # a chunk is [3200], or [N, 3200] for N streams
                chunk = loop.audio[rows, 0].float().cpu().numpy().copy()  # the buffer is reused
                if keep_latents:
                    res.latents.append(loop.latent[rows, 0].float().cpu().numpy().copy())
                produced += 1
                res.frame_s.append(time.perf_counter() - t0)
                if produced == 1:
                    res.ttfa_s = time.perf_counter() - t_start
                yield chunk
                if produced >= limit and not scripted:
                    res.stop_reason = "frame budget" if forced else "max frames"
                    return
            elif tok == "eos":
                res.stop_reason = "eos"
                return
            if not scripted and steps >= limit * 4 + 16 and produced == 0:
                res.stop_reason = "no speech (random weights never choose to speak: pass --frames N)"
                return
        if scripted:
            res.stop_reason = "end of decision script"

    def _check_generate(self, ids, frames, streams, teacher_latents, decisions) -> list[int] | None:
        """Refuse contradictory options; return the decision script as control indices (None: no script)."""
        if frames is not None and frames < 1:
            raise InputError(f"--frames must be >= 1, got {frames}")
        if streams < 1:
            raise InputError(f"--streams must be >= 1, got {streams}")
        if streams > 1 and (frames is None or teacher_latents is not None):
            raise InputError("--streams > 1 needs a frame budget (--frames N) and no teacher forcing: "
                             "concurrent streams are batched with forced speech_diffusion decisions")
        if ids[-1] != self.info.audio_bos_token_id:
            raise InputError("the prompt must end with the speech_start token")
        if decisions is None:
            return None
        decisions = list(decisions)
        names = self.info.control_token_names
        if frames is not None:
            raise InputError("a decision script and a forced frame count exclude each other: give one")
        if not decisions or any(t not in names for t in decisions):
            raise InputError(f"a decision script is a non-empty list of {', '.join(names)}; got {decisions!r}")
        if "eos" in decisions[:-1]:
            raise InputError("eos ends the run: it can only be the last decision of a script")
        return [names.index(t) for t in decisions]

    @staticmethod
    def _set_teacher(loop: FrameLoop, teacher_latents, limit: int) -> None:
        if len(teacher_latents) < limit:
            raise InputError(f"teacher forcing needs {limit} reference latents, got {len(teacher_latents)}")
        ref = torch.stack([torch.as_tensor(np.asarray(t)).reshape(1, -1) for t in teacher_latents[:limit]])
        loop.teacher_all.zero_()
        loop.teacher_all[:limit, 0].copy_(ref.to(loop.teacher_all.device, loop.teacher_all.dtype))

    def synthesize(self, script, voices=None, **kw) -> SynthesisResult:
        res = SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0.0, 0.0)
        for _ in self.stream(script, voices, result=res, **kw):
            pass
        return res

    def _reset(self, loop: FrameLoop, emb: torch.Tensor, cfg_scale: float, seed: int, forced: bool,
               n_noise: int, script: list[int] | None = None) -> None:
        """Prefill the prompt (all but its final speech_start) and arm the loop for a new utterance."""
        loop.kv.reset()
        loop.dec_state.zero_()
        loop.sem_state.zero_()
        loop.frame_ctr.zero_()
        loop.step_ctr.zero_()
        loop.cfg.fill_(cfg_scale)
        loop.force.fill_(forced)
        loop.script.fill_(-1)
        if script:
            loop.script[:len(script)].copy_(torch.tensor(script, dtype=torch.int64))
        # transformers draws randn(2, 64) on the CPU per diffusion frame and uses row 0; stream s: seed + s
        n_noise = min(n_noise, loop.noise_all.shape[0])
        loop.noise_all.zero_()
        for s in range(loop.n):
            gen = torch.Generator().manual_seed(seed + s)
            noise = torch.cat([torch.randn(2, self.info.latent_dim, generator=gen)[:1] for _ in range(n_noise)])
            loop.noise_all[:n_noise, s].copy_(noise.to(loop.noise_all.device))
        body = emb[:, :-1]
        if body.shape[1] > 0:
            seconds = self.prefill.capture_seconds
            k, v = self.prefill(body)
            for s in range(loop.n):  # the same prompt for every stream: one prefill, written to each row
                loop.kv.write_prefix(s, k, v)
            self.capture_seconds += self.prefill.capture_seconds - seconds
        last = emb[:, -1:].expand(2 * loop.n, 1, emb.shape[-1])  # speech_start for every row
        loop.embeds.copy_(last)
        if self.cuda_graph and loop.graph is None and loop.capture_error is None:
            loop.capture()
            self.capture_seconds += loop.capture_seconds
