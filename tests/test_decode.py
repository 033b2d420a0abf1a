"""asr.decode: one decoder for greedy, beam and LM word search, on hand-made log-probabilities with known answers."""

import json

import numpy as np
import pytest

from asr import ctc, decode
from asr.decode import DecodeOptions, Decoder, LanguageModel, resolve
from asr.errors import ConfigError, DataError
from asr.text import Vocabulary

VOCAB = Vocabulary()  # " abcdefghijklmnopqrstuvwxyz'" after the blank
LOW = -30.0  # log-probability of the characters a hand-made frame does not say

# A hand-written LM: "the cat" is likely, "the cab" much less; "xyzzy" is no word.
ARPA = """\\data\\
ngram 1=7
ngram 2=4

\\1-grams:
-1.0\t<unk>\t0
0\t<s>\t-0.3
-1.0\t</s>\t0
-0.7\tthe\t-0.3
-1.0\tcat\t-0.3
-1.6\tcab\t-0.3
-1.2\tsat\t-0.3

\\2-grams:
-0.1\t<s> the
-0.2\tthe cat
-3.0\tthe cab
-0.3\tcat sat

\\end\\
"""


def frames(spec: list) -> np.ndarray:
    """Log-softmax frames [T, V] from a list of {char: prob} dicts ("_" = blank) or single characters."""
    out = np.full((len(spec), VOCAB.size), LOW)
    for t, frame in enumerate(spec):
        frame = {frame: 1.0} if isinstance(frame, str) else frame
        for char, prob in frame.items():
            out[t, 0 if char == "_" else VOCAB.encode(char)[0]] = np.log(prob)
    out -= np.logaddexp.reduce(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def spelled(text: str) -> list:
    """Frames that say text character by character, with a blank between all of them."""
    return [f for char in text for f in (char, "_")]


@pytest.fixture
def lm_dir(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "lm.arpa").write_text(ARPA)
    (folder / "words.txt").write_text("the\ncat\nsat\ncab\n")
    (folder / "lm.json").write_text(json.dumps({"order": 2}))
    return folder


def word_decoder(lm_dir, **options) -> Decoder:
    options = {"beam_width": 16, "lm_weight": 1.0, "word_score": 0.0, **options}
    return Decoder(VOCAB, resolve(DecodeOptions(lm_dir=str(lm_dir), **options), model_beam_width=1))


def test_without_lm_greedy_and_beam_match_asr_ctc():
    logp = frames(spelled("the cat") + [{"t": 0.6, "a": 0.4}])
    greedy = Decoder(VOCAB, resolve(DecodeOptions(), model_beam_width=1))
    beam = Decoder(VOCAB, resolve(DecodeOptions(beam_width=4), model_beam_width=1))
    lengths = np.array([len(logp)])
    assert greedy.decode_one(logp) == VOCAB.decode(ctc.greedy_decode(logp[None], lengths)[0]) == "the catt"
    assert beam.decode_one(logp) == VOCAB.decode(ctc.beam_search_decode(logp[None], lengths, beam_width=4)[0])


def test_model_beam_width_is_the_default_without_lm():
    assert resolve(DecodeOptions(), model_beam_width=8).beam_width == 8
    assert resolve(DecodeOptions(beam_width=2), model_beam_width=8).beam_width == 2


def test_padding_is_never_read():
    logp = frames(spelled("cat"))
    padded = np.concatenate([logp, frames(spelled("zzzz"))])[None]
    decoder = Decoder(VOCAB, resolve(DecodeOptions(), model_beam_width=1))
    assert decoder.decode(padded, np.array([len(logp)])) == ["cat"]


def test_lm_picks_the_likely_word_where_the_sounds_are_unsure(lm_dir):
    # "the ca?" where the last letter sounds a little more like b than t.
    unsure = spelled("the ca") + [{"b": 0.55, "t": 0.45}, "_"]
    assert Decoder(VOCAB, resolve(DecodeOptions(), 1)).decode_one(frames(unsure)) == "the cab"
    assert word_decoder(lm_dir).decode_one(frames(unsure)) == "the cat"


def test_clear_sounds_win_over_the_lm(lm_dir):
    assert word_decoder(lm_dir).decode_one(frames(spelled("the cab"))) == "the cab"


def test_lexicon_keeps_words_in_the_word_list(lm_dir):
    # The sounds say "xyzzy" clearly, with a faint "cat" behind its first three letters.
    faint = [{"x": 0.95, "c": 0.02}, {"y": 0.95, "a": 0.02}, {"z": 0.95, "t": 0.02}, {"z": 0.95, "_": 0.04}, {"y": 0.95, "_": 0.04}]
    logp = frames(spelled("the ") + [f for frame in faint for f in (frame, "_")])
    assert Decoder(VOCAB, resolve(DecodeOptions(), 1)).decode_one(logp) == "the xyzzy"
    assert word_decoder(lm_dir).decode_one(logp) == "the cat"
    assert word_decoder(lm_dir, lexicon=False).decode_one(logp) == "the xyzzy"


def test_word_score_trades_words_for_characters(lm_dir):
    # "thecat" with an unsure gap: a high word bonus splits it into the two words it holds.
    gap = spelled("the") + [{" ": 0.3, "_": 0.7}, "_"] + spelled("cat")
    few = word_decoder(lm_dir, word_score=-20.0, lexicon=False).decode_one(frames(gap))
    many = word_decoder(lm_dir, word_score=5.0).decode_one(frames(gap))
    assert many == "the cat"
    assert few == "thecat"


def test_empty_utterance_decodes_to_nothing(lm_dir):
    empty = np.zeros((0, VOCAB.size), np.float32)
    assert word_decoder(lm_dir).decode_one(empty) == ""
    assert word_decoder(lm_dir).decode_one(frames(["_", "_"])) == ""


def test_tuned_settings_are_the_defaults(lm_dir):
    lm = LanguageModel.load(lm_dir)
    assert resolve(DecodeOptions(lm_dir=str(lm_dir)), 1).lm_weight == decode.DEFAULT_LM_WEIGHT
    lm.write_tuned({"lm_weight": 0.9, "word_score": 2.5, "beam_width": 12, "lexicon": False})
    settings = resolve(DecodeOptions(lm_dir=str(lm_dir)), 1)
    assert (settings.lm_weight, settings.word_score, settings.beam_width, settings.lexicon) == (0.9, 2.5, 12, False)
    given = resolve(DecodeOptions(lm_dir=str(lm_dir), lm_weight=0.1, beam_width=3, lexicon=True), 1)
    assert (given.lm_weight, given.word_score, given.beam_width, given.lexicon) == (0.1, 2.5, 3, True)
    described = settings.describe()
    assert described["lm_weight"] == 0.9 and "lexicon-free" in described["decoder"]


def test_tune_finds_the_weight_that_fixes_the_unsure_word(lm_dir):
    unsure = frames(spelled("the ca") + [{"b": 0.55, "t": 0.45}, "_"])
    clear = frames(spelled("cat sat"))
    result = decode.tune(VOCAB, [unsure, clear], ["the cat", "cat sat"], DecodeOptions(lm_dir=str(lm_dir), beam_width=16),
                         lm_weights=(0.0, 1.0), word_scores=(0.0,))
    assert [g["wer"] for g in result["grid"]] == [0.25, 0.0]
    assert result["best"]["lm_weight"] == 1.0 and result["best"]["beam_width"] == 16


def test_tune_ignores_an_earlier_tuning(lm_dir):
    LanguageModel.load(lm_dir).write_tuned({"lm_weight": 0.9, "word_score": 2.5, "beam_width": 12, "lexicon": False})
    unsure = frames(spelled("the ca") + [{"b": 0.55, "t": 0.45}, "_"])
    result = decode.tune(VOCAB, [unsure], ["the cat"], DecodeOptions(lm_dir=str(lm_dir)), lm_weights=(1.0,), word_scores=(0.0,))
    assert result["best"]["lexicon"] is True and result["best"]["beam_width"] == decode.DEFAULT_LM_BEAM


def test_words_outside_the_alphabet_leave_the_lexicon():
    assert decode.lexicon_words(["cat", "café", "1984", "don't"], VOCAB) == (["cat", "don't"], 2)


@pytest.mark.parametrize("broken", ["missing_dir", "missing_words", "empty_words", "bad_json", "bad_tuned"])
def test_broken_lm_directories_name_the_file(lm_dir, broken):
    target = {
        "missing_dir": lm_dir / "nowhere",
        "missing_words": lm_dir / "words.txt",
        "empty_words": lm_dir / "words.txt",
        "bad_json": lm_dir / "lm.json",
        "bad_tuned": lm_dir / "decoding.json",
    }[broken]
    folder = target if broken == "missing_dir" else lm_dir
    if broken == "missing_words":
        target.unlink()
    elif broken == "empty_words":
        target.write_text("\n")
    elif broken in ("bad_json", "bad_tuned"):
        target.write_text("{not json")
    with pytest.raises(DataError, match=str(target.name)):
        LanguageModel.load(folder)


@pytest.mark.parametrize("arpa", [ARPA[: len(ARPA) // 2], "\\data\\\nngram 1=2\n\n\\1-grams:\n-1\t<s>\n"])
def test_truncated_or_malformed_arpa_is_one_line(lm_dir, arpa):
    (lm_dir / "lm.arpa").write_text(arpa)
    with pytest.raises(DataError) as error:
        word_decoder(lm_dir)
    assert "lm.arpa" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("options", [
    DecodeOptions(beam_width=0),
    DecodeOptions(lm_weight=1.0),
    DecodeOptions(lm_dir="x", word_score=float("nan")),
])
def test_bad_options(options):
    with pytest.raises(ConfigError):
        options.validate()
