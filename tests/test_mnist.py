"""MNIST task: the IDX reader, its error messages, the downloader's checks, and a short training run."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from asr.config import load_recipe
from asr.errors import ConfigError, DataError
from asr.mnist import FILES, check_config, load_mnist, read_idx, train
from data_scripts import mnist as mnist_script

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist"
HINT = "python -m data_scripts.mnist --out"


def write_idx(path, array: np.ndarray, header_shape=None, type_code: int = 0x08) -> None:
    """Writes array (uint8) as a gzipped IDX file; header_shape overrides the shape in the header."""
    shape = array.shape if header_shape is None else header_shape
    header = bytes([0, 0, type_code, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def copy_real_files(mnist_dir, tmp_path, skip: str = "") -> None:
    """Copies (never links: a test that writes must not reach the shared data) all files but skip."""
    for name in FILES:
        if name != skip:
            shutil.copyfile(mnist_dir / name, tmp_path / name)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir)


# ----------------------------------------------------------------------------------------- reader


def test_load_mnist_shapes_and_scaling(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.allclose(x_test * 255, np.round(x_test * 255), atol=1e-4)  # grey levels / 255
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    assert sorted(set(y_test.tolist())) == list(range(10))


def test_read_idx_keeps_shape_and_values(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "x.gz", images)
    read = read_idx(tmp_path / "x.gz")
    assert read.dtype == np.uint8 and read.shape == (2, 28, 28)
    np.testing.assert_array_equal(read, images)


# ----------------------------------------------------------------------------------------- errors


# Each writes a broken version of the real file `source` to the new file `dest`.


def truncate(source, dest):
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])


def bad_magic(source, dest):
    write_idx(dest, np.zeros(10), type_code=0x0D)  # 0x0D: float32, not MNIST's unsigned bytes


def wrong_size(source, dest):
    write_idx(dest, np.zeros(9), header_shape=(10,))


def other_labels(source, dest):
    write_idx(dest, np.zeros(10000))  # a well-formed labels file that is not MNIST's


@pytest.mark.parametrize(
    "name, corrupt, problem",
    [
        ("train-images-idx3-ubyte.gz", truncate, "not a complete gzip file"),
        ("train-labels-idx1-ubyte.gz", bad_magic, "not an IDX file of unsigned bytes"),
        ("t10k-images-idx3-ubyte.gz", wrong_size, "data bytes"),
        ("t10k-labels-idx1-ubyte.gz", other_labels, "does not match the MNIST checksum"),
    ],
)
def test_corrupt_file_is_a_one_line_data_error(mnist_dir, tmp_path, name, corrupt, problem):
    copy_real_files(mnist_dir, tmp_path, skip=name)
    corrupt(mnist_dir / name, tmp_path / name)
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert name in message and problem in message and f"{HINT} {tmp_path}" in message
    assert "\n" not in message


def test_missing_file_names_it_and_the_download_command(tmp_path):
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.gz: no such file; .*{HINT} {tmp_path}"):
        load_mnist(tmp_path)


# ----------------------------------------------------------------------------------------- download


def test_download_keeps_valid_files_and_replaces_invalid_ones(mnist_dir, tmp_path, monkeypatch):
    name = "t10k-labels-idx1-ubyte.gz"
    copy_real_files(mnist_dir, tmp_path, skip=name)
    (tmp_path / name).write_bytes(b"not a gzip file")
    fetched = []

    def fake_download(url, dest, md5):  # the first mirror is down, the second serves the file
        fetched.append(url)
        if url.startswith(mnist_script.MIRRORS[0]):
            raise DataError(f"{url}: cannot download (offline)")
        shutil.copyfile(mnist_dir / name, dest)
        return dest

    monkeypatch.setattr(mnist_script, "download", fake_download)
    assert mnist_script.main(["--out", str(tmp_path)]) == 0
    assert fetched == [mirror + name for mirror in mnist_script.MIRRORS]
    assert len(load_mnist(tmp_path)[3]) == 10000


def test_download_reports_when_no_mirror_works(tmp_path, monkeypatch, capsys):
    def offline(url, dest, md5):
        raise DataError(f"{url}: cannot download (offline)")

    monkeypatch.setattr(mnist_script, "download", offline)
    assert mnist_script.main(["--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz: no mirror gave a valid copy" in error and "offline" in error


# ----------------------------------------------------------------------------------------- training


def test_recipe_rejects_options_the_task_ignores():
    with pytest.raises(ConfigError, match="model.bidirectional"):
        check_config(load_recipe(RECIPE, ["model.bidirectional=true"]))


def test_short_training_run_beats_chance_by_far(mnist_dir, tmp_path):
    config = load_recipe(RECIPE, [f"data.data_dir={mnist_dir}", "train.max_steps=300", "train.warmup_steps=50"])
    results = train(config, tmp_path)
    assert results["steps"] == 300 and results["test_images"] == 10000
    assert results["test_accuracy"] > 0.9  # chance is 0.1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"] and saved["config"]["model"]["cell"] == "lstm"
