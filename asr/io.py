"""Atomic writes of files and folders (one way, same permissions), SHA-256 checksums, checked reads and output paths, a quiet stderr.

Everything the project writes goes through a temporary name in the destination's folder and
os.replace, so a reader (or a run resumed after kill -9) sees either the old content or the new
one, never half a file. Files are created FILE_MODE and folders DIR_MODE, like normal outputs
under the usual umask (tempfile's private 0600/0700 would hide them from other users).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator

from asr.errors import AsrError, DataError

FILE_MODE = 0o644  # rw-r--r--
DIR_MODE = 0o755  # rwxr-xr-x
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing
_TEMPORARY = re.compile(r"^\..+\.(tmp-\w{8}|old-\w{8}|\w{8}\.tmp)$")  # names made by atomic_open, atomic_dir


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """Opens a temporary file beside path for writing; on a clean exit it replaces path.

    mode is "w" (UTF-8 text) or "wb". durable: fsync the file before the rename and the folder
    after it, so that the new content survives a power cut (a cache can skip that). On an
    exception the temporary file is removed and path is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes text (UTF-8) to path atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes bytes to path atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yields a new temporary folder beside final to fill; on a clean exit it replaces final.

    On an exception the temporary folder is removed and final is left as it was. A killed
    process leaves a hidden `.<name>.tmp-*` folder behind, which remove_stale_temporaries() clears.
    """
    final = Path(final)
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir_beside(final: str | Path) -> Path:
    """A new hidden temporary folder in final's parent (created if needed), to fill and commit_dir()."""
    final = Path(final)
    make_dirs(final.parent)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: str | Path, final: str | Path) -> None:
    """Makes a filled temporary folder final: its files FILE_MODE and fsynced, itself DIR_MODE,
    then renamed to final. Replacing an existing final takes two renames: between them
    (microseconds) final is missing and its old content is in a hidden `.<name>.old-*` folder."""
    tmp, final = Path(tmp), Path(final)
    for item in tmp.iterdir():
        if item.is_file():
            os.chmod(item, FILE_MODE)
            _fsync_file(item)
    os.chmod(tmp, DIR_MODE)
    _fsync_dir(tmp)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old)  # onto an empty folder: allowed
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes the temporary files and folders that killed writers left in folder; returns them."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if _TEMPORARY.match(p.name)] if folder.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def check_output_dir(folder: str | Path, what: str) -> Path:
    """Fails (DataError naming the path) when folder cannot be created or written: a file at its
    place or at a parent's, or a folder without write permission. Call it before the long work
    whose results go there, so that a mistake costs no time; `what` names it, e.g. "--report-dir"."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "a file is in the way" if existing == folder else f"{existing} is a file, not a folder"
        raise DataError(f"{folder}: cannot be the {what}: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{folder}: cannot be the {what}: no permission to write in {existing}")
    return folder


def check_replaceable_dir(final: str | Path, what: str, own_files) -> Path:
    """check_output_dir for a folder that atomic_dir() will write as a whole: since that replaces
    an existing final, final may only hold `own_files` (a previous output of the same kind)."""
    final = Path(final)
    if not final.is_dir():
        return check_output_dir(final, what)
    foreign = sorted(p.name for p in final.iterdir() if p.name not in own_files)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DataError(f"{final}: cannot be the {what}: the folder holds other things ({shown}), which writing it would replace; give a new folder")
    check_output_dir(final.parent, what)
    return final


def read_text(path: str | Path, what: str, error: type[AsrError] = DataError, missing: str = "") -> str:
    """The UTF-8 text of a file, or `error` naming it when it is missing (then `missing` says
    what to do), a folder, unreadable, or not UTF-8 (with the line of the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}" + (f"; {missing}" if missing else "")) from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: line {line}: not UTF-8 (byte {data[exc.start]:#04x}); convert the {what} to UTF-8") from None


def make_dirs(folder: str | Path) -> Path:
    """mkdir -p with DIR_MODE for the folders it creates."""
    folder = Path(folder)
    if not folder.is_dir():
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return folder


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in folder durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- checksums -----------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_checksums(folder: str | Path, names) -> dict[str, str]:
    """{name: SHA-256} of the named files in folder."""
    return {name: sha256_file(Path(folder) / name) for name in sorted(names)}


def verify_file(path: str | Path, expected: str, record: str) -> None:
    """DataError naming path when it is missing or its SHA-256 is not `expected` (from `record`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing (listed in {record})")
    if sha256_file(path) != expected:
        raise DataError(f"{path}: damaged (its SHA-256 differs from the one {record} recorded when it was written)")


@contextlib.contextmanager
def quiet_stderr():
    """Points file descriptor 2 at /dev/null for the block: C++ libraries (TensorFlow's start-up,
    KenLM's loading bar) write there directly, where no Python logging setting reaches."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
