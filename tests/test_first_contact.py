"""The first ten minutes with vvtrt: Hugging Face Hub ids as `--model` / `--tokenizer` (resolved from a Hub
cache built here, never the network), the `--frames` hint of a model that never speaks, and the refusals
on the way from install to the first wav, each naming the next command."""
from __future__ import annotations

import shutil

import pytest

from vvtrt.errors import ModelError

# tests/checkpoint_fixtures.py and cli_helpers.py (pytest puts this folder on sys.path)
from checkpoint_fixtures import save_tokenizer, write_tiny_original
from cli_helpers import one_clear_line, run

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_entry(cache, repo_id: str, files_from) -> object:
    """`repo_id` in the Hub cache layout huggingface_hub reads: models--owner--name/snapshots/<hash>/...
    (the files copied from `files_from`) and refs/main naming that snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / SNAPSHOT
    shutil.copytree(files_from, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snap


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """(original-layout checkpoint dir, tokenizer dir) of the tiny preset's weights."""
    root = tmp_path_factory.mktemp("hubsrc")
    return write_tiny_original(root / "ckpt", tiny_model), save_tokenizer(root / "tok")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_checkpoint):
    """An offline Hub cache (HF_HUB_CACHE) holding microsoft/VibeVoice-1.5B and Qwen/Qwen2.5-1.5B."""
    cache = tmp_path / "hub"
    ckpt, tok = tiny_checkpoint
    hub_cache_entry(cache, "microsoft/VibeVoice-1.5B", ckpt)
    hub_cache_entry(cache, "Qwen/Qwen2.5-1.5B", tok)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_resolves_from_the_offline_cache(hub_cache):
    from vvtrt.model.hub import is_hub_id, resolve_hub_id
    from vvtrt.model.resolve import parse_source, resolve

    assert is_hub_id("microsoft/VibeVoice-1.5B") and not is_hub_id("tiny") and not is_hub_id("a/b/c")
    snap = resolve_hub_id("microsoft/VibeVoice-1.5B")
    assert snap == hub_cache / "models--microsoft--VibeVoice-1.5B" / "snapshots" / SNAPSHOT
    src = parse_source("microsoft/VibeVoice-1.5B", tokenizer="Qwen/Qwen2.5-1.5B")
    assert src.path == str(snap.resolve()) and src.tokenizer.endswith(SNAPSHOT)
    r = resolve("microsoft/VibeVoice-1.5B", tokenizer_dir="Qwen/Qwen2.5-1.5B", load=False)
    assert r.layout == "original" and r.info.hidden == 64  # validated exactly like a local directory


def test_export_with_hub_ids_on_the_command_line(hub_cache, tmp_path):
    wd = tmp_path / "wd"
    res = run("export", "--model", "microsoft/VibeVoice-1.5B", "--tokenizer", "Qwen/Qwen2.5-1.5B", "-w", wd,
              "--dtype", "fp32", "--components", "connectors")
    assert res.exit_code == 0, res.output
    assert "exported 1 graph(s)" in res.output and (wd / "onnx" / "connectors.fp32.onnx").is_file()


def test_hub_checkpoint_is_checked_like_a_directory(hub_cache):
    """A cached snapshot without its tokenizer gets the same refusal as the directory, with the Hub id to
    pass next."""
    line = one_clear_line(run("export", "--model", "microsoft/VibeVoice-1.5B", "-w", hub_cache.parent / "wd"))
    assert "ships no tokenizer" in line and "--tokenizer Qwen/Qwen2.5-1.5B" in line, line


def test_hub_id_missing_offline_names_the_download_command(hub_cache, tmp_path):
    line = one_clear_line(run("export", "--model", "microsoft/VibeVoice-7B-nowhere", "-w", tmp_path / "wd"))
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line, line
    assert "`hf download microsoft/VibeVoice-7B-nowhere`" in line, line
    assert not (tmp_path / "wd").exists()  # refused before the work dir is made
    with pytest.raises(ModelError, match="hf download Qwen/Qwen2.5-7B"):
        from vvtrt.model.resolve import check_tokenizer_dir

        check_tokenizer_dir("Qwen/Qwen2.5-7B")


def test_hub_cache_from_hf_home(tmp_path, monkeypatch, tiny_checkpoint):
    """Without HF_HUB_CACHE the cache is $HF_HOME/hub, read when the id is resolved (not at import)."""
    from vvtrt.model.hub import resolve_hub_id

    snap = hub_cache_entry(tmp_path / "home" / "hub", "microsoft/VibeVoice-1.5B", tiny_checkpoint[0])
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_hub_id("microsoft/VibeVoice-1.5B") == snap


def test_unknown_model_names_every_accepted_form(tmp_path):
    line = one_clear_line(run("export", "--model", "no-such-thing", "-w", tmp_path / "wd"))
    assert "preset" in line and "checkpoint directory" in line and "Hub id" in line, line


# -- the --frames hint ----------------------------------------------------------------------------------
def test_random_model_that_never_speaks_says_pass_frames(tiny_workdir, tmp_path):
    """What a new user types first on the demo's work dir: no --frames, so the random-weight model never
    chooses to speak; the refusal must name --frames N (not only a stop reason)."""
    out = tmp_path / "o.wav"
    line = one_clear_line(run("synth", "-w", tiny_workdir.root, "--device", "cpu", "--text", "Speaker 1: Hello.",
                              "-o", out))
    assert "random-weight preset 'tiny'" in line and "pass --frames N" in line, line
    assert not out.exists()


def test_a_checkpoint_that_never_spoke_says_pass_frames():
    """A real checkpoint that gave no audio (the model never chose to speak) gets the same hint, after the run;
    with --frames given, the stop reason alone."""
    from vvtrt.pipeline import no_audio_message

    assert "--frames" not in no_audio_message("eos", forced=True)
    assert "pass --frames N" in no_audio_message("length limit", forced=False)


# -- refusals on the way to the first wav name the next command -----------------------------------------
def test_verbs_on_a_missing_work_dir_name_the_export(tmp_path):
    for verb in (["build"], ["parity"], ["synth", "--text", "Speaker 1: Hi.", "--frames", "2", "-o", tmp_path / "o.wav"],
                 ["bench"]):
        line = one_clear_line(run(*verb, "-w", tmp_path / "nowhere"))
        assert "vvtrt export" in line, (verb, line)


def test_original_checkpoint_without_tokenizer_names_the_option(tiny_checkpoint, tmp_path):
    ckpt, _ = tiny_checkpoint
    line = one_clear_line(run("export", "--model", ckpt, "-w", tmp_path / "wd"))
    assert "--tokenizer" in line, line


def test_missing_server_extra_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    line = one_clear_line(run("serve", "-w", tmp_path / "wd"))
    assert "`serve` extra" in line and 'pip install -e ".[serve]"' in line, line
