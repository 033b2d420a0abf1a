"""A long recording (an hour by default) through Recognizer.transcribe_words: RTF, peak memory, and CER against decoding its utterances one by one.

Builds the recording in --work-dir by writing the dev speakers' utterances one after another
(reshuffled on each pass, GAP_SECONDS of silence between them) until it lasts --minutes, block by
block so that building it holds no more than one utterance. A child process then loads the model
and transcribes the file with word timings; it reports its wall-clock times and its peak resident
memory (resource.getrusage ru_maxrss, TensorFlow and the model included). This process decodes
each utterance as its own file, and compares:

- one-by-one CER: the corpus CER of the utterances decoded one by one;
- long-file CER: the recording's words, each given to the utterance whose span (gaps split in
  the middle) holds its midpoint, scored per utterance: an upper bound on the CER of the whole
  text against the concatenated references (any split of the alignment is one alignment), and it
  counts every word the timestamps put in the wrong utterance as an error.

    python bench/long_audio.py recipes/librispeech_small/model --data-dir ../shared/data/librispeech_small [--minutes 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

DEV_SPEAKERS = ("32", "669", "7312")  # the recipe's held-out speakers
GAP_SECONDS = 0.3  # silence written between two utterances
SAMPLE_RATE = 16000  # Hz, LibriSpeech's rate


def build_recording(utterances, path: Path, minutes: float, seed: int = 0) -> list[tuple]:
    """Writes utterances (reshuffled each pass) with gaps into a 16-bit FLAC of at least `minutes`;
    returns [(utterance, start s, end s)] in order. One utterance in memory at a time."""
    rng = random.Random(seed)
    placed, at = [], 0
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        while at < minutes * 60 * SAMPLE_RATE:
            for u in rng.sample(list(utterances), len(utterances)):
                samples, rate = sf.read(u.audio_filepath, dtype="float32")
                assert rate == SAMPLE_RATE and samples.ndim == 1, u.audio_filepath
                out.write(samples)
                out.write(gap)
                placed.append((u, at / SAMPLE_RATE, (at + len(samples)) / SAMPLE_RATE))
                at += len(samples) + len(gap)
                if at >= minutes * 60 * SAMPLE_RATE:
                    break
    return placed


def words_by_utterance(words: list[dict], placed: list[tuple]) -> list[str]:
    """The long file's words given to the utterance whose span, gaps split in the middle, holds their midpoint."""
    bounds = np.array([(placed[k][2] + placed[k + 1][1]) / 2 for k in range(len(placed) - 1)])
    texts: list[list[str]] = [[] for _ in placed]
    for w in words:
        texts[int(np.searchsorted(bounds, (w["start"] + w["end"]) / 2))].append(w["word"])
    return [" ".join(t) for t in texts]


def child(model_dir: str, audio: str, out: str) -> None:
    """Runs in its own process, so that its peak memory is the transcription's alone."""
    start = time.perf_counter()
    import asr

    recognizer = asr.load_model(model_dir)
    loaded = time.perf_counter()
    transcript = recognizer.transcribe_words([audio])[0]
    done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    Path(out).write_text(json.dumps({
        "load_seconds": loaded - start, "transcribe_seconds": done - loaded, "peak_rss_mb": peak_mb,
        "duration": transcript.duration, "words": [dataclasses.asdict(w) for w in transcript.words],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--data-dir", required=True, help="the LibriSpeech tree of the recipe")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the recording (default 60)")
    parser.add_argument("--work-dir", help="where the recording goes (default: a temporary folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(args.work_dir or tmp))


def run(args, work: Path) -> None:
    from asr.corpora import prepare_librispeech
    from asr.data import read_manifest
    from asr.evaluate import error_rates
    from asr.inference import Recognizer

    work.mkdir(parents=True, exist_ok=True)
    _, dev = prepare_librispeech(args.data_dir, work / "data", ["train-clean-5"], DEV_SPEAKERS)
    utterances = read_manifest(dev)
    audio = work / "long.flac"
    placed = build_recording(utterances, audio, args.minutes)
    seconds = sf.info(str(audio)).duration
    print(f"{audio}: {seconds / 60:.1f} min, {len(placed)} utterances ({len(utterances)} dev utterances, reshuffled each pass)", flush=True)

    subprocess.run([sys.executable, __file__, "--child", args.model_dir, str(audio), str(work / "long.json")], check=True)
    result = json.loads((work / "long.json").read_text())

    recognizer = Recognizer(args.model_dir)
    start = time.perf_counter()
    one_by_one = dict(zip((u.id for u in utterances), recognizer.transcribe([u.audio_filepath for u in utterances])))
    separate_seconds = time.perf_counter() - start
    references = [u.text for u, _, _ in placed]
    separate = error_rates(references, [one_by_one[u.id] for u, _, _ in placed])
    joined = error_rates(references, words_by_utterance(result["words"], placed))

    rtf = result["transcribe_seconds"] / seconds
    print(f"long file: transcribed in {result['transcribe_seconds']:.1f} s (RTF {rtf:.4f}; model load {result['load_seconds']:.1f} s), "
          f"peak RSS {result['peak_rss_mb']:.0f} MB, {len(result['words'])} words")
    print(f"one by one: {len(utterances)} utterances ({sum(u.duration for u in utterances) / 60:.1f} min) in {separate_seconds:.1f} s")
    print(f"CER one by one {100 * separate['cer']:.2f}%, long file {100 * joined['cer']:.2f}% "
          f"(difference {100 * (joined['cer'] - separate['cer']):+.2f} points); "
          f"WER {100 * separate['wer']:.2f}% / {100 * joined['wer']:.2f}%")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # the transcription, in its own process: python bench/long_audio.py --child MODEL AUDIO OUT
        child(*sys.argv[2:5])
    else:
        main()
