"""Self-contained model directories and training checkpoints: JSON + NumPy arrays, never pickle.

A model directory holds everything `transcribe` and `evaluate` need:
    config.json   the resolved recipe config, and under "checksums" the SHA-256 of every other
                  file of the folder (and of config.json's own content without that key)
    vocab.json    the output alphabet (blank = 0)
    stats.json    global feature mean/std (absent with per-utterance normalization)
    weights.npz   the model's weights, in creation order, with their shapes checked on load
A training checkpoint (checkpoints/ckpt-<step>) is a model directory plus optimizer.npz and
state.json (step, epoch, position in the epoch, best dev result, the run's id). Folders are written
under a temporary name and renamed (asr.io.atomic_dir), so a killed run never leaves a
half-written one behind; loading verifies the checksums, so a damaged file is named, never used.
Folders written before checksums existed load without them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

from asr import config as config_lib
from asr.errors import AsrError, ConfigError, DataError
from asr.features import FeatureStats
from asr.io import atomic_dir, atomic_write_text, check_replaceable_dir, file_checksums, read_text, sha256_text, verify_file
from asr.text import Vocabulary

log = logging.getLogger(__name__)

CONFIG = "config.json"
MODEL_FILES = (CONFIG, "vocab.json", "stats.json", "weights.npz")  # a model directory's files (stats.json optional)
CHECKSUMS = "checksums"  # key of config.json holding {file name: SHA-256}
LATEST = "latest"  # file in the checkpoint folder naming the newest checkpoint written (for people)
KEEP = 2  # checkpoints of a run kept besides its newest
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")
_ARRAY_KEY = "v{:04d}"  # names of the arrays in weights.npz / optimizer.npz, in variable order
_ZIP_MAGIC = b"PK\x03\x04"  # how an .npz (a zip archive) begins


# --- arrays --------------------------------------------------------------------------------------


def _save_arrays(path: Path, variables) -> None:
    arrays = {_ARRAY_KEY.format(i): np.asarray(v.numpy() if hasattr(v, "numpy") else v) for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_arrays(path: Path, what: str = "weight") -> list[np.ndarray]:
    """The arrays of an .npz written by _save_arrays, in order: finite floating-point numbers
    only (never unpickles). DataError naming the file when it is missing or damaged."""
    if not path.is_file():
        problem = f"a folder, not a {what} file" if path.is_dir() else f"missing {what} file"
        raise DataError(f"{path}: {problem} (the folder is incomplete; re-export or retrain it)")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    if magic != _ZIP_MAGIC:  # else NumPy takes it for a pickle and suggests unpickling it
        raise DataError(f"{path}: damaged or not a {what} file (not an .npz archive)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not a {what} file written by asr (one array, not an .npz archive)")
        with data:
            names = sorted(data.files)
            if names != [_ARRAY_KEY.format(i) for i in range(len(names))]:
                raise DataError(f"{path}: not a {what} file written by asr (arrays named {', '.join(names[:3])}...)")
            arrays = [data[name] for name in names]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: damaged or not a {what} file ({_one_line(exc)})") from None
    for i, array in enumerate(arrays):
        if array.dtype.kind != "f" and not (what == "optimizer" and array.dtype.kind in "iu"):
            raise DataError(f"{path}: array {i} holds {array.dtype} values, expected floating-point {what}s")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise DataError(f"{path}: array {i} holds non-finite values (NaN or infinity)")
    return arrays


def _load_arrays(path: Path, variables, what: str) -> None:
    """Checks every array of path against variables (count, shape), then assigns them all."""
    arrays = _read_arrays(path, what)
    if len(arrays) != len(variables):
        raise DataError(
            f"{path}: holds {len(arrays)} {what} arrays but the model has {len(variables)} "
            "(config.json does not match these weights)"
        )
    for i, (var, value) in enumerate(zip(variables, arrays)):
        if tuple(value.shape) != tuple(var.shape):
            raise DataError(f"{path}: array {i} ({var.path}) has shape {value.shape}, expected {tuple(var.shape)}")
    for var, value in zip(variables, arrays):
        var.assign(value)


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- JSON and checksums --------------------------------------------------------------------------


def _json_text(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _read_json(path: Path):
    if not path.exists():
        raise DataError(f"{path}: missing (a model directory needs config.json, vocab.json and weights.npz)")
    try:
        return json.loads(read_text(path, "JSON file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _seal(folder: Path, config_dict: dict) -> None:
    """Writes folder/config.json last, with the checksums of the files already in folder."""
    sums = file_checksums(folder, [p.name for p in folder.iterdir() if p.is_file() and p.name != CONFIG])
    sums[CONFIG] = sha256_text(_json_text(config_dict))
    with open(folder / CONFIG, "w", encoding="utf-8") as f:
        f.write(_json_text({**config_dict, CHECKSUMS: sums}))


def _verified_config(folder: Path) -> dict:
    """config.json of folder without its checksums, after verifying them (when it has some)."""
    path = folder / CONFIG
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: damaged (expected a JSON object)")
    sums = data.pop(CHECKSUMS, None)
    if sums is None:
        return data  # written before checksums existed
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()) or CONFIG not in sums:
        raise DataError(f"{path}: damaged ('{CHECKSUMS}' is not a mapping of file names to SHA-256)")
    if sums[CONFIG] != sha256_text(_json_text(data)):
        raise DataError(f"{path}: damaged (its content does not match the checksum recorded when it was written)")
    for name, digest in sorted(sums.items()):
        if name != CONFIG:
            if "/" in name or name.startswith("."):
                raise DataError(f"{path}: damaged (checksum of an unexpected file name {name!r})")
            verify_file(folder / name, digest, record=CONFIG)
    return data


# --- model directories ---------------------------------------------------------------------------


def _write_model_files(folder: Path, model, vocab, stats) -> None:
    (folder / "vocab.json").write_text(vocab.to_json() + "\n", encoding="utf-8")
    if stats is not None:
        stats.save(folder / "stats.json")
    _save_arrays(folder / "weights.npz", model.weights)


def save_model_dir(model_dir: str | Path, model, config, vocab, stats) -> Path:
    """Writes a self-contained model directory atomically, with checksums."""
    model_dir = Path(model_dir)
    with atomic_dir(model_dir) as tmp:
        _write_model_files(tmp, model, vocab, stats)
        _seal(tmp, config_lib.to_dict(config))
    return model_dir


def read_model_meta(model_dir: str | Path):
    """(config, vocab, stats) of a model directory (or checkpoint), without building the model.

    Verifies the checksums of all its files when config.json has them; a missing, damaged or
    malformed file is a DataError naming it.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        what = "a file, not a model directory" if model_dir.exists() else "no such model directory"
        raise DataError(f"{model_dir}: {what} (train one with 'asr train RECIPE_DIR')")
    try:
        config = config_lib.from_dict(_verified_config(model_dir), where=str(model_dir / CONFIG))
    except ConfigError as exc:
        raise DataError(f"{model_dir / CONFIG}: {exc}") from None
    vocab_path = model_dir / "vocab.json"
    if not vocab_path.exists():
        raise DataError(f"{vocab_path}: missing (a model directory needs config.json, vocab.json and weights.npz)")
    text = read_text(vocab_path, "vocabulary file")
    try:
        vocab = Vocabulary.from_json(text)
    except AsrError as exc:
        raise DataError(f"{vocab_path}: damaged ({_one_line(exc)})") from None
    stats_path = model_dir / "stats.json"
    stats = FeatureStats.load(stats_path) if stats_path.exists() else None
    if stats is None and config.features.normalization == "global":
        raise DataError(f"{stats_path}: missing (the model uses global feature normalization)")
    return config, vocab, stats


def load_weights(model_dir: str | Path, model) -> None:
    _load_arrays(Path(model_dir) / "weights.npz", model.weights, "weight")


def check_weights(model_dir: str | Path) -> None:
    """DataError naming weights.npz when it is missing, damaged or holds non-finite values
    (without building the model: shapes are checked when load_weights assigns them)."""
    _read_arrays(Path(model_dir) / "weights.npz")


def average_model_dirs(model_dirs, out_dir: str | Path) -> Path:
    """Writes a model directory whose weights are the mean of those of model_dirs (or checkpoints).

    Averaging the last epochs of a run (icefall's --avg) smooths out the noise of the final
    updates; the models must share their features, text and model config (the first one's
    config, vocabulary and statistics are written). Raises DataError naming a mismatched folder,
    or out_dir when it cannot be written (checked first) or is a folder of other things than a model.
    """
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise DataError("nothing to average: give one or more model or checkpoint directories")
    check_replaceable_dir(out_dir, "model directory to write", MODEL_FILES)
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
    with atomic_dir(Path(out_dir)) as tmp:
        for name in ("vocab.json", "stats.json"):
            if (dirs[0] / name).is_file():
                shutil.copyfile(dirs[0] / name, tmp / name)
        _save_arrays(tmp / "weights.npz", [(t / len(dirs)).astype(d) for t, d in zip(total, dtypes)])
        _seal(tmp, _verified_config(dirs[0]))
    return Path(out_dir)


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(ckpt_root: str | Path, model, optimizer, state: dict, config, vocab, stats) -> Path:
    """Writes ckpt_root/ckpt-<step>/ atomically, points ckpt_root/latest at it and prunes the
    run's older checkpoints (those whose state.json has the same "run_id"), keeping KEEP."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"ckpt-{state['step']:08d}"
    with atomic_dir(final) as tmp:
        _write_model_files(tmp, model, vocab, stats)
        _save_arrays(tmp / "optimizer.npz", optimizer.variables)
        (tmp / "state.json").write_text(_json_text(state), encoding="utf-8")
        _seal(tmp, config_lib.to_dict(config))
    atomic_write_text(ckpt_root / LATEST, final.name + "\n")
    prune_checkpoints(ckpt_root, final, state.get("run_id"))
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """The checkpoint folders of ckpt_root, oldest (lowest step) first."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def _run_id(path: Path) -> str | None:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state.get("run_id") if isinstance(state, dict) else None


def prune_checkpoints(ckpt_root: Path, newest: Path, run_id: str | None, keep: int = KEEP) -> list[Path]:
    """Removes the checkpoints of run_id older than newest but the last `keep`; returns them.

    Never touches a checkpoint of another run, one whose run is unknown (no id, unreadable
    state.json) or one newer than `newest` (e.g. a damaged one a resumed run fell back from).
    """
    if not run_id:
        return []
    step = int(CHECKPOINT_NAME.match(newest.name).group(1))
    older = [p for p in list_checkpoints(ckpt_root) if int(CHECKPOINT_NAME.match(p.name).group(1)) < step and _run_id(p) == run_id]
    stale = older[: max(len(older) - keep, 0)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def verify_checkpoint(path: Path):
    """(config, state) of a checkpoint after checking all of it: checksums, JSON, arrays."""
    config = read_model_meta(path)[0]
    _read_arrays(path / "weights.npz", "weight")
    _read_arrays(path / "optimizer.npz", "optimizer")
    state = _read_json(path / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DataError(f"{path / 'state.json'}: damaged (expected a training state with a step)")
    return config, state


def find_checkpoint(ckpt_root: str | Path):
    """(path, config, state) of the newest intact checkpoint in ckpt_root, or None when it has none.

    A damaged checkpoint (a file missing, truncated, altered) is logged as a warning and the next
    older one is tried; when every one is damaged, a DataError says so.
    """
    checkpoints = list_checkpoints(ckpt_root)[::-1]
    for i, path in enumerate(checkpoints):
        try:
            config, state = verify_checkpoint(path)
        except DataError as exc:
            older = "falling back to an older one" if i + 1 < len(checkpoints) else "and there is no older one"
            log.warning("checkpoint %s is damaged, %s: %s", path.name, older, exc)
            continue
        return path, config, state
    if checkpoints:
        raise DataError(
            f"{ckpt_root}: none of its {len(checkpoints)} checkpoints is intact (see the warnings above); "
            "start a new run with --overwrite (keeps them aside) or another --exp-dir"
        )
    return None


def restore_checkpoint(path: Path, model, optimizer) -> dict:
    """Loads weights and optimizer state into built objects; returns the training state dict."""
    read_model_meta(path)  # verifies the checksums
    load_weights(path, model)
    _load_arrays(path / "optimizer.npz", optimizer.variables, "optimizer")
    return _read_json(path / "state.json")
