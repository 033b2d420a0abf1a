"""Times feature extraction (as a multiple of real time) and measures batch padding on real LibriSpeech.

On the first N utterances of the shared train-clean-5 tree (sorted by id):
  stock   librosa.feature.mfcc + librosa.feature.delta x2 on each decoded file (what one would write)
  cold    asr.features.extract into an empty cache: decode + MFCC + deltas + atomic .npy write
  cached  asr.features.extract again: the .npy files are read back
  tf.data make_dataset(batch 16) over the same files: 1 parallel call without a cache, then 2
          parallel calls into an empty cache (cold) and again (cached)
and a whole epoch of make_dataset over the subset (2 parallel calls), bucketed by duration
(bucket_width 1 s; the 100 files above are cached already) and then in random batches (all
cached), with the fraction of padded frames in each. Wall-clock figures; CPU time in brackets.

    python bench/features.py [--data ../shared/data/librispeech_small] [--num-files 100]

"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa  # noqa: E402
import numpy as np  # noqa: E402

from asr.audio import load_audio  # noqa: E402
from asr.config import FeatureConfig  # noqa: E402
from asr.corpora import read_subset  # noqa: E402
from asr.data import make_dataset, padding_fraction  # noqa: E402
from asr.features import extract  # noqa: E402
from asr.text import Vocabulary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = FeatureConfig(normalization="utterance")  # utterance mode: no statistics needed to time the pipeline
BATCH_SIZE = 16
BUCKET_WIDTH = 1.0  # seconds
RANDOM_BUCKET = 1e6  # seconds: one bucket holding everything = random batches


def stock_mfcc(path):
    audio = load_audio(path)
    hop, win = 160, 400  # samples at 16 kHz: 10 ms, 25 ms
    mfcc = librosa.feature.mfcc(y=audio, sr=16000, n_mfcc=13, n_fft=512, win_length=win, hop_length=hop, n_mels=40, fmin=20.0)
    return np.concatenate([mfcc, librosa.feature.delta(mfcc), librosa.feature.delta(mfcc, order=2)]).T


def timed(label, seconds_of_audio, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:34s} {seconds_of_audio / wall:7.0f}x real time  (cpu {seconds_of_audio / cpu:6.0f}x)  {wall:6.2f} s")
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "librispeech_small"))
    parser.add_argument("--num-files", type=int, default=100)
    args = parser.parse_args()
    utts = read_subset(Path(args.data), "train-clean-5")
    some = utts[: args.num_files]
    paths = [u.audio_filepath for u in some]
    seconds = sum(u.duration for u in some)
    print(f"{len(some)} files, {seconds / 60:.1f} min of audio; {os.cpu_count()} CPUs\n")
    for p in paths:  # the OS page cache holds the FLAC files for every contender alike
        Path(p).read_bytes()
    vocab = Vocabulary()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cache2:
        stock = timed("stock librosa mfcc+deltas", seconds, lambda: [stock_mfcc(p) for p in paths])
        cold = timed("extract, cold (1 thread)", seconds, lambda: [extract(p, CFG, cache) for p in paths])
        timed("extract, cached (1 thread)", seconds, lambda: [extract(p, CFG, cache) for p in paths])

        def run_dataset(cache_dir, calls):
            dataset, _ = make_dataset(some, vocab, CFG, None, batch_size=BATCH_SIZE, bucket_width=BUCKET_WIDTH, training=True, cache_dir=cache_dir, num_parallel_calls=calls)
            for _ in dataset:
                pass

        timed("make_dataset, no cache (1 call)", seconds, lambda: run_dataset(None, 1))
        timed("make_dataset, cold (2 calls)", seconds, lambda: run_dataset(cache2, 2))
        timed("make_dataset, cached (2 calls)", seconds, lambda: run_dataset(cache2, 2))
        print(f"\ncold extraction is {stock / cold:.1f}x faster than stock librosa\n")
        total = sum(u.duration for u in utts)
        fractions = {}
        for label, width in (("bucketed by 1 s", BUCKET_WIDTH), ("random batches", RANDOM_BUCKET)):
            def epoch():
                dataset, _ = make_dataset(utts, vocab, CFG, None, batch_size=BATCH_SIZE, bucket_width=width, training=True, cache_dir=cache2)
                fractions[label] = padding_fraction(dataset.as_numpy_iterator())

            state = "cached" if fractions else "mostly cold"
            timed(f"epoch of {len(utts)}, {state}", total, epoch)
        for label, fraction in fractions.items():
            print(f"padded frames, batch {BATCH_SIZE}, {label:16s}: {fraction:.1%}")

if __name__ == "__main__":
    main()
