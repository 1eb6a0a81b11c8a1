"""VibeVoice models: the built-in random-weight presets (`presets`) and local checkpoint directories in
Microsoft's original layout or transformers' (`layouts`, `checkpoint`, `convert`), resolved through one
front door, `vvtrt.model.resolve` (`parse_source`, `resolve`, `load_model`, `ModelSource`)."""
