"""The `asr` command line: parses arguments and calls the library (train, transcribe, evaluate, average)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Train, run and evaluate CTC speech recognizers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,transcribe,evaluate,average}")

    p = sub.add_parser("train", help="train the model of a recipe (a folder with config.yaml)")
    p.add_argument("recipe_dir", help="recipe folder, e.g. recipes/librispeech_small or recipes/mnist")
    p.add_argument("--data-dir", help="corpus root (sets data.data_dir); default: the recipe's, else download")
    p.add_argument("--exp-dir", help="experiment folder for checkpoints, logs and model/ (default: exp/<recipe>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the experiment folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an experiment folder that holds another run, moving that run into <exp-dir>/previous-<time>/")

    p = sub.add_parser("transcribe", help="print the transcript of audio files")
    p.add_argument("model_dir", help="a model directory (config.json, vocab.json, stats.json, weights.npz)")
    p.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG; any sample rate, mono or stereo)")
    p.add_argument("--beam-width", type=int, default=None, help="CTC beam width (1 = greedy; default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")

    p = sub.add_parser("evaluate", help="WER/CER report of a model on a JSONL manifest")
    p.add_argument("model_dir")
    p.add_argument("manifest", help='JSONL manifest: {"audio_filepath", "duration", "text"} per line')
    p.add_argument("--report-dir", help="where report.md/.json/.html go (default: <model_dir>/../reports/<manifest name>)")
    p.add_argument("--beam-width", type=int, default=None, help="CTC beam width (1 = greedy; default: the model's)")

    p = sub.add_parser("average", help="average the weights of several models of one recipe (e.g. its last epochs)")
    p.add_argument("out_dir", help="the model directory to write")
    p.add_argument("model_dirs", nargs="+", help="model or checkpoint directories, e.g. exp/librispeech_small/epochs/epoch-*")
    return parser


def cmd_train(args) -> int:
    from asr.config import load_recipe

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={Path(args.data_dir).resolve()}")
    config = load_recipe(args.recipe_dir, overrides)
    exp_dir = Path(args.exp_dir or Path("exp") / Path(args.recipe_dir).resolve().name)
    if config.task == "classify":
        from asr import mnist

        result = mnist.train(config, exp_dir)
        print(f"test accuracy {100 * result['test_accuracy']:.2f}% in {result['train_seconds']:.0f} s; results in {exp_dir}")
        return 0
    from asr.train import train

    summary = train(config, exp_dir, resume=args.resume, overwrite=args.overwrite)
    best = summary["best_dev_wer"]
    best_text = f"best dev WER {100 * best:.2f}%" if best is not None else "no dev set"
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s, {best_text}; model in {exp_dir / 'model'}")
    return 0


def _beam(args, recognizer) -> int:
    width = args.beam_width if args.beam_width is not None else recognizer.config.decode.beam_width
    if width < 1:
        from asr.errors import ConfigError

        raise ConfigError(f"--beam-width {width}: expected 1 (greedy) or more")
    return width


def cmd_transcribe(args) -> int:
    from asr.inference import Recognizer

    recognizer = Recognizer(args.model_dir)
    texts = recognizer.transcribe(args.audio, beam_width=_beam(args, recognizer))
    for path, text in zip(args.audio, texts):
        print(json.dumps({"audio_filepath": path, "text": text}) if args.json else text)
    return 0


def cmd_evaluate(args) -> int:
    from asr import evaluate
    from asr.data import read_manifest
    from asr.inference import Recognizer, evaluate_manifest

    recognizer = Recognizer(args.model_dir)
    utterances = read_manifest(args.manifest)
    results = evaluate_manifest(recognizer, utterances, beam_width=_beam(args, recognizer))
    report = evaluate.build_report(results)
    report_dir = Path(args.report_dir or Path(args.model_dir).resolve().parent / "reports" / Path(args.manifest).stem)
    command = "asr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = evaluate.write_report(report, report_dir, command=command, model_dir=str(args.model_dir), manifest=str(args.manifest))
    print(f"{evaluate.summary_line(report)}; report in {Path(paths['markdown']).parent}")
    return 0


def cmd_average(args) -> int:
    from asr.checkpoint import average_model_dirs

    out = average_model_dirs(args.model_dirs, args.out_dir)
    print(f"averaged {len(args.model_dirs)} models into {out}")
    return 0


COMMANDS = {"train": cmd_train, "transcribe": cmd_transcribe, "evaluate": cmd_evaluate, "average": cmd_average}


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 closed off: its C++ start-up lines (oneDNN, CUDA
    probing) are printed before any logging setting can apply, and a CPU user needs none of them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        tensorflow.config.list_logical_devices()  # device start-up, where CUDA probing complains
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _import_tensorflow_quietly()
    from asr.errors import AsrError

    try:
        return COMMANDS[args.command](args)
    except AsrError as exc:
        print(f"asr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an AsrError raised inside the tf.data pipeline arrives wrapped by TensorFlow
        wrapped = re.search(r"(?:AudioError|DataError|ConfigError): ([^\n]+)", str(exc))
        if wrapped is None or not type(exc).__module__.startswith("tensorflow"):
            raise
        print(f"asr {args.command}: error: {wrapped.group(1).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
