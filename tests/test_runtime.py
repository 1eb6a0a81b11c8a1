"""The runtime end to end on the tiny model (CPU): the Synthesizer against transformers `generate`, for the
torch and ONNX Runtime backends, streaming, wav output and the error cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vvtrt.errors import InputError
from vvtrt.parity.compare import error_stats, snr_db
from vvtrt.parity.reference_generate import reference_generate
from vvtrt.runtime.synthesizer import SynthesisResult, Synthesizer

FRAMES = 16


@pytest.fixture(scope="module")
def reference(tiny_workdir):
    from vvtrt.model.resolve import load_model

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    ids, _ = synth.prompt_embeds("Speaker 1: Hello from the tiny model.")
    lat, audio = reference_generate(load_model(tiny_workdir.source()), list(ids), FRAMES, 10, 1.3, seed=5)
    return ids, lat, audio


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_synthesizer_matches_transformers_generate(tiny_workdir, reference, backend):
    ids, ref_lat, ref_audio = reference
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend=backend, device="cpu", precision="fp32")
    res = synth.synthesize("Speaker 1: Hello from the tiny model.", frames=FRAMES, seed=5, keep_latents=True)
    assert res.frames == FRAMES and res.forced and res.stop_reason == "frame budget"
    assert res.audio.shape == (FRAMES * 3200,) and len(res.latents) == len(ref_lat) == FRAMES
    for a, b in zip(res.latents, ref_lat):
        assert error_stats(torch.from_numpy(a), b).rel_l2 < 1e-4
    assert snr_db(torch.from_numpy(res.audio), ref_audio) > 60


def test_fallback_mixes_backends(tiny_workdir, reference):
    _, ref_lat, _ = reference
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="onnxruntime", device="cpu", precision="fp32",
                                     fallback={"lm_decode": "torch", "diffusion_sampler": "torch"})
    assert synth.runners["lm_decode"].backend == "torch"
    assert synth.runners["acoustic_decoder_step"].backend == "onnxruntime"
    res = synth.synthesize("Speaker 1: Hello from the tiny model.", frames=FRAMES, seed=5, keep_latents=True)
    assert error_stats(torch.from_numpy(res.latents[-1]), ref_lat[-1]).rel_l2 < 1e-4


def test_stream_yields_each_frame_as_it_is_made(tiny_workdir):
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    chunks = list(synth.stream("Speaker 0: streaming", frames=5, result=res))
    assert [c.shape for c in chunks] == [(3200,)] * 5
    assert np.array_equal(np.concatenate(chunks), res.audio)
    assert all(np.abs(c).max() > 1e-3 for c in chunks)  # non-degenerate audio
    assert res.ttfa_s > 0 and len(res.frame_s) == 5


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_concurrent_streams_match_single_streams(tiny_workdir, backend):
    """3 streams batched into one frame step (rows of every component) reproduce 3 separate runs with the
    same seeds: the batched loop keeps each stream's KV rows, conv states and noise apart."""
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend=backend, device="cpu", precision="fp32")
    ids, emb = synth.prompt_embeds("Speaker 0: three at once")
    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    chunks = list(synth.generate(ids, emb, frames=6, seed=5, streams=3, result=res, keep_latents=True))
    assert [c.shape for c in chunks] == [(3, 3200)] * 6 and res.audio.shape == (3, 6 * 3200) and res.streams == 3
    assert res.audio_seconds == pytest.approx(0.8)
    for s in range(3):
        alone = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
        for _ in synth.generate(ids, emb, frames=6, seed=5 + s, result=alone, keep_latents=True):
            pass
        assert error_stats(torch.from_numpy(res.audio[s]), torch.from_numpy(alone.audio)).rel_l2 < 1e-5
        for a, b in zip(res.latents, alone.latents):
            assert error_stats(torch.from_numpy(a[s]), torch.from_numpy(b)).rel_l2 < 1e-5
    assert error_stats(torch.from_numpy(res.audio[0]), torch.from_numpy(res.audio[1])).rel_l2 > 0.1  # distinct
    with pytest.raises(InputError, match="--streams > 1 needs a frame budget"):
        next(synth.generate(ids, emb, streams=2))


def test_voices_go_through_the_acoustic_encoder(tiny_workdir, tmp_path):
    from vvtrt.runtime.audio_io import write_wav

    t = np.arange(24000 * 2) / 24000
    wav = tmp_path / "v.wav"
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32))
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="onnxruntime", device="cpu", precision="fp32")
    ids, emb = synth.prompt_embeds("Speaker 1: hi", [str(wav)])
    assert list(ids).count(synth.info.audio_token_id) == 15  # ceil(48000 / 3200)
    res = synth.synthesize("Speaker 1: hi", [str(wav)], frames=3)
    assert res.frames == 3
    with pytest.raises(InputError, match="voice"):
        synth.synthesize("Speaker 1: hi\nSpeaker 2: there", [str(wav)], frames=2)


def test_random_model_without_frame_budget_says_so(tiny_workdir):
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    res = synth.synthesize("Speaker 1: the random LM never speaks on its own", max_frames=2)
    assert res.frames == 0 or res.stop_reason in ("max frames", "eos")
    if res.frames == 0:  # what `vvtrt synth` then says (the CLI itself: tests/test_first_contact.py)
        from vvtrt.pipeline import no_audio_message

        line = no_audio_message(res.stop_reason, forced=False)
        assert line.startswith("no audio was produced") and "pass --frames N" in line, line


def test_bad_inputs_raise_typed_errors(tiny_workdir):
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    with pytest.raises(InputError, match="empty"):
        synth.synthesize("   ", frames=2)
    with pytest.raises(InputError, match="frames"):
        synth.synthesize("Speaker 1: x", frames=0)
    with pytest.raises(InputError, match="too long"):
        synth.synthesize("Speaker 1: " + "long " * 400, frames=2)


def test_kv_cache_writes_at_row_lengths(tiny_info):
    from vvtrt.runtime.kv_cache import StaticKVCache, pick_bucket

    kv = StaticKVCache(tiny_info, 2, 8, torch.float32, "cpu")
    kv.lengths.copy_(torch.tensor([3, 0]))
    new = torch.randn(tiny_info.layers, 2, tiny_info.kv_heads, 1, tiny_info.head_dim)
    kv.write_step(new, new * 2)
    assert torch.equal(kv.k[:, 0, :, 3], new[:, 0, :, 0]) and torch.equal(kv.v[:, 1, :, 0], 2 * new[:, 1, :, 0])
    assert pick_bucket((256, 1024), 300) == 1024
    with pytest.raises(InputError, match="too long"):
        pick_bucket((256, 1024), 2000)


def test_fallback_parsing():
    from vvtrt.runtime.backends import parse_fallback

    assert parse_fallback(["lm_decode=torch"]) == {"lm_decode": "torch"}
    for bad in ("lm_decode", "nope=torch", "lm_decode=cuda"):
        with pytest.raises(InputError):
            parse_fallback([bad])


def test_fast_path_compile_failure_falls_back(tiny_workdir, tiny_model, caplog, monkeypatch):
    """When the compiled fast path cannot be built (here: the CPU's inductor has no FlexAttention with
    log-sum-exp), the runner logs it and compiles the exported path's ops instead: same numbers, no error."""
    import copy
    import logging

    from vvtrt.components.specs import build_specs
    from vvtrt.precision import Precision
    from vvtrt.runtime.runner import TorchRunner

    spec = build_specs(tiny_workdir.info(), tiny_workdir.options())["lm_decode"]
    model = copy.deepcopy(tiny_model)
    plain = TorchRunner(spec, Precision.FP32, "cpu", model)
    fast = TorchRunner(spec, Precision.FP32, "cpu", model, compile=True)
    fast.fast_pending = fast.module.fast = True  # as on CUDA
    monkeypatch.setenv("VVTRT_DECODE_KERNEL", "flex")  # FlexAttention does not compile on the CPU: a failure
    feed = spec.sample({"batch": 2, "kv_len": 64}, Precision.FP32, torch.Generator().manual_seed(0))
    feed["cache_len"] = torch.tensor([5, 0])
    with caplog.at_level(logging.WARNING):
        got = fast.infer(feed)
    assert "fast path failed" in caplog.text and fast.module.fast is False
    want = plain.infer(feed)
    for name in want:
        assert error_stats(got[name], want[name]).rel_l2 < 1e-5
