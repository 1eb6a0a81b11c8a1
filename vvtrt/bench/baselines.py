"""The two baselines, on the same GPU, preset, steps, CFG and dtype:

- `pytorch-eager`: transformers' modules driven eagerly by transformers' own loop with classifier-free
  guidance on the diffusion head only (the token-level CFG processor removed), i.e. the original loop;
- `transformers`: `generate(..., guidance_scale=cfg)` as a user calls it, which adds token-level CFG (a
  third LLM pass per frame).

Both force the speech_diffusion decision (random weights never choose to speak). Per-frame times come from
a streamer that receives every generated token.
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
                 device) -> dict:
    """One timed `generate` run. Returns {"ttfa_s", "frame_ms": [...], "total_s"}."""
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
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=frames,
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
