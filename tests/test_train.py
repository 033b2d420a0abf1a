"""End to end on real speech: overfit two utterances, CLI train/resume/transcribe/evaluate, MirroredStrategy."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from asr.cli import main
from asr.config import from_dict

TRAIN_CLEAN_5 = "LibriSpeech/train-clean-5"
UTTERANCES = {  # id -> (relative path, transcript): short real utterances
    "1737-146161-0007": ("1737/146161/1737-146161-0007.flac", "knit two together twice"),
    "1867-154075-0014": ("1867/154075/1867-154075-0014.flac", "you show him that it is possible"),
    "8629-261139-0007": ("8629/261139/8629-261139-0007.flac", "looked away as soon as possible"),
    "118-47824-0035": ("118/47824/118-47824-0035.flac", "i don't mind i'm glad you're out of it"),
}


def write_manifest(path: Path, root: Path, ids) -> Path:
    import soundfile as sf

    with open(path, "w") as f:
        for utt_id in ids:
            rel, text = UTTERANCES[utt_id]
            audio = root / TRAIN_CLEAN_5 / rel
            f.write(json.dumps({"audio_filepath": str(audio), "duration": sf.info(audio).duration, "text": text, "speaker": utt_id.split("-")[0], "id": utt_id}) + "\n")
    return path


def recipe(tmp_path: Path, root: Path, ids, **sections) -> Path:
    """A small recipe folder training on the given utterances (also the dev set)."""
    write_manifest(tmp_path / "train.jsonl", root, ids)
    config = {
        "name": "tiny",
        "data": {"corpus": "manifest", "data_dir": str(tmp_path), "train_manifest": "train.jsonl", "dev_manifest": "train.jsonl", "batch_size": 2},
        "model": {"cell": "ln_lstm", "num_layers": 2, "num_units": 96, "frame_stack": 3, "frame_stride": 2},
        "train": {"learning_rate": 0.003, "warmup_steps": 10, "epochs": 1000, "checkpoint_every": 5, "seed": 7},
    }
    for key, values in sections.items():
        config[key].update(values)
    folder = tmp_path / "recipe"
    folder.mkdir(exist_ok=True)
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.slow
def test_overfit_two_utterances(tmp_path, librispeech_root, monkeypatch):
    """LDC93S1-style check: the model learns two real utterances until greedy decoding is exact."""
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.decode import DecodeOptions, Decoder, resolve
    from asr.train import Trainer, build_dataset, decode_dataset

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    ids = ["1737-146161-0007", "1867-154075-0014"]
    config = load_recipe(recipe(tmp_path, librispeech_root, ids))
    trainer = Trainer(config, tmp_path / "exp", *prepare(config, tmp_path / "exp"))
    dataset, skipped = build_dataset(config, trainer.train_utts, trainer.vocab, trainer.stats, training=False)
    assert not skipped
    batch = next(iter(dataset))
    greedy = Decoder(trainer.vocab, resolve(DecodeOptions(beam_width=1), 1))
    hyps = []
    for step in range(1, 501):
        trainer.steps.train_step(batch)
        if step % 25 == 0:
            _, results = decode_dataset(trainer.steps, dataset, greedy, trainer.dev_by_id)
            hyps = sorted((r["id"], r["hypothesis"]) for r in results)
            if all(h == UTTERANCES[i][1] for i, h in hyps):
                break
    assert [h for _, h in hyps] == [UTTERANCES[i][1] for i in ids], f"not learned after {step} steps: {hyps}"


def test_cli_train_resume_transcribe_evaluate(tmp_path, librispeech_root, monkeypatch, capsys):
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    ids = list(UTTERANCES)
    folder = recipe(tmp_path, librispeech_root, ids, model={"num_units": 16, "num_layers": 1})
    exp = tmp_path / "exp"
    assert main(["train", str(folder), "--exp-dir", str(exp), "--set", "train.max_steps=3"]) == 0
    assert (exp / "checkpoints" / "latest").read_text().strip() == "ckpt-00000003"
    state = json.loads((exp / "checkpoints" / "ckpt-00000003" / "state.json").read_text())
    assert state["step"] == 3 and state["batch_in_epoch"] == 1 and state["epoch"] == 1

    # Resume continues the run from its checkpoint, with its saved data position.
    assert main(["train", str(folder), "--exp-dir", str(exp), "--resume", "--set", "train.max_steps=5", "--set", "train.keep_epochs=1"]) == 0
    assert [p.name for p in (exp / "epochs").iterdir()] == ["epoch-002"]  # the last epoch's weights, for asr average
    log = (exp / "train.log").read_text()
    assert "resumed from ckpt-00000003 at step 3" in log
    state = json.loads((exp / "checkpoints" / (exp / "checkpoints" / "latest").read_text().strip() / "state.json").read_text())
    assert state["step"] >= 5

    model_dir = exp / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "stats.json", "vocab.json", "weights.npz"]
    capsys.readouterr()
    audio = [str(librispeech_root / TRAIN_CLEAN_5 / UTTERANCES[i][0]) for i in ids[:2]]
    assert main(["transcribe", str(model_dir), *audio, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["audio_filepath"] for line in lines] == audio

    report_dir = tmp_path / "report"
    assert main(["evaluate", str(model_dir), str(tmp_path / "train.jsonl"), "--report-dir", str(report_dir), "--beam-width", "4"]) == 0
    out = capsys.readouterr().out
    assert "WER" in out and "CER" in out
    report = json.loads((report_dir / "report.json").read_text())
    assert len(report["utterances"]) == len(ids)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model:\n  layers: 3\n")
    assert main(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown config key 'model.layers'" in err
    assert main(["transcribe", str(tmp_path / "nomodel"), "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nomodel" in err


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.train import Trainer, build_dataset
    config = load_recipe(sys.argv[1], ["train.strategy=" + sys.argv[2]])
    trainer = Trainer(config, sys.argv[3], *prepare(config, sys.argv[3]))
    dataset, _ = build_dataset(config, trainer.train_utts, trainer.vocab, trainer.stats, training=False)
    dist = trainer.strategy.experimental_distribute_dataset(dataset)
    losses = []
    for _ in range(3):
        for batch in dist:
            loss, ok = trainer.steps.train_step(batch)
            losses.append(sorted(float(x) for x in loss))
    print(json.dumps({"replicas": trainer.strategy.num_replicas_in_sync, "losses": losses}))
    """
)


def test_mirrored_strategy_matches_one_device(tmp_path, librispeech_root):
    folder = recipe(tmp_path, librispeech_root, list(UTTERANCES), model={"num_units": 16, "num_layers": 1}, data={"batch_size": 4})
    env = dict(os.environ, ASR_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    results = {}
    for strategy in ("default", "mirrored"):
        proc = subprocess.run([sys.executable, "-c", MIRRORED, str(folder), strategy, str(tmp_path / strategy)], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[strategy] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["mirrored"]["replicas"] == 2 and results["default"]["replicas"] == 1
    np.testing.assert_allclose(results["mirrored"]["losses"], results["default"]["losses"], rtol=1e-4)


def test_non_finite_loss_skips_the_batch_and_names_it(tmp_path, librispeech_root, monkeypatch, caplog):
    """DeepSpeech-style: a NaN in one utterance's features skips the whole batch, never the weights."""
    import tensorflow as tf

    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.train import Trainer, build_dataset

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    config = load_recipe(recipe(tmp_path, librispeech_root, list(UTTERANCES), model={"num_units": 16, "num_layers": 1}))
    trainer = Trainer(config, tmp_path / "exp", *prepare(config, tmp_path / "exp"))
    dataset, _ = build_dataset(config, trainer.train_utts, trainer.vocab, trainer.stats, training=False)
    batch = dict(next(iter(dataset)))
    poisoned = batch["features"].numpy()
    poisoned[1, 5] = np.nan
    batch["features"] = tf.constant(poisoned)
    before = [w.numpy().copy() for w in trainer.model.weights]
    iterations = int(trainer.optimizer.iterations)

    class Bar:
        def set_postfix(self, **kw):
            pass

        def update(self, n):
            pass

    trainer._train_batch(batch, Bar())
    assert trainer.state.skipped_batches == 1 and trainer.state.step == 0
    assert int(trainer.optimizer.iterations) == iterations
    for old, new in zip(before, trainer.model.weights):
        np.testing.assert_array_equal(old, new.numpy())
    bad_id = batch["ids"].numpy()[1].decode()
    assert bad_id in caplog.text and "non-finite" in caplog.text
    # The next clean batch trains as usual.
    trainer._train_batch(dict(next(iter(dataset))), Bar())
    assert trainer.state.step == 1


def test_dev_score_ranks_the_ctc_plateau_by_cer():
    from asr.train import dev_score

    def record(wer, cer, loss=100.0):
        return dict(wer=wer, cer=cer, loss=loss)

    # The first eight epochs of a real run with augmentation: an empty first epoch (WER exactly
    # 100%), then garbled transcripts (WER above 100%) with a CER falling fast. Ranking by WER
    # alone kept epoch 1 and stopped the run early; every one of these epochs is progress.
    plateau = [(1.0, 1.0), (1.0, 0.9244), (1.2142, 0.6002), (1.1428, 0.5318), (1.0763, 0.4877), (1.0053, 0.4293)]
    scores = [dev_score(record(w, c)) for w, c in plateau]
    assert scores == sorted(scores, reverse=True)
    # below 100% WER the WER decides, and any such epoch beats every plateau epoch
    assert dev_score(record(0.99, 0.45)) < dev_score(record(1.0, 0.30))
    assert dev_score(record(0.80, 0.33)) < dev_score(record(0.82, 0.32))
    assert dev_score(record(0.80, 0.33, 90.0)) < dev_score(record(0.80, 0.33, float("nan"))) < dev_score(None)


def test_dev_score_by_cer_ranks_the_cer_first():
    from asr.train import dev_score

    def record(wer, cer, loss=100.0):
        return dict(wer=wer, cer=cer, loss=loss)

    # run 5's epochs 49 and 51: the WER rule kept 49, the CER rule keeps 51
    epoch49, epoch51 = record(0.6773, 0.2520), record(0.6793, 0.2480)
    assert dev_score(epoch49) < dev_score(epoch51)
    assert dev_score(epoch51, "cer") < dev_score(epoch49, "cer")
    # the plateau needs no special case: the CER falls through it; the WER then the loss break ties
    assert dev_score(record(1.2142, 0.6002), "cer") < dev_score(record(1.0, 0.9244), "cer")
    assert dev_score(record(0.80, 0.33), "cer") < dev_score(record(0.82, 0.33), "cer")
    assert dev_score(record(0.80, 0.33, 90.0), "cer") < dev_score(record(0.80, 0.33, float("nan")), "cer") < dev_score(None, "cer")


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, librispeech_root, monkeypatch, precision):
    """With dropout, weight noise and augmentation (noise included) on: train 7 steps at once, or 3 steps, then a fresh Trainer
    resumed from the step-3 checkpoint (as after kill -9) trains to 7 (mid-epoch, across epoch ends
    and dev evaluations). The weights and the optimizer state are bit for bit equal: every random
    draw is a function of (seed, step) (dropout, weight noise) or (seed, epoch, batch) (augmentation, shuffling).
    mixed_float16 also carries its loss scale (checkpointed in state.json)."""
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.train import Trainer

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    folder = recipe(
        tmp_path, librispeech_root, list(UTTERANCES),
        model={"num_units": 16, "num_layers": 2, "input_keep_prob": 0.8, "output_keep_prob": 0.7},
        train={"checkpoint_every": 100, "precision": precision, "weight_noise": 0.01},
    )
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text() + "augment:\n  speeds: [0.9, 1.0, 1.1]\n  freq_masks: 1\n  freq_mask_bands: 5\n  time_masks: 1\n  time_mask_frames: 10\n  noise_prob: 0.5\n")

    def train(exp, steps, resume=False):
        config = load_recipe(folder, [f"train.max_steps={steps}"])
        trainer = Trainer(config, tmp_path / exp, *prepare(config, tmp_path / exp), resume=resume)
        trainer.run()
        return trainer

    whole = train("whole", 7)
    train("parts", 3)
    resumed = train("parts", 7, resume=True)
    assert whole.state.step == resumed.state.step == 7 and whole.state.epoch == resumed.state.epoch >= 3
    for a, b in zip(whole.model.weights + whole.optimizer.variables, resumed.model.weights + resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert whole.state.history == [dict(r, minutes=w["minutes"], input_wait=w["input_wait"]) for r, w in zip(resumed.state.history, whole.state.history)]
    if precision == "mixed_float16":
        assert whole.state.loss_scale == resumed.state.loss_scale and whole.state.loss_scale["scale"] > 0
    else:
        assert whole.state.loss_scale is None


def test_decay_steps_auto_is_the_rest_of_the_run_after_warm_up():
    from asr.errors import ConfigError
    from asr.optim import decay_steps

    train = from_dict({"train": {"decay_steps": "auto", "epochs": 42, "warmup_steps": 100}}).train
    assert decay_steps(train, 56) == 42 * 56 - 100 == 2252
    assert decay_steps(dataclasses.replace(train, epochs=30), 56) == 1580  # follows epochs
    assert decay_steps(dataclasses.replace(train, warmup_steps=10_000), 56) == 0
    assert decay_steps(from_dict({"train": {"decay_steps": 2252}}).train, None) == 2252
    with pytest.raises(ConfigError, match="steps per epoch"):
        decay_steps(train, None)
    for bad in ("soon", -1, 1.5, True):
        with pytest.raises(ConfigError, match="train.decay_steps"):
            from_dict({"train": {"decay_steps": bad}})


def test_the_recipe_decay_steps_auto_spans_the_run_after_warm_up(tmp_path, librispeech_root):
    """recipes/librispeech_small: decay_steps auto = 96 epochs x 56 steps - 100 of warm-up = 5276."""
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.optim import decay_steps
    from asr.text import Vocabulary
    from asr.train import check_trainable

    config = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small", [f"data.data_dir={librispeech_root}"])
    assert config.train.decay_steps == "auto"
    train_utts, dev_utts = prepare(config, tmp_path)
    steps_per_epoch = check_trainable(config, train_utts, dev_utts, Vocabulary(config.text.alphabet))
    assert (steps_per_epoch, decay_steps(config.train, steps_per_epoch)) == (56, 96 * 56 - 100)


def _tiny_steps(weight_noise=0.0, noise_seed=0, model=None):
    """A 1-layer model's Steps and a 2-utterance batch (random features); model: more model keys."""
    import keras
    import tensorflow as tf

    from asr.optim import make_optimizer
    from asr.text import Vocabulary
    from asr.train import Steps, build_model

    config = from_dict({"model": {"num_layers": 1, "num_units": 8, **(model or {})}, "features": {"n_mfcc": 5, "deltas": False, "n_mels": 10}})
    keras.utils.set_random_seed(3)
    model = build_model(config, Vocabulary(config.text.alphabet))
    optimizer = make_optimizer(config, model)
    steps = Steps(model, optimizer, tf.distribute.get_strategy(), 5.0, weight_noise=weight_noise, noise_seed=noise_seed)
    rng = np.random.default_rng(0)
    batch = {"features": tf.constant(rng.standard_normal((2, 20, 5)), tf.float32), "feature_lengths": tf.constant([20, 15]),
             "labels": tf.constant([[1, 2, 3], [4, 5, 0]]), "label_lengths": tf.constant([3, 2])}
    return steps, batch


def test_dropout_masks_follow_the_optimizer_step():
    """Steps keys the dropout masks by the optimizer's step counter (a variable, read when the
    step runs): the same step gives the same masks, another step other masks."""
    import tensorflow as tf

    steps, batch = _tiny_steps(model={"input_keep_prob": 0.5, "output_keep_prob": 0.5})
    optimizer = steps.optimizer
    scale = tf.constant(1.0)
    first, again = (steps._grads(batch, scale)[1].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, again)
    optimizer.iterations.assign(5)
    assert not np.allclose(steps._grads(batch, scale)[1].numpy(), first)
    optimizer.iterations.assign(0)
    np.testing.assert_array_equal(steps._grads(batch, scale)[1].numpy(), first)


def test_weight_noise_perturbs_the_gradients_and_restores_the_weights_exactly():
    """train.weight_noise: a step's gradients are taken at noisy weights (so they differ from the
    noiseless ones), keyed by (seed, step): the same step gives the same noise, another step or
    seed other noise; the weights are back bit for bit afterwards, before the update."""
    import tensorflow as tf

    scale = tf.constant(1.0)
    clean, batch = _tiny_steps()
    noisy, _ = _tiny_steps(weight_noise=0.05)
    before = [v.numpy() for v in noisy.model.trainable_variables]
    for a, b in zip(before, clean.model.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())  # the same initial weights
    clean_loss = clean._grads(batch, scale)[1].numpy()
    _, loss, finite = noisy._grads(batch, scale)
    assert bool(finite) and not np.allclose(loss.numpy(), clean_loss)
    for v, value in zip(noisy.model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    np.testing.assert_array_equal(noisy._grads(batch, scale)[1].numpy(), loss.numpy())  # same step, same noise
    noisy.optimizer.iterations.assign(1)
    assert not np.allclose(noisy._grads(batch, scale)[1].numpy(), loss.numpy())
    other_seed, _ = _tiny_steps(weight_noise=0.05, noise_seed=1)
    assert not np.allclose(other_seed._grads(batch, scale)[1].numpy(), loss.numpy())


def test_weight_noise_has_the_configured_deviation_and_the_gradients_are_taken_there():
    """The noise: the configured deviation, independent between weights (two kernels of the same
    shape get different noise); the gradients of a noisy step are the noiseless Steps' gradients
    at the noisy weights, bit for bit."""
    import tensorflow as tf

    from asr.errors import ConfigError
    from asr.train import Steps

    steps, batch = _tiny_steps(weight_noise=0.05)
    scale = tf.constant(1.0)
    noisy_grads = [g.numpy() for g in steps._grads(batch, scale)[0]]
    variables = steps.model.trainable_variables
    saved = tf.function(steps._add_weight_noise)()  # the noise of the same step, left on the weights
    noise = [v.numpy() - s.numpy() for v, s in zip(variables, saved)]
    flat = np.concatenate([n.ravel() for n in noise])
    assert flat.size > 1000
    assert abs(flat.std() - 0.05) < 0.004 and abs(flat.mean()) < 0.004
    kernels = [n for v, n in zip(variables, noise) if v.path.endswith("/kernel") and n.shape == noise[0].shape]
    assert len(kernels) >= 2 and not np.allclose(kernels[0], kernels[1])
    plain = Steps(steps.model, steps.optimizer, tf.distribute.get_strategy(), 5.0)
    for at_noisy, noisy in zip(plain._grads(batch, scale)[0], noisy_grads):
        np.testing.assert_array_equal(at_noisy.numpy(), noisy)
    with pytest.raises(ConfigError, match="train.weight_noise"):
        from_dict({"train": {"weight_noise": -0.1}})


@pytest.mark.parametrize("by, kept_epoch", [("wer", 2), ("cer", 3)])
def test_train_keep_best_by_picks_the_epoch_kept_as_model(tmp_path, librispeech_root, monkeypatch, by, kept_epoch):
    from asr.config import load_recipe
    from asr.corpora import prepare
    from asr.train import Trainer

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    config = load_recipe(recipe(tmp_path, librispeech_root, list(UTTERANCES), model={"num_units": 16, "num_layers": 1}, train={"keep_best_by": by}))
    trainer = Trainer(config, tmp_path / "exp", *prepare(config, tmp_path / "exp"))
    dev = {1: (0.70, 0.26), 2: (0.68, 0.27), 3: (0.69, 0.25), 4: (0.71, 0.255)}  # epoch -> (WER, CER)
    saved = []
    monkeypatch.setattr(trainer, "evaluate_dev", lambda epoch: dict(epoch=epoch, wer=dev[epoch][0], cer=dev[epoch][1], loss=100.0))
    monkeypatch.setattr(trainer, "save_model", lambda folder: saved.append((trainer.state.epoch, Path(folder).name)))
    for _ in dev:
        trainer.end_epoch()
    kept = [epoch for epoch, name in saved if name == "model"]
    assert kept[-1] == kept_epoch and trainer.state.best["epoch"] == kept_epoch
    assert kept == ([1, 2] if by == "wer" else [1, 3])
