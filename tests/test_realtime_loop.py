"""The Realtime reference loop: the sampler against diffusers' scheduler (both variants), windowing,
stopping, injected noise, and text arriving in pieces giving the same audio as the whole text."""
from __future__ import annotations

import pytest
import torch

from vvtrt.model.text_tokenizer import ByteTokenizer

TEXT = "Hello there, this is a test of streaming speech."


@pytest.fixture(scope="session")
def rt_tiny():
    from vvtrt.realtime.presets import build_realtime_model

    return build_realtime_model("tiny-realtime")


@pytest.fixture(scope="session")
def rt_voice(rt_tiny):
    from vvtrt.realtime.synthetic import make_voice

    return make_voice(rt_tiny, "syn", lm_len=12, tts_len=30, seed=1)


def _scheduler_sample(model, c, u, noise, step_noise, cfg, steps, algorithm):
    """Microsoft's sample_speech_tokens, written against diffusers' scheduler with injected noise."""
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                      algorithm_type=algorithm)
    sch.set_timesteps(steps)
    cond = torch.cat([c, u], 0)
    x = torch.cat([noise, torch.randn_like(noise)], 0).to(cond.dtype)  # row 1 is never used
    for k, t in enumerate(sch.timesteps):
        both = torch.cat([x[:1], x[:1]], 0)
        v_c, v_u = model.model.diffusion_head(both, t.repeat(2).to(both), cond).split(1)
        g = v_u + cfg * (v_c - v_u)
        vn = None if step_noise is None else torch.cat([step_noise[:, k], torch.zeros_like(step_noise[:, k])])
        x = sch.step(torch.cat([g, g]), t, x, variance_noise=vn).prev_sample
    return x[:1]


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_matches_the_scheduler(rt_tiny, algorithm, dtype):
    from vvtrt.realtime.presets import build_realtime_model
    from vvtrt.realtime.sampler import RealtimeSampler

    model = rt_tiny if dtype == torch.float32 else build_realtime_model("tiny-realtime", dtype=dtype)
    g = torch.Generator().manual_seed(0)
    c, u = (torch.randn(1, 64, generator=g).to(dtype) for _ in range(2))
    noise, step_noise = torch.randn(1, 64, generator=g), torch.randn(1, 5, 64, generator=g)
    sde = algorithm.startswith("sde")
    ours = RealtimeSampler(model, 5, algorithm)(c, u, noise, torch.tensor([1.5]), step_noise if sde else None)
    ref = _scheduler_sample(model, c, u, noise, step_noise if sde else None, 1.5, 5, algorithm)
    tol = 0.0 if dtype == torch.bfloat16 else 2e-6  # bf16: bit-exact; fp32: a few ulp (batched matmuls)
    assert (ours[:, 0].float() - ref.float()).abs().max() <= tol * ref.float().abs().max()


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_takes_one_guidance_scale_per_row(rt_tiny, algorithm, dtype):
    """Each row mixes with its own scale, and a uniform per-row scale gives, bit for bit, what one scale
    broadcast over the batch gives (the `[1]` input of the reference loop and of earlier exports)."""
    from vvtrt.realtime.presets import build_realtime_model
    from vvtrt.realtime.sampler import RealtimeSampler

    model = rt_tiny if dtype == torch.float32 else build_realtime_model("tiny-realtime", dtype=dtype)
    g = torch.Generator().manual_seed(1)
    c, u = (torch.randn(3, 64, generator=g).to(dtype) for _ in range(2))
    noise, step_noise = torch.randn(3, 64, generator=g), torch.randn(3, 5, 64, generator=g)
    sampler = RealtimeSampler(model, 5, algorithm)
    run = lambda cfg: sampler(c, u, noise, cfg, step_noise if sampler.stochastic else None)  # noqa: E731
    scales = (1.0, 1.5, 2.75)
    mixed = run(torch.tensor(scales))
    for i, scale in enumerate(scales):
        uniform = run(torch.full((3,), scale))
        assert torch.equal(uniform, run(torch.tensor([scale])))
        assert torch.equal(mixed[i], uniform[i])
    assert not torch.equal(mixed[0], run(torch.full((3,), 1.5))[0])


def _run(model, voice, feed, **opts):
    from vvtrt.realtime.reference import LoopOptions, synthesize

    return synthesize(model, voice, feed, LoopOptions(**opts), seed=7)


def test_incremental_text_gives_the_same_audio(rt_tiny, rt_voice):
    from vvtrt.realtime.text_feed import TextFeed, whole_text_ids

    tok = ByteTokenizer()
    pieces = ["  Hel", "lo th", "ere, this is", " a te", "st of streaming ", "speech.  ", ""]
    assert "".join(pieces).strip() == TEXT
    whole = _run(rt_tiny, rt_voice, TextFeed(TEXT, tok), max_frames=14)
    parts = _run(rt_tiny, rt_voice, TextFeed(iter(pieces), tok), max_frames=14)
    assert whole.frames == parts.frames == 14 and torch.equal(whole.audio, parts.audio)
    feed = TextFeed(iter(pieces), tok)
    got = []
    while not feed.exhausted:
        got += feed.take(5)
    assert got == whole_text_ids(TEXT, tok)


def test_first_audio_comes_after_the_first_window(rt_tiny, rt_voice):
    from vvtrt.realtime.reference import LoopOptions, RealtimeReference
    from vvtrt.realtime.text_feed import TextFeed

    pulled = []

    def pieces():
        for p in ["Hello ", "there, ", "this is ", "a test ", "of streaming ", "speech."]:
            pulled.append(p)
            yield p

    stream = RealtimeReference(rt_tiny, LoopOptions(max_frames=8)).stream(rt_voice, TextFeed(pieces(), ByteTokenizer()))
    first = next(stream)
    assert first.audio.shape == (3200,) and len(pulled) <= 2  # 5 tokens were enough to start speaking
    rest = list(stream)
    assert len(rest) == 7 and len(pulled) == 3


def test_forced_eos_and_injected_noise(rt_tiny, rt_voice):
    from vvtrt.realtime.reference import LoopOptions, TensorNoise, synthesize
    from vvtrt.realtime.text_feed import TextFeed

    g = torch.Generator().manual_seed(3)
    noise = TensorNoise(torch.randn(20, 64, generator=g), torch.randn(20, 5, 64, generator=g))
    tok = ByteTokenizer()
    a = synthesize(rt_tiny, rt_voice, TextFeed(TEXT, tok), LoopOptions(force_eos_frame=3), noise)
    assert a.stop_reason == "forced_eos" and a.frames == 4 and a.audio.shape == (4 * 3200,)
    b = synthesize(rt_tiny, rt_voice, TextFeed(TEXT, tok), LoopOptions(force_eos_frame=3), noise, seed=99)
    assert torch.equal(a.audio, b.audio)  # the injected noise, not the seed, decides
    sde = synthesize(rt_tiny, rt_voice, TextFeed(TEXT, tok), LoopOptions(force_eos_frame=3, algorithm="sde-dpmsolver++"),
                     noise)
    assert sde.frames == 4 and not torch.equal(sde.latents, a.latents)
    assert torch.isfinite(sde.audio).all() and float(a.audio.std()) > 1e-3


def test_real_eos_stops_the_loop(rt_tiny, rt_voice):
    from vvtrt.realtime.text_feed import TextFeed

    fc2 = rt_tiny.tts_eos_classifier.fc2.bias
    saved = fc2.clone()
    try:
        fc2.fill_(50.0)  # every frame says EOS: the first frame is handed out, then the loop ends
        r = _run(rt_tiny, rt_voice, TextFeed(TEXT, ByteTokenizer()))
        assert r.stop_reason == "eos" and r.frames == 1
    finally:
        fc2.copy_(saved)


def test_position_limit_stops_the_loop(rt_tiny):
    from vvtrt.realtime.synthetic import make_voice
    from vvtrt.realtime.text_feed import TextFeed

    context = rt_tiny.rt_config.context
    voice = make_voice(rt_tiny, "long", lm_len=4, tts_len=context - 9, seed=2)
    r = _run(rt_tiny, voice, TextFeed("Hi there", ByteTokenizer()))  # 9 ids: 5 + 4, never EOS
    # window 1: 5 text positions -> context-4; 4 frames fill the positions left, the 5th is handed out
    # and its embedding would pass the limit (Microsoft's `len(ids) > max_length`): stop
    assert r.stop_reason == "length" and r.frames == 5


def test_empty_text_is_an_input_error():
    from vvtrt.errors import InputError
    from vvtrt.realtime.text_feed import TextFeed

    with pytest.raises(InputError, match="empty"):
        TextFeed(iter(["  ", "\n"]), ByteTokenizer()).take(5)
