"""One front door for models: a preset name or a checkpoint directory resolved in one pass to its layout,
validated config, model (at its precision and device), `ModelInfo` and text tokenizer.

    r = resolve("/data/VibeVoice-1.5B", dtype=torch.bfloat16, device="cuda", tokenizer_dir="/data/Qwen2.5-1.5B")
    r.layout, r.info.hidden, r.model, r.tokenizer.encode(" Speaker 0: Hi\\n")

Order: the quick checks of the source (config, layout, weight files; no torch), the tokenizer (so a
missing one is said before any weights are touched), the full key/shape validation from the safetensors
headers on the meta device, and only then the load.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from vvtrt.errors import ModelError
from vvtrt.model.presets import ModelSource, resolve_model

log = logging.getLogger(__name__)
PRESET_LAYOUT = "preset"


@dataclass(frozen=True)
class ResolvedModel:
    """A model source with everything the verbs need from it."""

    source: ModelSource
    layout: str              # "preset", "original", "transformers"
    config: object           # transformers `VibeVoiceConfig`
    model: object | None     # the loaded module (None when resolved with load=False)
    info: object             # `vvtrt.components.info.ModelInfo`
    tokenizer: object        # `vvtrt.model.text_tokenizer.TextTokenizer`


def resolve(source, seed: int = 0, dtype=None, device=None, tokenizer_dir=None, load: bool = True) -> ResolvedModel:
    """Resolve `source` (a preset name, a checkpoint directory, or a `ModelSource` read back from a work
    dir) with typed errors only. `load=False` validates everything but allocates no weights (the info
    then comes from the meta-device model)."""
    from vvtrt.components.info import ModelInfo
    from vvtrt.model.text_tokenizer import load_text_tokenizer

    if isinstance(source, ModelSource):
        src = source
    else:
        src = resolve_model(str(source), seed, tokenizer_dir)
    tokenizer = load_text_tokenizer(src)
    if src.preset:
        layout, (config, model, shape_model) = PRESET_LAYOUT, _preset(src, dtype, device, load)
    else:
        from vvtrt.model.checkpoint import load_checkpoint, meta_model, plan_checkpoint

        plan = plan_checkpoint(src.path)
        layout, config = plan.layout.name, plan.config
        model = load_checkpoint(plan, dtype=dtype, device=device) if load else None
        shape_model = model if model is not None else meta_model(plan.layout, plan.config)
    info = ModelInfo.from_model(shape_model)
    _check_vocabulary(src, tokenizer, info.vocab)
    log.info("resolved %s: %s layout, hidden %d, %d layers", src.label, layout, info.hidden, info.layers)
    return ResolvedModel(src, layout, config, model, info, tokenizer)


def _preset(src: ModelSource, dtype, device, load: bool):
    from vvtrt.model.checkpoint import meta_model
    from vvtrt.model.layouts import TRANSFORMERS
    from vvtrt.model.presets import PRESETS, build_model, preset_config

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
