"""Realtime voice presets: a voice is the prefilled KV cache of the model's branches, not a
wav. Four branches, as Microsoft's `.pt` presets hold them: `lm` (text LM), `tts_lm` (TTS LM), `neg_lm`
(unused by generation, kept for fidelity) and `neg_tts_lm` (the CFG branch, length 1).

On disk: one safetensors file per voice, `<name>.safetensors`, tensors `<branch>.hidden [L, H]`,
`<branch>.k` / `<branch>.v [layers, kv_heads, L, head_dim]`, metadata naming the format, the voice, its
source and the lengths. Written atomically; read back with every shape checked against the model.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vvtrt.errors import InputError, ModelError
from vvtrt.realtime.config import RealtimeConfig

log = logging.getLogger(__name__)
BRANCHES = ("lm", "tts_lm", "neg_lm", "neg_tts_lm")
FORMAT = "vvtrt-realtime-voice"
VERSION = "1"
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class BranchCache:
    """One branch: last hidden states `[L, H]` and per-layer K/V `[layers, kv_heads, L, head_dim]`."""

    hidden: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.k.shape[2])

    def last_hidden(self) -> torch.Tensor:
        return self.hidden[-1]


@dataclass(frozen=True)
class VoicePreset:
    name: str
    branches: dict  # branch name -> BranchCache
    source: str = ""

    def __getitem__(self, branch: str) -> BranchCache:
        return self.branches[branch]

    def lengths(self) -> dict[str, int]:
        return {b: self.branches[b].length for b in BRANCHES}

    def to(self, dtype=None, device=None) -> "VoicePreset":
        conv = {b: BranchCache(*(t.to(device=device, dtype=dtype) for t in (c.hidden, c.k, c.v)))
                for b, c in self.branches.items()}
        return VoicePreset(self.name, conv, self.source)


def branch_layers(cfg: RealtimeConfig, branch: str) -> int:
    return cfg.lm_layers if branch in ("lm", "neg_lm") else cfg.tts_layers


def check_voice(voice: VoicePreset, cfg: RealtimeConfig, where: str) -> None:
    """Every branch present, shaped for `cfg`, floating point, finite, with a usable length."""
    missing = [b for b in BRANCHES if b not in voice.branches]
    if missing:
        raise InputError(f"{where}: voice has no {', '.join(missing)} branch: not a Realtime voice preset")
    for b in BRANCHES:
        c = voice.branches[b]
        n = c.k.shape[2] if c.k.dim() == 4 else -1
        want_kv = (branch_layers(cfg, b), cfg.kv_heads, n, cfg.head_dim)
        problems = []
        if tuple(c.k.shape) != want_kv or tuple(c.v.shape) != want_kv:
            problems.append(f"K/V {tuple(c.k.shape)}/{tuple(c.v.shape)}, model needs (layers, kv_heads, L, "
                            f"head_dim) = {want_kv[:2] + ('L',) + want_kv[3:]}")
        if tuple(c.hidden.shape) != (n, cfg.hidden):
            problems.append(f"hidden {tuple(c.hidden.shape)}, model needs (L={n}, {cfg.hidden})")
        if not problems and not 1 <= n < cfg.context:
            problems.append(f"length {n} outside 1..{cfg.context - 1}")
        if not problems and not all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in (c.hidden, c.k, c.v)):
            problems.append("non-finite or non-float values")
        if problems:
            raise InputError(f"{where}: branch {b!r} does not fit model {cfg.name}: {'; '.join(problems)}")


NAME_RE = re.compile(r"\w[\w.\-]{0,99}")


def voice_path(folder, name: str) -> Path:
    """`<folder>/<name>.safetensors` for a file-safe voice name (letters, digits, `_`, `-`, `.`; no leading
    dot or dash, no spaces or control characters, at most 100 characters)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith("."):
        raise InputError(f"bad voice name {name!r}: use a plain file name of letters, digits, '_', '-' and '.' "
                         "such as en-Grace_woman (pass --name NAME)")
    return Path(folder) / f"{name}{SUFFIX}"


def save_voice(voice: VoicePreset, folder, dtype=torch.bfloat16) -> Path:
    """Write `<folder>/<name>.safetensors` atomically (K/V and hidden states at `dtype`)."""
    from safetensors.torch import save

    from vvtrt.fsio import atomic_write_bytes

    tensors = {}
    for b in BRANCHES:
        c = voice.branches[b]
        for part, t in (("hidden", c.hidden), ("k", c.k), ("v", c.v)):
            tensors[f"{b}.{part}"] = t.detach().to("cpu", dtype).contiguous()
    meta = {"format": FORMAT, "version": VERSION, "name": voice.name, "source": voice.source,
            "lengths": json.dumps(voice.lengths())}
    return atomic_write_bytes(voice_path(folder, voice.name), save(tensors, metadata=meta))


def read_voice(path, cfg: RealtimeConfig | None = None) -> VoicePreset:
    """A voice file written by `save_voice`, checked against `cfg` when given."""
    from vvtrt.errors import require_file
    from vvtrt.model.safetensors_io import TensorReader, read_header

    path = require_file(path, "voice file", "a .safetensors voice written by `vvtrt voices`")
    _not_a_clip(path)
    try:
        entries = read_header(path)
        meta = _metadata(path)
    except ModelError as exc:
        raise InputError(f"{path} is not a readable vvtrt voice ({str(exc).split(': re-download')[0]}): make it "
                         "again with `vvtrt voices import` or `vvtrt voices make`") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a vvtrt Realtime voice (format {meta.get('format')!r}): import "
                         "Microsoft's .pt presets with `vvtrt voices import`")
    want = {f"{b}.{p}" for b in BRANCHES for p in ("hidden", "k", "v")}
    if set(entries) != want:
        raise InputError(f"{path}: voice tensors {sorted(set(entries) ^ want)[:4]} missing or unexpected")
    with TensorReader() as reader:
        t = {n: reader.read(e) for n, e in entries.items()}
    branches = {b: BranchCache(t[f"{b}.hidden"], t[f"{b}.k"], t[f"{b}.v"]) for b in BRANCHES}
    voice = VoicePreset(meta.get("name") or path.stem, branches, meta.get("source", ""))
    if cfg is not None:
        check_voice(voice, cfg, str(path))
    return voice


def is_wav_file(path: Path) -> bool:
    """True when `path` starts as a RIFF/WAVE file (a voice clip, not a preset)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _not_a_clip(path: Path) -> None:
    if is_wav_file(path):
        raise InputError(f"{path} is a .wav clip, but a Realtime model takes a voice preset (a prefilled cache): "
                         "pass a .safetensors voice from `vvtrt voices import PRESET.pt -o DIR` or `vvtrt voices make`")


def _metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors file (a `ModelError` when the header is unreadable)."""
    from vvtrt.model.safetensors_io import MAX_HEADER_BYTES

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= MAX_HEADER_BYTES:
            raise ModelError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ModelError(f"{path} has a corrupt safetensors header (not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _listed(p: Path) -> dict | None:
    """The listing of one voice file, or None (with a warning) when it would not load."""
    from vvtrt.model.safetensors_io import read_header

    try:
        meta = _metadata(p)
        if meta.get("format") != FORMAT:
            raise ModelError("not a vvtrt Realtime voice")
        entries = read_header(p)  # a truncated file is refused here, as read_voice would
        want = {f"{b}.{part}" for b in BRANCHES for part in ("hidden", "k", "v")}
        if set(entries) != want:
            raise ModelError("its tensors are not a voice's")
        lengths = json.loads(meta.get("lengths", "{}"))
        if not isinstance(lengths, dict):
            raise ValueError("lengths")
    except (OSError, ValueError, UnicodeDecodeError, ModelError) as exc:
        log.warning("skipping %s: it would not load (%s)", p, str(exc).split(": re-download")[0])
        return None
    name = meta.get("name")
    name = name if isinstance(name, str) and NAME_RE.fullmatch(name) else p.stem
    return {"name": name, "file": str(p), "source": str(meta.get("source", "")),
            "lengths": lengths}


def list_voices(folder) -> list[dict]:
    """name, file, lengths and source of every voice in `folder` that would load (other files, truncated or
    damaged ones included, are skipped with a warning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"voice directory {folder} does not exist or is not a directory")
    found = (_listed(p) for p in sorted(folder.glob(f"*{SUFFIX}")) if p.is_file())
    return [v for v in found if v is not None]
