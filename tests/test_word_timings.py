"""Word timings on real speech (held-out speakers, the committed model) for greedy, beam and LM decoding;
asr transcribe --format/--output-dir and its progress bar."""

import io
import json
import re
import tempfile
from pathlib import Path

import jiwer
import numpy as np
import pytest

from asr.cli import main
from asr.decode import BEAM_PRUNE_LOGP, TOKEN_MIN_LOGP, DecodeOptions
from conftest import SHARED_DATA, require

MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
DEV_SPEAKERS = ("32", "669", "7312")
PER_SPEAKER = 4  # dev utterances per speaker: 12 in all, 2.6 minutes
TOLERANCE = 0.1  # seconds: a correctly recognized word's start and end against the reference alignment's
LM_BOOKS = ("1056", "145")  # an LM built from two of lm_books in seconds


@pytest.fixture(scope="module")
def recognizer():
    import asr

    return asr.load_model(MODEL)


@pytest.fixture(scope="module")
def dev(recognizer, librispeech_root):
    """[(utterance, log-probabilities [T, V])] for PER_SPEAKER utterances of each dev speaker."""
    from asr.corpora import prepare_librispeech
    from asr.data import read_manifest

    with tempfile.TemporaryDirectory() as out:
        _, manifest = prepare_librispeech(librispeech_root, out, ["train-clean-5"], DEV_SPEAKERS)
        utterances = read_manifest(manifest)
    picked = [u for s in DEV_SPEAKERS for u in [u for u in utterances if u.speaker == s][:PER_SPEAKER]]
    return list(zip(picked, recognizer.posteriors([recognizer.features(u.audio_filepath) for u in picked])))


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    books = require(SHARED_DATA / "lm_books")
    out = tmp_path_factory.mktemp("lm") / "books2"
    assert main(["lm", "build", str(out), *(str(books / f"{b}.txt.xz") for b in LM_BOOKS)]) == 0
    return out


def argmax_words(log_probs: np.ndarray, alphabet: str) -> list[tuple[str, int, int]]:
    """Words of the greedy path read straight off the argmax frames: (word, first frame, last frame).
    A character is a run of equal non-blank argmax frames; a word is the characters between spaces."""
    best = log_probs.argmax(axis=1)
    chars = []  # [label, first frame, last frame]
    for t, label in enumerate(best.tolist()):
        if label != 0 and t > 0 and best[t - 1] == label:
            chars[-1][2] = t
        elif label != 0:
            chars.append([label, t, t])
    words, current = [], []
    for label, first, last in chars + [[alphabet.index(" ") + 1, -1, -1]]:
        if alphabet[label - 1] != " ":
            current.append((alphabet[label - 1], first, last))
        elif current:
            words.append(("".join(c for c, _, _ in current), current[0][1], current[-1][2]))
            current = []
    return words


def test_greedy_words_are_the_argmax_path_s_own_frames(recognizer, dev):
    """Not circular: the aligner's frames for the greedy text equal the argmax path's character runs."""
    step = recognizer.seconds_per_frame
    assert step == pytest.approx(0.03)  # 10 ms hop x frame_stride 3
    recognizer.use(DecodeOptions(beam_width=1))
    for utterance, log_probs in dev:
        text = recognizer.decoder.decode_one(log_probs)
        expected = [(w, first * step, (last + 1) * step) for w, first, last in argmax_words(log_probs, recognizer.vocab.alphabet)]
        found = [(w.word, w.start, w.end) for w in recognizer.words(log_probs, text)]
        assert [w for w, _, _ in found] == text.split() == [w for w, _, _ in expected]
        np.testing.assert_allclose([t[1:] for t in found], [t[1:] for t in expected], atol=1e-9)


def correct_words(hypothesis, reference) -> list[tuple]:
    """(reference word, hypothesis word, check start, check end) for the words the word alignment
    (jiwer) matches, in runs of two or more matching words: a lone match between errors may pair a
    short word with another occurrence of it ("afternoon to tell" against "af to knon to tell").
    A run's first start and last end are not checked where an error lies beyond them: that boundary
    is shared with a word the two transcripts disagree on, so the two alignments may rightly put it
    at different frames ("with exiles" against "when a exiles": the inserted "a" takes the frames of
    the onset, and the hypothesis's "exiles" starts 120 ms later than the reference's)."""
    out = jiwer.process_words(" ".join(w.word for w in reference), " ".join(w.word for w in hypothesis))
    words = []
    for chunk in out.alignments[0]:
        size = chunk.ref_end_idx - chunk.ref_start_idx
        if chunk.type != "equal" or size < 2:
            continue
        error_before = chunk.ref_start_idx > 0 or chunk.hyp_start_idx > 0
        error_after = chunk.ref_end_idx < len(reference) or chunk.hyp_end_idx < len(hypothesis)
        for i, (ref, hyp) in enumerate(zip(reference[chunk.ref_start_idx: chunk.ref_end_idx], hypothesis[chunk.hyp_start_idx: chunk.hyp_end_idx])):
            words.append((ref, hyp, i > 0 or not error_before, i < size - 1 or not error_after))
    return words


@pytest.mark.parametrize("decoding", ["greedy", "beam 8", "lm"])
def test_correct_words_within_100_ms_of_the_reference_alignment(recognizer, dev, small_lm, decoding):
    """The reference: the forced alignment of the REFERENCE transcript with the model's posteriors."""
    options = {"greedy": DecodeOptions(beam_width=1), "beam 8": DecodeOptions(beam_width=8),
               "lm": DecodeOptions(beam_width=32, lm_dir=str(small_lm))}[decoding]
    recognizer.use(options)
    pairs, reference_words = [], 0
    for utterance, log_probs in dev:
        hypothesis = recognizer.words(log_probs, recognizer.decoder.decode_one(log_probs))
        reference = recognizer.words(log_probs, utterance.text)
        assert [w.word for w in reference] == utterance.text.split()
        assert all(0 <= w.start < w.end <= len(log_probs) * recognizer.seconds_per_frame for w in hypothesis)
        assert all(a.end <= b.start for a, b in zip(hypothesis, hypothesis[1:]))
        assert all(0 < w.confidence <= 1 for w in hypothesis)
        pairs += correct_words(hypothesis, reference)
        reference_words += len(reference)
    assert len(pairs) >= 0.2 * reference_words  # greedy recognizes about a quarter of the words (WER 75%)
    late = [(r, h) for r, h, start, end in pairs if (start and abs(r.start - h.start) > TOLERANCE) or (end and abs(r.end - h.end) > TOLERANCE)]
    assert not late, late[:3]


def test_lm_word_starts_agree_with_the_decoder_library_s_frames(recognizer, dev, small_lm):
    """ctc-beam-decoder reports each word's frames itself, from its beam's history: an independent
    check of the LM words' times. Its starts agree with the aligner's; its ends mostly do too, but
    were seen up to a second later (12 dev utterances), so they are not held to 100 ms."""
    recognizer.use(DecodeOptions(beam_width=32, lm_dir=str(small_lm)))
    library = recognizer.decoder._word_decoder
    starts = []
    for _, log_probs in dev:
        text, _, frames, _, _ = library.decode_beams(np.ascontiguousarray(log_probs, np.float32), beam_width=32, prune_history=True,
                                                     beam_prune_logp=BEAM_PRUNE_LOGP, token_min_logp=TOKEN_MIN_LOGP)[0]
        words = recognizer.words(log_probs, " ".join(text.split()))
        assert [w for w, _ in frames] == [w.word for w in words]
        starts += [first * recognizer.seconds_per_frame - w.start for (_, (first, _)), w in zip(frames, words)]
    assert np.mean(np.abs(starts) <= TOLERANCE) >= 0.95 and np.median(np.abs(starts)) == 0


def test_transcribe_formats_on_real_files(dev, tmp_path, capsys):
    files = [str(u.audio_filepath) for u, _ in dev[:2]]
    out = tmp_path / "subtitles"
    assert main(["transcribe", str(MODEL), *files, "--format", "srt", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(f).stem + ".srt" for f in files)
    assert main(["transcribe", str(MODEL), files[0], "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["audio_filepath"] == files[0] and record["text"].split() == [w["word"] for w in record["words"]]
    assert all(0 <= w["start"] < w["end"] <= record["duration"] for w in record["words"])
    srt = (out / (Path(files[0]).stem + ".srt")).read_text()
    cues = srt.strip("\n").split("\n\n")
    assert cues[0].startswith("1\n00:00:")
    assert " ".join(" ".join(c.split("\n")[2:]) for c in cues).split() == record["text"].split()
    first = re.match(r"1\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> ", srt)
    h, m, s, ms = map(int, first.groups())
    assert h * 3600 + m * 60 + s + ms / 1000 == pytest.approx(record["words"][0]["start"], abs=1e-3)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_only_and_not_with_quiet(dev, monkeypatch, capsys, quiet):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    audio = str(dev[0][0].audio_filepath)
    assert main(["transcribe", str(MODEL), audio] + (["--quiet"] if quiet else [])) == 0
    assert ("100%" in terminal.getvalue()) != quiet, terminal.getvalue()
    assert capsys.readouterr().out.strip()  # the transcript, on stdout
    monkeypatch.undo()
    assert main(["transcribe", str(MODEL), audio]) == 0  # stderr not a terminal (captured): no bar
    assert "%" not in capsys.readouterr().err
