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
from vvtrt.quant.config import QuantSpec
from vvtrt.spec import AxisRange, ComponentSpec, TensorSpec as T


@dataclass(frozen=True)
class ExportOptions:
    """Build parameters shared by export, engines and runtime."""

    steps: int = 10  # K of the unrolled DPM-Solver++ sampler
    max_batch: int = 8  # LLM decode rows (2 per stream: positive and negative)
    kv_buckets: tuple[int, ...] = (512, 1024, 2048)  # static KV cache lengths, one engine profile each
    max_prompt: int = 1024  # longest prompt (prefilled in chunks)
    max_voice_frames: int = 64  # longest voice prompt, in 3200-sample frames
    max_voices: int = 4
    prefill_chunk: int = 1024  # prompt tokens per lm_decode call of the prefill (its engine profile's T range)

    def __post_init__(self):
        if not diffusion.MIN_STEPS <= self.steps <= diffusion.MAX_STEPS:
            raise InputError(f"--steps must be between {diffusion.MIN_STEPS} and {diffusion.MAX_STEPS}, "
                             f"got {self.steps}")
        if self.max_batch < 2 or self.max_batch % 2:
            raise InputError(f"max_batch must be an even number >= 2, got {self.max_batch}")
        dups = sorted({b for b in self.kv_buckets if self.kv_buckets.count(b) > 1})
        if dups:
            raise InputError(f"--kv-buckets lists {','.join(map(str, dups))} more than once: give each KV length once, "
                             f"ascending (got {','.join(map(str, self.kv_buckets))})")
        if not self.kv_buckets or any(b < 8 for b in self.kv_buckets) or list(self.kv_buckets) != sorted(
                self.kv_buckets):
            raise InputError(f"--kv-buckets must be ascending lengths >= 8, got {','.join(map(str, self.kv_buckets))}")
        if len(set(self.kv_buckets)) != len(self.kv_buckets) or len(self.kv_buckets) > MAX_KV_BUCKETS:
            raise InputError(f"--kv-buckets must be at most {MAX_KV_BUCKETS} distinct lengths (one engine profile "
                             f"each), got {','.join(map(str, self.kv_buckets))}")
        if not 1 <= self.max_prompt < self.kv_buckets[-1]:
            raise InputError(f"--max-prompt must be between 1 and {self.kv_buckets[-1] - 1} (below the largest KV "
                             f"bucket, which also holds the generated frames), got {self.max_prompt}")
        if not 8 <= self.prefill_chunk <= MAX_PREFILL_CHUNK:
            raise InputError(f"the prefill chunk must be between 8 and {MAX_PREFILL_CHUNK} tokens, "
                             f"got {self.prefill_chunk}")

    @classmethod
    def for_preset(cls, preset: str | None, steps: int = 10, context: int | None = None,
                   max_prompt: int | None = None, kv_buckets: tuple[int, ...] | None = None) -> "ExportOptions":
        """The defaults for a model: `tiny` keeps small test sizes; any other model gets KV buckets up to its
        `context` (`long_context_defaults`; 1.5B: 1024 ... 65536, 7B: 1024 ... 32768). `max_prompt` /
        `kv_buckets` (the export's --max-prompt / --kv-buckets) override them; a bucket above `context` is
        refused."""
        if preset == "tiny":
            base = cls(steps=steps, kv_buckets=(256, 1024), max_prompt=512, max_voice_frames=16, prefill_chunk=128)
        else:
            buckets, prompt = long_context_defaults(context)
            base = cls(steps=steps, kv_buckets=buckets, max_prompt=prompt)
        buckets = tuple(kv_buckets) if kv_buckets else base.kv_buckets
        if context is not None and buckets[-1] > context:
            raise InputError(f"--kv-buckets go up to {buckets[-1]} tokens but the model's context is {context}: "
                             f"use buckets up to {context}")
        prompt = max_prompt if max_prompt is not None else min(base.max_prompt, buckets[-1] - 1)
        return dataclasses.replace(base, kv_buckets=buckets, max_prompt=prompt)

    def to_json(self) -> dict:
        return {"steps": self.steps, "max_batch": self.max_batch, "kv_buckets": list(self.kv_buckets),
                "max_prompt": self.max_prompt, "max_voice_frames": self.max_voice_frames,
                "max_voices": self.max_voices, "prefill_chunk": self.prefill_chunk}

    @classmethod
    def from_json(cls, d: dict) -> "ExportOptions":
        return cls(steps=d["steps"], max_batch=d["max_batch"], kv_buckets=tuple(d["kv_buckets"]),
                   max_prompt=d["max_prompt"], max_voice_frames=d["max_voice_frames"],
                   max_voices=d.get("max_voices", 4), prefill_chunk=d.get("prefill_chunk", 1024))


MAX_KV_BUCKETS = 12
MAX_PREFILL_CHUNK = 4096
SMALLEST_LONG_BUCKET = 1024


def long_context_defaults(context: int | None) -> tuple[tuple[int, ...], int]:
    """(KV buckets, max prompt) for a model of `context` positions: powers of two from 1024 up to the context
    (and the context itself if it is not one), so a stream pays for at most twice the cache it needs (ONNX
    Runtime and TensorRT attend over the whole bucket; each bucket is one TensorRT profile); the prompt may
    fill all but the last 1024 positions, which are left for the generated frames. No context (unknown): the
    short defaults of `ExportOptions()`."""
    if not context or context < 2 * SMALLEST_LONG_BUCKET:
        return ExportOptions.kv_buckets, ExportOptions.max_prompt
    buckets = []
    b = SMALLEST_LONG_BUCKET
    while b < context:
        buckets.append(b)
        b *= 2
    buckets.append(context)
    return tuple(buckets), context - SMALLEST_LONG_BUCKET


def parse_kv_buckets(text: str | None) -> tuple[int, ...] | None:
    """`--kv-buckets "1024,4096,16384"` -> (1024, 4096, 16384); None/empty -> None (the model's defaults)."""
    if text is None or not str(text).strip():
        return None
    try:
        out = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise InputError(f"--kv-buckets must be comma-separated token counts, e.g. 1024,4096,16384; got {text!r}") \
            from None
    ExportOptions(kv_buckets=out, max_prompt=1)  # validates the list itself
    return out


def _randn(shape, precision, gen, std=1.0):
    return (torch.randn(shape, generator=gen) * std).to(precision.torch_dtype)


def _r(lo, opt, hi):
    return AxisRange(lo, opt, hi)


# bf16 bounds on rel-L2 vs the fp32 reference, set from PyTorch's *own* bf16 error on the same inputs
# (benchmarks/precision_floor.py, 1.5B preset, results in benchmarks/results/cpu/precision_floor_1.5b_bf16.json):
# lm_prefill 0.031 (a whole prompt: what lm_decode's prefill-chunk rows now compute), lm_decode 0.035,
# diffusion_sampler 0.038, diffusion_head 0.073 (bf16 rounds the
# timestep before its sinusoid: 999 -> 1000). ONNX Runtime CUDA bf16 measured 0.032 / 0.037 / 0.040 / 0.075
# on the H200 (benchmarks/results/h200/parity_1.5b_ort_cuda). Bound = ~1.25x PyTorch's own bf16 error.
# acoustic_decoder_step: PyTorch's own bf16 error is 0.0126 (tiny) / 0.0146 (1.5B) and ORT CUDA 0.0145, but
# ONNX's reference evaluator (the CPU substitute for bf16) rounds every op to bf16 with no fp32
# accumulation and measured 0.021-0.022 on tiny over 16 streamed frames: bound 3e-2.
BF16_TOL = {"lm_decode": 4.5e-2, "diffusion_sampler": 5e-2, "diffusion_head": 9.5e-2,
            "acoustic_decoder_step": 3e-2}
BF16_NOTE = ("bf16 bound ~1.25x PyTorch's own bf16-vs-fp32 error on the 1.5B preset "
             "(benchmarks/results/cpu/precision_floor_1.5b_bf16.json)")


# What `vvtrt export --quant int8|fp8` quantizes: the LLM's and the diffusion head's GEMMs (q|k|v, o_proj,
# gate|up, down_proj; the head's cond/noisy projections, adaLN modulations, SwiGLU and final layer). The head's
# timestep MLP stays in the model dtype (bf16 already costs it most of its error, see BF16_TOL's note), as do
# the 4-row control-token head, norms, attention and the sampler's arithmetic. The convolutional tokenizers
# (acoustic/semantic encoders and decoder), the connectors and the token embedding are not quantized.
QUANTIZED = {"lm_decode": QuantSpec(note="LLM GEMMs"),
             "diffusion_sampler": QuantSpec(exclude=("timestep",), note="diffusion head GEMMs, all K steps"),
             "diffusion_head": QuantSpec(exclude=("timestep",), note="diffusion head GEMMs")}


def build_specs(info: ModelInfo, opts: ExportOptions = ExportOptions()) -> dict[str, ComponentSpec]:
    """All component specs for one model, keyed by component name (export order), with their bf16 bounds and
    what quantization covers."""
    out = {}
    for make in (_lm_decode, _token_embed, _diffusion_sampler, _diffusion_head, _acoustic_decoder_step,
                 _semantic_encoder_step, _acoustic_encoder, _connectors):
        s = make(info, opts)
        if s.name in QUANTIZED:
            s = dataclasses.replace(s, quant=QUANTIZED[s.name])
        if s.name in BF16_TOL:
            s = dataclasses.replace(s, tolerance={**s.tolerance, Precision.BF16: BF16_TOL[s.name]},
                                    tolerance_notes=BF16_NOTE)
        out[s.name] = s
    return out


def _half_batch(opts: ExportOptions) -> dict:
    """The profile of the per-frame components that run one row per stream (CFG's rows are lm_decode's)."""
    return {"batch": _r(1, 1, opts.max_batch // 2)}


def _lm_decode(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    H, L, KV, D = info.hidden, info.layers, info.kv_heads, info.head_dim
    kv_shape = (L, "batch", KV, "kv_len", D)

    def sample(d, p, g):
        b, s, t = d["batch"], d["kv_len"], d.get("seq", 1)
        return {"embeds": _randn((b, t, H), p, g, 0.5), "past_k": _randn((L, b, KV, s, D), p, g),
                "past_v": _randn((L, b, KV, s, D), p, g),
                "cache_len": torch.randint(0, s + 1, (b,), generator=g, dtype=torch.int64)}

    # decode: T = 1, one profile per KV bucket; prefill: one row, a chunk of T <= prefill_chunk tokens after a
    # cache of the prompt so far (`vvtrt.runtime.prefill`: 1 slot for the first chunk, then multiples of the chunk)
    chunk = min(opts.prefill_chunk, opts.max_prompt)
    past_max = max(1, (opts.max_prompt - 1) // chunk * chunk)
    prefill_profile = {"batch": _r(1, 1, 1), "seq": _r(1, chunk, chunk),
                       "kv_len": _r(1, min(chunk, past_max), past_max)}
    b0, batch = opts.kv_buckets[0], _r(1, 2, opts.max_batch)
    return ComponentSpec(
        "lm_decode", "T new LLM tokens for a batch of rows against a static KV cache (decode steps: T = 1 against "
                     "a length bucket; the prompt prefill: chunks of the prompt against the cache so far)",
        (T("embeds", ("batch", "seq", H)), T("past_k", kv_shape), T("past_v", kv_shape),
         T("cache_len", ("batch",), "int64")),
        (T("hidden", ("batch", 1, H)), T("logits", ("batch", 4), "float32"),
         T("new_k", (L, "batch", KV, "seq", D)), T("new_v", (L, "batch", KV, "seq", D))),
        lambda m, k: lm.LMDecode(m, ModelInfo.from_model(m)), sample,
        (*({"batch": batch, "seq": _r(1, 1, 1), "kv_len": _r(s, s, s)} for s in opts.kv_buckets), prefill_profile),
        {"batch": 2, "seq": 3, "kv_len": 32},
        ({"batch": 1, "seq": min(41, chunk), "kv_len": min(23, past_max)},
         {"batch": 1, "seq": min(7, chunk), "kv_len": 1},
         {"batch": 2, "seq": 1, "kv_len": b0}, {"batch": min(6, opts.max_batch), "seq": 1, "kv_len": b0}),
        default_dims={"seq": 1},
    )


def _token_embed(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    return ComponentSpec(
        "token_embed", "token ids -> LLM input embeddings (non-diffusion steps)",
        (T("token", ("batch",), "int64"),), (T("embeds", ("batch", 1, info.hidden)),),
        lambda m, k: lm.TokenEmbed(m),
        lambda d, p, g: {"token": torch.randint(0, info.vocab, (d["batch"],), generator=g)},
        ({"batch": _r(1, 2, opts.max_batch)},), {"batch": 2}, ({"batch": 1}, {"batch": 5}),
    )


def _diffusion_sampler(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    H, Z = info.hidden, info.latent_dim

    def sample(d, p, g):
        b = d["batch"]
        return {"cond_pos": _randn((b, H), p, g), "cond_neg": _randn((b, H), p, g),
                "noise": torch.randn((b, Z), generator=g), "cfg_scale": torch.full((b,), 1.3)}

    return ComponentSpec(
        "diffusion_sampler", f"the whole {opts.steps}-step DPM-Solver++ 2M loop with CFG on the head",
        (T("cond_pos", ("batch", H)), T("cond_neg", ("batch", H)), T("noise", ("batch", Z), "float32"),
         T("cfg_scale", ("batch",), "float32")),
        (T("latent", ("batch", 1, Z)),),
        lambda m, k: diffusion.DiffusionSampler(m, k), sample,
        (_half_batch(opts),), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
    )


def _diffusion_head(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    H, Z = info.hidden, info.latent_dim

    def sample(d, p, g):
        n = d["rows"]
        return {"noisy": _randn((n, Z), p, g), "timestep": torch.randint(0, 1000, (n,), generator=g).float(),
                "condition": _randn((n, H), p, g)}

    return ComponentSpec(
        "diffusion_head", "one diffusion-head call (debugging and parity)",
        (T("noisy", ("rows", Z)), T("timestep", ("rows",), "float32"), T("condition", ("rows", H))),
        (T("v", ("rows", Z)),),
        lambda m, k: diffusion.DiffusionHeadStep(m), sample,
        ({"rows": _r(1, 2, opts.max_batch)},), {"rows": 2}, ({"rows": 1}, {"rows": 6}),
    )


def _acoustic_decoder_step(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    Z, HOP, S = info.latent_dim, info.hop, info.decoder_state

    def sample(d, p, g):
        b = d["batch"]
        return {"latent": _randn((b, 1, Z), p, g), "state": _randn((b, S), p, g, 0.5)}

    return ComponentSpec(
        "acoustic_decoder_step", "one latent -> 3200 samples, streaming conv state in and out",
        (T("latent", ("batch", 1, Z)), T("state", ("batch", S))),
        (T("audio", ("batch", 1, HOP)), T("state_out", ("batch", S))),
        lambda m, k: conv_stream.AcousticDecoderStep(m), sample,
        (_half_batch(opts),), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
        state=(("state", "state_out"),),
    )


def _semantic_encoder_step(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    SEM, HOP, S = info.semantic_dim, info.hop, info.semantic_state

    def sample(d, p, g):
        b = d["batch"]
        return {"audio": _randn((b, 1, HOP), p, g, 0.5), "state": _randn((b, S), p, g, 0.5)}

    return ComponentSpec(
        "semantic_encoder_step", "3200 samples -> one semantic feature, streaming conv state in and out",
        (T("audio", ("batch", 1, HOP)), T("state", ("batch", S))),
        (T("semantic", ("batch", 1, SEM)), T("state_out", ("batch", S))),
        lambda m, k: conv_stream.SemanticEncoderStep(m), sample,
        (_half_batch(opts),), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
        state=(("state", "state_out"),),
    )


def _acoustic_encoder(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    H, Z, HOP = info.hidden, info.latent_dim, info.hop

    def sample(d, p, g):
        # A clip of any length (not a multiple of the hop) has ceil(samples / HOP) frames, as the original
        s, n = d["voices"], d.get("samples", d["frames"] * HOP)
        f = -(-n // HOP)
        if f != d["frames"]:
            raise ValueError(f"acoustic_encoder dims {dict(d)}: frames must be ceil(samples / {HOP}) = {f}")
        return {"wav": _randn((s, 1, n), p, g, 0.1),
                "noise_std": (torch.randn((s,), generator=g) * info.vae_std),
                "noise": torch.randn((s, f, Z), generator=g)}

    mf = opts.max_voice_frames
    return ComponentSpec(
        "acoustic_encoder", "voice prompts (non-streaming) -> latents and LLM embeddings",
        (T("wav", ("voices", 1, "samples")), T("noise_std", ("voices",), "float32"),
         T("noise", ("voices", "frames", Z), "float32")),
        (T("latents", ("voices", "frames", Z)), T("embeds", ("voices", "frames", H))),
        lambda m, k: conv_stream.AcousticEncoder(m), sample,
        # Any sample count: each clip is encoded at its own length (conv_stream.encode_at_own_length).
        ({"voices": _r(1, 1, opts.max_voices), "frames": _r(1, min(8, mf), mf),
          "samples": _r(1, HOP * min(8, mf), HOP * mf)},),
        {"voices": 2, "frames": 3, "samples": 3 * HOP - 1000},
        ({"voices": 1, "frames": 2, "samples": 2 * HOP}, {"voices": 2, "frames": 5, "samples": 5 * HOP - 1234},
         {"voices": 1, "frames": 1, "samples": 777}),
    )


def _connectors(info: ModelInfo, opts: ExportOptions) -> ComponentSpec:
    H, Z, SEM = info.hidden, info.latent_dim, info.semantic_dim
    return ComponentSpec(
        "connectors", "acoustic latent + semantic feature -> next LLM input embedding",
        (T("latent", ("batch", 1, Z)), T("semantic", ("batch", 1, SEM))), (T("embeds", ("batch", 1, H)),),
        lambda m, k: conv_stream.Connectors(m),
        lambda d, p, g: {"latent": _randn((d["batch"], 1, Z), p, g), "semantic": _randn((d["batch"], 1, SEM), p, g)},
        (_half_batch(opts),), {"batch": 2}, ({"batch": 1}, {"batch": 3}),
    )


COMPONENTS = ("lm_decode", "token_embed", "diffusion_sampler", "diffusion_head",
              "acoustic_decoder_step", "semantic_encoder_step", "acoustic_encoder", "connectors")


def check_components(names, choices: tuple[str, ...] = COMPONENTS, what: str = "component") -> tuple[str, ...]:
    """Validate a user's component list (comma string or iterable) against `choices`; all of them when empty."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names) or choices
    bad = [n for n in names if n not in choices]
    if bad:
        raise InputError(f"unknown {what}(s) {', '.join(bad)}: choose from {', '.join(choices)}")
    return names
