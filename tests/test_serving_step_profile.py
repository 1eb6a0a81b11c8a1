"""benchmarks/serving_step_profile.py on the tiny model (CPU): the serving engine's batched frame step profiled at
two batch sizes writes its JSON (every figure, the commit and the device), its Markdown and its plot; bad input
is one line and exit 2. The figures themselves are for the GPU: nothing here asserts a timing beyond > 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vvtrt.serving.config import FRAME_COMPONENTS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serving_step_profile.py"
SPLIT = ("feed_ms", "launch_ms", "device_ms", "wait_ms", "post_ms", "total_ms")
PIECES = ("status_readback", "audio_readback", "audio_copies_per_slot", "noise")


def _run(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def profiled(tiny_workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("step_profile")
    proc = _run(tiny_workdir.root, out, "--device", "cpu", "--batches", "1,4", "--repeats", "3", "--warmup", "1",
                "--prompt-tokens", "16", env={"VVTRT_GIT_COMMIT": "feedc0de"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [Path(p) for p in proc.stdout.split()]


def test_writes_json_markdown_and_plot(profiled):
    assert [p.suffix for p in profiled] == [".json", ".md", ".png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in profiled)
    assert profiled[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in profiled[0].parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    md = profiled[1].read_text()
    assert md.startswith("# Serving step profile: tiny fp32 (torch, CPU)") and "feedc0de" in md
    assert md.count("\n| 1 |") == 3 and md.count("\n| 4 |") == 3  # a row per batch in each of the three tables


def test_json_has_every_figure_per_batch(profiled):
    rep = json.loads(profiled[0].read_text())
    assert rep["benchmark"] == "serving_step_profile" and rep["device"] == "cpu" and rep["dtype"] == "fp32"
    assert rep["environment"]["git_commit"] == "feedc0de" and "serving_step_profile.py" in rep["command"]
    assert rep["budget_ms"] == pytest.approx(3200 / 24) and rep["prompt_tokens"] == 16 and rep["repeats"] == 3
    assert [r["batch"] for r in rep["rows"]] == [1, 4]
    for r in rep["rows"]:
        assert r["slots"] == r["busy_slots"] == r["batch"] and r["bucket"][0] == r["batch"]
        assert r["bucket"][1] in r["kv_buckets"] and r["kv_len"] == 1024
        assert r["step_ms"]["n"] == 3 and r["step_ms"]["p50"] > 0 and r["deliver_ms"]["p50"] > 0
        assert set(r["split"]) == set(SPLIT) and all(r["split"][k]["n"] == 3 for k in SPLIT)
        assert r["split"]["device_ms"]["p50"] > 0 and r["split"]["feed_ms"]["p50"] > 0
        assert r["split"]["post_ms"]["p50"] > 0
        assert list(r["components"]) == list(FRAME_COMPONENTS)
        for c in r["components"].values():
            assert c["eager_ms"]["n"] == 3 and c["eager_ms"]["min"] > 0
            assert c["graph_ms"] is None and c["graph_error"] is None  # CUDA graphs only on CUDA
        assert r["component_sum_ms"]["eager_ms"] > 0 and r["component_sum_ms"]["graph_ms"] is None
        assert set(r["host_pieces_ms"]) == set(PIECES) and all(v["p50"] > 0 for v in r["host_pieces_ms"].values())
        assert r["memory"]["peak_allocated_bytes"] is None  # no GPU: not measured, never faked
        assert r["memory"]["kv_pool_bytes"] > 0
        assert r["iteration_p50_ms"] == pytest.approx(r["step_ms"]["p50"] + r["deliver_ms"]["p50"])


@pytest.mark.parametrize("args, says", [
    (["{missing}", "{out}"], "error:"),
    (["{wd}", "{out}", "--batches", "0"], "--batches"),
    (["{wd}", "{out}", "--prompt-tokens", "1000", "--max-context", "1024"], "--max-context"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_workdir, tmp_path, args, says):
    names = {"missing": tmp_path / "missing", "out": tmp_path / "out", "wd": tiny_workdir.root}
    proc = _run(*[a.format(**names) for a in args], "--device", "cpu", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
