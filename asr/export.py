"""The model's inference function, exported to run without asr (SavedModel, TFLite) or cached already traced.

One function computes log-probabilities from normalized features, `log_probs(features [B, T, F],
lengths [B]) -> {"log_probs" [B, T', V], "output_lengths" [B]}` (make_forward): the Recognizer
runs it, `asr export` saves it, and the trace cache keeps it traced for the next start.

- SavedModel (`asr export MODEL OUT --format saved_model`): signatures SERVING (features in) and
  WAVEFORM (a mono waveform at the model's rate in, through a TensorFlow twin of asr.features: within
  WAVEFORM_TOLERANCE of it), loadable with `tf.saved_model.load` alone.
- TFLite (`--format tflite`): OUT/model.tflite, both signatures at batch 1, builtin ops only
  (no Flex delegate, which TensorFlow 2.20+'s pip package no longer ships: a model that needs it
  converts but cannot run in Python). The recurrent loop is traced under asr.rnn.forward_only,
  because the converter cannot lower TensorListPopBack; TensorListReserve lowers to a Fill that
  needs the batch size known, hence batch 1.
- Beside either, INFO_FILE: the feature config, normalization statistics, vocabulary and frame
  shift a user needs to compute features and read the outputs without asr.
- The trace cache (load_forward with a cache_dir): a SavedModel of the same function, keyed by
  the weights' SHA-256, the model config and the code that builds the graph, so a changed model
  or asr is traced afresh; loading it and running it once took 0.6 s where building the Keras
  model and tracing it took 1.3 s (bench/startup.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from asr import checkpoint, features, rnn
from asr.config import Config
from asr.errors import ConfigError
from asr.io import atomic_dir, check_replaceable_dir, sha256_file
from asr.model import AcousticModel

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite")
SERVING = "serving_default"  # features [B, T, F] float32 + lengths [B] int32 -> log_probs [B, T', V], output_lengths [B]
WAVEFORM = "waveform"  # waveform [B, S] float32 at the model's rate + num_samples [B] int32 -> the same outputs
INFO_FILE = "asr_export.json"  # front end and vocabulary beside an export
TFLITE_FILE = "model.tflite"
EXPORT_VERSION = 1  # INFO_FILE's layout
# Bound on |difference| between the WAVEFORM signature's log-probabilities and the Keras model's
# on asr.features: 1e-5 was the largest on dev utterances (the float32 FFT and sums run in another
# order), tests/test_export.py holds it to this.
WAVEFORM_TOLERANCE = 1e-4
_SAVED_MODEL_FILES = ("saved_model.pb", "fingerprint.pb", "variables", "assets", INFO_FILE)
_OWN_FILES = {"saved_model": _SAVED_MODEL_FILES, "tflite": (TFLITE_FILE, INFO_FILE)}

TRACE_CACHE_ENTRIES = 4  # traced models kept in a cache folder, the least recently used dropped first
TRACE_CACHE_VERSION = 1  # bump when what an entry holds changes
_ENTRY_FILE = "entry.json"  # in a cache entry: what it was traced from (for people)
# The code a traced graph comes from (glob patterns in asr/): an entry traced by other code is never used.
_GRAPH_SOURCES = ("model.py", "rnn/*.py", "export.py")


# --- the inference function ----------------------------------------------------------------------


def build_model(model_dir: str | Path, config: Config, vocab_size: int) -> AcousticModel:
    """The Keras model of a model directory, weights loaded (float32, inference)."""
    model = AcousticModel(config.model, config.features.num_features, vocab_size)
    model.build_weights()
    checkpoint.load_weights(model_dir, model)
    return model


def make_forward(model: AcousticModel, num_features: int, batch_size: int | None = None):
    """The tf.function log_probs(features [B, T, F] float32, lengths [B] int32) ->
    {"log_probs": [B, T', V] log-softmax, "output_lengths": [B]}, traced once for any B and T
    (B fixed to batch_size when given). Frames past an utterance's output length hold the
    log-softmax of zero logits and carry no meaning."""
    signature = [
        tf.TensorSpec([batch_size, None, num_features], tf.float32, name="features"),
        tf.TensorSpec([batch_size], tf.int32, name="lengths"),
    ]

    @tf.function(input_signature=signature)
    def log_probs(features, lengths):
        with rnn.forward_only():  # inference never takes a gradient; TFLite needs it (module docstring)
            logits, out_lengths = model(features, lengths, training=False)
        return {"log_probs": tf.nn.log_softmax(logits), "output_lengths": out_lengths}

    return log_probs


def _module(model: AcousticModel, forward, waveform=None) -> tf.Module:
    """A tf.Module holding the weights and the functions, without the Keras model: Keras layers
    add serving functions of their own to a SavedModel, which would not trace with two inputs."""
    module = tf.Module()
    module.weights = [w.value for w in model.weights]  # the tf.Variables the functions capture
    module.log_probs = forward
    if waveform is not None:
        module.log_probs_from_waveform = waveform
    return module


# --- the waveform front end in TensorFlow ops ----------------------------------------------------


def make_waveform_forward(forward, config: Config, stats: features.FeatureStats | None, batch_size: int | None = None,
                          gain_dtype=tf.float64):
    """The tf.function log_probs_from_waveform(waveform [B, S] float32 at the model's sample rate,
    mono, in [-1, 1], zero-padded; num_samples [B] int32) -> forward's outputs, through
    tf_features (features.compute_features and normalize in TensorFlow ops). B is fixed to
    batch_size when given; gain_dtype: see tf_features."""
    signature = [
        tf.TensorSpec([batch_size, None], tf.float32, name="waveform"),
        tf.TensorSpec([batch_size], tf.int32, name="num_samples"),
    ]

    @tf.function(input_signature=signature)
    def log_probs_from_waveform(waveform, num_samples):
        feats, lengths = tf_features(waveform, num_samples, config.features, stats, gain_dtype)
        return forward(feats, lengths)

    return log_probs_from_waveform


def tf_features(waveform, num_samples, cfg, stats, gain_dtype=tf.float64):
    """features.features_for_model's computation from a waveform, in TensorFlow ops, batched.

    waveform [B, S] float32 (samples past num_samples [B] are ignored) -> (normalized features
    [B, T, F] float32, zero past each length; lengths [B] = 1 + num_samples // hop). The same
    constants (features.analysis) and steps: gain to TARGET_RMS_DBFS, centred zero-padded frames,
    Hann window, power spectrum, mel filterbank, dB floored at AMIN and clipped TOP_DB below the
    utterance's maximum, DCT, Savitzky-Golay deltas with the edge frames repeated, normalization.
    gain_dtype: of the mean square that sets the gain, float64 as NumPy computes it, or float32
    where float64 ops are missing (TFLite); the features differ by float32 rounding either way.
    """
    a = features.analysis(cfg)
    audio = waveform * tf.sequence_mask(num_samples, tf.shape(waveform)[1], dtype=tf.float32)
    if cfg.gain_normalization == "rms":
        audio = _normalize_gain(audio, num_samples, gain_dtype)
    padded = tf.pad(audio, [[0, 0], [a.n_fft // 2, a.n_fft // 2]])
    frames = tf.signal.frame(padded, a.n_fft, a.hop)  # [B, 1 + S // hop, n_fft]
    spectrum = tf.signal.rfft(frames * a.window.astype(np.float32), fft_length=[a.n_fft])
    power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
    mel = tf.tensordot(power, tf.constant(a.mel_basis.toarray().T), axes=1)  # [B, T, n_mels]
    log_mel = 10.0 * (tf.math.log(tf.maximum(mel, features.AMIN)) / np.float32(np.log(10.0)))
    lengths = 1 + num_samples // a.hop
    valid = tf.sequence_mask(lengths, tf.shape(log_mel)[1])[:, :, tf.newaxis]  # [B, T, 1]
    peak = tf.reduce_max(tf.where(valid, log_mel, -np.inf), axis=[1, 2], keepdims=True)
    log_mel = tf.maximum(log_mel, peak - features.TOP_DB)
    feats = tf.tensordot(log_mel, tf.constant(a.dct.T), axes=1)  # [B, T, n_mfcc]
    if cfg.deltas:
        feats = tf.concat([feats] + [_delta(feats, lengths, k) for k in a.delta_kernels], axis=-1)
    feats = tf.where(valid, _normalize(feats, valid, cfg, stats), 0.0)
    feats.set_shape([waveform.shape[0], None, cfg.num_features])  # a static batch size stays known (TFLite needs it)
    return feats, lengths


def _normalize_gain(audio, num_samples, dtype):
    """features.normalize_gain on a batch: each row scaled to TARGET_RMS_DBFS over its own samples
    (mean square in dtype), rows quieter than RMS_FLOOR left as they are."""
    count = tf.cast(tf.maximum(num_samples, 1), dtype)
    rms = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(audio, dtype)), axis=1) / count)
    target = 10.0 ** (features.TARGET_RMS_DBFS / 20.0)
    gain = tf.where(rms < features.RMS_FLOOR, tf.ones_like(rms), target / tf.maximum(rms, features.RMS_FLOOR))
    return audio * tf.cast(gain, tf.float32)[:, tf.newaxis]


def _delta(feats, lengths, kernel):
    """scipy.ndimage.convolve1d(feats, kernel, axis=time, mode="nearest") within each utterance's
    length: frame t gets sum_d kernel[half - d] * feats[clip(t + d, 0, length - 1)]."""
    half = len(kernel) // 2
    time = tf.range(tf.shape(feats)[1])[tf.newaxis, :]  # [1, T]
    last = (lengths - 1)[:, tf.newaxis]  # [B, 1]
    out = 0.0
    for d in range(-half, half + 1):
        index = tf.minimum(tf.maximum(time + d, 0), last)  # [B, T]
        out += float(kernel[half - d]) * tf.gather(feats, index, batch_dims=1)
    return out


def _normalize(feats, valid, cfg, stats):
    if cfg.normalization == "global":
        return (feats - stats.mean) / stats.std
    weights = tf.cast(valid, tf.float32)
    count = tf.reduce_sum(weights, axis=1, keepdims=True)
    mean = tf.reduce_sum(feats * weights, axis=1, keepdims=True) / count
    std = tf.sqrt(tf.reduce_sum(tf.square(feats - mean) * weights, axis=1, keepdims=True) / count)
    return (feats - mean) / tf.maximum(std, features.STD_FLOOR)


# --- exports -------------------------------------------------------------------------------------


def export(model_dir: str | Path, out: str | Path, fmt: str = "saved_model") -> Path:
    """Writes model_dir's inference function to the folder out (atomically) in format fmt
    ("saved_model" or "tflite", see the module docstring), with INFO_FILE beside it.

    out may exist only if it holds an earlier export (nothing else is replaced); checked first.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    check_replaceable_dir(out, "export folder", _OWN_FILES[fmt])
    config, vocab, stats = checkpoint.read_model_meta(model_dir)
    model = build_model(model_dir, config, vocab.size)
    num_features = config.features.num_features
    with atomic_dir(out) as tmp:
        if fmt == "saved_model":
            forward = make_forward(model, num_features)
            waveform = make_waveform_forward(forward, config, stats)
            module = _module(model, forward, waveform)
            tf.saved_model.save(module, str(tmp), signatures={SERVING: forward, WAVEFORM: waveform})
            signatures = [SERVING, WAVEFORM]
        else:
            (tmp / TFLITE_FILE).write_bytes(tflite_model(model, config, stats))
            signatures = [SERVING, WAVEFORM]
        info = export_info(config, vocab, stats, fmt, signatures)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out


def tflite_model(model: AcousticModel, config: Config, stats: features.FeatureStats | None) -> bytes:
    """The SERVING and WAVEFORM functions at batch 1 as a TFLite flatbuffer of builtin ops.

    Each signature traces its own copy of the forward function (the converter fails to lower the
    loop's TensorLists in a function that two signatures call; the weights are stored once), and
    the waveform's gain is computed in float32 (TFLite has no float64 ops)."""
    num_features = config.features.num_features
    forward = make_forward(model, num_features, batch_size=1)
    waveform = make_waveform_forward(make_forward(model, num_features, batch_size=1), config, stats, batch_size=1, gain_dtype=tf.float32)
    with tempfile.TemporaryDirectory(prefix="asr-tflite-") as folder:
        tf.saved_model.save(_module(model, forward, waveform), folder, signatures={SERVING: forward, WAVEFORM: waveform})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SERVING, WAVEFORM])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def export_info(config: Config, vocab, stats, fmt: str, signatures: list[str]) -> dict:
    """What a user needs beside the exported function: inputs, outputs, the front end, the vocabulary."""
    cfg = config.features
    batch = "1" if fmt == "tflite" else "B"
    io = {
        SERVING: {"inputs": {"features": f"float32 [{batch}, T, {cfg.num_features}]", "lengths": f"int32 [{batch}]"}},
        WAVEFORM: {"inputs": {"waveform": f"float32 [{batch}, S] mono at {cfg.sample_rate} Hz", "num_samples": f"int32 [{batch}]"}},
    }
    outputs = {"log_probs": f"float32 [{batch}, T', {vocab.size}]", "output_lengths": f"int32 [{batch}]"}
    return {
        "export_version": EXPORT_VERSION,
        "format": fmt,
        "signatures": {name: {**io[name], "outputs": outputs} for name in signatures},
        "features": {**dataclasses.asdict(cfg), "num_features": cfg.num_features, "win_samples": int(round(cfg.sample_rate * cfg.win_ms / 1000)),
                     "hop_samples": features.hop_samples(cfg), "n_fft": features.analysis(cfg).n_fft,
                     "amin": features.AMIN, "top_db": features.TOP_DB, "delta_width": features.DELTA_WIDTH,
                     "target_rms_dbfs": features.TARGET_RMS_DBFS, "rms_floor": features.RMS_FLOOR, "std_floor": features.STD_FLOOR},
        "normalization": None if stats is None else {"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        "frame_stride": config.model.frame_stride,
        "output_frame_seconds": config.model.frame_stride * cfg.hop_ms / 1000.0,
        "vocabulary": [""] + list(vocab.alphabet),  # index 0: the CTC blank
        "blank": 0,
        "waveform_tolerance": WAVEFORM_TOLERANCE if WAVEFORM in signatures else None,
    }


# --- the trace cache -----------------------------------------------------------------------------


def trace_cache_dir() -> Path:
    """Where traced inference functions are cached: $ASR_CACHE_DIR/traced (the feature cache's
    folder), else ~/.cache/asr/traced."""
    root = os.environ.get("ASR_CACHE_DIR")
    return Path(root) / "traced" if root else Path.home() / ".cache" / "asr" / "traced"


def load_forward(model_dir: str | Path, config: Config, vocab_size: int, cache_dir: str | Path | None = None):
    """(model, forward) for a model directory: forward(features [B, T, F], lengths [B]) ->
    (log-probabilities [B, T', V], output lengths [B]) tensors, make_forward's function.

    cache_dir None: the Keras model is built and the function traced. Else the function is loaded
    from cache_dir when an entry for these weights, config and code is there (model is then None),
    or traced and saved there after its first run, for next time; a damaged or unwritable cache
    costs a warning and a trace, never a wrong result (outputs are identical either way:
    tests/test_startup.py).
    """
    if cache_dir is None:
        model = build_model(model_dir, config, vocab_size)
        return model, _pair(make_forward(model, config.features.num_features))
    entry = Path(cache_dir) / cache_key(model_dir, config, vocab_size)
    loaded = _load_entry(entry)
    if loaded is not None:
        return None, loaded
    model = build_model(model_dir, config, vocab_size)
    forward = make_forward(model, config.features.num_features)
    unsaved = [_module(model, forward)]

    def run(feats, lengths):
        out = forward(feats, lengths)
        try:  # after the first run, which traced it: a model that never ran is never cached
            module = unsaved.pop()
        except IndexError:
            pass
        else:
            _save_entry(entry, module, model_dir)
        return out["log_probs"], out["output_lengths"]

    return model, run


def cache_key(model_dir: str | Path, config: Config, vocab_size: int) -> str:
    """The entry name: SHA-256 of the weights, the model and feature-size config, the vocabulary
    size, the versions of TensorFlow and Keras, and the source of the code that builds the graph."""
    here = Path(__file__).parent
    ident = {
        "version": TRACE_CACHE_VERSION,
        "weights": sha256_file(Path(model_dir) / "weights.npz"),
        "model": dataclasses.asdict(config.model),
        "num_features": config.features.num_features,
        "vocab_size": vocab_size,
        "tensorflow": tf.__version__,
        "keras": _keras_version(),
        "code": {
            str(path.relative_to(here)): sha256_file(path) for pattern in _GRAPH_SOURCES for path in sorted(here.glob(pattern))
        },
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _keras_version() -> str:
    import keras

    return keras.__version__


def _pair(forward):
    def run(feats, lengths):
        out = forward(feats, lengths)
        return out["log_probs"], out["output_lengths"]

    return run


def _load_entry(entry: Path):
    """The cached function of entry (a SavedModel), or None when there is none or it is unreadable."""
    if not (entry / "saved_model.pb").is_file():
        return None
    try:
        module = tf.saved_model.load(str(entry))
        forward = module.log_probs
    except Exception as exc:  # noqa: BLE001 - a damaged entry (any TensorFlow error) is traced afresh
        log.warning("trace cache entry %s is unreadable (%s); tracing the model again", entry, " ".join(str(exc).split())[:200])
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        os.utime(entry)  # most recently used
    except OSError:
        pass

    def run(feats, lengths):
        out = forward(feats, lengths)  # module stays referenced: it owns the restored variables
        return out["log_probs"], out["output_lengths"]

    run.module = module
    return run


def _save_entry(entry: Path, module: tf.Module, model_dir) -> None:
    """Writes entry atomically, then drops the least recently used entries past TRACE_CACHE_ENTRIES;
    a failure (a read-only or full disk) is a warning: the next start traces again."""
    try:
        with atomic_dir(entry) as tmp:
            tf.saved_model.save(module, str(tmp))
            record = {"model_dir": str(Path(model_dir).resolve()), "tensorflow": tf.__version__}
            (tmp / _ENTRY_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("trace cache entry %s not written (%s); the next start traces the model again", entry, exc.strerror or exc)
        return
    _prune(entry.parent)


def _prune(cache_dir: Path, keep: int = TRACE_CACHE_ENTRIES) -> list[Path]:
    entries = [p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return entries[keep:]
