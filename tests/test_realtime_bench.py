"""The Realtime bench (`vvtrt.realtime.bench`) on tiny-realtime (CPU, fp32): `vvtrt bench -w <Realtime work
dir>` writes its JSON / Markdown / plot with TTFA, the component breakdown of the step and the engine phase
(every stream ok); its bad options are one line and exit 2 before any model loads; the benchmarks script,
now a thin command line over the same module, still runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cli_helpers import one_clear_line, run
from realtime_fixtures import one_torch_thread  # noqa: F401 - used through pytestmark

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOOP = ("rt_text_window", "rt_tts_decode", "rt_sampler", "rt_decoder_step", "rt_connector")
SPEECH = ["rt_sampler", "rt_decoder_step", "rt_connector", "rt_tts_decode", "glue"]


@pytest.fixture(scope="module")
def rt_wd(tmp_path_factory):
    """A tiny-realtime work dir with the loop's graphs exported in fp32."""
    from vvtrt.pipeline import run_export

    root = tmp_path_factory.mktemp("rt_bench") / "wd"
    run_export("tiny-realtime", root, "fp32", None, ",".join(LOOP), 0, False, None)
    return root


def _check_breakdown(bd: dict, streams: int) -> None:
    assert bd["streams"] == streams and bd["text_tokens"] == 5
    comps = bd["speech"]["components"]
    assert [c["name"] for c in comps] == SPEECH
    assert [c["rows"] for c in comps[:4]] == [streams, streams, streams, 2 * streams]
    assert all(c["ms"] > 0 and c["method"] == "wall" for c in comps[:4])
    assert sum(c["ms"] for c in comps) == pytest.approx(bd["speech"]["step_ms"], abs=1e-3)
    assert [c["name"] for c in bd["text_window"]["components"]] == ["rt_text_window", "glue"]


def test_bench_on_a_realtime_work_dir(rt_wd, tmp_path):
    out = tmp_path / "r"
    res = run("bench", "-w", rt_wd, "--device", "cpu", "--backend", "onnxruntime", "--frames", "8", "--repeats", "2",
              "--streams", "2", "--out", out)
    assert res.exit_code == 0, res.output
    stem = out / "bench_tiny-realtime_fp32_k5_onnxruntime"
    r = json.loads(stem.with_suffix(".json").read_text())
    assert r["backend"] == "onnxruntime" and r["cfg_scale"] == 1.5 and r["steps"] == 5 and r["dtype"] == "fp32"
    assert len(r["ttfa"]["samples_ms"]) == 2 and r["ttfa"]["p50_ms"] > 0
    assert [b["streams"] for b in r["batches"]] == [1, 2] and all(b["ticks"] == 8 for b in r["batches"])
    assert [bd["streams"] for bd in r["component_breakdown"]] == [1, 2]
    for bd, n in zip(r["component_breakdown"], (1, 2)):
        _check_breakdown(bd, n)
    passes = r["engine"]["passes"]
    assert [p["streams"] for p in passes] == [1, 2]
    for p in passes:
        assert p["ok"] == p["streams"] and p["frames_per_stream"] == 8 and p["outcomes"] == ["forced_eos"]
        assert p["ttfa_ms"]["p50"] > 0 and p["gap_ms"]["p99"] > 0 and p["chunks_per_s"] > 0
        assert p["stats"] == {"forced_eos": 2 * p["streams"]}  # the warm pass and the timed one
        assert p["playback"]["streams_running_dry"] in range(p["streams"] + 1)
        assert p["gc_pauses"]["count"] >= p["gc_pauses"]["generation2"] >= 0
    assert "chunk rate" in r["engine"]["realtime_definition"]
    assert r["memory_one_stream"]["nvml_process_status"].startswith("not measured")
    md = stem.with_suffix(".md").read_text()
    assert "## Component breakdown" in md and "## Streams through the engine" in md and "rt_tts_decode" in md
    assert stem.with_suffix(".png").stat().st_size > 1000 and f"({stem.name}.png)" in md
    assert str(stem.with_suffix(".md")) in res.output
    again = run("report", stem.with_suffix(".json"), "--out", tmp_path / "again")  # our own JSON re-renders
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / f"{stem.name}.md").read_text().strip()


@pytest.fixture
def no_load(monkeypatch):
    import vvtrt.realtime.bench
    import vvtrt.realtime.runtime

    def started(*a, **k):
        pytest.fail("a model loaded before the options were refused")

    monkeypatch.setattr(vvtrt.realtime.runtime.RealtimeRunner, "from_workdir", started)
    monkeypatch.setattr(vvtrt.realtime.bench, "run_realtime_bench", started)


@pytest.mark.parametrize("args, needle", [
    (["--prompt-tokens", "64"], "--prompt-tokens"),
    (["--baseline", "pytorch-eager"], "--baseline"),
    (["--backend", "torch,onnxruntime"], "one --backend"),
    (["--backend", "onnxruntime-graph"], "unknown Realtime bench backend"),
    (["--backend", "onnxruntime", "--streams", "99"], "--streams must be at most 8"),
    (["--frames", "5000"], "lower --frames"),
    (["--backend", "onnxruntime", "--dtype", "bf16"], "bf16"),
    (["--cfg", "nan"], "--cfg"),
    (["--repeats", "0"], "--repeats"),
    (["--streams", "100000"], "--streams must be at most 1024"),  # the bench doubled up to it
])
def test_bad_options_are_one_line(rt_wd, tmp_path, no_load, args, needle):
    assert needle in one_clear_line(run("bench", "-w", rt_wd, "--device", "cpu", *args, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_settings_and_stream_counts():
    from vvtrt.errors import InputError
    from vvtrt.realtime.bench import RealtimeBenchSettings, parse_counts, powers_of_two_to

    assert powers_of_two_to(1) == (1,) and powers_of_two_to(4) == (1, 2, 4) and powers_of_two_to(5) == (1, 2, 4, 5)
    assert parse_counts("64, 256,512", "--x") == (64, 256, 512) and parse_counts("", "--x") == ()
    for bad in ("a,b", "0,4"):
        with pytest.raises(InputError, match="--x"):
            parse_counts(bad, "--x")
    for kw in ({"frames": 0}, {"engine_reader": "threads"}, {"batches": (0,)}, {"cfg_scale": float("nan")}):
        with pytest.raises(InputError):
            RealtimeBenchSettings(**kw)


def test_benchmark_script_runs_on_the_cpu(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "realtime_bench.py"
    spec = importlib.util.spec_from_file_location("realtime_bench_script", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--out", str(tmp_path), "--device", "cpu", "--preset", "tiny-realtime", "--dtype", "fp32",
                "--batches", "1,2", "--requests", "2", "--frames", "12", "--warmup", "1", "--ttfa-frames", "3",
                "--replays", "3", "--capacity", "256", "--voice-lm-len", "8", "--voice-tts-len", "24",
                "--engine-streams", "2", "--engine-reader", "buffer"])
    r = json.loads((tmp_path / "realtime_bench.json").read_text())
    assert len(r["ttfa"]["samples_ms"]) == 2 and [b["streams"] for b in r["batches"]] == [1, 2]
    assert r["one_stream_step"]["speech_step_ms"] > 0 and r["one_stream_step"]["cuda_graphs"] is False
    for bd, n in zip(r["component_breakdown"], (1, 2)):
        _check_breakdown(bd, n)
    (p,) = r["engine"]["passes"]
    assert p["streams"] == 2 and p["ok"] == 2 and p["reader"] == "buffer" and p["frames_per_stream"] == 12
    assert (tmp_path / "realtime_bench.png").is_file() and "| 2 |" in (tmp_path / "realtime_bench.md").read_text()


def test_playback_counts_a_stream_that_would_run_dry():
    """One frame of start buffer: chunk i is due (i + 1) frames after the first chunk."""
    from types import SimpleNamespace

    from vvtrt.realtime.bench_engine import _playback

    steady = SimpleNamespace(chunk_gaps_s=[0.05] * 10)
    stalled = SimpleNamespace(chunk_gaps_s=[0.13, 0.13, 0.40, 0.01])  # chunk 3 at 660 ms, due at 533.3 ms
    pb = _playback([steady, stalled], 1000 / 7.5)
    assert pb["streams_running_dry"] == 1 and abs(pb["worst_lateness_ms"] - 126.667) < 1e-2
