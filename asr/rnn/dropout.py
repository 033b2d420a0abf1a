"""Dropout for the cells: DropoutWrapper, its variational masks, and unwrapping a cell for a loop.

A mask is [B, size] with entries 0 or 1/keep_prob, sampled once per call of a loop: input and
output dropout are applied outside the loop, the state mask (on h only) inside it.
"""

import random
from typing import NamedTuple

import keras
import tensorflow as tf

from asr.rnn.cells import RecurrentCell


class DropoutMasks(NamedTuple):
    """One call's dropout masks, each [batch, size] with entries 0 or 1/keep_prob, or None."""

    inputs: tf.Tensor | None
    outputs: tf.Tensor | None
    state: tf.Tensor | None


def _keep_mask(batch_size, size, keep_prob, seed, dtype, training):
    """A [batch, size] mask keeping each unit with probability keep_prob, scaled by 1/keep_prob.

    seed: a [2] integer tensor keys a stateless draw (the same key, the same mask); an int or
    None is the op seed of a stateful tf.random.uniform (a new mask at each run of the op).
    """
    if keep_prob >= 1.0 or training is False or training is None:
        return None
    if isinstance(seed, (tf.Tensor, tf.Variable)):
        uniform = tf.random.stateless_uniform([batch_size, size], seed=seed)
    else:
        uniform = tf.random.uniform([batch_size, size], seed=seed)
    kept = uniform < keep_prob
    mask = tf.cast(kept, dtype) / tf.cast(keep_prob, dtype)
    if isinstance(training, bool):
        return mask
    return tf.where(tf.cast(training, tf.bool), mask, tf.ones_like(mask))  # a symbolic flag


@keras.saving.register_keras_serializable(package="asr")
class DropoutWrapper(keras.layers.Layer):
    """Dropout on a cell's inputs and outputs (and on the carried h when state_keep_prob < 1).

    Active only when training is true. The masks are variational (Gal & Ghahramani, 2016): sampled
    once per sequence in each call of the loops here, the same at every time step, scaled by
    1/keep_prob. Dropping the state touches h only, never the LSTM memory c (as TF1's default).
    Inside `keras.layers.RNN`, which calls the cell step by step, masks are sampled at every step.

    Seeds: given a call's `dropout_seed` (a [2] integer tensor, see dynamic_rnn), the three masks
    are stateless draws keyed by (dropout_seed, seed, mask): a function of those alone, so a step
    that runs again (a resumed run) draws the same masks. Without one, `seed` (an int, or None)
    is the op seed of the three masks' stateful draws, seed, seed + 1, seed + 2, as in TF1. Either
    way wrappers given the same seed draw the same masks, so give each layer and direction its
    own (a wrapper made with seed=None keys its stateless draws with a number drawn from Python's
    `random` when it is made, which keras.utils.set_random_seed seeds).
    """

    def __init__(self, cell, input_keep_prob=1.0, output_keep_prob=1.0, state_keep_prob=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self._stateless_key = seed if seed is not None else random.getrandbits(31)
        for name, value in [("input", input_keep_prob), ("output", output_keep_prob), ("state", state_keep_prob)]:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"DropoutWrapper: {name}_keep_prob must be in (0, 1], got {value}")
        self.cell = cell
        self.input_keep_prob = float(input_keep_prob)
        self.output_keep_prob = float(output_keep_prob)
        self.state_keep_prob = float(state_keep_prob)
        self.seed = seed

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def output_size(self):
        return self.cell.output_size

    def build(self, input_shape):
        if not self.cell.built:
            self.cell.build(input_shape)

    def get_initial_state(self, batch_size=None):
        return self.cell.get_initial_state(batch_size=batch_size)

    def sample_masks(self, batch_size, input_size, training, dropout_seed=None):
        """This call's masks: inputs [B, input_size], outputs and state [B, output_size], in the
        wrapped cell's state dtype; dropout_seed: None or a [2] integer tensor (see the class)."""
        dtype = getattr(_core_cell(self), "state_dtype", self.compute_dtype)

        def mask(size, keep_prob, offset):
            if dropout_seed is None:
                seed = None if self.seed is None else self.seed + offset
            else:
                key = tf.random.experimental.stateless_fold_in(tf.cast(dropout_seed, tf.int64), self._stateless_key)
                seed = tf.random.experimental.stateless_fold_in(key, offset)
            return _keep_mask(batch_size, size, keep_prob, seed, dtype, training)

        units = self.cell.output_size
        return DropoutMasks(
            mask(input_size, self.input_keep_prob, 0),
            mask(units, self.output_keep_prob, 1),
            mask(units, self.state_keep_prob, 2),
        )

    def call(self, inputs, states, training=False):
        masks = self.sample_masks(tf.shape(inputs)[0], inputs.shape[-1], training)  # stateful: step by step
        output, new_states = self.cell(apply_mask(inputs, masks.inputs), list(states), training=training)
        return apply_mask(output, masks.outputs), drop_state(new_states, masks.state)

    def get_config(self):
        return {
            **super().get_config(),
            "cell": keras.saving.serialize_keras_object(self.cell),
            "input_keep_prob": self.input_keep_prob,
            "output_keep_prob": self.output_keep_prob,
            "state_keep_prob": self.state_keep_prob,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cell"] = keras.saving.deserialize_keras_object(config["cell"])
        return cls(**config)


def _core_cell(cell):
    """The recurrent cell inside any DropoutWrappers."""
    while isinstance(cell, DropoutWrapper):
        cell = cell.cell
    return cell


def apply_mask(x, mask):
    """x [..., B, size] times a [B, size] mask (broadcast over any leading time axis)."""
    return x if mask is None else x * tf.cast(mask, x.dtype)


def drop_state(states, mask):
    """Drops units of h = states[0] only; an LSTM's c is never dropped."""
    return states if mask is None else [states[0] * mask, *states[1:]]


def _product(masks):
    present = [m for m in masks if m is not None]
    if not present:
        return None
    result = present[0]
    for m in present[1:]:
        result = result * m
    return result


class Run(NamedTuple):
    """A cell ready for one call of a loop: the unwrapped cell and this call's dropout masks."""

    cell: RecurrentCell
    masks: DropoutMasks


def prepare(cell, inputs, training, dropout_seed):
    """Builds cell for inputs [..., B, D], unwraps its DropoutWrappers and samples their masks."""
    if not cell.built:
        cell.build(inputs.shape)
    wrappers = []
    core = cell
    while isinstance(core, DropoutWrapper):
        wrappers.append(core)
        core = core.cell
    if not isinstance(core, RecurrentCell):
        raise TypeError(f"asr.rnn needs one of its own cells (optionally in DropoutWrapper), got {type(core).__name__}")
    batch_size = tf.shape(inputs)[-2]
    sampled = [w.sample_masks(batch_size, inputs.shape[-1], training, dropout_seed) for w in wrappers]
    if not sampled:
        return Run(core, DropoutMasks(None, None, None))
    return Run(core, DropoutMasks(*(_product(kind) for kind in zip(*sampled))))
