"""WER/CER on hand-computed examples, the report's structure, and the files it writes."""

import json

import pytest

from asr.evaluate import build_report, error_rates, summary_line, write_report


def results():
    return [
        {"id": "a1", "reference": "the cat sat on the mat", "hypothesis": "the bat sat the mat",
         "speaker": "alice", "duration": 2.0},
        {"id": "a2", "reference": "hello world", "hypothesis": "hello world", "speaker": "alice", "duration": 1.0},
        {"id": "b1", "reference": "a cat <unk>", "hypothesis": "a bat <unk> too", "speaker": "bob", "duration": 1.5},
        {"id": "b2", "reference": "go now", "hypothesis": "", "speaker": "bob", "duration": 0.5},
    ]


# ---- error_rates ------------------------------------------------------------------------------


def test_substitution_and_deletion():
    rates = error_rates(["the cat sat on the mat"], ["the bat sat the mat"])
    assert (rates["substitutions"], rates["deletions"], rates["insertions"], rates["hits"]) == (1, 1, 0, 4)
    assert rates["reference_words"] == 6
    assert rates["wer"] == pytest.approx(2 / 6)
    # Characters: c -> b, and "on " deleted, out of 22.
    assert rates["cer"] == pytest.approx(4 / 22)


def test_empty_hypothesis_deletes_everything():
    rates = error_rates(["a b c"], [""])
    assert rates["deletions"] == 3 and rates["wer"] == 1.0 and rates["cer"] == 1.0


def test_insertions_can_exceed_one_hundred_percent():
    rates = error_rates(["a b"], ["a x b y z"])
    assert rates["insertions"] == 3 and rates["wer"] == pytest.approx(3 / 2)
    assert rates["cer"] == pytest.approx(6 / 3)  # "x ", " y", " z" inserted into "a b"


def test_corpus_rates_pool_counts_rather_than_average_utterances():
    rates = error_rates(["a b c d", "e"], ["a b c d", "f"])
    assert rates["wer"] == pytest.approx(1 / 5)


def test_runs_of_whitespace_are_one_boundary():
    rates = error_rates(["a  b "], [" a b"])
    assert rates["wer"] == 0.0 and rates["cer"] == 0.0


def test_mismatched_lists_are_an_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])


# ---- build_report -----------------------------------------------------------------------------


def test_report_summary_matches_error_rates():
    report = build_report(results())
    rows = results()
    expected = error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    assert {k: report["summary"][k] for k in expected} == expected
    assert report["summary"]["utterances"] == 4 and report["summary"]["duration"] == pytest.approx(5.0)
    assert summary_line(report) == "WER 46.15% (S 2, D 3, I 1, N 13) CER 30.00% on 4 utterances"


def test_report_splits_by_speaker_worst_first():
    speakers = build_report(results())["speakers"]
    assert [s["speaker"] for s in speakers] == ["bob", "alice"]
    bob, alice = speakers
    assert (bob["utterances"], bob["reference_words"], bob["wer"]) == (2, 5, pytest.approx(4 / 5))
    assert (alice["substitutions"], alice["deletions"], alice["wer"]) == (1, 1, pytest.approx(2 / 8))


def test_report_lists_utterances_worst_first_with_alignments():
    utterances = build_report(results())["utterances"]
    assert [u["id"] for u in utterances] == ["b2", "b1", "a1", "a2"]
    by_id = {u["id"]: u for u in utterances}
    assert by_id["a1"]["alignment"] == "the (cat->bat) sat [del: on] the mat"
    assert by_id["b1"]["alignment"] == "a (cat->bat) <unk> [ins: too]"
    assert by_id["b2"]["alignment"] == "[del: go] [del: now]"
    assert by_id["a1"]["wer"] == pytest.approx(2 / 6) and by_id["a1"]["cer"] == pytest.approx(4 / 22)
    assert by_id["a2"]["speaker"] == "alice" and by_id["a2"]["duration"] == 1.0


def test_report_counts_confusions():
    confusions = build_report(results())["confusions"]
    assert confusions["substitutions"] == [{"reference": "cat", "hypothesis": "bat", "count": 2}]
    assert [(d["word"], d["count"]) for d in confusions["deletions"]] == [("go", 1), ("now", 1), ("on", 1)]
    assert confusions["insertions"] == [{"word": "too", "count": 1}]


def test_report_without_speakers_or_durations():
    report = build_report([{"id": 7, "reference": "a b", "hypothesis": "a c"}])
    assert report["speakers"] == [] and "duration" not in report["summary"]
    assert report["utterances"][0]["id"] == "7"


def test_report_names_a_result_missing_a_field():
    with pytest.raises(ValueError, match="result 1 lacks hypothesis"):
        build_report([{"id": "x", "reference": "a", "hypothesis": "a"}, {"id": "y", "reference": "b"}])


# ---- write_report -----------------------------------------------------------------------------


def test_write_report_files_are_complete_and_parseable(tmp_path):
    report = build_report(results())
    command = "asr evaluate --model exp/m --manifest dev.jsonl --beam-width 8"
    paths = write_report(report, tmp_path / "report", command, "exp/m", "dev.jsonl")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.html", "report.json", "report.md"]

    saved = json.loads(paths["json"].read_text())
    assert saved["meta"]["command"] == command and saved["meta"]["manifest"] == "dev.jsonl"
    assert saved["summary"] == report["summary"] and saved["utterances"] == report["utterances"]

    markdown = paths["markdown"].read_text()
    assert summary_line(report) in markdown and command in markdown
    assert markdown.index("### b2") < markdown.index("### a2")  # worst first
    assert "| bob | 2 | 5 | 80.00% |" in markdown

    page = paths["html"].read_text()
    assert "&lt;unk&gt;" in page and "<unk>" not in page
    assert summary_line(report) in page


def test_write_report_escapes_markup_in_the_command(tmp_path):
    paths = write_report(build_report(results()), tmp_path, "echo '<script>' ```", "m", "d")
    page = paths["html"].read_text()
    assert "echo '<script>'" not in page and "echo &#x27;&lt;script&gt;&#x27;" in page
    assert "````sh\necho '<script>' ```\n````" in paths["markdown"].read_text()
