"""LibriSpeech: download subsets from OpenSLR and build train/dev manifests from a LibriSpeech tree.

    python -m data_scripts.librispeech --data-dir DATA --out-dir OUT --subsets train-clean-5 \\
        --dev-speakers 1088 3526 1867

Stage 1 downloads and extracts each subset missing under DATA (resumable, md5-verified, marker
files); stage 2 writes OUT/train.jsonl and OUT/dev.jsonl (the dev speakers held out). Each stage
that already finished does nothing when run again.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import soundfile as sf

from asr.config import TextConfig
from asr.data import Utterance, write_manifest
from asr.errors import AsrError, DataError
from asr.text import Vocabulary, normalize_text
from data_scripts.download import download, extract, mark_done, stage_done

log = logging.getLogger(__name__)

OPENSLR = "https://www.openslr.org/resources"
# Archive md5s as published in OpenSLR's md5sum.txt for resources 31 (Mini LibriSpeech) and 12.
SUBSETS = {
    "train-clean-5": ("31", "5df7d4e78065366204ca6845bb08f490"),
    "dev-clean-2": ("31", "6d7ab67ac6a1d2c993d050e16d61080d"),
    "dev-clean": ("12", "42e2234ba48799c1f50f24a7926300a1"),
    "dev-other": ("12", "c8d0bcc9cca99d4f8b62fcc847357931"),
    "test-clean": ("12", "32fa31d27d2e1cad72775fee3f4849a9"),
    "test-other": ("12", "fb5a50374b501bb3bac4815ee91d3135"),
    "train-clean-100": ("12", "2a93770f6d5c6c964bc36631d331a522"),
    "train-clean-360": ("12", "c0e676e450a7ff2f54aeade5171606fa"),
    "train-other-500": ("12", "d1a0fd59409feb2c614ce4d30c387708"),
}
TRAIN_MANIFEST = "train.jsonl"
DEV_MANIFEST = "dev.jsonl"
PREPARED_MARKER = ".librispeech_prepared.json"  # the arguments of the finished preparation
SUMMARY = "librispeech_summary.json"  # counts, hours and out-of-vocabulary characters, for people
INFO_WORKERS = 4  # threads reading FLAC headers (I/O bound)


def subset_dir(root: Path, subset: str) -> Path:
    return Path(root) / "LibriSpeech" / subset


def download_subsets(data_dir: str | Path, subsets: Sequence[str]) -> Path:
    """Stage 1: makes DATA/LibriSpeech/<subset> exist for each subset; returns DATA.

    A subset folder already there (and not half-extracted by us) is used as it is: nothing is
    written next to a corpus that was not downloaded here.
    """
    data_dir = Path(data_dir)
    for subset in subsets:
        if subset not in SUBSETS:
            raise DataError(f"unknown LibriSpeech subset {subset!r}; known: {', '.join(SUBSETS)}")
        archive = data_dir / "downloads" / f"{subset}.tar.gz"
        marker = data_dir / "downloads" / f"{subset}.extracted"
        started_here = archive.exists() or archive.with_name(archive.name + ".part").exists()
        if marker.is_file() or (subset_dir(data_dir, subset).is_dir() and not started_here):
            continue
        resource, md5 = SUBSETS[subset]
        download(f"{OPENSLR}/{resource}/{subset}.tar.gz", archive, md5)
        extract(archive, data_dir, marker)
    return data_dir


def prepare_librispeech(
    root: str | Path,
    out_dir: str | Path,
    subsets: Sequence[str],
    dev_speakers: Sequence[str] = (),
    alphabet: str = TextConfig.alphabet,
) -> tuple[Path, Path]:
    """Stage 2: manifests from a LibriSpeech tree; returns (train_manifest, dev_manifest) paths.

    Reads <root>/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt and the FLAC files
    beside them; texts are normalized; utterances of dev_speakers go to the dev manifest (empty
    when there are none). Characters outside `alphabet` are counted, logged and written to
    OUT/librispeech_summary.json (make_dataset skips such utterances with a reason). Only out_dir
    is written. Re-running with the same arguments after a finished run does nothing.
    """
    out_dir = Path(out_dir)
    train_path, dev_path = out_dir / TRAIN_MANIFEST, out_dir / DEV_MANIFEST
    args = {"root": str(Path(root).resolve()), "subsets": list(subsets), "dev_speakers": sorted(map(str, dev_speakers)), "alphabet": alphabet}
    marker = out_dir / PREPARED_MARKER
    if stage_done(marker, args, train_path, dev_path):
        log.info("%s: already prepared, nothing to do", out_dir)
        return train_path, dev_path
    utterances = [u for subset in subsets for u in read_subset(Path(root), subset)]
    dev_set = set(args["dev_speakers"])
    unknown = dev_set - {u.speaker for u in utterances}
    if unknown:
        raise DataError(f"dev speaker(s) {', '.join(sorted(unknown))} not found in {', '.join(subsets)} under {root}")
    train = [u for u in utterances if u.speaker not in dev_set]
    dev = [u for u in utterances if u.speaker in dev_set]
    write_manifest(train_path, train)
    write_manifest(dev_path, dev)
    _write_summary(out_dir / SUMMARY, train, dev, Vocabulary(alphabet))
    mark_done(marker, args)
    return train_path, dev_path


def read_subset(root: Path, subset: str) -> list[Utterance]:
    """All utterances of one subset, sorted by id, with durations read from the FLAC headers."""
    folder = subset_dir(root, subset)
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise DataError(f"{folder}: no LibriSpeech transcripts (*/*/*.trans.txt); download the subset or fix --data-dir")
    entries = [entry for path in transcripts for entry in _read_transcript(path)]
    with ThreadPoolExecutor(INFO_WORKERS) as pool:
        durations = list(pool.map(_duration, [audio for _, audio, _ in entries]))
    utterances = [
        Utterance(id=utt_id, audio_filepath=str(audio.resolve()), duration=duration, text=normalize_text(text), speaker=utt_id.split("-")[0])
        for (utt_id, audio, text), duration in zip(entries, durations)
    ]
    return sorted(utterances, key=lambda u: u.id)


def _read_transcript(path: Path) -> list[tuple[str, Path, str]]:
    """<spk>-<chapter>.trans.txt -> [(utterance id, FLAC path, raw text)]."""
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        audio = path.parent / f"{utt_id}.flac"
        if not audio.is_file():
            raise DataError(f"{path}:{lineno}: audio {audio.name} is missing; re-extract the subset")
        entries.append((utt_id, audio, text))
    return entries


def _duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"{path}: unreadable FLAC ({exc}); re-extract the subset") from None
    return info.frames / info.samplerate


def _write_summary(path: Path, train: list[Utterance], dev: list[Utterance], vocab: Vocabulary) -> None:
    oov = collections.Counter()
    affected = 0
    for u in train + dev:
        chars = vocab.oov_chars(u.text)
        oov.update(chars)
        affected += bool(chars)
    if oov:
        log.warning("%d utterances hold characters outside the vocabulary (they will be skipped): %s", affected, dict(oov.most_common()))
    summary = {name: _split_summary(split) for name, split in (("train", train), ("dev", dev))}
    summary["oov_characters"] = dict(oov.most_common())
    summary["oov_utterances"] = affected
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    log.info("train: %(utterances)d utterances, %(hours).2f h, %(speakers)d speakers", summary["train"])
    log.info("dev: %(utterances)d utterances, %(hours).2f h, %(speakers)d speakers", summary["dev"])


def _split_summary(utterances: list[Utterance]) -> dict:
    return {
        "utterances": len(utterances),
        "hours": round(sum(u.duration for u in utterances) / 3600, 3),
        "speakers": len({u.speaker for u in utterances}),
    }


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
