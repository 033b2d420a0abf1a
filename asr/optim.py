"""The optimizer and its learning-rate schedule: Adam on linear warm-up then cosine decay."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from asr.config import Config
from asr.errors import ConfigError


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to peak * floor over `decay_steps` (0 = constant)."""

    def __init__(self, peak: float, warmup_steps: int, decay_steps: int, floor: float):
        self.peak, self.warmup_steps, self.decay_steps, self.floor = peak, warmup_steps, decay_steps, floor

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warm = tf.minimum(1.0, step / max(self.warmup_steps, 1))
        if self.decay_steps <= 0:
            return self.peak * warm
        progress = tf.clip_by_value((step - self.warmup_steps) / self.decay_steps, 0.0, 1.0)
        cosine = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.peak * warm * cosine

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, decay_steps=self.decay_steps, floor=self.floor)


def decay_steps(train_cfg, steps_per_epoch: int | None) -> int:
    """train.decay_steps as a number: "auto" is the rest of the run after warm-up, epochs x
    steps_per_epoch - warmup_steps (at least 0), so that changing epochs cannot leave it stale."""
    if train_cfg.decay_steps != "auto":
        return train_cfg.decay_steps
    if steps_per_epoch is None:
        raise ConfigError("train.decay_steps 'auto' needs the number of steps per epoch (known once the data is read)")
    return max(train_cfg.epochs * steps_per_epoch - train_cfg.warmup_steps, 0)


def make_optimizer(config: Config, model, steps_per_epoch: int | None = None) -> keras.optimizers.Optimizer:
    """Adam on the warm-up + cosine schedule; its state is float32 whatever train.precision is
    (the weights it updates are float32 under the mixed policies too)."""
    t = config.train
    schedule = WarmupCosine(t.learning_rate, t.warmup_steps, decay_steps(t, steps_per_epoch), t.lr_floor)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)  # clipping: Steps, after the replica sum
    optimizer.build(model.trainable_variables)
    return optimizer
