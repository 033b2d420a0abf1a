"""Typed, frozen recipe configuration: one dataclass per section of a recipe's config.yaml."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from asr.errors import ConfigError
from asr.io import read_text

CELL_TYPES = ("lstm", "gru", "ln_lstm", "ln_gru")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # train.precision (Keras dtype policies)
CORPORA = ("librispeech", "fsdd", "manifest", "mnist")  # data.corpus
INIT_STATS = ("model", "recompute")  # train.init_stats
KEEP_BEST_BY = ("wer", "cer")  # train.keep_best_by: the dev metric that ranks epochs (asr.train.dev_score)
MODEL_SECTIONS = ("features", "text", "model")  # what a trained model fixes: train.init_from takes them from it


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000  # Hz; every file is resampled to this rate
    n_mfcc: int = 13  # cepstral coefficients per frame
    n_mels: int = 40  # mel bands before the DCT
    win_ms: float = 25.0  # analysis window, milliseconds
    hop_ms: float = 10.0  # frame shift, milliseconds
    fmin: float = 20.0  # lowest mel band edge, Hz
    fmax: float | None = None  # highest mel band edge, Hz; None = sample_rate / 2
    deltas: bool = True  # append delta and delta-delta coefficients (3 * n_mfcc values)
    normalization: str = "global"  # "global": training-set mean/std saved with the model; "utterance"
    gain_normalization: str = "none"  # "rms": scale each waveform to features.TARGET_RMS_DBFS before the MFCCs (level-independent); "none": as recorded (also what a saved model without this key gets)

    @property
    def num_features(self) -> int:
        return self.n_mfcc * (3 if self.deltas else 1)

    def validate(self) -> None:
        _check(self.normalization in ("global", "utterance"), "features.normalization", "'global' or 'utterance'")
        _check(self.gain_normalization in ("none", "rms"), "features.gain_normalization", "'none' or 'rms'")
        _check(self.sample_rate >= 1000, "features.sample_rate", "a rate of at least 1000 Hz")
        _check(self.n_mfcc >= 1, "features.n_mfcc", "at least 1 coefficient")
        _check(self.n_mels >= self.n_mfcc, "features.n_mels", f"at least n_mfcc ({self.n_mfcc}) bands")
        _check(self.hop_ms * self.sample_rate / 1000 >= 1, "features.hop_ms", "a frame shift of at least one sample")
        _check(self.hop_ms <= self.win_ms, "features.win_ms", f"a window at least as long as hop_ms ({self.hop_ms:g} ms)")
        _check(self.fmin >= 0, "features.fmin", "a frequency >= 0 Hz")
        nyquist = self.sample_rate / 2
        _check(self.fmax is None or self.fmin < self.fmax <= nyquist, "features.fmax", f"null or a frequency above fmin and at most sample_rate / 2 ({nyquist:g} Hz)")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    alphabet: str = " abcdefghijklmnopqrstuvwxyz'"  # output symbols; the CTC blank is added at index 0

    def validate(self) -> None:
        _check(len(self.alphabet) > 0 and len(set(self.alphabet)) == len(self.alphabet), "text.alphabet", "one or more distinct characters")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    corpus: str = "librispeech"  # "librispeech" (a LibriSpeech tree), "fsdd" (the Free Spoken Digit Dataset), "manifest" (your JSONL files) or "mnist"
    data_dir: str = ""  # corpus root (FSDD: the folder holding recordings/); empty = download into exp_dir/corpus (--data-dir overrides)
    subsets: tuple[str, ...] = ("train-clean-5",)  # LibriSpeech subsets to train on
    dev_speakers: tuple[str, ...] = ()  # speakers held out of training and used as the dev set
    train_manifest: str = ""  # corpus "manifest": JSONL manifests (relative to data_dir)
    dev_manifest: str = ""
    max_duration: float = 20.0  # seconds; longer utterances are skipped and counted
    batch_size: int = 16  # utterances per batch
    bucket_width: float = 1.0  # seconds; utterances of similar duration are batched together
    num_parallel_calls: int = 2  # feature-loading workers

    def validate(self) -> None:
        _check(self.corpus in CORPORA, "data.corpus", "'librispeech', 'fsdd', 'manifest' or 'mnist'")
        _check(self.max_duration > 0, "data.max_duration", "a positive number of seconds")
        _check(self.batch_size >= 1, "data.batch_size", "at least 1 utterance")
        _check(self.bucket_width > 0, "data.bucket_width", "a positive number of seconds")
        _check(self.num_parallel_calls >= 1, "data.num_parallel_calls", "at least 1 worker")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    cell: str = "ln_lstm"  # lstm, gru, ln_lstm or ln_gru
    num_layers: int = 3  # stacked (bidirectional) recurrent layers
    num_units: int = 256  # units per direction
    bidirectional: bool = True
    input_keep_prob: float = 1.0  # DropoutWrapper keep probability on each layer's input
    output_keep_prob: float = 1.0  # ... and on each layer's output
    frame_stack: int = 1  # consecutive feature frames concatenated into one model step
    frame_stride: int = 1  # model steps advance by this many feature frames

    def validate(self) -> None:
        _check(self.cell in CELL_TYPES, "model.cell", f"one of {', '.join(CELL_TYPES)}")
        for key in ("num_layers", "num_units", "frame_stack", "frame_stride"):
            _check(getattr(self, key) >= 1, f"model.{key}", "at least 1")
        for key in ("input_keep_prob", "output_keep_prob"):
            _check(0.0 < getattr(self, key) <= 1.0, f"model.{key}", "a keep probability in (0, 1]")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training set
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    learning_rate: float = 1e-3  # peak Adam learning rate
    warmup_steps: int = 200  # linear warm-up from 0 to learning_rate
    decay_steps: int | str = 0  # cosine decay to lr_floor over this many steps after warm-up (0 = constant); "auto" = the rest of the run: epochs x steps per epoch - warmup_steps
    lr_floor: float = 0.05  # final learning rate as a fraction of the peak
    clip_norm: float = 5.0  # global gradient-norm clipping
    checkpoint_every: int = 500  # steps between checkpoints (and at every epoch's end)
    keep_epochs: int = 0  # model directories of the last N epochs kept in exp_dir/epochs/ (for asr average)
    patience: int = 0  # early stopping: epochs without a better dev score (asr.train.dev_score; 0 = never stop early)
    keep_best_by: str = "wer"  # the dev metric that picks the epoch kept as model/ (and early stopping): "wer" (WER, then CER) or "cer" (CER, then WER)
    seed: int = 1234  # weights, dropout and shuffling
    strategy: str = "default"  # "default", "mirrored" (several GPUs) or "multi_worker" (several machines)
    log_every: int = 20  # steps between TensorBoard scalars
    init_from: str = ""  # fine-tuning: a model directory whose weights start the run (step 0 only; a resumed run continues its checkpoints); its features, text and model sections are the run's (asr.finetune)
    init_stats: str = "model"  # with init_from, the feature statistics: "model" (the model's stats.json, as its weights expect) or "recompute" (over the new training set)
    weight_noise: float = 0.0  # std of Gaussian noise added to every weight for each step's gradients, one draw per step (batch); Graves (2013) drew 0.075 per sequence on TIMIT; 0 = none
    precision: str = "float32"  # "float32"; "mixed_bfloat16" (matmuls in bf16, weights, optimizer, layer norm, softmax and CTC in float32; CPUs with avx512_bf16, GPUs); "mixed_float16" (GPUs; with dynamic loss scaling)

    def validate(self) -> None:
        _check(self.strategy in ("default", "mirrored", "multi_worker"), "train.strategy", "default, mirrored or multi_worker")
        _check(self.precision in PRECISIONS, "train.precision", " or ".join(PRECISIONS))
        _check(self.keep_best_by in KEEP_BEST_BY, "train.keep_best_by", " or ".join(f"'{s}'" for s in KEEP_BEST_BY))
        _check(self.init_stats in INIT_STATS, "train.init_stats", " or ".join(f"'{s}'" for s in INIT_STATS))
        for key in ("epochs", "checkpoint_every", "log_every"):
            _check(getattr(self, key) >= 1, f"train.{key}", "at least 1")
        for key in ("max_steps", "warmup_steps", "keep_epochs", "patience"):
            _check(getattr(self, key) >= 0, f"train.{key}", "a count >= 0")
        _check(self.decay_steps == "auto" or (isinstance(self.decay_steps, int) and self.decay_steps >= 0), "train.decay_steps", "a count >= 0 or 'auto'")
        for key in ("learning_rate", "clip_norm"):
            _check(getattr(self, key) > 0, f"train.{key}", "a positive number")
        _check(self.weight_noise >= 0, "train.weight_noise", "a standard deviation >= 0")
        _check(0.0 <= self.lr_floor <= 1.0, "train.lr_floor", "a fraction of the peak learning rate in [0, 1]")
        _check(0 <= self.seed < 2**32, "train.seed", "an integer in [0, 2**32)")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time data augmentation; dev scoring, evaluation and transcription never see it."""

    speeds: tuple[float, ...] = (1.0,)  # speed perturbation factors (Kaldi/icefall use 0.9, 1.0, 1.1); one is drawn per batch
    freq_masks: int = 0  # SpecAugment frequency masks per utterance, applied to the mel bands behind the MFCCs
    freq_mask_bands: int = 0  # widest frequency mask, in mel bands (of features.n_mels)
    time_masks: int = 0  # SpecAugment time masks per utterance
    time_mask_frames: int = 0  # widest time mask, in feature frames (10 ms each at the default hop)
    time_mask_max_fraction: float = 0.2  # no time mask covers more than this fraction of its utterance
    noise_prob: float = 0.0  # fraction of utterances mixed with colored Gaussian noise (white to brown, none below 50 Hz; asr.augment.add_noise)
    noise_snr_db: tuple[float, float] = (10.0, 30.0)  # the signal-to-noise ratio of a noisy utterance, drawn uniformly in this range (dB)

    @property
    def active(self) -> bool:
        return (self.speeds != (1.0,) or (self.freq_masks > 0 and self.freq_mask_bands > 0)
                or (self.time_masks > 0 and self.time_mask_frames > 0) or self.noise_prob > 0)

    def validate(self, features: FeatureConfig) -> None:
        _check(len(self.speeds) > 0 and all(0.5 <= s <= 2.0 for s in self.speeds), "augment.speeds", "a list of speed factors between 0.5 and 2.0")
        for key in ("freq_masks", "freq_mask_bands", "time_masks", "time_mask_frames"):
            _check(getattr(self, key) >= 0, f"augment.{key}", "a count >= 0")
        _check(self.freq_mask_bands <= features.n_mels, "augment.freq_mask_bands", f"at most features.n_mels ({features.n_mels})")
        _check(0.0 <= self.time_mask_max_fraction <= 1.0, "augment.time_mask_max_fraction", "a fraction in [0, 1]")
        _check(0.0 <= self.noise_prob <= 1.0, "augment.noise_prob", "a fraction in [0, 1]")
        _check(len(self.noise_snr_db) == 2 and self.noise_snr_db[0] <= self.noise_snr_db[1], "augment.noise_snr_db", "[lowest, highest] in dB, lowest <= highest")


MAX_BEAM_WIDTH = 4096  # beams; far past where WER stops improving: a bound so that a typo cannot exhaust memory


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    beam_width: int = 1  # 1 = greedy; more = CTC prefix beam search

    def validate(self) -> None:
        _check(1 <= self.beam_width <= MAX_BEAM_WIDTH, "decode.beam_width", f"1 (greedy) to {MAX_BEAM_WIDTH}")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "recipe"  # recipe name, for logs
    task: str = "ctc"  # "ctc" (speech) or "classify" (MNIST sanity check)
    features: FeatureConfig = FeatureConfig()
    text: TextConfig = TextConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    decode: DecodeConfig = DecodeConfig()

    def validate(self) -> "Config":
        _check(self.task in ("ctc", "classify"), "task", "'ctc' or 'classify'")
        if self.task == "ctc":
            _check(self.data.corpus in ("librispeech", "fsdd", "manifest"), "data.corpus", "'librispeech', 'fsdd' or 'manifest' for a CTC recipe")
            _check(self.data.corpus != "manifest" or bool(self.data.train_manifest), "data.train_manifest", "a JSONL manifest when data.corpus is 'manifest'")
            _check(self.data.corpus != "librispeech" or len(self.data.subsets) > 0, "data.subsets", "one or more LibriSpeech subsets")
        for section in (self.features, self.text, self.data, self.model, self.train, self.decode):
            section.validate()
        self.augment.validate(self.features)
        return self

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


def _check(ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}")


def to_dict(config: Config) -> dict:
    """A plain dict (JSON/YAML-safe) of the whole config."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(data: dict, where: str = "config") -> Config:
    """Builds a validated Config; an unknown key or a wrongly typed value is a ConfigError naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    return _build(Config, data, prefix="").validate()


def _build(cls: type, data: dict, prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}' (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}': expected a section (mapping), got {value!r}")
            kwargs[key] = _build(hint, value, prefix=f"{name}.")
        else:
            kwargs[key] = _coerce(value, hint, name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members[:-1]:  # the first member type that takes the value, e.g. int | str
            try:
                return _coerce(value, member, name)
            except ConfigError:
                pass
        return _coerce(value, members[-1], name)
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}': expected a list, got {value!r}")
        if args and args[0] is float:
            return tuple(_coerce(v, float, name) for v in value)
        return tuple(str(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{name}': expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{name}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{name}': unsupported type {hint}")


def parse_overrides(overrides: list[str]) -> dict:
    """["model.num_units=128", ...] -> nested dict; values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set '{item}': expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set '{item}': the value is not valid YAML ({_yaml_problem(exc)}); quote a text value") from None
        node = nested
        for depth, part in enumerate(parts[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': an earlier --set gave '{'.'.join(parts[:depth])}' a value, not a section")
        node[parts[-1]] = value
    return nested


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The one-line gist of a YAML error (its problem and where, without the quoted source)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(data: dict, overrides, where: str) -> Config:
    """A validated Config from a config dict (a recipe's YAML, or {} for the defaults) and --set overrides."""
    return from_dict(_merge(data, parse_overrides(list(overrides))), where=where)


def load_recipe(recipe_dir: str | Path, overrides: list[str] = ()) -> Config:
    """Reads RECIPE_DIR/config.yaml, applies --set overrides and validates the result."""
    path = Path(recipe_dir) / "config.yaml"
    data = read_recipe(recipe_dir)
    try:
        return with_overrides(data, overrides, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{_culprit(data, overrides, path)}: {exc}") from None


def read_recipe(recipe_dir: str | Path) -> dict:
    """RECIPE_DIR/config.yaml as it is written (a mapping, not yet validated)."""
    path = Path(recipe_dir) / "config.yaml"
    if Path(recipe_dir).is_file():
        raise ConfigError(f"{recipe_dir}: a file, not a recipe folder (a recipe is a folder with config.yaml)")
    text = read_text(path, "recipe config", ConfigError, missing="a recipe is a folder with config.yaml")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if data is None:
        raise ConfigError(f"{path}: empty recipe config; give at least its name (every other key has a default)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def given_keys(data: dict, overrides=()) -> set[str]:
    """The dotted keys ("model.num_units") that a recipe's mapping and --set overrides give a
    value; the others keep their defaults."""
    def walk(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return set(walk(_merge(data, parse_overrides(list(overrides))), ""))


def _culprit(data: dict, overrides, path: Path) -> str:
    """Whom an invalid config is to blame on: the --set overrides when the recipe alone is valid."""
    if overrides:
        try:
            from_dict(data)
            return "--set"
        except ConfigError:
            pass
    return str(path)
