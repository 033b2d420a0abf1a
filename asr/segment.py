"""Long recordings in pieces: a waveform stream cut at its quietest moments into segments the model decodes one by one."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np

# A recording longer than this is cut into segments no longer than it: the longest utterances the
# recipe trains on (data.max_duration: 20 s), so the model never meets a longer input than it saw.
MAX_SEGMENT_SECONDS = 20.0
MIN_SEGMENT_SECONDS = 5.0  # a cut falls at least this far into the audio not yet cut: no tiny segments
ENERGY_FRAME_SECONDS = 0.01  # the pause detector's frames (10 ms)
PAUSE_SECONDS = 0.2  # energy averaged over 200 ms: a cut lands in the middle of the quietest 200 ms
ENERGY_FLOOR = 1e-10  # mean square power below which frames count as equally silent (-100 dBFS)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A piece of a recording: its samples and where they start in the whole."""

    start: int  # index of the first sample in the recording
    samples: np.ndarray  # float32 [n]


def split_at_pauses(
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    max_seconds: float = MAX_SEGMENT_SECONDS,
    min_seconds: float = MIN_SEGMENT_SECONDS,
) -> Iterator[Segment]:
    """Cuts a waveform, arriving in blocks (float32 [n] each, e.g. audio.stream_audio's), into
    consecutive segments of at most max_seconds that together hold every sample once.

    A recording no longer than max_seconds is one segment. Otherwise, whenever more than
    max_seconds wait uncut, the cut goes to the quietest PAUSE_SECONDS between min_seconds and
    max_seconds into them (an energy-based pause detector: mean square power per 10 ms frame,
    averaged over the span). Only the audio not yet cut and one block are held at a time, so
    memory does not grow with the recording's length. An empty stream gives one empty segment.
    """
    max_len, min_len = int(max_seconds * sample_rate), int(min_seconds * sample_rate)
    if not 0 < min_len < max_len:
        raise ValueError(f"segments of {min_seconds} to {max_seconds} s: expected 0 < min < max")
    pending: list[np.ndarray] = []
    waiting, start = 0, 0
    for block in blocks:
        pending.append(block)
        waiting += len(block)
        if waiting <= max_len:
            continue
        buffer = np.concatenate(pending)
        while len(buffer) > max_len:
            cut = min_len + quietest_point(buffer[min_len:max_len], sample_rate)
            yield Segment(start, buffer[:cut].copy())  # a copy: the segment does not pin the buffer
            start, buffer = start + cut, buffer[cut:]
        pending, waiting = [buffer], len(buffer)
    if waiting or start == 0:
        yield Segment(start, np.concatenate(pending) if pending else np.zeros(0, np.float32))


def quietest_point(audio: np.ndarray, sample_rate: int) -> int:
    """The sample at the middle of the quietest PAUSE_SECONDS of audio (float32 [n]); among equally
    quiet spans (digital silence) the latest, so that segments come out as long as allowed."""
    frame = max(1, int(round(ENERGY_FRAME_SECONDS * sample_rate)))
    count = len(audio) // frame
    width = max(1, int(round(PAUSE_SECONDS / ENERGY_FRAME_SECONDS)))
    if count < width:
        return len(audio) // 2
    power = np.mean(np.square(audio[: count * frame].reshape(count, frame), dtype=np.float64), axis=1)
    span = np.convolve(np.maximum(power, ENERGY_FLOOR), np.ones(width) / width, mode="valid")  # [count - width + 1]
    quietest = len(span) - 1 - int(np.argmin(span[::-1]))
    return quietest * frame + width * frame // 2
