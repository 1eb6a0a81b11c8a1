"""Each Realtime stream's noise key, frame counter and stop rules as device tensors, advanced inside the
speech step.

Per stream (row s of `state [streams, 4]` int64): its noise seed, the frames it has made (the device
noise's frame counter), the frame index at which a forced EOS fires and its frame cap (`NO_LIMIT` when
not set). The host writes a row when it arms a stream (`stream_row`); the speech step draws the frame's
noise from (seed, frame counter) (`vvtrt.runtime.noise`, when the loop draws noise on the device), then
books the frame of every stream it advanced (`book_frame`) and finds its stop exactly as the reference
loop does, in this order:

- the position limit: the positive TTS row would pass `min(model context, loop capacity)` ("length");
- the forced EOS frame ("forced_eos");
- EOS: sigmoid of the EOS logit > 0.5 ("eos");
- the frame cap ("max_frames").

The stop code of every stream is written into the column after the frame's audio, so the host reads
audio and stops back in one copy per step, whatever the number of streams.
"""
from __future__ import annotations

import torch

SEED, FRAME, FORCE_AT, MAX_FRAMES = range(4)
COLUMNS = 4
NO_LIMIT = 1 << 62
STOP_REASONS = ("", "length", "forced_eos", "eos", "max_frames")
LENGTH, FORCED_EOS, EOS, CAP = range(1, 5)


def stream_row(seed: int, force_eos_frame: int | None, max_frames: int | None) -> torch.Tensor:
    """A freshly armed stream's state row (host): no frame made yet."""
    row = torch.zeros(COLUMNS, dtype=torch.int64)
    row[SEED] = int(seed)
    row[FORCE_AT] = NO_LIMIT if force_eos_frame is None else int(force_eos_frame)
    row[MAX_FRAMES] = NO_LIMIT if max_frames is None else int(max_frames)
    return row


def book_frame(state: torch.Tensor, active: torch.Tensor, pos_len: torch.Tensor, eos: torch.Tensor,
               limit: int) -> torch.Tensor:
    """Book one speech step into `state [b, 4]` (active rows only: their frame counter advances) and return
    each row's stop code `[b]` int64 (0: goes on; inactive rows 0). `pos_len [b]`: the positive TTS rows'
    lengths after the step committed; `eos [b]`: the EOS probability. In place, no host sync: part of the
    captured step."""
    index = state[:, FRAME]  # this frame's index within its stream
    code = lambda c: torch.full_like(index, c)  # noqa: E731
    zero = torch.zeros_like(index)
    stop = torch.where((index + 1) >= state[:, MAX_FRAMES], code(CAP), zero)
    stop = torch.where(eos > 0.5, code(EOS), stop)
    stop = torch.where(index >= state[:, FORCE_AT], code(FORCED_EOS), stop)
    stop = torch.where(pos_len > limit, code(LENGTH), stop)
    state[:, FRAME] = index + active.to(torch.int64)
    return torch.where(active, stop, zero)
