"""Prompt semantics of Microsoft's original processor:
speakers renumbered 0, 1, ... in order of first appearance (1-based scripts speak as " Speaker 0:"), the
voice section numbered by voice index, each voice with exactly ceil(samples / 3200) placeholders.

Expectations are written out literally. They are also checked against an emulation of the original's
documented behaviour (vibevoice/processor/vibevoice_processor.py): `Speaker N: text` lines; every N lowered
by 1 when no speaker is 0; the pieces system prompt, " Voice input:\\n", " Speaker {i}:" + voice tokens +
"\\n" per voice i, " Text input:\\n", " Speaker {N}: {text}\\n" per turn and " Speech output:\\n" encoded
one by one, then speech_start. vvtrt encodes larger chunks; with Qwen2.5's pre-tokenizer split (below) the
ids must be the same."""
from __future__ import annotations

import re

import pytest

from vvtrt.model.text_tokenizer import ByteTokenizer, HFTextTokenizer
from vvtrt.runtime.prompt import PORT_DEPARTURES, build_prompt, frames_for_samples, render_prompt_text
from vvtrt.runtime.script import parse_script

BOS, EOS, TOK = 257, 258, 259  # the tiny preset's audio_bos / audio_eos / audio_token ids
SYSTEM = (" Transform the text provided by various speakers into speech output, utilizing the distinct voice of"
          " each respective speaker.\n")
# Qwen2.5's pre-tokenizer split (its tokenizer.json): BPE merges never cross these boundaries.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")

ONE_BASED = "Speaker 1: Hello there.\nSpeaker 2: Hi! How are you?\nSpeaker 1: Fine."
ZERO_BASED = "Speaker 0: Hello there.\nSpeaker 1: Hi! How are you?\nSpeaker 0: Fine."
GAPPED = "Speaker 1: Hello there.\nSpeaker 3: Hi! How are you?\nSpeaker 1: Fine."
SECOND_FIRST = "Speaker 2: Hello there.\nSpeaker 1: Hi! How are you?\nSpeaker 2: Fine."
# What every one of these scripts is spoken as, with voices of 2 and 1 frames (<b> audio_bos, <p>
# audio_token, <e> audio_eos).
RENDERED = (SYSTEM + " Voice input:\n Speaker 0:<b><p><p><e>\n Speaker 1:<b><p><e>\n Text input:\n"
            " Speaker 0: Hello there.\n Speaker 1: Hi! How are you?\n Speaker 0: Fine.\n Speech output:\n<b>")
RENDERED_NO_VOICES = (SYSTEM + " Text input:\n Speaker 0: Hello there.\n Speaker 1: Hi! How are you?\n"
                      " Speaker 0: Fine.\n Speech output:\n<b>")


class _Info:
    vocab = 512
    audio_bos_token_id, audio_eos_token_id, audio_token_id = BOS, EOS, TOK


def literal_ids(rendered: str) -> list[int]:
    """A rendered prompt as the ids the byte tokenizer gives: UTF-8 bytes, special markers by id."""
    out = []
    for part in re.split(r"(<b>|<p>|<e>)", rendered):
        out += {"<b>": [BOS], "<p>": [TOK], "<e>": [EOS]}.get(part, list(part.encode()))
    return out


def original_ids(script: str, voice_frames, encode) -> list[int]:
    """The ids Microsoft's processor builds (module doc), with `encode(text) -> ids`."""
    turns = [(int(m[1]), m[2].strip()) for m in re.finditer(r"(?im)^Speaker\s+(\d+)\s*:\s*(.*)$", script)]
    shift = 1 if min(n for n, _ in turns) > 0 else 0
    ids = encode(SYSTEM)
    if voice_frames:
        ids += encode(" Voice input:\n")
        for i, n in enumerate(voice_frames):
            ids += encode(f" Speaker {i}:") + [BOS] + [TOK] * n + [EOS] + encode("\n")
    ids += encode(" Text input:\n")
    for n, text in turns:
        ids += encode(f" Speaker {n - shift}: {text}\n")
    return ids + encode(" Speech output:\n") + [BOS]


@pytest.fixture(scope="module")
def qwen_like():
    """A byte-level BPE with Qwen2.5's pre-tokenizer split and merges that would join text across the
    original's piece boundaries ("\\n" + " ", ".\\n", " S"...) if the split allowed it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("Ċ", "Ġ"), (".", "Ċ"), ("?", "Ċ"), (":", "Ċ"), ("Ġ", "S"), ("ĠS", "p"), ("ĠSp", "e"), ("Ġ", "0"),
              ("Ġ", "H"), ("e", "r"), ("Ġ", "i")]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({a + b: 300 + i for i, (a, b) in enumerate(merges)})  # clear of the audio ids 256-259
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return HFTextTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok))


@pytest.mark.parametrize("script", [ONE_BASED, ZERO_BASED, GAPPED, SECOND_FIRST])
@pytest.mark.parametrize("voices", [[2, 1], None])
def test_speakers_are_renumbered_in_order_of_first_appearance(script, voices):
    parsed = parse_script(script)
    rendered = RENDERED if voices else RENDERED_NO_VOICES
    assert render_prompt_text(parsed, voices, bos="<b>", pad="<p>", eos="<e>") == rendered
    prompt = build_prompt(parsed, ByteTokenizer(), _Info(), voices)
    assert list(prompt.ids) == literal_ids(rendered)
    assert prompt.speakers == parsed.speakers  # the script's own numbers, first-appearance order


def test_one_and_zero_based_scripts_match_the_original_processor(qwen_like):
    """For the numbering the original handles (1..n or 0..n-1, in order of first appearance) the ids are
    the original processor's, with the byte tokenizer and with a merging Qwen-like BPE."""
    for tokenizer in (ByteTokenizer(), qwen_like):
        for script in (ONE_BASED, ZERO_BASED):
            for voices in ([2, 1], None):
                ours = build_prompt(parse_script(script), tokenizer, _Info(), voices).ids
                assert list(ours) == original_ids(script, voices, tokenizer.encode), (script, voices)
    merged = build_prompt(parse_script(ONE_BASED), qwen_like, _Info(), [2, 1]).ids
    assert len(merged) < len(literal_ids(RENDERED))  # the BPE did merge


def test_gapped_and_reordered_numbering_departs_from_the_letter_of_the_original():
    """The original only lowers every number by 1 when no speaker is 0: "Speaker 1"/"Speaker 3" would be
    spoken as " Speaker 0"/" Speaker 2" while its voice section says " Speaker 0"/" Speaker 1". vvtrt keeps
    each turn on its voice's number, and the parity report says so."""
    enc = ByteTokenizer().encode
    assert original_ids(GAPPED, [2, 1], enc) == literal_ids(RENDERED.replace(
        " Speaker 1: Hi!", " Speaker 2: Hi!"))
    assert original_ids(SECOND_FIRST, [2, 1], enc) == literal_ids(RENDERED.replace(
        " Speaker 0: Hello", " Speaker 1: Hello").replace(" Speaker 1: Hi!", " Speaker 0: Hi!").replace(
        " Speaker 0: Fine", " Speaker 1: Fine"))
    for script in (GAPPED, SECOND_FIRST):
        assert list(build_prompt(parse_script(script), ByteTokenizer(), _Info(), [2, 1]).ids) == literal_ids(RENDERED)
    assert any(d.startswith("speaker numbering:") and "gapped" in d for d in PORT_DEPARTURES)
    assert any(d.startswith("length cap:") and "2 x the prompt" in d for d in PORT_DEPARTURES)


def test_each_voice_has_its_own_number_of_frames():
    """ceil(samples / 3200) placeholders per voice, at the voice's own place in the voice section."""
    assert [frames_for_samples(n) for n in (1, 3199, 3200, 3201, 9601)] == [1, 1, 1, 2, 4]
    script = parse_script("Speaker 1: a\nSpeaker 2: b\nSpeaker 3: c")
    frames = [frames_for_samples(n) for n in (9601, 1, 3201)]
    prompt = build_prompt(script, ByteTokenizer(), _Info(), frames)
    assert [n for _, n in prompt.voice_slots] == [4, 1, 2]
    for i, (start, n) in enumerate(prompt.voice_slots):
        label = list(f" Speaker {i}:".encode())
        assert list(prompt.ids[start - 1 - len(label):start - 1]) == label
        assert prompt.ids[start - 1] == BOS and set(prompt.ids[start:start + n]) == {TOK}
        assert prompt.ids[start + n] == EOS


def test_generation_cap_is_twice_the_prompt_within_the_kv_buckets():
    """Without --frames/--max-frames a run may make 2 x the prompt length in frames (the original's
    max_length_times=2: a 200-token prompt ran 400 frames), never more than the largest KV bucket holds."""
    from types import SimpleNamespace

    from vvtrt.components.specs import ExportOptions
    from vvtrt.runtime.synthesizer import Synthesizer

    synth = SimpleNamespace(options=ExportOptions(kv_buckets=(512, 1024, 2048)))
    limit = lambda n, frames=None, max_frames=None: Synthesizer.frame_limit(synth, n, frames, max_frames)  # noqa: E731
    assert [limit(1), limit(200), limit(682), limit(700), limit(1500)] == [2, 400, 1364, 1347, 547]
    assert limit(200, frames=7) == 7 and limit(200, max_frames=9) == 9  # the user's budget wins
