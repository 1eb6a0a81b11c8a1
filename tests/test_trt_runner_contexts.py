"""`ContextPool`: which TensorRT execution context each `TrtRunner.infer` runs on (pure policy, no GPU).

NVIDIA's CUDA-graph rules for TensorRT: enqueue once with the shapes before capturing them, and a captured graph
is valid only for the shapes (and context state) it was captured with, so one context per captured shape and
buffer set; no context is created inside a capture. The contexts here are plain objects made by a counting
factory; the policy under test is the real one `TrtRunner` uses."""
from __future__ import annotations

import pytest

from vvtrt.runtime.trt_runner import ContextPool, TrtExecutionError, _Context, shape_key

A, B = (1, 2, 3), (4, 5, 6)  # two sets of buffer addresses


def _pool():
    made = []

    def create(profile):
        made.append(profile)
        return _Context(ctx=f"ctx{len(made)}")

    return ContextPool(create, "toy.fp32"), made


def key(profile=0, **dims):
    return shape_key(profile, dims or {"batch": 1, "seq": 64})


def test_eager_calls_share_one_context_per_profile_whatever_the_shapes():
    pool, made = _pool()
    first = pool.get(key(seq=7), A, capturing=False)
    assert pool.get(key(seq=9), B, capturing=False) is first
    assert pool.get(key(1, seq=9), A, capturing=False) is not first  # another profile, another context
    assert made == [0, 1]


def test_capture_takes_over_the_warmed_up_context_and_later_shapes_get_a_fresh_one():
    pool, made = _pool()
    warm = pool.get(key(seq=64), A, capturing=False)
    captured = pool.get(key(seq=64), A, capturing=True)
    assert captured is warm and captured.captured == A
    other = pool.get(key(seq=128), B, capturing=False)  # eager, other shapes: never the captured context
    assert other is not captured and made == [0, 0]
    assert pool.get(key(seq=64), A, capturing=False) is captured  # what a replay runs: same shapes and buffers
    assert pool.get(key(seq=64), B, capturing=False) is other  # same shapes, other buffers: the eager context
    assert captured.key == key(seq=64) and other.key == key(seq=64)


def test_no_capture_without_the_warm_up_and_no_context_made_inside_one():
    pool, made = _pool()
    with pytest.raises(TrtExecutionError, match="not run eagerly just before this capture"):
        pool.get(key(seq=64), A, capturing=True)
    pool.get(key(seq=32), A, capturing=False)
    with pytest.raises(TrtExecutionError, match="warm-up"):
        pool.get(key(seq=64), A, capturing=True)  # warmed up other shapes
    assert made == [0]


def test_same_shapes_captured_twice_with_other_buffers_get_two_contexts():
    """Two frame loops (two kv buckets) share e.g. the sampler's shapes but not its buffers."""
    pool, made = _pool()
    pool.get(key(), A, capturing=False)
    first = pool.get(key(), A, capturing=True)
    pool.get(key(), B, capturing=False)  # the second loop's warm-up: a fresh eager context
    second = pool.get(key(), B, capturing=True)
    assert second is not first and (first.captured, second.captured) == (A, B)
    assert pool.get(key(), A, capturing=True) is first  # re-capturing the same buffers reuses its context
    assert len(pool.all()) == 2 and made == [0, 0]


def test_prepared_contexts_are_warmed_up_and_captured_in_place():
    pool, made = _pool()
    pool.prepare(key=key(seq=64))
    pool.prepare(profile=0)
    eager = pool.eager[0]
    warm = pool.get(key(seq=64), A, capturing=False)
    assert warm is not eager and pool.get(key(seq=64), A, capturing=True) is warm
    assert pool.get(key(seq=8), B, capturing=False) is eager
    assert made == [0, 0]
    pool.clear()
    assert pool.all() == []
