"""The serving load benchmark on the tiny model (CPU): a JSON report with per-level latency figures, the
environment, and the latency-vs-load plot; bad load settings are typed errors."""
from __future__ import annotations

import json

import pytest

from vvtrt.bench.serving import ServingLoad, run_serving_bench
from vvtrt.errors import InputError


def test_serving_bench_writes_a_report(tiny_workdir, tmp_path):
    load = ServingLoad("concurrency", (1, 2), requests=2, frames=3, prompt_words=(2, 30))
    paths = run_serving_bench(tiny_workdir.root, "torch", "cpu", "fp32", load, tmp_path, max_streams=2)
    report = json.loads(paths["json"].read_text())
    assert report["kind"] == "bench-serving" and paths["png"].stat().st_size > 0
    assert "git_commit" in report["config"]["environment"] and report["config"]["device"] == "cpu"
    assert [lv["level"] for lv in report["levels"]] == [1, 2]
    for lv in report["levels"]:
        assert lv["completed"] == max(2, 2 * int(lv["level"]))  # concurrency mode runs >= 2 x the level
        assert lv["ttfa_ms"]["n"] == lv["completed"] and lv["gap_ms"]["n"] == 2 * lv["completed"]
        assert len(lv["prompt_tokens"]) == 2 and lv["refused"] == 0 and not lv["failed"]
    assert report["config"]["engine"]["slots"] == 2


@pytest.mark.parametrize("kw", [{"mode": "burst"}, {"levels": ()}, {"levels": (1.5,)}, {"frames": 0}])
def test_bad_load_settings(kw):
    with pytest.raises(InputError):
        ServingLoad(**kw)
