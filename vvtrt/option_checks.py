"""Up-front checks of the options the verbs share, so that a mistaken or hostile value is one clear error
(exit 2) before any model loads: devices, precisions that were exported, frame budgets the exported KV
buckets allow, seeds, guidance scales and output paths.

Limits (also in each verb's --help):
- seeds: 0 .. 2**63-1 (torch seeds are 64-bit and the loop adds a small offset per stream / voice);
- `--cfg`: finite, 0 .. 20 (VibeVoice uses 1.3; far outside 1-3 the audio is noise);
- frames: 1 .. the largest exported KV bucket minus 2 (each frame takes one KV slot next to the prompt;
  2048 for the 1.5B/7B presets, 1024 for tiny), i.e. at most ~4.5 minutes of audio per utterance. The
  exact budget, prompt included, is checked once the prompt is built.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vvtrt.errors import BackendUnavailableError, InputError
from vvtrt.precision import Precision

if TYPE_CHECKING:  # light at import: the CLI reads the limits below before any verb runs
    from vvtrt.workdir import Workdir

SEED_MAX = 2**63 - 1
CFG_MAX = 20.0
REPEATS_MAX = 1000


def check_seed(seed) -> int:
    if type(seed) is not int or not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be an integer from 0 to {SEED_MAX} (2**63-1), got {seed!r}")
    return seed


def check_counts(obj, names, lowest: int = 1, optional: bool = False) -> None:
    """Each attribute `names` of `obj` an integer (not a bool) >= `lowest` (None allowed when `optional`)."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if type(value) is not int or value < lowest:
            raise InputError(f"{name} must be an integer >= {lowest}, got {value!r}")


def check_cfg(cfg_scale) -> float:
    try:
        value = float(cfg_scale)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= CFG_MAX):
        raise InputError(f"--cfg must be a finite number from 0 to {CFG_MAX:g}, got {cfg_scale!r}")
    return value


def resolve_device(device):
    """`cpu`, `cuda` or `cuda:N` as a torch.device (None: cuda when available); anything else, or CUDA
    where it is not available, is an error."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device {device}: CUDA is not available on this machine "
                                      "(no GPU, driver or CUDA build of torch): use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise BackendUnavailableError(f"--device {device}: this machine has {n} CUDA device(s) "
                                      f"(cuda:0 to cuda:{n - 1})")
    return dev


def exported_precisions(wd: "Workdir") -> list[Precision]:
    return sorted({p for _, p in wd.exported()}, key=list(Precision).index)


def check_precisions_exported(wd: "Workdir", precisions) -> None:
    """Every precision in `precisions` has exported graphs in `wd`."""
    have = exported_precisions(wd)
    for p in precisions:
        if p not in have:
            raise InputError(f"--dtype {p.value} was not exported in {wd.root} (exported: "
                             f"{', '.join(x.value for x in have) or 'nothing'}): pass one of those, or run "
                             f"`{wd.export_command(precision=p)}`")


def max_frames(options) -> int:
    """The most frames one utterance can have with these `ExportOptions` (module doc)."""
    return max(options.kv_buckets) - 2


def check_frames(options, frames, limit=None, option: str = "--frames", lowest: int = 1,
                 where: str = "this work dir") -> None:
    """`frames` (and `limit`, the --max-frames) within lowest .. max_frames(options), and frames <= limit."""
    top = max_frames(options)
    for name, value in ((option, frames), ("--max-frames", limit)):
        if value is not None and not lowest <= value <= top:
            raise InputError(f"{name} must be from {lowest} to {top} (what the KV buckets exported for {where} "
                             f"allow), got {value}")
    if frames is not None and limit is not None and frames > limit:
        raise InputError(f"--frames {frames} contradicts --max-frames {limit}: give one of them, or a "
                         "--max-frames at least as large")


def _check_creatable(folder: Path, target: Path) -> None:
    """`folder` exists as a directory, or can be created: its nearest existing ancestor is a directory."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write {target}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: {ancestor} is not writable")


def check_output_file(path, what: str = "output file", suffix: str | None = None) -> Path:
    """A path a verb will write a file to (atomically: a temporary beside it, renamed over it): not a
    directory, not a device or pipe, ending in `suffix` when given; missing parent directories are
    created on write, so the nearest existing one must be a writable directory."""
    p = Path(os.fsdecode(path)).expanduser()
    if p.is_dir() or str(path).endswith(os.sep):
        raise InputError(f"{what} {p} is a directory: pass a file path")
    if p.exists() and not p.is_file():
        raise InputError(f"{what} {p} is not a regular file (a device, pipe or socket): pass a file path")
    if suffix and p.suffix.lower() != suffix:
        raise InputError(f"{what} {p} must end in {suffix} (the format written)")
    _check_creatable(p.parent, p)
    return p


def check_output_dir(path, what: str = "output directory") -> Path:
    """A directory a verb will write into (created if missing)."""
    p = Path(os.fsdecode(path)).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} is a file: pass a directory")
    _check_creatable(p, p)
    return p


def check_unicode(text: str, field: str = "the text") -> str:
    """`text` if it encodes as UTF-8; a lone surrogate (JSON "\\ud800") is an InputError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{field} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character "
                         f"{exc.start}") from None
    return text


def check_text(text) -> None:
    """Text must be a string of valid Unicode (a lone surrogate, e.g. JSON "\\ud800", is no text)."""
    if not isinstance(text, str):
        raise InputError(f"the text must be a string, got {type(text).__name__}")
    check_unicode(text)


def check_max_context(workdir, max_context, frames: int | None = None) -> None:
    """`--max-context` (KV slots per stream of the serving engine) must hold the shortest script's prompt
    plus one frame, and forced `frames` must fit beside that prompt, else every request would be refused
    (long-form work dirs; Realtime ones size their own)."""
    if max_context is None and frames is None:
        return
    from vvtrt.export_checks import shortest_prompt
    from vvtrt.model.text_tokenizer import load_text_tokenizer
    from vvtrt.workdir import Workdir

    wd = Workdir.open(workdir)
    if wd.kind != "longform":
        return
    prompt = shortest_prompt(load_text_tokenizer(wd.source()))
    if max_context is not None and max_context < prompt + 1:
        raise InputError(f"--max-context {max_context} is below the {prompt + 1} KV slots of the shortest request (its "
                         f"prompt's fixed instructions plus one frame): every request would fail; pass --max-context "
                         f"{max(prompt + 1, 256)} or more, or leave it out")
    room = max_context if max_context is not None else max(wd.options().kv_buckets)
    if frames is not None and prompt + frames > room:
        what = "--max-context" if max_context is not None else "the largest exported KV bucket"
        raise InputError(f"--frames {frames} with the shortest prompt ({prompt} tokens) needs {prompt + frames} KV "
                         f"slots, more than the {room} of {what}: every request would fail; pass --frames "
                         f"{room - prompt} or fewer")
