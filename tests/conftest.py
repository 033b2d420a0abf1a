"""Shared fixtures: the real corpora in ../shared/data (skipped locally if absent, a failure in CI)."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data"))


def require(path: Path) -> Path:
    """Returns path if it exists; otherwise fails under CI (CI=true) and skips elsewhere."""
    if path.exists():
        return path
    message = f"missing test data {path} (set ASR_SHARED_DATA to the folder holding librispeech_small/, mnist/, fsdd/)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def librispeech_root() -> Path:
    """The LibriSpeech tree: <root>/LibriSpeech/train-clean-5/<spk>/<chapter>/*.flac."""
    return require(SHARED_DATA / "librispeech_small")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return require(SHARED_DATA / "mnist")


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """FSDD root holding recordings/{digit}_{speaker}_{index}.wav (8 kHz mono)."""
    return require(SHARED_DATA / "fsdd")


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
