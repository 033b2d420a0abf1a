"""Free Spoken Digit Dataset: train/test manifests from recordings/{digit}_{speaker}_{index}.wav.

    python -m data_scripts.fsdd --fsdd-dir FSDD --out-dir OUT                 # indices 0-4 are test
    python -m data_scripts.fsdd --fsdd-dir FSDD --out-dir OUT --test-speakers theo   # by speaker

FSDD holds (or, with --download, receives) recordings/. Writes OUT/train.jsonl and
OUT/test.jsonl; a finished run with the same arguments is not repeated.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import soundfile as sf

from asr.data import Utterance, write_manifest
from asr.errors import AsrError, DataError
from data_scripts.download import download, extract, mark_done, stage_done

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_INDICES = range(0, 5)  # the dataset's convention: recordings 0-4 of each speaker and digit are the test split
RELEASE = "v1.0.10"  # the tagged release with 6 speakers, 3,000 recordings
RELEASE_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{RELEASE}.tar.gz"
RELEASE_RECORDINGS = 3000  # GitHub's generated archives carry no published checksum: the count is checked instead
TRAIN_MANIFEST = "train.jsonl"
TEST_MANIFEST = "test.jsonl"
PREPARED_MARKER = ".fsdd_prepared.json"
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def parse_name(path: str | Path) -> tuple[str, str, int]:
    """'7_jackson_32.wav' -> ("seven", "jackson", 32): transcript, speaker, index."""
    match = _NAME.match(Path(path).stem)
    if not match:
        raise DataError(f"{path}: not an FSDD recording name ({{digit}}_{{speaker}}_{{index}}.wav)")
    digit, speaker, index = match.groups()
    return DIGIT_WORDS[int(digit)], speaker, int(index)


def read_fsdd(fsdd_dir: str | Path) -> list[Utterance]:
    """All recordings under fsdd_dir/recordings, sorted by id (the file stem)."""
    recordings = Path(fsdd_dir) / "recordings"
    paths = sorted(recordings.glob("*.wav"))
    if not paths:
        raise DataError(f"{recordings}: no FSDD recordings (*.wav); pass the folder holding recordings/ or use --download")
    utterances = []
    for path in paths:
        text, speaker, _ = parse_name(path)
        info = sf.info(str(path))
        utterances.append(Utterance(path.stem, str(path.resolve()), info.frames / info.samplerate, text, speaker))
    return utterances


def prepare_fsdd(fsdd_dir: str | Path, out_dir: str | Path, test_speakers: Sequence[str] = ()) -> tuple[Path, Path]:
    """Writes (train_manifest, test_manifest) to out_dir.

    Split by speaker when test_speakers is given (those speakers are the test set), otherwise by
    the usual index split (recordings 0-4 of every speaker and digit are the test set).
    """
    out_dir = Path(out_dir)
    train_path, test_path = out_dir / TRAIN_MANIFEST, out_dir / TEST_MANIFEST
    args = {"fsdd_dir": str(Path(fsdd_dir).resolve()), "test_speakers": sorted(test_speakers)}
    marker = out_dir / PREPARED_MARKER
    if stage_done(marker, args, train_path, test_path):
        log.info("%s: already prepared, nothing to do", out_dir)
        return train_path, test_path
    utterances = read_fsdd(fsdd_dir)
    unknown = set(test_speakers) - {u.speaker for u in utterances}
    if unknown:
        raise DataError(f"test speaker(s) {', '.join(sorted(unknown))} not in {fsdd_dir}")
    is_test = _by_speaker(test_speakers) if test_speakers else _by_index
    write_manifest(train_path, [u for u in utterances if not is_test(u)])
    write_manifest(test_path, [u for u in utterances if is_test(u)])
    mark_done(marker, args)
    return train_path, test_path


def _by_index(u: Utterance) -> bool:
    return parse_name(u.audio_filepath)[2] in TEST_INDICES


def _by_speaker(speakers: Sequence[str]):
    return lambda u: u.speaker in set(speakers)


def download_fsdd(data_dir: str | Path) -> Path:
    """Downloads and extracts the tagged release into data_dir; returns the folder holding recordings/."""
    data_dir = Path(data_dir)
    archive = download(RELEASE_URL, data_dir / "downloads" / f"fsdd-{RELEASE}.tar.gz", md5=None)
    extract(archive, data_dir, data_dir / "downloads" / f"fsdd-{RELEASE}.extracted")
    root = data_dir / f"free-spoken-digit-dataset-{RELEASE.lstrip('v')}"
    found = len(list((root / "recordings").glob("*.wav")))
    if found != RELEASE_RECORDINGS:
        raise DataError(f"{root}: {found} recordings, expected {RELEASE_RECORDINGS}; delete {data_dir / 'downloads'} and run again")
    return root


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
