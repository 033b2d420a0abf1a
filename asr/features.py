"""MFCC features, their normalization statistics, and the on-disk feature cache."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.sparse

from asr.audio import change_speed, load_audio
from asr.config import FeatureConfig
from asr.errors import ConfigError, DataError
from asr.io import atomic_open, atomic_write_text, read_text

log = logging.getLogger(__name__)

AMIN = 1e-10  # floor on mel power before the log (librosa's power_to_db default)
TOP_DB = 80.0  # dB; log-mel values are clipped to (utterance maximum - TOP_DB), as librosa.feature.mfcc does
DELTA_WIDTH = 9  # frames in the delta regression window (+-4 frames = +-40 ms at a 10 ms hop)
STD_FLOOR = 1e-5  # smallest standard deviation used to divide by (a constant coefficient stays finite)
CACHE_VERSION = 1  # bump when compute_features changes, so stale cache entries are ignored
# dBFS (20 * log10(rms), samples in [-1, 1]): the level features.gain_normalization "rms" scales every
# waveform to. -27 dBFS is the median RMS level of the 883 train-clean-5 training utterances, so a
# model trained without gain normalization hears speech at its usual level. Models saved with "rms"
# depend on it, and the feature cache keys on it.
TARGET_RMS_DBFS = -27.0
RMS_FLOOR = 1e-7  # waveforms quieter than this RMS (-140 dBFS, below 16-bit quantization noise) are left as they are


@dataclasses.dataclass(frozen=True)
class _Analysis:
    """Everything compute_features needs that depends only on the config: built once per config."""

    hop: int  # samples between frames
    n_fft: int  # FFT size, samples (next power of two >= the window)
    window: np.ndarray  # float32 [n_fft]: Hann window of win samples, centred and zero-padded
    mel_basis: scipy.sparse.csr_array  # float32 [n_mels, n_fft // 2 + 1]; sparse: each band spans a few bins
    dct: np.ndarray  # float32 [n_mfcc, n_mels]: orthonormal DCT-II, as librosa.feature.mfcc
    delta_kernels: tuple[np.ndarray, ...]  # Savitzky-Golay derivative kernels (orders 1, 2) as librosa.feature.delta


def hop_samples(cfg: FeatureConfig) -> int:
    """Samples between consecutive frames (160 at 16 kHz and a 10 ms hop)."""
    return int(round(cfg.sample_rate * cfg.hop_ms / 1000.0))


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames compute_features returns for an audio of num_samples (centred frames: 1 + samples // hop)."""
    return 1 + num_samples // hop_samples(cfg)


def frames_for_duration(duration: float, cfg: FeatureConfig) -> int:
    """Frames expected for `duration` seconds of audio (used to filter and bucket before loading)."""
    return num_frames(int(round(duration * cfg.sample_rate)), cfg)


@functools.lru_cache(maxsize=8)
def _analysis(cfg: FeatureConfig) -> _Analysis:
    cfg.validate()
    win = int(round(cfg.sample_rate * cfg.win_ms / 1000.0))
    n_fft = 1 << (win - 1).bit_length()
    left = (n_fft - win) // 2  # the window centred in the FFT frame, as librosa.util.pad_center
    window = np.pad(_hann(win), (left, n_fft - win - left))
    mel = mel_filterbank(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    dct = scipy.fft.dct(np.eye(cfg.n_mels), axis=0, type=2, norm="ortho")[: cfg.n_mfcc].astype(np.float32)
    kernels = tuple(_savgol_derivative(DELTA_WIDTH, order).astype(np.float32) for order in (1, 2))
    return _Analysis(hop_samples(cfg), n_fft, window.astype(np.float32), scipy.sparse.csr_array(mel), dct, kernels)


# The window and the delta kernels are computed here rather than by scipy.signal, whose import
# (with scipy.stats) took 0.4 s of every `asr transcribe` start; tests/test_startup.py checks them
# against scipy.signal bit for bit.


def _hann(length: int) -> np.ndarray:
    """float64 [length]: the periodic Hann window, scipy.signal.get_window("hann", length)."""
    if length <= 1:
        return np.ones(length)
    fac = np.linspace(-np.pi, np.pi, length + 1)
    window = np.zeros(length + 1)
    for k, a in enumerate((0.5, 0.5)):  # scipy's general cosine window, term by term
        window += a * np.cos(k * fac)
    return window[:-1]


def _savgol_derivative(width: int, order: int) -> np.ndarray:
    """float64 [width]: convolution weights of the order-th derivative of a least-squares
    polynomial of degree order over width frames, scipy.signal.savgol_coeffs(width, order, deriv=order)."""
    x = np.arange(-(width // 2), width - width // 2, dtype=np.float64)[::-1]
    design = x ** np.arange(order + 1, dtype=np.float64).reshape(-1, 1)
    target = np.zeros(order + 1)
    target[order] = float(math.factorial(order))
    return np.linalg.lstsq(design, target, rcond=None)[0]


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """float32 [n_mels, n_fft // 2 + 1]: triangular filters on the Slaney mel scale, area-normalized.

    librosa.filters.mel(htk=False, norm="slaney", dtype=float32) number for number (the same
    operations in the same order; tests/test_features.py checks every bit), without importing
    librosa: its numba start-up took about 1 s of every `asr transcribe`.
    """
    fmax = float(sample_rate) / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))  # band edges and centres, Hz
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]  # about equal energy per band
    return weights


# The Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MEL_MIN_LOG_HZ = 1000.0  # Hz where the logarithmic part begins
_MEL_MIN_LOG_MEL = _MEL_MIN_LOG_HZ / _MEL_F_SP
_MEL_LOG_STEP = np.log(6.4) / 27.0  # log(Hz) per mel in the logarithmic part


def _hz_to_mel(hz: float) -> float:
    if hz >= _MEL_MIN_LOG_HZ:
        return _MEL_MIN_LOG_MEL + np.log(hz / _MEL_MIN_LOG_HZ) / _MEL_LOG_STEP
    return (hz - 0.0) / _MEL_F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = 0.0 + _MEL_F_SP * mels
    log_part = mels >= _MEL_MIN_LOG_MEL
    hz[log_part] = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[log_part] - _MEL_MIN_LOG_MEL))
    return hz


def analysis(cfg: FeatureConfig) -> _Analysis:
    """The config's analysis constants (hop, FFT size, window, mel filterbank, DCT, delta kernels),
    built once; asr.export's TensorFlow front end computes with these very arrays."""
    return _analysis(cfg)


def mel_to_mfcc_matrix(cfg: FeatureConfig) -> np.ndarray:
    """float32 [n_mfcc, n_mels]: the orthonormal DCT-II rows that turn a log-mel frame into MFCCs."""
    return _analysis(cfg).dct


def compute_features(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """MFCCs (+ deltas and delta-deltas) of a mono waveform at cfg.sample_rate.

    audio: float32 [samples]. Returns float32 [T, cfg.num_features], T = 1 + samples // hop, laid out
    [mfcc | delta | delta-delta], un-normalized. Equal (to float32 rounding) to librosa.feature.mfcc
    (n_fft = next power of two >= the window, centred zero-padded frames, Hann window, power
    spectrum, dB with top_db=80) followed by librosa.feature.delta(mode="nearest"), but computed in
    float32 with the filterbank built once and applied as a sparse matrix: about 30x faster.
    """
    a = _analysis(cfg)
    audio = normalize_gain(np.asarray(audio, dtype=np.float32), cfg)
    mfcc = np.ascontiguousarray((a.dct @ _log_mel(audio, a)).T)  # [T, n_mfcc]
    if not cfg.deltas:
        return mfcc
    deltas = [scipy.ndimage.convolve1d(mfcc, k, axis=0, mode="nearest") for k in a.delta_kernels]
    return np.concatenate([mfcc, *deltas], axis=1)


def normalize_gain(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """float32 [samples] -> float32 [samples]: the waveform at TARGET_RMS_DBFS when cfg.gain_normalization is "rms".

    A gain g only adds 20 * log10(g) dB to every log-mel value, i.e. shifts c0 (log energy) by a
    constant that global normalization would pass on to the model; scaling to a fixed RMS removes
    it, so the same speech recorded at any level gives the same features (to float rounding).
    "none" returns the audio as it is. Silence (RMS below RMS_FLOOR, e.g. all zeros) is not scaled.
    """
    if cfg.gain_normalization == "none" or audio.size == 0:
        return audio
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < RMS_FLOOR:
        return audio
    return audio * np.float32(10.0 ** (TARGET_RMS_DBFS / 20.0) / rms)


def _log_mel(audio: np.ndarray, a: _Analysis) -> np.ndarray:
    """float32 [samples] -> log-mel power in dB, float32 [n_mels, T].

    The dense filterbank product would go to a multi-threaded BLAS that is ten times slower than
    this sparse one on a busy machine; hence the sparse matrix and the [bins, T] layout.
    """
    padded = np.pad(audio, a.n_fft // 2)
    count = 1 + (padded.shape[0] - a.n_fft) // a.hop
    frames = np.lib.stride_tricks.as_strided(padded, (count, a.n_fft), (padded.strides[0] * a.hop, padded.strides[0]))
    spectrum = scipy.fft.rfft(frames * a.window, axis=1)  # complex64 [T, n_fft // 2 + 1]
    power = np.ascontiguousarray((spectrum.real**2 + spectrum.imag**2).T)  # [bins, T]
    log_mel = 10.0 * np.log10(np.maximum(a.mel_basis @ power, AMIN))
    return np.maximum(log_mel, log_mel.max() - TOP_DB)


# --- normalization -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Global per-coefficient statistics over the training frames: mean [F], std [F] (float32)."""

    mean: np.ndarray
    std: np.ndarray
    num_frames: int = 0  # frames they were computed from

    @classmethod
    def from_features(cls, feature_arrays: Iterable[np.ndarray]) -> "FeatureStats":
        """Mean and standard deviation over all frames of arrays [T, F] (float64 accumulators)."""
        total, total_sq, count = None, None, 0
        for feats in feature_arrays:
            f64 = np.asarray(feats, dtype=np.float64)
            total = f64.sum(axis=0) if total is None else total + f64.sum(axis=0)
            total_sq = (f64**2).sum(axis=0) if total_sq is None else total_sq + (f64**2).sum(axis=0)
            count += f64.shape[0]
        if not count:
            raise DataError("cannot compute feature statistics from zero frames: the training set is empty")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return cls(mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32), count)

    def save(self, path: str | Path) -> None:
        """Writes the statistics as JSON (atomically)."""
        data = {"mean": self.mean.tolist(), "std": self.std.tolist(), "num_frames": int(self.num_frames)}
        atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Reads statistics written by save(); DataError if the file is missing or malformed."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: feature statistics file not found; compute them on the training set")
        text = read_text(path, "feature statistics file")
        try:
            data = json.loads(text)
            mean = np.asarray(data["mean"], dtype=np.float32)
            std = np.asarray(data["std"], dtype=np.float32)
            num = int(data.get("num_frames", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed feature statistics ({exc}); delete it to recompute") from None
        if mean.ndim != 1 or mean.shape != std.shape or not (np.all(np.isfinite(mean)) and np.all(std > 0)):
            raise DataError(f"{path}: feature statistics need finite mean and positive std of equal length; delete it to recompute")
        return cls(mean, std, num)


def compute_stats(paths: Sequence[str | Path], cfg: FeatureConfig, cache_dir: str | Path | None = None, num_workers: int = 2) -> FeatureStats:
    """Global statistics of the raw features of the given (training) audio files.

    Fills the feature cache on the way when cache_dir is given. num_workers threads extract in
    parallel (decoding, FFTs and matrix products release the GIL); files are summed in order.
    """
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        return FeatureStats.from_features(pool.map(lambda p: extract(p, cfg, cache_dir), paths))


def normalize(feats: np.ndarray, cfg: FeatureConfig, stats: FeatureStats | None) -> np.ndarray:
    """[T, F] raw features -> [T, F] float32 with zero mean and unit variance per coefficient."""
    mean, std = normalization(feats, cfg, stats)
    return ((feats - mean) / std).astype(np.float32, copy=False)


def normalization(feats: np.ndarray, cfg: FeatureConfig, stats: FeatureStats | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], std [F]) that normalize() applies to these raw features [T, F].

    cfg.normalization "global" uses `stats` (training-set statistics, saved with the model);
    "utterance" uses this utterance's own mean and std (stats unused, may be None).
    """
    if cfg.normalization == "utterance":
        return feats.mean(axis=0), np.maximum(feats.std(axis=0), STD_FLOOR)
    if stats is None:
        raise ConfigError("features.normalization 'global' needs feature statistics computed on the training set")
    if stats.mean.shape[0] != feats.shape[1]:
        raise ConfigError(f"feature statistics have {stats.mean.shape[0]} coefficients but the features have {feats.shape[1]}: recompute them for this feature config")
    return stats.mean, stats.std


# --- cache and the one path from file to model input ---------------------------------------------


def extract(path: str | Path, cfg: FeatureConfig, cache_dir: str | Path | None = None, speed: float = 1.0) -> np.ndarray:
    """Raw features float32 [T, F] of an audio file, computed once and reused from cache_dir.

    speed != 1 extracts them from the audio played that many times faster (audio.change_speed;
    training-time speed perturbation), T shrinking about in proportion. An entry is keyed by the
    resolved path, the file's size and mtime, the feature config and the speed, so a changed file
    or config is recomputed. Entries are written atomically (several processes may share the
    cache) and read with allow_pickle=False. cache_dir None: no caching.
    """
    if cache_dir is None:
        return _compute(path, cfg, speed)
    entry = Path(cache_dir) / f"{_cache_key(Path(path), cfg, speed)}.npy"
    cached = _read_cache(entry, cfg)
    if cached is not None:
        return cached
    feats = _compute(path, cfg, speed)
    _write_cache(entry, feats)
    return feats


def _load(path: str | Path, cfg: FeatureConfig, speed: float) -> np.ndarray:
    """The waveform at cfg.sample_rate, played `speed` times faster."""
    return change_speed(load_audio(path, cfg.sample_rate), speed, cfg.sample_rate)


def _compute(path: str | Path, cfg: FeatureConfig, speed: float) -> np.ndarray:
    return compute_features(_load(path, cfg, speed), cfg)


def features_for_model(
    path: str | Path,
    cfg: FeatureConfig,
    stats: FeatureStats | None,
    cache_dir: str | Path | None = None,
    speed: float = 1.0,
    augment: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    noise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The model's input for an audio file, float32 [T, F]: load -> MFCC -> normalize.

    The one feature path of the project: training batches and inference both call it. Training
    may add speed perturbation (speed), a function noise(audio [samples]) -> audio [samples]
    applied to the waveform after it (augment.draw_noise; such features are computed afresh, never
    cached), and a masking function augment(raw [T, F], mean [F]) -> raw [T, F]
    (augment.spec_augment), which sees the raw features and the mean that normalization will
    subtract, so that a masked value becomes 0 after global normalization.
    """
    if noise is None:
        raw = extract(path, cfg, cache_dir, speed)
    else:
        raw = compute_features(noise(_load(path, cfg, speed)), cfg)
    if augment is not None:
        raw = augment(raw, normalization(raw, cfg, stats)[0])
    return normalize(raw, cfg, stats)


def _cache_key(path: Path, cfg: FeatureConfig, speed: float = 1.0) -> str:
    resolved = path.resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    # normalization is applied after the cache, so it is left out: both modes share entries.
    # gain_normalization "none" is left out too, so entries written before the option existed stay
    # valid; any other mode keys on its name and target level.
    raw_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("normalization", "gain_normalization")}
    key = [CACHE_VERSION, str(resolved), st.st_size, st.st_mtime_ns, raw_cfg] + ([] if speed == 1.0 else [speed])
    if cfg.gain_normalization != "none":
        key += [cfg.gain_normalization, TARGET_RMS_DBFS]
    ident = json.dumps(key, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _read_cache(entry: Path, cfg: FeatureConfig) -> np.ndarray | None:
    try:
        feats = np.load(entry, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (ValueError, OSError, EOFError) as exc:
        log.warning("feature cache entry %s is unreadable (%s); recomputing it", entry, exc)
        return None
    if feats.ndim != 2 or feats.shape[1] != cfg.num_features or feats.dtype != np.float32:
        log.warning("feature cache entry %s has shape %s %s; recomputing it", entry, feats.shape, feats.dtype)
        return None
    return feats


def _write_cache(entry: Path, feats: np.ndarray) -> None:
    """Stores an entry; a failed write (a full disk) costs recomputing it later, not the run."""
    try:
        # not durable (no fsync): an entry lost or emptied by a power cut is recomputed on reading
        with atomic_open(entry, "wb", durable=False) as f:
            np.save(f, feats, allow_pickle=False)
    except OSError as exc:
        log.warning("feature cache entry %s not written (%s); features are recomputed when needed", entry, exc.strerror or exc)
