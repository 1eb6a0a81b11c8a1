"""The Realtime model through the CLI verbs of the long-form models, on tiny-realtime (CPU, fp32):
export -> build (TensorRT-RTX's CPU builder, skipped only where it is not installed) -> parity (every
component and the windowed loop end to end, all passing) -> synth (ONNX Runtime and torch give the same
wav), an original Realtime checkpoint directory as --model DIR, and bad input -> exit 2, one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from cli_helpers import one_clear_line, run
from vvtrt.engines.trt_api import available_flavors

HAS_RTX = "tensorrt-rtx" in available_flavors()
COMPONENTS = ("rt_text_window", "rt_tts_decode", "rt_sampler", "rt_sampler_sde", "rt_decoder_step", "rt_connector")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """tiny-realtime's ops are microseconds: one intra-op thread is faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rt_wd(tmp_path_factory):
    """A tiny-realtime work dir exported once by the CLI (every component, fp32)."""
    root = tmp_path_factory.mktemp("rt_wd")
    res = run("export", "--model", "tiny-realtime", "-w", root, "--dtype", "fp32")
    assert res.exit_code == 0, res.output
    assert f"exported {len(COMPONENTS)} graph(s), 0 up to date" in res.output
    return root


@pytest.fixture(scope="module")
def voice_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt_voices")
    res = run("voices", "make", "-o", root, "--model", "tiny-realtime", "--name", "v1", "--seed", "3",
              "--lm-len", "12", "--tts-len", "30")
    assert res.exit_code == 0, res.output
    return root / "v1.safetensors"


def test_the_work_dir_is_a_realtime_one_and_stays_current(rt_wd):
    from vvtrt.realtime import specs, workdir_meta
    from vvtrt.workdir import Workdir

    assert workdir_meta.COMPONENTS == specs.COMPONENTS
    wd = Workdir.open(rt_wd)
    assert wd.kind == "realtime" and json.loads(wd.meta_path.read_text())["kind"] == "realtime"
    assert set(wd.specs()) == set(COMPONENTS) and wd.options().steps == 5
    assert {c for c, _ in wd.exported()} == set(COMPONENTS)
    res = run("export", "--model", "tiny-realtime", "-w", rt_wd, "--dtype", "fp32")
    assert res.exit_code == 0 and f"exported 0 graph(s), {len(COMPONENTS)} up to date" in res.output


@pytest.mark.trt
def test_build_makes_an_engine_per_graph(rt_wd):
    if not HAS_RTX:
        pytest.skip("TensorRT-RTX is not installed")
    from vvtrt.engines import manifest as mf

    res = run("build", "-w", rt_wd)
    assert res.exit_code == 0, res.output
    assert f"built {len(COMPONENTS)} engine(s), 0 up to date" in res.output
    folder = next((rt_wd / "engines").glob("*-portable"))
    entries = mf.read_manifest(folder, strict=True)["engines"]
    assert {(e["component"], e["dtype"]) for e in entries.values()} == {(c, "fp32") for c in COMPONENTS}
    assert all((folder / e["engine"]).stat().st_size == e["engine_bytes"] for e in entries.values())
    assert f"built 0 engine(s), {len(COMPONENTS)} up to date" in run("build", "-w", rt_wd).output


def test_parity_checks_every_component_and_the_loop(rt_wd, tmp_path):
    out = tmp_path / "p.json"
    res = run("parity", "-w", rt_wd, "--backend", "onnxruntime", "--device", "cpu", "--json", out)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["passed"] and report["failures"] == [] and report["config"]["model_kind"] == "realtime"
    rows = report["rows"]
    assert {r["component"] for r in rows} == set(COMPONENTS)
    assert all(r["passed"] is True and r["method"] == "onnxruntime-cpu" for r in rows)
    (e2e,) = report["e2e"]
    assert e2e["name"] == "windowed-loop-fp32" and e2e["passed"] is True and e2e["gated"] is True
    assert len(e2e["frames"]) == 16 and all(f["latent_rel_l2"] <= 1e-4 for f in e2e["frames"])
    assert (rt_wd / "reports" / "parity_onnxruntime_cpu.md").is_file()


def test_synth_on_onnxruntime_and_torch_gives_the_same_wav(rt_wd, voice_file, tmp_path):
    wavs = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.wav"
        res = run("synth", "-w", rt_wd, "--backend", backend, "--device", "cpu", "--text", "Hello from the stream.",
                  "--voice", voice_file, "--frames", "7", "-o", out)
        assert res.exit_code == 0, res.output
        assert "7 frames" in res.output and "stop: forced_eos" in res.output
        wavs[backend], sr = sf.read(out, dtype="float32")
        assert sr == 24000 and wavs[backend].shape == (7 * 3200,)
    peak = float(np.abs(wavs["torch"]).max())
    assert peak > 1e-3 and float(np.abs(wavs["onnxruntime"] - wavs["torch"]).max()) <= 1e-4 * peak


def test_synth_without_a_voice_uses_a_synthetic_one(rt_wd, tmp_path):
    out = tmp_path / "s.wav"
    res = run("synth", "-w", rt_wd, "--backend", "onnxruntime", "--device", "cpu", "--text", "Hi.", "--frames", "3",
              "--stream", "-o", out)
    assert res.exit_code == 0, res.output
    assert sf.read(out)[0].shape == (3 * 3200,)


def test_bad_voice_and_bad_options_are_one_line(rt_wd, tmp_path):
    from vvtrt.realtime.voices import BRANCHES, BranchCache, VoicePreset, save_voice

    wrong = VoicePreset("wrong", {b: BranchCache(torch.randn(6, 32), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8))
                                  for b in BRANCHES})
    path = save_voice(wrong, tmp_path)
    line = one_clear_line(run("synth", "-w", rt_wd, "--backend", "onnxruntime", "--device", "cpu", "--text", "Hi.",
                              "--voice", path, "--frames", "3", "-o", tmp_path / "o.wav"))
    assert "does not fit model tiny-realtime" in line
    assert not (tmp_path / "o.wav").exists()
    for args, needle in ((["--frames", "5000"], "--frames must be from 1 to"),
                         (["--script", path], "plain text"),
                         (["--fallback", "lm_decode=torch"], "--fallback")):
        assert needle in one_clear_line(run("synth", "-w", rt_wd, "--device", "cpu", "--text", "Hi.", *args,
                                            "-o", tmp_path / "o.wav"))
    assert "--prompt-tokens" in one_clear_line(run("bench", "-w", rt_wd, "--device", "cpu", "--prompt-tokens", "64"))
    assert "unknown Realtime component" in one_clear_line(
        run("export", "--model", "tiny-realtime", "-w", tmp_path / "e", "--components", "lm_decode"))
    assert "--steps" in one_clear_line(run("export", "--model", "tiny-realtime", "-w", tmp_path / "e", "--steps", "0"))


def test_parity_on_a_work_dir_with_a_missing_graph_is_refused(rt_wd, tmp_path):
    damaged = tmp_path / "w"
    shutil.copytree(rt_wd, damaged, ignore=shutil.ignore_patterns("engines", "reports"))
    (damaged / "onnx" / "rt_connector.fp32.onnx").unlink()
    line = one_clear_line(run("parity", "-w", damaged, "--device", "cpu"))
    assert "rt_connector.fp32.onnx is missing" in line and "vvtrt export" in line and "tiny-realtime" in line


def test_an_original_realtime_checkpoint_exports_as_model_dir(tmp_path):
    from checkpoint_fixtures import save_tokenizer
    from realtime_fixtures import write_tiny_realtime_checkpoint
    from vvtrt.realtime.presets import build_realtime_model
    from vvtrt.workdir import Workdir

    ckpt = write_tiny_realtime_checkpoint(tmp_path / "ckpt", build_realtime_model("tiny-realtime"))
    line = one_clear_line(run("export", "--model", ckpt, "-w", tmp_path / "w0", "--components", "rt_connector"))
    assert "--tokenizer" in line  # the layout resolves; the checkpoint ships no tokenizer, as Microsoft's
    tok = save_tokenizer(tmp_path / "tok")
    res = run("export", "--model", ckpt, "--tokenizer", tok, "-w", tmp_path / "w", "--dtype", "fp32",
              "--components", "rt_connector")
    assert res.exit_code == 0, res.output
    wd = Workdir.open(tmp_path / "w")
    assert wd.kind == "realtime" and wd.source().path == str(ckpt.resolve()) and wd.info().context == 1024
    assert wd.exported() == [("rt_connector", wd.exported()[0][1])]
