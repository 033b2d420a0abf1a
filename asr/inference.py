"""A trained model directory (and optionally a language model) in use: transcribe audio files of any length with word timings, decode a manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import tensorflow as tf
from tqdm import tqdm

from asr import checkpoint, ctc
from asr.audio import stream_audio
from asr.decode import DecodeOptions, Decoder, resolve
from asr.errors import AudioError
from asr.evaluate import utterance_result
from asr.features import compute_features, features_for_model, hop_samples, normalize
from asr.export import load_forward
from asr.output import Transcript, Word
from asr.segment import Segment, split_at_pauses

# Feature frames (10 ms each) per inference batch. The recipe model's forward pass holds about
# 16 kB per feature frame (measured: peak RSS +320 MB at 20,000 frames, +930 MB at 60,000), and on
# 2 CPU cores its throughput stops growing past ~20,000 frames (RTF 0.0093 at 20,000, 0.0087 at 60,000).
MAX_BATCH_FRAMES = 20_000
# Feature frames of segments (of one or several files) gathered before the model runs on them:
# 10 minutes of audio, 9 MB of features; its batches are length-sorted within it.
POOL_FRAMES = 60_000
PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]"


class Recognizer:
    """A loaded model directory (config, vocabulary, feature statistics, weights) and its decoder.

    options: how to decode (DecodeOptions: beam width, LM directory, LM weight, word score,
    lexicon); what it leaves open comes from the LM directory's tuning, else the model's config.
    """

    def __init__(self, model_dir: str | Path, options: DecodeOptions = DecodeOptions(), cache_dir: str | Path | None = None):
        """cache_dir: a folder keeping the traced inference function (asr.export.load_forward), so
        that the next Recognizer of this model starts without building the Keras model and tracing
        it (self.model is then None); the outputs are identical either way."""
        self.model_dir = Path(model_dir)
        self.config, self.vocab, self.stats = checkpoint.read_model_meta(self.model_dir)
        self.use(options)  # before the weights: a mistake in the LM directory costs no time
        self.model, self._forward = load_forward(self.model_dir, self.config, self.vocab.size, cache_dir)

    def use(self, options: DecodeOptions) -> None:
        """Decodes from now on as options say (the acoustic model stays loaded)."""
        self.decoder = Decoder(self.vocab, resolve(options, self.config.decode.beam_width))

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

    def posteriors(self, feats: list[np.ndarray], on_batch=None) -> list[np.ndarray]:
        """Log-probabilities [T'_i, V] (valid frames only) of feature matrices [T_i, F], computed in
        batches of similar length so that padding and memory stay small. on_batch(indices), if
        given, is called after each batch with the positions in feats it computed."""
        order = np.argsort([len(f) for f in feats])
        out: list[np.ndarray] = [np.zeros((0, self.vocab.size), np.float32)] * len(feats)
        for group in _length_groups([len(feats[i]) for i in order], MAX_BATCH_FRAMES):
            idx = [int(order[g]) for g in group]
            logp, lengths = self.log_probs([feats[i] for i in idx])
            for i, row, n in zip(idx, logp, lengths):
                out[i] = row[:n]
            if on_batch is not None:
                on_batch(idx)
        return out

    @property
    def seconds_per_frame(self) -> float:
        """Seconds between the model's output frames: the feature hop times the frame stride (0.03 s for the recipe)."""
        features = self.config.features
        return hop_samples(features) * self.config.model.frame_stride / features.sample_rate

    def transcribe(self, paths: list[str | Path]) -> list[str]:
        """One transcript per audio file (any sample rate, mono or stereo, any length); an unreadable file raises AudioError."""
        return [t.text for t in self.transcribe_files(paths, words=False)]

    def transcribe_words(self, paths: list[str | Path], progress: bool = False) -> list[Transcript]:
        """One Transcript per audio file: its text, and its words with start and end times (seconds
        from the start of the file) and confidences; an unreadable file raises AudioError."""
        return list(self.transcribe_files(paths, progress=progress))

    def transcribe_files(self, paths, words: bool = True, progress: bool = False, skip_errors: bool = False) -> Iterator[Transcript]:
        """Transcripts of audio files, in order, each as soon as it is done.

        Each file is read block by block and cut at pauses into segments of at most
        segment.MAX_SEGMENT_SECONDS (a shorter file is one segment); the segments of consecutive
        files are gathered up to POOL_FRAMES feature frames, run through the model in batches of
        similar length, decoded one by one, and a file's text and words are joined from its
        segments with times in the whole file. Memory holds at most a pool's features and one
        segment's audio, however long the files. words: False leaves the words out (no alignment).
        progress: a tqdm bar of the seconds of audio done, on stderr. skip_errors: an unreadable
        file gives a Transcript whose error says why, instead of raising AudioError.
        """
        paths = [str(p) for p in paths]
        with tqdm(total=sum(map(_header_seconds, paths)) if progress else 0, unit="s", desc="audio", disable=not progress,
                  dynamic_ncols=True, bar_format=PROGRESS_FORMAT) as bar:
            yield from self._transcribe_pooled(paths, words, skip_errors, bar)

    def _transcribe_pooled(self, paths: list[str], words: bool, skip_errors: bool, bar) -> Iterator[Transcript]:
        files = [_FileResult(path) for path in paths]
        pool: list[_Pending] = []
        pooled = 0  # feature frames in the pool
        done = 0  # files yielded so far
        for index, path in enumerate(paths):
            try:
                for piece in split_at_pauses(stream_audio(path, self.config.features.sample_rate), self.config.features.sample_rate):
                    pool.append(self._segment(index, piece))
                    pooled += len(pool[-1].features)
                    if pooled >= POOL_FRAMES:
                        self._decode_pool(pool, files, words, bar)
                        pool, pooled = [], 0
            except AudioError as exc:
                if not skip_errors:
                    raise
                files[index].error = str(exc)
                pool = [s for s in pool if s.file != index]
                pooled = sum(len(s.features) for s in pool)
                if bar.total:  # what the bar expected of the file will not come
                    bar.total = max(bar.n, bar.total - _header_seconds(path) + files[index].duration)
                    bar.refresh()
            files[index].read = True
            # A file is done when it is read and none of its segments wait in the pool.
            waiting = {s.file for s in pool}
            while done < len(files) and files[done].read and done not in waiting:
                yield files[done].transcript()
                done += 1
        self._decode_pool(pool, files, words, bar)
        yield from (f.transcript() for f in files[done:])

    def _segment(self, index: int, piece: Segment) -> "_Pending":
        """A segment of file `index`, as the model's input: normalized features [T, F], as features() computes them."""
        features = self.config.features
        raw = compute_features(piece.samples, features)
        return _Pending(index, piece.start / features.sample_rate, len(piece.samples) / features.sample_rate,
                        normalize(raw, features, self.stats))

    def _decode_pool(self, pool: list["_Pending"], files: list["_FileResult"], words: bool, bar) -> None:
        """Runs the model on the pool's segments, decodes them and adds each to its file's result."""
        if not pool:
            return
        def moved(batch):  # the bar moves as the model gets through each batch; decoding follows
            _advance(bar, sum(pool[i].duration for i in batch))

        for piece, log_probs in zip(pool, self.posteriors([s.features for s in pool], on_batch=moved)):
            text = self.decoder.decode_one(log_probs)
            found = self.words(log_probs, text, piece.offset, piece.duration) if words else []
            files[piece.file].add(text, found, piece.duration)

    def words(self, log_probs: np.ndarray, text: str, offset: float = 0.0, duration: float | None = None) -> list[Word]:
        """The words of a decoded text with their times and confidences, from the forced alignment of
        the text with the log-probabilities [T, V] it was decoded from (asr.ctc.align_words).

        A word starts where its first character's first frame starts and ends where its last
        character's last frame ends (frame t spans [t, t + 1) x seconds_per_frame), plus offset,
        the segment's start in the file; duration caps the end at the audio's end.
        """
        separator = self.vocab.encode(" ")[0] if " " in self.vocab.alphabet else -1
        step = self.seconds_per_frame
        limit = len(log_probs) * step if duration is None else duration
        return [
            Word(text[first:end], offset + start * step, offset + min((last + 1) * step, limit), confidence)
            for first, end, start, last, confidence in ctc.align_words(log_probs, self.vocab.encode(text), separator)
        ]


@dataclasses.dataclass
class _Pending:
    """A segment waiting in the pool for the model: which file, where in it (seconds), its features [T, F]."""

    file: int
    offset: float
    duration: float
    features: np.ndarray


class _FileResult:
    """A file's transcript as its segments are decoded."""

    def __init__(self, path: str):
        self.path, self.texts, self.words, self.duration = path, [], [], 0.0
        self.read, self.error = False, None

    def add(self, text: str, words: list[Word], duration: float) -> None:
        self.texts.append(text)
        self.words.extend(words)
        self.duration += duration

    def transcript(self) -> Transcript:
        if self.error is not None:
            return Transcript(self.path, "", (), 0.0, self.error)
        # One segment: the decoder's text as it is; several: their words, one space apart.
        text = self.texts[0] if len(self.texts) == 1 else " ".join(" ".join(self.texts).split())
        return Transcript(self.path, text, tuple(self.words), self.duration)


def _advance(bar, seconds: float) -> None:
    """Moves a progress bar of seconds on, never past its total (headers and decoded lengths differ by rounding)."""
    bar.update(min(seconds, max(bar.total - bar.n, 0.0)) if bar.total else seconds)


def _header_seconds(path: str) -> float:
    """Seconds of audio in a file, from its header (0 when the header cannot be read)."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return 0.0
    return info.frames / info.samplerate


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


def evaluate_manifest(recognizer: Recognizer, utterances, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Decodes every readable utterance of a manifest -> (result dicts for evaluate.build_report,
    skipped utterances as {"id", "audio_filepath", "error"}). progress: a tqdm bar on stderr."""
    results, skipped = [], []
    paths = [u.audio_filepath for u in utterances]
    for u, t in zip(utterances, recognizer.transcribe_files(paths, words=False, progress=progress, skip_errors=True)):
        if t.error is not None:
            skipped.append(dict(id=u.id, audio_filepath=str(u.audio_filepath), error=t.error))
        else:
            results.append(utterance_result(u, t.text))
    return results, skipped
