"""Every CLI mistake is one line (issue 10, item 4): the path arguments and options of every
subcommand, fuzzed with the mistakes people make.

Each mistake must exit 2 with one line on stderr that names the file or option at fault, leave
no file behind, and be caught before the long work (training, decoding, n-gram counting): the
stand-ins below raise LongWorkStarted if a command gets that far.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from conftest import REPO, SHARED_DATA, require

MODEL = REPO / "recipes" / "librispeech_small" / "model"
CHAPTER = Path("librispeech_small/LibriSpeech/train-clean-5/1088/134315")  # a few short real utterances
LM_TEXT_WORDS = 20_000  # words of a book for the tiny LM (builds in a fraction of a second)
LATIN1 = "caf\xe9\n".encode("latin-1")  # not UTF-8: 0xe9 starts a multi-byte sequence that never ends


def _permissions_ignored() -> bool:
    """True where chmod 000 does not stop this process (root, or any user with CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
            return True
        except PermissionError:
            return False


PERMISSIONS_IGNORED = _permissions_ignored()
UNREADABLE_SKIP = "running as root (or with CAP_DAC_OVERRIDE), which chmod 000 does not stop from reading or writing"


class LongWorkStarted(Exception):
    """Raised where the long work starts: the mistake was caught too late (or the arguments were good)."""


def long_work(*args, **kwargs):
    raise LongWorkStarted


# --- running the CLI -----------------------------------------------------------------------------


def run(capsys, argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of asr.cli.main(argv), argparse's SystemExit included."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path) -> dict:
    """Every path under folder with its kind, size and mtime: what a failed command leaves as it was."""
    found = {}
    for path in folder.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(folder))] = (path.is_dir(), st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return found


def one_line(capsys, folder: Path, argv, *culprits, code: int = 2) -> str:
    """Runs argv and checks the mistake is reported as asked: exit `code`, one stderr line naming
    every culprit, nothing on stdout, and nothing under folder created, changed or removed."""
    before = tree(folder)
    got, out, err = run(capsys, argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert got == code and len(lines) == 1, f"exit {got}, stderr:\n{err}"
    for culprit in culprits:
        assert str(culprit) in lines[0], f"{culprit} not named in: {lines[0]}"
    assert out == ""
    assert tree(folder) == before, "the failed command created, changed or removed files"
    return lines[0]


# --- putting mistakes in place -------------------------------------------------------------------


def put(path: Path, kind: str, good: bytes = b"") -> Path:
    """Replaces whatever is at path with the mistake `kind`; `good` is valid content for kinds that need some."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":  # a folder where a file is expected
        path.mkdir()
    elif kind == "file":  # a file where a folder is expected
        path.write_text("a file, not a folder\n")
    elif kind == "empty_folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_utf8":
        path.write_bytes(good + LATIN1)
    elif kind == "unreadable":
        if PERMISSIONS_IGNORED:
            pytest.skip(UNREADABLE_SKIP)
        path.write_bytes(good or b"x\n")
        path.chmod(0)
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 not what it should be \xff\n")
    elif kind != "missing":
        raise ValueError(kind)
    return path


def unwritable(folder: Path) -> Path:
    if PERMISSIONS_IGNORED:
        pytest.skip(UNREADABLE_SKIP)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def linked_copy(source: Path, dest: Path) -> Path:
    """dest/ holding symbolic links to source's files: cheap to damage one by one with put()."""
    dest.mkdir(parents=True)
    for item in source.iterdir():
        (dest / item.name).symlink_to(item.resolve())
    return dest


@pytest.fixture(autouse=True)
def _restore_permissions(tmp_path):
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


# --- good arguments, to break one at a time --------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A folder with a 2-utterance manifest of real speech, a tiny word LM, its text, and a tiny
    manifest recipe: every argument each subcommand needs, valid (test_good_arguments_get_to_work)."""
    chapter = require(SHARED_DATA / CHAPTER)
    folder = tmp_path_factory.mktemp("good")
    lines = (chapter / "1088-134315.trans.txt").read_text().splitlines()[:2]
    with open(folder / "manifest.jsonl", "w") as f:
        for line in lines:
            utt_id, text = line.split(" ", 1)
            audio = chapter / f"{utt_id}.flac"
            f.write(json.dumps({"audio_filepath": str(audio), "duration": sf.info(str(audio)).duration, "text": text}) + "\n")
    words = lzma.open(require(SHARED_DATA / "lm_books" / "12.txt.xz"), "rt", encoding="utf-8").read().split()
    (folder / "text.txt").write_text(" ".join(words[:LM_TEXT_WORDS]) + "\n")
    assert main(["lm", "build", str(folder / "lm"), str(folder / "text.txt"), "--order", "2"]) == 0
    write_recipe(folder / "recipe", folder)
    write_finetune_recipe(folder / "finetune", folder)
    return folder


def write_recipe(recipe: Path, data_dir: Path, train: str = "manifest.jsonl", dev: str = "") -> Path:
    recipe.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "tiny",
        "features": {"normalization": "utterance"},
        "data": {"corpus": "manifest", "data_dir": str(data_dir), "train_manifest": train, "dev_manifest": dev, "batch_size": 2},
        "model": {"num_layers": 1, "num_units": 8},
        "train": {"epochs": 1},
    }
    (recipe / "config.yaml").write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
    return recipe


def write_finetune_recipe(recipe: Path, data_dir: Path, train: str = "manifest.jsonl", **sections) -> Path:
    """A manifest recipe for --init-from: no features, text or model section (the model's are taken)."""
    recipe.mkdir(parents=True, exist_ok=True)
    config = {"name": "tiny_finetune", "data": {"corpus": "manifest", "data_dir": str(data_dir), "train_manifest": train, "batch_size": 2},
              "train": {"epochs": 1, "learning_rate": 0.0005}, **sections}
    (recipe / "config.yaml").write_text(json.dumps(config, indent=1) + "\n")
    return recipe


@pytest.fixture
def no_long_work(monkeypatch, tmp_path):
    """Every long piece of work replaced by LongWorkStarted; a feature cache of the test's own."""
    import asr.checkpoint
    import asr.decode
    import asr.inference
    import asr.lm
    import asr.train

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    monkeypatch.setattr(asr.train, "Trainer", long_work)  # training
    monkeypatch.setattr(asr.inference.Recognizer, "posteriors", long_work)  # decoding (transcribe, evaluate, lm tune)
    monkeypatch.setattr(asr.decode, "tune", long_work)
    monkeypatch.setattr(asr.lm, "count_ngrams", long_work)  # reading and counting the text (lm build)
    monkeypatch.setattr(asr.checkpoint, "_save_arrays", long_work)  # writing the average


def commands(good: Path, model=MODEL, manifest=None, lm=None, out=None) -> dict:
    """The argv of each subcommand with good arguments, or the ones given."""
    manifest = manifest or good / "manifest.jsonl"
    lm = lm or good / "lm"
    out = out or good.parent / "never-written"
    audio = json.loads((good / "manifest.jsonl").read_text().splitlines()[0])["audio_filepath"]
    return {
        "train": ["train", good / "recipe", "--exp-dir", out],
        "train --init-from": ["train", good / "finetune", "--exp-dir", out, "--init-from", model],
        "transcribe": ["transcribe", model, audio],
        "transcribe --lm": ["transcribe", model, audio, "--lm", lm],
        "evaluate": ["evaluate", model, manifest, "--report-dir", out],
        "evaluate --lm": ["evaluate", model, manifest, "--report-dir", out, "--lm", lm],
        "average": ["average", out, model, model],
        "lm build": ["lm", "build", out, good / "text.txt"],
        "lm tune": ["lm", "tune", model, manifest, "--lm", lm],
    }


COMMANDS = ["train", "train --init-from", "transcribe", "transcribe --lm", "evaluate", "evaluate --lm", "average", "lm build", "lm tune"]


@pytest.mark.parametrize("command", COMMANDS)
def test_good_arguments_get_to_work(good, no_long_work, tmp_path, command):
    """The control: with nothing broken, each command reaches its long work (so the tests below
    fail for the mistake they make, not for a broken fixture)."""
    with pytest.raises(LongWorkStarted):
        main([str(a) for a in commands(good, out=tmp_path / "out")[command]])


# --- argparse: malformed options and missing arguments ---------------------------------------------

M, J = str(MODEL), "m.jsonl"
USAGE_MISTAKES = {
    "no command": ([], "{train,check-data,transcribe,evaluate,export,average,lm}"),
    "unknown command": (["bogus"], "bogus"),
    "train without recipe": (["train"], "recipe_dir"),
    "train unknown option": (["train", "r", "--epochs", "3"], "--epochs"),
    "train --exp-dir without value": (["train", "r", "--exp-dir"], "--exp-dir"),
    "transcribe without audio": (["transcribe", M], "audio"),
    "evaluate without manifest": (["evaluate", M], "manifest"),
    "average without models": (["average", "out"], "model_dirs"),
    "lm without command": (["lm"], "{build,tune}"),
    "lm unknown command": (["lm", "train"], "train"),
    "lm build without text": (["lm", "build", "out"], "text"),
    "lm tune without --lm": (["lm", "tune", M, J], "--lm"),
}
for _name, _cmd in (("transcribe", ["transcribe", M, "a.wav"]), ("evaluate", ["evaluate", M, J]), ("lm tune", ["lm", "tune", M, J, "--lm", "lm"])):
    for _value in ("x", "-1", "0", "1.5", "nan", "", "99999999999999999999"):  # the last: prefix beam search would eat all memory
        USAGE_MISTAKES[f"{_name} --beam-width {_value!r}"] = (_cmd + ["--beam-width", _value], "--beam-width")
for _option in ("--lm-weight", "--word-score"):
    for _cmd in (["transcribe", M, "a.wav", "--lm", "lm"], ["evaluate", M, J, "--lm", "lm"]):
        for _value in ("x", "nan", "inf", "-inf", "1e999", ""):
            USAGE_MISTAKES[f"{_cmd[0]} {_option} {_value!r}"] = (_cmd + [_option, _value], _option)
for _option in ("--lm-weights", "--word-scores"):
    for _value in ("x", "nan", "inf", "-inf"):  # argparse takes -inf for an option: "unrecognized arguments: -inf"
        _culprit = _value if _value.startswith("-") else _option
        USAGE_MISTAKES[f"lm tune {_option} {_value!r}"] = (["lm", "tune", M, J, "--lm", "lm", _option, "0.5", _value], _culprit)
for _value in ("x", "0", "-2", "2.5", ""):
    USAGE_MISTAKES[f"lm build --order {_value!r}"] = (["lm", "build", "out", "t.txt", "--order", _value], "--order")
for _value in ("x", "-1", "0.5"):
    USAGE_MISTAKES[f"lm build --prune {_value!r}"] = (["lm", "build", "out", "t.txt", "--prune", "0", _value], "--prune")


@pytest.mark.parametrize("name", list(USAGE_MISTAKES))
def test_usage_mistakes_are_one_line(tmp_path, capsys, name):
    argv, culprit = USAGE_MISTAKES[name]
    line = one_line(capsys, tmp_path, argv, culprit)
    assert "--help" in line  # where the usage is


# --- model directories (transcribe, evaluate, average, lm tune) -----------------------------------

MODEL_MISTAKES = [
    ("", "missing"), ("", "file"), ("", "empty_folder"),
    ("config.json", "missing"), ("config.json", "folder"), ("config.json", "empty"), ("config.json", "not_utf8"),
    ("config.json", "unreadable"), ("config.json", "garbage"), ("config.json", "unknown_key"), ("config.json", "bad_value"),
    ("vocab.json", "missing"), ("vocab.json", "folder"), ("vocab.json", "empty"), ("vocab.json", "not_utf8"),
    ("vocab.json", "unreadable"),
    ("stats.json", "missing"), ("stats.json", "folder"), ("stats.json", "empty"), ("stats.json", "not_utf8"),
    ("stats.json", "unreadable"), ("stats.json", "garbage"),
    ("weights.npz", "missing"), ("weights.npz", "folder"), ("weights.npz", "empty"), ("weights.npz", "garbage"),
    ("weights.npz", "unreadable"),
]
EVERY_COMMAND_MODEL_MISTAKES = [("", "missing"), ("", "file"), ("config.json", "not_utf8"), ("config.json", "empty"),
                                ("config.json", "unreadable"), ("weights.npz", "garbage")]


def global_model(folder: Path) -> Path:
    """The shipped model's weights, sealed as a model with global normalization and a stats.json
    (the shipped model normalizes each utterance by itself and has none)."""
    from asr.checkpoint import _seal, _verified_config
    from asr.config import from_dict
    from asr.features import FeatureStats

    linked_copy(MODEL, folder)
    (folder / "config.json").unlink()
    config = _verified_config(MODEL)
    config["features"]["normalization"] = "global"
    width = from_dict(config).features.num_features
    FeatureStats(np.zeros(width, np.float32), np.ones(width, np.float32), 1).save(folder / "stats.json")
    _seal(folder, config)
    return folder


def broken_model(tmp_path: Path, name: str, kind: str) -> tuple[Path, Path]:
    """(a model directory with the mistake, the path to name in the error)."""
    model = tmp_path / "model"
    if name == "":
        return put(model, kind), model
    linked_copy(global_model(tmp_path / "global") if name == "stats.json" else MODEL, model)
    target = model / name
    if kind in ("unknown_key", "bad_value"):
        config = json.loads((MODEL / name).read_text())
        if kind == "unknown_key":
            config["model"]["layers"] = 3
        else:
            config["model"]["num_units"] = 0
        target.unlink()
        target.write_text(json.dumps(config))
        return model, target
    good_json = (model / name).read_bytes()[:40] if name.endswith(".json") else b""
    return model, put(target, kind, good_json)


@pytest.mark.parametrize("name,kind", MODEL_MISTAKES, ids=[f"{n or 'model_dir'}-{k}" for n, k in MODEL_MISTAKES])
def test_transcribe_bad_model_dir(good, no_long_work, tmp_path, capsys, name, kind):
    model, culprit = broken_model(tmp_path, name, kind)
    one_line(capsys, tmp_path, commands(good, model=model)["transcribe"], culprit)


@pytest.mark.parametrize("command", ["evaluate", "average", "lm tune"])
@pytest.mark.parametrize("name,kind", EVERY_COMMAND_MODEL_MISTAKES, ids=[f"{n or 'model_dir'}-{k}" for n, k in EVERY_COMMAND_MODEL_MISTAKES])
def test_other_commands_bad_model_dir(good, no_long_work, tmp_path, capsys, command, name, kind):
    model, culprit = broken_model(tmp_path, name, kind)
    argv = commands(good, model=model, out=tmp_path / "out")[command]
    if command == "average":
        argv = argv[:2] + [MODEL] + argv[3:]  # the broken one second: the first is read fine
    one_line(capsys, tmp_path, argv, culprit)


@pytest.mark.parametrize("name,kind", MODEL_MISTAKES, ids=[f"{n or 'model_dir'}-{k}" for n, k in MODEL_MISTAKES])
def test_train_init_from_bad_model_dir(good, no_long_work, tmp_path, capsys, name, kind):
    """Fine-tuning from a broken model: one line naming --init-from and the culprit, before training."""
    model, culprit = broken_model(tmp_path, name, kind)
    line = one_line(capsys, tmp_path, commands(good, model=model, out=tmp_path / "out")["train --init-from"], culprit)
    assert "--init-from" in line


_SHIPPED = json.loads((MODEL / "config.json").read_text())  # whichever model is committed: the mistakes differ from it
INIT_MISTAKES = {  # a recipe contradicting the model it fine-tunes -> (argv tail, culprits)
    "alphabet from --set": (["--set", "text.alphabet=abc"], ["--set", "text.alphabet", "leave 'text.alphabet' out"]),
    "architecture from --set": (["--set", f"model.num_units={_SHIPPED['model']['num_units'] + 1}"], ["model.num_units", f"but {_SHIPPED['model']['num_units']} in"]),
    "features from --set": (["--set", f"features.n_mfcc={_SHIPPED['features']['n_mfcc'] - 1}"], ["features.n_mfcc", f"but {_SHIPPED['features']['n_mfcc']} in"]),
}


@pytest.mark.parametrize("name", list(INIT_MISTAKES))
def test_train_init_from_a_contradicting_recipe(good, no_long_work, tmp_path, capsys, name):
    tail, culprits = INIT_MISTAKES[name]
    one_line(capsys, tmp_path, commands(good, out=tmp_path / "out")["train --init-from"] + tail, *culprits)


def test_train_init_from_a_recipe_with_its_own_model(good, no_long_work, tmp_path, capsys):
    """The plain tiny recipe sets its own model: --init-from names the first key in the way."""
    one_line(capsys, tmp_path, ["train", good / "recipe", "--exp-dir", tmp_path / "out", "--init-from", MODEL],
             good / "recipe" / "config.yaml", "model.num_layers", "leave")


def test_train_init_from_with_the_mnist_recipe(no_long_work, tmp_path, capsys):
    one_line(capsys, tmp_path, ["train", REPO / "recipes" / "mnist", "--exp-dir", tmp_path / "out", "--init-from", MODEL], "train.init_from", "classify")


def test_train_init_from_a_damaged_vocabulary(good, no_long_work, tmp_path, capsys):
    """vocab.json with another alphabet than config.json's (checksums, if any, recomputed to match)."""
    from asr.checkpoint import CHECKSUMS, _seal

    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    (model / "vocab.json").write_text(json.dumps({"alphabet": " abc"}) + "\n")
    config = json.loads((model / "config.json").read_text())
    config.pop(CHECKSUMS, None)
    _seal(model, config)
    one_line(capsys, tmp_path, commands(good, model=model, out=tmp_path / "out")["train --init-from"], model / "vocab.json", "alphabet")


# --- manifests (evaluate, lm tune, train's train and dev manifests) --------------------------------

MANIFEST_MISTAKES = ["missing", "folder", "empty", "not_utf8", "unreadable", "garbage", "audio_missing", "audio_folder", "bad_duration"]


def broken_manifest(good: Path, path: Path, kind: str) -> tuple[Path, str]:
    """(the manifest, what the error names)."""
    first = (good / "manifest.jsonl").read_bytes().splitlines(keepends=True)[0]
    entry = json.loads(first)
    if kind == "audio_missing":
        entry["audio_filepath"] = str(path.parent / "gone.flac")
    elif kind == "audio_folder":
        entry["audio_filepath"] = str(path.parent)
    elif kind == "bad_duration":
        entry["duration"] = "long"
    else:
        return put(path, kind, first), str(path)
    path.write_text(json.dumps(entry) + "\n")
    return path, f"{path}:1"


@pytest.mark.parametrize("command", ["evaluate", "lm tune", "train (train manifest)", "train (dev manifest)", "train --init-from"])
@pytest.mark.parametrize("kind", MANIFEST_MISTAKES)
def test_bad_manifest(good, no_long_work, tmp_path, capsys, command, kind):
    manifest, culprit = broken_manifest(good, tmp_path / "bad.jsonl", kind)
    if command == "train --init-from":
        recipe = write_finetune_recipe(tmp_path / "recipe", tmp_path, "bad.jsonl")
        argv = ["train", recipe, "--exp-dir", tmp_path / "exp", "--init-from", MODEL]
    elif command.startswith("train"):
        train, dev = ("bad.jsonl", "") if "train manifest" in command else (str(good / "manifest.jsonl"), "bad.jsonl")
        recipe = write_recipe(tmp_path / "recipe", tmp_path, train, dev)
        argv = ["train", recipe, "--exp-dir", tmp_path / "exp"]
    else:
        argv = commands(good, manifest=manifest, out=tmp_path / "report")[command]
    one_line(capsys, tmp_path, argv, culprit)


# --- LM directories (transcribe, evaluate, lm tune) -------------------------------------------------

LM_MISTAKES = [
    ("", "missing"), ("", "file"), ("", "empty_folder"),
    ("lm.arpa", "missing"), ("lm.arpa", "folder"), ("lm.arpa", "empty"), ("lm.arpa", "garbage"), ("lm.arpa", "unreadable"),
    ("words.txt", "missing"), ("words.txt", "folder"), ("words.txt", "empty"), ("words.txt", "not_utf8"), ("words.txt", "unreadable"),
    ("lm.json", "missing"), ("lm.json", "empty"), ("lm.json", "not_utf8"), ("lm.json", "garbage"),
    ("decoding.json", "folder"), ("decoding.json", "empty"), ("decoding.json", "garbage"), ("decoding.json", "bad_value"),
]


def broken_lm(good: Path, tmp_path: Path, name: str, kind: str) -> tuple[Path, Path]:
    lm = tmp_path / "lm"
    if name == "":
        return put(lm, kind), lm
    linked_copy(good / "lm", lm)
    if kind == "bad_value":
        (lm / name).write_text(json.dumps({"lm_weight": "heavy", "word_score": 1.0, "beam_width": 0}))
        return lm, lm / name
    good_text = (good / "lm" / name).read_bytes()[:40] if (good / "lm" / name).is_file() else b""
    return lm, put(lm / name, kind, good_text)


@pytest.mark.parametrize("command", ["transcribe --lm", "evaluate --lm", "lm tune"])
@pytest.mark.parametrize("name,kind", LM_MISTAKES, ids=[f"{n or 'lm_dir'}-{k}" for n, k in LM_MISTAKES])
def test_bad_lm_dir(good, no_long_work, tmp_path, capsys, command, name, kind):
    lm, culprit = broken_lm(good, tmp_path, name, kind)
    one_line(capsys, tmp_path, commands(good, lm=lm, out=tmp_path / "report")[command], culprit)


def test_lm_tune_fails_before_decoding_when_it_cannot_save(good, no_long_work, tmp_path, capsys):
    lm = linked_copy(good / "lm", tmp_path / "lm")
    put(lm / "decoding.json", "folder")
    one_line(capsys, tmp_path, commands(good, lm=lm)["lm tune"], lm / "decoding.json")
    if not PERMISSIONS_IGNORED:
        (lm / "decoding.json").rmdir()
        unwritable(lm)
        one_line(capsys, tmp_path, commands(good, lm=lm)["lm tune"], lm)


# --- audio files (transcribe goes on past a bad one: exit 1, one line per bad file) ----------------


def test_bad_audio_files_are_one_line_each(good, tmp_path, capsys):
    bad = [put(tmp_path / "missing.wav", "missing"), put(tmp_path / "folder.wav", "folder"), put(tmp_path / "empty.wav", "empty"),
           put(tmp_path / "text.flac", "not_utf8", b"hello "), put(tmp_path / "garbage.ogg", "garbage")]
    if not PERMISSIONS_IGNORED:
        bad.append(put(tmp_path / "unreadable.wav", "unreadable", (good / "text.txt").read_bytes()[:100]))
    audio = commands(good)["transcribe"][2]
    code, out, err = run(capsys, ["transcribe", MODEL, *bad, audio])
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert len(lines) == len(bad) and all(str(path) in line for path, line in zip(bad, lines)), err
    assert len(out.strip().splitlines()) == 1  # the good file's transcript


# --- recipes and --set ------------------------------------------------------------------------------

RECIPE_MISTAKES = {
    "recipe missing": ("", "missing"),
    "recipe is a file": ("", "file"),
    "recipe without config.yaml": ("", "empty_folder"),
    "config.yaml is a folder": ("config.yaml", "folder"),
    "config.yaml empty": ("config.yaml", "empty"),
    "config.yaml not UTF-8": ("config.yaml", "not_utf8"),
    "config.yaml unreadable": ("config.yaml", "unreadable"),
    "config.yaml not YAML": ("config.yaml", "not_yaml"),
    "config.yaml a list": ("config.yaml", "a_list"),
    "config.yaml unknown key": ("config.yaml", "unknown_key"),
}


@pytest.mark.parametrize("name", list(RECIPE_MISTAKES))
def test_bad_recipe(good, no_long_work, tmp_path, capsys, name):
    target, kind = RECIPE_MISTAKES[name]
    recipe = tmp_path / "recipe"
    if target == "":
        put(recipe, kind)
        culprit = recipe
    else:
        write_recipe(recipe, good)
        text = (recipe / "config.yaml").read_text()
        culprit = recipe / "config.yaml"
        if kind == "not_yaml":
            culprit.write_text("model: {num_units: 8\n")
        elif kind == "a_list":
            culprit.write_text("- model\n- train\n")
        elif kind == "unknown_key":
            culprit.write_text(text.replace('"num_units"', '"units"'))
        else:
            put(culprit, kind, b"name: tiny\n")
    one_line(capsys, tmp_path, ["train", recipe, "--exp-dir", tmp_path / "exp"], culprit)


SET_MISTAKES = {
    "no equals sign": ("train.epochs", "train.epochs"),
    "not YAML (open list)": ("data.subsets=[a", "data.subsets"),
    "not YAML (open mapping)": ("model={cell: gru", "model"),
    "not YAML (unclosed quote)": ("name='tiny", "name"),
    "not YAML (mapping in a scalar)": ("name=a: b: c", "name"),
    "not YAML (python tag)": ("name=!!python/object:os.system x", "name"),
    "unknown key": ("model.units=8", "model.units"),
    "unknown section": ("modle.num_units=8", "modle"),
    "empty key": ("=8", "="),
    "empty part of a key": ("model..num_units=8", "model..num_units"),
    "key under a value": ("train.epochs.max=2", "train.epochs"),
    "not a number": ("train.learning_rate=fast", "train.learning_rate"),
    "not an integer": ("train.epochs=2.5", "train.epochs"),
    "true for a count": ("data.batch_size=true", "data.batch_size"),
    "a list for a count": ("data.batch_size=[2]", "data.batch_size"),
    "negative count": ("train.epochs=-1", "train.epochs"),
    "zero batch size": ("data.batch_size=0", "data.batch_size"),
    "zero units": ("model.num_units=0", "model.num_units"),
    "zero learning rate": ("train.learning_rate=0", "train.learning_rate"),
    "negative duration": ("data.max_duration=-5", "data.max_duration"),
    "NaN": ("train.learning_rate=.nan", "train.learning_rate"),
    "nan as text": ("train.clip_norm=nan", "train.clip_norm"),
    "infinity": ("data.max_duration=.inf", "data.max_duration"),
    "1e999": ("train.learning_rate=1e999", "train.learning_rate"),
    "zero hop": ("features.hop_ms=0", "features.hop_ms"),
    "keep probability above 1": ("model.input_keep_prob=1.5", "model.input_keep_prob"),
    "seed out of range": ("train.seed=-3", "train.seed"),
    "unknown cell": ("model.cell=transformer", "model.cell"),
    "beam width past any use": ("decode.beam_width=100000", "decode.beam_width"),
    "a section set to a number": ("model=3", "model"),
}


@pytest.mark.parametrize("name", list(SET_MISTAKES))
def test_bad_set_value(good, no_long_work, tmp_path, capsys, name):
    value, culprit = SET_MISTAKES[name]
    one_line(capsys, tmp_path, ["train", good / "recipe", "--exp-dir", tmp_path / "exp", "--set", value], culprit)


def test_a_set_value_then_a_key_under_it(good, no_long_work, tmp_path, capsys):
    argv = ["train", good / "recipe", "--exp-dir", tmp_path / "exp", "--set", "model=3", "--set", "model.cell=gru"]
    one_line(capsys, tmp_path, argv, "model.cell")


def test_data_dir_is_taken_as_it_is(good, monkeypatch, tmp_path, capsys):
    """--data-dir is a path, not YAML: '#', ': ' and brackets in it survive."""
    import asr.train

    data_dir = tmp_path / "my data #1: [best]"
    data_dir.mkdir()
    shutil.copy(good / "manifest.jsonl", data_dir / "manifest.jsonl")
    seen = {}

    def fake_train(config, exp_dir, **kwargs):
        seen["data_dir"] = config.data.data_dir
        raise LongWorkStarted

    monkeypatch.setattr(asr.train, "train", fake_train)
    with pytest.raises(LongWorkStarted):
        main(["train", str(good / "recipe"), "--data-dir", str(data_dir), "--exp-dir", str(tmp_path / "exp")])
    assert seen["data_dir"] == str(data_dir.resolve())


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_data_dir(good, no_long_work, tmp_path, capsys, kind):
    data_dir = put(tmp_path / "data", kind)
    one_line(capsys, tmp_path, ["train", good / "recipe", "--data-dir", data_dir, "--exp-dir", tmp_path / "exp"], data_dir)


def test_bad_librispeech_data_dir(no_long_work, tmp_path, capsys):
    recipe = REPO / "recipes" / "librispeech_small"
    data_dir = put(tmp_path / "corpus", "empty_folder")
    one_line(capsys, tmp_path, ["train", recipe, "--data-dir", data_dir, "--exp-dir", tmp_path / "exp"], data_dir)


@pytest.mark.parametrize("recipe", ["fsdd", "fsdd/finetune"])
def test_bad_fsdd_data_dir(no_long_work, monkeypatch, tmp_path, capsys, recipe):
    monkeypatch.chdir(REPO)
    data_dir = put(tmp_path / "corpus", "empty_folder")  # no recordings/ in it
    one_line(capsys, tmp_path, ["train", REPO / "recipes" / recipe, "--data-dir", data_dir, "--exp-dir", tmp_path / "exp"], data_dir / "recordings")


def test_good_fsdd_recipes_get_to_work(no_long_work, monkeypatch, tmp_path):
    fsdd = require(SHARED_DATA / "fsdd")
    monkeypatch.chdir(REPO)  # where recipes/fsdd/finetune's train.init_from is relative to
    for recipe in ("fsdd", "fsdd/finetune"):
        with pytest.raises(LongWorkStarted):
            main(["train", str(REPO / "recipes" / recipe), "--data-dir", str(fsdd), "--exp-dir", str(tmp_path / recipe)])


# --- outputs: checked before the long work, never half written --------------------------------------

OUTPUT_MISTAKES = ["file", "under_a_file", "unwritable"]


def bad_output(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """(the output path to give, the path the error names)."""
    if kind == "file":
        path = put(tmp_path / "out", "file")
        return path, path
    if kind == "under_a_file":
        parent = put(tmp_path / "parent", "file")
        return parent / "out", parent
    if kind == "foreign_folder":  # a folder of other things, which writing a model or LM there would replace
        path = tmp_path / "out"
        path.mkdir()
        (path / "notes.txt").write_text("keep me\n")
        return path, path
    parent = unwritable(tmp_path / "parent")
    return parent / "out", parent


@pytest.mark.parametrize("kind", OUTPUT_MISTAKES)
def test_evaluate_report_dir(good, no_long_work, monkeypatch, tmp_path, capsys, kind):
    import asr.inference

    monkeypatch.setattr(asr.inference, "Recognizer", long_work)  # not even the model loads
    out, culprit = bad_output(tmp_path, kind)
    one_line(capsys, tmp_path, commands(good, out=out)["evaluate"], culprit)


@pytest.mark.parametrize("command", ["average", "lm build"])
@pytest.mark.parametrize("kind", OUTPUT_MISTAKES + ["foreign_folder"])
def test_model_and_lm_out_dir(good, no_long_work, monkeypatch, tmp_path, capsys, command, kind):
    import asr.checkpoint
    import asr.lm

    monkeypatch.setattr(asr.checkpoint, "_read_arrays", long_work)  # not even the weights are read
    monkeypatch.setattr(asr.lm, "read_text", long_work)  # nor the text
    out, culprit = bad_output(tmp_path, kind)
    one_line(capsys, tmp_path, commands(good, out=out)[command], culprit)


@pytest.mark.parametrize("kind", OUTPUT_MISTAKES)
def test_train_exp_dir(good, no_long_work, tmp_path, capsys, kind):
    out, culprit = bad_output(tmp_path, kind)
    one_line(capsys, tmp_path, commands(good, out=out)["train"], culprit)


@pytest.mark.parametrize("kind", OUTPUT_MISTAKES)
def test_mnist_exp_dir(no_long_work, monkeypatch, tmp_path, capsys, kind):
    import asr.mnist

    monkeypatch.setattr(asr.mnist, "load_mnist", long_work)
    out, culprit = bad_output(tmp_path, kind)
    one_line(capsys, tmp_path, ["train", REPO / "recipes" / "mnist", "--exp-dir", out], culprit)


def test_resume_and_overwrite_together(good, no_long_work, tmp_path, capsys):
    one_line(capsys, tmp_path, commands(good, out=tmp_path / "exp")["train"] + ["--resume", "--overwrite"], "--overwrite")


# --- lm build's text files --------------------------------------------------------------------------

TEXT_MISTAKES = ["missing", "folder", "empty", "not_utf8", "unreadable", "bad_xz", "bad_gz", "no_words"]


@pytest.mark.parametrize("kind", TEXT_MISTAKES)
def test_lm_build_bad_text(good, tmp_path, capsys, kind):
    name = {"bad_xz": "text.txt.xz", "bad_gz": "text.txt.gz"}.get(kind, "text.txt")
    text = tmp_path / name
    if kind in ("bad_xz", "bad_gz"):
        put(text, "garbage")
    elif kind == "no_words":
        text.write_text("... !!! ???\n")
    else:
        put(text, kind, b"some words here\n")
    one_line(capsys, tmp_path, ["lm", "build", tmp_path / "lm", good / "text.txt", text], text)


def test_lm_build_more_prune_values_than_orders(good, tmp_path, capsys):
    one_line(capsys, tmp_path, ["lm", "build", tmp_path / "lm", good / "text.txt", "--order", "2", "--prune", "0", "1", "1"], "--prune")


def test_lm_build_order_kenlm_cannot_load(good, no_long_work, tmp_path, capsys):
    one_line(capsys, tmp_path, ["lm", "build", tmp_path / "lm", good / "text.txt", "--order", "7"], "--order 7")


# --- what the terminal shows ------------------------------------------------------------------------


def test_a_real_terminal_sees_one_line(good, tmp_path):
    """The installed entry point, in a process of its own: no traceback, no TensorFlow start-up noise."""
    report = put(tmp_path / "report", "file")
    script = "import sys; from asr.cli import main; sys.exit(main())"
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    for argv, culprit in (
        (["evaluate", str(MODEL), str(good / "manifest.jsonl"), "--report-dir", str(report)], str(report)),
        (["train", str(good / "recipe"), "--exp-dir", str(tmp_path / "exp"), "--set", "model.cell=[gru"], "model.cell"),
    ):
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and culprit in proc.stderr, proc.stderr
    assert not (tmp_path / "exp").exists()
