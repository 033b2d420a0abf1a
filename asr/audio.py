"""Reads audio files (WAV, FLAC, OGG) as mono float32 at the model's sample rate."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asr.errors import AudioError

SAMPLE_RATE = 16000  # Hz; the rate every file is resampled to before feature extraction
RESAMPLE_QUALITY = "HQ"  # soxr quality preset: band-limited, linear phase, ~ -140 dB stopband
_ERROR_PREFIX = re.compile(r"^Error opening .*?: |^Error : ")  # libsndfile repeats the path; the message names it once


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads an audio file as a mono waveform.

    Returns float32 [samples] in [-1, 1] at `sample_rate` Hz: channels are averaged, and a file
    at another rate is resampled with soxr. Raises AudioError (one line naming the file) for a
    missing, unreadable, truncated, empty or non-audio file.
    """
    path = Path(path)
    audio, file_rate = _read(path)
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: the audio file holds no samples (empty or truncated); remove or re-export it")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: the audio holds NaN or infinite samples; re-export the file")
    mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(mono, dtype=np.float32)


def change_speed(audio: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Plays a waveform `factor` times faster (tempo and pitch together, as Kaldi's speed perturbation).

    float32 [samples] -> float32 [round(samples / factor)] at the same rate: the samples are read
    as if recorded at sample_rate * factor and resampled back to sample_rate with soxr.
    """
    if factor == 1.0:
        return audio
    out = soxr.resample(audio, sample_rate * factor, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Decodes the whole file: float32 [samples, channels] and its sample rate (Hz)."""
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the path (manifests resolve relative paths against their folder)")
    try:
        with sf.SoundFile(path) as f:
            expected = f.frames
            audio = f.read(dtype="float32", always_2d=True)
            file_rate = f.samplerate
            is_wav = f.format in ("WAV", "WAVEX")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = _ERROR_PREFIX.sub("", str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise AudioError(f"{path}: not a readable audio file (WAV, FLAC or OGG expected): {reason}") from None
    # FLAC and OGG decoders fail on a file cut short, but libsndfile quietly shrinks a WAV's frame
    # count to what is there, so the WAV header's data size is checked against the file's size.
    missing = _wav_missing_bytes(path) if is_wav else 0
    if audio.shape[0] < expected or missing > 0:
        raise AudioError(f"{path}: truncated audio file (its header promises more samples than it holds); re-download or re-export it")
    return audio, file_rate


def _wav_missing_bytes(path: Path) -> int:
    """Bytes the RIFF header's 'data' chunk declares beyond the end of the file (0 if complete).

    Streaming writers that leave the size unset (0 or 0xFFFFFFFF) are taken as complete.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF":
            return 0
        f.seek(12)
        while True:
            header = f.read(8)
            if len(header) < 8:
                return 0
            chunk_size = int.from_bytes(header[4:], "little")
            if header[:4] == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return 0
                return max(0, f.tell() + chunk_size - size)
            f.seek(chunk_size + (chunk_size & 1), 1)  # chunks are padded to even sizes
