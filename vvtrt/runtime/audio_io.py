"""Audio in and out: reading voice clips (mono, 24 kHz, resampled if needed), the processor's voice
normalisation, and writing lossless float WAVs.

`normalize_voice` is what every vvtrt backend encodes: the clip at its own length, scaled as Microsoft's
original processor and transformers' `VibeVoiceAcousticTokenizerFeatureExtractor` both scale it (the
extractor's float32 torch ops, so results are bit-identical to it): -25 dBFS RMS, then divided by
(peak + 1e-6) if the peak exceeds 1. The original encodes that clip as it is (each causal conv pads its own
input, `vvtrt.components.conv_stream.encode_at_own_length`); `prepare_voice` adds what transformers'
extractor also does, a right-pad with zeros to a multiple of the hop (3200), for driving transformers'
model (baselines, tests): that padding changes the last voice latent.
"""
from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from vvtrt.errors import InputError, require_file

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
HOP = 3200
TARGET_DB_FS = -25.0
EPS = 1e-6
# Below this RMS (about -120 dBFS) a clip is treated as silence: normalising it would blow noise up 10^5x.
SILENCE_RMS = 1e-6
# Voice prompts are a few seconds (the presets export at most 64 frames, 8.5 s); a longer file is a mistake
# and is refused before it is read into memory.
MAX_VOICE_SECONDS = 600

# Windowed-sinc resampler (the usual "kaiser_best" settings): 64 zero crossings each side, Kaiser beta
# 14.77 (~ -140 dB side lobes), pass band up to 94.76% of the lower Nyquist frequency.
_ZERO_CROSSINGS = 64
_ROLLOFF = 0.9475937167399596
_BETA = 14.769656459379492
_MAX_PHASES = 1024  # bigger reduced ratios are approximated (see resample_audio)


def read_voice(path: str | Path, sample_rate: int = SAMPLE_RATE, resample: bool = True) -> np.ndarray:
    """Read a voice clip as float32 mono at `sample_rate` (channels are averaged).

    A clip at another rate is resampled (windowed sinc, with a warning) or, with `resample=False`,
    rejected. Raises :class:`InputError` naming the path for missing or unreadable files.
    """
    import soundfile as sf

    p = require_file(path, "voice file", "an audio file (wav, flac, ogg, mp3)")
    try:
        info = sf.info(str(p))
        if info.samplerate > 0 and info.frames > MAX_VOICE_SECONDS * info.samplerate:
            raise InputError(f"voice file {p} is {info.frames / info.samplerate:.0f} s long: give a clip of a "
                             f"few seconds (at most {MAX_VOICE_SECONDS} s are read)")
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError/RuntimeError/TypeError
        raise InputError(f"cannot read voice file {p}: not a readable audio file (wav, flac, ogg, mp3) "
                         f"({exc})") from None
    wav = data.mean(axis=1, dtype=np.float64).astype(np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        if not resample:
            raise InputError(f"voice file {p} is sampled at {sr} Hz, the model needs {sample_rate} Hz: "
                             f"convert it (e.g. `ffmpeg -i in.wav -ar {sample_rate} out.wav`) or allow "
                             "resampling")
        log.warning("voice file %s was resampled from %d Hz to %d Hz", p, sr, sample_rate)
        wav = resample_audio(wav, sr, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def _windowed_sinc(tau: np.ndarray, cutoff: float, half: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass with `cutoff` (fraction of the input Nyquist), zero beyond +-half."""
    w = np.i0(_BETA * np.sqrt(np.clip(1.0 - (tau / half) ** 2, 0.0, 1.0))) / np.i0(_BETA)
    return np.where(np.abs(tau) <= half, cutoff * np.sinc(cutoff * tau) * w, 0.0)


def resample_audio(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample a 1-D signal by `new_sr / orig_sr` with a Kaiser-windowed sinc (polyphase, one strided
    float32 `conv1d`; the kernels are computed in float64).

    The output has `ceil(len * new_sr / orig_sr)` samples, output sample m sitting at input position
    `m * orig_sr / new_sr` (sample 0 at time 0). A rate pair whose reduced ratio has a term above 1024
    (e.g. 44101 Hz) uses the nearest ratio with a denominator <= 1024: a rate error of a few ppm
    (thousandths of a semitone), far below audibility.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise InputError(f"bad sample rates for resampling: {orig_sr} -> {new_sr}")
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    if orig_sr == new_sr or x.size == 0:
        return x.copy()
    ratio = Fraction(new_sr, orig_sr)
    if ratio.denominator > _MAX_PHASES or ratio.numerator > _MAX_PHASES:
        approx = ratio.limit_denominator(_MAX_PHASES)
        log.debug("resampling %d -> %d Hz with the ratio %s (%.2e relative error)", orig_sr, new_sr,
                  approx, abs(float(approx / ratio) - 1))
        ratio = approx
    up, down = ratio.numerator, ratio.denominator
    cutoff = _ROLLOFF * min(1.0, up / down)  # relative to the input Nyquist frequency
    half = math.ceil(_ZERO_CROSSINGS / cutoff)  # kernel half-width in input samples
    n_out = math.ceil(x.size * up / down)
    return _resample_polyphase(x, up, down, cutoff, half, n_out)


def _resample_polyphase(x: np.ndarray, up: int, down: int, cutoff: float, half: int,
                        n_out: int) -> np.ndarray:
    """Output `i*up + j` lies at input position `i*down + j*down/up`: kernel row j weights the input
    samples at offsets `-half .. half+down+1` from `i*down`, i.e. one strided conv1d with `up` kernels."""
    import torch

    offsets = np.arange(-half, half + down + 2, dtype=np.float64)
    tau = offsets[None, :] - np.arange(up, dtype=np.float64)[:, None] * down / up  # [up, taps]
    kernels = _windowed_sinc(tau, cutoff, half).astype(np.float32)
    taps = kernels.shape[1]
    blocks = math.ceil(n_out / up)
    right = max(0, (blocks - 1) * down + taps - half - x.size)  # block i reads xp[i*down : i*down+taps]
    xp = torch.from_numpy(np.pad(x, (half, right)))[None, None]  # [1, 1, N']
    k = torch.from_numpy(kernels)[:, None, :]  # [up, 1, taps]
    with torch.no_grad():
        y = torch.nn.functional.conv1d(xp, k, stride=down)[0, :, :blocks]  # [up, blocks]
    return y.T.reshape(-1)[:n_out].numpy().astype(np.float32)


def normalize_voice(wav: np.ndarray) -> np.ndarray:
    """A mono 24 kHz clip normalised as the original processor does, at its own length (float32 `[n]`):
    what the acoustic encoder takes, which gives it `ceil(n / 3200)` latent frames.

    Raises :class:`InputError` for an empty, silent or non-finite clip."""
    import torch

    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        x = np.squeeze(x)
        if x.ndim != 1:
            raise InputError(f"a voice clip must be mono (1-D), got shape {tuple(np.shape(wav))}")
    if x.size == 0:
        raise InputError("the voice clip is empty: give a recording of a few seconds of speech")
    if not np.isfinite(x).all():
        raise InputError("the voice clip contains NaN or infinite samples: re-export the recording")
    t = torch.tensor(x, dtype=torch.float32)
    # Same ops, same order, same dtypes as VibeVoiceAcousticTokenizerFeatureExtractor.__call__.
    rms = torch.sqrt(torch.mean(t**2))
    if float(rms) < SILENCE_RMS:
        raise InputError("the voice clip is silent: give a recording with audible speech")
    t *= 10 ** (TARGET_DB_FS / 20) / (rms + EPS)
    peak = torch.max(torch.abs(t))
    if peak > 1.0:
        t = t / (peak + EPS)
    return t.numpy()


def prepare_voice(wav: np.ndarray, hop: int = HOP) -> tuple[np.ndarray, int]:
    """`normalize_voice`, then right-padded with zeros to a multiple of `hop`, exactly as transformers'
    feature extractor prepares it (for transformers' model; vvtrt encodes the unpadded clip).
    Returns `(padded float32 [ceil(n/hop)*hop], n_valid_samples)`."""
    clip = normalize_voice(wav)
    n = int(clip.size)
    padded = np.zeros(math.ceil(n / hop) * hop, dtype=np.float32)
    padded[:n] = clip
    return padded, n


def _mono_float32(audio) -> np.ndarray:
    if hasattr(audio, "detach"):  # torch tensor
        audio = audio.detach().float().cpu().numpy()
    a = np.asarray(audio, dtype=np.float32)
    a = a.reshape(-1) if a.size == max(a.shape, default=0) else a
    if a.ndim != 1:
        raise InputError(f"write_wav expects mono audio, got shape {a.shape}")
    bad = int(a.size - np.isfinite(a).sum())
    if bad:
        raise InputError(f"the audio has {bad} NaN/infinite sample(s) and was not written: a --cfg far from "
                         "1-3 or a damaged work dir can cause this")
    return a


def write_wav(path: str | Path, audio, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono audio as a 32-bit float WAV (lossless), atomically (`fsio`), creating parent directories.
    Accepts a numpy array or torch tensor of any shape with one non-singleton axis; refuses NaN/inf samples.
    Returns the path written; a disk error (full, read-only) is a one-line `WorkdirError`."""
    import io

    import soundfile as sf

    from vvtrt.fsio import atomic_write_bytes

    a = _mono_float32(audio)
    p = Path(os.fsdecode(path)).expanduser()
    buf = io.BytesIO()
    sf.write(buf, a, int(sample_rate), subtype="FLOAT", format="WAV")
    atomic_write_bytes(p, buf.getbuffer())
    log.info("wrote %s (%.2f s at %d Hz)", p, a.size / sample_rate, sample_rate)
    return p


def _sound_error(path: Path, exc: Exception):
    """soundfile's error as a one-line typed error; libsndfile reports a full disk as "System error", so
    the free space of the target's file system decides whether to say so."""
    from vvtrt.errors import WorkdirError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return WorkdirError(f"no space left on the device writing {path} ({free} bytes free): free some disk "
                            "space or choose another path")
    return InputError(f"cannot write audio to {path} ({text}); choose a writable output path")


class WavStreamWriter:
    """Append mono chunks to a float WAV as they arrive (the file is valid after every chunk). Refuses
    NaN/inf chunks; `abort` removes the partial file."""

    def __init__(self, path, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        self.path = Path(os.fsdecode(path)).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = sf.SoundFile(str(self.path), "w", samplerate=sample_rate, channels=1, subtype="FLOAT",
                                  format="WAV")
        except Exception as exc:  # noqa: BLE001 - OSError, LibsndfileError
            raise _sound_error(self.path, exc) from None

    def write(self, chunk) -> None:
        try:
            self.f.write(_mono_float32(chunk))
            self.f.flush()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _sound_error(self.path, exc) from None

    def close(self) -> None:
        try:
            self.f.close()
        except Exception as exc:  # noqa: BLE001
            raise _sound_error(self.path, exc) from None

    def abort(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - the file goes anyway
            pass
        self.path.unlink(missing_ok=True)
