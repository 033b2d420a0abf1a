"""Plots dev CER against training minutes for one or more runs (their summary.json) into a PNG.

Each run is LABEL=EXP_DIR/summary.json (written by `asr train` and by bench/stock_keras_ctc.py at
the end of a run): its "history" holds one record per epoch with the minutes of training and dev
evaluation so far and the dev CER; a star marks the epoch that `asr train` kept as model/ (best by
asr.train.dev_score with the summary's keep_best_by: the dev WER or CER first; WER in summaries
written before train.keep_best_by existed). With --wall the x axis is wall-clock minutes since the run
started instead, read from the train.log beside each summary.json (the time stamp of each
epoch's dev line, from the log's first line): that also counts start-up, checkpoint writes and
anything else between the steps. Prints the table it plots.

    pip install -e ".[bench]"   # matplotlib
    python bench/learning_curve.py recipes/librispeech_small/learning_curve.png \
        "4 x 288 bf16 (this recipe)=exp/librispeech_small/summary.json" --target 0.25 [--wall]
"""

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from asr.train import dev_score  # noqa: E402  (the rule asr train keeps its model/ by)

Y_LIMIT_PERCENT = 60  # the first epochs sit on the CTC plateau near 100%: cut there so the tail is readable


def read_history(path: Path) -> tuple[list[dict], str]:
    """summary.json -> its per-epoch records (epoch, step, minutes, cer, wer, loss) and the
    train.keep_best_by its model/ was kept by."""
    summary = json.loads(path.read_text())
    if not summary["history"]:
        raise SystemExit(f"{path}: no epochs in its history; was the run evaluated on a dev set?")
    return summary["history"], summary.get("keep_best_by", "wer")


EPOCH_LINE = re.compile(r"^(\d\d:\d\d:\d\d) epoch (\d+) step ")  # asr.train.Trainer.evaluate_dev's log line
DAY_SECONDS = 24 * 3600


def _seconds(stamp: str) -> int:
    """'HH:MM:SS' -> seconds since midnight."""
    hours, minutes, seconds = (int(x) for x in stamp.split(":"))
    return 3600 * hours + 60 * minutes + seconds


def wall_minutes(log: Path) -> dict[int, float]:
    """train.log -> {epoch: wall-clock minutes from the log's first line to that epoch's dev line}.

    The log's times of day carry no date: a run over midnight is unwrapped (none lasts a day)."""
    if not log.is_file():
        raise SystemExit(f"{log}: no train.log beside the summary (needed by --wall)")
    lines = log.read_text().splitlines()
    start = previous = _seconds(lines[0][:8])
    offset, epochs = 0, {}
    for line in lines:
        match = EPOCH_LINE.match(line)
        if match:
            now = _seconds(match.group(1))
            if now < previous:
                offset += DAY_SECONDS
            previous = now
            epochs[int(match.group(2))] = (now + offset - start) / 60
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/summary.json")
    parser.add_argument("--target", type=float, default=None, help="a dev CER to draw as a dashed line (e.g. 0.25)")
    parser.add_argument("--wall", action="store_true", help="x = wall-clock minutes from each run's train.log")
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for run in args.runs:
        label, _, path = run.rpartition("=")
        if not label:
            raise SystemExit(f"{run!r}: give each run as LABEL=path/to/summary.json")
        history, keep_best_by = read_history(Path(path))
        if args.wall:
            clock = wall_minutes(Path(path).with_name("train.log"))
            history = [dict(r, minutes=clock[r["epoch"]]) for r in history]
        minutes = [r["minutes"] for r in history]
        cer = [100 * r["cer"] for r in history]
        kept = min(history, key=lambda r: dev_score(r, keep_best_by))
        lowest = min(history, key=lambda r: r["cer"])
        text = f"{label}: model/ = epoch {kept['epoch']} ({kept['minutes']:.0f} min), {100 * kept['cer']:.2f}%"
        if lowest is not kept:
            text += f"; lowest {100 * lowest['cer']:.2f}% (epoch {lowest['epoch']})"
        (line,) = ax.plot(minutes, cer, marker=".", label=text)
        ax.plot([kept["minutes"]], [100 * kept["cer"]], marker="*", markersize=12, color=line.get_color())
        print(f"{label}")
        for r in history:
            print(f"  epoch {r['epoch']:3d}  {r['minutes']:6.1f} min  dev CER {100 * r['cer']:6.2f}%  WER {100 * r['wer']:6.2f}%")
    if args.target is not None:
        ax.axhline(100 * args.target, color="gray", linestyle="--", linewidth=1, label=f"target {100 * args.target:g}%")
    ax.set_ylim(0, Y_LIMIT_PERCENT)
    ax.set_xlabel("wall-clock minutes since the start (2 CPU cores)" if args.wall else "minutes of training and dev evaluation (2 CPU cores)")
    ax.set_ylabel("dev CER, greedy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
