"""load_audio: formats, rates, channels, resampling, and one-line errors for bad files."""

import numpy as np
import pytest
import soundfile as sf

from asr.audio import SAMPLE_RATE, load_audio
from asr.errors import AudioError

FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}


def tone(freq_hz: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
@pytest.mark.parametrize("channels", [1, 2])
def test_formats_rates_channels(tmp_path, ext, rate, channels):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone(440, rate, 0.5, channels), rate, format=FORMATS[ext])
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE // 2) <= 2
    assert abs(peak_hz(audio, SAMPLE_RATE) - 440) < 5


def test_resampled_stereo_keeps_frequency(tmp_path):
    path = tmp_path / "stereo44k.wav"
    sf.write(path, tone(1000, 44100, 1.0, channels=2), 44100)
    audio = load_audio(path)
    assert len(audio) == SAMPLE_RATE
    assert abs(peak_hz(audio, SAMPLE_RATE) - 1000) < 2
    assert np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.02)  # no gain change


def test_stereo_is_averaged(tmp_path):
    left = tone(300, SAMPLE_RATE, 0.25)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), left / 2, atol=1e-6)


def test_other_target_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(200, 16000, 1.0), 16000)
    assert len(load_audio(path, sample_rate=8000)) == 8000


def _error(path) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "no such audio file" in _error(tmp_path / "nope.wav")


def test_empty_and_zero_byte_files(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SAMPLE_RATE)
    assert "no samples" in _error(empty)
    zero = tmp_path / "zero.flac"
    zero.write_bytes(b"")
    assert "not a readable audio file" in _error(zero)


def test_non_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is text, not audio\n" * 20)
    assert "not a readable audio file" in _error(path)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_truncated_file(tmp_path, ext):
    full = tmp_path / f"full.{ext}"
    sf.write(full, tone(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, format=FORMATS[ext])
    cut = tmp_path / f"cut.{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    message = _error(cut)
    assert "truncated" in message or "not a readable" in message


def test_real_files(librispeech_root, fsdd_dir):
    flac = next((librispeech_root / "LibriSpeech" / "train-clean-5").glob("*/*/*.flac"))
    audio = load_audio(flac)
    assert len(audio) == sf.info(str(flac)).frames  # already 16 kHz: untouched
    wav = fsdd_dir / "recordings" / "7_jackson_32.wav"
    assert sf.info(str(wav)).samplerate == 8000
    assert abs(len(load_audio(wav)) - 2 * sf.info(str(wav)).frames) <= 1
