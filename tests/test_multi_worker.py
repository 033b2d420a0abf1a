"""Multi-worker training (train.strategy multi_worker): two worker processes on 127.0.0.1 with TF_CONFIG."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from asr import checkpoint
from asr.cli import main
from asr.data import Shard, shard_batches
from asr.distribute import worker_index
from asr.errors import ConfigError
from test_train import UTTERANCES, recipe

STARTUP_S = 300  # seconds a worker may take to start, trace and train a few steps on a busy 2-core machine (failing tests only wait this long)
LOST_WORKER_S = 120  # the coordination service reports a worker without heartbeats after about 10 s

# Runs train() as `asr train` does and prints the per-utterance losses of each step this process trained.
RECORD_LOSSES = textwrap.dedent(
    """
    import json, sys
    from asr import train
    from asr.config import load_recipe
    losses, step = [], train.Steps.train_step
    def recording(self, batch):
        out = step(self, batch)
        losses.append(sorted(float(x) for x in out[0]))
        return out
    train.Steps.train_step = recording
    train.train(load_recipe(sys.argv[1], sys.argv[3:]), sys.argv[2])
    print(json.dumps(losses))
    """
)


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (the sockets are held together so that they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def environment(tmp_path: Path, **extra) -> dict:
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([repo, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else repo
    return dict(os.environ, PYTHONPATH=path, ASR_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2", **extra)


class Cluster:
    """Worker processes on 127.0.0.1 that are always stopped on exit, whatever happened."""

    def __init__(self, tmp_path: Path, name: str):
        self.tmp_path, self.name, self.procs = tmp_path, name, []

    def start(self, commands: list[list[str]]) -> list[subprocess.Popen]:
        """One process per command; TF_CONFIG describes them all, unless there is only one."""
        ports = free_ports(len(commands))
        for index, command in enumerate(commands):
            out = open(self.tmp_path / f"{self.name}-{index}.out", "w")
            err = open(self.tmp_path / f"{self.name}-{index}.err", "w")
            env = environment(self.tmp_path, **({"TF_CONFIG": tf_config(ports, index)} if len(commands) > 1 else {}))
            self.procs.append(subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True))
        return self.procs

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name}: worker {self.procs.index(proc)} still running after {timeout:.0f} s: {self.stderr(self.procs.index(proc))[-2000:]}")

    def stderr(self, index: int) -> str:
        return (self.tmp_path / f"{self.name}-{index}.err").read_text()

    def stdout(self, index: int) -> str:
        return (self.tmp_path / f"{self.name}-{index}.out").read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and nothing else
                proc.wait()


@pytest.fixture
def tiny(tmp_path, librispeech_root):
    """4 real utterances in batches of 3: the second batch holds 1 utterance, so the second
    worker's part of it is empty."""
    return recipe(tmp_path, librispeech_root, list(UTTERANCES), model={"num_units": 16, "num_layers": 1},
                  data={"batch_size": 3}, train={"checkpoint_every": 1, "warmup_steps": 2})


def record_losses(cluster: Cluster, folder: Path, exp: Path, workers: int, *overrides: str) -> list[list[list[float]]]:
    """Trains with `workers` processes (1: the default strategy) -> each process's per-step losses."""
    strategy = ["train.strategy=multi_worker"] if workers > 1 else []
    command = [sys.executable, "-c", RECORD_LOSSES, str(folder), str(exp), *strategy, *overrides]
    procs = cluster.start([command] * workers)
    for index, proc in enumerate(procs):
        assert cluster.wait(proc, STARTUP_S) == 0, cluster.stderr(index)[-3000:]
    return [json.loads(cluster.stdout(i).strip().splitlines()[-1]) for i in range(workers)]


def test_two_workers_train_the_steps_of_one_with_the_same_global_batch(tiny, tmp_path):
    steps = ["train.max_steps=3"]  # epochs of 2 batches (3 + 1 utterances), the first ending in a dev evaluation on the chief
    with Cluster(tmp_path, "single") as single:
        (one,) = record_losses(single, tiny, tmp_path / "single", 1, *steps)
    with Cluster(tmp_path, "pair") as pair:
        chief, worker = record_losses(pair, tiny, tmp_path / "pair", 2, *steps)
    assert len(one) == len(chief) == len(worker) == 3
    assert sorted(len(x) for x in one[:2]) == [1, 3] and sorted(len(x) for x in worker[:2]) == [0, 1]  # parts of 2 + 1 and 1 + 0
    for step, (a, b, c) in enumerate(zip(one, chief, worker)):
        np.testing.assert_allclose(sorted(b + c), a, rtol=1e-4, err_msg=f"step {step + 1}")
    # the chief wrote the run; the worker wrote nothing
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "pair" / "checkpoints")] == [p.name for p in checkpoint.list_checkpoints(tmp_path / "single" / "checkpoints")]
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    pair_weights = np.load(tmp_path / "pair" / "model" / "weights.npz")
    single_weights = np.load(tmp_path / "single" / "model" / "weights.npz")
    for key in single_weights.files:
        np.testing.assert_allclose(pair_weights[key], single_weights[key], rtol=1e-3, atol=1e-5, err_msg=key)
    assert "[worker 1]" in pair.stderr(1) and "dev loss" not in pair.stderr(1)
    assert "dev loss" in (tmp_path / "pair" / "train.log").read_text()


@pytest.mark.slow
def test_a_lost_worker_stops_the_chief_in_one_line_and_resume_continues(tiny, tmp_path):
    """Worker 1 is killed once the chief wrote a checkpoint: the chief stops with a one-line error
    (the coordination service misses worker 1's heartbeats), and both resume from its checkpoint."""
    exp = tmp_path / "exp"
    train = [sys.executable, "-m", "asr.cli", "train", str(tiny), "--exp-dir", str(exp), "--set", "train.strategy=multi_worker",
             "--set", "data.dev_manifest=''"]  # no dev evaluation: faster
    with Cluster(tmp_path, "killed") as cluster:
        chief, worker = cluster.start([train + ["--set", "train.max_steps=1000"]] * 2)
        deadline = time.time() + STARTUP_S
        while not checkpoint.list_checkpoints(exp / "checkpoints") and time.time() < deadline and chief.poll() is None:
            time.sleep(0.2)
        assert checkpoint.list_checkpoints(exp / "checkpoints"), cluster.stderr(0)[-3000:]
        os.killpg(worker.pid, signal.SIGKILL)
        assert cluster.wait(chief, LOST_WORKER_S) == 2
    last = cluster.stderr(0).strip().splitlines()[-1]
    assert "worker 0 lost the cluster" in last and "--resume" in last and "ckpt-" in last, cluster.stderr(0)[-3000:]
    assert "Traceback" not in cluster.stderr(0)
    newest = checkpoint.list_checkpoints(exp / "checkpoints")[-1]
    step = json.loads((newest / "state.json").read_text())["step"]

    with Cluster(tmp_path, "resumed") as cluster:
        procs = cluster.start([train + ["--resume", "--set", f"train.max_steps={step + 2}"]] * 2)
        for index, proc in enumerate(procs):
            assert cluster.wait(proc, STARTUP_S) == 0, cluster.stderr(index)[-3000:]
    assert f"resumed from {newest.name} at step {step}" in cluster.stderr(0)
    assert f"resumed from {newest.name} at step {step}" in cluster.stderr(1)  # the worker read the chief's checkpoint
    assert checkpoint.list_checkpoints(exp / "checkpoints")[-1].name == f"ckpt-{step + 2:08d}"


# --- without a cluster ---------------------------------------------------------------------------


def test_each_worker_gets_its_part_of_every_batch():
    plan = [[5, 0, 3], [1, 2, 4], [6]]
    parts = [shard_batches(plan, Shard(first=i, count=1, total=2)) for i in range(2)]
    assert parts[0] == [(0, [5, 0]), (1, [1, 2]), (2, [6])]
    assert parts[1] == [(0, [3]), (1, [4]), (2, [])]
    two_local = shard_batches(plan, Shard(first=0, count=2, total=2))  # one worker with two replicas
    assert two_local == [(0, [5, 0]), (0, [3]), (1, [1, 2]), (1, [4]), (2, [6]), (2, [])]
    assert shard_batches(plan, None) == list(enumerate(plan))


@pytest.mark.parametrize(
    "value, expected",
    [
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}', 1),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}', 1),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}', 0),
        (None, "needs the cluster in the environment variable TF_CONFIG"),
        ("{cluster", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', 'needs a "cluster" and a "task"'),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "job 'ps' is not supported"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task.index must be 0 to 0"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task.type 'chief' is not a job"),
    ],
)
def test_tf_config_is_checked(value, expected):
    environ = {} if value is None else {"TF_CONFIG": value}
    if isinstance(expected, int):
        assert worker_index(environ) == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            worker_index(environ)


def test_multi_worker_without_or_with_a_bad_tf_config_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    train = ["train", str(tiny), "--exp-dir", str(tmp_path / "exp"), "--set", "train.strategy=multi_worker"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TF_CONFIG" in err and "mirrored" in err
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}')
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task.index must be 0 to 0" in err
    assert not (tmp_path / "exp").exists()
