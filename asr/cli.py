"""The `asr` command line: parses arguments and calls the library (train, transcribe, evaluate, average, export, lm)."""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import re
import shlex
import sys
from pathlib import Path

from asr.config import MAX_BEAM_WIDTH  # light (no TensorFlow): the CLI parses before TensorFlow loads
from asr.output import FORMATS, output_path  # light too


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake on one line: what is wrong and where the usage is (its
    subcommands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="asr", description="Train, run and evaluate CTC speech recognizers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,check-data,transcribe,evaluate,export,average,lm}")

    p = sub.add_parser("train", help="train the model of a recipe (a folder with config.yaml)")
    p.add_argument("recipe_dir", help="recipe folder, e.g. recipes/librispeech_small or recipes/mnist")
    p.add_argument("--data-dir", type=_existing_dir, help="corpus root (sets data.data_dir); default: the recipe's, else download")
    p.add_argument("--exp-dir", help="experiment folder for checkpoints, logs and model/ (default: exp/<recipe>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="fine-tune: start from this trained model's weights, features, alphabet and architecture (sets train.init_from)")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the experiment folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an experiment folder that holds another run, moving that run into <exp-dir>/previous-<time>/")

    p = sub.add_parser("check-data", help="report what in manifests training would skip or trip on (exit 1 when anything is found)")
    p.add_argument("manifests", nargs="+", help='JSONL manifests: {"audio_filepath", "duration", "text"} per line')
    which = p.add_mutually_exclusive_group()
    which.add_argument("--recipe", type=_existing_dir, help="check against this recipe's config (alphabet, max_duration, frame rate)")
    which.add_argument("--model", type=_existing_dir, help="check against a trained model's config instead")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value of the recipe (or of the defaults), e.g. --set data.max_duration=15")
    p.add_argument("--json-out", type=Path, default=None,
                   help="where the JSON report goes (default: check-data-<first manifest name>.json in the current folder)")

    p = sub.add_parser("transcribe", help="print the transcript of audio files, or write subtitles and word timings")
    p.add_argument("model_dir", help="a model directory (config.json, vocab.json, stats.json, weights.npz)")
    p.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG; any sample rate, mono or stereo, any length)")
    _decoding_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="txt",
                   help="txt: the text (default); json: text and words with start, end (seconds) and confidence; "
                        "srt, vtt: subtitles; tsv: one word a line with its times")
    p.add_argument("--json", action="store_true", help="the same as --format json (one line of JSON per file)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="write one file per input there, named after it (speech.wav -> speech.srt) instead of printing")
    _quiet_argument(p)

    p = sub.add_parser("evaluate", help="WER/CER report of a model on a JSONL manifest")
    p.add_argument("model_dir")
    p.add_argument("manifest", help='JSONL manifest: {"audio_filepath", "duration", "text"} per line')
    p.add_argument("--report-dir", help="where report.md/.json/.html go (default: <model_dir>/../reports/<manifest name>)")
    p.add_argument("--embed-audio", action="store_true",
                   help="put the audio files into report.html (base64, about 1.6 MB per minute of 16 kHz FLAC) so that "
                        "it plays on another machine; by default its players point at the files")
    _decoding_arguments(p)
    _quiet_argument(p)

    p = sub.add_parser("average", help="average the weights of several models of one recipe (e.g. its last epochs)")
    p.add_argument("out_dir", help="the model directory to write")
    p.add_argument("model_dirs", nargs="+", help="model or checkpoint directories, e.g. exp/librispeech_small/epochs/epoch-*")

    p = sub.add_parser("export", help="write a model that runs without asr: a TensorFlow SavedModel or a TFLite model")
    p.add_argument("model_dir")
    p.add_argument("out", help="the folder to write: the SavedModel, or model.tflite; with asr_export.json (front end, vocabulary)")
    p.add_argument("--format", choices=("saved_model", "tflite"), default="saved_model",
                   help="saved_model (default): features or a 16 kHz waveform in; tflite: features in, batch 1, builtin ops only")

    _lm_parsers(sub.add_parser("lm", help="word n-gram language models: build from text, tune for a model"))
    return parser


def _decoding_arguments(p) -> None:
    p.add_argument("--beam-width", type=_beam_width, default=None,
                   help="beam width (1 = greedy without LM; default: the LM's tuned beam, else the model's)")
    p.add_argument("--lm", dest="lm_dir", help="an LM directory (asr lm build): decode words with it")
    p.add_argument("--lm-weight", type=_finite_float, default=None, help="LM weight alpha (default: the LM's tuned value)")
    p.add_argument("--word-score", type=_finite_float, default=None, help="word insertion bonus beta (default: the LM's tuned value)")
    p.add_argument("--lexicon-free", dest="lexicon", action="store_const", const=False, default=None,
                   help="let words outside the LM's word list come out (default: the LM's tuned choice, else lexicon only)")


def _quiet_argument(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)")


def _progress(args) -> bool:
    """A progress bar on stderr: only on a terminal, and not with --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _lm_parsers(p) -> None:
    lm_sub = p.add_subparsers(dest="lm_command", required=True, metavar="{build,tune}")
    b = lm_sub.add_parser("build", help="estimate a modified Kneser-Ney n-gram LM from text files (as KenLM's lmplz)")
    b.add_argument("out_dir", help="the LM directory to write (lm.arpa, words.txt, lm.json)")
    b.add_argument("text", nargs="+", help=".txt, .txt.gz or .txt.xz files, or folders of them (raw text: normalized like transcripts)")
    b.add_argument("--order", type=_positive_int, default=3, help="n-gram order (default 3)")
    b.add_argument("--prune", type=_count, nargs="+", default=None, metavar="N",
                   help="per order from 1, drop n-grams seen at most N times, as lmplz's --prune (default: 0 1: singletons of order 2 and up)")
    t = lm_sub.add_parser("tune", help="find the LM weight and word score that give the lowest WER on a dev set")
    t.add_argument("model_dir")
    t.add_argument("manifest", help="the dev manifest (JSONL) to tune on")
    t.add_argument("--lm", dest="lm_dir", required=True, help="the LM directory; the best settings are written into it")
    t.add_argument("--beam-width", type=_beam_width, default=None, help="beam width (default: the LM decoder's default beam)")
    t.add_argument("--lexicon-free", dest="lexicon", action="store_const", const=False, default=None,
                   help="tune lexicon-free decoding (default: lexicon)")
    t.add_argument("--lm-weights", type=_finite_float, nargs="+", default=None, metavar="ALPHA", help="grid of LM weights")
    t.add_argument("--word-scores", type=_finite_float, nargs="+", default=None, metavar="BETA", help="grid of word scores")


def _int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum], else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: expected {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value}: expected at most {maximum}")
        return value

    return parse


_positive_int, _count, _beam_width = _int_at_least(1), _int_at_least(0), _int_at_least(1, MAX_BEAM_WIDTH)


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: " + ("a file, not a folder" if path.exists() else "no such folder"))
    return path


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def cmd_train(args) -> int:
    from asr.finetune import load_training_recipe

    overrides = list(args.overrides)
    if args.data_dir:  # as a JSON string, which YAML reads as it is (a path may hold '#', ': ', brackets)
        overrides.append(f"data.data_dir={json.dumps(str(args.data_dir.resolve()))}")
    if args.init_from:
        overrides.append(f"train.init_from={json.dumps(str(Path(args.init_from).resolve()))}")
    config = load_training_recipe(args.recipe_dir, overrides)
    exp_dir = Path(args.exp_dir or Path("exp") / Path(args.recipe_dir).resolve().name)
    from asr.train import describe_run, run_recipe

    summary = run_recipe(config, exp_dir, resume=args.resume, overwrite=args.overwrite)
    print(describe_run(config, summary, exp_dir))
    return 0


def cmd_check_data(args) -> int:
    from asr.checkdata import check_data, summary_text
    from asr.config import with_overrides
    from asr.errors import ConfigError
    from asr.finetune import load_training_recipe
    from asr.io import atomic_write_text
    from asr.text import Vocabulary

    out = args.json_out or Path(f"check-data-{Path(args.manifests[0]).stem}.json")
    if not out.parent.resolve().is_dir() or out.is_dir():
        raise ConfigError(f"--json-out {out}: " + ("is a folder" if out.is_dir() else f"no such folder {out.parent}"))
    if args.model:
        if args.overrides:
            raise ConfigError("--set applies to --recipe or the defaults, not to --model")
        from asr.checkpoint import read_model_meta

        config, vocab, _ = read_model_meta(args.model)
        source = f"model {args.model}"
    else:
        if args.recipe:
            config, source = load_training_recipe(args.recipe, args.overrides), f"recipe {args.recipe}"
        else:
            config = with_overrides({}, args.overrides, "--set")
            source = "defaults"
        vocab = Vocabulary(config.text.alphabet)
    report = check_data(args.manifests, config, vocab, source=source)
    print(summary_text(report))
    atomic_write_text(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"report written to {out}")
    return 0 if report["ok"] else 1


def _recognizer(args):
    from asr.decode import DecodeOptions
    from asr.export import trace_cache_dir
    from asr.inference import Recognizer

    options = DecodeOptions(beam_width=args.beam_width, lm_dir=args.lm_dir, lm_weight=args.lm_weight,
                            word_score=args.word_score, lexicon=args.lexicon)
    options.validate()  # before the model loads: a mistake costs no time
    return Recognizer(args.model_dir, options, cache_dir=trace_cache_dir())  # starts without tracing from the 2nd run


def cmd_transcribe(args) -> int:
    from tqdm import tqdm

    from asr.io import atomic_write_text
    from asr.output import render

    fmt = "json" if args.json else args.format
    _check_transcribe_outputs(args.audio, fmt, args.output_dir)  # before the model loads: a mistake costs no time
    recognizer = _recognizer(args)
    skipped = 0
    for transcript in recognizer.transcribe_files(args.audio, words=fmt != "txt", progress=_progress(args), skip_errors=True):
        if transcript.error is not None:
            tqdm.write(f"asr transcribe: skipped: {transcript.error}", file=sys.stderr)  # the error names the file
            skipped += 1
        elif args.output_dir is not None:
            atomic_write_text(output_path(args.output_dir, transcript.audio_filepath, fmt), render(transcript, fmt))
        else:
            tqdm.write(render(transcript, fmt), file=sys.stdout, end="")  # above the progress bar, if any
    return 0 if not skipped else 1


def _check_transcribe_outputs(audio: list[str], fmt: str, output_dir: Path | None) -> None:
    """Fails (one line naming the culprit) where the outputs cannot be written: subtitles of several
    files printed together, two inputs named alike in one --output-dir, an unwritable --output-dir."""
    from asr.errors import ConfigError
    from asr.io import check_output_dir

    if output_dir is None:
        if fmt in ("srt", "vtt", "tsv") and len(audio) > 1:
            raise ConfigError(f"--format {fmt} prints one file's {fmt.upper()}: give --output-dir DIR to write one file per input")
        return
    check_output_dir(output_dir, "--output-dir")
    seen: dict[Path, str] = {}
    for path in audio:
        out = output_path(output_dir, path, fmt)
        if out in seen:
            raise ConfigError(f"{seen[out]} and {path} would both be written to {out}; transcribe them into different --output-dir folders")
        seen[out] = path


def cmd_evaluate(args) -> int:
    from asr import evaluate
    from asr.data import read_manifest
    from asr.inference import evaluate_manifest

    utterances = read_manifest(args.manifest)
    report_dir = Path(args.report_dir or Path(args.model_dir).resolve().parent / "reports" / Path(args.manifest).stem)
    evaluate.check_report_dir(report_dir)
    recognizer = _recognizer(args)
    results, skipped = evaluate_manifest(recognizer, utterances, progress=_progress(args))
    for item in skipped:
        print(f"asr evaluate: skipped {item['id']}: {item['error']}", file=sys.stderr)
    if not results:
        from asr.errors import DataError

        raise DataError(f"{args.manifest}: none of its {len(utterances)} audio files could be read")
    report = evaluate.build_report(results)
    decoding = {**recognizer.decoder.settings.describe(), **_oov(recognizer, results)}
    command = "asr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = evaluate.write_report(report, report_dir, command=command, model_dir=str(args.model_dir),
                                  manifest=str(args.manifest), decoding=decoding, skipped=skipped,
                                  embed_audio=args.embed_audio)
    print(f"{evaluate.summary_line(report)}; report in {Path(paths['markdown']).parent}")
    return 0 if not skipped else 1


def _oov(recognizer, results) -> dict:
    """The out-of-vocabulary rate of the references against the LM's lexicon ({} without an LM)."""
    lm = recognizer.decoder.settings.lm
    if lm is None:
        return {}
    from asr.decode import lexicon_words

    lexicon = set(lexicon_words(lm.words, recognizer.vocab)[0])
    words = [w for r in results for w in r["reference"].split()]
    oov = sum(w not in lexicon for w in words)
    return {"reference_words": len(words), "oov_words": oov, "oov_rate": oov / max(len(words), 1)}


def cmd_lm(args) -> int:
    return {"build": cmd_lm_build, "tune": cmd_lm_tune}[args.lm_command](args)


def cmd_lm_build(args) -> int:
    from asr.lm import build_lm

    summary = build_lm(args.out_dir, args.text, order=args.order, prune=args.prune)
    counts = ", ".join(f"{n:,} {k}-grams" for k, n in summary["ngrams"].items())
    print(f"{summary['words']:,} words in {summary['sentences']:,} sentences -> {counts} "
          f"in {summary['seconds']:.0f} s; LM in {args.out_dir}")
    return 0


def cmd_lm_tune(args) -> int:
    from asr import decode
    from asr.data import read_manifest
    from asr.inference import Recognizer

    options = decode.DecodeOptions(beam_width=args.beam_width, lm_dir=args.lm_dir, lexicon=args.lexicon)
    lm = decode.LanguageModel.load(args.lm_dir)  # fails fast, before the model loads
    lm.check_writable()  # where the result goes, before the decoding
    utterances = read_manifest(args.manifest)
    recognizer = Recognizer(args.model_dir, options)  # KenLM loads the ARPA file before the acoustic model
    feats = [recognizer.features(u.audio_filepath) for u in utterances]
    posteriors = recognizer.posteriors(feats)
    show = lambda g: print(f"lm weight {g['lm_weight']:g}, word score {g['word_score']:g}: WER {100 * g['wer']:.2f}%, CER {100 * g['cer']:.2f}%", flush=True)  # noqa: E731
    result = decode.tune(recognizer.vocab, posteriors, [u.text for u in utterances], options,
                         lm_weights=args.lm_weights or decode.TUNE_LM_WEIGHTS,
                         word_scores=args.word_scores or decode.TUNE_WORD_SCORES, progress=show)
    best = {**result["best"], "model_dir": str(args.model_dir), "manifest": str(args.manifest), "grid": result["grid"]}
    lm.write_tuned(best)
    print(f"best: lm weight {best['lm_weight']:g}, word score {best['word_score']:g}, beam {best['beam_width']}: "
          f"WER {100 * best['wer']:.2f}%, CER {100 * best['cer']:.2f}%; saved in {Path(args.lm_dir) / decode.TUNED_FILE}")
    return 0


def cmd_export(args) -> int:
    from asr.export import export

    out = export(args.model_dir, args.out, args.format)
    print(f"exported {args.model_dir} as {args.format} into {out}")
    return 0


def cmd_average(args) -> int:
    from asr.checkpoint import average_model_dirs

    out = average_model_dirs(args.model_dirs, args.out_dir)
    print(f"averaged {len(args.model_dirs)} models into {out}")
    return 0


COMMANDS = {"train": cmd_train, "check-data": cmd_check_data, "transcribe": cmd_transcribe, "evaluate": cmd_evaluate, "export": cmd_export, "average": cmd_average, "lm": cmd_lm}


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 closed off: its C++ start-up lines (oneDNN, CUDA
    probing) are printed before any logging setting can apply, and a CPU user needs none of them."""
    from asr.io import quiet_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr():
        import tensorflow

        if not os.environ.get("TF_CONFIG"):  # a cluster's worker: MultiWorkerMirroredStrategy starts the devices
            tensorflow.config.list_logical_devices()  # device start-up, where CUDA probing complains


def _start_quickly() -> None:
    """Imports TensorFlow for the asr program (not for a call of main from Python), saving what
    bench/startup.py measured on a short transcription:
    - garbage collection: none while TensorFlow imports, its objects then kept out of every later
      collection (the program's own garbage is still collected), and none at exit, where
      collecting them took 1 s of each run;
    - scikit-learn: TensorFlow imports Keras, whose scikit-learn wrappers import scikit-learn and
      scipy.stats when they are installed (0.5 s), and no asr command uses them. It is hidden
      while TensorFlow imports, so Keras leaves those wrappers out in this process, as it does
      when scikit-learn is not installed; it can be imported again afterwards."""
    gc.disable()
    hide = "sklearn" not in sys.modules
    if hide:
        sys.modules["sklearn"] = None  # `import sklearn` raises ImportError
    try:
        _import_tensorflow_quietly()
    finally:
        if hide and sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
        gc.freeze()
        gc.enable()
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if argv is None:
        _start_quickly()  # imports TensorFlow
    else:
        _import_tensorflow_quietly()
    from asr.errors import AsrError

    name = " ".join(filter(None, ["asr", args.command, getattr(args, "lm_command", None)]))
    try:
        return COMMANDS[args.command](args)
    except AsrError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused a path no check foresaw (permissions, a full disk): name it
        if exc.filename is None:
            raise
        print(f"{name}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an AsrError raised inside the tf.data pipeline arrives wrapped by TensorFlow
        wrapped = re.search(r"(?:AudioError|DataError|ConfigError|ExperimentError): ([^\n]+)", str(exc))
        if wrapped is None or not type(exc).__module__.startswith("tensorflow"):
            raise  # anything else is a bug: its traceback is what a report needs
        print(f"{name}: error: {wrapped.group(1).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
