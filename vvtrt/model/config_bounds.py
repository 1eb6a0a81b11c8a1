"""Bounds on the sizes and counts a checkpoint's config.json declares, checked on the raw JSON before any
config class or model is built: transformers' config setup loops over its layer count (a
`num_hidden_layers` of 1e9 never returns) and a zero head count divides by zero, so an absurd or broken
value must be one clear `ModelError` first. The bounds are far above every released VibeVoice model
(7B: 28 layers, hidden 3584, 152k vocabulary, 64k context)."""
from __future__ import annotations

import re

from vvtrt.errors import ModelError

# key (at any depth) -> (lowest, highest) allowed integer value
SIZE_BOUNDS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 512), "tts_backbone_num_hidden_layers": (1, 511), "max_window_layers": (0, 512),
    "head_layers": (1, 128), "hidden_size": (1, 65536), "intermediate_size": (1, 2**20),
    "vocab_size": (1, 2**22), "num_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024),
    "head_dim": (1, 4096), "max_position_embeddings": (1, 2**22), "vae_dim": (1, 8192),
    "acoustic_vae_dim": (1, 8192), "semantic_vae_dim": (1, 8192), "latent_size": (1, 8192),
    "speech_vae_dim": (1, 8192), "encoder_n_filters": (1, 8192), "decoder_n_filters": (1, 8192),
    "n_filters": (1, 8192), "channels": (1, 64), "ddpm_num_steps": (1, 100_000),
    "ddpm_num_inference_steps": (1, 1000), "ddpm_batch_mul": (1, 256),
}
LIST_BOUNDS: dict[str, tuple[int, int]] = {  # every element of these lists (or "3-3-8" strings)
    "encoder_depths": (0, 64), "decoder_depths": (0, 64), "encoder_ratios": (1, 64), "decoder_ratios": (1, 64),
    "depths": (0, 64), "downsampling_ratios": (1, 64), "upsampling_ratios": (1, 64),
}
MAX_LIST = 32
HEADED = ("decoder_config", "text_config")  # sub-configs of the language model


def _is_int(value) -> bool:
    return type(value) is int


def _check_value(where: str, path: str, key: str, value) -> None:
    if key in SIZE_BOUNDS and value is not None:
        lo, hi = SIZE_BOUNDS[key]
        if not _is_int(value) or not lo <= value <= hi:
            raise ModelError(f"{where}: `{path}` = {value!r} must be an integer from {lo} to {hi}: fix config.json "
                             "or re-download the checkpoint")
    elif key in LIST_BOUNDS and value is not None:
        lo, hi = LIST_BOUNDS[key]
        items = value
        if isinstance(value, str):
            items = [int(x) if re.fullmatch(r"\d{1,9}", x) else x for x in value.split("-")]
        if (not isinstance(items, list) or not 0 < len(items) <= MAX_LIST
                or not all(_is_int(x) and lo <= x <= hi for x in items)):
            raise ModelError(f"{where}: `{path}` = {value!r:.80} must list at most {MAX_LIST} integers from {lo} to "
                             f"{hi}: fix config.json or re-download the checkpoint")


def _walk(where: str, node: dict, prefix: str, depth: int) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 4:
                _walk(where, value, f"{path}.", depth + 1)
            continue
        _check_value(where, path, str(key), value)


def _check_heads(where: str, raw: dict) -> None:
    for name in HEADED:
        sub = raw.get(name)
        if not isinstance(sub, dict):
            continue
        heads = sub.get("num_attention_heads")
        kv = sub.get("num_key_value_heads", heads)
        if _is_int(heads) and _is_int(kv) and heads % kv:
            raise ModelError(f"{where}: `{name}.num_attention_heads` = {heads} is not a multiple of "
                             f"`{name}.num_key_value_heads` = {kv}: fix config.json or re-download the checkpoint")


def check_config_sizes(raw: dict, where) -> None:
    """Every size and count in `raw` (a config.json) within `SIZE_BOUNDS` / `LIST_BOUNDS`, and the
    language model's head counts consistent; a `ModelError` naming the key otherwise."""
    _walk(str(where), raw, "", 0)
    _check_heads(str(where), raw)
