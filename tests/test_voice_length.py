"""Voice clips are encoded at their own length, as Microsoft's original encodes them (each causal conv pads
its own input), not zero-padded to a multiple of 3200 first as
transformers' feature extractor does. Checked in torch against an independent emulation of the original's
padding on transformers' own encoder, and through the torch and ONNX Runtime CPU runners of a tiny work dir."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vvtrt.components.conv_stream import encode_at_own_length
from vvtrt.parity.compare import error_stats
from vvtrt.parity.e2e import voice_clip
from vvtrt.parity.reference_generate import original_voice_padding, reference_voice_embeds
from vvtrt.runtime.audio_io import normalize_voice, prepare_voice
from vvtrt.runtime.synthesizer import Synthesizer

HOP = 3200


def rel(a, b) -> float:
    return error_stats(torch.as_tensor(a).float(), torch.as_tensor(b).float()).rel_l2


@pytest.fixture(scope="module")
def lively_model():
    """The tiny model with layer scales at 0.5 (random init leaves the ConvNeXt blocks at ~1e-6)."""
    from vvtrt.model.presets import build_model

    model = build_model("tiny").float().eval()
    for m in model.modules():
        if hasattr(m, "ffn_gamma"):
            m.gamma.data.fill_(0.5)
            m.ffn_gamma.data.fill_(0.5)
    return model


@pytest.mark.parametrize("n", [26400, 3201, 777, 9600])
def test_encoder_runs_at_the_clips_own_length(lively_model, n):
    enc = lively_model.model.audio_tower.encoder
    wav = torch.randn(1, 1, n, generator=torch.Generator().manual_seed(n)) * 0.1
    padded = torch.nn.functional.pad(wav, (0, -n % HOP))
    with torch.no_grad():
        ours = encode_at_own_length(enc, wav)
        with original_voice_padding(lively_model):  # the original's per-conv padding, on the port's modules
            original = enc(wav).latents
        padded_first = enc(padded).latents  # transformers: zero-pad the clip to a multiple of 3200
    assert ours.shape == original.shape == padded_first.shape == (1, math.ceil(n / HOP), 64)
    assert torch.equal(ours, original)
    torch.testing.assert_close(ours[:, :-1], padded_first[:, :-1], rtol=0, atol=1e-6)  # only the last differs
    if n % HOP:
        assert rel(ours[0, -1], padded_first[0, -1]) > 0.05
    else:  # a multiple of the hop: exactly transformers' encoder
        assert torch.equal(ours, padded_first)


def test_normalize_voice_is_the_unpadded_prepare_voice():
    x = (np.sin(np.arange(5000) / 7.0) * 0.2).astype(np.float32)
    clip = normalize_voice(x)
    padded, n = prepare_voice(x)
    assert clip.dtype == np.float32 and len(clip) == n == 5000 and len(padded) == 6400
    np.testing.assert_array_equal(padded[:n], clip)


@pytest.fixture(scope="module")
def reference_model(tiny_workdir):
    from vvtrt.model.resolve import load_model

    return load_model(tiny_workdir.source()).float().eval()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_runtime_encodes_voices_at_their_own_length(tiny_workdir, reference_model, backend, tmp_path):
    from vvtrt.runtime.audio_io import write_wav

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend=backend, device="cpu", precision="fp32")
    clip = voice_clip()  # 26,400 samples: 8.25 frames
    assert len(clip) % HOP
    ours = synth.encode_voice(clip, torch.Generator().manual_seed(7919)).float()
    ref = reference_voice_embeds(reference_model, clip, torch.Generator().manual_seed(7919))
    assert ours.shape == ref.shape == (9, synth.info.hidden)
    assert max(rel(a, b) for a, b in zip(ours, ref)) < 1e-5
    padded = synth.encode_voice(prepare_voice(clip)[0], torch.Generator().manual_seed(7919)).float()
    assert padded.shape == ours.shape and max(rel(a, b) for a, b in zip(ours[:-1], padded[:-1])) < 1e-5
    assert rel(ours[-1], padded[-1]) > 1e-3  # the padded-first last latent is not the original's

    # A voice file goes through the same path: 9 placeholder tokens, filled with these embeddings.
    wav = tmp_path / "v.wav"
    write_wav(wav, clip)
    ids, emb = synth.prompt_embeds("Speaker 1: hi", [str(wav)], seed=0)
    slots = [i for i, t in enumerate(ids) if t == synth.info.audio_token_id]
    assert len(slots) == 9 and slots == list(range(slots[0], slots[0] + 9))
    assert max(rel(emb[0, s], ours[k]) for k, s in enumerate(slots)) < 1e-5
