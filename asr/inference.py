"""A trained model directory (and optionally a language model) in use: transcribe audio files, decode a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from asr import checkpoint
from asr.decode import DecodeOptions, Decoder, resolve
from asr.errors import AsrError
from asr.features import features_for_model
from asr.model import AcousticModel

MAX_BATCH_FRAMES = 60_000  # feature frames (10 ms each) per inference batch: bounds memory on long files


class Recognizer:
    """A loaded model directory (config, vocabulary, feature statistics, weights) and its decoder.

    options: how to decode (DecodeOptions: beam width, LM directory, LM weight, word score,
    lexicon); what it leaves open comes from the LM directory's tuning, else the model's config.
    """

    def __init__(self, model_dir: str | Path, options: DecodeOptions = DecodeOptions()):
        self.model_dir = Path(model_dir)
        self.config, self.vocab, self.stats = checkpoint.read_model_meta(self.model_dir)
        self.use(options)  # before the weights: a mistake in the LM directory costs no time
        self.model = AcousticModel(self.config.model, self.config.features.num_features, self.vocab.size)
        self.model.build_weights()
        checkpoint.load_weights(self.model_dir, self.model)
        self._forward = tf.function(self._forward_fn, reduce_retracing=True)

    def use(self, options: DecodeOptions) -> None:
        """Decodes from now on as options say (the acoustic model stays loaded)."""
        self.decoder = Decoder(self.vocab, resolve(options, self.config.decode.beam_width))

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

    def posteriors(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probabilities [T'_i, V] (valid frames only) of feature matrices [T_i, F], computed in
        batches of similar length so that padding and memory stay small."""
        order = np.argsort([len(f) for f in feats])
        out: list[np.ndarray] = [np.zeros((0, self.vocab.size), np.float32)] * len(feats)
        for group in _length_groups([len(feats[i]) for i in order], MAX_BATCH_FRAMES):
            idx = [int(order[g]) for g in group]
            logp, lengths = self.log_probs([feats[i] for i in idx])
            for i, row, n in zip(idx, logp, lengths):
                out[i] = row[:n]
        return out

    def transcribe_features(self, feats: list[np.ndarray]) -> list[str]:
        """Transcripts of feature matrices [T_i, F]."""
        return [self.decoder.decode_one(lp) for lp in self.posteriors(feats)]

    def transcribe(self, paths: list[str | Path]) -> list[str]:
        """One transcript per audio file (any sample rate, mono or stereo); an unreadable file raises AudioError."""
        return self.transcribe_features([self.features(p) for p in paths])

    def features_or_errors(self, paths: list[str | Path]) -> tuple[list[np.ndarray | None], list[str | None]]:
        """Features of each file, or None and the one-line reason where a file cannot be read,
        so that a batch goes on past a bad file."""
        feats, errors = [], []
        for path in paths:
            try:
                feats.append(self.features(path))
                errors.append(None)
            except AsrError as exc:
                feats.append(None)
                errors.append(str(exc))
        return feats, errors


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


def evaluate_manifest(recognizer: Recognizer, utterances) -> tuple[list[dict], list[dict]]:
    """Decodes every readable utterance of a manifest -> (result dicts for evaluate.build_report,
    skipped utterances as {"id", "audio_filepath", "error"})."""
    feats, errors = recognizer.features_or_errors([u.audio_filepath for u in utterances])
    readable = [i for i, error in enumerate(errors) if error is None]
    hyps = recognizer.transcribe_features([feats[i] for i in readable])
    results = [
        dict(id=u.id, reference=u.text, hypothesis=h, speaker=u.speaker, duration=u.duration)
        for u, h in zip((utterances[i] for i in readable), hyps)
    ]
    skipped = [
        dict(id=u.id, audio_filepath=str(u.audio_filepath), error=error)
        for u, error in zip(utterances, errors) if error is not None
    ]
    return results, skipped
