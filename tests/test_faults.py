"""Fault injection: damaged checkpoints and model directories, a full disk, kill -9, used folders.

Every damage is either survived (a resume falls back to the newest intact checkpoint) or a
one-line error naming the file at fault; no test may end in a traceback or a lost checkpoint.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asr import checkpoint
from asr.cli import main
from asr.config import from_dict
from asr.errors import DataError
from asr.features import FeatureStats
from asr.optim import make_optimizer
from asr.text import Vocabulary
from asr.train import build_model
from test_train import TRAIN_CLEAN_5, UTTERANCES, recipe

TINY = {"model": {"num_layers": 1, "num_units": 8, "frame_stack": 3, "frame_stride": 2}, "features": {"n_mfcc": 5, "deltas": False, "n_mels": 10}}
MODEL_FILES = ["config.json", "stats.json", "vocab.json", "weights.npz"]
CHECKPOINT_FILES = MODEL_FILES + ["optimizer.npz", "state.json"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    """Flips the lowest bit of one byte in the middle: a JSON value or a weight changes silently."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


DAMAGES = {"truncated": truncate, "flipped": flip, "deleted": delete}


def tiny_parts():
    config = from_dict(TINY)
    vocab = Vocabulary(config.text.alphabet)
    model = build_model(config, vocab)
    stats = FeatureStats(mean=np.zeros(5, "f4"), std=np.ones(5, "f4"))
    return config, vocab, model, stats


def save_checkpoints(root: Path, steps, run_id: str = "run-a"):
    """Checkpoints of one run at the given steps, each with distinct weights; returns the model."""
    config, vocab, model, stats = tiny_parts()
    optimizer = make_optimizer(config, model)
    for step in steps:
        model.weights[0].assign(np.full(model.weights[0].shape, step, "f4"))
        checkpoint.save_checkpoint(root, model, optimizer, {"step": step, "run_id": run_id}, config, vocab, stats)
    return config, vocab, model, optimizer


def assert_one_line(message: str, *names: str) -> None:
    """message (an error, or a command's stderr) is one line naming all of names. A training
    command's stderr also holds its log and progress bars: its last line is the error."""
    if "asr train: error: " in message:
        message = message.rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
        assert message.startswith("asr train: error: "), message
    assert "\n" not in message.strip(), message
    for name in names:
        assert name in message, (name, message)


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, name, damage, caplog):
    config, vocab, model, optimizer = save_checkpoints(tmp_path, [1, 2])
    DAMAGES[damage](tmp_path / "ckpt-00000002" / name)
    path, _, state = checkpoint.find_checkpoint(tmp_path)
    assert path.name == "ckpt-00000001" and state["step"] == 1
    assert "ckpt-00000002 is damaged" in caplog.text and name in caplog.text
    fresh = build_model(config, vocab)
    checkpoint.restore_checkpoint(path, fresh, make_optimizer(config, fresh))
    assert np.all(fresh.weights[0].numpy() == 1)


def test_no_intact_checkpoint_is_one_line(tmp_path, caplog):
    save_checkpoints(tmp_path, [1, 2])
    truncate(tmp_path / "ckpt-00000001" / "weights.npz")
    flip(tmp_path / "ckpt-00000002" / "optimizer.npz")
    with pytest.raises(DataError, match="none of its 2 checkpoints is intact") as info:
        checkpoint.find_checkpoint(tmp_path)
    assert_one_line(str(info.value), "--overwrite")
    assert caplog.text.count("is damaged") == 2


def test_checkpoints_without_checksums_are_still_checked(tmp_path, caplog):
    """Checkpoints written before checksums existed: a truncated array file is still found out."""
    save_checkpoints(tmp_path, [1, 2])
    for ckpt in checkpoint.list_checkpoints(tmp_path):
        data = json.loads((ckpt / "config.json").read_text())
        del data["checksums"]
        (ckpt / "config.json").write_text(json.dumps(data))
    truncate(tmp_path / "ckpt-00000002" / "optimizer.npz")
    assert checkpoint.find_checkpoint(tmp_path)[0].name == "ckpt-00000001"
    assert "optimizer.npz: damaged" in caplog.text


def test_pruning_removes_only_older_checkpoints_of_the_same_run(tmp_path):
    save_checkpoints(tmp_path, [10, 20, 30, 40], run_id="old")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-00000020", "ckpt-00000030", "ckpt-00000040"]
    save_checkpoints(tmp_path, [1, 2, 3, 4, 5], run_id="new")  # another run in the same folder (the library allows it)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000003", "ckpt-00000004", "ckpt-00000005", "ckpt-00000020", "ckpt-00000030", "ckpt-00000040"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000005"
    assert checkpoint.find_checkpoint(tmp_path)[0].name == "ckpt-00000040"  # the newest by step


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    config, vocab, model, optimizer = save_checkpoints(tmp_path, [1])
    real = checkpoint._save_arrays

    def disk_full(path, variables):
        if path.name == "optimizer.npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, variables)

    monkeypatch.setattr(checkpoint, "_save_arrays", disk_full)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(tmp_path, model, optimizer, {"step": 2, "run_id": "run-a"}, config, vocab, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001", "latest"]  # no temporary folder left
    assert checkpoint.find_checkpoint(tmp_path)[0].name == "ckpt-00000001"


def test_written_files_are_readable_by_others(tmp_path):
    config, vocab, model, optimizer = save_checkpoints(tmp_path / "ckpts", [1])
    checkpoint.save_model_dir(tmp_path / "model", model, config, vocab, FeatureStats(np.zeros(5, "f4"), np.ones(5, "f4")))
    for folder in (tmp_path / "model", tmp_path / "ckpts" / "ckpt-00000001"):
        assert folder.stat().st_mode & 0o777 == 0o755
        assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {p.name: 0o644 for p in folder.iterdir()}
    assert (tmp_path / "ckpts" / "latest").stat().st_mode & 0o777 == 0o644


# --- model directories ---------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    config, vocab, model, stats = tiny_parts()
    return checkpoint.save_model_dir(tmp_path / "model", model, config, vocab, stats)


def load(folder: Path):
    import asr

    return asr.load_model(folder)


def test_the_checksums_are_in_config_json(model_dir):
    sums = json.loads((model_dir / "config.json").read_text())["checksums"]
    assert sorted(sums) == MODEL_FILES
    load(model_dir)


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", MODEL_FILES)
def test_a_damaged_model_directory_is_one_line_naming_the_file(model_dir, name, damage, capsys):
    DAMAGES[damage](model_dir / name)
    with pytest.raises(DataError) as info:
        load(model_dir)
    assert_one_line(str(info.value), str(model_dir), name)
    assert main(["transcribe", str(model_dir), "x.wav"]) != 0
    assert_one_line(capsys.readouterr().err, name)


def unsealed(model_dir: Path) -> Path:
    """The model directory as written before checksums existed (they would catch any damage first)."""
    data = json.loads((model_dir / "config.json").read_text())
    del data["checksums"]
    (model_dir / "config.json").write_text(json.dumps(data))
    return model_dir


def replace_weights(model_dir: Path, **arrays) -> None:
    with open(model_dir / "weights.npz", "wb") as f:
        np.savez(f, **arrays)


WEIGHT_DAMAGES = {
    "truncated": lambda d: truncate(d / "weights.npz"),
    "flipped": lambda d: flip(d / "weights.npz"),
    "object array": lambda d: replace_weights(d, **{f"v{i:04d}": np.array([None, "x"], dtype=object) for i in range(3)}),
    "wrong shape": lambda d: replace_weights(d, **{f"v{i:04d}": np.zeros((2, 2), "f4") for i in range(len(load_arrays(d)))}),
    "too few arrays": lambda d: replace_weights(d, v0000=load_arrays(d)[0]),
    "integers": lambda d: replace_weights(d, **{f"v{i:04d}": a.astype("i4") for i, a in enumerate(load_arrays(d))}),
    "not a number": lambda d: replace_weights(d, **{f"v{i:04d}": np.full_like(a, np.nan) for i, a in enumerate(load_arrays(d))}),
    "other names": lambda d: replace_weights(d, **{f"w{i}": a for i, a in enumerate(load_arrays(d))}),
    "a single .npy": lambda d: (d / "weights.npz").write_bytes(npy_bytes(np.zeros(3, "f4"))),
    "a pickle": lambda d: (d / "weights.npz").write_bytes(b"\x80\x04\x95" + b"\x00" * 64),
}


def npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_arrays(folder: Path):
    with np.load(folder / "weights.npz") as data:
        return [data[k] for k in sorted(data.files)]


@pytest.mark.parametrize("damage", list(WEIGHT_DAMAGES))
def test_damaged_weights_without_checksums_are_one_line(model_dir, damage):
    WEIGHT_DAMAGES[damage](unsealed(model_dir))
    with pytest.raises(DataError) as info:
        load(model_dir)
    assert_one_line(str(info.value), str(model_dir / "weights.npz"))


def test_model_directories_without_checksums_still_load(model_dir):
    load(unsealed(model_dir))
    shipped = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
    checkpoint.read_model_meta(shipped)


def test_an_averaged_model_has_checksums_too(model_dir, tmp_path):
    out = checkpoint.average_model_dirs([model_dir, model_dir], tmp_path / "avg")
    assert sorted(json.loads((out / "config.json").read_text())["checksums"]) == MODEL_FILES
    flip(out / "weights.npz")
    with pytest.raises(DataError, match="weights.npz: damaged"):
        load(out)


# --- experiment folders and training runs --------------------------------------------------------


@pytest.fixture
def tiny_recipe(tmp_path, librispeech_root, monkeypatch):
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    return recipe(tmp_path, librispeech_root, list(UTTERANCES), model={"num_units": 16, "num_layers": 1}, train={"checkpoint_every": 1})


def train_cli(folder, exp, *args) -> list[str]:
    return ["train", str(folder), "--exp-dir", str(exp), *args]


def test_a_used_experiment_folder_is_never_overwritten(tiny_recipe, tmp_path, capsys):
    exp = tmp_path / "exp"
    save_checkpoints(exp / "checkpoints", [40, 50], run_id="older")  # another, longer run's work
    before = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    assert main(train_cli(tiny_recipe, exp, "--set", "train.max_steps=1")) == 2
    assert_one_line(capsys.readouterr().err, "ckpt-00000050", "--resume", "--exp-dir", "--overwrite")
    assert main(train_cli(tiny_recipe, exp, "--resume", "--overwrite")) == 2
    assert_one_line(capsys.readouterr().err, "--overwrite")
    assert {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()} == before

    assert main(train_cli(tiny_recipe, exp, "--overwrite", "--set", "train.max_steps=2")) == 0
    (aside,) = exp.glob("previous-*")
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == before
    assert [p.name for p in checkpoint.list_checkpoints(exp / "checkpoints")] == ["ckpt-00000001", "ckpt-00000002"]
    assert checkpoint.read_model_meta(exp / "model")
    assert "moved the previous run" in (exp / "train.log").read_text()


def test_nothing_to_train_on_says_why(tiny_recipe, tmp_path, capsys):
    assert main(train_cli(tiny_recipe, tmp_path / "exp", "--set", "data.max_duration=0.5")) == 2
    assert_one_line(capsys.readouterr().err, "nothing to train on", "all 4 utterances", "4 longer than max_duration", "data.max_duration")
    assert main(train_cli(tiny_recipe, tmp_path / "exp", "--set", "text.alphabet=' abc'")) == 2
    assert_one_line(capsys.readouterr().err, "characters outside the vocabulary", "text.alphabet")
    assert not (tmp_path / "exp" / "model").exists()
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(train_cli(tiny_recipe, tmp_path / "exp", "--set", "data.train_manifest=empty.jsonl")) == 2
    assert_one_line(capsys.readouterr().err, "empty.jsonl: empty manifest")


def test_a_full_disk_stops_the_run_and_a_damaged_checkpoint_is_skipped_on_resume(tiny_recipe, tmp_path, monkeypatch, capsys, caplog):
    exp = tmp_path / "exp"
    real, writes = checkpoint._save_arrays, []

    def disk_full_at_second_checkpoint(path, variables):
        writes.append(path.name)
        if writes.count("optimizer.npz") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, variables)

    monkeypatch.setattr(checkpoint, "_save_arrays", disk_full_at_second_checkpoint)
    assert main(train_cli(tiny_recipe, exp, "--set", "train.max_steps=3")) == 2
    assert_one_line(capsys.readouterr().err, "No space left on device", "ckpt-00000002", "ckpt-00000001", "--resume")
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["ckpt-00000001", "latest"]
    checkpoint.verify_checkpoint(exp / "checkpoints" / "ckpt-00000001")
    monkeypatch.setattr(checkpoint, "_save_arrays", real)

    assert main(train_cli(tiny_recipe, exp, "--resume", "--set", "train.max_steps=3")) == 0
    assert "resumed from ckpt-00000001 at step 1" in caplog.text
    truncate(exp / "checkpoints" / "ckpt-00000003" / "weights.npz")
    caplog.clear()
    assert main(train_cli(tiny_recipe, exp, "--resume", "--set", "train.max_steps=4")) == 0
    assert "ckpt-00000003 is damaged" in caplog.text and "resumed from ckpt-00000002 at step 2" in caplog.text
    for ckpt in checkpoint.list_checkpoints(exp / "checkpoints"):
        checkpoint.verify_checkpoint(ckpt)  # the damaged one was written anew by the resumed run
    assert json.loads((exp / "checkpoints" / "ckpt-00000004" / "state.json").read_text())["step"] == 4


KILLS = 3  # kill -9 a run this many times, at random points, before letting it finish


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_ends_with_a_valid_model(tiny_recipe, tmp_path, librispeech_root):
    """Each attempt is killed a random 0-1.5 s after it wrote its first checkpoint of the attempt
    (mid-step, mid-checkpoint, mid-evaluation...); the next attempt resumes. Seeded: reproducible."""
    exp, rng = tmp_path / "exp", random.Random(10)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "asr.cli", *train_cli(tiny_recipe, exp, "--set", "train.max_steps=12")]
    latest, killed_at = exp / "checkpoints" / "latest", []
    for attempt in range(KILLS):
        seen = latest.stat().st_mtime_ns if latest.exists() else None
        log = tmp_path / f"attempt-{attempt}.err"
        with open(log, "w") as err:
            proc = subprocess.Popen(command + (["--resume"] if attempt else []), env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and (not latest.exists() or latest.stat().st_mtime_ns == seen):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_at.append(latest.read_text().strip())
        proc.wait()
        stderr = log.read_text()
        assert proc.returncode in (-signal.SIGKILL, 0), stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert checkpoint.find_checkpoint(exp / "checkpoints") is not None
    assert len(killed_at) >= 2, killed_at  # most attempts were killed before the run's end
    done = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 12 steps" in done.stdout
    path, _, state = checkpoint.find_checkpoint(exp / "checkpoints")
    assert path.name == "ckpt-00000012" and state["step"] == 12
    assert "damaged" not in (exp / "train.log").read_text()  # atomic writes: a kill never leaves a damaged checkpoint
    assert not [p for p in (exp / "checkpoints").iterdir() if p.name.startswith(".")], "stale temporaries are cleared"
    import asr

    audio = librispeech_root / TRAIN_CLEAN_5 / UTTERANCES["1737-146161-0007"][0]
    assert isinstance(asr.load_model(exp / "model").transcribe([audio])[0], str)
