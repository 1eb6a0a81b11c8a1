"""The voices a server offers: `.wav` clips in a directory, encoded once at start-up by the engine's
acoustic encoder and cached as safetensors keyed by the clip's sha256 (and the model/settings), so a
restart reads embeddings instead of re-encoding. OpenAI's voice names map onto the clips in sorted order.

    lib = VoiceLibrary.load("voices/", engine, model_tag="1b2c…")   # alice.wav -> "alice"
    lib.resolve("alloy")            # -> ("alice", VoiceEmbedding)
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vvtrt.errors import InputError, VvtrtError
from vvtrt.serving.api import VoiceEmbedding

log = logging.getLogger(__name__)
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
DEFAULT_VOICE = "default"
CACHE_DIR = ".vvtrt-voice-cache"
MAX_SPEAKERS = 4


@dataclass
class VoiceLibrary:
    voices: dict = field(default_factory=dict)     # name -> VoiceEmbedding
    aliases: dict = field(default_factory=dict)    # OpenAI name -> configured name

    @classmethod
    def load(cls, folder, engine, model_tag: str, device=None) -> "VoiceLibrary":
        lib = cls()
        if folder is None:
            return lib
        clips = sorted(p for p in Path(folder).expanduser().iterdir() if p.suffix.lower() == ".wav" and p.is_file())
        for clip in clips:
            lib.voices[clip.stem] = _encoded(clip, engine, model_tag, device)
        names = list(lib.voices)
        if names:
            lib.aliases = {alias: names[i % len(names)] for i, alias in enumerate(OPENAI_VOICES)}
        log.info("voices: %d clip(s) from %s", len(names), folder)
        return lib

    def names(self) -> list[str]:
        return list(self.voices)

    def describe(self) -> list[dict]:
        out = [{"name": n, "seconds": round(v.seconds, 3), "sha256": v.sha256} for n, v in self.voices.items()]
        out += [{"name": a, "alias_of": n} for a, n in self.aliases.items()]
        if not self.voices:
            out.append({"name": DEFAULT_VOICE, "seconds": 0.0, "note": "no voice clip: the model's own voice"})
        return out

    def resolve(self, spec, speakers: int) -> tuple:
        """The voices for a request: `spec` is one name, a comma-separated list or a list (one per speaker,
        first-appearance order; one name is used for every speaker). `()` when no clips are configured."""
        names = split_voice_names(spec)
        if len(names) > MAX_SPEAKERS:
            raise InputError(f"{len(names)} voices given; at most {MAX_SPEAKERS} speakers are supported")
        if not self.voices:
            bad = [n for n in names if n not in (DEFAULT_VOICE, *OPENAI_VOICES)]
            if bad:
                raise InputError(f"unknown voice {bad[0]!r}: this server has no voice clips (start it with "
                                 f"--voices DIR); use {DEFAULT_VOICE!r} or an OpenAI voice name")
            return ()
        if not names or names == [DEFAULT_VOICE]:
            names = [self.names()[0]]
        if len(names) == 1:
            names = names * speakers
        if len(names) != speakers:
            raise InputError(f"the script has {speakers} speaker(s) but {len(names)} voices were given: "
                             "give one voice, or one per speaker in order of first appearance")
        return tuple(self.voices[self._canonical(n)] for n in names)

    def _canonical(self, name: str) -> str:
        if name in self.voices:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise InputError(f"unknown voice {name!r}: GET /v1/audio/voices lists them ({', '.join(self.names())})")


def split_voice_names(spec) -> list[str]:
    if spec is None:
        return []
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    return [str(s).strip() for s in items if str(s).strip()]


def _encoded(clip: Path, engine, model_tag: str, device) -> VoiceEmbedding:
    """The clip's embedding from the cache, else encoded now (and cached when the folder is writable)."""
    from safetensors.torch import load_file, save_file

    from vvtrt.fsio import atomic_path
    from vvtrt.runtime.audio_io import read_voice

    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    cached = clip.parent / CACHE_DIR / f"{sha}-{model_tag}.safetensors"
    if cached.is_file():
        try:
            t = load_file(str(cached), device=str(device or "cpu"))
            return VoiceEmbedding(embeds=t["embeds"], sha256=sha, seconds=float(t["seconds"].item()))
        except Exception as exc:  # a damaged cache entry is re-encoded, never fatal
            log.warning("voice cache %s unreadable (%s): re-encoding", cached, exc)
    try:
        emb = engine.encode_voice(read_voice(clip))
    except VvtrtError as exc:
        raise InputError(f"voice clip {clip}: {exc}") from None
    emb = VoiceEmbedding(embeds=emb.embeds, sha256=sha, seconds=emb.seconds)
    try:
        import torch

        cached.parent.mkdir(exist_ok=True)
        with atomic_path(cached) as tmp:
            save_file({"embeds": emb.embeds.detach().contiguous().cpu(),
                       "seconds": torch.tensor([emb.seconds], dtype=torch.float64)}, str(tmp))
    except (OSError, VvtrtError) as exc:
        log.warning("voice cache not written (%s): %s will be re-encoded at the next start", exc, clip.name)
    return emb


def check_serve_settings(workdir, folder, max_context) -> None:
    """`vvtrt serve` settings under which every request would fail, refused before the server listens."""
    from vvtrt.option_checks import check_max_context

    check_max_context(workdir, max_context)
    check_voice_dir(workdir, folder)


def check_voice_dir(workdir, folder) -> None:
    """`serve --voices DIR` checked before the server listens: on a long-form work dir every `.wav` clip
    must read as a voice (a bad one is one line now, not a failure after start-up)."""
    if folder is None:
        return
    from vvtrt.pipeline import is_realtime_workdir

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"--voices {folder} is not a directory")
    if is_realtime_workdir(workdir):
        _check_presets(workdir, path)
        return
    from vvtrt.runtime.audio_io import read_voice

    for clip in sorted(p for p in path.iterdir() if p.suffix.lower() == ".wav" and p.is_file()):
        try:
            read_voice(clip)
        except VvtrtError as exc:
            raise InputError(f"--voices: clip {clip.name} cannot be used ({exc}): fix or remove it") from None


def _check_presets(workdir, path: Path) -> None:
    """A Realtime work dir's `--voices`: at least one preset that loads, each fitting the model."""
    from vvtrt.realtime.voices import list_voices, read_voice
    from vvtrt.workdir import Workdir

    found = list_voices(path)
    if not found:
        raise InputError(f"--voices {path} holds no Realtime voice that loads (.safetensors written by `vvtrt voices "
                         "import` or `vvtrt voices make`; `vvtrt voices list DIR` shows them)")
    cfg = Workdir.open(workdir).info()
    for v in found:
        read_voice(v["file"], cfg)


def model_tag(workdir, backend: str, device: str | None, dtype: str | None) -> str:
    """A short hash of what an embedding depends on: the work dir's model/export settings and the runtime."""
    meta = Path(workdir, "workdir.json")
    data = meta.read_bytes() if meta.is_file() else b""
    # "own-length": clips are encoded at their own length (older entries were padded first)
    return hashlib.sha256(data + f"|{backend}|{device}|{dtype}|own-length".encode()).hexdigest()[:12]
