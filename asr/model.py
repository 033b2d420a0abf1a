"""The CTC acoustic model: frame stacking -> stacked (bidirectional) recurrent layers -> vocabulary logits."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from asr import rnn
from asr.config import PRECISIONS, ModelConfig

CELLS = {
    "lstm": rnn.LSTMCell,
    "gru": rnn.GRUCell,
    "ln_lstm": rnn.LayerNormLSTMCell,
    "ln_gru": rnn.LayerNormGRUCell,
}


def make_cell(cfg: ModelConfig, seed: int | None = None, precision: str = "float32") -> keras.layers.Layer:
    """One recurrent cell of the recipe's type, wrapped in dropout when a keep probability is < 1.
    precision: a dtype policy of PRECISIONS (mixed: the cell's matmuls in bf16/f16, see asr.rnn)."""
    cell = CELLS[cfg.cell](cfg.num_units, dtype=precision)
    if cfg.input_keep_prob < 1.0 or cfg.output_keep_prob < 1.0:
        cell = rnn.DropoutWrapper(
            cell, input_keep_prob=cfg.input_keep_prob, output_keep_prob=cfg.output_keep_prob, seed=seed
        )
    return cell


def output_lengths(feature_lengths, frame_stride: int):
    """Model steps for each utterance: ceil(frames / stride). Works on ints, numpy arrays and tensors."""
    return (feature_lengths + frame_stride - 1) // frame_stride


def stack_frames(features: tf.Tensor, feature_lengths: tf.Tensor, stack: int, stride: int) -> tf.Tensor:
    """Concatenates `stack` consecutive frames every `stride` frames.

    features [B, T, F] (anything past feature_lengths is ignored) -> [B, ceil(T / stride), stack * F].
    Frames past an utterance's length are zeroed first, so a window that runs off the end of an
    utterance sees the same zeros whether or not the utterance is padded inside a batch.
    """
    if stack == 1 and stride == 1:
        return features
    mask = tf.sequence_mask(feature_lengths, tf.shape(features)[1], dtype=features.dtype)
    features = features * tf.expand_dims(mask, -1)  # not mask[:, :, None]: TFLite's StridedSlice has no new axes
    time = tf.shape(features)[1]
    steps = (time + stride - 1) // stride
    # Pad so that every step's window exists: the last window starts at (steps - 1) * stride.
    pad = (steps - 1) * stride + stack - time
    features = tf.pad(features, [[0, 0], [0, tf.maximum(pad, 0)], [0, 0]])
    windows = tf.signal.frame(features, frame_length=stack, frame_step=stride, axis=1)  # [B, steps, stack, F]
    windows = windows[:, :steps]
    return tf.reshape(windows, [tf.shape(features)[0], steps, stack * features.shape[-1]])


class AcousticModel(keras.Model):
    """MFCC frames [B, T, F] + lengths [B] -> logits [B, T', V] + output lengths [B].

    V is the vocabulary size including the CTC blank (index 0). T' = ceil(T / frame_stride);
    logits past an utterance's output length are the projection's bias (the recurrent outputs
    there are zero) and carry no meaning: every consumer reads them with the lengths.

    precision (train.precision): "float32", or a mixed policy under which the recurrent layers'
    matmuls run in bfloat16/float16 while every weight stays float32 (so a model directory holds
    float32 weights whatever the precision it was trained in, and loads as a float32 model). The
    output projection and the logits stay float32 (0.4% of the recipe model's multiply-adds), so
    the softmax and the CTC loss never see bf16 rounding.
    """

    def __init__(self, cfg: ModelConfig, num_features: int, vocab_size: int, seed: int = 0, precision: str = "float32", **kwargs):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        super().__init__(dtype="float32", **kwargs)
        self.cfg = cfg
        self.num_features = num_features
        self.vocab_size = vocab_size
        self.precision = precision
        self.cells_fw = [make_cell(cfg, seed + 2 * i, precision) for i in range(cfg.num_layers)]
        self.cells_bw = [make_cell(cfg, seed + 2 * i + 1, precision) for i in range(cfg.num_layers)] if cfg.bidirectional else []
        self.projection = keras.layers.Dense(vocab_size, name="projection", dtype="float32")

    def call(self, features, feature_lengths, training=False, dropout_seed=None):
        """dropout_seed: None or a [2] integer tensor keying the dropout masks (asr.rnn.dynamic_rnn)."""
        x = stack_frames(features, feature_lengths, self.cfg.frame_stack, self.cfg.frame_stride)
        lengths = output_lengths(feature_lengths, self.cfg.frame_stride)
        if self.cfg.bidirectional:
            x, _, _ = rnn.stack_bidirectional_dynamic_rnn(
                self.cells_fw, self.cells_bw, x, sequence_length=lengths, training=training, dropout_seed=dropout_seed
            )
        else:
            for cell in self.cells_fw:
                x, _ = rnn.dynamic_rnn(cell, x, sequence_length=lengths, training=training, dropout_seed=dropout_seed)
        return self.projection(x), lengths

    def build_weights(self) -> None:
        """Creates every weight by running a tiny batch (needed before loading or counting weights)."""
        features = tf.zeros([1, max(self.cfg.frame_stack, 1), self.num_features])
        self(features, tf.constant([features.shape[1]], tf.int32))

    def recurrent_loop(self) -> str:
        """"native" if every layer's loop runs in asr.rnn's native op (asr.rnn.native), else "graph"."""
        return "native" if all(rnn.runs_native(cell) for cell in self.cells_fw + self.cells_bw) else "graph"

    def num_parameters(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))
