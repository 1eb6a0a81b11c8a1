"""Writers of checkpoint directories for tests/test_checkpoints.py: Microsoft's original layout written from
the documented key layout, sharded, header-only or sparse, and a small real tokenizer directory.

data/vibevoice-1.5b-original-keys.txt lists
every tensor name and shape of microsoft/VibeVoice-1.5B's state dict, taken from Microsoft's own classes."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

KEYS_1P5B = Path(__file__).resolve().parent / "data" / "vibevoice-1.5b-original-keys.txt"
TOKEN_IDS = {"pad_token_id": 256, "eos_token_id": 256, "audio_bos_token_id": 257, "audio_eos_token_id": 258,
             "audio_token_id": 259}


def documented_keys() -> dict[str, tuple[int, ...]]:
    if not KEYS_1P5B.is_file():
        pytest.fail(f"documented key list {KEYS_1P5B} is missing")  # a check that cannot run is a failure
    out = {}
    for line in KEYS_1P5B.read_text().splitlines():
        name, shape = line.split("\t")
        out[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return out


def original_config(hidden=64, layers=2, heads=4, kv=2, ffn=128, vocab=512, context=4096, tie=True, filters=4,
                    depths="1-1-1-1-1-1-1", semantic=16, head_layers=2, ids=True) -> dict:
    """config.json of Microsoft's original layout (the structure of vibevoice/configs/qwen2.5_1.5b_64k.json);
    defaults: the tiny preset's sizes, with its special token ids at top level."""
    tok = dict(causal=True, channels=1, conv_bias=True, conv_norm="none", corpus_normalize=0.0,
               disable_last_norm=True, encoder_depths=depths, encoder_n_filters=filters,
               encoder_ratios=[8, 5, 5, 4, 2, 2], layer_scale_init_value=1e-6, layernorm="RMSNorm",
               layernorm_elementwise_affine=True, layernorm_eps=1e-5, mixer_layer="depthwise_conv",
               pad_mode="constant", weight_init_value=0.01)
    cfg = {
        "model_type": "vibevoice", "acoustic_vae_dim": 64, "semantic_vae_dim": semantic, "torch_dtype": "bfloat16",
        "acoustic_tokenizer_config": dict(tok, decoder_depths=None, decoder_n_filters=filters,
                                          decoder_ratios=[8, 5, 5, 4, 2, 2], fix_std=0.5, std_dist_type="gaussian",
                                          vae_dim=64, model_type="vibepod_acoustic_tokenizer"),
        "semantic_tokenizer_config": dict(tok, fix_std=0, std_dist_type="none", vae_dim=semantic,
                                          model_type="vibepod_semantic_tokenizer"),
        "decoder_config": dict(attention_dropout=0.0, hidden_act="silu", hidden_size=hidden, intermediate_size=ffn,
                               max_position_embeddings=context, max_window_layers=layers, model_type="qwen2",
                               num_attention_heads=heads, num_hidden_layers=layers, num_key_value_heads=kv,
                               rms_norm_eps=1e-6, rope_scaling=None, rope_theta=1e6, sliding_window=None,
                               tie_word_embeddings=tie, torch_dtype="bfloat16", use_sliding_window=False,
                               vocab_size=vocab),
        "diffusion_head_config": dict(ddpm_batch_mul=4, ddpm_beta_schedule="cosine", ddpm_num_inference_steps=20,
                                      ddpm_num_steps=1000, diffusion_type="ddpm", head_ffn_ratio=3.0,
                                      head_layers=head_layers, hidden_size=hidden, latent_size=64,
                                      model_type="vibepod_diffusion_head", prediction_type="v_prediction",
                                      rms_norm_eps=1e-5, speech_vae_dim=64),
    }
    return dict(cfg, **TOKEN_IDS) if ids else cfg


CONFIG_1P5B = original_config(1536, 28, 12, 2, 8960, 151936, 65536, True, 32, "3-3-3-3-3-3-8", 128, 4, ids=False)
CONFIG_7B = original_config(3584, 28, 28, 4, 18944, 152064, 32768, False, 32, "3-3-3-3-3-3-8", 128, 4, ids=False)


# -- transformers -> original names (the fixture's own table, from checkpoint_keys/) ---------------
def _tok(m: re.Match, kind: str, suffix: str) -> str:
    return f"{m.group(1)}{kind}_layers.{int(m.group(2)) + 1}.0.{suffix}"


TO_ORIGINAL = [
    (r"^model\.latent_(scaling|bias)_factor$", r"model.speech_\1_factor"),
    (r"^model\.multi_modal_projector\.", "model.acoustic_connector."),
    (r"^model\.(acoustic|semantic)_connector\.linear_1\.", r"model.\1_connector.fc1."),
    (r"^model\.(acoustic|semantic)_connector\.act\.", r"model.\1_connector.norm."),
    (r"^model\.(acoustic|semantic)_connector\.linear_2\.", r"model.\1_connector.fc2."),
    (r"^model\.diffusion_head\.timestep_proj\.fc1\.", "model.diffusion_head.t_embedder.mlp.0."),
    (r"^model\.diffusion_head\.timestep_proj\.fc2\.", "model.diffusion_head.t_embedder.mlp.2."),
    (r"^model\.diffusion_head\.layers\.(\d+)\.linear\.", r"model.diffusion_head.layers.\1.adaLN_modulation.1."),
    (r"^model\.diffusion_head\.final_layer\.linear_1\.", "model.diffusion_head.final_layer.adaLN_modulation.1."),
    (r"^model\.diffusion_head\.final_layer\.linear_2\.", "model.diffusion_head.final_layer.linear."),
    (r"^model\.diffusion_head\.", "model.prediction_head."),
    (r"^model\.semantic_tokenizer_encoder\.", "model.semantic_tokenizer.encoder."),
    (r"^model\.audio_tower\.", "model.acoustic_tokenizer."),
    (r"\.mixer\.conv\.", ".mixer.conv.conv.conv."),
    (r"(\.(?:en|de)coder\.)head\.conv\.", r"\1head.conv.conv."),
    (r"(\.encoder\.)stem\.conv\.conv\.", r"\1downsample_layers.0.0.conv.conv."),
    (r"(\.decoder\.)stem\.conv\.conv\.", r"\1upsample_layers.0.0.conv.conv."),
    (r"(\.(?:en|de)coder\.)stem\.stage\.", r"\1stages.0."),
    (r"(\.(?:en|de)coder\.)conv_layers\.(\d+)\.stage\.", lambda m: f"{m.group(1)}stages.{int(m.group(2)) + 1}."),
    (r"(\.encoder\.)conv_layers\.(\d+)\.conv\.conv\.", lambda m: _tok(m, "downsample", "conv.conv.")),
    (r"(\.decoder\.)conv_layers\.(\d+)\.convtr\.convtr\.", lambda m: _tok(m, "upsample", "convtr.convtr.")),
]


def to_original(name: str) -> str:
    for pattern, repl in TO_ORIGINAL:
        name = re.sub(pattern, repl, name)
    return name


def pattern_of(name: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", name))


def write_sharded(root: Path, tensors: dict, config: dict, shards: int = 2) -> Path:
    """`tensors` as `shards` safetensors files + model.safetensors.index.json + config.json."""
    root.mkdir(parents=True, exist_ok=True)
    names, weight_map = list(tensors), {}
    per = -(-len(names) // shards)
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i * per:(i + 1) * per]}
        save_file(part, str(root / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(config))
    return root


def write_tiny_original(root: Path, tiny_model) -> Path:
    """The tiny preset's weights as a checkpoint in Microsoft's original layout (2 shards + index), its
    names checked to be exactly the documented name patterns."""
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "lm_head.weight"}  # tied: not stored
    original = {to_original(k): v for k, v in state.items()}
    assert len(original) == len(state)
    documented = {pattern_of(k) for k in documented_keys() if k != "lm_head.weight"}
    assert {pattern_of(k) for k in original} == documented  # the fixture speaks the documented layout
    return write_sharded(root, original, original_config())


def save_tokenizer(path: Path, extra_words: int = 0) -> Path:
    """A small real transformers tokenizer directory (the tests need its files, not Qwen's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "Speaker", "0", ":", "hi"] + [f"w{i}" for i in range(extra_words)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_shard(root: Path, edit) -> None:
    """Apply `edit(tensors) -> tensors` to the shard holding the prediction head, keeping the index true."""
    index = json.loads((root / "model.safetensors.index.json").read_text())
    fname = index["weight_map"]["model.prediction_head.cond_proj.weight"]
    tensors = edit(load_file(str(root / fname)))
    save_file(tensors, str(root / fname))
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if f != fname}
    index["weight_map"].update(dict.fromkeys(tensors, fname))
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


def header_only_1p5b(root: Path, sparse: bool, bad_shape: bool) -> Path:
    """config.json + 3 shards whose headers declare the documented 1.5B tensors (bf16) and hold no data
    (`sparse`: the files are extended to their declared size as holes, so only shapes can be wrong)."""
    root.mkdir()
    keys = [(k, s) for k, s in documented_keys().items() if k != "lm_head.weight"]
    if bad_shape:
        keys = [(k, (1536, 1024) if k == "model.prediction_head.cond_proj.weight" else s) for k, s in keys]
    weight_map, per = {}, -(-len(keys) // 3)
    for i in range(3):
        fname, header, offset = f"model-{i + 1:05d}-of-00003.safetensors", {}, 0
        for k, shape in keys[i * per:(i + 1) * per]:
            n = 2 * (int(torch.tensor(shape).prod()) if shape else 1)
            header[k] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[k] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(root / fname, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            if sparse:
                f.truncate(8 + len(blob) + offset)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(CONFIG_1P5B))
    return root
