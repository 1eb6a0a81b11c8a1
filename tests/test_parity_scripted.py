"""The decision-script check (speech_end, speech_start, eos) catches a wrong loop: deliberately broken
frame loops -- conv states not zeroed on speech_end, negative context not emptied on speech_start -- fail
it, against transformers `generate` with the original's reset; and the reference's reset emulation is what
the original does (vvtrt, which follows the original, misses the unmodified port)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vvtrt.errors import InputError
from vvtrt.parity.e2e import (DECISION_SCRIPT, E2E_LATENT_TOL, E2E_MIN_SNR_DB, PROMPT, TF_LATENT_TOL,
                              TF_MIN_SNR_DB, compare_run)
from vvtrt.parity.reference_generate import reference_run
from vvtrt.precision import Precision
from vvtrt.runtime.frame_loop import FrameLoop
from vvtrt.runtime.synthesizer import SynthesisResult, Synthesizer

FP32 = Precision.FP32
FREE = (E2E_LATENT_TOL[FP32], E2E_MIN_SNR_DB[FP32])


class KeepsStatesOnSpeechEnd(FrameLoop):
    """Wrong: the conv states carry over speech_end (the transformers port's behaviour)."""

    def _advance_states(self, tok, is_diff, act):
        keep = is_diff.view(self.n, 1)
        self.dec_state.copy_(torch.where(keep, self.o_ad["state_out"], self.dec_state))
        self.sem_state.copy_(torch.where(keep, self.o_se["state_out"], self.sem_state))


class KeepsNegativeContextOnSpeechStart(FrameLoop):
    """Wrong: speech_start does not empty the negative branch's context."""

    def _commit_kv(self, tok, is_diff, act):
        n, kv = self.n, self.kv
        kv.write_step(self.o_dec["new_k"], self.o_dec["new_v"])
        kv.lengths.copy_(torch.cat([kv.lengths[:n] + 1, kv.lengths[n:] + is_diff.to(torch.int64)]))


@pytest.fixture(scope="module")
def scripted(tiny_workdir):
    """The fp32 reference over the script, with the original's reset on speech_end and without it."""
    from vvtrt.model.resolve import load_model

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    ids, _ = synth.prompt_embeds(PROMPT)
    model = load_model(tiny_workdir.source())
    return {resets: reference_run(model, list(ids), 10, 1.3, 0, decisions=list(DECISION_SCRIPT),
                                  original_resets=resets) for resets in (True, False)}


def _ours(wd, loop_class, precision="fp32", **kw):
    synth = Synthesizer.from_workdir(wd.root, backend="torch", device="cpu", precision=precision)
    synth.loop_class = loop_class
    ids, emb = synth.prompt_embeds(PROMPT)
    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    for _ in synth.generate(ids, emb, decisions=DECISION_SCRIPT, seed=0, result=res, keep_latents=True, **kw):
        pass
    return res


def _row(ours, ref, bounds=FREE, precision=FP32):
    return compare_run("scripted", "torch", precision, ours, ref, DECISION_SCRIPT.count("speech_diffusion"),
                       bounds, "test", script=DECISION_SCRIPT)


def test_the_right_loop_passes_and_follows_the_original(tiny_workdir, scripted):
    runs = scripted
    ours = _ours(tiny_workdir, FrameLoop)
    assert ours.tokens == list(DECISION_SCRIPT) and ours.stop_reason == "eos" and ours.frames == 14
    row = _row(ours, runs[True])
    assert row["passed"] and row["script"]["matched"], row["notes"]
    assert max(f["latent_rel_l2"] for f in row["frames"]) < 1e-4 and row["worst_chunk_snr_db"] > 60
    port = _row(ours, runs[False])  # the port keeps its conv caches over speech_end: vvtrt does not
    first_after_end = DECISION_SCRIPT.index("speech_end")  # diffusion frame index of the next chunk
    assert port["passed"] is False and port["frames"][first_after_end]["audio_snr_db"] < 20
    assert all(f["audio_snr_db"] > 60 for f in port["frames"][:first_after_end])


@pytest.mark.parametrize("loop_class", [KeepsStatesOnSpeechEnd, KeepsNegativeContextOnSpeechStart])
def test_a_wrong_loop_fails_the_scripted_check(tiny_workdir, scripted, loop_class):
    row = _row(_ours(tiny_workdir, loop_class), scripted[True])
    assert row["script"]["matched"] and row["passed"] is False, row["notes"]
    before = DECISION_SCRIPT.index("speech_end")
    assert max(f["latent_rel_l2"] for f in row["frames"][:before]) < 1e-4  # identical until the script bites


def test_a_wrong_reset_fails_teacher_forced_bf16(tiny_workdir, scripted):
    """bf16 teacher forcing (loose latent bound) still catches the missing reset: the chunk after speech_end."""
    ref = scripted[True]
    bounds = (TF_LATENT_TOL[Precision.BF16], TF_MIN_SNR_DB[Precision.BF16])
    good, bad = (_row(_ours(tiny_workdir, cls, "bf16", teacher_latents=ref.latents), ref, bounds, Precision.BF16)
                 for cls in (FrameLoop, KeepsStatesOnSpeechEnd))
    assert good["passed"], good["notes"]
    assert bad["passed"] is False and bad["worst_chunk_snr_db"] < bounds[1]


def test_a_script_that_differs_fails_even_within_bounds(scripted):
    ref = scripted[True]
    ours = SynthesisResult(ref.audio.numpy(), 14, list(DECISION_SCRIPT[:-1]) + ["speech_diffusion"], False,
                           "end of decision script", 0, 0.0, 0.0, latents=[t.numpy() for t in ref.latents])
    row = _row(ours, ref)
    assert row["passed"] is False and not row["script"]["matched"] and "differ from the script" in row["notes"]


def test_decision_scripts_are_checked_up_front(tiny_workdir):
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    ids, emb = synth.prompt_embeds(PROMPT)
    bad = [({"decisions": ["speech_diffusion"], "frames": 2}, "exclude each other"),
           ({"decisions": ["speech_diffusion", "talk"]}, "non-empty list"),
           ({"decisions": []}, "non-empty list"),
           ({"decisions": ["eos", "speech_diffusion"]}, "only be the last"),
           ({"decisions": ["speech_diffusion"], "streams": 2}, "needs a frame budget")]
    for kw, match in bad:
        with pytest.raises(InputError, match=match):
            next(synth.generate(ids, emb, **kw))
    res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
    chunks = list(synth.generate(ids, emb, decisions=["speech_diffusion", "speech_end", "speech_diffusion"],
                                 result=res))
    assert len(chunks) == 2 and res.stop_reason == "end of decision script"
    assert res.tokens == ["speech_diffusion", "speech_end", "speech_diffusion"]
    assert np.array_equal(np.concatenate(chunks), res.audio)
