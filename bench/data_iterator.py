"""How long dropping an exhausted tf.data iterator takes, with tf.data's autotuning on and off.

Each run iterates a dataset shaped like an epoch of asr.data.make_dataset (a numpy_function map
with 2 parallel calls, then prefetch) whose elements take --element-seconds to load (a sleep: no
CPU), so the iterator lives about --elements x --element-seconds / 2 seconds, then drops it.
In TF 2.21, with autotuning on, the drop sometimes waits for the autotuning thread to finish its
current sleep, whose period doubles up to 60 s: an end-of-epoch stall. Here, of five drops with
autotuning on one took 51.8 s (the iterator had lived 90.1 s), the others under 0.4 s; of four
with it off, none took over 0.07 s. During librispeech_small run 5 (autotuning still on), 9 of
its 70 epochs took 50 to 65 s longer than the others, and py-spy caught the trainer in the
iterator's destructor waiting for that thread (recipes/librispeech_small/README.md).
asr.data.without_autotune switches autotuning off.

    python bench/data_iterator.py                      # 600 elements of 0.4 s: about 120 s each run
    python bench/data_iterator.py --elements 450       # about 90 s
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from asr.data import PREFETCH_BATCHES, without_autotune


def run(autotune: bool, elements: int, element_seconds: float) -> tuple[float, float]:
    """(seconds iterating, seconds dropping the exhausted iterator)."""

    def load(x):
        time.sleep(element_seconds)
        return x

    dataset = tf.data.Dataset.from_tensor_slices(np.arange(elements))
    dataset = dataset.map(lambda x: tf.numpy_function(load, [x], tf.int64), num_parallel_calls=2, deterministic=True)
    dataset = dataset.prefetch(PREFETCH_BATCHES)
    if not autotune:
        dataset = without_autotune(dataset)
    iterator = iter(dataset)
    start = time.perf_counter()
    for _ in iterator:
        pass
    done = time.perf_counter()
    del iterator
    return done - start, time.perf_counter() - done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=600)
    parser.add_argument("--element-seconds", type=float, default=0.4)
    args = parser.parse_args()
    results = {}
    for autotune in (True, False):
        took, drop = run(autotune, args.elements, args.element_seconds)
        results[autotune] = drop
        print(f"autotune {'on ' if autotune else 'off'}: iterated {took:.1f} s, dropped the iterator in {drop:.2f} s", flush=True)
    print(f"drop time, on - off: {results[True] - results[False]:.2f} s")


if __name__ == "__main__":
    main()
