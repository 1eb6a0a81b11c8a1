"""Scripts, text tokenizers, prompts and audio I/O (CPU, fast).

The prompt and the voice normalisation are checked against transformers' own `VibeVoiceProcessor`,
built offline from a byte-level stand-in tokenizer (specials at the tiny preset's ids) and the chat
template that transformers' VibeVoice conversion script writes into converted checkpoints
(`chat_template.jinja`; copied below verbatim apart from `\\n` escapes).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from vvtrt.components.info import ModelInfo
from vvtrt.errors import InputError, ModelError, WorkdirError
from vvtrt.model.resolve import ModelSource
from vvtrt.model.text_tokenizer import ByteTokenizer, HFTextTokenizer, TextTokenizer, load_text_tokenizer
from vvtrt.runtime.audio_io import WavStreamWriter, prepare_voice, read_voice, resample_audio, write_wav
from vvtrt.runtime.prompt import build_prompt, check_context, render_prompt_text
from vvtrt.runtime.script import MAX_SCRIPT_BYTES, Script, Turn, load_script, parse_script, read_script_file

SR = 24000
PAD, BOS, EOS, TOK = 256, 257, 258, 259  # tiny preset: pad/eos, audio_bos, audio_eos, audio_token

CHAT_TEMPLATE = """{%- set system_prompt = system_prompt | default(" Transform the text provided by various speakers into speech output, utilizing the distinct voice of each respective speaker.\\n") -%}
{{ system_prompt -}}
{%- set audio_bos_token = audio_bos_token | default("<|vision_start|>") %}
{%- set audio_eos_token = audio_eos_token | default("<|vision_end|>") %}
{%- set audio_diffusion_token = audio_diffusion_token | default("<|vision_pad|>") %}
{%- set ns = namespace(speakers_with_audio="") %}
{%- for message in messages %}
    {%- set role = message['role'] %}
    {%- set content = message['content'] %}
    {%- set has_audio = content | selectattr('type', 'equalto', 'audio') | list | length > 0 %}
    {%- if has_audio and role not in ns.speakers_with_audio %}
        {%- set ns.speakers_with_audio = ns.speakers_with_audio + role + "," %}
    {%- endif %}
{%- endfor %}

{%- if ns.speakers_with_audio %}
{{ " Voice input:\\n" }}
{%- for speaker in ns.speakers_with_audio.rstrip(',').split(',') %}
{%- if speaker %}
 Speaker {{ speaker }}:{{ audio_bos_token }}{{ audio_diffusion_token }}{{ audio_eos_token }}{{ "\\n" }}
{%- endif %}
{%- endfor %}
{%- endif %}
 Text input:{{ "\\n" }}

{%- for message in messages %}
    {%- set role = message['role'] %}
    {%- set text_items = message['content'] | selectattr('type', 'equalto', 'text') | list %}
    {%- for item in text_items %}
 Speaker {{ role }}: {{ item['text'] }}{{ "\\n" }}
    {%- endfor %}
{%- endfor %}
 Speech output:{{ "\\n" }}{{ audio_bos_token }}"""


def make_info(**ids) -> ModelInfo:
    """A ModelInfo with the tiny preset's token ids (other fields are irrelevant here)."""
    vals = dict(vocab=512, context=4096, hop=3200, pad_token_id=PAD, eos_token_id=PAD,
                audio_bos_token_id=BOS, audio_eos_token_id=EOS, audio_token_id=TOK)
    vals.update(ids)
    kw = {}
    for f in dataclasses.fields(ModelInfo):
        kw[f.name] = vals.get(f.name, () if "tuple" in str(f.type) else 0)
    return ModelInfo(**kw)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what a ByteLevel pre-tokenizer maps bytes to)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# "?\n", ".\n", "\n " (spans the template's line joins), " S"; in GPT-2's byte characters.
MERGES = [("?", "\u010a"), (".", "\u010a"), ("\u010a", "\u0120"), ("\u0120", "S")]


def make_hf_tokenizer(merges=()):
    """A transformers fast tokenizer whose ids are the UTF-8 bytes (plus optional BPE merges at ids 260+),
    with Qwen's special token strings at the tiny preset's ids. Without merges it tokenizes exactly like
    ByteTokenizer; with merges, encoding "?" and "\n" separately differs from encoding "?\n"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: b for b, c in _bytes_to_unicode().items()}
    specials = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"]
    vocab.update({s: PAD + i for i, s in enumerate(specials)})
    vocab.update({a + b: PAD + len(specials) + i for i, (a, b) in enumerate(merges)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], pad_token=specials[0])


def make_processor(tokenizer):
    from transformers import VibeVoiceProcessor
    from transformers.models.vibevoice_acoustic_tokenizer import VibeVoiceAcousticTokenizerFeatureExtractor

    return VibeVoiceProcessor(VibeVoiceAcousticTokenizerFeatureExtractor(), tokenizer, chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return make_hf_tokenizer()


@pytest.fixture(scope="module")
def stand_ins(hf_tokenizer):
    """(our tokenizer, transformers processor) pairs: the byte stand-in, and a BPE with merges."""
    merging = make_hf_tokenizer(MERGES)
    return {"bytes": (ByteTokenizer(), make_processor(hf_tokenizer)),
            "merges": (HFTextTokenizer(merging), make_processor(merging))}


def clip(n: int, seed: int, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# -- scripts ------------------------------------------------------------------------------------------
def test_parse_script_turns_and_speakers():
    s = parse_script("\r\nSpeaker 2: Hello there.\r\n\n  speaker 1 :Hi!  \nSpeaker2: Bye\n")
    assert s.turns == (Turn(2, "Hello there."), Turn(1, "Hi!"), Turn(2, "Bye"))
    assert s.speakers == (2, 1) and s.num_speakers == 2
    assert parse_script("Speaker 0: a\nSpeaker 1: b").speakers == (0, 1)  # 0-based kept as written
    assert parse_script(s) is s


def test_parse_script_plain_text_and_continuations():
    # plain text is Speaker 0, as in transformers' VibeVoice examples
    assert parse_script("  Just read this.\n\nAnd this. ") == Script((Turn(0, "Just read this. And this."),), (0,))
    assert parse_script("hi", default_speaker=1).turns == (Turn(1, "hi"),)
    s = parse_script("Speaker 1: one\n  two\nSpeaker 3: three\nfour")
    assert s.turns == (Turn(1, "one two"), Turn(3, "three four"))
    # "Speaker" not followed by an id token and a colon is ordinary text.
    assert parse_script("Speakers of the house: order!").turns[0].text == "Speakers of the house: order!"


@pytest.mark.parametrize("text, needle", [
    ("", "empty"), (" \n\t\n", "empty"),
    ("Speaker 1:", "no text"), ("Speaker 1: a\nSpeaker 2:   ", "line 2"),
    ("Speaker X: hello", "malformed"), ("Speaker: hello", "malformed"), ("Speaker -1: hi", "malformed"),
    ("intro\nSpeaker 1: hi", "line 1"),
    ("\n".join(f"Speaker {i}: t" for i in range(5)), "at most 4"),
])
def test_parse_script_errors(text, needle):
    with pytest.raises(InputError, match=needle) as exc:
        parse_script(text)
    assert "\n" not in str(exc.value)


def test_read_script_file(tmp_path):
    p = tmp_path / "s.txt"
    p.write_bytes("\ufeffSpeaker 1: héllo\n".encode())
    assert read_script_file(p) == "Speaker 1: héllo\n"
    assert load_script(p).turns == (Turn(1, "héllo"),)
    with pytest.raises(InputError, match="not found"):
        read_script_file(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="directory"):
        read_script_file(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Speaker 1: caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8.*0xe9"):
        read_script_file(bad)
    (tmp_path / "empty.txt").write_text("Speaker X: hi")
    with pytest.raises(InputError, match="empty.txt: script line 1"):
        load_script(tmp_path / "empty.txt")


# -- text tokenizers ----------------------------------------------------------------------------------
def test_byte_tokenizer():
    tok = load_text_tokenizer(ModelSource(preset="tiny"))
    assert isinstance(tok, ByteTokenizer) and isinstance(tok, TextTokenizer)
    assert tok.encode("Hi!") == [72, 105, 33]
    ids = tok.encode(" héllo 世界\n")
    assert ids == list(" héllo 世界\n".encode()) and max(ids) < 256
    assert tok.decode(ids) == " héllo 世界\n"


def test_load_checkpoint_tokenizer(tmp_path, hf_tokenizer):
    hf_tokenizer.save_pretrained(tmp_path / "ok")
    tok = load_text_tokenizer(ModelSource(path=str(tmp_path / "ok")))
    assert isinstance(tok, HFTextTokenizer)
    assert tok.encode(" Speaker 1: é?\n") == list(" Speaker 1: é?\n".encode())  # no special tokens added
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelError, match="none has no tokenizer files"):
        load_text_tokenizer(ModelSource(path=str(tmp_path / "none")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    (tmp_path / "broken" / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    with pytest.raises(ModelError, match="broken"):
        load_text_tokenizer(ModelSource(path=str(tmp_path / "broken")))


# -- prompts ------------------------------------------------------------------------------------------
SCRIPTS = [
    ("Hello, nice to meet you. How are you?", None),
    ("Speaker 1: Hi there? ¿Qué tal?\nSpeaker 3: Yo.\nSpeaker 1: Bye!", [7000, 3200]),
    ("Speaker 0: a\nSpeaker 1: b\nSpeaker 2: c\nSpeaker 3: d\nSpeaker 0: e", [1, 3201, 9600, 20000]),
    ("Speaker 2: only text, two speakers\nSpeaker 1: ok", None),
]


@pytest.mark.parametrize("kind", ["bytes", "merges"])
@pytest.mark.parametrize("text, lengths", SCRIPTS)
def test_build_prompt_matches_transformers_processor(stand_ins, kind, text, lengths):
    tokenizer, processor = stand_ins[kind]
    script = parse_script(text)
    voices = [clip(n, i) for i, n in enumerate(lengths)] if lengths else None
    conv, seen = [], set()
    for t in script.turns:
        content = [{"type": "text", "text": t.text}]
        if voices and t.speaker not in seen:
            content.append({"type": "audio", "audio": voices[script.speakers.index(t.speaker)]})
        seen.add(t.speaker)
        # transformers renders the role verbatim; vvtrt renumbers as Microsoft's original (first appearance)
        conv.append({"role": str(script.speakers.index(t.speaker)), "content": content})
    ref = processor.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt")

    frames = [math.ceil(n / 3200) for n in lengths] if lengths else None
    prompt = build_prompt(script, tokenizer, make_info(), frames)
    assert list(prompt.ids) == ref["input_ids"][0].tolist()
    assert kind == "bytes" or max(prompt.ids[:-1]) > TOK  # merged tokens (ids >= 260) were produced
    assert prompt.speakers == script.speakers
    assert len(prompt.voice_slots) == (len(lengths) if lengths else 0)
    for (start, n), f in zip(prompt.voice_slots, frames or []):
        assert n == f and prompt.ids[start - 1] == BOS and prompt.ids[start + n] == EOS
        assert set(prompt.ids[start:start + n]) == {TOK}
    assert prompt.ids.count(TOK) == prompt.num_voice_tokens
    # The same voices through prepare_voice match the processor's input_values and frame counts.
    for i, v in enumerate(voices or []):
        padded, n = prepare_voice(v)
        assert n == len(v) == int(ref["padding_mask"][i].sum()) and len(padded) == frames[i] * 3200
        np.testing.assert_allclose(padded, ref["input_values"][i, 0, :len(padded)].numpy(), atol=1e-6, rtol=0)


def test_build_prompt_text_layout():
    """Hand-written expectation of the rendered template (every line starts with a space, the voice
    section is numbered by voice index and the turns renumbered in first-appearance order)."""
    script = parse_script("Speaker 2: Hi.\nSpeaker 1: Yo?")
    text = render_prompt_text(script, [2, 1], bos="<b>", pad="<p>", eos="<e>")
    assert text == (" Transform the text provided by various speakers into speech output, utilizing the distinct"
                    " voice of each respective speaker.\n Voice input:\n Speaker 0:<b><p><p><e>\n"
                    " Speaker 1:<b><p><e>\n Text input:\n Speaker 0: Hi.\n Speaker 1: Yo?\n Speech output:\n<b>")
    prompt = build_prompt(script, ByteTokenizer(), make_info(), [2, 1])
    assert prompt.ids[-1] == BOS and prompt.voice_slots[0][1] == 2


def test_build_prompt_big_ids_and_errors(hf_tokenizer):
    script = parse_script("Speaker 1: hi\nSpeaker 2: yo")
    big = make_info(vocab=151936, audio_bos_token_id=151652, audio_eos_token_id=151653, audio_token_id=151654)
    p = build_prompt(script, ByteTokenizer(), big, [3, 1])
    assert p.ids.count(151654) == 4 and p.ids[-1] == 151652
    with pytest.raises(InputError, match="1 voice clip.*2 speaker"):
        build_prompt(script, ByteTokenizer(), make_info(), [3])
    with pytest.raises(InputError, match="at least one sample"):
        build_prompt(script, ByteTokenizer(), make_info(), [3, 0])
    with pytest.raises(InputError, match="reserved audio token"):
        build_prompt(parse_script("say <|vision_pad|>"), HFTextTokenizer(hf_tokenizer), make_info())
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        build_prompt(script, ByteTokenizer(), make_info(vocab=100))


def test_check_context():
    p = build_prompt(parse_script("hello"), ByteTokenizer(), make_info())
    check_context(p, len(p) + 10, max_new_tokens=10)
    with pytest.raises(InputError, match=f"script too long: {len(p)} prompt tokens .* bucket of {len(p)}"):
        check_context(p, len(p), max_new_tokens=1)


# -- audio --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, scale", [(24000, 0.1), (6400, 3.0), (1234, 1e-3)])
def test_prepare_voice_matches_feature_extractor(n, scale):
    from transformers.models.vibevoice_acoustic_tokenizer import VibeVoiceAcousticTokenizerFeatureExtractor

    x = clip(n, 3, scale)
    x[n // 2] = 40 * scale  # a spike: after -25 dBFS scaling the peak exceeds 1 -> peak normalisation
    ref = VibeVoiceAcousticTokenizerFeatureExtractor()(x, sampling_rate=SR)["input_values"][0, 0].numpy()
    padded, valid = prepare_voice(x)
    assert valid == n and len(padded) % 3200 == 0 and len(padded) == len(ref) < n + 3200
    np.testing.assert_allclose(padded, ref, atol=1e-6, rtol=0)
    assert not padded[n:].any() and np.abs(padded).max() <= 1.0
    assert len(prepare_voice(clip(6400, 0))[0]) == 6400  # an exact multiple is not padded further


@pytest.mark.parametrize("wav, needle", [
    (np.zeros(0, np.float32), "empty"), (np.zeros(5000, np.float32), "silent"),
    (np.array([0.1, np.nan], np.float32), "NaN"), (np.ones((2, 100), np.float32), "mono"),
])
def test_prepare_voice_errors(wav, needle):
    with pytest.raises(InputError, match=needle):
        prepare_voice(wav)


@pytest.mark.parametrize("orig_sr", [16000, 22050, 44100, 48000, 8000, 44101])
def test_resample_keeps_frequency_and_amplitude(orig_sr):
    f, amp, seconds = 1000.0, 0.5, 1.0
    x = amp * np.sin(2 * np.pi * f * np.arange(int(orig_sr * seconds)) / orig_sr)
    y = resample_audio(x, orig_sr, SR)
    assert y.dtype == np.float32 and len(y) == math.ceil(len(x) * SR / orig_sr)
    mid = slice(len(y) // 4, 3 * len(y) // 4)  # away from the zero-padded edges
    spec = np.abs(np.fft.rfft(y[mid] * np.hanning(len(y[mid]))))
    assert abs(np.argmax(spec) * SR / len(y[mid]) - f) < 2 * SR / len(y[mid])
    assert abs(np.sqrt(np.mean(y[mid] ** 2.0)) - amp / np.sqrt(2)) < 1e-4
    expected = amp * np.sin(2 * np.pi * f * np.arange(len(y)) / SR)
    # Exact rational ratios are accurate to float32; 44101 Hz uses a ratio within a few ppm.
    assert np.abs(y[mid] - expected[mid]).max() < (1e-5 if orig_sr != 44101 else 2e-2)


def test_resample_removes_content_above_nyquist():
    x = np.sin(2 * np.pi * 20000 * np.arange(48000) / 48000)  # above the 12 kHz output Nyquist
    assert np.abs(resample_audio(x, 48000, SR)[1000:-1000]).max() < 1e-3


def test_write_read_roundtrip(tmp_path, caplog):
    x = clip(10000, 5, 0.3)
    p = write_wav(tmp_path / "a" / "b" / "out.wav", torch.from_numpy(x)[None, None])
    assert sf.info(str(p)).subtype == "FLOAT" and sf.info(str(p)).samplerate == SR
    np.testing.assert_array_equal(read_voice(p), x)  # lossless
    stereo = np.stack([x, -0.5 * x], axis=1)
    sf.write(str(tmp_path / "st.wav"), stereo, SR, subtype="FLOAT")
    np.testing.assert_allclose(read_voice(tmp_path / "st.wav"), 0.25 * x, atol=1e-7)
    sf.write(str(tmp_path / "48k.wav"), np.repeat(x, 2), 48000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        y = read_voice(tmp_path / "48k.wav")
    assert "resampled from 48000 Hz" in caplog.text and len(y) == len(x)
    with pytest.raises(InputError, match="48000 Hz.*24000 Hz"):
        read_voice(tmp_path / "48k.wav", resample=False)


def test_audio_io_errors(tmp_path):
    with pytest.raises(InputError, match="not found: .*nope.wav"):
        read_voice(tmp_path / "nope.wav")
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(InputError, match="text.wav"):
        read_voice(tmp_path / "text.wav")
    with pytest.raises(InputError, match="directory"):
        read_voice(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="cannot write .*file"):
        write_wav(tmp_path / "file" / "out.wav", np.zeros(10))
    with pytest.raises(WorkdirError, match="is a directory where a file belongs"):
        write_wav(tmp_path, np.zeros(10))
    with pytest.raises(InputError, match="mono"):
        write_wav(tmp_path / "st.wav", np.zeros((2, 10)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_never_written(tmp_path, bad):
    x = np.zeros(3200, np.float32)
    x[7] = bad
    with pytest.raises(InputError, match="1 NaN/infinite sample"):
        write_wav(tmp_path / "o.wav", x)
    assert not list(tmp_path.iterdir())  # not even a temporary
    w = WavStreamWriter(tmp_path / "s.wav")
    w.write(np.zeros(3200, np.float32))
    with pytest.raises(InputError, match="NaN/infinite"):
        w.write(x)
    w.abort()
    assert not list(tmp_path.iterdir())


def test_stream_writer_file_is_valid_after_every_chunk(tmp_path):
    import soundfile as sf

    w = WavStreamWriter(tmp_path / "a" / "s.wav")
    for i in range(3):
        w.write(np.full(3200, 0.1 * i, np.float32))
        assert sf.info(str(tmp_path / "a" / "s.wav")).frames == 3200 * (i + 1)
    w.close()


def test_script_file_size_is_capped(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"Speaker 1: hi\n" * (MAX_SCRIPT_BYTES // 14 + 1))
    with pytest.raises(InputError, match="larger than 1024 KiB"):
        read_script_file(big)
    with pytest.raises(InputError, match="larger than"):
        read_script_file("/dev/zero")


def test_an_hour_long_voice_file_is_refused_before_it_is_read(tmp_path):
    from vvtrt.runtime.audio_io import MAX_VOICE_SECONDS

    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(1000 * (MAX_VOICE_SECONDS + 1), np.int16), 1000, subtype="PCM_16")
    with pytest.raises(InputError, match="601 s long"):
        read_voice(long)
