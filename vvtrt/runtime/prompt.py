"""The VibeVoice prompt: token ids built exactly as transformers' `VibeVoiceProcessor` builds them from
its chat template (shared doc §2), for a parsed :class:`~vvtrt.runtime.script.Script`.

Rendered as text, with `[bos]`/`[pad]`/`[eos]` for `audio_bos`/`audio_token`/`audio_eos`::

     Transform the text provided by various speakers into speech output, utilizing the distinct voice of each respective speaker.\\n
     Voice input:\\n                                   (only when voices are given)
     Speaker 1:[bos][pad]*n1[eos]\\n                    (one per speaker, first-appearance order)
     Text input:\\n
     Speaker 1: Hello there.\\n                         (one per turn)
     Speech output:\\n[bos]

Every line starts with a space. Speaker numbers are the script's own, in both sections (the template
renders the message role verbatim). The processor tokenizes the whole rendered string; its tokenizer
splits at the special tokens and encodes each text chunk between them separately, so we encode exactly
those chunks (never smaller pieces: BPE merges across "?\\n" etc. would differ) and insert the special
tokens by id.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from vvtrt.errors import InputError, ModelError
from vvtrt.runtime.script import Script

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (" Transform the text provided by various speakers into speech output, utilizing the "
                 "distinct voice of each respective speaker.\n")
VOICE_HEADER = " Voice input:\n"
TEXT_HEADER = " Text input:\n"
OUTPUT_HEADER = " Speech output:\n"


@dataclass(frozen=True)
class Prompt:
    """Prompt token ids and where the voice latents go.

    `voice_slots[i] = (start, n)`: speaker `speakers[i]`'s voice occupies `ids[start:start+n]` (all
    `audio_token`), right after its `audio_bos`. `speakers` is the script's first-appearance order.
    """

    ids: tuple[int, ...]
    voice_slots: tuple[tuple[int, int], ...]
    speakers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_voice_tokens(self) -> int:
        return sum(n for _, n in self.voice_slots)


def frames_for_samples(n_samples: int, hop: int = 3200) -> int:
    """Number of latent frames (= `audio_token` placeholders) for a clip of `n_samples` valid samples:
    `ceil(n_samples / hop)`, as the processor counts them from its padding mask."""
    return math.ceil(n_samples / hop)


def render_prompt_text(script: Script, voice_frames: list[int] | None = None,
                       bos: str = "<|vision_start|>", pad: str = "<|vision_pad|>",
                       eos: str = "<|vision_end|>") -> str:
    """The prompt as one string with the special tokens spelled out (for logs and debugging)."""
    return "".join(seg if isinstance(seg, str) else {-1: bos, -2: pad, -3: eos}[seg[0]] * seg[1]
                   for seg in _segments(script, _check_frames(script, voice_frames)))


def _segments(script: Script, voice_frames: list[int] | None):
    """The template as a sequence of text strings and (marker, count) special-token runs, where the
    marker is -1 (audio_bos), -2 (audio_token) or -3 (audio_eos)."""
    yield SYSTEM_PROMPT
    if voice_frames is not None:
        yield VOICE_HEADER
        for speaker, n in zip(script.speakers, voice_frames):
            yield f" Speaker {speaker}:"
            yield (-1, 1)
            yield (-2, n)
            yield (-3, 1)
            yield "\n"
    yield TEXT_HEADER
    for turn in script.turns:
        yield f" Speaker {turn.speaker}: {turn.text}\n"
    yield OUTPUT_HEADER
    yield (-1, 1)


def _check_frames(script: Script, voice_frames) -> list[int] | None:
    if voice_frames is None:
        return None
    frames = list(voice_frames)
    if len(frames) != script.num_speakers:
        raise InputError(f"got {len(frames)} voice clip(s) for {script.num_speakers} speaker(s) "
                         f"({', '.join(map(str, script.speakers))}): give one voice per speaker, in order "
                         "of first appearance, or none")
    for i, n in enumerate(frames):
        if int(n) != n or n < 1:
            raise InputError(f"voice {i + 1} (Speaker {script.speakers[i]}) has {n} frames: "
                             "each voice clip must contain at least one sample")
    return [int(n) for n in frames]


def build_prompt(script: Script, tokenizer, info, voice_frames: list[int] | None = None) -> Prompt:
    """Token ids of the §2 template for `script`.

    Args:
        script: the parsed script.
        tokenizer: a :class:`~vvtrt.model.text_tokenizer.TextTokenizer` (`encode(text) -> ids`, no
            special tokens added).
        info: a `ModelInfo` (or anything with `audio_bos_token_id`, `audio_eos_token_id`,
            `audio_token_id` and optionally `vocab`).
        voice_frames: `ceil(len / hop)` of each speaker's voice clip, in `script.speakers` order;
            None for no voice section.
    """
    frames = _check_frames(script, voice_frames)
    special = {-1: info.audio_bos_token_id, -2: info.audio_token_id, -3: info.audio_eos_token_id}
    reserved = set(special.values())
    vocab = getattr(info, "vocab", None)

    ids: list[int] = []
    slots: list[tuple[int, int]] = []
    pending: list[str] = []  # text waiting to be encoded as one chunk

    def flush() -> None:
        if not pending:
            return
        chunk = "".join(pending)
        pending.clear()
        enc = [int(i) for i in tokenizer.encode(chunk)]
        bad = reserved.intersection(enc)
        if bad:
            raise InputError(f"the script text encodes to reserved audio token id(s) {sorted(bad)} "
                             "(e.g. a literal '<|vision_pad|>'): remove such markup from the script")
        if vocab is not None and enc and (max(enc) >= vocab or min(enc) < 0):
            raise ModelError(f"the text tokenizer produced id {max(enc)} outside the model's vocabulary "
                             f"of {vocab}: the tokenizer does not belong to this model")
        ids.extend(enc)

    for seg in _segments(script, frames):
        if isinstance(seg, str):
            pending.append(seg)
            continue
        flush()
        marker, count = seg
        if marker == -2:
            slots.append((len(ids), count))
        ids.extend([special[marker]] * count)
    flush()
    prompt = Prompt(tuple(ids), tuple(slots), script.speakers)
    log.debug("prompt: %d tokens, %d voice slots %s", len(prompt), len(slots), slots)
    return prompt


def check_context(prompt: Prompt, max_len: int, max_new_tokens: int = 0) -> None:
    """Raise :class:`InputError` when the prompt plus `max_new_tokens` generated frames does not fit in
    `max_len` positions (the model context or the KV-cache bucket)."""
    need = len(prompt) + max(int(max_new_tokens), 0)
    if need > max_len:
        raise InputError(
            f"script too long: {len(prompt)} prompt tokens ({prompt.num_voice_tokens} of them voice "
            f"frames) + {max_new_tokens} new tokens = {need} exceeds the context/KV bucket of {max_len}; "
            "shorten the script or the voice clips, lower the max new tokens, or use a larger KV bucket")
