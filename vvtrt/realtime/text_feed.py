"""Text that arrives in pieces (an LLM's output, a socket) turned into the token windows the Realtime loop
consumes, with exactly the tokens the whole text would give.

Microsoft's preprocessing of the whole text: curly quotes to plain ones, `strip()`, then `+ "\\n"`,
tokenized with no special tokens. Incrementally, a prefix is tokenized only up to a split point right
before a space that starts a word (" word"): Qwen2's byte-level pre-tokenizer always starts a new
pre-token there, and BPE never merges across pre-tokens, so the prefix's tokens are the whole text's.
The rest waits for more text; at the end it is `rstrip()`-ed and given its "\\n".
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

from vvtrt.errors import InputError

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def normalize_text(text: str) -> str:
    return text.translate(_QUOTES)


def whole_text_ids(text: str, tokenizer) -> list[int]:
    """The ids Microsoft's demo feeds for `text` given at once."""
    text = normalize_text(text).strip()
    if not text:
        raise InputError("the text is empty: give some words to speak")
    return list(tokenizer.encode(text + "\n"))


def _split_point(text: str) -> int:
    """Index of the last space that starts a word (" X"), 0 if none (nothing is safe to tokenize yet)."""
    for i in range(len(text) - 2, 0, -1):
        if text[i] == " " and not text[i + 1].isspace():
            return i
    return 0


class TextFeed:
    """Token windows from `pieces` (a string, or an iterable of strings that may block while text is
    produced). `take(n)` returns the next `n` tokens, pulling pieces only until it has them, fewer at the
    end of the text, and [] once it is used up."""

    def __init__(self, pieces: Iterable[str] | str, tokenizer):
        self._pieces: Iterator[str] = iter([pieces] if isinstance(pieces, str) else pieces)
        self._tok = tokenizer
        self._pending = ""
        self._ready: deque[int] = deque()
        self._ended = False
        self._any = False

    @property
    def exhausted(self) -> bool:
        return self._ended and not self._ready

    def take(self, n: int) -> list[int]:
        while len(self._ready) < n and not self._ended:
            self._pull()
        return [self._ready.popleft() for _ in range(min(n, len(self._ready)))]

    def _pull(self) -> None:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finish()
            return
        if not isinstance(piece, str):
            raise InputError(f"text pieces must be strings, got {type(piece).__name__}")
        self._pending += normalize_text(piece)
        if not self._any:
            self._pending = self._pending.lstrip()
        cut = _split_point(self._pending)
        if cut:
            self._emit(self._pending[:cut])
            self._pending = self._pending[cut:]

    def _emit(self, text: str) -> None:
        self._ready.extend(self._tok.encode(text))
        self._any = True

    def _finish(self) -> None:
        self._ended = True
        rest = self._pending.rstrip()
        self._pending = ""
        if not rest and not self._any:
            raise InputError("the text is empty: give some words to speak")
        self._emit(rest + "\n")
