"""Every option of every verb, tried as a hostile user would: each bad value is one line on
stderr and exit 2 before any work starts (no model load, no export, no build, no parity, no bench), and a
full disk is one line and exit 2 when the write fails, leaving no partial file."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import one_clear_line, run


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    """A work dir with connectors exported in fp32 only (the tiny model's KV buckets allow 1022 frames)."""
    from vvtrt.pipeline import run_export

    root = tmp_path_factory.mktemp("options") / "wd"
    run_export("tiny", root, "fp32", 10, "connectors", 0, False, None)
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a verb gets past its checks: every stage's first real step raises."""
    import vvtrt.bench.run
    import vvtrt.engines
    import vvtrt.model.resolve
    import vvtrt.parity.harness
    import vvtrt.runtime.synthesizer

    def started(*a, **k):
        pytest.fail("work started before the options were refused")

    monkeypatch.setattr(vvtrt.model.resolve, "resolve", started)  # the one front door for models
    monkeypatch.setattr(vvtrt.runtime.synthesizer.Synthesizer, "from_workdir", started)
    monkeypatch.setattr(vvtrt.parity.harness, "run_parity", started)
    monkeypatch.setattr(vvtrt.bench.run, "run_bench", started)
    monkeypatch.setattr(vvtrt.engines, "build_engines", started)


BIG = str(2**64)
CASES = [  # (verb and options, with {w} the work dir and {t} a scratch dir; a word the error must contain)
    ("export --model tiny -w {t}/e --seed " + BIG, "--seed"),
    ("export --model tiny -w {t}/e --seed -1", "--seed"),
    ("export --model tiny -w {t}/e --steps 0", "--steps"),
    ("export --model tiny -w {t}/e --steps 100000", "--steps"),
    ("export --model tiny -w {t}/e --dtype fp8", "unknown dtype"),
    ("export --model tiny -w {t}/e --dtype ,", "no dtype"),
    ("export --model tiny -w {t}/e --components lm_head", "unknown component"),
    ("export --model tiny -w {t}/e --tokenizer {t}/missing", "tokenizer"),
    ("export --model tiny -w {w}/onnx/connectors.fp32.onnx", "is a file"),
    ("build -w {w} --dtype fp8", "unknown dtype"),
    ("build -w {w} --components nope", "unknown component"),
    ("build -w {w} --flavor cuda", "--flavor"),
    ("build -w {w} --target-sm abc", "compute capability"),
    ("parity -w {w} --frames 15", "--frames"),
    ("parity -w {w} --frames -16", "--frames"),
    ("parity -w {w} --frames 1023", "1022"),
    ("parity -w {w} --dtype bf16", "bf16 was not exported"),
    ("parity -w {w} --device cuda", "CUDA is not available"),
    ("parity -w {w} --device cuda:7", "CUDA is not available"),
    ("parity -w {w} --device tpu", "unknown device"),
    ("parity -w {w} --backend tensorflow", "--backend"),
    ("parity -w {w} --json {t}", "directory"),
    ("parity -w {w} --json /dev/null", "not a regular file"),
    ("parity -w {w} --json {w}/workdir.json/x.json", "is a file"),
    ("synth -w {w} --text hi -o {t}/o.wav --frames 0", "--frames"),
    ("synth -w {w} --text hi -o {t}/o.wav --frames -3", "--frames"),
    ("synth -w {w} --text hi -o {t}/o.wav --frames 1023", "1022"),
    ("synth -w {w} --text hi -o {t}/o.wav --max-frames 0", "--max-frames"),
    ("synth -w {w} --text hi -o {t}/o.wav --max-frames 5000", "1022"),
    ("synth -w {w} --text hi -o {t}/o.wav --frames 20 --max-frames 10", "contradicts"),
    ("synth -w {w} --text hi -o {t}/o.wav --cfg nan", "--cfg"),
    ("synth -w {w} --text hi -o {t}/o.wav --cfg inf", "--cfg"),
    ("synth -w {w} --text hi -o {t}/o.wav --cfg -0.5", "--cfg"),
    ("synth -w {w} --text hi -o {t}/o.wav --cfg 1e30", "--cfg"),
    ("synth -w {w} --text hi -o {t}/o.wav --seed " + BIG, "--seed"),
    ("synth -w {w} --text hi -o {t}/o.wav --seed -7", "--seed"),
    ("synth -w {w} --text hi -o {t}/o.wav --device cuda", "CUDA is not available"),
    ("synth -w {w} --text hi -o {t}/o.wav --device cuda:7", "CUDA is not available"),
    ("synth -w {w} --text hi -o {t}/o.wav --device gpu0", "unknown device"),
    ("synth -w {w} --text hi -o {t}/o.wav --device cpu:3", "unknown device"),
    ("synth -w {w} --text hi -o {t}/o.wav --backend onnxruntime --device cpu --dtype fp16", "fp16 was not exported"),
    ("synth -w {w} --text hi -o {t}/o.wav --dtype int4", "unknown dtype"),
    ("synth -w {w} --text hi -o {t}", "directory"),
    ("synth -w {w} --text hi -o {t}/o.mp3", "must end in .wav"),
    ("synth -w {w} --text hi -o /dev/stdout", "must end in .wav"),
    ("synth -w {w} --text hi -o {w}/workdir.json/o.wav", "is a file"),
    ("synth -w {w} --script /dev/zero -o {t}/o.wav", "larger than"),
    ("synth -w {w} --script {t} -o {t}/o.wav", "directory"),
    ("synth -w {w} --text hi --voice {t}/none.wav -o {t}/o.wav", "none.wav"),
    ("synth -w {w} --text hi --voice {w}/workdir.json -o {t}/o.wav", "not a readable audio file"),
    ("synth -w {w} --text hi --voice {t} -o {t}/o.wav", "directory"),
    ("bench -w {w} --device cpu --frames 0", "--frames"),
    ("bench -w {w} --device cpu --frames 5000", "1022"),
    ("bench -w {w} --device cpu --repeats 0", "--repeats"),
    ("bench -w {w} --device cpu --repeats 100000", "--repeats"),
    ("bench -w {w} --device cpu --prompt-tokens -1", "--prompt-tokens"),
    ("bench -w {w} --device cpu --prompt-tokens 100000", "--prompt-tokens"),
    ("bench -w {w} --device cpu --streams 0", "--streams"),
    ("bench -w {w} --device cpu --streams 99", "--streams"),
    ("bench -w {w} --device cpu --cfg nan", "--cfg"),
    ("bench -w {w} --device cpu --cfg -1", "--cfg"),
    ("bench -w {w} --device cuda", "CUDA is not available"),
    ("bench -w {w} --device cpu --backend onnxruntime --dtype bf16", "bf16 was not exported"),
    ("bench -w {w} --device cpu --out {w}/workdir.json", "is a file"),
    ("report {t}/missing.json", "does not exist"),
    ("report {t}", "directory"),
    ("report {w}/workdir.json", "report is missing key"),
    ("report {w}/onnx/connectors.fp32.onnx", "cannot read report"),
    ("demo -w {t}/d --frames 15", "--frames"),
    ("demo -w {t}/d --frames 100000", "1022"),
    ("synth", "Missing option"),
    ("parity -w  --frames 16", "empty path"),
    ("nosuchverb", "No such command"),
]


@pytest.mark.parametrize("line, needle", CASES, ids=[c[0].split(" {")[0].replace("{", "") for c in CASES])
def test_hostile_option_is_one_line_before_any_work(wd, tmp_path, no_work, line, needle):
    args = [a.format(w=wd, t=tmp_path) for a in line.split(" ")]
    err = one_clear_line(run(*args))
    assert needle in err, err
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "e").exists() and not (tmp_path / "d").exists()


def test_voices_that_do_not_match_the_speakers(wd, tmp_path, no_work):
    import numpy as np
    import soundfile as sf

    v = tmp_path / "v.wav"
    sf.write(v, (0.1 * np.sin(np.arange(24000) / 7)).astype("float32"), 24000)
    err = one_clear_line(run("synth", "-w", wd, "--text", "Speaker 1: hi", "--voice", v, "--voice", v, "-o",
                             tmp_path / "o.wav"))
    assert "1 speaker(s) but 2 voice(s)" in err
    sf.write(v, np.zeros(24000, "float32"), 24000)
    assert "silent" in one_clear_line(run("synth", "-w", wd, "--text", "hi", "--voice", v, "-o", tmp_path / "o.wav"))


def test_the_same_options_within_range_are_accepted(wd, tmp_path):
    """Control for the table above: in-range values of the same options run."""
    res = run("synth", "-w", wd, "--device", "cpu", "--text", "hi", "--frames", "2", "--max-frames", "2",
              "--cfg", "0", "--seed", str(2**63 - 1), "-o", tmp_path / "new" / "dir" / "o.wav")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "dir" / "o.wav").is_file()  # missing parent directories are created


# -- a full disk: one line when the write fails, nothing partial left ----------------------------------------
def _on_a_full_disk(folder: Path, args: list, size_kb: int) -> subprocess.CompletedProcess:
    """Run `python -m vvtrt ARGS` with `folder` on a tmpfs of `size_kb` KiB of its own (a private mount
    namespace); print what the folder holds afterwards. Without user namespaces (some CI kernels), the
    process gets a file-size limit instead (writes beyond it fail with EFBIG)."""
    import os
    import resource
    import signal

    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vvtrt", *[str(a) for a in args]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        script = (f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && "$@"; rc=$?; cd "$0" && find . -mindepth 1 '
                  '| sort; exit $rc')
        return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(folder), *cmd], capture_output=True,
                              text=True, env=env, timeout=600)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, preexec_fn=limit)
    res.stdout += "".join(f"./{p.relative_to(folder)}\n" for p in sorted(folder.rglob("*")))
    return res


def _left(res) -> set[str]:
    """What the folder held after the command (the lines `_on_a_full_disk` added)."""
    return {ln[2:] for ln in res.stdout.splitlines() if ln.startswith("./")}


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, (res.stdout, res.stderr)
    return lines[0]


def test_synth_on_a_full_disk(wd, tmp_path):
    out = tmp_path / "full"
    res = _on_a_full_disk(out, ["synth", "-w", wd, "--device", "cpu", "--text", "hi", "--frames", "3", "-o",
                                out / "o.wav"], size_kb=16)
    line = _one_error_line(res)
    assert "o.wav" in line and ("no space left" in line or "too large" in line), line
    assert _left(res) == set(), res.stdout  # neither the wav nor a temporary


def test_export_on_a_full_disk(tmp_path):
    out = tmp_path / "full"
    res = _on_a_full_disk(out, ["export", "--model", "tiny", "-w", out / "wd", "--dtype", "fp32", "--components",
                                "connectors"], size_kb=48)
    line = _one_error_line(res)
    assert "no space left" in line or "too large" in line, line
    assert _left(res) <= {"wd", "wd/.vvtrt.lock", "wd/workdir.json", "wd/onnx"}, res.stdout  # no graph, no .tmp
