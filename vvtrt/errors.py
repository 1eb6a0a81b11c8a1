"""Typed errors. Every user-facing failure is a :class:`VvtrtError` subclass with a message that says
what to fix; the CLI prints that one line and exits with code 2."""
from __future__ import annotations

import os
from pathlib import Path


class VvtrtError(Exception):
    """Base class of every error vvtrt raises on purpose."""


class InputError(VvtrtError):
    """Bad user input: an unknown preset, a bad dtype, an empty script, an unreadable wav..."""


class ModelError(VvtrtError):
    """A model directory is missing, malformed or not a VibeVoice checkpoint."""


class WorkdirError(VvtrtError):
    """The work directory is unwritable, or lacks a stage's outputs (run the earlier stage first)."""


class ExportError(VvtrtError):
    """ONNX export or its validation failed."""


class BuildError(VvtrtError):
    """A TensorRT engine build failed; the message lists every parser/builder error."""


class EngineMismatchError(VvtrtError):
    """An engine was built for another GPU or TensorRT version, or its file is corrupt."""


class BackendUnavailableError(VvtrtError):
    """A backend (onnxruntime-gpu, tensorrt, CUDA) is not installed or not usable here."""


class ParityError(VvtrtError):
    """A component's outputs differ from the PyTorch reference beyond the spec's tolerance."""


def require_file(path, what: str, expect: str) -> Path:
    """`path` as an existing file, else an InputError: "<what> not found: …" or "<what> path … is a
    directory: pass <expect>"."""
    p = Path(os.fsdecode(path)).expanduser()
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} path {p} is a directory: pass {expect}")
    return p
