"""SpecAugment on MFCCs (asr.augment), additive noise, speed perturbation, and augmented training batches."""

import numpy as np
import pytest
import scipy.ndimage
import soundfile as sf

from asr.audio import change_speed
from asr.augment import NOISE_LOWEST_HZ, NOISE_MAX_EXPONENT, add_noise, draw_noise, spec_augment
from asr.config import AugmentConfig, FeatureConfig, from_dict
from asr.errors import ConfigError
from asr.data import Utterance, make_dataset
from asr.features import _analysis, compute_features, extract, features_for_model, mel_to_mfcc_matrix
from asr.text import Vocabulary

CFG = FeatureConfig()
FREQ_ONLY = AugmentConfig(freq_masks=2, freq_mask_bands=10)
TIME_ONLY = AugmentConfig(time_masks=3, time_mask_frames=40, time_mask_max_fraction=0.1)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A waveform whose spectrum changes over time: a gliding harmonic tone in noise, float32 [samples]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    return (0.1 * tone * (1 + np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def raw():
    return compute_features(speech_like(3.0), CFG)  # [301, 39]


def test_frequency_masks_are_masked_mel_bands_carried_through_the_deltas(raw):
    mean = np.concatenate([raw[:, :13].mean(axis=0), np.zeros(26, np.float32)])  # a delta's mean: 0
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    masked = spec_augment(raw, mean, CFG, FREQ_ONLY, rng_a)
    assert masked.shape == raw.shape and masked.dtype == np.float32 and not np.allclose(masked, raw)
    # Masking the static block and recomputing its deltas gives the masked delta blocks: the
    # masks act on the spectrum, the same at every frame, not on the coefficients one by one.
    static = spec_augment(raw[:, :13], mean[:13], FeatureConfig(deltas=False), FREQ_ONLY, rng_b)
    deltas = [scipy.ndimage.convolve1d(static, k, axis=0, mode="nearest") for k in _analysis(CFG).delta_kernels]
    np.testing.assert_allclose(masked, np.concatenate([static, *deltas], axis=1), atol=1e-3)


def test_frequency_mask_silences_its_mel_bands():
    dct = mel_to_mfcc_matrix(CFG)  # [13, 40]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 13)).astype(np.float32)  # deviations from the mean
    aug = AugmentConfig(freq_masks=1, freq_mask_bands=40)
    for seed in range(20):
        out = spec_augment(x, np.zeros(13, np.float32), FeatureConfig(deltas=False), aug, np.random.default_rng(seed))
        mel_in, mel_out = x @ dct, out @ dct  # the smoothed log-mel spectra behind the MFCCs, [200, 40]
        changed = np.abs(mel_out - mel_in).max(axis=0) > 1e-4
        if not changed.any():
            continue  # a mask of width 0
        masked = np.flatnonzero(np.abs(mel_out).sum(axis=0) < 0.6 * np.abs(mel_in).sum(axis=0))
        assert masked.size >= 1 and np.ptp(masked) < masked.size + 4  # one contiguous run of bands lost energy
    everything = AugmentConfig(freq_masks=1, freq_mask_bands=40)
    rng = np.random.default_rng(0)
    outs = [spec_augment(x, np.zeros(13, np.float32), FeatureConfig(deltas=False), everything, rng) for _ in range(300)]
    assert any(not out.any() for out in outs)  # a mask over all 40 bands (1 draw in 41) leaves only the mean


def test_time_masks_set_bounded_runs_to_the_mean(raw):
    mean = raw.mean(axis=0)
    total = 0
    for seed in range(10):
        out = spec_augment(raw, mean, CFG, TIME_ONLY, np.random.default_rng(seed))
        at_mean = np.all(out == mean, axis=1)
        np.testing.assert_array_equal(out[~at_mean], raw[~at_mean])  # other frames are untouched
        assert at_mean.sum() <= 3 * int(0.1 * raw.shape[0])  # 3 masks of at most 10% (30 frames) each
        total += at_mean.sum()
    assert total > 10 * 15  # widths are uniform in [0, 30]: about 45 frames an utterance


def test_spec_augment_is_driven_by_its_generator_only(raw):
    aug = AugmentConfig(freq_masks=2, freq_mask_bands=10, time_masks=3, time_mask_frames=40)
    mean = raw.mean(axis=0)
    a = spec_augment(raw, mean, CFG, aug, np.random.default_rng(1))
    np.testing.assert_array_equal(a, spec_augment(raw, mean, CFG, aug, np.random.default_rng(1)))
    assert not np.array_equal(a, spec_augment(raw, mean, CFG, aug, np.random.default_rng(2)))
    np.testing.assert_array_equal(spec_augment(raw, mean, CFG, AugmentConfig(), np.random.default_rng(1)), raw)


def test_change_speed_scales_duration_and_pitch():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    for factor in (0.9, 1.1):
        out = change_speed(tone, factor, 16000)
        assert abs(out.size - 16000 / factor) <= 2 and out.dtype == np.float32
        peak = np.argmax(np.abs(np.fft.rfft(out * np.hanning(out.size)))) * 16000 / out.size
        assert abs(peak - 1000 * factor) < 5
    assert change_speed(tone, 1.0) is tone


def test_speed_perturbed_features_have_their_own_cache_entries(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, speech_like(2.0), 16000)
    cache = tmp_path / "cache"
    normal, fast = extract(path, CFG, cache), extract(path, CFG, cache, speed=1.1)
    assert len(list(cache.glob("*.npy"))) == 2
    assert normal.shape[0] == 201 and abs(fast.shape[0] - 201 / 1.1) <= 2
    np.testing.assert_array_equal(extract(path, CFG, cache, speed=1.1), fast)
    np.testing.assert_array_equal(normal, extract(path, CFG, None))  # speed 1.0 keeps the plain entry


@pytest.fixture
def corpus(tmp_path):
    utts = []
    for i in range(6):
        seconds = 1.0 + 0.1 * i
        path = tmp_path / f"u{i}.wav"
        sf.write(path, speech_like(seconds, seed=i), 16000)
        utts.append(Utterance(f"u{i}", str(path), seconds, "ab" * (i + 1)))
    return utts


def batches(corpus, aug, **kw):
    cfg = FeatureConfig(normalization="utterance")
    dataset, _ = make_dataset(corpus, Vocabulary(), cfg, None, batch_size=2, bucket_width=0.5, seed=5, augment=aug, **kw)
    return list(dataset.as_numpy_iterator())


def test_augmented_batches_are_seeded_resumable_and_training_only(corpus):
    aug = AugmentConfig(speeds=(0.9, 1.0, 1.1), freq_masks=2, freq_mask_bands=10, time_masks=2, time_mask_frames=20)
    epoch0 = batches(corpus, aug, training=True, epoch=0)
    again = batches(corpus, aug, training=True, epoch=0)
    resumed = batches(corpus, aug, training=True, epoch=0, start_batch=1)
    for a, b in zip(epoch0, again):
        np.testing.assert_array_equal(a["features"], b["features"])
    for a, b in zip(epoch0[1:], resumed):
        np.testing.assert_array_equal(a["features"], b["features"])
    plain = {i: f for b in batches(corpus, None, training=True, epoch=0) for i, f in zip(b["ids"], b["features"])}
    by_id = {u.id.encode(): u for u in corpus}
    speeds = set()
    for batch in epoch0:
        for i, length in zip(batch["ids"], batch["feature_lengths"]):
            speeds.add(round(by_id[i].duration * 100 / (length - 1), 1))  # frames shrink as the speed rises
        assert not np.array_equal(batch["features"][0], plain[batch["ids"][0]][: batch["feature_lengths"][0]])
    assert len(speeds) > 1 and speeds <= {0.9, 1.0, 1.1}
    # dev and evaluation batches never see the augmentation
    for batch in batches(corpus, aug, training=False):
        for i, f, n in zip(batch["ids"], batch["features"], batch["feature_lengths"]):
            cfg = FeatureConfig(normalization="utterance")
            np.testing.assert_array_equal(f[:n], features_for_model(by_id[i].audio_filepath, cfg, None))


@pytest.mark.parametrize("snr_db, exponent, seconds", [(5.0, 0.0, 4.0), (20.0, 1.0, 4.0), (30.0, 2.0, 4.0), (10.0, 2.0, 20.0)])
def test_noise_has_the_drawn_snr_and_spectral_slope_in_the_speech_band(snr_db, exponent, seconds):
    """add_noise: 10 log10(P_audio / P_noise) is the SNR asked for, all of the noise's power is
    above NOISE_LOWEST_HZ (none at DC or in sub-audio drift, where f**-exponent would put most of
    brown noise's, the more so the longer the utterance), and its power spectrum falls as
    f**-exponent (a line of slope -exponent in log-log, fitted over 100 Hz to 7 kHz on the
    periodogram averaged over 1/8 s frames)."""
    audio = speech_like(seconds)
    noisy = add_noise(audio, 16000, snr_db, exponent, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == audio.shape
    noise = noisy.astype(np.float64) - audio
    assert 10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) / np.mean(noise**2)) == pytest.approx(snr_db, abs=0.01)
    whole = np.abs(np.fft.rfft(noise)) ** 2
    assert whole[np.fft.rfftfreq(noise.size, 1 / 16000) < 0.9 * NOISE_LOWEST_HZ].sum() < 1e-6 * whole.sum()
    frames = noise[: noise.size // 2000 * 2000].reshape(-1, 2000)
    power = np.mean(np.abs(np.fft.rfft(frames * np.hanning(2000), axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(2000, 1 / 16000)
    band = (freqs >= 100) & (freqs <= 7000)
    slope = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.15)


def test_noise_leaves_silence_alone_and_follows_its_generator():
    silence = np.zeros(16000, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 16000, 10.0, 1.0, np.random.default_rng(0)), silence)
    audio = speech_like(1.0)
    a, b = (add_noise(audio, 16000, 10.0, 1.0, np.random.default_rng(3)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_noise(audio, 16000, 10.0, 1.0, np.random.default_rng(4)))
    for size in (2, 3, 5):  # too short for any frequency above NOISE_LOWEST_HZ: white noise, still at the SNR
        tiny = np.arange(1, size + 1, dtype=np.float32)
        added = add_noise(tiny, 16000, 10.0, 2.0, np.random.default_rng(0)).astype(np.float64) - tiny
        assert 10 * np.log10(np.mean(tiny.astype(np.float64) ** 2) / np.mean(added**2)) == pytest.approx(10.0, abs=0.01)


def test_draw_noise_draws_nothing_when_off_and_a_fixed_count_when_on():
    rng = np.random.default_rng(0)
    assert draw_noise(AugmentConfig(), 16000, rng) is None
    assert rng.random() == np.random.default_rng(0).random()  # no draw consumed: recipes without noise are unchanged
    aug = AugmentConfig(noise_prob=0.5, noise_snr_db=(10.0, 12.0))
    drawn = [draw_noise(aug, 16000, np.random.default_rng(seed)) for seed in range(200)]
    assert 70 < sum(d is not None for d in drawn) < 130
    audio = speech_like(1.0)
    for noise in filter(None, drawn[:20]):
        added = noise(audio).astype(np.float64) - audio
        assert 10 <= 10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) / np.mean(added**2)) <= 12
    # the batch's generator moves on by the same draws whatever the utterance's length: the masks
    # and utterances after it do not depend on it
    always = AugmentConfig(noise_prob=1.0)
    states = set()
    for size in (1000, 1001, 48000):
        rng = np.random.default_rng(9)
        draw_noise(always, 16000, rng)(speech_like(size / 16000))
        states.add(rng.random())
    assert len(states) == 1
    assert NOISE_MAX_EXPONENT == 2.0  # white to brown
    for bad in ({"noise_prob": 1.5}, {"noise_prob": -0.1}, {"noise_snr_db": [30, 10]}, {"noise_snr_db": [10]}):
        with pytest.raises(ConfigError, match="augment.noise_"):
            from_dict({"augment": bad})


def test_noisy_batches_are_seeded_resumable_uncached_and_training_only(corpus, tmp_path):
    """noise_prob 0.5: some utterances of an epoch get noise (their features differ from the
    clean ones, and are not written to the feature cache), the others are the cached clean
    features; the same epoch, or a resumed one, gets the same noise; dev batches get none."""
    cache = tmp_path / "noise_cache"
    aug = AugmentConfig(noise_prob=0.5, noise_snr_db=(5.0, 10.0))
    epoch0 = batches(corpus, aug, training=True, epoch=0, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) < len(corpus)  # the noisy ones were computed afresh
    for a, b in zip(epoch0, batches(corpus, aug, training=True, epoch=0, cache_dir=cache)):
        np.testing.assert_array_equal(a["features"], b["features"])
    for a, b in zip(epoch0[1:], batches(corpus, aug, training=True, epoch=0, start_batch=1, cache_dir=cache)):
        np.testing.assert_array_equal(a["features"], b["features"])
    def trimmed(batch_list):
        return [(i, f[:n]) for b in batch_list for i, f, n in zip(b["ids"], b["features"], b["feature_lengths"])]

    plain = dict(trimmed(batches(corpus, None, training=True, epoch=0)))
    noisy = [not np.array_equal(f, plain[i]) for i, f in trimmed(epoch0)]
    assert any(noisy) and not all(noisy)
    for i, f in trimmed(batches(corpus, aug, training=False)):
        np.testing.assert_array_equal(f, plain[i])
