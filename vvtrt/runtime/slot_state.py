"""Every slot's decisions, counters and stops as device tensors, advanced inside the frame step.

Per slot (row s of `state [slots, 7]` int64): the request's noise seed, diffusion frames made (the device
noise's frame counter), LLM steps taken, its frame limit, its step limit, its decision mode (the model's
own, forced speech_diffusion, or a decision script held in `script [slots, S]` int8) and whether it runs
this step (`ACTIVE`: 0 for a free, prefilling, held or finished slot, which then commits nothing). Before
the LLM's token the step decides (`decide`); after it, it books the step and finds each slot's stop
(`advance`) exactly as the original loop does:

- a diffusion frame that reaches the limit: "frame budget" (forced) or "max frames" (not with a script);
- eos: "eos";
- no frame after `4 * limit + 16` steps (not with a script): `NO_SPEECH`;
- the step limit: "end of decision script" (script) or "length limit".

The step leaves `status = token + 8 * stop_code` per slot: the one tensor the host reads back per step
(`vvtrt.runtime.slots`), whatever the number of slots. A stopping slot clears its own ACTIVE flag.
"""
from __future__ import annotations

import torch

NO_SPEECH = "no speech (random weights never choose to speak: pass --frames N)"
STOP_REASONS = ("", "frame budget", "max frames", "eos", NO_SPEECH, "end of decision script", "length limit")
BUDGET, MAX_FRAMES, EOS, SILENT, SCRIPT_END, LENGTH = range(1, 7)
SEED, FRAME, STEPS, LIMIT, MAX_STEPS, MODE, ACTIVE = range(7)
COLUMNS = 7
MODEL, FORCED, SCRIPTED = 0, 1, 2  # MODE: the model's own decisions, speech_diffusion forced, a script
TOKEN_BITS = 8  # status = token + TOKEN_BITS * stop code


def slot_row(seed: int, limit: int, max_steps: int, mode: int) -> torch.Tensor:
    """A freshly armed slot's state row (host): no frame, no step yet, active."""
    row = torch.zeros(COLUMNS, dtype=torch.int64)
    row[SEED], row[LIMIT], row[MAX_STEPS], row[MODE], row[ACTIVE] = int(seed), int(limit), int(max_steps), mode, 1
    return row


def decide(state: torch.Tensor, script: torch.Tensor, diff_idx: int) -> torch.Tensor:
    """`[b]` int64: the forced or scripted control index of each slot's next step, -1 for the model's own."""
    mode, steps = state[:, MODE], state[:, STEPS]
    at = steps.clamp(min=0, max=script.shape[1] - 1).view(-1, 1)
    scripted = script.gather(1, at).view(-1).to(torch.int64)  # -1 past the script's end
    own = torch.full_like(steps, -1)
    return torch.where(mode == FORCED, torch.full_like(steps, diff_idx), torch.where(mode == SCRIPTED, scripted, own))


def advance(state: torch.Tensor, tok: torch.Tensor, status: torch.Tensor, diff_idx: int, eos_idx: int) -> None:
    """Book one step's tokens `tok [b]` into `state` (active slots only) and write `status [b]` (see module
    doc). In place, no host sync: part of the captured step."""
    act = state[:, ACTIVE] > 0
    mode, limit = state[:, MODE], state[:, LIMIT]
    scripted = mode == SCRIPTED
    steps = state[:, STEPS] + act.to(torch.int64)
    made = (tok == diff_idx) & act
    frame = state[:, FRAME] + made.to(torch.int64)
    zero = torch.zeros_like(steps)
    code = lambda c: torch.full_like(steps, c)  # noqa: E731
    stop = torch.where(steps >= state[:, MAX_STEPS], torch.where(scripted, code(SCRIPT_END), code(LENGTH)), zero)
    stop = torch.where(~scripted & (steps >= limit * 4 + 16) & (frame == 0), code(SILENT), stop)
    stop = torch.where(tok == eos_idx, code(EOS), stop)
    budget = made & (frame >= limit) & ~scripted
    stop = torch.where(budget, torch.where(mode == FORCED, code(BUDGET), code(MAX_FRAMES)), stop)
    stop = torch.where(act, stop, zero)
    state[:, STEPS] = steps
    state[:, FRAME] = frame
    state[:, ACTIVE] = (act & (stop == 0)).to(torch.int64)
    status.copy_(tok + TOKEN_BITS * stop)
