"""Resumable, checksum-verified downloads and marker-guarded archive extraction."""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from asr.errors import DataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # 1 MiB read/write and hashing block
TIMEOUT_S = 60  # seconds without data before a connection is abandoned (re-running resumes)
HTTP_PARTIAL = 206  # the server honoured our Range request
HTTP_RANGE_NOT_SATISFIABLE = 416  # the partial file is already complete (or larger than the remote one)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None) -> Path:
    """Downloads url to dest unless dest already exists (and matches md5); resumes a partial file.

    The bytes go to dest + ".part" and continue from its size with an HTTP Range request; the file
    is renamed to dest only once complete and, when md5 is given, verified. A checksum mismatch
    deletes the partial file and raises DataError. md5 None: the file is not verified (logged).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part)
    if md5 is None:
        log.warning("%s: no published checksum to verify against (md5 %s)", dest.name, md5sum(part))
    else:
        actual = md5sum(part)
        if actual != md5:
            part.unlink()
            raise DataError(f"{dest}: checksum mismatch (md5 {actual}, expected {md5}); the download was removed, run again")
    part.rename(dest)
    return dest


def _fetch(url: str, part: Path) -> None:
    """Appends the rest of url's bytes to part (starting over if the server ignores Range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and have:
            return  # already complete: the checksum decides
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: cannot download ({getattr(exc, 'reason', exc)}); check the network, or pass the folder of an existing copy") from None
    resume = have and response.status == HTTP_PARTIAL
    total = int(response.headers.get("Content-Length", 0)) + (have if resume else 0)
    log.info("downloading %s (%s of %.0f MB)", url, "resuming" if resume else "start", total / 1e6)
    with response, open(part, "ab" if resume else "wb") as f:
        try:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
        except OSError as exc:
            raise DataError(f"{url}: download interrupted ({exc}); run again to resume") from None


def extract(archive: Path, dest_dir: Path, marker: Path) -> None:
    """Extracts a tar archive into dest_dir once: the marker file records that it finished."""
    if marker.is_file():
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s into %s", archive, dest_dir)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest_dir, filter="data")  # "data": no absolute paths, links out of dest_dir, devices
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); delete it and run again to re-download") from None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"extracted {archive.name}\n")


def stage_done(marker: Path, args: dict, *outputs: Path) -> bool:
    """True when `marker` records a finished stage run with these arguments and its outputs exist."""
    if not (marker.is_file() and all(Path(p).is_file() for p in outputs)):
        return False
    try:
        return json.loads(marker.read_text()) == args
    except ValueError:
        return False


def mark_done(marker: Path, args: dict) -> None:
    """Records that a stage finished with these arguments (written last, after its outputs)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(args, indent=1, sort_keys=True) + "\n")
