"""The diffusion head as one step (`DiffusionHeadStep`) and as the whole K-step DPM-Solver++ 2M sampler
with classifier-free guidance (`DiffusionSampler`), unrolled for a fixed K.

The scheduler constants come from diffusers' own `DPMSolverMultistepScheduler` (the one transformers
builds), and the update keeps diffusers' operation order and dtypes: x0 and D1 in the model dtype, the
update summed in fp32 and cast back. On the CPU the unrolled loop is bit-identical to
transformers' `_sample_audio_latent` in bf16 and within a few ulp in fp32 (batched matmuls).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vvtrt.components.fused_linear import FusedLinear, swiglu

MIN_STEPS, MAX_STEPS = 1, 50


@dataclass(frozen=True)
class StepConstants:
    """fp32 scalars of one solver step i (from t_i to t_{i+1})."""

    timestep: int
    alpha: float  # alpha_s of x0 = alpha*x - sigma*v
    sigma: float
    a: float  # sigma_t / sigma_s
    b: float  # alpha_t * (exp(-h) - 1)
    d1_scale: float  # 1 / r0 (second order only)
    order: int


def schedule(steps: int) -> list[StepConstants]:
    """The diffusers DPM-Solver++ (cosine, v-prediction) constants for `steps` steps."""
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    sch.set_timesteps(num_inference_steps=steps)
    sig = sch.sigmas.to(torch.float32)

    def alpha_sigma(s):
        return sch._sigma_to_alpha_sigma_t(s)

    def lam(s):
        a, sg = alpha_sigma(s)
        return torch.log(a) - torch.log(sg)

    out = []
    for i, t in enumerate(sch.timesteps.tolist()):
        alpha_s, sigma_s = alpha_sigma(sig[i])
        alpha_t, sigma_t = alpha_sigma(sig[i + 1])
        h = lam(sig[i + 1]) - lam(sig[i])
        last = i == steps - 1
        order = 1 if (i == 0 or last) else 2
        d1 = 0.0
        if order == 2:
            h0 = lam(sig[i]) - lam(sig[i - 1])
            d1 = float(1.0 / (h0 / h))
        out.append(StepConstants(int(t), float(alpha_s), float(sigma_s), float(sigma_t / sigma_s),
                                 float(alpha_t * (torch.exp(-h) - 1.0)), d1, order))
    return out


class DiffusionHeadStep(nn.Module):
    """One head call: `noisy [N, 64]`, `timestep [N]` (fp32, rounded to the model dtype inside),
    `condition [N, H]` -> `v [N, 64]`."""

    def __init__(self, model):
        super().__init__()
        self.head = model.model.diffusion_head

    def forward(self, noisy, timestep, condition):
        return self.head(noisy, timestep.to(noisy.dtype), condition)


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


class DiffusionSampler(nn.Module):
    """`cond_pos [B, H]`, `cond_neg [B, H]`, `noise [B, 64]`, `cfg_scale [B]` (fp32,
    one guidance scale per row: each stream of a batch keeps its own) -> `latent [B, 1, 64]`.

    Each of the K steps runs the head once on the `2B` rows `[x; x]` with conditions `[pos; neg]`, mixes
    `v = v_neg + s (v_pos - v_neg)` and applies the DPM-Solver++ 2M update.

    The timestep MLP depends on constants only and is computed once, at construction. Everything else the
    head computes from the condition (cond_proj, every adaLN modulation) does not depend on x, so it is
    computed for all K steps up front as one batched matmul per layer: each adaLN weight is read once per
    frame instead of K times, and each step is left with only the x path (noisy_images_proj,
    norm/modulate/SwiGLU per layer, final layer). Same ops, same dtypes as transformers' head.
    """

    def __init__(self, model, steps: int):
        super().__init__()
        if not MIN_STEPS <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [{MIN_STEPS}, {MAX_STEPS}], got {steps}")
        self.head = model.model.diffusion_head
        self.steps = steps
        self.consts = schedule(steps)
        # The timestep embeddings depend on constants and weights only: computed once here (same ops and
        # dtype as transformers' head), on the head's device, never per frame.
        p = next(self.head.parameters())
        with torch.no_grad():
            t = torch.tensor([float(c.timestep) for c in self.consts], device=p.device).to(p.dtype)
            temb = self.head.timestep_proj(self.head.timestep_embedding(t).to(p.dtype))  # [K, H]
        self.register_buffer("temb", temb, persistent=False)
        # gate|up of each layer's SwiGLU as one matmul (views of the same weights, see fused_linear)
        self.gate_up = nn.ModuleList(FusedLinear(l.ffn.gate_proj, l.ffn.up_proj) for l in self.head.layers)

    def _modulations(self, cond):
        """Per layer: (shift, scale, gate) for every step, each `[K, 2B, H]`; final layer: (shift, scale)."""
        head = self.head
        c = head.cond_proj(cond)[None] + self.temb[:, None]  # [K, 2B, H]
        mods = [layer.linear(layer.act_fn(c)).chunk(layer.num_chunks, dim=-1) for layer in head.layers]
        fin = head.final_layer
        return mods, fin.linear_1(fin.act_fn(c)).chunk(fin.num_chunks, dim=-1)

    def _velocity(self, x2, k: int, mods, final):
        head = self.head
        h = head.noisy_images_proj(x2)
        for layer, gate_up, (shift, scale, gate) in zip(head.layers, self.gate_up, mods):
            modulated = layer.norm(h) * (1 + scale[k]) + shift[k]
            h = h + gate[k] * swiglu(layer.ffn, gate_up, modulated)
        fin = head.final_layer
        normed = F.rms_norm(h, (h.shape[-1],), eps=fin.rms_norm_eps)
        return fin.linear_2(normed * (1 + final[1][k]) + final[0][k])

    def forward(self, cond_pos, cond_neg, noise, cfg_scale):
        dtype = cond_pos.dtype
        b = cond_pos.shape[0]
        mods, final = self._modulations(torch.cat([cond_pos, cond_neg], dim=0))
        x = noise.to(dtype)
        prev_x0 = x
        for k, c in enumerate(self.consts):
            v = self._velocity(torch.cat([x, x], dim=0), k, mods, final)
            v_pos, v_neg = v[:b], v[b:]
            # transformers: uncond + guidance_scale * (cond - uncond) with a Python float -> fp32 opmath
            v = v_neg + (cfg_scale.view(-1, 1) * (v_pos - v_neg).float()).to(dtype)
            x0 = _f32(c.alpha) * x - _f32(c.sigma) * v  # model dtype, as diffusers' convert_model_output
            x32 = x.float()
            if c.order == 1:
                x_next = _f32(c.a) * x32 - _f32(c.b) * x0
            else:
                d1 = _f32(c.d1_scale) * (x0 - prev_x0)
                x_next = _f32(c.a) * x32 - _f32(c.b) * x0 - _f32(0.5 * c.b) * d1
            x = x_next.to(dtype)
            prev_x0 = x0
        return x.unsqueeze(1)
