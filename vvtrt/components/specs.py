"""The catalog: one `ComponentSpec` per VibeVoice component, derived from a model's `ModelInfo` and the
export options. Nothing else in vvtrt writes a component's shapes down."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vvtrt.components import conv_stream, diffusion, lm
from vvtrt.components.info import ModelInfo
from vvtrt.errors import InputError
from vvtrt.precision import Precision
from vvtrt.spec import AxisRange, ComponentSpec, TensorSpec as T


@dataclass(frozen=True)
class ExportOptions:
    """Build parameters shared by export, engines and runtime."""

    steps: int = 10  # K of the unrolled DPM-Solver++ sampler
    max_batch: int = 8  # LLM decode rows (2 per stream: positive and negative)
    kv_buckets: tuple[int, ...] = (512, 1024, 2048)  # static KV cache lengths, one engine profile each
    max_prompt: int = 1024  # longest prefill
    max_voice_frames: int = 64  # longest voice prompt, in 3200-sample frames
    max_voices: int = 4

    def __post_init__(self):
        if not diffusion.MIN_STEPS <= self.steps <= diffusion.MAX_STEPS:
            raise InputError(f"--steps must be between {diffusion.MIN_STEPS} and {diffusion.MAX_STEPS}, "
                             f"got {self.steps}")
        if self.max_batch < 2 or self.max_batch % 2:
            raise InputError(f"max_batch must be an even number >= 2, got {self.max_batch}")
        if not self.kv_buckets or any(b < 8 for b in self.kv_buckets) or list(self.kv_buckets) != sorted(
                self.kv_buckets):
            raise InputError(f"kv_buckets must be ascending lengths >= 8, got {self.kv_buckets}")

    @classmethod
    def for_preset(cls, preset: str | None, steps: int = 10) -> "ExportOptions":
        if preset == "tiny":
            return cls(steps=steps, kv_buckets=(256, 1024), max_prompt=512, max_voice_frames=16)
        return cls(steps=steps)

    def to_json(self) -> dict:
        return {"steps": self.steps, "max_batch": self.max_batch, "kv_buckets": list(self.kv_buckets),
                "max_prompt": self.max_prompt, "max_voice_frames": self.max_voice_frames,
                "max_voices": self.max_voices}

    @classmethod
    def from_json(cls, d: dict) -> "ExportOptions":
        return cls(steps=d["steps"], max_batch=d["max_batch"], kv_buckets=tuple(d["kv_buckets"]),
                   max_prompt=d["max_prompt"], max_voice_frames=d["max_voice_frames"],
                   max_voices=d.get("max_voices", 4))


def _randn(shape, precision, gen, std=1.0):
    return (torch.randn(shape, generator=gen) * std).to(precision.torch_dtype)


def _r(lo, opt, hi):
    return AxisRange(lo, opt, hi)


# bf16 bounds on rel-L2 vs the fp32 reference, set from PyTorch's *own* bf16 error on the same inputs
# (benchmarks/precision_floor.py, 1.5B preset, results in benchmarks/results/cpu/precision_floor_1.5b_bf16.json):
# lm_prefill 0.031, lm_decode 0.035, diffusion_sampler 0.038, diffusion_head 0.073 (bf16 rounds the
# timestep before its sinusoid: 999 -> 1000). ONNX Runtime CUDA bf16 measured 0.032 / 0.037 / 0.040 / 0.075
# on the H200 (benchmarks/results/h200/parity_1.5b_ort_cuda). Bound = ~1.25x PyTorch's own bf16 error.
# acoustic_decoder_step: PyTorch's own bf16 error is 0.0126 (tiny) / 0.0146 (1.5B) and ORT CUDA 0.0145, but
# ONNX's reference evaluator (the CPU substitute for bf16) rounds every op to bf16 with no fp32
# accumulation and measured 0.021-0.022 on tiny over 16 streamed frames: bound 3e-2.
BF16_TOL = {"lm_prefill": 4e-2, "lm_decode": 4.5e-2, "diffusion_sampler": 5e-2, "diffusion_head": 9.5e-2,
            "acoustic_decoder_step": 3e-2}
BF16_NOTE = ("bf16 bound ~1.25x PyTorch's own bf16-vs-fp32 error on the 1.5B preset "
             "(benchmarks/results/cpu/precision_floor_1.5b_bf16.json)")


def build_specs(info: ModelInfo, opts: ExportOptions = ExportOptions()) -> dict[str, ComponentSpec]:
    """All component specs for one model, keyed by component name (export order)."""
    H, L, KV, D = info.hidden, info.layers, info.kv_heads, info.head_dim
    Z, SEM, HOP = info.latent_dim, info.semantic_dim, info.hop
    kv_shape = (L, "batch", KV, "kv_len", D)
    batch = _r(1, 2, opts.max_batch)
    specs: list[ComponentSpec] = []

    def prefill_sample(d, p, g):
        return {"embeds": _randn((d["batch"], d["seq"], H), p, g, 0.5)}

    specs.append(ComponentSpec(
        "lm_prefill", "prompt embeddings -> last hidden state, control-token logits and the prompt's K/V",
        (T("embeds", ("batch", "seq", H)),),
        (T("hidden", ("batch", 1, H)), T("logits", ("batch", 4), "float32"),
         T("k", (L, "batch", KV, "seq", D)), T("v", (L, "batch", KV, "seq", D))),
        lambda m, k: lm.LMPrefill(m, ModelInfo.from_model(m)), prefill_sample,
        ({"batch": _r(1, 1, 2), "seq": _r(1, min(256, opts.max_prompt), opts.max_prompt)},),
        {"batch": 2, "seq": 24}, ({"batch": 1, "seq": 7}, {"batch": 1, "seq": 41}),
    ))

    def decode_sample(d, p, g):
        b, s = d["batch"], d["kv_len"]
        return {"embeds": _randn((b, 1, H), p, g, 0.5), "past_k": _randn((L, b, KV, s, D), p, g),
                "past_v": _randn((L, b, KV, s, D), p, g),
                "cache_len": torch.randint(0, s + 1, (b,), generator=g, dtype=torch.int64)}

    specs.append(ComponentSpec(
        "lm_decode", "one LLM step for a batch of rows against a static KV cache of a length bucket",
        (T("embeds", ("batch", 1, H)), T("past_k", kv_shape), T("past_v", kv_shape),
         T("cache_len", ("batch",), "int64")),
        (T("hidden", ("batch", 1, H)), T("logits", ("batch", 4), "float32"),
         T("new_k", (L, "batch", KV, 1, D)), T("new_v", (L, "batch", KV, 1, D))),
        lambda m, k: lm.LMDecode(m, ModelInfo.from_model(m)), decode_sample,
        tuple({"batch": batch, "kv_len": _r(s, s, s)} for s in opts.kv_buckets),
        {"batch": 2, "kv_len": 32}, ({"batch": 2, "kv_len": 17}, {"batch": 6, "kv_len": 64}),
    ))

    specs.append(ComponentSpec(
        "token_embed", "token ids -> LLM input embeddings (non-diffusion steps)",
        (T("token", ("batch",), "int64"),), (T("embeds", ("batch", 1, H)),),
        lambda m, k: lm.TokenEmbed(m),
        lambda d, p, g: {"token": torch.randint(0, info.vocab, (d["batch"],), generator=g)},
        ({"batch": batch},), {"batch": 2}, ({"batch": 1}, {"batch": 5}),
    ))

    def sampler_sample(d, p, g):
        b = d["batch"]
        return {"cond_pos": _randn((b, H), p, g), "cond_neg": _randn((b, H), p, g),
                "noise": torch.randn((b, Z), generator=g), "cfg_scale": torch.tensor([1.3])}

    specs.append(ComponentSpec(
        "diffusion_sampler", f"the whole {opts.steps}-step DPM-Solver++ 2M loop with CFG on the head",
        (T("cond_pos", ("batch", H)), T("cond_neg", ("batch", H)), T("noise", ("batch", Z), "float32"),
         T("cfg_scale", (1,), "float32")),
        (T("latent", ("batch", 1, Z)),),
        lambda m, k: diffusion.DiffusionSampler(m, k), sampler_sample,
        ({"batch": _r(1, 1, opts.max_batch // 2)},), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
    ))

    def head_sample(d, p, g):
        n = d["rows"]
        return {"noisy": _randn((n, Z), p, g), "timestep": torch.randint(0, 1000, (n,), generator=g).float(),
                "condition": _randn((n, H), p, g)}

    specs.append(ComponentSpec(
        "diffusion_head", "one diffusion-head call (debugging and parity)",
        (T("noisy", ("rows", Z)), T("timestep", ("rows",), "float32"), T("condition", ("rows", H))),
        (T("v", ("rows", Z)),),
        lambda m, k: diffusion.DiffusionHeadStep(m), head_sample,
        ({"rows": _r(1, 2, opts.max_batch)},), {"rows": 2}, ({"rows": 1}, {"rows": 6}),
    ))

    def dec_sample(d, p, g):
        b = d["batch"]
        return {"latent": _randn((b, 1, Z), p, g), "state": _randn((b, info.decoder_state), p, g, 0.5)}

    specs.append(ComponentSpec(
        "acoustic_decoder_step", "one latent -> 3200 samples, streaming conv state in and out",
        (T("latent", ("batch", 1, Z)), T("state", ("batch", info.decoder_state))),
        (T("audio", ("batch", 1, HOP)), T("state_out", ("batch", info.decoder_state))),
        lambda m, k: conv_stream.AcousticDecoderStep(m), dec_sample,
        ({"batch": _r(1, 1, opts.max_batch // 2)},), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
        state=(("state", "state_out"),),
    ))

    def sem_sample(d, p, g):
        b = d["batch"]
        return {"audio": _randn((b, 1, HOP), p, g, 0.5), "state": _randn((b, info.semantic_state), p, g, 0.5)}

    specs.append(ComponentSpec(
        "semantic_encoder_step", "3200 samples -> one semantic feature, streaming conv state in and out",
        (T("audio", ("batch", 1, HOP)), T("state", ("batch", info.semantic_state))),
        (T("semantic", ("batch", 1, SEM)), T("state_out", ("batch", info.semantic_state))),
        lambda m, k: conv_stream.SemanticEncoderStep(m), sem_sample,
        ({"batch": _r(1, 1, opts.max_batch // 2)},), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
        state=(("state", "state_out"),),
    ))

    def enc_sample(d, p, g):
        s, f = d["voices"], d["frames"]
        return {"wav": _randn((s, 1, f * HOP), p, g, 0.1),
                "noise_std": (torch.randn((s,), generator=g) * info.vae_std),
                "noise": torch.randn((s, f, Z), generator=g)}

    mf = opts.max_voice_frames
    specs.append(ComponentSpec(
        "acoustic_encoder", "voice prompts (non-streaming) -> latents and LLM embeddings",
        (T("wav", ("voices", 1, "samples")), T("noise_std", ("voices",), "float32"),
         T("noise", ("voices", "frames", Z), "float32")),
        (T("latents", ("voices", "frames", Z)), T("embeds", ("voices", "frames", H))),
        lambda m, k: conv_stream.AcousticEncoder(m), enc_sample,
        ({"voices": _r(1, 1, opts.max_voices), "frames": _r(1, min(8, mf), mf),
          "samples": _r(HOP, HOP * min(8, mf), HOP * mf)},),
        {"voices": 2, "frames": 3, "samples": 3 * HOP},
        ({"voices": 1, "frames": 2, "samples": 2 * HOP}, {"voices": 2, "frames": 5, "samples": 5 * HOP}),
    ))

    specs.append(ComponentSpec(
        "connectors", "acoustic latent + semantic feature -> next LLM input embedding",
        (T("latent", ("batch", 1, Z)), T("semantic", ("batch", 1, SEM))), (T("embeds", ("batch", 1, H)),),
        lambda m, k: conv_stream.Connectors(m),
        lambda d, p, g: {"latent": _randn((d["batch"], 1, Z), p, g), "semantic": _randn((d["batch"], 1, SEM), p, g)},
        ({"batch": _r(1, 1, opts.max_batch // 2)},), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
    ))
    out = {}
    for s in specs:
        if s.name in BF16_TOL:
            s = dataclasses.replace(s, tolerance={**s.tolerance, Precision.BF16: BF16_TOL[s.name]},
                                    tolerance_notes=BF16_NOTE)
        out[s.name] = s
    return out


COMPONENTS = ("lm_prefill", "lm_decode", "token_embed", "diffusion_sampler", "diffusion_head",
              "acoustic_decoder_step", "semantic_encoder_step", "acoustic_encoder", "connectors")


def check_components(names) -> tuple[str, ...]:
    """Validate a user's component list (comma string or iterable)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names) or COMPONENTS
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise InputError(f"unknown component(s) {', '.join(bad)}: choose from {', '.join(COMPONENTS)}")
    return names
