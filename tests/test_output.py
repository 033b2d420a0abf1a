"""Transcript file formats on hand-made words with known answers: SRT, WebVTT, TSV, JSON, txt; cue rules."""

import json
import re

import pytest

from asr.output import (
    FORMATS,
    SUBTITLE_LINE_CHARS,
    SUBTITLE_LINES,
    SUBTITLE_MAX_SECONDS,
    Transcript,
    Word,
    cues,
    output_path,
    render,
    timestamp,
)

WORDS = (Word("hello", 0.51, 0.9, 0.91234), Word("world", 1.02, 1.5, 0.5), Word("again", 3.0, 3.3, 1.0))
TRANSCRIPT = Transcript("/data/speech.wav", "hello world again", WORDS, duration=4.2)


def test_timestamps():
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3661.2346, ",") == "01:01:01,235"
    assert timestamp(59.9996, ".") == "00:01:00.000"  # rounding carries into the minutes
    assert timestamp(36_000.25, ".") == "10:00:00.250"
    assert timestamp(-0.001, ",") == "00:00:00,000"


def test_srt():
    # "again" follows a pause of 1.5 s: a cue of its own.
    assert render(TRANSCRIPT, "srt") == (
        "1\n00:00:00,510 --> 00:00:01,500\nhello world\n\n"
        "2\n00:00:03,000 --> 00:00:03,300\nagain\n\n"
    )


def test_vtt():
    assert render(TRANSCRIPT, "vtt") == (
        "WEBVTT\n\n"
        "00:00:00.510 --> 00:00:01.500\nhello world\n\n"
        "00:00:03.000 --> 00:00:03.300\nagain\n\n"
    )


def test_tsv():
    assert render(TRANSCRIPT, "tsv") == (
        "start\tend\tword\tconfidence\n"
        "0.510\t0.900\thello\t0.912\n"
        "1.020\t1.500\tworld\t0.500\n"
        "3.000\t3.300\tagain\t1.000\n"
    )


def test_json_and_txt():
    text = render(TRANSCRIPT, "json")
    assert text.endswith("\n") and text.count("\n") == 1  # one line: several files make JSON Lines
    assert json.loads(text) == {
        "audio_filepath": "/data/speech.wav",
        "text": "hello world again",
        "duration": 4.2,
        "words": [
            {"word": "hello", "start": 0.51, "end": 0.9, "confidence": 0.912},
            {"word": "world", "start": 1.02, "end": 1.5, "confidence": 0.5},
            {"word": "again", "start": 3.0, "end": 3.3, "confidence": 1.0},
        ],
    }
    assert render(TRANSCRIPT, "txt") == "hello world again\n"


def test_no_words():
    empty = Transcript("a.wav", "")
    assert render(empty, "srt") == "" and render(empty, "vtt") == "WEBVTT\n\n"
    assert render(empty, "tsv") == "start\tend\tword\tconfidence\n" and render(empty, "txt") == "\n"
    assert json.loads(render(empty, "json"))["words"] == []


def test_output_names_and_formats():
    assert output_path("out", "/a/b/speech.wav", "srt").as_posix() == "out/speech.srt"
    assert output_path("out", "talk.v2.flac", "json").as_posix() == "out/talk.v2.json"
    assert FORMATS == ("txt", "json", "srt", "vtt", "tsv")
    with pytest.raises(ValueError, match="format 'doc'"):
        render(TRANSCRIPT, "doc")


def steady_words(count: int, seconds_each: float = 0.4, text=lambda i: f"word{i}") -> list[Word]:
    """Words one after another without pauses."""
    return [Word(text(i), i * seconds_each, i * seconds_each + seconds_each * 0.9, 0.9) for i in range(count)]


def test_cues_respect_line_length_lines_and_duration():
    words = steady_words(200)
    found = cues(words)
    assert " ".join(" ".join(c.lines) for c in found).split() == [w.word for w in words]  # every word once, in order
    for cue in found:
        assert 1 <= len(cue.lines) <= SUBTITLE_LINES
        assert all(len(line) <= SUBTITLE_LINE_CHARS for line in cue.lines)
        assert cue.end - cue.start <= SUBTITLE_MAX_SECONDS + 1e-9
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))  # in order, never overlapping
    # Cues are filled: a cue ends only when the next word would break a rule.
    first = found[0]
    next_word = words[sum(len(line.split()) for line in first.lines)]
    assert next_word.end - first.start > SUBTITLE_MAX_SECONDS or (
        len(first.lines) == SUBTITLE_LINES and len(first.lines[-1]) + 1 + len(next_word.word) > SUBTITLE_LINE_CHARS
    )


def test_a_word_longer_than_a_line_stands_alone():
    long = "x" * (SUBTITLE_LINE_CHARS + 5)
    found = cues([Word("a", 0, 0.1, 1), Word(long, 0.2, 0.5, 1), Word("b", 0.6, 0.7, 1)])
    assert [c.lines for c in found] == [("a", long), ("b",)]


def test_srt_of_many_words_is_well_formed():
    text = render(Transcript("a.wav", "", tuple(steady_words(100))), "srt")
    blocks = text.strip("\n").split("\n\n")
    stamp = r"\d\d:\d\d:\d\d,\d\d\d"
    for n, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(n)  # numbered from 1
        assert re.fullmatch(f"{stamp} --> {stamp}", lines[1])
        assert 1 <= len(lines[2:]) <= SUBTITLE_LINES
