"""asr.rnn's package guarantees: a cell written by the cell protocol alone runs in every loop; the
loop takes its inputs in step order; the kernel gradient is exact and fails loudly out of order."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr import rnn
from asr.rnn.gradient import KernelGradient
from asr.rnn.loop import forward_only, loop, unroll

BATCH, TIME, FEATURES, UNITS = 3, 6, 5, 4
LENGTHS = np.array([6, 2, 0], np.int32)  # full, short, empty


class GainedTanhCell(rnn.RecurrentCell):
    """A cell made from the protocol in asr.rnn's docstring only: h' = gain * tanh(W x + b + h U),
    one gate block, one state, an elementwise weight (gain [U]) besides the recurrent kernel."""

    GATES = 1
    NUM_STATES = 1

    def __init__(self, num_units, additive=True, **kwargs):
        super().__init__(num_units, **kwargs)
        self.ADDITIVE_RECURRENCE = additive  # False: the loop's own backward pass computes U's gradient

    def _build_extra(self):
        self.bias = self.add_weight(name="bias", shape=(self.num_units,), initializer="zeros")
        self.gain = self.add_weight(name="gain", shape=(self.num_units,), initializer="ones")

    def _input_bias(self):
        return self._read(self.bias)

    def step_weights(self):
        return {rnn.RECURRENT_KERNEL: self._read(self.recurrent_kernel, matmul=True), "gain": self._read(self.gain)}

    def step_with(self, weights, projected, states):
        new_h = weights["gain"] * tf.tanh(projected + rnn.recurrent_matmul(states[0], weights[rnn.RECURRENT_KERNEL]))
        return new_h, [new_h]


def new_cell(seed, additive=True):
    cell = GainedTanhCell(UNITS, additive=additive)
    cell.build((None, FEATURES))
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in cell.get_weights()])
    return cell


def padded_inputs(seed=0):
    x = np.random.default_rng(seed).standard_normal((BATCH, TIME, FEATURES)).astype(np.float32)
    return tf.constant(x * (np.arange(TIME)[None, :] < LENGTHS[:, None])[..., None])


def values_and_gradients(run, cells, x):
    """run() -> nested outputs; returns (flat outputs, gradients of their squared sum for the
    cells' variables and x)."""
    variables = [v for cell in cells for v in cell.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = tf.nest.flatten(run())
        loss = sum(tf.reduce_sum(tf.square(o)) for o in outputs)
    return outputs, tape.gradient(loss, variables + [x])


def assert_all_close(ours, theirs, **tolerance):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, **(tolerance or dict(rtol=1e-5, atol=1e-5)))


def test_a_protocol_cell_matches_keras_rnn_values_and_gradients():
    cell = new_cell(1)
    x = padded_inputs()
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    ours = values_and_gradients(lambda: rnn.dynamic_rnn(cell, x), [cell], x)
    theirs = values_and_gradients(lambda: layer(x), [cell], x)
    assert_all_close(ours[0], theirs[0])
    assert_all_close(ours[1], theirs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("additive", [True, False])
def test_a_protocol_cell_runs_fused_bidirectional_and_static_as_alone(additive):
    """Both directions fused on [2, B, U] states (equal fusion keys), masked by lengths: the same
    values and gradients as each direction by itself; so does static_rnn. With additive=False the
    loop's own backward pass computes U's gradient: the kernel gradient changes nothing."""
    fw, bw = new_cell(2, additive), new_cell(3, additive)
    assert fw.fusion_key() == bw.fusion_key()
    x = padded_inputs(4)
    fused = values_and_gradients(lambda: rnn.bidirectional_dynamic_rnn(fw, bw, x, LENGTHS), [fw, bw], x)

    def alone():
        out_fw, state_fw = rnn.dynamic_rnn(fw, x, LENGTHS)
        backward = tf.reverse_sequence(x, LENGTHS, seq_axis=1, batch_axis=0)
        out_bw, state_bw = rnn.dynamic_rnn(bw, backward, LENGTHS)
        return (out_fw, tf.reverse_sequence(out_bw, LENGTHS, seq_axis=1, batch_axis=0)), (state_fw, state_bw)

    separate = values_and_gradients(alone, [fw, bw], x)
    assert_all_close(fused[0], separate[0])
    assert_all_close(fused[1], separate[1], rtol=1e-4, atol=1e-5)

    static = values_and_gradients(lambda: rnn.static_rnn(fw, tf.unstack(x, axis=1), sequence_length=LENGTHS), [fw], x)
    dynamic = values_and_gradients(lambda: rnn.dynamic_rnn(fw, x, LENGTHS), [fw], x)
    assert_all_close([tf.stack(static[0][:TIME], axis=1), *static[0][TIME:]], dynamic[0])
    assert_all_close(static[1], dynamic[1], rtol=1e-4, atol=1e-5)


def test_the_kernel_gradient_is_additive_or_not_the_same():
    x = padded_inputs(5)
    additive, plain = new_cell(6, additive=True), new_cell(6, additive=False)
    ours = values_and_gradients(lambda: rnn.dynamic_rnn(additive, x, LENGTHS), [additive], x)
    reference = values_and_gradients(lambda: rnn.dynamic_rnn(plain, x, LENGTHS), [plain], x)
    assert_all_close(ours[0], reference[0], rtol=0, atol=0)
    assert_all_close(ours[1], reference[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read", ["pop", "forward_only", "unroll"])
def test_the_loop_takes_its_inputs_in_step_order(read):
    """Step t sees inputs[t] (the loop owns how its TensorList holds them), outputs come back in
    step order, and the inputs' gradient lands on the step that read them."""
    inputs = tf.constant(np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3))
    lengths = tf.constant([4, 2])
    weights = tf.constant(np.random.default_rng(7).standard_normal((4, 2, 3)).astype(np.float32))

    def step(inputs_t, states):
        (x,), (count,) = inputs_t, states
        return [x + 0.0 * count], [count + 1.0]  # the output is the step's input

    with tf.GradientTape() as tape:
        tape.watch(inputs)
        start = [tf.zeros([2, 3])]
        if read == "unroll":
            (outputs,), (count,) = unroll(step, [inputs], start, lengths)
        elif read == "forward_only":
            with forward_only():
                (outputs,), (count,) = loop(step, [inputs], start, [tf.TensorShape([2, 3])], lengths, 4)
        else:
            (outputs,), (count,) = loop(step, [inputs], start, [tf.TensorShape([2, 3])], lengths, 4)
        loss = tf.reduce_sum(outputs * weights)
    valid = (np.arange(4)[:, None] < lengths.numpy()[None, :])[..., None]
    np.testing.assert_array_equal(outputs, inputs.numpy() * valid)
    np.testing.assert_array_equal(count[:, 0], [4.0, 2.0])  # steps past a length keep the state
    np.testing.assert_array_equal(tape.gradient(loss, inputs), weights.numpy() * valid)


# --- the kernel gradient -------------------------------------------------------------------------


def kernel_gradient_problem(seed=8, steps=5, batch=2, units=3, gates=4):
    """A stand-in for a loop: z_t = projected_t + h_{t-1} U for given h's; loss = sum_t <z_t, w_t>,
    so dL/dU = sum_t h_{t-1}^T w_t."""
    rng = np.random.default_rng(seed)

    def tensor(*shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32))

    return tf.Variable(tensor(units, gates)), tensor(steps, batch, gates), tensor(steps, batch, units), tensor(steps, batch, gates)


def test_the_kernel_gradient_is_one_matmul_over_the_steps():
    kernel, projected, carried, w = kernel_gradient_problem()
    gradient = KernelGradient()
    with tf.GradientTape() as tape:
        hooked, frozen = gradient.attach(projected, tf.identity(kernel))
        z = hooked + tf.einsum("nbu,ug->nbg", carried, frozen.kernel)
        loss = tf.reduce_sum(z * w)
    gradient.set_carried(carried[0], carried[1:])
    np.testing.assert_allclose(tape.gradient(loss, kernel), tf.einsum("nbu,nbg->ug", carried, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(frozen.transposed, tf.transpose(kernel))


def test_the_kernel_gradient_fails_loudly_out_of_order():
    kernel, projected, carried, w = kernel_gradient_problem()
    gradient = KernelGradient()
    with pytest.raises(RuntimeError, match="out of order"):
        gradient.set_carried(carried[0], carried[1:])  # before attach
    with tf.GradientTape() as tape:
        hooked, _ = gradient.attach(projected, tf.identity(kernel))
        loss = tf.reduce_sum(hooked * w)
    with pytest.raises(RuntimeError, match="out of order"):
        gradient.attach(projected, kernel)  # a second time
    with pytest.raises(RuntimeError, match="before set_carried"):
        tape.gradient(loss, kernel)  # the h's of the loop are not known yet
    gradient.set_carried(carried[0], carried[1:])
    with pytest.raises(RuntimeError, match="out of order"):
        gradient.set_carried(carried[0], carried[1:])  # a second time
