"""SpecAugment for MFCC features: frequency masks on the mel bands behind the MFCCs, and time masks."""

from __future__ import annotations

import numpy as np

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
