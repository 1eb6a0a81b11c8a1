"""Every tiny component exports in fp32/fp16/bf16 and passes parity on the grid (ONNX Runtime CPU; bf16 via
ONNX's reference evaluator), the streaming steps over >= 16 frames, and the whole loop vs `generate`, with
forced speech_diffusion and with a decision script (speech_end, speech_start, eos)."""
from __future__ import annotations

import onnx
import pytest

from vvtrt.components.specs import COMPONENTS, build_specs
from vvtrt.parity.e2e import DECISION_SCRIPT, compare_run
from vvtrt.parity.harness import ParityOptions, run_parity
from vvtrt.parity.reference_generate import ReferenceRun
from vvtrt.precision import Precision
from vvtrt.reports.schema import parity_counts


@pytest.fixture(scope="module")
def report(tiny_workdir):
    return run_parity(tiny_workdir, ParityOptions(backend="onnxruntime", device="cpu", stream_frames=16,
                                                  e2e_frames=16))


def test_every_spec_is_exported_and_covered(tiny_workdir, report):
    """Meta-test: no component escapes export, the parity grid, or (if stateful) the streaming check."""
    specs = build_specs(tiny_workdir.info(), tiny_workdir.options())
    assert set(specs) == set(COMPONENTS)
    exported = set(tiny_workdir.exported())
    for name, spec in specs.items():
        assert spec.parity_grid and all(dims != dict(spec.export_dims) for dims in spec.parity_grid)
        for p in Precision:
            assert (name, p) in exported
            rows = [r for r in report["rows"] if r["component"] == name and r["precision"] == p.value]
            assert {r["output"] for r in rows} == {t.name for t in spec.outputs}, (name, p)
            assert len({str(r["dims"]) for r in rows}) == len(spec.parity_grid)
        if spec.state:
            frames = {r["frame"] for r in report["streaming"] if r["component"] == name}
            assert len(frames) >= 16


def test_parity_passes_on_the_grid(report):
    assert report["passed"], report["failures"]
    methods = {(r["precision"], r["method"]) for r in report["rows"]}
    assert ("bf16", "onnx-reference-evaluator") in methods and ("fp32", "onnxruntime-cpu") in methods
    assert all(r["rel_l2"] < 1e-5 for r in report["rows"] if r["precision"] == "fp32")
    counts = report["counts"]
    assert counts == parity_counts(report) and counts["total"]["skipped"] == counts["total"]["failed"] == 0
    assert counts["e2e"]["informational"] == 2  # free-running fp16/bf16: reported, never counted as passed
    assert counts["total"]["passed"] == counts["total"]["run"] - 2


def test_end_to_end_matches_generate(report):
    e2e = {r["name"]: r for r in report["e2e"]}
    modes = ("free-running", "teacher-forced", "scripted-teacher-forced")
    modes += ("voice-prompt",)  # a 26,400-sample voice clip, encoded at its own length as the original does
    assert set(e2e) == {f"{m}-{p}" for m in modes for p in ("fp32", "fp16", "bf16")} | {"scripted-free-running-fp32"}
    for p in ("fp32", "fp16", "bf16"):
        voice = e2e[f"voice-prompt-{p}"]
        assert voice["passed"] and voice["gated"] and len(voice["frames"]) == 9, voice["notes"]
    fp32 = e2e["free-running-fp32"]
    assert fp32["passed"] and fp32["gated"] and len(fp32["frames"]) == 16
    assert max(f["latent_rel_l2"] for f in fp32["frames"]) < 1e-4 and fp32["snr_db"] > 60
    # tiny's loop does not amplify rounding: the reference's perturbed twin stays within the bound
    assert all(f["reference_sensitivity"] < 1e-4 for f in fp32["frames"]) and "reference sensitivity" in fp32["notes"]
    for p in ("fp16", "bf16"):  # reduced precision free-running: reported, not gated
        assert e2e[f"free-running-{p}"]["gated"] is False and e2e[f"free-running-{p}"]["passed"] is None
        # the twin's perturbation is the precision's epsilon, so it survives the cast and is measured
        assert max(f["reference_sensitivity"] for f in e2e[f"free-running-{p}"]["frames"]) > 0
    for p in ("fp32", "fp16", "bf16"):  # teacher-forced: every precision gated against fp32 generate
        tf = e2e[f"teacher-forced-{p}"]
        assert tf["passed"] and len(tf["frames"]) == 16, tf["notes"]
        assert all(f["audio_snr_db"] >= tf["worst_chunk_snr_db"] for f in tf["frames"])


def test_decision_script_matches_generate(report):
    """speech_end (conv states zeroed), speech_start (negative context emptied) and eos, forced identically
    in vvtrt and in `generate` (which emulates the original's reset on speech_end), frame by frame."""
    n = DECISION_SCRIPT.count("speech_diffusion")
    diffusion_steps = [i for i, t in enumerate(DECISION_SCRIPT) if t == "speech_diffusion"]
    rows = [r for r in report["e2e"] if r["name"].startswith("scripted-")]
    assert len(rows) == 4
    for row in rows:
        assert row["passed"] and row["gated"], row["notes"]
        sc = row["script"]
        assert sc["matched"] and sc["ours"] == sc["reference"] == list(DECISION_SCRIPT)
        assert sc["stop_reason"] == sc["reference_stop_reason"] == "eos"
        assert [f["step"] for f in row["frames"]] == diffusion_steps and len(row["frames"]) == n
        assert all(f["audio_snr_db"] is not None for f in row["frames"]) and "speech_end" in row["notes"]
    fp32 = next(r for r in rows if r["name"] == "scripted-free-running-fp32")
    assert max(f["latent_rel_l2"] for f in fp32["frames"]) < 1e-4 and fp32["worst_chunk_snr_db"] > 60


@pytest.mark.parametrize("growth, jump, passed", [(1.0, None, True), (3.0, None, True), (3.0, 2, False)])
def test_free_running_gate_follows_the_reference_sensitivity(growth, jump, passed):
    """fp32 free-running: a calm reference twin keeps the plain bound. A chaotic one (x3 per frame, as
    1.5B on the H100) gates on growth relative to the twin: lock-step growth passes, and a wrong latent fed
    back from frame `jump` on (an error teacher forcing cannot see) fails."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(64, generator=gen) for _ in range(16)]
    twin = [r * (1 + 1e-6 * growth**f) for f, r in enumerate(ref)]
    ours = [(r * (1 + 5e-6 * growth**f)).numpy() for f, r in enumerate(ref)]
    if jump is not None:
        ours[jump:] = [(r * 1.5).numpy() for r in ref[jump:]]
    audio = torch.randn(3200 * 16, generator=gen)
    run = lambda lat, a: ReferenceRun(lat, a, [], "")  # noqa: E731
    row = compare_run("free-running-fp32", "onnxruntime", Precision.FP32, run(ours, audio.numpy()), run(ref, audio),
                      16, (1e-4, 60.0), "n", twin=run(twin, audio))
    assert row["gated"] is True and row["passed"] is passed, row["notes"]
    assert len(row["frames"]) == 16 and all("reference_sensitivity" in f for f in row["frames"])
    assert row["frames"][0]["reference_sensitivity"] == pytest.approx(1e-6, rel=0.05)
    assert ("growth_ratio" in row) is (growth > 1)
    if growth > 1 and jump is None:
        assert row["growth_ratio"] == pytest.approx(1.0, rel=0.05)


def test_dynamic_axes_carry_the_spec_names(tiny_workdir):
    spec = build_specs(tiny_workdir.info(), tiny_workdir.options())["lm_decode"]
    model = onnx.load(str(tiny_workdir.onnx_path("lm_decode", Precision.BF16)), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert dims == list(spec.inputs[1].shape)
    assert model.opset_import[0].version >= 22  # bf16 convolutions need opset >= 22
