"""Free Spoken Digit Dataset: train/test manifests from recordings/{digit}_{speaker}_{index}.wav.

    python -m data_scripts.fsdd --fsdd-dir FSDD --out-dir OUT                 # indices 0-4 are test
    python -m data_scripts.fsdd --fsdd-dir FSDD --out-dir OUT --test-speakers theo   # by speaker

FSDD holds (or, with --download, receives) recordings/. Writes OUT/train.jsonl and
OUT/test.jsonl; a finished run with the same arguments is not repeated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from asr.corpora import RELEASE, download_fsdd, prepare_fsdd
from asr.errors import AsrError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.fsdd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd-dir", help="folder holding recordings/ (with --download: where to download)")
    parser.add_argument("--out-dir", required=True, help="where the manifests go")
    parser.add_argument("--test-speakers", nargs="*", default=[], help="split by speaker: these speakers are the test set")
    parser.add_argument("--download", action="store_true", help=f"download release {RELEASE} from GitHub into --fsdd-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.fsdd_dir:
        parser.error("--fsdd-dir is required")
    try:
        fsdd_dir = download_fsdd(args.fsdd_dir) if args.download else args.fsdd_dir
        train, test = prepare_fsdd(fsdd_dir, args.out_dir, args.test_speakers)
    except AsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"train manifest: {train}\ntest manifest: {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
