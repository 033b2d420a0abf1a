"""asr export: the SavedModel and TFLite exports run without asr and give the Keras model's log-probabilities.

Each export is loaded in a fresh Python process that imports only TensorFlow and NumPy (RUNNER),
fed real dev speech, and compared with the Recognizer (the Keras model) in this process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from asr import rnn
from asr.audio import load_audio
from asr.cli import main
from asr.export import INFO_FILE, TFLITE_FILE, WAVEFORM_TOLERANCE, export, make_forward
from asr.inference import Recognizer

from conftest import REPO

MODEL = REPO / "recipes" / "librispeech_small" / "model"
DEV_FILES = ("669/129074/669-129074-0004.flac", "7312/92432/7312-92432-0000.flac", "32/21631/32-21631-0000.flac")
# max |log-probability difference| against the Keras model (measured on DEV_FILES: SavedModel 0.0,
# the same graph; TFLite 1.5e-5, its own float32 kernels; the waveform signatures 9.5e-6 (SavedModel)
# and 1.7e-5 (TFLite) against asr.features + the Keras model, see WAVEFORM_TOLERANCE)
SAVED_MODEL_TOLERANCE = 1e-4
TFLITE_TOLERANCE = 1e-4

# Runs an export the way a user without asr would: TensorFlow and NumPy only, the vocabulary from INFO_FILE.
RUNNER = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf

    kind, folder, inputs, outputs = sys.argv[1:]
    data = np.load(inputs)
    info = json.load(open(f"{folder}/asr_export.json"))
    result = {}

    def greedy(log_probs):  # best class per frame, repeats merged, blanks dropped
        best = log_probs.argmax(-1)
        keep = (best != info["blank"]) & np.r_[True, best[1:] != best[:-1]]
        return "".join(info["vocabulary"][i] for i in best[keep])

    if kind == "saved_model":
        model = tf.saved_model.load(folder)
        out = model.signatures["serving_default"](features=tf.constant(data["features"]), lengths=tf.constant(data["lengths"]))
        result["log_probs"], result["output_lengths"] = out["log_probs"].numpy(), out["output_lengths"].numpy()
        out = model.signatures["waveform"](waveform=tf.constant(data["waveform"]), num_samples=tf.constant(data["num_samples"]))
        result["wave_log_probs"], result["wave_output_lengths"] = out["log_probs"].numpy(), out["output_lengths"].numpy()
        texts = [greedy(lp[:n]) for lp, n in zip(result["log_probs"], result["output_lengths"])]
    else:
        interpreter = tf.lite.Interpreter(model_path=f"{folder}/model.tflite")
        runner, wave_runner = interpreter.get_signature_runner("serving_default"), interpreter.get_signature_runner("waveform")
        texts = []
        for i, n in enumerate(data["lengths"]):  # batch 1: one utterance at a time, unpadded
            out = runner(features=data["features"][i : i + 1, :n], lengths=data["lengths"][i : i + 1])
            result[f"log_probs_{i}"] = out["log_probs"][0]
            texts.append(greedy(out["log_probs"][0][: out["output_lengths"][0]]))
            samples = data["num_samples"][i : i + 1]
            out = wave_runner(waveform=data["waveform"][i : i + 1, : samples[0]], num_samples=samples)
            result[f"wave_log_probs_{i}"] = out["log_probs"][0]
    result["texts"] = np.array(texts)
    result["asr_modules"] = np.array([m for m in sys.modules if m == "asr" or m.startswith("asr.")], dtype=str)
    np.savez(outputs, **result)
''')


@pytest.fixture(scope="module")
def dev_batch(librispeech_root):
    """Three dev utterances (2.5 to 15 s) through the Keras model: features, waveforms, reference outputs."""
    recognizer = Recognizer(MODEL)
    paths = [librispeech_root / "LibriSpeech" / "train-clean-5" / f for f in DEV_FILES]
    feats = [recognizer.features(p) for p in paths]
    waves = [load_audio(p) for p in paths]
    log_probs, out_lengths = recognizer.log_probs(feats)
    lengths = np.array([len(f) for f in feats], np.int32)
    padded = np.zeros([len(feats), lengths.max(), feats[0].shape[1]], np.float32)
    wave_batch = np.zeros([len(waves), max(len(w) for w in waves)], np.float32)
    for i, (f, w) in enumerate(zip(feats, waves)):
        padded[i, : len(f)] = f
        wave_batch[i, : len(w)] = w
    texts = [recognizer.decoder.decode_one(lp[:n]) for lp, n in zip(log_probs, out_lengths)]
    return dict(features=padded, lengths=lengths, waveform=wave_batch, num_samples=np.array([len(w) for w in waves], np.int32),
                log_probs=log_probs, output_lengths=out_lengths, texts=texts)


def run_without_asr(kind: str, folder: Path, batch: dict, tmp_path: Path) -> dict:
    """RUNNER on the export in a new process, from a folder where `asr` is not importable by accident."""
    (tmp_path / "runner.py").write_text(RUNNER)
    np.savez(tmp_path / "inputs.npz", **{k: v for k, v in batch.items() if k in ("features", "lengths", "waveform", "num_samples")})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "runner.py", kind, str(folder), "inputs.npz", "outputs.npz"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "outputs.npz") as out:
        result = {k: out[k] for k in out.files}
    assert result["asr_modules"].size == 0, result["asr_modules"]
    return result


def max_diff(ours: np.ndarray, theirs: np.ndarray, lengths) -> float:
    """Largest |difference| over the valid frames of padded [B, T', V] outputs."""
    return max(float(np.abs(a[:n] - b[:n]).max()) for a, b, n in zip(ours, theirs, lengths))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "saved_model"
    assert main(["export", str(MODEL), str(out), "--format", "saved_model"]) == 0
    return out


def test_saved_model_runs_without_asr_and_matches_keras(saved_model, dev_batch, tmp_path):
    result = run_without_asr("saved_model", saved_model, dev_batch, tmp_path)
    np.testing.assert_array_equal(result["output_lengths"], dev_batch["output_lengths"])
    diff = max_diff(result["log_probs"], dev_batch["log_probs"], dev_batch["output_lengths"])
    assert diff <= SAVED_MODEL_TOLERANCE, diff
    assert list(result["texts"]) == dev_batch["texts"]


def test_saved_model_waveform_signature_matches_keras_on_asr_features(saved_model, dev_batch, tmp_path):
    """The MFCC front end in TensorFlow ops (16 kHz waveform in) against asr.features + the model."""
    result = run_without_asr("saved_model", saved_model, dev_batch, tmp_path)
    np.testing.assert_array_equal(result["wave_output_lengths"], dev_batch["output_lengths"])
    diff = max_diff(result["wave_log_probs"], dev_batch["log_probs"], dev_batch["output_lengths"])
    assert diff <= WAVEFORM_TOLERANCE, diff
    greedy_agree = [np.array_equal(a[:n].argmax(-1), b[:n].argmax(-1))
                    for a, b, n in zip(result["wave_log_probs"], dev_batch["log_probs"], dev_batch["output_lengths"])]
    assert all(greedy_agree), greedy_agree


def test_tflite_runs_without_asr_and_matches_keras(dev_batch, tmp_path):
    out = tmp_path / "tflite"
    assert main(["export", str(MODEL), str(out), "--format", "tflite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([INFO_FILE, TFLITE_FILE])
    result = run_without_asr("tflite", out, dev_batch, tmp_path)
    ours = [result[f"log_probs_{i}"] for i in range(len(DEV_FILES))]
    assert [len(o) for o in ours] == list(dev_batch["output_lengths"])
    diff = max_diff(ours, dev_batch["log_probs"], dev_batch["output_lengths"])
    assert diff <= TFLITE_TOLERANCE, diff
    assert list(result["texts"]) == dev_batch["texts"]
    from_waveform = [result[f"wave_log_probs_{i}"] for i in range(len(DEV_FILES))]
    assert [len(o) for o in from_waveform] == list(dev_batch["output_lengths"])
    diff = max_diff(from_waveform, dev_batch["log_probs"], dev_batch["output_lengths"])
    assert diff <= WAVEFORM_TOLERANCE, diff


def test_info_file_has_what_a_user_needs(saved_model):
    info = json.loads((saved_model / INFO_FILE).read_text())
    config = json.loads((MODEL / "config.json").read_text())
    assert info["vocabulary"] == [""] + list(config["text"]["alphabet"]) and info["blank"] == 0
    # the shipped model normalizes each utterance by its own statistics: none to ship
    assert config["features"]["normalization"] == "utterance" and info["normalization"] is None
    assert {k: info["features"][k] for k in config["features"]} == config["features"]
    assert info["frame_stride"] == 3 and info["output_frame_seconds"] == pytest.approx(0.03)
    assert set(info["signatures"]) == {"serving_default", "waveform"}


def test_export_refuses_a_folder_of_other_things(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(MODEL), str(out), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt" in err, err
    assert (out / "notes.txt").read_text() == "mine"


def test_export_bad_format_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(MODEL), str(tmp_path / "out"), "--format", "onnx"])
    assert exc.value.code == 2
    assert "--format" in capsys.readouterr().err


# --- every cell type converts (tiny random models) -----------------------------------------------


@pytest.mark.parametrize("cell, bidirectional", [("lstm", False), ("gru", True), ("ln_gru", False), ("ln_lstm", True)])
def test_every_cell_exports_to_tflite_and_saved_model(tmp_path, cell, bidirectional):
    from asr import checkpoint
    from asr.config import Config, FeatureConfig, ModelConfig
    from asr.features import FeatureStats
    from asr.model import AcousticModel
    from asr.text import Vocabulary

    features = FeatureConfig(n_mfcc=4, n_mels=8, deltas=False)
    config = Config(features=features, model=ModelConfig(cell=cell, num_layers=2, num_units=8, bidirectional=bidirectional,
                                                         frame_stack=2, frame_stride=2))
    vocab = Vocabulary("ab ")
    model = AcousticModel(config.model, 4, vocab.size, seed=3)
    model.build_weights()
    stats = FeatureStats(np.zeros(4, np.float32), np.ones(4, np.float32), 1)
    checkpoint.save_model_dir(tmp_path / "model", model, config, vocab, stats)
    x = np.random.RandomState(0).randn(1, 23, 4).astype(np.float32)
    reference = make_forward(model, 4)(tf.constant(x), tf.constant([23]))["log_probs"].numpy()
    export(tmp_path / "model", tmp_path / "tflite", "tflite")
    runner = tf.lite.Interpreter(model_path=str(tmp_path / "tflite" / TFLITE_FILE)).get_signature_runner("serving_default")
    np.testing.assert_allclose(runner(features=x, lengths=np.array([23], np.int32))["log_probs"], reference, atol=1e-5)
    export(tmp_path / "model", tmp_path / "saved_model", "saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(loaded(features=tf.constant(x), lengths=tf.constant([23]))["log_probs"].numpy(), reference, atol=1e-6)


# --- asr.rnn.forward_only ------------------------------------------------------------------------


def test_forward_only_loops_give_the_same_values_and_gradients():
    """The loop that reads its inputs (TFLite-convertible) against the one that pops them."""
    cells = [rnn.LayerNormLSTMCell(6), rnn.LayerNormLSTMCell(6)]
    x = tf.constant(np.random.RandomState(1).randn(3, 9, 5).astype(np.float32))
    lengths = tf.constant([9, 4, 1])

    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            (out_fw, out_bw), _ = rnn.bidirectional_dynamic_rnn(cells[0], cells[1], x, sequence_length=lengths)
            loss = tf.reduce_sum(out_fw**2) + tf.reduce_sum(out_bw)
        return out_fw, out_bw, tape.gradient(loss, [x] + cells[0].trainable_variables)

    popping = run()
    with rnn.forward_only():
        reading = run()
    for a, b in zip(popping[:2], reading[:2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(popping[2], reading[2]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    graph = tf.function(lambda v: rnn.dynamic_rnn(cells[0], v, sequence_length=lengths)[0]).get_concrete_function(x).graph
    with rnn.forward_only():
        forward_graph = tf.function(lambda v: rnn.dynamic_rnn(cells[0], v, sequence_length=lengths)[0]).get_concrete_function(x).graph

    def op_types(g):
        return {node.op for f in g.as_graph_def().library.function for node in f.node_def}

    assert "TensorListPopBack" in op_types(graph) and "TensorListGetItem" not in op_types(graph)
    assert "TensorListGetItem" in op_types(forward_graph) and "TensorListPopBack" not in op_types(forward_graph)


# --- the waveform front end ----------------------------------------------------------------------


@pytest.mark.parametrize("gain, normalization", [("rms", "global"), ("none", "utterance")])
def test_tf_features_match_asr_features_in_a_padded_batch(librispeech_root, gain, normalization):
    """tf_features against features.compute_features + normalize, utterance by utterance, on a
    batch that pads speech, a 100-sample clip (shorter than one FFT frame), loud speech and silence."""
    import dataclasses

    from asr.config import FeatureConfig
    from asr.export import tf_features
    from asr.features import FeatureStats, compute_features, normalize

    cfg = dataclasses.replace(FeatureConfig(), gain_normalization=gain, normalization=normalization)
    speech = load_audio(librispeech_root / "LibriSpeech" / "train-clean-5" / DEV_FILES[0])
    waves = [speech, speech[5000:5100] * 0.01, speech[:20000] * 20]
    if normalization == "global":  # per-utterance statistics of silence are rounding noise over STD_FLOOR
        waves.append(np.zeros(3000, np.float32))
    stats = FeatureStats(np.linspace(-5, 5, 39).astype(np.float32), np.linspace(0.5, 20, 39).astype(np.float32), 1)
    batch = np.zeros([len(waves), max(len(w) for w in waves)], np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    feats, lengths = tf_features(tf.constant(batch), tf.constant([len(w) for w in waves]), cfg, stats)
    for i, w in enumerate(waves):
        expected = normalize(compute_features(w, cfg), cfg, stats)
        assert lengths[i] == len(expected)
        np.testing.assert_allclose(feats[i, : lengths[i]].numpy(), expected, atol=2e-3, rtol=1e-4)
        assert not np.any(feats[i, lengths[i] :].numpy())
