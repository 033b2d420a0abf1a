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
