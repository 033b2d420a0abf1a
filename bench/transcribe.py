"""Real-time factor of `asr transcribe` end to end (load, features, model, decoding) on 2 CPU cores.

Prints the RTF (processing time / audio time; lower is faster) of one ~10-second file, transcribed
alone, and of a batch of dev files transcribed together, greedy, with a beam, and with a word LM
when --lm is given (its tuned settings). Features are computed from the audio each time (no
cache), as a user's first run would.

    python bench/transcribe.py recipes/librispeech_small/model --data-dir ../shared/data/librispeech_small [--lm exp/lm/3gram]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import soundfile as sf

from asr.decode import DecodeOptions
from asr.inference import Recognizer

DEV_SPEAKERS = ("32", "669", "7312")  # the recipe's held-out speakers


def dev_files(data_dir: Path, count: int) -> list[Path]:
    root = data_dir / "LibriSpeech" / "train-clean-5"
    files = sorted(p for spk in DEV_SPEAKERS for p in (root / spk).glob("*/*.flac"))
    return files[:count]


def closest_to(files: list[Path], seconds: float) -> Path:
    return min(files, key=lambda p: abs(sf.info(p).duration - seconds))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--data-dir", required=True, help="the LibriSpeech tree of the recipe")
    parser.add_argument("--batch", type=int, default=32, help="dev files transcribed together")
    parser.add_argument("--beam-width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lm", help="an LM directory: also time LM decoding with its tuned settings")
    args = parser.parse_args()
    recognizer = Recognizer(args.model_dir)
    files = dev_files(Path(args.data_dir), max(args.batch, 50))
    single = closest_to(files, 10.0)
    batch = files[: args.batch]
    single_seconds = sf.info(single).duration
    batch_seconds = sum(sf.info(p).duration for p in batch)
    settings = {"greedy": DecodeOptions(beam_width=1), f"beam {args.beam_width}": DecodeOptions(beam_width=args.beam_width)}
    if args.lm:
        settings["LM"] = DecodeOptions(lm_dir=args.lm)
    for name, options in settings.items():
        recognizer.use(options)
        recognizer.transcribe([single])  # warm-up: traces the graph
        recognizer.transcribe(batch)
        t_single = timed(lambda: recognizer.transcribe([single]), args.repeats)
        t_batch = timed(lambda: recognizer.transcribe(batch), max(1, args.repeats // 2))
        print(f"{name:>8}: one file of {single_seconds:.1f} s: {t_single * 1000:.0f} ms, RTF {t_single / single_seconds:.4f}; "
              f"{len(batch)} files of {batch_seconds:.0f} s: {t_batch:.2f} s, RTF {t_batch / batch_seconds:.4f}")


if __name__ == "__main__":
    main()
