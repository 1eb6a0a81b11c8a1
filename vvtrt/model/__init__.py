"""VibeVoice models: the built-in random-weight presets and local checkpoint directories (Microsoft's original
layout or transformers'), resolved through one front door (`resolve`)."""
from vvtrt.model.presets import PRESETS, ModelSource, build_model, load_model, resolve_model
from vvtrt.model.resolve import ResolvedModel, resolve

__all__ = ["PRESETS", "ModelSource", "ResolvedModel", "build_model", "load_model", "resolve", "resolve_model"]
