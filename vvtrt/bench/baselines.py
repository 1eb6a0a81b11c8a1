"""The two baselines, on the same GPU, preset, steps, CFG and dtype:

- `pytorch-eager`: transformers' modules driven eagerly by transformers' own loop with classifier-free
  guidance on the diffusion head only (the token-level CFG processor removed), i.e. the original loop;
- `transformers`: `generate(..., guidance_scale=cfg)` as a user calls it, which adds token-level CFG (a
  third LLM pass per frame).

Both force the speech_diffusion decision (random weights never choose to speak). Per-frame times come from
a streamer that receives every generated token. `bench_baseline` runs in its own process (see
`vvtrt.bench.worker`) and measures what `vvtrt.bench.measure` measures for vvtrt: the cold end-to-end
request (voice wavs read and normalised, prompt built, `generate(input_ids, input_values, padding_mask)`,
which encodes the voices in its prefill), warm end-to-end requests, warm prefill-to-first-chunk (the same
prompt ids, no audio: the placeholders keep their token embeddings) and the synthetic long prompt.
"""
from __future__ import annotations

import time

import torch


class _StepClock:
    """A transformers streamer that timestamps each generated token (the first `put` is the prompt)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stamps: list[float] = []

    def put(self, value):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def run_baseline(model, ids: list[int], frames: int, steps: int, cfg_scale: float, token_cfg: bool,
                 device, audio: dict | None = None, t_start: float | None = None) -> dict:
    """One timed `generate` run. `audio`: `{"input_values", "padding_mask"}` of the voices; `t_start`: when
    the request began (default: now). Returns {"ttfa_s", "frame_ms": [...], "total_s"} from `t_start`."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

    cfg = model.config

    class ForceDiffusion(LogitsProcessor):
        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, float("-inf"))
            forced[:, cfg.audio_token_id] = 0.0
            return forced

    original = type(model)._get_logits_processor

    def diffusion_cfg_only(self, *args, **kwargs):
        procs = original(self, *args, **kwargs)
        return LogitsProcessorList(p for p in procs
                                   if not isinstance(p, UnbatchedClassifierFreeGuidanceLogitsProcessor))

    if not token_cfg:
        model._get_logits_processor = diffusion_cfg_only.__get__(model)
    clock = _StepClock(device)
    input_ids = torch.tensor([ids], device=device)
    sched = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    try:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        t0 = t_start or time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=frames,
                           **(audio or {}),
                           num_diffusion_steps=steps, guidance_scale=cfg_scale, noise_scheduler=sched,
                           logits_processor=LogitsProcessorList([ForceDiffusion()]), do_sample=False,
                           streamer=clock)
        total = time.perf_counter() - t0
    finally:
        if not token_cfg:
            del model._get_logits_processor
    # stamps[0]: the prompt; stamps[k] (k >= 1): token k-1 chosen, after which transformers samples,
    # decodes and encodes that frame; the next stamp follows the next LLM step. So one frame's period is
    # the gap between consecutive token stamps (the last one closes at the end of generate), and the first
    # audio exists a little before stamps[2] (an upper bound by one LLM step).
    marks = clock.stamps[1:] + [t0 + total]
    frame_ms = [(b - a) * 1000 for a, b in zip(marks[:-1], marks[1:])]
    ttfa = (marks[1] if len(marks) > 1 else t0 + total) - t0
    return {"ttfa_s": ttfa, "frame_ms": frame_ms, "total_s": total}


def voice_inputs(paths, device, dtype) -> tuple[dict, list[int]]:
    """The voices as `generate` takes them (`input_values [V, 1, T]`, `padding_mask [V, T]`, normalised
    as transformers' feature extractor does) and each voice's valid sample count."""
    from vvtrt.runtime.audio_io import prepare_voice, read_voice

    prepared = [prepare_voice(read_voice(p)) for p in paths]
    longest = max(len(w) for w, _ in prepared)
    values = torch.zeros(len(prepared), 1, longest)
    mask = torch.zeros(len(prepared), longest, dtype=torch.bool)
    for i, (wav, n) in enumerate(prepared):
        values[i, 0, :len(wav)] = torch.from_numpy(wav)
        mask[i, :n] = True
    return {"input_values": values.to(device, dtype), "padding_mask": mask.to(device)}, [n for _, n in prepared]


def _real_prompt(job, wd, tokenizer, samples: list[int]) -> list[int]:
    import math

    from vvtrt.runtime.prompt import build_prompt
    from vvtrt.runtime.script import parse_script

    info = wd.info()
    return list(build_prompt(parse_script(job.script), tokenizer, info,
                             [math.ceil(n / info.hop) for n in samples]).ids)


class _Baseline:
    """Timed `generate` requests of one transformers model (see the module doc)."""

    def __init__(self, job, wd, model, tokenizer):
        self.job, self.wd, self.model, self.tokenizer = job, wd, model, tokenizer
        self.device = torch.device(job.device)
        self.token_cfg, self.steps = job.name == "transformers", wd.options().steps

    def e2e(self) -> dict:
        """Voice wavs in -> first frame: read and normalise the voices, build the prompt, `generate`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_start = time.perf_counter()
        audio, samples = voice_inputs(self.job.voices, self.device, self.model.dtype)
        ids = _real_prompt(self.job, self.wd, self.tokenizer, samples)
        return run_baseline(self.model, ids, self.job.frames, self.steps, self.job.cfg_scale, self.token_cfg,
                            self.device, audio, t_start)

    def first_chunk_ms(self, ids) -> float:
        return run_baseline(self.model, ids, 2, self.steps, self.job.cfg_scale, self.token_cfg,
                            self.device)["ttfa_s"] * 1000

    def synthetic(self) -> dict | None:
        from vvtrt.bench.measure import SYNTHETIC_NOTE, synthetic_prompt, ttfa_block

        if not self.job.prompt_tokens:
            return None
        ids = synthetic_prompt(self.job.prompt_tokens, self.model.config.audio_bos_token_id)
        self.first_chunk_ms(ids)  # warm-up
        return ttfa_block([self.first_chunk_ms(ids) for _ in range(self.job.repeats)],
                          prompt_tokens=self.job.prompt_tokens, note=SYNTHETIC_NOTE)


def bench_baseline(job, probe) -> dict:
    """Measure baseline `job.name` ("pytorch-eager" or "transformers") in this process."""
    import numpy as np

    from vvtrt.bench.measure import ttfa_block
    from vvtrt.model.text_tokenizer import load_text_tokenizer
    from vvtrt.precision import Precision
    from vvtrt.reports.stats import summary
    from vvtrt.runtime.backends import ModelCache
    from vvtrt.runtime.synthesizer import SAMPLE_RATE
    from vvtrt.workdir import Workdir

    wd = Workdir.open(job.workdir)
    t0 = time.perf_counter()
    model = ModelCache(wd, init_on_device=True).get(Precision.parse(job.precision), torch.device(job.device))
    base = _Baseline(job, wd, model, load_text_tokenizer(wd.source()))  # random weights: speed only
    load_s = time.perf_counter() - t0
    probe.mark_loaded()
    cold = base.e2e()
    warm = [base.e2e() for _ in range(job.repeats)]
    ids = _real_prompt(job, wd, base.tokenizer, voice_inputs(job.voices, "cpu", torch.float32)[1])
    prefill = [base.first_chunk_ms(ids) for _ in range(job.repeats)]
    synthetic = base.synthetic()
    frame_ms = [t for r in warm for t in r["frame_ms"]]
    audio_s = job.frames * wd.info().hop / SAMPLE_RATE
    return {"backend": "torch", "precision": job.precision, "label": job.name, "components": {},
            "frame_ms": frame_ms, "frame": summary(frame_ms),
            "rtf": float(np.mean([r["total_s"] for r in warm])) / audio_s,
            "ttfa_e2e": ttfa_block([r["ttfa_s"] * 1000 for r in warm], cold["ttfa_s"] * 1000,
                                   prompt_tokens=len(ids), voices=len(job.voices)),
            "ttfa_prefill": ttfa_block(prefill, prompt_tokens=len(ids)), "ttfa_synthetic": synthetic,
            "memory": {**probe.fields(), "graph_pool_bytes": None},
            "setup": {"load_s": load_s, "build_s": None, "capture_s": None, "cold_request_s": cold["total_s"]},
            "floor_gap": None,
            "notes": ("transformers generate with guidance_scale (adds token-level CFG: a third LLM pass)"
                      if base.token_cfg else "transformers modules, transformers' loop, diffusion-only CFG, eager")
                     + "; TTFA is an upper bound by one LLM step (the streamer sees tokens, not audio)"}
