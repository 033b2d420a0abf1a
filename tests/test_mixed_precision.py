"""Mixed precision (train.precision): asr.rnn's fast gradients against autodiff of a plain reference
computation in float32 and in bfloat16, float32 weights and logits, training and inference.

The reference runs each sequence alone, unpadded, one step at a time in plain TensorFlow ops
(tf.nn.moments layer norm, no custom gradient, the recurrent kernel's gradient summed step by step
by autodiff), with its matmul operands cast to the compute dtype at the same places as asr.rnn.

bfloat16 tolerance: bf16 keeps 8 significant bits, a relative rounding error of up to 2^-8 = 0.4%
per rounded operand. Both computations round the same operands, but in different orders (one
matmul over all steps against per-step matmuls; bf16 products accumulated in float32 against a
bf16 AddN), so they agree only to a few roundings. Measured here (8 units, 6 steps, 2
bidirectional layers): ours and the bf16 reference differ by at most 0.52% of a gradient's largest
entry, for every cell; each is 0.4% to 3.5% from the exact float32 gradient (most for the
layer-normalised GRU, where normalising over 8 units amplifies the rounding of its inputs). The
test allows 3% between ours and the bf16 reference (BF16_TOLERANCE, ~6x the measured error) and
requires ours to be no further from float32 than twice the reference's own distance (or 1%):
the hand-written gradients lose nothing that autodiff in bf16 keeps. float32: rtol 1e-4, as the
other gradient tests of asr.rnn.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr import rnn
from test_rnn import FEATURES, LENGTHS, TIME, random_inputs, squared_sum_loss

UNITS = 8
KINDS = {
    "lstm": lambda dtype: rnn.LSTMCell(UNITS, dtype=dtype),
    "peephole_lstm": lambda dtype: rnn.LSTMCell(UNITS, use_peepholes=True, dtype=dtype),
    "layer_norm_lstm": lambda dtype: rnn.LayerNormLSTMCell(UNITS, dtype=dtype),
    "gru": lambda dtype: rnn.GRUCell(UNITS, dtype=dtype),
    "layer_norm_gru": lambda dtype: rnn.LayerNormGRUCell(UNITS, dtype=dtype),
}
POLICIES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}
BF16_TOLERANCE = 0.03  # of the largest gradient entry; see the module docstring
F32_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


# --- the reference: plain ops, autodiff only ----------------------------------------------------


def mm(a, b, dtype):
    """a @ b with both operands in dtype (as asr.rnn's matmuls), the product in float32."""
    return tf.cast(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype)), tf.float32)


def layer_norm(x, gain, shift):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + rnn.LAYER_NORM_EPSILON) * gain + shift


def reference_step(cell, x, states, dtype):
    """One step of cell's math on x [B, D] and float32 states, from its float32 variables."""
    units, h = cell.num_units, states[0]
    if isinstance(cell, rnn.LSTMCell):
        c = states[1]
        forget = np.concatenate([np.zeros(units), np.full(units, cell.forget_bias), np.zeros(2 * units)]).astype(np.float32)
        z = mm(x, cell.kernel, dtype) + cell.bias + forget + mm(h, cell.recurrent_kernel, dtype)
        i, f, g, o = tf.split(z, 4, axis=-1)
        if cell.use_peepholes:
            i += cell.peephole_kernel[0] * c
            f += cell.peephole_kernel[1] * c
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        if cell.use_peepholes:
            o += cell.peephole_kernel[2] * new_c
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        return [new_h, new_c]
    if isinstance(cell, rnn.LayerNormLSTMCell):
        c = states[1]
        z = mm(x, cell.kernel, dtype) + mm(h, cell.recurrent_kernel, dtype)
        forget = np.array([[0.0], [cell.forget_bias], [0.0], [0.0]], np.float32)
        gates = [layer_norm(z_k, cell.gate_gain[k], cell.gate_shift[k] + forget[k]) for k, z_k in enumerate(tf.split(z, 4, axis=-1))]
        i, f, g, o = gates
        new_c = layer_norm(tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g), cell.state_gain, cell.state_shift)
        return [tf.sigmoid(o) * tf.tanh(new_c), new_c]
    if isinstance(cell, rnn.GRUCell):
        x_z, x_r, x_h = tf.split(mm(x, cell.kernel, dtype) + cell.bias[0], 3, axis=-1)
        r_z, r_r, r_h = tf.split(mm(h, cell.recurrent_kernel, dtype) + cell.bias[1], 3, axis=-1)
        z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
        candidate = tf.tanh(x_h + r * r_h)
        return [z * h + (1 - z) * candidate]
    assert isinstance(cell, rnn.LayerNormGRUCell)
    x_z, x_r, x_h = tf.split(mm(x, cell.kernel, dtype), 3, axis=-1)
    r_z, r_r, r_h = tf.split(mm(h, cell.recurrent_kernel, dtype), 3, axis=-1)
    z = tf.sigmoid(layer_norm(x_z + r_z, cell.gate_gain[0], cell.gate_shift[0]))
    r = tf.sigmoid(layer_norm(x_r + r_r, cell.gate_gain[1], cell.gate_shift[1]))
    candidate = tf.tanh(layer_norm(x_h + r * r_h, cell.gate_gain[2], cell.gate_shift[2]))
    return [z * h + (1 - z) * candidate]


def reference_rnn(cell, x, dtype):
    """x [1, L, D] unpadded -> (outputs [1, L, U], final states)."""
    states = [tf.zeros([1, cell.num_units]) for _ in cell.state_size]
    outputs = []
    for t in range(x.shape[1]):
        states = reference_step(cell, x[:, t], states, dtype)
        outputs.append(states[0])
    return tf.stack(outputs, axis=1), states


def reference_stack(cells_fw, cells_bw, x, dtype):
    """stack_bidirectional_dynamic_rnn of one unpadded sequence x [1, L, D], step by step."""
    states = []
    for cell_fw, cell_bw in zip(cells_fw, cells_bw):
        out_fw, state_fw = reference_rnn(cell_fw, x, dtype)
        out_bw, state_bw = reference_rnn(cell_bw, x[:, ::-1], dtype)
        x = tf.concat([out_fw, out_bw[:, ::-1]], axis=-1)
        states += [state_fw, state_bw]
    return x, states


# --- gradients ----------------------------------------------------------------------------------


def make_stack(kind, policy, layers=2):
    keras.utils.set_random_seed(11)
    cells_fw = [KINDS[kind](policy) for _ in range(layers)]
    cells_bw = [KINDS[kind](policy) for _ in range(layers)]
    rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, tf.zeros([1, 1, FEATURES]))  # build
    for cell in cells_fw + cells_bw:  # gains and shifts away from 1 and 0, so that their gradients matter
        for weight in cell.trainable_weights:
            if "gain" in weight.name or "shift" in weight.name or "bias" in weight.name or "peephole" in weight.name:
                noise = np.random.default_rng(len(weight.name)).uniform(-0.5, 0.5, weight.shape)
                weight.assign(weight.numpy() + noise.astype(np.float32))
    return cells_fw, cells_bw


def ours_gradients(cells_fw, cells_bw, x):
    """Gradients of the padded batch through asr.rnn (fast gradients), in a tf.function as training runs them."""
    variables = [v for cell in cells_fw + cells_bw for v in cell.trainable_variables]

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, states_fw, states_bw = rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x, LENGTHS)
            loss = squared_sum_loss(outputs, states_fw + states_bw)
        return tape.gradient(loss, variables + [x])

    return [g.numpy() for g in run(x)]


def reference_gradients(cells_fw, cells_bw, x, dtype):
    """The same gradients by autodiff of the reference, summed over the sequences run alone."""
    variables = [v for cell in cells_fw + cells_bw for v in cell.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = 0.0
        for b, length in enumerate(LENGTHS):
            if length:
                outputs, states = reference_stack(cells_fw, cells_bw, x[b : b + 1, :length], dtype)
                loss += squared_sum_loss(outputs, states)
    gradients = tape.gradient(loss, variables + [x])
    return [g.numpy() for g in gradients]


def relative_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_float32_gradients_match_autodiff_of_the_reference(kind):
    cells_fw, cells_bw = make_stack(kind, "float32")
    x = tf.constant(random_inputs(seed=12))
    ours = ours_gradients(cells_fw, cells_bw, x)
    reference = reference_gradients(cells_fw, cells_bw, x, tf.float32)
    assert len(ours) == len(reference) == 2 * 2 * len(cells_fw[0].trainable_variables) + 1
    padded = np.arange(TIME)[None, :] >= LENGTHS[:, None]
    assert np.all(ours[-1][padded] == 0.0), "padded frames get exactly zero gradient"
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, **F32_TOLERANCE)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bfloat16_gradients_match_autodiff_of_the_reference(kind):
    cells_fw, cells_bw = make_stack(kind, "mixed_bfloat16")
    assert all(v.dtype == "float32" for cell in cells_fw for v in cell.weights), "mixed: float32 weights"
    x = tf.constant(random_inputs(seed=12))
    ours = ours_gradients(cells_fw, cells_bw, x)
    reference = reference_gradients(cells_fw, cells_bw, x, tf.bfloat16)
    exact = reference_gradients(cells_fw, cells_bw, x, tf.float32)
    padded = np.arange(TIME)[None, :] >= LENGTHS[:, None]
    assert np.all(ours[-1][padded] == 0.0), "padded frames get exactly zero gradient"
    names = [v.path for cell in cells_fw + cells_bw for v in cell.trainable_variables] + ["inputs"]
    for name, got, want, true in zip(names, ours, reference, exact):
        assert got.dtype == np.float32, name
        assert relative_error(got, want) < BF16_TOLERANCE, (name, relative_error(got, want))
        # no less accurate than autodiff in bf16: within its error of the float32 gradient, or 1%
        assert relative_error(got, true) < max(2 * relative_error(want, true), 0.01), (
            name, relative_error(got, true), relative_error(want, true)
        )


def test_bfloat16_outputs_are_float32_and_close_to_float32():
    cells_fw, cells_bw = make_stack("layer_norm_lstm", "mixed_bfloat16")
    float_fw, float_bw = make_stack("layer_norm_lstm", "float32")
    for mixed, plain in zip(cells_fw + cells_bw, float_fw + float_bw):
        plain.set_weights(mixed.get_weights())
    x = random_inputs(seed=13)
    mixed, _, _ = rnn.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x, LENGTHS)
    plain, _, _ = rnn.stack_bidirectional_dynamic_rnn(float_fw, float_bw, x, LENGTHS)
    assert mixed.dtype == tf.float32
    assert 0 < relative_error(mixed.numpy(), plain.numpy()) < BF16_TOLERANCE  # bf16 matmuls, not float32 ones
    assert np.all(mixed.numpy()[np.arange(TIME)[None, :] >= LENGTHS[:, None]] == 0.0)


def test_cells_of_different_precisions_do_not_share_a_loop():
    plain, mixed = rnn.LayerNormLSTMCell(UNITS), rnn.LayerNormLSTMCell(UNITS, dtype="mixed_bfloat16")
    x = random_inputs()
    rnn.bidirectional_dynamic_rnn(plain, mixed, x, LENGTHS)  # builds both
    assert plain.fusion_key() != mixed.fusion_key()


# --- the model, training and inference ----------------------------------------------------------


def test_precision_is_validated():
    from asr.config import from_dict
    from asr.errors import ConfigError

    assert from_dict({}).train.precision == "float32"
    assert from_dict({"train": {"precision": "mixed_bfloat16"}}).train.precision == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="train.precision.*mixed_bfloat16"):
        from_dict({"train": {"precision": "bfloat16"}})


def test_mixed_model_keeps_float32_weights_and_logits():
    from asr.config import ModelConfig
    from asr.model import AcousticModel

    cfg = ModelConfig(num_layers=2, num_units=8, frame_stack=2, frame_stride=2, input_keep_prob=0.9)
    model = AcousticModel(cfg, num_features=5, vocab_size=6, seed=1, precision="mixed_bfloat16")
    plain = AcousticModel(cfg, num_features=5, vocab_size=6, seed=1)
    model.build_weights()
    plain.build_weights()
    plain.set_weights(model.get_weights())
    assert all(w.dtype == "float32" for w in model.weights)
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 9, 5)).astype(np.float32))
    lengths = tf.constant([9, 4])
    logits, _ = model(x, lengths, training=True, dropout_seed=tf.constant([0, 1]))
    assert logits.dtype == tf.float32
    mixed, _ = model(x, lengths)
    expected, _ = plain(x, lengths)
    assert 0 < relative_error(mixed.numpy(), expected.numpy()) < BF16_TOLERANCE
    with pytest.raises(ValueError, match="precision"):
        AcousticModel(cfg, 5, 6, precision="bfloat16")


def test_loss_scale_halves_on_overflow_and_doubles_after_a_run_of_finite_steps():
    from asr.train import LossScale

    scale = LossScale()
    scale.update(False)
    assert (scale.scale, scale.finite_steps) == (2.0**14, 0)
    for _ in range(LossScale.GROWTH_STEPS - 1):
        scale.update(True)
    assert (scale.scale, scale.finite_steps) == (2.0**14, LossScale.GROWTH_STEPS - 1)
    scale.update(True)
    assert (scale.scale, scale.finite_steps) == (2.0**15, 0)


def test_a_model_trained_in_bfloat16_is_a_float32_model_directory(tmp_path, librispeech_root, monkeypatch):
    """Train a few bf16 steps; the model directory holds float32 weights, and asr.load_model (which
    builds a float32 model whatever train.precision says) transcribes with it, its log-probabilities
    within bf16 rounding of the bf16 model's."""
    import asr
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.train import Trainer, build_dataset
    from test_train import TRAIN_CLEAN_5, UTTERANCES, recipe

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    ids = list(UTTERANCES)[:2]
    folder = recipe(tmp_path, librispeech_root, ids, model={"num_units": 16, "num_layers": 2, "input_keep_prob": 0.9}, train={"precision": "mixed_bfloat16"})
    config = load_recipe(folder, ["train.max_steps=3"])
    trainer = Trainer(config, tmp_path / "exp", *prepare(config, tmp_path / "exp"))
    trainer.run()
    assert trainer.state.step == 3 and trainer.state.skipped_batches == 0
    with np.load(tmp_path / "exp" / "model" / "weights.npz") as weights:
        assert {weights[name].dtype for name in weights.files} == {np.dtype("float32")}
    recognizer = asr.load_model(tmp_path / "exp" / "model")
    assert recognizer.config.train.precision == "mixed_bfloat16"
    assert all(w.dtype == "float32" for w in recognizer.model.weights)
    for mine, theirs in zip(trainer.model.weights, recognizer.model.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    texts = recognizer.transcribe([librispeech_root / TRAIN_CLEAN_5 / UTTERANCES[i][0] for i in ids])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    dataset, _ = build_dataset(trainer.config, trainer.train_utts, trainer.vocab, trainer.stats, training=False)
    batch = next(iter(dataset))
    _, logp, lengths = trainer.steps.eval_step(batch)
    float_logp, float_lengths = recognizer.log_probs([f[:n] for f, n in zip(batch["features"].numpy(), batch["feature_lengths"].numpy())])
    np.testing.assert_array_equal(lengths, float_lengths)
    for row, float_row, n in zip(logp, float_logp, lengths):
        assert relative_error(np.exp(row[:n]), np.exp(float_row[:n])) < BF16_TOLERANCE  # posteriors
