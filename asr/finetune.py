"""Fine-tuning: a training run that starts from a trained model's weights (train.init_from).

The model directory fixes what its weights were trained for: the features, the alphabet and the
architecture (config.MODEL_SECTIONS). A recipe that fine-tunes leaves those sections out and gets
the model's; a key it does give them must agree with the model, else a ConfigError names the key.
So a fine-tuning recipe follows whatever model it is pointed at. The feature statistics are a
choice (train.init_stats): the model's own, which its first layer was trained on, or recomputed
over the new training set. The weights are loaded at step 0 only; a resumed run continues from
its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from asr import checkpoint
from asr.config import MODEL_SECTIONS, Config, given_keys, load_recipe, read_recipe
from asr.errors import ConfigError, DataError
from asr.features import FeatureStats

log = logging.getLogger("asr.train")
INIT_KEY = "train.init_from (--init-from)"  # how errors name the model directory


def load_training_recipe(recipe_dir: str | Path, overrides=()) -> Config:
    """config.load_recipe, with the features, text and model sections of the train.init_from
    model when the recipe (or --set) names one; ConfigError or DataError (one line) when the
    recipe contradicts the model, or the model directory is missing, damaged or has no weights."""
    config = load_recipe(recipe_dir, overrides)
    if not config.train.init_from:
        return config
    given = {key: str(Path(recipe_dir) / "config.yaml") for key in given_keys(read_recipe(recipe_dir))}
    given.update({key: "--set" for key in given_keys({}, overrides)})
    return from_model(config, given)


def from_model(config: Config, given: dict[str, str]) -> Config:
    """config with the sections of its train.init_from model (MODEL_SECTIONS); `given`: the dotted
    keys the recipe set (config.given_keys) -> where (the recipe file, --set), each of which must
    agree with the model."""
    init_from = config.train.init_from
    if config.task != "ctc":
        raise ConfigError(f"config key 'train.init_from': fine-tuning starts a CTC recognizer from another; task {config.task!r} has none")
    source = source_config(init_from)
    for section in MODEL_SECTIONS:
        ours, theirs = getattr(config, section), getattr(source, section)
        for field in dataclasses.fields(ours):
            key = f"{section}.{field.name}"
            mine, model = getattr(ours, field.name), getattr(theirs, field.name)
            if key in given and mine != model:
                raise ConfigError(
                    f"{given[key]}: config key '{key}' is {mine!r}, but {model!r} in {init_from}, the model train.init_from starts "
                    f"from: leave '{key}' out (a fine-tuned model keeps its model's {', '.join(MODEL_SECTIONS)} sections) or train from scratch"
                )
    resolved = config.replace(**{section: getattr(source, section) for section in MODEL_SECTIONS}).validate()
    taken = [s for s in MODEL_SECTIONS if getattr(config, s) != getattr(source, s)]
    if taken:
        log.info("sections %s taken from %s", ", ".join(taken), init_from)
    return resolved


def source_config(init_from: str | Path) -> Config:
    """The config of the model directory a run starts from, after checking that it is whole:
    config.json, vocab.json (the same alphabet), stats.json where needed, weights.npz (checksums
    verified where recorded). A problem is a DataError naming train.init_from."""
    try:
        config, vocab, _ = checkpoint.read_model_meta(init_from)
        checkpoint.check_weights(init_from)
    except DataError as exc:
        raise DataError(f"{INIT_KEY}: {exc}") from None
    if vocab.alphabet != config.text.alphabet:
        raise DataError(f"{INIT_KEY}: {Path(init_from) / 'vocab.json'}: alphabet {vocab.alphabet!r} differs from its config.json's {config.text.alphabet!r} (a damaged model directory)")
    if config.task != "ctc":
        raise DataError(f"{INIT_KEY}: {init_from} holds a {config.task!r} model, not a CTC recognizer")
    return config


def model_stats(config: Config) -> FeatureStats | None:
    """The train.init_from model's feature statistics when the run takes them from there
    (train.init_stats "model"); None when they are to be computed over the training set."""
    t = config.train
    if not t.init_from or t.init_stats != "model":
        return None
    log.info("feature statistics from %s (train.init_stats: model)", t.init_from)
    return checkpoint.read_model_meta(t.init_from)[2]


def init_weights(config: Config, model) -> None:
    """Loads the train.init_from model's weights into model (built from the same sections), after
    verifying their checksums; a new run's first step starts from them."""
    init_from = config.train.init_from
    try:
        source = checkpoint.read_model_meta(init_from)[0]
        for section in MODEL_SECTIONS:
            if getattr(source, section) != getattr(config, section):
                raise ConfigError(f"config section '{section}' differs from {init_from}'s; load the recipe with asr.finetune.load_training_recipe, which takes it from the model")
        checkpoint.load_weights(init_from, model)
    except DataError as exc:
        raise DataError(f"{INIT_KEY}: {exc}") from None
    log.info("weights from %s: fine-tuning starts at step 0 from them", init_from)
