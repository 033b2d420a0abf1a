"""asr lm build / tune and --lm end to end: real text, real speech, the shipped model; one-line errors."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from asr.cli import main
from asr.data import read_manifest, write_manifest
from asr.evaluate import error_rates
from conftest import SHARED_DATA, require

MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
BOOKS = ("1056", "145", "2439", "24210", "2505")  # 5 of lm_books (1.1 M words): a small LM, quick to build
DEV_SUBSET = 8  # dev utterances decoded end to end


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    books = require(SHARED_DATA / "lm_books")
    out = tmp_path_factory.mktemp("lm") / "books5"
    assert main(["lm", "build", str(out), *(str(books / f"{b}.txt.xz") for b in BOOKS), "--order", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def dev_manifest(tmp_path_factory, librispeech_root):
    from asr.corpora import prepare_librispeech

    out = tmp_path_factory.mktemp("ls")
    _, dev = prepare_librispeech(librispeech_root, out, ["train-clean-5"], dev_speakers=("32", "669", "7312"))
    return write_manifest(out / "dev_subset.jsonl", read_manifest(dev)[:DEV_SUBSET])


def test_build_writes_a_described_lm(small_lm):
    info = json.loads((small_lm / "lm.json").read_text())
    assert info["order"] == 3 and info["prune"] == [0, 1, 1]
    assert info["normalization"] == "asr.text.normalize_text"
    assert len(info["sources"]) == len(BOOKS) and info["words"] > 1_000_000
    words = (small_lm / "words.txt").read_text().split()
    assert words[0] == "the" and len(words) == info["vocabulary"]
    assert info["lexicon"]["words"] + info["lexicon"]["dropped_outside_alphabet"] == len(words)


def test_lm_decoding_beats_greedy_on_real_speech(small_lm, dev_manifest, tmp_path, capsys):
    """The shipped acoustic model on held-out speakers: words from the LM cut the WER."""
    refs = {u.id: u.text for u in read_manifest(dev_manifest)}
    scores = {}
    for name, extra in {"greedy": [], "lm": ["--lm", str(small_lm), "--beam-width", "32", "--lm-weight", "0.7", "--word-score", "1"]}.items():
        assert main(["evaluate", str(MODEL), str(dev_manifest), "--report-dir", str(tmp_path / name), *extra]) == 0
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert {u["id"] for u in report["utterances"]} == set(refs)
        scores[name] = report["summary"]["wer"]
        decoding = report["decoding"]
    assert scores["lm"] < scores["greedy"] - 0.1, scores
    assert decoding["lm_weight"] == 0.7 and decoding["lexicon"] is True and decoding["beam_width"] == 32
    assert 0 < decoding["oov_rate"] < 0.2


def test_tune_writes_the_best_setting_into_the_lm(small_lm, dev_manifest, tmp_path, capsys):
    lm = tmp_path / "lm"
    shutil.copytree(small_lm, lm)
    assert main(["lm", "tune", str(MODEL), str(dev_manifest), "--lm", str(lm), "--beam-width", "16",
                 "--lm-weights", "0", "0.7", "--word-scores", "1"]) == 0
    tuned = json.loads((lm / "decoding.json").read_text())
    grid = {g["lm_weight"]: g["wer"] for g in tuned["grid"]}
    assert tuned["lm_weight"] == 0.7 and grid[0.7] < grid[0.0]
    assert tuned["beam_width"] == 16 and tuned["wer"] == grid[0.7]
    # --lm alone now decodes with the tuned setting, and transcribe agrees with evaluate's words.
    utt = read_manifest(dev_manifest)[0]
    capsys.readouterr()
    assert main(["transcribe", str(MODEL), str(utt.audio_filepath), "--lm", str(lm), "--json"]) == 0
    hyp = json.loads(capsys.readouterr().out)["text"]
    assert error_rates([utt.text], [hyp])["wer"] < 0.6


def test_transcribe_goes_on_past_a_bad_file(dev_manifest, tmp_path, capsys):
    good = [str(u.audio_filepath) for u in read_manifest(dev_manifest)[:2]]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00garbage")
    assert main(["transcribe", str(MODEL), good[0], str(broken), good[1]]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and all(line.strip() for line in out.splitlines())
    assert str(broken) in err and err.count("\n") == 1


def test_evaluate_lists_skipped_utterances(dev_manifest, tmp_path, capsys):
    utts = read_manifest(dev_manifest)[:3]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC not really")
    utts[1] = dataclasses.replace(utts[1], audio_filepath=str(broken))
    manifest = write_manifest(tmp_path / "with_broken.jsonl", utts)
    assert main(["evaluate", str(MODEL), str(manifest), "--report-dir", str(tmp_path / "r")]) == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [s["id"] for s in report["skipped"]] == [utts[1].id]
    assert len(report["utterances"]) == 2
    assert "Skipped utterances" in (tmp_path / "r" / "report.md").read_text()
    assert utts[1].id in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "folder_without_text", "empty", "no_words", "not_utf8"])
def test_lm_build_bad_text_is_one_line(tmp_path, capsys, case):
    text = tmp_path / "text.txt"
    if case == "folder_without_text":
        text = tmp_path / "folder"
        text.mkdir()
        (text / "notes.md").write_text("words here")
    elif case == "empty":
        text.write_text("")
    elif case == "no_words":
        text.write_text("... !!! --- ???\n")
    elif case == "not_utf8":
        text.write_bytes("good words\nmore words\n".encode() + "caf\xe9 latin-1\n".encode("latin-1"))
    assert main(["lm", "build", str(tmp_path / "out"), str(text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(text) in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing_dir", "missing_arpa", "truncated_arpa"])
def test_bad_lm_directory_is_one_line(small_lm, dev_manifest, tmp_path, capsys, case):
    lm = tmp_path / "lm"
    if case != "missing_dir":
        shutil.copytree(small_lm, lm)
    if case == "missing_arpa":
        (lm / "lm.arpa").unlink()
    elif case == "truncated_arpa":
        data = (lm / "lm.arpa").read_bytes()
        (lm / "lm.arpa").write_bytes(data[: len(data) // 3])
    audio = str(read_manifest(dev_manifest)[0].audio_filepath)
    assert main(["transcribe", str(MODEL), audio, "--lm", str(lm)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(lm) in err, err


def test_lm_options_need_an_lm(capsys):
    assert main(["transcribe", str(MODEL), "x.wav", "--word-score", "2"]) == 2
    assert "--lm" in capsys.readouterr().err


README_LM_WER = 0.3786  # recipes/librispeech_small/README.md: 3-gram (prune 0 0 1), lexicon, beam 100, alpha 0.9, beta -1


@pytest.mark.slow
def test_the_readme_lm_result(librispeech_root, tmp_path):
    """The recipe README's LM row from scratch: build the 3-gram from lm_books, decode the dev speakers."""
    from asr.corpora import prepare_librispeech

    books = require(SHARED_DATA / "lm_books")
    lm = tmp_path / "3gram_p001"
    assert main(["lm", "build", str(lm), str(books), "--order", "3", "--prune", "0", "0", "1"]) == 0
    _, dev = prepare_librispeech(librispeech_root, tmp_path / "data", ["train-clean-5"], dev_speakers=("32", "669", "7312"))
    assert main(["evaluate", str(MODEL), str(dev), "--lm", str(lm), "--beam-width", "100", "--lm-weight", "0.9",
                 "--word-score", "-1", "--report-dir", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert summary["utterances"] == 78
    assert abs(summary["wer"] - README_LM_WER) < 0.0005 and summary["wer"] <= 0.50, summary
