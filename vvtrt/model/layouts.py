"""Checkpoint layouts: which on-disk format a model directory holds, told apart by the sub-config keys of
its config.json (both VibeVoice 1.5B formats say `model_type: "vibevoice"`, so never by model_type).

Each `Layout` knows how to turn its config.json into transformers' `VibeVoiceConfig` and its tensor names
into transformers' names. Adding a layout (the original Realtime one, say) is one more entry in
`LAYOUTS`: its signature keys, a config mapping, a key mapping and, for another architecture, its own
`new_model` and `family` (the original Realtime layout: family "realtime", loaded by
`vvtrt.realtime.checkpoint`, exported into Realtime work dirs). A layout that is recognised but not
implemented yet carries `unsupported`, so its users get a sentence instead of a wrong guess.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vvtrt.errors import ModelError
from vvtrt.model import kinds, original_layout

log = logging.getLogger(__name__)

MODEL_TYPES = ("vibevoice", "vibevoice_streaming")
# Hugging Face repositories of the Qwen2.5 tokenizer each released language model was trained with, by
# (hidden size, vocabulary size) of the language model.
QWEN_TOKENIZERS = {(1536, 151936): ("VibeVoice-1.5B", "Qwen/Qwen2.5-1.5B"),
                   (3584, 152064): ("VibeVoice-Large (7B)", "Qwen/Qwen2.5-7B"),
                   (896, 151936): ("VibeVoice-Realtime-0.5B", "Qwen/Qwen2.5-0.5B")}


def _identity(name: str) -> str:
    return name


def _transformers_config(raw: dict):
    from transformers import VibeVoiceConfig

    return VibeVoiceConfig.from_dict(raw)


def _original_config(raw: dict):
    from transformers import VibeVoiceConfig

    return VibeVoiceConfig(**original_layout.transformers_config_dict(raw))


def _realtime_config(raw: dict):
    return kinds.get(kinds.REALTIME).load("config_from_original")(raw)


def _realtime_model(cfg):
    return kinds.get(kinds.REALTIME).load("new_model")(cfg)


def _vibevoice_model(config):
    from transformers import VibeVoiceForConditionalGeneration

    return VibeVoiceForConditionalGeneration(config)


@dataclass(frozen=True)
class Layout:
    """One on-disk checkpoint format and how it maps onto the model vvtrt runs."""

    name: str
    signature: frozenset[str]                 # top-level config.json keys that identify the layout
    ships_tokenizer: bool                     # whether the released checkpoints carry tokenizer files
    to_config: Callable[[dict], object] | None = None   # raw config.json -> transformers config
    map_key: Callable[[str], str] = _identity            # stored tensor name -> model state-dict name
    new_model: Callable[[object], object] = _vibevoice_model  # config -> module (built on the current device)
    unsupported: str = ""                     # non-empty: recognised, not loadable yet (the reason)
    family: str = "longform"                  # "longform" (1.5B / 7B) or "realtime" (the streaming model)
    hint: str = field(default="", compare=False)

    def check_supported(self, where: Path) -> None:
        if self.unsupported:
            raise ModelError(f"{where} holds a checkpoint in the {self.name} layout: {self.unsupported}")

    def config(self, raw: dict, where: Path):
        """The transformers config of this layout's config.json (a `ModelError` when it is unusable)."""
        self.check_supported(where)
        try:
            return self.to_config(raw)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers' config validation raises many kinds
            raise ModelError(f"{where}: config.json ({self.name} layout) is invalid: {type(exc).__name__}: "
                             f"{exc}") from exc


ORIGINAL = Layout("original", frozenset(original_layout.SUB_CONFIGS), ships_tokenizer=False,
                  to_config=_original_config, map_key=original_layout.map_key,
                  hint="Microsoft's release: microsoft/VibeVoice-1.5B, microsoft/VibeVoice-Large")
TRANSFORMERS = Layout("transformers", frozenset({"text_config", "audio_config"}), ships_tokenizer=True,
                      to_config=_transformers_config, hint="transformers' port: vibevoice/VibeVoice-1.5B-hf")
# The original Realtime layout (microsoft/VibeVoice-Realtime-0.5B): its config becomes a `RealtimeConfig`
# and its model a `RealtimeModel` (validated and loaded by vvtrt.realtime.checkpoint, not the long-form
# loader: `vvtrt.model.resolve` sends it there by its family).
REALTIME_ORIGINAL = Layout(
    "original Realtime", frozenset({"decoder_config", "acoustic_tokenizer_config", "diffusion_head_config",
                                    "tts_backbone_num_hidden_layers"}), ships_tokenizer=False,
    to_config=_realtime_config, map_key=original_layout.map_key, new_model=_realtime_model, family="realtime",
    hint="microsoft/VibeVoice-Realtime-0.5B")
LAYOUTS: tuple[Layout, ...] = (ORIGINAL, TRANSFORMERS, REALTIME_ORIGINAL)


def read_config(root: Path) -> dict:
    """config.json of a checkpoint directory as a dict (a `ModelError` saying what is wrong otherwise)."""
    if not root.is_dir():
        raise ModelError(f"{root} is not a directory: pass a VibeVoice checkpoint directory")
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{root} has no config.json: not a VibeVoice checkpoint directory")
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_file} is not valid JSON ({exc}); re-download or fix the checkpoint") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{cfg_file} is not a JSON object; re-download or fix the checkpoint")
    if raw.get("model_type") not in MODEL_TYPES:
        raise ModelError(f"{cfg_file} has model_type={raw.get('model_type')!r}, expected one of "
                         f"{', '.join(map(repr, MODEL_TYPES))}: not a VibeVoice checkpoint")
    from vvtrt.model.config_bounds import check_config_sizes

    check_config_sizes(raw, cfg_file)  # before transformers' config setup, which an absurd size can hang
    return raw


def detect_layout(raw: dict, where: Path) -> Layout:
    """The layout whose signature keys config.json has; none or several is a `ModelError` saying what
    was found and what each known layout looks like."""
    keys = set(raw)
    found = [layout for layout in LAYOUTS if layout.signature <= keys]
    if len(found) == 1:
        return found[0]
    subs = sorted(k for k, v in raw.items() if isinstance(v, dict)) or ["none"]
    known = "; ".join(f"{lay.name} ({lay.hint}): {', '.join(sorted(lay.signature))}" for lay in LAYOUTS)
    what = "matches several layouts (" + ", ".join(lay.name for lay in found) + ")" if found else \
        "matches no checkpoint layout vvtrt knows"
    raise ModelError(f"{where}/config.json (model_type {raw.get('model_type')!r}, sub-configs: {', '.join(subs)}) "
                     f"{what}. Known layouts and their config keys: {known}")


def tokenizer_advice(raw: dict) -> str:
    """Which tokenizer a checkpoint needs, as a sentence naming the Hugging Face repository."""
    text = raw.get("decoder_config") or raw.get("text_config") or {}
    key = (text.get("hidden_size"), text.get("vocab_size")) if isinstance(text, dict) else (None, None)
    files = "(tokenizer.json, tokenizer_config.json, vocab.json, merges.txt)"
    if key in QWEN_TOKENIZERS:
        model, repo = QWEN_TOKENIZERS[key]
        return (f"{model} needs the {repo} tokenizer: pass --tokenizer {repo} (its Hub id; `hf download {repo}` "
                f"fetches it) or --tokenizer DIR, a directory of its files {files}")
    return (f"get the Qwen2.5 tokenizer its language model was trained with {files} - Qwen/Qwen2.5-1.5B for "
            "VibeVoice-1.5B, Qwen/Qwen2.5-7B for the 7B, Qwen/Qwen2.5-0.5B for VibeVoice-Realtime-0.5B - and pass "
            "its Hub id or directory, e.g. --tokenizer Qwen/Qwen2.5-1.5B")
