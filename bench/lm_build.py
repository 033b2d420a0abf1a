"""Times asr.lm.build_lm on a folder of raw books: a pruned 3-gram and a pruned 4-gram.

Each build runs in a fresh process (so that its peak resident memory is its own) and writes into a
temporary folder: raw text -> split_sentences/normalize_text -> counts -> modified Kneser-Ney ->
lm.arpa + words.txt + lm.json. Prints wall time, peak RSS, n-gram counts, ARPA size and seconds
per million words (the figure to hold against KenLM's lmplz, which cannot be installed here; the
estimates themselves match lmplz's to 1e-4, see tests/test_lm.py).

    python bench/lm_build.py [--text ../shared/data/lm_books] [--prune3 0 1 1] [--prune4 0 1 1 1]

"""

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(out_dir: str, text: str, order: int, prune: tuple[int, ...]) -> tuple[dict, float, float, int]:
    """Runs in a child: (lm.json summary, wall seconds, peak RSS in MiB, ARPA bytes)."""
    from asr.lm import build_lm

    start = time.perf_counter()
    summary = build_lm(out_dir, [text], order=order, prune=prune)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    return summary, wall, peak_mib, (Path(out_dir) / "lm.arpa").stat().st_size


def run_in_child(*args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(build, *args).result()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "lm_books"))
    parser.add_argument("--prune3", type=int, nargs="+", default=[0, 1, 1])
    parser.add_argument("--prune4", type=int, nargs="+", default=[0, 1, 1, 1])
    args = parser.parse_args()
    print(f"text {args.text}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for order, prune in [(3, tuple(args.prune3)), (4, tuple(args.prune4))]:
            summary, wall, peak, arpa_bytes = run_in_child(str(Path(tmp) / f"o{order}"), args.text, order, prune)
            words = summary["words"]
            ngrams = " ".join(f"{k}:{n:,}" for k, n in summary["ngrams"].items())
            print(
                f"order {order} prune {' '.join(map(str, prune))}: {wall:6.1f} s, peak RSS {peak:,.0f} MiB, "
                f"{summary['sentences']:,} sentences, {words:,} words, vocabulary {summary['vocabulary']:,}\n"
                f"    n-grams {ngrams} (total {sum(summary['ngrams'].values()):,}); lm.arpa {arpa_bytes / 2**20:.1f} MiB; "
                f"{wall / (words / 1e6):.2f} s per million words"
            )


if __name__ == "__main__":
    main()
