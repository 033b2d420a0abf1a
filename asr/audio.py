"""Reads audio files (WAV, FLAC, OGG) as mono float32 at the model's sample rate."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from asr.errors import AudioError

SAMPLE_RATE = 16000  # Hz; the rate every file is resampled to before feature extraction
RESAMPLE_QUALITY = "HQ"  # soxr quality preset: band-limited, linear phase, ~ -140 dB stopband
READ_BLOCK_SECONDS = 10.0  # seconds of audio stream_audio decodes at a time
_ERROR_PREFIX = re.compile(r"^Error opening .*?: |^Error : ")  # libsndfile repeats the path; the message names it once


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads an audio file as a mono waveform.

    Returns float32 [samples] in [-1, 1] at `sample_rate` Hz: channels are averaged, and a file
    at another rate is resampled with soxr. Raises AudioError (one line naming the file) for a
    missing, unreadable, truncated, empty or non-audio file. The whole file at once: the blocks
    of stream_audio joined (the same samples, bit for bit).
    """
    blocks = list(stream_audio(path, sample_rate))
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def stream_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, block_seconds: float = READ_BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Reads an audio file block by block, so that a long recording never sits in memory whole.

    Yields float32 [samples] mono blocks at `sample_rate` Hz (about block_seconds each; the last
    may be shorter) whose concatenation is what load_audio returns: channels averaged, resampled
    by one soxr stream, which gives the same samples as resampling the whole file. Raises
    AudioError (one line naming the file) as load_audio does: before the first block for a file
    that cannot be opened or holds no samples, at the point of damage for a truncated one.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file; check the path (manifests resolve relative paths against their folder)")
    with _unreadable_is_audio_error(path), sf.SoundFile(path) as f:
        expected, file_rate = f.frames, f.samplerate
        # FLAC and OGG decoders fail on a file cut short, but libsndfile quietly shrinks a WAV's
        # frame count to what is there, so the WAV header's data size is checked against the file's size.
        if f.format in ("WAV", "WAVEX") and _wav_missing_bytes(path) > 0:
            raise _truncated(path)
        resampler = None if file_rate == sample_rate else soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        read = 0
        for block in f.blocks(blocksize=max(1, int(block_seconds * file_rate)), dtype="float32", always_2d=True):
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{path}: the audio holds NaN or infinite samples; re-export the file")
            read += block.shape[0]
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            yield mono if resampler is None else resampler.resample_chunk(mono)
        if read == 0:
            raise AudioError(f"{path}: the audio file holds no samples (empty or truncated); remove or re-export it")
        if read < expected:
            raise _truncated(path)
        if resampler is not None:  # the resampler's delay line: the last few samples
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def change_speed(audio: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Plays a waveform `factor` times faster (tempo and pitch together, as Kaldi's speed perturbation).

    float32 [samples] -> float32 [round(samples / factor)] at the same rate: the samples are read
    as if recorded at sample_rate * factor and resampled back to sample_rate with soxr.
    """
    if factor == 1.0:
        return audio
    out = soxr.resample(audio, sample_rate * factor, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


@contextlib.contextmanager
def _unreadable_is_audio_error(path: Path):
    """libsndfile's errors on opening or decoding path, as one-line AudioErrors naming it."""
    try:
        yield
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = _ERROR_PREFIX.sub("", str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise AudioError(f"{path}: not a readable audio file (WAV, FLAC or OGG expected): {reason}") from None


def _truncated(path: Path) -> AudioError:
    return AudioError(f"{path}: truncated audio file (its header promises more samples than it holds); re-download or re-export it")


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
