"""Re-create the bench's voice clips (vvtrt/bench/data/voice_*.wav): two short synthetic speakers.

    apt-get install -y espeak-ng      # the synthesiser (GPL; the clips are its output, not its code)
    python benchmarks/make_bench_voices.py

espeak-ng speaks at 22050 Hz; each clip is trimmed of leading/trailing silence, cut to at most
MAX_SECONDS with a 20 ms fade-out, resampled to 24 kHz with vvtrt's own windowed-sinc resampler
(`vvtrt.runtime.audio_io.resample_audio`), peak-normalised to 0.9 and written as 16-bit PCM mono.
The clips only have to be speech-like: the bench measures cost, and cost depends on their length.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from vvtrt.runtime.audio_io import SAMPLE_RATE, resample_audio

OUT = Path(__file__).resolve().parents[1] / "vvtrt" / "bench" / "data"
MAX_SECONDS = 2.8
CLIPS = {  # file -> (espeak-ng voice, words per minute, text)
    "voice_1.wav": ("en-us+m3", 165, "Hello and welcome back. Today we talk about fast speech."),
    "voice_2.wav": ("en-us+f3", 170, "Thanks for having me. I brought numbers to share."),
}


def _espeak(voice: str, wpm: int, text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
        data, sr = sf.read(str(wav), dtype="float32")
    return (data.mean(axis=1) if data.ndim > 1 else data), sr


def _trim(x: np.ndarray, sr: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    x = x[loud[0]:loud[-1] + 1]
    x = x[:int(MAX_SECONDS * sr)].copy()
    fade = int(0.02 * sr)
    x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return x


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (voice, wpm, text) in CLIPS.items():
        x, sr = _espeak(voice, wpm, text)
        y = resample_audio(_trim(x, sr), sr, SAMPLE_RATE)
        y = (0.9 * y / np.abs(y).max()).astype(np.float32)
        sf.write(str(OUT / name), y, SAMPLE_RATE, subtype="PCM_16")
        print(f"{name}: {len(y) / SAMPLE_RATE:.2f} s, {(OUT / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
