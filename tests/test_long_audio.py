"""A recording of several minutes, made of held-out utterances: read in blocks, cut at pauses, decoded in
bounded batches, its words at the right global times and its CER that of the utterances decoded one by one."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.evaluate import error_rates

MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
DEV_SPEAKERS = ("32", "669", "7312")
MINUTES = 4.0  # length of the recording (bench/long_audio.py does the hour)
GAP_SECONDS = 0.3  # digital silence between two utterances
RATE = 16000


@pytest.fixture(scope="module")
def recording(librispeech_root, tmp_path_factory):
    """A FLAC of dev utterances one after another (speakers interleaved) with gaps, and
    [(utterance, start s, end s)]."""
    from asr.corpora import prepare_librispeech
    from asr.data import read_manifest

    out = tmp_path_factory.mktemp("long")
    _, manifest = prepare_librispeech(librispeech_root, out, ["train-clean-5"], DEV_SPEAKERS)
    by_speaker = [[u for u in read_manifest(manifest) if u.speaker == s] for s in DEV_SPEAKERS]
    interleaved = [u for group in zip(*by_speaker) for u in group]
    placed, at = [], 0
    with sf.SoundFile(out / "long.flac", "w", samplerate=RATE, channels=1, format="FLAC", subtype="PCM_16") as f:
        for u in interleaved:
            samples, rate = sf.read(u.audio_filepath, dtype="float32")
            f.write(np.concatenate([samples, np.zeros(int(GAP_SECONDS * RATE), np.float32)]))
            placed.append((u, at / RATE, (at + len(samples)) / RATE))
            at += len(samples) + int(GAP_SECONDS * RATE)
            if at >= MINUTES * 60 * RATE:
                break
    return out / "long.flac", placed


def test_long_recording_matches_one_by_one_decoding(recording, monkeypatch):
    import asr
    from asr import inference
    from asr.segment import MAX_SEGMENT_SECONDS

    audio, placed = recording
    recognizer = asr.load_model(MODEL)
    batches = []
    forward = recognizer.log_probs

    def whole_file(*args, **kwargs):
        raise AssertionError("the recording was read whole")

    monkeypatch.setattr(inference, "features_for_model", whole_file)
    monkeypatch.setattr("asr.audio.load_audio", whole_file)
    monkeypatch.setattr(recognizer, "log_probs", lambda feats: batches.append([len(f) for f in feats]) or forward(feats))
    (transcript,) = recognizer.transcribe_words([audio])
    monkeypatch.undo()

    # Bounded: no segment past the maximum, no batch past MAX_BATCH_FRAMES (one segment may be alone).
    assert transcript.duration == pytest.approx(sf.info(str(audio)).duration)
    assert max(max(b) for b in batches) <= MAX_SEGMENT_SECONDS * 100 + 1
    assert all(sum(b) <= inference.MAX_BATCH_FRAMES or len(b) == 1 for b in batches)
    assert sum(len(b) for b in batches) >= MINUTES * 60 / MAX_SEGMENT_SECONDS

    references = [u.text for u, _, _ in placed]
    one_by_one = recognizer.transcribe([u.audio_filepath for u, _, _ in placed])
    separate = error_rates(references, one_by_one)["cer"]
    joined = error_rates([" ".join(references)], [transcript.text])["cer"]
    assert abs(joined - separate) < 0.01, (joined, separate)

    # Global times: each utterance gets the words whose midpoint its span holds (gaps split in the
    # middle); scored per utterance they give the same CER. A wrong offset would move words
    # between utterances and count each as an error.
    bounds = [(a[2] + b[1]) / 2 for a, b in zip(placed, placed[1:])]
    texts = [[] for _ in placed]
    for w in transcript.words:
        texts[int(np.searchsorted(bounds, (w.start + w.end) / 2))].append(w.word)
    by_time = error_rates(references, [" ".join(t) for t in texts])["cer"]
    assert abs(by_time - separate) < 0.01, (by_time, separate)
    assert all(a.end <= b.start for a, b in zip(transcript.words, transcript.words[1:]))
