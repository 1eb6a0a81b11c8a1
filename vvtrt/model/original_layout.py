"""Microsoft's original VibeVoice checkpoint layout (`microsoft/VibeVoice-1.5B`, `microsoft/VibeVoice-Large`)
mapped in memory onto transformers' VibeVoice: the config and the tensor
names (the renaming rules applied in order).

The original config names its parts `decoder_config` (Qwen2), `acoustic_tokenizer_config`,
`semantic_tokenizer_config` and `diffusion_head_config`. Options transformers' port cannot express (a
decoder that is not the mirror of the encoder, another mixer or norm, non-causal convolutions) are
refused by name rather than mapped to something else.
"""
from __future__ import annotations

import re

from vvtrt.errors import ModelError

SUB_CONFIGS = ("decoder_config", "acoustic_tokenizer_config", "semantic_tokenizer_config", "diffusion_head_config")
# Special token ids of the Qwen2.5 tokenizer the original processor uses (not stored in the original config;
# a config that carries its own top-level values, like vvtrt's tiny test checkpoints, keeps them).
QWEN_TOKEN_IDS = {"pad_token_id": 151643, "eos_token_id": 151643, "audio_bos_token_id": 151652,
                  "audio_eos_token_id": 151653, "audio_token_id": 151654}
# Tokenizer options that must hold for transformers' port to compute the same function.
_TOKENIZER_REQUIRED = {"causal": True, "mixer_layer": "depthwise_conv", "layernorm": "RMSNorm",
                       "conv_norm": "none", "disable_last_norm": True, "conv_bias": True,
                       "layernorm_elementwise_affine": True, "channels": 1}
# Diffusion options vvtrt's sampler hard-codes (DPM-Solver++ over the cosine schedule, v-prediction).
_HEAD_REQUIRED = {"prediction_type": "v_prediction", "ddpm_beta_schedule": "cosine", "ddpm_num_steps": 1000}


def _sub(raw: dict, name: str) -> dict:
    sub = raw.get(name)
    if not isinstance(sub, dict):
        raise ModelError(f"config.json: `{name}` must be an object, got {type(sub).__name__}")
    return sub


def _need(sub: dict, where: str, key: str, kind=(int,)):
    value = sub.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in kind:
        raise ModelError(f"config.json: `{where}.{key}` is missing or not a {kind[0].__name__} (got {value!r})")
    return value


def _depths(value, where: str) -> list[int]:
    try:
        depths = [int(d) for d in value.split("-")] if isinstance(value, str) else [int(d) for d in value]
    except (TypeError, ValueError, AttributeError):
        raise ModelError(f"config.json: `{where}.encoder_depths` must look like \"3-3-3-3-3-3-8\", "
                         f"got {value!r}") from None
    if not depths or min(depths) < 0:
        raise ModelError(f"config.json: `{where}.encoder_depths` {value!r} is empty or negative")
    return depths


def _tokenizer_config(sub: dict, where: str, with_decoder: bool) -> dict:
    """An original acoustic/semantic tokenizer config as transformers' tokenizer config kwargs."""
    for key, want in _TOKENIZER_REQUIRED.items():
        if key in sub and sub[key] != want:
            raise ModelError(f"config.json: `{where}.{key}` is {sub[key]!r}; transformers' VibeVoice (and vvtrt) "
                             f"only implement {want!r}")
    ratios = _need(sub, where, "encoder_ratios", (list,))
    depths = _depths(sub.get("encoder_depths"), where)
    if len(depths) != len(ratios) + 1:
        raise ModelError(f"config.json: `{where}` has {len(ratios)} encoder_ratios but {len(depths)} "
                         "encoder_depths (needs one more depth than ratios)")
    if with_decoder:
        mirrored = {"decoder_ratios": (sub.get("decoder_ratios"), (None, ratios)),
                    "decoder_n_filters": (sub.get("decoder_n_filters"), (None, sub.get("encoder_n_filters"))),
                    "decoder_depths": (sub.get("decoder_depths"), (None, "-".join(map(str, depths[::-1]))))}
        for key, (value, ok) in mirrored.items():
            if value not in ok and not (key == "decoder_depths" and _depths(value, where) == depths[::-1]):
                raise ModelError(f"config.json: `{where}.{key}` = {value!r} is not the mirror of the encoder; "
                                 "transformers' VibeVoice cannot express that decoder")
    out = dict(hidden_size=_need(sub, where, "vae_dim"), num_filters=_need(sub, where, "encoder_n_filters"),
               downsampling_ratios=[int(r) for r in reversed(ratios)], depths=depths,
               rms_norm_eps=float(sub.get("layernorm_eps", 1e-5)),
               layer_scale_init_value=float(sub.get("layer_scale_init_value", 1e-6)),
               initializer_range=float(sub.get("weight_init_value", 1e-2)))
    if with_decoder:
        out["vae_std"] = float(sub.get("fix_std", 0.5)) / 0.8
    return out


def _text_config(dec: dict) -> dict:
    where = "decoder_config"
    if dec.get("model_type", "qwen2") != "qwen2":
        raise ModelError(f"config.json: `{where}.model_type` is {dec.get('model_type')!r}; VibeVoice uses 'qwen2'")
    if dec.get("rope_scaling") not in (None, {}):
        raise ModelError(f"config.json: `{where}.rope_scaling` = {dec['rope_scaling']!r} is not supported")
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings")
    text = {k: _need(dec, where, k) for k in keys}
    text.update(model_type="qwen2", tie_word_embeddings=bool(dec.get("tie_word_embeddings", False)),
                rms_norm_eps=float(dec.get("rms_norm_eps", 1e-6)), hidden_act=dec.get("hidden_act", "silu"),
                rope_parameters={"rope_type": "default", "rope_theta": float(dec.get("rope_theta", 1e6))},
                attention_dropout=float(dec.get("attention_dropout", 0.0)))
    if dec.get("use_sliding_window"):
        raise ModelError(f"config.json: `{where}.use_sliding_window` is true; VibeVoice never uses it")
    if dec.get("head_dim") not in (None, text["hidden_size"] // text["num_attention_heads"]):
        raise ModelError(f"config.json: `{where}.head_dim` = {dec['head_dim']} is not hidden/heads")
    if dec.get("torch_dtype") or dec.get("dtype"):
        text["dtype"] = dec.get("torch_dtype") or dec.get("dtype")
    return text


def _head_config(head: dict, hidden: int) -> dict:
    where = "diffusion_head_config"
    for key, want in _HEAD_REQUIRED.items():
        if key in head and head[key] != want:
            raise ModelError(f"config.json: `{where}.{key}` is {head[key]!r}; vvtrt's sampler implements {want!r}")
    ratio = _need(head, where, "head_ffn_ratio", (float, int))
    if head.get("hidden_size", hidden) != hidden:
        raise ModelError(f"config.json: `{where}.hidden_size` {head['hidden_size']} differs from the "
                         f"language model's hidden size {hidden}")
    return dict(hidden_size=hidden, intermediate_size=int(ratio * hidden),
                num_hidden_layers=_need(head, where, "head_layers"),
                rms_norm_eps=float(head.get("rms_norm_eps", 1e-5)), ddpm_beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction", num_train_timesteps=int(head.get("ddpm_num_steps", 1000)))


def transformers_config_dict(raw: dict) -> dict:
    """The keyword arguments of transformers' `VibeVoiceConfig` equivalent to an original config.json."""
    text = _text_config(_sub(raw, "decoder_config"))
    acoustic = _tokenizer_config(_sub(raw, "acoustic_tokenizer_config"), "acoustic_tokenizer_config", True)
    semantic = _tokenizer_config(_sub(raw, "semantic_tokenizer_config"), "semantic_tokenizer_config", False)
    head = _head_config(_sub(raw, "diffusion_head_config"), text["hidden_size"])
    for key, sub in (("acoustic_vae_dim", acoustic), ("semantic_vae_dim", semantic)):
        if key in raw and raw[key] != sub["hidden_size"]:
            raise ModelError(f"config.json: `{key}` = {raw[key]} disagrees with its tokenizer's vae_dim "
                             f"{sub['hidden_size']}")
    latent = _sub(raw, "diffusion_head_config").get("latent_size", acoustic["hidden_size"])
    if latent != acoustic["hidden_size"]:
        raise ModelError(f"config.json: `diffusion_head_config.latent_size` {latent} differs from the acoustic "
                         f"vae_dim {acoustic['hidden_size']}")
    ids = {k: raw.get(k, v) for k, v in QWEN_TOKEN_IDS.items()}
    bad = {k: v for k, v in ids.items() if not isinstance(v, int) or not 0 <= v < text["vocab_size"]}
    if bad:
        raise ModelError(f"config.json: special token ids {bad} are outside the vocabulary ({text['vocab_size']})")
    return dict(text_config=text, audio_config=acoustic, semantic_model_config=semantic,
                diffusion_head_config=head, **ids)


# -- tensor names -------------------------------------------------------------------------------------
def _shift(prefix: str, kind: str, suffix: str):
    """`<prefix>.<kind>_layers.N.0.<suffix>` / `.stages.N.` (N >= 1) -> `conv_layers.{N-1}.`."""
    def layer(m: re.Match) -> str:
        return f"{m.group(1)}conv_layers.{int(m.group(2)) - 1}.{suffix}"

    def stage(m: re.Match) -> str:
        return f"{m.group(1)}conv_layers.{int(m.group(2)) - 1}.stage."

    return [(re.compile(rf"^({re.escape(prefix)})stages\.0\."), r"\1stem.stage."),
            (re.compile(rf"^({re.escape(prefix)})stages\.(\d+)\."), stage),
            (re.compile(rf"^({re.escape(prefix)}){kind}_layers\.(\d+)\.0\.{re.escape(suffix)}"), layer)]


_ENC_S, _ENC_A, _DEC = ("model.semantic_tokenizer_encoder.", "model.audio_tower.encoder.",
                        "model.audio_tower.decoder.")
KEY_RULES: list = [
    # the tokenizers' roots (the acoustic one is `audio_tower` in transformers)
    (re.compile(r"^model\.semantic_tokenizer\.encoder\."), _ENC_S),
    (re.compile(r"^model\.acoustic_tokenizer\."), "model.audio_tower."),
    # encoders: downsample_layers.0 + stages.0 -> stem, N -> conv_layers.N-1, head.conv -> head
    *[rule for root in (_ENC_S, _ENC_A) for rule in (
        (re.compile(rf"^({re.escape(root)})downsample_layers\.0\.0\.conv\."), r"\1stem.conv.conv."),
        *_shift(root, "downsample", "conv.conv."),
        (re.compile(rf"^({re.escape(root)})head\.conv\."), r"\1head."))],
    # the acoustic decoder: upsample_layers, transposed convolutions
    (re.compile(rf"^({re.escape(_DEC)})upsample_layers\.0\.0\.conv\.conv\."), r"\1stem.conv.conv."),
    *_shift(_DEC, "upsample", "convtr.convtr."),
    (re.compile(rf"^({re.escape(_DEC)})head\.conv\."), r"\1head."),
    # the streaming convolutions' extra wrapper level
    (re.compile(r"mixer\.conv\.conv\.conv\."), "mixer.conv."),
    (re.compile(r"\.conv\.conv\.conv\."), ".conv.conv."),
    # diffusion head (the conversion script's `timestep_embedder.layer_1/2` is stale: 5.24 says timestep_proj)
    *[(re.compile(rf"^model\.prediction_head\.{a}"), f"model.diffusion_head.{b}") for a, b in (
        (r"t_embedder\.mlp\.0\.", "timestep_proj.fc1."),
        (r"t_embedder\.mlp\.2\.", "timestep_proj.fc2."),
        (r"layers\.(\d+)\.adaLN_modulation\.1\.", r"layers.\1.linear."),
        (r"final_layer\.adaLN_modulation\.1\.", "final_layer.linear_1."),
        (r"final_layer\.linear\.", "final_layer.linear_2."),
        ("", ""))],
    # connectors
    *[(re.compile(rf"^model\.{src}\.{a}\."), f"model.{dst}.{b}.")
      for src, dst in (("acoustic_connector", "multi_modal_projector"), ("semantic_connector", "semantic_connector"))
      for a, b in (("fc1", "linear_1"), ("norm", "act"), ("fc2", "linear_2"))],
    # latent normalisation scalars
    (re.compile(r"^model\.speech_scaling_factor$"), "model.latent_scaling_factor"),
    (re.compile(r"^model\.speech_bias_factor$"), "model.latent_bias_factor"),
]


def map_key(name: str) -> str:
    """An original tensor name as transformers 5.24 names it (every rule, in order)."""
    for pattern, repl in KEY_RULES:
        name = pattern.sub(repl, name)
    return name
