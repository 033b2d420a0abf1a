"""A fast first transcript: what `asr transcribe` imports and builds before it decodes, and the trace cache.

bench/startup.py measures it; these tests hold what it relies on: the feature constants computed
without librosa or scipy.signal exactly as they computed them, the program importing neither them
nor scikit-learn, and a traced model loaded from the cache giving the Keras model's outputs to the bit.
"""

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from asr.config import FeatureConfig
from asr.features import analysis, mel_filterbank
from conftest import REPO

MODEL = REPO / "recipes" / "librispeech_small" / "model"
DEV_FILES = ("669/129074/669-129074-0004.flac", "7312/92432/7312-92432-0000.flac")

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


@pytest.mark.parametrize("length", [1, 2, 9, 400, 401, 512])
def test_hann_window_is_scipys_bit_for_bit(length):
    import scipy.signal

    from asr.features import _hann

    np.testing.assert_array_equal(_hann(length), scipy.signal.get_window("hann", length, fftbins=True))


@pytest.mark.parametrize("width", [5, 9, 11])
@pytest.mark.parametrize("order", [1, 2])
def test_delta_kernels_are_scipys_savgol_bit_for_bit(width, order):
    import scipy.signal

    from asr.features import _savgol_derivative

    np.testing.assert_array_equal(_savgol_derivative(width, order), scipy.signal.savgol_coeffs(width, order, deriv=order))


# --- the trace cache -----------------------------------------------------------------------------


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


def test_recognizer_from_the_trace_cache_gives_identical_outputs(librispeech_root, tmp_path):
    """Traced afresh, traced and cached, loaded from the cache: the same log-probabilities to the
    bit and the same transcripts, on real speech, one file and a padded batch."""
    from asr.inference import Recognizer

    cache = tmp_path / "traced"
    paths = [librispeech_root / "LibriSpeech" / "train-clean-5" / f for f in DEV_FILES]
    plain = Recognizer(MODEL)
    feats = [plain.features(p) for p in paths]
    first = Recognizer(MODEL, cache_dir=cache)
    assert first.model is not None and entries(cache) == []  # nothing written before a run
    from_trace = first.log_probs(feats)
    assert len(entries(cache)) == 1
    second = Recognizer(MODEL, cache_dir=cache)
    assert second.model is None  # no Keras model built
    for recognizer in (first, second):
        for ours, theirs in zip(recognizer.log_probs(feats), plain.log_probs(feats)):
            np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(recognizer.log_probs(feats[:1])[0], plain.log_probs(feats[:1])[0])
    np.testing.assert_array_equal(from_trace[0], plain.log_probs(feats)[0])
    assert second.transcribe(paths) == plain.transcribe(paths)


def tiny_model_dir(folder, seed=0, scale=1.0):
    """A small random model directory (global statistics, 4 MFCCs)."""
    from asr import checkpoint
    from asr.config import Config, FeatureConfig, ModelConfig
    from asr.features import FeatureStats
    from asr.model import AcousticModel
    from asr.text import Vocabulary

    config = Config(features=FeatureConfig(n_mfcc=4, n_mels=8, deltas=False), model=ModelConfig(num_layers=1, num_units=8))
    vocab = Vocabulary("ab ")
    model = AcousticModel(config.model, 4, vocab.size, seed=seed)
    model.build_weights()
    for weight in model.weights:
        weight.assign(weight * scale)
    stats = FeatureStats(np.zeros(4, np.float32), np.ones(4, np.float32), 1)
    return checkpoint.save_model_dir(folder, model, config, vocab, stats)


FEATS = [np.random.RandomState(5).randn(40, 4).astype(np.float32), np.random.RandomState(6).randn(17, 4).astype(np.float32)]


def test_trace_cache_follows_the_weights(tmp_path):
    """Other weights (same config), a new entry: never the old model's outputs."""
    from asr.inference import Recognizer

    cache = tmp_path / "traced"
    model_dir = tiny_model_dir(tmp_path / "model")
    before = Recognizer(model_dir, cache_dir=cache).log_probs(FEATS)[0]
    assert len(entries(cache)) == 1
    shutil.rmtree(model_dir)
    tiny_model_dir(model_dir, scale=1.5)  # retrained, say: same folder, other weights
    changed = Recognizer(model_dir, cache_dir=cache)
    assert changed.model is not None  # a miss
    after = changed.log_probs(FEATS)[0]
    assert len(entries(cache)) == 2 and not np.allclose(before, after)
    np.testing.assert_array_equal(Recognizer(model_dir, cache_dir=cache).log_probs(FEATS)[0], after)
    np.testing.assert_array_equal(Recognizer(model_dir).log_probs(FEATS)[0], after)


def test_damaged_trace_cache_entry_is_traced_again(tmp_path, caplog):
    from asr.inference import Recognizer

    cache = tmp_path / "traced"
    model_dir = tiny_model_dir(tmp_path / "model")
    expected = Recognizer(model_dir, cache_dir=cache).log_probs(FEATS)[0]
    (entry,) = [cache / name for name in entries(cache)]
    data = entry / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="asr.export"):
        recognizer = Recognizer(model_dir, cache_dir=cache)
    assert recognizer.model is not None and "unreadable" in caplog.text
    np.testing.assert_array_equal(recognizer.log_probs(FEATS)[0], expected)
    again = Recognizer(model_dir, cache_dir=cache)  # rewritten by the run above
    assert again.model is None
    np.testing.assert_array_equal(again.log_probs(FEATS)[0], expected)


def test_unwritable_trace_cache_costs_a_warning(tmp_path, caplog):
    from asr.inference import Recognizer

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    model_dir = tiny_model_dir(tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="asr.export"):
        out = Recognizer(model_dir, cache_dir=blocked / "traced").log_probs(FEATS)[0]
    assert "not written" in caplog.text
    np.testing.assert_array_equal(out, Recognizer(model_dir).log_probs(FEATS)[0])


def test_trace_cache_keeps_the_most_recently_used_entries(tmp_path):
    from asr.export import TRACE_CACHE_ENTRIES
    from asr.inference import Recognizer

    cache = tmp_path / "traced"
    dirs = [tiny_model_dir(tmp_path / f"model{i}", seed=i) for i in range(TRACE_CACHE_ENTRIES + 1)]
    Recognizer(dirs[0], cache_dir=cache).log_probs(FEATS)
    first_entry = entries(cache)
    for model_dir in dirs[1:-1]:
        Recognizer(model_dir, cache_dir=cache).log_probs(FEATS)
    os.utime(cache / first_entry[0], (0, 0))  # used long ago
    Recognizer(dirs[-1], cache_dir=cache).log_probs(FEATS)
    assert len(entries(cache)) == TRACE_CACHE_ENTRIES and first_entry[0] not in entries(cache)


def test_asr_transcribe_starts_light_and_uses_the_cache(librispeech_root, tmp_path):
    """The asr program, run twice: the second run loads the traced model; neither imports
    librosa, numba, scikit-learn or scipy.stats, and scikit-learn stays importable."""
    audio = librispeech_root / "LibriSpeech" / "train-clean-5" / DEV_FILES[0]
    script = ("import sys; sys.argv = ['asr', 'transcribe', sys.argv[1], sys.argv[2]]; from asr.cli import main; code = main(); "
              "heavy = [m for m in ('librosa', 'numba', 'sklearn', 'scipy.stats', 'scipy.signal') if m in sys.modules]; "
              "import sklearn; print(code, heavy, file=sys.stderr)")
    env = dict(os.environ, ASR_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", script, str(MODEL), str(audio)], capture_output=True, text=True, env=env, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0 and run.stderr.strip().splitlines()[-1] == "0 []", run.stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()
    assert len(entries(tmp_path / "cache" / "traced")) == 1
