"""Long recordings in pieces: block-by-block reading (the same samples as reading whole) and cuts at pauses."""

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio, stream_audio
from asr.errors import AudioError
from asr.segment import MAX_SEGMENT_SECONDS, MIN_SEGMENT_SECONDS, quietest_point, split_at_pauses

RATE = 16000


def speech_like(seconds: float, rng) -> np.ndarray:
    """Noise bursts at speech level (-20 dBFS), amplitude-modulated like syllables; no pauses."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (0.1 * envelope * rng.standard_normal(len(t))).astype(np.float32)


def with_pauses(rng, pieces=(7.0, 9.0, 6.0, 11.0, 8.0, 12.0, 5.0), pause=0.4, floor=1e-4):
    """Speech-like stretches separated by quiet pauses (-80 dBFS noise); returns audio and pause spans (samples)."""
    parts, pauses, at = [], [], 0
    for seconds in pieces:
        speech = speech_like(seconds, rng)
        quiet = (floor * rng.standard_normal(int(pause * RATE))).astype(np.float32)
        parts += [speech, quiet]
        at += len(speech)
        pauses.append((at, at + len(quiet)))
        at += len(quiet)
    return np.concatenate(parts), pauses[:-1]


def blocks_of(audio: np.ndarray, sizes):
    at, i = 0, 0
    while at < len(audio):
        size = sizes[i % len(sizes)]
        yield audio[at: at + size]
        at, i = at + size, i + 1


def test_cuts_fall_in_pauses_and_keep_every_sample():
    audio, pauses = with_pauses(np.random.default_rng(0))
    segments = list(split_at_pauses(blocks_of(audio, [RATE]), RATE))
    assert len(segments) > 1
    assert np.array_equal(np.concatenate([s.samples for s in segments]), audio)
    assert [s.start for s in segments] == list(np.cumsum([0] + [len(s.samples) for s in segments[:-1]]))
    assert all(len(s.samples) <= MAX_SEGMENT_SECONDS * RATE for s in segments)
    assert all(len(s.samples) >= MIN_SEGMENT_SECONDS * RATE for s in segments[:-1])
    for cut in [s.start for s in segments[1:]]:
        assert any(a <= cut < b for a, b in pauses), cut / RATE


def test_block_sizes_do_not_change_the_segments():
    audio, _ = with_pauses(np.random.default_rng(1))
    expected = [(s.start, len(s.samples)) for s in split_at_pauses([audio], RATE)]
    for sizes in ([1000], [RATE * 7], [333, 12345, RATE * 3]):
        assert [(s.start, len(s.samples)) for s in split_at_pauses(blocks_of(audio, sizes), RATE)] == expected


def test_a_recording_up_to_the_maximum_is_one_segment():
    audio = speech_like(MAX_SEGMENT_SECONDS, np.random.default_rng(2))
    (only,) = split_at_pauses(blocks_of(audio, [RATE]), RATE)
    assert only.start == 0 and np.array_equal(only.samples, audio)
    (empty,) = split_at_pauses([], RATE)
    assert empty.start == 0 and len(empty.samples) == 0


def test_speech_without_pauses_is_still_cut_to_the_maximum():
    audio = speech_like(65.0, np.random.default_rng(3))
    segments = list(split_at_pauses(blocks_of(audio, [RATE * 2]), RATE))
    assert all(MIN_SEGMENT_SECONDS * RATE <= len(s.samples) <= MAX_SEGMENT_SECONDS * RATE for s in segments[:-1])
    assert sum(len(s.samples) for s in segments) == len(audio)


def test_quietest_point_is_the_middle_of_the_quietest_span():
    audio = speech_like(10.0, np.random.default_rng(4))
    audio[6 * RATE: 7 * RATE] = 0  # one second of digital silence: ties, the latest 200 ms wins
    assert 6 * RATE <= quietest_point(audio, RATE) <= 7 * RATE
    audio[2 * RATE: 2 * RATE + RATE // 2] *= 1e-3  # quiet, but not as quiet as the silence
    assert 6 * RATE <= quietest_point(audio, RATE) <= 7 * RATE


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (8000, 1)])
def test_streaming_gives_the_samples_of_reading_whole(tmp_path, rate, channels):
    rng = np.random.default_rng(5)
    data = (0.3 * rng.standard_normal((int(rate * 23.3), channels))).astype(np.float32)
    path = tmp_path / "a.flac"
    sf.write(path, data, rate, subtype="PCM_24")
    blocks = list(stream_audio(path, block_seconds=2.0))
    assert len(blocks) > 10 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert np.array_equal(np.concatenate(blocks), load_audio(path))
    assert abs(sum(len(b) for b in blocks) - 23.3 * 16000) <= 2


def test_streaming_a_bad_file_is_one_line(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("not audio\n" * 50)
    with pytest.raises(AudioError, match="not a readable audio file") as info:
        next(stream_audio(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(AudioError, match="no such audio file"):
        next(stream_audio(tmp_path / "missing.flac"))
