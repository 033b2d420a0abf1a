"""A fast first transcript: what `asr transcribe` imports and builds before it decodes, and the trace cache."""

import numpy as np
import pytest

from asr.config import FeatureConfig
from asr.features import analysis, mel_filterbank

MEL_CASES = [  # sample rate, FFT size, bands, fmin, fmax
    (16000, 512, 40, 20.0, None),  # the recipe's
    (16000, 512, 40, 20.0, 7600.0),
    (8000, 256, 23, 0.0, None),
    (16000, 1024, 80, 0.0, 8000.0),
    (22050, 2048, 128, 300.0, None),
    (44100, 2048, 64, 1000.0, 16000.0),  # starts exactly where the Slaney scale turns logarithmic
]


@pytest.mark.parametrize("sample_rate, n_fft, n_mels, fmin, fmax", MEL_CASES)
def test_mel_filterbank_is_librosas_bit_for_bit(sample_rate, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("win_ms", [25.0, 25.0625, 32.0])  # 400, 401 and 512 samples in a 512-sample FFT frame
def test_window_is_librosas_centred_hann(win_ms):
    librosa = pytest.importorskip("librosa")
    cfg = FeatureConfig(win_ms=win_ms)
    win = int(round(cfg.sample_rate * win_ms / 1000))
    a = analysis(cfg)
    expected = librosa.util.pad_center(librosa.filters.get_window("hann", win, fftbins=True), size=a.n_fft)
    np.testing.assert_array_equal(a.window, expected.astype(np.float32))
