"""Recipe configuration: validation, overrides, round trip."""

from pathlib import Path

import pytest

from asr.config import Config, from_dict, load_recipe, to_dict
from asr.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["librispeech_small", "mnist"])
def test_shipped_recipes_are_valid(name):
    config = load_recipe(RECIPES / name)
    assert isinstance(config, Config)
    assert from_dict(to_dict(config)) == config


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  num_unit: 128\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.num_unit'"):
        load_recipe(tmp_path)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        from_dict({"modle": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'train\.epochs': expected an integer"):
        from_dict({"train": {"epochs": "ten"}})


def test_invalid_value_is_named():
    with pytest.raises(ConfigError, match=r"'model\.cell'"):
        from_dict({"model": {"cell": "transformer"}})


def test_overrides_apply_and_are_typed():
    config = load_recipe(RECIPES / "librispeech_small", ["model.num_units=64", "train.learning_rate=1e-4", "data.dev_speakers=[1, 2]"])
    assert config.model.num_units == 64
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.data.dev_speakers == ("1", "2")


def test_bad_override_is_an_error():
    with pytest.raises(ConfigError, match="--set 'model.num_units'"):
        load_recipe(RECIPES / "librispeech_small", ["model.num_units"])
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        load_recipe(RECIPES / "librispeech_small", ["train.epoch=3"])


def test_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe config"):
        load_recipe(tmp_path / "nope")


def test_config_is_frozen():
    config = Config()
    with pytest.raises(Exception):
        config.model.num_units = 3


def test_ctc_recipe_corpus_is_checked():
    with pytest.raises(ConfigError, match=r"'data\.corpus'"):
        from_dict({"data": {"corpus": "mnist"}})
    with pytest.raises(ConfigError, match=r"'data\.train_manifest'"):
        from_dict({"data": {"corpus": "manifest"}})


def test_augment_section_is_typed_and_checked():
    config = from_dict({"augment": {"speeds": [0.9, 1, "1.1"], "freq_masks": 2, "freq_mask_bands": 10}})
    assert config.augment.speeds == (0.9, 1.0, 1.1) and config.augment.active
    assert from_dict({"augment": {"speeds": 1.1}}).augment.speeds == (1.1,)
    assert not Config().augment.active  # no augmentation unless a recipe asks for it
    with pytest.raises(ConfigError, match="'augment.speeds'"):
        from_dict({"augment": {"speeds": [0.0, 1.0]}})
    with pytest.raises(ConfigError, match="'augment.speeds'"):
        from_dict({"augment": {"speeds": ["fast"]}})
    with pytest.raises(ConfigError, match="'augment.freq_mask_bands': expected at most features.n_mels"):
        from_dict({"augment": {"freq_mask_bands": 41}})


@pytest.mark.parametrize(
    "key, value",
    [
        ("features.sample_rate", 0),
        ("features.n_mfcc", 0),
        ("features.n_mels", 5),  # fewer bands than n_mfcc (13)
        ("features.hop_ms", 0.0),
        ("features.hop_ms", -10.0),
        ("features.win_ms", 5.0),  # shorter than the hop
        ("features.fmin", -1.0),
        ("features.fmax", 9000.0),  # above sample_rate / 2
        ("features.normalization", "none"),
        ("text.alphabet", ""),
        ("text.alphabet", "abca"),
        ("data.batch_size", 0),
        ("data.bucket_width", 0.0),
        ("data.max_duration", 0.0),
        ("data.num_parallel_calls", 0),
        ("data.subsets", []),
        ("model.num_layers", 0),
        ("model.num_units", 0),
        ("model.frame_stack", 0),
        ("model.frame_stride", 0),
        ("model.input_keep_prob", 0.0),
        ("model.output_keep_prob", 1.5),
        ("train.epochs", 0),
        ("train.checkpoint_every", 0),
        ("train.log_every", 0),
        ("train.max_steps", -1),
        ("train.warmup_steps", -1),
        ("train.decay_steps", -1),
        ("train.patience", -1),
        ("train.keep_epochs", -1),
        ("train.learning_rate", 0.0),
        ("train.learning_rate", ".nan"),
        ("train.clip_norm", ".inf"),
        ("train.lr_floor", 1.5),
        ("train.seed", -1),
        ("augment.speeds", [0.0]),
        ("augment.time_masks", -1),
        ("augment.time_mask_max_fraction", 2.0),
        ("decode.beam_width", 0),
    ],
)
def test_every_section_rejects_values_that_cannot_work(key, value):
    """Counts that would divide by zero, widths below 1, probabilities outside (0, 1]: each one
    is a one-line ConfigError naming its key, from a recipe as from --set."""
    import yaml

    section, name = key.split(".")
    value = yaml.safe_load(value) if isinstance(value, str) and value.startswith(".") else value
    with pytest.raises(ConfigError, match=rf"'{section}\.{name}'") as info:
        from_dict({section: {name: value}})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=rf"'{section}\.{name}'"):
        load_recipe(RECIPES / "librispeech_small", [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"])
