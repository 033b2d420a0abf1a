"""The recurrent cells: LSTM and GRU, plain and layer-normalised, and their base, RecurrentCell.

How a cell runs in the loops, and what a new one must do, is the cell protocol of asr.rnn's module
docstring. States are lists of [B, U] tensors, `[h, c]` for the LSTMs (as `keras.layers.LSTM`),
`[h]` for the GRUs: `state[0]` is always the hidden output.
"""

import keras
import tensorflow as tf

from asr.rnn.gradient import recurrent_matmul

LAYER_NORM_EPSILON = 1e-5  # added to the variance before its inverse square root
RECURRENT_KERNEL = "recurrent_kernel"  # the one step weight used by matmul (see the cell protocol)


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


class RecurrentCell(keras.layers.Layer):
    """Base of the cells: kernel [D, G] on the inputs, recurrent_kernel [U, G] on the state h.

    G = GATES * num_units, gate blocks in the Keras order. A subclass follows the cell protocol
    (asr.rnn's module docstring): it sets GATES, NUM_STATES and ADDITIVE_RECURRENCE, creates any
    further weights in `_build_extra`, and writes `step_weights` and `step_with`. `call` runs
    `project_inputs` and `step` so the cell also works one step at a time in `keras.layers.RNN`.
    """

    GATES = 4  # blocks of num_units in the gate pre-activations
    NUM_STATES = 1  # state tensors [B, U]; states[0] is h, the step's output
    ADDITIVE_RECURRENCE = True  # z = projected + recurrent_matmul(h, ...) exactly (cell protocol)

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
        return [self.num_units] * self.NUM_STATES

    @property
    def output_size(self):
        return self.num_units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"{self.name}: the last (feature) axis of the inputs must be known, got {input_shape}")
        gates = self.GATES * self.num_units
        self.kernel = self.add_weight(name="kernel", shape=(input_dim, gates), initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.num_units, gates), initializer="orthogonal"
        )
        self._build_extra()

    def _build_extra(self):
        """Creates the weights beyond the two kernels."""

    def get_initial_state(self, batch_size=None):
        return [tf.zeros([batch_size, self.num_units], self.state_dtype) for _ in range(self.NUM_STATES)]

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
        """{name: tensor} that `step_with` needs, read once outside the loop: RECURRENT_KERNEL
        [U, G] in the matmul dtype, the others elementwise weights in the state dtype."""
        raise NotImplementedError

    def step(self, projected, states, training=False):
        """One time step: projected inputs [B, G] and states -> (output [B, U], new states)."""
        del training  # the cells have no training-only behaviour; see DropoutWrapper
        return self.step_with(self.step_weights(), projected, list(states))

    def step_with(self, weights, projected, states):
        """One step's math: projected [..., B, G], states [..., B, U] -> (output [..., B, U], new
        states), where "..." is nothing or [2] (two directions at once; see the cell protocol)."""
        raise NotImplementedError

    def call(self, inputs, states, training=False):
        return self.step(self.project_inputs(inputs), states, training)

    def fusion_key(self):
        """Two cells with equal keys can run stacked in one loop (see bidirectional_dynamic_rnn)."""
        return (type(self), self.num_units, tuple(self.kernel.shape), self.state_dtype, self.matmul_dtype)

    def get_config(self):
        return {**super().get_config(), "num_units": self.num_units}


@keras.saving.register_keras_serializable(package="asr")
class LSTMCell(RecurrentCell):
    """LSTM cell (Hochreiter & Schmidhuber), as TF1's LSTMCell with Keras' weight layout.

    kernel [D, 4U], recurrent_kernel [U, 4U], bias [4U], gate order i, f, c, o: the weights of
    `keras.layers.LSTM` load as they are (Keras adds no forget_bias: use forget_bias=0.0 then).
    `forget_bias` is added to the forget gate's pre-activation. With `use_peepholes`, the gates
    i and f also see the previous c, and o the new c (diagonal `peephole_kernel` [3, U], rows i, f, o).
    State [h, c].
    """

    GATES = 4
    NUM_STATES = 2

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
        weights = {RECURRENT_KERNEL: self._read(self.recurrent_kernel, matmul=True)}
        if self.use_peepholes:
            peep_i, peep_f, peep_o = tf.unstack(self._read(self.peephole_kernel))
            weights.update(peephole_i=peep_i, peephole_f=peep_f, peephole_o=peep_o)
        return weights

    def step_with(self, weights, projected, states):
        h, c = states
        z = projected + recurrent_matmul(h, weights[RECURRENT_KERNEL])
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
class LayerNormLSTMCell(RecurrentCell):
    """LSTM with layer normalisation, as TF1's LayerNormBasicLSTMCell (Ba et al., 2016).

    Each gate's pre-activation W x + U h is normalised separately (gains `gate_gain` [4, U], shifts
    `gate_shift` [4, U], gate order i, f, c, o; the shifts take the place of a bias), then
    forget_bias is added to the forget gate; the new cell state is normalised too (`state_gain`,
    `state_shift` [U]) before it is carried and squashed into h. Gains start at 1, shifts at 0.
    kernel [D, 4U], recurrent_kernel [U, 4U], no bias. State [h, c].
    """

    GATES = 4
    NUM_STATES = 2

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
            RECURRENT_KERNEL: self._read(self.recurrent_kernel, matmul=True),
            "gate_gain": self._read(self.gate_gain),
            "gate_shift": self._read(self.gate_shift) + forget,
            "state_gain": self._read(self.state_gain),
            "state_shift": self._read(self.state_shift),
        }

    def step_with(self, weights, projected, states):
        h, c = states
        z = projected + recurrent_matmul(h, weights[RECURRENT_KERNEL])
        z = _layer_norm(_split_blocks(z, 4, self.num_units), weights["gate_gain"], weights["gate_shift"])
        i, f, g, o = tf.unstack(z, axis=-2)
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        new_c = _layer_norm(new_c, weights["state_gain"], weights["state_shift"])
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        return new_h, [new_h, new_c]

    def get_config(self):
        return {**super().get_config(), "forget_bias": self.forget_bias}


@keras.saving.register_keras_serializable(package="asr")
class GRUCell(RecurrentCell):
    """GRU cell (Cho et al., 2014) with the reset gate applied after the recurrent matmul, as
    `keras.layers.GRU` (reset_after=True, cuDNN's form; one recurrent matmul per step).

    kernel [D, 3U], recurrent_kernel [U, 3U], bias [2, 3U] (input bias, recurrent bias), gate
    order z, r, h: the weights of `keras.layers.GRU` load as they are. h' = z h + (1 - z) tanh(
    W_h x + b_h + r (U_h h + b'_h)). State [h].
    """

    GATES = 3
    NUM_STATES = 1
    ADDITIVE_RECURRENCE = False  # r multiplies part of h @ recurrent_kernel

    def _build_extra(self):
        self.bias = self.add_weight(name="bias", shape=(2, 3 * self.num_units), initializer="zeros")

    def _input_bias(self):
        return self._read(self.bias)[0]

    def step_weights(self):
        return {
            RECURRENT_KERNEL: self._read(self.recurrent_kernel, matmul=True),
            "recurrent_bias": self._read(self.bias)[1],
        }

    def step_with(self, weights, projected, states):
        h = states[0]
        units = self.num_units
        recurrent = recurrent_matmul(h, weights[RECURRENT_KERNEL]) + weights["recurrent_bias"]
        x_zr, x_h = tf.split(projected, [2 * units, units], axis=-1)
        r_zr, r_h = tf.split(recurrent, [2 * units, units], axis=-1)
        z, r = tf.split(tf.sigmoid(x_zr + r_zr), 2, axis=-1)
        candidate = tf.tanh(x_h + r * r_h)
        new_h = candidate + z * (h - candidate)
        return new_h, [new_h]


@keras.saving.register_keras_serializable(package="asr")
class LayerNormGRUCell(RecurrentCell):
    """GRU with layer normalisation: the pre-activations of z and r (W x + U h) and of the candidate
    (W_h x + r U_h h) are each normalised separately (gains `gate_gain` [3, U], shifts `gate_shift`
    [3, U], order z, r, h; the shifts take the place of biases). kernel [D, 3U], recurrent_kernel
    [U, 3U]. State [h].
    """

    GATES = 3
    NUM_STATES = 1
    ADDITIVE_RECURRENCE = False  # r multiplies part of h @ recurrent_kernel

    def _build_extra(self):
        units = self.num_units
        self.gate_gain = self.add_weight(name="gate_gain", shape=(3, units), initializer="ones")
        self.gate_shift = self.add_weight(name="gate_shift", shape=(3, units), initializer="zeros")

    def step_weights(self):
        gain = self._read(self.gate_gain)
        shift = self._read(self.gate_shift)
        return {
            RECURRENT_KERNEL: self._read(self.recurrent_kernel, matmul=True),
            "zr_gain": gain[:2],
            "zr_shift": shift[:2],
            "candidate_gain": gain[2],
            "candidate_shift": shift[2],
        }

    def step_with(self, weights, projected, states):
        h = states[0]
        units = self.num_units
        recurrent = recurrent_matmul(h, weights[RECURRENT_KERNEL])
        x_zr, x_h = tf.split(projected, [2 * units, units], axis=-1)
        r_zr, r_h = tf.split(recurrent, [2 * units, units], axis=-1)
        zr = _layer_norm(_split_blocks(x_zr + r_zr, 2, units), weights["zr_gain"], weights["zr_shift"])
        z, r = tf.unstack(tf.sigmoid(zr), axis=-2)
        candidate = tf.tanh(_layer_norm(x_h + r * r_h, weights["candidate_gain"], weights["candidate_shift"]))
        new_h = candidate + z * (h - candidate)
        return new_h, [new_h]

