"""Text tokenizers: the byte-level stand-in used with random-weight presets, and a Hugging Face tokenizer
(a checkpoint's own, or the directory given with `--tokenizer`; loaded offline).

A tokenizer here only turns plain text into ids, without adding any special tokens. The special ids of
the prompt (`audio_bos`, `audio_token`, `audio_eos`) are never produced by a tokenizer: the prompt
builder inserts them by id from :class:`~vvtrt.components.info.ModelInfo`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from vvtrt.errors import ModelError

log = logging.getLogger(__name__)

# Files any one of which makes a directory worth handing to `AutoTokenizer`.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@runtime_checkable
class TextTokenizer(Protocol):
    """Plain text -> token ids, with no special tokens added."""

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """Deterministic stand-in for the random-weight presets: the UTF-8 bytes of the text are the ids
    (0..255).

    Every preset's vocabulary is larger than 256 (tiny: 512, 1.5B/7B: ~152k) and its special tokens sit
    at ids >= 256 (tiny: pad/eos 256, audio_bos 257, audio_eos 258, audio_token 259; the real models:
    151643..151654), so byte ids never collide with them. The special ids come from `ModelInfo`, not
    from this class.
    """

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Inverse of :meth:`encode` (ids >= 256 are dropped; invalid UTF-8 is replaced)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTextTokenizer:
    """A Hugging Face tokenizer behind the :class:`TextTokenizer` protocol.

    `encode` adds no special tokens, exactly like the text chunks between special tokens when
    transformers' processor tokenizes a rendered prompt.
    """

    def __init__(self, tokenizer, name: str = "hf"):
        self.tokenizer = tokenizer
        self.name = name

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def __repr__(self) -> str:
        return f"HFTextTokenizer({type(self.tokenizer).__name__}, {self.name!r})"


def load_text_tokenizer(source) -> TextTokenizer:
    """The text tokenizer of a model (`source`: a `vvtrt.model.resolve.ModelSource`): the directory given
    as `source.tokenizer` (`--tokenizer DIR`) when there is one; else :class:`ByteTokenizer` for presets,
    and for a checkpoint directory its own tokenizer files. Always offline
    (`AutoTokenizer.from_pretrained(..., local_files_only=True)`).

    Raises :class:`ModelError` when the files are missing or broken; for a checkpoint that ships no
    tokenizer (Microsoft's original layout) the message names the exact tokenizer to get.
    """
    if source.tokenizer:
        given = Path(source.tokenizer)
        if not _has_tokenizer_files(given):
            raise ModelError(f"--tokenizer directory {given} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}): "
                             "pass the directory of a downloaded Qwen2.5 tokenizer")
        return _load_dir(given)
    if source.preset:
        return ByteTokenizer()
    if not source.path:
        raise ModelError("the model source names neither a preset nor a checkpoint directory")
    path = Path(source.path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory: cannot load its tokenizer")
    if not _has_tokenizer_files(path):
        raise ModelError(missing_tokenizer_message(path))
    return _load_dir(path)


def _has_tokenizer_files(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in _TOKENIZER_FILES)


def missing_tokenizer_message(path: Path) -> str:
    """Why a checkpoint directory has no usable tokenizer and which one to get."""
    from vvtrt.model.layouts import detect_layout, read_config, tokenizer_advice

    try:
        raw = read_config(path)
        layout = detect_layout(raw, path)
    except ModelError:  # not a checkpoint we can read: say what is missing, nothing more
        return (f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}): copy the checkpoint's "
                "tokenizer (e.g. Qwen2.5's tokenizer.json) into that directory or pass --tokenizer DIR")
    if not layout.ships_tokenizer:
        return (f"{path} is a VibeVoice checkpoint in Microsoft's {layout.name} layout, which ships no "
                f"tokenizer: {tokenizer_advice(raw)}")
    return f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}): {tokenizer_advice(raw)}"


def _load_dir(path: Path) -> HFTextTokenizer:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure means broken tokenizer files
        raise ModelError(f"could not load the tokenizer in {path}: {type(exc).__name__}: {exc}") from exc
    if tok is None or not callable(getattr(tok, "encode", None)):
        raise ModelError(f"the tokenizer files in {path} did not give a usable tokenizer")
    log.info("loaded tokenizer %s from %s", type(tok).__name__, path)
    return HFTextTokenizer(tok, name=f"{type(tok).__name__}:{path.name}")
