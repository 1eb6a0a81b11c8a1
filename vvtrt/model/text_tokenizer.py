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
        return load_tokenizer_dir(given)
    if source.preset:
        return ByteTokenizer()
    if not source.path:
        raise ModelError("the model source names neither a preset nor a checkpoint directory")
    path = Path(source.path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory: cannot load its tokenizer")
    if not _has_tokenizer_files(path):
        raise ModelError(missing_tokenizer_message(path))
    return load_tokenizer_dir(path)


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


PROBE_TEXT = "Speaker 1: Hello there, how are you today?"


def third_party_message(exc: BaseException) -> str:
    """A library's exception as one line: its first non-empty line, without advice that names options of
    transformers' API instead of ours (`trust_remote_code=True`...)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    first = first.split(" Please pass the argument `trust_remote_code")[0]
    return f"{type(exc).__name__}: {first[:300].rstrip(':. ')}"


def load_tokenizer_dir(path: Path) -> HFTextTokenizer:
    """The Hugging Face tokenizer in `path`, loaded offline and probed (`probe_tokenizer`)."""
    has = {f for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model") if (path / f).is_file()}
    if not ({"tokenizer.json", "tokenizer.model"} & has or {"vocab.json", "merges.txt"} <= has):
        raise ModelError(f"the tokenizer in {path} has no vocabulary (tokenizer.json, or vocab.json with merges.txt; "
                         f"found {', '.join(sorted(has)) or 'neither'}): copy all of the tokenizer's files, or pass "
                         "the directory of a downloaded Qwen2.5 tokenizer")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure means broken tokenizer files
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise ModelError(f"the tokenizer in {path} asks to run its own Python code (auto_map in "
                             "tokenizer_config.json), which vvtrt never does: pass the directory of a downloaded "
                             "Qwen2.5 tokenizer") from exc
        raise ModelError(f"could not load the tokenizer in {path} ({third_party_message(exc)}): pass the directory "
                         "of a downloaded Qwen2.5 tokenizer (tokenizer.json, tokenizer_config.json, vocab.json, "
                         "merges.txt)") from exc
    if tok is None or not callable(getattr(tok, "encode", None)):
        raise ModelError(f"the tokenizer files in {path} did not give a usable tokenizer")
    wrapped = HFTextTokenizer(tok, name=f"{type(tok).__name__}:{path.name}")
    probe_tokenizer(wrapped, path)
    log.info("loaded tokenizer %s from %s", type(tok).__name__, path)
    return wrapped


def probe_tokenizer(tokenizer, where, vocab: int | None = None) -> None:
    """The tokenizer must turn a probe text into token ids (within `vocab` when given): one that encodes
    everything to nothing (a directory with tokenizer_config.json alone) would silently drop every script."""
    try:
        ids = [int(i) for i in tokenizer.encode(PROBE_TEXT)]
    except Exception as exc:  # noqa: BLE001 - a broken tokenizer fails in its own ways
        raise ModelError(f"the tokenizer in {where} cannot encode text ({third_party_message(exc)}): pass the "
                         "directory of a downloaded Qwen2.5 tokenizer") from exc
    if len(ids) < 3:
        raise ModelError(f"the tokenizer in {where} encodes {PROBE_TEXT!r} to {len(ids)} token(s): its files are "
                         "incomplete (a tokenizer needs tokenizer.json, or vocab.json and merges.txt): pass the "
                         "directory of a downloaded Qwen2.5 tokenizer")
    if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
        raise ModelError(f"the tokenizer in {where} gives token id {max(ids)}, outside the model's vocabulary of "
                         f"{vocab}: it belongs to another model; pass the tokenizer this model was trained with")
