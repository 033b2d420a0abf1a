"""A trained model directory in use: transcribe audio files, decode a manifest, write a WER report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from asr import checkpoint, ctc, evaluate
from asr.features import features_for_model
from asr.model import AcousticModel

MAX_BATCH_FRAMES = 60_000  # feature frames (10 ms each) per inference batch: bounds memory on long files


class Recognizer:
    """A loaded model directory: config, vocabulary, feature statistics and weights."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.config, self.vocab, self.stats = checkpoint.read_model_meta(self.model_dir)
        self.model = AcousticModel(self.config.model, self.config.features.num_features, self.vocab.size)
        self.model.build_weights()
        checkpoint.load_weights(self.model_dir, self.model)
        self._forward = tf.function(self._forward_fn, reduce_retracing=True)

    def _forward_fn(self, features, lengths):
        logits, out_lengths = self.model(features, lengths, training=False)
        return tf.nn.log_softmax(logits), out_lengths

    def features(self, path: str | Path) -> np.ndarray:
        """[T, F] normalized features of one file, through the same function training uses."""
        return features_for_model(path, self.config.features, self.stats)

    def log_probs(self, feats: list[np.ndarray]):
        """Padded batch forward: list of [T_i, F] -> log-probabilities [B, T', V] and lengths [B]."""
        lengths = np.array([len(f) for f in feats], np.int32)
        batch = np.zeros([len(feats), max(lengths.max(), 1), self.config.features.num_features], np.float32)
        for i, f in enumerate(feats):
            batch[i, : len(f)] = f
        logp, out_lengths = self._forward(tf.constant(batch), tf.constant(lengths))
        return logp.numpy(), out_lengths.numpy()

    def decode(self, logp: np.ndarray, lengths: np.ndarray, beam_width: int) -> list[str]:
        if beam_width > 1:
            ids = ctc.beam_search_decode(logp, lengths, beam_width=beam_width)
        else:
            ids = ctc.greedy_decode(logp, lengths)
        return [self.vocab.decode(seq) for seq in ids]

    def transcribe_features(self, feats: list[np.ndarray], beam_width: int = 1) -> list[str]:
        """Transcripts of feature matrices, batched by length so padding and memory stay small."""
        order = np.argsort([len(f) for f in feats])
        texts: list[str] = [""] * len(feats)
        for group in _length_groups([len(feats[i]) for i in order], MAX_BATCH_FRAMES):
            idx = [int(order[g]) for g in group]
            logp, lengths = self.log_probs([feats[i] for i in idx])
            for i, text in zip(idx, self.decode(logp, lengths, beam_width)):
                texts[i] = text
        return texts

    def transcribe(self, paths: list[str | Path], beam_width: int = 1) -> list[str]:
        """One transcript per audio file (any sample rate, mono or stereo)."""
        return self.transcribe_features([self.features(p) for p in paths], beam_width)


def _length_groups(sorted_lengths: list[int], max_frames: int) -> list[list[int]]:
    """Positions of length-sorted items grouped so that each padded batch holds <= max_frames."""
    groups, current = [], []
    for pos, length in enumerate(sorted_lengths):
        if current and (len(current) + 1) * length > max_frames:
            groups.append(current)
            current = []
        current.append(pos)
    if current:
        groups.append(current)
    return groups


def evaluate_manifest(recognizer: Recognizer, utterances, beam_width: int = 1) -> list[dict]:
    """Decodes every utterance of a manifest -> result dicts for evaluate.build_report."""
    feats = [recognizer.features(u.audio_filepath) for u in utterances]
    hyps = recognizer.transcribe_features(feats, beam_width)
    return [
        dict(id=u.id, reference=u.text, hypothesis=h, speaker=u.speaker, duration=u.duration)
        for u, h in zip(utterances, hyps)
    ]
