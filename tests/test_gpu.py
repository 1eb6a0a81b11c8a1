"""GPU tier (marked `gpu`, skipped without CUDA): whole-frame CUDA-graph replay is bit-identical to the
eager run of the same backend (forced frames and a decision script), and the CUDA backends reproduce
transformers `generate` on the GPU. Wherever a test relies on capture, a capture that failed (the loop
silently running eagerly) is a failure, not a pass."""
from __future__ import annotations

import pytest
import torch

from vvtrt.parity.compare import error_stats, snr_db
from vvtrt.parity.e2e import DECISION_SCRIPT
from vvtrt.parity.reference_generate import reference_generate
from vvtrt.runtime.synthesizer import SynthesisResult, Synthesizer

pytestmark = pytest.mark.gpu
TEXT = "Speaker 0: graph replay check"


def assert_captured(synth: Synthesizer, prefill: bool = True) -> None:
    """Every frame loop of `synth` (and its prefill) runs as a captured CUDA graph: no eager fallback."""
    assert synth._loops, "no frame loop ran"
    for loop in synth._loops.values():
        assert loop.capture_error is None, f"frame graph capture failed: {loop.capture_error}"
        assert loop.graph is not None, "the frame loop was not captured"
    if prefill:
        assert synth.prefill.capture_error is None, f"prefill capture failed: {synth.prefill.capture_error}"
        assert synth.prefill._graphs, "the prefill was not captured"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_frame_graph_replay_is_bit_identical(tiny_workdir, precision):
    eager = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision=precision,
                                     cuda_graph=False, prefill_graph=True).synthesize(TEXT, frames=16, seed=3,
                                                                                      keep_latents=True)
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision=precision,
                                     cuda_graph=True)
    graphed = synth.synthesize(TEXT, frames=16, seed=3, keep_latents=True)
    assert_captured(synth)
    assert graphed.frames == eager.frames == 16 and len(graphed.latents) == len(eager.latents) == 16
    for a, b in zip(graphed.latents, eager.latents):
        assert (a == b).all()
    assert (graphed.audio == eager.audio).all()
    again = synth.synthesize(TEXT, frames=16, seed=3, keep_latents=True)  # replay after reset reproduces the first run
    assert (again.audio == graphed.audio).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scripted_decisions_replay_bit_identically(tiny_workdir, precision):
    """The decision script (speech_end, speech_start, eos) is read on the device by the step counter, so
    the captured graph follows it: replay equals the eager run, decisions and stop included."""
    def run(cuda_graph):
        synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision=precision,
                                         cuda_graph=cuda_graph, prefill_graph=True)
        ids, emb = synth.prompt_embeds(TEXT)
        out = []
        for _ in range(2):  # the second run replays the same graph after a reset
            res = SynthesisResult(None, 0, [], False, "", 0, 0.0, 0.0)
            for _ in synth.generate(ids, emb, decisions=DECISION_SCRIPT, seed=3, result=res, keep_latents=True):
                pass
            out.append(res)
        return synth, out

    _, (eager, _) = run(False)
    synth, (graphed, again) = run(True)
    assert_captured(synth)
    for res in (eager, graphed, again):
        assert res.tokens == list(DECISION_SCRIPT) and res.stop_reason == "eos" and res.frames == 14
    for a, b in zip(graphed.latents, eager.latents):
        assert (a == b).all()
    assert (graphed.audio == eager.audio).all() and (again.audio == graphed.audio).all()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_backends_match_generate(tiny_workdir, backend):
    from vvtrt.model.resolve import load_model

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend=backend, device="cuda", precision="fp32",
                                     cuda_graph=backend == "torch")
    res = synth.synthesize(TEXT, frames=16, seed=4, keep_latents=True)
    if backend == "torch":
        assert_captured(synth)
    ids, _ = synth.prompt_embeds(TEXT)
    model = load_model(tiny_workdir.source()).to("cuda")
    lat, audio = reference_generate(model, list(ids), 16, 10, 1.3, seed=4)
    worst = max(error_stats(torch.from_numpy(a), b).rel_l2 for a, b in zip(res.latents, lat))
    assert worst < 1e-3, worst  # TF32 off; cuDNN/cuBLAS kernels differ from the eager reference's
    assert snr_db(torch.from_numpy(res.audio), audio) > 40


def test_compiled_torch_backend_replays_bit_identically(tiny_workdir):
    """torch.compile'd components inside the whole-frame graph: replay == the compiled eager run."""
    eager = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="bf16",
                                     cuda_graph=False, compile=True, prefill_graph=True).synthesize(TEXT, frames=8,
                                                                                                    seed=2)
    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="bf16",
                                     cuda_graph=True, compile=True)
    graphed = synth.synthesize(TEXT, frames=8, seed=2)
    assert_captured(synth)
    assert (graphed.audio == eager.audio).all()


def test_graphed_prefill_matches_eager(tiny_workdir):
    """The right-padded, graph-captured prefill keeps exactly the real positions' K/V (fp32, TF32 off)."""
    graphed = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="fp32",
                                       cuda_graph=False, prefill_graph=True)
    eager = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cuda", precision="fp32",
                                     cuda_graph=False, prefill_graph=False)
    _, emb = eager.prompt_embeds(TEXT)
    body = emb[:, :-1]
    k1, v1 = graphed.prefill(body)
    k1, v1 = k1.clone(), v1.clone()
    k2, v2 = eager.prefill(body)
    assert graphed.prefill.padded_length(body.shape[1]) % graphed.prefill.quantum == 0 and graphed.prefill._graphs
    assert graphed.prefill.capture_error is None, graphed.prefill.capture_error
    assert k1.shape == k2.shape and error_stats(k1, k2).rel_l2 < 1e-6 and error_stats(v1, v2).rel_l2 < 1e-6
    k3, _ = graphed.prefill(body)  # a replay reproduces the first run
    assert torch.equal(k3, k1)


def test_compiled_flex_decode_matches_sdpa(tiny_workdir):
    """lm_decode as the compiled CUDA runner runs it (FlexAttention split-KV kernel, log-sum-exp merge of
    the new token) against the SDPA path, bf16, with an empty-cache row and a full one."""
    from vvtrt.components.info import ModelInfo
    from vvtrt.components.lm import LMDecode
    from vvtrt.model.resolve import load_model

    model = load_model(tiny_workdir.source()).to("cuda", torch.bfloat16)
    info = ModelInfo.from_model(model)
    sdpa, flex = LMDecode(model, info).eval(), LMDecode(model, info).eval()
    flex.fast = True
    flex = torch.compile(flex, dynamic=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (info.layers, 4, info.kv_heads, 512, info.head_dim)
    pk = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    pv = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    emb = torch.randn(4, 1, info.hidden, generator=g, device="cuda", dtype=torch.bfloat16)
    lens = torch.tensor([300, 0, 512, 1], device="cuda")
    with torch.inference_mode():
        ref, got = sdpa(emb, pk, pv, lens), flex(emb, pk, pv, lens)
    for a, b in zip(ref, got):
        assert error_stats(b.float(), a.float()).rel_l2 < 2e-2


def test_compiled_matmul_convs_match_cudnn(tiny_workdir):
    """The streaming steps as the compiled CUDA runner runs them (channels-last: im2col GEMMs, fused depthwise
    convs; `vvtrt.components.conv_fast`) against the eager cuDNN convolutions, bf16, over 8 consecutive
    frames, within the components' bf16 bounds."""
    from vvtrt.components.conv_stream import AcousticDecoderStep, SemanticEncoderStep
    from vvtrt.model.resolve import load_model

    model = load_model(tiny_workdir.source()).to("cuda", torch.bfloat16)
    ref_dec, ref_sem = AcousticDecoderStep(model), SemanticEncoderStep(model)
    dec, sem = AcousticDecoderStep(model), SemanticEncoderStep(model)
    dec.fast = sem.fast = True
    dec, sem = torch.compile(dec, dynamic=False), torch.compile(sem, dynamic=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(8, 1, 1, 64, generator=g, device="cuda", dtype=torch.bfloat16)
    rs = [torch.zeros(1, m.stream.state_size, device="cuda", dtype=torch.bfloat16) for m in (ref_dec, ref_sem)]
    fs = [s.clone() for s in rs]
    with torch.inference_mode():
        for f in range(8):
            ra, rs[0] = ref_dec(z[f], rs[0])
            rsem, rs[1] = ref_sem(ra, rs[1])
            fa, fs[0] = dec(z[f], fs[0])
            fsem, fs[1] = sem(ra, fs[1])  # same input as the reference: errors do not compound
            assert error_stats(fa.float(), ra.float()).rel_l2 < 3e-2  # acoustic_decoder_step's bf16 bound
            assert error_stats(fsem.float(), rsem.float()).rel_l2 < 2e-2
