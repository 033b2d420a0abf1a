"""Transcript normalization and the character vocabulary (CTC blank = index 0)."""

from __future__ import annotations

import collections
import json
import re
import unicodedata
from typing import Iterable

from asr.config import TextConfig
from asr.errors import ConfigError, DataError

BLANK = 0  # index of the CTC blank; the alphabet's characters follow from index 1
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")  # hyphens, dashes, slashes and underscores split words
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # an apostrophe not between two word characters


def normalize_text(text: str) -> str:
    """Lower-case text with only word characters, inner apostrophes and single spaces.

    "Don't  STOP -- 'now'!" -> "don't stop now". Letters outside the alphabet (digits, accents)
    are kept, so that they can be counted and reported rather than silently dropped.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _SEPARATORS.sub(" ", text)
    text = "".join(c for c in text if c == "'" or not unicodedata.category(c).startswith(("P", "S", "C")) or c.isspace())
    text = _STRAY_APOSTROPHE.sub("", text)
    return " ".join(text.split())


class Vocabulary:
    """Maps characters to ids: the CTC blank at index 0, then the alphabet's characters in order."""

    def __init__(self, alphabet: str = TextConfig.alphabet):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ConfigError(f"text.alphabet: expected distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self._ids = {c: i + 1 for i, c in enumerate(alphabet)}

    @property
    def size(self) -> int:
        """Number of output classes, the blank included."""
        return len(self.alphabet) + 1

    @property
    def blank(self) -> int:
        return BLANK

    def encode(self, text: str, skip_oov: bool = False) -> list[int]:
        """Text (already normalized) -> ids in [1, size). A character outside the alphabet raises
        DataError, or is dropped when skip_oov is True."""
        if skip_oov:
            return [self._ids[c] for c in text if c in self._ids]
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            oov = ", ".join(f"{c!r} x{n}" for c, n in self.oov_chars(text).most_common())
            raise DataError(f"characters outside the vocabulary ({oov}) in {text[:60]!r}; normalize the text or extend text.alphabet") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; blanks are dropped (repeats are not merged: that is the CTC decoder's job)."""
        chars = []
        for i in ids:
            i = int(i)
            if i == BLANK:
                continue
            if not 0 < i < self.size:
                raise DataError(f"label id {i} is outside the vocabulary of size {self.size}")
            chars.append(self.alphabet[i - 1])
        return "".join(chars)

    def oov_chars(self, text: str) -> collections.Counter:
        """Counter of the characters of text that are not in the alphabet."""
        return collections.Counter(c for c in text if c not in self._ids)

    def to_json(self) -> str:
        """JSON text to save with a model; from_json() reads it back."""
        return json.dumps({"alphabet": self.alphabet, "blank": BLANK})

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        try:
            data = json.loads(text)
            alphabet, blank = data["alphabet"], data.get("blank", BLANK)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"malformed vocabulary JSON ({exc})") from None
        if blank != BLANK or not isinstance(alphabet, str):
            raise DataError(f"vocabulary JSON: expected a string alphabet and blank {BLANK}, got {data!r}")
        return cls(alphabet)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.alphabet == self.alphabet

    def __hash__(self) -> int:
        return hash(self.alphabet)

    def __repr__(self) -> str:
        return f"Vocabulary({self.alphabet!r})"
