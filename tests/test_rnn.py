"""asr.rnn: padded batches behave as their sequences run alone; cells match Keras; gradients are exact."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr import rnn

BATCH, TIME, FEATURES, UNITS = 3, 6, 5, 4
LENGTHS = np.array([6, 2, 0], np.int32)  # full, short, empty

CELLS = {
    "lstm": lambda: rnn.LSTMCell(UNITS),
    "peephole_lstm": lambda: rnn.LSTMCell(UNITS, use_peepholes=True),
    "layer_norm_lstm": lambda: rnn.LayerNormLSTMCell(UNITS),
    "gru": lambda: rnn.GRUCell(UNITS),
    "layer_norm_gru": lambda: rnn.LayerNormGRUCell(UNITS),
}


def random_inputs(batch=BATCH, time=TIME, features=FEATURES, seed=0):
    """[batch, time, features], zero past LENGTHS as a padded batch holds."""
    x = np.random.default_rng(seed).standard_normal((batch, time, features)).astype(np.float32)
    if batch == BATCH:
        x *= (np.arange(time)[None, :] < LENGTHS[:, None])[..., None]
    return x


def random_states(cell, seed=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.standard_normal((BATCH, size)).astype(np.float32)) for size in cell.state_size]


def run_alone(cell, x, b, initial_state=None):
    """Sequence b run by itself, unpadded: (outputs [L, U], final states [size] each)."""
    state = None if initial_state is None else [s[b : b + 1] for s in initial_state]
    outputs, final = rnn.dynamic_rnn(cell, x[b : b + 1, : LENGTHS[b]], initial_state=state)
    return outputs[0].numpy(), [s[0].numpy() for s in final]


def run_alone_backward(cell, x, b):
    """Sequence b reversed, run by itself, its outputs re-reversed."""
    reversed_x = x[b : b + 1, : LENGTHS[b]][:, ::-1]
    outputs, final = rnn.dynamic_rnn(cell, reversed_x)
    return outputs[0].numpy()[::-1], [s[0].numpy() for s in final]


def to_time_major(x):
    return np.transpose(x, (1, 0, 2))


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_padded_batch_runs_as_each_sequence_alone(kind, time_major):
    cell = CELLS[kind]()
    x = random_inputs()
    initial = random_states(cell)
    inputs = to_time_major(x) if time_major else x
    outputs, final = rnn.dynamic_rnn(cell, inputs, LENGTHS, initial_state=initial, time_major=time_major)
    outputs = outputs.numpy()
    if time_major:
        outputs = to_time_major(outputs)
    assert outputs.shape == (BATCH, TIME, UNITS)
    for b, length in enumerate(LENGTHS):
        assert np.all(outputs[b, length:] == 0.0), "outputs past the length must be exactly zero"
        if length == 0:
            for state, start in zip(final, initial):
                np.testing.assert_array_equal(state[b], start[b])
            continue
        alone_outputs, alone_final = run_alone(cell, x, b, initial)
        np.testing.assert_allclose(outputs[b, :length], alone_outputs, atol=1e-5)
        for state, alone in zip(final, alone_final):
            np.testing.assert_allclose(state[b], alone, atol=1e-5)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("kinds", [(k, k) for k in sorted(CELLS)] + [("layer_norm_lstm", "gru")])
def test_bidirectional_runs_as_each_sequence_alone(kinds, time_major):
    cell_fw, cell_bw = CELLS[kinds[0]](), CELLS[kinds[1]]()
    x = random_inputs()
    inputs = to_time_major(x) if time_major else x
    (out_fw, out_bw), (state_fw, state_bw) = rnn.bidirectional_dynamic_rnn(
        cell_fw, cell_bw, inputs, LENGTHS, time_major=time_major
    )
    out_fw, out_bw = out_fw.numpy(), out_bw.numpy()
    if time_major:
        out_fw, out_bw = to_time_major(out_fw), to_time_major(out_bw)
    for b, length in enumerate(LENGTHS):
        assert np.all(out_fw[b, length:] == 0.0) and np.all(out_bw[b, length:] == 0.0)
        if length == 0:
            assert all(np.all(s[b].numpy() == 0.0) for s in state_fw + state_bw)
            continue
        alone_fw, alone_state_fw = run_alone(cell_fw, x, b)
        alone_bw, alone_state_bw = run_alone_backward(cell_bw, x, b)
        np.testing.assert_allclose(out_fw[b, :length], alone_fw, atol=1e-5)
        np.testing.assert_allclose(out_bw[b, :length], alone_bw, atol=1e-5)
        for state, alone in zip(state_fw + state_bw, alone_state_fw + alone_state_bw):
            np.testing.assert_allclose(state[b], alone, atol=1e-5)


@pytest.mark.parametrize("time_major", [False, True])
def test_stacked_bidirectional_runs_as_each_sequence_alone(time_major):
    cells_fw = [rnn.LayerNormLSTMCell(UNITS), rnn.LayerNormLSTMCell(UNITS)]
    cells_bw = [rnn.LayerNormLSTMCell(UNITS), rnn.LayerNormLSTMCell(UNITS)]
    x = random_inputs()
    inputs = to_time_major(x) if time_major else x
    outputs, states_fw, states_bw = rnn.stack_bidirectional_dynamic_rnn(
        cells_fw, cells_bw, inputs, LENGTHS, time_major=time_major
    )
    outputs = to_time_major(outputs.numpy()) if time_major else outputs.numpy()
    assert outputs.shape == (BATCH, TIME, 2 * UNITS)
    assert len(states_fw) == len(states_bw) == 2
    for b, length in enumerate(LENGTHS):
        assert np.all(outputs[b, length:] == 0.0)
        if length == 0:
            continue
        alone, alone_fw, alone_bw = rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x[b : b + 1, :length])
        np.testing.assert_allclose(outputs[b, :length], alone[0], atol=1e-5)
        for state, alone_state in zip(tf.nest.flatten(states_fw + states_bw), tf.nest.flatten(alone_fw + alone_bw)):
            np.testing.assert_allclose(state[b], alone_state[0], atol=1e-5)


def test_lstm_cell_matches_keras_lstm_given_its_weights():
    x = random_inputs(batch=2, seed=3)
    keras_lstm = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    expected_outputs, expected_h, expected_c = keras_lstm(x)
    cell = rnn.LSTMCell(UNITS, forget_bias=0.0)  # Keras puts its forget bias in the bias vector
    cell.build((None, FEATURES))
    cell.set_weights(keras_lstm.get_weights())
    outputs, (h, c) = rnn.dynamic_rnn(cell, x)
    np.testing.assert_allclose(outputs, expected_outputs, atol=1e-5)
    np.testing.assert_allclose(h, expected_h, atol=1e-5)
    np.testing.assert_allclose(c, expected_c, atol=1e-5)


def test_gru_cell_matches_keras_gru_given_its_weights():
    x = random_inputs(batch=2, seed=4)
    keras_gru = keras.layers.GRU(UNITS, return_sequences=True)
    cell = rnn.GRUCell(UNITS)
    cell.build((None, FEATURES))
    expected = keras_gru(x)
    weights = keras_gru.get_weights()
    weights[2] = np.random.default_rng(5).standard_normal(weights[2].shape).astype(np.float32)  # nonzero biases
    keras_gru.set_weights(weights)
    cell.set_weights(weights)
    expected = keras_gru(x)
    np.testing.assert_allclose(rnn.dynamic_rnn(cell, x)[0], expected, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_static_rnn_equals_dynamic_rnn(kind):
    cell = CELLS[kind]()
    x = random_inputs()
    expected_outputs, expected_final = rnn.dynamic_rnn(cell, x, LENGTHS)
    outputs, final = rnn.static_rnn(cell, tf.unstack(x, axis=1), sequence_length=LENGTHS)
    assert len(outputs) == TIME
    np.testing.assert_allclose(tf.stack(outputs, axis=1), expected_outputs, atol=1e-6)
    for state, expected in zip(final, expected_final):
        np.testing.assert_allclose(state, expected, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cells_work_in_keras_rnn(kind):
    cell = CELLS[kind]()
    x = random_inputs(seed=6)
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    outputs, *states = layer(x)
    expected_outputs, expected_states = rnn.dynamic_rnn(cell, x)
    np.testing.assert_allclose(outputs, expected_outputs, atol=1e-5)
    for state, expected in zip(states, expected_states):
        np.testing.assert_allclose(state, expected, atol=1e-5)


def squared_sum_loss(outputs, states):
    return tf.reduce_sum(tf.square(outputs)) + sum(tf.reduce_sum(s * s) for s in tf.nest.flatten(states))


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_gradients_equal_the_sum_over_sequences_alone_and_ignore_padding(kind):
    """The fast gradients (kernel gradient after the loop, hand-written layer norm) are exact, and
    padded frames get exactly zero gradient."""
    cells_fw, cells_bw = [CELLS[kind]()], [CELLS[kind]()]
    x = tf.constant(random_inputs(seed=7))
    rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x[:1, :1])  # build
    variables = cells_fw[0].trainable_variables + cells_bw[0].trainable_variables
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, states_fw, states_bw = rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x, LENGTHS)
        loss = squared_sum_loss(outputs, states_fw + states_bw)
    *gradients, d_x = tape.gradient(loss, variables + [x])
    padded = np.arange(TIME)[None, :] >= LENGTHS[:, None]
    assert np.all(d_x.numpy()[padded] == 0.0)

    expected = [tf.zeros_like(v) for v in variables]
    for b, length in enumerate(LENGTHS):
        if length == 0:
            continue
        with tf.GradientTape() as tape:
            alone = rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x[b : b + 1, :length])
            loss = squared_sum_loss(alone[0], alone[1] + alone[2])
        expected = [e + g for e, g in zip(expected, tape.gradient(loss, variables))]
    for gradient, want in zip(gradients, expected):
        np.testing.assert_allclose(gradient, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_gradients_match_keras_rnn_autodiff(kind):
    """Unmasked: dynamic_rnn's gradients equal autodiff through keras.layers.RNN (the training-step
    tests below run the fast gradients inside tf.function)."""
    cell = CELLS[kind]()
    x = tf.constant(random_inputs(batch=2, seed=8))
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    layer(x)

    def gradients():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = rnn.dynamic_rnn(cell, x)
            theirs = layer(x)
            loss_ours = squared_sum_loss(ours[0], ours[1])
            loss_theirs = squared_sum_loss(theirs[0], theirs[1:])
        targets = cell.trainable_variables + [x]
        return tape.gradient(loss_ours, targets), tape.gradient(loss_theirs, targets)

    for ours, theirs in zip(*gradients()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_layer_norm_gradient_matches_autodiff():
    rng = np.random.default_rng(9)
    x, d_y = (tf.constant(rng.standard_normal((2, 3, 4, 5)).astype(np.float32)) for _ in range(2))
    gain, shift = (tf.constant(rng.standard_normal((4, 5)).astype(np.float32)) for _ in range(2))

    def reference(x, gain, shift):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + rnn.LAYER_NORM_EPSILON) * gain + shift

    results = []
    for layer_norm in (rnn._layer_norm, reference):
        with tf.GradientTape() as tape:
            tape.watch([x, gain, shift])
            y = layer_norm(x, gain, shift)
        results.append([y, *tape.gradient(y, [x, gain, shift], output_gradients=d_y)])
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dropout_wrapper_is_the_identity_at_inference():
    cell = rnn.LayerNormLSTMCell(UNITS)
    wrapped = rnn.DropoutWrapper(cell, input_keep_prob=0.5, output_keep_prob=0.5, state_keep_prob=0.5, seed=1)
    x = random_inputs()
    expected = rnn.dynamic_rnn(cell, x, LENGTHS)
    for training in (False, None):
        outputs, states = rnn.dynamic_rnn(wrapped, x, LENGTHS, training=training)
        np.testing.assert_array_equal(outputs, expected[0])
        for state, want in zip(states, expected[1]):
            np.testing.assert_array_equal(state, want)


def test_output_dropout_keeps_about_keep_prob_with_one_mask_per_sequence():
    keep_prob, units, batch, time = 0.7, 64, 32, 5
    cell = rnn.LSTMCell(units)
    wrapped = rnn.DropoutWrapper(cell, output_keep_prob=keep_prob, seed=2)
    x = np.random.default_rng(10).standard_normal((batch, time, FEATURES)).astype(np.float32)
    outputs, states = rnn.dynamic_rnn(wrapped, x, training=True)
    plain_outputs, plain_states = rnn.dynamic_rnn(cell, x)
    kept = outputs.numpy() != 0.0
    assert abs(kept.mean() - keep_prob) < 0.03
    assert np.all(kept == kept[:, :1, :]), "the same units are dropped at every step of a sequence"
    np.testing.assert_allclose(outputs.numpy()[kept], plain_outputs.numpy()[kept] / keep_prob, rtol=1e-5)
    for state, plain in zip(states, plain_states):  # state_keep_prob=1: the state is untouched
        np.testing.assert_array_equal(state, plain)


def test_input_dropout_is_applied_once_per_sequence():
    keep_prob, batch, features = 0.6, 64, 32
    cell = rnn.GRUCell(UNITS)
    wrapped = rnn.DropoutWrapper(cell, input_keep_prob=keep_prob, seed=3)
    x = tf.ones((batch, 4, features))
    masks = wrapped.sample_masks(batch, features, training=True)
    assert masks.outputs is None and masks.state is None
    kept = masks.inputs.numpy() != 0.0
    assert abs(kept.mean() - keep_prob) < 0.03
    np.testing.assert_allclose(masks.inputs.numpy()[kept], 1.0 / keep_prob)
    outputs, _ = rnn.dynamic_rnn(wrapped, x, training=True)
    assert not np.allclose(outputs, rnn.dynamic_rnn(cell, x)[0])


def test_a_dropout_seed_makes_the_masks_a_function_of_it():
    """Stateless masks: a step run again with its seed (a resumed run) draws the same masks, in a
    tf.function too, where the stateful draw gives new masks at every call."""
    keep_prob, batch, units = 0.7, 32, 64
    wrapped = rnn.DropoutWrapper(rnn.LSTMCell(units), 0.8, keep_prob, 0.9, seed=5)
    x = tf.constant(np.random.default_rng(11).standard_normal((batch, 4, FEATURES)).astype(np.float32))

    @tf.function
    def run(seed):
        return rnn.dynamic_rnn(wrapped, x, training=True, dropout_seed=seed)[0]

    first, again, other = run(tf.constant([0, 7])), run(tf.constant([0, 7])), run(tf.constant([0, 8]))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first != 0, other != 0)
    kept = first.numpy() != 0.0
    assert abs(kept.mean() - keep_prob) < 0.03 and np.all(kept == kept[:, :1, :])
    stateful = tf.function(lambda: rnn.dynamic_rnn(wrapped, x, training=True)[0])
    assert not np.array_equal(stateful() != 0, stateful() != 0)
    masks = wrapped.sample_masks(batch, FEATURES, True, tf.constant([0, 7]))
    np.testing.assert_array_equal(masks.inputs, wrapped.sample_masks(batch, FEATURES, True, tf.constant([0, 7])).inputs)


def test_wrappers_with_neighbouring_seeds_draw_unrelated_stateless_masks():
    """The model seeds its wrappers seed, seed + 1, ...: the stateless keys fold in the wrapper's
    seed and the mask's kind separately, so wrapper s's output mask is not wrapper s + 1's input mask."""
    first = rnn.DropoutWrapper(rnn.LSTMCell(UNITS), 0.5, 0.5, seed=10)
    second = rnn.DropoutWrapper(rnn.LSTMCell(UNITS), 0.5, 0.5, seed=11)
    seed = tf.constant([0, 3])
    a, b = first.sample_masks(64, UNITS, True, seed), second.sample_masks(64, UNITS, True, seed)
    assert not np.array_equal(a.outputs, b.inputs) and not np.array_equal(a.inputs, b.inputs)


def test_state_dropout_changes_the_carried_state():
    cell = rnn.LSTMCell(UNITS)
    wrapped = rnn.DropoutWrapper(cell, state_keep_prob=0.5, seed=4)
    x = random_inputs()
    outputs, (h, c) = rnn.dynamic_rnn(wrapped, x, training=True)
    plain_outputs, (plain_h, plain_c) = rnn.dynamic_rnn(cell, x)
    assert not np.allclose(c, plain_c)
    np.testing.assert_allclose(outputs[:, 0], plain_outputs[:, 0], atol=1e-6)  # the first step sees h0 only


def test_peepholes_change_the_result():
    x = random_inputs()
    plain, peephole = rnn.LSTMCell(UNITS), rnn.LSTMCell(UNITS, use_peepholes=True)
    plain.build((None, FEATURES))
    peephole.build((None, FEATURES))
    peephole.set_weights(plain.get_weights() + [np.full((3, UNITS), 0.5, np.float32)])
    assert not np.allclose(rnn.dynamic_rnn(plain, x)[0], rnn.dynamic_rnn(peephole, x)[0], atol=1e-3)
    peephole.set_weights(plain.get_weights() + [np.zeros((3, UNITS), np.float32)])
    np.testing.assert_allclose(rnn.dynamic_rnn(plain, x)[0], rnn.dynamic_rnn(peephole, x)[0], atol=1e-6)


@pytest.mark.parametrize("cell_class", [rnn.LayerNormLSTMCell, rnn.LayerNormGRUCell, rnn.LSTMCell])
def test_layer_norm_cells_ignore_the_scale_of_their_weights(cell_class):
    """Each gate's pre-activation W x + U h is normalised: scaling W and U by 10 changes nothing
    (up to the variance epsilon), where it changes a plain LSTM a lot."""
    x = random_inputs()
    cell, scaled = cell_class(UNITS), cell_class(UNITS)
    cell.build((None, FEATURES))
    scaled.build((None, FEATURES))
    scaled.set_weights(cell.get_weights())
    scaled.kernel.assign(cell.kernel * 10.0)
    scaled.recurrent_kernel.assign(cell.recurrent_kernel * 10.0)
    difference = np.abs(rnn.dynamic_rnn(scaled, x, LENGTHS)[0] - rnn.dynamic_rnn(cell, x, LENGTHS)[0]).max()
    if cell_class is rnn.LSTMCell:
        assert difference > 0.1
    else:
        assert difference < 1e-3


class TinyAcousticModel(keras.Model):
    """As the acoustic model uses the toolkit: cells made in __init__, the stack run in call."""

    def __init__(self, units=UNITS, layers=2, keep_prob=0.8):
        super().__init__()

        def cells():
            return [
                rnn.DropoutWrapper(rnn.LayerNormLSTMCell(units), keep_prob, keep_prob, seed=i) for i in range(layers)
            ]

        self.cells_fw, self.cells_bw = cells(), cells()
        self.projection = keras.layers.Dense(3)

    def call(self, features, lengths, training=False):
        outputs, _, _ = rnn.stack_bidirectional_dynamic_rnn(
            self.cells_fw, self.cells_bw, features, sequence_length=lengths, training=training
        )
        return self.projection(outputs)


def make_train_step(model, optimizer):
    spec = [tf.TensorSpec([None, None, FEATURES]), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec)
    def train_step(features, lengths):
        with tf.GradientTape() as tape:
            logits = model(features, lengths, training=True)
            loss = tf.reduce_mean(tf.square(logits - 1.0))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, gradients

    return train_step


def test_keras_model_built_and_trained_inside_tf_function():
    model = TinyAcousticModel()
    train_step = make_train_step(model, keras.optimizers.Adam(0.01))
    x = random_inputs()
    lengths = np.array([6, 2, 1], np.int32)
    first_loss, gradients = train_step(x, lengths)  # the first call builds every weight
    traces = train_step.experimental_get_tracing_count()  # tf.function traces again after creating variables
    # 2 layers x 2 directions x (kernel, recurrent_kernel, 2 gains, 2 shifts) + dense kernel and bias
    assert len(model.trainable_variables) == 2 * 2 * 6 + 2
    assert all(g is not None and np.all(np.isfinite(g)) for g in gradients)
    for _ in range(8):
        loss, _ = train_step(x[:, :5], np.minimum(lengths, 5))  # another padded time: no retrace
    assert loss < first_loss
    assert train_step.experimental_get_tracing_count() == traces


def test_mirrored_strategy_train_step():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = TinyAcousticModel(layers=1)
        optimizer = keras.optimizers.Adam(0.01)
        x = random_inputs()
        model(x, LENGTHS)
        optimizer.build(model.trainable_variables)
    train_step = make_train_step(model, optimizer)

    @tf.function
    def distributed_step(features, lengths):
        return strategy.run(train_step, args=(features, lengths))[0]

    loss = distributed_step(tf.constant(x), tf.constant(LENGTHS))
    assert np.isfinite(float(strategy.reduce("MEAN", loss, axis=None)))


def test_dropout_wrapper_round_trips_its_config_and_runs_in_keras_rnn():
    wrapped = rnn.DropoutWrapper(rnn.LayerNormLSTMCell(UNITS, forget_bias=0.5), 0.9, 0.8, 0.7, seed=5)
    copy = keras.layers.deserialize(keras.layers.serialize(wrapped))
    assert isinstance(copy.cell, rnn.LayerNormLSTMCell) and copy.cell.forget_bias == 0.5
    assert (copy.input_keep_prob, copy.output_keep_prob, copy.state_keep_prob, copy.seed) == (0.9, 0.8, 0.7, 5)
    x = random_inputs()
    outputs = keras.layers.RNN(wrapped, return_sequences=True)(x)  # inference: no dropout
    np.testing.assert_allclose(outputs, rnn.dynamic_rnn(wrapped.cell, x)[0], atol=1e-5)


def test_mismatched_stacks_and_bad_keep_probs_are_rejected():
    with pytest.raises(ValueError, match="as many forward as backward"):
        rnn.stack_bidirectional_dynamic_rnn([rnn.LSTMCell(2)], [], random_inputs())
    with pytest.raises(ValueError, match="input_keep_prob"):
        rnn.DropoutWrapper(rnn.LSTMCell(2), input_keep_prob=0.0)
