"""Plots dev CER against training minutes for one or more runs (their summary.json) into a PNG.

Each run is LABEL=EXP_DIR/summary.json (written by `asr train` and by bench/stock_keras_ctc.py at
the end of a run): its "history" holds one record per epoch with the minutes of training and dev
evaluation so far and the dev CER. Prints the table it plots.

    pip install -e ".[bench]"   # matplotlib
    python bench/learning_curve.py recipes/librispeech_small/learning_curve.png \
        "4 x 288 bf16 (this recipe)=exp/librispeech_small/summary.json" --target 0.25
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

Y_LIMIT_PERCENT = 60  # the first epochs sit on the CTC plateau near 100%: cut there so the tail is readable


def read_history(path: Path) -> list[dict]:
    """summary.json -> its per-epoch records (epoch, step, minutes, cer, wer, loss)."""
    history = json.loads(path.read_text())["history"]
    if not history:
        raise SystemExit(f"{path}: no epochs in its history; was the run evaluated on a dev set?")
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/summary.json")
    parser.add_argument("--target", type=float, default=None, help="a dev CER to draw as a dashed line (e.g. 0.25)")
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for run in args.runs:
        label, _, path = run.rpartition("=")
        if not label:
            raise SystemExit(f"{run!r}: give each run as LABEL=path/to/summary.json")
        history = read_history(Path(path))
        minutes = [r["minutes"] for r in history]
        cer = [100 * r["cer"] for r in history]
        best = min(history, key=lambda r: r["cer"])
        ax.plot(minutes, cer, marker=".", label=f"{label}: best {100 * best['cer']:.2f}% (epoch {best['epoch']}, {best['minutes']:.0f} min)")
        print(f"{label}")
        for r in history:
            print(f"  epoch {r['epoch']:3d}  {r['minutes']:6.1f} min  dev CER {100 * r['cer']:6.2f}%  WER {100 * r['wer']:6.2f}%")
    if args.target is not None:
        ax.axhline(100 * args.target, color="gray", linestyle="--", linewidth=1, label=f"target {100 * args.target:g}%")
    ax.set_ylim(0, Y_LIMIT_PERCENT)
    ax.set_xlabel("minutes of training and dev evaluation (2 CPU cores)")
    ax.set_ylabel("dev CER, greedy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
