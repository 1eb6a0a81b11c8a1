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


def voice_path(folder, name: str) -> Path:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise InputError(f"bad voice name {name!r}: use a plain file name such as en-Grace_woman")
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
    try:
        entries = read_header(path)
        meta = _metadata(path)
    except ModelError as exc:
        raise InputError(f"{exc}") from None
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


def _metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def list_voices(folder) -> list[dict]:
    """name, file, lengths and source of every voice in `folder` (files that are not voices are skipped
    with a warning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"voice directory {folder} does not exist or is not a directory")
    out = []
    for p in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            meta = _metadata(p)
        except (OSError, ValueError, UnicodeDecodeError):
            meta = {}
        if meta.get("format") != FORMAT:
            log.warning("skipping %s: not a vvtrt Realtime voice", p)
            continue
        out.append({"name": meta.get("name") or p.stem, "file": str(p), "source": meta.get("source", ""),
                    "lengths": json.loads(meta.get("lengths", "{}"))})
    return out
