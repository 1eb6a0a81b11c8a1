"""Realtime noise drawn in the speech step (`RealtimeLoop(noise="device")`, the serving engine's default):
Philox keyed by (request seed, frame index), so a request's audio depends on its own seed alone, never on
the streams beside it; `noise="host"` keeps the reference's `torch.Generator(seed)` draws (the runner's
`stream`, parity). CPU in fp32 on tiny-realtime; GPU tests (marked gpu) compare the captured CUDA step's
noise with the CPU's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from realtime_fixtures import one_torch_thread, rt, three_voices  # noqa: F401 - fixtures
from vvtrt.errors import InputError

TEXTS = ("Hello there, this is a test of streaming speech.", "Short one.", "Another voice speaks here, slowly!")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def voices(rt):
    return three_voices(rt.model)


def _run(rt, reqs, noise: str, streams: int = 3) -> list[np.ndarray]:
    """Each request's audio, run together in one stepper of `streams` slots drawing `noise`."""
    stepper = rt.checkout(streams, reqs[0].options.steps, reqs[0].options.algorithm, noise=noise)
    chunks: dict[int, list] = {i: [] for i in range(len(reqs))}
    index = {id(r): i for i, r in enumerate(reqs)}
    try:
        for r in reqs:
            stepper.open(r)
        while stepper.busy:
            for ev in stepper.tick():
                assert ev.error is None
                if ev.audio is not None:
                    chunks[index[id(ev.run.request)]].append(ev.audio)
    finally:
        rt.checkin(stepper)
    return [np.concatenate(chunks[i]) for i in range(len(reqs))]


@pytest.mark.parametrize("solver", ["dpmsolver++", "sde-dpmsolver++"])
def test_device_noise_audio_is_the_same_alone_and_among_other_streams(rt, voices, solver):
    reqs = [rt.request(TEXTS[i], voices[i], seed=40 + i, solver=solver, max_frames=9 + i) for i in range(3)]
    together = _run(rt, reqs, "device")
    for i, r in enumerate(reqs):
        assert len(together[i]) == (9 + i) * 3200
        assert np.array_equal(together[i], _run(rt, [r], "device")[0]), i
    other_seed = rt.request(TEXTS[0], voices[0], seed=41, solver=solver, max_frames=9)
    assert not np.allclose(_run(rt, [other_seed], "device")[0], together[0])


def test_host_noise_is_the_reference_draws_and_device_noise_differs(rt, voices):
    req = rt.request(TEXTS[0], voices[0], seed=5, max_frames=8)
    host = _run(rt, [req], "host", streams=1)[0]
    solo = np.concatenate(list(rt.stream(TEXTS[0], voices[0], seed=5, max_frames=8)))  # host noise, 1 slot
    assert np.array_equal(host, solo)
    device = _run(rt, [req], "device", streams=1)[0]
    assert device.shape == host.shape and not np.allclose(device, host)


def test_the_step_draws_the_noise_of_the_seed_and_frame(rt, voices):
    """After each tick the sampler's noise buffer holds `frame_normals(seed, frame)` of every stream that
    made a frame: the frame counter advances on the device, one per frame, and not while held."""
    from vvtrt.runtime.noise import frame_normals

    stepper = rt.checkout(3, noise="device")
    try:
        runs = [stepper.open(rt.request(TEXTS[i], voices[i], seed=1000 + 7 * i, max_frames=20)) for i in range(3)]
        frames = [0, 0, 0]
        for t in range(8):
            stepper.hold(runs[1], t in (2, 3, 4))  # held for three ticks: no frame, no draw
            events = stepper.tick()
            made = {ev.run.slot for ev in events if ev.audio is not None}
            for i, run in enumerate(runs):
                if run.slot not in made:
                    continue
                want = frame_normals(torch.tensor([run.request.seed]), torch.tensor([frames[i]]), 64)[0]
                assert torch.equal(stepper.loop.inputs["noise"][run.slot], want), (t, i)
                frames[i] += 1
        assert frames == [8, 5, 8]
    finally:
        rt.checkin(stepper)


def test_stops_on_the_device_end_streams_as_before(rt, voices):
    """Forced EOS, the frame cap and the position limit, booked in the step, end each stream where the
    host loop did (the counts the reference loop gives), with device noise too."""
    from vvtrt.realtime.synthetic import make_voice

    context = rt.model.rt_config.context
    long = make_voice(rt.model, "long", lm_len=4, tts_len=min(context, 256) - 9, seed=2)
    reqs = [rt.request(TEXTS[0], voices[0], seed=1, force_eos_frame=3), rt.request(TEXTS[1], voices[1], max_frames=4),
            rt.request("Hi there", long, seed=3)]
    for noise in ("host", "device"):
        stepper = rt.checkout(3, noise=noise)
        ends = {}
        try:
            for r in reqs:
                stepper.open(r)
            while stepper.busy:
                for ev in stepper.tick():
                    if ev.stop_reason:
                        ends[ev.run.request.seed, ev.run.request.voice.name] = (ev.stop_reason, ev.run.frames)
        finally:
            rt.checkin(stepper)
        assert ends == {(1, "v0"): ("forced_eos", 4), (0, "v1"): ("max_frames", 4), (3, "long"): ("length", 5)}


def test_injected_noise_needs_host_noise_and_the_engine_checks_its_option(rt, voices):
    from vvtrt.realtime.engine import RealtimeEngineConfig
    from vvtrt.realtime.reference import SeededNoise

    stepper = rt.checkout(3, noise="device")
    try:
        with pytest.raises(InputError, match="noise='host'"):
            stepper.open(rt.request(TEXTS[0], voices[0], noise=SeededNoise(0, 64, 5, False)))
    finally:
        rt.checkin(stepper)
    with pytest.raises(InputError, match="noise must be one of"):
        RealtimeEngineConfig(noise="gpu")
    assert RealtimeEngineConfig().noise == "device"


def test_serve_noise_option_reaches_the_realtime_engine(tmp_path):
    """`vvtrt serve --noise` on a Realtime work dir: host gives `stream()`'s audio for the seed (the host
    draws `vvtrt synth` makes), device (the default) other audio."""
    from vvtrt.model.resolve import ModelSource
    from vvtrt.realtime.engine import RealtimeSpeechRequest
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.server.config import ServerConfig
    from vvtrt.server.serve import build_engine
    from vvtrt.workdir import Workdir

    cfg = preset_config("tiny-realtime")
    Workdir.create(tmp_path / "wd").write_meta(ModelSource(preset="tiny-realtime"),
                                               RealtimeExportOptions.for_config(cfg), cfg)
    audio = {}
    for noise in ("host", "device"):
        eng = build_engine(ServerConfig(str(tmp_path / "wd"), device="cpu", dtype="fp32", max_streams=1, noise=noise))
        assert eng.config.noise == noise
        eng.start()
        try:
            handle = eng.submit(RealtimeSpeechRequest(TEXTS[0], None, seed=12, max_frames=6))
            audio[noise] = np.concatenate([c.audio for c in handle])
            want = np.concatenate(list(eng.runner.stream(TEXTS[0], eng.voices[eng.default_voice], seed=12,
                                                         max_frames=6)))
        finally:
            eng.stop()
        peak = float(np.abs(want).max())
        err = float(np.abs(audio[noise] - want).max())
        assert (err <= 1e-5 * peak) == (noise == "host"), (noise, err / peak)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["dpmsolver++", "sde-dpmsolver++"])
def test_cuda_graph_step_draws_the_cpu_noise(solver):
    """The captured CUDA speech step draws the same noise bits as the CPU (`frame_normals` on the CPU) for
    every stream and frame, and its audio is the eager CUDA loop's."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from vvtrt.realtime.runtime import RealtimeRunner
    from vvtrt.realtime.synthetic import make_voice
    from vvtrt.runtime.noise import frame_normals

    audio = {}
    for graphs in (False, True):
        rt = RealtimeRunner.from_preset("tiny-realtime", device="cuda", graphs=graphs, kv_buckets=(64, 128))
        voice = make_voice(rt.model, "v", lm_len=12, tts_len=30, seed=1)
        stepper = rt.checkout(4, 5, solver, noise="device")
        loop = stepper.loop
        try:
            runs = [stepper.open(rt.request(TEXTS[i % 3], voice, seed=77 + i, solver=solver, max_frames=12))
                    for i in range(4)]
            got = {i: [] for i in range(4)}
            for frame in range(12):
                events = stepper.tick()
                seeds = torch.tensor([r.request.seed for r in runs])
                want = frame_normals(seeds, torch.full((4,), frame), 64 * 6 if loop.stochastic else 64)
                slots = [r.slot for r in runs]
                assert torch.equal(loop.inputs["noise"][slots].cpu(), want[:, :64]), frame
                if loop.stochastic:
                    assert torch.equal(loop.inputs["step_noise"][slots].cpu().reshape(4, -1), want[:, 64:]), frame
                for ev in events:
                    got[runs.index(ev.run)].append(ev.audio)
            if graphs:
                assert loop.graphs and loop.capture_error is None
            audio[graphs] = np.concatenate([np.concatenate(got[i]) for i in range(4)])
        finally:
            rt.checkin(stepper, keep=False)
    peak = float(np.abs(audio[False]).max())
    assert peak > 1e-3 and float(np.abs(audio[True] - audio[False]).max()) <= 1e-4 * peak


def test_streams_of_one_voice_armed_together_give_their_solo_audio(rt, voices, monkeypatch):
    """Streams of one voice that join in the same tick are armed by one indexed copy per buffer
    (`reset_slots`); each still gives its solo audio (armed alone), and the loop's buffers after one call for
    two slots equal those after one call per slot."""
    from vvtrt.realtime.stream_state import stream_row
    from vvtrt.realtime.window_loop import RealtimeLoop

    calls = []
    real = RealtimeLoop.reset_slots
    monkeypatch.setattr(RealtimeLoop, "reset_slots", lambda self, *a: calls.append(a[0]) or real(self, *a))
    reqs = [rt.request(TEXTS[i], voices[1], seed=60 + i, max_frames=7 + i) for i in range(3)]
    together = _run(rt, reqs, "device")
    assert calls == [[0, 1, 2]]
    for i, r in enumerate(reqs):
        assert np.array_equal(together[i], _run(rt, [r], "device")[0]), i
    stepper = rt.checkout(3, reqs[0].options.steps, reqs[0].options.algorithm, noise="device")
    try:
        loop, voice = stepper.loop, stepper._device_voice(voices[2])
        rows = [stream_row(r.seed, r.options.force_eos_frame, r.options.max_frames) for r in reqs]
        names = ("lm_k", "lm_v", "tts_k", "tts_v", "lm_len", "tts_len", "h_pos", "h_neg", "dec_state", "cfg_scale",
                 "state")
        for n in names:  # the earlier runs' leftovers in every slot
            getattr(loop, n).fill_(7)
        loop.reset_slots([2, 0], voice, [1.5, 3.0], rows[:2])
        batched = {n: getattr(loop, n).clone() for n in names}
        for n in names:
            getattr(loop, n).fill_(7)
        for slot, cfg, row in ((2, 1.5, rows[0]), (0, 3.0, rows[1])):
            loop.reset_slots([slot], voice, [cfg], [row])
        assert [n for n in names if not torch.equal(batched[n], getattr(loop, n))] == []
    finally:
        rt.checkin(stepper)


def test_pipeline_is_refused_where_it_cannot_run(tmp_path, tiny_workdir):
    """`vvtrt serve --pipeline` on a Realtime work dir, or with host noise, is refused with one line."""
    from cli_helpers import one_clear_line, run
    from vvtrt.model.resolve import ModelSource
    from vvtrt.realtime.presets import preset_config
    from vvtrt.realtime.specs import RealtimeExportOptions
    from vvtrt.workdir import Workdir

    cfg = preset_config("tiny-realtime")
    Workdir.create(tmp_path / "wd").write_meta(ModelSource(preset="tiny-realtime"),
                                               RealtimeExportOptions.for_config(cfg), cfg)
    assert "--pipeline is for long-form" in one_clear_line(run("serve", "-w", tmp_path / "wd", "--pipeline"))
    line = one_clear_line(run("serve", "-w", tiny_workdir.root, "--pipeline", "--noise", "host"))
    assert "--noise device" in line
