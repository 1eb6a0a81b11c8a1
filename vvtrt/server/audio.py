"""Audio encodings the server sends: 16-bit PCM, a streaming WAV header, and whole files via libsndfile.

`pcm` is raw int16 little-endian, 24 kHz mono (OpenAI's `pcm`). A streamed WAV starts with a header whose
RIFF and data sizes are 0xFFFFFFFF ("unknown length"), which browsers, ffmpeg and soundfile accept.
mp3 and opus are offered only when the installed libsndfile can write them. `opus` (Ogg) is streamed too:
libsndfile writes its pages in order, so `StreamEncoder` hands them out as they are written; flac and mp3
go back to their headers when the file is closed, so they are sent whole.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from vvtrt.errors import InputError
from vvtrt.serving.api import SAMPLE_RATE

OPEN_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Encoding:
    name: str
    media_type: str
    sf_format: str | None      # soundfile (format, subtype); None for raw pcm
    sf_subtype: str | None
    streamable: bool


ENCODINGS = {
    "wav": Encoding("wav", "audio/wav", "WAV", "PCM_16", True),
    "pcm": Encoding("pcm", "audio/pcm", None, None, True),
    "flac": Encoding("flac", "audio/flac", "FLAC", "PCM_16", False),
    "mp3": Encoding("mp3", "audio/mpeg", "MP3", "MPEG_LAYER_III", False),
    "opus": Encoding("opus", "audio/ogg", "OGG", "OPUS", True),
}


def libsndfile_can_write(enc: Encoding) -> bool:
    import soundfile as sf

    if enc.sf_format is None:
        return True
    try:
        return enc.sf_subtype in sf.available_subtypes(enc.sf_format)
    except Exception:  # an old soundfile without the format at all
        return False


def supported_formats() -> list[str]:
    return [n for n, e in ENCODINGS.items() if libsndfile_can_write(e)]


def pick_encoding(name: str, stream: bool) -> Encoding:
    """The encoding for `response_format`, or an InputError saying which formats this server offers."""
    enc = ENCODINGS.get(str(name).lower())
    if enc is None:
        raise InputError(f"response_format {name!r} is not supported: use one of {', '.join(supported_formats())}")
    if not libsndfile_can_write(enc):
        import soundfile as sf

        raise InputError(f"response_format {enc.name!r} needs a libsndfile with {enc.sf_format}/{enc.sf_subtype} "
                         f"support; this server's libsndfile {sf.__libsndfile_version__} lacks it: use "
                         f"{', '.join(supported_formats())}")
    if stream and not enc.streamable:
        streamable = ", ".join(n for n, e in ENCODINGS.items() if e.streamable)
        raise InputError(f"response_format {enc.name!r} cannot be streamed: use {streamable} with stream=true, "
                         "or stream=false")
    return enc


def to_pcm16(audio: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] as int16 little-endian bytes, quantized as libsndfile writes PCM_16
    (floor(x * 32768), clipped), so `pcm`, streamed `wav` and whole `wav`/`flac` carry identical samples."""
    s = np.floor(np.asarray(audio, dtype=np.float32) * np.float32(32768.0))  # +-inf stay +-inf: clipped below
    np.clip(s, -32768, 32767, out=s)
    nan = np.isnan(s)
    if nan.any():  # NaN is silence (cheaper than np.nan_to_num, which this path ran for every frame)
        s[nan] = 0.0
    return s.astype("<i2").tobytes()


def wav_header(data_bytes: int = OPEN_LENGTH, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte PCM16 mono WAV header; the default leaves the length open for streaming."""
    riff = OPEN_LENGTH if data_bytes == OPEN_LENGTH else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", data_bytes))


def encode_file(audio: np.ndarray, enc: Encoding, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The whole clip in `enc` (non-streaming responses)."""
    if enc.sf_format is None:
        return to_pcm16(audio)
    import soundfile as sf

    # 16-bit formats get the very samples `pcm` sends (libsndfile's own float->int rounding differs by format)
    data = np.frombuffer(to_pcm16(audio), "<i2") if enc.sf_subtype == "PCM_16" else np.asarray(audio, np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=enc.sf_format, subtype=enc.sf_subtype)
    return buf.getvalue()


class _Sink(io.RawIOBase):
    """A write-only file for libsndfile whose bytes are taken as they arrive (a write before what was taken
    already, e.g. a header rewritten at close, is dropped)."""

    def __init__(self):
        super().__init__()
        self.buf, self.pos, self.taken = bytearray(), 0, 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        end = self.pos + len(b)
        if self.pos >= self.taken:
            self.buf.extend(b"\0" * max(0, end - len(self.buf)))
            self.buf[self.pos:end] = b
        self.pos = end
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else len(self.buf) + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out, self.taken = bytes(self.buf[self.taken:]), len(self.buf)
        return out


class StreamEncoder:
    """An encoded stream in `enc` (Ogg Opus) fed a frame at a time: `feed` returns the bytes ready so far
    (often none until a page is full), `close` the rest."""

    def __init__(self, enc: Encoding, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        self._sink = _Sink()
        self._file = sf.SoundFile(self._sink, "w", sample_rate, 1, format=enc.sf_format, subtype=enc.sf_subtype)

    def feed(self, audio: np.ndarray) -> bytes:
        self._file.write(np.asarray(audio, np.float32))
        return self._sink.take()

    def close(self) -> bytes:
        if not self._file.closed:
            self._file.close()
        return self._sink.take()
