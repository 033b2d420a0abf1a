"""The acoustic model: frame stacking, output lengths, padding invariance, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from asr import checkpoint, rnn
from asr.config import Config, ModelConfig, from_dict
from asr.errors import DataError
from asr.features import FeatureStats
from asr.model import AcousticModel, output_lengths, stack_frames
from asr.text import Vocabulary


def test_output_lengths():
    assert output_lengths(np.array([0, 1, 3, 4, 300]), 3).tolist() == [0, 1, 1, 2, 100]
    assert int(output_lengths(tf.constant(7), 2)) == 4


def test_stack_frames_windows():
    x = tf.reshape(tf.range(2 * 7 * 2, dtype=tf.float32), [2, 7, 2])
    y = stack_frames(x, tf.constant([7, 5]), stack=3, stride=2).numpy()
    assert y.shape == (2, 4, 6)
    np.testing.assert_array_equal(y[0, 1], x.numpy()[0, 2:5].reshape(-1))
    # Frames past the length are zero, and the last window runs into zeros.
    np.testing.assert_array_equal(y[1, 2], np.concatenate([x.numpy()[1, 4], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(y[0, 3], np.concatenate([x.numpy()[0, 6], [0, 0, 0, 0]]))


def _tiny(cell="ln_lstm", units=8, **kw):
    cfg = ModelConfig(cell=cell, num_layers=2, num_units=units, frame_stack=3, frame_stride=2, **kw)
    model = AcousticModel(cfg, num_features=5, vocab_size=6, seed=1)
    model.build_weights()
    return model


@pytest.mark.parametrize("cell, units", [("lstm", 8), ("ln_lstm", 8), ("ln_lstm", 16), ("gru", 8), ("ln_gru", 8)])
def test_padding_does_not_change_logits(cell, units):
    model = _tiny(cell, units)
    rng = np.random.default_rng(0)
    long, short = rng.normal(size=(11, 5)).astype("f4"), rng.normal(size=(6, 5)).astype("f4")
    batch = np.zeros((2, 11, 5), "f4")
    batch[0], batch[1, :6] = long, short
    batch[1, 6:] = 9.0  # garbage in the padding must not leak
    logits, lengths = model(tf.constant(batch), tf.constant([11, 6]))
    alone, alone_len = model(tf.constant(short[None]), tf.constant([6]))
    assert lengths.numpy().tolist() == [6, 3] and alone_len.numpy().tolist() == [3]
    np.testing.assert_allclose(logits.numpy()[1, :3], alone.numpy()[0], atol=1e-5)


def test_recurrent_loop_names_the_loop_that_runs():
    """ln_lstm with units a multiple of 16 runs natively (where the library builds: CI checks that
    in test_native_rnn.py); 8 units, other cells and state dropout keep the graph loop."""
    assert _tiny("ln_lstm", 16).recurrent_loop() == ("native" if rnn.native_enabled() else "graph")
    assert _tiny("ln_lstm", 8).recurrent_loop() == "graph"
    assert _tiny("lstm", 16).recurrent_loop() == "graph"
    wrapped = rnn.DropoutWrapper(rnn.LayerNormLSTMCell(16), output_keep_prob=0.9)
    assert rnn.runs_native(wrapped) == rnn.native_enabled()
    assert not rnn.runs_native(rnn.DropoutWrapper(rnn.LayerNormLSTMCell(16), state_keep_prob=0.9))


def test_dropout_only_in_training():
    model = _tiny(input_keep_prob=0.5, output_keep_prob=0.5)
    x, n = tf.random.normal([2, 9, 5]), tf.constant([9, 7])
    a, _ = model(x, n, training=False)
    b, _ = model(x, n, training=False)
    c, _ = model(x, n, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


def _config():
    return from_dict({"model": {"num_layers": 1, "num_units": 8, "frame_stack": 3, "frame_stride": 2}, "features": {"n_mfcc": 5, "deltas": False, "n_mels": 10}})


def test_model_dir_round_trip(tmp_path):
    config, vocab = _config(), Vocabulary(Config().text.alphabet)
    model = AcousticModel(config.model, config.features.num_features, vocab.size, seed=3)
    model.build_weights()
    stats = FeatureStats(mean=np.arange(5, dtype="f4"), std=np.ones(5, "f4"))
    checkpoint.save_model_dir(tmp_path / "model", model, config, vocab, stats)
    config2, vocab2, stats2 = checkpoint.read_model_meta(tmp_path / "model")
    assert config2 == config and vocab2.size == vocab.size
    np.testing.assert_array_equal(stats2.mean, stats.mean)
    other = AcousticModel(config2.model, config2.features.num_features, vocab2.size, seed=99)
    other.build_weights()
    checkpoint.load_weights(tmp_path / "model", other)
    x, n = tf.random.normal([1, 8, 5]), tf.constant([8])
    np.testing.assert_array_equal(model(x, n)[0].numpy(), other(x, n)[0].numpy())
    assert not list(tmp_path.glob(".*tmp*")), "temporary directories must be renamed away"


def test_model_dir_errors(tmp_path):
    with pytest.raises(DataError, match="no such model directory"):
        checkpoint.read_model_meta(tmp_path / "missing")
    config, vocab = _config(), Vocabulary(Config().text.alphabet)
    model = AcousticModel(config.model, config.features.num_features, vocab.size)
    model.build_weights()
    stats = FeatureStats(mean=np.zeros(5, "f4"), std=np.ones(5, "f4"))
    checkpoint.save_model_dir(tmp_path / "m", model, config, vocab, stats)
    bigger = AcousticModel(ModelConfig(num_layers=1, num_units=16, frame_stack=3, frame_stride=2), 5, vocab.size)
    bigger.build_weights()
    with pytest.raises(DataError, match="weights.npz"):
        checkpoint.load_weights(tmp_path / "m", bigger)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="config.json: not valid JSON"):
        checkpoint.read_model_meta(tmp_path / "m")


def test_averaging_model_dirs(tmp_path, capsys):
    from asr.cli import main

    config, vocab = _config(), Vocabulary(Config().text.alphabet)
    stats = FeatureStats(mean=np.zeros(5, "f4"), std=np.ones(5, "f4"))
    models = []
    for seed in (1, 2, 3):
        model = AcousticModel(config.model, config.features.num_features, vocab.size, seed=seed)
        model.build_weights()
        checkpoint.save_model_dir(tmp_path / f"m{seed}", model, config, vocab, stats)
        models.append(model)
    assert main(["average", str(tmp_path / "avg"), *(str(tmp_path / f"m{s}") for s in (1, 2, 3))]) == 0
    assert "averaged 3 models" in capsys.readouterr().out
    config2, _, _ = checkpoint.read_model_meta(tmp_path / "avg")
    averaged = AcousticModel(config2.model, config2.features.num_features, vocab.size, seed=9)
    averaged.build_weights()
    checkpoint.load_weights(tmp_path / "avg", averaged)
    for i, var in enumerate(averaged.weights):
        expected = np.mean([m.weights[i].numpy() for m in models], axis=0)
        np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(averaged.weights[0].numpy(), models[0].weights[0].numpy())

    wide = from_dict({"model": {"num_layers": 1, "num_units": 16, "frame_stack": 3, "frame_stride": 2}, "features": {"n_mfcc": 5, "deltas": False, "n_mels": 10}})
    other = AcousticModel(wide.model, 5, vocab.size)
    other.build_weights()
    checkpoint.save_model_dir(tmp_path / "wide", other, wide, vocab, stats)
    assert main(["average", str(tmp_path / "bad"), str(tmp_path / "m1"), str(tmp_path / "wide")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "wide: config section 'model' differs" in err
    assert not (tmp_path / "bad").exists()
