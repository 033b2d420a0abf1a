"""tf.distribute for training: the strategy a config names, the cluster of TF_CONFIG, each worker's share of the batches."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Callable

import tensorflow as tf

from asr.data import Shard
from asr.errors import ConfigError

log = logging.getLogger("asr.train")
TF_CONFIG = "TF_CONFIG"  # the environment variable that describes the cluster (TensorFlow's standard)
JOBS = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with
# What TensorFlow raises in a collective op when a peer stopped: the coordination service
# misses its heartbeats (UnavailableError after about 10 s) or its connection is reset.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError, tf.errors.CancelledError)


def worker_index(environ=os.environ) -> int:
    """This process's place in the TF_CONFIG cluster, chief first (0 is the chief: task "chief",
    or worker 0 of a cluster without one); ConfigError (one line) when TF_CONFIG is missing or
    malformed. Pure Python: it runs before TensorFlow does anything."""
    text = environ.get(TF_CONFIG)
    example = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
    if not text:
        raise ConfigError(f"train.strategy multi_worker needs the cluster in the environment variable {TF_CONFIG}, e.g. {example} (one machine: train.strategy mirrored)")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({exc.msg} at character {exc.pos}); expected e.g. {example}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"{TF_CONFIG} needs a \"cluster\" and a \"task\" object, e.g. {example}")
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise ConfigError(f"{TF_CONFIG}: job {job!r} is not supported; multi_worker training has a \"worker\" list and at most one \"chief\"")
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ConfigError(f"{TF_CONFIG}: cluster.{job} must be a non-empty list of \"host:port\" strings, got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"{TF_CONFIG}: a cluster has at most one chief, got {len(cluster['chief'])}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise ConfigError(f"{TF_CONFIG}: task.type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"{TF_CONFIG}: task.index must be 0 to {len(cluster[kind]) - 1} for job {kind!r}, got {index!r}")
    return index if kind == "chief" or "chief" not in cluster else index + 1


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy of train.strategy. multi_worker waits here until every worker
    of TF_CONFIG has started, and must come before TensorFlow runs anything in the process."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        worker_index()  # a one-line error for a missing or malformed TF_CONFIG
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise ConfigError(f"train.strategy multi_worker: {exc}; start each worker as its own `asr train` process") from None
    if os.environ.get(TF_CONFIG):
        log.warning("%s is set but train.strategy is %s: training on this machine only (multi_worker trains on the cluster)", TF_CONFIG, name)
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on the workers of a cluster."""
    return not is_multi_worker(strategy) or worker_index() == 0


def distribute_batches(strategy: tf.distribute.Strategy, make_dataset: Callable[[Shard | None], tf.data.Dataset]):
    """The distributed dataset of make_dataset(shard) (a dataset of whole batches for shard None).

    One machine: whole batches, which tf.distribute cuts among the local replicas. A cluster
    (multi_worker): each worker builds only its own parts of every batch, so a step trains on the
    same global batch as one machine does, and the workers follow the same batch plan (seeded by
    seed and epoch). Iterating it is a collective op on a cluster: every worker must.
    """
    if not is_multi_worker(strategy):
        return strategy.experimental_distribute_dataset(make_dataset(None))

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = strategy.num_replicas_in_sync // context.num_input_pipelines
        return make_dataset(Shard(first=context.input_pipeline_id * local, count=local, total=strategy.num_replicas_in_sync))

    return strategy.distribute_datasets_from_function(worker_dataset)


def _sum_over_replicas(strategy: tf.distribute.Strategy, values: list[float]) -> list[float]:
    """Each replica's values summed over every replica of every worker (a collective op)."""

    @tf.function
    def total(values):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(values)), axis=None)

    return total(tf.constant(values, tf.float64)).numpy().tolist()


def all_equal(strategy: tf.distribute.Strategy, value: float) -> bool:
    """Whether every worker passed the same value (a collective op: every worker must call it)."""
    n, total, squares = _sum_over_replicas(strategy, [1.0, value, value * value])
    return abs(squares / n - (total / n) ** 2) < 1e-9


def any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """Whether any worker passed True (a collective op: every worker must call it); also a barrier."""
    return _sum_over_replicas(strategy, [float(flag)])[0] > 0


def lost_peer(exc: Exception) -> str:
    """The line of a LOST_PEER_ERRORS that says which worker stopped or why."""
    text = str(exc)
    found = re.search(r"aborted by: ([^\n]+)(?:\n(/job:\S+))?", text)
    if found:
        return " ".join(part for part in found.groups() if part).rstrip(":").strip()
    return next((line.strip() for line in text.splitlines() if line.strip() and "Graph execution error" not in line), type(exc).__name__)
