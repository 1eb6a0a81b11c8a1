"""The channels-last streaming conv steps (`vvtrt.components.conv_fast`, what compiled CUDA runs use) are plain
torch, so their arithmetic is checked here on the CPU against the exported steps on random weights: the
long-form acoustic decoder and semantic encoder and the Realtime decoder, several batch sizes, several
consecutive frames with each path carrying its own state (outputs and states must match), and the states
of one path continued by the other. The compiled CUDA run is in the GPU tier at the end."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from vvtrt.components.conv_stream import AcousticDecoderStep, SemanticEncoderStep
from vvtrt.parity.compare import error_stats
from vvtrt.precision import Precision

FRAMES = 3


@pytest.fixture(scope="module")
def tiny_rt_model():
    from vvtrt.realtime.presets import build_realtime_model

    return build_realtime_model("tiny-realtime")


def _steps(model, name):
    if name == "rt_decoder":
        from vvtrt.realtime.steps import RealtimeDecoderStep

        cls = RealtimeDecoderStep
    else:
        cls = AcousticDecoderStep if name == "decoder" else SemanticEncoderStep
    ref, fast = cls(model).eval(), cls(model).eval()
    fast.fast = True
    assert fast.fast and fast.fast_stream is not None and not ref.fast
    return ref, fast


def _stream(ref, fast, batch, dtype=torch.float32, frames=FRAMES, seed=0):
    """(rel-L2 of the outputs, of the states) per frame, each path on its own state."""
    gen = torch.Generator().manual_seed(seed)
    x, state = ref.sample_inputs(batch, "cpu", dtype, gen)
    s_ref = s_fast = state
    out = []
    with torch.inference_mode():
        for _ in range(frames):
            x = torch.randn(x.shape, generator=gen).to(dtype)
            y_ref, s_ref = ref(x, s_ref)
            y_fast, s_fast = fast(x, s_fast)
            assert y_fast.shape == y_ref.shape and s_fast.shape == s_ref.shape
            assert y_fast.dtype == y_ref.dtype and s_fast.dtype == s_ref.dtype
            out.append((error_stats(y_fast, y_ref).rel_l2, error_stats(s_fast, s_ref).rel_l2))
    return out


@pytest.mark.parametrize("name", ["decoder", "semantic", "rt_decoder"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_steps_match_the_exported_steps_fp32(tiny_model, tiny_rt_model, name, batch):
    model = tiny_rt_model if name == "rt_decoder" else tiny_model
    ref, fast = _steps(model, name)
    for frame, (err_out, err_state) in enumerate(_stream(ref, fast, batch)):
        assert err_out < 1e-5 and err_state < 1e-5, (frame, err_out, err_state)  # FP32 parity bound


@pytest.mark.parametrize("name", ["decoder", "semantic"])
def test_fast_steps_bf16_stay_within_the_component_tolerance(tiny_model, tiny_info, name):
    """bf16 fast path against the fp32 exported step: within the spec's bf16 bound, as the exported bf16 step."""
    from vvtrt.components.specs import ExportOptions, build_specs

    spec = build_specs(tiny_info, ExportOptions.for_preset("tiny"))[
        "acoustic_decoder_step" if name == "decoder" else "semantic_encoder_step"]
    ref32, _ = _steps(tiny_model, name)
    _, fast16 = _steps(copy.deepcopy(tiny_model).to(torch.bfloat16), name)
    gen = torch.Generator().manual_seed(1)
    x, state = ref32.sample_inputs(3, "cpu", torch.float32, gen)
    s32, s16 = state, state.bfloat16()
    with torch.inference_mode():
        for _ in range(FRAMES):
            x = torch.randn(x.shape, generator=gen)
            y32, s32 = ref32(x, s32)
            y16, s16 = fast16(x.bfloat16(), s16)
            assert error_stats(y16, y32).rel_l2 < spec.tol(spec.outputs[0].name, Precision.BF16)
            assert error_stats(s16, s32).rel_l2 < spec.tol("state_out", Precision.BF16)


@pytest.mark.parametrize("name", ["decoder", "semantic"])
def test_states_carry_over_between_the_paths(tiny_model, name):
    """Both paths keep the exported flat state layout: frames run fast, then continued on the exported ops
    (the same module switched back), equal a stream run on the exported ops throughout."""
    ref, fast = _steps(tiny_model, name)
    gen = torch.Generator().manual_seed(2)
    x, state = ref.sample_inputs(2, "cpu", torch.float32, gen)
    xs = [torch.randn(x.shape, generator=gen) for _ in range(4)]
    s_ref = s_mix = state
    with torch.inference_mode():
        for i, xi in enumerate(xs):
            fast.fast = i < 2
            y_ref, s_ref = ref(xi, s_ref)
            y_mix, s_mix = fast(xi, s_mix)
            assert error_stats(y_mix, y_ref).rel_l2 < 1e-5 and error_stats(s_mix, s_ref).rel_l2 < 1e-5


def test_conv_kernel_exported_keeps_the_exported_ops(tiny_model, monkeypatch):
    monkeypatch.setenv("VVTRT_CONV_KERNEL", "exported")
    step = AcousticDecoderStep(tiny_model)
    step.fast = True
    assert step.fast is False and step.fast_stream is None
    monkeypatch.setenv("VVTRT_CONV_KERNEL", "nope")
    with pytest.raises(ValueError, match="VVTRT_CONV_KERNEL"):
        step.fast = True


def test_runner_self_check_turns_a_wrong_fast_path_off(tiny_model, tiny_info, caplog):
    """The torch runner checks a conv step's fast path against the exported ops before compiling it: a
    correct one stays on; one whose weights disagree (a stale re-layout) is turned off, logged."""
    from vvtrt.components.specs import ExportOptions, build_specs
    from vvtrt.runtime.runner import TorchRunner

    spec = build_specs(tiny_info, ExportOptions.for_preset("tiny"))["acoustic_decoder_step"]
    runner = TorchRunner(spec, Precision.FP32, "cpu", tiny_model)
    runner.module.fast = True
    assert runner.module.fast_error() < 1e-5
    runner._check_fast()
    assert runner.module.fast is True
    with torch.no_grad():
        runner.module.fast_stream.steps[2].w.mul_(1.5)  # the first ConvTranspose's re-laid-out weight
    with caplog.at_level(logging.WARNING):
        runner._check_fast()
    assert runner.module.fast is False and "differs from the exported ops" in caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["decoder", "semantic"])
def test_compiled_fast_steps_on_cuda_match_the_exported_steps(tiny_workdir, name):
    """The runner's compiled CUDA path (fast path on, self-checked) at batch 64 against the eager exported
    step, bf16, over streamed frames (each on its own state), within the component's bf16 bound."""
    from vvtrt.model.resolve import load_model
    from vvtrt.runtime.runner import TorchRunner

    comp = "acoustic_decoder_step" if name == "decoder" else "semantic_encoder_step"
    spec = tiny_workdir.specs()[comp]
    model = load_model(tiny_workdir.source()).to("cuda", torch.bfloat16)
    runner = TorchRunner(spec, Precision.BF16, "cuda", model, compile=True)
    assert runner.module.fast is True
    ref = (AcousticDecoderStep if name == "decoder" else SemanticEncoderStep)(model).eval()
    gen = torch.Generator().manual_seed(3)
    x, state = ref.sample_inputs(64, "cuda", torch.bfloat16, gen)
    s_ref = s_fast = state
    tol = spec.tol(spec.outputs[0].name, Precision.BF16)
    with torch.inference_mode():
        for _ in range(6):
            x = torch.randn(x.shape, generator=gen).to(x)
            y_ref, s_ref = ref(x, s_ref)
            got = runner.infer({spec.inputs[0].name: x, "state": s_fast})
            y_fast, s_fast = got[spec.outputs[0].name], got["state_out"]
            assert error_stats(y_fast.float(), y_ref.float()).rel_l2 < tol
            assert error_stats(s_fast.float(), s_ref.float()).rel_l2 < tol
    assert runner.module.fast is True  # compiled without falling back


@pytest.mark.gpu
@pytest.mark.parametrize("channels", [32, 64, 128])
def test_triton_ffn_matches_the_modules(channels):
    """The Triton feed-forward (`conv_triton.FusedFFN`) against the block's own modules, bf16, on a row count
    that is no multiple of the kernel's row tile."""
    pytest.importorskip("triton")
    from transformers import VibeVoiceAcousticTokenizerConfig

    from vvtrt.components import conv_triton
    from vvtrt.components.conv_stream import ConvNextLayer

    torch.manual_seed(0)
    block = ConvNextLayer(VibeVoiceAcousticTokenizerConfig(), hidden_size=channels, layer_idx=1)
    with torch.no_grad():
        for lin in (block.ffn.linear1, block.ffn.linear2):
            lin.weight.normal_(0, lin.in_features ** -0.5)
            lin.bias.normal_(0, 0.1)
        block.ffn_norm.weight.normal_(1, 0.1)
        block.ffn_gamma.fill_(0.5)
    block = block.to("cuda", torch.bfloat16).eval()
    assert conv_triton.usable(block)
    fused = conv_triton.FusedFFN(block)
    x = torch.randn(3, 777, channels, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        want = x + block.ffn(block.ffn_norm(x)) * block.ffn_gamma
        got = fused(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert error_stats(got.float() - x.float(), want.float() - x.float()).rel_l2 < 1e-2  # the FFN's own part
