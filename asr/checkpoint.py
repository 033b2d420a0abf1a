"""Self-contained model directories and training checkpoints: JSON + NumPy arrays, never pickle.

A model directory holds everything `transcribe` and `evaluate` need:
    config.json   the resolved recipe config
    vocab.json    the output alphabet (blank = 0)
    stats.json    global feature mean/std (absent with per-utterance normalization)
    weights.npz   the model's weights, in creation order, with their shapes checked on load
A training checkpoint is a model directory plus optimizer.npz and state.json (step, epoch,
position in the epoch, best dev WER). Directories are written under a temporary name and renamed,
so a killed run never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from asr import config as config_lib
from asr.errors import DataError
from asr.features import FeatureStats, atomic_write_text
from asr.text import Vocabulary

LATEST = "latest"  # file in the checkpoint folder naming the newest complete checkpoint
KEEP = 2  # checkpoints kept besides the newest


def _save_arrays(path: Path, variables) -> None:
    arrays = {f"v{i:04d}": np.asarray(v.numpy() if hasattr(v, "numpy") else v) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_arrays(path: Path, variables, what: str) -> None:
    arrays = _read_arrays(path, what)
    if len(arrays) != len(variables):
        raise DataError(
            f"{path}: holds {len(arrays)} {what} arrays but the model has {len(variables)} "
            "(config.json does not match these weights)"
        )
    for i, (var, value) in enumerate(zip(variables, arrays)):
        if tuple(value.shape) != tuple(var.shape):
            raise DataError(f"{path}: array {i} ({var.path}) has shape {value.shape}, expected {tuple(var.shape)}")
        var.assign(value)


def _read_arrays(path: Path, what: str = "weight") -> list[np.ndarray]:
    """The arrays of an .npz written by _save_arrays, in order (never unpickles)."""
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file (the model directory is incomplete; re-export it)")
    with np.load(path, allow_pickle=False) as data:
        return [data[f"v{i:04d}"] for i in range(len(data.files))]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: missing (a model directory needs config.json, vocab.json and weights.npz)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _temp_dir_beside(final: Path) -> Path:
    """A new hidden temporary directory in final's parent (created if needed), to fill and _replace_dir."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def _replace_dir(tmp: Path, final: Path) -> None:
    """Moves a finished temporary directory into place, replacing any older one."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_model_files(folder: Path, model, config, vocab, stats) -> None:
    _write_json(folder / "config.json", config_lib.to_dict(config))
    (folder / "vocab.json").write_text(vocab.to_json() + "\n")
    if stats is not None:
        stats.save(folder / "stats.json")
    _save_arrays(folder / "weights.npz", model.weights)


def save_model_dir(model_dir: str | Path, model, config, vocab, stats) -> Path:
    """Writes a self-contained model directory atomically."""
    model_dir = Path(model_dir)
    tmp = _temp_dir_beside(model_dir)
    _write_model_files(tmp, model, config, vocab, stats)
    _replace_dir(tmp, model_dir)
    return model_dir


def read_model_meta(model_dir: str | Path):
    """(config, vocab, stats) of a model directory, without building the model."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: no such model directory (train one with 'asr train RECIPE_DIR')")
    config = config_lib.from_dict(_read_json(model_dir / "config.json"), where=str(model_dir / "config.json"))
    vocab_path = model_dir / "vocab.json"
    if not vocab_path.is_file():
        raise DataError(f"{vocab_path}: missing (a model directory needs config.json, vocab.json and weights.npz)")
    vocab = Vocabulary.from_json(vocab_path.read_text())
    stats_path = model_dir / "stats.json"
    stats = FeatureStats.load(stats_path) if stats_path.is_file() else None
    if stats is None and config.features.normalization == "global":
        raise DataError(f"{stats_path}: missing (the model uses global feature normalization)")
    return config, vocab, stats


def average_model_dirs(model_dirs, out_dir: str | Path) -> Path:
    """Writes a model directory whose weights are the mean of those of model_dirs (or checkpoints).

    Averaging the last epochs of a run (icefall's --avg) smooths out the noise of the final
    updates; the models must share their features, text and model config (the first one's
    config, vocabulary and statistics are written). Raises DataError naming a mismatched folder.
    """
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise DataError("nothing to average: give one or more model or checkpoint directories")
    first, total, dtypes = None, None, None
    for folder in dirs:
        config = read_model_meta(folder)[0]
        first = first or config
        for section in ("features", "text", "model"):
            if getattr(config, section) != getattr(first, section):
                raise DataError(f"{folder}: config section '{section}' differs from {dirs[0]}'s; only models of one recipe can be averaged")
        arrays = _read_arrays(folder / "weights.npz")
        if total is None:
            total, dtypes = [a.astype(np.float64) for a in arrays], [a.dtype for a in arrays]
        elif [a.shape for a in arrays] != [t.shape for t in total]:
            raise DataError(f"{folder / 'weights.npz'}: weight shapes differ from {dirs[0] / 'weights.npz'}")
        else:
            total = [t + a for t, a in zip(total, arrays)]
    out_dir = Path(out_dir)
    tmp = _temp_dir_beside(out_dir)
    for name in ("config.json", "vocab.json", "stats.json"):
        if (dirs[0] / name).is_file():
            shutil.copyfile(dirs[0] / name, tmp / name)
    _save_arrays(tmp / "weights.npz", [(t / len(dirs)).astype(d) for t, d in zip(total, dtypes)])
    _replace_dir(tmp, out_dir)
    return out_dir


def load_weights(model_dir: str | Path, model) -> None:
    _load_arrays(Path(model_dir) / "weights.npz", model.weights, "weight")


def save_checkpoint(ckpt_root: str | Path, model, optimizer, state: dict, config, vocab, stats) -> Path:
    """Writes ckpt_root/ckpt-<step>/ atomically, points ckpt_root/latest at it, prunes old ones."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"ckpt-{state['step']:08d}"
    tmp = _temp_dir_beside(final)
    _write_model_files(tmp, model, config, vocab, stats)
    _save_arrays(tmp / "optimizer.npz", optimizer.variables)
    _write_json(tmp / "state.json", state)
    _replace_dir(tmp, final)
    atomic_write_text(ckpt_root / LATEST, final.name + "\n")
    for stale in sorted(ckpt_root.glob("ckpt-*"))[: -(KEEP + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    pointer = Path(ckpt_root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(ckpt_root) / pointer.read_text().strip()
    if not path.is_dir():
        raise DataError(f"{pointer}: names {path.name}, which does not exist (delete {pointer} to start afresh)")
    return path


def restore_checkpoint(path: Path, model, optimizer) -> dict:
    """Loads weights and optimizer state into built objects; returns the training state dict."""
    load_weights(path, model)
    _load_arrays(path / "optimizer.npz", optimizer.variables, "optimizer")
    return _read_json(path / "state.json")
