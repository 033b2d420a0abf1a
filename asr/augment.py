"""Training-time augmentation: SpecAugment for MFCC features (frequency masks on the mel bands
behind the MFCCs, and time masks), and colored noise added to the waveform at a random SNR."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.fft

from asr.config import AugmentConfig, FeatureConfig
from asr.features import mel_to_mfcc_matrix


def spec_augment(raw: np.ndarray, mean: np.ndarray, cfg: FeatureConfig, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Masks an utterance's raw features [T, F] (laid out [mfcc | delta | delta-delta]); returns a copy.

    mean [F] is what normalization subtracts, so masked values become the (training) mean.
    Frequency masks (Park et al., 2019) silence aug.freq_masks runs of up to aug.freq_mask_bands
    consecutive mel bands. MFCCs are a truncated DCT of the log-mel spectrum, so the masking is
    done there: each block of n_mfcc coefficients (static, delta, delta-delta; deltas are linear
    in time, so they commute with it) is mapped to log-mel deviations from the mean, the bands
    are zeroed, and the result is mapped back: the MFCCs closest to the masked spectrum.
    Time masks set aug.time_masks runs of up to aug.time_mask_frames frames (and at most
    aug.time_mask_max_fraction of T each) to the mean. Draws come from rng only.
    """
    out = np.array(raw, dtype=np.float32)
    projection = _freq_mask_projection(cfg, aug, rng)
    if projection is not None:
        blocks = out.shape[1] // cfg.n_mfcc
        deviation = out - mean
        out = mean + np.concatenate([deviation[:, b * cfg.n_mfcc : (b + 1) * cfg.n_mfcc] @ projection for b in range(blocks)], axis=1)
    num_frames = out.shape[0]
    widest = min(aug.time_mask_frames, int(aug.time_mask_max_fraction * num_frames))
    for _ in range(aug.time_masks if widest > 0 else 0):
        width = int(rng.integers(0, widest + 1))
        start = int(rng.integers(0, num_frames - width + 1))
        out[start : start + width] = mean
    return out.astype(np.float32, copy=False)


def _freq_mask_projection(cfg: FeatureConfig, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray | None:
    """[n_mfcc, n_mfcc] matrix that right-multiplies MFCC rows to mask mel bands; None when none is masked."""
    if aug.freq_masks == 0 or aug.freq_mask_bands == 0:
        return None
    keep = np.ones(cfg.n_mels, dtype=np.float32)
    for _ in range(aug.freq_masks):
        width = int(rng.integers(0, aug.freq_mask_bands + 1))
        start = int(rng.integers(0, cfg.n_mels - width + 1))
        keep[start : start + width] = 0.0
    if keep.all():
        return None
    dct = mel_to_mfcc_matrix(cfg)  # [n_mfcc, n_mels], orthonormal rows
    return (dct * keep) @ dct.T  # rows x: x @ D diag(keep) D^T (the matrix is symmetric)


NOISE_MAX_EXPONENT = 2.0  # noise power falls as f**-exponent, exponent drawn in [0, this]: white (0), pink (1), brown (2)
NOISE_LOWEST_HZ = 50.0  # noise has no power below this: f**-exponent would put most of brown noise's at DC and sub-audio drift


def draw_noise(aug: AugmentConfig, sample_rate: int, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray] | None:
    """For one utterance: None (no noise, with probability 1 - aug.noise_prob), or a function that
    adds noise (add_noise) at an SNR drawn uniformly in aug.noise_snr_db (dB) and a color drawn
    uniformly in [0, NOISE_MAX_EXPONENT]. Takes 4 draws from rng for a noisy utterance, 1 for a
    clean one, none when aug.noise_prob is 0 (so a recipe without noise draws its masks as before
    the option existed); the noise's samples come from a generator seeded by one of the 4."""
    if aug.noise_prob == 0 or rng.random() >= aug.noise_prob:
        return None
    snr_db = float(rng.uniform(*aug.noise_snr_db))
    exponent = float(rng.uniform(0.0, NOISE_MAX_EXPONENT))
    noise_rng = np.random.default_rng(int(rng.integers(2**63)))
    return lambda audio: add_noise(audio, sample_rate, snr_db, exponent, noise_rng)


def add_noise(audio: np.ndarray, sample_rate: int, snr_db: float, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """audio float32 [samples] plus Gaussian noise whose power spectrum falls as f**-exponent from
    NOISE_LOWEST_HZ up (none below it, none at DC), scaled so that the utterance's mean power is
    snr_db above the noise's; float32 [samples]. Silence (zero power) is returned as it is: no SNR
    defines a level for its noise."""
    audio = np.asarray(audio, dtype=np.float32)
    signal_power = float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0
    if signal_power == 0.0:
        return audio
    size = scipy.fft.next_fast_len(audio.size, real=True)
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    shape = np.where(freqs >= NOISE_LOWEST_HZ, np.maximum(freqs, NOISE_LOWEST_HZ) ** (-exponent / 2), 0.0)
    if not shape.any():  # too short to hold a frequency above NOISE_LOWEST_HZ: white
        shape[1:] = 1.0
    spectrum = (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)) * shape
    noise = scipy.fft.irfft(spectrum, size)[: audio.size]
    noise_power = float(np.mean(np.square(noise)))
    if noise_power == 0.0:
        return audio
    gain = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (audio + gain * noise).astype(np.float32)
