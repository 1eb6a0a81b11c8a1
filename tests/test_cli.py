"""The CLI through click's CliRunner: the verbs on the tiny work dir, and bad input -> exit 2, one line."""
from __future__ import annotations

import json

import pytest
import soundfile as sf

from cli_helpers import one_clear_line, run


def test_help_works_without_heavy_backends():
    res = run("--help")
    assert res.exit_code == 0
    for verb in ("export", "build", "parity", "synth", "bench", "report", "demo"):
        assert verb in res.output
        assert run(verb, "--help").exit_code == 0


@pytest.mark.parametrize("args, needle", [
    (["export", "--model", "nope"], "unknown model"),
    (["export", "--model", "tiny", "--dtype", "fp8"], "unknown dtype"),
    (["export", "--model", "tiny", "--steps", "0"], "--steps"),
    (["export", "--model", "tiny", "--steps", "51"], "--steps"),
    (["export", "--model", "tiny", "--components", "lm_head"], "unknown component"),
])
def test_export_bad_input(tmp_path, args, needle):
    line = one_clear_line(run(*args, "-w", str(tmp_path / "wd")))
    assert needle in line


def test_missing_and_malformed_checkpoints(tmp_path):
    missing = tmp_path / "absent"
    assert "unknown model" in one_clear_line(run("export", "--model", str(missing), "-w", str(tmp_path / "w")))
    bad = tmp_path / "ckpt"
    bad.mkdir()
    assert "config.json" in one_clear_line(run("export", "--model", str(bad), "-w", str(tmp_path / "w")))
    (bad / "config.json").write_text("{not json")
    assert "JSON" in one_clear_line(run("export", "--model", str(bad), "-w", str(tmp_path / "w")))
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "vibevoice" in one_clear_line(run("export", "--model", str(bad), "-w", str(tmp_path / "w")))
    (bad / "config.json").write_text(json.dumps({"model_type": "vibevoice"}))
    assert "weight" in one_clear_line(run("export", "--model", str(bad), "-w", str(tmp_path / "w")))


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_clear_line(run("export", "--model", "tiny", "-w", str(blocker / "sub")))
    assert "not writable" in line


def test_verbs_need_an_exported_workdir(tmp_path):
    for verb in (["parity"], ["build"], ["synth", "--text", "hi", "-o", str(tmp_path / "a.wav")],
                 ["bench", "--device", "cpu"]):
        assert "vvtrt export" in one_clear_line(run(*verb, "-w", str(tmp_path / "empty")))


def test_export_skips_up_to_date(tiny_workdir):
    res = run("export", "--model", "tiny", "-w", str(tiny_workdir.root), "--dtype", "fp32")
    assert res.exit_code == 0 and "exported 0 graph(s)" in res.output


def test_synth_writes_a_wav(tiny_workdir, tmp_path):
    out = tmp_path / "o.wav"
    res = run("synth", "-w", str(tiny_workdir.root), "--backend", "onnxruntime", "--device", "cpu",
              "--dtype", "fp32", "--text", "Hello there.", "--frames", "4", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "forced" in res.output and "RTF" in res.output and "first audio" in res.output
    audio, sr = sf.read(out)
    assert sr == 24000 and audio.shape == (4 * 3200,)


def test_synth_stream_and_script(tiny_workdir, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text("Speaker 1: Hi.\nSpeaker 2: Hello!\n")
    out = tmp_path / "s.wav"
    res = run("synth", "-w", str(tiny_workdir.root), "--device", "cpu", "--script", str(script), "--frames", "3",
              "--stream", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert sf.read(out)[0].shape == (3 * 3200,)


@pytest.mark.parametrize("extra, needle", [
    (["--text", ""], "empty"),
    ([], "exactly one of"),
    (["--text", "a", "--script", "x.txt"], "exactly one of"),
    (["--text", "a", "--voice", "/nonexistent.wav"], "/nonexistent.wav"),
    (["--text", "a", "--fallback", "bogus"], "fallback"),
    (["--text", "a", "--dtype", "int4"], "dtype"),
    (["--text", "a", "--frames", "0"], "frames"),
])
def test_synth_bad_input(tiny_workdir, tmp_path, extra, needle):
    args = ["synth", "-w", str(tiny_workdir.root), "--device", "cpu", "-o", str(tmp_path / "x.wav"), *extra]
    assert needle in one_clear_line(run(*args))


def test_wrong_rate_voice_is_resampled_with_a_notice(tiny_workdir, tmp_path, caplog):
    import numpy as np

    wav = tmp_path / "v16k.wav"
    sf.write(wav, (0.2 * np.sin(np.arange(32000) / 10)).astype("float32"), 16000)
    res = run("synth", "-w", str(tiny_workdir.root), "--device", "cpu", "--text", "Speaker 1: hi", "--voice",
              str(wav), "--frames", "2", "-o", str(tmp_path / "v.wav"))
    assert res.exit_code == 0, res.output
    assert "resampl" in (res.output + caplog.text).lower()


def test_report_rerenders(tiny_workdir, tmp_path):
    res = run("parity", "-w", str(tiny_workdir.root), "--dtype", "fp32", "--frames", "16", "--no-e2e",
              "--json", str(tmp_path / "p.json"))
    assert res.exit_code == 0, res.output
    res = run("report", str(tmp_path / "p.json"), "--out", str(tmp_path / "r"))
    assert res.exit_code == 0 and "markdown" in res.output
    assert (tmp_path / "r" / "p.md").is_file()
    assert "not valid JSON" in one_clear_line(run("report", str(tmp_path / "r" / "p.md")))


def test_demo_runs_end_to_end(tiny_workdir, tmp_path, monkeypatch):
    """`vvtrt demo` on an already-exported work dir: build (if a builder exists), parity, wav, bench."""
    import shutil

    wd = tmp_path / "demo"
    shutil.copytree(tiny_workdir.root, wd)
    res = run("demo", "-w", str(wd), "--frames", "16")
    assert res.exit_code == 0, res.output
    assert "demo.wav" in res.output and "passed" in res.output
    assert sf.read(wd / "demo.wav")[0].shape == (16 * 3200,)


def test_progress_counts_an_item_done_only_when_the_next_starts():
    from vvtrt.cli import _progress

    tick = _progress(2, "export")
    tick("lm_decode.bf16")
    assert tick.bar.n == 0  # lm_decode is running: nothing done yet
    tick("connectors.bf16")
    assert tick.bar.n == 1
    tick.close()  # erased: no redraw, whether the last item finished or failed (an error stays one line)
    assert tick.bar.n == 1
