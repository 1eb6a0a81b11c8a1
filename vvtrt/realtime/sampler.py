"""The K-step diffusion sampler of the Realtime model with CFG on the head, unrolled for a fixed K, in both
variants Microsoft's demos use: the deterministic `dpmsolver++` (file demo) and the stochastic
`sde-dpmsolver++` (web demo: fresh noise at every step). Noise is an input, never drawn inside, so parity
runs inject the same numbers everywhere.

The solver constants are diffusers' `DPMSolverMultistepScheduler` (cosine schedule, v-prediction,
second order with a first-order first and last step) computed with diffusers' own fp32 operations, and
each update keeps diffusers' operation order and dtypes (x0 and D1 in the model dtype, the sum in fp32),
so the unrolled loop reproduces the scheduler step by step. The head itself runs through
`vvtrt.components.diffusion.DiffusionSampler`'s batched form (condition path computed once per frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vvtrt.components.diffusion import DiffusionSampler
from vvtrt.errors import InputError

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


@dataclass(frozen=True)
class SolverStep:
    """fp32 constants of step i: `x_next = c_x·x + c_d0·x0 + c_d1·D1 + c_noise·noise` (D1 = d1_scale·(x0 −
    previous x0), second-order steps only), with `x0 = alpha·x − sigma·v`."""

    timestep: int
    alpha: float
    sigma: float
    c_x: float
    c_d0: float
    c_d1: float
    d1_scale: float
    c_noise: float
    order: int


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise InputError(f"unknown sampler {name!r}: choose {' or '.join(ALGORITHMS)}")
    return name


def solver_steps(steps: int, algorithm: str = "dpmsolver++") -> list[SolverStep]:
    """The constants of a `steps`-step solve, as diffusers computes them (see module doc)."""
    from diffusers import DPMSolverMultistepScheduler

    check_algorithm(algorithm)
    sch = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                      algorithm_type=algorithm)
    sch.set_timesteps(num_inference_steps=steps)
    sig = sch.sigmas.to(torch.float32)

    def lam(s):
        a, sg = sch._sigma_to_alpha_sigma_t(s)
        return torch.log(a) - torch.log(sg)

    out = []
    for i, t in enumerate(sch.timesteps.tolist()):
        alpha_s, sigma_s = sch._sigma_to_alpha_sigma_t(sig[i])
        alpha_t, sigma_t = sch._sigma_to_alpha_sigma_t(sig[i + 1])
        h = lam(sig[i + 1]) - lam(sig[i])
        order = 1 if (i == 0 or i == steps - 1) else 2
        d1 = float(1.0 / ((lam(sig[i]) - lam(sig[i - 1])) / h)) if order == 2 else 0.0
        if algorithm == "dpmsolver++":  # x_t = (σt/σs)x − αt(e^−h − 1)·D0 − ½αt(e^−h − 1)·D1
            b = alpha_t * (torch.exp(-h) - 1.0)
            c_x, c_d0, c_d1, c_noise = float(sigma_t / sigma_s), -float(b), -float(0.5 * b), 0.0
        else:  # x_t = (σt/σs·e^−h)x + αt(1 − e^−2h)·D0 + ½αt(1 − e^−2h)·D1 + σt·sqrt(1 − e^−2h)·noise
            c0 = alpha_t * (1 - torch.exp(-2.0 * h))
            c_x, c_d0, c_d1 = float(sigma_t / sigma_s * torch.exp(-h)), float(c0), float(0.5 * c0)
            c_noise = float(sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)))
        out.append(SolverStep(int(t), float(alpha_s), float(sigma_s), c_x, c_d0, c_d1, d1, c_noise, order))
    return out


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


class RealtimeSampler(nn.Module):
    """`cond_pos [B, H]`, `cond_neg [B, H]`, `noise [B, 64]` fp32, `cfg_scale [B]` fp32 (one
    guidance scale per row: each stream of a batch keeps its own) and, for
    `sde-dpmsolver++` only, `step_noise [B, K, 64]` fp32 -> `latent [B, 1, 64]` (unscaled: the connector
    takes it as is; the decoder divides by the latent scale first)."""

    def __init__(self, model, steps: int, algorithm: str = "dpmsolver++"):
        super().__init__()
        self.core = DiffusionSampler(model, steps)
        self.algorithm = check_algorithm(algorithm)
        self.consts = solver_steps(steps, algorithm)
        if [c.timestep for c in self.consts] != [c.timestep for c in self.core.consts]:
            raise RuntimeError("solver timesteps disagree with vvtrt.components.diffusion (a vvtrt bug)")

    @property
    def stochastic(self) -> bool:
        return self.algorithm == "sde-dpmsolver++"

    def forward(self, cond_pos, cond_neg, noise, cfg_scale, step_noise=None):
        if self.stochastic and step_noise is None:
            raise ValueError("sde-dpmsolver++ needs step_noise [B, K, 64]")
        dtype, b = cond_pos.dtype, cond_pos.shape[0]
        mods, final = self.core._modulations(torch.cat([cond_pos, cond_neg], dim=0))
        x = noise.to(dtype)
        prev_x0 = x
        for k, c in enumerate(self.consts):
            v = self.core._velocity(torch.cat([x, x], dim=0), k, mods, final)
            v_pos, v_neg = v[:b], v[b:]
            # transformers: uncond + guidance_scale * (cond - uncond) with a Python float -> fp32 opmath
            v = v_neg + (cfg_scale.view(-1, 1) * (v_pos - v_neg).float()).to(dtype)
            x0 = _f32(c.alpha) * x - _f32(c.sigma) * v                  # model dtype, as diffusers
            x_next = _f32(c.c_x) * x.float() + _f32(c.c_d0) * x0 if self.stochastic else \
                _f32(c.c_x) * x.float() - _f32(-c.c_d0) * x0
            if c.order == 2:
                d1 = _f32(c.d1_scale) * (x0 - prev_x0)
                x_next = x_next + _f32(c.c_d1) * d1 if self.stochastic else x_next - _f32(-c.c_d1) * d1
            if self.stochastic:
                x_next = x_next + _f32(c.c_noise) * step_noise[:, k].float()
            x = x_next.to(dtype)
            prev_x0 = x0
        return x.unsqueeze(1)
