"""One front door for models: a preset name or a checkpoint directory resolved in one pass to its layout,
validated config, model (at its precision and device), `ModelInfo` and text tokenizer. Every verb goes
through here: `export` resolves the `--model` it is given, and the verbs that read a work dir (parity,
synth, bench, serving) load the model recorded there with `load_model`.

    r = resolve("/data/VibeVoice-1.5B", dtype=torch.bfloat16, device="cuda", tokenizer_dir="/data/Qwen2.5-1.5B")
    r.layout, r.info.hidden, r.model, r.tokenizer.encode(" Speaker 0: Hi\\n")

Order: the quick checks of the source (`parse_source`: config, layout, weight files; no torch), the
tokenizer (so a missing one is said before any weights are touched), the full key/shape validation from
the safetensors headers on the meta device, and only then the load.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vvtrt.errors import InputError, ModelError
from vvtrt.model.presets import PRESETS

log = logging.getLogger(__name__)
PRESET_LAYOUT = "preset"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a preset name or a local checkpoint directory, the init seed, and the
    tokenizer directory given for checkpoints that ship none (`--tokenizer DIR`)."""

    preset: str | None = None
    path: str | None = None
    seed: int = 0
    tokenizer: str | None = None

    @property
    def label(self) -> str:
        return self.preset if self.preset else str(self.path)

    def identity(self) -> dict:
        """What the weights (and so every exported graph) depend on: the tokenizer is not part of it."""
        return {"preset": self.preset, "path": self.path, "seed": self.seed}

    def to_json(self) -> dict:
        """The work dir's record of the source; `tokenizer` only when one was given, so records written
        before it existed stay equal."""
        return {**self.identity(), **({"tokenizer": self.tokenizer} if self.tokenizer else {})}


def check_tokenizer_dir(tokenizer) -> str | None:
    """The absolute path of a `--tokenizer DIR` or Hub id (None stays None); an `InputError` when it is no
    directory."""
    if tokenizer is None:
        return None
    from vvtrt.model.hub import local_source

    tok = Path(local_source(str(tokenizer), "tokenizer")).expanduser()
    if not tok.is_dir():
        raise InputError(f"tokenizer directory {tok} does not exist or is not a directory: pass the "
                         "directory of a Qwen2.5 tokenizer (tokenizer.json, tokenizer_config.json, ...) or its "
                         "Hub id, e.g. --tokenizer Qwen/Qwen2.5-1.5B")
    return str(tok.resolve())


def parse_source(spec: str, seed: int = 0, tokenizer: str | None = None) -> ModelSource:
    """`tiny`/`1.5b`/`7b`, a path to a VibeVoice checkpoint directory (original or transformers layout) or
    a Hugging Face Hub id (`vvtrt.model.hub`: its snapshot directory), plus an optional tokenizer directory. Quick checks only (config, layout, weight files present; no
    torch): `resolve` validates every tensor before allocating. Raises a typed error otherwise."""
    tok = check_tokenizer_dir(tokenizer)
    key = spec.strip().lower()
    if key in PRESETS:
        return ModelSource(preset=key, seed=seed, tokenizer=tok)
    from vvtrt.model.hub import local_source

    path = Path(local_source(spec)).expanduser()
    if not path.exists():
        raise InputError(f"unknown model {spec!r}: use a preset ({', '.join(PRESETS)}), a local checkpoint "
                         "directory or a Hugging Face Hub id (e.g. microsoft/VibeVoice-1.5B)")
    _check_checkpoint_dir(path)
    return ModelSource(path=str(path.resolve()), seed=seed, tokenizer=tok)


def model_kind(spec: str) -> str:
    """"realtime" for a Realtime preset name or a directory holding an original Realtime checkpoint,
    else "longform" (whatever else is wrong with `spec` is said by the verb that resolves it)."""
    from vvtrt.model.layouts import detect_layout, read_config
    from vvtrt.model.kinds import preset_kind

    kind = preset_kind(str(spec))
    if kind:
        return kind
    path = Path(str(spec)).expanduser()
    if not (path / "config.json").is_file():
        return "longform"
    try:
        return detect_layout(read_config(path), path).family
    except ModelError:
        return "longform"


def _check_checkpoint_dir(path: Path) -> None:
    """config.json readable, a VibeVoice model_type, weight files present, a layout vvtrt loads."""
    from vvtrt.model.layouts import detect_layout, read_config
    from vvtrt.model.safetensors_io import weight_files

    cfg = read_config(path)
    weight_files(path)
    detect_layout(cfg, path).check_supported(path)


@dataclass(frozen=True)
class ResolvedModel:
    """A model source with everything the verbs need from it."""

    source: ModelSource
    layout: str              # "preset", "original", "transformers"
    config: object           # transformers `VibeVoiceConfig`
    model: object | None     # the loaded module (None when resolved with load=False)
    info: object             # `vvtrt.components.info.ModelInfo`
    tokenizer: object | None  # `vvtrt.model.text_tokenizer.TextTokenizer` (None: resolved without one)
    plan: object | None = field(default=None, repr=False)  # `CheckpointPlan` of a checkpoint directory

    def load(self, dtype=None, device=None):
        """Another copy of the model at `dtype` on `device`, from the already validated source (the same
        seeded init for a preset, the same checked tensors for a checkpoint)."""
        from vvtrt.model.checkpoint import load_checkpoint
        from vvtrt.model.presets import build_model

        if self.plan is None:
            return build_model(self.source.preset, self.source.seed, dtype=dtype, device=device)
        return load_checkpoint(self.plan, dtype=dtype, device=device)


def resolve(source, seed: int = 0, dtype=None, device=None, tokenizer_dir=None, load: bool = True,
            tokenizer: bool = True) -> ResolvedModel:
    """Resolve `source` (a preset name, a checkpoint directory, or a `ModelSource` read back from a work
    dir) with typed errors only. `load=False` validates everything but allocates no weights (the info
    then comes from the meta-device model); `tokenizer=False` leaves the tokenizer out (verbs that load
    the model of a work dir, whose tokenizer was checked when it was exported)."""
    from vvtrt.components.info import ModelInfo
    from vvtrt.model.text_tokenizer import load_text_tokenizer

    src = source if isinstance(source, ModelSource) else parse_source(str(source), seed, tokenizer_dir)
    if src.path and model_kind(src.path) == "realtime":
        raise ModelError(f"{src.path} holds a checkpoint in the original Realtime layout: the streaming Realtime model "
                         "is not a long-form model; export it with `vvtrt export --model DIR` (a Realtime work dir) "
                         "or load it with vvtrt.realtime.runtime.load_realtime")
    text_tokenizer = load_text_tokenizer(src) if tokenizer else None
    plan = None
    if src.preset:
        layout, (config, model, shape_model) = PRESET_LAYOUT, _preset(src, dtype, device, load)
    else:
        from vvtrt.model.checkpoint import load_checkpoint, meta_model, plan_checkpoint

        plan = plan_checkpoint(src.path)
        layout, config = plan.layout.name, plan.config
        model = load_checkpoint(plan, dtype=dtype, device=device) if load else None
        shape_model = model if model is not None else meta_model(plan.layout, plan.config)
    info = ModelInfo.from_model(shape_model)
    if text_tokenizer is not None:
        _check_vocabulary(src, text_tokenizer, info.vocab)
    log.info("resolved %s: %s layout, hidden %d, %d layers", src.label, layout, info.hidden, info.layers)
    return ResolvedModel(src, layout, config, model, info, text_tokenizer, plan)


def load_model(source: ModelSource, dtype=None, device=None):
    """The model of `source` (a preset built, a checkpoint directory validated then read straight into
    place) at `dtype` (default float32) on `device` (default CPU), in eval mode without gradients."""
    return resolve(source, dtype=dtype, device=device, tokenizer=False).model


def _preset(src: ModelSource, dtype, device, load: bool):
    from vvtrt.model.checkpoint import meta_model
    from vvtrt.model.layouts import TRANSFORMERS
    from vvtrt.model.presets import build_model, preset_config

    if load:
        model = build_model(src.preset, src.seed, dtype=dtype, device=device)
        return model.config, model, model
    config = preset_config(PRESETS[src.preset])
    return config, None, meta_model(TRANSFORMERS, config)


def _check_vocabulary(src: ModelSource, tokenizer, vocab: int) -> None:
    """A tokenizer that can produce ids past the model's embedding table is refused now, not mid-run."""
    inner = getattr(tokenizer, "tokenizer", None)
    size = len(inner) if inner is not None else getattr(tokenizer, "vocab_size", 0)
    if size > vocab:
        raise ModelError(f"the tokenizer of {src.tokenizer or src.label} has {size} tokens but the model's "
                         f"vocabulary is {vocab}: pass the tokenizer this model was trained with")
