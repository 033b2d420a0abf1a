"""Start-up cost of `asr transcribe` on one short file: the wall-clock of the CLI, and where it goes.

Runs everything in new processes, several times, and prints medians:
  cli          `asr transcribe MODEL AUDIO`, end to end, with the trace cache warm (the usual case)
               and cold (an empty cache: the model is traced and the cache written)
  breakdown    the same steps timed inside one process, with the trace cache warm and without it:
               python start (interpreter, site, until the first line runs), TensorFlow import
               (as the CLI does it), asr import, model (config, weights, and the Keras build or
               the traced function's load), features, first forward (tracing or function
               instantiation included), decoding, process exit

    python bench/startup.py [MODEL_DIR] [--audio FILE | --data-dir D] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_SPEAKERS = ("32", "669", "7312")  # the recipe's held-out speakers

# One transcription, each step timed; argv: model_dir audio cache_dir|"" (no cache).
DRIVER = r'''
import time
started = time.perf_counter()
import json, sys
model_dir, audio, cache_dir = sys.argv[1:4]
marks = {}

def mark(name):
    marks[name] = time.perf_counter()

from asr import cli
mark("asr.cli import")
getattr(cli, "_start_quickly", cli._import_tensorflow_quietly)()  # as the asr program does
mark("tensorflow import")
from asr.inference import Recognizer
mark("asr import")
recognizer = Recognizer(model_dir, cache_dir=cache_dir) if cache_dir else Recognizer(model_dir)
mark("model")
feats = [recognizer.features(audio)]
mark("features")
log_probs = recognizer.posteriors(feats)
mark("first forward")
text = recognizer.decoder.decode_one(log_probs[0])
mark("decoding")
previous, steps = started, {}
for name, at in marks.items():
    steps[name], previous = at - previous, at
print(json.dumps({"wall_clock_epoch": time.time(), "start": started, "steps": steps, "text": text}))
'''


def shortest_dev_file(data_dir: Path) -> Path:
    import soundfile as sf

    root = data_dir / "LibriSpeech" / "train-clean-5"
    files = [p for spk in DEV_SPEAKERS for p in (root / spk).glob("*/*.flac")]
    return min(files, key=lambda p: sf.info(p).duration)


def environment(**extra) -> dict:
    """This process's environment for a run, bytecode caching on (as an installed package has it:
    a PYTHONDONTWRITEBYTECODE set here would recompile asr's modules at every start)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | extra


def run(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def cli_times(model: Path, audio: Path, repeats: int, cache: Path) -> dict:
    """Cold (empty cache) and warm median wall-clock of the CLI."""
    asr = Path(sys.executable).with_name("asr")
    argv = ([str(asr)] if asr.exists() else [sys.executable, "-m", "asr.cli"]) + ["transcribe", str(model), str(audio)]
    cold, warm = [], []
    for i in range(repeats):
        env = environment(ASR_CACHE_DIR=str(cache / f"cold-{i}"))
        cold.append(run(argv, env)[0])
    env = environment(ASR_CACHE_DIR=str(cache / "warm"))
    text = run(argv, env)[1].strip()  # fills the cache
    for _ in range(repeats):
        warm.append(run(argv, env)[0])
    return {"cold": cold, "warm": warm, "text": text}


def breakdown(model: Path, audio: Path, repeats: int, cache_dir: str) -> dict:
    """Median seconds of each step of DRIVER (cache_dir "": no trace cache)."""
    rows = []
    for _ in range(repeats):
        launched = time.time()
        seconds, out = run([sys.executable, "-c", DRIVER, str(model), str(audio), cache_dir], environment())
        result = json.loads(out)
        steps = result["steps"]
        # interpreter start: from the launch to the driver's first line (wall clock on both sides)
        first_line = result["wall_clock_epoch"] - sum(steps.values())
        row = {"python start": first_line - launched, **steps}
        row["process exit"] = seconds - sum(row.values())
        row["total"] = seconds
        rows.append(row)
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=str(REPO / "recipes" / "librispeech_small" / "model"))
    parser.add_argument("--audio", help="the file to transcribe (default: the shortest dev utterance of --data-dir)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "librispeech_small"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = Path(args.model_dir)
    audio = Path(args.audio) if args.audio else shortest_dev_file(Path(args.data_dir))
    import soundfile as sf

    print(f"asr transcribe {model} {audio} ({sf.info(audio).duration:.2f} s of audio); medians of {args.repeats} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="asr-startup-") as tmp:
        cache = Path(tmp)
        cli = cli_times(model, audio, args.repeats, cache)
        print(f"\ncli, trace cache warm: {statistics.median(cli['warm']):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in cli['warm'])})")
        print(f"cli, trace cache cold: {statistics.median(cli['cold']):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in cli['cold'])})")
        print(f"transcript: {cli['text']!r}")
        cold = breakdown(model, audio, args.repeats, "")
        warm_cache = cache / "driver"
        try:
            breakdown(model, audio, 1, str(warm_cache))  # fills it
            warm = breakdown(model, audio, args.repeats, str(warm_cache))
        except SystemExit as exc:  # an asr from before the trace cache
            print(f"\nno trace cache in this asr ({str(exc).splitlines()[-1]})")
            warm = {name: float("nan") for name in cold}
    print(f"\n{'step (median seconds)':<24}{'cache warm':>12}{'no cache':>12}")
    for name in cold:
        print(f"{name:<24}{warm[name]:>12.2f}{cold[name]:>12.2f}")
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
