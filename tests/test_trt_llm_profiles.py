"""lm_decode's optimization profiles (pure: no TensorRT needed): the LLM is one engine serving the decode steps
and the prompt prefill's chunks; the TensorRT-RTX build of those profiles is in tests/test_engine_builds.py."""
from __future__ import annotations

import pytest

from vvtrt.engines.builder import profile_shapes
from vvtrt.errors import InputError
from vvtrt.runtime.trt_runner import select_profile


def test_llm_engine_profiles_decode_per_bucket_and_prefill_chunks(tiny_info):
    """lm_decode is the LLM's one engine: a decode profile per KV bucket (T = 1) and a last profile for the
    prefill's chunks (batch 1, T up to the chunk, the cache so far); the runner picks one by shape."""
    from vvtrt.components.specs import ExportOptions, build_specs

    opts = ExportOptions(kv_buckets=(1024, 4096, 16384), max_prompt=15360, prefill_chunk=512)
    spec = build_specs(tiny_info, opts)["lm_decode"]
    assert len(spec.profiles) == len(opts.kv_buckets) + 1
    h = tiny_info.hidden
    for i, s in enumerate(opts.kv_buckets):
        shapes = profile_shapes(spec, spec.profiles[i])
        assert shapes["embeds"] == ((1, 1, h), (2, 1, h), (opts.max_batch, 1, h))
        assert {d[1][3] for d in (shapes["past_k"], shapes["past_v"])} == {s}
        assert select_profile(spec, {"batch": 5, "seq": 1, "kv_len": s}) == i
    chunk = profile_shapes(spec, spec.profiles[-1])
    assert chunk["embeds"] == ((1, 1, h), (1, 512, h), (1, 512, h))
    assert [chunk["past_k"][j][3] for j in range(3)] == [1, 512, 14848]  # the last chunk starts at 29 * 512
    last = len(opts.kv_buckets)
    for dims in ({"batch": 1, "seq": 512, "kv_len": 1}, {"batch": 1, "seq": 77, "kv_len": 14848},
                 {"batch": 1, "seq": 1, "kv_len": 1536}):
        assert select_profile(spec, dims) == last
    with pytest.raises(InputError, match="fit no engine profile"):
        select_profile(spec, {"batch": 2, "seq": 8, "kv_len": 1024})  # chunks are one row
