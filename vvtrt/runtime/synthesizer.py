"""`Synthesizer`: script + voices -> 24 kHz audio, streamed one 3200-sample chunk per frame.

    synth = Synthesizer.from_workdir("work", backend="onnxruntime", device="cuda",
                                     fallback={"lm_decode": "torch"})
    result = synth.synthesize("Speaker 1: Hello there.", voices=["alice.wav"])
    for chunk in synth.stream(script, voices): ...

One request (or `streams` lockstep copies of one) at a time, on the same batched frame step and slot
driver as the serving engine (`vvtrt.runtime.slots`, `vvtrt.serving.engine`): one loop, not two.
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
from vvtrt.runtime.prefill import make_prefill
from vvtrt.runtime.slots import SlotRun, SlotStepper
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


@dataclass(frozen=True)
class PromptPlan:
    """A prompt before any device work: its ids, where each voice goes, and each voice as a padded clip
    (float32 numpy, for the acoustic encoder) or already-encoded embeddings (a tensor `[frames, H]`)."""
    ids: tuple[int, ...]
    voice_slots: tuple[tuple[int, int], ...]
    voices: tuple


class Synthesizer:
    """Runs the whole VibeVoice 1.5B/7B loop on any mix of backends."""

    loop_class = FrameLoop  # the per-frame step (parity tests swap in deliberately wrong ones)

    def __init__(self, wd: Workdir, runners: dict, precision: Precision, device, cuda_graph="auto",
                 prefill_graph=None):
        from vvtrt.model.text_tokenizer import load_text_tokenizer

        self.wd = wd
        self._generating = False  # one generator at a time: they share the loops
        self.info = wd.info()
        self.options = wd.options()
        self.runners = runners
        self.precision = precision
        self.device = torch.device(device)
        if cuda_graph == "auto":  # whole-frame capture where the backends are known to be capturable
            cuda_graph = all(r.backend in ("torch", "tensorrt") for r in runners.values())
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.tokenizer = load_text_tokenizer(wd.source())
        self._loops: dict[tuple[int, bool, int], FrameLoop] = {}
        # the prefill follows the frame graph unless told otherwise (tests compare eager and graphed frames
        # on the same prefill)
        prefill_graph = self.cuda_graph if prefill_graph is None else bool(prefill_graph)
        self.prefill = make_prefill(runners, self.options, prefill_graph)
        self.capture_seconds = 0.0

    @classmethod
    def from_workdir(cls, path, backend: str = "torch", device=None, precision=None, fallback=None,
                     cuda_graph="auto", ort_cuda_graph: bool = False, models: ModelCache | None = None,
                     compile: bool | str = False, prefill_graph=None, dynamic_axes: tuple[str, ...] = (),
                     compile_components: tuple[str, ...] | None = None):
        wd = Workdir.open(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision is None:
            precision = Precision.BF16 if device.type == "cuda" else Precision.FP32
        precision = Precision.parse(precision)
        runners = load_runners(wd, backend, precision, device, fallback, models=models,
                               ort_cuda_graph=ort_cuda_graph, compile=compile, dynamic_axes=dynamic_axes,
                               compile_components=compile_components)
        return cls(wd, runners, precision, device, cuda_graph, prefill_graph)

    # -- prompt and voices ------------------------------------------------------------------------
    def _voice_clip(self, v):
        """A voice as the encoder takes it (the normalised clip at its own length, float32), or its
        embeddings if already encoded; and its number of latent frames, `ceil(samples / hop)`."""
        from vvtrt.runtime.audio_io import normalize_voice, read_voice
        from vvtrt.runtime.prompt import frames_for_samples

        if hasattr(v, "embeds") and hasattr(v, "sha256"):  # serving.api.VoiceEmbedding: encoded already
            frames = v.embeds.shape[0]
        else:
            wav = read_voice(v) if isinstance(v, (str, bytes)) or hasattr(v, "__fspath__") else np.asarray(v)
            v = normalize_voice(wav)
            frames = frames_for_samples(len(v), self.info.hop)
        if frames > self.options.max_voice_frames:
            raise InputError(f"voice prompt of {frames * self.info.hop / SAMPLE_RATE:.1f} s is longer than "
                             f"the exported limit of {self.options.max_voice_frames * self.info.hop / SAMPLE_RATE:.1f} s;"
                             " trim it or re-export with a larger max_voice_frames")
        return v, frames

    def encode_voice(self, clip: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        """One normalised clip, at its own length (any sample count, as Microsoft's original encodes it),
        through the acoustic encoder -> embeddings `[ceil(samples / hop), H]` (a device call)."""
        from vvtrt.runtime.prompt import frames_for_samples

        frames = frames_for_samples(len(clip), self.info.hop)
        feed = {"wav": torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)).view(1, 1, -1)
                .to(self.device, self.precision.torch_dtype),
                "noise_std": (torch.randn(1, generator=gen) * self.info.vae_std).to(self.device),
                "noise": torch.randn(1, frames, self.info.latent_dim, generator=gen).to(self.device)}
        return self.runners["acoustic_encoder"].infer(feed)["embeds"][0]

    def plan_prompt(self, script, voices=None) -> PromptPlan:
        """Parse the script, read and check the voices, build the prompt ids: host work only, every bad
        input an `InputError` (a server calls this in the request's thread, before queueing)."""
        from vvtrt.runtime.prompt import build_prompt
        from vvtrt.runtime.script import Script, parse_script

        script = script if isinstance(script, Script) else parse_script(script)
        voices = list(voices or [])
        if voices and len(voices) != len(script.speakers):
            raise InputError(f"the script has {len(script.speakers)} speaker(s) but {len(voices)} voice(s) "
                             "were given: pass one --voice per speaker, in order of first appearance")
        clips = [self._voice_clip(v) for v in voices]
        prompt = build_prompt(script, self.tokenizer, self.info, [f for _, f in clips] or None)
        if len(prompt.ids) > self.options.max_prompt:
            raise InputError(f"script too long: {len(prompt.ids)} prompt tokens exceed the exported limit of "
                             f"{self.options.max_prompt}; shorten it or re-export with a larger max_prompt")
        return PromptPlan(tuple(prompt.ids), tuple(prompt.voice_slots), tuple(c for c, _ in clips))

    def embed_prompt(self, plan: PromptPlan, seed: int = 0) -> torch.Tensor:
        """The prompt's embeddings `[1, L0, H]`, voices encoded (noise from `seed + 7919`) and scattered."""
        gen = torch.Generator().manual_seed(seed + 7919)
        venc = [v.embeds if hasattr(v, "embeds") else self.encode_voice(v, gen) for v in plan.voices]
        ids = torch.tensor(plan.ids, dtype=torch.int64, device=self.device)
        emb = self.runners["token_embed"].infer({"token": ids})["embeds"][:, 0].unsqueeze(0).clone()
        for (start, count), v in zip(plan.voice_slots, venc):
            emb[0, start:start + count] = v[:count].to(emb.dtype)
        return emb

    def prompt_embeds(self, script, voices=None, seed: int = 0):
        """(prompt ids, embeds [1, L0, H]) with voice embeddings scattered into their slots."""
        plan = self.plan_prompt(script, voices)
        return plan.ids, self.embed_prompt(plan, seed)

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self, kv_len: int, teacher: bool = False, streams: int = 1) -> FrameLoop:
        key = (kv_len, teacher, streams)
        if key not in self._loops:
            self._loops[key] = self.loop_class(self.runners, self.info, streams, kv_len, self.precision.torch_dtype,
                                               self.device, teacher=teacher)
        return self._loops[key]

    def frame_limit(self, n_prompt: int, frames, max_frames, script=None) -> int:
        """Frames a run may make: the forced count, `max_frames`, the script's, or the original's cap."""
        if script is not None:
            limit = script.count(self.info.control_index("speech_diffusion"))  # the script's diffusion frames
        else:  # Microsoft's original: at most 2 x the prompt length (max_length_times=2), within the KV buckets
            cap = min(2 * n_prompt, self.options.kv_buckets[-1] - n_prompt - 1)
            limit = frames if frames is not None else (max_frames or max(1, cap))
        return limit

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
        script (fed to the step by the host; CUDA-graph capture keeps working). The run stops at the
        script's eos (its last entry, if any) or where the script ends.

        `streams=N` (with `frames`) runs N concurrent streams of this prompt in N slots of one batched
        frame step, stream s with the noise of seed `seed + s`; each chunk is then `[N, 3200]`. The
        concurrency benchmark uses it; the serving engine runs independent requests the same way."""
        script = self._check_generate(ids, frames, streams, teacher_latents, decisions)
        if self._generating:
            raise InputError("this Synthesizer is already generating (its loops hold one run's state): finish or "
                             "close the other generator first, or serve concurrent requests with vvtrt.serving.Engine")
        self._generating = True
        try:
            yield from self._generate(ids, emb, script, frames, max_frames, cfg_scale, seed, result, t_start,
                                      keep_latents, teacher_latents, streams)
        finally:
            self._generating = False

    def _generate(self, ids, emb, script, frames, max_frames, cfg_scale, seed, result, t_start, keep_latents,
                  teacher_latents, streams) -> Iterator[np.ndarray]:
        t_start = t_start or time.perf_counter()
        n_prompt = len(ids)
        limit = self.frame_limit(n_prompt, frames, max_frames, script)
        kv_len = pick_bucket(self.options.kv_buckets, n_prompt + (len(script) if script else limit) + 1)
        loop = self._loop(kv_len, teacher=teacher_latents is not None, streams=streams)
        if teacher_latents is not None and len(teacher_latents) < limit:
            raise InputError(f"teacher forcing needs {limit} reference latents, got {len(teacher_latents)}")
        res = result if result is not None else SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0, 0)
        res.forced, res.prompt_tokens, res.streams = frames is not None, n_prompt, streams
        max_steps = len(script) if script is not None else kv_len - n_prompt - 1
        stepper = SlotStepper(loop, self.prefill, events="all")  # every step's token goes to res.tokens
        runs = [SlotRun(n_prompt, limit, max_steps, seed + s, cfg_scale, forced=frames is not None, script=script,
                        teacher=list(teacher_latents[:limit]) if teacher_latents is not None else None,
                        keep_latents=keep_latents) for s in range(streams)]
        self._start(stepper, runs, emb)
        chunks: list[np.ndarray] = []
        res.stop_reason = "length limit"
        for chunk in self._run(stepper, res, keep_latents, t_start):
            chunks.append(chunk)
            yield chunk
        res.frames = len(chunks)
        empty = np.zeros((0,) if streams == 1 else (streams, 0), np.float32)
        res.audio = np.concatenate(chunks, axis=-1) if chunks else empty
        res.total_s = time.perf_counter() - t_start

    def _start(self, stepper: SlotStepper, runs: list[SlotRun], emb: torch.Tensor) -> None:
        """Prefill once, arm one slot per run, capture the frame graph on first use."""
        loop = stepper.loop
        body = emb[:, :-1]
        seconds = self.prefill.capture_seconds
        kv = self.prefill(body) if body.shape[1] > 0 else (None, None)
        self.capture_seconds += self.prefill.capture_seconds - seconds
        for s, run in enumerate(runs):  # the same prompt for every stream: one prefill, written to each slot
            stepper.join(s, run, emb, kv=kv)
        if self.cuda_graph and loop.graph is None and loop.capture_error is None:
            loop.select(loop.slots, loop.kv_len)
            loop.capture()
            self.capture_seconds += loop.capture_seconds
            loop.capture_seconds = 0.0

    @staticmethod
    def _run(stepper: SlotStepper, res: SynthesisResult, keep_latents: bool, t_start: float) -> Iterator[np.ndarray]:
        """Step the slots, yielding each diffusion frame's chunk (stream 0's, or all streams' stacked);
        sets `res.stop_reason`."""
        lockstep = len(stepper.runs) > 1
        while stepper.runs:
            t0 = time.perf_counter()
            events = stepper.step()
            first = events[0]
            res.tokens.append(first.token)
            if first.stop_reason:
                res.stop_reason = first.stop_reason
            if first.audio is None:
                continue
            chunk = np.stack([e.audio for e in events]) if lockstep else first.audio
            if keep_latents:
                res.latents.append(np.stack([e.latent for e in events]) if lockstep else first.latent)
            res.frame_s.append(time.perf_counter() - t0)
            if len(res.frame_s) == 1:
                res.ttfa_s = time.perf_counter() - t_start
            yield chunk

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

    def synthesize(self, script, voices=None, **kw) -> SynthesisResult:
        res = SynthesisResult(np.zeros(0, np.float32), 0, [], False, "", 0, 0.0, 0.0)
        for _ in self.stream(script, voices, result=res, **kw):
            pass
        return res
