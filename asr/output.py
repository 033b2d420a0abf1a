"""Transcripts with word timings, and the files people use them in: plain text, JSON, SRT and WebVTT subtitles, TSV."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

FORMATS = ("txt", "json", "srt", "vtt", "tsv")  # asr transcribe --format; each is also the file extension
SUBTITLE_LINE_CHARS = 42  # characters per subtitle line at most (the usual broadcast limit), unless one word is longer
SUBTITLE_LINES = 2  # lines per subtitle cue at most
SUBTITLE_MAX_SECONDS = 7.0  # a cue spans at most this long from its first word's start to its last word's end ...
SUBTITLE_PAUSE_SECONDS = 1.0  # ... and a silence this long between two words starts a new cue
TIME_DECIMALS = 3  # JSON and TSV give times in seconds to the millisecond
CONFIDENCE_DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class Word:
    """A recognized word and when it was said, in seconds from the start of the recording."""

    word: str
    start: float  # the start of its first character's first frame
    end: float  # the end of its last character's last frame
    confidence: float  # mean posterior of its characters over their frames, in (0, 1]


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One audio file's transcript. error: why the file could not be read (then text is empty and
    words hold nothing), None when it was transcribed."""

    audio_filepath: str
    text: str
    words: tuple[Word, ...] = ()
    duration: float = 0.0  # seconds of audio
    error: str | None = None

    def to_dict(self) -> dict:
        """What the JSON format holds: audio_filepath, text, duration and the words with their times."""
        return {
            "audio_filepath": self.audio_filepath,
            "text": self.text,
            "duration": round(self.duration, TIME_DECIMALS),
            "words": [
                {"word": w.word, "start": round(w.start, TIME_DECIMALS), "end": round(w.end, TIME_DECIMALS),
                 "confidence": round(w.confidence, CONFIDENCE_DECIMALS)}
                for w in self.words
            ],
        }


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript as a file of the format fmt (one of FORMATS); it ends with a newline."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}[fmt](transcript)


def output_path(out_dir: str | Path, audio_path: str | Path, fmt: str) -> Path:
    """Where --output-dir puts an audio file's transcript: named after it, e.g. speech.wav -> speech.srt."""
    return Path(out_dir) / f"{Path(audio_path).stem}.{fmt}"


def to_txt(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_json(transcript: Transcript) -> str:
    """One line of JSON (so that several files printed together are JSON Lines)."""
    return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"


def to_tsv(transcript: Transcript) -> str:
    """A header line, then one word a line: start and end (seconds), the word, its confidence."""
    rows = ["start\tend\tword\tconfidence"]
    rows += [f"{w.start:.3f}\t{w.end:.3f}\t{w.word}\t{w.confidence:.3f}" for w in transcript.words]
    return "\n".join(rows) + "\n"


def to_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues from 1, times HH:MM:SS,mmm, a blank line after each cue."""
    return "".join(
        f"{n}\n{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}\n" + "\n".join(cue.lines) + "\n\n"
        for n, cue in enumerate(cues(transcript.words), start=1)
    )


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: the WEBVTT header, then cues with times HH:MM:SS.mmm, a blank line after each."""
    return "WEBVTT\n\n" + "".join(
        f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}\n" + "\n".join(cue.lines) + "\n\n"
        for cue in cues(transcript.words)
    )


def timestamp(seconds: float, decimal_marker: str) -> str:
    """HH:MM:SS,mmm (SRT, marker ',') or HH:MM:SS.mmm (WebVTT, marker '.'), rounded to the millisecond."""
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


@dataclasses.dataclass(frozen=True)
class Cue:
    """A subtitle: lines of words shown from start to end (seconds)."""

    start: float
    end: float
    lines: tuple[str, ...]


def cues(words) -> list[Cue]:
    """Words grouped into subtitle cues, in order: a cue holds at most SUBTITLE_LINES lines of at most
    SUBTITLE_LINE_CHARS characters (a longer word alone on its line), spans at most
    SUBTITLE_MAX_SECONDS, and a pause of SUBTITLE_PAUSE_SECONDS or more between words ends it."""
    out, lines, first, last = [], [], None, None
    for word in words:
        breaks = first is not None and (
            word.start - last.end >= SUBTITLE_PAUSE_SECONDS or word.end - first.start > SUBTITLE_MAX_SECONDS
        )
        fits = bool(lines) and len(lines[-1]) + 1 + len(word.word) <= SUBTITLE_LINE_CHARS
        if breaks or (not fits and len(lines) == SUBTITLE_LINES):
            out.append(Cue(first.start, last.end, tuple(lines)))
            lines, first = [], None
            fits = False
        if fits:
            lines[-1] += " " + word.word
        else:
            lines.append(word.word)
        first, last = first or word, word
    if lines:
        out.append(Cue(first.start, last.end, tuple(lines)))
    return out
