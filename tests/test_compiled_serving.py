"""The serving engine with torch.compile'd runners on the tiny model (CPU): a compiled engine serves what the
eager one does (within float32 rounding: inductor fuses and reorders arithmetic), its compiled code lands in
the work dir's compile-cache, and a second start in another process loads it from there (a cache hit).

To keep the CPU time small only one component (the connectors) is compiled here; inductor compiles C++ on
the CPU, about a minute a graph on a busy 2-core machine."""
from __future__ import annotations

import numpy as np

from vvtrt.serving.api import SpeechRequest
from vvtrt.serving.engine import Engine
from compiled_start import start_compiled
from workdir_copy import copy_workdir

SETTINGS = {"device": "cpu", "precision": "fp32", "max_streams": 2, "batch_buckets": (), "kv_buckets": ()}
# inductor compiles C++ on the CPU, about a minute a graph here: only the connectors
COMPILED = {**SETTINGS, "compile_components": ("connectors",)}
REQUEST = SpeechRequest("Speaker 1: Hello there.", seed=1, cfg_scale=1.3, frames=6)


def _serve_one(engine: Engine) -> np.ndarray:
    engine.start()
    try:
        return np.concatenate([c.audio for c in engine.submit(REQUEST)])
    finally:
        engine.stop()


def test_compiled_engine_serves_as_the_eager_one_and_a_second_start_hits_its_cache(tiny_workdir, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # the work dir's cache, not one set outside
    wd = copy_workdir(tiny_workdir, tmp_path / "wd", items=())  # torch runs the preset: no graphs needed
    eager = _serve_one(Engine.from_workdir(wd.root, **SETTINGS))

    cold = start_compiled(wd.root, COMPILED, tmp_path / "cold.npy")
    compiled = np.load(tmp_path / "cold.npy")
    assert compiled.shape == eager.shape
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    assert cold["compile"]["shapes"] == "dynamic-batch" and cold["build_s"] > 0 and cold["total_s"] > 0
    assert cold["compile"]["cache"]["state"] == "miss" and cold["compile"]["cache"]["fx_graph_misses"] >= 1
    assert cold["compile"]["cache"]["graphs"] == 1  # the connectors over a dynamic batch of 2
    cache = wd.root / "compile-cache"
    assert cold["compile"]["cache"]["dir"] == str(cache.resolve())
    assert any(p.is_file() for p in (cache / "fxgraph").rglob("*")), "no FX graph cache entries written"

    warm = start_compiled(wd.root, COMPILED, tmp_path / "warm.npy")
    assert warm["compile"]["cache"]["state"] == "hit", warm
    assert warm["compile"]["cache"]["fx_graph_hits"] >= 1 and warm["compile"]["cache"]["fx_graph_misses"] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "warm.npy"), compiled)  # the cached code is the same code

