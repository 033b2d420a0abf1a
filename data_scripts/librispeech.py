"""LibriSpeech: download subsets from OpenSLR and build train/dev manifests from a LibriSpeech tree.

    python -m data_scripts.librispeech --data-dir DATA --out-dir OUT --subsets train-clean-5 \\
        --dev-speakers 1088 3526 1867

Stage 1 downloads and extracts each subset missing under DATA (resumable, md5-verified, marker
files); stage 2 writes OUT/train.jsonl and OUT/dev.jsonl (the dev speakers held out). Each stage
that already finished does nothing when run again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from asr.corpora import SUBSETS, download_subsets, prepare_librispeech
from asr.errors import AsrError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.librispeech", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding (or to receive) LibriSpeech/<subset>/")
    parser.add_argument("--out-dir", required=True, help="where the manifests go (never beside the corpus)")
    parser.add_argument("--subsets", nargs="+", default=["train-clean-5"], help=f"any of: {', '.join(SUBSETS)}")
    parser.add_argument("--dev-speakers", nargs="*", default=[], help="speaker ids held out as the dev set")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing subset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if not args.no_download:
            download_subsets(args.data_dir, args.subsets)
        train, dev = prepare_librispeech(args.data_dir, args.out_dir, args.subsets, args.dev_speakers)
    except AsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"train manifest: {train}\ndev manifest: {dev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
