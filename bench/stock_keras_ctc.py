"""The stock-Keras reference curve for recipes/librispeech_small: same data, features, augmentation,
CTC loss, trainer and dev speakers, but the acoustic model is 3 x
keras.layers.Bidirectional(keras.layers.LSTM(256)) in float32 (no layer norm, no dropout), Adam 1e-3
with no warm-up or decay, batch 8, MFCC stacked 3 frames at stride 3. It trains until the epoch
that passes --minutes of training and dev evaluation (the trainer's own clock, as in the recipe's
summary.json), prints dev CER/WER, minutes and process CPU minutes at every epoch's end, and
keeps EXP_DIR/summary.json (asr train's format, plus cpu_minutes per epoch) up to date after each
epoch, for bench/learning_curve.py.

Threads: on 2 cores keras.layers.Bidirectional runs its two directions side by side when each op
gets one thread (--intra-op-threads 1 --inter-op-threads 2): an epoch took 2.55 min against 3.15 with
TensorFlow's default (averages of the two budget runs, 2026-11-30), so the budget run uses them (the recipe's own model, in bf16, is
no faster with them: 3 epochs in 4.3 min against 4.1).

    python bench/stock_keras_ctc.py --data-dir ../shared/data/librispeech_small --exp-dir exp/stock_threads \
        --minutes 100.5 --intra-op-threads 1 --inter-op-threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import tensorflow as tf

from asr import corpora
from asr import train as train_lib
from asr.config import load_recipe
from asr.model import output_lengths, stack_frames

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small"


class StockModel(keras.Model):
    """Same inputs and outputs as asr.model.AcousticModel, built from stock Keras layers."""

    def __init__(self, cfg, num_features: int, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.cfg, self.num_features = cfg, num_features
        self.rnns = [
            keras.layers.Bidirectional(keras.layers.LSTM(cfg.num_units, return_sequences=True))
            for _ in range(cfg.num_layers)
        ]
        self.projection = keras.layers.Dense(vocab_size)

    def call(self, features, feature_lengths, training=False, dropout_seed=None):
        """dropout_seed: taken for the trainer's call signature; the stock model has no dropout."""
        x = stack_frames(features, feature_lengths, self.cfg.frame_stack, self.cfg.frame_stride)
        lengths = output_lengths(feature_lengths, self.cfg.frame_stride)
        mask = tf.sequence_mask(lengths, tf.shape(x)[1])
        for rnn in self.rnns:
            x = rnn(x, mask=mask, training=training)
        return self.projection(x), lengths

    def build_weights(self):
        self(tf.zeros([1, 3, self.num_features]), tf.constant([3]))

    def num_parameters(self):
        return int(sum(v.numpy().size for v in self.trainable_variables))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--exp-dir", default="exp/stock_keras")
    parser.add_argument("--minutes", type=float, default=30.0, help="stop after the epoch that passes this many training minutes")
    parser.add_argument("--epochs", type=int, default=1000, help="stop after this many epochs if the budget lasts longer")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="threads within one op (0: TensorFlow's default)")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="ops run side by side (0: TensorFlow's default)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    overrides = [
        f"data.data_dir={Path(args.data_dir).resolve()}", "data.batch_size=8", "model.input_keep_prob=1.0",
        "model.output_keep_prob=1.0", "train.learning_rate=0.001", "train.warmup_steps=0", "train.decay_steps=0",
        f"train.epochs={args.epochs}", "train.patience=0", "train.checkpoint_every=100000", "train.precision=float32",
    ]
    config = load_recipe(RECIPE, overrides)
    exp_dir = Path(args.exp_dir)
    train_lib.setup_logging(exp_dir)
    train_utts, dev_utts = corpora.prepare(config, exp_dir)
    trainer = train_lib.Trainer(config, exp_dir, train_utts, dev_utts, model_factory=stock_model)
    cpu_start = time.process_time()
    while not trainer.done():
        trainer.train_one_epoch()
        record = trainer.state.history[-1]
        record["cpu_minutes"] = round((time.process_time() - cpu_start) / 60, 2)
        trainer.write_summary()
        print(
            f"STOCK epoch {record['epoch']} step {record['step']} minutes {record['minutes']:.1f} (CPU {record['cpu_minutes']:.1f}) "
            f"dev CER {100 * record['cer']:.2f}% WER {100 * record['wer']:.2f}%", flush=True,
        )
        if record["minutes"] > args.minutes:
            break


def stock_model(config, vocab) -> StockModel:
    """Trainer's model factory: the stock model for the recipe, with its weights built."""
    model = StockModel(config.model, config.features.num_features, vocab.size)
    model.build_weights()
    return model


if __name__ == "__main__":
    main()
