"""asr.lm against KenLM's lmplz (fixtures in ../shared/data/lm_reference), plus text, errors and build_lm."""

import gzip
import json
import lzma
import random

import numpy as np
import pytest

from asr import lm
from asr.errors import ConfigError, DataError
from conftest import SHARED_DATA, require

TOLERANCE = 1e-4  # log10 units, for every probability and back-off
FIXTURES = {  # file -> (order, lmplz --prune thresholds)
    "o2.arpa.xz": (2, (0,)),
    "o3.arpa.xz": (3, (0,)),
    "o4_prune0111.arpa.xz": (4, (0, 1, 1, 1)),
}


@pytest.fixture(scope="session")
def reference_dir():
    return require(SHARED_DATA / "lm_reference")


@pytest.fixture(scope="session")
def looking_glass(reference_dir):
    """The fixture's normalized sentences, one per line, as lmplz read them."""
    with lzma.open(reference_dir / "looking_glass.txt.xz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="session")
def our_arpas(looking_glass, tmp_path_factory):
    """{fixture name: our ARPA file for the same order and pruning}."""
    out = tmp_path_factory.mktemp("arpa")
    paths = {}
    for name, (order, prune) in FIXTURES.items():
        paths[name] = out / name.replace(".xz", "")
        lm.write_arpa(paths[name], lm.estimate(lm.count_ngrams(looking_glass, order), prune))
    return paths


@pytest.fixture(scope="session")
def small_arpa(tmp_path_factory):
    """A pruned 3-gram ARPA of 400 random sentences over 2,000 Zipf-distributed words (no shared data)."""
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(2000)]
    weights = 1.0 / np.arange(1, 2001)
    sentences = [" ".join(rng.choice(vocabulary, size=rng.integers(2, 12), p=weights / weights.sum())) for _ in range(400)]
    path = tmp_path_factory.mktemp("small") / "small.arpa"
    lm.write_arpa(path, lm.estimate(lm.count_ngrams(sentences, 3), (0, 0, 1)))
    return path


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_lmplz(name, reference_dir, our_arpas):
    ours, theirs = lm.read_arpa(our_arpas[name]), lm.read_arpa(reference_dir / name)
    assert sorted(ours) == sorted(theirs) == list(range(1, FIXTURES[name][0] + 1))
    for k in theirs:
        assert ours[k].keys() == theirs[k].keys(), f"{k}-grams differ"
        ngrams = list(theirs[k])
        mine = np.array([ours[k][g] for g in ngrams])
        ref = np.array([theirs[k][g] for g in ngrams])
        worst = int(np.abs(mine - ref).max(axis=1).argmax())
        assert np.abs(mine - ref).max() <= TOLERANCE, f"{k}-gram {ngrams[worst]}: ours {mine[worst]}, lmplz {ref[worst]}"


def _sample_contexts(model, per_order=12, seed=0):
    """The empty context and a sample of the n-grams of each order below the highest, as contexts."""
    rng = random.Random(seed)
    contexts = [()]
    for k in range(1, max(model)):
        candidates = sorted(g for g in model[k] if g[-1] != lm.EOS)
        contexts += rng.sample(candidates, min(per_order, len(candidates)))
    return contexts


@pytest.mark.parametrize("name", [*FIXTURES, "small"])
def test_probabilities_sum_to_one(name, request):
    model = lm.read_arpa(request.getfixturevalue("small_arpa") if name == "small" else request.getfixturevalue("our_arpas")[name])
    vocabulary = [g[0] for g in model[1] if g[0] != lm.BOS]  # <unk> and </s> included
    assert lm.UNK in vocabulary and lm.EOS in vocabulary
    for context in _sample_contexts(model):
        total = sum(10.0 ** lm.log10_prob(model, context, w) for w in vocabulary)
        assert abs(total - 1.0) <= TOLERANCE, f"context {context}: probabilities sum to {total}"


def test_log10_prob_backs_off(tmp_path):
    arpa = tmp_path / "tiny.arpa"
    arpa.write_text(
        "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\n0\t<s>\t-0.5\n-0.3\t</s>\n-0.2\ta\t-0.1\n\n"
        "\\2-grams:\n-0.4\t<s> a\n-0.05\ta </s>\n\n\\end\\\n"
    )
    model = lm.read_arpa(arpa)
    assert lm.log10_prob(model, ["<s>"], "a") == pytest.approx(-0.4)  # seen bigram
    assert lm.log10_prob(model, ["<s>"], "</s>") == pytest.approx(-0.5 - 0.3)  # back-off(<s>) + P(</s>)
    assert lm.log10_prob(model, ["a"], "zebra") == pytest.approx(-0.1 - 1.0)  # unknown word -> <unk>
    assert lm.log10_prob(model, ["zebra", "</s>"], "a") == pytest.approx(-0.2)  # no back-off weight for </s>
    assert lm.log10_prob(model, [], "a") == pytest.approx(-0.2)


def test_split_sentences_normalizes_raw_text():
    text = (
        "CHAPTER I. Looking-Glass House\n\n"
        "One thing was certain, that the WHITE kitten had had\nnothing to do with it:\u2014it was the "
        "black kitten\u2019s fault entirely! \u2018Don\u2019t,\u2019 said Alice; why?\n\n\n   ...\n"
    )
    assert lm.split_sentences(text) == [
        "chapter i",
        "looking glass house",
        "one thing was certain that the white kitten had had nothing to do with it",
        "it was the black kitten's fault entirely",
        "don't said alice",
        "why",
    ]


def test_read_corpus_reads_folders_and_compressed_files(tmp_path):
    (tmp_path / "a.txt").write_text("One. Two!", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("Three?")
    (tmp_path / "sub").mkdir()
    with lzma.open(tmp_path / "sub" / "c.txt.xz", "wt", encoding="utf-8") as f:
        f.write("Four; five")
    (tmp_path / "notes.md").write_text("Not read.")
    assert list(lm.read_corpus(tmp_path)) == ["one", "two", "three", "four", "five"]


@pytest.mark.parametrize(
    "content, words",
    [(b"", "no words"), (b"... !!! --\n\n;;", "no words"), (b"fine line\nbad \xff byte\n", "line 2: not UTF-8")],
)
def test_read_corpus_errors_name_the_file(tmp_path, content, words):
    path = tmp_path / "book.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=words) as info:
        list(lm.read_corpus(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_paths_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such text file"):
        list(lm.read_corpus(tmp_path / "nothing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files") as info:
        list(lm.read_corpus(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(info.value)


def test_too_little_text_for_discounts_is_an_error():
    with pytest.raises(DataError, match="too little text"):
        lm.estimate(lm.count_ngrams(["a b c", "a b"], 3))


def test_prune_thresholds():
    assert lm.prune_thresholds(4, (0, 1)) == (0, 1, 1, 1)  # the last one repeats, as in lmplz
    assert lm.prune_thresholds(3, (0,)) == (0, 0, 0)
    for bad in [(), (1, 1, 1), (0, 2, 1), (0, 1, 1, 1), (0, -1)]:
        with pytest.raises(ConfigError):
            lm.prune_thresholds(3, bad)


def _arpa_lines(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_truncated_arpa_is_an_error(tmp_path, small_arpa):
    lines = _arpa_lines(small_arpa)
    cuts = [(len(lines) - 10, r"truncated after line \d+: \\3-grams: holds \d+ of the \d+ n-grams declared"), (len(lines) - 1, r"no \\end\\")]
    for keep, message in cuts:
        path = tmp_path / f"cut{keep}.arpa"
        path.write_text("".join(lines[:keep]), encoding="utf-8")
        with pytest.raises(DataError, match=message) as info:
            lm.read_arpa(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("broken", ["-1.5\tthe\n", "minus\tthe cat\t0\n", "-1.5\ta b c d\n", "previous line again"])
def test_malformed_arpa_line_is_an_error(tmp_path, small_arpa, broken):
    lines = _arpa_lines(small_arpa)
    at = lines.index("\\2-grams:\n") + 5
    lines[at] = lines[at - 1] if broken == "previous line again" else broken
    path = tmp_path / "bad.arpa"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=f"line {at + 1}:") as info:
        lm.read_arpa(path)
    assert str(info.value).startswith(str(path))


def test_build_lm_writes_a_complete_directory(tmp_path):
    book = require(SHARED_DATA / "lm_books" / "12.txt.xz")  # Through the Looking-Glass, raw
    out = tmp_path / "lm"
    out.mkdir()
    (out / "decoding.json").write_text("{}")  # an older LM's tuning: the folder is replaced as a whole
    summary = lm.build_lm(out, [book], order=3)
    assert sorted(p.name for p in out.iterdir()) == ["lm.arpa", "lm.json", "words.txt"]
    assert json.loads((out / "lm.json").read_text()) == summary
    assert summary["prune"] == [0, 1, 1] and summary["normalization"] == "asr.text.normalize_text"
    assert summary["sources"] == [{"path": str(book), "bytes": book.stat().st_size}]
    assert 2400 < summary["sentences"] < 2500 and 29000 < summary["words"] < 30000
    model = lm.read_arpa(out / "lm.arpa")
    assert {str(k): len(v) for k, v in model.items()} == summary["ngrams"]
    words = (out / "words.txt").read_text().split("\n")[:-1]
    assert words[:3] == ["the", "and", "a"] and len(words) == summary["vocabulary"] == len(model[1]) - 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
