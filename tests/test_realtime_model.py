"""Realtime model: presets, the documented checkpoint layout, the strict original-layout loader."""
from __future__ import annotations

import json

import pytest
import torch

from tests.realtime_fixtures import documented_realtime_keys, write_tiny_realtime_checkpoint
from vvtrt.errors import InputError, ModelError


@pytest.fixture(scope="session")
def rt_tiny():
    from vvtrt.realtime.presets import build_realtime_model

    return build_realtime_model("tiny-realtime")


@pytest.fixture(scope="session")
def rt_ckpt(tmp_path_factory, rt_tiny):
    return write_tiny_realtime_checkpoint(tmp_path_factory.mktemp("rt_ckpt"), rt_tiny)


def test_full_preset_matches_the_documented_layout():
    from vvtrt.realtime.checkpoint import UNUSED_EMBED, to_original_key
    from vvtrt.realtime.model import parameter_count
    from vvtrt.realtime.presets import new_model, preset_config

    meta = new_model(preset_config("realtime-0.5b"), device="meta")
    ours = {to_original_key(k): tuple(v.shape) for k, v in meta.state_dict().items()}
    ours[UNUSED_EMBED] = (151936, 896)
    assert ours == documented_realtime_keys()  # 605 names and shapes, exactly
    # the released checkpoint: 1,017,626,724 = ours + the unused TTS embedding table + the two latent scalars
    assert parameter_count(meta) + 151936 * 896 + 2 == 1_017_626_724


def test_random_init_is_seeded_and_non_degenerate(rt_tiny):
    from vvtrt.realtime.presets import build_realtime_model

    again = build_realtime_model("tiny-realtime")
    assert all(torch.equal(a, b) for a, b in zip(rt_tiny.state_dict().values(), again.state_dict().values()))
    other = build_realtime_model("tiny-realtime", seed=1)
    assert not torch.equal(other.model.tts_input_types.weight, rt_tiny.model.tts_input_types.weight)
    z = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(0))
    audio = rt_tiny.model.audio_tower.decoder(z).audio
    assert audio.shape == (1, 1, 3 * 3200) and 0.05 < float(audio.std()) < 50  # O(1), not ~1e-5
    h = torch.randn(4, 64)
    assert float(rt_tiny.eos_probability(h).max()) < 0.5  # a random model does not stop by a coin flip


def test_unknown_preset_is_an_input_error():
    from vvtrt.realtime.presets import preset_config

    with pytest.raises(InputError, match="tiny-realtime"):
        preset_config("huge-realtime")


def test_loader_round_trip_fp32_and_bf16(rt_tiny, rt_ckpt):
    from vvtrt.realtime.checkpoint import load_realtime_checkpoint

    loaded = load_realtime_checkpoint(rt_ckpt)
    ref = rt_tiny.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert loaded.rt_config.tts_layers == 2 and loaded.rt_config.lm_layers == 2
    # the non-persistent buffers are computed as a fresh model computes them
    assert torch.equal(loaded.model.tts_language_model.rotary_emb.inv_freq,
                       rt_tiny.model.tts_language_model.rotary_emb.inv_freq)
    bf = load_realtime_checkpoint(rt_ckpt, dtype=torch.bfloat16)
    assert bf.model.tts_input_types.weight.dtype == torch.bfloat16
    assert torch.equal(bf.tts_eos_classifier.fc1.weight, rt_tiny.tts_eos_classifier.fc1.weight.bfloat16())


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.pop("model.tts_language_model.layers.1.mlp.up_proj.weight"),
     ["1 missing", "model.tts_language_model.layers.1.mlp.up_proj.weight"]),
    (lambda t: t.__setitem__("model.extra.weight", torch.zeros(3)), ["1 unexpected", "model.extra.weight"]),
    (lambda t: t.__setitem__("tts_eos_classifier.fc2.weight", torch.zeros(2, 64)),
     ["1 mis-shaped", "tts_eos_classifier.fc2.weight expected (1, 64), found (2, 64)"]),
    (lambda t: t.__setitem__("model.tts_language_model.embed_tokens.weight", torch.zeros(3, 64)),
     ["model.tts_language_model.embed_tokens.weight expected (512, 64)"]),
    (lambda t: t.__setitem__("model.prediction_head.cond_proj.weight", torch.zeros(64, 64, dtype=torch.int32)),
     ["not floating point", "model.prediction_head.cond_proj.weight"]),
])
def test_loader_refuses_mismatched_tensors_before_allocating(tmp_path, rt_tiny, edit, words, monkeypatch):
    from vvtrt.model import safetensors_io
    from vvtrt.realtime.checkpoint import load_realtime_checkpoint

    root = write_tiny_realtime_checkpoint(tmp_path / "ck", rt_tiny, edit)
    reads = []
    monkeypatch.setattr(safetensors_io.TensorReader, "read", lambda self, *a, **k: reads.append(a))
    with pytest.raises(ModelError) as exc:
        load_realtime_checkpoint(root)
    for w in words:
        assert w in str(exc.value)
    assert "Nothing was loaded" in str(exc.value) and reads == []


def test_loader_accepts_and_skips_a_resaved_acoustic_encoder(tmp_path, rt_tiny):
    from vvtrt.realtime.checkpoint import load_realtime_checkpoint

    def add_encoder(t):
        t["model.acoustic_tokenizer.encoder.head.conv.conv.weight"] = torch.zeros(64, 256, 7)

    loaded = load_realtime_checkpoint(write_tiny_realtime_checkpoint(tmp_path / "ck", rt_tiny, add_encoder))
    assert not any("encoder" in k for k in loaded.state_dict())


def test_loader_refuses_a_bad_config(tmp_path, rt_ckpt):
    import shutil

    from vvtrt.realtime.checkpoint import plan_realtime_checkpoint

    root = tmp_path / "bad"
    shutil.copytree(rt_ckpt, root)
    cfg = json.loads((root / "config.json").read_text())
    cfg["tts_backbone_num_hidden_layers"] = 4  # all 4 layers: no text LM left
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tts_backbone_num_hidden_layers"):
        plan_realtime_checkpoint(root)
    cfg["model_type"] = "vibevoice"
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="vibevoice_streaming"):
        plan_realtime_checkpoint(root)


def test_convert_refuses_a_realtime_checkpoint_with_one_line(rt_ckpt, tmp_path):
    """transformers has no Realtime layout: `vvtrt convert` says to use the directory as it is."""
    from cli_helpers import one_clear_line, run

    line = one_clear_line(run("convert", rt_ckpt, tmp_path / "out"))
    assert "VibeVoice-Realtime checkpoint" in line and "vvtrt export --model" in line
    assert not (tmp_path / "out").exists()
