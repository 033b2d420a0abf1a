"""asr.io: atomic files and folders (all or nothing, 0644/0755), stale temporaries, checksums."""

import pytest

from asr import io
from asr.errors import DataError


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    io.atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with io.atomic_open(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    final = tmp_path / "model"
    with io.atomic_dir(final) as tmp:
        (tmp / "w").write_bytes(b"1")
    with pytest.raises(OSError):
        with io.atomic_dir(final) as tmp:
            (tmp / "w").write_bytes(b"2")
            raise OSError(28, "No space left on device")
    assert (final / "w").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with io.atomic_dir(final) as tmp:
        (tmp / "w").write_bytes(b"3")
    assert (final / "w").read_bytes() == b"3" and [p.name for p in tmp_path.iterdir()] == ["model"]
    assert final.stat().st_mode & 0o777 == 0o755 and (final / "w").stat().st_mode & 0o777 == 0o644


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    io.temp_dir_beside(tmp_path / "ckpt-00000001")  # what a writer killed mid-folder leaves
    (tmp_path / ".latest.abcd1234.tmp").write_text("x")  # ... and mid-file
    keep = [tmp_path / "ckpt-00000002", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    keep[0].mkdir()
    for path in keep[1:]:
        path.write_text("mine")
    assert len(io.remove_stale_temporaries(tmp_path)) == 2
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_verify_file_names_the_file(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"abc")
    digest = io.sha256_file(path)
    io.verify_file(path, digest, "config.json")
    path.write_bytes(b"abd")
    with pytest.raises(DataError, match="weights.npz: damaged"):
        io.verify_file(path, digest, "config.json")
    path.unlink()
    with pytest.raises(DataError, match="weights.npz: missing"):
        io.verify_file(path, digest, "config.json")
