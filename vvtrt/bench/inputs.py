"""What the bench synthesises: a real script and one voice clip per speaker.

By default the dialogue and the two voice clips that ship with vvtrt (`vvtrt/bench/data/`, package data:
`dialogue.txt`, `voice_1.wav`, `voice_2.wav`; the clips are espeak-ng speech made by
`benchmarks/make_bench_voices.py`, 24 kHz mono, 2.8 s each). A clip longer than the work dir's exported
voice limit is cut to that limit (a copy in the run's scratch directory; the report says so), because
the bench measures what the work dir can serve.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from vvtrt.errors import InputError, WorkdirError

log = logging.getLogger(__name__)

SCRIPT = "dialogue.txt"
VOICES = ("voice_1.wav", "voice_2.wav")


def packaged(name: str) -> Path:
    """A file of the bench's package data, as a real path (the workers open it by name)."""
    from importlib.resources import files

    path = files("vvtrt.bench") / "data" / name
    try:
        real = Path(os.fspath(path))
    except TypeError:  # a zip import: no file to hand to a subprocess
        raise WorkdirError(f"vvtrt's bench data {name} is not a plain file here: install vvtrt unzipped") from None
    if not real.is_file():
        raise WorkdirError(f"vvtrt's bench data {real} is missing: reinstall vvtrt (its package data "
                           "includes vvtrt/bench/data/)")
    return real


@dataclass(frozen=True)
class BenchInputs:
    """The script (text and where it came from) and the voice files the workers read, in speaker order."""

    script: str
    script_source: str
    voices: tuple[str, ...]
    voice_info: tuple[dict, ...]  # per voice: file, samples and seconds used, seconds of the original, trimmed
    turns: int

    def to_config(self, prompt_tokens: int, voice_tokens: int) -> dict:
        return {"script_source": self.script_source, "script": self.script, "turns": self.turns,
                "voices": list(self.voice_info), "prompt_tokens": prompt_tokens, "voice_tokens": voice_tokens}


def _read_script(script) -> tuple[str, str]:
    from vvtrt.errors import require_file

    if script is None:
        path = packaged(SCRIPT)
        return path.read_text(encoding="utf-8").strip(), f"vvtrt/bench/data/{SCRIPT} (packaged)"
    p = require_file(script, "script file", "a text file of `Speaker N: text` lines")
    try:
        return p.read_text(encoding="utf-8").strip(), str(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read script file {p}: {exc}") from None


def _fit_voice(path: Path, max_frames: int, hop: int, scratch: Path, index: int) -> tuple[str, dict]:
    """The clip as the work dir can take it: cut to `max_frames` frames (a copy in `scratch`) if longer."""
    import soundfile as sf

    from vvtrt.runtime.audio_io import SAMPLE_RATE, read_voice

    wav = read_voice(path)
    seconds = len(wav) / SAMPLE_RATE
    info = {"file": path.name, "source_seconds": round(seconds, 4), "seconds": round(seconds, 4),
            "samples": len(wav), "trimmed": False}
    if math.ceil(len(wav) / hop) <= max_frames:
        return str(path), info
    cut = wav[:max_frames * hop]
    out = scratch / f"voice_{index}_{path.stem}_cut.wav"
    sf.write(str(out), cut, SAMPLE_RATE, subtype="FLOAT")
    log.info("voice %s cut from %.2f s to the work dir's limit of %.2f s", path.name, seconds, len(cut) / SAMPLE_RATE)
    return str(out), info | {"seconds": round(len(cut) / SAMPLE_RATE, 4), "samples": len(cut), "trimmed": True}


def resolve_inputs(script, voices, max_voice_frames: int, hop: int, scratch: Path) -> BenchInputs:
    """Read and check the script and the voices (default: the packaged dialogue and clips). The number
    of voices must equal the script's speakers; packaged voices are taken in order for a custom script."""
    from vvtrt.runtime.script import parse_script

    text, source = _read_script(script)
    parsed = parse_script(text)
    speakers = parsed.speakers
    if voices:
        paths = [Path(os.fsdecode(v)).expanduser() for v in voices]
    elif len(speakers) <= len(VOICES):
        paths = [packaged(v) for v in VOICES[:len(speakers)]]
    else:
        raise InputError(f"the script has {len(speakers)} speakers and vvtrt ships {len(VOICES)} voice clips: "
                         "pass one --voice per speaker")
    if len(paths) != len(speakers):
        raise InputError(f"the script has {len(speakers)} speaker(s) but {len(paths)} voice(s) were given: "
                         "pass one --voice per speaker, in order of first appearance")
    fitted = [_fit_voice(p, max_voice_frames, hop, scratch, i) for i, p in enumerate(paths)]
    return BenchInputs(text, source, tuple(f for f, _ in fitted), tuple(i for _, i in fitted), len(parsed.turns))


def prompt_size(inputs: BenchInputs, wd) -> tuple[int, int]:
    """(prompt tokens, voice tokens) of the script with its voices, as the synthesiser builds it."""
    from vvtrt.model.text_tokenizer import load_text_tokenizer
    from vvtrt.runtime.prompt import build_prompt
    from vvtrt.runtime.script import parse_script

    info = wd.info()
    frames = [math.ceil(v["samples"] / info.hop) for v in inputs.voice_info]
    prompt = build_prompt(parse_script(inputs.script), load_text_tokenizer(wd.source()), info, frames)
    return len(prompt.ids), prompt.num_voice_tokens
