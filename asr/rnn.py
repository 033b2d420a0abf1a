"""Recurrent networks over padded batches: LSTM/GRU cells (plain and layer-normalised), dropout, fast masked loops.

Every loop takes `sequence_length` [batch] alongside inputs padded along time. A step at or past a
sequence's length leaves its state unchanged and emits exact zeros, so padding never reaches the
outputs, the final states or the gradients.

State order: `[h, c]` for the LSTM cells (as `keras.layers.LSTM`), `[h]` for the GRU cells; so
`state[0]` is always the hidden output. States are lists of tensors `[batch, num_units]`.

Why the loops are fast on CPU (a training step spends most of its time in them):
- the input half of the gate pre-activations, `W x`, is one matmul over all time steps before the
  loop (`cell.project_inputs`); the loop body (`cell.step`) only adds the recurrent matmul `h U`;
- everything runs time-major: a batch-major input is transposed once on the way in and once out;
- the two directions of a bidirectional layer run in ONE loop, on states stacked to [2, B, U];
- the loop runs max(sequence_length) steps, not the padded length;
- the backward loop is lean: the recurrent kernel's gradient is one big matmul after it
  (_KernelGradient), each step's input is popped off a TensorList (O(1) gradient, where a
  TensorArray read costs O(T)), layer norm has a hand-written gradient, and per-step weights are
  pre-broadcast to the batch (see the helpers for the measured reasons);
- dropout masks are sampled once per sequence; input and output dropout happen outside the loop.
Mixed precision (a cell made with dtype="mixed_bfloat16" or "mixed_float16"): only the matmul
operands are cast to the compute dtype (bf16/f16); the weights stay float32 (the optimizer updates
those), and the gate nonlinearities, layer norm, the carried states and the loop's outputs stay in
float32. On this project's CPU a bf16 matmul is ~2x faster than float32 (oneDNN, avx512_bf16) but a
bf16 elementwise op is ~5x SLOWER (Eigen converts every element to float and back), so the
elementwise half of each step is kept in float32 on purpose; it also keeps c's recurrence exact.
Dropout is reproducible: given a `dropout_seed` (a [2] integer tensor, e.g. (replica, step)), the
masks come from stateless random ops keyed by it and by each DropoutWrapper's seed, so a training
step draws the same masks whenever it runs, in a resumed run too.
XLA was measured and is not used: compiling each step is slower on CPU (launch overhead), and
compiling a whole loop needs static shapes, so it would recompile for every padded length.
"""

import contextlib
import random
import threading
from typing import NamedTuple

import keras
import tensorflow as tf

__all__ = [
    "BasicLSTMCell",
    "DropoutWrapper",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "bidirectional_dynamic_rnn",
    "dynamic_rnn",
    "stack_bidirectional_dynamic_rnn",
    "static_rnn",
]

LAYER_NORM_EPSILON = 1e-5  # added to the variance before its inverse square root
# Dtypes in which the two directions' recurrent matmuls run as one BatchMatMul (_stack_weights):
# in bf16 it took the bench/rnn.py step from 0.77x to 0.64x of float32's (the two MatMuls of B=16
# rows are slow in oneDNN's bf16 path); in float32 it was 5% slower than two MatMuls.
BATCHED_MATMUL_DTYPES = (tf.bfloat16,)


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def _sum_to(x, shape):
    """Sums x over the axes along which a tensor of static `shape` was broadcast to x's shape."""
    shape = list(shape)
    padded = [1] * (x.shape.rank - len(shape)) + shape
    axes = [axis for axis, (size, target) in enumerate(zip(x.shape, padded)) if target == 1 and size != 1]
    return tf.reshape(tf.reduce_sum(x, axis=axes), shape) if axes else x


@tf.custom_gradient
def _layer_norm(x, gain, shift):
    """Normalises x over its last axis (zero mean, unit variance), then scales by gain, adds shift.

    The hand-written gradient takes about half the ops of the automatic one (no Tile, Neg or
    broadcasting Mul for the two means), and it runs at every step of every backward loop.
    """
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centered = x - mean
    inv_std = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True) + LAYER_NORM_EPSILON)
    normed = centered * inv_std

    def grad(d_y):
        d_normed = d_y * gain
        d_mean = tf.reduce_mean(d_normed, axis=-1, keepdims=True)
        d_var = tf.reduce_mean(d_normed * normed, axis=-1, keepdims=True)
        d_x = (d_normed - d_mean - normed * d_var) * inv_std
        return d_x, _sum_to(d_y * normed, gain.shape), _sum_to(d_y, shift.shape)

    return normed * gain + shift, grad


def _split_blocks(x, blocks, units):
    """[..., blocks * units] -> [..., blocks, units], with a constant target shape when possible."""
    leading = x.shape[:-1].as_list()
    if leading.count(None) <= 1:
        return tf.reshape(x, [-1 if d is None else d for d in leading] + [blocks, units])
    return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [blocks, units]], axis=0))


class _FrozenKernel(NamedTuple):
    """A recurrent kernel whose gradient _KernelGradient computes after the loop: in the loop,
    h @ kernel only passes dL/dh = dL/dz transposed back, by a plain matmul (a matmul with a
    transposed operand, as the automatic gradient uses, costs ~3x more on CPU here)."""

    kernel: tf.Tensor  # [U, G]
    transposed: tf.Tensor  # [G, U]


def _frozen_matmul(h, frozen):
    @tf.custom_gradient
    def matmul(h):
        return tf.matmul(h, frozen.kernel), lambda d_z: tf.matmul(d_z, frozen.transposed)

    return matmul(h)


def _recurrent_matmul(h, kernel):
    """h @ kernel: h [B, U] and kernel [U, G] (a tensor or a _FrozenKernel); or both directions
    at once, h [2, B, U] and either a pair of kernels (two MatMuls and a stack: in float32 on CPU
    ~3x faster than one BatchMatMul here) or, in bfloat16, kernels stacked to [2, U, G] (one
    BatchMatMul: there, the faster one; see BATCHED_MATMUL_DTYPES). h is cast to the kernel's
    dtype and the product back to h's (no-ops unless the cell runs in mixed precision)."""
    first = kernel[0] if isinstance(kernel, list | tuple) and not isinstance(kernel, _FrozenKernel) else kernel
    matmul_dtype = (first.kernel if isinstance(first, _FrozenKernel) else first).dtype
    return tf.cast(_matmul(tf.cast(h, matmul_dtype), kernel), h.dtype)


def _matmul(h, kernel):
    if isinstance(kernel, _FrozenKernel):
        return _frozen_matmul(h, kernel)
    if isinstance(kernel, (list, tuple)):
        per_direction = zip(tf.unstack(h, num=len(kernel)), kernel)
        return tf.stack([_matmul(h_k, kernel_k) for h_k, kernel_k in per_direction])
    return tf.matmul(h, kernel)


class _RecurrentCell(keras.layers.Layer):
    """Base of the cells: kernel [D, G] on the inputs, recurrent_kernel [U, G] on the state h.

    G = gates * num_units, gate blocks in the Keras order. A cell runs in two halves:
    `project_inputs` (all time steps at once) and `step` (one time step); `call` composes them so
    the cell also works one step at a time inside `keras.layers.RNN`.
    """

    _GATES = 4  # blocks of num_units in the gate pre-activations
    _NUM_STATES = 1
    _MATMUL_WEIGHTS = ("recurrent_kernel",)  # step weights used by matmul (others broadcast)
    _ADDITIVE_RECURRENCE = True  # z = projected + h @ recurrent_kernel, as _KernelGradient needs

    def __init__(self, num_units, **kwargs):
        kwargs.setdefault("autocast", False)  # the cell casts its weights itself (see _read)
        super().__init__(**kwargs)
        if num_units <= 0:
            raise ValueError(f"num_units must be positive, got {num_units}")
        self.num_units = int(num_units)

    @property
    def matmul_dtype(self):
        """The dtype of both operands of the cell's matmuls: the policy's compute dtype."""
        return self.compute_dtype

    @property
    def state_dtype(self):
        """The dtype of the states, outputs and elementwise math: the weights' (variable) dtype,
        float32 under a mixed policy."""
        return self.variable_dtype

    def _read(self, weight, matmul=False):
        """A weight as a tensor in the dtype it is used in (matmul operand or elementwise)."""
        return tf.cast(weight, self.matmul_dtype if matmul else self.state_dtype)

    @property
    def state_size(self):
        return [self.num_units] * self._NUM_STATES

    @property
    def output_size(self):
        return self.num_units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"{self.name}: the last (feature) axis of the inputs must be known, got {input_shape}")
        gates = self._GATES * self.num_units
        self.kernel = self.add_weight(name="kernel", shape=(input_dim, gates), initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.num_units, gates), initializer="orthogonal"
        )
        self._build_extra()

    def _build_extra(self):
        """Creates the weights beyond the two kernels."""

    def get_initial_state(self, batch_size=None):
        return [tf.zeros([batch_size, self.num_units], self.state_dtype) for _ in range(self._NUM_STATES)]

    def project_inputs(self, inputs):
        """The input part of the gate pre-activations: [..., D] -> [..., G] (state dtype), one
        matmul for all steps (in the matmul dtype)."""
        if not self.built:
            self.build(inputs.shape)
        kernel = self._read(self.kernel, matmul=True)
        inputs = tf.cast(inputs, self.matmul_dtype)
        if inputs.shape.rank == 2:
            projected = tf.matmul(inputs, kernel)
        else:
            flat = tf.matmul(tf.reshape(inputs, [-1, kernel.shape[0]]), kernel)
            projected = tf.reshape(flat, tf.concat([tf.shape(inputs)[:-1], [kernel.shape[1]]], axis=0))
        projected = tf.cast(projected, self.state_dtype)
        bias = self._input_bias()
        return projected if bias is None else projected + bias

    def _input_bias(self):
        """Bias [G] added by project_inputs, or None."""
        return None

    def step_weights(self):
        """The tensors `step` needs, read once (outside a loop) so the loop body only computes."""
        raise NotImplementedError

    def step(self, projected, states, training=False):
        """One time step: projected inputs [B, G] and states -> (output [B, U], new states)."""
        del training  # the cells have no training-only behaviour; see DropoutWrapper
        return self._step(self.step_weights(), projected, list(states))

    def _step(self, weights, projected, states):
        """The step's math. Also runs two directions at once: weights from `_stack_weights` and
        states [2, B, U]."""
        raise NotImplementedError

    def call(self, inputs, states, training=False):
        return self.step(self.project_inputs(inputs), states, training)

    def fusion_key(self):
        """Two cells with equal keys can run stacked in one loop (see bidirectional_dynamic_rnn)."""
        return (type(self), self.num_units, tuple(self.kernel.shape), self.state_dtype, self.matmul_dtype)

    def get_config(self):
        return {**super().get_config(), "num_units": self.num_units}


@keras.saving.register_keras_serializable(package="asr")
class LSTMCell(_RecurrentCell):
    """LSTM cell (Hochreiter & Schmidhuber), as TF1's LSTMCell with Keras' weight layout.

    kernel [D, 4U], recurrent_kernel [U, 4U], bias [4U], gate order i, f, c, o: the weights of
    `keras.layers.LSTM` load as they are (Keras adds no forget_bias: use forget_bias=0.0 then).
    `forget_bias` is added to the forget gate's pre-activation. With `use_peepholes`, the gates
    i and f also see the previous c, and o the new c (diagonal `peephole_kernel` [3, U], rows i, f, o).
    State [h, c].
    """

    _GATES = 4
    _NUM_STATES = 2

    def __init__(self, num_units, forget_bias=1.0, use_peepholes=False, **kwargs):
        super().__init__(num_units, **kwargs)
        self.forget_bias = float(forget_bias)
        self.use_peepholes = bool(use_peepholes)

    def _build_extra(self):
        self.bias = self.add_weight(name="bias", shape=(4 * self.num_units,), initializer="zeros")
        if self.use_peepholes:
            self.peephole_kernel = self.add_weight(
                name="peephole_kernel", shape=(3, self.num_units), initializer="glorot_uniform"
            )

    def _input_bias(self):
        units = self.num_units
        forget = tf.concat([tf.zeros([units]), tf.fill([units], self.forget_bias), tf.zeros([2 * units])], 0)
        return self._read(self.bias) + tf.cast(forget, self.state_dtype)

    def step_weights(self):
        weights = {"recurrent_kernel": self._read(self.recurrent_kernel, matmul=True)}
        if self.use_peepholes:
            peep_i, peep_f, peep_o = tf.unstack(self._read(self.peephole_kernel))
            weights.update(peephole_i=peep_i, peephole_f=peep_f, peephole_o=peep_o)
        return weights

    def _step(self, weights, projected, states):
        h, c = states
        z = projected + _recurrent_matmul(h, weights["recurrent_kernel"])
        i, f, g, o = tf.split(z, 4, axis=-1)
        if self.use_peepholes:
            i += weights["peephole_i"] * c
            f += weights["peephole_f"] * c
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        if self.use_peepholes:
            o += weights["peephole_o"] * new_c
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        return new_h, [new_h, new_c]

    def fusion_key(self):
        return (*super().fusion_key(), self.use_peepholes)

    def get_config(self):
        return {**super().get_config(), "forget_bias": self.forget_bias, "use_peepholes": self.use_peepholes}


@keras.saving.register_keras_serializable(package="asr")
class BasicLSTMCell(LSTMCell):
    """LSTMCell without peepholes (TF1's BasicLSTMCell)."""

    def __init__(self, num_units, forget_bias=1.0, **kwargs):
        kwargs.pop("use_peepholes", None)  # from get_config
        super().__init__(num_units, forget_bias=forget_bias, use_peepholes=False, **kwargs)


@keras.saving.register_keras_serializable(package="asr")
class LayerNormLSTMCell(_RecurrentCell):
    """LSTM with layer normalisation, as TF1's LayerNormBasicLSTMCell (Ba et al., 2016).

    Each gate's pre-activation W x + U h is normalised separately (gains `gate_gain` [4, U], shifts
    `gate_shift` [4, U], gate order i, f, c, o; the shifts take the place of a bias), then
    forget_bias is added to the forget gate; the new cell state is normalised too (`state_gain`,
    `state_shift` [U]) before it is carried and squashed into h. Gains start at 1, shifts at 0.
    kernel [D, 4U], recurrent_kernel [U, 4U], no bias. State [h, c].
    """

    _GATES = 4
    _NUM_STATES = 2

    def __init__(self, num_units, forget_bias=1.0, **kwargs):
        super().__init__(num_units, **kwargs)
        self.forget_bias = float(forget_bias)

    def _build_extra(self):
        units = self.num_units
        self.gate_gain = self.add_weight(name="gate_gain", shape=(4, units), initializer="ones")
        self.gate_shift = self.add_weight(name="gate_shift", shape=(4, units), initializer="zeros")
        self.state_gain = self.add_weight(name="state_gain", shape=(units,), initializer="ones")
        self.state_shift = self.add_weight(name="state_shift", shape=(units,), initializer="zeros")

    def step_weights(self):
        forget = tf.constant([[0.0], [self.forget_bias], [0.0], [0.0]], self.state_dtype)
        return {
            "recurrent_kernel": self._read(self.recurrent_kernel, matmul=True),
            "gate_gain": self._read(self.gate_gain),
            "gate_shift": self._read(self.gate_shift) + forget,
            "state_gain": self._read(self.state_gain),
            "state_shift": self._read(self.state_shift),
        }

    def _step(self, weights, projected, states):
        h, c = states
        z = projected + _recurrent_matmul(h, weights["recurrent_kernel"])
        z = _layer_norm(_split_blocks(z, 4, self.num_units), weights["gate_gain"], weights["gate_shift"])
        i, f, g, o = tf.unstack(z, axis=-2)
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        new_c = _layer_norm(new_c, weights["state_gain"], weights["state_shift"])
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        return new_h, [new_h, new_c]

    def get_config(self):
        return {**super().get_config(), "forget_bias": self.forget_bias}


@keras.saving.register_keras_serializable(package="asr")
class GRUCell(_RecurrentCell):
    """GRU cell (Cho et al., 2014) with the reset gate applied after the recurrent matmul, as
    `keras.layers.GRU` (reset_after=True, cuDNN's form; one recurrent matmul per step).

    kernel [D, 3U], recurrent_kernel [U, 3U], bias [2, 3U] (input bias, recurrent bias), gate
    order z, r, h: the weights of `keras.layers.GRU` load as they are. h' = z h + (1 - z) tanh(
    W_h x + b_h + r (U_h h + b'_h)). State [h].
    """

    _GATES = 3
    _NUM_STATES = 1
    _ADDITIVE_RECURRENCE = False  # r multiplies part of h @ recurrent_kernel

    def _build_extra(self):
        self.bias = self.add_weight(name="bias", shape=(2, 3 * self.num_units), initializer="zeros")

    def _input_bias(self):
        return self._read(self.bias)[0]

    def step_weights(self):
        return {"recurrent_kernel": self._read(self.recurrent_kernel, matmul=True), "recurrent_bias": self._read(self.bias)[1]}

    def _step(self, weights, projected, states):
        h = states[0]
        units = self.num_units
        recurrent = _recurrent_matmul(h, weights["recurrent_kernel"]) + weights["recurrent_bias"]
        x_zr, x_h = tf.split(projected, [2 * units, units], axis=-1)
        r_zr, r_h = tf.split(recurrent, [2 * units, units], axis=-1)
        z, r = tf.split(tf.sigmoid(x_zr + r_zr), 2, axis=-1)
        candidate = tf.tanh(x_h + r * r_h)
        new_h = candidate + z * (h - candidate)
        return new_h, [new_h]


@keras.saving.register_keras_serializable(package="asr")
class LayerNormGRUCell(_RecurrentCell):
    """GRU with layer normalisation: the pre-activations of z and r (W x + U h) and of the candidate
    (W_h x + r U_h h) are each normalised separately (gains `gate_gain` [3, U], shifts `gate_shift`
    [3, U], order z, r, h; the shifts take the place of biases). kernel [D, 3U], recurrent_kernel
    [U, 3U]. State [h].
    """

    _GATES = 3
    _NUM_STATES = 1
    _ADDITIVE_RECURRENCE = False  # r multiplies part of h @ recurrent_kernel

    def _build_extra(self):
        units = self.num_units
        self.gate_gain = self.add_weight(name="gate_gain", shape=(3, units), initializer="ones")
        self.gate_shift = self.add_weight(name="gate_shift", shape=(3, units), initializer="zeros")

    def step_weights(self):
        gain = self._read(self.gate_gain)
        shift = self._read(self.gate_shift)
        return {
            "recurrent_kernel": self._read(self.recurrent_kernel, matmul=True),
            "zr_gain": gain[:2],
            "zr_shift": shift[:2],
            "candidate_gain": gain[2],
            "candidate_shift": shift[2],
        }

    def _step(self, weights, projected, states):
        h = states[0]
        units = self.num_units
        recurrent = _recurrent_matmul(h, weights["recurrent_kernel"])
        x_zr, x_h = tf.split(projected, [2 * units, units], axis=-1)
        r_zr, r_h = tf.split(recurrent, [2 * units, units], axis=-1)
        zr = _layer_norm(_split_blocks(x_zr + r_zr, 2, units), weights["zr_gain"], weights["zr_shift"])
        z, r = tf.unstack(tf.sigmoid(zr), axis=-2)
        candidate = tf.tanh(_layer_norm(x_h + r * r_h, weights["candidate_gain"], weights["candidate_shift"]))
        new_h = candidate + z * (h - candidate)
        return new_h, [new_h]


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


class _DropoutMasks(NamedTuple):
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
        return _DropoutMasks(
            mask(input_size, self.input_keep_prob, 0),
            mask(units, self.output_keep_prob, 1),
            mask(units, self.state_keep_prob, 2),
        )

    def call(self, inputs, states, training=False):
        masks = self.sample_masks(tf.shape(inputs)[0], inputs.shape[-1], training)  # stateful: step by step
        output, new_states = self.cell(_apply_mask(inputs, masks.inputs), list(states), training=training)
        return _apply_mask(output, masks.outputs), _drop_state(new_states, masks.state)

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


def _apply_mask(x, mask):
    """x [..., B, size] times a [B, size] mask (broadcast over any leading time axis)."""
    return x if mask is None else x * tf.cast(mask, x.dtype)


def _drop_state(states, mask):
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


class _Run(NamedTuple):
    """A cell ready for one call of a loop: the unwrapped cell and this call's dropout masks."""

    cell: _RecurrentCell
    masks: _DropoutMasks


def _prepare(cell, inputs, training, dropout_seed):
    """Builds cell for inputs [..., B, D], unwraps its DropoutWrappers and samples their masks."""
    if not cell.built:
        cell.build(inputs.shape)
    wrappers = []
    core = cell
    while isinstance(core, DropoutWrapper):
        wrappers.append(core)
        core = core.cell
    if not isinstance(core, _RecurrentCell):
        raise TypeError(f"asr.rnn needs one of its own cells (optionally in DropoutWrapper), got {type(core).__name__}")
    batch_size = tf.shape(inputs)[-2]
    sampled = [w.sample_masks(batch_size, inputs.shape[-1], training, dropout_seed) for w in wrappers]
    if not sampled:
        return _Run(core, _DropoutMasks(None, None, None))
    return _Run(core, _DropoutMasks(*(_product(kind) for kind in zip(*sampled))))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _num_steps(time, lengths):
    """How many steps to run: the longest sequence (at least 1), or all the padded time."""
    if lengths is None:
        return time
    return tf.minimum(tf.maximum(tf.reduce_max(lengths), 1), time)


def _lengths(sequence_length, time):
    """sequence_length as int32 [B], checked against the padded time; None stays None."""
    if sequence_length is None:
        return None
    lengths = tf.cast(sequence_length, tf.int32)
    tf.debugging.assert_less_equal(lengths, time, message="sequence_length exceeds the padded time axis")
    return lengths


def _masked(valid, outputs, new_states, old_states):
    """Where valid [B, 1] is false: the outputs are zero and the old states are kept."""
    if valid is None:
        return outputs, new_states
    outputs = [tf.where(valid, output, tf.zeros([], output.dtype)) for output in outputs]
    return outputs, [tf.where(valid, new, old) for new, old in zip(new_states, old_states)]


def _element_shape(shape):
    """A static shape as a TensorList element_shape argument (-1 where unknown)."""
    return tf.constant([-1 if d is None else d for d in shape.as_list()], tf.int32)


_FORWARD_ONLY = threading.local()  # .active: loops traced now read their inputs without popping (forward_only)


@contextlib.contextmanager
def forward_only():
    """Loops traced inside read each step's input with TensorListGetItem instead of popping it
    off the list: the same values, as fast forward, but a gradient taken through them is O(T^2)
    (see _loop). For inference graphs only (asr.export): TFLite's converter lowers GetItem to
    builtin ops and cannot lower TensorListPopBack, which would need the Flex delegate."""
    previous = getattr(_FORWARD_ONLY, "active", False)
    _FORWARD_ONLY.active = True
    try:
        yield
    finally:
        _FORWARD_ONLY.active = previous


def _loop(step, projected, initial_states, output_shapes, lengths, num_steps):
    """Runs `step(inputs_t, states) -> (outputs_t, new_states)` for num_steps steps (tf.while_loop).

    projected: list of tensors [num_steps, ...] in REVERSED step order (last step first): each
    step pops its input off the back of a TensorList, whose gradient is an O(1) push (reading a
    TensorArray costs O(T) per step in the backward loop, O(T^2) in all). outputs_t: list of
    tensors of output_shapes; states: list of tensors. Batch is the second-to-last axis of every
    state and output; lengths [B] masks them. Returns (list of outputs [num_steps, ...], final states).
    """
    shapes = [_element_shape(p.shape[1:]) for p in projected]
    input_lists = [tf.raw_ops.TensorListFromTensor(tensor=p, element_shape=s) for p, s in zip(projected, shapes)]
    outputs_ta = [
        tf.TensorArray(p.dtype, size=num_steps, element_shape=shape) for p, shape in zip(projected, output_shapes)
    ]

    pop = not getattr(_FORWARD_ONLY, "active", False)

    def body(t, states, outputs_ta, input_lists):
        inputs, remaining = [], []
        for p, shape, input_list in zip(projected, shapes, input_lists):
            if pop:
                input_list, item = tf.raw_ops.TensorListPopBack(
                    input_handle=input_list, element_shape=shape, element_dtype=p.dtype
                )
            else:  # step t's input sits at index num_steps - 1 - t (reversed order), where popping finds it
                item = tf.raw_ops.TensorListGetItem(
                    input_handle=input_list, index=num_steps - 1 - t, element_shape=shape, element_dtype=p.dtype
                )
            item.set_shape(p.shape[1:])
            inputs.append(item)
            remaining.append(input_list)
        outputs, new_states = step(inputs, states)
        valid = None if lengths is None else tf.expand_dims(t < lengths, -1)
        outputs, new_states = _masked(valid, outputs, new_states, states)
        return t + 1, new_states, [ta.write(t, output) for ta, output in zip(outputs_ta, outputs)], remaining

    _, final_states, outputs_ta, _ = tf.while_loop(
        lambda t, *_: t < num_steps, body, (tf.constant(0), list(initial_states), outputs_ta, input_lists)
    )
    return [ta.stack() for ta in outputs_ta], final_states


class _KernelGradient:
    """The gradient of a recurrent kernel U, computed after the loop in one matmul.

    Inside the loop z_t = projected_t + h_{t-1} U uses U frozen (_FrozenKernel), so the backward loop
    does not compute and sum a small [U, G] product at every step (the costliest part of it).
    The gradient reaching projected_t is dL/dz_t, so `attach` routes dL/dU = sum_t h_{t-1}^T dL/dz_t
    through projected, from the h's entering each step, which `set_carried` gives after the loop.
    """

    def __init__(self):
        self._carried = None

    def attach(self, projected, kernel):
        """projected [n, B, G] unchanged, but now carrying the gradient of kernel [U, G]."""

        @tf.custom_gradient
        def hook(projected, kernel):
            def grad(d_projected):  # in the kernel's (matmul) dtype, as the loop's matmuls
                flat_h = tf.cast(tf.reshape(self._carried, [-1, kernel.shape[0]]), kernel.dtype)
                flat_d_z = tf.cast(tf.reshape(d_projected, [-1, kernel.shape[1]]), kernel.dtype)
                d_kernel = tf.matmul(flat_h, flat_d_z, transpose_a=True)
                return d_projected, d_kernel

            return tf.identity(projected), grad

        return hook(projected, kernel)

    def set_carried(self, outputs, initial_h, state_mask):
        """The h entering each step, from the loop's outputs [n, B, U] (past a length, where dL/dz
        is zero, any value does), in the reversed step order of projected."""
        carried = _apply_mask(outputs[:-1], state_mask)
        self._carried = tf.reverse(tf.concat([tf.expand_dims(initial_h, 0), carried], axis=0), axis=[0])


class _Direction(NamedTuple):
    """One direction ready to loop over time-major inputs."""

    cell: _RecurrentCell
    projected: tf.Tensor  # [n, B, G] in reversed step order, as _loop reads it
    weights: dict  # step weights: the recurrent kernel frozen, the others broadcast to [B, ...]
    states: list  # initial states [B, size]
    masks: _DropoutMasks
    kernel_gradient: _KernelGradient | None  # None: the loop's own backward pass computes it


def _initial_states(cell, initial_state, batch_size):
    if initial_state is None:
        return cell.get_initial_state(batch_size)
    states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
    if len(states) != len(cell.state_size):
        raise ValueError(f"initial_state has {len(states)} tensors, {cell.name} needs {len(cell.state_size)}")
    return [tf.cast(s, cell.state_dtype) for s in states]


def _broadcast_batch(weight, batch_size):
    """weight [...] -> [B, ...]: in the loop, an elementwise op between equal shapes is several
    times faster on CPU than one that broadcasts, in its gradient especially."""
    return tf.broadcast_to(weight, tf.concat([[batch_size], tf.shape(weight)], axis=0))


def _direction(cell, step_inputs, initial_state, training, dropout_seed):
    """Prepares cell to run over step_inputs [n, B, D] (the inputs of the n steps to run, time-major,
    in step order): dropout masks, projection, weights, initial states."""
    run = _prepare(cell, step_inputs, training, dropout_seed)
    batch_size = tf.shape(step_inputs)[1]
    weights = run.cell.step_weights()
    reversed_inputs = tf.reverse(_apply_mask(step_inputs, run.masks.inputs), axis=[0])  # see _loop
    projected = run.cell.project_inputs(reversed_inputs)
    kernel_gradient = None
    if run.cell._ADDITIVE_RECURRENCE:
        kernel_gradient = _KernelGradient()
        projected = kernel_gradient.attach(projected, weights["recurrent_kernel"])
        kernel = tf.stop_gradient(weights["recurrent_kernel"])
        weights["recurrent_kernel"] = _FrozenKernel(kernel, tf.transpose(kernel))
    for key in weights:
        if key not in run.cell._MATMUL_WEIGHTS:
            weights[key] = _broadcast_batch(weights[key], batch_size)
    states = _initial_states(run.cell, initial_state, batch_size)
    return _Direction(run.cell, projected, weights, states, run.masks, kernel_gradient)


def _finish(direction, outputs, time):
    """After the loop: the kernel gradient's h's; outputs [n, B, U] padded to time, dropped out."""
    if direction.kernel_gradient is not None:
        direction.kernel_gradient.set_carried(outputs, direction.states[0], direction.masks.state)
    return _apply_mask(_pad_time(outputs, time), direction.masks.outputs)


def _pad_time(outputs, time):
    """Zero-pads time-major outputs [n, ...] to [time, ...]."""
    padding = [[0, time - tf.shape(outputs)[0]]] + [[0, 0]] * (outputs.shape.rank - 1)
    return tf.pad(outputs, padding)


def _reverse(x, lengths):
    """Reverses time-major x [T, B, ...] within each sequence's length (all of T without lengths)."""
    if lengths is None:
        return tf.reverse(x, axis=[0])
    return tf.reverse_sequence(x, lengths, seq_axis=0, batch_axis=1)


def _run_one(direction, lengths, num_steps):
    """One direction's loop -> (outputs [num_steps, B, U], final states)."""
    d = direction

    def step(inputs, states):
        output, new_states = d.cell._step(d.weights, inputs[0], states)
        return [output], _drop_state(new_states, d.masks.state)

    (outputs,), final = _loop(step, [d.projected], d.states, [d.states[0].shape], lengths, num_steps)
    return outputs, final


# ----------------------------------------------------------------------------------------------
# Unidirectional
# ----------------------------------------------------------------------------------------------


def _rnn_time_major(cell, inputs, lengths, initial_state, training, dropout_seed):
    """dynamic_rnn on time-major inputs [T, B, D] -> (outputs [T, B, U], final states)."""
    time = tf.shape(inputs)[0]
    num_steps = _num_steps(time, lengths)
    direction = _direction(cell, inputs[:num_steps], initial_state, training, dropout_seed)
    outputs, final_states = _run_one(direction, lengths, num_steps)
    return _finish(direction, outputs, time), final_states


def dynamic_rnn(cell, inputs, sequence_length=None, initial_state=None, time_major=False, training=False, dropout_seed=None):
    """Runs cell over padded inputs.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length: [batch]
    valid steps per sequence (None: all). initial_state: list of [batch, size] (None: zeros).
    dropout_seed: None, or a [2] integer tensor that keys the DropoutWrappers' masks when
    training (stateless: the same seed, the same masks; e.g. (replica, optimizer step)).
    Returns (outputs [batch, max_time, units] (time-major if asked), zero at and past each
    length; final_state: list of [batch, size], the state after each sequence's last valid step,
    the initial state for a sequence of length 0).
    """
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = _lengths(sequence_length, tf.shape(x)[0])
    outputs, final_state = _rnn_time_major(cell, x, lengths, initial_state, training, dropout_seed)
    return (outputs if time_major else tf.transpose(outputs, [1, 0, 2])), final_state


def static_rnn(cell, inputs, initial_state=None, sequence_length=None, training=False, dropout_seed=None):
    """dynamic_rnn unrolled in Python: inputs a list of T tensors [B, D]; returns (list of T
    outputs [B, units], final_state), with the same masking as dynamic_rnn."""
    if not inputs:
        raise ValueError("static_rnn needs at least one time step")
    x = tf.stack(inputs)
    lengths = _lengths(sequence_length, len(inputs))
    d = _direction(cell, x, initial_state, training, dropout_seed)
    states, outputs = d.states, []
    for t, projected_t in enumerate(reversed(tf.unstack(d.projected, num=len(inputs)))):
        output, new_states = d.cell._step(d.weights, projected_t, states)
        valid = None if lengths is None else tf.expand_dims(t < lengths, -1)
        (output,), states = _masked(valid, [output], _drop_state(new_states, d.masks.state), states)
        outputs.append(output)
    outputs = _finish(d, tf.stack(outputs), len(inputs))
    return tf.unstack(outputs, num=len(inputs)), states


# ----------------------------------------------------------------------------------------------
# Bidirectional
# ----------------------------------------------------------------------------------------------


def _stack_weights(cell, fw, bw):
    """Two directions' step weights as one: matmul kernels a pair (see _recurrent_matmul), or
    stacked to [2, U, G] for one BatchMatMul in bfloat16 (BATCHED_MATMUL_DTYPES), the others
    (broadcast to [B, ...]) stacked to [2, B, ...]."""
    return {key: _pair(fw[key], bw[key]) if key in cell._MATMUL_WEIGHTS else tf.stack([fw[key], bw[key]]) for key in fw}


def _pair(fw, bw):
    if isinstance(fw, _FrozenKernel):
        if fw.kernel.dtype not in BATCHED_MATMUL_DTYPES:
            return (fw, bw)
        return _FrozenKernel(tf.stack([fw.kernel, bw.kernel]), tf.stack([fw.transposed, bw.transposed]))
    return tf.stack([fw, bw]) if fw.dtype in BATCHED_MATMUL_DTYPES else (fw, bw)


def _stacked_mask(mask_fw, mask_bw):
    if mask_fw is None and mask_bw is None:
        return None
    ones = tf.ones_like(mask_fw if mask_fw is not None else mask_bw)
    return tf.stack([ones if mask_fw is None else mask_fw, ones if mask_bw is None else mask_bw])


def _run_fused(fw, bw, lengths, num_steps):
    """Both directions in one loop on stacked states [2, B, U] (same cell type and size)."""
    weights = _stack_weights(fw.cell, fw.weights, bw.weights)
    state_mask = _stacked_mask(fw.masks.state, bw.masks.state)

    def step(inputs, states):
        output, new_states = fw.cell._step(weights, inputs[0], states)
        return [output], _drop_state(new_states, state_mask)

    states = [tf.stack(pair) for pair in zip(fw.states, bw.states)]
    projected = tf.stack([fw.projected, bw.projected], axis=1)  # [n, 2, B, G]
    (outputs,), final = _loop(step, [projected], states, [states[0].shape], lengths, num_steps)
    out_fw, out_bw = tf.unstack(outputs, num=2, axis=1)
    return (out_fw, out_bw), ([s[0] for s in final], [s[1] for s in final])


def _run_pair(fw, bw, lengths, num_steps):
    """Both directions in one loop, each with its own step (any two cells)."""
    split = len(fw.states)

    def step(inputs, states):
        out_fw, new_fw = fw.cell._step(fw.weights, inputs[0], states[:split])
        out_bw, new_bw = bw.cell._step(bw.weights, inputs[1], states[split:])
        return [out_fw, out_bw], _drop_state(new_fw, fw.masks.state) + _drop_state(new_bw, bw.masks.state)

    shapes = [fw.states[0].shape, bw.states[0].shape]
    outputs, final = _loop(step, [fw.projected, bw.projected], fw.states + bw.states, shapes, lengths, num_steps)
    return tuple(outputs), (final[:split], final[split:])


def _bidirectional_time_major(cell_fw, cell_bw, inputs, lengths, initial_state_fw, initial_state_bw, training, dropout_seed):
    """bidirectional_dynamic_rnn on time-major inputs [T, B, D]."""
    time = tf.shape(inputs)[0]
    num_steps = _num_steps(time, lengths)
    fw = _direction(cell_fw, inputs[:num_steps], initial_state_fw, training, dropout_seed)
    bw = _direction(cell_bw, _reverse(inputs, lengths)[:num_steps], initial_state_bw, training, dropout_seed)
    run = _run_fused if fw.cell.fusion_key() == bw.cell.fusion_key() else _run_pair
    (out_fw, out_bw), final_states = run(fw, bw, lengths, num_steps)
    out_fw = _finish(fw, out_fw, time)
    out_bw = _finish(bw, out_bw, time)  # still reversed: _reverse commutes with padding and dropout
    return (out_fw, _reverse(out_bw, lengths)), final_states


def bidirectional_dynamic_rnn(
    cell_fw,
    cell_bw,
    inputs,
    sequence_length=None,
    initial_state_fw=None,
    initial_state_bw=None,
    time_major=False,
    training=False,
    dropout_seed=None,
):
    """Runs cell_fw forward and cell_bw backward over padded inputs, both in one loop.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length [batch];
    dropout_seed as in dynamic_rnn.
    The backward direction reads each sequence reversed within its own length, so padding never
    enters it; its outputs come back in normal time order. Returns ((out_fw, out_bw) each
    [batch, max_time, units] (time-major if asked), zero at and past each length,
    (state_fw, state_bw)), the final states as in dynamic_rnn.
    """
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = _lengths(sequence_length, tf.shape(x)[0])
    outputs, states = _bidirectional_time_major(
        cell_fw, cell_bw, x, lengths, initial_state_fw, initial_state_bw, training, dropout_seed
    )
    if not time_major:
        outputs = tuple(tf.transpose(o, [1, 0, 2]) for o in outputs)
    return outputs, states


def stack_bidirectional_dynamic_rnn(
    cells_fw, cells_bw, inputs, sequence_length=None, time_major=False, training=False, dropout_seed=None
):
    """Layers of bidirectional_dynamic_rnn: each layer's two directions, concatenated on the last
    axis, feed the next layer.

    inputs: [batch, max_time, D] ([max_time, batch, D] if time_major); sequence_length [batch];
    dropout_seed as in dynamic_rnn (each wrapper folds in its own seed).
    Returns (outputs [batch, max_time, units_fw + units_bw] of the last layer (time-major if asked),
    zero at and past each length; states_fw, states_bw: lists with each layer's final states).
    """
    if not cells_fw or len(cells_fw) != len(cells_bw):
        raise ValueError(
            f"need as many forward as backward cells, at least one; got {len(cells_fw)} and {len(cells_bw)}"
        )
    inputs = tf.convert_to_tensor(inputs)
    x = inputs if time_major else tf.transpose(inputs, [1, 0, 2])
    lengths = _lengths(sequence_length, tf.shape(x)[0])
    states_fw, states_bw = [], []
    for cell_fw, cell_bw in zip(cells_fw, cells_bw):
        (out_fw, out_bw), (state_fw, state_bw) = _bidirectional_time_major(
            cell_fw, cell_bw, x, lengths, None, None, training, dropout_seed
        )
        x = tf.concat([out_fw, out_bw], axis=-1)
        states_fw.append(state_fw)
        states_bw.append(state_bw)
    return (x if time_major else tf.transpose(x, [1, 0, 2])), states_fw, states_bw
