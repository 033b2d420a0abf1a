"""asr: a CTC speech recognizer on TensorFlow 2.

    import asr
    recognizer = asr.load_model("recipes/librispeech_small/model", lm="exp/lm/3gram")
    print(recognizer.transcribe(["speech.wav"]))
"""

__version__ = "0.1.0"


def load_model(model_dir, lm=None, beam_width=None, lm_weight=None, word_score=None, lexicon=None):
    """A Recognizer for a model directory (config.json, vocab.json, stats.json, weights.npz).

    lm: an LM directory (asr lm build) to decode words with; beam_width, lm_weight (alpha),
    word_score (beta), lexicon: None takes the LM's tuned value, else the model's or the default.
    """
    from asr.decode import DecodeOptions
    from asr.inference import Recognizer

    lm = None if lm is None else str(lm)
    return Recognizer(model_dir, DecodeOptions(beam_width, lm, lm_weight, word_score, lexicon))


def transcribe(model_dir, paths, **decoding) -> list[str]:
    """Transcripts of audio files (any sample rate, mono or stereo); decoding: as load_model's."""
    return load_model(model_dir, **decoding).transcribe(list(paths))
