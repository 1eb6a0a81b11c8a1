"""Is the fp32 GPU reference of the convolutional components really fp32? PyTorch runs cuDNN convolutions
in TF32 by default (`torch.backends.cudnn.allow_tf32`). This runs the semantic encoder and decoder steps
on the GPU with TF32 on and off and compares both with the same step on the CPU.

    python benchmarks/tf32_check.py tiny 1.5b      # needs a CUDA GPU
"""
from __future__ import annotations

import json
import sys

import torch

from vvtrt.components.conv_stream import AcousticDecoderStep, SemanticEncoderStep
from vvtrt.model.presets import build_model
from vvtrt.parity.compare import error_stats


def check(preset: str) -> dict:
    model = build_model(preset, device="cuda")
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, make, x in (("semantic_encoder_step", SemanticEncoderStep, torch.randn(1, 1, 3200, generator=gen) * 0.5),
                          ("acoustic_decoder_step", AcousticDecoderStep, torch.randn(1, 1, 64, generator=gen))):
        step = make(model)
        state = torch.zeros(1, step.stream.state_size)
        res = {}
        with torch.inference_mode():
            for tf32 in (True, False):
                torch.backends.cudnn.allow_tf32 = tf32
                res[tf32] = step(x.cuda(), state.cuda())[0].float().cpu()
            step.cpu()
            ref = step(x, state)[0]
            step.cuda()
        out[name] = {"tf32_on_vs_cpu": error_stats(res[True], ref).rel_l2,
                     "tf32_off_vs_cpu": error_stats(res[False], ref).rel_l2}
    del model
    torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    result = {p: check(p) for p in sys.argv[1:] or ["tiny"]}
    result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result, indent=1))
