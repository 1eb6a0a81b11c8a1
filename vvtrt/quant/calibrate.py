"""Calibration: the activation range of every quantized GEMM, from the model's own runs on the packaged
dialogue prompt (deterministic: fixed text, fixed seeds). lm_decode sees the prompt as one prefill chunk and a
batch of decode steps at its last positions; the diffusion components see the LLM's own hidden states at
those positions as conditions (positive rows) and the same rows reversed (negative rows)."""
from __future__ import annotations

import logging
from importlib import resources

import torch
from torch import nn

log = logging.getLogger(__name__)
CALIBRATION_TEXT = ("vvtrt.bench", "data/dialogue.txt")
DECODE_ROWS = 8  # decode steps (batch rows) at the prompt's last positions; also the diffusion conditions
TIMESTEPS = (999.0, 800.0, 600.0, 400.0, 200.0, 50.0, 10.0, 1.0)


def calibration_text() -> str:
    pkg, name = CALIBRATION_TEXT
    return resources.files(pkg).joinpath(name).read_text(encoding="utf-8")


def prompt_ids(tokenizer, vocab: int, max_tokens: int) -> list[int]:
    """The packaged prompt's token ids, at most `max_tokens` (and at least DECODE_ROWS + 1: repeated)."""
    ids = [i % vocab for i in tokenizer.encode(calibration_text())]
    while len(ids) < DECODE_ROWS + 1:
        ids = ids + ids
    return ids[:max_tokens]


def is_fused_linear(m: nn.Module) -> bool:
    """`vvtrt.components.fused_linear.FusedLinear` (told by its shape: one weight, output `sizes`)."""
    return type(m).__name__ == "FusedLinear" and hasattr(m, "sizes") and isinstance(getattr(m, "weight", None),
                                                                                     torch.Tensor)


def gemm_modules(module: nn.Module, qspec) -> dict[str, nn.Module]:
    """The wrapper's quantizable GEMMs by name: `nn.Linear` and fused linears not excluded by `qspec`."""
    return {n: m for n, m in module.named_modules()
            if (isinstance(m, nn.Linear) or is_fused_linear(m)) and n and qspec.wants(n)}


@torch.no_grad()
def collect_amax(module: nn.Module, qspec, feeds: list[tuple]) -> dict[str, tuple[torch.Tensor, float]]:
    """Run `module` on each feed (a tuple of inputs) and return, for every GEMM that ran, `name -> (weight,
    amax of its input)`. GEMMs that never ran (e.g. the Linears whose weights live in a fused one) are left out."""
    amax: dict[str, float] = {}
    mods = gemm_modules(module, qspec)

    def hook(name):
        def pre(_m, args):
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max().float()))
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    try:
        for args in feeds:
            module(*args)
    finally:
        for h in handles:
            h.remove()
    return {n: (mods[n].weight, a) for n, a in amax.items()}


@torch.no_grad()
def calibration_feeds(model, specs: dict, steps: int, precision, ids: list[int]) -> dict[str, list[tuple]]:
    """Inputs of lm_decode, diffusion_sampler and diffusion_head from the model's own run on `ids`."""
    dtype = precision.torch_dtype
    emb = model.get_input_embeddings()
    lm = specs["lm_decode"].make_module(model, steps).eval()
    t = len(ids)
    embeds = emb(torch.tensor([ids])).to(dtype)  # [1, T, H]
    info = lm.info
    zeros = torch.zeros((info.layers, 1, info.kv_heads, 1, info.head_dim), dtype=dtype)
    prefill = (embeds, zeros, zeros.clone(), torch.zeros(1, dtype=torch.int64))
    _, _, k, v = lm(*prefill)
    rows = DECODE_ROWS
    pos = torch.arange(t - rows, t)
    decode = (embeds[0, pos].unsqueeze(1), k.expand(-1, rows, -1, -1, -1).contiguous(),
              v.expand(-1, rows, -1, -1, -1).contiguous(), pos.to(torch.int64))
    hidden = lm(*decode)[0][:, 0]  # [rows, H]: the LLM's own conditions
    gen = torch.Generator().manual_seed(0)
    half = rows // 2
    noise = torch.randn((half, info.latent_dim), generator=gen)
    return {"lm_decode": [prefill, decode],
            "diffusion_sampler": [(hidden[:half], hidden.flip(0)[:half], noise, torch.full((half,), 1.3))],
            "diffusion_head": [(torch.randn((rows, info.latent_dim), generator=gen).to(dtype),
                                torch.tensor(TIMESTEPS[:rows]), hidden)]}
