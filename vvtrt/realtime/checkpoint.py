"""Microsoft's original Realtime checkpoint layout (`microsoft/VibeVoice-Realtime-0.5B`: one safetensors
file, 605 tensors) validated before anything is allocated, then loaded straight into place, with the
same machinery and strictness as the 1.5B loader (`vvtrt.model.checkpoint`): a missing, unexpected,
mis-shaped or non-float tensor is a `ModelError` naming the first offenders; the model is built on the
meta device and every stored tensor is read into its own buffer at the target dtype.

Tensor names map onto ours with the 1.5B original-layout rules (`original_layout.map_key`: decoder,
prediction head, connector, latent scalars); the LMs, `tts_input_types` and `tts_eos_classifier` keep
their names. Two kinds of stored tensor are known and not loaded: `model.tts_language_model.embed_tokens`
(stored by Microsoft's class, never used; its shape is still checked) and the acoustic encoder that
Microsoft's class builds but the release leaves out (accepted if a re-saved checkpoint carries it).
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from vvtrt.errors import ModelError
from vvtrt.model import original_layout
from vvtrt.model.checkpoint import CheckpointPlan, _expected, _match, load_checkpoint, meta_model
from vvtrt.model.layouts import REALTIME_ORIGINAL, read_config
from vvtrt.model.safetensors_io import scan_checkpoint, weight_files
from vvtrt.realtime.config import RealtimeConfig

log = logging.getLogger(__name__)
UNUSED_EMBED = "model.tts_language_model.embed_tokens.weight"
ENCODER_PREFIX = "model.acoustic_tokenizer.encoder."


REALTIME_LAYOUT = REALTIME_ORIGINAL  # config -> RealtimeConfig, model -> RealtimeModel (vvtrt.model.layouts)


def plan_realtime_checkpoint(root) -> CheckpointPlan:
    """Validate an original Realtime checkpoint directory from config.json and the safetensors headers."""
    t0 = time.perf_counter()
    root = Path(root)
    raw = read_config(root)
    weight_files(root)
    if raw.get("model_type") != "vibevoice_streaming" or not REALTIME_LAYOUT.signature <= set(raw):
        raise ModelError(f"{root}/config.json is not an original VibeVoice-Realtime config (needs model_type "
                         f"'vibevoice_streaming' and {', '.join(sorted(REALTIME_LAYOUT.signature))})")
    cfg = REALTIME_LAYOUT.config(raw, root)
    stored = scan_checkpoint(root)
    model = meta_model(REALTIME_LAYOUT, cfg)
    expected, tied = _expected(model)
    skipped = {name for name, _ in model.named_buffers()} - set(expected)
    skipped |= {original_layout.map_key(n) for n in stored if n.startswith(ENCODER_PREFIX)}
    if UNUSED_EMBED in stored:
        shape = stored[UNUSED_EMBED].shape
        if shape != (cfg.vocab, cfg.hidden):
            raise ModelError(f"{root}: the weights do not match config.json (original Realtime layout) - "
                             f"{UNUSED_EMBED} expected {(cfg.vocab, cfg.hidden)}, found {shape}. Nothing was loaded")
        skipped.add(UNUSED_EMBED)
    entries = _match(root, REALTIME_LAYOUT, stored, expected, tied, skipped)
    log.info("validated %s (original Realtime layout): %d tensors in %.2f s", root, len(entries),
             time.perf_counter() - t0)
    return CheckpointPlan(root, REALTIME_LAYOUT, raw, cfg, expected, entries)


def load_realtime_checkpoint(root, dtype=None, device=None):
    """The `RealtimeModel` of an original Realtime checkpoint directory (validated first)."""
    model = load_checkpoint(plan_realtime_checkpoint(root), dtype=dtype, device=device)
    model.rt_config = _named(model.rt_config, Path(root).name)
    return model


def _named(cfg: RealtimeConfig, name: str) -> RealtimeConfig:
    import dataclasses

    return dataclasses.replace(cfg, name=name)


# -- our names -> original names (writing original-layout checkpoints: test fixtures, conversions) -------
_DEC = "model.audio_tower.decoder."
_ODEC = "model.acoustic_tokenizer.decoder."
_INVERSE = [
    (re.compile(r"\.mixer\.conv\."), ".mixer.conv.conv.conv."),
    (re.compile(rf"^{re.escape(_DEC)}stem\.conv\.conv\."), _ODEC + "upsample_layers.0.0.conv.conv."),
    (re.compile(rf"^{re.escape(_DEC)}stem\.stage\."), _ODEC + "stages.0."),
    (re.compile(rf"^{re.escape(_DEC)}conv_layers\.(\d+)\.convtr\."),
     lambda m: f"{_ODEC}upsample_layers.{int(m.group(1)) + 1}.0.convtr."),
    (re.compile(rf"^{re.escape(_DEC)}conv_layers\.(\d+)\.stage\."),
     lambda m: f"{_ODEC}stages.{int(m.group(1)) + 1}."),
    (re.compile(rf"^{re.escape(_DEC)}head\.conv\."), _ODEC + "head.conv.conv."),
    (re.compile(r"^model\.diffusion_head\.timestep_proj\.fc1\."), "model.prediction_head.t_embedder.mlp.0."),
    (re.compile(r"^model\.diffusion_head\.timestep_proj\.fc2\."), "model.prediction_head.t_embedder.mlp.2."),
    (re.compile(r"^model\.diffusion_head\.layers\.(\d+)\.linear\."), r"model.prediction_head.layers.\1.adaLN_modulation.1."),
    (re.compile(r"^model\.diffusion_head\.final_layer\.linear_1\."), "model.prediction_head.final_layer.adaLN_modulation.1."),
    (re.compile(r"^model\.diffusion_head\.final_layer\.linear_2\."), "model.prediction_head.final_layer.linear."),
    (re.compile(r"^model\.diffusion_head\."), "model.prediction_head."),
    *[(re.compile(rf"^model\.multi_modal_projector\.{a}\."), f"model.acoustic_connector.{b}.")
      for a, b in (("linear_1", "fc1"), ("act", "norm"), ("linear_2", "fc2"))],
    (re.compile(r"^model\.latent_scaling_factor$"), "model.speech_scaling_factor"),
    (re.compile(r"^model\.latent_bias_factor$"), "model.speech_bias_factor"),
]


def to_original_key(name: str) -> str:
    """Our state-dict name as Microsoft's Realtime checkpoint stores it (inverse of `map_key`)."""
    for pattern, repl in _INVERSE:
        new = pattern.sub(repl, name)
        if new != name:
            name = new
            if not pattern.pattern.startswith(r"\.mixer"):
                break
    return name


def save_original_checkpoint(model, root, dtype=None) -> Path:
    """Write `model` as an original-layout Realtime checkpoint directory (config.json + model.safetensors,
    the unused TTS embedding table included, as Microsoft's release stores it)."""
    from safetensors.torch import save

    from vvtrt.fsio import atomic_write_bytes, atomic_write_json
    from vvtrt.realtime.config import original_config_json

    root = Path(root)
    cfg = model.rt_config
    tensors = {to_original_key(k): v.detach().to(dtype or v.dtype).contiguous().cpu()
               for k, v in model.state_dict().items()}
    tensors[UNUSED_EMBED] = tensors["model.language_model.embed_tokens.weight"].clone()
    atomic_write_bytes(root / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write_json(root / "config.json", original_config_json(cfg))
    return root
