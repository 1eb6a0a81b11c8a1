"""Text tokenizers: the byte-level stand-in used with random-weight presets, and a checkpoint's own
Hugging Face tokenizer (loaded offline).

A tokenizer here only turns plain text into ids, without adding any special tokens. The special ids of
the prompt (`audio_bos`, `audio_token`, `audio_eos`) are never produced by a tokenizer: the prompt
builder inserts them by id from :class:`~vvtrt.components.info.ModelInfo`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from vvtrt.errors import ModelError
from vvtrt.model.presets import ModelSource

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


def load_text_tokenizer(source: ModelSource) -> TextTokenizer:
    """The text tokenizer of a model: :class:`ByteTokenizer` for presets; for a checkpoint directory its
    own tokenizer via `AutoTokenizer.from_pretrained(path, local_files_only=True)` (never the network).

    Raises :class:`ModelError` naming the directory when the tokenizer files are missing or broken.
    """
    if source.preset:
        return ByteTokenizer()
    if not source.path:
        raise ModelError("the model source names neither a preset nor a checkpoint directory")
    path = Path(source.path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory: cannot load its tokenizer")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}): copy the "
                         "checkpoint's tokenizer (e.g. Qwen2.5's tokenizer.json) into that directory")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure means broken tokenizer files
        raise ModelError(f"could not load the tokenizer in {path}: {type(exc).__name__}: {exc}") from exc
    if tok is None or not callable(getattr(tok, "encode", None)):
        raise ModelError(f"the tokenizer files in {path} did not give a usable tokenizer")
    log.info("loaded tokenizer %s from %s", type(tok).__name__, path)
    return HFTextTokenizer(tok, name=f"{type(tok).__name__}:{path.name}")
