"""The VibeVoice prompt: token ids built as Microsoft's original `VibeVoiceProcessor` builds them (the
processor the released weights were trained and demoed with), for a parsed
:class:`~vvtrt.runtime.script.Script`.

Rendered as text, with `[bos]`/`[pad]`/`[eos]` for `audio_bos`/`audio_token`/`audio_eos`::

     Transform the text provided by various speakers into speech output, utilizing the distinct voice of each respective speaker.\\n
     Voice input:\\n                                   (only when voices are given)
     Speaker 0:[bos][pad]*n0[eos]\\n                    (one per voice, numbered by voice index)
     Text input:\\n
     Speaker 0: Hello there.\\n                         (one per turn)
     Speech output:\\n[bos]

Every line starts with a space. Speakers are numbered 0, 1, ... in order of first appearance, whatever
numbers the script uses, and voice `i` belongs to the `i`-th speaker to appear: a script written 1-based
("Speaker 1:", "Speaker 2:", as Microsoft's demos are) speaks as ` Speaker 0:` and ` Speaker 1:`, as the
original processor renders it. Each voice has exactly `ceil(samples / 3200)` `audio_token`s, its own
length, and is encoded at that length (`vvtrt.components.conv_stream.encode_at_own_length`). See
:data:`PORT_DEPARTURES` for where this departs from transformers' port and from the letter of the original
processor.

The text between special tokens is encoded chunk by chunk without special tokens; the chunks end at the
same pre-tokenizer boundaries (a newline, then a space-led word) as the original's separately encoded
pieces, so the ids are the same (never smaller pieces: BPE merges across "?\\n" etc. would differ).
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
    `audio_token`), right after its `audio_bos`. `speakers` is the script's first-appearance order, with
    the numbers the script uses (in the prompt, `speakers[i]` is ` Speaker {i}:`).
    """

    ids: tuple[int, ...]
    voice_slots: tuple[tuple[int, int], ...]
    speakers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_voice_tokens(self) -> int:
        return sum(n for _, n in self.voice_slots)


# Where the prompt departs from transformers' port (and from the letter of Microsoft's processor), and why;
# parity reports carry these lines (`vvtrt parity`, report key "departures").
PORT_DEPARTURES = (
    "speaker numbering: speakers are renumbered 0, 1, ... in order of first appearance and the voice section "
    "is numbered by voice index, as Microsoft's original processor and demo do for their 1-based scripts "
    "(\"Speaker 1:\" is rendered \" Speaker 0:\"); transformers' port renders the script's numbers verbatim, which "
    "is other prompt text than the released weights were trained and demoed with. For gapped or out-of-order "
    "numbering (\"Speaker 1\" and \"Speaker 3\"; \"Speaker 2\" first) the original only subtracts 1 when no "
    "speaker is 0, so its turns then carry numbers its voice section does not use; vvtrt keeps every turn "
    "on its own voice's number instead",
    "voice clips at their own length: each voice clip is encoded as it is, every causal conv padding its own "
    "input (a strided conv's input right-padded to a multiple of its stride), as Microsoft's original encodes "
    "it; transformers' feature extractor first zero-pads the clip to a multiple of 3200 samples, which changes "
    "the last voice latent of a clip whose length is not such a multiple (rel-L2 0.23 on a 26,400-sample clip). "
    "Both give ceil(samples / 3200) voice frames. The original also pads the shorter clips of a multi-voice "
    "request to the longest one's length (its batch), which touches only their last latent; vvtrt encodes each "
    "clip alone, so a voice's embedding does not depend on the voices it is used with",
    "length cap: without --frames/--max-frames generation stops after 2 x the prompt length in frames "
    "(the original's max_length_times=2), within the largest KV bucket; transformers' port stops only at "
    "generate's max_length / max_new_tokens",
)


def prompt_speaker_numbers(script: Script) -> dict[int, int]:
    """The number each of the script's speakers has in the prompt: its index in order of first appearance
    (which is also the index of its voice)."""
    return {speaker: index for index, speaker in enumerate(script.speakers)}


def frames_for_samples(n_samples: int, hop: int = 3200) -> int:
    """Number of latent frames (= `audio_token` placeholders) for a clip of `n_samples` valid samples:
    `ceil(n_samples / hop)`, as the original processor counts them and as many latents as the acoustic
    encoder gives for a clip of that length."""
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
        for index, n in enumerate(voice_frames):
            yield f" Speaker {index}:"
            yield (-1, 1)
            yield (-2, n)
            yield (-3, 1)
            yield "\n"
    yield TEXT_HEADER
    number = prompt_speaker_numbers(script)
    for turn in script.turns:
        yield f" Speaker {number[turn.speaker]}: {turn.text}\n"
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
    """Token ids of the original processor's template for `script`.

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
