"""The frame step's device-side decisions and stops (`vvtrt.runtime.slot_state`) against the host loop they
replace, written out plainly here: random token streams for many slots of every mode, step by step, give the
same stop reason on the same step; a frozen slot books nothing. Then the serving-side noise wiring: a slot's
device noise is `frame_normals(seed, frames made)` whatever its slot and neighbours, and its audio does not
change with its neighbours."""
from __future__ import annotations

import numpy as np
import torch

from vvtrt.parity.compare import error_stats
from vvtrt.runtime.slot_state import (ACTIVE, FORCED, FRAME, MODEL, SCRIPTED, STEPS, STOP_REASONS, TOKEN_BITS,
                                      advance, decide, slot_row)

NAMES = ("speech_start", "speech_end", "speech_diffusion", "eos")  # any order: indices come from here
DIFF, EOS = NAMES.index("speech_diffusion"), NAMES.index("eos")
NO_SPEECH = STOP_REASONS[4]


def _finish(run: dict, token: str) -> str:
    """The per-slot host bookkeeping the device replaces (one step of one run)."""
    run["steps"] += 1
    scripted = run["mode"] == SCRIPTED
    if token == "speech_diffusion":
        run["produced"] += 1
        if run["produced"] >= run["limit"] and not scripted:
            return "frame budget" if run["mode"] == FORCED else "max frames"
    elif token == "eos":
        return "eos"
    if not scripted and run["steps"] >= run["limit"] * 4 + 16 and run["produced"] == 0:
        return NO_SPEECH
    if run["steps"] >= run["max_steps"]:
        return "end of decision script" if scripted else "length limit"
    return ""


def test_device_stops_equal_the_host_loop():
    g = np.random.default_rng(0)
    n, kv = 48, 64
    runs, rows, scripts = [], [], torch.full((n, kv), -1, dtype=torch.int8)
    for s in range(n):
        mode = (MODEL, FORCED, SCRIPTED)[s % 3]
        limit, max_steps = int(g.integers(1, 6)), int(g.integers(3, 40))
        if s % 6 == 0:  # a model that never speaks
            max_steps = 70
        if mode == SCRIPTED:
            script = list(g.choice(3, size=max_steps, p=[0.1, 0.1, 0.8])) + [EOS] * (s % 2)
            scripts[s, :len(script)] = torch.tensor(script, dtype=torch.int8)
            limit, max_steps = script.count(DIFF), len(script)
        runs.append({"mode": mode, "limit": limit, "max_steps": max_steps, "steps": 0, "produced": 0, "stop": ""})
        rows.append(slot_row(1000 + s, limit, max_steps, mode))
    state, status = torch.stack(rows), torch.zeros(n, dtype=torch.int64)
    frozen = 7  # held from the start: books nothing
    state[frozen, ACTIVE] = 0
    for _ in range(80):
        forced = decide(state, scripts, DIFF)
        p = [0.05, 0.05, 0.85, 0.05] if _ < 20 else [0.3, 0.3, 0.1, 0.3]  # the model's own: mostly frames, then not
        own = torch.from_numpy(g.choice(4, size=n, p=p))
        own[::6] = torch.from_numpy(g.choice(2, size=len(own[::6])))  # speech_start / speech_end only
        tok = torch.where(forced >= 0, forced, own)
        before = state[:, ACTIVE].clone()
        advance(state, tok, status, DIFF, EOS)
        for s in range(n):
            if not before[s]:
                assert status[s] // TOKEN_BITS == 0
                continue
            want = _finish(runs[s], NAMES[int(tok[s])])
            assert STOP_REASONS[int(status[s]) // TOKEN_BITS] == want, (s, runs[s])
            assert int(status[s]) % TOKEN_BITS == int(tok[s])
            runs[s]["stop"] = want
            assert int(state[s, ACTIVE]) == int(not want)
            assert (int(state[s, STEPS]), int(state[s, FRAME])) == (runs[s]["steps"], runs[s]["produced"])
    assert all(r["stop"] for i, r in enumerate(runs) if i != frozen)  # every run ended, each its own way
    assert {r["stop"] for r in runs} >= {"frame budget", "max frames", "eos", "end of decision script", NO_SPEECH}
    assert int(state[frozen, STEPS]) == 0


def test_device_noise_depends_on_the_request_alone(tiny_workdir):
    from vvtrt.runtime.frame_loop import FrameLoop
    from vvtrt.runtime.noise import frame_normals
    from vvtrt.runtime.slots import SlotRun, SlotStepper
    from vvtrt.runtime.synthesizer import Synthesizer

    synth = Synthesizer.from_workdir(tiny_workdir.root, backend="torch", device="cpu", precision="fp32")
    ids, emb = synth.prompt_embeds("Speaker 1: noise check")
    z = synth.info.latent_dim

    def run(slot, others):
        loop = FrameLoop(synth.runners, synth.info, 4, 256, torch.float32, "cpu", noise="device")
        st = SlotStepper(loop, synth.prefill)
        for s, seed in others.items():
            st.join(s, SlotRun(len(ids), 9, 100, seed, forced=True), emb)
        st.join(slot, SlotRun(len(ids), 5, 100, 42, forced=True), emb)
        audio, noise = [], []
        with torch.inference_mode():
            for f in range(5):
                evs = st.step()
                noise.append(loop.noise[slot].clone())
                audio.append(next(e.audio for e in evs if e.slot == slot))
        assert [e.stop_reason for e in evs if e.slot == slot] == ["frame budget"] and slot not in st.runs
        return np.concatenate(audio), torch.stack(noise)

    alone_audio, alone_noise = run(0, {})
    mixed_audio, mixed_noise = run(0, {1: 7, 2: 8, 3: 9})
    moved_audio, moved_noise = run(3, {0: 7, 1: 8, 2: 9})
    want = frame_normals(torch.full((5,), 42), torch.arange(5), z)
    assert all(torch.equal(n, want) for n in (alone_noise, mixed_noise, moved_noise))
    assert np.array_equal(alone_audio, mixed_audio)  # the same shapes and row: bit for bit
    # another row of the same shapes: the CPU's kernels may round a row by its position (~1e-6), noise aside
    assert error_stats(torch.from_numpy(moved_audio), torch.from_numpy(alone_audio)).rel_l2 < 1e-4
