"""Corpus preparation: LibriSpeech and FSDD downloads and manifests, and a recipe's corpus -> utterances.

Each stage is resumable: a download continues its partial file and is checksum-verified, an
extraction and a manifest preparation leave a marker file and are not redone (asr.download).
data_scripts/ wraps these functions as command-line programs; training calls prepare() first.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import soundfile as sf

from asr.config import Config, TextConfig
from asr.data import Utterance, read_manifest, write_manifest
from asr.download import download, extract, mark_done, stage_done
from asr.errors import DataError
from asr.text import Vocabulary, normalize_text

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- a recipe's corpus


def prepare(config: Config, exp_dir: Path) -> tuple[list[Utterance], list[Utterance]]:
    """The recipe's corpus -> (train utterances, dev utterances).

    data.corpus "manifest": the manifests under data.data_dir, read as they are. "librispeech":
    the subsets under data.data_dir, or, when it is empty, downloaded into exp_dir/corpus; their
    manifests are written to exp_dir/data (the dev speakers held out), once. "fsdd": the
    recordings under data.data_dir (or downloaded likewise); exp_dir/data gets train.jsonl and
    test.jsonl (the standard split, recordings 0-4 are the test set), and there is no dev set:
    the test set is never seen in training, not even to pick an epoch.
    """
    data = config.data
    if data.corpus == "manifest":
        root = Path(data.data_dir or ".")
        dev = read_manifest(root / data.dev_manifest) if data.dev_manifest else []
        return read_manifest(root / data.train_manifest), dev
    if data.corpus == "fsdd":
        root = Path(data.data_dir) if data.data_dir else download_fsdd(Path(exp_dir) / "corpus")
        return read_manifest(prepare_fsdd(root, Path(exp_dir) / "data")[0]), []
    root = Path(data.data_dir) if data.data_dir else Path(exp_dir) / "corpus"
    if not data.data_dir:
        download_subsets(root, data.subsets)
    train_path, dev_path = prepare_librispeech(
        root, Path(exp_dir) / "data", data.subsets, dev_speakers=data.dev_speakers, alphabet=config.text.alphabet
    )
    return read_manifest(train_path), read_manifest(dev_path) if data.dev_speakers else []


def check_corpus(config: Config) -> None:
    """DataError naming the file or folder when the recipe's corpus is not there: its manifests
    (read line by line) or, under a given data_dir, its LibriSpeech subset folders or FSDD recordings."""
    data = config.data
    if data.corpus == "manifest":
        for name in (data.train_manifest, data.dev_manifest):
            if name:
                read_manifest(Path(data.data_dir or ".") / name)
    elif data.corpus == "fsdd" and data.data_dir:
        recordings = Path(data.data_dir) / "recordings"
        if not any(recordings.glob("*.wav")):
            raise DataError(f"{recordings}: no FSDD recordings (*.wav); fix --data-dir (data.data_dir: the folder holding recordings/), or leave it empty to download")
    elif data.data_dir:
        for subset in data.subsets:
            folder = subset_dir(Path(data.data_dir), subset)
            if not folder.is_dir():
                raise DataError(f"{folder}: no such folder; fix --data-dir (data.data_dir) or data.subsets, or leave data_dir empty to download")


# ----------------------------------------------------------------------------- LibriSpeech


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
LIBRISPEECH_PREPARED_MARKER = ".librispeech_prepared.json"  # the arguments of the finished preparation
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
    marker = out_dir / LIBRISPEECH_PREPARED_MARKER
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


# ----------------------------------------------------------------------------- FSDD (Free Spoken Digit Dataset)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_INDICES = range(0, 5)  # the dataset's convention: recordings 0-4 of each speaker and digit are the test split
RELEASE = "v1.0.10"  # the tagged release with 6 speakers, 3,000 recordings
RELEASE_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{RELEASE}.tar.gz"
RELEASE_RECORDINGS = 3000  # GitHub's generated archives carry no published checksum: the count is checked instead
TEST_MANIFEST = "test.jsonl"
FSDD_PREPARED_MARKER = ".fsdd_prepared.json"
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
    marker = out_dir / FSDD_PREPARED_MARKER
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
