"""VibeVoice models: the built-in random-weight presets and local HF-format checkpoints."""
from vvtrt.model.presets import PRESETS, ModelSource, build_model, load_model, resolve_model

__all__ = ["PRESETS", "ModelSource", "build_model", "load_model", "resolve_model"]
