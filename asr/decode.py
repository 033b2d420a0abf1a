"""One way from CTC log-probabilities to text: greedy, prefix beam search, or word beam search with an n-gram LM."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np

from asr import ctc
from asr.config import MAX_BEAM_WIDTH
from asr.errors import ConfigError, DataError
from asr.io import atomic_write_text, check_output_dir, quiet_stderr, read_text
from asr.lm import ARPA_FILE, INFO_FILE, TUNED_FILE, WORDS_FILE, outside_alphabet
from asr.text import Vocabulary

log = logging.getLogger(__name__)

LM_FILES = (ARPA_FILE, WORDS_FILE, INFO_FILE)

DEFAULT_LM_BEAM = 50  # beams kept by the LM decoder when neither the user nor a tuning chose
DEFAULT_LM_WEIGHT = 0.5  # alpha: weight of the LM's natural-log probability, before tuning
DEFAULT_WORD_SCORE = 1.0  # beta: bonus per word, before tuning (offsets the LM's preference for few words)
# The library scores a word outside the word list (and a partial word that begins none) with this
# offset: with the lexicon, -1000 (natural log) makes one lose to any in-vocabulary spelling that the
# frames allow (characters above TOKEN_MIN_LOGP); it comes out only when the frames allow none.
LEXICON_UNK_SCORE = -1000.0
LEXICON_FREE_UNK_SCORE = -10.0  # ... lexicon-free: possible when the sounds insist (pyctcdecode's default)
BEAM_PRUNE_LOGP = -10.0  # beams this far (natural log) below the best are dropped (the library's default)
TOKEN_MIN_LOGP = -5.0  # characters below this frame log-probability never extend a beam (the library's default)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How to decode. None means "the best known value": the LM directory's tuned one, else the default."""

    beam_width: int | None = None  # 1 = greedy; None: the model's decode.beam_width, or the LM's tuned beam
    lm_dir: str | None = None  # an LM directory (asr lm build); None: no language model
    lm_weight: float | None = None  # alpha
    word_score: float | None = None  # beta
    lexicon: bool | None = None  # True: words only from the LM's word list; False: out-of-vocabulary words may come out

    def validate(self) -> None:
        if self.beam_width is not None and not 1 <= self.beam_width <= MAX_BEAM_WIDTH:
            raise ConfigError(f"beam width {self.beam_width}: expected 1 (greedy) to {MAX_BEAM_WIDTH}")
        for name in ("lm_weight", "word_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{name} {value}: expected a finite number")
        if self.lm_dir is None and (self.lm_weight is not None or self.word_score is not None):
            raise ConfigError("lm_weight and word_score need a language model (--lm LM_DIR)")


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """An LM directory as asr lm build wrote it, with asr lm tune's settings when there are some."""

    path: Path
    words: tuple[str, ...]  # the word list, most frequent first
    info: dict  # lm.json: sources, order, pruning, counts
    tuned: dict  # decoding.json: lm_weight, word_score, beam_width, lexicon, the dev WER ({} when untuned)

    @property
    def arpa(self) -> Path:
        return self.path / ARPA_FILE

    @classmethod
    def load(cls, lm_dir: str | Path) -> "LanguageModel":
        path = Path(lm_dir)
        if not path.is_dir():
            what = "a file, not an LM directory" if path.exists() else "no LM directory there"
            raise DataError(f"{path}: {what}; build one with asr lm build {path} TEXT...")
        for name in LM_FILES:
            if not (path / name).exists():
                raise DataError(f"{path / name}: missing from the LM directory; rebuild it with asr lm build")
            if not (path / name).is_file():
                raise DataError(f"{path / name}: a folder, not a file; rebuild the LM with asr lm build")
        words = tuple(read_text(path / WORDS_FILE, "LM word list").split())
        if not words:
            raise DataError(f"{path / WORDS_FILE}: empty word list; rebuild the LM with asr lm build")
        info = _read_json(path / INFO_FILE)
        tuned = _check_tuned(path / TUNED_FILE, _read_json(path / TUNED_FILE)) if (path / TUNED_FILE).exists() else {}
        return cls(path, words, info, tuned)

    def check_writable(self) -> None:
        """Fails before any decoding when write_tuned() could not save into the directory."""
        check_output_dir(self.path, "LM directory asr lm tune saves its settings into")

    def write_tuned(self, settings: dict) -> None:
        """Saves the best decoding settings into the directory (asr lm tune)."""
        atomic_write_text(self.path / TUNED_FILE, json.dumps(settings, indent=1) + "\n")


def _read_json(path: Path) -> dict:
    text = read_text(path, "JSON file")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: malformed JSON ({exc}); rebuild the LM or delete the file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _check_tuned(path: Path, tuned: dict) -> dict:
    """decoding.json's settings, each checked: a bad one is a DataError naming the file."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {
        "beam_width": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_BEAM_WIDTH,
        "lm_weight": number,
        "word_score": number,
        "lexicon": lambda v: isinstance(v, bool),
    }
    for key, ok in checks.items():
        if key in tuned and not ok(tuned[key]):
            raise DataError(f"{path}: {key} {tuned[key]!r} is not a valid setting; run asr lm tune again or delete the file")
    return tuned


@dataclasses.dataclass(frozen=True)
class Settings:
    """DecodeOptions resolved against a model's config and an LM directory: nothing left unknown."""

    beam_width: int
    lm: LanguageModel | None
    lm_weight: float
    word_score: float
    lexicon: bool

    def describe(self) -> dict:
        """What a report says about the decoder."""
        if self.lm is None:
            return {"decoder": "greedy" if self.beam_width == 1 else "prefix beam search", "beam_width": self.beam_width}
        return {
            "decoder": "ctc-beam-decoder with KenLM" + (" (lexicon)" if self.lexicon else " (lexicon-free)"),
            "beam_width": self.beam_width,
            "lm_dir": str(self.lm.path),
            "lm_order": self.lm.info.get("order"),
            "lm_weight": self.lm_weight,
            "word_score": self.word_score,
            "lexicon": self.lexicon,
        }


def resolve(options: DecodeOptions, model_beam_width: int) -> Settings:
    """Fills what options leave open: the user's value, else the LM's tuned one, else the default."""
    options.validate()
    if options.lm_dir is None:
        return Settings(options.beam_width or model_beam_width, None, 0.0, 0.0, True)
    lm = LanguageModel.load(options.lm_dir)
    tuned = lm.tuned
    pick = lambda given, key, default: given if given is not None else tuned.get(key, default)  # noqa: E731
    return Settings(
        beam_width=int(pick(options.beam_width, "beam_width", DEFAULT_LM_BEAM)),
        lm=lm,
        lm_weight=float(pick(options.lm_weight, "lm_weight", DEFAULT_LM_WEIGHT)),
        word_score=float(pick(options.word_score, "word_score", DEFAULT_WORD_SCORE)),
        lexicon=bool(pick(options.lexicon, "lexicon", True)),
    )


class Decoder:
    """Decodes batches of log-probabilities [B, T, V] with their lengths [B] into text, as Settings say."""

    def __init__(self, vocab: Vocabulary, settings: Settings):
        self.vocab = vocab
        self.settings = settings
        self._word_decoder = None if settings.lm is None else _word_decoder(vocab, settings)

    def decode(self, log_probs: np.ndarray, lengths: np.ndarray) -> list[str]:
        """log_probs: [B, T, V] log-softmax, padded past lengths [B] (padding never read) -> B texts."""
        log_probs, lengths = np.asarray(log_probs), np.asarray(lengths)
        return [self.decode_one(lp[:n]) for lp, n in zip(log_probs, lengths)]

    def decode_one(self, log_probs: np.ndarray) -> str:
        """One utterance's valid frames [T, V] (log-softmax) -> its text."""
        log_probs = np.asarray(log_probs)
        if self._word_decoder is not None:
            return self._decode_words(log_probs)
        batch, lengths = log_probs[None], np.array([len(log_probs)])
        if self.settings.beam_width > 1:
            ids = ctc.beam_search_decode(batch, lengths, beam_width=self.settings.beam_width)
        else:
            ids = ctc.greedy_decode(batch, lengths)
        return self.vocab.decode(ids[0])

    def _decode_words(self, log_probs: np.ndarray) -> str:
        """One utterance's valid frames [T, V] -> words, through the decoder library."""
        if len(log_probs) == 0:
            return ""
        text = self._word_decoder.decode(
            np.ascontiguousarray(log_probs, np.float32),
            beam_width=self.settings.beam_width,
            beam_prune_logp=BEAM_PRUNE_LOGP,
            token_min_logp=TOKEN_MIN_LOGP,
        )
        return " ".join(text.split())


def lexicon_words(words, vocab: Vocabulary) -> tuple[list[str], int]:
    """The words spelled entirely in the model's alphabet (space excluded), and how many were dropped."""
    dropped = set(outside_alphabet(words, vocab.alphabet))
    return [w for w in words if w not in dropped], len(dropped)


def _word_decoder(vocab: Vocabulary, settings: Settings):
    """ctc-beam-decoder's prefix beam search with KenLM fusion, for this vocabulary and LM."""
    if " " not in vocab.alphabet:
        raise ConfigError("a word language model needs a space in the model's text.alphabet (the word separator)")
    from ctc_beam_decoder import BeamSearchDecoder

    words, dropped = lexicon_words(settings.lm.words, vocab)
    if dropped:
        log.info("%d of %d words of %s have characters outside the model's alphabet and are not in the lexicon",
                 dropped, len(settings.lm.words), settings.lm.path / WORDS_FILE)
    if not words:
        raise DataError(f"{settings.lm.path / WORDS_FILE}: no word is spelled in the model's alphabet {vocab.alphabet!r}")
    labels = [""] + list(vocab.alphabet)  # the library's blank is "", at our index 0
    try:
        with quiet_stderr():  # KenLM draws a progress bar on file descriptor 2 while it reads the ARPA
            return BeamSearchDecoder(
                labels,
                kenlm_model_path=str(settings.lm.arpa),
                unigrams=words,
                alpha=settings.lm_weight,
                beta=settings.word_score,
                unk_score_offset=LEXICON_UNK_SCORE if settings.lexicon else LEXICON_FREE_UNK_SCORE,
            )
    except (ValueError, RuntimeError, OSError) as exc:
        # KenLM's message ends with the reason ("... threw FormatLoadException.\nEnd of file ... Byte: 50000").
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        reason = reason.split(f"{settings.lm.arpa}: ")[-1]
        raise DataError(f"{settings.lm.arpa}: KenLM cannot load it ({reason}); rebuild it with asr lm build") from None


TUNE_LM_WEIGHTS = (0.3, 0.5, 0.7, 0.9, 1.2)  # asr lm tune's default grid of alpha ...
TUNE_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0, 3.0)  # ... and of beta


def tune(vocab: Vocabulary, posteriors: list[np.ndarray], references: list[str], options: DecodeOptions,
         lm_weights=TUNE_LM_WEIGHTS, word_scores=TUNE_WORD_SCORES, progress=None) -> dict:
    """Grid search of LM weight and word score on a dev set whose log-probabilities were computed once.

    posteriors: per utterance [T_i, V] log-softmax (valid frames); references: normalized texts.
    options: the LM directory, beam width and lexicon (its lm_weight/word_score are ignored).
    Returns {"best": settings with their WER/CER, "grid": every point} ranked by WER, then CER.
    """
    from asr.evaluate import error_rates

    if len(posteriors) != len(references) or not references:
        raise ValueError(f"{len(posteriors)} posteriors for {len(references)} references")
    # The grid's own choices, not an earlier tuning's: lexicon unless told otherwise, the default beam.
    base = dataclasses.replace(options, lm_weight=None, word_score=None, lexicon=options.lexicon is not False,
                               beam_width=options.beam_width or DEFAULT_LM_BEAM)
    resolved, grid = resolve(base, 1), []
    for alpha in lm_weights:
        for beta in word_scores:
            decoder = Decoder(vocab, dataclasses.replace(resolved, lm_weight=float(alpha), word_score=float(beta)))
            hyps = [decoder.decode_one(lp) for lp in posteriors]
            rates = error_rates(references, hyps)
            grid.append({"lm_weight": float(alpha), "word_score": float(beta), "wer": rates["wer"], "cer": rates["cer"]})
            if progress is not None:
                progress(grid[-1])
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    return {"best": {**best, "beam_width": resolved.beam_width, "lexicon": resolved.lexicon}, "grid": grid}
