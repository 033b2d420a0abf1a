"""Fine-tuning (train.init_from, asr train --init-from): the run starts from the model's weights,
takes its features, alphabet and architecture, uses its statistics or recomputed ones, resumes
from its own checkpoints; a recipe contradicting the model fails with one line. On FSDD clips."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from asr import checkpoint
from asr.cli import main
from asr.config import from_dict
from asr.corpora import prepare
from asr.errors import ConfigError
from asr.features import FeatureStats, compute_stats
from asr.finetune import load_training_recipe
from asr.text import Vocabulary
from asr.train import Trainer, build_dataset, build_model, compute_loss

CLIPS = ["3_theo_10", "7_jackson_32", "0_george_20", "9_lucas_41"]  # short real digits, none of the test split
SOURCE = {  # the model fine-tuning starts from: tiny, and unlike the defaults in every fixed section
    "name": "source",
    "features": {"n_mfcc": 10, "n_mels": 24, "deltas": False, "gain_normalization": "rms"},
    "text": {"alphabet": " abcdefghijklmnopqrstuvwxyz"},
    "model": {"cell": "lstm", "num_layers": 1, "num_units": 12, "frame_stack": 2, "frame_stride": 2},
}


@pytest.fixture
def source_model(tmp_path) -> Path:
    """A saved model directory with seeded random weights and statistics of its own (mean 0.5, std 2)."""
    config = from_dict(SOURCE)
    vocab = Vocabulary(config.text.alphabet)
    stats = FeatureStats(np.full(10, 0.5, np.float32), np.full(10, 2.0, np.float32), 1000)
    return checkpoint.save_model_dir(tmp_path / "source", build_model(config, vocab), config, vocab, stats)


def write_manifest(path: Path, fsdd_dir: Path) -> Path:
    import soundfile as sf

    with open(path, "w") as f:
        for name in CLIPS:
            audio = fsdd_dir / "recordings" / f"{name}.wav"
            digit, speaker, _ = name.split("_")
            words = "zero one two three four five six seven eight nine".split()
            f.write(json.dumps({"audio_filepath": str(audio), "duration": sf.info(str(audio)).duration, "text": words[int(digit)], "speaker": speaker}) + "\n")
    return path


def finetune_recipe(tmp_path: Path, fsdd_dir: Path, init_from, **sections) -> Path:
    """A recipe fine-tuning init_from on 4 FSDD clips; sections: extra keys, e.g. model={...}."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_manifest(tmp_path / "train.jsonl", fsdd_dir)
    config = {
        "name": "tiny_finetune",
        "data": {"corpus": "manifest", "data_dir": str(tmp_path), "train_manifest": "train.jsonl", "batch_size": 4},
        "train": {"init_from": str(init_from), "learning_rate": 0.01, "warmup_steps": 0, "epochs": 1, "checkpoint_every": 1},
    }
    for key, values in sections.items():
        config.setdefault(key, {}).update(values)
    folder = tmp_path / "recipe"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def trainer(recipe: Path, exp: Path, overrides=(), resume=False) -> Trainer:
    config = load_training_recipe(recipe, list(overrides))
    return Trainer(config, exp, *prepare(config, exp), resume=resume)


def batch_of(t: Trainer):
    dataset, skipped = build_dataset(t.config, t.train_utts, t.vocab, t.stats, training=False)
    assert not skipped
    return next(iter(dataset))


def test_the_model_fixes_features_text_and_architecture(tmp_path, fsdd_dir, source_model):
    config = load_training_recipe(finetune_recipe(tmp_path, fsdd_dir, source_model))
    source = checkpoint.read_model_meta(source_model)[0]
    assert (config.features, config.text, config.model) == (source.features, source.text, source.model)
    assert config.train.learning_rate == 0.01 and config.name == "tiny_finetune"  # the rest is the recipe's
    # a key that agrees with the model may stay in the recipe
    agreeing = finetune_recipe(tmp_path, fsdd_dir, source_model, model={"num_units": 12}, features={"n_mfcc": 10})
    assert load_training_recipe(agreeing).model == source.model


@pytest.mark.parametrize("init_stats", ["model", "recompute"])
def test_step_zero_is_the_source_model(tmp_path, fsdd_dir, source_model, monkeypatch, init_stats):
    """At step 0 the weights are the source's, bit for bit, so are the logits and the CTC loss of
    a batch; the statistics are the model's or the training set's, as train.init_stats says."""
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    recipe = finetune_recipe(tmp_path, fsdd_dir, source_model, train={"init_stats": init_stats})
    t = trainer(recipe, tmp_path / "exp")
    config, vocab, source_stats = checkpoint.read_model_meta(source_model)
    reference = build_model(config.replace(train=t.config.train), vocab)
    checkpoint.load_weights(source_model, reference)
    for ours, theirs in zip(t.model.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)

    if init_stats == "model":
        np.testing.assert_array_equal(t.stats.mean, source_stats.mean)
        np.testing.assert_array_equal(t.stats.std, source_stats.std)
    else:
        expected = compute_stats([u.audio_filepath for u in t.train_utts], t.config.features)
        np.testing.assert_allclose(t.stats.mean, expected.mean, rtol=1e-5)
        assert not np.allclose(t.stats.mean, source_stats.mean)
    assert FeatureStats.load(tmp_path / "exp" / "stats.json").num_frames == t.stats.num_frames

    batch = batch_of(t)
    ours, logits, _ = compute_loss(t.model, batch, training=False)
    theirs, ref_logits, _ = compute_loss(reference, batch, training=False)
    np.testing.assert_array_equal(logits.numpy(), ref_logits.numpy())
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert np.all(np.isfinite(ours.numpy()))


def test_a_resumed_fine_tuning_run_continues_its_checkpoints(tmp_path, fsdd_dir, source_model, monkeypatch):
    """The source's weights start step 0 only: a resumed run has its checkpoint's weights, and its
    last weights are those of an uninterrupted run."""
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    recipe = finetune_recipe(tmp_path, fsdd_dir, source_model, train={"epochs": 3})
    whole = trainer(recipe, tmp_path / "whole")
    whole.run()
    assert main(["train", str(recipe), "--exp-dir", str(tmp_path / "parts"), "--set", "train.max_steps=2"]) == 0
    resumed = trainer(recipe, tmp_path / "parts", resume=True)
    saved = checkpoint._read_arrays(tmp_path / "parts" / "checkpoints" / "ckpt-00000002" / "weights.npz")
    for var, value in zip(resumed.model.weights, saved):
        np.testing.assert_array_equal(var.numpy(), value, err_msg=var.path)
    source = checkpoint._read_arrays(source_model / "weights.npz")
    assert any(not np.array_equal(v.numpy(), s) for v, s in zip(resumed.model.weights, source))
    resumed.run()
    assert resumed.state.step == whole.state.step == 3
    for a, b in zip(whole.model.weights, resumed.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    saved_config = json.loads((tmp_path / "parts" / "model" / "config.json").read_text())
    assert saved_config["train"]["init_from"] == str(source_model) and saved_config["model"]["num_units"] == 12


@pytest.mark.parametrize("key, value", [("text.alphabet", "abc"), ("model.num_units", 16), ("features.deltas", True), ("features.sample_rate", 8000)])
def test_a_recipe_contradicting_the_model_names_the_key(tmp_path, fsdd_dir, source_model, key, value):
    section, name = key.split(".")
    recipe = finetune_recipe(tmp_path, fsdd_dir, source_model, **{section: {name: value}})
    with pytest.raises(ConfigError, match=rf"config.yaml: config key '{key}' is .* in {source_model}.*leave '{key}' out"):
        load_training_recipe(recipe)
    recipe = finetune_recipe(tmp_path / "set", fsdd_dir, source_model)
    with pytest.raises(ConfigError, match=rf"^--set: config key '{key}'"):
        load_training_recipe(recipe, [f"{key}={json.dumps(value)}"])


def test_the_fsdd_recipes(fsdd_dir, tmp_path):
    """recipes/fsdd trains from scratch at 8 kHz; recipes/fsdd/finetune takes everything the
    committed LibriSpeech model fixes from it; corpus fsdd prepares the standard split."""
    repo = Path(__file__).resolve().parents[1]
    scratch = load_training_recipe(repo / "recipes" / "fsdd")
    assert scratch.data.corpus == "fsdd" and scratch.features.sample_rate == 8000 and not scratch.train.init_from
    model_dir = repo / "recipes" / "librispeech_small" / "model"
    tuned = load_training_recipe(repo / "recipes" / "fsdd" / "finetune", [f"train.init_from={model_dir}"])
    source = checkpoint.read_model_meta(model_dir)[0]
    assert (tuned.features, tuned.text, tuned.model) == (source.features, source.text, source.model)
    train, dev = prepare(scratch.replace(data=dataclasses.replace(scratch.data, data_dir=str(fsdd_dir))), tmp_path)
    test = [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text().splitlines()]
    assert (len(train), len(test), dev) == (2700, 300, [])
    assert {u.speaker for u in train} == {u["speaker"] for u in test} == {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    assert all(int(Path(u["audio_filepath"]).stem.split("_")[2]) < 5 for u in test)
    assert {u.text for u in train} == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


@pytest.mark.slow
def test_fine_tuning_the_shipped_model_on_librispeech(tmp_path, librispeech_root, monkeypatch, capsys):
    """asr train --init-from the committed model on two real LibriSpeech utterances, then asr
    evaluate: the step-0 training loss is the model's own (small: it was trained on such speech),
    and the fine-tuned model keeps its sections."""
    from test_train import UTTERANCES, write_manifest as write_librispeech_manifest

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    repo = Path(__file__).resolve().parents[1]
    model_dir = repo / "recipes" / "librispeech_small" / "model"
    write_librispeech_manifest(tmp_path / "ls.jsonl", librispeech_root, list(UTTERANCES)[:2])
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "config.yaml").write_text(yaml.safe_dump({
        "name": "ls_finetune",
        "data": {"corpus": "manifest", "data_dir": str(tmp_path), "train_manifest": "ls.jsonl", "dev_manifest": "ls.jsonl", "batch_size": 2},
        "train": {"learning_rate": 0.0001, "warmup_steps": 0, "epochs": 2, "init_stats": "model"},
    }))
    exp = tmp_path / "exp"
    assert main(["train", str(recipe), "--exp-dir", str(exp), "--init-from", str(model_dir)]) == 0
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["history"][0]["cer"] < 0.5  # a random model's CER would be near 100%
    saved = json.loads((exp / "model" / "config.json").read_text())
    source = json.loads((model_dir / "config.json").read_text())
    assert all(saved[s] == source[s] for s in ("features", "text", "model"))
    assert main(["evaluate", str(exp / "model"), str(tmp_path / "ls.jsonl"), "--report-dir", str(tmp_path / "report")]) == 0
