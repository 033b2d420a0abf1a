"""Text normalization and the vocabulary."""

import collections

import pytest

from asr.config import TextConfig
from asr.errors import ConfigError, DataError
from asr.text import Vocabulary, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Don't  STOP -- 'now'!", "don't stop now"),
        ("HE SAID: \"YES.\"\n", "he said yes"),
        ("rock 'n' roll", "rock n roll"),
        ("well-known U.S. place", "well known us place"),
        ("o\u2019clock", "o'clock"),
        ("the boys' toys", "the boys toys"),
        ("Café 42", "café 42"),  # kept, to be counted as out-of-vocabulary, not dropped
        ("   ", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_vocabulary_layout():
    vocab = Vocabulary()
    assert vocab.alphabet == TextConfig.alphabet
    assert vocab.size == len(TextConfig.alphabet) + 1 == 29
    assert vocab.blank == 0
    assert vocab.encode(" a'") == [1, 2, 28]


def test_round_trip():
    vocab = Vocabulary()
    text = "it's a test of the vocabulary"
    ids = vocab.encode(text)
    assert 0 not in ids
    assert vocab.decode(ids) == text
    assert vocab.decode([0] + ids[:2] + [0, 0] + ids[2:]) == text  # blanks are ignored


def test_oov():
    vocab = Vocabulary()
    assert vocab.oov_chars("café 42 é") == collections.Counter({"é": 2, "4": 1, "2": 1})
    with pytest.raises(DataError, match="'é' x1"):
        vocab.encode("café")
    assert vocab.encode("café", skip_oov=True) == vocab.encode("caf")
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocab.decode([29])


def test_json_and_custom_alphabets():
    vocab = Vocabulary("ab ")
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.encode("ba ") == [2, 1, 3]
    with pytest.raises(ConfigError):
        Vocabulary("aa")
    with pytest.raises(DataError):
        Vocabulary.from_json("{not json")
