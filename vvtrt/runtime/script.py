"""Dialogue scripts: parsing `Speaker N: text` lines into turns.

Format (the one VibeVoice's demos and transformers' examples use)::

    Speaker 1: Hello there.
    Speaker 2: Hi! How are you?
    a line without a prefix continues the previous turn

* `N` is a non-negative integer, 0- or 1-based (or gapped) as the user likes. The script keeps the numbers
  as written (messages name them); the prompt renumbers the speakers 0, 1, ... in order of first
  appearance, as Microsoft's original processor does with its 1-based demo scripts (`"Speaker 1: Hi"` is
  spoken as `" Speaker 0: Hi"`; see `vvtrt.runtime.prompt`). Voice `i` belongs to the `i`-th speaker to
  appear.
* Blank lines are ignored. A line without a `Speaker N:` prefix is joined to the previous turn with one
  space (the prompt puts each turn on one line).
* Text with no `Speaker N:` prefix anywhere is one turn of :data:`DEFAULT_SPEAKER` (what `--text` gives).
* At most :data:`MAX_SPEAKERS` distinct speakers (the model was trained with up to 4 voices).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import InputError, require_file

log = logging.getLogger(__name__)

MAX_SPEAKERS = 4
MAX_SCRIPT_BYTES = 1 << 20  # far above any prompt the exported models take; stops /dev/zero and the like
DEFAULT_SPEAKER = 0
# "Speaker <id>:" at the start of a line; <id> is validated separately so that "Speaker X:" is an error
# rather than silently being read as text. "Speakers of ...:" or "Speaker one two:" do not match.
_PREFIX = re.compile(r"^speaker[ \t]*(?P<id>[^\s:]*)[ \t]*:(?P<text>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """One speaker turn: the speaker's number as written in the script, and the turn's text (stripped)."""

    speaker: int
    text: str


@dataclass(frozen=True)
class Script:
    """A parsed script. `speakers` lists the speaker numbers (as written) in order of first appearance:
    voice `i` of a run belongs to `speakers[i]`, which the prompt calls ` Speaker {i}:`."""

    turns: tuple[Turn, ...]
    speakers: tuple[int, ...]

    def __post_init__(self) -> None:
        # Accept lists from callers, store tuples (keeps the dataclass hashable and immutable).
        object.__setattr__(self, "turns", tuple(self.turns))
        object.__setattr__(self, "speakers", tuple(self.speakers))

    @classmethod
    def from_turns(cls, turns) -> "Script":
        """Build a script from turns, deriving `speakers` from first appearance."""
        turns = tuple(turns)
        return cls(turns, tuple(dict.fromkeys(t.speaker for t in turns)))

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)


def parse_script(text: str | Script, default_speaker: int = DEFAULT_SPEAKER) -> Script:
    """Parse a script (see the module docstring); a :class:`Script` is returned unchanged. Raises :class:`InputError` with one line saying what
    to fix: an empty script, a malformed `Speaker X:` prefix, a turn without text, text before the first
    prefix, or more than :data:`MAX_SPEAKERS` speakers."""
    if isinstance(text, Script):
        return text
    if not isinstance(text, str):
        raise InputError(f"the script must be text, got {type(text).__name__}")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        raise InputError("the script is empty: give some text, e.g. 'Speaker 1: Hello there.'")

    parsed = [(n, _match_prefix(n, line), line) for n, line in lines]
    if all(m is None for _, m, _ in parsed):
        # No prefixes at all: plain text, one turn of the default speaker.
        return _finish([[default_speaker, " ".join(line for _, _, line in parsed), lines[0][0]]])

    turns: list[list] = []  # [speaker, text, line number]
    for n, match, line in parsed:
        if match is None:
            if not turns:
                raise InputError(f"script line {n} has no 'Speaker N:' prefix and no turn to continue: "
                                 f"start the script with 'Speaker N: ...' (line: {_short(line)!r})")
            turns[-1][1] = f"{turns[-1][1]} {line}".strip()
        else:
            speaker, body = match
            turns.append([speaker, body, n])
    return _finish(turns)


def _match_prefix(n: int, line: str) -> tuple[int, str] | None:
    """(speaker, text) for a `Speaker N:` line, None for a line without a prefix."""
    m = _PREFIX.match(line)
    if m is None:
        return None
    sid = m.group("id")
    if not (sid.isascii() and sid.isdigit()):
        raise InputError(f"script line {n} has a malformed speaker prefix {_short(line.split(':')[0])!r}: "
                         "write 'Speaker <number>: text', e.g. 'Speaker 1: Hello'")
    return int(sid), m.group("text").strip()


def _finish(turns: list[list]) -> Script:
    for speaker, body, n in turns:
        if not body:
            raise InputError(f"script line {n}: the turn of Speaker {speaker} has no text; "
                             "add the words to speak or delete the line")
    script = Script.from_turns(Turn(int(s), body) for s, body, _ in turns)
    if script.num_speakers > MAX_SPEAKERS:
        raise InputError(f"the script has {script.num_speakers} speakers "
                         f"({', '.join(map(str, script.speakers))}); VibeVoice supports at most "
                         f"{MAX_SPEAKERS}: merge some speakers")
    log.debug("parsed script: %d turns, speakers %s", len(script.turns), script.speakers)
    return script


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def read_script_file(path: str | Path) -> str:
    """The text of a UTF-8 script file (a UTF-8 BOM is accepted), for :func:`parse_script`. Raises
    :class:`InputError` for a missing, unreadable or non-UTF-8 file."""
    p = require_file(path, "script file", "a text file")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read script file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise InputError(f"script file {p} is larger than {MAX_SCRIPT_BYTES // 1024} KiB: a script is a few "
                         "pages of dialogue (the exported prompt holds at most a few thousand tokens)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"script file {p} is not UTF-8 text (bad byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}): re-save it as UTF-8") from None


def load_script(path: str | Path, default_speaker: int = DEFAULT_SPEAKER) -> Script:
    """Read and parse a script file; parse errors are prefixed with the file's path."""
    text = read_script_file(path)
    try:
        return parse_script(text, default_speaker=default_speaker)
    except InputError as exc:
        raise InputError(f"{os.fsdecode(path)}: {exc}") from None
