"""Manifests (JSONL) and the tf.data pipeline that turns them into padded batches with lengths."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from asr.augment import draw_noise, spec_augment
from asr.config import AugmentConfig, FeatureConfig
from asr.errors import ConfigError, DataError
from asr.features import FeatureStats, features_for_model, frames_for_duration
from asr.io import atomic_write_text, read_text
from asr.text import Vocabulary, normalize_text

LABEL_PAD = 0  # value of padded label positions (the blank; label_lengths says where labels end)
FEATURE_PAD = 0.0  # value of padded feature frames (the normalized mean)
PREFETCH_BATCHES = 2  # batches prepared ahead of the training step


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One manifest entry."""

    id: str  # unique within a manifest
    audio_filepath: str  # absolute path to the audio file
    duration: float  # seconds
    text: str  # transcript, normalized (asr.text.normalize_text: lower case, no punctuation)
    speaker: str | None = None


# --- manifests -----------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> list[Utterance]:
    """Reads a JSONL manifest: one {"audio_filepath", "duration", "text"} object per line (NeMo).

    Optional keys: "id" (default: the audio file's stem) and "speaker"; other keys are ignored.
    Texts are normalized (normalize_text), so "Hello, World!" trains and scores as "hello world".
    Relative audio paths resolve against the manifest's folder. A malformed line, a missing audio
    file or a repeated id raises DataError naming the manifest and the line number; so does a
    manifest that is missing, unreadable, not UTF-8 or without any utterance.
    """
    path = Path(path)
    lines = read_text(path, "manifest", missing="prepare the data first (python -m data_scripts.librispeech --help)").splitlines()
    utterances, seen = [], {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utt = _parse_line(line, path, lineno)
        if utt.id in seen:
            raise DataError(f"{path}:{lineno}: id {utt.id!r} already used on line {seen[utt.id]}; give each entry a unique \"id\"")
        seen[utt.id] = lineno
        utterances.append(utt)
    if not utterances:
        raise DataError(f"{path}: empty manifest (no utterance lines); each line must be one JSON object with audio_filepath, duration and text")
    return utterances


def read_manifest_lenient(path: str | Path) -> tuple[list[tuple[int, Utterance]], list[dict]]:
    """read_manifest for `asr check-data`: collects problems instead of stopping at the first.

    Returns ([(line number, utterance)] of the well-formed lines, audio files not checked, repeated
    ids kept) and problems [{"line", "kind": "bad_line", "reason"}]. A manifest that is missing,
    unreadable or not UTF-8 still raises DataError.
    """
    path = Path(path)
    lines = read_text(path, "manifest", missing="check the path").splitlines()
    entries, problems = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append((lineno, _parse_line(line, path, lineno, check_audio=False)))
        except DataError as exc:
            problems.append(dict(line=lineno, kind="bad_line", reason=str(exc)))
    return entries, problems


def _parse_line(line: str, path: Path, lineno: int, check_audio: bool = True) -> Utterance:
    where = f"{path}:{lineno}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object with audio_filepath, duration and text")
    missing = [k for k in ("audio_filepath", "duration", "text") if k not in entry]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    audio, duration, text = entry["audio_filepath"], entry["duration"], entry["text"]
    if not isinstance(audio, str) or not audio:
        raise DataError(f"{where}: audio_filepath must be a non-empty string")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
        raise DataError(f"{where}: duration must be a positive number of seconds, got {duration!r}")
    if not isinstance(text, str):
        raise DataError(f"{where}: text must be a string, got {text!r}")
    audio_path = (path.parent / audio).resolve() if not Path(audio).is_absolute() else Path(audio)
    if check_audio and not audio_path.is_file():
        raise DataError(f"{where}: audio file {audio_path} " + ("is a folder" if audio_path.is_dir() else "does not exist"))
    speaker = entry.get("speaker")
    return Utterance(
        id=str(entry.get("id", audio_path.stem)),
        audio_filepath=str(audio_path),
        duration=float(duration),
        text=normalize_text(text),
        speaker=None if speaker is None else str(speaker),
    )


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> Path:
    """Writes utterances as JSONL (atomically: a reader never sees half a manifest)."""
    lines = []
    for u in utterances:
        entry = {"id": u.id, "audio_filepath": u.audio_filepath, "duration": u.duration, "text": u.text}
        if u.speaker is not None:
            entry["speaker"] = u.speaker
        lines.append(json.dumps(entry, ensure_ascii=False))
    path = Path(path)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


# --- filtering and batch planning ----------------------------------------------------------------


def ctc_min_length(labels: Sequence[int]) -> int:
    """Fewest output steps CTC needs for a label sequence: one per label plus a blank between repeats."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


def check_utterances(
    utterances: Sequence[Utterance],
    vocab: Vocabulary,
    feature_cfg: FeatureConfig,
    output_length_fn: Callable[[int], int] | None = None,
    max_duration: float | None = None,
    fastest: float = 1.0,
) -> tuple[list[tuple[Utterance, list[int]]], list[dict]]:
    """The checks that decide what training keeps (one code path for training and `asr check-data`).

    Returns ([(utterance, label ids)] kept, problems): one dict per skipped utterance with "id",
    "kind" ("too_long", "oov_chars" or "too_short_for_ctc"), "reason" (one line) and the numbers
    behind it: duration and max_duration (s); chars (sorted); output steps, steps needed and the
    shortfall in output steps and in feature frames. Durations are the manifest's, frames are
    estimated from them, played at the fastest speed perturbation. output_length_fn None: one
    output step per feature frame.
    """
    steps_of = output_length_fn or (lambda frames: frames)
    kept, problems = [], []
    for utt in utterances:
        if max_duration is not None and utt.duration > max_duration:
            problems.append(dict(id=utt.id, kind="too_long", duration=utt.duration, max_duration=max_duration,
                                 reason=f"longer than max_duration ({utt.duration:.2f} s > {max_duration:g} s)"))
            continue
        oov = vocab.oov_chars(utt.text)
        if oov:
            chars = sorted(oov)
            problems.append(dict(id=utt.id, kind="oov_chars", chars=chars,
                                 reason=f"characters outside the vocabulary: {', '.join(repr(c) for c in chars)}"))
            continue
        labels = vocab.encode(utt.text)
        frames = frames_for_duration(utt.duration / fastest, feature_cfg)
        steps = steps_of(frames)
        needed = ctc_min_length(labels)
        if steps < needed:
            frames_needed = frames + 1
            while steps_of(frames_needed) < needed:
                frames_needed += 1  # output lengths grow by one every stride frames: a short walk
            problems.append(dict(id=utt.id, kind="too_short_for_ctc", steps=int(steps), needed=int(needed),
                                 shortfall_steps=int(needed - steps), shortfall_frames=int(frames_needed - frames),
                                 reason=f"too short for CTC ({steps} output steps < {needed} = labels + repeats; "
                                        f"{needed - steps} steps, {frames_needed - frames} feature frames short)"))
            continue
        kept.append((utt, labels))
    return kept, problems


def filter_utterances(
    utterances: Sequence[Utterance],
    vocab: Vocabulary,
    feature_cfg: FeatureConfig,
    output_length_fn: Callable[[int], int] | None = None,
    max_duration: float | None = None,
    fastest: float = 1.0,
) -> tuple[list[tuple[Utterance, list[int]]], list[tuple[str, str]]]:
    """Keeps what can be trained on; returns ([(utterance, label ids)], skipped [(id, reason)]).

    Skipped: longer than max_duration (s); characters outside the vocabulary; too few output steps
    for CTC (output_length_fn(frames) < labels + adjacent repeats). check_utterances does the
    checks (and gives the numbers behind each reason).
    """
    kept, problems = check_utterances(utterances, vocab, feature_cfg, output_length_fn, max_duration, fastest)
    return kept, [(p["id"], p["reason"]) for p in problems]


def plan_batches(durations: Sequence[float], batch_size: int, bucket_width: float, training: bool, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Groups indices into batches of similar duration; the same arguments give the same plan.

    Utterances are ordered by duration bucket (bucket_width seconds) and cut into consecutive
    batches of batch_size, so a batch spans at most about one bucket and only the last one is
    short. Training: the order within each bucket and the order of the batches are shuffled with
    a generator seeded by (seed, epoch). Otherwise: sorted by duration, shortest first.
    """
    if batch_size < 1 or bucket_width <= 0:
        raise DataError(f"batch_size must be >= 1 and bucket_width > 0, got {batch_size} and {bucket_width}")
    durations = np.asarray(durations, dtype=np.float64)
    if training:
        rng = np.random.default_rng([seed, epoch])
        order = np.lexsort((rng.permutation(len(durations)), np.floor(durations / bucket_width)))
    else:
        order = np.argsort(durations, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if training:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclasses.dataclass(frozen=True)
class Shard:
    """The parts of every batch that one input pipeline (one worker of a cluster) yields: each
    batch is cut into `total` parts (one per replica of the cluster, in order, sizes differing by
    at most one; a part of a short last batch may be empty), and the pipeline yields parts
    first .. first + count - 1 (its local replicas' parts)."""

    first: int
    count: int
    total: int


def shard_batches(plan: Sequence[Sequence[int]], shard: Shard | None) -> list[tuple[int, list[int]]]:
    """[(batch number, utterance indices)] of the elements a pipeline yields: the batches of
    plan (shard None), or shard's parts of each batch, batch after batch."""
    if shard is None:
        return [(n, list(batch)) for n, batch in enumerate(plan)]
    return [
        (n, part.tolist())
        for n, batch in enumerate(plan)
        for part in np.array_split(np.asarray(batch, dtype=np.int64), shard.total)[shard.first : shard.first + shard.count]
    ]


# --- the dataset ---------------------------------------------------------------------------------


def make_dataset(
    utterances: Sequence[Utterance],
    vocab: Vocabulary,
    feature_cfg: FeatureConfig,
    stats: FeatureStats | None,
    *,
    batch_size: int,
    bucket_width: float,
    training: bool,
    seed: int = 0,
    epoch: int = 0,
    cache_dir: str | Path | None = None,
    output_length_fn: Callable[[int], int] | None = None,
    max_duration: float | None = None,
    num_parallel_calls: int = 2,
    start_batch: int = 0,
    augment: AugmentConfig | None = None,
    shard: Shard | None = None,
) -> tuple[tf.data.Dataset, list[tuple[str, str]]]:
    """Batches of model inputs for one epoch, and the utterances skipped as (id, reason).

    Each element is a dict:
      features        float32 [B, T, F]  normalized features (features_for_model); padded frames are 0
      feature_lengths int32   [B]        valid frames of each row
      labels          int32   [B, L]     label ids; padded with 0 (the blank) past label_lengths
      label_lengths   int32   [B]
      ids             string  [B]        utterance ids
    len(dataset) is the number of batches. The order depends only on (seed, epoch) when training,
    and is fixed (shortest first) otherwise. To resume mid-epoch, pass start_batch=n: the same as
    dataset.skip(n), which also works but loads the skipped batches' features first.
    Features are loaded by num_parallel_calls parallel workers and PREFETCH_BATCHES are prefetched.

    augment (training only): each batch plays at one of augment.speeds and each utterance gets
    noise (augment.draw_noise, with probability augment.noise_prob) and SpecAugment masks
    (augment.spec_augment), drawn from a generator seeded by (seed, epoch, batch number), so an
    epoch, and a resumed one, sees the same augmentation every time.

    shard (multi-worker training): the dataset yields only shard's parts of each batch, one element
    per part (shard_batches); len(dataset) is then the number of batches times shard.count.
    """
    if feature_cfg.normalization == "global" and stats is None:
        raise ConfigError("features.normalization 'global' needs feature statistics: compute_stats() on the training files")
    augment = augment if training and augment is not None and augment.active else None
    fastest = max(augment.speeds) if augment else 1.0
    kept, skipped = filter_utterances(utterances, vocab, feature_cfg, output_length_fn, max_duration, fastest)
    plan = plan_batches([u.duration for u, _ in kept], batch_size, bucket_width, training, seed, epoch)
    loader = _BatchLoader([u for u, _ in kept], [labels for _, labels in kept], feature_cfg, stats, cache_dir, augment, (seed, epoch))
    elements = shard_batches(plan, shard)[start_batch * (shard.count if shard else 1) :]
    index = np.full((len(elements), batch_size), -1, dtype=np.int64)  # rows of utterance indices, -1 past a short batch
    for row, (_, batch) in enumerate(elements):
        index[row, : len(batch)] = batch
    numbers = np.array([n for n, _ in elements], dtype=np.int64)  # a batch's number in the epoch seeds its augmentation
    dataset = tf.data.Dataset.from_tensor_slices((index, numbers))
    dataset = dataset.map(loader.tf_load, num_parallel_calls=max(1, num_parallel_calls), deterministic=True)
    return without_autotune(dataset.prefetch(PREFETCH_BATCHES)), skipped


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuning switched off (its parallelism and prefetch are fixed anyway).

    The autotuning thread sleeps between optimizations for up to 60 s, and in TF 2.21 dropping an
    iterator sometimes waits out that sleep: with it on, 9 of 70 epochs of a librispeech_small
    run stalled 50 to 65 s at their end, in the iterator's destructor (bench/data_iterator.py).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


class _BatchLoader:
    """Loads and pads one batch from a row of utterance indices (runs inside tf.numpy_function)."""

    def __init__(self, utterances, labels, cfg, stats, cache_dir, augment: AugmentConfig | None, seed: tuple[int, int]):
        self.paths = [u.audio_filepath for u in utterances]
        self.ids = [u.id.encode() for u in utterances]
        self.labels = labels
        self.cfg, self.stats, self.cache_dir = cfg, stats, cache_dir
        self.augment, self.seed = augment, seed

    def load(self, row: np.ndarray, number: np.int64):
        """int64 [batch_size] (-1 = none; all -1: an empty batch), batch number -> features, feature_lengths, labels, label_lengths, ids."""
        idx = [int(i) for i in row if i >= 0]
        speed, mask, noise = self._augmentation(int(number))
        feats = [features_for_model(self.paths[i], self.cfg, self.stats, self.cache_dir, speed, mask, noise()) for i in idx]
        labels = [self.labels[i] for i in idx]
        feat_lengths = np.array([f.shape[0] for f in feats], dtype=np.int32)
        label_lengths = np.array([len(seq) for seq in labels], dtype=np.int32)
        # an empty row (a worker's part of a short last batch) gives [0, 1, F] features
        features = np.full((len(idx), max(1, feat_lengths.max(initial=0)), self.cfg.num_features), FEATURE_PAD, dtype=np.float32)
        padded_labels = np.full((len(idx), max(1, label_lengths.max(initial=0))), LABEL_PAD, dtype=np.int32)
        for b, (f, seq) in enumerate(zip(feats, labels)):
            features[b, : f.shape[0]] = f
            padded_labels[b, : len(seq)] = seq
        ids = np.array([self.ids[i] for i in idx], dtype=object)
        return features, feat_lengths, padded_labels, label_lengths, ids

    def _augmentation(self, number: int):
        """Batch `number`'s speed, masking function (or None) and noise drawer (called once per
        utterance, in order: a noise function or None); (1.0, None, no noise) without augmentation."""
        if self.augment is None:
            return 1.0, None, lambda: None
        rng = np.random.default_rng([*self.seed, number])
        speed = float(rng.choice(self.augment.speeds))
        return speed, lambda raw, mean: spec_augment(raw, mean, self.cfg, self.augment, rng), lambda: draw_noise(self.augment, self.cfg.sample_rate, rng)

    def tf_load(self, row: tf.Tensor, number: tf.Tensor) -> dict[str, tf.Tensor]:
        out = tf.numpy_function(self.load, [row, number], [tf.float32, tf.int32, tf.int32, tf.int32, tf.string], stateful=False)
        features, feat_lengths, labels, label_lengths, ids = out
        features.set_shape([None, None, self.cfg.num_features])
        for t, rank in ((feat_lengths, 1), (labels, 2), (label_lengths, 1), (ids, 1)):
            t.set_shape([None] * rank)
        return {"features": features, "feature_lengths": feat_lengths, "labels": labels, "label_lengths": label_lengths, "ids": ids}


def padding_fraction(batches: Iterable[dict]) -> float:
    """Fraction of feature frames that are padding over an iterable of batches (dicts as make_dataset yields)."""
    padded = total = 0
    for batch in batches:
        lengths = np.asarray(batch["feature_lengths"])
        size = lengths.shape[0] * int(np.shape(batch["features"])[1])
        total += size
        padded += size - int(lengths.sum())
    return padded / total if total else 0.0
