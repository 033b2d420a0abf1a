"""Level-independent features: features.gain_normalization "rms" (issue 10, item 5)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asr.features as features
from asr.config import FeatureConfig, from_dict, to_dict
from asr.errors import ConfigError
from asr.evaluate import error_rates
from asr.features import compute_features, extract, features_for_model, normalize_gain

RMS = FeatureConfig(gain_normalization="rms")
MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
# held-out (dev) utterances of the recipe's three dev speakers, 5 to 8 s each
DEV_UTTERANCES = ("32-21631-0016", "32-21631-0019", "669-129074-0024", "669-129074-0025", "7312-92432-0009", "7312-92432-0014")
GAINS = {"x0.01": 0.01, "x0.1": 0.1, "x10": 10.0, "peak-normalized": None}  # None: scaled to a peak of 1.0


def scaled(audio: np.ndarray, gain: float | None) -> np.ndarray:
    return (audio / np.abs(audio).max() if gain is None else audio * np.float32(gain)).astype(np.float32)


def speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Noise under a syllable-rate envelope with pauses: loud and quiet frames, like speech."""
    n = int(16000 * seconds)
    envelope = np.maximum(np.sin(np.arange(n) * 2 * np.pi * 4 / 16000), 0.0) ** 2 + 1e-3
    return (0.1 * envelope * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("gain", GAINS.values(), ids=GAINS.keys())
def test_features_do_not_depend_on_the_level(gain):
    audio = speech_like()
    reference = compute_features(audio, RMS)
    np.testing.assert_allclose(compute_features(scaled(audio, gain), RMS), reference, rtol=0, atol=1e-3)
    # without it, the level shifts c0 (log energy) by 20 * log10(gain) dB times sqrt(n_mels)
    plain = FeatureConfig()
    shift = compute_features(scaled(audio, gain), plain)[:, 0] - compute_features(audio, plain)[:, 0]
    assert np.abs(shift).min() > 10


def test_gain_is_normalized_to_the_target_level():
    out = normalize_gain(speech_like() * np.float32(37.0), RMS)
    assert out.dtype == np.float32
    assert abs(20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2))) - features.TARGET_RMS_DBFS) < 1e-3
    audio = speech_like()
    assert normalize_gain(audio, FeatureConfig()) is audio  # "none": untouched


def test_silence_does_not_divide_by_zero():
    silence = np.zeros(16000, np.float32)
    with np.errstate(all="raise"):
        assert np.array_equal(normalize_gain(silence, RMS), silence)
        feats = compute_features(silence, RMS)
    assert np.all(np.isfinite(feats))
    np.testing.assert_array_equal(feats, compute_features(silence, FeatureConfig()))
    assert np.all(np.isfinite(compute_features(np.full(16000, 1e-9, np.float32), RMS)))  # below the floor: left alone


def test_file_path_and_cache(tmp_path):
    """Through features_for_model (the one path of training and inference) and its cache: float
    WAV files at other levels give the model the same input; the cache keys on the option."""
    audio = speech_like(1.0)
    stats = features.FeatureStats.from_features([compute_features(audio, RMS)])
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", audio * np.float32(0.01), 16000, subtype="FLOAT")
    cache = tmp_path / "cache"
    a = features_for_model(tmp_path / "a.wav", RMS, stats, cache)
    np.testing.assert_allclose(features_for_model(tmp_path / "b.wav", RMS, stats, cache), a, atol=1e-3)
    plain = extract(tmp_path / "a.wav", FeatureConfig(), cache)  # "none" is its own entry
    assert not np.allclose(plain[:, 0], extract(tmp_path / "a.wav", RMS, cache)[:, 0], atol=1.0)
    assert len(list(cache.glob("*.npy"))) == 3


def test_cache_keys_on_the_target_level(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, speech_like(0.5), 16000, subtype="FLOAT")
    cache = tmp_path / "cache"
    first = extract(wav, RMS, cache)
    monkeypatch.setattr(features, "TARGET_RMS_DBFS", features.TARGET_RMS_DBFS - 20.0)
    louder = extract(wav, RMS, cache)  # a stale entry at the old level must not be reused
    assert len(list(cache.glob("*.npy"))) == 2
    assert np.abs(first[:, 0] - louder[:, 0]).min() > 10


def test_the_option_is_validated_and_saved():
    with pytest.raises(ConfigError, match="features.gain_normalization"):
        from_dict({"features": {"gain_normalization": "peak"}})
    with pytest.raises(ConfigError, match="features.gain_normalization"):
        FeatureConfig(gain_normalization="RMS").validate()
    config = from_dict({"features": {"gain_normalization": "rms"}})
    assert to_dict(config)["features"]["gain_normalization"] == "rms"  # written into config.json
    assert from_dict(to_dict(config)) == config


def test_old_model_directories_keep_their_behaviour():
    """A config.json written before the option existed (as the committed model's was) reads as "none"."""
    saved = json.loads((MODEL / "config.json").read_text())
    saved["features"].pop("gain_normalization")
    saved.pop("checksums", None)
    assert from_dict(saved).features.gain_normalization == "none"
    assert from_dict({"features": {}}).features.gain_normalization == "none"


def dev_utterance(root: Path, utt_id: str) -> tuple[Path, str]:
    speaker, chapter, _ = utt_id.split("-")
    folder = root / "LibriSpeech" / "train-clean-5" / speaker / chapter
    line = next(line for line in (folder / f"{speaker}-{chapter}.trans.txt").read_text().splitlines() if line.startswith(utt_id + " "))
    return folder / f"{utt_id}.flac", line.split(" ", 1)[1].lower()


def test_real_speech_at_any_level_through_the_committed_model(librispeech_root, tmp_path):
    """Held-out speech scaled x0.01, x0.1, x10 (float WAV) or peak-normalized: the committed model
    (gain normalization on) keeps its CER within 2 points of the original recordings'."""
    import asr

    recognizer = asr.load_model(MODEL)
    assert recognizer.config.features.gain_normalization == "rms"
    originals, texts = zip(*(dev_utterance(librispeech_root, u) for u in DEV_UTTERANCES))
    baseline = error_rates(list(texts), recognizer.transcribe(list(originals)))["cer"]
    assert baseline < 0.4, baseline
    for name, gain in GAINS.items():
        paths = []
        for original in originals:
            audio, rate = sf.read(original, dtype="float32")
            paths.append(tmp_path / f"{original.stem}-{name}.wav")
            sf.write(paths[-1], scaled(audio, gain), rate, subtype="FLOAT")
        cer = error_rates(list(texts), recognizer.transcribe(paths))["cer"]
        assert abs(cer - baseline) <= 0.02, (name, cer, baseline)
