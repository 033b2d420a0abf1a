"""Training a CTC acoustic model: the training loop, checkpoints, dev evaluation; run_recipe() for any task."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from asr import checkpoint, corpora, ctc, evaluate, finetune, mnist
from asr.config import Config, to_dict
from asr.data import Shard, Utterance, filter_utterances, make_dataset
from asr.distribute import LOST_PEER_ERRORS, all_equal, any_worker, distribute_batches, is_chief, is_multi_worker, lost_peer, make_strategy, worker_index
from asr.decode import DecodeOptions, Decoder, resolve
from asr.errors import ConfigError, DataError, ExperimentError
from asr.features import FeatureStats, compute_stats
from asr.io import atomic_write_text, check_output_dir, make_dirs, remove_stale_temporaries
from asr.model import AcousticModel, output_lengths
from asr.optim import decay_steps, make_optimizer
from asr.text import Vocabulary

log = logging.getLogger("asr.train")
NUM_EXAMPLES = 3  # dev transcripts printed at each epoch's end
RUN_OUTPUTS = ("checkpoints", "model", "epochs", "tensorboard", "train.log", "summary.json", "config.json", "stats.json")  # one run's; corpus/ and data/ are shared


def feature_cache_dir() -> Path:
    """Where computed features are cached across runs ($ASR_CACHE_DIR, else ~/.cache/asr/features)."""
    return Path(os.environ.get("ASR_CACHE_DIR", Path.home() / ".cache" / "asr" / "features"))


# ----------------------------------------------------------------------------- data


def feature_stats(config: Config, train_utts, exp_dir: Path, save: bool = True) -> FeatureStats | None:
    """Global mean/std of the features: the train.init_from model's (asr.finetune.model_stats) or
    computed over the training set; found once, kept in exp_dir (unless not save: a worker other
    than the chief) and read from there by a resumed run."""
    if config.features.normalization != "global":
        return None
    path = exp_dir / "stats.json"
    if path.is_file():
        return FeatureStats.load(path)
    stats = finetune.model_stats(config)
    if stats is None:
        log.info("computing feature statistics over %d training utterances", len(train_utts))
        stats = compute_stats([u.audio_filepath for u in train_utts], config.features, cache_dir=feature_cache_dir())
    if save:
        stats.save(path)
    return stats


FILTER_HINTS = {  # what to change when filter_utterances drops every utterance for one reason
    "longer than max_duration": "raise data.max_duration",
    "characters outside the vocabulary": "normalize the transcripts or extend text.alphabet",
    "too short for CTC": "lower model.frame_stride",
}


CHECK_DATA_HINT = "asr check-data MANIFEST --recipe RECIPE_DIR lists every skipped utterance and why"


def filter_options(config: Config, training: bool = True) -> dict:
    """The keyword arguments of filter_utterances / check_utterances that training uses for a
    config: the same for the training loop, check_trainable and `asr check-data`."""
    return dict(
        feature_cfg=config.features,
        output_length_fn=lambda frames: output_lengths(frames, config.model.frame_stride),
        max_duration=config.data.max_duration if training else None,
        fastest=max(config.augment.speeds) if training and config.augment.active else 1.0,
    )


def check_trainable(config: Config, train_utts, dev_utts, vocab: Vocabulary) -> int:
    """The number of training batches in an epoch; DataError saying why, when the data filters
    (make_dataset's) leave nothing to train on or no dev utterance to score, rather than training
    0 steps and saving an untrained model."""
    kept, skipped = filter_utterances(train_utts, vocab, **filter_options(config, training=True))
    if not kept:
        raise DataError(f"nothing to train on: {_why_filtered(len(train_utts), skipped)}")
    steps_per_epoch = math.ceil(len(kept) / config.data.batch_size)  # as plan_batches cuts them
    if dev_utts:
        kept, skipped = filter_utterances(dev_utts, vocab, **filter_options(config, training=False))
        if not kept:
            raise DataError(f"no dev utterance can be scored: {_why_filtered(len(dev_utts), skipped)}")
    return steps_per_epoch


def _why_filtered(total: int, skipped) -> str:
    kinds = collections.Counter(reason.split(" (")[0].split(":")[0] for _, reason in skipped)
    parts = [f"{n} {kind}" + (f" ({FILTER_HINTS[kind]})" if kind in FILTER_HINTS else "") for kind, n in kinds.most_common()]
    example = skipped[0] if skipped else ("", "")
    return f"all {total} utterances were filtered out: {'; '.join(parts)}; e.g. {example[0]}: {example[1]} ({CHECK_DATA_HINT})"


def build_dataset(config: Config, utts, vocab, stats, training: bool, epoch: int = 0, start_batch: int = 0, shard: Shard | None = None):
    dataset, skipped = make_dataset(
        utts,
        vocab,
        config.features,
        stats,
        batch_size=config.data.batch_size,
        bucket_width=config.data.bucket_width,
        training=training,
        seed=config.train.seed,
        epoch=epoch,
        cache_dir=feature_cache_dir(),
        output_length_fn=lambda frames: output_lengths(frames, config.model.frame_stride),
        max_duration=config.data.max_duration if training else None,
        num_parallel_calls=config.data.num_parallel_calls,
        start_batch=start_batch,
        augment=config.augment,
        shard=shard,
    )
    return dataset, skipped


# ----------------------------------------------------------------------------- model


def build_model(config: Config, vocab: Vocabulary) -> AcousticModel:
    model = AcousticModel(config.model, config.features.num_features, vocab.size, seed=config.train.seed, precision=config.train.precision)
    model.build_weights()
    return model


# ----------------------------------------------------------------------------- steps


def compute_loss(model, batch, training: bool, dropout_seed=None):
    """Per-utterance CTC loss [B] on true lengths, and the logits [B, T', V] with their lengths [B]
    (float32 logits and loss in every precision). dropout_seed: see AcousticModel.call."""
    logits, lengths = model(batch["features"], batch["feature_lengths"], training=training, dropout_seed=dropout_seed)
    losses = ctc.ctc_loss(batch["labels"], batch["label_lengths"], logits, lengths)
    return losses, logits, lengths


@dataclasses.dataclass
class LossScale:
    """Dynamic loss scaling for float16 (the rule of keras.optimizers.LossScaleOptimizer): the
    loss is multiplied by `scale` so that small gradients do not underflow float16, and the
    gradients are divided by it again before clipping; a step whose gradients are not finite is
    skipped and halves the scale, GROWTH_STEPS finite steps in a row double it. Kept here rather
    than in a LossScaleOptimizer because Steps skips non-finite steps before the optimizer sees
    them, and so that the scale is saved with the training state (exact resume)."""

    scale: float = 2.0**15
    finite_steps: int = 0  # finite steps since the scale last changed
    GROWTH_STEPS = 2000

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale, self.finite_steps = max(self.scale / 2, 1.0), 0
        elif self.finite_steps + 1 >= self.GROWTH_STEPS:
            self.scale, self.finite_steps = self.scale * 2, 0
        else:
            self.finite_steps += 1


class Steps:
    """The compiled training and evaluation steps of one model under one tf.distribute strategy.

    A step is split in two functions, gradients then update, so that a batch whose loss or
    gradients are not finite is skipped without touching the weights or the optimizer's state.
    Gradients are summed over replicas first and then clipped by their global norm, so that a
    step on N devices is the same step as on one. loss_scale (float16 only): see LossScale.

    Dropout masks are keyed by (replica, optimizer step) (AcousticModel's dropout_seed): the
    optimizer's step counter is saved in every checkpoint, so a resumed run draws the masks the
    uninterrupted run drew, and nothing else about the randomness needs saving.

    weight_noise > 0 (Graves, 2013): the gradients of a step are those of the weights plus
    Gaussian noise of that standard deviation, drawn afresh each step (keyed by (noise_seed,
    optimizer step), so a resumed run draws the same noise), the same on every replica; the
    weights are restored exactly before the update is applied to them.
    """

    def __init__(self, model, optimizer, strategy, clip_norm: float, loss_scale: LossScale | None = None,
                 weight_noise: float = 0.0, noise_seed: int = 0):
        self.model, self.optimizer, self.strategy, self.clip_norm = model, optimizer, strategy, clip_norm
        self.loss_scale = loss_scale
        self.weight_noise, self.noise_seed = weight_noise, noise_seed
        self._grads = tf.function(self._grads_fn, reduce_retracing=True)
        self._apply = tf.function(self._apply_fn, reduce_retracing=True)
        self._eval = tf.function(self._eval_fn, reduce_retracing=True)

    def _replica_grads(self, batch, scale):
        ctx = tf.distribute.get_replica_context()
        local = tf.cast(tf.shape(batch["labels"])[0], tf.float32)
        global_batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        dropout_seed = tf.stack([replica, tf.cast(self.optimizer.iterations, tf.int64)])
        with tf.GradientTape() as tape:
            losses, _, _ = compute_loss(self.model, batch, training=True, dropout_seed=dropout_seed)
            loss = tf.reduce_sum(tf.where(tf.math.is_finite(losses), losses, 0.0)) / global_batch
            if self.loss_scale is not None:
                loss = loss * scale
        # counted over every replica of every worker, so that all of them skip the same batches
        not_finite = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(~tf.math.is_finite(losses), tf.float32)))
        return tape.gradient(loss, self.model.trainable_variables), losses, not_finite

    def _add_weight_noise(self) -> list[tf.Tensor]:
        """Adds this step's weight noise to every trainable weight; returns their noiseless values."""
        variables = self.model.trainable_variables
        saved = [tf.identity(v) for v in variables]
        step_seed = tf.stack([tf.constant(self.noise_seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        for index, v in enumerate(variables):
            seed = tf.random.experimental.stateless_fold_in(step_seed, index)
            v.assign_add(tf.random.stateless_normal(v.shape, seed, stddev=self.weight_noise, dtype=v.dtype))
        return saved

    def _grads_fn(self, batch, scale):
        """-> (gradients summed over replicas, unscaled and clipped, per-replica losses [b], all finite?)."""
        saved = self._add_weight_noise() if self.weight_noise > 0 else None
        grads, losses, not_finite = self.strategy.run(self._replica_grads, args=(batch, scale))
        if saved is not None:
            for v, value in zip(self.model.trainable_variables, saved):
                v.assign(value)
        grads = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        if self.loss_scale is not None:
            grads = [g / scale for g in grads]
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return grads, losses, tf.logical_and(finite, self.strategy.experimental_local_results(not_finite)[0] == 0)

    def _apply_fn(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def _eval_fn(self, batch):
        def replica_eval(batch):
            losses, logits, lengths = compute_loss(self.model, batch, training=False)
            return losses, tf.nn.log_softmax(logits), lengths

        return self.strategy.run(replica_eval, args=(batch,))

    def _local(self, value):
        return [t.numpy() for t in self.strategy.experimental_local_results(value)]

    def train_step(self, batch) -> tuple[np.ndarray, bool]:
        """One update; returns the per-utterance losses and whether the batch was applied."""
        scale = tf.constant(self.loss_scale.scale if self.loss_scale is not None else 1.0, tf.float32)
        grads, losses, finite = self._grads(batch, scale)
        ok = bool(finite)
        if self.loss_scale is not None:
            self.loss_scale.update(ok)
        if ok:
            self._apply(grads)
        return np.concatenate(self._local(losses)), ok

    def eval_step(self, batch):
        """Per-utterance losses [B], log-probabilities [B, T', V] and output lengths [B] (numpy).
        batch: distributed (its parts on the local replicas), or not: a whole batch that each
        local replica evaluates (a cluster's chief evaluating alone), of which one result is kept."""
        losses, logp, lengths = self._eval(batch)
        kept = None if isinstance(batch["ids"], tf.distribute.DistributedValues) else 1
        loss_parts, logp_parts, len_parts = self._local(losses)[:kept], self._local(logp)[:kept], self._local(lengths)[:kept]
        width = max(p.shape[1] for p in logp_parts)
        logp = np.concatenate([np.pad(p, [(0, 0), (0, width - p.shape[1]), (0, 0)]) for p in logp_parts])
        return np.concatenate(loss_parts), logp, np.concatenate(len_parts)


def batch_ids(strategy, batch) -> list[str]:
    return [i.decode() for part in strategy.experimental_local_results(batch["ids"]) for i in part.numpy()]


# ----------------------------------------------------------------------------- evaluation


def decode_dataset(steps: Steps, dataset, decoder: Decoder, utts_by_id: dict):
    """Runs the model over a dataset and decodes it as `asr evaluate` does (asr.decode.Decoder)
    -> (mean loss, list of result dicts for evaluate.build_report)."""
    results, losses = [], []
    for batch in dataset:
        ids = batch_ids(steps.strategy, batch)
        loss, logp, lengths = steps.eval_step(batch)
        losses.extend(loss.tolist())
        for utt_id, hyp in zip(ids, decoder.decode(logp, lengths)):
            results.append(evaluate.utterance_result(utts_by_id[utt_id], hyp))
    finite = [x for x in losses if math.isfinite(x)]
    return (float(np.mean(finite)) if finite else float("nan")), results


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer updates applied
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best: dict | None = None  # the best dev record so far (by dev_score and train.keep_best_by)
    epochs_without_improvement: int = 0
    skipped_batches: int = 0  # batches skipped for a non-finite loss or gradient
    train_seconds: float = 0.0  # wall time spent in training steps and dev evaluation, over all resumes
    input_wait_seconds: float = 0.0  # of which the training steps waited for the input pipeline
    history: list = dataclasses.field(default_factory=list)  # per-epoch dev results
    run_id: str = ""  # names the run in its checkpoints: pruning removes only the run's own
    loss_scale: dict | None = None  # LossScale's fields (train.precision mixed_float16 only)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def new_run_id() -> str:
    """A run's id: its start time and 6 random hex digits, e.g. 20250101-120000-3fa2c1."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def dev_score(record: dict | None, by: str = "wer") -> tuple:
    """Sort key of dev results, lower is better; by (train.keep_best_by) names the metric first.

    by "wer": the WER, then the CER and the loss break ties. On the CTC plateau the WER says
    nothing: empty transcripts score exactly 100% and the first garbled ones score more, so early
    stopping on the WER alone would stop a run that is learning, and keep its empty first epoch.
    Results with a WER of 100% or more therefore rank after every result below 100%, and among
    themselves by CER. by "cer": the CER, then the WER and the loss (the CER falls from the first
    epoch on, plateau or not).
    """
    if record is None:
        return (math.inf,)
    loss = record["loss"] if math.isfinite(record["loss"]) else math.inf
    if by == "cer":
        return (0, record["cer"], record["wer"], loss)
    if record["wer"] >= 1.0:
        return (1, record["cer"], record["wer"], loss)
    return (0, record["wer"], record["cer"], loss)


ModelFactory = Callable[[Config, Vocabulary], keras.Model]  # -> a model with its weights built


class Trainer:
    """Owns one run: model, optimizer, data and state; `run()` trains until done.

    train_utts, dev_utts: the prepared corpus (asr.corpora.prepare); dev_utts may be empty.
    model_factory(config, vocab) builds the model, with its weights, under the run's
    tf.distribute strategy: any keras.Model called as AcousticModel is, (features [B, T, F],
    feature_lengths [B], training) -> (logits [B, T', V], output lengths [B]), and having
    num_parameters(); build_model by default.

    strategy: the run's tf.distribute strategy (make_strategy(config.train.strategy) by default).
    On a cluster (multi_worker) only the chief writes into exp_dir; the other workers read the
    checkpoint to resume from there (exp_dir must be a folder they all see), train their parts of
    each batch and leave the dev evaluation and every file to the chief.
    """

    def __init__(self, config: Config, exp_dir: Path, train_utts: Sequence[Utterance], dev_utts: Sequence[Utterance],
                 resume: bool = False, model_factory: ModelFactory | None = None, strategy: tf.distribute.Strategy | None = None):
        self.exp_dir = Path(exp_dir)
        self.strategy = strategy or make_strategy(config.train.strategy)
        self.chief = is_chief(self.strategy)
        self.ckpt_root = self.exp_dir / "checkpoints"
        if self.chief:
            claim_exp_dir(self.exp_dir, resume, overwrite=False)
            make_dirs(self.exp_dir)
            for folder in (self.exp_dir, self.ckpt_root, self.exp_dir / "epochs"):
                remove_stale_temporaries(folder)  # left by a killed run
        found = checkpoint.find_checkpoint(self.ckpt_root) if resume else None
        if found is not None:
            check_resumable(found[1], config, found[0])
        elif resume:
            log.info("no checkpoint in %s: starting a new run", self.ckpt_root)
        self.config = config
        keras.utils.set_random_seed(config.train.seed)
        self.vocab = Vocabulary(config.text.alphabet)
        self.train_utts, self.dev_utts = list(train_utts), list(dev_utts)
        self.steps_per_epoch = check_trainable(config, self.train_utts, self.dev_utts, self.vocab)
        with self._writing("the feature statistics"):
            self.stats = feature_stats(config, self.train_utts, self.exp_dir, save=self.chief)
        with self.strategy.scope():
            self.model = (model_factory or build_model)(config, self.vocab)
            if found is None and config.train.init_from:
                finetune.init_weights(config, self.model)
            self.optimizer = make_optimizer(config, self.model, self.steps_per_epoch)
        loss_scale = LossScale() if config.train.precision == "mixed_float16" else None
        self.steps = Steps(self.model, self.optimizer, self.strategy, config.train.clip_norm, loss_scale,
                           config.train.weight_noise, config.train.seed)
        self.state = TrainState(run_id=new_run_id())
        if found is not None:
            path = found[0]
            self.state = TrainState.from_json(checkpoint.restore_checkpoint(path, self.model, self.optimizer))
            self.state.run_id = self.state.run_id or new_run_id()  # a checkpoint from before runs had ids
            if loss_scale is not None and self.state.loss_scale:
                self.steps.loss_scale = LossScale(**self.state.loss_scale)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path.name, self.state.step, self.state.epoch + 1, self.state.batch_in_epoch)
        if is_multi_worker(self.strategy) and not all_equal(self.strategy, self.state.step):
            raise ExperimentError(
                f"the workers start from different steps (this one from step {self.state.step}): give every worker "
                f"the same --exp-dir, on storage they all see, and the same --resume"
            )
        self.writer = tf.summary.create_file_writer(str(self.exp_dir / "tensorboard")) if self.chief else tf.summary.create_noop_writer()
        self.dev_by_id = {u.id: u for u in self.dev_utts}
        if self.chief:
            with self._writing("config.json"):
                atomic_write_text(self.exp_dir / "config.json", json.dumps(to_dict(self.config), indent=2) + "\n")

    @contextlib.contextmanager
    def _writing(self, what: str):
        """Turns a failed write (a full disk, a lost mount) into a one-line ExperimentError that
        says what is safe: every write is atomic, so the files written before are intact."""
        try:
            yield
        except OSError as exc:
            done = checkpoint.list_checkpoints(self.ckpt_root)
            safe = f"the newest checkpoint, {done[-1]}, is intact: fix the cause and continue with --resume" if done else "no checkpoint was written yet"
            raise ExperimentError(f"could not write {what} in {self.exp_dir} ({exc.strerror or exc}); {safe}") from exc

    def save(self) -> None:
        """Writes a checkpoint (the chief only: every worker holds the same weights)."""
        if not self.chief:
            return
        if self.steps.loss_scale is not None:
            self.state.loss_scale = dataclasses.asdict(self.steps.loss_scale)
        with self._writing(f"checkpoint ckpt-{self.state.step:08d}"):
            checkpoint.save_checkpoint(
                self.ckpt_root, self.model, self.optimizer, self.state.to_json(), self.config, self.vocab, self.stats
            )

    def save_model(self, folder: Path) -> None:
        if not self.chief:
            return
        with self._writing(f"the model directory {folder.name}"):
            checkpoint.save_model_dir(folder, self.model, self.config, self.vocab, self.stats)

    def done(self) -> bool:
        t = self.config.train
        return (t.max_steps and self.state.step >= t.max_steps) or self.state.epoch >= t.epochs

    def run(self) -> dict:
        t = self.config.train
        log.info(
            "model: %s, %d parameters, %s, %s loop; %d training and %d dev utterances, %d steps an epoch; learning rate decays over %d steps after %d of warm-up",
            self.config.model.cell, self.model.num_parameters(), t.precision, self.model.recurrent_loop(), len(self.train_utts), len(self.dev_utts),
            self.steps_per_epoch, decay_steps(t, self.steps_per_epoch), t.warmup_steps,
        )
        while not self.done():
            stopped_early = self.train_one_epoch()
            if stopped_early:
                break
        self.save()
        if not (self.exp_dir / "model").exists():
            self.save_model(self.exp_dir / "model")
        return self.write_summary()

    def write_summary(self) -> dict:
        """The run so far as exp_dir/summary.json (steps, time, best dev scores, the recurrent loop
        that ran (native or graph, see asr.rnn.native), per-epoch history)."""
        best = self.state.best or {}
        summary = dict(
            steps=self.state.step, train_seconds=round(self.state.train_seconds, 1),
            best_dev_wer=best.get("wer"), best_dev_cer=best.get("cer"), keep_best_by=self.config.train.keep_best_by,
            recurrent_loop=self.model.recurrent_loop(), skipped_batches=self.state.skipped_batches, history=self.state.history,
        )
        if self.chief:
            with self._writing("summary.json"):
                atomic_write_text(self.exp_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def train_one_epoch(self) -> bool:
        """Trains over the rest of the current epoch; returns True when early stopping fires."""
        start = self.state.batch_in_epoch
        skipped = []

        def epoch_batches(shard: Shard | None):
            dataset, skipped[:] = build_dataset(self.config, self.train_utts, self.vocab, self.stats, True, self.state.epoch, start, shard)
            return dataset

        dist = distribute_batches(self.strategy, epoch_batches)
        if start == 0 and skipped:
            log.info("epoch %d: %d utterances filtered out: %s (%s)", self.state.epoch + 1, len(skipped), format_skipped(skipped), CHECK_DATA_HINT)
        total = self.steps_per_epoch
        waited, tick = 0.0, time.time()
        batches = iter(dist)
        with tqdm(total=total, initial=self.state.batch_in_epoch, desc=f"epoch {self.state.epoch + 1}", unit="batch", dynamic_ncols=True) as bar:
            while True:
                before = time.time()
                batch = next(batches, None)  # time spent here is the step waiting for its input
                waited += time.time() - before
                if batch is None:
                    break
                self._train_batch(batch, bar)
                self.state.train_seconds += time.time() - tick
                tick = time.time()
                if self.config.train.max_steps and self.state.step >= self.config.train.max_steps:
                    break
        self.state.input_wait_seconds += waited
        if self.config.train.max_steps and self.state.step >= self.config.train.max_steps and self.state.batch_in_epoch < (total or 0):
            return False  # stopped mid-epoch on max_steps: no epoch-end evaluation
        return self.end_epoch()

    def _train_batch(self, batch, bar) -> None:
        losses, applied = self.steps.train_step(batch)
        self.state.batch_in_epoch += 1
        if applied:
            self.state.step += 1
        else:
            self.state.skipped_batches += 1
            bad = [i for i, x in zip(batch_ids(self.strategy, batch), losses) if not math.isfinite(x)]
            if not bad and self.steps.loss_scale is not None:  # float16 overflow: expected while the scale settles
                log.info("float16 gradients overflowed: batch skipped, loss scale lowered to %g", self.steps.loss_scale.scale)
            else:
                log.warning("skipped a batch with a non-finite loss or gradient (utterances: %s)", ", ".join(bad) or "gradient only")
        lr = float(self.optimizer.learning_rate)
        finite = losses[np.isfinite(losses)]  # none in a worker's empty part of a short batch
        bar.set_postfix(loss=f"{finite.mean():.2f}" if finite.size else "-", lr=f"{lr:.1e}", step=self.state.step)
        bar.update(1)
        if applied and self.chief and self.state.step % self.config.train.log_every == 0:
            with self.writer.as_default(step=self.state.step):
                tf.summary.scalar("train/loss", float(np.mean(losses)))
                tf.summary.scalar("train/learning_rate", lr)
        if applied and self.state.step % self.config.train.checkpoint_every == 0:
            self.save()

    def end_epoch(self) -> bool:
        """Dev evaluation, best-model export, checkpoint; returns True when early stopping fires."""
        epoch = self.state.epoch + 1
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        stop = False
        if self.dev_utts and self.chief:
            record = self.evaluate_dev(epoch)
            by = self.config.train.keep_best_by
            if dev_score(record, by) < dev_score(self.state.best, by):
                self.state.best = record
                self.state.epochs_without_improvement = 0
                self.save_model(self.exp_dir / "model")
                log.info("new best dev score: model saved to %s", self.exp_dir / "model")
            else:
                self.state.epochs_without_improvement += 1
                patience = self.config.train.patience
                stop = bool(patience) and self.state.epochs_without_improvement >= patience
                if stop:
                    log.info("early stopping: no better dev score for %d epochs", patience)
        else:
            self.save_model(self.exp_dir / "model")
        self.keep_epoch_model(epoch)
        self.save()
        if is_multi_worker(self.strategy):
            stop = any_worker(self.strategy, stop)  # the chief's decision, which the workers wait for here
        return stop

    def keep_epoch_model(self, epoch: int) -> None:
        """Keeps this epoch's weights as exp_dir/epochs/epoch-NNN (the last train.keep_epochs of them)."""
        keep = self.config.train.keep_epochs
        if not keep or not self.chief:
            return
        folder = self.exp_dir / "epochs"
        self.save_model(folder / f"epoch-{epoch:03d}")
        for stale in sorted(folder.glob("epoch-*"))[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)

    def evaluate_dev(self, epoch: int) -> dict:
        tick = time.time()
        dataset, _ = build_dataset(self.config, self.dev_utts, self.vocab, self.stats, training=False)
        if not is_multi_worker(self.strategy):  # a cluster's chief evaluates alone: no distributed dataset, whose iterator is a collective op
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        decoder = Decoder(self.vocab, resolve(DecodeOptions(), self.config.decode.beam_width))  # the model's own beam
        dev_loss, results = decode_dataset(self.steps, dataset, decoder, self.dev_by_id)
        rates = evaluate.error_rates([r["reference"] for r in results], [r["hypothesis"] for r in results])
        self.state.train_seconds += time.time() - tick
        record = dict(
            epoch=epoch, step=self.state.step, loss=dev_loss, wer=rates["wer"], cer=rates["cer"],
            minutes=round(self.state.train_seconds / 60, 2),
            input_wait=round(self.state.input_wait_seconds / max(self.state.train_seconds, 1e-9), 4),
        )
        self.state.history.append(record)
        with self.writer.as_default(step=self.state.step):
            for key in ("loss", "wer", "cer"):
                tf.summary.scalar(f"dev/{key}", record[key])
        log.info(
            "epoch %d step %d (%.1f min, %.1f%% of it waiting for input): dev loss %.3f WER %.2f%% CER %.2f%%",
            epoch, self.state.step, record["minutes"], 100 * record["input_wait"], dev_loss, 100 * rates["wer"], 100 * rates["cer"],
        )
        for r in results[:NUM_EXAMPLES]:
            log.info("  %s\n    ref: %s\n    hyp: %s", r["id"], r["reference"], r["hypothesis"])
        return record


# ----------------------------------------------------------------------------- experiment folders


def previous_run(exp_dir: Path) -> str | None:
    """What in exp_dir shows that a run trained there (checkpoints, a model), or None."""
    checkpoints = checkpoint.list_checkpoints(exp_dir / "checkpoints")
    if checkpoints:
        return f"checkpoints up to {checkpoints[-1].name}"
    for name in ("model", "epochs"):
        if (exp_dir / name).exists():
            return f"{name}/"
    return None


def claim_exp_dir(exp_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Makes exp_dir ready for a run; returns the folder --overwrite moved the previous run to.

    A run never writes over another run's work. resume continues the checkpoints in exp_dir.
    Otherwise a folder holding another run is an ExperimentError, unless overwrite: that run's
    outputs (RUN_OUTPUTS) are then moved into exp_dir/previous-<time>/, never deleted, and the
    downloaded corpus and prepared manifests stay where they are.
    """
    exp_dir = Path(exp_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the experiment folder and --overwrite moves it aside: give only one")
    if resume and checkpoint.list_checkpoints(exp_dir / "checkpoints"):
        return None
    found = previous_run(exp_dir)
    if found is None:
        return None
    if resume:
        raise ExperimentError(f"{exp_dir} has no checkpoint to resume from but holds another run ({found}): train in a new --exp-dir, or pass --overwrite instead of --resume to move it aside")
    if not overwrite:
        raise ExperimentError(
            f"{exp_dir} holds another run ({found}): continue it with --resume, train in a new --exp-dir, "
            f"or pass --overwrite to move it aside into {exp_dir / 'previous-<time>'}/"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = exp_dir / f"previous-{stamp}", 1
    while aside.exists():
        aside, n = exp_dir / f"previous-{stamp}-{n}", n + 1
    make_dirs(aside)
    for name in RUN_OUTPUTS:
        if (exp_dir / name).exists():
            os.replace(exp_dir / name, aside / name)
    return aside


def check_resumable(saved: Config, config: Config, path: Path) -> None:
    """A run resumes with the recipe given now (more epochs, another learning rate...), but the
    sections that shape the weights, features and labels must be those of the checkpoint."""
    for section in ("features", "text", "model", "task"):
        if getattr(saved, section) != getattr(config, section):
            raise ConfigError(
                f"cannot resume from {path}: config section '{section}' differs from the checkpoint's "
                f"(use another --exp-dir for a new model)"
            )


def format_skipped(skipped, most: int = 10) -> str:
    shown = ", ".join(f"{i} ({why})" for i, why in skipped[:most])
    return shown + (f" and {len(skipped) - most} more" if len(skipped) > most else "")


def setup_logging(exp_dir: Path | None, prefix: str = "") -> list[logging.Handler]:
    """Logs the "asr" loggers to the terminal and to exp_dir/train.log (exp_dir None: the terminal
    only; prefix: what each line starts with); returns the handlers, which close_logging()
    removes when the run ends (each run logs into its own folder)."""
    root = logging.getLogger("asr")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if exp_dir is not None:
        make_dirs(exp_dir)
        handlers.append(logging.FileHandler(exp_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    return handlers


def close_logging(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        logging.getLogger("asr").removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def lost_worker_is_one_line(strategy: tf.distribute.Strategy, ckpt_root: Path):
    """Turns the error of a collective op whose peer stopped (a worker of the cluster died, or
    stopped on an error of its own) into a one-line ExperimentError that says how to continue."""
    try:
        yield
    except LOST_PEER_ERRORS as exc:
        if not is_multi_worker(strategy):
            raise
        done = checkpoint.list_checkpoints(ckpt_root)
        where = f"the newest checkpoint is {done[-1].name}" if done else "no checkpoint was written yet"
        raise ExperimentError(f"worker {worker_index()} lost the cluster ({lost_peer(exc)}); {where}: start every worker again with --resume") from None


def train(config: Config, exp_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains the recipe's model in exp_dir (checkpoints/, model/, tensorboard/, train.log).

    resume: continue from the newest intact checkpoint in exp_dir. overwrite: move another run
    found in exp_dir aside (claim_exp_dir) instead of refusing to start.
    train.strategy multi_worker: each worker of the TF_CONFIG cluster runs train() with the same
    arguments; the chief (asr.distribute.worker_index 0) claims and writes exp_dir, the other
    workers log to the terminal only (Trainer).
    """
    exp_dir = Path(exp_dir)
    check_output_dir(exp_dir, "experiment folder (--exp-dir)")
    corpora.check_corpus(config)  # before anything is written: a mistake leaves no folder behind
    strategy = make_strategy(config.train.strategy)  # before TensorFlow runs anything (multi_worker)
    chief = is_chief(strategy)
    aside = claim_exp_dir(exp_dir, resume, overwrite) if chief else None
    handlers = setup_logging(exp_dir if chief else None, prefix="" if chief else f"[worker {worker_index()}] ")
    try:
        with lost_worker_is_one_line(strategy, exp_dir / "checkpoints"):
            if aside is not None:
                log.info("moved the previous run in %s aside to %s", exp_dir, aside)
            if chief:
                train_utts, dev_utts = corpora.prepare(config, exp_dir)
            if is_multi_worker(strategy):
                any_worker(strategy, False)  # the workers wait here for the chief to prepare (download) the corpus
            if not chief:
                train_utts, dev_utts = corpora.prepare(config, exp_dir)  # finds what the chief prepared
            return Trainer(config, exp_dir, train_utts, dev_utts, resume=resume, strategy=strategy).run()
    finally:
        close_logging(handlers)


def run_recipe(config: Config, exp_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains what the recipe's task names in exp_dir and returns its summary: task "ctc" with
    train() (resume, overwrite as there), task "classify" with asr.mnist.train (which neither
    resumes nor moves a previous run aside)."""
    if config.task == "classify":
        return mnist.train(config, exp_dir)
    return train(config, exp_dir, resume=resume, overwrite=overwrite)


def describe_run(config: Config, summary: dict, exp_dir: str | Path) -> str:
    """One line on a finished run_recipe: what it reached and where its results are."""
    exp_dir = Path(exp_dir)
    if config.task == "classify":
        return f"test accuracy {100 * summary['test_accuracy']:.2f}% in {summary['train_seconds']:.0f} s; results in {exp_dir}"
    best_wer, best_cer = summary["best_dev_wer"], summary["best_dev_cer"]
    best_text = f"kept dev WER {100 * best_wer:.2f}% CER {100 * best_cer:.2f}% (best by {summary['keep_best_by'].upper()})" if best_wer is not None else "no dev set"
    return f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s, {best_text}; model in {exp_dir / 'model'}"
