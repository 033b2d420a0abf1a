"""MNIST: downloads the four IDX files (gzipped) into one folder and verifies each one.

    python -m data_scripts.mnist --out data/mnist

Files already present and valid are kept, so a second run downloads nothing; an invalid one is
downloaded again. A file counts as valid when it reads as IDX and its uncompressed bytes have the
published MD5 (the .gz bytes differ between mirrors, so they are not what is checked).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from asr.download import download
from asr.errors import AsrError, DataError
from asr.mnist import FILES, read_idx

log = logging.getLogger(__name__)

# Tried in order; each serves the original files under their original names.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def is_valid(path: Path, md5: str) -> bool:
    """Whether path is a readable IDX .gz file whose uncompressed bytes have this MD5."""
    try:
        read_idx(path, md5)
    except DataError:
        return False
    return True


def download_file(name: str, md5: str, out_dir: Path) -> Path:
    """Fetches one file from the first mirror that gives a valid copy; DataError if none does."""
    path = out_dir / name
    problems = []
    for mirror in MIRRORS:
        path.unlink(missing_ok=True)  # download() keeps an existing file: drop the invalid one
        try:
            download(mirror + name, path, md5=None)  # checked below, on the uncompressed bytes
        except DataError as exc:
            problems.append(str(exc))
            continue
        if is_valid(path, md5):
            return path
        problems.append(f"{mirror + name}: not the MNIST file (uncompressed MD5 differs from {md5})")
    path.unlink(missing_ok=True)
    raise DataError(f"{path}: no mirror gave a valid copy ({'; '.join(problems)})")


def download_mnist(out_dir: str | Path) -> list[Path]:
    """Makes out_dir hold the four valid MNIST files; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, md5 in FILES.items():
        path = out_dir / name
        if is_valid(path, md5):
            log.info("%s: present and valid", path)
        else:
            download_file(name, md5, out_dir)
            log.info("%s: downloaded and valid", path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.mnist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the four .gz files (created if needed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        download_mnist(args.out)
    except AsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"MNIST in {args.out}: train with `asr train recipes/mnist --data-dir {args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
