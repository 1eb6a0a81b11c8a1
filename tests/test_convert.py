"""`vvtrt convert DIR OUT`: a checkpoint in Microsoft's original layout written in transformers'
layout. The converted directory loads as the transformers layout with tensors identical to the original's;
bad input is one line and exit 2; an interrupted conversion never leaves a loadable half checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from vvtrt.errors import ModelError

# tests/ is on sys.path (pytest rootdir conftest)
from checkpoint_fixtures import copy_dir, edit_shard, save_tokenizer, write_tiny_original
from cli_helpers import one_clear_line, run


@pytest.fixture(scope="module")
def original(tmp_path_factory, tiny_model):
    """(original-layout dir, tokenizer dir) holding the tiny preset's weights."""
    root = tmp_path_factory.mktemp("convert")
    return write_tiny_original(root / "VibeVoice-tiny", tiny_model), save_tokenizer(root / "tok")


def _state(path, tok):
    from vvtrt.model.resolve import resolve

    r = resolve(str(path), tokenizer_dir=str(tok))
    return r.layout, r.model.state_dict()


def test_convert_cli_writes_a_transformers_checkpoint_with_identical_tensors(original, tmp_path, tiny_model):
    src, tok = original
    out = tmp_path / "hf"
    res = run("convert", src, out, "--tokenizer", tok)
    assert res.exit_code == 0, res.output
    assert "converted" in res.output and "(original layout)" in res.output and "with a tokenizer" in res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]  # no temporaries
    assert json.loads((out / "config.json").read_text())["architectures"] == ["VibeVoiceForConditionalGeneration"]
    layout_a, a = _state(src, tok)
    layout_b, b = _state(out, tok)
    assert (layout_a, layout_b) == ("original", "transformers")
    ref = tiny_model.state_dict()
    assert list(a) == list(b) == list(ref)
    assert all(torch.equal(a[k], b[k]) and torch.equal(b[k], ref[k]) for k in ref)
    # the converted directory carries its tokenizer: it exports with --model OUT alone
    from vvtrt.model.resolve import resolve

    assert resolve(str(out), load=False).tokenizer.encode("hi")


def test_convert_refuses_a_non_empty_output_unless_forced(original, tmp_path):
    src, tok = original
    out = tmp_path / "busy"
    out.mkdir()
    (out / "model-00001-of-00009.safetensors").write_bytes(b"old")  # an earlier checkpoint's shard
    (out / "notes.txt").write_text("mine")
    line = one_clear_line(run("convert", src, out, "--tokenizer", tok))
    assert f"output directory {out} is not empty" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00009.safetensors", "notes.txt"]  # untouched
    res = run("convert", src, out, "--tokenizer", tok, "--force")
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert "model-00001-of-00009.safetensors" not in names and "notes.txt" in names  # stale shard removed
    assert _state(out, tok)[0] == "transformers"


def test_convert_bad_input_is_one_line(original, tmp_path):
    src, tok = original
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in one_clear_line(run("convert", src, a_file, "--tokenizer", tok))
    assert "would overwrite" in one_clear_line(run("convert", src, src, "--force"))
    assert "is not a directory" in one_clear_line(run("convert", tmp_path / "nowhere", tmp_path / "o1"))
    (tmp_path / "empty").mkdir()
    line = one_clear_line(run("convert", src, tmp_path / "o2", "--tokenizer", tmp_path / "empty"))
    assert "is not a directory with tokenizer files" in line
    broken = copy_dir(src, tmp_path / "broken")
    edit_shard(broken, lambda t: {k: v for k, v in t.items() if k != "model.prediction_head.cond_proj.weight"})
    line = one_clear_line(run("convert", broken, tmp_path / "o3", "--tokenizer", tok))
    assert "1 missing: model.diffusion_head.cond_proj.weight (64, 64)" in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_interrupted_conversion_leaves_no_checkpoint(original, tmp_path, monkeypatch):
    """A failure after the first shard: OUT holds no config.json, so it is refused, never half-loaded."""
    import vvtrt.model.convert as convert_mod
    from vvtrt.model.resolve import resolve

    src, tok = original
    real, calls = convert_mod._write_shard, []

    def fail_second(path, tensors):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, tensors)

    monkeypatch.setattr(convert_mod, "_write_shard", fail_second)
    out = tmp_path / "half"
    with pytest.raises(OSError):
        convert_mod.convert(src, out, tok)
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00002.safetensors"]
    with pytest.raises(ModelError, match="has no config.json"):
        resolve(str(out), tokenizer_dir=str(tok))
