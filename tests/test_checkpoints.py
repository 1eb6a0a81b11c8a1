"""Real checkpoint layouts: Microsoft's original layout and transformers' layout load through
`vvtrt.model.resolve`, validated from config + safetensors headers before anything is allocated.

The original-layout fixture is written from the documented key layout (tests/data/, a copy of the shared
docs' checkpoint_keys/vibevoice-1.5b-original.txt): the tiny preset's tensors renamed by a transformers ->
original table (checkpoint_fixtures.py) written independently of the library's original -> transformers
rules, and checked to produce exactly the documented name patterns. The library's rules are checked the
other way: the documented 1.5B keys map onto transformers' 1.5B model, names and shapes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vvtrt.errors import InputError, ModelError

# tests/checkpoint_fixtures.py (pytest puts this folder on sys.path)
from checkpoint_fixtures import (CONFIG_1P5B, CONFIG_7B, copy_dir, documented_keys, edit_shard, header_only_1p5b,
                                 original_config, save_tokenizer, write_tiny_original)
from cli_helpers import one_clear_line, run


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tiny_model):
    """(original-layout dir, transformers-layout dir, tokenizer dir) holding the tiny preset's weights."""
    root = tmp_path_factory.mktemp("ckpt")
    orig = write_tiny_original(root / "original", tiny_model)
    hf = root / "hf"
    tiny_model.save_pretrained(hf)
    return orig, hf, save_tokenizer(root / "tok")


# -- mapping --------------------------------------------------------------------------------------------
def test_documented_1p5b_keys_map_onto_transformers():
    """Every documented original 1.5B tensor maps onto transformers' 1.5B model, names and shapes."""
    from vvtrt.model.checkpoint import meta_model
    from vvtrt.model.layouts import ORIGINAL
    from vvtrt.model.original_layout import map_key

    config = ORIGINAL.config(CONFIG_1P5B, Path("1p5b"))
    expected = {k: tuple(v.shape) for k, v in meta_model(ORIGINAL, config).state_dict().items()}
    mapped = {map_key(k): shape for k, shape in documented_keys().items()}
    assert len(mapped) == len(documented_keys()) == 1205
    assert mapped == expected


@pytest.mark.parametrize("preset, raw", [("1.5b", CONFIG_1P5B), ("7b", CONFIG_7B)])
def test_original_configs_map_onto_the_presets(preset, raw):
    """Microsoft's 1.5B and 7B configs (vibevoice/configs/*.json) become the configs of vvtrt's presets."""
    from vvtrt.model.layouts import ORIGINAL
    from vvtrt.model.presets import PRESETS, preset_config

    config, want = ORIGINAL.config(raw, Path(preset)), preset_config(PRESETS[preset])
    extras = {"dtype", "ddpm_beta_schedule", "prediction_type", "num_train_timesteps"}  # recorded, not used
    for sub in ("text_config", "audio_config", "semantic_model_config", "diffusion_head_config"):
        a, b = getattr(config, sub).to_dict(), getattr(want, sub).to_dict()
        assert {k: v for k, v in a.items() if k not in extras} == {k: v for k, v in b.items() if k not in extras}
    assert config.tie_word_embeddings is (preset == "1.5b")
    assert config.audio_config.vae_std == pytest.approx(0.625)  # fix_std 0.5 / 0.8
    assert config.audio_config.downsampling_ratios == [2, 2, 4, 5, 5, 8]  # encoder_ratios reversed


def test_original_config_options_transformers_cannot_express_are_refused():
    from vvtrt.model.layouts import ORIGINAL

    for edit, needle in [
        (lambda c: c["acoustic_tokenizer_config"].update(decoder_ratios=[8, 5, 4, 5, 2, 2]), "decoder_ratios"),
        (lambda c: c["semantic_tokenizer_config"].update(causal=False), "causal"),
        (lambda c: c["diffusion_head_config"].update(prediction_type="epsilon"), "prediction_type"),
        (lambda c: c["decoder_config"].pop("vocab_size"), "decoder_config.vocab_size"),
        (lambda c: c.update(audio_token_id=600), "outside the vocabulary"),
    ]:
        cfg = json.loads(json.dumps(original_config()))
        edit(cfg)
        with pytest.raises(ModelError, match=re.escape(needle)):
            ORIGINAL.config(cfg, Path("x"))


# -- loading --------------------------------------------------------------------------------------------
def test_tiny_original_loads_like_the_transformers_layout(tiny_pair, tiny_model):
    from vvtrt.model.resolve import resolve
    from vvtrt.parity.reference_generate import reference_generate

    orig, hf, tok = tiny_pair
    a = resolve(str(orig), tokenizer_dir=str(tok))
    b = resolve(str(hf), tokenizer_dir=str(tok))
    assert (a.layout, b.layout) == ("original", "transformers")
    assert a.info == b.info
    sa, sb, ref = a.model.state_dict(), b.model.state_dict(), tiny_model.state_dict()
    assert list(sa) == list(sb) == list(ref)
    assert all(torch.equal(sa[k], ref[k]) and torch.equal(sb[k], ref[k]) for k in ref)
    assert a.model.lm_head.weight is a.model.model.language_model.embed_tokens.weight  # tied again
    for (n, x), (_, y) in zip(a.model.named_buffers(), tiny_model.named_buffers()):  # not stored: computed
        assert torch.equal(x, y), n
    ids = [256, 72, 105, 10, 257]
    lat_a, audio_a = reference_generate(a.model, ids, 3, 10, 1.3, seed=5)
    lat_b, audio_b = reference_generate(b.model, ids, 3, 10, 1.3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(lat_a, lat_b)) and torch.equal(audio_a, audio_b)


def test_load_at_target_dtype(tiny_pair, tiny_model):
    from vvtrt.model.resolve import ModelSource, load_model

    orig, _, _ = tiny_pair
    model = load_model(ModelSource(path=str(orig)), dtype=torch.bfloat16)
    ref = tiny_model.state_dict()
    for k, v in model.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, ref[k].to(torch.bfloat16)), k
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_resolve_without_loading_allocates_nothing(tiny_pair):
    from vvtrt.model.resolve import resolve

    orig, _, tok = tiny_pair
    r = resolve(str(orig), tokenizer_dir=str(tok), load=False)
    assert r.model is None and r.info.hidden == 64 and r.info.audio_token_id == 259


def test_presets_resolve_through_the_same_door():
    from vvtrt.model.resolve import resolve
    from vvtrt.model.text_tokenizer import ByteTokenizer

    r = resolve("tiny", seed=3)
    assert r.layout == "preset" and isinstance(r.tokenizer, ByteTokenizer) and r.info.vocab == 512
    assert r.model.config.text_config.hidden_size == 64


def test_convert_writes_the_transformers_layout(tiny_pair, tmp_path, tiny_model):
    """The converted directory loads with transformers' own loader with no missing or unexpected key."""
    from transformers import VibeVoiceForConditionalGeneration

    from vvtrt.model.convert import convert

    orig, _, tok = tiny_pair
    out = convert(orig, tmp_path / "hf", tokenizer_dir=tok).out
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors.index.json").is_file()
    model, info = VibeVoiceForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = tiny_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="overwrite"):
        convert(orig, orig)


def test_original_checkpoint_exports_passes_parity_and_synthesises(tiny_pair, tmp_path):
    """Through the pipeline API: export (two small components, to stay fast; the tokenizer given with
    --tokenizer), ONNX Runtime parity against the PyTorch model loaded from the original layout, and a
    torch-backend synthesis."""
    import soundfile as sf

    from vvtrt.pipeline import run_export, run_parity_cli, run_synth

    orig, _, tok = tiny_pair
    root = copy_dir(orig, tmp_path / "VibeVoice-tiny")
    wd = tmp_path / "wd"
    with pytest.raises(ModelError, match="ships no tokenizer"):  # refused before any weight is read
        run_export(str(root), wd, "fp32", 10, "connectors,token_embed", 0, False, None)
    rows = run_export(str(root), wd, "fp32", 10, "connectors,token_embed", 0, False, None, tokenizer=str(tok))
    assert len(rows) == 2
    report, paths = run_parity_cli(wd, "onnxruntime", "cpu", "fp32", 16, False, None, None)
    assert report["passed"] and len(report["rows"]) == 4, report["failures"]
    from vvtrt.runtime.prompt import PORT_DEPARTURES  # the report says where vvtrt follows the original

    assert report["departures"] == list(PORT_DEPARTURES)
    md = Path(paths["md"]).read_text()
    assert "## Departures from transformers' port" in md and all(d in md for d in PORT_DEPARTURES)
    res = run_synth(wd, "torch", (), "cpu", "fp32", "Speaker 0: hi", None, (), str(tmp_path / "o.wav"), 3, None,
                    1.3, 0, False, False)
    audio, sr = sf.read(tmp_path / "o.wav")
    assert res.frames == 3 and sr == 24000 and audio.shape == (3 * 3200,)


# -- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, needles", [
    ("renamed", ["1 unexpected: model.prediction_head.cond_projection.weight",
                 "1 missing: model.diffusion_head.cond_proj.weight (64, 64)"]),
    ("misshaped", ["1 mis-shaped: model.diffusion_head.cond_proj.weight expected (64, 64), found (64, 32)",
                   "stored as model.prediction_head.cond_proj.weight"]),
    ("missing", ["1 missing: model.diffusion_head.cond_proj.weight (64, 64)"]),
])
def test_broken_original_checkpoint_names_the_tensor(tiny_pair, tmp_path, case, needles):
    from vvtrt.model.resolve import resolve

    orig, _, tok = tiny_pair
    root = copy_dir(orig, tmp_path / case)
    key = "model.prediction_head.cond_proj.weight"

    def edit(t):
        if case == "renamed":
            t["model.prediction_head.cond_projection.weight"] = t.pop(key)
        elif case == "misshaped":
            t[key] = t[key][:, :32].contiguous()
        else:
            del t[key]
        return t

    edit_shard(root, edit)
    with pytest.raises(ModelError) as err:
        resolve(str(root), tokenizer_dir=str(tok))
    for needle in needles:
        assert needle in str(err.value)
    assert "Nothing was loaded" in str(err.value)
    # the verbs: exit 2 with one line naming the tensor, no graph written
    line = one_clear_line(run("export", "--model", root, "-w", tmp_path / "wd", "--tokenizer", tok, "--dtype", "fp32"))
    assert all(needle in line for needle in needles), line
    assert not (tmp_path / "wd" / "onnx").exists() and not (tmp_path / "wd" / "workdir.json").exists()


def test_unknown_and_unsupported_layouts(tmp_path):
    from vvtrt.model.resolve import resolve

    root = tmp_path / "odd"
    root.mkdir()
    save_file({"w": torch.zeros(2)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"model_type": "vibevoice", "llm_config": {}, "vocoder": {}}))
    with pytest.raises(ModelError, match=r"sub-configs: llm_config, vocoder\) matches no checkpoint layout"):
        resolve(str(root))
    both = dict(original_config(), text_config={}, audio_config={})
    (root / "config.json").write_text(json.dumps(both))
    with pytest.raises(ModelError, match=r"matches several layouts \(original, transformers\)"):
        resolve(str(root))
    realtime = {k: v for k, v in original_config().items() if k != "semantic_tokenizer_config"}
    (root / "config.json").write_text(json.dumps(dict(realtime, model_type="vibevoice_streaming",
                                                      tts_backbone_num_hidden_layers=20)))
    with pytest.raises(ModelError, match="in the original Realtime layout: the streaming Realtime model is not"):
        resolve(str(root))


def test_missing_tokenizer_says_which_one(tmp_path):
    from vvtrt.model.resolve import resolve

    root = tmp_path / "VibeVoice-1.5B"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(CONFIG_1P5B))
    save_file({"w": torch.zeros(1)}, str(root / "model.safetensors"))
    with pytest.raises(ModelError) as err:
        resolve(str(root))
    assert str(err.value) == (
        f"{root.resolve()} is a VibeVoice checkpoint in Microsoft's original layout, which ships no tokenizer: "
        "VibeVoice-1.5B needs the Qwen/Qwen2.5-1.5B tokenizer: pass --tokenizer Qwen/Qwen2.5-1.5B (its Hub id; "
        "`hf download Qwen/Qwen2.5-1.5B` fetches it) or --tokenizer DIR, a directory of its files (tokenizer.json, "
        "tokenizer_config.json, vocab.json, merges.txt)")
    cfg7 = json.loads(json.dumps(CONFIG_1P5B))
    cfg7["decoder_config"].update(hidden_size=3584, vocab_size=152064)
    (root / "config.json").write_text(json.dumps(cfg7))
    with pytest.raises(ModelError, match=re.escape("VibeVoice-Large (7B) needs the Qwen/Qwen2.5-7B tokenizer")):
        resolve(str(root))
    with pytest.raises(InputError, match="tokenizer directory .* does not exist"):
        resolve(str(root), tokenizer_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="--tokenizer directory .*empty has no tokenizer files"):
        resolve(str(root), tokenizer_dir=str(tmp_path / "empty"))


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    from vvtrt.model.resolve import resolve

    tok = save_tokenizer(tmp_path / "big", extra_words=600)
    with pytest.raises(ModelError, match="has 605 tokens but the model's vocabulary is 512"):
        resolve("tiny", tokenizer_dir=str(tok), load=False)
    assert resolve("tiny", tokenizer_dir=str(save_tokenizer(tmp_path / "ok")), load=False).tokenizer.encode("hi")


# -- a 1.5B-sized original checkpoint with no weights: refused in seconds, without the memory ---------------
PROBE = textwrap.dedent("""
    import json, sys, time
    import torch  # noqa: F401 - the libraries are imported before the baseline: their import is not the refusal
    from transformers import AutoTokenizer, VibeVoiceConfig, VibeVoiceForConditionalGeneration  # noqa: F401
    from vvtrt.errors import ModelError
    from vvtrt.model.resolve import resolve

    def status_kb(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1])

    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    base, out = status_kb("VmRSS"), {}
    for root in sys.argv[2:]:
        t0 = time.perf_counter()
        try:
            resolve(root, tokenizer_dir=sys.argv[1])
            out[root] = ["loaded", 0.0]
        except ModelError as exc:
            out[root] = [str(exc), time.perf_counter() - t0]
    print(json.dumps({"growth_mb": (status_kb("VmHWM") - base) / 1024, "results": out}))
""")


def test_1p5b_original_without_weights_is_refused_fast_and_small(tmp_path):
    tok = save_tokenizer(tmp_path / "tok")
    cases = {
        "truncated": (header_only_1p5b(tmp_path / "trunc", sparse=False, bad_shape=False),
                      "is truncated: its header declares"),
        "misshaped": (header_only_1p5b(tmp_path / "holes", sparse=True, bad_shape=True),
                      "1 mis-shaped: model.diffusion_head.cond_proj.weight expected (1536, 1536), found (1536, 1024)"),
    }
    absent = tmp_path / "absent"
    absent.mkdir()
    (absent / "config.json").write_text(json.dumps(CONFIG_1P5B))
    (absent / "model.safetensors.index.json").write_text((tmp_path / "trunc" / "model.safetensors.index.json")
                                                         .read_text())
    cases["absent"] = (absent, "names 3 weight file(s) that are not in")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tok), *(str(p) for p, _ in cases.values())],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (root, needle) in cases.items():
        message, seconds = report["results"][str(root)]
        assert needle in message, (name, message)
        assert seconds < 10, (name, seconds)
    # Bound from the model, not from this run: the smallest 1.5B tensor whose allocation would matter, the
    # 151936 x 1536 embedding table, is 467 MB in bf16 (all weights: 5.4 GB). Measured here: ~12 MB.
    assert report["growth_mb"] < 256, report

