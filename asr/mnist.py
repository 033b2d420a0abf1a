"""MNIST as a sequence task (task "classify"): a sanity check of the recurrent core on a known problem.

Each image is read row by row: 28 time steps of 28 pixel features. The recipe's recurrent layer
(asr.rnn, any cell type) reads the rows; a dense layer maps its last output to the 10 digits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import time
import zlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from asr.config import Config, ModelConfig, to_dict
from asr.errors import ConfigError, DataError
from asr.io import check_output_dir, make_dirs
from asr.model import make_cell
from asr.optim import make_optimizer
from asr.rnn import dynamic_rnn

IMAGE_SIZE = 28  # pixels per side: an image is IMAGE_SIZE time steps of IMAGE_SIZE features
NUM_CLASSES = 10  # the digits 0-9
MAX_PIXEL = 255.0  # pixels are stored as uint8 grey levels
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the third byte of the magic number
# Mean and standard deviation of the training pixels in [0, 1]. The model standardizes its input:
# blank rows (the top of most digits) would otherwise feed exact zeros to a zero state, and layer
# normalization of an all-zero pre-activation multiplies gradients by 1 / sqrt(epsilon) per step
# (ln_lstm's gradients overflowed to inf on the very first step).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
EVAL_BATCH_SIZE = 1000  # images per evaluation batch

# The four files of the original release, with the MD5 of their uncompressed bytes.
FILES = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# ----------------------------------------------------------------------------------------- data


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; get the MNIST files with `python -m data_scripts.mnist --out {path.parent}`")


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Reads one gzipped IDX file of unsigned bytes into an array of the shape its header states.

    Images files give uint8 [N, 28, 28], labels files uint8 [N]. With `md5`, the uncompressed bytes
    must have that checksum. Any problem (missing file, bad gzip, bad magic number, a size that
    disagrees with the header, a checksum mismatch) is a DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(path, f"not a complete gzip file ({exc})") from None
    array = _parse_idx(raw, path)
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise _fail(path, f"content does not match the MNIST checksum (MD5 {md5})")
    return array


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """IDX layout: 2 zero bytes, a type byte, a rank byte, rank big-endian uint32 sizes, the data."""
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != IDX_UBYTE or not 1 <= raw[3] <= 3:
        raise _fail(path, f"not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'})")
    rank = raw[3]
    header_size = 4 + 4 * rank
    if len(raw) < header_size:
        raise _fail(path, f"header cut short ({len(raw)} of {header_size} bytes)")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header_size != expected:
        raise _fail(path, f"holds {len(raw) - header_size} data bytes, its header {list(shape)} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split ("train": 60,000 images, "test": 10,000) -> (images, labels).

    images: float32 [N, 28, 28] (time = image row, features = pixels of that row) scaled to [0, 1];
    labels: int32 [N], the digit 0-9.
    """
    # The checksums pin the exact content, so shapes and label values need no further checks.
    images, labels = (read_idx(Path(data_dir) / name, FILES[name]) for name in SPLITS[split])
    return images.astype(np.float32) / MAX_PIXEL, labels.astype(np.int32)


def load_mnist(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four IDX .gz files in data_dir -> (x_train, y_train, x_test, y_test).

    x_*: float32 [N, 28, 28] in [0, 1], each image as 28 time steps of 28 features; y_*: int32 [N].
    N is 60,000 for train and 10,000 for test.
    """
    x_train, y_train = load_split(data_dir, "train")
    x_test, y_test = load_split(data_dir, "test")
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------------------- model


class MnistClassifier(keras.Model):
    """Image rows -> stacked recurrent layers -> the last step's output -> digit logits.

    call(images float32 [B, 28, 28] in [0, 1] (time = row), training) -> logits float32 [B, 10].
    Every image has all 28 rows, so there is no padding and no lengths to carry.
    """

    def __init__(self, config: ModelConfig, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cells = [make_cell(config, seed=seed) for _ in range(config.num_layers)]
        self.classifier = keras.layers.Dense(NUM_CLASSES, name="classifier")

    def call(self, images, training=False):
        outputs = (images - PIXEL_MEAN) / PIXEL_STD
        for cell in self.cells:
            outputs, _ = dynamic_rnn(cell, outputs, training=training)  # [B, 28, units]
        return self.classifier(outputs[:, -1])


def check_config(config: Config) -> None:
    """Rejects settings the classify task would otherwise ignore (speech-only model options)."""
    if config.data.corpus != "mnist":
        raise ConfigError(f"config key 'data.corpus': task 'classify' needs 'mnist', got {config.data.corpus!r}")
    if config.model.bidirectional:
        raise ConfigError("config key 'model.bidirectional': task 'classify' reads rows in one direction; set it to false")
    if config.model.frame_stack != 1 or config.model.frame_stride != 1:
        raise ConfigError("config key 'model.frame_stack': task 'classify' reads one row per step; set frame_stack and frame_stride to 1")
    if config.train.strategy != "default":
        raise ConfigError("config key 'train.strategy': task 'classify' trains on one device; set it to 'default'")


def compute_loss(model: MnistClassifier, images, labels, training: bool):
    """images [B, 28, 28], labels int32 [B] -> (mean softmax cross-entropy, accuracy), scalars."""
    logits = model(images, training=training)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    return loss, tf.reduce_mean(tf.cast(correct, tf.float32))


# ----------------------------------------------------------------------------------------- training


BATCH_SIGNATURE = (
    tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.float32),  # images [B, 28, 28]
    tf.TensorSpec([None], tf.int32),  # labels [B]
)


def make_train_step(model: MnistClassifier, optimizer: keras.optimizers.Optimizer):
    """A compiled step: (images [B, 28, 28], labels [B]) -> (loss, accuracy) before the update."""

    @tf.function(input_signature=BATCH_SIGNATURE)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss, accuracy = compute_loss(model, images, labels, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, accuracy

    return train_step


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator):
    """One epoch in a fresh random order: yields (images [b, 28, 28], labels [b]); the last b may be smaller."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


def train_one_epoch(train_step, images, labels, config: Config, rng, epoch: int, steps_left: int) -> int:
    """Runs at most steps_left steps over one shuffled epoch; returns the steps run.

    A progress bar shows the epoch's mean training loss and accuracy so far.
    """
    steps = min(-(-len(images) // config.data.batch_size), steps_left)
    totals = np.zeros(2)  # summed loss, summed accuracy
    # Into a log file rather than a terminal, a line every 10 s instead of ten a second.
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.train.epochs}", unit="batch", dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    for step, (x, y) in enumerate(batches(images, labels, config.data.batch_size, rng), start=1):
        loss, accuracy = (float(v) for v in train_step(x, y))
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} in epoch {epoch}; lower train.learning_rate")
        totals += (loss, accuracy)
        bar.set_postfix(loss=f"{totals[0] / step:.4f}", accuracy=f"{totals[1] / step:.4f}", refresh=False)
        bar.update()
        if step == steps:
            break
    bar.close()
    return steps


def fit(model: MnistClassifier, images: np.ndarray, labels: np.ndarray, config: Config) -> int:
    """Trains for config.train.epochs epochs (or max_steps steps, if sooner); returns the steps run."""
    train_step = make_train_step(model, make_optimizer(config, model))
    rng = np.random.default_rng(config.train.seed)
    steps_per_epoch = -(-len(images) // config.data.batch_size)
    total = steps_per_epoch * config.train.epochs
    if config.train.max_steps:
        total = min(total, config.train.max_steps)
    done = 0
    for epoch in range(1, config.train.epochs + 1):
        if done >= total:
            break
        done += train_one_epoch(train_step, images, labels, config, rng, epoch, total - done)
    return done


def evaluate(model: MnistClassifier, images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy over all of images [N, 28, 28] with labels [N]."""
    predict = tf.function(lambda x: model(x, training=False), input_signature=BATCH_SIGNATURE[:1])
    logits = np.concatenate([predict(images[i : i + EVAL_BATCH_SIZE]).numpy() for i in range(0, len(images), EVAL_BATCH_SIZE)])
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    return {"accuracy": accuracy, "loss": float(loss), "num_images": len(images)}


def save_results(results: dict, exp_dir: Path) -> Path:
    path = exp_dir / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def train(config: Config, exp_dir: str | Path) -> dict:
    """Trains the recipe's classifier on MNIST, evaluates it on the 10,000 test images.

    Reads the IDX files from config.data.data_dir (empty: exp_dir/data), prints and returns the
    results (test accuracy and loss, training seconds, steps, ...) and writes them to
    exp_dir/results.json together with the resolved config.
    """
    check_config(config)
    exp_dir = make_dirs(check_output_dir(exp_dir, "experiment folder (--exp-dir)"))
    x_train, y_train, x_test, y_test = load_mnist(config.data.data_dir or exp_dir / "data")
    keras.utils.set_random_seed(config.train.seed)
    model = MnistClassifier(config.model, seed=config.train.seed)
    model(x_train[:1])  # creates the weights
    start = time.perf_counter()
    steps = fit(model, x_train, y_train, config)
    train_seconds = time.perf_counter() - start
    test = evaluate(model, x_test, y_test)
    results = {
        "cell": config.model.cell,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": test["num_images"],
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "parameters": model.count_params(),
        "config": to_dict(config),
    }
    save_results(results, exp_dir)
    print(f"{config.model.cell}: test accuracy {test['accuracy']:.2%} on {test['num_images']} images, "
          f"{steps} steps trained in {train_seconds:.0f} s")
    return results
