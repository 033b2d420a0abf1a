"""MFCC features: shapes, agreement with librosa, statistics, normalization and the cache."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pytest
import soundfile as sf

import asr.features as features
from asr.config import FeatureConfig
from asr.errors import ConfigError, DataError
from asr.features import FeatureStats, compute_features, compute_stats, extract, features_for_model, normalize, num_frames

CFG = FeatureConfig()


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def write_wav(path, seconds=0.5, seed=0):
    sf.write(path, noise(seconds, seed), 16000)
    return path


def test_shape_and_dtype():
    feats = compute_features(noise(1.0), CFG)
    assert feats.shape == (101, CFG.num_features) == (num_frames(16000, CFG), 39)
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    assert compute_features(noise(0.005), CFG).shape == (1, 39)  # shorter than one window
    assert compute_features(noise(1.0), FeatureConfig(deltas=False)).shape == (101, 13)


def test_matches_librosa():
    audio = noise(2.0, seed=3) * np.linspace(0.1, 1.0, 32000, dtype=np.float32)
    cfg = FeatureConfig(n_mels=40, fmin=20.0, fmax=7600.0)
    mfcc = librosa.feature.mfcc(y=audio, sr=16000, n_mfcc=13, n_fft=512, win_length=400, hop_length=160, n_mels=40, fmin=20.0, fmax=7600.0)
    deltas = [librosa.feature.delta(mfcc, order=k, mode="nearest") for k in (1, 2)]
    expected = np.concatenate([mfcc, *deltas]).T
    np.testing.assert_allclose(compute_features(audio, cfg), expected, atol=2e-3 * np.abs(expected).max())


def test_stats_and_global_normalization(tmp_path):
    arrays = [np.random.default_rng(i).normal(3.0, 2.0, (50 + i, 39)).astype(np.float32) for i in range(4)]
    stats = FeatureStats.from_features(arrays)
    stacked = np.concatenate(arrays)
    np.testing.assert_allclose(stats.mean, stacked.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, stacked.std(0), rtol=1e-4)
    assert stats.num_frames == len(stacked)
    normed = np.concatenate([normalize(a, CFG, stats) for a in arrays])
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normed.std(0), 1, atol=1e-4)
    path = tmp_path / "stats.json"
    stats.save(path)
    assert set(json.loads(path.read_text())) == {"mean", "std", "num_frames"}
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.std, stats.std)


def test_stats_errors(tmp_path):
    with pytest.raises(DataError, match="zero frames"):
        FeatureStats.from_features([])
    bad = tmp_path / "bad.json"
    bad.write_text('{"mean": [1, 2], "std": [1]}')
    with pytest.raises(DataError, match="bad.json"):
        FeatureStats.load(bad)
    with pytest.raises(DataError, match="not found"):
        FeatureStats.load(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="statistics"):
        normalize(np.zeros((5, 39), np.float32), CFG, None)


def test_utterance_normalization():
    feats = compute_features(noise(1.0), CFG) * 3 + 7
    normed = normalize(feats, FeatureConfig(normalization="utterance"), None)
    np.testing.assert_allclose(normed.mean(0), 0, atol=1e-4)
    assert normed.dtype == np.float32


def test_compute_stats_over_files(tmp_path):
    paths = [write_wav(tmp_path / f"{i}.wav", 0.3, seed=i) for i in range(3)]
    stats = compute_stats(paths, CFG, cache_dir=tmp_path / "cache")
    expected = FeatureStats.from_features([compute_features(sf.read(p, dtype="float32")[0], CFG) for p in paths])
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-5)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


@pytest.fixture
def count_computes(monkeypatch):
    calls = []
    real = features.compute_features

    def counting(audio, cfg):
        calls.append(cfg)
        return real(audio, cfg)

    monkeypatch.setattr(features, "compute_features", counting)
    return calls


def test_cache_hit_and_invalidation(tmp_path, count_computes):
    wav = write_wav(tmp_path / "a.wav")
    cache = tmp_path / "cache"
    first = extract(wav, CFG, cache)
    second = extract(wav, CFG, cache)
    assert len(count_computes) == 1
    np.testing.assert_array_equal(first, second)
    assert not list(cache.glob("*.tmp")) and np.load(next(cache.glob("*.npy")), allow_pickle=False).shape == first.shape

    extract(wav, FeatureConfig(n_mels=32), cache)  # another config: recomputed
    extract(wav, FeatureConfig(normalization="utterance"), cache)  # normalization is applied after the cache
    assert len(count_computes) == 2

    write_wav(wav, seed=1)  # the file changes (content and mtime)
    os.utime(wav, ns=(10**18, 10**18))
    changed = extract(wav, CFG, cache)
    assert len(count_computes) == 3
    assert not np.array_equal(changed, first)


def test_corrupt_cache_entry_is_recomputed(tmp_path, count_computes):
    wav = write_wav(tmp_path / "a.wav")
    cache = tmp_path / "cache"
    good = extract(wav, CFG, cache)
    entry = next(cache.glob("*.npy"))
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(extract(wav, CFG, cache), good)
    assert len(count_computes) == 2


def test_concurrent_writers_share_the_cache(tmp_path):
    wav = write_wav(tmp_path / "a.wav")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: extract(wav, CFG, cache), range(8)))
    assert all(np.array_equal(r, results[0]) for r in results)
    assert len(list(cache.iterdir())) == 1  # one entry, no temporary files left behind


def test_features_for_model_is_load_mfcc_normalize(tmp_path, fsdd_dir):
    wav = fsdd_dir / "recordings" / "3_theo_10.wav"
    cfg = FeatureConfig(normalization="utterance")
    direct = normalize(compute_features(features.load_audio(wav), cfg), cfg, None)
    np.testing.assert_array_equal(features_for_model(wav, cfg, None), direct)
    np.testing.assert_array_equal(features_for_model(wav, cfg, None, cache_dir=tmp_path), direct)
    np.testing.assert_array_equal(features_for_model(wav, cfg, None, cache_dir=tmp_path), direct)  # from the cache
