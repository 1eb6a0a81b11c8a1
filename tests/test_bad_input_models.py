"""Bad input to the verbs that take models, checkpoints and tokenizers (`convert`, `export --model DIR`,
`--tokenizer`, the long-form export options, work dirs of either kind): exit 2, one line on stderr, no
traceback, the work dir or output untouched, and a bounded time (refused before any model is built)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from checkpoint_fixtures import edit_shard, original_config, save_tokenizer, write_tiny_original
from cli_helpers import refused, run, snapshot


@pytest.fixture(scope="module")
def original(tmp_path_factory, tiny_model):
    return write_tiny_original(tmp_path_factory.mktemp("bad_models") / "VibeVoice-tiny", tiny_model)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def _config_dir(root, **edits):
    """A checkpoint dir whose config.json is the tiny original one with `edits` to decoder_config."""
    cfg = original_config()
    cfg["decoder_config"].update(edits)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "model.safetensors").write_bytes(b"\0" * 16)
    return root


@pytest.mark.parametrize("edits, word", [
    ({"num_hidden_layers": 1e9}, "num_hidden_layers"),            # hung in transformers' config setup
    ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
    ({"num_attention_heads": 0}, "num_attention_heads"),          # a division by zero naming nothing
    ({"vocab_size": -5}, "vocab_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_absurd_config_sizes_are_refused_before_any_config_is_built(tmp_path, edits, word):
    src = _config_dir(tmp_path / "ckpt", **edits)
    line = refused("export", "--model", src, "-w", tmp_path / "wd", within=10)
    assert word in line and "config.json" in line
    assert not (tmp_path / "wd").exists()
    assert word in refused("convert", src, tmp_path / "out", within=10)
    assert not (tmp_path / "out").exists()


def test_convert_refuses_tokenizers_that_do_not_fit(original, tmp_path, tokenizer_dir):
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(tokenizer_dir / "tokenizer_config.json", only_config)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "tokenizer.json").write_text("{not json")
    other = save_tokenizer(tmp_path / "other", extra_words=600)  # 605 tokens: the tiny model knows 512
    for tok, word in ((only_config, "tokenizer"), (garbage, "tokenizer"), (other, "vocabulary")):
        line = refused("convert", original, tmp_path / "out", "--tokenizer", tok, within=10)
        assert word in line and "trust_remote_code" not in line, line
        assert not (tmp_path / "out").exists()


def _export_refused(tmp_path, tokenizer) -> str:
    """`export --tokenizer TOKENIZER` refused in one line, leaving no work dir."""
    line = refused("export", "--model", "tiny", "-w", tmp_path / "wd", "--tokenizer", tokenizer, within=10)
    assert not (tmp_path / "wd").exists()
    return line


def test_export_refuses_a_tokenizer_that_encodes_to_nothing(tmp_path, tokenizer_dir):
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(tokenizer_dir / "tokenizer_config.json", only_config)
    line = _export_refused(tmp_path, only_config)
    assert "tokenizer" in line and "trust_remote_code" not in line


def test_a_tokenizer_asking_for_remote_code_is_one_line_naming_no_transformers_option(tmp_path, tokenizer_dir):
    tok = tmp_path / "custom"
    shutil.copytree(tokenizer_dir, tok)
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["tok.MyTok", None]}, tokenizer_class="MyTok")
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    line = _export_refused(tmp_path, tok)
    assert "own Python code" in line and "trust_remote_code" not in line


def test_convert_refuses_nan_weights_and_leaves_no_checkpoint(original, tmp_path):
    src = tmp_path / "nan"
    shutil.copytree(original, src)

    def poison(tensors):
        key = "model.prediction_head.cond_proj.weight"
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = float("nan")
        return tensors

    edit_shard(src, poison)
    line = refused("convert", src, tmp_path / "out", within=10)
    assert "NaN" in line and "cond_proj" in line
    assert not (tmp_path / "out" / "config.json").exists()


def test_convert_on_a_full_disk_is_one_line(original, tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch

    def full(*args, **kwargs):
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = refused("convert", original, tmp_path / "out", within=10)
    assert "no space left" in line and "model-00001" in line
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("opts, word", [
    (["--kv-buckets", "64"], "--kv-buckets"),             # no script fits: every synth would be refused
    (["--max-prompt", "5"], "--max-prompt"),
    (["--kv-buckets", "256,256"], "more than once"),
])
def test_export_options_no_script_fits_are_refused_up_front(tmp_path, opts, word):
    line = refused("export", "--model", "tiny", "-w", tmp_path / "wd", *opts)
    assert word in line
    assert not (tmp_path / "wd").exists()


def test_impossible_kv_buckets_on_1p5b_are_refused_before_the_model_is_built(tmp_path):
    line = refused("export", "--model", "1.5b", "-w", tmp_path / "wd", "--kv-buckets", "1024,131072")
    assert "65536" in line and "--kv-buckets" in line
    assert not (tmp_path / "wd").exists()


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """A long-form and a Realtime work dir, each with one small graph exported."""
    root = tmp_path_factory.mktemp("kinds")
    for spec, comp in (("tiny", "diffusion_head"), ("tiny-realtime", "rt_connector")):
        res = run("export", "--model", spec, "-w", root / spec, "--dtype", "fp32", "--components", comp)
        assert res.exit_code == 0, res.output
    return root / "tiny", root / "tiny-realtime"


def test_exporting_the_other_kind_of_model_leaves_the_work_dir_untouched(workdirs):
    longform, realtime = workdirs
    for wd, model, word in ((longform, "tiny-realtime", "long-form"), (realtime, "tiny", "Realtime")):
        before = snapshot(wd)
        line = refused("export", "--model", model, "-w", wd, "--dtype", "fp32")
        assert word in line and "-w" in line
        assert snapshot(wd) == before
    assert run("export", "--model", "tiny", "-w", longform, "--dtype", "fp32", "--components",
               "diffusion_head").exit_code == 0  # still the long-form dir it was


def test_nan_check_costs_nothing_for_finite_weights():
    from vvtrt.model.safetensors_io import TensorEntry, require_finite

    entry = TensorEntry("w", "F32", (2,), None, 0, 8)
    require_finite(entry, torch.ones(2))
    require_finite(entry, torch.zeros(0))
